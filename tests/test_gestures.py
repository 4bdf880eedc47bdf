"""app/ui/gestures.py: pointer, wheel and key input become the viewer's actions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ui.gestures import (SLICE_STEP_PX, WHEEL_STEP_PX, Pan, PointerGestures, ScrollSlices,
                             ToolChanged, WindowLevel, Zoom)

coordinate = st.floats(-500, 1500, allow_nan=False)


def drag(gestures: PointerGestures, path, pointer=1, kind="touch", **down) -> list:
    """Down at the first point, move through the rest, up; all actions in order."""
    (x, y), t = path[0], 0.0
    actions = gestures.down(pointer, x, y, t, kind, **down)
    for x, y in path[1:]:
        t += 16
        actions += gestures.move(pointer, x, y, t)
    return actions + gestures.up(pointer, t + 16)


def slices(actions) -> int:
    assert all(isinstance(a, ScrollSlices) for a in actions), actions
    return sum(a.delta for a in actions)


def pinch(gestures: PointerGestures, a0, b0, a1, b1, steps=40) -> list:
    """Two touches from (a0, b0) to (a1, b1) in ``steps`` alternating moves."""
    actions = gestures.down(1, *a0, 0, "touch") + gestures.down(2, *b0, 1, "touch")
    for i in range(1, steps + 1):
        f = i / steps
        actions += gestures.move(1, a0[0] + (a1[0] - a0[0]) * f, a0[1] + (a1[1] - a0[1]) * f, 10 * i)
        actions += gestures.move(2, b0[0] + (b1[0] - b0[0]) * f, b0[1] + (b1[1] - b0[1]) * f, 10 * i + 5)
    return actions + gestures.up(1, 100) + gestures.up(2, 101)


@settings(max_examples=80, deadline=None)
@given(x=coordinate, y=coordinate, dy=st.floats(-900, 900, allow_nan=False),
       pieces=st.integers(1, 30))
def test_one_finger_vertical_swipe_scrolls_by_its_length(x, y, dy, pieces):
    path = [(x, y + dy * i / pieces) for i in range(pieces + 1)]
    total = slices(drag(PointerGestures(), path))
    exact = dy / SLICE_STEP_PX
    assert abs(total - math.trunc(exact)) <= (1 if abs(exact - round(exact)) < 1e-6 else 0)
    assert total == 0 or (total > 0) == (dy > 0)


def test_a_slow_swipe_adds_up_small_moves():
    gestures = PointerGestures()
    path = [(100, 100 + i) for i in range(0, 61)]  # 1 px at a time, 60 px down
    assert slices(drag(gestures, path)) == int(60 / SLICE_STEP_PX)
    assert slices(drag(gestures, [(100, 300 - i) for i in range(0, 61)])) == -int(60 / SLICE_STEP_PX)


def test_tool_toggle_makes_one_finger_drag_window_level():
    gestures = PointerGestures()
    assert gestures.key("w") == [ToolChanged("windowlevel")]
    assert gestures.key("w") == []
    actions = drag(gestures, [(10, 10), (30, 15), (30, 45)])
    assert actions == [WindowLevel(5.0, 20.0), WindowLevel(30.0, 0.0)]
    assert gestures.toggle_tool() == [ToolChanged("scroll")]
    assert slices(drag(gestures, [(10, 10), (10, 10 + 3 * SLICE_STEP_PX)])) == 3
    with pytest.raises(ValueError):
        gestures.set_tool("lasso")


@settings(max_examples=80, deadline=None)
@given(cx=coordinate, cy=coordinate, angle=st.floats(0, 2 * math.pi),
       start=st.floats(40, 200), grow=st.floats(1.3, 4))
def test_spreading_two_fingers_zooms_in_about_their_midpoint(cx, cy, angle, start, grow):
    ux, uy = math.cos(angle), math.sin(angle)
    a0, b0 = (cx - ux * start, cy - uy * start), (cx + ux * start, cy + uy * start)
    end = start * grow
    a1, b1 = (cx - ux * end, cy - uy * end), (cx + ux * end, cy + uy * end)
    actions = pinch(PointerGestures(), a0, b0, a1, b1)
    zooms = [a for a in actions if isinstance(a, Zoom)]
    assert zooms and all(z.factor > 1 for z in zooms)
    assert math.prod(z.factor for z in zooms) == pytest.approx(grow, rel=1e-6)
    for z in zooms:  # every step keeps (roughly) the midpoint: alternate moves wobble it
        assert math.hypot(z.cx - cx, z.cy - cy) <= (end - start) / 40 + 1e-6
    pans = [a for a in actions if isinstance(a, Pan)]
    assert sum(p.dx for p in pans) == pytest.approx(0, abs=1e-6)
    assert sum(p.dy for p in pans) == pytest.approx(0, abs=1e-6)
    assert not any(isinstance(a, (ScrollSlices, WindowLevel)) for a in actions)


def test_pinching_fingers_together_zooms_out():
    actions = pinch(PointerGestures(), (100, 100), (300, 300), (180, 180), (220, 220))
    factor = math.prod(a.factor for a in actions if isinstance(a, Zoom))
    assert factor == pytest.approx(0.2)


@settings(max_examples=60, deadline=None)
@given(dx=st.floats(-400, 400, allow_nan=False), dy=st.floats(-400, 400, allow_nan=False),
       tool=st.sampled_from(["scroll", "windowlevel"]))
def test_two_finger_parallel_drag_pans(dx, dy, tool):
    actions = pinch(PointerGestures(tool=tool), (100, 200), (160, 260), (100 + dx, 200 + dy),
                    (160 + dx, 260 + dy))
    assert all(isinstance(a, Pan) for a in actions), actions
    assert sum(a.dx for a in actions) == pytest.approx(dx, abs=1e-6)
    assert sum(a.dy for a in actions) == pytest.approx(dy, abs=1e-6)


def test_the_finger_left_after_a_pinch_does_not_scroll():
    gestures = PointerGestures()
    gestures.down(1, 100, 100, 0, "touch")
    gestures.down(2, 200, 100, 5, "touch")
    gestures.up(2, 50)
    assert gestures.move(1, 100, 400, 60) == []
    gestures.up(1, 70)
    assert slices(drag(gestures, [(100, 100), (100, 100 + 2 * SLICE_STEP_PX)])) == 2


def test_mouse_buttons_and_shift():
    gestures = PointerGestures(tool="windowlevel")
    assert drag(gestures, [(0, 0), (7, 3)], kind="mouse", button=0) == [WindowLevel(3.0, 7.0)]
    assert drag(gestures, [(0, 0), (7, 3)], kind="mouse", button=2) == [Pan(7, 3)]
    assert drag(gestures, [(0, 0), (-4, 9)], kind="mouse", shift=True) == [Pan(-4, 9)]
    assert gestures.move(1, 50, 60, 500) == []  # hovering: nothing to do


def test_wheel_scrolls_one_slice_per_notch_and_adds_up_trackpad_deltas():
    gestures = PointerGestures()
    assert gestures.wheel(0, WHEEL_STEP_PX, False, 0) == [ScrollSlices(1)]
    assert gestures.wheel(0, -WHEEL_STEP_PX, False, 1000) == [ScrollSlices(-1)]
    assert gestures.wheel(0, 60, False, 2000) == [ScrollSlices(1)]  # a small notch still moves
    assert gestures.wheel(0, 3 * WHEEL_STEP_PX, False, 3000) == [ScrollSlices(3)]
    trackpad = [gestures.wheel(0, 4, False, 4000 + 10 * i) for i in range(100)]
    assert sum(slices(a) for a in trackpad) == int(400 / WHEEL_STEP_PX)
    assert gestures.wheel(0, 0, False, 9000) == []


def test_ctrl_wheel_zooms_about_the_pointer():
    gestures = PointerGestures()
    (zoom_in,) = gestures.wheel(0, -100, True, 0, 40, 50)
    assert zoom_in.factor > 1 and (zoom_in.cx, zoom_in.cy) == (40, 50)
    gestures.move(1, 300, 200, 5)  # hover
    (zoom_out,) = gestures.wheel(0, 100, True, 10)
    assert zoom_out.factor == pytest.approx(1 / zoom_in.factor)
    assert (zoom_out.cx, zoom_out.cy) == (300, 200)
    assert PointerGestures().wheel(0, 50, True, 0)[0].cx is None  # no position known: the centre


def test_keys():
    gestures = PointerGestures()
    assert gestures.key("ArrowDown") == [ScrollSlices(1)]
    assert gestures.key("ArrowUp") == [ScrollSlices(-1)]
    assert gestures.key("PageDown") == [ScrollSlices(10)]
    assert gestures.key("t") == [ToolChanged("windowlevel")]
    assert gestures.key("s") == [ToolChanged("scroll")]
    assert gestures.key("q") == []
    gestures.down(1, 0, 0, 0, "touch")
    gestures.key("Escape")
    assert gestures.move(1, 0, 100, 10) == []


def test_actions_compare_and_print_as_values():
    assert Zoom(2.0, 1, 2) == Zoom(2.0, 1, 2) and Zoom(2.0, 1, 2) != Zoom(2.0, 1, 3)
    assert Pan(1, 2) != WindowLevel(1, 2)
    assert repr(ScrollSlices(-3)) == "ScrollSlices(delta=-3)"


# -- the same module under MicroPython (PyScript's "mpy" main thread) --

SCENARIO = """
from app.ui.gestures import PointerGestures


