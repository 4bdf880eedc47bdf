"""The demo tree the bench measures: which series, which files, and which requests were frames."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from app.tree import frame_file_names, parse_demo_list

from .network import RequestRecord

__all__ = ["Demo", "find_demo", "frame_bytes", "lossless_bytes"]

_FRAME_PATH = re.compile(r"/instances/[^/]+/[^/]+/\d+(?:\.mht)?(?:\?|$)")


@dataclass
class Demo:
    base: str  # server root URL without trailing slash
    radiograph: dict  # demo.json entry
    stack: dict | None
    data_root: Path
    files: dict[str, int]  # frames path name -> size on disk of the radiograph's frame 1
    stack_lossless: int  # sum of frames/ sizes of the stack

    def series_dir(self, entry: dict) -> Path:
        return self.data_root / entry["url"].split("/dicomweb/", 1)[1]


def _frame_one(instance: Path) -> Iterable[Path]:
    """Frame 1 of every encoding folder of an instance, in either layout (``1`` or ``1.mht``)."""
    for folder in sorted(p for p in instance.iterdir() if p.is_dir()):
        for name in frame_file_names(1):
            if (folder / name).is_file():
                yield folder / name
                break


def find_demo(base: str, data_root: Path) -> Demo:
    """The 3072-px radiograph and the first stack of 10+ images listed in ``demo.json``."""
    entries = [e.to_json() for e in parse_demo_list(json.loads((data_root / "demo.json").read_text()))]
    radiograph = next(e for e in entries if "3072" in e["name"])
    stack = next((e for e in entries if e["instances"] >= 10), None)
    demo = Demo(base.rstrip("/"), radiograph, stack, data_root, {}, 0)
    for instance in sorted(p for p in (demo.series_dir(radiograph) / "instances").iterdir() if p.is_dir()):
        for path in _frame_one(instance):
            demo.files[path.parent.name] = path.stat().st_size
    if stack:
        demo.stack_lossless = lossless_bytes(demo.series_dir(stack))
    return demo


def lossless_bytes(series_dir: Path) -> int:
    """Size on disk of a series' lossless frames (``frames/``): what any lossless load must move."""
    frames = (series_dir / "instances").glob("*/frames/*")
    return sum(p.stat().st_size for p in frames if p.is_file())


def frame_bytes(log: Iterable[RequestRecord], start: int) -> tuple[int, int, int]:
    """(frame bytes, all bytes, frame requests) sent since log position ``start``."""
    frames = total = count = 0
    for rec in list(log)[start:]:
        total += rec.bytes_sent
        if _FRAME_PATH.search(rec.path):
            frames += rec.bytes_sent
            count += 1
    return frames, total, count
