"""serve.py against a live instance on 127.0.0.1: ranges, types, compression, caching, CORS, safety."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import os
import re
import time
from pathlib import Path

import pytest

BOUNDARY = "BOUNDARY_0123456789"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A small static DICOMweb tree with known bytes, and a secret file beside it (outside the root)."""
    base = tmp_path_factory.mktemp("serve")
    root = base / "data"
    series = root / "studies" / "1.2.3" / "series" / "4.5.6"
    frames = series / "instances" / "7.8.9" / "frames"
    frames.mkdir(parents=True)
    payload = os.urandom(200_000)
    body = (f"--{BOUNDARY}\r\nContent-Type: image/jphc;transfer-syntax=1.2.840.10008.1.2.4.202\r\n\r\n"
            .encode() + payload + f"\r\n--{BOUNDARY}--".encode())
    (frames / "1").write_bytes(body)
    (series / "thumbnail").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(100) + b"\xff\xd9")
    metadata = [{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}]
    (series / "metadata.gz").write_bytes(gzip.compress(json.dumps(metadata).encode()))
    (root / "studies" / "index.json").write_text(json.dumps(metadata * 50))
    (root / "big.bin").write_bytes(payload)
    (base / "secret.txt").write_text("top secret")
    (root / "escape").symlink_to(base / "secret.txt")
    (root / "escape_dir").symlink_to(base)
    return {"root": root, "frame": body, "payload": payload, "metadata": metadata}


@pytest.fixture(scope="module")
def live(tree, serve_dir):
    return serve_dir(tree["root"])


def request(live, path, headers=None, method="GET"):
    host, port = live.server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


FRAME = "/dicomweb/studies/1.2.3/series/4.5.6/instances/7.8.9/frames/1"


@pytest.mark.parametrize("spec, start, end", [
    ("bytes=0-65535", 0, 65535),            # start
    ("bytes=1000-1999", 1000, 1999),        # middle
    ("bytes=-500", None, None),             # suffix
    ("bytes=150000-", 150000, None),        # open-ended
    ("bytes=150000-99999999", 150000, None),  # end past the size is clamped
])
def test_single_ranges_are_byte_exact(live, tree, spec, start, end):
    body = tree["frame"]
    size = len(body)
    if start is None:
        start = size - 500
    if end is None:
        end = size - 1
    resp, got = request(live, FRAME, {"Range": spec, "Accept-Encoding": "gzip"})
    assert resp.status == 206
    assert got == body[start:end + 1]
    assert resp.getheader("Content-Range") == f"bytes {start}-{end}/{size}"
    assert resp.getheader("Content-Length") == str(end - start + 1)
    assert resp.getheader("Accept-Ranges") == "bytes"
    assert resp.getheader("Content-Encoding") is None  # never compress a ranged response


def test_unsatisfiable_range_is_416(live, tree):
    resp, _ = request(live, FRAME, {"Range": f"bytes={len(tree['frame'])}-"})
    assert resp.status == 416
    assert resp.getheader("Content-Range") == f"bytes */{len(tree['frame'])}"


def test_multi_range_gets_whole_body(live, tree):
    resp, got = request(live, FRAME, {"Range": "bytes=0-9,20-29"})
    assert resp.status == 200 and got == tree["frame"]


def test_frame_content_type_has_boundary_and_transfer_syntax(live):
    resp, _ = request(live, FRAME)
    ctype = resp.getheader("Content-Type")
    assert ctype.startswith('multipart/related; type="image/jphc"')
    assert f"boundary={BOUNDARY}" in ctype
    assert "transfer-syntax=1.2.840.10008.1.2.4.202" in ctype


def test_a_rendered_thumbnail_is_a_jpeg_image(live):
    """The toolkit's (and our converter's) ``thumbnail`` files: an <img> may show them."""
    resp, body = request(live, "/dicomweb/studies/1.2.3/series/4.5.6/thumbnail")
    assert resp.status == 200 and resp.getheader("Content-Type") == "image/jpeg"
    assert body.startswith(b"\xff\xd8")


def test_data_is_same_origin_only_by_default(live):
    """Any website could read patient data with Access-Control-Allow-Origin: * (issue 14 item 9)."""
    resp, _ = request(live, FRAME, {"Origin": "http://evil.example", "Range": "bytes=0-9"})
    assert resp.status == 206 and resp.getheader("Access-Control-Allow-Origin") is None
    pre, _ = request(live, FRAME, {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET",
                                   "Access-Control-Request-Headers": "range"}, method="OPTIONS")
    assert pre.getheader("Access-Control-Allow-Origin") is None and pre.getheader("Access-Control-Allow-Headers") is None


