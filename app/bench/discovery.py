"""Discovery and planning at scale: the work from a series' metadata bytes to its first frame request.

For 20, 200 and 1000 instances (DICOM JSON shaped like the converter's, in shuffled order so the
sort has work to do): the CPU time (``time.process_time``: work, not waiting on a busy machine) to
parse the bytes (``dicomjson.loads``), build the stack
(``stack_from_metadata``), then make a ``RetrieveEngine`` and run it until it asks for the image
on screen (the middle one). After that request the engine plans the other images; the time until
its next request shows that cost, which no longer delays the first. CPython figures, no network:
a transport that records when it is asked. ``index_rows``: the same from the series' stack index
(``stack.json``), and the metadata's check that follows the first request. ``worker_discovery_rows``:
the same steps as the page's Pyodide worker reports them for the large stacks it loads, with and
without their stack index.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .. import dicomjson as dj
from ..config import opening_index, preset
from ..retrieve.engine import RetrieveEngine
from ..study import index_disagreement, index_of_stack, stack_from_index, stack_from_metadata
from ..transport.mock import MockResponse
from ..tree.stack_index import STACK_INDEX_NAME, parse_stack_index, stack_index_bytes

__all__ = ["DiscoveryRow", "IndexRow", "WorkerDiscoveryRow", "discovery_rows", "index_rows", "render_discovery",
           "render_index", "render_worker_discovery", "synthetic_metadata", "worker_discovery_rows"]

COUNTS = (20, 200, 1000)
SERIES_URL = "http://bench.test/dicomweb/studies/1.2.3/series/1.2.3.4"
PRESET = "interleavedStack"  # the scale bench's preset: several stages, decimated


@dataclass
class DiscoveryRow:
    instances: int
    metadata_bytes: int
    parse_ms: float  # dicomjson.loads: shape check and JSON parse
    stack_ms: float  # stack_from_metadata: instances read, ordered, StackImages made
    first_request_ms: float  # engine made and run until it asks for the image on screen
    before_first_ms: float  # the sum: metadata bytes -> the first frame request
    rest_planned_ms: float  # then: the other images planned, until the next request goes out


def _element(vr: str, *values: object) -> dict:
    return {"vr": vr, "Value": list(values)}


def synthetic_metadata(count: int, seed: int = 0) -> bytes:
    """A series' metadata as the converter writes it: ``count`` 256x256 CT slices, shuffled."""
    study, series = "2.25.1001", "2.25.1002"
    instances = []
    for i in range(count):
        sop = f"2.25.{10_000_000 + i}"
        instances.append({
            "00080016": _element("UI", "1.2.840.10008.5.1.4.1.1.2"), "00080018": _element("UI", sop),
            "00080020": _element("DA", "20260101"), "00080030": _element("TM", "120000"),
            "00080060": _element("CS", "CT"), "00081030": _element("LO", "Bench study"),
            "0008103E": _element("LO", f"CT-like {count} x 256x256"),
            "00083002": _element("UI", "1.2.840.10008.1.2.4.202"), "00100010": {"vr": "PN"},
            "00100020": _element("LO", "123"), "00180050": _element("DS", 0.5),
            "0020000D": _element("UI", study), "0020000E": _element("UI", series),
            "00200011": _element("IS", 1), "00200013": _element("IS", i + 1),
            "00200032": _element("DS", -110.5, -78.3, -72.75 + 0.5 * i),
            "00200037": _element("DS", 1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            "00201041": _element("DS", -72.75 + 0.5 * i), "00280002": _element("US", 1),
            "00280004": _element("CS", "MONOCHROME2"), "00280010": _element("US", 256),
            "00280011": _element("US", 256), "00280030": _element("DS", 0.86, 0.86),
            "00280100": _element("US", 16), "00280101": _element("US", 12), "00280102": _element("US", 11),
            "00280103": _element("US", 0), "00281050": _element("DS", 40.0), "00281051": _element("DS", 400.0),
            "00281052": _element("DS", -1024.0), "00281053": _element("DS", 1.0),
            "7FE00010": {"vr": "OB", "BulkDataURI": f"instances/{sop}/frames"},
        })
    random.Random(seed).shuffle(instances)
    return json.dumps(instances).encode()


class _Recorder:
    """A transport that notes when each request is made (before any await: as the browser's fetch
    goes out when called) and never answers."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.asked = asyncio.Event()

    async def get(self, url: str, **_kwargs) -> MockResponse:
        self.times.append(time.process_time())
        if len(self.times) >= 2:
            self.asked.set()
        await asyncio.get_running_loop().create_future()  # cancelled at the end
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        return None


async def _to_first_requests(stack) -> tuple[float, float]:
    """(ms from making the engine to its first request, ms from there to its second)."""
    transport = _Recorder()
    t0 = time.process_time()
    engine = RetrieveEngine(stack, preset(PRESET), transport)
    engine.set_current(opening_index(len(stack)))
    run = engine.run()
    consumer = asyncio.ensure_future(run.__anext__())
    try:
        await asyncio.wait_for(transport.asked.wait(), 30)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await run.aclose()
    first, second = transport.times[:2]
    return (first - t0) * 1000.0, (second - first) * 1000.0


def _one(raw: bytes) -> tuple[float, float, float, float]:
    t0 = time.process_time()
    doc = dj.loads(raw)
    t1 = time.process_time()
    stack = stack_from_metadata(doc, SERIES_URL)
    t2 = time.process_time()
    first, rest = asyncio.run(_to_first_requests(stack))
    return (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, first, rest


def discovery_rows(counts: Sequence[int] = COUNTS, repeat: int = 5) -> list[DiscoveryRow]:
    """One row per instance count: the best of ``repeat`` runs of each step."""
    rows = []
    for count in counts:
        raw = synthetic_metadata(count)
        runs = [_one(raw) for _ in range(repeat)]
        parse, stack, first, rest = (round(min(r[k] for r in runs), 2) for k in range(4))
        rows.append(DiscoveryRow(count, len(raw), parse, stack, first,
                                 round(parse + stack + first, 2), rest))
    return rows


@dataclass
class IndexRow:
    """From the series' stack index instead of its metadata (CPython, best of the runs)."""

    instances: int
    index_bytes: int
    parse_ms: float  # dicomjson.loads + parse_stack_index: the index checked field by field
    stack_ms: float  # stack_from_index
    first_request_ms: float  # engine made and run until it asks for the image on screen
    before_first_ms: float  # the sum: index bytes -> the first frame request
    check_ms: float  # after it: the metadata parsed, its stack built and compared with the index's


def _one_indexed(raw_index: bytes, raw_metadata: bytes) -> tuple[float, ...]:
    t0 = time.process_time()
    index = parse_stack_index(dj.loads(raw_index))
    t1 = time.process_time()
    stack = stack_from_index(index, SERIES_URL)
    t2 = time.process_time()
    first, _ = asyncio.run(_to_first_requests(stack))
    t3 = time.process_time()
    difference = index_disagreement(stack, stack_from_metadata(dj.loads(raw_metadata), SERIES_URL))
    t4 = time.process_time()
    if difference:
        raise RuntimeError(f"the bench's index disagrees with its metadata: {difference}")
    return (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, first, (t4 - t3) * 1000.0


def index_rows(counts: Sequence[int] = COUNTS, repeat: int = 5) -> list[IndexRow]:
    """One row per instance count, the metadata of ``discovery_rows`` and its stack index."""
    rows = []
    for count in counts:
        raw = synthetic_metadata(count)
        raw_index = stack_index_bytes(index_of_stack(stack_from_metadata(json.loads(raw), SERIES_URL)))
        runs = [_one_indexed(raw_index, raw) for _ in range(repeat)]
        parse, stack, first, check = (round(min(r[k] for r in runs), 2) for k in range(4))
        rows.append(IndexRow(count, len(raw_index), parse, stack, first, round(parse + stack + first, 2), check))
    return rows


def render_index(rows: Sequence[IndexRow]) -> str:
    return _table(["instances", "index bytes", "parse ms", "stack ms", "to first request ms",
                   "before first request ms", "metadata check after it ms"], rows)


def _table(header: Sequence[str], rows: Sequence, left: int = 0) -> str:
    """Dataclass rows as a Markdown table, a column per field in order; the first ``left`` columns
    left-aligned, the others (numbers) right-aligned."""
    align = "|".join("---" if i < left else "---:" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", f"|{align}|"]
    lines += ["| " + " | ".join(str(value) for value in dataclasses.astuple(row)) + " |" for row in rows]
    return "\n".join(lines)


def render_discovery(rows: Sequence[DiscoveryRow]) -> str:
    """The rows as a Markdown table."""
    return _table(["instances", "metadata bytes", "parse ms", "stack ms", "to first request ms",
                   "before first request ms", "rest planned ms"], rows)


@dataclass
class WorkerDiscoveryRow:
    """What the page's worker (Pyodide) reports about its own discovery of a large stack: wall ms
    in the worker, best of the runs (app/worker.py ``discovery_work``). Each run is a fresh page
    whose Load is clicked at ready: its interpreter is cold (the idle warm-up has not run), as
    for a link that opens a series. ``source``: the stack built from the series' stack index or,
    in a copy of the tree without it, from its metadata."""

    stack: str
    source: str
    instances: int
    document_bytes: int  # of what the stack was built from
    parse_ms: float  # the document's bytes checked and parsed
    stack_ms: float  # the stack built from it
    to_first_request_ms: float  # the loader made and the engine's plan, until the first frame request
    before_first_ms: float  # the sum: document bytes -> the first frame request
    check_ms: float  # with an index, after the first request: the metadata parsed, built, compared
    opened_ms: float  # then: the "opened" message (a field per image) made, as JSON text


_WORK_JS = "() => window.appTimings.discovery || null"


@contextlib.contextmanager
def _tree_without_index(tree: Path) -> Iterator[Path]:
    """A copy of ``tree`` (hard links) without its stack index files: a tree from before them."""
    with tempfile.TemporaryDirectory(prefix="no-index-", dir=tree.parent) as folder:
        copy = Path(folder) / "tree"
        shutil.copytree(tree, copy, copy_function=os.link, ignore=shutil.ignore_patterns(STACK_INDEX_NAME, ".*"))
        yield copy


def _page_runs(driver, tree: Path, url: str, frames: int, runs: int) -> list[dict]:
    from .network import ServeProcess, ThrottleProxy

    server = ServeProcess(tree)
    proxy = ThrottleProxy(*server.address)
    got: list[dict] = []
    try:
        for _ in range(runs):
            driver.load(proxy, proxy.url, {"url": url}, PRESET, "none", frames,
                        lambda page: got.append(page.evaluate(_WORK_JS)))
    finally:
        proxy.close()
        server.close()
    return [w for w in got if w]


def worker_discovery_rows(driver, stacks: Sequence, runs: int = 3) -> list[WorkerDiscoveryRow]:
    """Each stack loaded ``runs`` times in the page (loopback, no emulation, ``PRESET``), from its
    stack index and from a copy of its tree without one."""
    rows = []
    for stack in stacks:
        series = stack.tree / stack.url.removeprefix("/dicomweb/")
        frames = sum(p.stat().st_size for p in (series / "instances").glob("*/frames/*") if p.is_file())
        with _tree_without_index(stack.tree) as plain:
            for source, tree in (("index", stack.tree), ("metadata", plain)):
                works = _page_runs(driver, tree, stack.url, frames, runs)
                if not works:
                    raise RuntimeError(f"{stack.name}: the page reported no discovery figures")
                if any(w.get("source") != source for w in works):
                    raise RuntimeError(f"{stack.name}: built from {works[0].get('source')}, not {source}")
                name = STACK_INDEX_NAME if source == "index" else "metadata"
                rows.append(_worker_row(stack.name, source, (series / name).stat().st_size, works))
    return rows


def _worker_row(name: str, source: str, size: int, works: list[dict]) -> WorkerDiscoveryRow:
    best = {k: round(min(w[k] for w in works), 1) for k in ("parse_ms", "stack_ms", "to_first_request_ms",
                                                              "check_ms", "opened_ms")}
    before = round(min(w["parse_ms"] + w["stack_ms"] + w["to_first_request_ms"] for w in works), 1)
    return WorkerDiscoveryRow(name, source, works[0]["images"], size, best["parse_ms"], best["stack_ms"],
                              best["to_first_request_ms"], before, best["check_ms"], best["opened_ms"])


def render_worker_discovery(rows: Sequence[WorkerDiscoveryRow]) -> str:
    return _table(["stack", "built from", "instances", "bytes", "parse ms", "stack ms", "to first request ms",
                   "before first request ms", "metadata check after it ms", "opened message ms"], rows, left=2)


def main(argv: Sequence[str] | None = None) -> int:
    """CPython rows; with --page, the page's worker on the large stacks too (set-up's tools/large_stacks.py)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m app.bench.discovery", description=main.__doc__)
    parser.add_argument("--page", action="store_true", help="also the page's worker on ct174, mr200, series1000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    print(render_discovery(discovery_rows()))
    print()
    print(render_index(index_rows()))
    if args.page:
        from tools.large_stacks import ensure_large_stacks

        from .browser import BrowserDriver

        stacks = ensure_large_stacks(("ct174", "mr200", "series1000"))
        driver = BrowserDriver()
        try:
            rows = worker_discovery_rows(driver, list(stacks.values()), args.runs)
        finally:
            driver.close()
        print()
        print(render_worker_discovery(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
