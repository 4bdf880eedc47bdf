"""The engine against a loopback server that misbehaves on purpose.

Every case ends in the right final image or a clear ImageFailed for the image hit, never a wrong
image reported as final, and the other images of the stack still load to their final image.
Transport timeouts and retry back-off are short so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from app.config import ImageQualityStatus, RetrieveConfig, preset
from app.convert import convert
from app.codecs import HTJ2K_LOSSLESS_RPCL, PixelFormat, decode_frame
from app.engine import ImageFailed, Refinement, RetrieveEngine
from app.readers import CodestreamScanner, MultipartReader, PartData
from app.study import discover
from app.transport.native import NativeTransport

IMAGES = 3
HIT = 1  # the stack position whose frame the server mangles


# -- a scripted static server ----------------------------------------------------------------------


class Action:
    """What the server does with one frame request (None: answer it properly)."""

    def __init__(self, kind: str, **kw) -> None:
        self.kind = kind
        self.__dict__.update(kw)


Script = Callable[[str, int, str | None], Action | None]  # (path, nth request of it, Range) -> action


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        path = self.path.split("?")[0]
        rel = path.removeprefix("/dicomweb").lstrip("/")
        file = srv.root / rel
        if not file.is_file() and (srv.root / (rel + ".gz")).is_file():
            file = srv.root / (rel + ".gz")
        rng = self.headers.get("Range")
        with srv.lock:
            srv.counts[path] = n = srv.counts.get(path, 0) + 1
            srv.log.append({"path": path, "range": rng, "n": n})
        if not file.is_file():
            return self._send(404, b"", {})
        data = file.read_bytes()
        ctype = "application/octet-stream"
        if data.startswith(b"--"):
            boundary = data[2 : data.index(b"\r\n")].decode()
            ctype = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
        action = srv.script(path, n, rng) if "/frames/" in path and f"/{srv.hit_sop}/" in path else None
        try:
            self._act(action, data, ctype, rng)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _act(self, a: Action | None, data: bytes, ctype: str, rng: str | None) -> None:
        kind = a.kind if a else "ok"
        if kind == "status":
            return self._send(a.status, b"server trouble\n", {"Content-Type": "text/plain", **a.headers})
        if kind == "cut":  # promise the whole file, send part of it, hang up
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(data))})
            self.wfile.write(data[: a.after])
            self.wfile.flush()
            self.close_connection = True
            return
        if kind == "trickle":  # a few bytes, then silence longer than the client's read timeout
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(data))})
            for i in range(0, min(len(data), 3 * a.step), a.step):
                self.wfile.write(data[i : i + a.step])
                self.wfile.flush()
                time.sleep(a.pause)
            self.close_connection = True
            return
        if kind == "stall":  # headers, then nothing at all
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(data))})
            self.wfile.flush()
            time.sleep(a.pause)
            self.close_connection = True
            return
        if kind == "drip":  # the whole body, a few bytes at a time, each well inside the read timeout
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(data))})
            for i in range(0, len(data), a.step):
                self.wfile.write(data[i : i + a.step])
                self.wfile.flush()
                time.sleep(a.pause)
            return
        if kind == "content_range":  # 206 with a Content-Range that lies about the start
            return self._send(206, data, {"Content-Type": ctype, "Content-Range": a.value.format(size=len(data))})
        if kind == "gzip":
            return self._send(200, gzip.compress(data), {"Content-Type": ctype, "Content-Encoding": "gzip"})
        if kind == "ctype":
            return self._send(200, data, {"Content-Type": a.value})
        if kind == "encoding":  # a Content-Encoding the client never asked for
            return self._send(200, data, {"Content-Type": ctype, "Content-Encoding": a.value})
        if kind == "body":  # another body, properly framed
            return self._send(200, a.make(data), {"Content-Type": ctype})
        if kind == "split":  # a good prefix, a pause, then another tail
            body = a.make(data)
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(body))})
            self.wfile.write(body[: a.at])
            self.wfile.flush()
            time.sleep(a.pause)
            self.wfile.write(body[a.at :])
            return
        if kind == "endless":  # a chunked body that never ends
            self._head(200, {"Content-Type": ctype, "Transfer-Encoding": "chunked"})
            block = data[: a.block] or b"x" * a.block
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.close_connection = True
            return
        if kind == "full":  # ignore Range
            return self._send(200, data, {"Content-Type": ctype})
        m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return self._send(206, data[start : end + 1],
                              {"Content-Type": ctype, "Content-Range": f"bytes {start}-{end}/{len(data)}"})
        self._send(200, data, {"Content-Type": ctype})

    def _head(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self._head(status, {**headers, "Content-Length": str(len(body))})
        self.wfile.write(body)


class ScriptedServer:
    def __init__(self, root: Path, hit_sop: str, script: Script) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.root = root
        self.httpd.hit_sop = hit_sop
        self.httpd.script = script
        self.httpd.counts = {}
        self.httpd.log = []
        self.httpd.lock = threading.Lock()
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicomweb"

    def hits(self) -> list[dict]:
        return [e for e in self.httpd.log if f"/{self.httpd.hit_sop}/" in e["path"] and "/frames/" in e["path"]]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A 3-image CT series (128x128, HTJ2K RPCL frames with 2 levels, JPEG-LS beside them)."""
    base = tmp_path_factory.mktemp("failing")
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = generate_uid()
    inputs = []
    for number in range(1, IMAGES + 1):
        source.SOPInstanceUID = generate_uid()
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        source.SeriesInstanceUID = series
        source.InstanceNumber = number
        source.ImagePositionPatient = [0, 0, number]
        path = base / "in" / f"ct{number}.dcm"
        path.parent.mkdir(exist_ok=True)
        source.save_as(path)
        inputs.append(path)
    out = base / "out"
    assert convert(inputs, out, "jls", quiet=True).ok
    study_dir = next((out / "studies").glob("*/series/*"))
    return {"root": out, "series": f"studies/{study_dir.parent.parent.name}/series/{series}",
            "pixels": source.pixel_array, "sops": [None] * IMAGES}


