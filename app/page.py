"""Page glue: the only module that touches the DOM and the canvas.

The engine and everything below it never import ``js``; this module turns their events into
pixels on a canvas and text in the page, and user input into engine calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urljoin, urlsplit

import numpy as np
from pyodide.ffi import create_proxy
from pyscript import document, window

from app.config import (PRESET_DESCRIPTIONS, PRESETS, ConfigError, ImageQualityStatus,
                        RetrieveConfig, parse_config, preset)
from app.codecs import PYDICOM_SYNTAXES
from app.render import Appearance, Window, default_window, to_rgba
from app.viewer_engine import open_stack, run_stack
from app.study import dicom_date, person_name

CONFIG_STORAGE_KEY = "progressive-dicom.retrieveConfig"
DEFAULT_PRESET = "htj2k"
#: pydicom is loaded on first need only (DICOM RLE): 2.1 MB and ~0.1 s less at every start.
#: tests/test_layout.py checks that set-up lays out this very wheel.
PYDICOM_WHEEL = "./static/wheels/pydicom-3.0.2-py3-none-any.whl"
DEFAULT_CACHE_MB = 1024  # decoded pixels held by the page; farthest images are dropped beyond it
VIEWER_PRESETS = {  # the published modes, as the sidebar names them
    "htj2k": "HTJ2K streaming",
    "htj2kByteRange": "HTJ2K Byte Range",
    "jls": "JLS",
    "jlsReduced": "JLS Reduced",
    "nonProgressive": "Non-progressive",
    "interleavedStack": "Interleaved stack",
}
STATUS_NAMES = {int(s): s.name for s in ImageQualityStatus}
STATUS_COLOURS = {"SUBRESOLUTION": "#f0c040", "LOSSY": "#f08040", "FULL_RESOLUTION": "#50d080",
                  "FAILED": "#ff6b6b"}

_proxies: list = []  # JS callbacks kept alive for the life of the page


def _keep(fn):
    proxy = create_proxy(fn)
    _proxies.append(proxy)
    return proxy


def _on(element, event: str, fn, **options) -> None:
    if options:
        element.addEventListener(event, _keep(fn), window.Object.fromEntries(
            [[k, v] for k, v in options.items()]))
    else:
        element.addEventListener(event, _keep(fn))


def now_ms() -> float:
    return float(window.performance.now())


def set_state(state: str) -> None:
    document.documentElement.dataset.app = state


def el(element_id: str):
    return document.getElementById(element_id)


def show_error(message: str) -> None:
    """An error where the user looks: the strip under the toolbar, as text (never HTML)."""
    box = el("errors")
    if box.childElementCount >= 6:  # keep the strip short; the newest matter most
        box.removeChild(box.firstChild)
    item = document.createElement("div")
    item.className = "error"
    item.textContent = message
    box.appendChild(item)


def clear_errors() -> None:
    el("errors").replaceChildren()


def put_rgba(canvas, rgba: np.ndarray) -> None:
    """Draw a (rows, cols) uint32 RGBA array on ``canvas`` at 1:1 without copying in Python.

    The canvas gets a Uint8ClampedArray view of the wasm heap (zero copy); ``putImageData`` makes
    the only copy, into the canvas's own storage.
    """
    rgba = np.ascontiguousarray(rgba)
    rows, cols = rgba.shape
    if canvas.width != cols or canvas.height != rows:
        canvas.width, canvas.height = cols, rows
    proxy = create_proxy(memoryview(rgba).cast("B"))
    buf = proxy.getBuffer("u8clamped")
    try:
        image = window.ImageData.new(buf.data, cols, rows)
        canvas.getContext("2d").putImageData(image, 0, 0)
    finally:
        buf.release()
        proxy.destroy()


def safe_study_url(text: str, base: str) -> str:
    """An absolute http(s) URL for a pasted study URL; anything else (javascript:, data:...) is refused."""
    text = (text or "").strip()
    if not text:
        raise ValueError("Paste a study or series URL first.")
    absolute = urljoin(base, text)
    parts = urlsplit(absolute)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"Only http and https study URLs are allowed, not {parts.scheme or text!r}.")
    return absolute


# -- the viewport ---------------------------------------------------------------------------------
@dataclass
class Shown:
    """What the viewport shows for one stack image."""

    pixels: np.ndarray
    status: str
    final: bool
    rows: int
    columns: int
    index: int = -1  # the stack image these pixels belong to


class Viewport:
    """A canvas that draws the current image at its final physical size, with zoom, pan and W/L."""

    def __init__(self, canvas, container) -> None:
        self.canvas = canvas
        self.container = container
        self.image_canvas = document.createElement("canvas")  # the image at its own size
        self.shown: Shown | None = None
        self.full_rows = 0
        self.full_columns = 0
        self.aspect = 1.0  # physical height / width of one pixel
        self.window: Window | None = None
        self.invert = False
        self.monochrome1 = False
        self.slope, self.intercept = 1.0, 0.0
        self.zoom = 1.0
        self.pan = (0.0, 0.0)
        self._rgba_key = None
        self._frame_pending = False
        self.current_index = -1  # the stack position on screen (the viewer sets it)

    # geometry
    def set_geometry(self, rows: int, columns: int, aspect: float) -> None:
        self.full_rows, self.full_columns, self.aspect = rows, columns, aspect or 1.0

    def reset_view(self) -> None:
        self.zoom, self.pan = 1.0, (0.0, 0.0)
        self.request_draw()

    def show(self, shown: Shown | None) -> None:
        self.shown = shown
        self._rgba_key = None
        self.request_draw()

    def appearance(self) -> Appearance:
        return Appearance(window=self.window or Window(2048, 4096), invert=self.invert,
                          monochrome1=self.monochrome1, rescale_slope=self.slope,
                          rescale_intercept=self.intercept)

    def request_draw(self) -> None:
        """Coalesce redraws into one per animation frame: input never queues up work."""
        if not self._frame_pending:
            self._frame_pending = True
            window.requestAnimationFrame(_keep_once(self._draw_frame))

    def _draw_frame(self, _ts=None) -> None:
        self._frame_pending = False
        try:
            self.draw()
        except Exception as exc:  # noqa: BLE001 - a drawing failure must not kill the page
            show_error(f"Drawing failed: {exc}")

    def draw(self) -> None:
        dpr = float(window.devicePixelRatio or 1)
        width = max(1, int(self.container.clientWidth * dpr))
        height = max(1, int(self.container.clientHeight * dpr))
        canvas = self.canvas
        if canvas.width != width or canvas.height != height:
            canvas.width, canvas.height = width, height
        ctx = canvas.getContext("2d")
        ctx.setTransform(1, 0, 0, 1, 0, 0)
        ctx.fillStyle = "#000"
        ctx.fillRect(0, 0, width, height)
        shown = self.shown
        if shown is None or not self.full_columns:
            return
        key = (id(shown.pixels), self.appearance())
        if key != self._rgba_key:
            put_rgba(self.image_canvas, to_rgba(shown.pixels, self.appearance()))
            self._rgba_key = key
        # the final image's physical extent, whatever the resolution of what we hold
        phys_w, phys_h = self.full_columns, self.full_rows * self.aspect
        scale = min(width / phys_w, height / phys_h) * self.zoom
        draw_w, draw_h = phys_w * scale, phys_h * scale
        x = (width - draw_w) / 2 + self.pan[0] * dpr
        y = (height - draw_h) / 2 + self.pan[1] * dpr
        # smooth when reducing or showing a reduced image; crisp pixels when zoomed past 1:1
        ctx.imageSmoothingEnabled = (draw_w / shown.columns) < 2.5 or not shown.final
        ctx.drawImage(self.image_canvas, 0, 0, shown.columns, shown.rows, x, y, draw_w, draw_h)
        # what was drawn, for users' scripts and the tests: [image index, index on screen, status]
        log = window.drawLog
        log.push(window.Array.of(shown.index, self.current_index, shown.status))
        if log.length > 2000:
            log.splice(0, log.length - 2000)

    def displayed_scale(self) -> float:
        if not self.full_columns:
            return 0.0
        dpr = float(window.devicePixelRatio or 1)
        width = max(1, self.container.clientWidth * dpr)
        height = max(1, self.container.clientHeight * dpr)
        return min(width / self.full_columns, height / (self.full_rows * self.aspect)) * self.zoom


def _keep_once(fn):
    """A JS callback for a single call (requestAnimationFrame), released after it runs."""
    holder = {}

    def call(*args):
        try:
            fn(*args)
        finally:
            holder["proxy"].destroy()

    holder["proxy"] = create_proxy(call)
    return holder["proxy"]


# -- the viewer -----------------------------------------------------------------------------------
@dataclass
class ImageRecord:
    """Everything the page knows of one stack image: best refinement and its timeline."""

    shown: Shown | None = None
    bytes: int = 0
    first_ms: float | None = None
    final_ms: float | None = None
    failed: str | None = None
    evicted: bool = False  # its pixels were dropped to stay within the memory budget
    timeline: list = field(default_factory=list)  # (kind, ms since load start, label)


class Viewer:
    def __init__(self) -> None:
        self.viewport = Viewport(el("canvas"), el("viewport"))
        self.config: RetrieveConfig = preset(DEFAULT_PRESET)
        self.config_text = ""
        self.stack = None
        self.images: list[ImageRecord] = []
        self.index = 0
        self.loader = None
        self.load_task: asyncio.Task | None = None
        self.load_started_ms = 0.0
        self.load_generation = 0
        self.cine_handle = None
        self.drag = None
        self._waterfall_pending = False
        self.demo_entries: list[dict] = []
        self.cache_bytes = DEFAULT_CACHE_MB << 20  # decoded pixels the page may hold (?cacheMB=)
        self.held = 0
        self.resume_task: asyncio.Task | None = None

    # ---- configuration sidebar ----
    def init_sidebar(self) -> None:
        select = el("preset")
        for name, label in VIEWER_PRESETS.items():
            option = document.createElement("option")
            option.value, option.textContent = name, label
            select.appendChild(option)
        custom = document.createElement("option")
        custom.value, custom.textContent = "custom", "Custom (edited)"
        select.appendChild(custom)
        stored = window.localStorage.getItem(CONFIG_STORAGE_KEY)
        text = None
        if stored:
            try:
                saved = json.loads(stored)
                self.config = parse_config(saved["text"])
                text, select.value = saved["text"], saved.get("preset", "custom")
            except (ValueError, KeyError, TypeError):
                window.localStorage.removeItem(CONFIG_STORAGE_KEY)
        if text is None:
            select.value = DEFAULT_PRESET
            text = json.dumps(PRESETS[DEFAULT_PRESET], indent=2)
        self.config_text = text
        el("config").value = text
        self._describe_preset()
        _on(select, "change", self.on_preset_change)
        _on(el("apply"), "click", lambda e: self.apply_config())
        _on(el("config"), "input", lambda e: setattr(el("config-status"), "textContent", "edited"))

    def _describe_preset(self) -> None:
        name = el("preset").value
        el("preset-description").textContent = PRESET_DESCRIPTIONS.get(name, "Your own configuration.")

    def on_preset_change(self, _event=None) -> None:
        name = el("preset").value
        if name in PRESETS:
            el("config").value = json.dumps(PRESETS[name], indent=2)
        self._describe_preset()
        self.apply_config()

    def apply_config(self, reload: bool = True) -> bool:
        """Validate the edited JSON; on error keep the old configuration and say where it is wrong."""
        text = el("config").value
        box = el("config-error")
        try:
            config = parse_config(text)
        except ConfigError as exc:
            box.textContent = f"Not applied: {exc}"
            box.hidden = False
            el("config-status").textContent = "invalid, previous configuration kept"
            return False
        box.hidden = True
        box.textContent = ""
        self.config, self.config_text = config, text
        name = el("preset").value
        if name in PRESETS and json.loads(text) != PRESETS[name]:
            el("preset").value = name = "custom"
            self._describe_preset()
        window.localStorage.setItem(CONFIG_STORAGE_KEY, json.dumps({"text": text, "preset": name}))
        el("config-status").textContent = "applied"
        if reload and self.stack is not None:
            self.start_load(self.current_url)
        return True

    # ---- loading ----
    current_url = ""

    def start_load(self, url: str) -> None:
        if self.load_task is not None and not self.load_task.done():
            self.load_task.cancel()
        if self.resume_task is not None and not self.resume_task.done():
            self.resume_task.cancel()
        self.current_url = url
        self.load_generation += 1
        # synchronous, so whoever asked for the load sees "loading" at once, never a stale "idle"
        set_state("loading")
        window.renderLog = window.Array.new()
        self.load_task = asyncio.ensure_future(self.load(url, self.load_generation))

    async def load(self, url: str, generation: int) -> None:
        clear_errors()
        el("status").textContent = "Loading study…"
        self.load_started_ms = now_ms()
        if self.loader is not None:
            await self.loader.aclose()
            self.loader = None
        try:
            vp = el("viewport")
            dpr = float(window.devicePixelRatio or 1)
            stack, loader = await open_stack(
                url, self.config, viewport=(int(vp.clientHeight * dpr), int(vp.clientWidth * dpr)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is a message, never a traceback
            if generation == self.load_generation:
                show_error(f"Could not open {url}: {exc}")
                set_state("error")
                el("status").textContent = "Error"
            return
        if any(im.transfer_syntax in PYDICOM_SYNTAXES for im in stack.images):
            try:
                await ensure_pydicom()
            except Exception as exc:  # noqa: BLE001 - the images will fail one by one, clearly
                show_error(f"Could not load pydicom for {stack.images[0].transfer_syntax} frames: {exc}")
        if generation != self.load_generation:
            await loader.aclose()
            return
        self.stack, self.loader = stack, loader
        self.images = [ImageRecord() for _ in range(len(stack.images))]
        self.held = 0  # bytes of the pixels in self.images (kept as they change: no sum per event)
        self.index = min(len(stack.images) // 2, len(stack.images) - 1) if len(stack.images) > 2 else 0
        self.viewport.current_index = self.index
        slider = el("slider")
        slider.max = str(max(0, len(stack.images) - 1))
        slider.value = str(self.index)
        self._init_image_geometry()
        self._fill_study_info()
        self._fill_window_presets()
        self.viewport.reset_view()
        self.update_overlay()
        el("status").textContent = f"Loading {len(stack.images)} image(s)…"
        await self._run(None, generation)

    def _finish_state(self) -> None:
        failed = sum(1 for r in self.images if r.failed)
        done = sum(1 for r in self.images if r.final_ms is not None)
        evicted = sum(1 for r in self.images if r.evicted)
        el("status").textContent = (f"{done}/{len(self.images)} lossless"
                                    + (f", {failed} failed" if failed else "")
                                    + (f", {evicted} dropped to stay within {self.cache_bytes >> 20} MB"
                                       if evicted else ""))
        set_state("idle")

    def _init_image_geometry(self) -> None:
        image = self.stack.images[self.index]
        fmt = image.fmt
        spacing = getattr(image, "pixel_spacing", None)
        aspect = (spacing[0] / spacing[1]) if spacing and spacing[1] else 1.0
        self.viewport.set_geometry(fmt.rows, fmt.columns, aspect)
        self.viewport.monochrome1 = fmt.photometric_interpretation == "MONOCHROME1"
        self.viewport.slope, self.viewport.intercept = fmt.rescale_slope, fmt.rescale_intercept
        windows = getattr(image, "windows", None) or ()
        self.viewport.window = Window(*windows[0]) if windows else None

    # ---- engine events ----
    def on_event(self, event) -> None:
        kind = type(event).__name__
        index = getattr(event, "index", None)
        if index is None or not (0 <= index < len(self.images)):
            return
        record = self.images[index]
        t = now_ms() - self.load_started_ms
        if kind == "Refinement":
            self._on_refinement(index, record, event, t)
        elif kind == "ImageFailed":
            record.failed = event.message
            record.timeline.append(("failed", t, event.message))
            show_error(f"Image {index + 1}: {event.message}")
            if index == self.index:
                self.update_overlay()
        elif kind == "RequestStarted":
            record.timeline.append(("request", t, getattr(event, "url", "")))
        elif kind == "FirstBytes":
            record.timeline.append(("first-bytes", t, ""))
        self.request_waterfall()

    def _on_refinement(self, index: int, record: ImageRecord, event, t: float) -> None:
        status = STATUS_NAMES.get(int(event.status), str(event.status))
        current = record.shown
        better = (current is None or int(event.status) > int(ImageQualityStatus[current.status])
                  or (int(event.status) == int(ImageQualityStatus[current.status])
                      and event.columns > current.columns) or (event.final and not current.final))
        if not better:
            return  # a result never replaces a better one
        self.held += event.pixels.nbytes - (current.pixels.nbytes if current is not None else 0)
        record.shown = Shown(event.pixels, status, bool(event.final), int(event.rows), int(event.columns), index)
        record.bytes = int(event.bytes_received)
        if record.first_ms is None:
            record.first_ms = t
        if event.final:
            record.final_ms = t
        record.timeline.append(("final" if event.final else status, t,
                                f"{event.columns}x{event.rows}"))
        record.evicted = False
        self._evict_beyond_budget()
        drawn = index == self.index
        if drawn:
            if self.viewport.window is None:
                fmt = self.stack.images[index].fmt
                self.viewport.window = default_window(event.pixels, fmt.rescale_slope, fmt.rescale_intercept)
                self._fill_window_presets()
            self.viewport.show(record.shown)
            self.update_overlay()
        window.renderLog.push(window.Object.fromEntries([
            ["index", index], ["status", status], ["rows", int(event.rows)],
            ["columns", int(event.columns)], ["t_ms", round(t, 1)],
            ["image_t_ms", round(float(getattr(event, "t_ms", t)), 1)],
            ["bytes", int(event.bytes_received)], ["final", bool(event.final)], ["drawn", drawn],
            ["decode_ms", round(float(getattr(event, "decode_ms", 0.0)), 1)]]))

    # ---- memory ----
    def _evict_beyond_budget(self) -> None:
        """Over the budget: drop the pixels of the images farthest from the one on screen (never
        it or its direct neighbours); the engine forgets them too and loads them again on return."""
        held = self.held
        if held <= self.cache_bytes or self.loader is None:
            return
        dropped = []
        for i in sorted(range(len(self.images)), key=lambda i: -abs(i - self.index)):
            record = self.images[i]
            if held <= self.cache_bytes or abs(i - self.index) <= 1:
                break
            if record.shown is None:
                continue
            held -= record.shown.pixels.nbytes
            record.shown, record.evicted, record.final_ms = None, True, None
            record.timeline.append(("evicted", now_ms() - self.load_started_ms, ""))
            dropped.append(i)
        self.held = held
        if dropped:
            self.loader.forget(dropped)

    def _reload_evicted_near(self, index: int) -> None:
        """Back on evicted images: load them (and evicted neighbours) again, current first."""
        near = [i for i in range(max(0, index - 2), min(len(self.images), index + 3)) if self.images[i].evicted]
        if not near or self.loader is None:
            return
        for i in near:
            self.images[i].evicted = False
        if any(t is not None and not t.done() for t in (self.load_task, self.resume_task)):
            self.loader.request(near)  # the running load picks them up
            return
        set_state("loading")
        self.resume_task = asyncio.ensure_future(self._run(near, self.load_generation))

    async def _run(self, indices: list[int] | None, generation: int) -> None:
        """Run the loader over the stack (or only ``indices``), then say how it ended."""
        try:
            await run_stack(self.loader, self.index, self.on_event, indices)
            # images asked for again while the run was winding down (its workers already gone)
            while generation == self.load_generation and self.loader.pending():
                await run_stack(self.loader, self.index, self.on_event, self.loader.pending())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            show_error(f"Loading stopped: {exc}")
        if generation == self.load_generation:
            self._finish_state()

    # ---- navigation ----
    def go_to(self, index: int) -> None:
        if not self.images:
            return
        index = max(0, min(len(self.images) - 1, index))
        if index == self.index:
            return
        self.index = index
        self.viewport.current_index = index
        el("slider").value = str(index)
        if self.loader is not None:
            self.loader.set_current(index)
            self._reload_evicted_near(index)
        self.viewport.show(self.images[index].shown)
        self.update_overlay()

    def step(self, delta: int, wrap: bool = False) -> None:
        if not self.images:
            return
        n = len(self.images)
        target = (self.index + delta) % n if wrap else self.index + delta
        self.go_to(target)

    def toggle_cine(self, _event=None) -> None:
        if self.cine_handle is not None:
            window.clearInterval(self.cine_handle)
            self.cine_handle = None
            el("play").textContent = "▶"
            return
        self.cine_handle = window.setInterval(_keep(lambda: self.step(1, wrap=True)), 100)
        el("play").textContent = "❚❚"

    # ---- overlay and study information ----
    def update_overlay(self) -> None:
        if not self.stack:
            return
        record = self.images[self.index]
        shown = record.shown
        vp = self.viewport
        tl = [f"Image {self.index + 1} / {len(self.images)}"]
        if shown is not None:
            scale = vp.displayed_scale()
            tl.append(f"Native {vp.full_columns}x{vp.full_rows}, showing {shown.columns}x{shown.rows}")
            tl.append(f"Displayed at {scale * 100:.0f}%")
        el("overlay-tl").textContent = "\n".join(tl)
        badge = "FAILED" if record.failed and shown is None else (shown.status if shown else "LOADING")
        label = {"FULL_RESOLUTION": "FULL"}.get(badge, badge)
        tr = el("overlay-tr")
        tr.replaceChildren()
        span = document.createElement("span")
        span.className = f"badge {badge}"
        span.textContent = label
        tr.appendChild(span)
        w = vp.window
        el("overlay-bl").textContent = (f"W {w.width:.0f}  L {w.center:.0f}" if w else "W -  L -") + (
            "  inverted" if vp.invert else "") + f"  zoom {vp.zoom:.2f}"
        br = [f"first {record.first_ms:.0f} ms" if record.first_ms is not None else "first -",
              f"final {record.final_ms:.0f} ms" if record.final_ms is not None else "final -",
              f"{record.bytes / 1024:.0f} KiB received"]
        el("overlay-br").textContent = "\n".join(br)

    def _fill_study_info(self) -> None:
        info = el("study-info")
        info.replaceChildren()
        image = self.stack.images[self.index]
        stack = self.stack
        series = " ".join(x for x in (f"#{stack.series_number}" if stack.series_number is not None else "",
                                      stack.series_description or "") if x)
        rows = [("Patient", person_name(stack.patient_name)),
                ("Patient ID", stack.patient_id),
                ("Study", " ".join(x for x in (dicom_date(stack.study_date), stack.study_description) if x)),
                ("Series", series),
                ("Modality", stack.modality),
                ("Images", str(len(self.stack.images))),
                ("Size", f"{image.fmt.columns} x {image.fmt.rows}"),
                ("Transfer syntax", getattr(image, "transfer_syntax", "") or "")]
        for name, value in rows:
            dt, dd = document.createElement("dt"), document.createElement("dd")
            dt.textContent, dd.textContent = name, str(value or "-")  # DICOM text stays text
            info.appendChild(dt)
            info.appendChild(dd)

    def _fill_window_presets(self) -> None:
        select = el("wl-preset")
        select.replaceChildren()
        options = [("Window…", "")]
        if self.stack:
            image = self.stack.images[self.index]
            for i, (c, w) in enumerate(getattr(image, "windows", None) or ()):
                options.append((f"DICOM {i + 1}: W{w:.0f} L{c:.0f}", f"{c},{w}"))
        if self.viewport.window:
            options.append(("Current", f"{self.viewport.window.center},{self.viewport.window.width}"))
        for label, value in options:
            option = document.createElement("option")
            option.value, option.textContent = value, label
            select.appendChild(option)

    # ---- waterfall ----
    def request_waterfall(self) -> None:
        if not self._waterfall_pending:
            self._waterfall_pending = True
            window.requestAnimationFrame(_keep_once(self._draw_waterfall))

    def _draw_waterfall(self, _ts=None) -> None:
        self._waterfall_pending = False
        canvas = el("waterfall")
        dpr = float(window.devicePixelRatio or 1)
        width, height = int(canvas.clientWidth * dpr), int(canvas.clientHeight * dpr)
        if width <= 0 or height <= 0:
            return
        canvas.width, canvas.height = width, height
        ctx = canvas.getContext("2d")
        ctx.fillStyle = "#15171a"
        ctx.fillRect(0, 0, width, height)
        rows = [(i, r) for i, r in enumerate(self.images) if r.timeline]
        if not rows:
            return
        t_end = max(max(t for _, t, _ in r.timeline) for _, r in rows) * 1.05 + 1
        left, axis_h = 44 * dpr, 16 * dpr
        lane = max(2.0, min(14 * dpr, (height - axis_h) / len(rows)))
        scale = (width - left - 6 * dpr) / t_end
        ctx.font = f"{int(10 * dpr)}px monospace"
        for row, (index, record) in enumerate(rows):
            y = row * lane
            events = sorted(record.timeline, key=lambda e: e[1])
            start = events[0][1]
            end = events[-1][1]
            ctx.fillStyle = "#444" if index != self.index else "#666"
            ctx.fillRect(left + start * scale, y + lane * 0.3, max(1.0, (end - start) * scale), lane * 0.4)
            for kind, t, _label in events:
                colour = {"request": "#888", "first-bytes": "#4fa3ff", "final": STATUS_COLOURS["FULL_RESOLUTION"],
                          "failed": STATUS_COLOURS["FAILED"]}.get(kind, STATUS_COLOURS.get(kind, "#ccc"))
                ctx.fillStyle = colour
                ctx.fillRect(left + t * scale - dpr, y + 1, 3 * dpr, lane - 2)
            if lane >= 9 * dpr:
                ctx.fillStyle = "#9aa0a6"
                ctx.fillText(f"#{index + 1}", 4 * dpr, y + lane * 0.8)
        ctx.fillStyle = "#9aa0a6"
        step = 10 ** math.floor(math.log10(max(t_end, 1))) / 2
        t = 0.0
        while t <= t_end:
            x = left + t * scale
            ctx.fillRect(x, height - axis_h, 1, 4 * dpr)
            ctx.fillText(f"{t:.0f} ms" if t < 1000 else f"{t / 1000:.1f} s", x + 2, height - 3 * dpr)
            t += step

    # ---- input ----
    def bind_input(self) -> None:
        vp_el = el("viewport")
        _on(vp_el, "wheel", self.on_wheel, passive=False)
        _on(vp_el, "keydown", self.on_key)
        _on(document, "keydown", self.on_document_key)
        _on(vp_el, "pointerdown", self.on_pointer_down)
        _on(vp_el, "pointermove", self.on_pointer_move)
        _on(vp_el, "pointerup", self.on_pointer_up)
        _on(vp_el, "pointercancel", self.on_pointer_up)
        _on(vp_el, "contextmenu", lambda e: e.preventDefault())
        _on(vp_el, "dblclick", lambda e: self.viewport.reset_view())
        _on(el("slider"), "input", lambda e: self.go_to(int(el("slider").value)))
        _on(el("play"), "click", self.toggle_cine)
        _on(el("fit"), "click", lambda e: self.fit())
        _on(el("reset"), "click", lambda e: self.reset())
        _on(el("invert"), "click", lambda e: self.toggle_invert())
        _on(el("wl-preset"), "change", self.on_window_preset)
        _on(window, "resize", lambda e: (self.viewport.request_draw(), self.request_waterfall()))

    def fit(self) -> None:
        self.viewport.reset_view()
        self.update_overlay()

    def reset(self) -> None:
        self.viewport.invert = False
        if self.stack:
            self._init_image_geometry()
            shown = self.images[self.index].shown
            if self.viewport.window is None and shown is not None:
                fmt = self.stack.images[self.index].fmt
                self.viewport.window = default_window(shown.pixels, fmt.rescale_slope, fmt.rescale_intercept)
        self.viewport.reset_view()
        self.update_overlay()

    def toggle_invert(self) -> None:
        self.viewport.invert = not self.viewport.invert
        self.viewport.request_draw()
        self.update_overlay()

    def on_window_preset(self, _event=None) -> None:
        value = el("wl-preset").value
        if value:
            c, w = (float(v) for v in value.split(","))
            self.viewport.window = Window(c, w)
            self.viewport.request_draw()
            self.update_overlay()

    def on_wheel(self, event) -> None:
        event.preventDefault()
        if event.ctrlKey or event.metaKey:
            factor = math.exp(-float(event.deltaY) * 0.002)
            self.viewport.zoom = max(0.05, min(40.0, self.viewport.zoom * factor))
            self.viewport.request_draw()
            self.update_overlay()
        elif event.deltaY:
            self.step(1 if event.deltaY > 0 else -1)

    def on_document_key(self, event) -> None:
        target = event.target
        if target is not None and getattr(target, "tagName", "") in ("INPUT", "TEXTAREA", "SELECT"):
            return
        if target is not el("viewport"):
            self.on_key(event)

    def on_key(self, event) -> None:
        key = event.key
        actions = {
            "ArrowDown": lambda: self.step(1), "ArrowRight": lambda: self.step(1),
            "ArrowUp": lambda: self.step(-1), "ArrowLeft": lambda: self.step(-1),
            "PageDown": lambda: self.step(5), "PageUp": lambda: self.step(-5),
            "Home": lambda: self.go_to(0), "End": lambda: self.go_to(len(self.images) - 1),
            " ": self.toggle_cine, "i": self.toggle_invert, "r": self.reset, "f": self.fit,
            "+": lambda: self._zoom_by(1.25), "=": lambda: self._zoom_by(1.25),
            "-": lambda: self._zoom_by(0.8),
        }
        action = actions.get(key)
        if action is not None:
            event.preventDefault()
            event.stopPropagation()
            action()

    def _zoom_by(self, factor: float) -> None:
        self.viewport.zoom = max(0.05, min(40.0, self.viewport.zoom * factor))
        self.viewport.request_draw()
        self.update_overlay()

    def on_pointer_down(self, event) -> None:
        el("viewport").focus()
        el("viewport").setPointerCapture(event.pointerId)
        mode = "pan" if (event.button in (1, 2) or event.shiftKey) else "window"
        w = self.viewport.window or Window(2048, 4096)
        self.drag = {"mode": mode, "x": float(event.clientX), "y": float(event.clientY),
                     "window": w, "pan": self.viewport.pan}

    def on_pointer_move(self, event) -> None:
        drag = self.drag
        if not drag:
            return
        dx, dy = float(event.clientX) - drag["x"], float(event.clientY) - drag["y"]
        if drag["mode"] == "pan":
            self.viewport.pan = (drag["pan"][0] + dx, drag["pan"][1] + dy)
        else:
            w0 = drag["window"]
            sensitivity = max(w0.width, 16.0) / 256.0
            self.viewport.window = Window(w0.center + dy * sensitivity,
                                          max(1.0, w0.width + dx * sensitivity))
        self.viewport.request_draw()
        self.update_overlay()

    def on_pointer_up(self, event) -> None:
        if self.drag:
            self.drag = None


# -- hooks for end-to-end tests and scripting (window.pyApp) ---------------------------------------
async def decode_frame_hook(url: str, fmt_json: str) -> str:
    """Fetch a frame URL, decode it with the viewer's codecs, return sha256 of the stored values."""
    from app.codecs import PixelFormat, decode_frame
    from app.readers.multipart import MultipartReader, PartData

    spec = json.loads(fmt_json)
    ts = spec.pop("transfer_syntax")
    if ts in PYDICOM_SYNTAXES:
        await ensure_pydicom()
    response = await window.fetch(url)
    if not response.ok:
        raise RuntimeError(f"{url}: HTTP {response.status}")
    data = (await response.arrayBuffer()).to_bytes()
    ctype = response.headers.get("content-type") or ""
    if ctype.startswith("multipart/"):
        boundary = ctype.split("boundary=")[1].split(";")[0].strip().strip('"').encode()
        reader = MultipartReader(boundary)
        events = reader.feed(data) + reader.close()
        data = b"".join(bytes(e.data) for e in events if isinstance(e, PartData))
    t0 = time.perf_counter()
    pixels = decode_frame(data, ts, PixelFormat(**spec))
    decode_ms = (time.perf_counter() - t0) * 1000.0
    stored = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<"), copy=False)
    return json.dumps({"sha256": hashlib.sha256(stored.tobytes()).hexdigest(),
                       "rows": int(pixels.shape[0]), "columns": int(pixels.shape[1]),
                       "dtype": str(pixels.dtype), "decode_ms": decode_ms})


