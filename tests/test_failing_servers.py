"""The engine against a loopback server that misbehaves on purpose.

Every case ends in the right final image or a clear ImageFailed for the image hit, never a wrong
image reported as final, and the other images of the stack still load to their final image.
Transport timeouts and retry back-off are short so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from app.config import ImageQualityStatus, RetrieveConfig, preset
from app.convert import convert
from app.codecs import HTJ2K_LOSSLESS_RPCL, PixelFormat, decode_frame
from app.engine import ImageFailed, Refinement, RetrieveEngine
from app.readers import CodestreamScanner, MultipartReader, PartData
from app.study import discover
from app.transport.native import NativeTransport
from helpers import Action, Script, ScriptedHandler, ScriptedServer, ct_series, engine_options, stored_frames

STARTS_SERVERS = True  # conftest marks every test here ``servers``

IMAGES = 3
HIT = 1  # the stack position whose frame the server mangles


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A 3-image CT series (128x128, HTJ2K RPCL frames with 2 levels, JPEG-LS beside them)."""
    base = tmp_path_factory.mktemp("failing")
    inputs, source = ct_series(base / "in", IMAGES)
    series = source.SeriesInstanceUID
    out = base / "out"
    assert convert(inputs, out, "jls", quiet=True).ok
    study_dir = next((out / "studies").glob("*/series/*"))
    return {"root": out, "series": f"studies/{study_dir.parent.parent.name}/series/{series}",
            "pixels": source.pixel_array, "sops": [None] * IMAGES}


def run(tree, script: Script, config: RetrieveConfig | None = None, *, read_timeout: float = 2.0,
        retries: int = 2, hit: int = HIT, **options) -> tuple[list, RetrieveEngine, ScriptedServer]:
    async def main(server):
        transport = NativeTransport(connect_timeout=1.0, read_timeout=read_timeout)
        try:
            stack = await discover(transport, f"{server.url}/{tree['series']}")
            assert len(stack) == IMAGES
            server.httpd.hit_sop = stack.images[hit].sop_instance_uid
            engine = RetrieveEngine(stack, config or preset("single"), transport, **engine_options(
                retries=retries, retry_backoff=0.01, max_retry_after=0.5, concurrency=2, **options))
            events = [ev async for ev in engine.run()]
            return events, engine
        finally:
            await transport.aclose()

    server = ScriptedServer(tree["root"], "-", script)
    try:
        events, engine = asyncio.run(asyncio.wait_for(main(server), 20))
    finally:
        server.close()
    return events, engine, server


def refinements(events, index=None) -> list[Refinement]:
    return [e for e in events if isinstance(e, Refinement) and (index is None or e.index == index)]


def failures(events, index=None) -> list[ImageFailed]:
    return [e for e in events if isinstance(e, ImageFailed) and (index is None or e.index == index)]


def assert_others_final(tree, events, engine, hit=HIT) -> None:
    for i in range(IMAGES):
        if i == hit:
            continue
        assert engine.reached_final(i), (i, failures(events, i))
        np.testing.assert_array_equal(refinements(events, i)[-1].pixels, tree["pixels"])


def assert_right_or_failed(tree, events, engine, hit=HIT) -> str:
    """The hit image ends either in the exact final image or in ImageFailed; never a wrong final."""
    finals = [r for r in refinements(events, hit) if r.final]
    if finals:
        (final,) = finals
        np.testing.assert_array_equal(final.pixels, tree["pixels"])
        assert not failures(events, hit)
        return "final"
    assert failures(events, hit) and not engine.reached_final(hit)
    return "failed"


# -- HTTP errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 403, 410])
def test_client_errors_fail_the_image_at_once(tree, status):
    events, engine, server = run(tree, lambda p, n, r: Action("status", status=status, headers={}))
    (failed,) = failures(events, HIT)
    assert f"HTTP {status}" in failed.message
    assert len(server.hits()) == 1, "a 4xx is not retried"
    assert_others_final(tree, events, engine)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_then_fail_clearly(tree, status):
    events, engine, server = run(tree, lambda p, n, r: Action("status", status=status, headers={}))
    (failed,) = failures(events, HIT)
    assert f"HTTP {status}" in failed.message and "after 3 attempts" in failed.message
    assert len(server.hits()) == 3
    assert_others_final(tree, events, engine)


