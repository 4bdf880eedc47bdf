"""The pure parts of retrieval: the per-image state table, the scheduler and the policy."""

from __future__ import annotations

import pytest

from app.codecs import HTJ2K_LOSSLESS_RPCL, JPEG_BASELINE, JPEG_LS_LOSSLESS
from app.config import ImageQualityStatus as Q
from app.config import RetrieveConfig, RetrieveOptions, preset
from app.retrieve import FetchKind, Phase, Policy, RetrievePolicy
from app.retrieve.scheduler import Scheduler
from app.retrieve.state import TRANSITIONS, Change, ImageState, StateError
from app.study import Alternate
from helpers import Site, htj2k_frame, image_pixels

# -- state ------------------------------------------------------------------------------------------------


def state() -> ImageState:
    site = Site()
    pixels = image_pixels(8, 8)
    site.add_frame(0, pixels, b"", HTJ2K_LOSSLESS_RPCL)
    return ImageState(site.stack().images[0])


def test_a_load_walks_the_table():
    st = state()
    path = [st.apply(c) for c in (Change.REQUEST, Change.START, Change.PREEMPT, Change.GAVE_WAY, Change.START,
                                  Change.STAGE_END, Change.START, Change.FINISH_FINAL)]
    assert path == [Phase.QUEUED, Phase.RUNNING, Phase.GIVING_WAY, Phase.QUEUED, Phase.RUNNING, Phase.QUEUED,
                    Phase.RUNNING, Phase.FINAL]
    assert repr(st.phase) == "FINAL"


@pytest.mark.parametrize("phase, change", [(Phase.IDLE, Change.START), (Phase.QUEUED, Change.PREEMPT),
                                           (Phase.FINAL, Change.START), (Phase.CANCELLED, Change.GAVE_WAY)])
def test_impossible_changes_raise(phase, change):
    st = state()
    st.phase = phase
    with pytest.raises(StateError, match=change.name):
        st.apply(change)
    assert st.phase is phase


def test_every_phase_can_be_cancelled_and_forgotten():
    for phase, row in TRANSITIONS.items():
        assert row[Change.CANCEL] is Phase.CANCELLED and row[Change.FORGET] is Phase.IDLE, phase


# -- scheduler --------------------------------------------------------------------------------------------


def test_current_image_first_then_stage_order_then_distance():
    s = Scheduler([5, 5])
    for i in range(5):
        s.queue(i, [0, 1])
    s.set_current(2)
    order = []
    while (job := s.take()) is not None:
        order.append(job)
        s.done(job[0])
    assert order[:4] == [(2, 0), (2, 1), (1, 0), (3, 0)]
    assert [j for j in order if j[1] == 1][1:] == [(1, 1), (3, 1), (0, 1), (4, 1)]
    assert s.idle


def test_one_job_per_image_at_a_time():
    s = Scheduler([5, 5])
    s.queue(0, [0, 1])
    assert s.take() == (0, 0)
    assert s.take() is None  # its second stage waits for the first
    s.done(0)
    assert s.take() == (0, 1)


def test_victim_is_the_least_wanted_running_job_and_only_if_less_wanted():
    s = Scheduler([5])
    for i in range(6):
        s.queue(i, [0])
    running = [s.take(), s.take()]  # images 0 and 1
    s.set_current(5)
    assert s.victim(running) == 0  # of the two running, the one farther from image 5
    s.set_current(1)
    assert s.victim(running) is None  # the image on screen is running already


# -- policy -----------------------------------------------------------------------------------------------


def policy_for(syntax: str, config: RetrieveConfig, alternates=None) -> tuple[Policy, object]:
    site = Site()
    pixels = image_pixels(64, 64)
    site.add_frame(0, pixels, b"", syntax)
    stack = site.stack()
    stack.alternates.update(alternates or {})
    return Policy(config, stack, None), stack.images[0]


def test_a_lossy_syntax_is_final_at_lossy():
    rules, image = policy_for(JPEG_BASELINE, preset("htj2kByteRange"))
    fast, final = rules.config.stages
    assert rules.target_status(image, rules.options(fast, image)) == Q.LOSSY
    # what the first range makes of the whole frame cannot be beaten by the second stage
    assert not rules.later_stage_improves(image, 0, (int(Q.LOSSY), 64 * 64), True, 1)
    assert rules.later_stage_improves(image, 0, (int(Q.SUBRESOLUTION), 32 * 32), True, 1)


