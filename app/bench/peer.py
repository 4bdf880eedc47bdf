"""``python -m app bench --peer cornerstone``: our page and Cornerstone3D 5.14's, side by side.

One Chromium (WebGL on SwiftShader, which their renderer needs; ours draws the same either way),
one serve.py behind the metering proxy, one tree. Per network profile, per row, per run: our page
and the peer page (``tools/peer/``, built by ``tools/setup_peer.py``) load the same series with the
same configuration JSON, each in a fresh context with the cache disabled and the same DevTools
emulation, alternating which goes first. Both sides are timed from the same events: the image's
first frame request (resource timing) to the draw the page reports (``performance.now()`` when
the page logs it). Stacks are timed from the click (ours) or the load call (theirs) to the moment
every slice shows something and every slice is lossless. Bytes are the proxy's count of frame
bodies. Final pixels are checked against the source DICOM on both sides after every run.
``--cpu-load N`` runs the same rows with N busy processes beside the browser.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from app.config import PRESETS

from .browser import BrowserDriver
from .chromium import CHROMIUM_ARGS
from .network import PROJECT, ServeProcess, ThrottleProxy
from .profiles import DEFAULT_PROFILES, MODES, PROFILES, timeout_ms
from .report import _fmt_bytes, _fmt_ms
from .results import Stats
from .site import Demo, find_demo, frame_bytes

__all__ = ["PEERS", "RowSpec", "PeerRow", "run_peer", "render_peer", "main"]

PEERS = ("cornerstone",)
STACK_PRESET = "interleavedStack"
BYTE_RANGE = "htj2kByteRange"
OURS_BYTE_RANGE = "htj2kRangeThenStream"  # our own byte-range preset, given to both pages as well
FIRST_RANGE_SIZES = (65536, 131072)


def _cornerstone():
    """``tools/peer/cornerstone.py``, the peer page's driver (importable from the project root)."""
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    from tools.peer import cornerstone

    return cornerstone


@dataclass(frozen=True)
class RowSpec:
    """One row: a series and one configuration JSON, given to both pages as written."""

    key: str
    label: str
    config: dict
    stack: bool = False


def _with_first_range(config: dict, size: int) -> dict:
    """The byte-range configuration with a first range of ``size`` bytes (both 5.14 keys)."""
    out = json.loads(json.dumps(config))
    for options in out.get("retrieveOptions", {}).values():
        if options.get("rangeIndex") == 0:
            options["initialChunkSize"] = options["chunkSize"] = size
    return out


def row_specs(modes: Sequence[str]) -> list[RowSpec]:
    rows = []
    for mode in modes:
        if mode == BYTE_RANGE:
            for size in FIRST_RANGE_SIZES:
                rows.append(RowSpec(f"{mode}{size // 1024}k", f"{MODES[mode][0]}, first {size // 1024} KiB",
                                    _with_first_range(PRESETS[mode], size)))
            if OURS_BYTE_RANGE in PRESETS:
                rows.append(RowSpec(OURS_BYTE_RANGE, "HTJ2K 128 KiB range, then the rest streamed",
                                    PRESETS[OURS_BYTE_RANGE]))
        else:
            rows.append(RowSpec(mode, MODES[mode][0], PRESETS[mode]))
    return rows


# ---------------------------------------------------------------------------------- one run
@dataclass
class SideRun:
    """One load on one page, reduced to what the table compares (times in ms)."""

    first_ms: float | None
    final_ms: float | None
    first_size: str | None
    bytes_frames: int
    frame_requests: int
    longest_task_ms: float
    exact: bool
    log: list[dict] = field(repr=False)
    error: str | None = None  # the run failed (timeout, page error): no times, not exact

    @classmethod
    def failed(cls, error: Exception) -> SideRun:
        return cls(None, None, None, 0, 0, 0.0, False, [], f"{type(error).__name__}: {str(error)[:300]}")


def _single_times(log: list[dict], request_start: float | None) -> tuple[float | None, float | None, str | None]:
    """First and final draw of image 0 from its first frame request (page clock)."""
    first = next((e for e in log if e["index"] == 0 and e.get("drawn")), None)
    final = next((e for e in log if e["index"] == 0 and e.get("drawn") and e.get("final")), None)
    if request_start is None:
        return None, None, None

    def since(e: dict | None) -> float | None:
        return None if e is None or e.get("bench_now") is None else e["bench_now"] - request_start

    return since(first), since(final), first and f"{first['columns']}x{first['rows']}"


