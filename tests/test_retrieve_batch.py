"""Frames of one multi-frame instance in one request (``frames/a,b,c``) over a MockTransport:
one request for k frames, the fallback after a refusal, short, cut and broken answers, and a
server that answers other frames than asked (never shown under the wrong frame)."""

from __future__ import annotations

import numpy as np
import pytest

from app.codecs import HTJ2K_LOSSLESS_RPCL
from app.config import preset
from app.engine import ImageFailed, Phase, Refinement, RequestStarted
from app.transport import IncompleteBody
from app.transport.mock import MockResponse
from app.tree.framing import content_digest
from helpers import BASE, Site, htj2k_frame, image_pixels, instance_json, multipart_frame, run_mock

SOP = "1.2.3.4.1"
FRAMES = 8
SINGLE = preset("single")  # one stage of whole frames: the kind of stage that is batched
LIST_TYPE = 'multipart/related; type="application/octet-stream"; boundary=LIST'


def frame_url(number: int) -> str:
    return f"{BASE}/instances/{SOP}/frames/{number}"


def asked_frames(url: str) -> list[int]:
    return [int(n) for n in url.split("?")[0].rsplit("/", 1)[1].split(",")]


def list_body(parts: list[tuple[int, bytes]], *, location: bool = True, digest: dict | None = None) -> bytes:
    """A frame-list answer: a part per (frame number, codestream), in the order given."""
    out = b""
    for number, data in parts:
        head = f"--LIST\r\nContent-Type: application/octet-stream; transfer-syntax={HTJ2K_LOSSLESS_RPCL}\r\n"
        if location:
            head += f"Content-Location: {frame_url(number)}\r\n"
        if digest and number in digest:
            head += f"Content-Digest: {digest[number]}\r\n"
        out += ("" if not out else "\r\n").encode() + head.encode() + b"\r\n" + data
    return out + b"\r\n--LIST--\r\n"


@pytest.fixture(scope="module")
def frames():
    pixels = [image_pixels(64, 64, seed=k) for k in range(FRAMES)]
    return pixels, [htj2k_frame(p) for p in pixels]


def multiframe_site(frames, answer=None) -> Site:
    """One instance of FRAMES frames; ``answer(request, numbers)`` answers frame lists (None: the
    right answer, with Content-Location on each part)."""
    pixels, codestreams = frames
    site = Site()
    meta = instance_json(SOP, 1, 64, 64, HTJ2K_LOSSLESS_RPCL)
    meta["00280008"] = {"vr": "IS", "Value": [FRAMES]}
    site.metadata.append(meta)
    site.pixels = list(pixels)
    for number, data in enumerate(codestreams, 1):
        body, ctype = multipart_frame(data, HTJ2K_LOSSLESS_RPCL)
        site.files[frame_url(number)] = (body, ctype, {})

    def script(request, n):
        last = request.url.split("?")[0].rsplit("/", 1)[1]
        if "," not in last:
            return None
        numbers = asked_frames(request.url)
        if answer is not None:
            return answer(request, numbers)
        return MockResponse(200, {"content-type": LIST_TYPE},
                            list_body([(k, codestreams[k - 1]) for k in numbers]))

    site.script = script
    return site


def list_requests(transport) -> list:
    return [r for r in transport.requests if "," in r.url.rsplit("/", 1)[1]]


def single_requests(transport) -> list:
    return [r for r in transport.requests if "," not in r.url.rsplit("/", 1)[1]]


def assert_every_frame_final(site, events, engine, skip=()) -> None:
    for i, pixels in enumerate(site.pixels):
        if i in skip:
            continue
        finals = [e for e in events if isinstance(e, Refinement) and e.index == i and e.final]
        assert engine.phase(i) is Phase.FINAL and len(finals) == 1, (i, [e for e in events if isinstance(e, ImageFailed)])
        np.testing.assert_array_equal(finals[0].pixels, pixels)
        assert finals[0].url == frame_url(i + 1)  # named as a single-frame answer names it


def test_k_frames_come_in_one_request(frames):
    site = multiframe_site(frames)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1)
    assert_every_frame_final(site, events, engine)
    # the frame on screen goes first, alone; the other seven in one list, nearest first
    assert [r.url for r in transport.requests] == [frame_url(1), frame_url("2,3,4,5,6,7,8")]
    assert [e.url for e in events if isinstance(e, RequestStarted)] == [r.url for r in transport.requests]
    single_events, _, single_transport = run_mock(multiframe_site(frames), SINGLE, concurrency=1, frames_per_request=1)
    assert len(single_transport.requests) == FRAMES and not list_requests(single_transport)
    batched = {e.index: (e.status, e.rows, e.bytes_received) for e in events if isinstance(e, Refinement)}
    single = {e.index: (e.status, e.rows, e.bytes_received) for e in single_events if isinstance(e, Refinement)}
    assert batched.keys() == single.keys()
    assert all(batched[i][:2] == single[i][:2] for i in batched)


