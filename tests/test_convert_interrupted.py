"""The converter killed hard (SIGKILL, no clean-up of any kind) in the middle of a run.

tests/test_convert.py covers an interruption Python sees (KeyboardInterrupt inside a write). Here the
process gets no chance to run a ``finally``: every frame file present must still be whole, the
metadata must list only instances whose frames are all there, and a re-run must complete the tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from app.codecs import PixelFormat, decode_frame
from app.convert import ALTERNATES, convert
from app.readers import MultipartReader, PartData, PartHeaders
from app.readers.multipart import parse_media_type

PROJECT = Path(__file__).resolve().parent.parent
INSTANCES = 6


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """(inputs, output tree, pixels) after a run killed once three frames were reported."""
    base = tmp_path_factory.mktemp("killed")
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = generate_uid()
    inputs = []
    for number in range(1, INSTANCES + 1):
        source.SOPInstanceUID = generate_uid()
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        source.SeriesInstanceUID = series
        source.InstanceNumber = number
        path = base / "in" / f"ct{number}.dcm"
        path.parent.mkdir(exist_ok=True)
        source.save_as(path)
        inputs.append(path)
    out = base / "out"
    proc = subprocess.Popen([sys.executable, "-m", "app.convert", str(base / "in"), "-o", str(out)],
                            cwd=PROJECT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    frames_reported = 0
    try:
        for line in proc.stderr:
            frames_reported += b" frame " in line
            if frames_reported == 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return inputs, out, source.pixel_array, series, source.StudyInstanceUID


def frame_codestream(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    if not data.startswith(b"--"):
        return data, ""
    reader = MultipartReader(None)
    events = reader.feed(data) + reader.close()  # raises when the body stops inside the part
    headers = next(e for e in events if isinstance(e, PartHeaders))
    ts = parse_media_type(headers.content_type)[1].get("transfer-syntax", "")
    return b"".join(bytes(e.data) for e in events if isinstance(e, PartData)), ts


def frame_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and p.parent.name in ALTERNATES
                  and not p.name.startswith("."))


def test_a_killed_run_leaves_no_half_written_frame(killed):
    _, out, pixels, _, _ = killed
    files = frame_files(out)
    assert files, "the kill came before any frame file was written"
    for path in files:
        codestream, ts = frame_codestream(path)
        assert ts, path
        decoded = decode_frame(codestream, ts, PixelFormat(pixels.shape[0], pixels.shape[1], pixel_representation=1)
                               if path.parent.name in ("frames", "jls", "lossy") else
                               PixelFormat(-(-pixels.shape[0] // 4), -(-pixels.shape[1] // 4), pixel_representation=1))
        if path.parent.name in ("frames", "jls"):
            np.testing.assert_array_equal(decoded, pixels)


def test_the_metadata_lists_only_whole_instances(killed):
    _, out, _, series, study = killed
    series_dir = out / "studies" / study / "series" / series
    metadata_path = series_dir / "metadata"
    if not metadata_path.exists():
        return  # killed before the first batch was merged: nothing is listed, nothing half-listed
    for item in json.loads(metadata_path.read_bytes()):
        sop = item["00080018"]["Value"][0]
        for name in ALTERNATES:
            assert (series_dir / "instances" / sop / name / "1.mht").is_file(), (sop, name)


def test_a_rerun_completes_the_tree(killed):
    inputs, out, pixels, series, study = killed
    summary = convert(inputs, out, quiet=True)
    assert summary.ok
    series_dir = out / "studies" / study / "series" / series
    metadata = json.loads((series_dir / "metadata").read_bytes())
    assert len(metadata) == INSTANCES
    assert len(frame_files(out)) == INSTANCES * len(ALTERNATES)
    for path in frame_files(out):
        if path.parent.name in ("frames", "jls"):
            codestream, ts = frame_codestream(path)
            np.testing.assert_array_equal(decode_frame(codestream, ts, PixelFormat(*pixels.shape, pixel_representation=1)),
                                          pixels)


def test_a_rerun_removes_the_killed_runs_temporaries(killed):
    """A kill inside write_atomic leaves ``.N.<pid>.tmp`` beside the frame (no finally runs then)."""
    inputs, out, *_ = killed
    stale = next(out.rglob("frames")) / ".1.999999.tmp"
    stale.write_bytes(b"--half a frame")
    convert(inputs, out, quiet=True)
    assert stale not in frame_files(out)  # never taken for a frame
    assert not list(out.rglob(".*.tmp"))
