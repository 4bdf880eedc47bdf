"""Discovery and planning at scale, over a MockTransport: a 1000-image stack keeps the request order
and the results of a plan made all at once, while the request for the image on screen goes out
before the other images are planned; the metadata's names are asked for at once and taken in
order; values shared by consecutive instances never leak into an instance that differs. Order of
events only, never time (speed: ``python -m app.bench.discovery``)."""

from __future__ import annotations

import asyncio
import gzip
import json

import numpy as np
import pytest

from app.bench.discovery import discovery_rows, synthetic_metadata
from app.codecs import EXPLICIT_VR_LITTLE_ENDIAN
from app.config import preset
from app.engine import Phase, Refinement, RequestStarted, RetrieveEngine
from app.study import DiscoveryError, discover, stack_from_metadata
from app.transport.mock import MockResponse, MockTransport
from app.viewer_engine import StackLoader
from helpers import BASE, Site, image_pixels

COUNT = 1000


@pytest.fixture(scope="module")
def big_site() -> Site:
    """1000 small native frames (8x8, each its own pixels), in a shuffled metadata document."""
    site = Site()
    for i in range(COUNT):
        pixels = image_pixels(8, 8, seed=i)
        site.add_frame(i, pixels, pixels.tobytes(), EXPLICIT_VR_LITTLE_ENDIAN)
    order = np.random.default_rng(7).permutation(COUNT)
    site.metadata = [site.metadata[i] for i in order]
    return site


def by_distance(count: int, current: int) -> list[int]:
    """The order a plan made all at once takes images in: the one on screen, then nearest first
    (the lower index first at equal distance): Scheduler.key for a one-stage configuration."""
    return sorted(range(count), key=lambda i: (i != current, abs(i - current), i))


def run_big(site: Site, current: int, on_event=None):
    async def main():
        engine = RetrieveEngine(site.stack(), preset("single"), site.transport(), on_event=on_event)
        engine.set_current(current)
        events = [e async for e in engine.run()]
        return events, engine

    return asyncio.run(asyncio.wait_for(main(), 120))


def test_a_1000_image_plan_keeps_the_request_order_and_every_result(big_site):
    current = COUNT // 2
    marks: list = []

    def on_event(event):
        if isinstance(event, RequestStarted) and not marks:  # the first request, as it goes out
            engine = event_engine[0]
            marks.append(engine._states.count)
            marks.append([i for i in range(COUNT) if engine.phase(i) is not Phase.IDLE])

    event_engine: list = []

    async def main():
        engine = RetrieveEngine(big_site.stack(), preset("single"), big_site.transport(), on_event=on_event)
        event_engine.append(engine)
        engine.set_current(current)
        return [e async for e in engine.run()], engine

    events, engine = asyncio.run(asyncio.wait_for(main(), 120))
    made, busy = marks
    assert made == 1 and busy == [current]  # no other image had a state, none was queued
    started = [e.index for e in events if isinstance(e, RequestStarted)]
    assert started == by_distance(COUNT, current)  # one request each, in the all-at-once order
    finals = {e.index: e for e in events if isinstance(e, Refinement) and e.final}
    assert sorted(finals) == list(range(COUNT))
    # slice i is the instance numbered i + 1 (positions along z), its pixels exactly
    assert [im.sop_instance_uid for im in engine.stack.images] == [f"1.2.3.4.{i + 1}" for i in range(COUNT)]
    for i in range(COUNT):
        np.testing.assert_array_equal(finals[i].pixels, big_site.pixels[i])


def test_the_image_on_screen_at_either_end_is_asked_for_first(big_site):
    for current in (0, COUNT - 1):
        events, engine = run_big(big_site, current)
        started = [e.index for e in events if isinstance(e, RequestStarted)]
        assert started == by_distance(COUNT, current)
        assert all(engine.reached_final(i) for i in range(COUNT))


