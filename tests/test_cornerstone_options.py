"""Cornerstone 5.14's retrieve options as the engine honours them: ``initialChunkSize`` for the
first range and the first streamed decode, ``chunkSize`` between streamed decodes, ``decodeLevel`` 0
(a full-size LOSSY partial image), and ``allowedOrigins`` for BulkDataURIs and redirects.

MockTransport for the rules (what was asked, in order); a loopback server and NativeTransport for
redirects, where the real client's behaviour matters."""

from __future__ import annotations

import asyncio
import threading
from http.server import ThreadingHTTPServer

import numpy as np
import pytest

from app.codecs import HTJ2K_LOSSLESS_RPCL
from app.config import ImageQualityStatus as Q
from app.config import RetrieveConfig, preset
from app.engine import ImageFailed, Phase, Refinement, RetrieveEngine
from app.study import stack_from_metadata
from app.transport.mock import MockResponse
from app.transport.native import NativeTransport
from helpers import BASE, QuietHandler, Site, engine_options, htj2k_frame, image_pixels, instance_json, multipart_frame, run_mock

OTHER = "http://other.test/store"


@pytest.fixture(scope="module")
def image():
    pixels = image_pixels(256, 256, seed=1)
    return pixels, htj2k_frame(pixels)


def one_image_site(image) -> Site:
    site = Site()
    site.add_frame(0, *image, HTJ2K_LOSSLESS_RPCL)
    return site


def refinements(events):
    return [e for e in events if isinstance(e, Refinement)]


def failures(events):
    return [e for e in events if isinstance(e, ImageFailed)]


def frame_ranges(transport):
    return [r.byte_range for r in transport.requests if "/frames/" in r.url]


def assert_final(site, events, engine):
    assert engine.reached_final(0) and engine.phase(0) is Phase.FINAL, failures(events)
    np.testing.assert_array_equal(refinements(events)[-1].pixels, site.pixels[0])


def config(**options) -> RetrieveConfig:
    return RetrieveConfig.from_json({"retrieveOptions": {"single": options}})


def in_pieces(site, size=512):
    """Serve the frame whole, in small pieces, so streamed decodes can happen between them."""
    body, ctype, _ = next(iter(site.files.values()))
    site.script = lambda req, n: (MockResponse(200, {"content-type": ctype},
                                               [body[i:i + size] for i in range(0, len(body), size)])
                                  if "/frames/" in req.url else None)


# -- initialChunkSize / chunkSize -------------------------------------------------------------------


@pytest.mark.parametrize("index, end", [(0, 5000), (1, 5000 + 131072)])
def test_a_first_range_set_only_by_initial_chunk_size_is_honoured(image, index, end):
    site = one_image_site(image)
    cfg = RetrieveConfig.from_json({
        "stages": [{"id": "fast", "retrieveType": "fast"}, {"id": "final", "retrieveType": "final"}],
        "retrieveOptions": {"fast": {"rangeIndex": index, "initialChunkSize": 5000, "decodeLevel": 2},
                            "final": {"rangeIndex": -1}},
    })
    events, engine, transport = run_mock(site, cfg)
    assert frame_ranges(transport)[0] == (0, end - 1)
    assert_final(site, events, engine)


def partials(events):
    return [r for r in refinements(events) if not r.final]


def test_streaming_holds_the_first_decode_until_initial_chunk_size(image):
    site = one_image_site(image)
    in_pieces(site)
    events, engine, _ = run_mock(site, config(streaming=True, decodeLevel=2))
    free = partials(events)
    assert free and free[0].bytes_received < 12000  # the smallest level completes before 12000 bytes
    site = one_image_site(image)
    in_pieces(site)
    events, engine, _ = run_mock(site, config(streaming=True, decodeLevel=2, initialChunkSize=12000))
    held = partials(events)
    assert held and held[0].bytes_received >= 12000
    assert_final(site, events, engine)


def test_streaming_keeps_partial_decodes_chunk_size_apart(image):
    site = one_image_site(image)
    in_pieces(site)
    events, engine, _ = run_mock(site, config(streaming=True, decodeLevel=2, initialChunkSize=1))
    assert [p.reduce for p in partials(events)] == [2, 1]  # every level as it completes
    site = one_image_site(image)
    in_pieces(site)
    events, engine, _ = run_mock(site, config(streaming=True, decodeLevel=2, initialChunkSize=1, chunkSize=40000))
    assert [p.reduce for p in partials(events)] == [2]  # the next level came less than 40000 bytes later
    assert_final(site, events, engine)