def run(tree, script: Script, config: RetrieveConfig | None = None, *, read_timeout: float = 2.0,
        retries: int = 2, hit: int = HIT, **engine_options) -> tuple[list, RetrieveEngine, ScriptedServer, float]:
    async def main(server):
        transport = NativeTransport(connect_timeout=1.0, read_timeout=read_timeout)
        try:
            stack = await discover(transport, f"{server.url}/{tree['series']}")
            assert len(stack) == IMAGES
            server.httpd.hit_sop = stack.images[hit].sop_instance_uid
            engine = RetrieveEngine(stack, config or preset("single"), transport, retries=retries,
                                    retry_backoff=0.01, max_retry_after=0.5, concurrency=2,
                                    **engine_options)
            events = [ev async for ev in engine.run()]
            return events, engine
        finally:
            await transport.aclose()

    server = ScriptedServer(tree["root"], "-", script)
    t = time.perf_counter()
    try:
        events, engine = asyncio.run(asyncio.wait_for(main(server), 20))
    finally:
        server.close()
    return events, engine, server, time.perf_counter() - t


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
    events, engine, server, _ = run(tree, lambda p, n, r: Action("status", status=status, headers={}))
    (failed,) = failures(events, HIT)
    assert f"HTTP {status}" in failed.message
    assert len(server.hits()) == 1, "a 4xx is not retried"
    assert_others_final(tree, events, engine)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_then_fail_clearly(tree, status):
    events, engine, server, _ = run(tree, lambda p, n, r: Action("status", status=status, headers={}))
    (failed,) = failures(events, HIT)
    assert f"HTTP {status}" in failed.message and "after 3 attempts" in failed.message
    assert len(server.hits()) == 3
    assert_others_final(tree, events, engine)


def test_503_with_retry_after_then_success(tree):
    def script(path, n, rng):
        return Action("status", status=503, headers={"Retry-After": "0.2"}) if n == 1 else None

    events, engine, server, elapsed = run(tree, script)
    assert not failures(events)
    assert len(server.hits()) == 2 and elapsed >= 0.2
    assert_right_or_failed(tree, events, engine) == "final"
    assert_others_final(tree, events, engine)