def test_the_series_list_waits_for_the_image_on_screen(big_site):
    """StackLoader.first_image_answered: what the worker's list_series awaits before it asks (the
    page would handle the list while the first image's message waits behind it)."""
    log: list[str] = []

    async def main():
        loader = StackLoader(big_site.stack(), preset("single"), big_site.transport())

        async def series_list():
            await loader.first_image_answered(30.0)
            log.append("series list")

        loader.engine.on_event = lambda e: log.append(f"{type(e).__name__} {e.index}")  # as each is emitted
        loader.set_current(COUNT // 2)
        waiter = asyncio.ensure_future(series_list())
        await asyncio.sleep(0)
        await loader.run(COUNT // 2, lambda e: None)
        await waiter

    asyncio.run(asyncio.wait_for(main(), 120))
    assert log.index("series list") > log.index(f"Refinement {COUNT // 2}") > log.index(f"RequestStarted {COUNT // 2}")


def test_the_series_list_waits_for_the_image_on_screen_a_bounded_time(big_site):
    """A server silent about the image on screen holds the study browser back no longer than asked."""

    async def main():
        loader = StackLoader(big_site.stack(), preset("single"), big_site.transport())
        loader.engine.first_request.went_out()  # as if asked, never answered
        await loader.first_image_answered(0.05)  # else wait_for's TimeoutError fails the test

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_second_run_plans_the_images_it_is_given(big_site):
    """The rest of a run is planned from its own list, whatever earlier runs made states for."""

    async def main():
        engine = RetrieveEngine(big_site.stack(), preset("single"), big_site.transport())
        engine.set_current(10)
        first = [e async for e in engine.run(range(20))]
        engine.forget([3, 15])
        again = [e async for e in engine.run([3, 15])]
        return first, again, engine

    first, again, engine = asyncio.run(asyncio.wait_for(main(), 60))
    assert [e.index for e in first if isinstance(e, RequestStarted)] == by_distance(20, 10)
    assert sorted(e.index for e in again if isinstance(e, RequestStarted)) == [3, 15]
    assert engine.reached_final(3) and engine.reached_final(15) and not engine.reached_final(20)


# -- the metadata's names ------------------------------------------------------------------------------


def metadata_site(answers: dict[str, MockResponse | asyncio.Event]):
    """A handler answering each metadata name as given (an Event: waits for it, then 404)."""

    async def handler(req):
        name = req.url.rsplit("/", 1)[-1]
        answer = answers.get(name)
        if isinstance(answer, tuple):
            gate, then = answer
            await gate.wait()
            return then
        return answer or MockResponse(404)

    return handler


def doc(count: int) -> bytes:
    return json.dumps([json.loads(synthetic_metadata(count))[i] for i in range(count)]).encode()


def test_only_a_gzip_metadata_costs_no_extra_round_trip():
    """metadata 404s, metadata.gz answers: both were asked for before either answered."""
    transport = MockTransport(metadata_site({"metadata.gz": MockResponse(200, {}, gzip.compress(doc(3)))}))
    stack = asyncio.run(discover(transport, BASE))
    names = [r.url.rsplit("/", 1)[-1] for r in transport.requests]
    assert len(stack) == 3
    assert {"metadata", "metadata.gz", "metadata.json"} <= set(names[:5])  # with the alternates


def test_the_plain_name_wins_even_when_the_gzip_one_answers_first():
    async def main():
        gate = asyncio.Event()
        gz = MockResponse(200, {}, gzip.compress(doc(2)))
        answers = {"metadata": (gate, MockResponse(200, {}, doc(4))), "metadata.gz": gz}
        transport = MockTransport(metadata_site(answers))
        found = asyncio.ensure_future(discover(transport, BASE))
        for _ in range(20):
            await asyncio.sleep(0)  # the gzip one has answered by now; the plain one waits
        assert not found.done()
        gate.set()
        stack = await found
        stack.pending_alternates.cancel()
        return stack, gz

    stack, gz = asyncio.run(asyncio.wait_for(main(), 10))
    assert len(stack) == 4  # the plain document's
    assert gz.closed and gz.sent == 0  # dropped unread


def test_when_no_name_answers_each_cause_is_named_in_order():
    from app.study import DiscoveryError

    transport = MockTransport(metadata_site({"metadata.gz": MockResponse(410)}))
    with pytest.raises(DiscoveryError) as caught:
        asyncio.run(discover(transport, BASE))
    assert str(caught.value).endswith("metadata: HTTP 404; metadata.gz: HTTP 410; metadata.json: HTTP 404")


# -- values shared by consecutive instances ------------------------------------------------------------


def test_an_instance_unlike_its_neighbours_keeps_its_own_values():
    """Equal shared elements are read once; any change (size, window, rescale, orientation) is
    read again for that instance, and the next one that differs again too."""
    docs = json.loads(synthetic_metadata(6))
    docs.sort(key=lambda d: d["00200013"]["Value"][0])
    docs[2]["00280010"]["Value"] = [128]
    docs[3]["00281050"]["Value"] = [-600.0]
    docs[3]["00281051"]["Value"] = [1500.0]
    docs[4]["00281052"] = {"vr": "DS", "Value": [0.0]}
    docs[5]["00200037"] = {"vr": "DS", "Value": [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]}  # another plane
    stack = stack_from_metadata(docs, BASE)
    by_number = {im.instance_number: im for im in stack.images}
    assert [by_number[n].rows for n in range(1, 7)] == [256, 256, 128, 256, 256, 256]
    assert [by_number[n].windows for n in range(1, 7)] == [((40.0, 400.0),)] * 3 + [((-600.0, 1500.0),)] + \
        [((40.0, 400.0),)] * 2
    assert [by_number[n].rescale_intercept for n in range(1, 7)] == [-1024.0] * 4 + [0.0, -1024.0]
    assert [im.instance_number for im in stack.images] == [1, 2, 3, 4, 5, 6]  # two planes: by number


def test_the_bench_reports_every_step_for_each_count():
    (row,) = discovery_rows(counts=(30,), repeat=1)
    assert row.instances == 30 and row.metadata_bytes > 30 * 1000
    assert row.before_first_ms == pytest.approx(row.parse_ms + row.stack_ms + row.first_request_ms, abs=0.02)
    assert min(row.parse_ms, row.stack_ms, row.first_request_ms, row.rest_planned_ms) > 0


def test_the_shared_elements_are_found_by_plain_lookup():
    """Their keys have no hex letters, so no case variant exists that ``dj.element`` would find
    and ``dict.get`` not: the comparison of consecutive instances sees every element it reads."""
    from app.study import _SHARED_TAGS

    assert all(tag.isdigit() and len(tag) == 8 for tag in _SHARED_TAGS)


def test_the_frame_budget_names_the_first_instance_of_a_size_over_it():
    """The budget is checked once per set of shared elements: when a fitting size comes back
    between two over-budget ones, the error still names the first instance that is over."""
    from app.codecs import MAX_FRAME_BYTES

    docs = json.loads(synthetic_metadata(5))
    docs.sort(key=lambda d: d["00200013"]["Value"][0])
    for i in (1, 3):
        docs[i]["00280010"]["Value"] = docs[i]["00280011"]["Value"] = [65535]
    with pytest.raises(DiscoveryError) as caught:
        stack_from_metadata(docs, BASE)
    sop = docs[1]["00080018"]["Value"][0]
    assert str(caught.value) == (f"instance {sop}: a 65535x65535 frame needs {65535 * 65535 * 2} bytes, over the "
                                 f"{MAX_FRAME_BYTES}-byte budget")
    stack = stack_from_metadata(docs[:1] + docs[2:3] + docs[4:], BASE)  # the fitting ones alone load
    assert len(stack) == 3


def test_discovery_reports_its_work_on_the_metadata_without_changing_the_stack():
    """What the page's benchmark reads (app/worker.py): the parse and the stack build, and when the
    stack was ready; two discoveries of one document give equal stacks."""
    transport = MockTransport(metadata_site({"metadata": MockResponse(200, {}, doc(12))}))

    async def main():
        first, second = await discover(transport, BASE), await discover(transport, BASE)
        for stack in (first, second):
            stack.pending_alternates.cancel()
        return first, second

    first, second = asyncio.run(asyncio.wait_for(main(), 10))
    assert first == second and first.work is not second.work
    assert first.work.parse_ms > 0 and first.work.stack_ms > 0 and first.work.ready_at > 0
    assert stack_from_metadata(json.loads(doc(12)), BASE).work is None  # only discovery measures


def test_stack_images_are_the_dataclass_they_claim_to_be():
    """_stack_image fills the frozen dataclass directly: every field set, equal and hashed like one
    made by its own __init__, still frozen."""
    import dataclasses

    from app.study import StackImage

    stack = stack_from_metadata(json.loads(synthetic_metadata(4)), BASE)
    for image in stack.images:
        again = StackImage(**{f.name: getattr(image, f.name) for f in dataclasses.fields(StackImage)})
        assert image == again and hash(image) == hash(again) and repr(image) == repr(again)
        assert set(vars(image)) == {f.name for f in dataclasses.fields(StackImage)}
        with pytest.raises(dataclasses.FrozenInstanceError):
            image.index = 9
