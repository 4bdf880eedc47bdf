"""The viewer's state rules (app/ui/view_state.py) in CPython, and the same scenario under MicroPython.

Fast: no browser, no server. The browser tests (test_page_*.py) check the same rules end to end.
"""

from __future__ import annotations

import contextlib
import io
import subprocess

from app.ui.view_state import ViewState, image_key, rank_above

SERIES_A, SERIES_B = "1.2.3", "9.8.7"


def opened(state: ViewState, series: str, n: int = 3, windows=()) -> dict:
    same = {"frame": 1, "rows": 512, "columns": 512, "windows": [list(w) for w in windows], "slope": 1.0,
            "intercept": 0.0, "photometric": "MONOCHROME2", "aspect": 1.0}
    message = {"type": "opened", "generation": state.generation, "series": series, "current": 1,
               "images": {"sop": [f"{series}.{i}" for i in range(n)], "same": same, "each": {}},
               "info": [["Patient", "A^B"]]}
    assert state.opened(message)
    return message


def refinement(state: ViewState, series: str, index: int, status: str = "SUBRESOLUTION",
               rank=(2, 64 * 64), size: int = 64, final: bool = False, generation=None, sop=None) -> dict:
    return {"type": "refinement", "generation": state.generation if generation is None else generation,
            "index": index, "series": series, "sop": sop or f"{series}.{index}", "frame": 1,
            "status": status, "rank": list(rank), "final": final, "rows": size, "columns": size,
            "nbytes": size * size * 2, "window": [100.0, 200.0], "t_ms": 5.0, "bytes": 1000}


def test_rank_is_the_engines_order():
    assert rank_above([2, 100], None)
    assert rank_above([3, 10], [2, 100]) and not rank_above([2, 100], [3, 10])
    assert rank_above([2, 200], [2, 100]) and not rank_above([2, 100], [2, 100])


def test_a_result_never_replaces_a_better_one_and_the_old_level_is_freed():
    state = ViewState()
    state.begin("http://x/series/a")
    opened(state, SERIES_A)
    ok, drop = state.accept(refinement(state, SERIES_A, 1))
    assert ok and drop == []
    first_key = state.slots[1].held.key
    ok, drop = state.accept(refinement(state, SERIES_A, 1, "FULL_RESOLUTION", (4, 512 * 512), 512, True))
    assert ok and drop == [first_key]
    ok, drop = state.accept(refinement(state, SERIES_A, 1, "LOSSY", (3, 512 * 512), 512))
    assert not ok and state.slots[1].held.status == "FULL_RESOLUTION"
    assert state.held_bytes == 512 * 512 * 2


def test_only_the_slice_on_screen_of_the_current_series_is_drawable():
    state = ViewState()
    state.begin("a")
    opened(state, SERIES_A)
    state.accept(refinement(state, SERIES_A, 0))
    assert state.drawable() is None  # slice 1 is on screen, only slice 0 is held
    state.accept(refinement(state, SERIES_A, 1))
    key, held = state.drawable()
    assert key == image_key(SERIES_A, f"{SERIES_A}.1", 1, 64, 64) and held.sop == f"{SERIES_A}.1"
    state.go_to(0)
    assert state.drawable()[1].sop == f"{SERIES_A}.0"


def test_a_new_load_clears_everything_and_refuses_the_old_series():
    state = ViewState()
    state.begin("a")
    opened(state, SERIES_A, windows=[(40, 400)])
    state.accept(refinement(state, SERIES_A, 1))
    state.invert, state.zoom = True, 3.0
    old_generation = state.generation
    state.begin("b")
    assert state.drawable() is None and state.slots == [] and state.info == []
    assert (state.invert, state.zoom, state.window) == (False, 1.0, None)
    assert state.overlay() == ("", "", "", "")
    # the old load's late results and discovery are ignored, even for the same index
    assert state.accept(refinement(state, SERIES_A, 1, generation=old_generation)) == (False, [])
    assert not state.opened({"generation": old_generation, "series": SERIES_A, "images": []})
    opened(state, SERIES_B)
    assert state.accept(refinement(state, SERIES_A, 1)) == (False, [])  # right generation, wrong series
    assert state.accept(refinement(state, SERIES_B, 1, sop="not-this-slice")) == (False, [])
    assert state.drawable() is None
    assert state.overlay()[1] == "LOADING"


