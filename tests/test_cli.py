"""``python -m app load``: JSON lines on stdout, one error line on stderr, exit codes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from app.cli import pixel_sha256
from app.convert import convert

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
    for frame in out.glob("studies/*/series/*/instances/*/frames/1"):
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