def test_our_streaming_preset_decodes_each_level_as_it_completes(image):
    site = one_image_site(image)
    in_pieces(site)
    events, engine, _ = run_mock(site, preset("htj2k"))
    assert [(p.reduce, p.status) for p in partials(events)] == [(2, Q.SUBRESOLUTION), (1, Q.SUBRESOLUTION)]
    assert_final(site, events, engine)


# -- decodeLevel 0 ------------------------------------------------------------------------------------


def test_decode_level_0_streams_a_full_size_lossy_image(image):
    site = one_image_site(image)
    in_pieces(site)
    events, engine, _ = run_mock(site, config(streaming=True, decodeLevel=0))
    first = partials(events)
    assert first and all((p.status, p.rows, p.columns, p.final) == (Q.LOSSY, 256, 256, False) for p in first)
    assert refinements(events)[-1].status == Q.FULL_RESOLUTION
    assert_final(site, events, engine)


def test_decode_level_0_byte_range_is_lossy_then_final(image):
    site = one_image_site(image)
    cfg = RetrieveConfig.from_json({
        "stages": [{"id": "fast", "retrieveType": "fast"}, {"id": "final", "retrieveType": "final"}],
        "retrieveOptions": {"fast": {"rangeIndex": 0, "initialChunkSize": 4096, "decodeLevel": 0},
                            "final": {"rangeIndex": -1}},
    })
    events, engine, transport = run_mock(site, cfg)
    refs = refinements(events)
    assert (refs[0].status, refs[0].rows, refs[0].final) == (Q.LOSSY, 256, False)
    assert frame_ranges(transport)[0] == (0, 4095)
    assert_final(site, events, engine)


# -- allowedOrigins: BulkDataURIs and redirects ------------------------------------------------------------


def bulk_elsewhere(image) -> Site:
    """The series' metadata points its pixel data at another host."""
    site = one_image_site(image)
    url, entry = next(iter(site.files.items()))
    site.files = {url.replace(BASE, OTHER): entry}
    site.metadata[0]["7FE00010"] = {"vr": "OB", "BulkDataURI": f"{OTHER}/instances/1.2.3.4.1/frames"}
    return site


def test_a_bulk_data_uri_on_another_host_fails_naming_it(image):
    site = bulk_elsewhere(image)
    events, engine, transport = run_mock(site, preset("htj2k"))
    (failure,) = failures(events)
    assert "other.test" in failure.message and "allowedOrigins" in failure.message
    assert not transport.requests and not refinements(events)


def test_allowed_origins_let_a_bulk_data_uri_elsewhere_load(image):
    site = bulk_elsewhere(image)
    cfg = RetrieveConfig.from_json({**preset("htj2k").to_json(), "allowedOrigins": ["http://other.test"]})
    events, engine, transport = run_mock(site, cfg)
    assert all(r.url.startswith(OTHER) for r in transport.requests)
    assert_final(site, events, engine)


@pytest.mark.parametrize("target, allowed", [(BASE + "/moved", True), (OTHER + "/moved", False)])
def test_a_redirect_is_followed_only_to_an_allowed_origin(image, target, allowed):
    site = one_image_site(image)
    url, entry = next(iter(site.files.items()))
    site.files[target] = entry
    site.script = lambda req, n: MockResponse(302, {"location": target}) if req.url == url else None
    events, engine, transport = run_mock(site, preset("htj2k"))
    asked = [r.url for r in transport.requests]
    if allowed:
        assert asked == [url, target]
        assert_final(site, events, engine)
    else:
        assert asked == [url]  # the other host is never asked
        (failure,) = failures(events)
        assert "other.test" in failure.message


def test_an_answer_from_a_redirect_the_client_followed_elsewhere_is_refused(image):
    """The browser's fetch follows redirects itself: its response.url tells where it ended."""
    site = one_image_site(image)
    body, ctype, _ = next(iter(site.files.values()))
    site.script = lambda req, n: MockResponse(200, {"content-type": ctype}, body, url=OTHER + "/x")
    events, engine, _ = run_mock(site, preset("htj2k"))
    (failure,) = failures(events)
    assert "other.test" in failure.message and not refinements(events)


# -- the same over a real loopback server and NativeTransport ----------------------------------------------


class _Redirecting(QuietHandler):
    def do_GET(self):
        server = self.server
        server.log.append(self.path)
        if self.path.endswith("/frames/1"):
            self._head(302, {"Location": server.location, "Content-Length": "0"})
            return
        body, ctype = server.frame
        self._head(200, {"Content-Type": ctype, "Content-Length": str(len(body))})
        self.wfile.write(body)