def test_retry_after_is_capped(tree):
    def script(path, n, rng):
        return Action("status", status=503, headers={"Retry-After": "3600"}) if n == 1 else None

    events, engine, _, elapsed = run(tree, script)
    assert engine.reached_final(HIT) and elapsed < 5  # max_retry_after=0.5, not an hour


def test_no_retries_when_configured_off(tree):
    events, _, server, _ = run(tree, lambda p, n, r: Action("status", status=503, headers={}), retries=0)
    (failed,) = failures(events, HIT)
    assert "attempts" not in failed.message and len(server.hits()) == 1


# -- broken transfers -----------------------------------------------------------------------------------


def test_connection_cut_mid_body_resumes_from_the_first_byte_not_held(tree):
    def script(path, n, rng):
        return Action("cut", after=10_000) if n == 1 else None

    events, engine, server, _ = run(tree, script)
    assert not failures(events)
    assert [h["range"] for h in server.hits()] == [None, "bytes=10000-"]
    assert assert_right_or_failed(tree, events, engine) == "final"
    assert_others_final(tree, events, engine)


def test_connection_cut_every_time_fails_the_image_only(tree):
    events, engine, server, _ = run(tree, lambda p, n, r: Action("cut", after=1000 * n))
    (failed,) = failures(events, HIT)
    assert "closed" in failed.message and "after 3 attempts" in failed.message
    assert_others_final(tree, events, engine)


def test_slow_trickle_times_out_quickly_and_the_stack_loads(tree):
    events, engine, server, elapsed = run(tree, lambda p, n, r: Action("trickle", step=100, pause=0.6),
                                          read_timeout=0.3, retries=1)
    (failed,) = failures(events, HIT)
    assert "timed out" in failed.message
    assert len(server.hits()) == 2 and elapsed < 6
    assert_others_final(tree, events, engine)


def test_cut_to_a_server_that_ignores_range_on_the_retry(tree):
    def script(path, n, rng):
        return Action("cut", after=5000) if n == 1 else Action("full")

    events, engine, _, _ = run(tree, script)
    assert assert_right_or_failed(tree, events, engine) == "final"


# -- ranges -----------------------------------------------------------------------------------------------


SMALL_RANGES = RetrieveConfig.from_json({
    "stages": [{"id": "fast", "retrieveType": "fast"}, {"id": "final", "retrieveType": "final"}],
    "retrieveOptions": {"fast": {"rangeIndex": 0, "chunkSize": 4096, "decodeLevel": 1},
                        "final": {"rangeIndex": -1}},
})


@pytest.mark.parametrize("value", ["bytes 7-4102/{size}", "bytes 0-4095/5", "bytes 0-9999999/{size}",
                                   "bytes */{size}", "garbage"])
def test_206_with_a_wrong_content_range(tree, value):
    events, engine, _, _ = run(tree, lambda p, n, r: Action("content_range", value=value), SMALL_RANGES)
    assert_right_or_failed(tree, events, engine)
    assert_others_final(tree, events, engine)


def test_200_after_206_replaces_the_partial_copy(tree):
    def script(path, n, rng):
        return Action("full") if n > 1 else None

    events, engine, server, _ = run(tree, script, SMALL_RANGES)
    assert [h["range"] for h in server.hits()][0] == "bytes=0-4095"
    assert assert_right_or_failed(tree, events, engine) == "final"
    assert_others_final(tree, events, engine)


def test_range_ignored_from_the_start(tree):
    events, engine, _, _ = run(tree, lambda p, n, r: Action("full"), SMALL_RANGES)
    assert assert_right_or_failed(tree, events, engine) == "final"


# -- encodings, types, framing ----------------------------------------------------------------------------


def test_gzip_encoded_frames_decode_to_the_right_image(tree):
    events, engine, _, _ = run(tree, lambda p, n, r: Action("gzip"))
    assert assert_right_or_failed(tree, events, engine) == "final"


@pytest.mark.parametrize("ctype", ["text/html", "image/jpeg", "application/json", "multipart/related",
                                   'multipart/related; boundary="wrong"', "image/jls", ""])
