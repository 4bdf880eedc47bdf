"""The engine over a MockTransport: retries, Range resumption, preemption, failures, gzip frames,
small lossy frames in byte-range mode, discovery that never waits on optional files. No sockets,
no sleeps: what happened is read from the event order and the request log."""

from __future__ import annotations

import asyncio
import gzip

import numpy as np
import pytest

from app.codecs import HTJ2K_LOSSLESS_RPCL, JPEG_BASELINE, JPEG_LS_LOSSLESS
from app.config import ImageQualityStatus as Q
from app.config import RetrieveConfig, preset
from app.engine import FirstBytes, ImageFailed, Phase, Refinement, RequestFinished, RequestRetried, RequestStarted
from app.transport import IncompleteBody
from app.transport.mock import MockResponse, MockTransport, serve_bytes
from helpers import BASE, Site, htj2k_frame, image_pixels, run_mock

SMALL_RANGES = RetrieveConfig.from_json({
    "stages": [{"id": "fast", "retrieveType": "fast"}, {"id": "final", "retrieveType": "final"}],
    "retrieveOptions": {"fast": {"rangeIndex": 0, "initialChunkSize": 4096, "chunkSize": 4096, "decodeLevel": 2},
                        "final": {"rangeIndex": -1, "streaming": True}},
})


@pytest.fixture(scope="module")
def htj2k_images():
    out = []
    for i in range(3):
        pixels = image_pixels(256, 256, seed=i)
        out.append((pixels, htj2k_frame(pixels)))
    return out


def htj2k_site(images) -> Site:
    site = Site()
    for i, (pixels, codestream) in enumerate(images):
        site.add_frame(i, pixels, codestream, HTJ2K_LOSSLESS_RPCL)
    return site


def refinements(events, index=None):
    return [e for e in events if isinstance(e, Refinement) and (index is None or e.index == index)]


def failures(events, index=None):
    return [e for e in events if isinstance(e, ImageFailed) and (index is None or e.index == index)]


def frame_requests(transport, index):
    return [r for r in transport.requests if f"/1.2.3.4.{index + 1}/frames/" in r.url]


def assert_all_final(site, events, engine, skip=()):
    for i, pixels in enumerate(site.pixels):
        if i in skip:
            continue
        assert engine.reached_final(i) and engine.phase(i) is Phase.FINAL, (i, failures(events, i))
        np.testing.assert_array_equal(refinements(events, i)[-1].pixels, pixels)


# -- retries and resumption ----------------------------------------------------------------------------


def test_a_503_twice_then_the_frame(htj2k_images):
    site = htj2k_site(htj2k_images)
    site.script = lambda req, n: MockResponse(503, {"retry-after": "0"}) if "1.2.3.4.2" in req.url and n <= 2 else None
    events, engine, transport = run_mock(site, preset("single"))
    assert len(frame_requests(transport, 1)) == 3 and not failures(events)
    assert_all_final(site, events, engine)
    retried = [e for e in events if isinstance(e, RequestRetried)]  # said, for the page's console
    assert [(e.index, e.attempt) for e in retried] == [(1, 1), (1, 2)] and all("503" in e.reason for e in retried)


def test_retries_run_out_with_a_clear_message(htj2k_images):
    site = htj2k_site(htj2k_images)
    site.script = lambda req, n: MockResponse(502) if "1.2.3.4.2" in req.url else None
    events, engine, transport = run_mock(site, preset("single"), retries=2, retry_backoff=0)
    (failed,) = failures(events, 1)
    assert "HTTP 502" in failed.message and "after 3 attempts" in failed.message
    assert engine.phase(1) is Phase.FAILED and len(frame_requests(transport, 1)) == 3
    assert_all_final(site, events, engine, skip={1})


def test_a_404_fails_at_once(htj2k_images):
    site = htj2k_site(htj2k_images)
    site.script = lambda req, n: MockResponse(404) if "1.2.3.4.1" in req.url else None
    events, engine, transport = run_mock(site, preset("single"), retry_backoff=0)
    (failed,) = failures(events, 0)
    assert "HTTP 404" in failed.message and len(frame_requests(transport, 0)) == 1
    assert_all_final(site, events, engine, skip={0})


