"""``python -m app bench --responsiveness``: how the page answers the user while it loads.

Headless Chromium, a fresh context per run, the network emulated after the runtime is ready (as in
``browser.py``). Per series and profile:

* main-thread tasks from the Load click until every image is lossless, from a CDP trace (the
  renderer main thread's ``RunTask`` events): the longest one and the total blocking time (the sum
  of each task's time over 50 ms);
* input to next frame: a wheel notch over the viewport every 50 ms from the click until the load
  ends (10 down, 10 up: through the stack; no redraw on a single image, so its figure is the page's
  own delay). The inputs are fired in the page at fixed times t0 + k * 50 ms (a CDP input waits for
  the page's ack, and on a loaded 2-core machine its round trip alone is longer than 50 ms): a time
  that passes while the main thread is busy fires as soon as it is free, as a queued user input
  would, and counts from its slot. Measured to the animation frame after the page's handler ran (a
  rAF queued behind the page's own runs after its draw, in the same frame);
* window/level on the final radiograph: a real left-button press (CDP), then a pointermove every
  8 ms for 2 s the same way (a 125 Hz mouse; the page's tool is W/L on a desktop), except that the
  moves due at once coalesce into one event timed from the oldest, as Chromium coalesces them;
  draws per second from the page's ``drawLog``, move-to-frame p50/p95;
* cold start: navigation to first pixels (the tree's PREVIEW thumbnail, badged) and to the first
  engine-drawn image and to the diagnostic (lossless) image (the runtime loads under the emulation).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

from .browser import _CLICK_JS, _DONE_JS, _READY_JS, BrowserDriver, _emulate
from .profiles import PROFILE_LABELS
from .report import MARK
from .results import Stats, _from_fields
from .site import Demo

__all__ = ["RESP_PROFILES", "SERIES", "ResponsivenessRow", "WindowLevelRow", "ColdRow", "ResponsivenessResult",
           "run_responsiveness", "render_responsiveness", "write_responsiveness"]

RESP_PROFILES = ("none", "seed4g")
SERIES = ("radiograph", "mr")
INPUT_EVERY_MS = 50.0
LONG_TASK_MS = 50.0  # the RAIL / TBT threshold
DRAG_S, DRAG_EVERY_MS = 2.0, 8.0
_TRACE_CATEGORIES = ["toplevel", "disabled-by-default-devtools.timeline", "devtools.timeline"]
_TASK_NAMES = ("RunTask", "ThreadControllerImpl::RunTask")

# Time-stamped draws (drawLog pushes) and an input probe: for each input, the frame after the page's
# own handler ran (a rAF queued behind the page's request_draw runs in the same frame, after it).
_PROBE_JS = """
(() => {
  const bench = window.__resp = {draws: [], inputs: []};
  let log = [];
  const wrap = (a) => {
    if (a && typeof a.push === 'function' && !a.__respWrapped) {
      const push = a.push.bind(a);
      Object.defineProperty(a, 'push', {enumerable: false, value: (...items) => {
        for (const it of items) bench.draws.push([performance.now(), it[0], it[2]]);
        return push(...items);
      }});
      Object.defineProperty(a, '__respWrapped', {enumerable: false, value: true});
    }
    return a;
  };
  Object.defineProperty(window, 'drawLog', {configurable: true, get() { return log; }, set(v) { log = wrap(v); }});
  // Inputs at fixed times t0 + k * every: a slot that passes while the main thread is busy fires as
  // soon as it is free (as a queued user input would), and its time counts from the slot.
  bench.drive = (kind, every, x, y) => {
    const vp = document.getElementById('viewport'), t0 = performance.now();
    let k = 0;
    bench.stop = false;
    const fire = (slot) => {
      const d = 200 * Math.abs(((k % 50) / 50) - 0.5) - 50;  // W/L: a back-and-forth diagonal sweep
      const ev = kind === 'pointermove'
        ? new PointerEvent('pointermove', {pointerId: 1, pointerType: 'mouse', isPrimary: true, buttons: 1,
                                           clientX: x + d, clientY: y - d, bubbles: true})
        : new WheelEvent('wheel', {deltaY: (k % 20) < 10 ? 120 : -120,
                                   clientX: x, clientY: y, bubbles: true, cancelable: true});
      const draws = bench.draws.length;
      vp.dispatchEvent(ev);
      requestAnimationFrame(() => bench.inputs.push([kind, slot, performance.now(), bench.draws.length > draws]));
    };
    // one input per task, as the browser delivers queued inputs (a batch would be a long task of ours)
    const now = new MessageChannel();
    const tick = () => {
      if (bench.stop) return;
      if (t0 + k * every <= performance.now()) {
        const slot = t0 + k * every;
        // moves due together coalesce into one event (as Chromium's rAF-aligned input does), timed
        // from the oldest; wheel notches each go as their own event
        if (kind === 'pointermove') while (t0 + (k + 1) * every <= performance.now()) k++;
        fire(slot);
        k++;
      }
      const wait = t0 + k * every - performance.now();
      if (wait <= 0) now.port2.postMessage(0); else setTimeout(tick, wait);
    };
    now.port1.onmessage = tick;
    tick();
    return t0;
  };
})();
"""
_DIAGNOSTIC_JS = """() => { const log = Array.from(window.renderLog || []);
  return {first: (log.find(e => e.drawn) || {}).bench_now, final: (log.find(e => e.drawn && e.final) || {}).bench_now,
          preview: window.appTimings.previewMs, state: document.documentElement.dataset.app}; }"""


def _pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a value that was measured)."""
    vals = sorted(values)
    return vals[max(0, math.ceil(q * len(vals)) - 1)] if vals else None