def _stack_times(log: list[dict], t0: float, count: int) -> tuple[float | None, float | None]:
    """From the click (or load call) to: every slice shows something, every slice is lossless."""
    shown: dict[int, float] = {}
    lossless: dict[int, float] = {}
    for e in log:
        shown.setdefault(e["index"], e["bench_now"] - t0)
        if e.get("final"):
            lossless.setdefault(e["index"], e["bench_now"] - t0)
    return (max(shown.values()) if len(shown) == count else None,
            max(lossless.values()) if len(lossless) == count else None)


class SideBySide:
    """Runs a row on both pages through one browser and one metering proxy."""

    def __init__(self, driver: BrowserDriver, proxy: ThrottleProxy, demo: Demo) -> None:
        self.driver, self.proxy, self.demo = driver, proxy, demo
        self._sources: dict[str, list[str]] = {}

    def _series(self, spec: RowSpec) -> dict:
        return self.demo.stack if spec.stack else self.demo.radiograph

    def _expect(self, spec: RowSpec) -> int:
        if spec.stack:
            return self.demo.stack_lossless
        return max(self.demo.files.values(), default=8_000_000) + self.demo.files.get("jlsThumbnail", 0)

    def source_shas(self, entry: dict, typed_array: str | None) -> list[str]:
        """sha256 of every instance's source pixels (our stored dtype, or the peer's typed array)."""
        key = f"{entry['url']} {typed_array}"
        if key not in self._sources:
            cs = _cornerstone()
            sops = cs.series_sops(self.demo.series_dir(entry))
            self._sources[key] = [cs.source_sha256(sop, typed_array) for sop in sops]
        return self._sources[key]

    def ours(self, spec: RowSpec, profile: str) -> SideRun:
        entry = self._series(spec)
        count = int(entry.get("instances", 1))
        seen: dict[str, Any] = {}

        def inspect(page) -> None:
            seen["requests"] = _cornerstone().frame_requests(page)
            seen["shas"] = [page.evaluate("(i) => window.pyApp.pixelsSha256(i)", i) for i in range(count)]

        config = _cornerstone().to_ours(spec.config)
        run = self.driver.load(self.proxy, self.proxy.url, entry, json.dumps(config), profile,
                               self._expect(spec), inspect=inspect)
        exact = sorted(seen["shas"]) == sorted(self.source_shas(entry, None))
        if spec.stack:
            first, final = _stack_times(run.log, run.t_click, count)
            size = None
        else:
            first, final, size = _single_times(run.log, min(seen["requests"].values(), default=None))
        return SideRun(first, final, size, run.bytes_frames, run.frame_requests, run.longest_task_ms or 0.0,
                       exact, run.log)

    def theirs(self, spec: RowSpec, profile: str) -> SideRun:
        cs = _cornerstone()
        entry = self._series(spec)
        page = cs.CornerstonePage(self.driver.browser, self.proxy.url)
        try:
            page.open()
            page.emulate(PROFILES[profile])
            mark = len(self.proxy.request_log)
            run = page.load(self.proxy.url + entry["url"], cs.to_cornerstone(spec.config), stack=spec.stack,
                            timeout_ms=timeout_ms(profile, self._expect(spec)))
            time.sleep(0.05)  # let the proxy see the last bytes
            frames, _total, count = frame_bytes(self.proxy.request_log, mark)
            got = [page.pixels(i) for i in range(len(run.sops))]
            typed = got[0]["type"] if got[0] else None
            shas = [g["sha256"] if g and g["status"] == "FULL_RESOLUTION" else None for g in got]
            exact = typed is not None and sorted(map(str, shas)) == sorted(self.source_shas(entry, typed))
        finally:
            page.close()
        if spec.stack:
            first, final = _stack_times(run.log, run.t_load, len(run.sops))
            size = None
        else:
            first, final, size = _single_times(run.log, min(run.requests.values(), default=None))
        return SideRun(first, final, size, frames, count, run.longest_task_ms, exact, run.log)


