"""``python -m app bench --scale [small|full]``: large stacks and the converter's throughput.

* Converter rows: images/s converting with every alternate, serially, on a process pool of N
  workers (``app.convert_pool``) and on a Dask ``LocalCluster`` of N worker processes
  (``app.convert_dask``, one task per series), over the 174-slice CT (one series) and over an
  archive of several CT-like series. ``small`` converts subsets.
* Engine rows: the CPython engine (``RetrieveEngine`` over ``NativeTransport``) loads the
  174-slice 512x512 CT and (``full``) the 1000-slice series through the throttling proxy: first
  image (the middle slice, on screen), every slice visible, every slice lossless, the network
  floor of the lossless bytes, frame bytes moved, and the peak RSS of the process that loaded it
  (each load runs in a fresh process). The stacks come from ``tools/large_stacks.py`` (cached).
* Page rows: the real page in Chromium (``BrowserDriver``, the same proxy and emulation, applied
  after the runtime is up) loads the 174-slice CT and (``full``) the 1000-slice series: the same
  columns (times from the Load click), plus the peak of what the page holds during the load
  (``PageMemory``: JS heaps of page and worker, their ArrayBuffers, the worker's wasm heap, the
  renderer's textures/surfaces; sampled every ``MEMORY_EVERY_MS``) and that at ready (baseline).
* Scroll rows: under ``?cacheMB=N``, after the load, the stack is scrolled end to end one slice per
  animation frame; the peak held (live: garbage collected before each sample) during the scroll, how many slices still show something
  (reduced copies far from the cursor) and the pixels the page's budget counts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .memory import MEMORY_EVERY_MS
from .discovery import (DiscoveryRow, IndexRow, WorkerDiscoveryRow, discovery_rows, index_rows, render_discovery,
                        render_index, render_worker_discovery, worker_discovery_rows)
from .network import PROJECT, ServeProcess, ThrottleProxy
from .profiles import PROFILES, floor_ms
from .results import LoadRun, PageMemory, StackRow
from .site import frame_bytes

__all__ = ["ConvertRow", "LargeLoadRow", "ScrollRow", "ScaleResult", "run_scale", "render_scale"]

SCALE_PRESET = "interleavedStack"
#: the page also loads these stacks with our own stack preset (12 KB first ranges, first images
#: streamed by level): the "every slice visible" figure both ways
PAGE_EXTRA_PRESETS = {"ct174": ("interleavedPreview",), "series1000": ("interleavedPreview",)}
SCROLLS = {"small": [("ct174", 64)], "full": [("series1000", 512), ("ct174", 64)]}  # (stack, cacheMB)


@dataclass
class ConvertRow:
    input: str
    method: str  # serial | pool | dask
    workers: int
    images: int
    seconds: float
    images_per_s: float
    speedup: float | None = None  # over the serial row of the same input


@dataclass
class LargeLoadRow:
    stack: str
    slices: int
    size: str
    preset: str
    profile: str
    cache_mb: int | None
    first_ms: float | None
    all_visible_ms: float | None
    all_lossless_ms: float | None
    floor_ms: float | None
    bytes_frames: int
    lossless_bytes: int
    finals: int
    peak_rss_mb: float | None  # the CPython engine's process
    engine: str = "cpython"  # cpython | page
    peak_page_mb: float | None = None  # PageMemory.total, its peak during the load
    baseline_page_mb: float | None = None  # ... at ready, before the load
    memory: dict | None = None  # the peak sample, part by part (PageMemory.raw)


@dataclass
class ScrollRow:
    """The page scrolled end to end under ``?cacheMB``: what it held at its peak."""

    stack: str
    slices: int
    size: str
    cache_mb: int
    renderer: str
    baseline_mb: float
    load_peak_mb: float
    scroll_peak_mb: float
    held_images: int  # slices showing something after the scroll
    held_pixel_mb: float  # what the page's budget counts (one copy), after the scroll
    scroll_s: float
    memory: dict = field(default_factory=dict)  # the scroll's peak sample, part by part


@dataclass
class ScaleResult:
    size: str
    started: str
    machine: dict
    convert: list[ConvertRow] = field(default_factory=list)
    loads: list[LargeLoadRow] = field(default_factory=list)
    scrolls: list[ScrollRow] = field(default_factory=list)
    discovery: list[DiscoveryRow] = field(default_factory=list)  # CPU ms to the first frame request
    discovery_index: list[IndexRow] = field(default_factory=list)  # the same from the series' stack index
    worker_discovery: list[WorkerDiscoveryRow] = field(default_factory=list)  # the page's worker, the same
    elapsed_s: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# -- converter throughput -------------------------------------------------------------------------


def _busy(_: int) -> float:
    started, total = time.perf_counter(), 0
    for value in range(2_000_000):
        total += value
    return time.perf_counter() - started


def parallel_capacity(workers: int) -> float:
    """How much more pure-Python work `workers` processes do than one, here and now: the ceiling of
    any speed-up (a loaded or shared machine, or per-session CPU shares, keep it below `workers`)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        started = time.perf_counter()
        pool.map(_busy, range(2))
        one = time.perf_counter() - started
    with context.Pool(workers) as pool:
        started = time.perf_counter()
        pool.map(_busy, range(2 * workers))
        many = time.perf_counter() - started
    return round(workers * one / many, 2)