@dataclass
class ResponsivenessRow:
    """One series on one profile: main-thread tasks and input-to-frame during the load."""

    series: str
    profile: str
    runs: int
    load_ms: Stats | None  # click -> every image lossless
    longest_task_ms: Stats | None
    blocking_ms: Stats | None  # total blocking time
    input_p50_ms: Stats | None
    input_p95_ms: Stats | None
    inputs: Stats | None  # inputs answered per run
    inputs_drawn: Stats | None  # of which the frame held a new draw
    raw: list[dict] = field(default_factory=list)


@dataclass
class WindowLevelRow:
    profile: str
    runs: int
    updates_per_s: Stats | None
    move_p50_ms: Stats | None
    move_p95_ms: Stats | None
    moves: Stats | None


@dataclass
class ColdRow:
    series: str
    profile: str
    runs: int
    preview_ms: Stats | None  # navigation -> the badged PREVIEW thumbnail on screen
    first_image_ms: Stats | None  # navigation -> the engine's first drawn image (may be a partial)
    diagnostic_ms: Stats | None  # navigation -> the lossless image drawn


@dataclass
class ResponsivenessResult:
    runs: int
    profiles: list[str]
    started: str
    chromium: str
    loadavg_start: list[float] | None
    rows: list[ResponsivenessRow] = field(default_factory=list)
    window_level: list[WindowLevelRow] = field(default_factory=list)
    cold: list[ColdRow] = field(default_factory=list)
    loadavg_end: list[float] | None = None
    elapsed_s: float | None = None
    command: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ResponsivenessResult:
        got = _from_fields(cls, data)
        got.rows = [_from_fields(ResponsivenessRow, r) for r in data.get("rows", [])]
        got.window_level = [_from_fields(WindowLevelRow, r) for r in data.get("window_level", [])]
        got.cold = [_from_fields(ColdRow, r) for r in data.get("cold", [])]
        return got