# ---------------------------------------------------------------------------------- rows
@dataclass
class Side:
    first_ms: Stats | None
    final_ms: Stats | None
    first_size: str | None
    bytes_frames: Stats | None
    frame_requests: Stats | None
    longest_task_ms: Stats | None
    exact: str  # "runs exact / runs", and how many failed

    @classmethod
    def of(cls, runs: list[SideRun]) -> Side:
        done = [r for r in runs if r.error is None]
        failed = len(runs) - len(done)
        return cls(Stats.of([r.first_ms for r in done]), Stats.of([r.final_ms for r in done]),
                   next((r.first_size for r in done if r.first_size), None),
                   Stats.of([r.bytes_frames for r in done]), Stats.of([r.frame_requests for r in done]),
                   Stats.of([r.longest_task_ms for r in done]),
                   f"{sum(r.exact for r in runs)}/{len(runs)}" + (f" ({failed} failed)" if failed else ""))


@dataclass
class PeerRow:
    key: str
    label: str
    profile: str
    stack: bool
    ours: Side
    theirs: Side
    raw: list[dict] = field(default_factory=list, repr=False)

    def ratio(self, which: str) -> float | None:
        """ours / theirs of the medians (below 1: ours is faster)."""
        a, b = getattr(self.ours, which), getattr(self.theirs, which)
        return a.median / b.median if a and b and b.median else None


