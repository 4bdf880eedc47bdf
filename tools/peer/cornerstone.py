"""Drive the Cornerstone3D peer page (``static/peer/peer.html``, built by ``tools/setup_peer.py``).

The benchmark runs it side by side with our page: same Chromium, same server and tree, same
DevTools network emulation. Times are read the same way on both pages: the frame request from the
browser's resource timing (``startTime`` of the image's first frame URL) and the draw from
``performance.now()`` when the page reports it (``window.peerLog`` here, ``window.renderLog`` on
ours). Pixels are checked against the source DICOM, decoded by pydicom.

Cornerstone draws with WebGL; headless Chromium has WebGL only on SwiftShader: ``WEBGL_ARGS``.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent.parent
PAGE_PATH = "/static/peer/peer.html"
SOURCES = PROJECT / ".cache" / "demo"

# WebGL in headless Chromium without a GPU: ANGLE on SwiftShader (software Vulkan). Chromium 156
# here gives it even with --disable-gpu; these flags keep it where the silent fallback is gone
# (Chromium 137+ wants --enable-unsafe-swiftshader for it). Without WebGL Cornerstone would switch
# to its CPU renderer: ``CornerstonePage.open`` refuses that.
WEBGL_ARGS = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader")

# For both pages, before any of their scripts: keep every resource timing entry (a 200-slice
# stack makes more than the default 250) and record main-thread tasks over 50 ms.
MEASURE_JS = """
(() => {
  try { performance.setResourceTimingBufferSize(100000); } catch (e) {}
  const m = window.__measure = {longtasks: []};
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) m.longtasks.push([e.startTime, e.duration]);
    }).observe({type: 'longtask', buffered: true});
  } catch (e) {}
})();
"""

# the start of every frame request in this realm's clock, keyed by SOP instance UID (earliest
# first), and the realm's time origin (a page's and its workers' differ)
FRAME_REQUESTS_JS = r"""() => {
  const out = {origin: performance.timeOrigin, requests: {}};
  for (const e of performance.getEntriesByType('resource')) {
    const m = /\/instances\/([^/]+)\/[^/]+\/\d+(?:\?|$)/.exec(new URL(e.name).pathname + new URL(e.name).search);
    if (m && (out.requests[m[1]] === undefined || e.startTime < out.requests[m[1]])) out.requests[m[1]] = e.startTime;
  }
  return out; }"""

_READY_JS = "['ready', 'error'].includes(document.documentElement.dataset.app)"
_DONE_JS = "['idle', 'error'].includes(document.documentElement.dataset.app)"
_LOAD_JS = """([url, config, stack]) => {
  window.__measure.load = performance.now();
  window.peer.load(url, config, {stack});
  return window.__measure.load; }"""
_PROGRESS_JS = r"""() => ({state: document.documentElement.dataset.app, images: window.peer.imageIds().length,
  shown: new Set(window.peerLog.map(e => e.index)).size,
  lossless: new Set(window.peerLog.filter(e => e.final).map(e => e.index)).size,
  requests: performance.getEntriesByType('resource').filter(e => /\/frames\/\d/.test(e.name)).length,
  errors: document.getElementById('errors').textContent})"""
_COLLECT_JS = """() => ({
  log: window.peerLog.map(e => Object.assign({}, e)), state: document.documentElement.dataset.app,
  errors: document.getElementById('errors').textContent, longtasks: window.__measure.longtasks,
  sops: window.peer.imageIds().map(id => id.split('/instances/')[1].split('/')[0])})"""


def frame_requests(page) -> dict[str, float]:
    """SOP instance UID -> start of its first frame request on the page's clock, from the resource
    timing of the page and of its workers (a page may fetch frames in a worker)."""
    own = page.evaluate(FRAME_REQUESTS_JS)
    out: dict[str, float] = dict(own["requests"])
    for worker in page.workers:
        try:
            got = worker.evaluate(FRAME_REQUESTS_JS)
        except Exception:  # noqa: BLE001 - a worker that ended has nothing to add
            continue
        for sop, start in got["requests"].items():
            start += got["origin"] - own["origin"]
            out[sop] = min(out.get(sop, start), start)
    return out


def emulate_network(cdp, conditions: Mapping[str, float] | None) -> None:
    """DevTools network emulation on a CDP session: {'down', 'up' bytes/s, 'latency' ms}, or None."""
    if conditions:
        cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": conditions["latency"],
            "downloadThroughput": conditions["down"], "uploadThroughput": conditions["up"]})


class PeerError(RuntimeError):
    """The peer page is missing, has no WebGL, or failed a load: never measure it then."""


def chromium_args(base: Sequence[str]) -> list[str]:
    """Launch arguments that give both pages WebGL (one browser runs ours and theirs)."""
    return list(base) + [a for a in WEBGL_ARGS if a not in base]


def check_build(build: bool = True) -> Path:
    """The built peer page's folder; builds it (npm, esbuild) when ``build`` and it is not current."""
    from tools.setup_peer import OUT, PeerBuildError, ensure_peer, is_current

    if is_current():
        return OUT
    if not build:
        raise PeerError("the Cornerstone3D peer page is not built: run python tools/setup_peer.py")
    try:
        return ensure_peer()
    except PeerBuildError as exc:
        raise PeerError(str(exc)) from exc


