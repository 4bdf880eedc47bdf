"""``python -m app bench --peer cornerstone``: our page and Cornerstone3D 5.14's, side by side.

One Chromium (WebGL on SwiftShader, which their renderer needs; ours draws the same either way),
one serve.py behind the metering proxy, one tree. Per network profile, per row, per run: our page
and the peer page (``tools/peer/``, built by ``tools/setup_peer.py``) load the same series with the
same configuration JSON, each in a fresh context with the cache disabled and the same DevTools
emulation, alternating which goes first. Both sides are timed from the same events: the image's
first frame request (resource timing) to the draw the page reports (``performance.now()`` when
the page logs it). Stacks (``--stacks``: the demo's 20-slice MR, and from ``tools/large_stacks.py``
a 200-slice MR-like stack and the 174-slice 512x512 CT, served from their own tree by a second
serve.py and proxy) are timed from the click (ours) or the load call (theirs) to the moment every
slice shows something and every slice is lossless, beside the plain-fetch floor of their lossless
frames. Bytes are the proxy's count of frame bodies. Final pixels of every image are checked
against the source DICOM on both sides after every run. ``--cpu-load N`` runs the same rows with
N busy processes beside the browser.
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

from .browser import SETTLE_MS, BrowserDriver
from .chromium import CHROMIUM_ARGS
from .network import PROJECT, ServeProcess, ThrottleProxy
from .profiles import DEFAULT_PROFILES, MODES, PROFILES, timeout_ms
from .report import _fmt_bytes, _fmt_ms
from .results import Stats
from .site import Demo, find_demo, frame_bytes, lossless_bytes

__all__ = ["PEERS", "STACKS", "RowSpec", "PeerRow", "select_stacks", "run_peer", "render_peer", "from_json",
           "main"]

PEERS = ("cornerstone",)
#: each stack loads under each: Cornerstone's interleaved stages, then ours (12 KB first ranges, only
#: the image on screen streamed in full first), the same JSON given to both pages
STACK_PRESETS = ("interleavedStack", "interleavedPreview")
BYTE_RANGE = "htj2kByteRange"
OURS_BYTE_RANGE = "htj2kRangeThenStream"  # our own byte-range preset, given to both pages as well
FIRST_RANGE_SIZES = (65536, 131072)
RADIOGRAPH = "radiograph"
# stack rows: key -> label; mr20 is the demo's series, the others come from tools/large_stacks.py
STACKS = {"mr20": "20-slice MR 256x256", "mr200": "200-slice MR-like 256x256", "ct174": "174-slice CT 512x512"}
STACK_ALIASES = {"20": "mr20", "200": "mr200", "174": "ct174"}
FLOOR_IN_FLIGHT = 6  # Chromium's connections per host over HTTP/1.1


def _cornerstone():
    """``tools/peer/cornerstone.py``, the peer page's driver (importable from the project root)."""
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    from tools.peer import cornerstone

    return cornerstone


def select_stacks(text: str | None) -> list[str]:
    """``--stacks`` (comma list of keys or slice counts; None: all) as stack keys, in table order."""
    if text is None:
        return list(STACKS)
    asked = [STACK_ALIASES.get(name.strip(), name.strip()) for name in text.split(",") if name.strip()]
    unknown = [name for name in asked if name not in STACKS]
    if unknown:
        raise ValueError(f"unknown stack {', '.join(unknown)}; choose from {', '.join(STACKS)} "
                         f"(or {', '.join(STACK_ALIASES)})")
    return [key for key in STACKS if key in asked]


@dataclass(frozen=True)
class RowSpec:
    """One row: a series and one configuration JSON, given to both pages as written."""

    key: str
    label: str
    config: dict
    series: str = RADIOGRAPH  # or a key of STACKS

    @property
    def stack(self) -> bool:
        return self.series != RADIOGRAPH


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


