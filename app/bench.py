"""``python -m app bench``: measure the viewer the way Cornerstone3D's table is measured, and more.

What it does (see ``docs/benchmark.md`` for results and method):

* starts ``serve.py`` in this process on 127.0.0.1 (any free port) over the demo tree;
* ``--engine browser`` (default): headless Chromium through Playwright. Cold start first
  (fresh context, no emulation: navigation -> ready with ``?noload=1``; navigation -> first
  image with a load). Then, per network profile, per mode, per run: a fresh context with the
  HTTP cache disabled (``Network.setCacheDisabled``) opens
  ``index.html?noload=1&url=<series>&config=<preset>`` with NO emulation, waits until Python is
  ready, THEN applies ``Network.emulateNetworkConditions`` and clicks Load. The runtime
  download and start are therefore outside every load timing; only the study's own requests
  (metadata, frames) run under the emulated network.
* ``--engine cpython``: the same modes through the CPython engine (``RetrieveEngine`` over
  ``NativeTransport``), no browser. Profiles other than ``none`` go through a small in-process
  throttling TCP proxy (one shared link per direction: bandwidth serialisation plus half the
  latency each way, so one request/response round trip costs the profile's latency).

Times: "first render" is the first renderLog entry with ``drawn`` true for image 0, taken as
``image_t_ms`` (from the image's first request, as Cornerstone's table) and from the click.
"Final" is the entry with ``final`` true. Bytes moved are counted at the server
(``request_log`` ``bytes_sent`` of frame URLs issued during that run). The network floor of a
render is ``latency + bytes it needed / bandwidth + its own decode time``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

__all__ = ["PROFILES", "MODES", "main", "run_bench", "ThrottleProxy", "render_markdown"]

PROJECT = Path(__file__).resolve().parent.parent

# Bytes per second down, up, latency in ms (what Network.emulateNetworkConditions takes).
PROFILES: dict[str, dict[str, float] | None] = {
    "none": None,
    # Cornerstone3D's published "4g": 30 Mbit/s down, 5 Mbit/s up, 10 ms.
    "seed4g": {"down": 3_750_000, "up": 625_000, "latency": 10.0},
    # Chrome DevTools "Fast 4G": 9 Mbit/s * 0.9, 1.5 Mbit/s * 0.9, 60 ms * 2.75.
    "fast4g": {"down": 1_012_500, "up": 168_750, "latency": 165.0},
    # Chrome DevTools "Slow 4G" (the former "Fast 3G"): 1.6 Mbit/s * 0.9, 750 kbit/s * 0.9, 150 ms * 3.75.
    "slow4g": {"down": 180_000, "up": 84_375, "latency": 562.5},
}
PROFILE_LABELS = {"none": "loopback (no emulation)", "seed4g": "4g 30/5 Mbit/s 10 ms",
                  "fast4g": "Fast 4G 8.1/1.35 Mbit/s 165 ms", "slow4g": "Slow 4G 1.44/0.675 Mbit/s 563 ms"}

# preset name -> (label, frames path of the final encoding, frames path of a first-render alternate)
MODES: dict[str, tuple[str, str, str | None]] = {
    "jls": ("JLS", "jls", None),
    "jlsReduced": ("JLS Reduced", "jls", "jlsThumbnail"),
    "htj2k": ("HTJ2K streaming", "frames", None),
    "htj2kByteRange": ("HTJ2K Byte Range", "frames", None),
    "nonProgressive": ("HTJ2K non-progressive", "frames", None),
}
STACK_PRESETS = ("interleavedStack", "htj2k")
DEFAULT_PROFILES = ("seed4g", "fast4g")

_FRAME_PATH = re.compile(r"/instances/[^/]+/[^/]+/\d+(?:\?|$)")

# Stamps every renderLog entry with performance.now() when the page pushes it (page clock), so
# times from the click can be read without touching the page's code. index.html assigns
# window.renderLog before Python starts, and the page replaces it at each load: both go through the
# setter.
_HOOK_JS = """
(() => {
  const bench = window.__bench = {states: []};
  let log = [];
  const wrap = (a) => {
    if (a && typeof a.push === 'function' && !a.__benchWrapped) {
      const push = a.push.bind(a);
      Object.defineProperty(a, 'push', {enumerable: false, value: (...items) => {
        const t = performance.now();
        for (const it of items) { try { it.bench_now = t; } catch (e) {} }
        return push(...items);
      }});
      Object.defineProperty(a, '__benchWrapped', {enumerable: false, value: true});
    }
    return a;
  };
  Object.defineProperty(window, 'renderLog', {configurable: true,
    get() { return log; }, set(v) { log = wrap(v); }});
  new MutationObserver(() => {
    bench.states.push([document.documentElement.dataset.app, performance.now()]);
  }).observe(document, {attributes: true, subtree: true, attributeFilter: ['data-app']});
  // main-thread tasks over 50 ms (decodes run on the page's thread): [start, duration]
  bench.longtasks = [];
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) bench.longtasks.push([e.startTime, e.duration]);
    }).observe({type: 'longtask', buffered: true});
  } catch (e) {}
})();
"""
# when the last runtime file (Pyodide, its stdlib, the wheels) had arrived, ms since navigation
_RUNTIME_DOWNLOADED_JS = """() => Math.max(0, ...performance.getEntriesByType('resource')
  .filter(e => /\\/static\\/(pyodide|wheels)\\//.test(e.name)).map(e => e.responseEnd))"""

_READY_JS = ("(window.appTimings && window.appTimings.readyMs > 0)"
             " || document.documentElement.dataset.app === 'error'")
_DONE_JS = """() => { const s = document.documentElement.dataset.app;
  if (s === 'error') return true;
  const seen = (window.__bench.states || []).some(x => x[0] === 'loading');
  return seen && s === 'idle'; }"""
_COLLECT_JS = """() => ({
  log: Array.from(window.renderLog).map(e => Object.assign({}, e)),
  states: window.__bench.states, click: window.__bench.click, longtasks: window.__bench.longtasks,
  appState: document.documentElement.dataset.app,
  errors: document.getElementById('errors') ? document.getElementById('errors').innerText : '',
  timings: Object.assign({}, window.appTimings)})"""
_CLICK_JS = "() => { window.__bench.click = performance.now(); document.getElementById('load').click(); return window.__bench.click; }"


# ---------------------------------------------------------------------------------- small helpers
def _run_async(make_coro):
    """asyncio.run in a helper thread: Playwright's sync API keeps an event loop on this thread."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(make_coro())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in __import__("os").getloadavg()]
    except (OSError, AttributeError):
        return None


def _stats(values: Sequence[float | None]) -> dict[str, float] | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def _fmt_ms(s: dict | None) -> str:
    if not s:
        return "-"
    if s["n"] == 1 or round(s["min"]) == round(s["max"]):
        return f"{s['median']:.0f}"
    return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.2f} MB"
    if n >= 1000:
        return f"{n / 1000:.0f} KB"
    return f"{n:.0f} B"


def _floor_ms(profile: str, nbytes: float, decode_ms: float) -> float:
    net = PROFILES[profile]
    if net is None:
        return decode_ms
    return net["latency"] + nbytes / net["down"] * 1000.0 + decode_ms


def _frame_bytes(log: Sequence[dict], start: int) -> tuple[int, int, int]:
    """(frame bytes, all bytes, frame requests) served since log position ``start``."""
    frames = total = count = 0
    for rec in list(log)[start:]:
        total += int(rec.get("bytes_sent") or 0)
        if _FRAME_PATH.search(rec["path"]):
            frames += int(rec.get("bytes_sent") or 0)
            count += 1
    return frames, total, count


@dataclasses.dataclass
class Demo:
    base: str  # server root URL without trailing slash
    radiograph: dict  # demo.json entry
    stack: dict | None
    data_root: Path
    files: dict[str, int]  # frames path name -> size on disk of the radiograph's frame 1
    stack_lossless: int  # sum of frames/ sizes of the stack


def _demo(server, data_root: Path) -> Demo:
    entries = json.loads((data_root / "demo.json").read_text())
    radiograph = next(e for e in entries if "3072" in e["name"])
    stack = next((e for e in entries if int(e.get("instances", 1)) >= 10), None)
    series_dir = data_root / radiograph["url"].split("/dicomweb/", 1)[1]
    files = {}
    for path in sorted((series_dir / "instances").glob("*/*/1")):
        files[path.parent.name] = path.stat().st_size
    stack_lossless = 0
    if stack:
        stack_dir = data_root / stack["url"].split("/dicomweb/", 1)[1]
        stack_lossless = sum(p.stat().st_size for p in (stack_dir / "instances").glob("*/frames/*"))
    return Demo(server.url.rstrip("/"), radiograph, stack, data_root, files, stack_lossless)


class _Server:
    """serve.py in a thread of this process."""

    def __init__(self, data_root: Path | None = None) -> None:
        sys.path.insert(0, str(PROJECT)) if str(PROJECT) not in sys.path else None
        import serve

        self.data_root = Path(data_root or (PROJECT / "static" / "dicomweb")).resolve()
        self.server = serve.make_server("127.0.0.1", 0, project_root=PROJECT, data_root=self.data_root)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------------------------- throttling proxy
class _Link:
    def __init__(self, rate: float) -> None:
        self.rate = rate  # bytes per second
        self.free_at = 0.0


class ThrottleProxy:
    """A TCP proxy on 127.0.0.1 that emulates a link: bandwidth per direction and latency.

    Each direction is one shared link (all connections queue on it, as in Chrome's emulation):
    a chunk is serialised at the link's rate after the previous one, then delivered half the
    latency later. Runs its own event loop in a thread so the measured process is not slowed.
    """

    def __init__(self, target_host: str, target_port: int, down: float, up: float, latency_ms: float) -> None:
        self.target = (target_host, target_port)
        self.down, self.up = _Link(down), _Link(up)
        self.half_latency = latency_ms / 2000.0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _handle(self, creader, cwriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.close()
            return
        try:
            await asyncio.gather(self._pipe(creader, uwriter, self.up), self._pipe(ureader, cwriter, self.down),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # proxy closing: end quietly (asyncio logs a cancelled handler)
            pass

    async def _pipe(self, reader, writer, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                when, data = await queue.get()
                delay = when - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()

        task = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(16384)
                now = loop.time()
                if not data:
                    queue.put_nowait((now + self.half_latency, None))
                    break
                start = max(now, link.free_at)
                link.free_at = start + len(data) / link.rate
                queue.put_nowait((link.free_at + self.half_latency, data))
            await task
        except (OSError, asyncio.CancelledError):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        async def stop():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


# ---------------------------------------------------------------------------------- one run's result
def _summarise_single(log: list[dict], t_click: float | None) -> dict:
    """First drawn / final entries of image 0 from a renderLog-shaped list."""
    first = next((e for e in log if e["index"] == 0 and e.get("drawn")), None)
    final = next((e for e in log if e["index"] == 0 and e.get("final")), None)

    def since_click(e):
        if e is None or t_click is None or e.get("bench_now") is None:
            return None
        return e["bench_now"] - t_click

    return {
        "first_image_ms": first and first["image_t_ms"], "first_click_ms": since_click(first),
        "first_size": first and f"{first['columns']}x{first['rows']}", "first_bytes": first and first["bytes"],
        "first_decode_ms": first and first["decode_ms"], "first_status": first and first["status"],
        "final_image_ms": final and final["image_t_ms"], "final_click_ms": since_click(final),
        "final_bytes": final and final["bytes"], "final_decode_ms": final and final["decode_ms"],
        "final_status": final and final["status"], "final_size": final and f"{final['columns']}x{final['rows']}",
        "refinements": len([e for e in log if e["index"] == 0]),
        "decode_total_ms": sum(e.get("decode_ms") or 0 for e in log if e["index"] == 0),
    }


def _summarise_stack(log: list[dict], t_click: float | None, count: int) -> dict:
    first: dict[int, float] = {}
    own: dict[int, float] = {}
    final: dict[int, float] = {}
    for e in log:
        t = (e["bench_now"] - t_click) if (t_click is not None and e.get("bench_now") is not None) else e["t_ms"]
        first.setdefault(e["index"], t)
        if e["status"] not in ("ADJACENT_REPLICATE", "FAR_REPLICATE"):
            own.setdefault(e["index"], t)
        if e.get("final"):
            final.setdefault(e["index"], t)
    return {
        "all_something_ms": max(first.values()) if len(first) == count else None,
        "all_own_ms": max(own.values()) if len(own) == count else None,
        "all_lossless_ms": max(final.values()) if len(final) == count else None,
        "slices_shown": len(first), "slices_lossless": len(final),
    }


# ---------------------------------------------------------------------------------- browser engine
class _Browser:
    def __init__(self) -> None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise SystemExit(f"error: the browser bench needs playwright ({exc}); or use --engine cpython")
        sys.path.insert(0, str(PROJECT / "tests")) if str(PROJECT / "tests") not in sys.path else None
        try:
            from conftest import CHROMIUM, CHROMIUM_ARGS
        except Exception:  # noqa: BLE001
            CHROMIUM, CHROMIUM_ARGS = "/usr/bin/chromium", ["--no-sandbox", "--disable-gpu", "--disable-quic",
                                                          "--no-first-run", "--disable-background-networking",
                                                          "--disable-component-update", "--disable-sync",
                                                          "--disable-dev-shm-usage"]
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()

    def page(self, *, cache_disabled: bool = True):
        context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.add_init_script(_HOOK_JS)
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        if cache_disabled:
            cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        return context, page, cdp, errors


def _emulate(cdp, profile: str) -> None:
    net = PROFILES[profile]
    if net is None:
        return
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": net["latency"],
        "downloadThroughput": net["down"], "uploadThroughput": net["up"]})


def _timeout_ms(profile: str, nbytes: int) -> float:
    net = PROFILES[profile]
    if net is None:
        return 120_000
    return 120_000 + 4 * (nbytes / net["down"] * 1000 + 20 * net["latency"])


def _browser_load(b: _Browser, server, demo: Demo, entry: dict, preset: str, profile: str,
                  expect_bytes: int) -> dict:
    context, page, cdp, errors = b.page()
    try:
        page.goto(f"{demo.base}/index.html?noload=1&url={quote(entry['url'], safe='/')}&config={preset}")
        page.wait_for_function(_READY_JS, timeout=120_000)
        _emulate(cdp, profile)  # only now: the runtime load is never under emulation
        mark = len(server.request_log)
        t_click = page.evaluate(_CLICK_JS)
        page.wait_for_function(_DONE_JS, timeout=_timeout_ms(profile, expect_bytes), polling=20)
        data = page.evaluate(_COLLECT_JS)
        time.sleep(0.05)  # let the server thread record the last request
        frames, total, count = _frame_bytes(server.request_log, mark)
        if data["appState"] == "error" or errors:
            raise RuntimeError(f"page error ({preset}, {profile}): {data['errors']} {errors}")
        loading = next((t for s, t in data["states"] if s == "loading"), None)
        after = [d for start, d in data.get("longtasks") or [] if start >= t_click]
        return {"log": data["log"], "t_click": t_click, "t_loading": loading,
                "bytes_frames": frames, "bytes_total": total, "frame_requests": count,
                "longest_task_ms": max(after, default=0.0), "long_tasks_ms": sum(after)}
    finally:
        context.close()


def _browser_cold_start(b: _Browser, demo: Demo, runs: int) -> dict:
    ready_noload, ready_load, first_image, imports = [], [], [], []
    downloaded, python_start, warm = [], [], []
    url = quote(demo.radiograph["url"], safe="/")
    for _ in range(runs):
        context, page, _cdp, _errors = b.page(cache_disabled=False)
        try:
            page.goto(f"{demo.base}/index.html?noload=1&url={url}&config=htj2k")
            page.wait_for_function(_READY_JS, timeout=120_000)
            t = page.evaluate("() => Object.assign({}, window.appTimings)")
            ready_noload.append(t.get("readyMs"))
            imports.append(t.get("pythonImportsMs"))
            python_start.append(t.get("pythonStartMs"))
            downloaded.append(page.evaluate(_RUNTIME_DOWNLOADED_JS))
            # a second visit in the same context: HTTP cache warm (304s), compiled wasm cached
            page.goto(f"{demo.base}/index.html?noload=1&url={url}&config=htj2k")
            page.wait_for_function(_READY_JS, timeout=120_000)
            warm.append(page.evaluate("() => window.appTimings.readyMs"))
        finally:
            context.close()
        context, page, _cdp, _errors = b.page(cache_disabled=False)
        try:
            page.goto(f"{demo.base}/index.html?url={url}&config=htj2k")
            page.wait_for_function("() => Array.from(window.renderLog || []).some(e => e.drawn)"
                                   " || document.documentElement.dataset.app === 'error'", timeout=120_000,
                                   polling=10)
            data = page.evaluate(_COLLECT_JS)
            first = next((e for e in data["log"] if e.get("drawn")), None)
            ready_load.append(data["timings"].get("readyMs"))
            first_image.append(first and first.get("bench_now"))
            page.wait_for_function(_DONE_JS, timeout=120_000)
        finally:
            context.close()
    return {"ready_noload_ms": _stats(ready_noload), "ready_ms": _stats(ready_load),
            "first_image_ms": _stats(first_image), "python_imports_ms": _stats(imports),
            "runtime_downloaded_ms": _stats([d for d in downloaded if d]),
            "python_start_ms": _stats([p for p in python_start if p]),
            "warm_ready_ms": _stats(warm),
            "raw": {"ready_noload": ready_noload, "ready": ready_load, "first_image": first_image}}


_FETCH_JS = """async ([u, range]) => {
  const t = performance.now();
  const r = await fetch(u, {cache: 'no-store', headers: range ? {Range: range} : {}});
  const first = performance.now() - t;
  const b = await r.arrayBuffer();
  return [performance.now() - t, b.byteLength, first, r.status]; }"""


def _browser_transfer(b: _Browser, demo: Demo, sop: str, profile: str, runs: int) -> dict:
    """The same frames fetched by plain JS (fetch + arrayBuffer) under the same emulation: the
    transfer time Chromium's emulation itself allows, without Python, streaming or decoding."""
    context, page, cdp, _errors = b.page()
    out: dict[str, Any] = {}
    try:
        page.goto(f"{demo.base}/dicomweb/demo.json")  # same origin, no Python to start
        _emulate(cdp, profile)
        base = f"{demo.base}{demo.radiograph['url']}/instances/{sop}"
        for name, path, rng in (("HTJ2K full", "frames/1", None), ("JLS full", "jls/1", None),
                                ("HTJ2K first 64 KB", "frames/1", "bytes=0-65535")):
            got = [page.evaluate(_FETCH_JS, [f"{base}/{path}", rng]) for _ in range(runs)]
            out[name] = {"ms": _stats([g[0] for g in got]), "bytes": got[0][1],
                         "first_bytes_ms": _stats([g[2] for g in got]),
                         "floor_ms": _floor_ms(profile, got[0][1], 0.0)}
    finally:
        context.close()
    return out


def _browser_decode(b: _Browser, demo: Demo, fmt: dict, urls: dict[str, tuple[str, str]], runs: int) -> dict:
    context, page, _cdp, _errors = b.page()
    out: dict[str, list[float]] = {}
    try:
        page.goto(f"{demo.base}/index.html?noload=1")
        page.wait_for_function(_READY_JS, timeout=120_000)
        for name, (url, ts) in urls.items():
            spec = json.dumps({**fmt, "transfer_syntax": ts})
            times = []
            for i in range(runs + 1):
                got = json.loads(page.evaluate("([u, f]) => window.pyApp.decodeFrame(u, f)", [url, spec]))
                if i:  # the first call warms imports and caches
                    times.append(got["decode_ms"])
            out[name] = times
    finally:
        context.close()
    return out


# ---------------------------------------------------------------------------------- CPython engine
async def _cpython_load_async(base_url: str, entry: dict, preset: str) -> dict:
    from app.config import preset as get_preset
    from app.engine import Refinement, RetrieveEngine
    from app.study import discover
    from app.transport.native import NativeTransport

    transport = NativeTransport()
    log: list[dict] = []
    try:
        t0 = time.perf_counter()
        stack = await discover(transport, base_url + entry["url"])
        engine = RetrieveEngine(stack, get_preset(preset), transport, viewport=(900, 1280))
        current = min(len(stack) // 2, len(stack) - 1) if len(stack) > 2 else 0
        engine.set_current(current)
        t_loading = (time.perf_counter() - t0) * 1000.0
        async for event in engine.run():
            if isinstance(event, Refinement):
                now = (time.perf_counter() - t0) * 1000.0
                log.append({"index": event.index, "status": event.status.name, "rows": event.rows,
                            "columns": event.columns, "t_ms": now, "image_t_ms": event.t_ms,
                            "bytes": event.bytes_received, "final": event.final,
                            "drawn": event.index == current, "decode_ms": event.decode_ms, "bench_now": now})
        return {"log": log, "t_click": 0.0, "t_loading": t_loading, "count": len(stack)}
    finally:
        await transport.aclose()


def _cpython_load(server, base_url: str, entry: dict, preset: str) -> dict:
    mark = len(server.request_log)
    result = _run_async(lambda: _cpython_load_async(base_url, entry, preset))
    time.sleep(0.05)
    frames, total, count = _frame_bytes(server.request_log, mark)
    result.update(bytes_frames=frames, bytes_total=total, frame_requests=count)
    return result


def _native_decode(demo: Demo, fmt: dict, paths: dict[str, tuple[Path, str]], runs: int) -> dict:
    from app.codecs import PixelFormat, decode_frame
    from app.readers.multipart import MultipartReader, PartData

    out = {}
    for name, (path, ts) in paths.items():
        raw = path.read_bytes()
        reader = MultipartReader(None)
        events = reader.feed(raw) + reader.close()
        data = b"".join(bytes(e.data) for e in events if isinstance(e, PartData)) or raw
        times = []
        for i in range(runs + 1):
            t = time.perf_counter()
            decode_frame(data, ts, PixelFormat(**fmt))
            if i:
                times.append((time.perf_counter() - t) * 1000.0)
        out[name] = times
    return out


# ---------------------------------------------------------------------------------- the bench
def _click_to_request(run: dict) -> float | None:
    """Click -> the radiograph's first frame request: page wiring, imports, metadata discovery."""
    e = next((e for e in run["log"] if e["index"] == 0), None)
    if e is None or e.get("bench_now") is None or run.get("t_click") is None:
        return None
    return e["bench_now"] - run["t_click"] - e["image_t_ms"]


def _row(mode: str, profile: str, runs: list[dict], files: dict[str, int]) -> dict:
    label, final_path, first_path = MODES[mode]
    per = [_summarise_single(r["log"], r["t_click"]) for r in runs]
    lossless = files.get(final_path)
    row: dict[str, Any] = {"mode": mode, "type": label, "profile": profile, "network": PROFILE_LABELS[profile],
                           "size": lossless, "runs": len(runs)}
    for key in ("first_image_ms", "first_click_ms", "final_image_ms", "final_click_ms", "final_decode_ms",
                "first_decode_ms", "decode_total_ms"):
        row[key] = _stats([p[key] for p in per])
    progressive = any(p["first_status"] and p["first_status"] != "FULL_RESOLUTION" for p in per)
    row["progressive"] = progressive
    row["first_size"] = per[0]["first_size"]
    row["first_bytes"] = _stats([p["first_bytes"] for p in per])
    row["final_size"] = per[0]["final_size"]
    row["final_status"] = per[0]["final_status"]
    row["bytes_moved"] = _stats([r["bytes_frames"] for r in runs])
    row["bytes_all"] = _stats([r["bytes_total"] for r in runs])
    row["frame_requests"] = _stats([r["frame_requests"] for r in runs])
    row["bytes_ratio"] = (row["bytes_moved"]["median"] / lossless) if (lossless and row["bytes_moved"]) else None
    row["click_to_request_ms"] = _stats([_click_to_request(r) for r in runs])
    row["longest_task_ms"] = _stats([r.get("longest_task_ms") for r in runs])
    row["long_tasks_ms"] = _stats([r.get("long_tasks_ms") for r in runs])
    ff = [(_floor_ms(profile, p["first_bytes"], p["first_decode_ms"]), p["first_image_ms"]) for p in per
          if p["first_bytes"] is not None and p["first_image_ms"] is not None]
    fl = [(_floor_ms(profile, p["final_bytes"], p["final_decode_ms"]), p["final_image_ms"]) for p in per
          if p["final_bytes"] is not None and p["final_image_ms"] is not None]
    row["first_floor_ms"] = _stats([f for f, _ in ff])
    row["first_floor_ratio"] = _stats([t / f for f, t in ff if f > 0])
    row["final_floor_ms"] = _stats([f for f, _ in fl])
    row["final_floor_ratio"] = _stats([t / f for f, t in fl if f > 0])
    row["raw"] = [{k: v for k, v in r.items() if k != "log"} | {"renderLog": r["log"]} for r in runs]
    return row


def _stack_row(preset: str, profile: str, runs: list[dict], count: int, lossless: int) -> dict:
    per = [_summarise_stack(r["log"], r["t_click"], count) for r in runs]
    return {"preset": preset, "profile": profile, "network": PROFILE_LABELS[profile], "slices": count,
            "all_something_ms": _stats([p["all_something_ms"] for p in per]),
            "all_own_ms": _stats([p["all_own_ms"] for p in per]),
            "all_lossless_ms": _stats([p["all_lossless_ms"] for p in per]),
            "bytes_moved": _stats([r["bytes_frames"] for r in runs]), "lossless_bytes": lossless,
            "frame_requests": _stats([r["frame_requests"] for r in runs]),
            "floor_lossless_ms": _floor_ms(profile, lossless, 0.0) if PROFILES[profile] else None,
            "raw": [{"slices_shown": p["slices_shown"], "slices_lossless": p["slices_lossless"]}
                    | {k: v for k, v in r.items() if k != "log"} | {"renderLog": r["log"]} for p, r in zip(per, runs)]}


def _fmt_for(demo: Demo) -> tuple[dict, str]:
    """The radiograph's pixel format (PixelFormat fields) and SOP instance UID, from its metadata."""
    from app.study import discover
    from app.transport.native import NativeTransport

    async def go():
        transport = NativeTransport()
        try:
            return await discover(transport, demo.base + demo.radiograph["url"])
        finally:
            await transport.aclose()

    stack = _run_async(go)
    image = stack.images[0]
    return dataclasses.asdict(image.fmt), image.sop_instance_uid


def run_bench(*, engine: str = "browser", runs: int = 3, profiles: Sequence[str] = DEFAULT_PROFILES,
              modes: Sequence[str] = tuple(MODES), stack: bool = True, cold_start: bool = True,
              decode: bool = True, data_root: Path | None = None, server=None,
              progress: Callable[[str], None] = lambda s: None) -> dict:
    """Run the bench; returns the result dict (what ``benchmark.json`` holds)."""
    own = server is None
    srv = _Server(data_root) if own else None
    server = srv.server if own else server
    data_root = Path(server.mounts.data_root) if hasattr(server, "mounts") else Path(data_root)
    demo = _demo(server, data_root)
    result: dict[str, Any] = {
        "engine": engine, "runs": runs, "profiles": {p: PROFILES[p] for p in profiles},
        "modes": list(modes), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": __import__("os").cpu_count(), "loadavg_start": _loadavg()},
        "image": {"name": demo.radiograph["name"], "files": demo.files}, "rows": [], "stack": [],
    }
    browser = _Browser() if engine == "browser" else None
    t_start = time.perf_counter()
    try:
        if browser:
            result["machine"]["chromium"] = browser.browser.version
        fmt, sop = _fmt_for(demo)
        if cold_start and browser:
            progress("cold start")
            result["cold_start"] = _browser_cold_start(browser, demo, runs)
        for profile in profiles:
            proxy = None
            base = demo.base
            if engine == "cpython" and PROFILES[profile] is not None:
                net = PROFILES[profile]
                host, port = server.server_address[:2]
                proxy = ThrottleProxy(host, port, net["down"], net["up"], net["latency"])
                base = proxy.url
            try:
                for mode in modes:
                    got = []
                    for i in range(runs):
                        progress(f"{profile} {mode} run {i + 1}/{runs}")
                        if browser:
                            size = demo.files.get(MODES[mode][1], 8_000_000)
                            got.append(_browser_load(browser, server, demo, demo.radiograph, mode, profile,
                                                     size + demo.files.get("jlsThumbnail", 0)))
                        else:
                            got.append(_cpython_load(server, base, demo.radiograph, mode))
                    result["rows"].append(_row(mode, profile, got, demo.files))
                if browser:
                    progress(f"{profile} plain fetch")
                    result.setdefault("transfer", {})[profile] = _browser_transfer(browser, demo, sop, profile, runs)
                if stack and demo.stack:
                    for preset_name in STACK_PRESETS:
                        got = []
                        for i in range(runs):
                            progress(f"{profile} stack {preset_name} run {i + 1}/{runs}")
                            if browser:
                                got.append(_browser_load(browser, server, demo, demo.stack, preset_name, profile,
                                                         demo.stack_lossless))
                            else:
                                got.append(_cpython_load(server, base, demo.stack, preset_name))
                        result["stack"].append(_stack_row(preset_name, profile, got, int(demo.stack["instances"]),
                                                             demo.stack_lossless))
            finally:
                if proxy:
                    proxy.close()
        if decode:
            progress("decode")
            series_dir = data_root / demo.radiograph["url"].split("/dicomweb/", 1)[1]
            codecs = {"HTJ2K": ("frames", "1.2.840.10008.1.2.4.202"), "JPEG-LS": ("jls", "1.2.840.10008.1.2.4.80")}
            paths = {k: (series_dir / "instances" / sop / p / "1", ts) for k, (p, ts) in codecs.items()}
            native = _native_decode(demo, fmt, paths, max(runs, 3))
            dec = {"native": {k: _stats(v) for k, v in native.items()}}
            if browser:
                urls = {k: (f"{demo.base}{demo.radiograph['url']}/instances/{sop}/{p}/1", ts)
                        for k, (p, ts) in codecs.items()}
                inpage = _browser_decode(browser, demo, fmt, urls, max(runs, 3))
                dec["browser"] = {k: _stats(v) for k, v in inpage.items()}
                dec["ratio"] = {k: dec["browser"][k]["median"] / dec["native"][k]["median"] for k in codecs}
            result["decode"] = dec
    finally:
        if browser:
            browser.close()
        if srv:
            srv.close()
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    result["machine"]["loadavg_end"] = _loadavg()
    return result


# ---------------------------------------------------------------------------------- output
def _row_by(result: dict, mode: str, profile: str) -> dict | None:
    return next((r for r in result["rows"] if r["mode"] == mode and r["profile"] == profile), None)


def _fetch_floor(result: dict, row: dict) -> float | None:
    """Plain-fetch transfer time of the row's final file + its final decode (browser runs only)."""
    reqs = (result.get("transfer") or {}).get(row["profile"])
    if not reqs or row["mode"] == "jlsReduced" or not row["final_decode_ms"]:
        return None
    name = "JLS full" if MODES[row["mode"]][1] == "jls" else "HTJ2K full"
    return reqs[name]["ms"]["median"] + row["final_decode_ms"]["median"]


def check_targets(result: dict) -> list[dict]:
    """The team's targets, each with the measured value and met/missed."""
    out = []

    def add(name, value, ok, detail=""):
        out.append({"target": name, "value": value, "met": bool(ok) if value is not None else None,
                    "detail": detail})

    for mode in ("htj2k", "htj2kByteRange"):
        row = _row_by(result, mode, "seed4g")
        if not row or not row["first_image_ms"]:
            continue
        med = row["first_image_ms"]["median"]
        ratio = row["first_floor_ratio"]["median"] if row["first_floor_ratio"] else None
        add(f"{row['type']} first render on seed4g < 150 ms", round(med, 1), med < 150)
        add(f"{row['type']} first render on seed4g within 1.5x floor", ratio and round(ratio, 2),
            ratio is not None and ratio <= 1.5, f"floor {row['first_floor_ms']['median']:.0f} ms")
    for row in result["rows"]:
        if row["profile"] == "none" and result["engine"] == "browser" and len(result["profiles"]) > 1:
            continue
        if row["final_floor_ratio"]:
            r = row["final_floor_ratio"]["median"]
            add(f"{row['type']} final on {row['profile']} within 1.15x floor", round(r, 2), r <= 1.15,
                f"{row['final_image_ms']['median']:.0f} ms vs floor {row['final_floor_ms']['median']:.0f} ms")
            ff = _fetch_floor(result, row)
            if ff:
                r2 = row["final_image_ms"]["median"] / ff
                add("(same, against plain fetch + decode instead of the nominal floor)", round(r2, 2), r2 <= 1.15,
                    f"{ff:.0f} ms")
    seen = set()
    for row in result["rows"]:
        if row["mode"] == "jlsReduced" or row["mode"] in seen or row["bytes_ratio"] is None:
            continue
        seen.add(row["mode"])
        add(f"{row['type']} bytes moved <= 1.01x lossless", round(row["bytes_ratio"], 4), row["bytes_ratio"] <= 1.01)
    cold = result.get("cold_start")
    if cold and cold.get("first_image_ms"):
        v = cold["first_image_ms"]["median"]
        add("cold start to first image < 4 s", round(v), v < 4000)
    dec = result.get("decode", {})
    if "ratio" in dec:
        for k, v in dec["ratio"].items():
            add(f"in-browser {k} decode within 3x native", round(v, 2), v <= 3)
    return out


def render_markdown(result: dict) -> str:
    engine = result["engine"]
    lines: list[str] = []
    add = lines.append
    add(f"### {result['image']['name']}, {engine} engine, median of {result['runs']} (min-max), ms\n")
    add("| Type | Network | Size | First render | First render from click | Final render | Final from click | Bytes moved |")
    add("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        first = _fmt_ms(r["first_image_ms"]) if r["progressive"] else "-"
        first_c = _fmt_ms(r["first_click_ms"]) if r["progressive"] else "-"
        size = _fmt_bytes(r["size"])
        moved = _fmt_bytes(r["bytes_moved"]["median"]) if r["bytes_moved"] else "-"
        if r["bytes_ratio"]:
            moved += f" ({r['bytes_ratio']:.3f}x)"
        add(f"| {r['type']} | {r['profile']} | {size} | {first} | {first_c} | {_fmt_ms(r['final_image_ms'])} | "
            f"{_fmt_ms(r['final_click_ms'])} | {moved} |")
    add("")
    add("First render = first image drawn (for progressive modes), from the image's first request; "
        "final = lossless image drawn. Bytes moved = frame bytes the server sent in that run "
        "(x = ratio to the lossless file of the mode's final encoding).\n")
    add("### Against the network floor (latency + bytes needed / bandwidth + decode of that render)\n")
    add("| Type | Network | First image | First bytes | First floor | First / floor | Final floor | Final / floor | "
        "Final / (fetch + decode) | Final decode | Decodes (sum) | Click to request |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        fr = r["first_floor_ratio"]["median"] if (r["first_floor_ratio"] and r["progressive"]) else None
        fl = r["final_floor_ratio"]["median"] if r["final_floor_ratio"] else None
        ff = _fetch_floor(result, r)
        ffr = f"{r['final_image_ms']['median'] / ff:.2f}" if (ff and r["final_image_ms"]) else "-"
        add(f"| {r['type']} | {r['profile']} | {r['first_size'] if r['progressive'] else '-'} | "
            f"{_fmt_bytes(r['first_bytes']['median']) if (r['progressive'] and r['first_bytes']) else '-'} | "
            f"{_fmt_ms(r['first_floor_ms']) if r['progressive'] else '-'} | {f'{fr:.2f}' if fr else '-'} | "
            f"{_fmt_ms(r['final_floor_ms'])} | {f'{fl:.2f}' if fl else '-'} | {ffr} | {_fmt_ms(r['final_decode_ms'])} | "
            f"{_fmt_ms(r.get('decode_total_ms'))} | {_fmt_ms(r.get('click_to_request_ms'))} |")
    add("")
    add("Click to request = from the click on Load to the image's first frame request: form handling, the "
        "first-load imports of the engine modules, and study discovery (QIDO/metadata requests under the same "
        "emulation). It is in the 'from click' columns, not in the first/final render columns.\n")
    if any((r.get("longest_task_ms") or {}).get("n") for r in result["rows"]):
        add("### Main thread: long tasks (> 50 ms) from the click to the lossless image, ms\n")
        add("| Type | Network | Longest task | All long tasks |")
        add("|---|---|---|---|")
        for r in result["rows"]:
            add(f"| {r['type']} | {r['profile']} | {_fmt_ms(r.get('longest_task_ms'))} | "
                f"{_fmt_ms(r.get('long_tasks_ms'))} |")
        add("")
        add("Decoding runs on the page's thread: a task over 50 ms is one the page cannot answer input during "
            "(the lossless decode of the radiograph is most of it).\n")
    if result.get("stack"):
        add("### 20-slice MR stack, from the click, median (min-max), ms\n")
        add("| Preset | Network | Every slice shows something | Every slice its own data | Every slice lossless | "
            "Lossless floor | Bytes moved |")
        add("|---|---|---|---|---|---|---|")
        for s in result["stack"]:
            floor = f"{s['floor_lossless_ms']:.0f}" if s["floor_lossless_ms"] else "-"
            moved = _fmt_bytes(s["bytes_moved"]["median"]) if s["bytes_moved"] else "-"
            if s["bytes_moved"] and s["lossless_bytes"]:
                moved += f" ({s['bytes_moved']['median'] / s['lossless_bytes']:.3f}x)"
            add(f"| {s['preset']} | {s['profile']} | {_fmt_ms(s['all_something_ms'])} | {_fmt_ms(s['all_own_ms'])} | "
                f"{_fmt_ms(s['all_lossless_ms'])} | {floor} | {moved} |")
        add("")
        add("'Shows something' counts nearbyFrames replicas; 'its own data' does not. Lossless floor = latency + "
            "all HTJ2K frames / bandwidth (no decode).\n")
    transfer = result.get("transfer")
    if transfer:
        add("### The same bytes by plain JavaScript `fetch` + `arrayBuffer()` under the same emulation, ms\n")
        add("| Network | Request | Bytes | Time | Nominal floor (latency + bytes / bandwidth) | Time / floor |")
        add("|---|---|---|---|---|---|")
        for profile, reqs in transfer.items():
            for name, t in reqs.items():
                ratio = t["ms"]["median"] / t["floor_ms"] if t["floor_ms"] else None
                add(f"| {profile} | {name} | {_fmt_bytes(t['bytes'])} | {_fmt_ms(t['ms'])} | {t['floor_ms']:.0f} | "
                    f"{f'{ratio:.2f}' if ratio else '-'} |")
        add("")
        add("No Python and no decoding here: this is what Chromium's network emulation itself allows, the floor "
            "any in-page engine can reach.\n")
    cold = result.get("cold_start")
    if cold:
        add("### Cold start (fresh browser context, loopback, no emulation), median (min-max), ms\n")
        add("| Measure | ms |")
        add("|---|---|")
        if (cold.get("runtime_downloaded_ms") or {}).get("n"):
            add(f"| navigation -> last runtime file downloaded (Pyodide, stdlib, wheels) | "
                f"{_fmt_ms(cold['runtime_downloaded_ms'])} |")
        if (cold.get("python_start_ms") or {}).get("n"):
            add(f"| navigation -> first line of the app's Python (interpreter up, wheels installed) | "
                f"{_fmt_ms(cold['python_start_ms'])} |")
        add(f"| Python imports (app.main: numpy, imagecodecs, the viewer) | {_fmt_ms(cold['python_imports_ms'])} |")
        add(f"| navigation -> ready (`?noload=1`; after decoder warm-up and the demo list) | "
            f"{_fmt_ms(cold['ready_noload_ms'])} |")
        add(f"| navigation -> ready (with a load) | {_fmt_ms(cold['ready_ms'])} |")
        if (cold.get("warm_ready_ms") or {}).get("n"):
            add(f"| second visit, navigation -> ready (HTTP cache and compiled wasm warm) | "
                f"{_fmt_ms(cold['warm_ready_ms'])} |")
        add(f"| navigation -> first image (HTJ2K streaming) | {_fmt_ms(cold['first_image_ms'])} |")
        add("")
    dec = result.get("decode")
    if dec:
        add("### Full decode of the radiograph (3072x2614, 16 bit), median (min-max), ms\n")
        add("| Codec | CPython (native imagecodecs) | In browser (Pyodide, wasm imagecodecs) | Ratio |")
        add("|---|---|---|---|")
        for k in dec["native"]:
            b = dec.get("browser", {}).get(k)
            ratio = dec.get("ratio", {}).get(k)
            add(f"| {k} | {_fmt_ms(dec['native'][k])} | {_fmt_ms(b)} | {f'{ratio:.2f}x' if ratio else '-'} |")
        add("")
    targets = check_targets(result)
    if targets:
        add("### Targets\n")
        add("| Target | Measured | Met |")
        add("|---|---|---|")
        for t in targets:
            met = "yes" if t["met"] else ("no" if t["met"] is False else "-")
            add(f"| {t['target']} | {t['value']}{(' (' + t['detail'] + ')') if t['detail'] else ''} | {met} |")
        add("")
    m = result["machine"]
    add(f"Machine: {m.get('cpus')} CPUs (load average {m.get('loadavg_start')} at start, "
        f"{m.get('loadavg_end')} at end), {m.get('platform')}, Python {m.get('python')}"
        + (f", Chromium {m['chromium']}" if m.get("chromium") else "")
        + f". Started {result['started']}, took {result['elapsed_s']} s.\n")
    return "\n".join(lines)


def write_chart(result: dict, path: Path) -> bool:
    """A PNG bar chart (first / final render against the floor) if matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    profiles = list(dict.fromkeys(r["profile"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(profiles), figsize=(6.5 * len(profiles), 4.6), squeeze=False)
    for ax, profile in zip(axes[0], profiles):
        rows = [r for r in result["rows"] if r["profile"] == profile]
        labels = [r["type"].replace(" ", "\n", 1) for r in rows]
        x = list(range(len(rows)))
        first = [r["first_image_ms"]["median"] if r["progressive"] and r["first_image_ms"] else 0 for r in rows]
        final = [r["final_image_ms"]["median"] if r["final_image_ms"] else 0 for r in rows]
        floor = [r["final_floor_ms"]["median"] if r["final_floor_ms"] else 0 for r in rows]
        w = 0.38
        ax.bar([i - w / 2 for i in x], first, w, label="first render", color="#4c9be8")
        ax.bar([i + w / 2 for i in x], final, w, label="final (lossless)", color="#2b5d34")
        ax.scatter([i + w / 2 for i in x], floor, marker="_", s=600, color="#d62728", zorder=3,
                   label="final floor")
        for i, v in enumerate(first):
            if v:
                ax.annotate(f"{v:.0f}", (i - w / 2, v), ha="center", va="bottom", fontsize=8)
        for i, v in enumerate(final):
            ax.annotate(f"{v:.0f}", (i + w / 2, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("ms from the image's first request")
        ax.set_title(f"{PROFILE_LABELS[profile]} ({result['engine']}, median of {result['runs']})", fontsize=10)
        ax.legend(fontsize=8, loc="upper center", ncol=3, bbox_to_anchor=(0.5, -0.13))
        ax.set_ylim(0, max(final + floor + [1]) * 1.12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def rerender(result: dict) -> dict:
    """Recompute the derived rows of a saved result from its raw runs (after a change of the report)."""
    files = result["image"]["files"]
    rows = []
    for row in result["rows"]:
        runs = [dict(r, log=r["renderLog"]) for r in row["raw"]]
        rows.append(_row(row["mode"], row["profile"], runs, files))
    result["rows"] = rows
    stack = []
    for s in result.get("stack", []):
        if s["raw"] and "renderLog" in s["raw"][0]:
            runs = [dict(r, log=r["renderLog"]) for r in s["raw"]]
            s = _stack_row(s["preset"], s["profile"], runs, s["slices"], s["lossless_bytes"])
        stack.append(s)
    result["stack"] = stack
    result["targets"] = check_targets(result)
    return result


def write_outputs(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = "benchmark" if result["engine"] == "browser" else "benchmark-cpython"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    md = out / f"{stem}.md"
    head = ""
    if md.exists():  # keep hand-written text above the generated part
        old = md.read_text()
        if _MARK in old:
            head = old.split(_MARK, 1)[0]
    md.write_text(head + _MARK + "\n\n" + f"`{result['command']}`\n\n" + render_markdown(result))
    if not write_chart(result, out / f"{stem}.png"):
        print("note: matplotlib is not installed; no chart written", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app bench",
                                     description="Measure first/final render and bytes moved per retrieve mode.")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode and profile (default 3)")
    parser.add_argument("--profiles", default=",".join(DEFAULT_PROFILES),
                        help=f"comma list of {', '.join(PROFILES)} (default {','.join(DEFAULT_PROFILES)})")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--engine", choices=("browser", "cpython"), default="browser")
    parser.add_argument("--out", type=Path, help="write benchmark.md/.json/.png here (benchmark-cpython.* for cpython)")
    parser.add_argument("--root", type=Path, help="static DICOMweb tree to serve (default static/dicomweb)")
    parser.add_argument("--no-stack", action="store_true", help="skip the 20-slice stack rows")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold start rows (browser)")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode comparison")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only re-render a saved benchmark.json (to --out, or print)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [p for p in profiles if p not in PROFILES] + [m for m in modes if m not in MODES]
    if bad or args.runs < 1:
        parser.error(f"unknown profile/mode {bad}" if bad else "--runs must be >= 1")
    if args.render:
        result = rerender(json.loads(args.render.read_text()))
        print(render_markdown(result))
        if args.out:
            write_outputs(result, args.out)
        return 0
    t0 = time.perf_counter()

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - t0:6.1f} s] {text}", file=sys.stderr, flush=True)

    result = run_bench(engine=args.engine, runs=args.runs, profiles=profiles, modes=modes,
                       stack=not args.no_stack, cold_start=not args.no_cold_start, decode=not args.no_decode,
                       data_root=args.root, progress=progress)
    result["command"] = "python -m app bench " + " ".join(argv if argv is not None else sys.argv[2:])
    result["targets"] = check_targets(result)
    print(render_markdown(result))
    if args.out:
        write_outputs(result, args.out)
    return 0


_MARK = "<!-- generated by python -m app bench: everything below is rewritten -->"