def test_progress_comes_in_batches_for_this_load_only():
    """The worker posts requests started and first bytes together (one message per 50 ms)."""
    state = ViewState()
    state.begin("a")
    opened(state, SERIES_A)
    old = state.generation - 1
    assert not state.progress({"generation": old, "items": [[0, "request", 1.0]]})
    assert state.progress({"generation": state.generation,
                           "items": [[0, "request", 1.0], [2, "request", 1.5], [0, "first-bytes", 9.0], [7, "request", 2.0]]})
    assert state.slots[0].timeline == [("request", 1.0, ""), ("first-bytes", 9.0, "")]
    assert state.slots[2].timeline == [("request", 1.5, "")] and state.slots[1].timeline == []


def test_a_failed_load_leaves_nothing_of_the_previous_study():
    state = ViewState()
    state.begin("a")
    opened(state, SERIES_A)
    state.accept(refinement(state, SERIES_A, 1))
    generation = state.begin("http://bad")
    assert state.fail(generation, "HTTP 404")
    assert state.drawable() is None and state.current() is None and state.badge() == "FAILED"


def test_window_starts_from_dicom_then_the_first_image_and_resets_per_series():
    state = ViewState()
    state.begin("a")
    opened(state, SERIES_A, windows=[(40, 400)])
    assert state.window == (40.0, 400.0)
    state.accept(refinement(state, SERIES_A, 1))
    assert state.window == (40.0, 400.0)  # one starting window whatever arrives
    state.begin("b")
    opened(state, SERIES_B)
    assert state.window is None
    state.accept(refinement(state, SERIES_B, 1))
    assert state.window == (100.0, 200.0)  # the worker's starting window for that image


def test_memory_budget_drops_the_farthest_images_never_the_current_one():
    state = ViewState(budget_bytes=4 * 64 * 64 * 2)
    state.begin("a")
    opened(state, SERIES_A, n=9)
    state.go_to(4)
    for i in range(9):
        state.accept(refinement(state, SERIES_A, i))
    dropped = state.evict()
    assert [i for i, _, _ in dropped] and all(abs(i - 4) > 1 for i, _, _ in dropped)
    assert all(small is None for _, _, small in dropped)  # already small: dropped, not reduced
    assert state.held_bytes <= state.page_budget() < state.budget
    assert state.held_bytes == sum(s.held.nbytes for s in state.slots if s.held)
    assert state.slots[4].held is not None
    far = dropped[0][0]
    near = state.go_to(far)
    assert far in near and not state.slots[far].evicted


def test_over_budget_far_slices_keep_a_reduced_copy_and_full_resolution_stays_near():
    state = ViewState(budget_bytes=8 * 512 * 512 * 2)  # the page's share: 7 full images
    state.begin("a")
    opened(state, SERIES_A, n=40)
    state.go_to(20)
    for i in range(40):
        state.accept(refinement(state, SERIES_A, i, "FULL_RESOLUTION", (8, 512 * 512), 512, True))
        for index, old, small in state.evict():
            assert old.rows == 512 and small.rows == small.columns == 128 and small.status == "SUBRESOLUTION"
            assert small.rank < old.rank and not small.final and small.key != old.key
    assert state.held_bytes <= state.page_budget() and state.held_bytes == sum(s.held.nbytes for s in state.slots)
    full = [i for i, s in enumerate(state.slots) if s.held.final]
    assert 20 in full and all(abs(i - 20) <= 4 for i in full)  # full resolution near the cursor
    assert all(s.held is not None for s in state.slots)  # every slice still shows something
    assert state.slots[0].evicted and state.badge() == "FULL_RESOLUTION"
    state.go_to(0)
    assert state.badge() == "SUBRESOLUTION" and "showing 128x128" in state.overlay()[0]
    assert "reduced to stay within 4 MB" in state.summary()
    ok, drop = state.accept(refinement(state, SERIES_A, 0, "FULL_RESOLUTION", (8, 512 * 512), 512, True))
    assert ok and drop == [image_key(SERIES_A, f"{SERIES_A}.0", 1, 128, 128)]  # loaded again: replaces it