def test_a_cut_transfer_resumes_from_the_first_byte_not_held(htj2k_images):
    site = htj2k_site(htj2k_images)

    def script(req, n):
        if "1.2.3.4.1" in req.url and n == 1:
            body = site.files[req.url][0]
            return MockResponse(200, {"content-type": site.files[req.url][1]}, [body[:5000]],
                                IncompleteBody("connection closed after 5000 bytes"))
        return None

    site.script = script
    events, engine, transport = run_mock(site, preset("htj2k"), retry_backoff=0)
    assert [r.byte_range for r in frame_requests(transport, 0)] == [None, (5000, None)]
    assert not failures(events)
    assert sum(e.bytes_received for e in events if isinstance(e, RequestFinished) and e.index == 0) \
        == len(site.files[frame_requests(transport, 0)[0].url][0])  # every byte once
    assert_all_final(site, events, engine)


def test_byte_ranges_fetch_every_byte_once_and_show_a_level_first(htj2k_images):
    site = htj2k_site(htj2k_images)
    events, engine, transport = run_mock(site, SMALL_RANGES)
    for i in range(3):
        spans = sorted(r.byte_range for r in frame_requests(transport, i))
        size = len(site.files[frame_requests(transport, i)[0].url][0])
        assert spans[0] == (0, 4095) and spans[-1][1] is None
        assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap
        refs = refinements(events, i)
        assert refs[0].status == Q.SUBRESOLUTION and refs[0].reduce >= 1 and refs[-1].final
        assert sum(e.bytes_received for e in events if isinstance(e, RequestFinished) and e.index == i) == size
    assert_all_final(site, events, engine)


# -- preemption -------------------------------------------------------------------------------------------


def test_the_image_on_screen_preempts_a_prefetch_which_resumes_by_range(htj2k_images):
    site = htj2k_site(htj2k_images)
    gate = asyncio.Event()

    def script(req, n):
        if "1.2.3.4.1" in req.url and n == 1:  # image 0: the first half, then nothing until released
            body, ctype, _ = site.files[req.url]

            async def held():
                yield body[:8000]
                await gate.wait()

            return MockResponse(200, {"content-type": ctype}, held())
        return None

    def control(engine, event):
        if isinstance(event, FirstBytes) and event.index == 0 and not gate.is_set():
            engine.set_current(2)

    site.script = script
    events, engine, transport = run_mock(site, preset("single"), control=control, concurrency=1,
                                         preempt_delay=0)
    gave_way = [e for e in events if isinstance(e, RequestFinished) and e.cancelled]
    assert [e.index for e in gave_way] == [0] and gave_way[0].bytes_received == 8000
    starts = [e.index for e in events if isinstance(e, RequestStarted)]
    assert starts == [0, 2, 1, 0]  # the image on screen, its neighbour, then the one that gave way
    assert frame_requests(transport, 0)[-1].byte_range == (8000, None)
    assert not failures(events)
    assert_all_final(site, events, engine)


def test_cancelled_images_report_nothing_more(htj2k_images):
    site = htj2k_site(htj2k_images)

    def control(engine, event):
        if isinstance(event, RequestStarted) and event.index == 0:
            engine.cancel([0])

    events, engine, _ = run_mock(site, preset("single"), control=control, concurrency=1)
    assert not refinements(events, 0) and not failures(events, 0)
    assert engine.phase(0) is Phase.CANCELLED and not engine.reached_final(0)
    assert_all_final(site, events, engine, skip={0})


# -- gzip-encoded frames (issue 13 item 2) ----------------------------------------------------------------


def gzip_site(images, *, hide_encoding: bool) -> Site:
    """Frames stored gzip-compressed and sent with Content-Encoding: gzip; Range counts the stored
    (encoded) bytes. Bodies reach the engine decoded, as both transports deliver them; the browser
    may hide the Content-Encoding header from a cross-origin page."""
    site = htj2k_site(images)
    stored = {url: gzip.compress(body) for url, (body, _, _) in site.files.items()}

    def script(req, n):
        url = req.url
        if url not in stored:
            return None
        answer = serve_bytes(req, stored[url], site.files[url][1])
        if answer.status not in (200, 206):
            return answer
        encoded = b"".join(answer.body)
        inflater = __import__("zlib").decompressobj(wbits=31)
        if req.byte_range is not None and req.byte_range[0] > 0:  # a continuation cannot be decoded
            return MockResponse(answer.status, answer.headers, [b"\x1f\x8b"],
                                __import__("app.transport", fromlist=["ProtocolError"]).ProtocolError(
                                    "bad gzip body: Error -3"))
        headers = dict(answer.headers)
        if not hide_encoding:
            headers["content-encoding"] = "gzip"
        return MockResponse(answer.status, headers, [inflater.decompress(encoded)])

    site.script = script
    return site