def _cpu_load(n: int) -> list[subprocess.Popen]:
    """N busy processes (a loaded machine); the caller stops them."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _measure_row(sbs: SideBySide, spec: RowSpec, profile: str, runs: int,
                 progress: Callable[[str], None]) -> PeerRow:
    ours: list[SideRun] = []
    theirs: list[SideRun] = []
    for i in range(runs):
        progress(f"{profile} {spec.key} run {i + 1}/{runs}")
        order = (("ours", sbs.ours, ours), ("theirs", sbs.theirs, theirs))
        for name, load, into in (order if i % 2 == 0 else order[::-1]):
            try:
                into.append(load(spec, profile))
            except Exception as exc:  # noqa: BLE001 - a failed run is a result: counted, shown, not timed
                progress(f"  {name}: run failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                into.append(SideRun.failed(exc))
    raw = [{"ours": {k: v for k, v in asdict(o).items()}, "theirs": {k: v for k, v in asdict(t).items()}}
           for o, t in zip(ours, theirs)]
    return PeerRow(spec.key, spec.label, profile, spec.stack, Side.of(ours), Side.of(theirs), raw)


def run_peer(*, runs: int = 3, profiles: Sequence[str] = DEFAULT_PROFILES, modes: Sequence[str] = tuple(MODES),
             stack: bool = True, cpu_load: int = 0, data_root: Path | None = None,
             progress: Callable[[str], None] = lambda s: None) -> dict:
    """Every row on both pages; returns what ``peer.json`` holds."""
    cs = _cornerstone()
    build = cs.check_build()
    data_root = Path(data_root or (PROJECT / "static" / "dicomweb")).resolve()
    server = ServeProcess(data_root)
    proxy = ThrottleProxy(*server.address)  # meters only: the browser emulates the network
    busy = _cpu_load(cpu_load)
    driver = None
    result: dict[str, Any] = {
        "peer": "cornerstone", "runs": runs, "cpu_load": cpu_load,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": _loadavg(), "chromium_flags": list(cs.WEBGL_ARGS)},
        "peer_build": json.loads((build / "build.json").read_text())["versions"], "rows": [], "floors": {}}
    t0 = time.perf_counter()
    try:
        driver = BrowserDriver(cs.chromium_args(CHROMIUM_ARGS))
        result["machine"]["chromium"] = driver.version
        demo = find_demo(proxy.url, data_root)
        sbs = SideBySide(driver, proxy, demo)
        specs = row_specs(modes) + ([RowSpec(STACK_PRESET, "20-slice MR interleaved", PRESETS[STACK_PRESET], True)]
                                    if stack and demo.stack else [])
        sop = _only_sop(demo)
        for profile in profiles:
            for spec in specs:
                result["rows"].append(_measure_row(sbs, spec, profile, runs, progress))
            progress(f"{profile} plain fetch")
            result["floors"][profile] = {k: asdict(v) for k, v in driver.transfer(demo, sop, profile, runs).items()}
    finally:
        if driver:
            driver.close()
        _stop(busy)
        proxy.close()
        server.close()
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    result["machine"]["loadavg_end"] = _loadavg()
    return result


def _only_sop(demo: Demo) -> str:
    return _cornerstone().series_sops(demo.series_dir(demo.radiograph))[0]


# ---------------------------------------------------------------------------------- output
def _pair(a: Stats | None, b: Stats | None, ratio: float | None) -> str:
    return f"{_fmt_ms(a)} / {_fmt_ms(b)}" + (f" ({ratio:.2f})" if ratio else "")


def _n(row: PeerRow) -> int:
    stats = row.ours.final_ms or row.theirs.final_ms
    return stats.n if stats else 0


def render_peer(result: dict) -> str:
    """The side-by-side table (markdown), then the plain-fetch floor and the machine line."""
    lines: list[str] = []
    add = lines.append
    m = result["machine"]
    add(f"### Ours / Cornerstone3D {result['peer_build']['@cornerstonejs/core']}, median (min-max) of "
        f"{result['runs']} alternating runs, ms; (x) = ours / theirs\n")
    add("| Row | Network | First draw | Final draw | First image | Frame bytes | Longest main-thread task | "
        "Final pixels exact |")
    add("|---|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        o, t = row.ours, row.theirs
        first = _pair(o.first_ms, t.first_ms, row.ratio("first_ms"))
        size = f"{o.first_size or '-'} / {t.first_size or '-'}"
        moved = f"{_fmt_bytes(o.bytes_frames and o.bytes_frames.median)} / {_fmt_bytes(t.bytes_frames and t.bytes_frames.median)}"
        add(f"| {row.label} | {row.profile} | {first} | {_pair(o.final_ms, t.final_ms, row.ratio('final_ms'))} | "
            f"{'every slice' if row.stack else size} | {moved} | {_pair(o.longest_task_ms, t.longest_task_ms, None)} | "
            f"{o.exact} / {t.exact} |")
    add("")
    add("Single image (the 3072x2614 radiograph): from the image's first frame request (resource timing) to the "
        "draw the page reports. Stack rows: from the click (ours) or the load call (theirs) to every slice showing "
        "something (first draw column) and every slice lossless (final column). Frame bytes: what the metering "
        "proxy saw the server send. Exact: runs whose final pixels equal the source DICOM's (pydicom).\n")
    if result["floors"]:
        add("### The same bytes by plain `fetch` under the same emulation (the floor of any page), ms\n")
        add("| Network | Request | Bytes | Time |")
        add("|---|---|---|---|")
        for profile, reqs in result["floors"].items():
            for name, t in reqs.items():
                add(f"| {profile} | {name} | {_fmt_bytes(t['bytes'])} | {_fmt_ms(_stats(t['ms']))} |")
        add("")
    add(f"Machine: {m['cpus']} CPUs, load average {m['loadavg_start']} at start, {m.get('loadavg_end')} at end, "
        f"{result['cpu_load']} busy background processes; {m['platform']}, Chromium {m.get('chromium')} "
        f"({' '.join(m['chromium_flags'])}). Started {result['started']}, took {result.get('elapsed_s')} s.\n")
    return "\n".join(lines)


def _stats(value: Any) -> Stats | None:
    return Stats(**value) if isinstance(value, dict) else value


def to_json(result: dict) -> dict:
    return {**result, "rows": [asdict(r) for r in result["rows"]]}


def main(args: argparse.Namespace, profiles: Sequence[str], modes: Sequence[str], argv: Sequence[str]) -> int:
    """The ``--peer`` branch of ``python -m app bench`` (arguments already checked by its parser)."""
    t0 = time.perf_counter()

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - t0:6.1f} s] {text}", file=sys.stderr, flush=True)

    try:
        result = run_peer(runs=args.runs, profiles=profiles, modes=modes, stack=not args.no_stack,
                          cpu_load=args.cpu_load, data_root=args.root, progress=progress)
    except _cornerstone().PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result["command"] = "python -m app bench " + " ".join(argv)
    text = render_peer(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "peer.json").write_text(json.dumps(to_json(result), indent=1, default=float) + "\n")
        (args.out / "peer.md").write_text(f"`{result['command']}`\n\n{text}")
    return 0
