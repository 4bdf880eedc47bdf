"""Issue 14, items 3-6: a non-image answer never becomes a final image; JSON nesting is bounded
before parsing; memory is tied to what the metadata declares; discovery documents get the frames'
low-speed rule, a deadline and size budgets, and frames a per-image deadline.

Engine and discovery logic over a MockTransport with an injected clock (no sockets, no sleeps);
one loopback server test for a metadata trickle through the real NativeTransport. RSS is printed
as a report only: the assertions are on the errors and on how many bytes were handed over.
"""

from __future__ import annotations

import asyncio
import json
import resource
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app import dicomjson as dj
from app.config import preset
from app.engine import ImageFailed, Refinement
from app.study import DiscoveryError, discover
from app.transport.errors import IncompleteBody
from app.transport.limits import LimitedTransport, TransferLimits
from app.transport.mock import MockResponse, MockTransport
from app.transport.native import NativeTransport
from app.uids import EXPLICIT_VR_LITTLE_ENDIAN
from helpers import BASE, Site, image_pixels, instance_json, run_mock

SIZE = 64  # 64x64 16-bit frames: 8,192 bytes each


def native_site(count: int = 3) -> Site:
    site = Site()
    for i in range(count):
        pixels = image_pixels(SIZE, SIZE, seed=i)
        site.add_frame(i, pixels, pixels.tobytes(), EXPLICIT_VR_LITTLE_ENDIAN, multipart=False)
    return site


def frame_url(index: int) -> str:
    return f"{BASE}/instances/1.2.3.4.{index + 1}/frames/1"


def refinements(events, index):
    return [e for e in events if isinstance(e, Refinement) and e.index == index]


def failures(events, index):
    return [e for e in events if isinstance(e, ImageFailed) and e.index == index]


def assert_others_final(site, events, engine, hit):
    for i in range(len(site.pixels)):
        if i != hit:
            assert engine.reached_final(i), failures(events, i)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """A clock the test moves: a body chunk may take 'seconds' without any real waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trickle(data: bytes, step: int, seconds: float, clock: Clock):
    async def body():
        for i in range(0, len(data), step):
            clock.now += seconds
            yield data[i:i + step]
    return body()


# -- 14.3: a non-image answer never becomes a final image -------------------------------------------

LOGIN_PAGE = b"<!doctype html><html><head><title>Sign in</title></head><body>" + b"<p>Please sign in</p>" * 600


@pytest.mark.parametrize("ctype, body", [
    ("text/html; charset=utf-8", LOGIN_PAGE),
    ("application/json", json.dumps({"error": "unauthorised", "pad": "x" * 9000}).encode()),
])
def test_a_200_page_or_json_for_a_frame_is_a_failure_naming_its_type(ctype, body):
    """Before: the page's bytes were taken as raw pixels and reported FULL and final."""
    site = native_site()
    assert len(body) >= SIZE * SIZE * 2
    site.files[frame_url(1)] = (body, ctype, {})
    events, engine, transport = run_mock(site, preset("single"), retries=2)
    assert not refinements(events, 1), "a non-image answer was shown"
    (failed,) = failures(events, 1)
    assert ctype.split(";")[0] in failed.message and "not a frame" in failed.message
    assert not engine.reached_final(1)
    assert len([r for r in transport.requests if r.url == frame_url(1)]) == 1  # not retried
    assert_others_final(site, events, engine, 1)


@pytest.mark.parametrize("extra", [-2, 2, 4096])
def test_native_pixel_data_of_any_other_length_is_not_the_frame(extra):
    """An octet-stream body that is not exactly the declared size (a page served with a generic
    type, a frame of another image): before, a longer one was cut to size and shown as final."""
    site = native_site()
    good = site.pixels[1].tobytes()
    body = good[:extra] if extra < 0 else good + b"\0" * extra
    site.files[frame_url(1)] = (body, "application/octet-stream", {})
    events, engine, _ = run_mock(site, preset("single"))
    assert not refinements(events, 1)
    (failed,) = failures(events, 1)
    assert f"has {len(body)} bytes, {len(good)} expected" in failed.message
    assert_others_final(site, events, engine, 1)


# -- 14.4: nesting bounded before parsing -------------------------------------------------------------