@pytest.mark.parametrize("hide_encoding", [False, True], ids=["header seen", "header hidden (browser)"])
def test_byte_ranges_over_gzip_frames_never_continue_at_a_decoded_offset(htj2k_images, hide_encoding):
    site = gzip_site(htj2k_images, hide_encoding=hide_encoding)
    events, engine, transport = run_mock(site, SMALL_RANGES, concurrency=1, retry_backoff=0)
    assert not failures(events)
    assert_all_final(site, events, engine)
    # the first image learns it from its first range and asks for the whole frame next; the
    # others ask for their frame once, whole. Where the header is hidden, only the decoded size
    # tells, after the early second range may have gone out: its bytes are never used.
    ranges = [r.byte_range for r in frame_requests(transport, 0)]
    assert ranges[0] == (0, 4095) and ranges[-1] is None
    assert len(ranges) == (2 if not hide_encoding else len(ranges))
    assert all([r.byte_range for r in frame_requests(transport, i)] == [None] for i in (1, 2))


# -- small frames in byte-range mode (issue 13 item 3, issue 14 item 12) ----------------------------------


def small_site(syntax: str) -> Site:
    import imagecodecs

    site = Site()
    for i in range(3):
        pixels = image_pixels(64, 64, seed=i, dtype="u1")
        data = imagecodecs.jpeg8_encode(pixels, level=90) if syntax == JPEG_BASELINE else imagecodecs.jpegls_encode(pixels)
        site.add_frame(i, pixels, bytes(data), syntax)
    return site


@pytest.mark.parametrize("syntax, status", [(JPEG_BASELINE, Q.LOSSY), (JPEG_LS_LOSSLESS, Q.FULL_RESOLUTION)])
def test_a_small_frame_held_whole_by_the_first_range_is_final_and_fetched_once(syntax, status):
    site = small_site(syntax)
    events, engine, transport = run_mock(site, preset("htj2kRangeThenStream"))
    for i in range(3):
        assert [r.byte_range for r in frame_requests(transport, i)] == [(0, 131071)]
        (ref,) = refinements(events, i)
        assert ref.final and ref.status == status and engine.phase(i) is Phase.FINAL
    assert not failures(events)
    if syntax == JPEG_LS_LOSSLESS:
        assert_all_final(site, events, engine)


@pytest.mark.parametrize("near, status", [(0, Q.FULL_RESOLUTION), (2, Q.LOSSY)])
@pytest.mark.parametrize("config", ["single", "htj2kRangeThenStream"])
def test_jpeg_ls_quality_comes_from_near_not_the_label(near, status, config):
    """A JPEG-LS frame labelled near-lossless (.81) with NEAR = 0 is lossless (issue 13 item 4)."""
    import imagecodecs

    from app.codecs import JPEG_LS_NEAR_LOSSLESS

    site = Site()
    for i in range(2):
        pixels = image_pixels(64, 64, seed=i, dtype="u1")
        site.add_frame(i, pixels, bytes(imagecodecs.jpegls_encode(pixels, level=near)), JPEG_LS_NEAR_LOSSLESS)
    events, engine, transport = run_mock(site, preset(config))
    for i in range(2):
        (ref,) = refinements(events, i)
        assert ref.final and ref.status == status and engine.phase(i) is Phase.FINAL
        assert len(frame_requests(transport, i)) == 1  # nothing fetched twice
        if near == 0:
            np.testing.assert_array_equal(ref.pixels, site.pixels[i])
    assert not failures(events)


def test_an_image_that_cannot_become_final_ends_with_image_failed(htj2k_images):
    """Only a first range, no later stage: a partial level is all there will be; say so."""
    site = htj2k_site(htj2k_images)
    config = RetrieveConfig.from_json({
        "stages": [{"id": "fast", "retrieveType": "fast"}],
        "retrieveOptions": {"fast": {"rangeIndex": 0, "initialChunkSize": 4096, "chunkSize": 4096, "decodeLevel": 2}},
    })
    events, engine, _ = run_mock(site, config)
    for i in range(3):
        assert refinements(events, i) and not engine.reached_final(i)
        (failed,) = failures(events, i)
        assert "no stage could make the image final" in failed.message and "SUBRESOLUTION" in failed.message
        assert engine.phase(i) is Phase.FAILED