def stack_specs(stacks: Sequence[str]) -> list[RowSpec]:
    """A row per stack and stack preset, each configuration JSON given to both pages as written."""
    return [RowSpec(key if name == STACK_PRESETS[0] else f"{key}:{name}", f"{STACKS[key]} {name}", PRESETS[name], key)
            for key in stacks for name in STACK_PRESETS]


@dataclass(frozen=True)
class Target:
    """A series a row loads: where it is served, its tree folder and its source DICOM folder."""

    entry: dict  # demo.json-shaped: url, instances, name
    proxy: ThrottleProxy
    series_dir: Path
    sources: Path
    expect_bytes: int  # about what one load moves (its timeout)

    @property
    def count(self) -> int:
        return int(self.entry.get("instances", 1))


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
    retries: int = 0  # requests asked again (ours: the page's retryLog; a stalled transfer shows here)

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


_OUR_SHAS_JS = "(n) => Promise.all(Array.from({length: n}, (_, i) => window.pyApp.pixelsSha256(i)))"


def _check_stack(final: float | None, log: list[dict], target: Target, context: str) -> None:
    """A stack load that ended before every slice was lossless is a failed run, with its reason."""
    if final is None:
        lossless = len({e["index"] for e in log if e.get("final")})
        raise RuntimeError(f"load ended with {lossless} of {target.count} slices lossless "
                           f"({len(log)} log entries; {context})")


