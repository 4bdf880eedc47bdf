"""The browser engine of the bench: headless Chromium through Playwright, the page's own timings.

A fresh context with the HTTP cache disabled opens ``index.html?noload=1&url=<series>&config=<preset>``
with NO emulation, waits until Python is ready, THEN applies ``Network.emulateNetworkConditions``
and clicks Load: the runtime download and start are outside every load timing.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Sequence
from urllib.parse import quote

from .chromium import launch
from .memory import MemoryProbe, wait_sampling
from .network import ThrottleProxy
from .profiles import PROFILES, floor_ms, timeout_ms
from .results import ColdStart, LoadRun, Stats, Transfer
from .site import Demo, frame_bytes

__all__ = ["BrowserDriver"]

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
#: between "ready" and the Load click (both pages in the side-by-side bench): a user pastes a URL or
#: picks a series, and a page may use that time (ours warms its load path in its worker, see
#: app/warm_up.py); a load asked for with the page (``?url=``) is the cold-start row's
SETTLE_MS = 1500
_READY_JS = ("(window.appTimings && window.appTimings.readyMs > 0)"
             " || document.documentElement.dataset.app === 'error'")
_DONE_JS = """() => { const s = document.documentElement.dataset.app;
  if (s === 'error') return true;
  const seen = (window.__bench.states || []).some(x => x[0] === 'loading');
  return seen && s === 'idle'; }"""
_COLLECT_JS = """() => ({
  log: Array.from(window.renderLog).map(e => Object.assign({}, e)),
  retries: (window.retryLog || []).length,
  states: window.__bench.states, click: window.__bench.click, longtasks: window.__bench.longtasks,
  appState: document.documentElement.dataset.app,
  errors: document.getElementById('errors') ? document.getElementById('errors').innerText : '',
  timings: Object.assign({}, window.appTimings)})"""
_REFUSED_JS = """() => Array.from(document.querySelectorAll('#errors, #config-error:not([hidden])'),
  e => e.textContent.trim()).join(' ').trim()"""
_CLICK_JS = ("() => { window.__bench.click = performance.now(); document.getElementById('load').click();"
             " return window.__bench.click; }")
_FIRST_DRAWN_JS = ("() => Array.from(window.renderLog || []).some(e => e.drawn)"
                   " || document.documentElement.dataset.app === 'error'")
_FETCH_JS = """async ([u, range]) => {
  const t = performance.now();
  const r = await fetch(u, {cache: 'no-store', headers: range ? {Range: range} : {}});
  const first = performance.now() - t;
  const b = await r.arrayBuffer();
  return [performance.now() - t, b.byteLength, first, r.status]; }"""


class BrowserDriver:
    """One Chromium for the whole bench; each measurement in its own fresh context."""

    def __init__(self, args: Sequence[str] | None = None, browser: Any = None) -> None:
        """Launches its own Chromium, or drives ``browser`` (a started Playwright Browser, e.g. the
        tests' session one: one sync Playwright per thread); ``close()`` then leaves it open."""
        self._pw = None
        self.probe: MemoryProbe | None = None  # the last load's, while ``inspect`` runs
        if browser is not None:
            self.browser = browser
            return
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise SystemExit(f"error: the browser bench needs playwright ({exc}); or use --engine cpython")
        self._pw = sync_playwright().start()
        try:
            self.browser = launch(self._pw, args)
        except FileNotFoundError as exc:
            self._pw.stop()
            raise SystemExit(f"error: {exc}") from None

    @property
    def version(self) -> str:
        return self.browser.version

    def close(self) -> None:
        if self._pw is not None:
            self.browser.close()
            self._pw.stop()

    def _page(self, *, cache_disabled: bool = True) -> tuple[Any, Any, Any, list[str]]:
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

    def load(self, metered: ThrottleProxy, base: str, entry: dict, preset: str, profile: str, expect_bytes: int,
             inspect: Callable[[Any], None] | None = None, *, params: str = "", memory: bool = False,
             collect: bool = False) -> LoadRun:
        """One load of ``entry`` under ``preset`` (a name or configuration JSON); ``metered`` is the
        proxy the page goes through; ``inspect(page)`` reads more from the page before it closes;
        ``params`` are more page parameters (``&cacheMB=512``); ``memory`` samples ``PageMemory``
        at ready (the baseline) and every ``MEMORY_EVERY_MS`` of the load (``LoadRun.memory``), with
        ``collect`` after a garbage collection (``MemoryProbe``)."""
        context, page, cdp, errors = self._page()
        try:
            self.probe = MemoryProbe(cdp, collect=collect) if memory else None
            page.goto(f"{base}/index.html?noload=1&url={quote(entry['url'], safe='/')}&config={quote(preset)}{params}")
            page.wait_for_function(_READY_JS, timeout=120_000)
            refused = page.evaluate(_REFUSED_JS)  # e.g. the configuration: the page would load with another
            if refused:
                raise RuntimeError(f"page error before the load ({preset}, {profile}): {refused}")
            page.wait_for_timeout(SETTLE_MS)
            if self.probe:
                self.probe.sample(page)
            _emulate(cdp, profile)  # only now: the runtime load is never under emulation
            mark = len(metered.request_log)
            t_click = page.evaluate(_CLICK_JS)
            if self.probe:
                wait_sampling(page, self.probe, _DONE_JS, timeout_ms(profile, expect_bytes))
            else:
                page.wait_for_function(_DONE_JS, timeout=timeout_ms(profile, expect_bytes), polling=20)
            data = page.evaluate(_COLLECT_JS)
            time.sleep(0.05)  # let the proxy see the last bytes
            frames, total, count = frame_bytes(metered.request_log, mark)
            if data["appState"] == "error" or errors:
                raise RuntimeError(f"page error ({preset}, {profile}): {data['errors']} {errors}")
            recorded = self.probe.record() if self.probe else None
            if inspect is not None:
                inspect(page)
            loading = next((t for s, t in data["states"] if s == "loading"), None)
            after = [d for start, d in data.get("longtasks") or [] if start >= t_click]
            return LoadRun(log=data["log"], t_click=t_click, t_loading=loading, bytes_frames=frames,
                           bytes_total=total, frame_requests=count, longest_task_ms=max(after, default=0.0),
                           long_tasks_ms=sum(after), memory=recorded, retries=data.get("retries", 0))
        finally:
            self.probe = None
            context.close()

    def cold_start(self, demo: Demo, runs: int) -> ColdStart:
        """Fresh context, loopback, no emulation: navigation -> ready, -> first image; a second visit."""
        got: dict[str, list] = {k: [] for k in ("ready_noload", "ready", "first_image", "imports",
                                                "downloaded", "python_start", "warm")}
        url = quote(demo.radiograph["url"], safe="/")
        page_url = f"{demo.base}/index.html?noload=1&url={url}&config=htj2k"
        for _ in range(runs):
            context, page, _cdp, _errors = self._page(cache_disabled=False)
            try:
                page.goto(page_url)
                page.wait_for_function(_READY_JS, timeout=120_000)
                t = page.evaluate("() => Object.assign({}, window.appTimings)")
                got["ready_noload"].append(t.get("readyMs"))
                got["imports"].append(t.get("pythonImportsMs"))
                got["python_start"].append(t.get("pythonStartMs"))
                # the runtime loads in the engine's worker: the page's resource timing never sees it,
                # the worker posts when its last runtime file had arrived (app/ui/worker.mjs)
                got["downloaded"].append(t.get("worker_downloadedMs"))
                # a second visit in the same context: HTTP cache warm (304s), compiled wasm cached
                page.goto(page_url)
                page.wait_for_function(_READY_JS, timeout=120_000)
                got["warm"].append(page.evaluate("() => window.appTimings.readyMs"))
            finally:
                context.close()
            context, page, _cdp, _errors = self._page(cache_disabled=False)
            try:
                page.goto(f"{demo.base}/index.html?url={url}&config=htj2k")
                page.wait_for_function(_FIRST_DRAWN_JS, timeout=120_000, polling=10)
                data = page.evaluate(_COLLECT_JS)
                first = next((e for e in data["log"] if e.get("drawn")), None)
                got["ready"].append(data["timings"].get("readyMs"))
                got["first_image"].append(first and first.get("bench_now"))
                page.wait_for_function(_DONE_JS, timeout=120_000)
            finally:
                context.close()
        return ColdStart(
            ready_noload_ms=Stats.of(got["ready_noload"]), ready_ms=Stats.of(got["ready"]),
            first_image_ms=Stats.of(got["first_image"]), python_imports_ms=Stats.of(got["imports"]),
            runtime_downloaded_ms=Stats.of([d for d in got["downloaded"] if d]),
            python_start_ms=Stats.of([p for p in got["python_start"] if p]), warm_ready_ms=Stats.of(got["warm"]),
            raw={"ready_noload": got["ready_noload"], "ready": got["ready"], "first_image": got["first_image"]})

    def transfer(self, demo: Demo, sop: str, profile: str, runs: int) -> dict[str, Transfer]:
        """The same frames fetched by plain JS (fetch + arrayBuffer) under the same emulation: the
        transfer time Chromium's emulation itself allows, without Python, streaming or decoding."""
        context, page, cdp, _errors = self._page()
        out: dict[str, Transfer] = {}
        try:
            # same origin, no Python to start, and no CSP sandbox (data under /dicomweb/ has one)
            page.goto(f"{demo.base}/static/runtime.json")
            _emulate(cdp, profile)
            base = f"{demo.base}{demo.radiograph['url']}/instances/{sop}"
            for name, path, rng in (("HTJ2K full", "frames/1", None), ("JLS full", "jls/1", None),
                                    ("HTJ2K first 64 KB", "frames/1", "bytes=0-65535")):
                got = [page.evaluate(_FETCH_JS, [f"{base}/{path}", rng]) for _ in range(runs)]
                out[name] = Transfer(ms=Stats.of([g[0] for g in got]), bytes=got[0][1],
                                     first_bytes_ms=Stats.of([g[2] for g in got]),
                                     floor_ms=floor_ms(profile, got[0][1], 0.0))
        finally:
            context.close()
        return out

    def decode(self, demo: Demo, fmt: dict, urls: dict[str, tuple[str, str]], runs: int) -> dict[str, list[float]]:
        """The page's own decode_frame on the radiograph, per codec (first call warms imports)."""
        context, page, _cdp, _errors = self._page()
        out: dict[str, list[float]] = {}
        try:
            page.goto(f"{demo.base}/index.html?noload=1")
            page.wait_for_function(_READY_JS, timeout=120_000)
            for name, (url, ts) in urls.items():
                spec = json.dumps({**fmt, "transfer_syntax": ts})
                times = []
                for i in range(runs + 1):
                    got = json.loads(page.evaluate("([u, f]) => window.pyApp.decodeFrame(u, f)", [url, spec]))
                    if i:
                        times.append(got["decode_ms"])
                out[name] = times
        finally:
            context.close()
        return out


def _emulate(cdp: Any, profile: str) -> None:
    net = PROFILES[profile]
    if net is None:
        return
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": net["latency"],
        "downloadThroughput": net["down"], "uploadThroughput": net["up"]})
