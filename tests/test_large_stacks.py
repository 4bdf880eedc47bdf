"""The large stacks made by set-up (tools/large_stacks.py), and a 1000-slice series loaded exactly by
the CLI under a memory budget. Generated once and cached like the demo (about a minute the first
time on 2 cores); those tests are marked ``servers`` (demo data, serve.py on loopback). The last
test (engine back-pressure over a MockTransport) is in the fast tier."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy
import pydicom
import pytest

from app.bench.network import ServeProcess
from app.cli import pixel_sha256
from app.codecs import HTJ2K_LOSSLESS_RPCL
from app.config import preset
from app.convert import read_json_pair
from app.engine import RetrieveEngine, RetrievePolicy
from helpers import Site, htj2k_frame, image_pixels
from tools.large_stacks import SPECS, _stamp, ensure_large_stacks, generate

PROJECT = Path(__file__).resolve().parent.parent
UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
CACHE_MB = 32  # a quarter of the series' 128 MB of decoded pixels
# what the process may hold beyond the budget and the one-image run's peak: frames in flight, the
# decoder's scratch, allocator slack (measured ~20 MB; the whole series would be 125 MB, and a
# backlog of undelivered events once took ~118 MB whatever the budget)
OVERHEAD_MB = 64


@pytest.fixture(scope="module")
def ct174(demo_data):
    return ensure_large_stacks(["ct174"])["ct174"]


@pytest.fixture(scope="module")
def series1000(demo_data):
    return ensure_large_stacks(["series1000"])["series1000"]


def test_ct174_is_a_real_ct_series_with_every_alternate(ct174):
    files = ct174.source_files()
    assert len(files) == 174
    slices = [pydicom.dcmread(path) for path in (files[0], files[1], files[87], files[173])]
    first = slices[0]
    assert (first.Modality, first.Rows, first.Columns, first.SOPClassUID) == ("CT", 512, 512, "1.2.840.10008.5.1.4.1.1.2")
    for uid in (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID, first.FrameOfReferenceUID):
        assert UID.match(uid) and len(uid) <= 64
    assert len({ds.SOPInstanceUID for ds in slices}) == 4
    orientation = numpy.array(first.ImageOrientationPatient, dtype=float)
    normal = numpy.cross(orientation[:3], orientation[3:])
    along = [float(numpy.dot(normal, numpy.array(ds.ImagePositionPatient, dtype=float))) for ds in slices]
    spacing = float(first.SpacingBetweenSlices)
    assert along[1] - along[0] == pytest.approx(spacing, abs=1e-3)
    assert along[3] - along[0] == pytest.approx(173 * spacing, abs=1e-2)
    assert float(first.SliceThickness) == spacing
    assert not numpy.array_equal(slices[0].pixel_array, slices[1].pixel_array)  # varied, not copies

    series = ct174.tree / ct174.url.removeprefix("/dicomweb/")
    assert len(read_json_pair(series / "metadata", [])) == 174
    alternates = json.loads((series / "alternates.json").read_text())
    assert set(alternates) == {"frames", "jls", "jlsThumbnail", "lossy", "htj2kThumbnail"}
    assert (alternates["frames"]["rows"], alternates["jlsThumbnail"]["rows"]) == (512, 128)

    stamp = ct174.tree / ".ct174-stamp.json"
    before = stamp.stat().st_mtime_ns
    assert ensure_large_stacks(["ct174"])["ct174"] == ct174
    assert stamp.stat().st_mtime_ns == before  # cached: nothing generated or converted again


def test_mr200_slices_are_a_valid_mr_series_with_even_geometry(demo_data):
    """Three of the 200 slices, generated without the rest being written or converted."""
    spec = SPECS["mr200"]
    slices = dict(generate(spec, [0, 1, 199]))
    assert sorted(slices) == [0, 1, 199]
    first, second, last = slices[0], slices[1], slices[199]
    assert (first.Modality, first.Rows, first.Columns) == ("MR", 256, 256)
    assert first.SOPClassUID == first.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert (first.BitsAllocated, first.BitsStored, first.HighBit, first.PixelRepresentation) == (16, 16, 15, 0)
    assert "RescaleIntercept" not in first  # MR: the stored values are the image's
    uids = (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID, first.FrameOfReferenceUID)
    assert all(UID.match(uid) and len(uid) <= 64 for uid in uids)
    assert len({ds.SOPInstanceUID for ds in slices.values()}) == 3
    assert {ds.SeriesInstanceUID for ds in slices.values()} == {first.SeriesInstanceUID}
    assert [ds.InstanceNumber for ds in (first, second, last)] == [1, 2, 200]
    again = dict(generate(spec, [1]))[1]  # slice 1 alone: the same UIDs and pixels (stable across runs)
    assert again.SOPInstanceUID == second.SOPInstanceUID and again.PixelData == second.PixelData

    orientation = numpy.array(first.ImageOrientationPatient, dtype=float)
    normal = numpy.cross(orientation[:3], orientation[3:])
    along = [float(numpy.dot(normal, numpy.array(ds.ImagePositionPatient, dtype=float)))
             for ds in (first, second, last)]
    spacing = float(first.SpacingBetweenSlices)
    assert spacing > 0 and float(first.SliceThickness) == spacing
    assert along[1] - along[0] == pytest.approx(spacing, abs=1e-3)
    assert along[2] - along[0] == pytest.approx(199 * spacing, abs=1e-2)
    pixels = [ds.pixel_array for ds in (first, second)]
    assert pixels[0].dtype == numpy.uint16 and pixels[0].max() > 4095  # 16-bit values, not 12
    assert not numpy.array_equal(*pixels)


def test_stacks_cached_before_the_mr_fields_keep_their_stamps():
    """The MR fields enter a stamp only when set: ct174 and series1000 are not made again for them."""
    assert set(_stamp(SPECS["ct174"])["spec"]) == {"name", "description", "slices", "size", "spacing_mm", "sweep",
                                                   "seed"}
    assert _stamp(SPECS["mr200"])["spec"]["modality"] == "MR"


def _cli_load(url: str, *extra: str) -> tuple[list[dict], float, str]:
    """``python -m app load`` in its own process: its JSON lines, its peak RSS (MB), its stderr."""
    wrapper = ("import resource, sys; from app.__main__ import main; code = main(sys.argv[1:]); "
               "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
               "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", wrapper, "load", url, *extra], cwd=PROJECT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = int(re.search(r"peak_rss_kb (\d+)", done.stderr).group(1)) / 1024
    return [json.loads(line) for line in done.stdout.splitlines()], peak, done.stderr


@pytest.fixture(scope="module")
def loaded_1000(series1000) -> dict:
    """The CLI's load of the whole series under --cache-mb, and of its first image only (baseline),
    from serve.py in its own process: a server that keeps up is what fills an unbounded backlog."""
    server = ServeProcess(series1000.tree)
    try:
        url = server.url + series1000.url
        args = ("--config", "interleavedStack", "--cache-mb", str(CACHE_MB))
        _, baseline, _ = _cli_load(url, *args, "--images", "1")
        events, peak, _ = _cli_load(url, *args)
    finally:
        server.close()
    print(f"\n1000 x 256x256 under --cache-mb {CACHE_MB}: peak RSS {peak:.0f} MB, one-image run {baseline:.0f} MB, "
          f"difference {peak - baseline:.0f} MB (all decoded pixels: {1000 * 256 * 256 * 2 / 2**20:.0f} MB)")
    return {"events": events, "peak": peak, "baseline": baseline}


def test_a_1000_slice_series_loads_exactly_in_the_cli(series1000, loaded_1000):
    events = loaded_1000["events"]
    finals = {e["sop_instance_uid"]: e["sha256"] for e in events if e["event"] == "Refinement" and e["final"]}
    assert len(finals) == 1000
    expected = {}
    for path in series1000.source_files():
        ds = pydicom.dcmread(path)
        expected[ds.SOPInstanceUID] = pixel_sha256(ds.pixel_array)
    assert finals == expected  # every slice lossless, bit for bit, against its source file


def test_the_1000_slice_load_stays_within_the_memory_budget(loaded_1000):
    """Decoded pixels beyond the budget are dropped (the engine's Budget) and events wait for their
    reader before more work (no backlog of frames in the event queue)."""
    assert loaded_1000["peak"] - loaded_1000["baseline"] < CACHE_MB + OVERHEAD_MB


def test_a_slow_reader_holds_back_the_engine_instead_of_a_backlog_of_frames():
    """Fast tier, no sockets: with a reader slower than the decoder, events (and the pixels they
    hold) waiting for it stay at about one job's worth per worker, not one per image."""
    site = Site()
    for index in range(48):
        pixels = image_pixels(64, 64, seed=index)
        site.add_frame(index, pixels, htj2k_frame(pixels), HTJ2K_LOSSLESS_RPCL)
    concurrency = 3
    engine = RetrieveEngine(site.stack(), preset("single"), site.transport(),
                            policy=RetrievePolicy(concurrency=concurrency))

    async def read_slowly() -> tuple[int, int]:
        most = finals = 0
        async for event in engine.run():
            most = max(most, engine._queue.qsize())
            finals += bool(getattr(event, "final", False))
            await asyncio.sleep(0.001)  # the reader's own work (drawing, writing a line)
        return most, finals

    most, finals = asyncio.run(read_slowly())
    assert finals == 48
    assert most <= 6 * concurrency  # without back-pressure: every image's events (about 4 x 48)