def test_frames_spread_over_the_connections(frames):
    """Eight frames on four connections: lists of two, not one list of seven on one connection;
    while the first list is out (the server may refuse lists) the other frames wait for its
    answer instead of going one a request."""
    site = multiframe_site(frames)
    events, engine, transport = run_mock(site, SINGLE, concurrency=4)
    assert_every_frame_final(site, events, engine)
    assert [len(asked_frames(r.url)) for r in transport.requests] == [1, 2, 2, 2, 1]


def test_frames_spread_over_six_connections_however_many_requests_are_in_flight(frames):
    """The page keeps 24 requests in flight, but a browser opens six connections to a host: the
    lists are sized for six (more requests would only queue in the browser)."""
    site = multiframe_site(frames)
    events, engine, transport = run_mock(site, SINGLE, concurrency=24)
    assert_every_frame_final(site, events, engine)
    assert [len(asked_frames(r.url)) for r in transport.requests] == [1, 2, 2, 2, 1]


@pytest.mark.parametrize("refusal", [
    MockResponse(404, {"content-type": "text/plain"}, b"no such file"),
    MockResponse(400, {"content-type": "application/json"}, b'{"error": "bad frame list"}'),
    MockResponse(200, {"content-type": "application/octet-stream"}, b"\x00" * 64),
    MockResponse(302, {"location": "/elsewhere"}),
], ids=["404", "400", "not-multipart", "redirect"])
def test_a_refused_list_falls_back_to_single_requests_for_the_rest_of_the_load(frames, refusal):
    site = multiframe_site(frames, answer=lambda request, numbers: refusal)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1, frames_per_request=3)
    assert_every_frame_final(site, events, engine)
    assert len(list_requests(transport)) == 1  # asked once, remembered
    assert sorted(asked_frames(r.url)[0] for r in single_requests(transport)) == list(range(1, FRAMES + 1))
    assert engine.batching.refused


def test_an_answer_with_too_few_parts_gives_no_frame_and_falls_back(frames):
    """Parts without Content-Location are handed over only when their count is right: a server
    answering frames 1 and 2 to ``frames/2,3,4`` never shows frame 1 as frame 2."""
    pixels, codestreams = frames
    wrong = lambda request, numbers: MockResponse(200, {"content-type": LIST_TYPE}, list_body(
        [(1, codestreams[0]), (2, codestreams[1])], location=False))
    site = multiframe_site(frames, answer=wrong)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1, frames_per_request=3)
    assert_every_frame_final(site, events, engine)
    assert engine.batching.refused and len(list_requests(transport)) == 1


def test_a_part_naming_another_frame_is_never_shown_for_the_frame_asked(frames):
    pixels, codestreams = frames
    shifted = lambda request, numbers: MockResponse(200, {"content-type": LIST_TYPE}, list_body(
        [(k - 1, codestreams[k - 2]) for k in numbers]))
    site = multiframe_site(frames, answer=shifted)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1, frames_per_request=3)
    assert_every_frame_final(site, events, engine)
    assert engine.batching.refused


def test_an_answer_without_locations_is_used_when_its_count_is_right(frames):
    pixels, codestreams = frames
    plain = lambda request, numbers: MockResponse(200, {"content-type": LIST_TYPE}, list_body(
        [(k, codestreams[k - 1]) for k in numbers], location=False))
    site = multiframe_site(frames, answer=plain)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1)
    assert_every_frame_final(site, events, engine)
    assert len(transport.requests) == 2 and not engine.batching.refused


def test_a_cut_answer_fetches_only_the_missing_frames_alone(frames):
    """The transfer ends inside the third part: the two whole parts are used, the third and the
    rest come one request each; the server is not taken for one that refuses lists."""
    pixels, codestreams = frames

    def cut(request, numbers):
        body = list_body([(k, codestreams[k - 1]) for k in numbers])
        third = body.index(b"--LIST", body.index(f"frames/{numbers[2]}".encode()) - 200)
        return MockResponse(200, {"content-type": LIST_TYPE}, body[:third + 300],
                            error=IncompleteBody("connection closed mid-body"))

    site = multiframe_site(frames, answer=cut)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1, frames_per_request=4)
    assert_every_frame_final(site, events, engine)
    assert not engine.batching.refused
    lists = [asked_frames(r.url) for r in list_requests(transport)]
    singles = [asked_frames(r.url)[0] for r in single_requests(transport)]
    assert lists[0] == [2, 3, 4, 5] and len(lists) == 2  # the next list was still asked
    assert singles[:3] == [1, 4, 5]  # frames 2 and 3 came in the first list