def test_cors_origins_are_allowed_by_name(tree, serve_dir):
    live = serve_dir(tree["root"], cors=("http://viewer.example",))
    resp, _ = request(live, FRAME, {"Origin": "http://viewer.example", "Range": "bytes=0-9"})
    assert resp.getheader("Access-Control-Allow-Origin") == "http://viewer.example"
    assert "Origin" in resp.getheader("Vary")
    exposed = resp.getheader("Access-Control-Expose-Headers")
    assert "Content-Range" in exposed and "Content-Length" in exposed
    pre, _ = request(live, FRAME, {"Origin": "http://viewer.example",
                                   "Access-Control-Request-Headers": "range"}, method="OPTIONS")
    assert pre.status == 204 and "Range" in pre.getheader("Access-Control-Allow-Headers")
    other, _ = request(live, FRAME, {"Origin": "http://evil.example"})
    assert other.getheader("Access-Control-Allow-Origin") is None
    anyone = serve_dir(tree["root"], cors=("*",))
    assert request(anyone, FRAME, {"Origin": "http://x.example"})[0].getheader("Access-Control-Allow-Origin") == "*"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "attacker.test.", "127.0.0.1.nip.io"])
def test_a_loopback_bind_refuses_other_host_names(live, host):
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example."""
    resp, body = request(live, FRAME, {"Host": host})
    assert resp.status == 421 and b"BOUNDARY" not in body
    for ok in ("127.0.0.1", f"127.0.0.1:{live.server.server_address[1]}", "localhost:1234", "[::1]:80"):
        assert request(live, FRAME, {"Host": ok})[0].status == 200, ok


def test_allow_host_adds_names(tree, serve_dir):
    live = serve_dir(tree["root"], allow_hosts=("viewer.lan",))
    assert request(live, FRAME, {"Host": "viewer.lan:8000"})[0].status == 200
    assert request(live, FRAME, {"Host": "evil.example"})[0].status == 421


def test_safety_headers_and_no_version_banner(live):
    resp, _ = request(live, FRAME)
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    assert resp.getheader("Referrer-Policy") == "no-referrer"
    assert resp.getheader("X-Frame-Options") == "DENY"
    assert resp.getheader("Server") is None
    assert "private" in resp.getheader("Cache-Control")
    assert "frame-ancestors 'none'" in resp.getheader("Content-Security-Policy")
    for path in ("/dicomweb/studies", "/dicomweb/studies/1.2.3/series/4.5.6/metadata"):
        assert "private" in request(live, path)[0].getheader("Cache-Control"), path
    missing, _ = request(live, "/nope")
    assert missing.getheader("Server") is None and missing.getheader("X-Content-Type-Options") == "nosniff"


def test_the_page_gets_a_strict_content_security_policy(live):
    resp, body = request(live, "/")
    csp = {d.split()[0]: d.split()[1:] for d in resp.getheader("Content-Security-Policy").split("; ")}
    assert "'unsafe-inline'" not in csp["script-src"]
    # 'unsafe-eval' only because PyScript's core calls Function() at start (the browser test shows it)
    assert csp["script-src"][:3] == ["'self'", "'wasm-unsafe-eval'", "'unsafe-eval'"]
    inline = re.findall(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", body, re.S)
    hashes = {"'sha256-" + base64.b64encode(hashlib.sha256(s).digest()).decode() + "'" for s in inline}
    assert set(csp["script-src"][3:]) == hashes  # inline scripts run only by their hash
    assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
    assert csp["connect-src"] == ["'self'", "data:", "blob:"]
    assert "private" not in (resp.getheader("Cache-Control") or "")


@pytest.mark.browser
def test_the_page_boots_and_loads_the_demo_under_its_csp(page, demo_server, demo_data):
    """Real Chromium: Pyodide, PyScript and the viewer work under the policy, with no violation."""
    from conftest import wait_for_app_state

    violations = []
    page.page.add_init_script("document.addEventListener('securitypolicyviolation', e => "
                              "console.log('CSP violation', e.violatedDirective, e.sourceFile))")
    page.page.on("console", lambda m: violations.append(m.text) if "CSP violation" in m.text
                 or "Content Security Policy" in m.text else None)
    page.page.goto(demo_server.url + "/")
    assert "script-src 'self'" in page.page.evaluate(
        "fetch('/').then(r => r.headers.get('content-security-policy'))")
    wait_for_app_state(page, ("idle",), timeout_ms=120_000)
    log = page.page.evaluate("window.renderLog")
    assert log and log[-1]["final"], page.console[-10:]
    assert violations == [] and page.errors == []


def test_etag_and_conditional_requests(live):
    resp, _ = request(live, FRAME)
    etag, modified = resp.getheader("ETag"), resp.getheader("Last-Modified")
    assert etag and modified
    again, body = request(live, FRAME, {"If-None-Match": etag})
    assert again.status == 304 and body == b""
    since, _ = request(live, FRAME, {"If-Modified-Since": modified})
    assert since.status == 304
    other, _ = request(live, FRAME, {"If-None-Match": '"nope"'})
    assert other.status == 200


def test_if_range_mismatch_sends_whole_body(live, tree):
    resp, got = request(live, FRAME, {"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert resp.status == 200 and got == tree["frame"]


def test_dicomweb_paths_resolve_to_static_json(live, tree):
    resp, body = request(live, "/dicomweb/studies/1.2.3/series/4.5.6/metadata",
                         {"Accept-Encoding": "gzip"})
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/dicom+json"
    assert resp.getheader("Content-Encoding") == "gzip"
    assert json.loads(gzip.decompress(body)) == tree["metadata"]
    plain, body = request(live, "/dicomweb/studies/1.2.3/series/4.5.6/metadata")
    assert plain.getheader("Content-Encoding") is None
    assert json.loads(body) == tree["metadata"]
    qido, body = request(live, "/dicomweb/studies", {"Accept-Encoding": "gzip"})
    assert qido.status == 200 and qido.getheader("Content-Type") == "application/dicom+json"
    assert qido.getheader("Content-Encoding") == "gzip"  # text compressed on the fly
    assert json.loads(gzip.decompress(body)) == tree["metadata"] * 50


def test_runtime_types_and_compression(live, runtime):
    resp, body = request(live, "/static/pyodide/pyodide.asm.wasm", {"Accept-Encoding": "gzip, br"})
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/wasm"
    assert resp.getheader("Content-Encoding") == "gzip"
    original = (runtime / "pyodide" / "pyodide.asm.wasm").read_bytes()
    assert gzip.decompress(body) == original and len(body) < len(original)
    mjs, _ = request(live, "/static/pyodide/pyodide.mjs")
    assert mjs.getheader("Content-Type").startswith("text/javascript")
    ranged, part = request(live, "/static/pyodide/pyodide.asm.wasm",
                           {"Accept-Encoding": "gzip", "Range": "bytes=0-99"})
    assert ranged.status == 206 and ranged.getheader("Content-Encoding") is None
    assert part == original[:100]


@pytest.mark.parametrize("path", [
    "/dicomweb/../serve.py",
    "/dicomweb/%2e%2e/secret.txt",
    "/dicomweb/..%2fsecret.txt",
    "/dicomweb/%252e%252e/secret.txt",
    "/dicomweb/studies/..%5c..%5csecret.txt",
    "/dicomweb//etc/passwd",
    "/etc/passwd",
    "/app/../../etc/passwd",
    "/dicomweb/escape",
    "/dicomweb/escape_dir/secret.txt",
    "/.git/config",
    "/tests/conftest.py",
    "/dicomweb/%00",
])
def test_paths_outside_root_are_refused(live, path):
    resp, body = request(live, path)
    assert resp.status in (400, 404)
    assert b"top secret" not in body and b"[core]" not in body and b"root:" not in body


def test_directories_are_never_listed(live):
    for path in ("/dicomweb/", "/dicomweb/studies/1.2.3", "/app/", "/static/"):
        resp, body = request(live, path)
        assert resp.status == 404, path
        assert b"<a href" not in body


def test_head_has_length_and_no_body(live, tree):
    resp, body = request(live, FRAME, method="HEAD")
    assert resp.status == 200 and body == b""
    assert resp.getheader("Content-Length") == str(len(tree["frame"]))


def test_requests_are_logged_with_bytes_sent(live, tree):
    before = len(live.log)
    request(live, FRAME, {"Range": "bytes=10-19", "X-Probe": "log"})
    deadline = time.monotonic() + 5
    mine = []
    while not mine and time.monotonic() < deadline:
        time.sleep(0.01)  # the handler thread logs after the last byte is written
        # (an earlier test's request may be logged late, after `before` was taken)
        mine = [e for e in list(live.log)[before:] if e["range"] == "bytes=10-19"]
    (entry,) = mine
    assert entry["status"] == 206 and entry["bytes_sent"] == 10 and entry["range"] == "bytes=10-19"
