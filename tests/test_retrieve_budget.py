"""The memory budget's running total of frame bytes held between stages (``HeldBytes``): kept
as bodies grow, reset and are dropped, equal at every event to the sum it replaces."""

from __future__ import annotations

import pytest

from app.codecs import HTJ2K_LOSSLESS_RPCL
from app.config import RetrieveConfig
from app.retrieve.body import FrameBody
from app.retrieve.budget import Budget, HeldBytes
from helpers import Site, htj2k_frame, image_pixels, run_mock

TWO_STAGES = RetrieveConfig.from_json({
    "stages": [{"id": "fast", "retrieveType": "fast"}, {"id": "final", "retrieveType": "final"}],
    "retrieveOptions": {"fast": {"rangeIndex": 0, "initialChunkSize": 4096, "chunkSize": 4096, "decodeLevel": 2},
                        "final": {"rangeIndex": -1, "streaming": True}},
})


def walked(engine) -> int:
    """What ``held_bytes`` used to compute per job: every body of every image."""
    return sum(len(b.data) for st in engine._states for b in st.bodies.values())


def test_a_body_counts_what_it_receives_and_gives_it_back():
    held = HeldBytes()
    a, b = FrameBody("a", HTJ2K_LOSSLESS_RPCL, held), FrameBody("b", HTJ2K_LOSSLESS_RPCL, held)
    a.feed(b"\xff\x4f" + bytes(998))
    b.feed(bytes(300))
    b.feed(bytes(200))
    assert held.total == 1500
    b.reset()  # a Range ignored by the server: the partial copy is replaced
    assert held.total == 1000
    b.feed(bytes(50))
    a.release()
    a.release()  # twice is harmless
    assert held.total == 50
    a.feed(bytes(10))  # a transfer still feeding a dropped body is no longer counted
    assert held.total == 50


@pytest.mark.parametrize("cache_bytes", [1 << 30, 48 * 1024])
def test_the_running_total_equals_the_walk_at_every_event(cache_bytes):
    site = Site()
    for index in range(12):
        pixels = image_pixels(128, 128, seed=index)
        site.add_frame(index, pixels, htj2k_frame(pixels), HTJ2K_LOSSLESS_RPCL)
    seen = []

    def check(engine, event):
        assert engine.held_bytes == walked(engine)
        seen.append(engine.held_bytes)

    events, engine, _ = run_mock(site, TWO_STAGES, control=check, cache_bytes=cache_bytes)
    assert max(seen) > 0  # bytes were held between stages at some point
    assert engine.held_bytes == walked(engine) == 0  # every frame decoded: nothing left
    assert all(engine.reached_final(i) for i in range(12))


def six_loaded():
    """An engine that loaded six small HTJ2K images through both stages."""
    site = Site()
    for index in range(6):
        pixels = image_pixels(64, 64, seed=index)
        site.add_frame(index, pixels, htj2k_frame(pixels), HTJ2K_LOSSLESS_RPCL)
    _, engine, _ = run_mock(site, TWO_STAGES)
    return engine


def test_trim_drops_the_farthest_bodies_until_within_budget():
    engine = six_loaded()
    states = engine._states
    budget = Budget(2500)
    for st in states:
        st.drop_bodies()
        body = st.bodies["u"] = FrameBody("u", HTJ2K_LOSSLESS_RPCL, budget.held)
        body.feed(bytes(1000))
    assert budget.held_bytes == 6000
    budget.trim(states, states[2], current=2)
    assert budget.held_bytes == 2000 == walked(engine)
    assert sorted(st.image.index for st in states if st.bodies) == [2, 3]  # the nearest kept


def test_pixels_held_elsewhere_leave_the_budget_to_frame_bytes():
    engine = six_loaded()
    states = engine._states
    budget = Budget(1 << 20)
    for st in states:
        budget.remember(states, st.image.index, st.best.pixels.nbytes, current=0)
    assert budget.pixel_bytes == 6 * 64 * 64 * 2  # within the budget: all kept
    budget.pixels_elsewhere = True  # the page's worker: the page holds them
    budget.remember(states, 5, states[5].best.pixels.nbytes, current=0)
    assert budget.pixel_bytes == 64 * 64 * 2 and states[5].best.pixels.size == 64 * 64  # the latest only
    assert all(st.best.pixels.size == 0 and st.best.final for st in states[:5])  # their rank stays