def _timed_convert(method: str, files: Sequence[Path], out: Path, workers: int, client=None) -> float:
    from app.convert_dask import convert_on_cluster
    from app.convert_pool import convert_parallel

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    if method == "dask":
        summary = convert_on_cluster(files, out, scheduler=client, quiet=True)
    else:
        summary = convert_parallel(files, out, workers=1 if method == "serial" else workers, quiet=True)
    seconds = time.perf_counter() - started
    if summary.failures or not summary.files_converted:
        raise RuntimeError(f"{method} conversion failed: {summary.failures[:3]}")
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def converter_rows(inputs: dict[str, tuple[list[Path], int, int]], workers: int, scratch: Path,
                   progress: Callable[[str], None]) -> list[ConvertRow]:
    """Serial and pool rows, then (with dask.distributed installed, for inputs of several series)
    Dask rows: the cluster's threads would otherwise make the pool start a forkserver."""
    rows: list[ConvertRow] = []
    serial_seconds: dict[str, float] = {}

    def add(label: str, method: str, n: int, images: int, client=None) -> None:
        progress(f"convert {label}: {method}")
        seconds = _timed_convert(method, inputs[label][0], scratch / f"{label}-{method}", n, client)
        serial_seconds.setdefault(label, seconds)
        rows.append(ConvertRow(label, method, n, images, round(seconds, 2), round(images / seconds, 2),
                               round(serial_seconds[label] / seconds, 2)))

    for label, (_, images, _) in inputs.items():
        add(label, "serial", 1, images)
        add(label, "pool", workers, images)
    several = [label for label, (_, _, series) in inputs.items() if series > 1]  # one task a series
    cluster = _local_cluster(workers) if several else None
    if cluster:
        try:
            for label in several:
                add(label, "dask", workers, inputs[label][1], cluster[1])
        finally:
            cluster[1].close()
            cluster[0].close()
    return rows


def _local_cluster(workers: int):
    """(LocalCluster, Client) of `workers` single-threaded processes on loopback, or None."""
    try:
        import logging

        from distributed import Client, LocalCluster
    except ImportError:
        return None
    local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(local)
    client.run(lambda: __import__("app.convert"))  # imports done before the clock starts, as the pool's
    return local, client


# -- the engine on large stacks -------------------------------------------------------------------


def _child(argv: Sequence[str]) -> int:
    """In a fresh process: one load through the proxy; prints the run and this process's peak RSS."""
    from app.retrieve.settings import RetrievePolicy

    from .cpython import _load, run_async

    base, url, preset, cache_mb = argv
    policy = RetrievePolicy(cache_bytes=int(cache_mb) << 20) if cache_mb != "-" else None
    run = run_async(lambda: _load(base, {"url": url}, preset, policy))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"run": run.raw(), "peak_rss_kb": peak_kb}))
    return 0


