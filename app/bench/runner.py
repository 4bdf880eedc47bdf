"""``python -m app bench``: the command line and the order of the measurements.

See ``app/bench/__init__.py`` for what is measured and ``docs/benchmark.md`` for results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from app.tree import frame_file_names

from .browser import BrowserDriver
from .cpython import cpython_load, native_decode, radiograph_format
from .network import PROJECT, ServeProcess, ThrottleProxy
from .responsiveness import RESP_PROFILES, render_responsiveness, run_responsiveness, write_responsiveness
from .profiles import DEFAULT_PROFILES, MODES, PROFILES, STACK_PRESETS
from .report import check_targets, render_markdown, write_outputs
from .results import BenchResult, Decode, ImageInfo, LoadRun, Machine, ModeRow, Stats, StackRow
from .site import Demo, find_demo

__all__ = ["main", "run_bench", "rerender"]

_CODECS = {"HTJ2K": ("frames", "1.2.840.10008.1.2.4.202"), "JPEG-LS": ("jls", "1.2.840.10008.1.2.4.80")}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


class _Bench:
    """One bench run: the server, the proxy per profile, the engine; fills a ``BenchResult``."""

    def __init__(self, result: BenchResult, demo: Demo, browser: BrowserDriver | None, runs: int,
                 progress: Callable[[str], None]) -> None:
        self.result, self.demo, self.browser, self.runs, self.progress = result, demo, browser, runs, progress
        host, port = demo.base.removeprefix("http://").split(":")
        self.server_address = (host, int(port))

    def _load(self, proxy: ThrottleProxy, entry: dict, preset: str, profile: str, expect: int) -> LoadRun:
        if self.browser:
            return self.browser.load(proxy, proxy.url, entry, preset, profile, expect)
        return cpython_load(proxy, entry, preset)

    def profile(self, profile: str, modes: Sequence[str], stack: bool, sop: str) -> None:
        demo, runs = self.demo, self.runs
        net = PROFILES[profile] if not self.browser else None  # the browser emulates its own network
        proxy = ThrottleProxy(*self.server_address, *((net["down"], net["up"], net["latency"]) if net else ()))
        try:
            for mode in modes:
                expect = demo.files.get(MODES[mode][1], 8_000_000) + demo.files.get("jlsThumbnail", 0)
                got = []
                for i in range(runs):
                    self.progress(f"{profile} {mode} run {i + 1}/{runs}")
                    got.append(self._load(proxy, demo.radiograph, mode, profile, expect))
                self.result.rows.append(ModeRow.from_runs(mode, profile, got, demo.files))
            if self.browser:
                self.progress(f"{profile} plain fetch")
                if self.result.transfer is None:
                    self.result.transfer = {}
                self.result.transfer[profile] = self.browser.transfer(demo, sop, profile, runs)
            if stack and demo.stack:
                for preset_name in STACK_PRESETS:
                    got = []
                    for i in range(runs):
                        self.progress(f"{profile} stack {preset_name} run {i + 1}/{runs}")
                        got.append(self._load(proxy, demo.stack, preset_name, profile, demo.stack_lossless))
                    self.result.stack.append(StackRow.from_runs(preset_name, profile, got,
                                                                int(demo.stack["instances"]), demo.stack_lossless))
        finally:
            proxy.close()

    def decode(self, fmt: dict, sop: str) -> None:
        self.progress("decode")
        demo = self.demo
        instance = demo.series_dir(demo.radiograph) / "instances" / sop
        paths = {k: (_stored_frame(instance / p), ts) for k, (p, ts) in _CODECS.items()}
        native = native_decode(fmt, paths, max(self.runs, 3))
        dec = Decode({k: Stats.of(v) for k, v in native.items()})
        if self.browser:
            urls = {k: (f"{demo.base}{demo.radiograph['url']}/instances/{sop}/{p}/1", ts)
                    for k, (p, ts) in _CODECS.items()}
            inpage = self.browser.decode(demo, fmt, urls, max(self.runs, 3))
            dec.browser = {k: Stats.of(v) for k, v in inpage.items()}
            dec.ratio = {k: dec.browser[k].median / dec.native[k].median for k in _CODECS}
        self.result.decode = dec


def _stored_frame(folder: Path) -> Path:
    """Frame 1 as stored: ``1.mht`` (the toolkit's layout) or ``1``."""
    return next((folder / n for n in frame_file_names(1) if (folder / n).is_file()), folder / "1")


def run_bench(*, engine: str = "browser", runs: int = 3, profiles: Sequence[str] = DEFAULT_PROFILES,
              modes: Sequence[str] = tuple(MODES), stack: bool = True, cold_start: bool = True,
              decode: bool = True, data_root: Path | None = None, base_url: str | None = None,
              progress: Callable[[str], None] = lambda s: None) -> BenchResult:
    """Run the bench against ``base_url`` (serving ``data_root``), or a serve.py it starts itself."""
    data_root = Path(data_root or (PROJECT / "static" / "dicomweb")).resolve()
    server = ServeProcess(data_root) if base_url is None else None
    demo = find_demo(server.url if server else base_url, data_root)
    result = BenchResult(
        engine=engine, runs=runs, profiles={p: PROFILES[p] for p in profiles}, modes=list(modes),
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine=Machine(platform.python_version(), platform.platform(), os.cpu_count(), _loadavg()),
        image=ImageInfo(demo.radiograph["name"], demo.files))
    browser = BrowserDriver() if engine == "browser" else None
    t_start = time.perf_counter()
    try:
        if browser:
            result.machine.chromium = browser.version
        fmt, sop = radiograph_format(demo)
        bench = _Bench(result, demo, browser, runs, progress)
        if cold_start and browser:
            progress("cold start")
            result.cold_start = browser.cold_start(demo, runs)
        for profile in profiles:
            bench.profile(profile, modes, stack, sop)
        if decode:
            bench.decode(fmt, sop)
    finally:
        if browser:
            browser.close()
        if server:
            server.close()
    result.elapsed_s = round(time.perf_counter() - t_start, 1)
    result.machine.loadavg_end = _loadavg()
    return result


def rerender(result: BenchResult) -> BenchResult:
    """Recompute the derived rows of a saved result from its raw runs (after a change of the report)."""
    files = result.image.files
    result.rows = [ModeRow.from_runs(r.mode, r.profile, r.load_runs(), files) for r in result.rows]
    result.stack = [StackRow.from_runs(s.preset, s.profile, [LoadRun.from_raw(r) for r in s.raw], s.slices,
                                       s.lossless_bytes) if s.raw and "renderLog" in s.raw[0] else s
                    for s in result.stack]
    result.targets = check_targets(result)
    return result


def _responsiveness(args: argparse.Namespace, profiles: Sequence[str], progress: Callable[[str], None],
                    argv: Sequence[str]) -> int:
    """The responsiveness table against a serve.py of its own (see responsiveness.py)."""
    root = Path(args.root or (PROJECT / "static" / "dicomweb")).resolve()
    server, browser = ServeProcess(root), None
    try:
        demo = find_demo(server.url, root)
        browser = BrowserDriver()
        result = run_responsiveness(browser, demo, runs=args.runs, profiles=profiles, loadavg=_loadavg,
                                    progress=progress)
    finally:
        if browser:
            browser.close()
        server.close()
    result.command = "python -m app bench " + " ".join(argv)
    print(render_responsiveness(result))
    if args.out:
        write_responsiveness(result, args.out)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app bench",
                                     description="Measure first/final render and bytes moved per retrieve mode.")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode and profile (default 3)")
    parser.add_argument("--profiles", help=f"comma list of {', '.join(PROFILES)} (default {','.join(DEFAULT_PROFILES)};"
                        f" {','.join(RESP_PROFILES)} with --responsiveness)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--engine", choices=("browser", "cpython"), default="browser")
    parser.add_argument("--out", type=Path, help="write benchmark.md/.json/.png here (benchmark-cpython.* for cpython)")
    parser.add_argument("--root", type=Path, help="static DICOMweb tree to serve (default static/dicomweb)")
    parser.add_argument("--no-stack", action="store_true", help="skip the stack rows")
    parser.add_argument("--stacks", metavar="LIST",
                        help="with --peer: stack rows, a comma list of mr20, mr200, ct174 (or 20, 200, 174;"
                             " default all; the large ones are generated once by tools/large_stacks.py)")
    parser.add_argument("--scale", nargs="?", const="small", choices=("small", "full"),
                        help="only the large-stack and converter throughput rows (scale.py; default small)")
    parser.add_argument("--frame-lists", action="store_true",
                        help="only the multi-frame rows: one frame a request vs frames/1,2,3 (frame_lists.py)")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold start rows (browser)")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode comparison")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only re-render a saved benchmark.json (to --out, or print)")
    parser.add_argument("--peer", choices=("cornerstone",),
                        help="run the rows side by side with another viewer's page (tools/peer/), alternating runs")
    parser.add_argument("--cpu-load", type=int, default=0, metavar="N",
                        help="with --peer: N busy background processes during the runs")
    parser.add_argument("--responsiveness", action="store_true",
                        help="only the responsiveness table (main-thread tasks, input -> frame, W/L drag, cold start;"
                             " responsiveness.py) to benchmark-responsiveness.md/.json")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    default = RESP_PROFILES if args.responsiveness else DEFAULT_PROFILES
    profiles = [p.strip() for p in (args.profiles or ",".join(default)).split(",") if p.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [p for p in profiles if p not in PROFILES] + [m for m in modes if m not in MODES]
    if bad or args.runs < 1:
        parser.error(f"unknown profile/mode {bad}" if bad else "--runs must be >= 1")
    if args.cpu_load < 0 or (args.cpu_load and not args.peer):
        parser.error("--cpu-load takes N >= 0 and goes with --peer")
    if args.stacks is not None and not args.peer:
        parser.error("--stacks goes with --peer")
    if args.peer:
        from .peer import main as peer_main

        return peer_main(args, profiles, modes, argv if argv is not None else sys.argv[2:])
    if args.render:
        result = rerender(BenchResult.from_json(json.loads(args.render.read_text())))
        print(render_markdown(result))
        if args.out:
            write_outputs(result, args.out)
        return 0
    t0 = time.perf_counter()

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - t0:6.1f} s] {text}", file=sys.stderr, flush=True)

    if args.responsiveness:
        return _responsiveness(args, profiles, progress, argv if argv is not None else sys.argv[2:])
    if args.frame_lists:
        from .frame_lists import main as frame_lists_main

        return frame_lists_main(runs=args.runs, profile=profiles[0], out=args.out, progress=progress)
    if args.scale:
        from .scale import main as scale_main

        return scale_main(args.scale, runs=args.runs, profile=profiles[0], out=args.out, progress=progress)
    result = run_bench(engine=args.engine, runs=args.runs, profiles=profiles, modes=modes,
                       stack=not args.no_stack, cold_start=not args.no_cold_start, decode=not args.no_decode,
                       data_root=args.root, progress=progress)
    result.command = "python -m app bench " + " ".join(argv if argv is not None else sys.argv[2:])
    result.targets = check_targets(result)
    print(render_markdown(result))
    if args.out:
        write_outputs(result, args.out)
    return 0