def test_deep_nesting_is_refused_before_the_parser_runs(monkeypatch):
    """40 KB of ``[`` overflows the browser's stack inside Pyodide's parser, below Python's
    recursion limit: the bound must hold before json.loads is ever called."""
    def no_parse(*args, **kwargs):
        raise AssertionError("the parser saw a document nested deeper than the bound")

    monkeypatch.setattr(dj.json, "loads", no_parse)
    for doc in (b"[" * 40_000 + b"]" * 40_000, b"[" * 500 + b"]" * 500,
                b'[{"a":' * 100 + b"1" + b"}]" * 100):
        with pytest.raises(dj.JsonRefused, match="nested more than 64 levels"):
            dj.loads(doc)


def test_nesting_inside_strings_and_real_sequences_still_parse():
    doc = {"00081115": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["[[[{{{\\\"]]"]}}]}}
    for _ in range(15):  # 15 nested sequences: 46 levels
        doc = {"00081115": {"vr": "SQ", "Value": [doc]}}
    assert dj.loads(json.dumps([doc]).encode()) == [doc]
    assert dj.loads(b'["[[[[' + b"[" * 100 + b'"]') == ["[[[[" + "[" * 100]


def serve_json(documents: dict[str, bytes], clock: Clock | None = None, step: int = 0, seconds: float = 0.0):
    def handler(request):
        body = documents.get(request.url)
        if body is None:
            return MockResponse(404, {"content-length": "0"})
        if clock is not None and request.url.endswith("/metadata"):
            return MockResponse(200, {"content-type": "application/dicom+json"}, trickle(body, step, seconds, clock))
        return MockResponse(200, {"content-type": "application/dicom+json"}, body)
    return MockTransport(handler)


def test_deeply_nested_metadata_is_a_clear_discovery_error():
    """Before: the cause was hidden behind "no series metadata at ..."."""
    transport = serve_json({f"{BASE}/metadata": b"[" * 40_000 + b"]" * 40_000})
    with pytest.raises(DiscoveryError, match="nested more than 64 levels deep"):
        asyncio.run(discover(transport, BASE))


# -- 14.5: memory tied to the data --------------------------------------------------------------------

def test_metadata_made_of_empty_objects_is_refused_before_parsing():
    """3 million ``{}`` (9 MB of text) would parse into ~200 MB of dicts (5.2 GB at the old
    256 MB byte budget)."""
    doc = b"[" + b"{}," * 3_000_000 + b"{}]"
    transport = serve_json({f"{BASE}/metadata": doc})
    before = rss_mb()
    with pytest.raises(DiscoveryError, match="more than 2000000 objects and arrays"):
        asyncio.run(discover(transport, BASE))
    print(f"\n[report] RSS peak {rss_mb():.0f} MB (was {before:.0f} MB before the {len(doc) >> 20} MB document)")


def test_an_endless_part_body_is_cut_at_a_multiple_of_the_declared_frame():
    """A 64x64 16-bit frame (8 KB) whose multipart part never ends: before, up to 1 GiB per
    transfer was held; now a small multiple of the declared size."""
    site = native_site()
    sent = []

    async def endless():
        yield b"--B\r\nContent-Type: application/octet-stream\r\n\r\n"
        for _ in range(512):  # 32 MB, then the connection drops
            yield bytes(65536)
        raise IncompleteBody("cut")

    def script(request, n):
        if request.url == frame_url(1):
            sent.append(MockResponse(200, {"content-type": 'multipart/related; boundary="B"'}, endless()))
            return sent[-1]
        return None

    site.script = script
    before = rss_mb()
    events, engine, _ = run_mock(site, preset("single"), retries=0)
    (failed,) = failures(events, 1)
    cap = 2 * SIZE * SIZE * 2 + 256 * 1024
    assert f"more than {cap} bytes for one frame" in failed.message
    assert sent[0].sent <= cap + 65536
    assert not refinements(events, 1)
    assert_others_final(site, events, engine, 1)
    print(f"\n[report] {sent[0].sent} bytes handed over; RSS peak {rss_mb():.0f} MB (was {before:.0f} MB)")


# -- 14.6: discovery documents paced like frames; per-image deadline ----------------------------------

def metadata_doc(count: int = 2) -> bytes:
    return json.dumps([instance_json(f"1.2.3.4.{i + 1}", i + 1, SIZE, SIZE, EXPLICIT_VR_LITTLE_ENDIAN)
                       for i in range(count)]).encode()