def show(actions):
    out = []
    for a in actions:
        fields = []
        for name in a.FIELDS:
            v = getattr(a, name)
            fields.append("%.6f" % v if isinstance(v, float) else repr(v))
        out.append(type(a).__name__ + "(" + ",".join(fields) + ")")
    print(" ".join(out) if out else "-")


g = PointerGestures()
show(g.down(1, 100, 100, 0, "touch"))
for i in range(1, 30):
    show(g.move(1, 100, 100 + 3 * i, 16 * i))
show(g.up(1, 500))
show(g.key("t"))
show(g.down(7, 10, 10, 600, "mouse", 0, False))
show(g.move(7, 25.5, 3, 610))
show(g.up(7, 620))
show(g.down(1, 100, 100, 700, "touch") + g.down(2, 200, 100, 701, "touch"))
for i in range(1, 20):
    show(g.move(1, 100 - 4 * i, 100 + i, 700 + 10 * i) + g.move(2, 200 + 4 * i, 100 + i, 705 + 10 * i))
show(g.up(1, 900) + g.up(2, 901))
for i in range(12):
    show(g.wheel(0, 7 * i - 20, i % 4 == 0, 1000 + 40 * i, 50, 60))
show(g.key("ArrowDown") + g.key("PageUp") + g.key("s") + g.key("x"))
"""


def micropython_runtime():
    """MicroPython's WebAssembly port from npm (@micropython/micropython-webassembly-pyscript):
    $MICROPYTHON_MJS, or a micropython.mjs the runtime set-up laid out under static/."""
    import os
    import shutil
    from pathlib import Path

    project = Path(__file__).resolve().parent.parent
    candidates = [os.environ.get("MICROPYTHON_MJS", "")]
    candidates += [str(p) for p in sorted((project / "static").glob("**/micropython.mjs"))]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if not found or not shutil.which("node"):
        pytest.skip("MicroPython not set up: `npm pack @micropython/micropython-webassembly-pyscript`, "
                    "unpack it and set MICROPYTHON_MJS to its micropython.mjs")
    return project, found


def test_the_module_runs_unchanged_under_micropython():
    import contextlib
    import io
    import subprocess

    project, runtime = micropython_runtime()
    run = subprocess.run(["node", str(project / "tests/pages/micropython_run.mjs"), runtime,
                          str(project), "app/ui/gestures.py"], input=SCENARIO, text=True,
                         capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    cpython = io.StringIO()
    with contextlib.redirect_stdout(cpython):
        exec(compile(SCENARIO, "scenario", "exec"), {})
    assert run.stdout == cpython.getvalue()
    for kind in ("ScrollSlices(1)", "ScrollSlices(-10)", "WindowLevel(", "Zoom(", "Pan(", "ToolChanged("):
        assert kind in run.stdout