@pytest.fixture()
def redirecting(image):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    httpd.daemon_threads = True
    httpd.log, httpd.frame = [], multipart_frame(image[1], HTJ2K_LOSSLESS_RPCL)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def run_native(series_url: str, image, cfg: RetrieveConfig):
    metadata = [instance_json("1.2.3.4.1", 1, 256, 256, HTJ2K_LOSSLESS_RPCL)]

    async def main():
        transport = NativeTransport()
        try:
            engine = RetrieveEngine(stack_from_metadata(metadata, series_url), cfg, transport, **engine_options())
            return [e async for e in engine.run()], engine
        finally:
            await transport.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("host, allowed", [("127.0.0.1", True), ("localhost", False)])
def test_native_transport_follows_a_redirect_only_to_the_study_origin(redirecting, image, host, allowed):
    port = redirecting.server_address[1]
    redirecting.location = f"http://{host}:{port}/moved/frame"
    events, engine = run_native(f"http://127.0.0.1:{port}/s", image, preset("htj2k"))
    if allowed:
        assert redirecting.log == ["/s/instances/1.2.3.4.1/frames/1", "/moved/frame"]
        np.testing.assert_array_equal(refinements(events)[-1].pixels, image[0])
        assert engine.reached_final(0)
    else:
        assert redirecting.log == ["/s/instances/1.2.3.4.1/frames/1"]  # localhost is another origin
        (failure,) = failures(events)
        assert f"localhost:{port}" in failure.message


# -- discovery says why there is no metadata ----------------------------------------------------------------


def discover_over(handler):
    from app.study import discover
    from app.transport.mock import MockTransport

    return asyncio.run(discover(MockTransport(handler), "http://a.test/s/studies/1/series/2"))


def test_no_series_metadata_names_each_candidates_cause():
    from app.study import DiscoveryError

    def handler(req):
        if req.url.endswith("/metadata"):
            return MockResponse(302, {"location": "http://a.test/elsewhere"})
        if req.url.endswith("/metadata.json"):
            return MockResponse(200, {"content-type": "application/json"}, b"<html>login</html>")
        return MockResponse(404)

    with pytest.raises(DiscoveryError) as caught:
        discover_over(handler)
    assert str(caught.value) == (
        "no series metadata at http://a.test/s/studies/1/series/2/metadata: "
        "metadata: redirected (HTTP 302) to http://a.test/elsewhere: redirects are not followed; "
        "metadata.gz: HTTP 404; metadata.json: not JSON (Expecting value: line 1 column 1 (char 0))")


def test_a_timeout_is_named_even_when_the_other_candidates_404():
    from app.study import DiscoveryError
    from app.transport.errors import TransportTimeout

    def handler(req):
        if req.url.endswith("/metadata.json"):
            raise TransportTimeout(f"GET {req.url}: timed out")
        return MockResponse(404)

    with pytest.raises(DiscoveryError, match=r"metadata.json: timed out"):
        discover_over(handler)


def test_metadata_the_client_was_redirected_for_to_another_host_is_refused():
    from app.study import DiscoveryError

    def handler(req):
        if req.url.endswith("/metadata"):
            return MockResponse(200, {"content-type": "application/json"}, b"[]", url="http://other.test/m")
        return MockResponse(404)

    with pytest.raises(DiscoveryError, match=r"metadata: redirected to another origin \(http://other.test/m\)"):
        discover_over(handler)


# -- the browser transport in a real Chromium: where a followed redirect ended ------------------------------

_PAGE = b"""<!doctype html><meta charset="utf-8"><script type="module">
import { loadPyodide } from "/static/pyodide/pyodide.mjs";
window.py = loadPyodide({ indexURL: "/static/pyodide/" });
</script>"""
_SOURCES = ("app/__init__.py", "app/transport/__init__.py", "app/transport/base.py",
            "app/transport/errors.py", "app/transport/browser.py", "app/worker_loop.py", "app/ui/net.mjs")


