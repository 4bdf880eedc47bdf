"""Trees in the Static DICOMweb toolkit's layout, served as they are by serve.py and nginx, loaded exactly.

`frames/1` -> `frames/1.mht` / `frames/1.mht.gz` (stored gzip bytes, Content-Encoding: gzip, ranges on
the stored bytes), `metadata` -> `metadata.gz`, folders -> `index.json.gz`.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.cli import pixel_sha256
from toolkit_tree import ToolkitTree, make_toolkit_tree

PROJECT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TEMPLATE = PROJECT / "deploy" / "nginx" / "static-dicomweb.conf"
CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))


def http(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def tree() -> ToolkitTree:
    # outside pytest's private (0700) temp folder: nginx's workers run as another user
    folder = Path(tempfile.mkdtemp(prefix="toolkit-tree-"))
    folder.chmod(0o755)
    mr_sop = pydicom.dcmread(MR).SOPInstanceUID
    try:
        yield make_toolkit_tree(folder / "tree", [CT, MR], uncompressed={mr_sop}, alternates="jls")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text(errors='replace')[-3000:]}", pytrace=False)
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"no answer at {url}", pytrace=False)


@pytest.fixture(scope="module", params=["serve.py", "nginx"])
def served(request, tree, tmp_path_factory):
    """(base URL of the tree, server name): serve.py --root TREE as a process, or nginx's template."""
    prefix = tmp_path_factory.mktemp(request.param)
    port = _free_port()
    log = prefix / "server.log"
    if request.param == "serve.py":
        argv = [sys.executable, str(PROJECT / "serve.py"), "--root", str(tree.root), "--port", str(port),
                "--no-setup"]
    else:
        for sub in ("logs", "tmp"):
            (prefix / sub).mkdir()
        text = TEMPLATE.read_text()
        for key, value in {"LISTEN": f"127.0.0.1:{port}", "APP_ROOT": str(PROJECT),
                           "DATA_ROOT": str(tree.root), "BOUNDARY": "none",
                           "MHT_TYPES": "multipart/related mht gz;"}.items():
            text = text.replace(f"@{key}@", value)
        (prefix / "nginx.conf").write_text(text)
        argv = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        log = prefix / "logs" / "error.log"
    with open(prefix / "stdout.log", "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait(f"http://127.0.0.1:{port}/index.html", proc, log)
        yield f"http://127.0.0.1:{port}/dicomweb", request.param
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _frame_files(tree: ToolkitTree, suffix: str) -> list[Path]:
    return sorted(tree.root.glob(f"studies/*/series/*/instances/*/frames/1{suffix}"))


def test_the_helper_writes_the_toolkit_layout(tree):
    names = {p.name for p in tree.root.rglob("*") if p.is_file()}
    assert {"index.json.gz", "metadata.gz", "1.mht", "1.mht.gz"} <= names
    assert not names & {"index.json", "metadata", "alternates.json", "dicomweb.json", "1"}
    first = _frame_files(tree, ".mht")[0].read_bytes()
    assert re.match(rb"--BOUNDARY_[0-9a-f-]{36}\r\nContent-Type: image/jphc;transfer-syntax=[0-9.]+\r\n\r\n",
                    first)


def test_mht_frames_are_typed_from_their_first_line(served, tree):
    base, server = served
    frame = _frame_files(tree, ".mht")[0]
    url = base + "/" + frame.relative_to(tree.root).as_posix().removesuffix(".mht")
    status, headers, body = http(url, {"Accept-Encoding": "gzip"})
    assert status == 200 and body == frame.read_bytes() and "Content-Encoding" not in headers
    ctype = headers["Content-Type"]
    assert ctype.startswith("multipart/related")
    if server == "serve.py":  # nginx cannot read each file's boundary; readers take it from the body
        boundary = frame.read_bytes().split(b"\r\n", 1)[0][2:].decode()
        assert f"boundary={boundary}" in ctype and 'type="image/jphc"' in ctype
        assert "transfer-syntax=1.2.840.10008.1.2.4.202" in ctype
    status, headers, body = http(url + ".mht")  # asked for by its stored name, as a plain host would
    assert status == 200 and body == frame.read_bytes() and headers["Content-Type"].startswith("multipart/related")
    jls = frame.parent.parent / "jls" / "1.mht"
    status, headers, body = http(url.replace("/frames/", "/jls/"))
    assert status == 200 and body == jls.read_bytes() and headers["Content-Type"].startswith("multipart/related")


def test_gzip_frames_go_out_as_stored_with_ranges_on_the_stored_bytes(served, tree):
    base, _ = served
    (frame,) = _frame_files(tree, ".mht.gz")
    stored = frame.read_bytes()
    url = base + "/" + frame.relative_to(tree.root).as_posix().removesuffix(".mht.gz")
    status, headers, body = http(url, {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip" and body == stored
    assert headers["Content-Type"].startswith("multipart/related")
    status, headers, body = http(url, {"Accept-Encoding": "gzip", "Range": "bytes=0-99"})
    assert status == 206 and headers["Content-Encoding"] == "gzip" and body == stored[:100]
    assert headers["Content-Range"] == f"bytes 0-99/{len(stored)}"


def test_metadata_and_folders_come_from_their_gz_files(served, tree):
    base, _ = served
    series_uid, folder = next(iter(tree.series.items()))
    study = folder.parent.parent
    for path, stored in ((tree.url_path(series_uid) + "/metadata", folder / "metadata.gz"),
                         ("/studies", tree.root / "studies" / "index.json.gz"),
                         (f"/studies/{study.name}/series", study / "series" / "index.json.gz")):
        status, headers, body = http(base + path, {"Accept-Encoding": "gzip"})
        assert status == 200, path
        assert headers["Content-Type"] == "application/dicom+json" and headers["Content-Encoding"] == "gzip"
        assert body == stored.read_bytes()
        assert isinstance(json.loads(gzip.decompress(body)), list)


@pytest.mark.parametrize("config", ["single", "htj2k", "nonProgressive", "htj2kByteRange", "htj2kRangeThenStream"])
def test_the_cli_loads_every_series_exactly(served, tree, config):
    base, server = served
    for series_uid in tree.series:
        done = subprocess.run([sys.executable, "-m", "app", "load", base + tree.url_path(series_uid),
                               "--config", config], cwd=PROJECT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{server} {config}: {done.stderr}"
        events = [json.loads(line) for line in done.stdout.splitlines()]
        (final,) = [e for e in events if e["event"] == "Refinement" and e["final"]]
        assert final["sha256"] == pixel_sha256(tree.pixels[final["sop_instance_uid"]])