def draw_pattern_hook(canvas_id: str) -> str:
    """Draw a known 16-bit ramp through the real render path; tests read the canvas back."""
    canvas = document.getElementById(canvas_id)
    ramp = (np.arange(256, dtype=np.uint16)[None, :] * 16).repeat(64, axis=0)  # 0..4080
    put_rgba(canvas, to_rgba(ramp, Appearance(window=Window(center=2048, width=4096))))
    return json.dumps({"rows": 64, "columns": 256})


async def ensure_pydicom() -> None:
    """Install pydicom from the local wheel the first time a stack needs it."""
    try:
        import pydicom  # noqa: F401
        return
    except ImportError:
        pass
    import importlib

    import pyodide_js

    await pyodide_js.loadPackage(urljoin(str(window.location.href), PYDICOM_WHEEL))
    importlib.invalidate_caches()


async def import_check_hook() -> str:
    import imagecodecs

    await ensure_pydicom()
    import pydicom

    return json.dumps({"numpy": np.__version__, "imagecodecs": imagecodecs.__version__,
                       "pydicom": pydicom.__version__})


def _expose_hooks(viewer: Viewer) -> None:
    def pixels_sha256(index: int) -> str | None:
        """sha256 of the stored values held for a stack image (little-endian, native dtype)."""
        shown = viewer.images[int(index)].shown if 0 <= int(index) < len(viewer.images) else None
        if shown is None:
            return None
        stored = np.ascontiguousarray(shown.pixels)
        return hashlib.sha256(stored.astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()

    def memory_usage() -> str:
        """The wasm heap (numpy arrays live there) and the decoded pixels the page holds."""
        import pyodide_js

        held = [r.shown.pixels.nbytes for r in viewer.images if r.shown is not None]
        return json.dumps({"wasmHeapBytes": int(pyodide_js._module.HEAPU8.length),
                           "heldPixelBytes": int(sum(held)), "heldImages": len(held),
                           "heldCounted": int(viewer.held)})

    hooks = {"decodeFrame": decode_frame_hook, "drawPattern": draw_pattern_hook,
             "importCheck": import_check_hook, "pixelsSha256": pixels_sha256,
             "memoryUsage": memory_usage}
    api = window.Object.new()
    for name, fn in hooks.items():
        setattr(api, name, _keep(fn))
    window.pyApp = api


async def default_study_url() -> str:
    """The first demo study that serve.py lists, if there is one."""
    try:
        response = await window.fetch("./dicomweb/demo.json")
        if response.ok:
            entries = json.loads(await response.text())
            if entries:
                return entries, entries[0]["url"]
    except Exception:  # noqa: BLE001 - no demo data is not an error
        pass
    return [], ""


def warm_up_decoders() -> None:
    """The first decode in a fresh wasm instance is slower (~70 ms): pay that before "ready", on the
    paths a first frame takes: a reduced HTJ2K level, a full one, JPEG-LS, then the LUT to RGBA."""
    import imagecodecs

    from app.codecs import HTJ2K_LOSSLESS, JPEG_LS_LOSSLESS, PixelFormat, decode_frame

    tile = (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64)
    fmt = PixelFormat(rows=64, columns=64, bits_allocated=16, bits_stored=12)
    try:
        htj2k = imagecodecs.htj2k_encode(tile, resolutions=3)
        decode_frame(htj2k, HTJ2K_LOSSLESS, fmt, reduce=1)
        pixels = decode_frame(htj2k, HTJ2K_LOSSLESS, fmt)
        decode_frame(imagecodecs.jpegls_encode(tile), JPEG_LS_LOSSLESS, fmt)
        to_rgba(pixels, Appearance(window=Window(center=2048, width=4096)))
    except Exception:  # noqa: BLE001 - a codec missing here is reported when a frame needs it
        pass


async def start() -> None:
    warm_up_decoders()
    viewer = Viewer()
    _expose_hooks(viewer)
    viewer.init_sidebar()
    viewer.bind_input()
    params = parse_qs(urlsplit(str(window.location.href)).query)
    try:
        viewer.cache_bytes = max(1, int(params.get("cacheMB", [DEFAULT_CACHE_MB])[0])) << 20
    except ValueError:
        show_error("cacheMB must be a whole number of megabytes; using the default "
                   f"({DEFAULT_CACHE_MB} MB)")
    if "config" in params:
        value = params["config"][0]
        el("config").value = json.dumps(PRESETS[value], indent=2) if value in PRESETS else value
        if value in PRESETS:
            el("preset").value = value
        viewer.apply_config(reload=False)
    entries, demo_url = await default_study_url()
    viewer.demo_entries = entries
    _fill_demo_picker(viewer, entries)
    url = params.get("url", [demo_url])[0]
    el("url").value = url
    form = el("load-form")

    def on_submit(event) -> None:
        event.preventDefault()
        try:
            target = safe_study_url(el("url").value, str(window.location.href))
        except ValueError as exc:
            show_error(str(exc))
            return
        viewer.start_load(target)

    _on(form, "submit", on_submit)
    el("load").disabled = False
    window.appTimings.readyMs = now_ms()
    el("status").textContent = "Ready"
    set_state("ready")
    window.pyViewer = _keep(lambda: viewer)  # for debugging from the console
    if url and "noload" not in params:
        try:
            viewer.start_load(safe_study_url(url, str(window.location.href)))
        except ValueError as exc:
            show_error(str(exc))


def _fill_demo_picker(viewer: Viewer, entries: list[dict]) -> None:
    select = el("series")
    if not entries:
        return
    for entry in entries:
        option = document.createElement("option")
        option.value, option.textContent = entry["url"], entry["name"]
        select.appendChild(option)
    select.hidden = False

    def on_change(_event) -> None:
        el("url").value = select.value
        viewer.start_load(safe_study_url(select.value, str(window.location.href)))

    _on(select, "change", on_change)