# -- discovery (issue 17 item 3) ----------------------------------------------------------------------------


def test_the_first_frame_request_never_waits_on_optional_files(htj2k_images):
    """alternates.json and alternates.json.gz are asked for with the metadata and never answer:
    the first frame request still follows the metadata's answer."""
    import json

    from app.engine import RetrieveEngine
    from app.study import discover

    site = htj2k_site(htj2k_images[:1])
    never = asyncio.Event()

    async def handler(req):
        if "/alternates.json" in req.url:
            await never.wait()
        if req.url == f"{BASE}/metadata":
            return MockResponse(200, {"content-type": "application/dicom+json"}, json.dumps(site.metadata).encode())
        return site.handler(req)

    async def main():
        transport = MockTransport(handler)
        stack = await discover(transport, BASE)
        events = [e async for e in RetrieveEngine(stack, preset("single"), transport).run()]
        stack.pending_alternates.cancel()
        return transport, events

    transport, events = asyncio.run(asyncio.wait_for(main(), 10))
    names = [r.url.removeprefix(BASE + "/") for r in transport.requests]
    # the metadata's names are asked for at once (a tree may have only one of them)
    assert set(names[:5]) == {"alternates.json", "alternates.json.gz", "metadata", "metadata.gz", "metadata.json"}
    assert names[5].startswith("instances/")  # the next request is the frame, not a wait
    assert refinements(events)[-1].final


def test_an_image_cancelled_and_requested_again_while_its_job_stops_loads_once_more(htj2k_images):
    site = htj2k_site(htj2k_images)
    seen = []

    def control(engine, event):
        if isinstance(event, RequestStarted) and event.index == 0 and not seen:
            seen.append(event)
            engine.cancel([0])
            engine.request([0])  # the old job is still stopping: the new one waits for its slot

    events, engine, transport = run_mock(site, preset("single"), control=control, concurrency=1)
    assert len(frame_requests(transport, 0)) == 2 and not failures(events)
    assert len([r for r in refinements(events, 0)]) == 1  # only the second job's result counts
    assert_all_final(site, events, engine)


# -- Cornerstone 5.14's chunk options -----------------------------------------------------------------------


def test_range_n_ends_at_initial_chunk_size_plus_n_chunks(htj2k_images):
    site = htj2k_site(htj2k_images[:1])
    config = RetrieveConfig.from_json({
        "stages": [{"id": "fast", "retrieveType": "fast"}, {"id": "final", "retrieveType": "final"}],
        "retrieveOptions": {"fast": {"rangeIndex": 1, "initialChunkSize": 4096, "chunkSize": 8192, "decodeLevel": 0},
                            "final": {"rangeIndex": -1}},
    })
    events, engine, transport = run_mock(site, config)
    assert [r.byte_range for r in frame_requests(transport, 0)] == [(0, 4096 + 8192 - 1), (4096 + 8192, None)]
    assert_all_final(site, events, engine)


@pytest.mark.parametrize("gap, partials", [(None, "several"), (10**9, "one")])
def test_ms_between_decode_spaces_partial_decodes(htj2k_images, gap, partials):
    site = htj2k_site(htj2k_images[:1])
    options = {"streaming": True, "decodeLevel": 2}
    if gap is not None:
        options["msBetweenDecode"] = gap
    body, ctype, _ = next(iter(site.files.values()))
    site.script = lambda req, n: MockResponse(200, {"content-type": ctype}, [body[i:i + 512] for i in range(0, len(body), 512)])
    events, engine, _ = run_mock(site, RetrieveConfig.from_json({"retrieveOptions": {"single": options}}))
    partial = [r for r in refinements(events, 0) if not r.final]
    assert (len(partial) == 1) if partials == "one" else (len(partial) >= 2)
    assert_all_final(site, events, engine)


# -- requests queued in the browser ----------------------------------------------------------------


