"""The progressive engine against real loopback servers (serve.py, and a misbehaving one)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.config import PRESETS, ImageQualityStatus, RetrieveConfig, preset
from app.convert import convert
from app.engine import (
    FirstBytes,
    ImageFailed,
    Refinement,
    RequestFinished,
    RequestStarted,
    RetrieveEngine,
    frame_request_url,
)
from app.study import discover
from app.transport.native import NativeTransport
from helpers import Behaviour, OddServer, engine_options, stored_frames

STARTS_SERVERS = True  # conftest marks every test here ``servers``

PROJECT = Path(__file__).resolve().parent.parent
RADIOGRAPH_SERIES = "1.3.51.0.7.2481275770.33884.26178.36453.11104.7622.4803"
MR_STACK_SERIES = "0.0.0.0.3.8811.2.20010413115754.12432"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def radiograph(demo_data):
    """(series URL path, source pixels) of the real 3072x2614 radiograph."""
    meta = json.loads((demo_data / "demo.json").read_text())
    entry = next(d for d in meta if d["seriesInstanceUID"] == RADIOGRAPH_SERIES)
    source = pydicom.dcmread(PROJECT / ".cache" / "demo" / "radiograph" / "cat.dcm").pixel_array
    return entry["url"], source


@pytest.fixture(scope="module")
def mr_stack_url(demo_data) -> str:
    meta = json.loads((demo_data / "demo.json").read_text())
    return next(d for d in meta if d["seriesInstanceUID"] == MR_STACK_SERIES)["url"]


@pytest.fixture(scope="module")
def ct_tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ct")
    summary = convert([get_testdata_file("CT_small.dcm")], out, "jls,jlsThumbnail", quiet=True)
    assert not summary.failures
    return out


@pytest.fixture(scope="module")
def ct_raw_tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ctraw")
    summary = convert([get_testdata_file("CT_small.dcm")], out, "jls", raw=True, quiet=True)
    assert not summary.failures
    return out


def ct_pixels() -> np.ndarray:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array


def run_engine(url: str, config: RetrieveConfig, *, control=None, **kwargs) -> tuple[list, RetrieveEngine]:
    async def main():
        transport = NativeTransport()
        try:
            stack = await discover(transport, url)
            engine = RetrieveEngine(stack, config, transport, **engine_options(**kwargs))
            events = []
            async for ev in engine.run():
                events.append(ev)
                if control:
                    control(engine, ev)
            return events, engine
        finally:
            await transport.aclose()

    return asyncio.run(main())


def refinements(events, index=None) -> list[Refinement]:
    return [e for e in events if isinstance(e, Refinement) and (index is None or e.index == index)]


def frame_log(log, fragment="/frames/"):
    return [e for e in log if fragment in e["path"]]


# -- the real radiograph through serve.py ----------------------------------------------------------


def test_streaming_htj2k_refines_by_whole_levels_to_the_lossless_image(radiograph, demo_server, demo_data):
    path, source = radiograph
    demo_server.log.clear()
    events, engine = run_engine(demo_server.url + path, preset("htj2k"))
    refs = refinements(events)
    sizes = [r.rows * r.columns for r in refs]
    assert len(refs) >= 3 and sizes == sorted(set(sizes)), [(r.rows, r.columns) for r in refs]
    assert all(r.status == ImageQualityStatus.SUBRESOLUTION and not r.final for r in refs[:-1])
    last = refs[-1]
    assert last.final and last.status == ImageQualityStatus.FULL_RESOLUTION
    assert (last.rows, last.columns) == (2614, 3072) == source.shape
    np.testing.assert_array_equal(last.pixels, source)
    for r in refs[:-1]:  # each refinement covers the same physical extent
        assert r.pixel_spacing[1] * r.columns == pytest.approx(0.14 * 3072, rel=1e-9)
        assert r.rows == -(-2614 // (1 << r.reduce))
    frames = frame_log(demo_server.log)
    assert len(frames) == 1 and frames[0]["status"] == 200
    assert engine.reached_final(0)
    # every partial decode had all the tile-parts of its level: never a guess from a byte count
    from app.readers import CodestreamScanner, MultipartReader, PartData

    (frame_file,) = stored_frames(demo_data, f"studies/*/series/{RADIOGRAPH_SERIES}/instances/*/frames/1")
    raw = frame_file.read_bytes()
    reader = MultipartReader(None)
    codestream = b"".join(bytes(e.data) for e in reader.feed(raw) if isinstance(e, PartData))
    ends = CodestreamScanner().feed(codestream)[0].level_end_offsets()
    for r in refs[:-1]:
        level = len(ends) - 1 - r.reduce
        assert r.bytes_received >= reader.part_data_offset + ends[level]


def test_byte_ranges_fetch_every_byte_once(radiograph, demo_server, demo_data):
    path, source = radiograph
    demo_server.log.clear()
    events, _ = run_engine(demo_server.url + path, preset("htj2kRangeThenStream"))
    frames = frame_log(demo_server.log)
    assert [e["status"] for e in frames] == [206] * len(frames) and len(frames) >= 2
    size = stored_frames(demo_data / path.removeprefix("/dicomweb/"), "instances/*/frames/1")[0].stat().st_size
    assert sum(e["bytes_sent"] for e in frames) == size
    spans = []
    for e in frames:
        a, b = re.match(r"bytes=(\d+)-(\d*)", e["range"]).groups()
        spans.append((int(a), int(b) if b else size - 1))
    spans.sort()  # the second range goes out while the first is arriving: log order may vary
    assert spans[0][0] == 0 and all(spans[i][1] + 1 == spans[i + 1][0] for i in range(len(spans) - 1))
    # chunkSize 128 KB holds the whole 384x327 level (130,720 B): no extension, one more request
    assert spans == [(0, 131071), (131072, size - 1)]
    refs = refinements(events)
    first, last = refs[0], refs[-1]
    assert first.status == ImageQualityStatus.SUBRESOLUTION and first.reduce == 3  # decodeLevel 3: 384x327
    assert (first.rows, first.columns) == (327, 384)
    assert first.bytes_received == 131072
    np.testing.assert_array_equal(last.pixels, source)
    assert last.final


def test_first_range_ends_at_the_level_it_reaches_then_the_rest_streams(radiograph, demo_server):
    path, source = radiograph
    demo_server.log.clear()
    doc = json.loads(json.dumps(PRESETS["htj2kRangeThenStream"]))
    doc["retrieveOptions"]["singleFast"]["initialChunkSize"] = 65536
    events, _ = run_engine(demo_server.url + path, RetrieveConfig.from_json(doc), viewport=(600, 700))
    refs = refinements(events)
    first = refs[0]
    # decodeLevel 3 allows 384x327 and up; 64 KB reaches into that level: the range ends with it,
    # not with the (larger) level that fills the viewport
    assert (first.rows, first.columns) == (327, 384)
    starts = [e for e in events if isinstance(e, RequestStarted)]
    assert starts[0].byte_range == (0, 65535)
    assert starts[1].byte_range[1] + 1 == first.bytes_received  # stopped exactly at the level's end
    assert starts[2].byte_range == (first.bytes_received, None)  # then the rest, once
    # the second range is asked for while the first is still arriving (its TLM says where the
    # level ends), not one round trip later
    finished = [e for e in events if isinstance(e, RequestFinished)]
    assert events.index(starts[1]) < events.index(finished[0])
    # the rest is streamed: the level that fills 600x700 shows before the lossless image
    assert [(r.rows, r.columns) for r in refs[1:]] == [(654, 768), (2614, 3072)]
    assert refs[1].status == ImageQualityStatus.SUBRESOLUTION
    np.testing.assert_array_equal(refs[-1].pixels, source)


def test_jls_reduced_asks_for_the_thumbnail_first(radiograph, demo_server):
    path, source = radiograph
    demo_server.log.clear()
    events, _ = run_engine(demo_server.url + path, preset("jlsReduced"))
    paths = [e["path"] for e in demo_server.log if "/instances/" in e["path"]]
    assert "/jlsThumbnail/" in paths[0] and "/jls/" in paths[1] and len(paths) == 2
    thumb, final = refinements(events)
    assert thumb.status == ImageQualityStatus.SUBRESOLUTION and (thumb.rows, thumb.columns) == (654, 768)
    assert thumb.pixel_spacing == pytest.approx((0.14 * 2614 / 654, 0.14 * 3072 / 768))
    assert final.final and final.status == ImageQualityStatus.FULL_RESOLUTION
    np.testing.assert_array_equal(final.pixels, source)


# -- edge cases on a misbehaving server ------------------------------------------------------------


def series_url(server: OddServer, tree: Path) -> str:
    (study,) = [p for p in (tree / "studies").iterdir() if p.is_dir()]
    (series,) = [p for p in (study / "series").iterdir() if p.is_dir()]
    return f"{server.url}/studies/{study.name}/series/{series.name}"


@pytest.mark.parametrize(
    "behaviour",
    [
        {"ignore_range": True},
        {"full_after_first_range": True},
        {"no_content_range": True},
    ],
)
def test_odd_range_servers_still_end_in_the_right_image(radiograph, demo_data, behaviour):
    path, source = radiograph
    server = OddServer(demo_data, Behaviour(**behaviour))
    try:
        events, engine = run_engine(server.url + path.removeprefix("/dicomweb"), preset("htj2kRangeThenStream"))
    finally:
        server.close()
    assert not [e for e in events if isinstance(e, ImageFailed)]
    last = refinements(events)[-1]
    assert last.final
    np.testing.assert_array_equal(last.pixels, source)
    frames = frame_log(server.log)
    if behaviour.get("ignore_range"):
        assert len(frames) == 1 and frames[0]["status"] == 200  # the full body is used as the final
    if behaviour.get("full_after_first_range"):
        assert [e["status"] for e in frames][-1] == 200


def test_416_at_the_end_of_a_raw_file_means_complete(ct_raw_tree):
    server = OddServer(ct_raw_tree, Behaviour(no_content_range=True))
    config = RetrieveConfig.from_json({
        "stages": [{"id": "fast", "retrieveType": "singleFast"}, {"id": "final", "retrieveType": "singleFinal"}],
        "retrieveOptions": {
            "singleFast": {"framesPath": "/jls/", "rangeIndex": 0},
            "singleFinal": {"framesPath": "/jls/", "rangeIndex": -1},
        },
    })
    try:
        events, _ = run_engine(series_url(server, ct_raw_tree), config)
    finally:
        server.close()
    assert [e["status"] for e in frame_log(server.log, "/jls/")] == [206, 416]
    (ref,) = refinements(events)
    assert ref.final
    np.testing.assert_array_equal(ref.pixels, ct_pixels())


def test_a_cancelled_image_stops_its_transfer(radiograph, demo_data):
    path, _ = radiograph
    server = OddServer(demo_data, Behaviour(delay=0.01))  # ~1.6 MB/s: 4+ s for the whole frame

    def control(engine, ev):
        if isinstance(ev, FirstBytes):
            asyncio.get_running_loop().call_later(0.2, engine.cancel, [ev.index])

    try:
        events, engine = run_engine(server.url + path.removeprefix("/dicomweb"), preset("htj2k"), control=control)
    finally:
        server.close()
    finished = [e for e in events if isinstance(e, RequestFinished)]
    assert finished and finished[-1].cancelled
    (entry,) = frame_log(server.log)
    assert entry["bytes_sent"] < 2_000_000
    assert not [r for r in refinements(events) if events.index(r) > events.index(finished[-1])]
    assert not engine.reached_final(0)


# -- stacks ----------------------------------------------------------------------------------------


def test_one_bad_image_never_stops_the_stack(mr_stack_url, demo_data):
    server = OddServer(demo_data, Behaviour())
    url = server.url + mr_stack_url.removeprefix("/dicomweb")
    try:
        events, engine = run_engine(url, preset("single"))
        sop = refinements(events)[3].sop_instance_uid
        server.httpd.behaviour = Behaviour(missing={sop})
        events, engine = run_engine(url, preset("single"))
    finally:
        server.close()
    failed = [e for e in events if isinstance(e, ImageFailed)]
    assert len(failed) == 1 and failed[0].sop_instance_uid == sop and "404" in failed[0].message
    assert sum(engine.reached_final(i) for i in range(20)) == 19


def test_current_image_first_and_bounded_concurrency(mr_stack_url, demo_server):
    in_flight = []

    def control(engine, ev):
        if isinstance(ev, RequestStarted):
            in_flight.append(1)
        elif isinstance(ev, RequestFinished):
            in_flight.append(-1)

    async def main():
        transport = NativeTransport()
        stack = await discover(transport, demo_server.url + mr_stack_url)
        engine = RetrieveEngine(stack, preset("single"), transport,
                                **engine_options(concurrency=3, on_event=lambda e: control(None, e)))
        engine.set_current(12)
        events = [e async for e in engine.run()]
        await transport.aclose()
        return events, engine

    events, engine = asyncio.run(main())
    starts = [e.index for e in events if isinstance(e, RequestStarted)]
    assert starts[0] == 12 and set(starts[1:3]) == {11, 13}
    running, peak = 0, 0
    for d in in_flight:
        running += d
        peak = max(peak, running)
    assert peak <= 3
    assert all(engine.reached_final(i) for i in range(20))
    positions = [engine.stack.images[i].position[2] for i in range(20)]
    assert positions == sorted(positions) or positions == sorted(positions, reverse=True)


def test_interleaved_stack_with_small_images(mr_stack_url, demo_server):
    events, engine = run_engine(demo_server.url + mr_stack_url, preset("interleavedStack"))
    assert all(engine.reached_final(i) for i in range(20))
    refs = refinements(events)
    assert all(r.rows == 256 for r in refs)
    replicas = [r for r in refs if r.status < ImageQualityStatus.SUBRESOLUTION]
    assert replicas  # nearbyFrames: neighbours show a copy until their own image arrives
    for i in range(20):  # never a step down
        statuses = [r.status for r in refinements(events, i)]
        assert statuses == sorted(statuses) and statuses[-1] == ImageQualityStatus.FULL_RESOLUTION


def test_thumbnail_never_replaces_a_better_image(ct_tree):
    server = OddServer(ct_tree, Behaviour())
    config = RetrieveConfig.from_json({
        "stages": [{"id": "full", "retrieveType": "a"}, {"id": "thumb", "retrieveType": "b"}],
        "retrieveOptions": {"a": {}, "b": {"framesPath": "/jlsThumbnail/", "imageQualityStatus": 6}},
    })
    try:
        events, engine = run_engine(series_url(server, ct_tree), config)
    finally:
        server.close()
    (ref,) = refinements(events)
    assert ref.stage_id == "full" and ref.final
    np.testing.assert_array_equal(ref.pixels, ct_pixels())
    assert not frame_log(server.log, "/jlsThumbnail/")  # skipped: it could only be worse


def test_frame_request_url():
    from app.config import RetrieveOptions

    url = "http://h/s/instances/1.2/frames/1"
    assert frame_request_url(url, RetrieveOptions(frames_path="/jlsThumbnail/")) == "http://h/s/instances/1.2/jlsThumbnail/1"
    assert frame_request_url(url, RetrieveOptions(url_arguments={"accept": "image/jhc"})) == url + "?accept=image%2Fjhc"


# -- the CPython transport ---------------------------------------------------------------------------


class _Chunked(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        import gzip as gz

        payload = bytes(range(256)) * 1000
        if self.path == "/slow":
            time.sleep(1.0)
        body = gz.compress(payload)
        try:
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 1000):
                piece = body[i : i + 1000]
                self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def test_native_transport_chunked_gzip_keep_alive_and_timeout():
    from app.transport import TransportError

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Chunked)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"

    async def main():
        transport = NativeTransport(read_timeout=0.3)
        try:
            for _ in range(3):
                resp = await transport.get(url + "/x")
                data = b"".join([c async for c in resp.chunks()])
                assert resp.status == 200 and data == bytes(range(256)) * 1000
            assert transport.connections_opened == 1  # kept alive and reused
            with pytest.raises(TransportError, match="timed out"):
                await transport.get(url + "/slow")
        finally:
            await transport.aclose()

    try:
        asyncio.run(main())
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_scrolling_away_cancels_and_reprioritises(mr_stack_url, demo_data):
    server = OddServer(demo_data, Behaviour(delay=0.02))
    url = server.url + mr_stack_url.removeprefix("/dicomweb")
    marks = {}

    def control(engine, ev):
        if isinstance(ev, RequestStarted) and "cancelled" not in marks:
            marks["cancelled"] = len(seen)
            engine.cancel(range(0, 10))
            engine.set_current(15)
        seen.append(ev)

    seen: list = []
    try:
        events, engine = run_engine(url, preset("single"), control=control, concurrency=2)
    finally:
        server.close()
    after = seen[marks["cancelled"] + 1 :]
    # (events reach the consumer through a queue: a request already under way may still be reported)
    started_after = [e.index for e in after if isinstance(e, RequestStarted) and e.index >= 10]
    assert started_after[:3] == [15, 14, 16]  # the new current image first, then its neighbours
    assert not [e for e in after if isinstance(e, Refinement) and e.index < 10]
    assert all(engine.reached_final(i) for i in range(10, 20))
    assert not any(engine.reached_final(i) for i in range(0, 10))


def test_scrolling_onto_a_waiting_image_preempts_the_least_wanted_transfer(mr_stack_url, demo_data):
    """Every slot busy with prefetches when the user scrolls to an image nobody has asked for yet:
    the running job farthest from it gives way at once, resumes later from the first byte it did
    not hold, and every image still ends lossless."""
    server = OddServer(demo_data, Behaviour(delay=0.1))  # nothing for 0.1 s, then 16 KB per 0.1 s
    url = server.url + mr_stack_url.removeprefix("/dicomweb")
    marks = {}

    def control(engine, ev):
        seen.append(ev)
        if isinstance(ev, RequestStarted) and ev.index == 1 and "scrolled" not in marks:
            marks["scrolled"] = len(seen)
            engine.set_current(15)  # 0 and 1 are running, 15 waits

    seen: list = []
    try:
        events, engine = run_engine(url, preset("single"), control=control, concurrency=2, preempt_delay=0)
        log = list(server.httpd.log)
    finally:
        server.close()
    after = seen[marks["scrolled"]:]
    (gave_way,) = [e for e in after if isinstance(e, RequestFinished) and e.cancelled]
    assert gave_way.index == 0  # of the two running, the one farthest from 15
    starts = [e for e in after if isinstance(e, RequestStarted)]
    assert starts[0].index == 15  # the image on screen took the freed slot
    resumed = [e for e in starts if e.index == 0]
    assert len(resumed) == 1 and resumed[0].byte_range == ((gave_way.bytes_received, None)
                                                           if gave_way.bytes_received else None)
    assert all(engine.reached_final(i) for i in range(20))
    assert not [e for e in events if isinstance(e, ImageFailed)]
    frames = [e for e in log if "/frames/" in e["path"]]
    assert len(frames) == 21  # one request per image, and one more for the image that gave way


def test_fast_scrolling_preempts_only_where_the_user_stops(mr_stack_url, demo_data):
    """set_current five times within the preempt delay: one transfer gives way, not five."""
    server = OddServer(demo_data, Behaviour(delay=0.1))
    url = server.url + mr_stack_url.removeprefix("/dicomweb")
    marks = {}

    def control(engine, ev):
        # once both slots are busy (the image on screen, 0, is answered before 1 and 2 start)
        if isinstance(ev, RequestStarted) and ev.index == 2 and "scrolled" not in marks:
            marks["scrolled"] = True
            for target in (15, 16, 17, 18, 19):
                engine.set_current(target)

    try:
        events, engine = run_engine(url, preset("single"), control=control, concurrency=2, preempt_delay=0.05)
    finally:
        server.close()
    gave_way = [e for e in events if isinstance(e, RequestFinished) and e.cancelled]
    assert len(gave_way) == 1
    starts = [e.index for e in events if isinstance(e, RequestStarted)]
    assert starts[:4] == [0, 1, 2, 19]  # then where the user stopped
    assert all(engine.reached_final(i) for i in range(20))


def test_streaming_on_a_slow_link_shows_levels_long_before_the_last_byte(radiograph, demo_data):
    path, source = radiograph
    server = OddServer(demo_data, Behaviour(delay=0.002))  # ~8 MB/s
    try:
        events, _ = run_engine(server.url + path.removeprefix("/dicomweb"), preset("htj2k"))
    finally:
        server.close()
    refs = refinements(events)
    (done,) = [e for e in events if isinstance(e, RequestFinished)]
    # the first level shows while the transfer is still under way, from a small part of the bytes
    assert events.index(refs[0]) < events.index(done) and refs[0].bytes_received < 300_000
    assert len(refs) >= 4  # one decode per level that arrived while the rest was on its way
    np.testing.assert_array_equal(refs[-1].pixels, source)


def test_aclose_stops_a_running_load(radiograph, demo_data):
    path, _ = radiograph
    server = OddServer(demo_data, Behaviour(delay=0.01))

    async def main():
        transport = NativeTransport()
        stack = await discover(transport, server.url + path.removeprefix("/dicomweb"))
        engine = RetrieveEngine(stack, preset("htj2k"), transport)
        events = []

        async def consume():
            async for ev in engine.run():
                events.append(ev)

        consumer = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)
        await engine.aclose()
        await asyncio.wait_for(consumer, 2)
        await transport.aclose()
        return events

    try:
        events = asyncio.run(main())  # wait_for(consumer, 2) fails the test if aclose leaves it running
    finally:
        server.close()
    assert [e for e in events if isinstance(e, RequestFinished)][-1].cancelled
