"""Pointer, wheel and key input to viewer actions, without touching the DOM (sans-I/O).

The page glue feeds what the browser reports (coordinates in CSS px relative to the canvas, times
in ms) and applies the actions it gets back; so the same rules are tested in CPython and run on the
page's main thread, which may be MicroPython: hence plain classes, no dataclasses, no typing imports
and no numpy here.

Touch: one finger drags with the current tool ("scroll" slices or "windowlevel"), two fingers pinch
to zoom about their midpoint and pan as the midpoint moves. Mouse: left drag = current tool, right
or shift drag = pan, wheel = slices, ctrl+wheel (also a trackpad pinch) = zoom.
"""

import math

SCROLL = "scroll"
WINDOWLEVEL = "windowlevel"
TOOLS = (SCROLL, WINDOWLEVEL)

#: CSS px of one-finger or left-button travel per slice.
SLICE_STEP_PX = 12.0
#: Wheel delta (px, after the glue has turned lines/pages into px) per slice: one mouse notch.
WHEEL_STEP_PX = 100.0
#: A wheel pause longer than this (ms) forgets the unused part of the last delta.
WHEEL_IDLE_MS = 250.0
#: ctrl+wheel: zoom factor = exp(-dy * this).
ZOOM_PER_WHEEL_PX = 0.002
#: Window/level change per CSS px of drag (in modality units; the glue may scale it per image).
WL_PER_PX = 1.0
#: Fingers must spread or close by this many CSS px before a two-finger drag zooms too, so
#: a pan whose fingers move a little out of step does not wobble the zoom.
PINCH_SLOP_PX = 16.0

KEY_SLICES = {"ArrowUp": -1, "ArrowLeft": -1, "ArrowDown": 1, "ArrowRight": 1,
              "PageUp": -10, "PageDown": 10}
KEY_TOOLS = {"s": SCROLL, "S": SCROLL, "w": WINDOWLEVEL, "W": WINDOWLEVEL}


class Action:
    """A value object: equal when of the same class with the same fields."""

    FIELDS = ()

    def values(self):
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __eq__(self, other):
        return type(other) is type(self) and other.values() == self.values()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        inner = ", ".join(name + "=" + repr(getattr(self, name)) for name in self.FIELDS)
        return type(self).__name__ + "(" + inner + ")"


class ScrollSlices(Action):
    """Move ``delta`` slices (positive: on, towards higher indices)."""

    FIELDS = ("delta",)

    def __init__(self, delta: int):
        self.delta = delta


class WindowLevel(Action):
    """Change the window centre and width by these amounts."""

    FIELDS = ("dcenter", "dwidth")

    def __init__(self, dcenter: float, dwidth: float):
        self.dcenter = dcenter
        self.dwidth = dwidth


class Zoom(Action):
    """Multiply the zoom by ``factor`` keeping the point (cx, cy) in place (None: the centre)."""

    FIELDS = ("factor", "cx", "cy")

    def __init__(self, factor: float, cx: "float | None", cy: "float | None"):
        self.factor = factor
        self.cx = cx
        self.cy = cy


class Pan(Action):
    """Move the image by (dx, dy) CSS px."""

    FIELDS = ("dx", "dy")

    def __init__(self, dx: float, dy: float):
        self.dx = dx
        self.dy = dy


class ToolChanged(Action):
    """The one-finger / left-drag tool is now ``tool`` (the glue shows it)."""

    FIELDS = ("tool",)

    def __init__(self, tool: str):
        self.tool = tool


class _Pointer:
    """One finger, pen or mouse button held down."""

    def __init__(self, x, y, kind, drag):
        self.x = x
        self.y = y
        self.kind = kind
        self.drag = drag  # "tool" or "pan" for a lone pointer