def test_503_with_retry_after_then_success(tree):
    def script(path, n, rng):
        return Action("status", status=503, headers={"Retry-After": "0.2"}) if n == 1 else None

    events, engine, server = run(tree, script)
    assert not failures(events)
    assert len(server.hits()) == 2
    assert assert_right_or_failed(tree, events, engine) == "final"
    assert_others_final(tree, events, engine)


def test_retry_after_is_capped(tree):
    def script(path, n, rng):
        return Action("status", status=503, headers={"Retry-After": "3600"}) if n == 1 else None

    events, engine, _ = run(tree, script)  # an hour's wait would overrun run()'s 20 s limit
    assert engine.reached_final(HIT)  # max_retry_after=0.5, not an hour


def test_no_retries_when_configured_off(tree):
    events, _, server = run(tree, lambda p, n, r: Action("status", status=503, headers={}), retries=0)
    (failed,) = failures(events, HIT)
    assert "attempts" not in failed.message and len(server.hits()) == 1


# -- broken transfers -----------------------------------------------------------------------------------


def test_connection_cut_mid_body_resumes_from_the_first_byte_not_held(tree):
    def script(path, n, rng):
        return Action("cut", after=10_000) if n == 1 else None

    events, engine, server = run(tree, script)
    assert not failures(events)
    assert [h["range"] for h in server.hits()] == [None, "bytes=10000-"]
    assert assert_right_or_failed(tree, events, engine) == "final"
    assert_others_final(tree, events, engine)


def test_connection_reset_mid_body_resumes_like_a_clean_close(tree):
    """A TCP reset after 10,000 bytes is a lost transfer like a close (issue 14 item 11)."""
    def script(path, n, rng):
        return Action("reset", after=10_000) if n == 1 else None

    events, engine, server = run(tree, script)
    assert not failures(events)
    assert [h["range"] for h in server.hits()][0] is None and len(server.hits()) == 2
    assert server.hits()[1]["range"].startswith("bytes=")
    assert assert_right_or_failed(tree, events, engine) == "final"


def test_two_content_lengths_and_an_early_close_resume_by_range(tree):
    """``Content-Length: n`` twice, then a close after 10,000 bytes: resumed, not a ValueError."""
    def script(path, n, rng):
        return Action("twice_length", after=10_000) if n == 1 else None

    events, engine, server = run(tree, script)
    assert not failures(events)
    assert [h["range"] for h in server.hits()] == [None, "bytes=10000-"]
    assert assert_right_or_failed(tree, events, engine) == "final"


def test_connection_cut_every_time_fails_the_image_only(tree):
    events, engine, server = run(tree, lambda p, n, r: Action("cut", after=1000 * n))
    (failed,) = failures(events, HIT)
    assert "closed" in failed.message and "after 3 attempts" in failed.message
    assert_others_final(tree, events, engine)


def test_slow_trickle_times_out_quickly_and_the_stack_loads(tree):
    events, engine, server = run(tree, lambda p, n, r: Action("trickle", step=100, pause=0.6),
                                 read_timeout=0.3, retries=1)
    (failed,) = failures(events, HIT)
    assert "timed out" in failed.message
    assert len(server.hits()) == 2
    assert_others_final(tree, events, engine)


def test_cut_to_a_server_that_ignores_range_on_the_retry(tree):
    def script(path, n, rng):
        return Action("cut", after=5000) if n == 1 else Action("full")

    events, engine, _ = run(tree, script)
    assert assert_right_or_failed(tree, events, engine) == "final"


# -- ranges -----------------------------------------------------------------------------------------------


