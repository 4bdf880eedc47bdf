"""The page's main thread (MicroPython): DOM, input and drawing, nothing heavy.

The engine runs in a worker (app/worker.py); its messages arrive here as JSON text plus the raw
message, whose pixel buffer goes straight to the renderer (app/ui/render.mjs). What may be shown
is decided by app/ui/view_state.py; this module only carries it out.
"""

import json

from pyscript import document, window

from app.ui.view_state import REDUCE_FACTOR, WORKER_SHARE, ViewState, badge_label

CONFIG_STORAGE_KEY = "progressive-dicom.retrieveConfig"
DEFAULT_CACHE_MB = 1024
WATERFALL_MS = 250  # the request waterfall is redrawn at most this often
OPEN_TIMEOUT_MS = 30000  # discovery (study/series metadata) that answers nothing in this long fails
OPENED_REST_MS = 150  # the info table, window presets and URL follow an opened series this late
VIEWER_PRESETS = {  # the published modes, as the sidebar names them
    "htj2k": "HTJ2K streaming",
    "htj2kByteRange": "HTJ2K Byte Range",
    "jls": "JLS",
    "jlsReduced": "JLS Reduced",
    "nonProgressive": "Non-progressive",
    "interleavedStack": "Interleaved stack",
    "interleavedPreview": "Interleaved stack, 32 KB previews",
}
STATUS_COLOURS = {"SUBRESOLUTION": "#f0c040", "LOSSY": "#f08040", "FULL_RESOLUTION": "#50d080",
                  "FAILED": "#ff6b6b", "final": "#50d080", "failed": "#ff6b6b",
                  "request": "#888", "first-bytes": "#4fa3ff"}


def el(element_id):
    return document.getElementById(element_id)


def js(value):
    """A plain JS object/array from Python data (MicroPython passes containers as proxies)."""
    return window.jsObject(json.dumps(value))


def now_ms():
    return float(window.performance.now())


def set_state(state):
    document.documentElement.dataset.app = state


def show_error(message):
    """An error where the user looks: the strip under the toolbar, as text (never HTML)."""
    box = el("errors")
    if box.childElementCount >= 6:
        box.removeChild(box.firstChild)
    item = document.createElement("div")
    item.className = "error"
    item.textContent = message
    box.appendChild(item)


def clear_errors():
    el("errors").replaceChildren()


