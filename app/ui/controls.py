"""The page's controls (MicroPython): sidebar and configuration, keys, mouse and touch, the URL.

Input never does heavy work: it changes the view state and asks for one draw per animation frame.
"""

import json
import math

from pyscript import document, window

from app.ui import gestures
from app.ui.glue import (CONFIG_STORAGE_KEY, DEFAULT_CACHE_MB, VIEWER_PRESETS, clear_errors, el, js,
                         guarded, now_ms, on, set_state, show_error)

SHORTCUTS = [("↑ ↓ ← → / wheel", "previous / next image"), ("PgUp PgDn", "5 images"),
             ("Home End", "first / last image"), ("drag", "window/level (or scroll, per the tool)"),
             ("shift/right drag, two fingers", "pan"), ("ctrl+wheel, pinch, + -", "zoom"),
             ("t / w / s", "drag tool: toggle / window-level / scroll"),
             ("space", "cine"), ("i", "invert"), ("f", "fit"), ("r", "reset"), ("?", "this help"),
             ("Esc", "close menus and help")]


def read_params():
    """The page URL's query as a dict of first values (URLSearchParams does the decoding)."""
    params = {}
    search = window.URLSearchParams.new(window.location.search)
    for key in ("url", "noload", "config", "cacheMB", "slice", "wl", "zoom", "invert"):
        if search.has(key):
            params[key] = str(search.get(key))
    return params


def safe_study_url(text):
    """An absolute http(s) URL for a pasted study URL; anything else (javascript:, data:...) is refused."""
    text = (text or "").strip()
    if not text:
        raise ValueError("Paste a study or series URL first.")
    try:
        url = window.URL.new(text, window.location.href)
    except Exception:  # noqa: BLE001
        raise ValueError("Not a URL: %s" % text)
    if url.protocol not in ("http:", "https:") or not url.host:
        raise ValueError("Only http and https study URLs are allowed, not %s" % (url.protocol or text))
    return str(url.href)


# ---- start-up -----------------------------------------------------------------------------------
def bind(page):
    window.viewerUi = js({})
    window.viewerUi.heldBuffer = page.held_buffer
    window.viewerUi.heldSummary = page.held_summary
    try:
        mb = int(page.params.get("cacheMB", DEFAULT_CACHE_MB))
        if mb < 1:
            raise ValueError
        page.state.budget = mb << 20
    except ValueError:
        show_error("cacheMB=%s is not a whole number of megabytes; using the default (%d MB)"
                   % (page.params.get("cacheMB"), DEFAULT_CACHE_MB))
    window.rendererModule.then(guarded(lambda module: renderer_ready(page, module)))
    bind_input(page)


def renderer_ready(page, module):
    page.renderer = module.createRenderer(el("canvas"), js({"mode": window.renderMode()}))
    window.viewerRenderer = page.renderer
    became_ready(page)


def became_ready(page):
    """Both the engine (presets arrived) and the renderer are up: the page is ready."""
    if page.renderer is None or not page.presets or el("load").disabled is False:
        return
    el("load").disabled = False
    window.appTimings.readyMs = now_ms()
    el("status").textContent = "Ready"
    set_state("ready")
    window.demoList.then(guarded(lambda entries: fill_demo_picker(page, entries)))
    url = page.params.get("url")
    if url:
        el("url").value = url
    if url and "noload" not in page.params:
        load_url(page, url, view_from_params(page))


def view_from_params(page):
    """slice, wl, zoom, invert from the URL: applied once the series is open."""
    view = {}
    for key in ("slice", "wl", "zoom", "invert"):
        if key in page.params:
            view[key] = page.params[key]
    return view or None


def load_url(page, text, view=None):
    try:
        url = safe_study_url(text)
    except ValueError as exc:
        show_error(str(exc))
        return
    page.pending_view = view
    index = None
    if view and "slice" in view:
        try:
            index = int(view["slice"]) - 1
        except ValueError:
            show_error("slice=%s is not an image number" % view["slice"])
    page.start_load(url, index)


def fill_demo_picker(page, entries):
    page.demo = [(str(e.url), str(e.name)) for e in entries]
    if not page.demo:
        return
    select = el("series")
    select.replaceChildren(option_group("Demo studies", page.demo))
    select.hidden = False
    select.value = el("url").value  # the series on screen, when it is one of them
    if not el("url").value:
        el("url").value = entries[0].url
        if "noload" not in page.params and "url" not in page.params:
            load_url(page, entries[0].url)


def series_chosen(page, url):
    """A series from the menu or the study browser: load it, keys back to the image."""
    el("url").value = url
    load_url(page, url)
    el("viewport").focus()