class SideBySide:
    """Runs a row on both pages through one browser and the metering proxy of the row's tree."""

    def __init__(self, driver: BrowserDriver, targets: dict[str, Target]) -> None:
        self.driver, self.targets = driver, targets
        self._sources: dict[tuple, dict[str, str]] = {}

    def source_shas(self, target: Target, typed_array: str | None, pre_scaled: bool = False) -> dict[str, str]:
        """SOP instance UID -> sha256 of its source pixels (our stored dtype, or the peer's typed
        array); computed once per series and type (a 174-slice CT reads ~90 MB of DICOM)."""
        key = (target.entry["url"], typed_array, pre_scaled)
        if key not in self._sources:
            cs = _cornerstone()
            self._sources[key] = {sop: cs.source_sha256(sop, typed_array, pre_scaled, target.sources)
                                  for sop in cs.series_sops(target.series_dir)}
        return self._sources[key]

    def ours(self, spec: RowSpec, profile: str) -> SideRun:
        target = self.targets[spec.series]
        seen: dict[str, Any] = {}

        def inspect(page) -> None:
            if not spec.stack:
                seen["requests"] = _cornerstone().frame_requests(page)
            seen["shas"] = page.evaluate(_OUR_SHAS_JS, target.count)  # one round trip for every slice
            seen["states"] = page.evaluate("window.__bench.states")

        config = _cornerstone().to_ours(spec.config)
        run = self.driver.load(target.proxy, target.proxy.url, target.entry, json.dumps(config), profile,
                               target.expect_bytes, inspect=inspect)
        exact = sorted(map(str, seen["shas"])) == sorted(self.source_shas(target, None).values())
        if spec.stack:
            first, final = _stack_times(run.log, run.t_click, target.count)
            _check_stack(final, run.log, target, f"our page's states {seen['states']}")
            size = None
        else:
            first, final, size = _single_times(run.log, min(seen["requests"].values(), default=None))
        return SideRun(first, final, size, run.bytes_frames, run.frame_requests, run.longest_task_ms or 0.0,
                       exact, run.log, retries=run.retries)

    def _exact(self, target: Target, got: list[dict | None]) -> bool:
        """Every image the peer holds is lossless and equals its source, and there is one per slice."""
        if len(got) != target.count or not all(got):
            return False
        want = self.source_shas(target, got[0]["type"], got[0]["preScaled"])
        return (len({g["sop"] for g in got}) == len(want)
                and all(g["status"] == "FULL_RESOLUTION" and want.get(g["sop"]) == g["sha256"] for g in got))

    def theirs(self, spec: RowSpec, profile: str) -> SideRun:
        cs = _cornerstone()
        target = self.targets[spec.series]
        proxy = target.proxy
        page = cs.CornerstonePage(self.driver.browser, proxy.url)
        try:
            page.open()
            page.page.wait_for_timeout(SETTLE_MS)  # as ours: a user's time between ready and the load
            page.emulate(PROFILES[profile])
            mark = len(proxy.request_log)
            run = page.load(proxy.url + target.entry["url"], cs.to_cornerstone(spec.config), stack=spec.stack,
                            timeout_ms=timeout_ms(profile, target.expect_bytes))
            time.sleep(0.05)  # let the proxy see the last bytes
            frames, _total, count = frame_bytes(proxy.request_log, mark)
            exact = self._exact(target, page.all_pixels(len(run.sops)))
        finally:
            page.close()
        if spec.stack:
            first, final = _stack_times(run.log, run.t_load, len(run.sops))
            _check_stack(final, run.log, target, "the peer page went idle")
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
    series: str = RADIOGRAPH

    @classmethod
    def from_json(cls, data: dict) -> PeerRow:
        sides = {name: Side(**{k: _stats(v) for k, v in data[name].items()}) for name in ("ours", "theirs")}
        series = data.get("series", "mr20" if data["stack"] else RADIOGRAPH)  # runs before mr200 had one stack
        return cls(data["key"], data["label"], data["profile"], data["stack"], sides["ours"], sides["theirs"],
                   data.get("raw", []), series)

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
                if into[-1].retries:
                    progress(f"  {name}: {into[-1].retries} request(s) asked again (see the run's log)")
            except Exception as exc:  # noqa: BLE001 - a failed run is a result: counted, shown, not timed
                progress(f"  {name}: run failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                into.append(SideRun.failed(exc))
    raw = [{"ours": {k: v for k, v in asdict(o).items()}, "theirs": {k: v for k, v in asdict(t).items()}}
           for o, t in zip(ours, theirs)]
    return PeerRow(spec.key, spec.label, profile, spec.stack, Side.of(ours), Side.of(theirs), raw, spec.series)


class _Trees:
    """One serve.py and one metering proxy per tree root (the demo's, the large stacks'), on demand."""

    def __init__(self) -> None:
        self._served: dict[Path, tuple[ServeProcess, ThrottleProxy]] = {}

    def proxy(self, root: Path) -> ThrottleProxy:
        root = Path(root).resolve()
        if root not in self._served:
            server = ServeProcess(root)
            try:
                self._served[root] = (server, ThrottleProxy(*server.address))  # meters only: the browser emulates
            except BaseException:
                server.close()
                raise
        return self._served[root][1]

    def close(self) -> None:
        for server, proxy in self._served.values():
            proxy.close()
            server.close()
        self._served.clear()


def _demo_targets(trees: _Trees, data_root: Path, stacks: Sequence[str]) -> tuple[dict[str, Target], Demo]:
    """The radiograph and (if asked and present) the demo's 20-slice stack."""
    proxy = trees.proxy(data_root)
    demo = find_demo(proxy.url, data_root)
    sources = _cornerstone().SOURCES
    single = max(demo.files.values(), default=8_000_000) + demo.files.get("jlsThumbnail", 0)
    targets = {RADIOGRAPH: Target(demo.radiograph, proxy, demo.series_dir(demo.radiograph), sources, single)}
    if "mr20" in stacks and demo.stack:
        targets["mr20"] = Target(demo.stack, proxy, demo.series_dir(demo.stack), sources, demo.stack_lossless)
    return targets, demo


def _large_targets(trees: _Trees, names: Sequence[str]) -> dict[str, Target]:
    """The large stacks, generated and converted by ``tools/large_stacks.py`` when missing (cached)."""
    if not names:
        return {}
    _cornerstone()  # the project root on sys.path
    from tools.large_stacks import ensure_large_stacks

    out = {}
    for name, stack in ensure_large_stacks(list(names)).items():
        series_dir = stack.tree / stack.url.removeprefix("/dicomweb/")
        entry = {"name": stack.description, "url": stack.url, "instances": stack.slices}
        out[name] = Target(entry, trees.proxy(stack.tree), series_dir, stack.source_dir, lossless_bytes(series_dir))
    return out


def _targets(trees: _Trees, data_root: Path, stacks: Sequence[str],
             skipped: list[str]) -> tuple[dict[str, Target], Demo]:
    """Every series the rows load; a stack that cannot be had is skipped with one line in ``skipped``."""
    targets, demo = _demo_targets(trees, data_root, stacks)
    if "mr20" in stacks and "mr20" not in targets:
        skipped.append(f"mr20 row skipped: no stack of 10+ images in {data_root / 'demo.json'}")
    large = [name for name in stacks if name != "mr20"]
    try:
        targets.update(_large_targets(trees, large))
    except Exception as exc:  # noqa: BLE001 - no demo MR to derive from, converter failed...: other rows still run
        skipped.append(f"{', '.join(large)} rows skipped: the large stacks could not be made "
                       f"(python tools/large_stacks.py --only {','.join(large)}): {type(exc).__name__}: "
                       f"{(str(exc).splitlines() or [''])[0][:300]}")
    return targets, demo


_FETCH_ALL_JS = """async ([urls, inFlight]) => {
  const t = performance.now();
  let next = 0, bytes = 0;
  const fetcher = async () => {
    while (next < urls.length) {
      const url = urls[next++];
      const r = await fetch(url, {cache: 'no-store'});
      if (!r.ok) throw new Error(`HTTP ${r.status} for ${url}`);
      const got = (await r.arrayBuffer()).byteLength;  // read before adding: `bytes +=` would race
      bytes += got;
    }
  };
  await Promise.all(Array.from({length: inFlight}, fetcher));
  return [performance.now() - t, bytes]; }"""


def stack_floor(driver: BrowserDriver, target: Target, profile: str, runs: int) -> dict:
    """Every lossless frame of a stack (``frames/1`` of each instance) by plain ``fetch``,
    FLOOR_IN_FLIGHT at a time, under the same emulation: the transfer time no page can beat."""
    cs = _cornerstone()
    base = f"{target.proxy.url}{target.entry['url']}/instances"
    urls = [f"{base}/{sop}/frames/1" for sop in cs.series_sops(target.series_dir)]
    context = driver.browser.new_context()
    try:
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        page.goto(f"{target.proxy.url}/static/runtime.json")  # same origin, without the data's CSP sandbox
        cs.emulate_network(cdp, PROFILES[profile])
        got = [page.evaluate(_FETCH_ALL_JS, [urls, FLOOR_IN_FLIGHT]) for _ in range(runs)]
    finally:
        context.close()
    ms = Stats.of([g[0] for g in got])
    return {"ms": ms and asdict(ms), "bytes": got[0][1], "requests": len(urls), "in_flight": FLOOR_IN_FLIGHT}


def _floors(driver: BrowserDriver, sbs: SideBySide, specs: Sequence[RowSpec], demo: Demo, profile: str,
            runs: int, result: dict, progress: Callable[[str], None]) -> None:
    """The plain-fetch floors of a profile: the radiograph's requests, every stack's lossless frames."""
    if any(not spec.stack for spec in specs):
        progress(f"{profile} plain fetch")
        result["floors"][profile] = {k: asdict(v) for k, v in driver.transfer(demo, _only_sop(demo), profile,
                                                                              runs).items()}
    for spec in specs:
        if spec.stack and spec.series not in result["stack_floors"].get(profile, {}):
            progress(f"{profile} plain fetch {spec.series}")
            floor = stack_floor(driver, sbs.targets[spec.series], profile, runs)
            result["stack_floors"].setdefault(profile, {})[spec.series] = floor


def run_peer(*, runs: int = 3, profiles: Sequence[str] = DEFAULT_PROFILES, modes: Sequence[str] = tuple(MODES),
             stacks: Sequence[str] = tuple(STACKS), cpu_load: int = 0, data_root: Path | None = None,
             progress: Callable[[str], None] = lambda s: None, warn: Callable[[str], None] = lambda s: None) -> dict:
    """Every row on both pages; returns what ``peer.json`` holds."""
    cs = _cornerstone()
    build = cs.check_build()
    data_root = Path(data_root or (PROJECT / "static" / "dicomweb")).resolve()
    trees, busy, driver = _Trees(), [], None
    result: dict[str, Any] = {
        "peer": "cornerstone", "runs": runs, "cpu_load": cpu_load, "settle_ms": SETTLE_MS, "stacks": list(stacks),
        "skipped": [],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": _loadavg(), "chromium_flags": list(cs.WEBGL_ARGS)},
        "peer_build": json.loads((build / "build.json").read_text())["versions"], "rows": [], "floors": {},
        "stack_floors": {}}
    t0 = time.perf_counter()
    try:
        targets, demo = _targets(trees, data_root, stacks, result["skipped"])
        for line in result["skipped"]:
            warn(line)
        busy = _cpu_load(cpu_load)  # after set-up: generating a stack is not part of any row
        driver = BrowserDriver(cs.chromium_args(CHROMIUM_ARGS))
        result["machine"]["chromium"] = driver.version
        sbs = SideBySide(driver, targets)
        specs = row_specs(modes) + stack_specs([name for name in stacks if name in targets])
        for profile in profiles:
            for spec in specs:
                result["rows"].append(_measure_row(sbs, spec, profile, runs, progress))
            _floors(driver, sbs, specs, demo, profile, runs, result, progress)
    finally:
        if driver:
            driver.close()
        _stop(busy)
        trees.close()
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    result["machine"]["loadavg_end"] = _loadavg()
    return result


def _only_sop(demo: Demo) -> str:
    return _cornerstone().series_sops(demo.series_dir(demo.radiograph))[0]


# ---------------------------------------------------------------------------------- output
def _pair(a: Stats | None, b: Stats | None, ratio: float | None) -> str:
    return f"{_fmt_ms(a)} / {_fmt_ms(b)}" + (f" ({ratio:.2f})" if ratio else "")


def _moved(row: PeerRow) -> str:
    o, t = row.ours.bytes_frames, row.theirs.bytes_frames
    return f"{_fmt_bytes(o and o.median)} / {_fmt_bytes(t and t.median)}"


def _single_table(rows: Sequence[PeerRow], add: Callable[[str], None]) -> None:
    add("| Row | Network | First draw | Final draw | First image | Frame bytes | Longest main-thread task | "
        "Final pixels exact |")
    add("|---|---|---|---|---|---|---|---|")
    for row in rows:
        o, t = row.ours, row.theirs
        first = _pair(o.first_ms, t.first_ms, row.ratio("first_ms"))
        size = f"{o.first_size or '-'} / {t.first_size or '-'}"
        add(f"| {row.label} | {row.profile} | {first} | {_pair(o.final_ms, t.final_ms, row.ratio('final_ms'))} | "
            f"{size} | {_moved(row)} | {_pair(o.longest_task_ms, t.longest_task_ms, None)} | "
            f"{o.exact} / {t.exact} |")
    add("")
    add("Single image (the 3072x2614 radiograph): from the image's first frame request (resource timing) to the "
        "draw the page reports. Frame bytes: what the metering proxy saw the server send. Exact: runs whose final "
        "pixels equal the source DICOM's (pydicom).\n")


def _floor_cell(floor: dict | None) -> str:
    if not floor:
        return "-"
    return f"{_fmt_ms(_stats(floor['ms']))} ({_fmt_bytes(floor['bytes'])})"


def _stack_table(rows: Sequence[PeerRow], floors: dict, add: Callable[[str], None]) -> None:
    add("| Stack | Network | Every slice visible | Every slice lossless | Plain-fetch floor (lossless bytes) | "
        "Frame bytes | Longest main-thread task | Final pixels exact |")
    add("|---|---|---|---|---|---|---|---|")
    for row in rows:
        o, t = row.ours, row.theirs
        floor = floors.get(row.profile, {}).get(row.series)
        add(f"| {row.label} | {row.profile} | {_pair(o.first_ms, t.first_ms, row.ratio('first_ms'))} | "
            f"{_pair(o.final_ms, t.final_ms, row.ratio('final_ms'))} | {_floor_cell(floor)} | {_moved(row)} | "
            f"{_pair(o.longest_task_ms, t.longest_task_ms, None)} | {o.exact} / {t.exact} |")
    add("")
    add(f"Stacks: from the click (ours) or the load call (theirs) to every slice showing something and to every "
        f"slice lossless; both pages load the same series with the same configuration JSON (the preset the row "
        f"names: {', '.join(f'`{name}`' for name in STACK_PRESETS)}). "
        f"Floor: every slice's lossless frame (`frames/1`) by plain `fetch`, {FLOOR_IN_FLIGHT} in flight, "
        f"under the same emulation. Exact: runs in which every slice's final pixels equal its source DICOM's.\n")


def render_peer(result: dict) -> str:
    """The side-by-side tables (markdown): single images, stacks, plain-fetch floors, the machine."""
    lines: list[str] = []
    add = lines.append
    m = result["machine"]
    rows = [r if isinstance(r, PeerRow) else PeerRow.from_json(r) for r in result["rows"]]
    head = (f"Cornerstone3D {result['peer_build']['@cornerstonejs/core']}, median (min-max) of "
            f"{result['runs']} alternating runs, ms; (x) = ours / theirs\n")
    single = [r for r in rows if not r.stack]
    if single:
        add(f"### Ours / {head}")
        _single_table(single, add)
    stacks = [r for r in rows if r.stack]
    if stacks:
        add(f"### Stacks, ours / {head}")
        _stack_table(stacks, result.get("stack_floors", {}), add)
    for line in result.get("skipped", []):
        add(f"Not measured: {line}\n")
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
        f"({' '.join(m['chromium_flags'])}). Started {result['started']}, took {result.get('elapsed_s')} s. "
        f"Each page was left idle {result.get('settle_ms', 0)} ms between ready and the load.\n")
    return "\n".join(lines)


def _stats(value: Any) -> Stats | None:
    return Stats(**value) if isinstance(value, dict) else value


def to_json(result: dict) -> dict:
    return {**result, "rows": [asdict(r) for r in result["rows"]]}


def from_json(data: dict) -> dict:
    """A saved ``peer.json`` as ``run_peer`` returned it (rows as PeerRow)."""
    return {**data, "rows": [PeerRow.from_json(r) for r in data["rows"]]}


def main(args: argparse.Namespace, profiles: Sequence[str], modes: Sequence[str], argv: Sequence[str]) -> int:
    """The ``--peer`` branch of ``python -m app bench`` (arguments already checked by its parser)."""
    t0 = time.perf_counter()

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - t0:6.1f} s] {text}", file=sys.stderr, flush=True)

    def warn(text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    try:
        stacks = [] if args.no_stack else select_stacks(getattr(args, "stacks", None))
    except ValueError as exc:
        print(f"error: --stacks: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_peer(runs=args.runs, profiles=profiles, modes=modes, stacks=stacks, cpu_load=args.cpu_load,
                          data_root=args.root, progress=progress, warn=warn)
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