def test_thumbnail_and_lossy_alternates_lower_the_target():
    config = preset("jlsReduced")
    rules, image = policy_for(JPEG_LS_LOSSLESS, config, {
        "/jlsThumbnail/": Alternate("jlsThumbnail", transfer_syntax=JPEG_LS_LOSSLESS, lossy=False, scale=4,
                                    rows=16, columns=16, thumbnail=True),
        "/jls/": Alternate("jls", transfer_syntax=JPEG_LS_LOSSLESS, lossy=False, rows=64, columns=64),
    })
    thumb, full = config.stages[:2]
    assert rules.target_status(image, rules.options(thumb, image)) == Q.SUBRESOLUTION
    assert rules.target_status(image, rules.options(full, image)) == Q.FULL_RESOLUTION
    assert rules.status_of(image, rules.options(full, image), JPEG_LS_LOSSLESS, 32, 32, partial=False) \
        == Q.SUBRESOLUTION  # smaller than the image: never full


def test_fetch_kinds_follow_cornerstone_precedence():
    assert Policy.fetch_kind(RetrieveOptions(range_index=0, streaming=True)) is FetchKind.RANGES
    assert Policy.fetch_kind(RetrieveOptions(range_index=-1, streaming=True)) is FetchKind.STREAM
    assert Policy.fetch_kind(RetrieveOptions()) is FetchKind.WHOLE


def test_wanted_level_ends_the_first_range_at_a_level():
    from app.retrieve.body import FrameBody

    pixels = image_pixels(256, 256)
    codestream = htj2k_frame(pixels)
    rules, image = policy_for(HTJ2K_LOSSLESS_RPCL, preset("htj2kByteRange"))
    body = FrameBody("u", HTJ2K_LOSSLESS_RPCL)
    body.set_content_type("image/jphc")
    body.feed(codestream[:600])  # the main header and TLM, no level yet
    options = RetrieveOptions(range_index=0, initial_chunk_size=1000, decode_level=2)
    level = rules.wanted_level(body, options, 1000)
    ends = body.header.level_end_offsets()
    assert level is not None and level.reduce == 2 and body.level_file_end(level.level) == ends[0]


def test_retry_delay_honours_retry_after_up_to_its_cap():
    settings = RetrievePolicy(retry_backoff=0.5, max_retry_after=2.0)
    assert [settings.retry_delay(a, None) for a in range(3)] == [0.5, 1.0, 2.0]
    assert settings.retry_delay(0, 3600.0) == 2.0 and settings.retry_delay(0, 0.2) == 0.2
    with pytest.raises(ValueError):
        RetrievePolicy(concurrency=0)


# -- the frame body ----------------------------------------------------------------------------------------


def test_a_frame_body_takes_nothing_after_its_framing_was_rejected():
    """STYLE pair 2: a reader that raised is never fed again, whatever a later stage brings."""
    from app.readers.multipart import MultipartError
    from app.retrieve.body import FrameBody

    body = FrameBody("u", HTJ2K_LOSSLESS_RPCL)
    body.set_content_type('multipart/related; type="application/octet-stream"; boundary=B')
    with pytest.raises(MultipartError):
        body.feed(b"--B\r\nno colon here\r\n\r\nabc")
    with pytest.raises(MultipartError, match="already rejected"):
        body.feed(b"\r\n--B--\r\n")
    assert body.error and not body.data


def test_a_codestream_the_scanner_rejects_is_never_whole():
    from app.codecs import DecodeError
    from app.retrieve.body import FrameBody

    codestream = bytearray(htj2k_frame(image_pixels(64, 64)))
    codestream[2:4] = b"\xff\x99"  # not SIZ after SOC
    body = FrameBody("u", HTJ2K_LOSSLESS_RPCL)
    body.set_content_type("image/jphc")
    body.feed(bytes(codestream))
    body.end_of_file()
    assert body.scanner is None and body.codestream_error
    with pytest.raises(DecodeError, match="corrupt codestream"):
        body.check_whole_codestream()