def trace_tasks(trace: bytes) -> list[float]:
    """Durations (ms) of the tasks on the busiest renderer main thread of a Chromium trace."""
    events = json.loads(trace)
    events = events["traceEvents"] if isinstance(events, dict) else events
    mains = {(e["pid"], e["tid"]) for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"}
    per: dict[tuple, list[tuple[float, float]]] = {}
    for e in sorted(events, key=lambda e: e.get("ts", 0)):
        key = (e.get("pid"), e.get("tid"))
        if e.get("ph") == "X" and e.get("name") in _TASK_NAMES and key in mains:
            spans = per.setdefault(key, [])
            if not spans or e["ts"] >= spans[-1][1]:  # nested (RunTask > ThreadControllerImpl::RunTask): once
                spans.append((e["ts"], e["ts"] + e.get("dur", 0)))
    return max(([(end - start) / 1000.0 for start, end in spans] for spans in per.values()), key=sum, default=[])


class _Driver:
    """The measurements, on a started ``BrowserDriver``."""

    def __init__(self, browser: BrowserDriver, demo: Demo) -> None:
        self.browser, self.demo = browser, demo

    def _page(self) -> tuple[Any, Any, Any, list[str]]:
        context, page, cdp, errors = self.browser._page()
        page.add_init_script(_PROBE_JS)
        return context, page, cdp, errors

    def _centre(self, page: Any) -> tuple[float, float]:
        box = page.locator("#viewport").bounding_box()
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def load(self, entry: dict, profile: str) -> tuple[dict, Any]:
        """One load with inputs; returns the run's raw figures and the still open (context, page)."""
        context, page, cdp, errors = self._page()
        page.goto(f"{self.demo.base}/index.html?noload=1&url={quote(entry['url'], safe='/')}&config=htj2k")
        page.wait_for_function(_READY_JS, timeout=120_000)
        page.evaluate("() => document.getElementById('viewport').focus()")
        _emulate(cdp, profile)
        self.browser.browser.start_tracing(page=page, categories=_TRACE_CATEGORIES)
        try:
            # the click and the first input in one task: inputs from the click on
            t_click = page.evaluate(f"([e, x, y]) => {{ const t = ({_CLICK_JS})();"
                                    " window.__resp.drive('wheel', e, x, y); return t; }",
                                    [INPUT_EVERY_MS, *self._centre(page)])
            page.wait_for_function(_DONE_JS, timeout=300_000, polling=50)
            page.evaluate("() => { window.__resp.stop = true; }")
        finally:
            tasks = trace_tasks(self.browser.browser.stop_tracing())
        data = page.evaluate("() => ({inputs: window.__resp.inputs, final: Math.max(...Array.from(window.renderLog)"
                             ".filter(e => e.final).map(e => e.bench_now)),"
                             " longtasks: window.__bench.longtasks,"
                             " state: document.documentElement.dataset.app})")
        if data["state"] == "error" or errors:
            context.close()
            raise RuntimeError(f"page error ({entry['name']}, {profile}): {errors}")
        lat = [t_frame - slot for _k, slot, t_frame, _d in data["inputs"]]
        drawn = sum(1 for *_x, d in data["inputs"] if d)
        return ({"load_ms": data["final"] - t_click, "longest_task_ms": max(tasks, default=None),
                 "blocking_ms": sum(max(0.0, t - LONG_TASK_MS) for t in tasks), "tasks": len(tasks),
                 "input_p50_ms": _pct(lat, 0.5), "input_p95_ms": _pct(lat, 0.95), "inputs": len(lat),
                 "inputs_drawn": drawn,
                 "longtask_observer_ms": [d for start, d in data["longtasks"] if start >= t_click]}, (context, page))

    def drag(self, page: Any) -> dict:
        """A window/level drag over the viewport; draws per second and move-to-frame times."""
        x0, y0 = self._centre(page)
        page.mouse.move(x0, y0)
        page.mouse.down()  # a real press: the page takes pointer capture of pointer 1
        page.evaluate("() => { window.__resp.inputs = []; }")
        t0 = page.evaluate("([e, x, y]) => window.__resp.drive('pointermove', e, x, y)", [DRAG_EVERY_MS, x0, y0])
        time.sleep(DRAG_S)
        t1 = page.evaluate("() => { window.__resp.stop = true; return performance.now(); }")
        page.mouse.up()
        got = page.evaluate("([a, b]) => ({draws: window.__resp.draws.filter(d => d[0] >= a && d[0] <= b).length,"
                            " moves: window.__resp.inputs.map(x => x[2] - x[1])})", [t0, t1])
        lat = got["moves"]
        return {"updates_per_s": got["draws"] / ((t1 - t0) / 1000.0), "move_p50_ms": _pct(lat, 0.5),
                "move_p95_ms": _pct(lat, 0.95), "moves": len(lat)}

    def cold(self, entry: dict, profile: str) -> dict:
        """Navigation with ?url= (auto-load) in a fresh context under the emulation from the start."""
        context, page, cdp, _errors = self._page()
        try:
            _emulate(cdp, profile)
            page.goto(f"{self.demo.base}/index.html?url={quote(entry['url'], safe='/')}&config=htj2k")
            page.wait_for_function(_DONE_JS, timeout=300_000, polling=20)
            got = page.evaluate(_DIAGNOSTIC_JS)
            if got["state"] == "error":
                raise RuntimeError(f"page error in the cold start ({entry['name']}, {profile})")
            return {"preview_ms": got.get("preview"), "first_image_ms": got.get("first"),
                    "diagnostic_ms": got.get("final")}
        finally:
            context.close()


def _stats(raw: list[dict], key: str) -> Stats | None:
    return Stats.of([r.get(key) for r in raw])


def _series(demo: Demo, which: str) -> dict:
    return demo.radiograph if which == "radiograph" else demo.stack


def run_responsiveness(browser: BrowserDriver, demo: Demo, *, runs: int, profiles: Sequence[str] = RESP_PROFILES,
                       series: Sequence[str] = SERIES, loadavg: Callable[[], list[float] | None] = lambda: None,
                       progress: Callable[[str], None] = lambda s: None) -> ResponsivenessResult:
    """Every (series, profile) row, the W/L drag rows (radiograph) and the cold rows."""
    result = ResponsivenessResult(runs=runs, profiles=list(profiles), chromium=browser.version,
                                  started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), loadavg_start=loadavg())
    t0, drv = time.perf_counter(), _Driver(browser, demo)
    for profile in profiles:
        for name in series:
            entry, single = _series(demo, name), name == "radiograph"
            raw, drags, colds = [], [], []
            for i in range(runs):
                progress(f"responsiveness {name} {profile} run {i + 1}/{runs}")
                got, (context, page) = drv.load(entry, profile)
                try:
                    raw.append(got)
                    if single:
                        drags.append(drv.drag(page))
                finally:
                    context.close()
                colds.append(drv.cold(entry, profile))
            result.rows.append(ResponsivenessRow(
                entry["name"], profile, runs, *(_stats(raw, k) for k in (
                    "load_ms", "longest_task_ms", "blocking_ms", "input_p50_ms", "input_p95_ms", "inputs",
                    "inputs_drawn")), raw=raw))
            if drags:
                result.window_level.append(WindowLevelRow(profile, runs, *(_stats(drags, k) for k in (
                    "updates_per_s", "move_p50_ms", "move_p95_ms", "moves"))))
            result.cold.append(ColdRow(entry["name"], profile, runs, *(_stats(colds, k) for k in (
                "preview_ms", "first_image_ms", "diagnostic_ms"))))
    result.elapsed_s = round(time.perf_counter() - t0, 1)
    result.loadavg_end = loadavg()
    return result