def guarded(fn):
    """An event handler that reports its failure in the page instead of raising into PyScript."""
    def handler(*args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - never a traceback block on the page
            _log_exception(exc)
            show_error("Something went wrong: %s" % exc)
    return handler


def _log_exception(exc):
    try:
        import sys

        sys.print_exception(exc)
    except AttributeError:  # CPython (tests import this module's pure parts)
        pass


def on(element, event, fn, passive=None):
    if passive is None:
        element.addEventListener(event, guarded(fn))
    else:
        element.addEventListener(event, guarded(fn), js({"passive": passive}))


def failure_text(url, message):
    """One short sentence naming the cause of a load that failed."""
    low = message.lower()
    if "failed to fetch" in low or "networkerror" in low or "load failed" in low:
        cause = "the server could not be reached, or it does not allow this page to read it (CORS)"
    elif "http 404" in low or ("no series metadata" in low  # bare: absent; with ": cause": say the cause
                               and ": " not in low.split("no series metadata", 1)[1]):
        cause = "not found (HTTP 404: no series metadata there)"
    elif "http 401" in low or "http 403" in low:
        cause = "access refused (%s)" % ("HTTP 401" if "401" in low else "HTTP 403")
    elif "timed out" in low or "timeout" in low:
        cause = "the server stopped answering (timed out)"
    elif "not json" in low or "no series" in low or "no studies" in low or "metadata" in low:
        cause = "this is not a DICOMweb study or series (%s)" % message
    else:
        cause = message
    return "Could not open %s: %s" % (url, cause)


def set_badge(badge):
    span = document.createElement("span")
    span.className = "badge " + badge
    span.textContent = badge_label(badge)
    el("overlay-tr").replaceChildren(span)


def retire_preview():
    """The start-up preview goes for good (a real image is drawn, or another series is asked for)."""
    preview = el("preview")
    preview.dataset.retired = "1"
    preview.hidden = True
    preview.removeAttribute("src")


class Page:
    """The viewer on this page: one ViewState, one renderer, one engine worker."""

    def __init__(self, params):
        self.params = params
        self.state = ViewState(DEFAULT_CACHE_MB << 20)
        self.renderer = None
        self.buffers = {}  # renderer key -> ArrayBuffer (JsProxy): what the page holds
        self.pending_log = []  # (key, entry) waiting for the draw that shows them
        self.draw_pending = False
        self.waterfall_pending = False
        self.waterfall_at = 0.0  # when the waterfall was last drawn (now_ms)
        self.load_started = 0.0
        self.open_timer = None
        self.presets = {}
        self.descriptions = {}
        self.config_text = ""
        self.visit_config = None  # a config= deep link: this visit only, never saved
        self.running = False
        self.cine = None
        self.pending_view = None  # slice/wl/zoom/invert from a link, for the series being opened
        self.rest_due = None  # the generation whose info table, presets and URL are still to fill
        self.demo = []  # (url, name) of the demo studies serve.py lists

    # ---- engine messages ----
    def on_engine(self, kind, text, raw):
        try:
            m = json.loads(text)
            handler = self.HANDLERS.get(kind)
            if handler is not None:
                handler(self, m, raw)
        except Exception as exc:  # noqa: BLE001
            _log_exception(exc)
            show_error("Something went wrong: %s" % exc)

    def on_presets(self, m, raw):
        from app.ui import controls

        self.presets, self.descriptions = m["presets"], m["descriptions"]
        controls.init_sidebar(self, m["default"])
        controls.became_ready(self)

    def on_opened(self, m, raw):
        if not self.state.opened(m):
            return
        self.stop_open_timer()
        slider = el("slider")
        slider.max = str(max(0, len(self.state.slots) - 1))
        slider.value = str(self.state.index)
        el("status").textContent = "Loading %d image(s)…" % len(self.state.slots)
        from app.ui import controls

        view, self.pending_view = self.pending_view, None
        if view:
            view.pop("slice", None)  # the engine opened on it already
            controls.apply_view(self, view)
        self.refresh()
        # the info table, the window presets and the URL after the first picture (or at the end of
        # the load, or OPENED_REST_MS later): they took ~20 ms of this thread, and the layout after
        # them, while the first image waited
        generation = self.rest_due = self.state.generation
        window.setTimeout(lambda: self.opened_rest(generation), OPENED_REST_MS)

    def opened_rest(self, generation):
        if generation != self.rest_due or generation != self.state.generation or self.state.series is None:
            return
        self.rest_due = None
        from app.ui import controls

        self.fill_info()
        self.fill_window_presets()
        controls.remember(self)

    def on_open_failed(self, m, raw):
        if self.state.fail(m["generation"], m["message"]):
            retire_preview()
            self.stop_open_timer()
            self.show_nothing()
            show_error(failure_text(m["url"], m["message"]))
            set_state("error")
            el("status").textContent = "Error"
            self.running = False
            self.sync_cancel()

    def on_refinement(self, m, raw):
        accepted, drop = self.state.accept(m)
        if not accepted:
            return
        for key in drop:
            self.forget_key(key)
        held = self.state.slots[m["index"]].held
        self.renderer.upload(held.key, raw)
        self.buffers[held.key] = raw.buffer
        for index, old, small in self.state.evict():
            self.keep_reduced(old, small)
            self.forget_key(old.key)
            self.forget_index(index)
        entry = {"index": m["index"], "sop": m["sop"], "status": m["status"], "rows": m["rows"],
                 "columns": m["columns"], "image_t_ms": m["image_t_ms"], "bytes": m["bytes"],
                 "final": m["final"], "decode_ms": m["decode_ms"]}
        if m["index"] == self.state.index:
            if self.state.window is not None and el("wl-preset").options.length <= 1:
                self.fill_window_presets()
            self.pending_log.append((held.key, entry))
            self.draw_frame()  # now, not at the next frame: every level that arrives is seen
        else:
            self.log_render(entry, False)
        self.request_waterfall()

    def on_image_failed(self, m, raw):
        if self.state.image_failed(m):
            show_error("Image %d: %s" % (m["index"] + 1, m["message"]))
            if m["index"] == self.state.index:
                self.update_overlay()
            self.request_waterfall()

    def on_progress(self, m, raw):
        if self.state.progress(m):
            self.request_waterfall()

    def on_done(self, m, raw):
        if m["generation"] != self.state.generation:
            return
        self.opened_rest(m["generation"])
        self.running = False
        self.sync_cancel()
        el("status").textContent = self.state.summary()
        set_state("idle")

    def on_running(self, m, raw):
        if m["generation"] == self.state.generation:
            self.running = True
            self.sync_cancel()
            set_state("loading")

    def on_warning(self, m, raw):
        if m.get("generation") == self.state.generation:
            show_error(m["message"])

    def on_retry(self, m, raw):
        """A request asked again (5xx, 429, a lost or stalled transfer): the console and
        ``window.retryLog`` say so (the benchmark counts them); the load goes on, nothing to show."""
        if m.get("generation") == self.state.generation:
            window.console.warn("retry %d of slice %d: %s" % (m["attempt"], m["index"] + 1, m["message"]))
            window.retryLog.push(json.dumps(m))

    def on_cancelled(self, m, raw):
        if m["generation"] == self.state.generation:
            self.running = False
            self.sync_cancel()
            el("status").textContent = "Cancelled"
            set_state("idle")

    def on_series_list(self, m, raw):
        if m["generation"] == self.state.generation:
            from app.ui import controls

            controls.fill_series(self, m)

    HANDLERS = {"series-list": on_series_list, "presets": on_presets, "opened": on_opened, "open-failed": on_open_failed,
                "refinement": on_refinement, "image-failed": on_image_failed,
                "progress": on_progress, "done": on_done, "running": on_running,
                "warning": on_warning, "retry": on_retry, "cancelled": on_cancelled}

    # ---- loading ----
    def start_load(self, url, index=None):
        """Replace whatever is shown by this URL's series, at once (nothing of the old one stays).

        The load message goes first: the worker starts discovery while this thread clears the
        view (no answer can be handled before this handler returns, so nothing old is drawn)."""
        generation = self.state.begin(url)
        vp = el("viewport")
        dpr = float(window.devicePixelRatio or 1)
        self.state.copies = 2 if self.renderer and self.renderer.kind == "webgl2" else 1  # + its texture
        message = {"type": "load", "generation": generation, "url": url,
                   "config": self.active_config(), "cacheBytes": self.state.budget // WORKER_SHARE,
                   "viewport": [int(vp.clientHeight * dpr), int(vp.clientWidth * dpr)]}
        if index is not None:
            message["index"] = index
        window.engine.send(js(message))
        self.load_started = now_ms()
        previewed = el("preview").getAttribute("data-url")  # (None when there is no preview)
        if not previewed or not url.rstrip("/").endswith(previewed):
            retire_preview()  # a preview of another series never stays beside this one
        self.drop_all()
        self.show_nothing()
        clear_errors()
        set_state("loading")
        window.renderLog = window.jsObject("[]")
        window.retryLog = window.jsObject("[]")
        el("status").textContent = "Loading study…"
        self.running = True
        self.sync_cancel()
        self.stop_open_timer()
        self.open_timer = window.setTimeout(lambda: self.open_timed_out(generation), OPEN_TIMEOUT_MS)

    def open_timed_out(self, generation):
        if generation == self.state.generation and self.state.series is None and self.running:
            window.engine.send(js({"type": "cancel", "generation": generation}))
            self.on_open_failed({"generation": generation, "url": self.state.url,
                                 "message": "timed out after %d s" % (OPEN_TIMEOUT_MS // 1000)}, None)

    def stop_open_timer(self):
        if self.open_timer is not None:
            window.clearTimeout(self.open_timer)
            self.open_timer = None

    def cancel(self):
        if self.running:
            self.stop_open_timer()
            window.engine.send(js({"type": "cancel", "generation": self.state.generation}))
            if self.state.series is None:
                self.state.fail(self.state.generation, "cancelled")
                self.show_nothing()

    def sync_cancel(self):
        el("cancel").hidden = not self.running

    def active_config(self):
        return self.visit_config if self.visit_config is not None else self.config_text

    # ---- pixels held ----
    def forget_key(self, key):
        self.renderer.drop(key)
        self.buffers.pop(key, None)

    def keep_reduced(self, old, small):
        """Upload the reduced copy of an image evicted from full resolution (made in JS from the
        buffer the page holds, a few ms at most for 512x512)."""
        buffer = self.buffers.get(old.key)
        if small is None or buffer is None:
            return
        image = js({"rows": old.rows, "columns": old.columns, "dtype": old.info["dtype"],
                    "samples": old.info.get("samples", 1)})
        image.buffer = buffer
        copy = self.renderer.reduceImage(image, REDUCE_FACTOR)
        self.renderer.upload(small.key, copy)
        self.buffers[small.key] = copy.buffer

    def forget_index(self, index):
        window.engine.send(js({"type": "forget", "generation": self.state.generation, "indices": [index]}))
        self.state.slots[index].timeline.append(("evicted", now_ms() - self.load_started, ""))

    def drop_all(self):
        for key in list(self.buffers):
            self.renderer.drop(key)
        self.buffers = {}
        self.pending_log = []

    def held_buffer(self, index):
        slots = self.state.slots
        if not 0 <= index < len(slots) or slots[index].held is None:
            return None
        return self.buffers.get(slots[index].held.key)

    def held_summary(self):
        held = [s.held.nbytes for s in self.state.slots if s.held is not None]
        return json.dumps({"heldPixelBytes": sum(held), "heldImages": len(held),
                           "heldCounted": self.state.held_bytes,
                           "rendererBytes": int(self.renderer.bytesHeld()) if self.renderer else 0})

    # ---- drawing ----
    def request_draw(self):
        if not self.draw_pending:
            self.draw_pending = True
            window.requestAnimationFrame(self.draw_frame)

    def draw_frame(self, _ts=None):
        self.draw_pending = False
        try:
            self.draw()
        except Exception as exc:  # noqa: BLE001 - a drawing failure must not kill the page
            show_error("Drawing failed: %s" % exc)

    def resize(self):
        vp = el("viewport")
        self.renderer.resize(vp.clientWidth, vp.clientHeight, float(window.devicePixelRatio or 1))

    def draw(self):
        """Draw the slice on screen if what is held is that very image; else a blank canvas."""
        self.resize()
        found = self.state.drawable()
        if found is None:
            self.renderer.clear()
        else:
            retire_preview()
            key, held = found
            self.renderer.draw(key, js(self.state.view()))
            window.pageLog.draw(self.state.index, self.state.index, held.status, held.sop)
            if self.rest_due is not None:  # the first picture is drawn: the rest of "opened" next
                generation = self.rest_due
                window.setTimeout(lambda: self.opened_rest(generation), 0)
        drawn_key = found[0] if found else None
        for key, entry in self.pending_log:
            self.log_render(entry, key == drawn_key)
        self.pending_log = []
        self.update_overlay()

    def log_render(self, entry, drawn):
        entry["drawn"] = drawn
        entry["t_ms"] = round(now_ms() - self.load_started, 1)
        window.pageLog.render(json.dumps(entry))

    def show_nothing(self):
        """No image, no overlay, no badge, no patient block: all at once."""
        if self.renderer is not None:
            self.resize()
            self.renderer.clear()
        for corner in ("overlay-tl", "overlay-tr", "overlay-bl", "overlay-br"):
            el(corner).replaceChildren()
        if not el("preview").hidden:
            set_badge("PREVIEW")  # the start-up preview stays badged as such
        el("study-info").replaceChildren()
        el("series-list").replaceChildren()
        el("wl-preset").replaceChildren()
        el("slider").max = "0"
        el("slider").value = "0"
        self.request_waterfall()

    def displayed_percent(self):
        slot = self.state.current()
        if slot is None:
            return None
        vp = el("viewport")
        w, h = float(vp.clientWidth), float(vp.clientHeight)
        scale = min(w / slot.columns, h / (slot.rows * slot.aspect)) * self.state.zoom
        return scale * float(window.devicePixelRatio or 1) * 100.0

    def update_overlay(self):
        if self.state.current() is None:
            return
        tl, badge, bl, br = self.state.overlay(self.displayed_percent())
        if badge == "LOADING" and not el("preview").hidden:
            badge = "PREVIEW"
        el("overlay-tl").textContent = tl
        set_badge(badge)
        el("overlay-bl").textContent = bl
        el("overlay-br").textContent = br

    def refresh(self):
        self.request_draw()
        self.update_overlay()

    def fill_info(self):
        info = el("study-info")
        info.replaceChildren()
        for name, value in self.state.info:
            dt, dd = document.createElement("dt"), document.createElement("dd")
            dt.textContent, dd.textContent = name, str(value or "-")  # DICOM text stays text
            info.appendChild(dt)
            info.appendChild(dd)

    def fill_window_presets(self):
        select = el("wl-preset")
        select.replaceChildren()
        options = [("Window…", "")]
        slot = self.state.current()
        for i, cw in enumerate(slot.windows if slot else []):
            options.append(("DICOM %d: W%.0f L%.0f" % (i + 1, cw[1], cw[0]), "%s,%s" % (cw[0], cw[1])))
        if self.state.window:
            options.append(("Current", "%s,%s" % self.state.window))
        for label, value in options:
            option = document.createElement("option")
            option.value, option.textContent = value, label
            select.appendChild(option)

    # ---- waterfall ----
    def request_waterfall(self):
        """At most one redraw per WATERFALL_MS: while a big stack streams in, events come faster
        than frames, and each redraw is hundreds of canvas calls from MicroPython."""
        if self.waterfall_pending:
            return
        self.waterfall_pending = True
        wait = WATERFALL_MS - (now_ms() - self.waterfall_at)
        if wait > 0:
            window.setTimeout(self.waterfall_due, int(wait) + 1)
        else:
            window.requestAnimationFrame(self.draw_waterfall)

    def waterfall_due(self, *_):
        window.requestAnimationFrame(self.draw_waterfall)

    def draw_waterfall(self, _ts=None):
        self.waterfall_pending = False
        self.waterfall_at = now_ms()
        from app.ui import controls

        try:
            controls.draw_waterfall(self, el("waterfall"), STATUS_COLOURS)
        except Exception as exc:  # noqa: BLE001
            window.console.error("waterfall:", repr(exc))


PAGE = None


def start():
    global PAGE
    from app.ui import controls

    window.appTimings.uiStartMs = now_ms()
    PAGE = Page(controls.read_params())
    controls.bind(PAGE)
    window.engine.listen(PAGE.on_engine)
