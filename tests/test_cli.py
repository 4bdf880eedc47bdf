"""``python -m app load``: JSON lines on stdout, one error line on stderr, exit codes."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.cli import pixel_sha256
from app.config import parse_config
from app.convert import convert
from helpers import stored_frames

PROJECT = Path(__file__).resolve().parent.parent
RADIOGRAPH_SERIES = "1.3.51.0.7.2481275770.33884.26178.36453.11104.7622.4803"


def app(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=PROJECT, capture_output=True, text=True,
                          timeout=timeout)


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_load_radiograph_prints_json_lines_and_exits_0(demo_server, demo_data):
    meta = json.loads((demo_data / "demo.json").read_text())
    url = demo_server.url + next(d for d in meta if d["seriesInstanceUID"] == RADIOGRAPH_SERIES)["url"]
    result = app("load", url, "--config", "htj2k")
    assert result.returncode == 0, result.stderr
    events = lines(result.stdout)
    assert events[0]["event"] == "StackReady" and events[0]["images"] == 1
    refs = [e for e in events if e["event"] == "Refinement"]
    assert all("pixels" not in e for e in events)
    assert [r["final"] for r in refs] == [False] * (len(refs) - 1) + [True]
    assert refs[0]["status"] == "SUBRESOLUTION" and refs[-1]["status"] == "FULL_RESOLUTION"
    for key in ("index", "sop_instance_uid", "frame", "stage_id", "rows", "columns", "pixel_spacing",
                "bytes_received", "t_ms", "decode_ms", "transfer_syntax", "sha256"):
        assert key in refs[-1]
    source = pydicom.dcmread(PROJECT / ".cache" / "demo" / "radiograph" / "cat.dcm").pixel_array
    assert refs[-1]["sha256"] == hashlib.sha256(np.ascontiguousarray(source, "<u2").tobytes()).hexdigest()
    assert {"RequestStarted", "FirstBytes", "RequestFinished"} <= {e["event"] for e in events}


def test_a_failed_image_exits_1(tmp_path, serve_dir):
    out = tmp_path / "tree"
    convert([get_testdata_file("CT_small.dcm")], out, "", quiet=True)
    for frame in stored_frames(out, "studies/*/series/*/instances/*/frames/1"):
        frame.unlink()
    server = serve_dir(out)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"stages": [{"id": "only"}], "retrieveOptions": {"default": {}}}))
    result = app("load", server.url + "/dicomweb", "--config", str(config))
    assert result.returncode == 1
    events = lines(result.stdout)
    (failed,) = [e for e in events if e["event"] == "ImageFailed"]
    assert "404" in failed["message"] and failed["stage_id"] == "only"


def test_errors_are_one_line_unless_debug(tmp_path):
    result = app("load", "http://127.0.0.1:9/dicomweb")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")
    debug = app("load", "http://127.0.0.1:9/dicomweb", "--debug")
    assert "Traceback" in debug.stderr
    bad = app("load", "http://127.0.0.1:9/dicomweb", "--config", "noSuchPreset")
    assert bad.returncode == 1 and "noSuchPreset" in bad.stderr and bad.stderr.count("\n") == 1


def test_subcommand_dispatch():
    assert app().returncode == 0
    assert app("frobnicate").returncode == 2
    assert app("convert", "--help").returncode == 0


def test_pixel_sha256_is_little_endian_native_dtype():
    a = np.arange(6, dtype=">i2").reshape(2, 3)
    assert pixel_sha256(a) == hashlib.sha256(a.astype("<i2").tobytes()).hexdigest()
    assert pixel_sha256(a.T) == hashlib.sha256(np.ascontiguousarray(a.T, "<i2").tobytes()).hexdigest()


# Cornerstone3D 5.14's own example configurations, by hand from packages/core/examples/stackProgressive
# (jlsMixedOptions, htj2kProgressiveOptions, htj2kMixedOptions), the retrieve-configuration page's
# byte-range example with initialChunkSize, and the interleaved stage set with byte ranges.
_SEQUENTIAL = [{"id": "lossySequential", "retrieveType": "singleFast"},
               {"id": "finalSequential", "retrieveType": "singleFinal"}]
CORNERSTONE_5_14 = {
    "stackProgressive JLS Mixed": {
        "stages": _SEQUENTIAL,
        "retrieveOptions": {"singleFast": {"imageQualityStatus": 6, "framesPath": "/jlsThumbnail/"},
                            "singleFinal": {"framesPath": "/jls/"}}},
    "stackProgressive HTJ2K": {"retrieveOptions": {"single": {"streaming": True, "decodeLevel": 1}}},
    "stackProgressive HTJ2K Bytes": {
        "stages": [{"id": "lossySequential", "retrieveType": "singleFast"},
                   {"id": "lossySequentialFailure", "retrieveType": "singleFastFailure"},
                   {"id": "lossyMiddle", "retrieveType": "singleMiddle"},
                   {"id": "lossyMiddleFailure", "retrieveType": "singleMiddleFailure"},
                   {"id": "finalSequential", "retrieveType": "singleFinal"}],
        "retrieveOptions": {"singleFast": {"decodeLevel": 2, "chunkSize": 131072, "rangeIndex": 0},
                            "singleFastFailure": {"decodeLevel": 3, "rangeIndex": 0},
                            "singleMiddle": {"decodeLevel": 0, "rangeIndex": 10},
                            "singleMiddleFailure": {"decodeLevel": 1, "rangeIndex": 10},
                            "singleFinal": {"rangeIndex": -1}}},
    "byte range with initialChunkSize": {
        "stages": [{"id": "lossySequential", "retrieveType": "singleFast"},
                   {"id": "middle", "retrieveType": "singleMiddle"},
                   {"id": "finalSequential", "retrieveType": "singleFinal"}],
        "retrieveOptions": {"singleFast": {"rangeIndex": 0, "initialChunkSize": 16384, "chunkSize": 262144},
                            "singleMiddle": {"rangeIndex": 5},
                            "singleFinal": {"rangeIndex": -1}}},
    "interleaved": {
        "stages": [
            {"id": "initialImages", "positions": [0.5, 0, -1], "retrieveType": "default",
             "requestType": "thumbnail", "priority": 5,
             "nearbyFrames": [{"offset": -1, "imageQualityStatus": 3}, {"offset": 1, "imageQualityStatus": 3},
                              {"offset": 2, "imageQualityStatus": 1}]},
            {"id": "quarterThumb", "decimate": 4, "offset": 3, "requestType": "thumbnail",
             "retrieveType": "multipleFast", "priority": 6},
            {"id": "halfThumb", "decimate": 4, "offset": 1, "priority": 7, "requestType": "thumbnail",
             "retrieveType": "multipleFast"},
            {"id": "quarterFull", "decimate": 4, "offset": 2, "priority": 8, "requestType": "thumbnail",
             "retrieveType": "multipleFinal"},
            {"id": "halfFull", "decimate": 4, "offset": 0, "priority": 9, "requestType": "thumbnail",
             "retrieveType": "multipleFinal"},
            {"id": "threeQuarterFull", "decimate": 4, "offset": 1, "priority": 10, "requestType": "thumbnail",
             "retrieveType": "multipleFinal"},
            {"id": "finalFull", "decimate": 4, "offset": 3, "priority": 11, "requestType": "thumbnail",
             "retrieveType": "multipleFinal"},
            {"id": "errorRetrieve"}],
        "retrieveOptions": {"default": {"rangeIndex": -1},
                            "multipleFast": {"rangeIndex": 0, "initialChunkSize": 65536, "decodeLevel": 3},
                            "multipleFinal": {"rangeIndex": -1}}},
}


def _demo_url(demo_data, series_uid: str = RADIOGRAPH_SERIES) -> str:
    meta = json.loads((demo_data / "demo.json").read_text())
    return next(d for d in meta if d["seriesInstanceUID"] == series_uid)["url"]


@pytest.mark.parametrize("name", sorted(CORNERSTONE_5_14))
def test_cornerstone_5_14_examples_validate_and_load(name, tmp_path, demo_server, demo_data):
    doc = CORNERSTONE_5_14[name]
    assert parse_config(json.dumps(doc)).warnings == ()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(doc))
    result = app("load", demo_server.url + _demo_url(demo_data), "--config", str(config), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    refs = [e for e in lines(result.stdout) if e["event"] == "Refinement"]
    source = pydicom.dcmread(PROJECT / ".cache" / "demo" / "radiograph" / "cat.dcm").pixel_array
    assert refs[-1]["final"] and refs[-1]["sha256"] == pixel_sha256(source)
    assert_ranges_follow(parse_config(json.dumps(doc)), lines(result.stdout))


def assert_ranges_follow(config, events) -> None:
    """Every frame request asks what its stage's options say (issue 17): no Range without
    rangeIndex; a range ends at initialChunkSize + n * chunkSize (Cornerstone 5.14) or the file's
    end, and only once that much is held does one go on to the end of a resolution level;
    rangeIndex -1 asks for the rest; each starts where the bytes held end: nothing is asked twice."""
    stages = {stage.id: stage for stage in config.stages}
    held: dict[int, int | None] = {}
    whole: set[int] = set()  # a range ended short of what was asked: the frame was all in
    asked = [e for e in events if e["event"] == "RequestStarted"]
    assert asked
    for e in asked:
        i, options = e["index"], config.options_for(stages[e["stage_id"]].retrieve_type)
        assert i not in whole, e
        byte_range = e["byte_range"]
        if options.range_index is None or (options.range_index < 0 and not held.get(i)):
            assert byte_range is None, e
            held[i] = None
            continue
        start, end = byte_range
        assert start == held.get(i, 0), e  # from the first byte not held
        if options.range_index < 0:
            assert end is None, e
        elif start < options.range_end(options.range_index):
            assert end + 1 <= options.range_end(options.range_index), e
            if end + 1 < options.range_end(options.range_index):  # the file is shorter: clamped to it
                whole.add(i)
        else:  # the stage's range is held: on to the end of a resolution level
            assert end is not None and end + 1 > options.range_end(options.range_index), e
        held[i] = None if end is None else end + 1


MR_SERIES = "0.0.0.0.3.8811.2.20010413115754.12432"


@pytest.mark.parametrize("name", ["byte range with initialChunkSize", "interleaved", "stackProgressive HTJ2K Bytes"])
def test_cornerstone_5_14_byte_ranges_over_a_stack_are_the_configured_ones(name, tmp_path, demo_server, demo_data):
    """The 20-image MR stack: every image's requests follow the example's ranges; every final is exact."""
    doc = CORNERSTONE_5_14[name]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(doc))
    result = app("load", demo_server.url + _demo_url(demo_data, MR_SERIES), "--config", str(config), timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    events = lines(result.stdout)
    assert_ranges_follow(parse_config(json.dumps(doc)), events)
    sources = {}
    for path in sorted((PROJECT / ".cache" / "demo" / "mr-stack").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        sources[ds.SOPInstanceUID] = pixel_sha256(ds.pixel_array)
    finals = {e["sop_instance_uid"]: e["sha256"] for e in events if e["event"] == "Refinement" and e["final"]}
    assert finals == sources


def test_unused_keys_warn_on_stderr_and_the_load_goes_on(tmp_path, demo_server, demo_data):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"retrieveOptions": {"single": {"streaming": True, "streamingDecode": True,
                                                                 "framePath": "/jls/"}}}))
    result = app("load", demo_server.url + _demo_url(demo_data), "--config", str(config), timeout=120)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: $.retrieveOptions.single.") for w in warnings)
    assert "did you mean 'framesPath'" in result.stderr


def test_failed_images_are_named_on_stderr_with_a_summary(tmp_path, serve_dir):
    out = tmp_path / "tree"
    convert([get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")], out, "", quiet=True)
    frames = sorted(stored_frames(out, "studies/*/series/*/instances/*/frames/1"))
    frames[0].unlink()
    series = frames[0].parents[3]
    server = serve_dir(out)
    rel = series.relative_to(out).as_posix()
    result = app("load", f"{server.url}/dicomweb/{rel}", "--config", "single")
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    sop = frames[0].parents[1].name
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith("image 1/1 ") and sop in errors[0] and "404" in errors[0]
    assert errors[1] == "1 of 1 images failed; 0 final"


class _Odd(BaseHTTPRequestHandler):
    """Metadata answers the CLI must explain: a redirect, deep nesting, a gzip bomb."""

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        kind = self.path.split("/")[2]
        if not self.path.endswith("/metadata"):
            body, status, headers = b"", 404, {}
        elif kind == "redirect":
            body, status, headers = b"", 302, {"Location": "http://198.51.100.7/elsewhere/metadata"}
        elif kind == "nested":
            body, status, headers = b"[" * 200_000 + b"]" * 200_000, 200, {}
        else:
            body, status, headers = gzip.compress(b"[" + b" " * (300 << 20) + b"]", 9), 200, {}
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.servers  # a loopback server of its own
@pytest.mark.parametrize(("kind", "cause"), [("redirect", "redirected (HTTP 302) to http://198.51.100.7"),
                                              ("nested", "nested more than"), ("bomb", "inflates to more than")])
def test_no_series_metadata_names_the_real_cause(kind, cause):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/x/{kind}/studies/1.2/series/1.3"
        result = app("load", url, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "/series/1.3/metadata" in result.stderr and cause in result.stderr


def test_htj2k_byte_range_is_cornerstones_row_64_kb_then_the_rest(demo_server, demo_data):
    """Cornerstone's byte-range row: the first 64 KB, then the rest in one request (issue 17 item 2)."""
    result = app("load", demo_server.url + _demo_url(demo_data), "--config", "htj2kByteRange", timeout=120)
    assert result.returncode == 0, result.stderr
    events = lines(result.stdout)
    ranges = [e["byte_range"] for e in events if e["event"] == "RequestStarted"]
    assert ranges == [[0, 65535], [65536, None]]
    refs = [e for e in events if e["event"] == "Refinement"]
    assert [r["final"] for r in refs] == [False, True]