def _ms(s: Stats | None, digits: int = 0) -> str:
    if s is None:
        return "-"
    text = f"{s.median:.{digits}f}"
    return text + (f" ({s.min:.{digits}f}-{s.max:.{digits}f})" if s.n > 1 else "")


def _median(s: Stats | None) -> str:
    return "-" if s is None else f"{s.median:.0f}"


def render_responsiveness(r: ResponsivenessResult) -> str:
    lines = [f"Median of {r.runs} run(s) (range in brackets). Profiles: "
             + ", ".join(f"`{p}` = {PROFILE_LABELS.get(p, p)}" for p in r.profiles) + ".\n",
             "### During the load (Load click -> every image lossless)\n",
             "| Series | Profile | Load ms | Longest main-thread task ms | Total blocking time ms "
             "| Input -> next frame p50 ms | p95 ms | Inputs (with a new draw) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r.rows:
        lines.append(f"| {row.series} | {row.profile} | {_ms(row.load_ms)} | {_ms(row.longest_task_ms)} | "
                     f"{_ms(row.blocking_ms)} | {_ms(row.input_p50_ms, 1)} | {_ms(row.input_p95_ms, 1)} | "
                     f"{_median(row.inputs)} ({_median(row.inputs_drawn)}) |")
    lines += ["", "### Window/level drag on the final radiograph (pointer moves every ~8 ms for 2 s)\n",
              "| Profile | W/L updates per second | Move -> next frame p50 ms | p95 ms | Move events (coalesced) |",
              "|---|---|---|---|---|"]
    for w in r.window_level:
        lines.append(f"| {w.profile} | {_ms(w.updates_per_s, 1)} | {_ms(w.move_p50_ms, 1)} | "
                     f"{_ms(w.move_p95_ms, 1)} | {_ms(w.moves)} |")
    lines += ["", "### Cold start (fresh context, `?url=` auto-load, emulation from the navigation)\n",
              "| Series | Profile | Navigation -> first pixels (PREVIEW thumbnail, badged) ms "
              "| -> first engine image ms | -> diagnostic (lossless) image ms |", "|---|---|---|---|---|"]
    for c in r.cold:
        lines.append(f"| {c.series} | {c.profile} | {_ms(c.preview_ms)} | {_ms(c.first_image_ms)} | "
                     f"{_ms(c.diagnostic_ms)} |")
    lines += ["", f"Chromium {r.chromium}; load average {r.loadavg_start} at start, {r.loadavg_end} at end. "
              f"Started {r.started}, took {r.elapsed_s} s.\n"]
    return "\n".join(lines)


def write_responsiveness(result: ResponsivenessResult, out: Path) -> None:
    """benchmark-responsiveness.md/.json in ``out``; hand-written text above MARK in the .md is kept."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark-responsiveness.json").write_text(json.dumps(result.to_json(), indent=1, default=float) + "\n")
    md = out / "benchmark-responsiveness.md"
    old = md.read_text() if md.exists() else ""
    head = old.split(MARK, 1)[0] if MARK in old else (
        "# Responsiveness benchmark\n\n" + (__doc__ or "").split("\n\n", 1)[1] + "\n")
    md.write_text(head + MARK + "\n\n" + (f"`{result.command}`\n\n" if result.command else "")
                  + render_responsiveness(result))