def _ours_reads_initial_chunk_size() -> bool:
    """Whether our configuration knows 5.14's ``initialChunkSize`` (then both read JSON alike)."""
    from app.config import ConfigError, RetrieveConfig

    try:
        RetrieveConfig.from_json({"retrieveOptions": {"default": {"rangeIndex": 0, "initialChunkSize": 65536}}})
    except ConfigError:
        return False
    return True


def to_cornerstone(config: Mapping[str, Any]) -> dict:
    """Our retrieve configuration as Cornerstone 5.14 reads it.

    The same JSON once our configuration reads ``initialChunkSize``. Before that, our first byte
    range is ``chunkSize`` long while theirs is ``initialChunkSize`` long (default 128 KiB), so a
    first range (``rangeIndex`` 0) gets ``initialChunkSize`` = our ``chunkSize`` unless given.
    """
    out = copy.deepcopy(dict(config))
    if _ours_reads_initial_chunk_size():
        return out
    for options in (out.get("retrieveOptions") or {}).values():
        if isinstance(options, dict) and options.get("rangeIndex") == 0 and "chunkSize" in options:
            options.setdefault("initialChunkSize", options["chunkSize"])
    return out


def to_ours(config: Mapping[str, Any]) -> dict:
    """A configuration in 5.14's terms as our page reads it: the same JSON once our configuration
    reads ``initialChunkSize``; before that, a first range's ``initialChunkSize`` becomes our
    ``chunkSize`` (the size of our first range)."""
    out = copy.deepcopy(dict(config))
    if _ours_reads_initial_chunk_size():
        return out
    for options in (out.get("retrieveOptions") or {}).values():
        if isinstance(options, dict) and "initialChunkSize" in options:
            first = options.pop("initialChunkSize")
            if options.get("rangeIndex") == 0:
                options["chunkSize"] = first
    return out


@dataclass
class PeerLoad:
    """One load on the peer page, in the shape the bench summarises for ours."""

    log: list[dict]  # renderLog-shaped: index, status, rows, columns, t_ms, final, drawn, bench_now, image_t_ms
    t_load: float  # page clock when load() was called (the click on ours)
    requests: dict[str, float]  # SOP instance UID -> start of its first frame request (page clock)
    sops: list[str]  # SOP instance UID per stack index
    longtasks: list[tuple[float, float]] = field(default_factory=list)

    @property
    def longest_task_ms(self) -> float:
        return max((d for start, d in self.longtasks if start >= self.t_load), default=0.0)

    @property
    def long_tasks_ms(self) -> float:
        return sum(d for start, d in self.longtasks if start >= self.t_load)