class _PageAndRedirect(QuietHandler):
    """The test page, Pyodide, the transport's sources; /redirect sends the page's fetch to the
    same port under another host name (another origin), whose answer allows any origin."""

    def do_GET(self):
        from pathlib import Path

        root = Path(__file__).resolve().parents[1]
        path = self.path.split("?")[0]
        headers = {"Access-Control-Allow-Origin": "*"}
        if path == "/":
            body, ctype = _PAGE, "text/html"
        elif path == "/redirect":
            self._head(302, {**headers, "Location": self.server.location, "Content-Length": "0"})
            return
        elif path == "/frame":
            body, ctype = b"frame bytes", "application/octet-stream"
        elif path.startswith("/static/pyodide/") or path.lstrip("/") in _SOURCES:
            file = root / path.lstrip("/")
            body = file.read_bytes()
            ctype = {".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}.get(
                file.suffix, "application/octet-stream")
        else:
            self._head(404, {"Content-Length": "0"})
            return
        self._head(200, {**headers, "Content-Type": ctype, "Content-Length": str(len(body))})
        self.wfile.write(body)


_RUN = """async ([sources, url]) => {
  const py = await window.py;
  // the network worker's Net, run on this thread: app/ui/worker.mjs's engineNet posts to it instead
  const { Net } = await import("/app/ui/net.mjs");
  let listener = null;
  const net = new Net((message) => listener(message));
  globalThis.engineNet = { send: (text) => net.handle(text), listen: (callback) => { listener = callback; } };
  for (const path of sources) {
    const text = await (await fetch("/" + path)).text();
    py.FS.mkdirTree("/home/pyodide/" + path.split("/").slice(0, -1).join("/"));
    py.FS.writeFile("/home/pyodide/" + path, text);
  }
  py.globals.set("target", url);
  return await py.runPythonAsync(`
from app.transport.browser import BrowserTransport
resp = await BrowserTransport().get(target)
body = b"".join([c async for c in resp.chunks()])
f"{resp.status} {resp.url} {body.decode()}"
`);
}"""


@pytest.mark.browser
def test_browser_transport_reports_where_a_followed_redirect_ended(browser):
    """fetch follows redirects by itself: the answer's url must be where it ended (another
    origin here), which is what the engine checks against allowedOrigins."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _PageAndRedirect)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    httpd.location = f"http://localhost:{port}/frame"
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        result = page.evaluate(_RUN, [list(_SOURCES), f"http://127.0.0.1:{port}/redirect"])
    finally:
        context.close()
        httpd.shutdown()
        httpd.server_close()
    assert result == f"200 http://localhost:{port}/frame frame bytes"


# -- the CLI: a BulkDataURI on another origin, refused unless --allow-origin names it -----------------------


class _BulkElsewhere(QuietHandler):
    """Series metadata whose BulkDataURI names this server under another host name."""

    def do_GET(self):
        import json

        server = self.server
        server.log.append(self.headers.get("Host", "") + self.path)
        if self.path == "/s/studies/1.2.3/series/1.2.3.4/metadata":
            doc = [instance_json("1.2.3.4.1", 1, 256, 256, HTJ2K_LOSSLESS_RPCL)]
            doc[0]["7FE00010"] = {"vr": "OB", "BulkDataURI": f"{server.elsewhere}/bulk/1.2.3.4.1/frames"}
            body, ctype = json.dumps(doc).encode(), "application/dicom+json"
        elif self.path == "/bulk/1.2.3.4.1/frames/1":
            body, ctype = server.frame
        else:
            self._head(404, {"Content-Length": "0"})
            return
        self._head(200, {"Content-Type": ctype, "Content-Length": str(len(body))})
        self.wfile.write(body)


@pytest.mark.parametrize("allow", [False, True])
def test_cli_loads_bulk_data_on_another_origin_only_when_allowed(image, allow):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from app.cli import pixel_sha256

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _BulkElsewhere)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    httpd.log, httpd.frame = [], multipart_frame(image[1], HTJ2K_LOSSLESS_RPCL)
    httpd.elsewhere = f"http://localhost:{port}"
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    args = ["--allow-origin", httpd.elsewhere] if allow else []
    try:
        result = subprocess.run([sys.executable, "-m", "app", "load", f"http://127.0.0.1:{port}/s/studies/1.2.3/series/1.2.3.4", *args],
                                cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    finally:
        httpd.shutdown()
        httpd.server_close()
    if allow:
        assert result.returncode == 0, result.stderr
        finals = [json.loads(line) for line in result.stdout.splitlines()]
        finals = [e for e in finals if e["event"] == "Refinement" and e["final"]]
        assert [e["sha256"] for e in finals] == [pixel_sha256(image[0])]
    else:
        assert result.returncode == 1
        assert f"localhost:{port}" in result.stderr and "allowedOrigins" in result.stderr
        assert not [entry for entry in httpd.log if "/bulk/" in entry]  # the other origin was never asked