def discover_with_clock(transport, clock, **limits):
    limited = LimitedTransport(transport, TransferLimits(**limits), clock)
    return asyncio.run(asyncio.wait_for(discover(limited, BASE), 20))


def test_metadata_under_the_low_speed_limit_is_given_up():
    """1 byte every 2 s (the page hung > 150 s on it): under 1,024 bytes in 30 s."""
    clock = Clock()
    transport = serve_json({f"{BASE}/metadata": metadata_doc()}, clock, step=1, seconds=2.0)
    with pytest.raises(DiscoveryError, match="fewer than 1024 bytes in 30 s"):
        discover_with_clock(transport, clock)


def test_metadata_trickling_just_above_the_low_speed_limit_meets_the_deadline():
    clock = Clock()
    doc = metadata_doc(40)
    transport = serve_json({f"{BASE}/metadata": doc}, clock, step=600, seconds=15.0)  # 1,200 B / 30 s
    assert len(doc) / 600 * 15 > 120
    with pytest.raises(DiscoveryError, match="not done after 120 s"):
        discover_with_clock(transport, clock, deadline_seconds=120.0)


def test_a_good_metadata_answer_under_the_same_rules_loads():
    clock = Clock()
    transport = serve_json({f"{BASE}/metadata": metadata_doc()}, clock, step=4096, seconds=1.0)
    assert len(discover_with_clock(transport, clock)) == 2


@pytest.mark.parametrize("status", [404, 403, 500])
def test_error_bodies_are_not_read(status):
    """Before: a 404/4xx body was read to its end (an endless one never ended), a 500's too."""
    answers = []

    async def endless():
        for _ in range(1000):
            yield b"x" * 65536

    def handler(request):
        answers.append(MockResponse(status, {"content-type": "text/html"}, endless()))
        return answers[-1]

    with pytest.raises(DiscoveryError):
        asyncio.run(asyncio.wait_for(discover(MockTransport(handler), BASE), 20))
    assert answers and all(a.sent == 0 and a.closed for a in answers)


def test_a_frame_trickling_just_above_the_low_speed_limit_meets_the_image_deadline():
    """100 bytes every 2 s (1,500 B / 30 s) passes the low-speed rule; the 60 s deadline of the
    image's stage ends it. Before: it ran to the end (and in the page, for hours on a large frame)."""
    site = native_site()
    clock = Clock()
    data = site.pixels[1].tobytes()

    def script(request, n):
        if request.url == frame_url(1):
            return MockResponse(200, {"content-type": "application/octet-stream",
                                      "content-length": str(len(data))}, trickle(data, 100, 2.0, clock))
        return None

    site.script = script
    events, engine, transport = run_mock(site, preset("single"), clock=clock, image_seconds=60.0, retries=2,
                                         concurrency=1)  # one at a time: the test clock is shared
    (failed,) = failures(events, 1)
    assert "not done after 60 s" in failed.message
    assert len([r for r in transport.requests if r.url == frame_url(1)]) == 1  # a deadline is not retried
    assert not refinements(events, 1)
    assert_others_final(site, events, engine, 1)


# -- a real loopback server: the NativeTransport under the same rule -----------------------------------

class _Trickle(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if not self.path.endswith("/metadata"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.server.doc
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(0, len(body), 10):  # 100 bytes/s: well inside any read timeout
                self.wfile.write(body[i:i + 10])
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass


def test_a_metadata_trickle_from_a_real_server_is_given_up():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    server.doc = metadata_doc(4)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dicomweb/studies/1.2.3/series/1.2.3.4"

    async def main():
        transport = NativeTransport(connect_timeout=1.0, read_timeout=5.0)
        try:
            return await discover(transport, url, limits=TransferLimits(low_speed_bytes=500, low_speed_seconds=0.5,
                                                                        deadline_seconds=5.0))
        finally:
            await transport.aclose()

    try:
        started = time.monotonic()
        with pytest.raises(DiscoveryError, match="fewer than 500 bytes in 0.5 s"):
            asyncio.run(asyncio.wait_for(main(), 15))
        print(f"\n[report] given up after {time.monotonic() - started:.2f} s "
              f"(the whole document would take {len(server.doc) / 100:.0f} s)")
    finally:
        server.shutdown()
        server.server_close()