class CornerstonePage:
    """The peer page open in one browser context (fresh per load: no HTTP or decoder cache)."""

    def __init__(self, browser, base_url: str, *, viewport: Mapping[str, int] | None = None) -> None:
        self.browser = browser
        self.base_url = base_url.rstrip("/")
        self.viewport = dict(viewport or {"width": 1280, "height": 900})
        self.context = self.page = self.cdp = None
        self.errors: list[str] = []

    def open(self) -> None:
        """A fresh context with the cache disabled, the page booted, WebGL checked."""
        self.close()
        self.errors = []
        self.context = self.browser.new_context(viewport=self.viewport)
        self.page = self.context.new_page()
        self.page.add_init_script(MEASURE_JS)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.cdp = self.context.new_cdp_session(self.page)
        self.cdp.send("Network.enable")
        self.cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        self.page.goto(self.base_url + PAGE_PATH)
        self.page.wait_for_function(_READY_JS, timeout=60_000)
        state = self.page.evaluate("document.documentElement.dataset.app")
        if state != "ready":
            raise PeerError(f"peer page failed to start: {self.page.inner_text('#errors')} {self.errors}")
        if self.page.evaluate("window.peer.cpuRendering"):
            raise PeerError("peer page has no WebGL (Cornerstone fell back to CPU rendering); launch Chromium "
                            f"with {' '.join(WEBGL_ARGS)} and without --disable-gpu")

    def emulate(self, conditions: Mapping[str, float] | None) -> None:
        """DevTools network emulation: {'down', 'up' bytes/s, 'latency' ms}, or None for none."""
        emulate_network(self.cdp, conditions)

    def load(self, series_url: str, config: Mapping[str, Any], *, stack: bool = False,
             timeout_ms: float = 120_000) -> PeerLoad:
        """Load a series (absolute URL) with a configuration in Cornerstone's terms; wait for the end."""
        t_load = self.page.evaluate(_LOAD_JS, [series_url, dict(config), stack])
        try:
            self.page.wait_for_function(_DONE_JS, timeout=timeout_ms, polling=20)
        except Exception as exc:  # Playwright's TimeoutError: say where the load stood
            got = self.page.evaluate(_PROGRESS_JS)
            raise PeerError(f"peer load did not finish in {timeout_ms / 1000:.0f} s ({series_url}): state "
                            f"{got['state']}, {got['shown']} of {got['images']} images shown, {got['lossless']} "
                            f"lossless, {got['requests']} frame requests; errors: {got['errors'][:300]!r}") from exc
        data = self.page.evaluate(_COLLECT_JS)
        if data["state"] == "error" or self.errors:
            raise PeerError(f"peer load failed ({series_url}): {data['errors']} {self.errors}")
        requests = frame_requests(self.page)
        for entry in data["log"]:
            sop = data["sops"][entry["index"]]
            start = requests.get(sop)
            entry["image_t_ms"] = None if start is None else round(entry["bench_now"] - start, 1)
        return PeerLoad(data["log"], t_load, requests, data["sops"], [tuple(x) for x in data["longtasks"]])

    def pixels(self, index: int | None = None, *, with_bytes: bool = False) -> dict | None:
        """What the loader holds for a stack index (the drawn image by default): type, size, sha256."""
        return self.page.evaluate("([i, b]) => window.peer.pixels(i, b)", [index, with_bytes])

    def all_pixels(self, count: int) -> list[dict | None]:
        """``pixels(i)`` of stack indices 0..count-1 in one call (a 200-slice stack: one round trip)."""
        return self.page.evaluate(
            "(n) => Promise.all(Array.from({length: n}, (_, i) => window.peer.pixels(i)))", count)

    def check_pixels(self, index: int | None = None) -> dict:
        """The held pixels against the source DICOM's; raises PeerError when they differ."""
        got = self.pixels(index)
        if got is None:
            raise PeerError(f"peer holds no image at index {index}")
        want = source_sha256(got["sop"], got["type"], got["preScaled"])
        if got["status"] != "FULL_RESOLUTION" or got["sha256"] != want:
            raise PeerError(f"peer pixels of {got['sop']} differ from the source ({got['status']}, "
                            f"{got['columns']}x{got['rows']} {got['type']})")
        return got

    def close(self) -> None:
        if self.context is not None:
            self.context.close()
        self.context = self.page = self.cdp = None


# ---------------------------------------------------------------------------------- the source
_TYPED = {"Uint8Array": "<u1", "Int8Array": "<i1", "Uint16Array": "<u2", "Int16Array": "<i2",
          "Uint32Array": "<u4", "Int32Array": "<i4", "Float32Array": "<f4", "Float64Array": "<f8"}


@lru_cache(maxsize=None)
def _source_index(folder: Path = SOURCES) -> dict[str, Path]:
    import pydicom

    out = {}
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = path
    return out


def _source(sop: str, sources: Path):
    import pydicom

    path = _source_index(sources).get(sop)
    if path is None:
        raise PeerError(f"no source DICOM for {sop} under {sources}")
    return pydicom.dcmread(path)


def source_pixels(sop: str, sources: Path = SOURCES) -> np.ndarray:
    """The stored values of a source instance under ``sources`` (pydicom's decode of the file)."""
    return _source(sop, sources).pixel_array


def source_sha256(sop: str, typed_array: str | None = None, pre_scaled: bool = False,
                  sources: Path = SOURCES) -> str:
    """sha256 of the source's values as a typed array of the peer would hold them (if they fit),
    or, with no type, as our page holds them (pydicom's dtype, little-endian)."""
    ds = _source(sop, sources)
    values = ds.pixel_array
    if pre_scaled:
        values = values * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    dtype = np.dtype(_TYPED[typed_array]) if typed_array else values.dtype.newbyteorder("<")
    cast = values.astype(dtype)
    if not np.array_equal(cast.astype(np.float64), values.astype(np.float64)):
        return f"source values do not fit {typed_array}"
    return hashlib.sha256(cast.tobytes()).hexdigest()


def series_sops(series_dir: Path) -> list[str]:
    """SOP instance UIDs of a series in a static DICOMweb tree (its ``metadata`` or ``metadata.gz``)."""
    import gzip
    import json

    plain, packed = series_dir / "metadata", series_dir / "metadata.gz"
    text = plain.read_bytes() if plain.exists() else gzip.decompress(packed.read_bytes())
    return [str(instance["00080018"]["Value"][0]) for instance in json.loads(text)]
