"""``python -m app bench --frame-lists``: a multi-frame instance loaded one frame a request versus
frame lists (``frames/1,2,3``, ``RetrievePolicy.frames_per_request``).

The CPython engine (``RetrieveEngine`` over ``NativeTransport``) loads real multi-frame DICOM
from pydicom's test data, converted by ``app.convert`` and served by serve.py behind the
throttling proxy, with the ``single`` preset (whole frames: the stages that are batched). Runs
alternate between the two ways so a change of machine load hits both. Columns: frame requests
the proxy saw, the first frame shown and every frame final (ms from the start of the load), and
the frame bytes sent.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .cpython import _load, run_async
from .network import PROJECT, ServeProcess, ThrottleProxy
from .profiles import PROFILE_LABELS, PROFILES

__all__ = ["FrameListRow", "frame_list_rows", "render_frame_lists", "main"]

PRESET = "single"
MR_STACK = PROJECT / ".cache" / "demo" / "mr-stack"  # tools/demo_data.py
CT_STACK = PROJECT / ".cache" / "large" / "ct174"  # tools/large_stacks.py


def _cine(scratch: Path) -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("examples_ybr_color.dcm"))


def _stacked(folder: Path, scratch: Path) -> Path:
    """A series of single-frame native images as one multi-frame instance (an enhanced CT or MR
    without its functional groups): the same pixels, one request per frame or per list."""
    import numpy
    import pydicom

    files = sorted(folder.glob("*.dcm"))
    ds = pydicom.dcmread(files[0])
    for tag in [t for t in ds.keys() if t.group == 0]:  # stray command elements
        del ds[tag]
    ds.PixelData = numpy.stack([pydicom.dcmread(f).pixel_array for f in files]).tobytes()
    ds.NumberOfFrames = len(files)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "multi-frame"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = scratch / f"{folder.name}-multiframe.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


SOURCES: dict[str, Callable[[Path], Path]] = {
    "US cine 30 x 240x320 RGB (pydicom examples_ybr_color)": _cine,
    "MR 20 x 256x256 (the demo stack as one instance)": lambda scratch: _stacked(MR_STACK, scratch),
    "CT 174 x 512x512 (the large CT as one instance)": lambda scratch: _stacked(CT_STACK, scratch),
}


@dataclass(frozen=True)
class FrameListRow:
    source: str
    frames: int
    profile: str
    way: str  # "one frame a request" | "frame lists"
    requests: int
    first_ms: float
    all_final_ms: float
    all_final_min_ms: float
    all_final_max_ms: float
    bytes_frames: int
    finals: int
    runs: int


def _tree(scratch: Path, source: Path) -> tuple[Path, str]:
    """The source converted (HTJ2K frames only); (tree, series URL path)."""
    from app.convert import convert

    root = scratch / source.stem
    convert([source], root, alternates="htj2k", quiet=True)
    series = next(root.glob("studies/*/series/*/instances")).parent
    return root, "/dicomweb/" + series.relative_to(root).as_posix()


def _one(proxy: ThrottleProxy, url: str, frames_per_request: int) -> tuple[int, float, float, int, int]:
    """One load: (frame requests, first ms, all final ms, frame bytes, finals)."""
    from app.retrieve.settings import RetrievePolicy

    mark = len(proxy.request_log)
    run = run_async(lambda: _load(proxy.url, {"url": url}, PRESET,
                                  RetrievePolicy(frames_per_request=frames_per_request)))
    time.sleep(0.05)  # let the proxy see the last bytes
    asked = [r for r in list(proxy.request_log)[mark:] if "/instances/" in r.path]
    finals = [e["t_ms"] for e in run.log if e["final"]]
    return (len(asked), min(e["t_ms"] for e in run.log), max(finals), sum(r.bytes_sent for r in asked),
            len({e["index"] for e in run.log if e["final"]}))


def frame_list_rows(profile: str = "seed4g", runs: int = 3, progress: Callable[[str], None] = lambda s: None,
                    sources: Sequence[str] = tuple(SOURCES)) -> list[FrameListRow]:
    from app.retrieve.settings import RetrievePolicy

    rows = []
    net = PROFILES[profile]
    with tempfile.TemporaryDirectory(prefix="bench-frame-lists-") as scratch:
        for label in sources:
            root, url = _tree(Path(scratch), SOURCES[label](Path(scratch)))
            server = ServeProcess(root)
            proxy = ThrottleProxy(*server.address, *((net["down"], net["up"], net["latency"]) if net else ()))
            ways = {"one frame a request": 1, "frame lists": RetrievePolicy().frames_per_request}
            samples: dict[str, list] = {way: [] for way in ways}
            try:
                _one(proxy, url, 1)  # warm: imports, the server's page cache
                for number in range(runs):
                    for way, per_request in ways.items():
                        progress(f"{label} ({profile}) {way} run {number + 1}/{runs}")
                        samples[way].append(_one(proxy, url, per_request))
            finally:
                proxy.close()
                server.close()
            for way, got in samples.items():
                totals = [s[2] for s in got]
                rows.append(FrameListRow(label, got[0][4], profile, way, got[0][0],
                                         round(statistics.median(s[1] for s in got), 1),
                                         round(statistics.median(totals), 1), round(min(totals), 1),
                                         round(max(totals), 1), got[0][3], got[0][4], len(got)))
    return rows


def render_frame_lists(rows: list[FrameListRow], loadavg: tuple[float, ...]) -> str:
    lines = [f"## Multi-frame instances: one frame a request vs frame lists (CPython engine, preset {PRESET}; "
             f"load average {', '.join(f'{x:.2f}' for x in loadavg)})", "",
             "| instance | profile | requests | first ms | all final ms (min-max) | frame bytes | finals | runs |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.source}: {r.way} | {PROFILE_LABELS.get(r.profile, r.profile)} | {r.requests} | "
                     f"{r.first_ms} | {r.all_final_ms} ({r.all_final_min_ms}-{r.all_final_max_ms}) | "
                     f"{r.bytes_frames:,} | {r.finals}/{r.frames} | {r.runs} |")
    return "\n".join(lines)


def main(*, runs: int, profile: str, out: Path | None, progress: Callable[[str], None]) -> int:
    """The ``--frame-lists`` branch of ``python -m app bench``."""
    rows = frame_list_rows(profile, runs, progress)
    text = render_frame_lists(rows, os.getloadavg())
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark-frame-lists.md").write_text(text + "\n")
    return 0