SMALL_RANGES = RetrieveConfig.from_json({
    "stages": [{"id": "fast", "retrieveType": "fast"}, {"id": "final", "retrieveType": "final"}],
    "retrieveOptions": {"fast": {"rangeIndex": 0, "initialChunkSize": 4096, "chunkSize": 4096, "decodeLevel": 1},
                        "final": {"rangeIndex": -1}},
})


@pytest.mark.parametrize("value", ["bytes 7-4102/{size}", "bytes 0-4095/5", "bytes 0-9999999/{size}",
                                   "bytes */{size}", "garbage"])
def test_206_with_a_wrong_content_range(tree, value):
    events, engine, _ = run(tree, lambda p, n, r: Action("content_range", value=value), SMALL_RANGES)
    assert_right_or_failed(tree, events, engine)
    assert_others_final(tree, events, engine)


def test_200_after_206_replaces_the_partial_copy(tree):
    def script(path, n, rng):
        return Action("full") if n > 1 else None

    events, engine, server = run(tree, script, SMALL_RANGES)
    assert [h["range"] for h in server.hits()][0] == "bytes=0-4095"
    assert assert_right_or_failed(tree, events, engine) == "final"
    assert_others_final(tree, events, engine)


def test_range_ignored_from_the_start(tree):
    events, engine, _ = run(tree, lambda p, n, r: Action("full"), SMALL_RANGES)
    assert assert_right_or_failed(tree, events, engine) == "final"


# -- encodings, types, framing ----------------------------------------------------------------------------


def test_gzip_encoded_frames_decode_to_the_right_image(tree):
    events, engine, _ = run(tree, lambda p, n, r: Action("gzip"))
    assert assert_right_or_failed(tree, events, engine) == "final"


def test_byte_ranges_over_gzip_encoded_frames(tree):
    """Frames stored as .gz and sent with Content-Encoding: gzip, Range counting the stored bytes
    (issue 13 item 2): the first range shows what it can, the rest comes as one whole request,
    never a Range starting at the decoded length."""
    events, engine, server = run(tree, lambda p, n, r: Action("gzip_ranges"), SMALL_RANGES, hit=0)
    assert not failures(events)
    assert [h["range"] for h in server.hits()] == ["bytes=0-4095", None]
    assert assert_right_or_failed(tree, events, engine, hit=0) == "final"
    assert_others_final(tree, events, engine, hit=0)


@pytest.mark.parametrize("ctype", ["text/html", "image/jpeg", "application/json", "multipart/related",
                                   'multipart/related; boundary="wrong"', "image/jls", ""])
def test_wrong_content_type_never_gives_a_wrong_final(tree, ctype):
    events, engine, _ = run(tree, lambda p, n, r: Action("ctype", value=ctype))
    assert_right_or_failed(tree, events, engine)
    assert_others_final(tree, events, engine)


def _frame_parts(data: bytes) -> tuple[int, bytes, bytes]:
    """(offset of the codestream in the file, codestream, closing delimiter)."""
    reader = MultipartReader(None)
    codestream = b"".join(bytes(e.data) for e in reader.feed(data) if isinstance(e, PartData))
    start = reader.part_data_offset
    return start, codestream, data[start + len(codestream) :]