def test_one_broken_part_fails_only_its_frame(frames):
    """A part whose bytes do not match its Content-Digest fails its own frame, as a single answer
    would; the other parts of the same answer are shown."""
    pixels, codestreams = frames
    digests = {k: content_digest(codestreams[k - 1]) for k in range(1, FRAMES + 1)}
    broken = bytearray(codestreams[3])
    broken[len(broken) // 2] ^= 0xFF

    def answer(request, numbers):
        parts = [(k, bytes(broken) if k == 4 else codestreams[k - 1]) for k in numbers]
        return MockResponse(200, {"content-type": LIST_TYPE}, list_body(parts, digest=digests))

    site = multiframe_site(frames, answer=answer)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1)
    failed = [e for e in events if isinstance(e, ImageFailed)]
    assert [e.index for e in failed] == [3] and "Content-Digest" in failed[0].message
    assert_every_frame_final(site, events, engine, skip={3})
    assert len(transport.requests) == 2


def test_stages_of_byte_ranges_or_streamed_levels_stay_one_frame_a_request(frames):
    site = multiframe_site(frames)
    events, engine, transport = run_mock(site, preset("htj2k"), concurrency=1)
    assert_every_frame_final(site, events, engine)
    assert not list_requests(transport) and len(transport.requests) == FRAMES


def test_a_server_error_sends_the_frames_alone_without_giving_up_on_lists(frames):
    calls = []

    def flaky(request, numbers):
        calls.append(numbers)
        return MockResponse(503, {"retry-after": "0"}) if len(calls) == 1 else None

    pixels, codestreams = frames

    def answer(request, numbers):
        return flaky(request, numbers) or MockResponse(200, {"content-type": LIST_TYPE}, list_body(
            [(k, codestreams[k - 1]) for k in numbers]))

    site = multiframe_site(frames, answer=answer)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1, frames_per_request=4, retry_backoff=0)
    assert_every_frame_final(site, events, engine)
    assert not engine.batching.refused and len(calls) == 2


def test_frames_cancelled_while_their_list_arrives_report_nothing_and_hold_nothing(frames):
    """The user moves away while a list is arriving: its cancelled frames are not shown, the
    rest are, and no frame bytes stay counted in the budget."""
    pixels, codestreams = frames

    def answer(request, numbers):
        body = list_body([(k, codestreams[k - 1]) for k in numbers])
        return MockResponse(200, {"content-type": LIST_TYPE}, [body[i:i + 500] for i in range(0, len(body), 500)])

    cancelled = {4, 5, 6}

    def control(engine, event):
        if isinstance(event, Refinement) and event.index == 1:  # the list's first part is shown
            engine.cancel(cancelled)

    site = multiframe_site(frames, answer=answer)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1, control=control)
    assert [asked_frames(r.url) for r in transport.requests] == [[1], [2, 3, 4, 5, 6, 7, 8]]
    for i in cancelled:
        assert engine.phase(i) is Phase.CANCELLED and not [e for e in events if getattr(e, "index", None) == i
                                                           and isinstance(e, (Refinement, ImageFailed))]
    assert_every_frame_final(site, events, engine, skip=cancelled)
    assert engine.held_bytes == 0


def test_a_short_answer_naming_its_parts_gives_those_and_the_rest_alone(frames):
    """Two named parts for three frames: the two are shown from the list, the third is fetched
    alone, and the server is not asked for lists again (it does not answer them as asked)."""
    pixels, codestreams = frames
    short = lambda request, numbers: MockResponse(200, {"content-type": LIST_TYPE}, list_body(
        [(k, codestreams[k - 1]) for k in numbers[:2]]))
    site = multiframe_site(frames, answer=short)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1, frames_per_request=3)
    assert_every_frame_final(site, events, engine)
    assert engine.batching.refused and [asked_frames(r.url) for r in transport.requests][:3] == [[1], [2, 3, 4], [4]]


def test_a_part_larger_than_any_encoding_of_its_frame_fails_only_that_frame(frames):
    pixels, codestreams = frames
    huge = b"\xff" * (2 * 64 * 64 * 2 + 300 * 1024)

    def answer(request, numbers):
        return MockResponse(200, {"content-type": LIST_TYPE}, list_body(
            [(k, huge if k == 3 else codestreams[k - 1]) for k in numbers]))

    site = multiframe_site(frames, answer=answer)
    events, engine, transport = run_mock(site, SINGLE, concurrency=1)
    failed = [e for e in events if isinstance(e, ImageFailed)]
    assert [e.index for e in failed] == [2] and "bytes for one frame" in failed[0].message
    assert_every_frame_final(site, events, engine, skip={2})
    assert len(transport.requests) == 2