def _load_in_child(proxy: ThrottleProxy, url: str, preset: str, cache_mb: int | None) -> tuple[LoadRun, float]:
    mark = len(proxy.request_log)
    done = subprocess.run([sys.executable, "-m", "app.bench.scale", "--child", proxy.url, url, preset,
                           str(cache_mb) if cache_mb else "-"], cwd=PROJECT, capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"load of {url} failed: {done.stderr.strip()[-800:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    run = LoadRun.from_raw(answer["run"])
    time.sleep(0.05)  # let the proxy see the last bytes
    run.bytes_frames, run.bytes_total, run.frame_requests = frame_bytes(proxy.request_log, mark)
    return run, answer["peak_rss_kb"] / 1024.0


def load_rows(stacks: Sequence, profile: str, runs: int, cache_mb: int | None,
              progress: Callable[[str], None]) -> list[LargeLoadRow]:
    rows = []
    for stack in stacks:
        server = ServeProcess(stack.tree)
        net = PROFILES[profile]
        proxy = ThrottleProxy(*server.address, *((net["down"], net["up"], net["latency"]) if net else ()))
        lossless = sum(p.stat().st_size for p in (stack.tree / stack.url.removeprefix("/dicomweb/")
                                                  / "instances").glob("*/frames/*") if p.is_file())
        try:
            for number in range(runs):
                progress(f"load {stack.name} ({profile}) run {number + 1}/{runs}")
                run, peak = _load_in_child(proxy, stack.url, SCALE_PRESET, cache_mb)
                rows.append(_load_row(stack, profile, cache_mb, run, peak, lossless))
        finally:
            proxy.close()
            server.close()
    return rows


def _load_row(stack, profile: str, cache_mb: int | None, run: LoadRun, peak_mb: float | None,
              lossless: int, preset: str = SCALE_PRESET) -> LargeLoadRow:
    row = StackRow.from_runs(preset, profile, [run], stack.slices, lossless)
    clicked = run.t_click is not None
    drawn = [e["bench_now"] - run.t_click if clicked and e.get("bench_now") is not None else e["t_ms"]
             for e in run.log if e.get("drawn")]
    finals = len({e["index"] for e in run.log if e.get("final")})

    def median(stats) -> float | None:
        return round(stats.median, 1) if stats is not None else None

    return LargeLoadRow(stack.name, stack.slices, f"{stack.rows}x{stack.columns}", preset, profile, cache_mb,
                        round(min(drawn), 1) if drawn else None, median(row.all_something_ms),
                        median(row.all_lossless_ms), round(floor_ms(profile, lossless, 0.0), 1),
                        run.bytes_frames, lossless, finals, None if peak_mb is None else round(peak_mb, 1))


# -- the page on large stacks ---------------------------------------------------------------------


def _served(stack):
    """(server, proxy) for a stack's tree; the proxy meters (the browser emulates the network)."""
    server = ServeProcess(stack.tree)
    return server, ThrottleProxy(*server.address)


def _lossless_bytes(stack) -> int:
    return sum(p.stat().st_size for p in (stack.tree / stack.url.removeprefix("/dicomweb/") / "instances")
               .glob("*/frames/*") if p.is_file())


def page_rows(driver, stacks: Sequence, profile: str, runs: int, progress: Callable[[str], None]) -> list[LargeLoadRow]:
    """The page loads each stack (``interleavedStack``, and PAGE_EXTRA_PRESETS), memory sampled; one
    row per run."""
    rows = []
    for stack in stacks:
        server, proxy = _served(stack)
        lossless = _lossless_bytes(stack)
        try:
            for preset, number in [(p, n) for p in (SCALE_PRESET, *PAGE_EXTRA_PRESETS.get(stack.name, ()))
                                   for n in range(runs)]:
                progress(f"page load {stack.name} {preset} ({profile}) run {number + 1}/{runs}")
                run = driver.load(proxy, proxy.url, {"url": stack.url}, preset, profile, lossless, memory=True)
                row = _load_row(stack, profile, None, run, None, lossless, preset)
                peak, base = (PageMemory.from_raw(run.memory[k]) for k in ("peak", "baseline"))
                row.engine, row.peak_page_mb, row.baseline_page_mb, row.memory = "page", peak.mb(), base.mb(), peak.raw()
                rows.append(row)
        finally:
            proxy.close()
            server.close()
    return rows


def scroll_row(driver, stack, cache_mb: int, progress: Callable[[str], None]) -> ScrollRow:
    """Load under ``?cacheMB`` (no emulation: memory, not time), then scroll end to end."""
    from .memory import scroll_through

    server, proxy = _served(stack)
    got: dict = {}

    def scroll(page) -> None:
        probe = driver.probe
        got["load_peak"], probe.peak = probe.peak, None
        started = time.perf_counter()
        scroll_through(page, probe)
        page.wait_for_function("document.documentElement.dataset.app === 'idle'", timeout=600_000, polling=100)
        got["scroll_s"] = time.perf_counter() - started
        got["end"] = probe.sample(page)
        got["peak"], got["baseline"] = probe.peak, probe.baseline

    try:
        progress(f"page scroll {stack.name} under cacheMB={cache_mb}")
        driver.load(proxy, proxy.url, {"url": stack.url}, SCALE_PRESET, "none", _lossless_bytes(stack), scroll,
                    params=f"&cacheMB={cache_mb}", memory=True, collect=True)
    finally:
        proxy.close()
        server.close()
    peak, end = got["peak"], got["end"]
    return ScrollRow(stack.name, stack.slices, f"{stack.rows}x{stack.columns}", cache_mb, peak.renderer,
                     got["baseline"].mb(), got["load_peak"].mb(), peak.mb(), end.held_images,
                     round(end.held_pixels / (1 << 20), 1), round(got["scroll_s"], 1), peak.raw())


def browser_rows(size: str, stacks: dict, profile: str, runs: int, progress: Callable[[str], None]):
    """(page load rows, scroll rows, worker discovery rows), one Chromium for all of them."""
    from .browser import BrowserDriver

    names = ("ct174",) if size == "small" else ("ct174", "series1000")
    driver = BrowserDriver()
    try:
        loads = page_rows(driver, [stacks[n] for n in names], profile, runs, progress)
        scrolls = [scroll_row(driver, stacks[name], mb, progress) for name, mb in SCROLLS[size]]
        progress("discovery in the page's worker (best of 3 loads each)")
        discovery = worker_discovery_rows(driver, [stacks[n] for n in names])
    finally:
        driver.close()
    return loads, scrolls, discovery


# -- the run and its report -----------------------------------------------------------------------


def run_scale(size: str = "small", *, runs: int = 1, profile: str = "seed4g", workers: int | None = None,
              cache_mb: int | None = None, page: bool = True,
              progress: Callable[[str], None] = lambda s: None) -> ScaleResult:
    from app.convert_pool import default_workers
    from tools.large_stacks import ensure_large_stacks, write_archive

    workers = workers or max(2, default_workers())
    result = ScaleResult(size, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         {"python": platform.python_version(), "cpus": os.cpu_count(), "workers": workers,
                          "loadavg": [round(x, 2) for x in os.getloadavg()]})
    t0 = time.perf_counter()
    progress("discovery and planning: 20, 200, 1000 instances (CPython CPU time)")
    result.discovery = discovery_rows()
    result.discovery_index = index_rows()
    names = ("ct174",) if size == "small" else ("ct174", "series1000")
    progress(f"large stacks {', '.join(names)} (generated once, cached)")
    stacks = ensure_large_stacks(names)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        scratch = Path(scratch)
        ct_files = stacks["ct174"].source_files()
        shape = (4, 22, 512) if size == "small" else (8, 22, 512)
        archive = write_archive(scratch / "archive", *shape)
        inputs = {"CT 174 x 512x512 (1 series)": (ct_files, len(ct_files), 1),
                  f"archive {shape[0]} series x {shape[1]} x 512x512": (archive, shape[0] * shape[1], shape[0])}
        result.machine["parallel_capacity"] = parallel_capacity(workers)
        result.convert = converter_rows(inputs, workers, scratch, progress)
        result.machine["parallel_capacity_end"] = parallel_capacity(workers)
    result.loads = load_rows([stacks[name] for name in names], profile, runs, cache_mb, progress)
    if page:
        loads, result.scrolls, result.worker_discovery = browser_rows(size, stacks, profile, runs, progress)
        result.loads += loads
    result.machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result.elapsed_s = round(time.perf_counter() - t0, 1)
    return result


def render_scale(result: ScaleResult) -> str:
    lines = [f"## Scale ({result.size}; {result.machine['workers']} workers, {result.machine['cpus']} CPUs, "
             f"load {result.machine['loadavg']} -> {result.machine.get('loadavg_end')})", "",
             f"Parallel capacity (busy loops, {result.machine['workers']} processes vs 1): "
             f"{result.machine.get('parallel_capacity')}x before, {result.machine.get('parallel_capacity_end')}x "
             "after the converter rows: no converter speed-up can exceed it.", "",
             "| converter input | method | workers | images | s | images/s | vs serial |", "|---|---|---:|---:|---:|---:|---:|"]
    for c in result.convert:
        lines.append(f"| {c.input} | {c.method} | {c.workers} | {c.images} | {c.seconds} | {c.images_per_s} | "
                     f"{c.speedup}x |")
    lines += ["", "| stack | engine | preset | profile | first ms | all visible ms | all lossless ms | floor ms | "
              "frame bytes | lossless bytes | finals | peak RSS MB | peak page MB (at ready) |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result.loads:
        page = f"{r.peak_page_mb} ({r.baseline_page_mb})" if r.peak_page_mb is not None else ""
        lines.append(f"| {r.stack} {r.slices} x {r.size} | {r.engine} | {r.preset} | {r.profile} | {r.first_ms} | "
                     f"{r.all_visible_ms} | {r.all_lossless_ms} | {r.floor_ms} | {r.bytes_frames:,} | "
                     f"{r.lossless_bytes:,} | {r.finals}/{r.slices} | {r.peak_rss_mb or ''} | {page} |")
    if result.loads and any(r.engine == "page" for r in result.loads):
        lines += ["", PAGE_MEMORY_NOTE]
    if result.discovery:
        lines += ["", "Discovery and planning, CPU ms from the series metadata's bytes to the first frame request "
                  "(CPython, best of 5):", "", render_discovery(result.discovery)]
    if result.discovery_index:
        lines += ["", "The same from the series' stack index (stack.json), the metadata checked after the first "
                  "request:", "", render_index(result.discovery_index)]
    if result.worker_discovery:
        lines += ["", "The same in the page's worker (Pyodide, wall ms it reports about its own load, loopback, "
                  "best of 3 fresh pages):", "", render_worker_discovery(result.worker_discovery)]
    if result.scrolls:
        lines += ["", "| stack scrolled end to end | cacheMB | renderer | at ready MB | load peak MB | "
                  "scroll peak MB | peak - ready MB | slices showing | pixels counted MB | scroll s |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in result.scrolls:
            lines.append(f"| {c.stack} {c.slices} x {c.size} | {c.cache_mb} | {c.renderer} | {c.baseline_mb} | "
                         f"{c.load_peak_mb} | {c.scroll_peak_mb} | {round(c.scroll_peak_mb - c.baseline_mb, 1)} | "
                         f"{c.held_images}/{c.slices} | {c.held_pixel_mb} | {c.scroll_s} |")
    return "\n".join(lines)


PAGE_MEMORY_NOTE = (
    "Page memory = used JS heap of the page and of the engine's worker (CDP Runtime.getHeapUsage) + their "
    "ArrayBuffer backing stores (the decoded pixels the page holds) + the worker's wasm heap (its high-water "
    "mark: wasm memory never shrinks) + the renderer's bytes beyond those buffers (WebGL2: every texture; "
    f"2D: the painted surfaces), sampled every {MEMORY_EVERY_MS} ms; in parentheses the same at ready, before the Load "
    "click. Load rows: as held, garbage not yet collected included (no GC forced during a timed load); scroll rows: "
    "live memory, each sample after a forced garbage collection of both JS heaps (HeapProfiler.collectGarbage).")


def main(size: str, *, runs: int, profile: str, out: Path | None, progress: Callable[[str], None]) -> int:
    """The ``--scale`` branch of ``python -m app bench``."""
    result = run_scale(size, runs=runs, profile=profile, progress=progress)
    print(render_scale(result))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark-scale.json").write_text(json.dumps(result.to_json(), indent=1) + "\n")
        (out / "benchmark-scale.md").write_text(render_scale(result) + "\n")
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    sys.exit(_child(sys.argv[2:]))