@pytest.mark.parametrize("mangle, outcome", [
    ("no closing boundary", "final"),  # the codestream is whole (EOC): the image is right
    ("half the body", "failed"),
    ("headers only", "failed"),
    ("empty part", "failed"),
    ("garbage", "failed"),
    ("empty", "failed"),
])
def test_truncated_or_broken_multipart_fails_clearly(tree, mangle, outcome):
    def make(data: bytes) -> bytes:
        start, codestream, tail = _frame_parts(data)
        return {
            "no closing boundary": data[: start + len(codestream)],
            "half the body": data[: len(data) // 2],
            "headers only": data[:start],
            "empty part": data[:start] + tail,
            "garbage": os.urandom(2000),
            "empty": b"",
        }[mangle]

    events, engine, _ = run(tree, lambda p, n, r: Action("body", make=make))
    assert assert_right_or_failed(tree, events, engine) == outcome
    assert_others_final(tree, events, engine)


# -- a good partial, then a bad end ---------------------------------------------------------------------


@pytest.mark.parametrize("tail", ["cut, closed properly", "garbage", "zeros", "EOC lost"])
def test_corrupt_end_after_a_good_partial_is_never_final(tree, tail):
    """The lowest level arrives intact and is shown; the rest is broken: ImageFailed, no final."""
    sample = stored_frames(tree["root"] / tree["series"], "instances/*/frames/1")[0].read_bytes()
    start, codestream, _ = _frame_parts(sample)
    level0_end = start + CodestreamScanner().feed(codestream)[0].level_end_offsets()[0]
    rng = np.random.default_rng(7)

    def make(data: bytes) -> bytes:
        begin, cs, closing = _frame_parts(data)
        keep = level0_end - begin
        rest = cs[keep:]
        if tail == "cut, closed properly":
            rest = rest[: len(rest) // 2]
        elif tail == "garbage":
            rest = rng.integers(0, 256, len(rest), dtype=np.uint8).tobytes()
        elif tail == "zeros":
            rest = bytes(len(rest))
        elif tail == "EOC lost":
            rest = rest[:-2]
        return data[:begin] + cs[:keep] + rest + closing

    events, engine, _ = run(tree, lambda p, n, r: Action("split", make=make, at=level0_end, pause=0.3),
                               preset("htj2k"))
    refs = refinements(events, HIT)
    assert refs and refs[0].status == ImageQualityStatus.SUBRESOLUTION and not refs[0].final
    assert (refs[0].rows, refs[0].columns) == (64, 64)
    assert not [r for r in refs if r.final], "a broken codestream was reported as the final image"
    (failed,) = failures(events, HIT)
    assert "codestream" in failed.message
    assert not engine.reached_final(HIT)
    assert_others_final(tree, events, engine)


def test_an_endless_frame_body_is_cut_at_the_frame_budget(tree):
    events, engine, _ = run(tree, lambda p, n, r: Action("endless", block=65536), retries=0,
                            max_frame_bytes=4 << 20)
    (failed,) = failures(events, HIT)
    assert "bytes for one frame" in failed.message
    assert_others_final(tree, events, engine)


def test_an_endless_metadata_body_is_refused(tree, monkeypatch):
    from app import dicomjson
    from app.study import DiscoveryError, fetch_json

    monkeypatch.setattr(dicomjson, "MAX_JSON_BYTES", 1 << 20)
    server = ScriptedServer(tree["root"], "-", lambda p, n, r: None)
    original = ScriptedHandler._act

    def act(self, a, data, ctype, rng):
        if "metadata" in self.path:
            return original(self, Action("endless", block=65536), b"[" * 65536, ctype, rng)
        return original(self, a, data, ctype, rng)

    monkeypatch.setattr(ScriptedHandler, "_act", act)

    async def main():
        transport = NativeTransport(connect_timeout=1.0, read_timeout=2.0)
        try:
            await fetch_json(transport, f"{server.url}/{tree['series']}/metadata")
        finally:
            await transport.aclose()

    try:
        with pytest.raises(DiscoveryError, match="bytes of JSON"):
            asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        server.close()


# -- integrity -------------------------------------------------------------------------------------


def _silent_flip(codestream: bytes, fmt, expected: np.ndarray) -> bytes:
    """The codestream with one bit flipped inside entropy-coded data such that the decoder raises
    nothing and returns wrong pixels: what only the converter's Content-Digest can catch."""
    for offset in range(len(codestream) * 2 // 3, len(codestream) - 16):
        mangled = bytearray(codestream)
        mangled[offset] ^= 0x10
        try:
            scanner = CodestreamScanner()
            scanner.feed(bytes(mangled))
            scanner.close()
            pixels = decode_frame(bytes(mangled), HTJ2K_LOSSLESS_RPCL, fmt)
        except Exception:  # noqa: BLE001 - this flip is caught anyway; look for a silent one
            continue
        if pixels.shape == expected.shape and not np.array_equal(pixels, expected):
            return bytes(mangled)
    raise AssertionError("no silent bit flip found")


@pytest.mark.parametrize("config", ["htj2k", "nonProgressive", "htj2kByteRange"])
def test_a_silent_bit_flip_is_caught_by_the_content_digest(tree, config):
    """One flipped bit inside entropy-coded data decodes without an error to wrong pixels; the
    part's Content-Digest (written by the converter) turns it into ImageFailed, never a final."""
    sample = stored_frames(tree["root"] / tree["series"], "instances/*/frames/1")[0].read_bytes()
    assert b"Content-Digest: sha-256=:" in sample[:400]
    expected = tree["pixels"]
    fmt = PixelFormat(rows=expected.shape[0], columns=expected.shape[1], bits_allocated=16,
                      bits_stored=16, pixel_representation=int(expected.dtype.kind == "i"))

    def make(data: bytes) -> bytes:
        begin, cs, closing = _frame_parts(data)
        return data[:begin] + _silent_flip(cs, fmt, expected) + closing

    events, engine, _ = run(tree, lambda p, n, r: Action("body", make=make), preset(config))
    assert not [r for r in refinements(events, HIT) if r.final], "corrupt bytes became the final image"
    failed = failures(events, HIT)  # one per stage that fetched the frame
    assert failed and all("Content-Digest" in f.message for f in failed)
    assert not engine.reached_final(HIT)
    assert_others_final(tree, events, engine)


def test_an_unsupported_content_encoding_fails_at_once(tree):
    """Asking again would get the same answer: one request, a clear message, no retries."""
    events, engine, server = run(tree, lambda p, n, r: Action("encoding", value="br"), retries=3)
    (failed,) = failures(events, HIT)
    assert "unsupported Content-Encoding 'br'" in failed.message
    assert len(server.hits()) == 1
    assert_others_final(tree, events, engine)


def test_a_drip_under_the_read_timeout_is_given_up(tree):
    """20 bytes every 50 ms never trips a 2 s read timeout; the low-speed limit ends it."""
    events, engine, server = run(tree, lambda p, n, r: Action("drip", step=20, pause=0.05),
                                    retries=0, low_speed=(2000, 0.5))
    (failed,) = failures(events, HIT)
    assert "fewer than 2000 bytes in 0.5 s" in failed.message
    assert_others_final(tree, events, engine)


def test_a_stall_is_given_up_whatever_the_transport(tree):
    """No byte after the headers: the engine's own deadline ends it, not only the transport's
    read timeout (the browser's fetch has none)."""
    events, engine, server = run(tree, lambda p, n, r: Action("stall", pause=3.0), retries=0,
                                    read_timeout=10.0, low_speed=(1000, 0.5))
    (failed,) = failures(events, HIT)
    assert "no bytes for 0.5 s" in failed.message
    assert_others_final(tree, events, engine)


def test_the_cli_names_the_content_type_of_a_non_image_answer(tree):
    """Issue 14.3: a frame answered 200 text/html (a login page, an SPA fallback) is never taken
    as pixels: the CLI fails that image naming the type, the others load to their final image."""
    import io

    from app.cli import load

    out, err = io.StringIO(), io.StringIO()
    server = ScriptedServer(tree["root"], "-", lambda p, n, r: Action("ctype", value="text/html; charset=utf-8"))

    async def main():
        transport = NativeTransport(connect_timeout=1.0, read_timeout=2.0)
        try:
            stack = await discover(transport, f"{server.url}/{tree['series']}")
            server.httpd.hit_sop = stack.images[HIT].sop_instance_uid
            return await load(f"{server.url}/{tree['series']}", preset("single"), out=out, err=err,
                              transport=transport)
        finally:
            await transport.aclose()

    try:
        _, requested, final = asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        server.close()
    assert final == IMAGES - 1
    assert "answered 'text/html', not a frame" in err.getvalue()
    assert "1 of 3 images failed" in err.getvalue()
    assert len(server.hits()) == 1  # not retried: the server would answer the same