def test_overlay_names_the_slice_and_its_quality():
    state = ViewState()
    state.begin("a")
    opened(state, SERIES_A)
    state.accept(refinement(state, SERIES_A, 1, "SUBRESOLUTION", size=128))
    tl, badge, bl, br = state.overlay(50.0)
    assert tl.splitlines()[0] == "Image 2 / 3" and "showing 128x128" in tl and "Native 512x512" in tl
    assert badge == "SUBRESOLUTION" and "W 200  L 100" in bl and "first 5 ms" in br
    assert state.summary() == "0/3 lossless"


SCENARIO = """
from app.ui.view_state import ViewState
s = ViewState(budget_bytes=2 * 8192)
s.begin("u")
imgs = {"sop": ["a.%d" % i for i in range(5)], "same": {"frame": 1, "rows": 64, "columns": 64, "slope": 1.0,
        "intercept": 0.0, "photometric": "MONOCHROME1", "aspect": 1.0},
        "each": {"windows": [[], [], [[7.0, 9.0]], [], []]}}
print(s.opened({"generation": 1, "series": "a", "current": 2, "images": imgs, "info": []}))
print([(x.sop, x.rows, x.windows) for x in s.slots][1:3])
def r(i, rank, size, final=False, series="a"):
    return {"generation": 1, "index": i, "series": series, "sop": "a.%d" % i, "frame": 1,
            "status": "FULL_RESOLUTION" if final else "SUBRESOLUTION", "rank": rank, "final": final,
            "rows": size, "columns": size, "nbytes": size * size * 2, "window": [10.0, 20.0], "t_ms": 1.5}
print(s.accept(r(2, [2, 256], 16)))
print(s.accept(r(2, [4, 4096], 64, True)))
print(s.accept(r(2, [2, 256], 16)))
print(s.accept(r(2, [4, 4096], 64, True, series="b")))
for i in (0, 1, 3, 4):
    s.accept(r(i, [4, 4096], 64, True))
print(sorted((i, small is not None) for i, old, small in s.evict()), s.held_bytes)
print(s.drawable()[0])
v = s.view()
print(v["monochrome1"], v["center"], v["width"], v["fullRows"])
s.zoom_by(2.0, 10.0, 0.0)
print(s.zoom, s.pan)
print(s.overlay(100.0))
print(s.go_to(0), s.summary())
"""


def test_the_module_runs_unchanged_under_micropython():
    from test_gestures import micropython_runtime

    project, runtime = micropython_runtime()
    run = subprocess.run(["node", str(project / "tests/pages/micropython_run.mjs"), runtime, str(project),
                          "app/ui/view_state.py"], input=SCENARIO, text=True, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    cpython = io.StringIO()
    with contextlib.redirect_stdout(cpython):
        exec(compile(SCENARIO, "scenario", "exec"), {})
    assert run.stdout == cpython.getvalue()
    assert "True" in run.stdout and "a|a.2|1|64x64" in run.stdout


def test_with_gpu_textures_the_page_counts_two_copies_per_image():
    state = ViewState(budget_bytes=8 << 20)
    assert state.page_budget() == 7 << 20  # the worker keeps an eighth
    state.copies = 2  # a buffer and a WebGL texture per image
    assert state.page_budget() == (7 << 20) // 2


def test_opened_images_share_what_they_agree_on_and_keep_what_differs():
    """app/worker.py describe_images: one value for all, or one per image."""
    state = ViewState()
    state.begin("u")
    images = {"sop": ["s.1", "s.1", "s.2"], "same": {"rows": 8, "columns": 8, "slope": 1.0, "intercept": 0.0,
                                                    "photometric": "MONOCHROME2", "aspect": 1.0},
              "each": {"frame": [1, 2, 1], "windows": [[[40.0, 400.0]], [], [[50.0, 500.0]]]}}
    assert state.opened({"generation": state.generation, "series": "S", "current": 2, "images": images})
    assert [(s.sop, s.frame, s.rows, s.windows) for s in state.slots] == [
        ("s.1", 1, 8, [[40.0, 400.0]]), ("s.1", 2, 8, []), ("s.2", 1, 8, [[50.0, 500.0]])]
    assert state.window == (50.0, 500.0)  # the current image's own