def fill_series(page, m):
    """The open study's series: the series menu and the browser list (with the tree's rendered
    thumbnail where it has one; the browser decodes it)."""
    select, box = el("series"), el("series-list")
    box.replaceChildren()
    choices = []
    for s in m["series"]:
        label = " ".join(x for x in ("#%s" % s["number"] if s["number"] is not None else "",
                                     s["description"], "(%s, %s images)" % (s["modality"] or "?",
                                     s["count"] if s["count"] is not None else "?")) if x)
        choices.append((s["url"], label))
        box.appendChild(series_item(page, s, label))
    select.replaceChildren(option_group("This study", choices))
    if page.demo:
        select.appendChild(option_group("Demo studies", page.demo))
    select.hidden = False
    select.value = page.state.url
    for s in m["series"]:
        if page.state.url.endswith(s["uid"]):
            select.value = s["url"]


def option_group(label, choices):
    """An <optgroup> of (value, text) options for the series menu."""
    group = document.createElement("optgroup")
    group.label = label
    for value, text in choices:
        option = document.createElement("option")
        option.value, option.textContent = value, text
        group.appendChild(option)
    return group


def series_item(page, s, label):
    item = document.createElement("button")
    item.type = "button"
    item.className = "series-item" + (" current" if page.state.url.endswith(s["uid"]) else "")
    item.dataset.url = s["url"]
    image = document.createElement("img")
    image.alt = ""
    image.loading = "lazy"
    on(image, "error", lambda e: image.remove())
    image.src = s["url"] + "/thumbnail"
    text = document.createElement("span")
    text.textContent = label
    item.appendChild(image)
    item.appendChild(text)
    on(item, "click", lambda e: series_chosen(page, s["url"]))
    return item


