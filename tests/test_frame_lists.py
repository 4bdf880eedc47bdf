"""Frame lists (PS3.18 Retrieve Frames ``frames/1,3,5``) on real servers with a real multi-frame
DICOM (pydicom's 30-frame YBR JPEG cine, converted by ``app.convert``): serve.py's answer part by
part, and the engine loading it in one request per few frames from serve.py and Orthanc (which
both answer lists) and from nginx (which cannot: the engine falls back to one frame a request).
Every frame's final sha256 equals the one-frame-a-request run's."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from app.config import preset
from app.readers.multipart import MultipartReader, PartData, PartHeaders, boundary_from_content_type
from test_real_servers import DEPLOY, ORTHANC, free_port, orthanc_config, start, start_nginx
from test_real_servers import http as http_request

STARTS_SERVERS = True
SOURCE = "examples_ybr_color.dcm"  # US cine, 30 frames 240x320, JPEG baseline
FRAMES = 30


def source_path() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(SOURCE))


@pytest.fixture(scope="module")
def trees():
    """The cine converted twice: multipart frame files (``{n}.mht``) and bare codestreams."""
    from app.convert import convert

    # outside pytest's private (0700) temp folder: nginx's workers run as another user
    base = Path(tempfile.mkdtemp(prefix="frame-lists-"))
    base.chmod(0o755)
    try:
        convert([source_path()], base / "mht", alternates="htj2k,jls", quiet=True)
        convert([source_path()], base / "raw", alternates="htj2k,jls", raw=True, quiet=True)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def instance_dir(root: Path) -> Path:
    return next(root.glob("studies/*/series/*/instances/*"))


def url_path(root: Path, path: Path) -> str:
    return "/dicomweb/" + path.relative_to(root).as_posix()


def get(live, path: str, headers=None, method: str = "GET"):
    conn = http.client.HTTPConnection(*live.server.server_address[:2], timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), resp.read()
    finally:
        conn.close()


def parts_of(content_type: str, body: bytes) -> list[tuple[dict, bytes]]:
    reader = MultipartReader(boundary_from_content_type(content_type))
    parts: list[tuple[dict, bytes]] = []
    for event in reader.feed(body) + reader.close():
        if isinstance(event, PartHeaders):
            parts.append((event.headers, b""))
        elif isinstance(event, PartData):
            parts[-1] = (parts[-1][0], parts[-1][1] + bytes(event.data))
    return parts


# -- serve.py's answer ------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["mht", "raw"])
def test_a_frame_list_is_a_part_per_frame_in_the_order_asked(trees, serve_dir, framing):
    root = trees / framing
    live = serve_dir(root)
    frames = url_path(root, instance_dir(root) / "frames")
    asked = [7, 1, 30, 2, 2]
    status, headers, body = get(live, f"{frames}/{','.join(map(str, asked))}")
    assert status == 200 and headers["content-length"] == str(len(body))
    assert headers["content-type"].startswith('multipart/related; type="image/jphc"')
    parts = parts_of(headers["content-type"], body)
    assert len(parts) == len(asked)
    for number, (part_headers, data) in zip(asked, parts):
        _, single_headers, single = get(live, f"{frames}/{number}")
        if framing == "raw":  # the bare file, typed as its single answer is
            expected_headers, expected = {"content-type": single_headers["content-type"]}, single
        else:  # the stored part itself: not a multipart body nested in a part
            expected_headers, expected = parts_of(single_headers["content-type"], single)[0]
            assert "content-digest" in part_headers
        assert data == expected
        assert part_headers["content-location"] == f"{frames}/{number}"
        assert {k: v for k, v in part_headers.items() if k != "content-location"} == expected_headers


@pytest.mark.parametrize("numbers, status", [
    ("a,b", 400), ("1,,2", 400), ("0,1", 400), ("1,-2", 400), ("1,2,", 400), ("1,99999999999999999999", 400),
    (",".join(["1"] * 513), 400), ("1,31", 404), ("31,32", 404),
])
def test_a_bad_frame_list_is_a_clear_4xx(trees, serve_dir, numbers, status):
    root = trees / "mht"
    live = serve_dir(root)
    frames = url_path(root, instance_dir(root) / "frames")
    got, headers, body = get(live, f"{frames}/{numbers}")
    assert got == status and headers["content-type"].startswith("text/plain"), body[:200]
    assert b"Traceback" not in body and len(body) < 300
    assert get(live, f"{frames}/1,2")[0] == 200  # and it keeps serving


def test_range_and_head_on_a_frame_list(trees, serve_dir):
    """A Range on a list is ignored (200, the whole list); HEAD has the length and no body."""
    root = trees / "mht"
    live = serve_dir(root)
    frames = url_path(root, instance_dir(root) / "frames")
    status, headers, body = get(live, f"{frames}/3,4")
    ranged = get(live, f"{frames}/3,4", {"Range": "bytes=0-99"})
    assert ranged[0] == 200 and len(ranged[2]) == len(body) and "content-range" not in ranged[1]
    head = get(live, f"{frames}/3,4", method="HEAD")
    assert head[0] == 200 and head[2] == b"" and head[1]["content-length"] == str(len(body))


def test_frames_stored_gzip_or_outside_the_root_are_refused_in_a_list(trees, tmp_path, serve_dir):
    root = tmp_path / "data"
    frames = root / "studies" / "1" / "series" / "2" / "instances" / "3" / "frames"
    frames.mkdir(parents=True)
    stored = instance_dir(trees / "mht") / "frames"
    shutil.copy(stored / "1.mht", frames / "1.mht")
    (frames / "2.mht.gz").write_bytes(gzip.compress((stored / "2.mht").read_bytes()))
    outside = tmp_path / "outside" / "frames"
    outside.mkdir(parents=True)
    shutil.copy(stored / "1.mht", outside / "1.mht")
    (root / "studies" / "1" / "series" / "2" / "instances" / "4").symlink_to(tmp_path / "outside")
    (root / "studies" / "1" / "index.json").write_text("[]")
    live = serve_dir(root)
    status, _, body = get(live, "/dicomweb/studies/1/series/2/instances/3/frames/1,2")
    assert status == 400 and b"gzip" in body
    assert get(live, "/dicomweb/studies/1/series/2/instances/3/frames/2")[0] == 200  # alone: served
    assert get(live, "/dicomweb/studies/1/series/2/instances/4/frames/1,1")[0] == 404
    assert get(live, "/dicomweb/studies/1,1")[0] == 404  # a folder's index.json is not a frame
    assert get(live, "/dicomweb/studies/1/series/2/instances/3/frames/1,1")[0] == 200


# -- the engine on real servers ---------------------------------------------------------------------


def cli_load(url: str, config: str = "single", **options) -> tuple[dict[int, str], list[str], dict]:
    """``python -m app load`` in this process: (final sha256 by image, URLs asked, summary)."""
    from app.cli import load

    out, err = io.StringIO(), io.StringIO()
    asyncio.run(load(url, preset(config), out=out, err=err, **options))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    finals = {e["index"]: e["sha256"] for e in events if e["event"] == "Refinement" and e["final"]}
    asked = [e["url"] for e in events if e["event"] == "RequestStarted"]
    assert err.getvalue() == "", err.getvalue()
    return finals, asked, events[-1]


def is_list(url: str) -> bool:
    return "," in url.rsplit("/", 1)[1]


@pytest.mark.parametrize("config", ["single", "jls"])
def test_the_engine_asks_serve_py_for_frame_lists_with_the_same_finals(trees, serve_dir, config):
    root = trees / "mht"
    live = serve_dir(root)
    url = live.url + url_path(root, instance_dir(root).parent.parent)
    single, single_asked, single_summary = cli_load(url, config, frames_per_request=1)
    batched, asked, summary = cli_load(url, config)
    assert len(single) == FRAMES and batched == single
    assert len(single_asked) == FRAMES and not any(is_list(u) for u in single_asked)
    # the frame on screen alone, then lists of five (30 frames over six connections)
    assert [len(u.rsplit("/", 1)[1].split(",")) for u in asked] == [1, 5, 5, 5, 5, 5, 4]
    assert summary == {**summary, "event": "LoadSummary", "images": FRAMES, "final": FRAMES, "requests": len(asked)}
    lists = [r for r in live.server.request_log if "," in r["path"]]
    assert lists and all(r["status"] == 200 for r in lists)


def test_the_page_loads_the_cine_with_frame_lists(page, runtime, trees, serve_dir):
    """The page's engine (Pyodide, the browser's fetch) asks serve.py for lists and shows every
    frame final; the frame on screen is the one the overlay names."""
    from conftest import wait_for_app_state

    root = trees / "mht"
    live = serve_dir(root)
    series = url_path(root, instance_dir(root).parent.parent)
    page.page.goto(f"{live.url}/?url={series}&config=single")
    wait_for_app_state(page, ("idle",))
    log = page.page.evaluate("window.renderLog")
    assert {e["index"] for e in log if e["final"]} == set(range(FRAMES)), log[-3:]
    frames = [u for u in page.requests if "/frames/" in u]
    assert sum(is_list(u) for u in frames) >= 2 and len(frames) < FRAMES / 3, [u.rsplit("/", 1)[1] for u in frames]
    assert all(r["status"] == 200 for r in live.server.request_log if "," in r["path"])
    assert "/ 30" in page.page.inner_text("#overlay-tl") and page.errors == []


@pytest.mark.nginx
def test_nginx_cannot_answer_a_list_and_the_engine_falls_back(trees, runtime, tmp_path, serve_dir):
    root = trees / "mht"
    manifest = json.loads((root / "dicomweb.json").read_text())
    port = free_port()
    proc = start_nginx(tmp_path / "nginx", DEPLOY / "static-dicomweb.conf", port, APP_ROOT=str(Path.cwd()),
                       DATA_ROOT=str(root), BOUNDARY=manifest["boundary"], MHT_TYPES="")
    try:
        study = url_path(root, instance_dir(root).parent.parent)
        batched, asked, _ = cli_load(f"http://127.0.0.1:{port}{study}")
        status, _, _ = http_request(f"http://127.0.0.1:{port}{url_path(root, instance_dir(root) / 'frames')}/1,2")
    finally:
        proc.stop()
    live = serve_dir(root)
    single, _, _ = cli_load(live.url + study, frames_per_request=1)
    assert status == 404
    assert batched == single and len(batched) == FRAMES
    assert sum(is_list(u) for u in asked) == 1  # refused once, then one frame a request
    assert len(asked) == FRAMES + 1


@pytest.fixture(scope="module")
def orthanc_cine(tmp_path_factory):
    import pydicom

    tmp = tmp_path_factory.mktemp("orthanc-cine")
    port = free_port()
    proc = start("Orthanc", [ORTHANC, str(orthanc_config(tmp, port))], tmp / "orthanc.log",
                 f"http://127.0.0.1:{port}/system")
    try:
        url = f"http://127.0.0.1:{port}"
        status, _, body = http_request(url + "/instances", method="POST", data=source_path().read_bytes(),
                               headers={"Content-Type": "application/dicom"})
        if status != 200:
            proc.fail(f"upload of {SOURCE} -> HTTP {status}: {body[:300]!r}")
        ds = pydicom.dcmread(source_path(), stop_before_pixels=True)
        yield f"{url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    finally:
        proc.stop()


@pytest.mark.orthanc
def test_orthanc_answers_frame_lists_and_the_engine_uses_them(orthanc_cine):
    single, single_asked, _ = cli_load(orthanc_cine, frames_per_request=1)
    batched, asked, summary = cli_load(orthanc_cine)
    assert len(single) == FRAMES and batched == single
    assert len(single_asked) == FRAMES
    assert [len(u.rsplit("/", 1)[1].split(",")) for u in asked] == [1, 5, 5, 5, 5, 5, 4]
    assert summary["requests"] == len(asked)


def test_the_bench_rows_compare_both_ways_on_the_cine():
    """``bench --frame-lists`` on loopback, one run: both ways load every frame; lists ask fewer."""
    from app.bench.frame_lists import SOURCES, frame_list_rows, render_frame_lists

    cine = next(label for label in SOURCES if "cine" in label)
    single, lists = frame_list_rows("none", 1, sources=[cine])
    assert (single.way, lists.way) == ("one frame a request", "frame lists")
    assert single.finals == lists.finals == FRAMES and single.requests == FRAMES
    assert lists.requests < FRAMES / 2 and lists.bytes_frames > 0
    assert "| US cine 30 x 240x320 RGB" in render_frame_lists([single, lists], (0.5, 0.5, 0.5))