class PointerGestures:
    """Feed ``down``/``move``/``up``/``wheel``/``key``; each returns the list of actions it caused."""

    def __init__(self, tool: str = SCROLL, slice_step_px: float = SLICE_STEP_PX,
                 wheel_step_px: float = WHEEL_STEP_PX, wl_per_px: float = WL_PER_PX):
        if tool not in TOOLS:
            raise ValueError("unknown tool " + repr(tool))
        self.tool = tool
        self.slice_step_px = slice_step_px
        self.wheel_step_px = wheel_step_px
        self.wl_per_px = wl_per_px
        self._pointers = {}
        self._pinched = False  # two pointers were down: the rest of the gesture is not a drag
        self._spread = None  # finger distance the next pinch factor is relative to
        self._zooming = False  # the fingers have spread or closed past the slop
        self._travel = 0.0  # vertical travel not yet turned into slices
        self._wheel = 0.0
        self._wheel_t = None
        self._hover = None  # last mouse position, where ctrl+wheel zooms about

    # -- tool --

    def set_tool(self, tool: str) -> list:
        """Choose the one-finger / left-drag tool; returns [ToolChanged] when it changed."""
        if tool not in TOOLS:
            raise ValueError("unknown tool " + repr(tool))
        if tool == self.tool:
            return []
        self.tool = tool
        self._travel = 0.0
        return [ToolChanged(tool)]

    def toggle_tool(self) -> list:
        return self.set_tool(WINDOWLEVEL if self.tool == SCROLL else SCROLL)

    # -- pointers --

    def down(self, pointer_id: int, x: float, y: float, t: float, kind: str = "mouse",
             button: int = 0, shift: bool = False) -> list:
        """A pointer went down: ``kind`` is the DOM pointerType ("mouse", "touch", "pen"), ``button``
        the DOM button (0 left: the tool; 1 middle or 2 right: pan, as is shift+left)."""
        drag = "pan" if kind == "mouse" and (button == 2 or button == 1 or shift) else "tool"
        self._pointers[pointer_id] = _Pointer(x, y, kind, drag)
        if len(self._pointers) == 2:
            first, second = list(self._pointers.values())
            self._spread = _midpoint_and_spread(first.x, first.y, second.x, second.y)[2]
            self._zooming = False
            self._pinched = True
        self._travel = 0.0
        return []

    def move(self, pointer_id: int, x: float, y: float, t: float) -> list:
        """A pointer moved (also a hovering mouse, which only records where it is)."""
        pointer = self._pointers.get(pointer_id)
        if pointer is None or pointer.kind == "mouse":
            self._hover = (x, y)
        if pointer is None:
            return []
        if len(self._pointers) >= 2:
            return self._two_finger_move(pointer, x, y)
        dx, dy = x - pointer.x, y - pointer.y
        pointer.x, pointer.y = x, y
        if self._pinched or (dx == 0 and dy == 0):
            return []
        if pointer.drag == "pan":
            return [Pan(dx, dy)]
        if self.tool == WINDOWLEVEL:
            return [WindowLevel(dy * self.wl_per_px, dx * self.wl_per_px)]
        return self._scroll_by(dy)

    def up(self, pointer_id: int, t: float) -> list:
        """A pointer was lifted or cancelled; the gesture ends when the last one is."""
        self._pointers.pop(pointer_id, None)
        if not self._pointers:
            self._pinched = False
            self._travel = 0.0
        return []

    def cancel(self) -> list:
        """Forget every pointer (focus lost, series changed)."""
        self._pointers = {}
        self._pinched = False
        self._travel = 0.0
        return []

    def _scroll_by(self, dy):
        self._travel += dy
        steps = int(self._travel / self.slice_step_px)  # truncates towards zero
        if steps == 0:
            return []
        self._travel -= steps * self.slice_step_px
        return [ScrollSlices(steps)]

    def _two_finger_move(self, pointer, x, y):
        others = [p for p in self._pointers.values() if p is not pointer]
        other = others[0]
        before = _midpoint_and_spread(pointer.x, pointer.y, other.x, other.y)
        pointer.x, pointer.y = x, y
        after = _midpoint_and_spread(x, y, other.x, other.y)
        actions = []
        spread = after[2]
        if not self._zooming and abs(spread - self._spread) > PINCH_SLOP_PX:
            self._zooming = True
        if self._zooming and self._spread > 0 and spread > 0 and spread != self._spread:
            actions.append(Zoom(spread / self._spread, after[0], after[1]))
            self._spread = spread
        dx, dy = after[0] - before[0], after[1] - before[1]
        if dx != 0 or dy != 0:
            actions.append(Pan(dx, dy))
        return actions

    # -- wheel and keys --

    def wheel(self, dx: float, dy: float, ctrl: bool, t: float, x: "float | None" = None,
              y: "float | None" = None) -> list:
        """A wheel event in px; with ctrl (or a trackpad pinch) it zooms about (x, y)."""
        if ctrl:
            if dy == 0:
                return []
            if x is None and self._hover is not None:
                x, y = self._hover
            return [Zoom(math.exp(-dy * ZOOM_PER_WHEEL_PX), x, y)]
        fresh = self._wheel_t is None or t - self._wheel_t > WHEEL_IDLE_MS
        if fresh:
            self._wheel = 0.0
        self._wheel_t = t
        self._wheel += dy
        steps = int(self._wheel / self.wheel_step_px)
        if steps == 0 and fresh and abs(dy) >= self.wheel_step_px / 2:
            steps = 1 if dy > 0 else -1  # a notch smaller than the step still moves one slice
        if steps == 0:
            return []
        self._wheel -= steps * self.wheel_step_px
        return [ScrollSlices(steps)]

    def key(self, name: str) -> list:
        """A key (DOM ``KeyboardEvent.key``): arrows and pages scroll, "w"/"s" choose the tool."""
        if name in KEY_SLICES:
            return [ScrollSlices(KEY_SLICES[name])]
        if name in KEY_TOOLS:
            return self.set_tool(KEY_TOOLS[name])
        if name == "t" or name == "T":
            return self.toggle_tool()
        if name == "Escape":
            return self.cancel()
        return []


def _midpoint_and_spread(x1, y1, x2, y2):
    dx, dy = x2 - x1, y2 - y1
    return ((x1 + x2) / 2.0, (y1 + y2) / 2.0, math.sqrt(dx * dx + dy * dy))