def test_the_image_on_screen_asks_with_high_priority_the_others_with_low(htj2k_images):
    """The browser transport keeps more requests open than it has connections and lets the browser
    order them by fetch priority: the engine must say which one the user is looking at."""
    from app.engine import RetrieveEngine
    from helpers import engine_options

    site = htj2k_site(htj2k_images)
    transport = site.transport()

    async def main():
        engine = RetrieveEngine(site.stack(), preset("single"), transport,
                                **engine_options(concurrency=1, preempt_delay=0))
        engine.set_current(1)
        events = []
        async for event in engine.run():
            events.append(event)
            if isinstance(event, RequestFinished) and event.index == 1:
                engine.set_current(0)  # the user moves on
        return events, engine

    events, engine = asyncio.run(asyncio.wait_for(main(), 30))
    asked = [(r.url.split("/instances/")[1].split("/")[0], r.priority) for r in transport.requests
             if "/frames/" in r.url]
    assert asked == [("1.2.3.4.2", "high"), ("1.2.3.4.1", "high"), ("1.2.3.4.3", "low")]
    assert_all_final(site, events, engine)


def test_a_slow_reader_holds_the_jobs_back_without_losing_events(htj2k_images):
    """Events run() has not handed out hold pixels outside the budget: the jobs wait (on an event,
    not a polling loop) while more than ``concurrency`` are queued, and none is lost."""
    site = htj2k_site(htj2k_images)

    async def main():
        from app.engine import RetrieveEngine
        from helpers import engine_options

        engine = RetrieveEngine(site.stack(), preset("single"), site.transport(), **engine_options(concurrency=1))
        events, most = [], 0
        async for event in engine.run():
            most = max(most, engine._queue.qsize())
            events.append(event)
            await asyncio.sleep(0.001)  # a slow page
        return events, engine, most

    events, engine, most = asyncio.run(asyncio.wait_for(main(), 30))
    # concurrency (1) + one job's own events (request started, first bytes, refinement, request ended)
    assert most <= 1 + 4
    assert sorted(e.index for e in refinements(events)) == [0, 1, 2]
    assert_all_final(site, events, engine)


# -- the image on screen starts alone ------------------------------------------------------------------


def _first_image_run(site, handler, head_start):
    from app.engine import RetrieveEngine
    from helpers import engine_options

    transport = MockTransport(handler)

    async def main():
        engine = RetrieveEngine(site.stack(), preset("single"), transport,
                                **engine_options(concurrency=6, first_image_head_start=head_start))
        engine.set_current(1)
        return [e async for e in engine.run()], engine

    events, engine = asyncio.run(asyncio.wait_for(main(), 30))
    return events, engine, transport


def test_the_other_images_are_asked_for_once_the_one_on_screen_is_answered(htj2k_images):
    """Starting a request costs the page's worker ~1 ms of Python; while it starts the others the
    image on screen waits for its decode. So it goes alone, and the others follow its first result
    (not its first bytes: 23 starts between those and the decode cost a 174-slice CT 26 ms)."""
    site = htj2k_site(htj2k_images)
    events, engine, transport = _first_image_run(site, site.handler, 5.0)
    started = [e.index for e in events if isinstance(e, RequestStarted)]
    answered = next(n for n, e in enumerate(events) if isinstance(e, Refinement))
    assert events[answered].index == 1 and started[0] == 1
    assert all(e.index == 1 for e in events[:answered] if isinstance(e, RequestStarted))
    assert any(isinstance(e, FirstBytes) for e in events[:answered])
    assert sorted(set(started)) == [0, 1, 2]
    assert_all_final(site, events, engine)


def test_a_silent_image_on_screen_holds_the_others_back_only_for_the_head_start(htj2k_images):
    """The head start is bounded: a server slow to answer for the image on screen does not stop the
    others for longer (here it answers 404 after 0.5 s; the head start is 0.05 s)."""
    site = htj2k_site(htj2k_images)

    async def handler(req):
        if "/1.2.3.4.2/frames/" in req.url:
            await asyncio.sleep(0.5)
            return MockResponse(404, {}, b"")
        return site.handler(req)

    events, engine, transport = _first_image_run(site, handler, 0.05)
    order = [r.url.split("/instances/")[1].split("/")[0] for r in transport.requests if "/frames/" in r.url]
    assert order[0] == "1.2.3.4.2" and set(order[1:]) == {"1.2.3.4.1", "1.2.3.4.3"}
    results = [(e.index, type(e).__name__) for e in events if isinstance(e, (Refinement, ImageFailed))]
    assert results[-1] == (1, "ImageFailed")  # the others were final before the slow one ended
    assert {i for i, kind in results if kind == "Refinement"} == {0, 2}