# ---- sidebar: retrieve configuration --------------------------------------------------------------
def pretty_json(value, depth=0):
    """``json.dumps(value, indent=2)`` (MicroPython's json has no ``indent``)."""
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict) and value:
        items = ['%s%s: %s' % (inner, json.dumps(k), pretty_json(v, depth + 1)) for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(inner + pretty_json(v, depth + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


def init_sidebar(page, default):
    select = el("preset")
    select.replaceChildren()
    for name in list(VIEWER_PRESETS) + ["custom"]:
        option = document.createElement("option")
        option.value = name
        option.textContent = VIEWER_PRESETS.get(name, "Custom (edited)")
        select.appendChild(option)
    text, name = None, default
    stored = window.localStorage.getItem(CONFIG_STORAGE_KEY)
    if stored:
        try:
            saved = json.loads(stored)
            text, name = saved["text"], saved.get("preset", "custom")
        except (ValueError, KeyError, TypeError):
            window.localStorage.removeItem(CONFIG_STORAGE_KEY)
    if text is None:
        text = pretty_json(page.presets[default])
    page.config_text = text
    show_config(page, name, text)
    deep_link(page)
    on(select, "change", lambda e: preset_changed(page))
    on(el("apply"), "click", lambda e: apply_config(page))
    on(el("config"), "input", lambda e: setattr(el("config-status"), "textContent", "edited"))


def show_config(page, name, text):
    el("preset").value = name
    el("config").value = text
    el("preset-description").textContent = page.descriptions.get(name, "Your own configuration.")


def deep_link(page):
    """config= (a preset name or JSON): this visit only, never saved as the default."""
    value = page.params.get("config")
    if value is None:
        return
    if value in page.presets:
        page.visit_config = pretty_json(page.presets[value])
        show_config(page, value, page.visit_config)
    elif value.strip().startswith("{"):
        page.visit_config = value
        show_config(page, "custom", value)
    else:
        show_error("Unknown preset '%s' in config=; known: %s. Using %s." % (
            value, ", ".join(sorted(page.presets)), el("preset").value))
        return
    el("config-status").textContent = "from the link (this visit only)"


def preset_changed(page):
    name = el("preset").value
    if name in page.presets:
        el("config").value = pretty_json(page.presets[name])
    el("preset-description").textContent = page.descriptions.get(name, "Your own configuration.")
    apply_config(page)


def apply_config(page):
    """Validate in the worker; on error keep the old configuration and say where it is wrong."""
    text = el("config").value
    window.engine.call("checkConfig", text).then(guarded(lambda answer: config_checked(page, text, answer)))


def config_checked(page, text, answer):
    result = json.loads(answer)
    box = el("config-error")
    if not result["ok"]:
        box.textContent = "Not applied: %s" % result["error"]
        box.hidden = False
        el("config-status").textContent = "invalid, previous configuration kept"
        return
    box.hidden = True
    box.textContent = ""
    name = el("preset").value
    if name in page.presets and json.loads(text) != page.presets[name]:
        name = "custom"
        show_config(page, name, text)
    page.config_text, page.visit_config = text, None
    el("preset-description").textContent = page.descriptions.get(name, "Your own configuration.")
    window.localStorage.setItem(CONFIG_STORAGE_KEY, json.dumps({"text": text, "preset": name}))
    el("config-status").textContent = "applied"
    if page.state.url:
        page.start_load(page.state.url, page.state.index if page.state.slots else None)


# ---- input ----------------------------------------------------------------------------------------
def bind_input(page):
    vp = el("viewport")
    pointers = page.pointers = Pointers(page)
    on(vp, "wheel", pointers.wheel, passive=False)
    on(document, "keydown", lambda e: key(page, e))
    on(vp, "pointerdown", pointers.down)
    on(vp, "pointermove", pointers.move)
    on(vp, "pointerup", pointers.up)
    on(vp, "pointercancel", pointers.up)
    on(vp, "contextmenu", lambda e: e.preventDefault())
    on(vp, "dblclick", lambda e: fit(page))
    on(el("slider"), "input", lambda e: go_to(page, int(el("slider").value)))
    on(el("slider"), "change", lambda e: el("viewport").focus())
    on(el("play"), "click", lambda e: toggle_cine(page))
    on(el("fit"), "click", lambda e: fit(page))
    on(el("reset"), "click", lambda e: reset(page))
    on(el("invert"), "click", lambda e: toggle_invert(page))
    on(el("tool"), "click", lambda e: toggle_tool(page))
    on(el("wl-preset"), "change", lambda e: window_preset(page))
    on(el("cancel"), "click", lambda e: page.cancel())
    on(el("drawer"), "click", lambda e: toggle_drawer())
    on(el("help"), "click", lambda e: toggle_help())
    on(el("load-form"), "submit", lambda e: submit(page, e))
    on(el("series"), "change", lambda e: series_chosen(page, el("series").value))
    # (pyscript's ``window`` passed as an argument loses its ``this``: the document's view does not)
    on(document.defaultView, "resize", lambda e: (page.request_draw(), page.request_waterfall()))
    on(document.defaultView, "popstate", lambda e: from_history(page))


def submit(page, event):
    event.preventDefault()
    load_url(page, el("url").value)
    el("viewport").focus()


def go_to(page, index):
    near = page.state.go_to(index)
    if near is None:
        return
    el("slider").value = str(page.state.index)
    gen = page.state.generation
    window.engine.send(js({"type": "current", "generation": gen, "index": page.state.index}))
    if near:
        window.engine.send(js({"type": "request", "generation": gen, "indices": near}))
    page.refresh()
    remember(page)


def step(page, delta, wrap=False):
    n = len(page.state.slots)
    if n:
        go_to(page, (page.state.index + delta) % n if wrap else page.state.index + delta)


def fit(page):
    page.state.zoom, page.state.pan = 1.0, (0.0, 0.0)
    page.refresh()
    remember(page)


def reset(page):
    slot = page.state.current()
    page.state.reset_display()
    if slot is not None and slot.windows:
        page.state.window = (float(slot.windows[0][0]), float(slot.windows[0][1]))
    elif slot is not None and slot.held is not None and slot.held.info.get("window"):
        page.state.window = tuple(slot.held.info["window"])
    page.refresh()
    remember(page)


def toggle_invert(page):
    page.state.invert = not page.state.invert
    page.refresh()
    remember(page)


def toggle_tool(page):
    page.pointers.apply(page.pointers.gestures.toggle_tool())


def window_preset(page):
    value = el("wl-preset").value
    if value:
        c, w = value.split(",")
        page.state.window = (float(c), float(w))
        page.refresh()
        remember(page)
    el("viewport").focus()


def toggle_cine(page):
    if page.cine is not None:
        window.clearInterval(page.cine)
        page.cine = None
        el("play").textContent = "▶"
        return
    page.cine = window.setInterval(lambda: step(page, 1, True), 100)
    el("play").textContent = "❚❚"


def toggle_drawer():
    body = document.body
    body.classList.toggle("drawer-closed")
    el("drawer").setAttribute("aria-expanded", "false" if body.classList.contains("drawer-closed") else "true")
    window.dispatchEvent(window.Event.new("resize"))


def toggle_help(show=None):
    box = el("shortcuts")
    if not box.childElementCount:
        for keys, what in SHORTCUTS:
            dt, dd = document.createElement("dt"), document.createElement("dd")
            dt.textContent, dd.textContent = keys, what
            box.appendChild(dt)
            box.appendChild(dd)
    box.hidden = (not box.hidden) if show is None else not show


def zoom_at(page, factor, event=None):
    cx = cy = 0.0
    if event is not None:
        box = el("viewport").getBoundingClientRect()
        cx = float(event.clientX) - (box.left + box.width / 2)
        cy = float(event.clientY) - (box.top + box.height / 2)
    page.state.zoom_by(factor, cx, cy)
    page.refresh()


KEYS = {
    "ArrowDown": lambda p: step(p, 1), "ArrowRight": lambda p: step(p, 1),
    "ArrowUp": lambda p: step(p, -1), "ArrowLeft": lambda p: step(p, -1),
    "PageDown": lambda p: step(p, 5), "PageUp": lambda p: step(p, -5),
    "Home": lambda p: go_to(p, 0), "End": lambda p: go_to(p, len(p.state.slots) - 1),
    " ": toggle_cine, "i": toggle_invert, "r": reset, "f": fit,
    "+": lambda p: zoom_at(p, 1.25), "=": lambda p: zoom_at(p, 1.25), "-": lambda p: zoom_at(p, 0.8),
    "?": lambda p: toggle_help(), "Escape": lambda p: toggle_help(False),
    "t": toggle_tool, "w": lambda p: p.pointers.apply(p.pointers.gestures.set_tool(gestures.WINDOWLEVEL)),
    "s": lambda p: p.pointers.apply(p.pointers.gestures.set_tool(gestures.SCROLL)),
}


def key(page, event):
    target = event.target
    tag = str(target.tagName) if target is not None and target.tagName else ""
    if tag in ("INPUT", "TEXTAREA", "SELECT") and target.id != "slider":
        return
    action = KEYS.get(str(event.key))
    if action is not None and not (event.ctrlKey or event.metaKey or event.altKey):
        event.preventDefault()
        action(page)


class Pointers:
    """Mouse, pen and touch on the viewport through app/ui/gestures.py (one finger or left drag:
    the tool; two fingers: pinch-zoom and pan; right/shift drag: pan; wheel: slices)."""

    def __init__(self, page):
        self.page = page
        coarse = window.matchMedia("(pointer: coarse)").matches
        self.gestures = gestures.PointerGestures(tool=gestures.SCROLL if coarse else gestures.WINDOWLEVEL)
        show_tool(self.gestures.tool)

    def local(self, event):
        box = el("viewport").getBoundingClientRect()
        return float(event.clientX) - box.left, float(event.clientY) - box.top

    def down(self, event):
        vp = el("viewport")
        vp.focus()
        vp.setPointerCapture(event.pointerId)
        x, y = self.local(event)
        self.apply(self.gestures.down(event.pointerId, x, y, float(event.timeStamp),
                                      str(event.pointerType), int(event.button), bool(event.shiftKey)))

    def move(self, event):
        x, y = self.local(event)
        self.apply(self.gestures.move(event.pointerId, x, y, float(event.timeStamp)))

    def up(self, event):
        self.gestures.up(event.pointerId, float(event.timeStamp))
        remember(self.page)

    def wheel(self, event):
        event.preventDefault()
        dy = float(event.deltaY) * (16.0 if event.deltaMode == 1 else 1.0)
        x, y = self.local(event)
        self.apply(self.gestures.wheel(float(event.deltaX), dy, bool(event.ctrlKey or event.metaKey),
                                       float(event.timeStamp), x, y))

    def apply(self, actions):
        """Carry out the recognizer's actions on the view state; one draw for all of them."""
        page, state = self.page, self.page.state
        changed = False
        for action in actions:
            kind = type(action).__name__
            if kind == "ScrollSlices":
                step(page, action.delta)
            elif kind == "WindowLevel":
                w = state.window[1] if state.window else 4096.0
                sensitivity = max(w, 16.0) / 256.0
                state.window_by(action.dcenter * sensitivity, action.dwidth * sensitivity)
                changed = True
            elif kind == "Zoom":
                box = el("viewport")
                cx = (action.cx if action.cx is not None else box.clientWidth / 2) - box.clientWidth / 2
                cy = (action.cy if action.cy is not None else box.clientHeight / 2) - box.clientHeight / 2
                state.zoom_by(action.factor, cx, cy)
                changed = True
            elif kind == "Pan":
                state.pan_by(action.dx, action.dy)
                changed = True
            elif kind == "ToolChanged":
                show_tool(action.tool)
        if changed:
            page.refresh()


def show_tool(tool):
    button = el("tool")
    button.dataset.tool = tool
    button.textContent = "Tool: scroll" if tool == gestures.SCROLL else "Tool: W/L"


# ---- the view in the page's URL (back/forward) -----------------------------------------------------
def remember(page):
    """Series, slice, window, zoom and preset in the URL; one history entry per series."""
    state = page.state
    if not state.slots:
        return
    search = window.URLSearchParams.new(window.location.search)
    series_changed = search.get("url") != state.url
    search.set("url", state.url)
    search.set("slice", str(state.index + 1))
    if state.window:
        search.set("wl", "%.0f,%.0f" % (state.window[1], state.window[0]))
    search.set("zoom", "%.2f" % state.zoom)
    if state.invert:
        search.set("invert", "1")
    else:
        search.delete("invert")
    search.delete("noload")
    href = "?" + str(search.toString())
    if series_changed:
        window.history.pushState(js({"url": state.url}), "", href)
    else:
        window.history.replaceState(js({"url": state.url}), "", href)


def from_history(page):
    page.params = read_params()
    url = page.params.get("url")
    if url and url != page.state.url:
        el("url").value = url
        load_url(page, url, view_from_params(page))
    elif url:
        apply_view(page, view_from_params(page) or {})


def apply_view(page, view):
    """slice/wl/zoom/invert from a link, applied to the open series."""
    state = page.state
    try:
        if "wl" in view:
            w, c = view["wl"].split(",")
            state.window = (float(c), float(w))
        if "zoom" in view:
            state.zoom = max(0.05, min(40.0, float(view["zoom"])))
        state.invert = view.get("invert") == "1"
        if "slice" in view:
            go_to(page, int(view["slice"]) - 1)
    except ValueError:
        show_error("Ignored a view setting in the link that is not a number")
    page.refresh()


# ---- waterfall ------------------------------------------------------------------------------------
def draw_waterfall(page, canvas, colours):
    """Each slice's requests and results on a time axis. The canvas calls go to JS as one list
    (window.drawOps): one call from MicroPython per canvas call was ~100 ms for 174 lanes."""
    dpr = float(window.devicePixelRatio or 1)
    width, height = int(canvas.clientWidth * dpr), int(canvas.clientHeight * dpr)
    if width <= 0 or height <= 0:
        return
    canvas.width, canvas.height = width, height
    ops = [["r", "#15171a", 0, 0, width, height]]
    rows = [(i, s) for i, s in enumerate(page.state.slots) if s.timeline]
    if rows:
        _waterfall_ops(ops, page.state.index, rows, width, height, dpr, colours)
    window.drawOps(canvas, json.dumps(ops))


def _waterfall_ops(ops, current, rows, width, height, dpr, colours):
    left, axis_h = 44 * dpr, 16 * dpr
    # the lanes that fit (2 px each at least), around the slice on screen
    fit = max(1, int((height - axis_h) // (2.0 * dpr)))
    if len(rows) > fit:
        at = next((n for n, (i, _) in enumerate(rows) if i >= current), len(rows) - 1)
        first = max(0, min(at - fit // 2, len(rows) - fit))
        rows = rows[first:first + fit]
    t_end = max(max(t for _, t, _ in s.timeline) for _, s in rows) * 1.05 + 1
    lane = max(2.0, min(14 * dpr, (height - axis_h) / len(rows)))
    scale = (width - left - 6 * dpr) / t_end
    ops.append(["f", "%dpx monospace" % int(10 * dpr)])
    mark_y, mark_h = (1, max(1.0, lane - 2)) if lane > 4 else (0, lane)
    for row, (index, slot) in enumerate(rows):
        y = row * lane
        times = [t for _, t, _ in slot.timeline]
        start, end = min(times), max(times)
        ops.append(["r", "#666" if index == current else "#444", left + start * scale, y + lane * 0.3,
                    max(1.0, (end - start) * scale), lane * 0.4])
        for kind, t, _label in slot.timeline:
            ops.append(["r", colours.get(kind, "#ccc"), left + t * scale - dpr, y + mark_y, 3 * dpr, mark_h])
        if lane >= 9 * dpr:
            ops.append(["t", "#9aa0a6", "#%d" % (index + 1), 4 * dpr, y + lane * 0.8])
    step_ms = 10 ** math.floor(math.log10(max(t_end, 1))) / 2
    t = 0.0
    while t <= t_end:
        x = left + t * scale
        ops.append(["r", "#9aa0a6", x, height - axis_h, 1, 4 * dpr])
        ops.append(["t", "#9aa0a6", "%.0f ms" % t if t < 1000 else "%.1f s" % (t / 1000), x + 2, height - 3 * dpr])
        t += step_ms