def test_wrong_content_type_never_gives_a_wrong_final(tree, ctype):
    events, engine, _, _ = run(tree, lambda p, n, r: Action("ctype", value=ctype))
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

    events, engine, _, _ = run(tree, lambda p, n, r: Action("body", make=make))
    assert assert_right_or_failed(tree, events, engine) == outcome
    assert_others_final(tree, events, engine)


# -- a good partial, then a bad end ---------------------------------------------------------------------


@pytest.mark.parametrize("tail", ["cut, closed properly", "garbage", "zeros", "EOC lost"])
def test_corrupt_end_after_a_good_partial_is_never_final(tree, tail):
    """The lowest level arrives intact and is shown; the rest is broken: ImageFailed, no final."""
    sample = next((tree["root"] / tree["series"]).glob("instances/*/frames/1")).read_bytes()
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

    events, engine, _, _ = run(tree, lambda p, n, r: Action("split", make=make, at=level0_end, pause=0.3),
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
    events, engine, _, elapsed = run(tree, lambda p, n, r: Action("endless", block=65536), retries=0,
                                     max_frame_bytes=4 << 20)
    (failed,) = failures(events, HIT)
    assert "bytes for one frame" in failed.message and elapsed < 8
    assert_others_final(tree, events, engine)


def test_an_endless_metadata_body_is_refused(tree, monkeypatch):
    from app import dicomjson
    from app.study import DiscoveryError, fetch_json

    monkeypatch.setattr(dicomjson, "MAX_JSON_BYTES", 1 << 20)
    server = ScriptedServer(tree["root"], "-", lambda p, n, r: None)
    original = _Handler._act

    def act(self, a, data, ctype, rng):
        if "metadata" in self.path:
            return original(self, Action("endless", block=65536), b"[" * 65536, ctype, rng)
        return original(self, a, data, ctype, rng)

    monkeypatch.setattr(_Handler, "_act", act)

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
    sample = next((tree["root"] / tree["series"]).glob("instances/*/frames/1")).read_bytes()
    assert b"Content-Digest: sha-256=:" in sample[:400]
    expected = tree["pixels"]
    fmt = PixelFormat(rows=expected.shape[0], columns=expected.shape[1], bits_allocated=16,
                      bits_stored=16, pixel_representation=int(expected.dtype.kind == "i"))

    def make(data: bytes) -> bytes:
        begin, cs, closing = _frame_parts(data)
        return data[:begin] + _silent_flip(cs, fmt, expected) + closing

    events, engine, _, _ = run(tree, lambda p, n, r: Action("body", make=make), preset(config))
    assert not [r for r in refinements(events, HIT) if r.final], "corrupt bytes became the final image"
    failed = failures(events, HIT)  # one per stage that fetched the frame
    assert failed and all("Content-Digest" in f.message for f in failed)
    assert not engine.reached_final(HIT)
    assert_others_final(tree, events, engine)


def test_an_unsupported_content_encoding_fails_at_once(tree):
    """Asking again would get the same answer: one request, a clear message, no retries."""
    events, engine, server, _ = run(tree, lambda p, n, r: Action("encoding", value="br"), retries=3)
    (failed,) = failures(events, HIT)
    assert "unsupported Content-Encoding 'br'" in failed.message
    assert len(server.hits()) == 1
    assert_others_final(tree, events, engine)


def test_a_drip_under_the_read_timeout_is_given_up(tree):
    """20 bytes every 50 ms never trips a 2 s read timeout; the low-speed limit ends it."""
    events, engine, server, _ = run(tree, lambda p, n, r: Action("drip", step=20, pause=0.05),
                                    retries=0, low_speed=(2000, 0.5))
    (failed,) = failures(events, HIT)
    assert "fewer than 2000 bytes in 0.5 s" in failed.message
    assert_others_final(tree, events, engine)


def test_a_stall_is_given_up_whatever_the_transport(tree):
    """No byte after the headers: the engine's own deadline ends it, not only the transport's
    read timeout (the browser's fetch has none)."""
    events, engine, server, _ = run(tree, lambda p, n, r: Action("stall", pause=3.0), retries=0,
                                    read_timeout=10.0, low_speed=(1000, 0.5))
    (failed,) = failures(events, HIT)
    assert "no bytes for 0.5 s" in failed.message
    assert_others_final(tree, events, engine)
