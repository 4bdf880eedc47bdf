"""Hostile bytes to the readers, the DICOM JSON reader and the decoders.

Every input ends in a result or an exception of the documented type (MultipartError,
CodestreamError, DiscoveryError, DecodeError, ValueError for loads), quickly; never another
exception, a hang or an allocation of what a hostile header declares.
"""

from __future__ import annotations

import base64
import gzip
import json
import signal
import struct
import tracemalloc
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from app import dicomjson as dj
from app.codecs import CODECS, MAX_FRAME_BYTES, DecodeError, PixelFormat, decode_frame
from app.convert import _htj2k_lossless
from app.readers.codestream import CodestreamComplete, CodestreamError, CodestreamScanner, MainHeader, ResolutionComplete
from app.readers.multipart import MAX_HEADER_BYTES, MultipartEnd, MultipartError, MultipartReader, PartData, PartEnd, PartHeaders
from app.study import MAX_STACK_IMAGES, DiscoveryError, stack_from_metadata
from helpers import split

# OpenJPH reports some garbage through an "Exception ignored" inside imagecodecs; the call still raises
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SETTINGS = settings(derandomize=True, max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(SETTINGS, max_examples=60)
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
SERIES = "http://127.0.0.1:1/dicomweb/studies/1/series/2"


@contextmanager
def time_limit(seconds: float):
    """Fail instead of hanging (SIGALRM: the main thread, as pytest runs tests)."""
    def expire(*_):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@lru_cache(maxsize=None)
def ct_codestream() -> tuple[bytes, np.ndarray]:
    """A real HTJ2K RPCL codestream (CT_small, 128x128, 2 levels) and its pixels."""
    import pydicom

    pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array
    return bytes(_htj2k_lossless(pixels).codestream), pixels


CT_FMT = PixelFormat(128, 128, bits_allocated=16, bits_stored=16, pixel_representation=1)


# -- multipart -----------------------------------------------------------------------------------------


def feed_all(reader: MultipartReader, chunks: list[bytes]) -> list:
    events = []
    for c in chunks:
        events += reader.feed(c)
    events += reader.close()
    return events


@SETTINGS
@given(st.binary(max_size=3000), st.lists(st.integers(0, 4000), max_size=8),
       st.sampled_from([None, b"B", b"BOUNDARY_0123456789"]))
def test_multipart_garbage_is_events_or_multipart_error(data, cuts, boundary):
    reader = MultipartReader(boundary)
    with time_limit(2):
        try:
            events = feed_all(reader, split(data, cuts))
        except MultipartError:
            return
    assert reader.finished and isinstance(events[-1], MultipartEnd)


PART = st.tuples(st.dictionaries(st.sampled_from(["Content-Type", "Content-Location", "X-A"]),
                                 st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30), max_size=3),
                 st.binary(max_size=400))


def build_body(parts, boundary=b"BND") -> bytes:
    out = b""
    for headers, payload in parts:
        out += b"--" + boundary + b"\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
        out += b"\r\n" + payload + b"\r\n"
    return out + b"--" + boundary + b"--"


@SETTINGS
@given(st.lists(PART, min_size=1, max_size=4), st.integers(0, 10_000), st.lists(st.integers(0, 5000), max_size=6),
       st.sampled_from(["truncate", "drop closing", "flip", "none"]))
def test_multipart_mutations_of_valid_bodies(parts, where, cuts, mutation):
    body = build_body([(h, p.replace(b"--BND", b"--XND")) for h, p in parts])
    if mutation == "truncate":
        body = body[: where % len(body)]
    elif mutation == "drop closing":
        body = body[: -len(b"\r\n--BND--")]
    elif mutation == "flip":
        i = where % len(body)
        body = body[:i] + bytes([body[i] ^ 0x55]) + body[i + 1 :]
    with time_limit(2):
        try:
            events = feed_all(MultipartReader(None), split(body, cuts))
        except MultipartError:
            assert mutation != "none"
            return
    if mutation == "none":
        payloads, cur = [], None
        for e in events:
            if isinstance(e, PartHeaders):
                cur = b""
            elif isinstance(e, PartData):
                cur += bytes(e.data)
            elif isinstance(e, PartEnd):
                payloads.append(cur)
        assert payloads == [p.replace(b"--BND", b"--XND") for _, p in parts]


def test_multipart_zero_length_parts_and_missing_boundaries():
    events = feed_all(MultipartReader(b"B"), [b"--B\r\n\r\n\r\n--B\r\n\r\n\r\n--B--"])
    assert [type(e) for e in events] == [PartHeaders, PartEnd, PartHeaders, PartEnd, MultipartEnd]
    with pytest.raises(MultipartError):
        feed_all(MultipartReader(b"B"), [b"no boundary here at all\r\n" * 100])
    with pytest.raises(MultipartError):
        MultipartReader(None).feed(b"x" * 2000)  # no boundary line to learn from
    with pytest.raises(MultipartError):
        feed_all(MultipartReader(b"B"), [b"--B\r\nContent-Type: a\r\n\r\npayload"])  # ends inside the part


def test_multipart_endless_headers_are_refused_and_memory_stays_bounded():
    reader = MultipartReader(b"B")
    reader.feed(b"--B\r\n")
    with time_limit(5), pytest.raises(MultipartError, match="too long"):
        for _ in range(200):
            reader.feed(b"X-Long: " + b"a" * 4096 + b"\r\n")
    assert reader.offset < MAX_HEADER_BYTES + 20_000


def test_multipart_body_is_not_rebuffered():
    reader = MultipartReader(b"B")
    reader.feed(b"--B\r\n\r\n")
    for _ in range(500):
        reader.feed(b"\x00" * 65536)
        assert len(reader._buf) < 16


# -- codestream scanner ---------------------------------------------------------------------------------


def scan(data: bytes, cuts: list[int]) -> list:
    scanner = CodestreamScanner()
    events = []
    for c in split(data, cuts):
        events += scanner.feed(c)
    events += scanner.close()
    return events


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(0, 3000), max_size=6))
def test_codestream_garbage_is_events_or_codestream_error(data, cuts):
    with time_limit(2):
        try:
            scan(b"\xff\x4f\xff\x51" + data, cuts)
            scan(data, cuts)
        except CodestreamError:
            pass


MUTATION = st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete", "set16", "set32"]),
                     st.integers(0, 1 << 20), st.integers(0, 0xFFFFFFFF))


def mutate(data: bytes, mutations) -> bytes:
    b = bytearray(data)
    for kind, where, value in mutations:
        if not b:
            break
        i = where % len(b)
        if kind == "flip":
            b[i] ^= 1 << (value % 8)
        elif kind == "truncate":
            del b[i:]
        elif kind == "insert":
            b[i:i] = value.to_bytes(4, "big")[: 1 + value % 4]
        elif kind == "delete":
            del b[i : i + 1 + value % 16]
        elif kind == "set16" and i + 2 <= len(b):
            struct.pack_into(">H", b, i, value & 0xFFFF)
        elif kind == "set32" and i + 4 <= len(b):
            struct.pack_into(">I", b, i, value)
    return bytes(b)


@SETTINGS
@given(st.lists(MUTATION, min_size=1, max_size=4), st.lists(st.integers(0, 40_000), max_size=6))
def test_codestream_mutations_of_a_real_stream(mutations, cuts):
    data = mutate(ct_codestream()[0], mutations)
    with time_limit(2):
        try:
            events = scan(data, cuts)
        except CodestreamError:
            return
    levels = [e for e in events if isinstance(e, ResolutionComplete)]
    assert [lv.level for lv in levels] == sorted({lv.level for lv in levels})
    assert all(lv.end_offset <= len(data) for lv in levels)
    done = [e for e in events if isinstance(e, CodestreamComplete)]
    assert len(done) <= 1 and all(d.end_offset <= len(data) for d in done)


def test_codestream_huge_declared_sizes_do_not_allocate():
    data, _ = ct_codestream()
    big = bytearray(data)
    struct.pack_into(">II", big, 8, 0xFFFFFFFF, 0xFFFFFFFF)  # Xsiz, Ysiz
    struct.pack_into(">II", big, 24, 1, 1)  # 1x1 tiles: 2^64 tiles declared
    with time_limit(2):
        try:
            events = scan(bytes(big), [])
        except CodestreamError:
            return
    header = next(e for e in events if isinstance(e, MainHeader))
    assert header.siz.tiles > 1 << 60


# -- DICOM JSON ----------------------------------------------------------------------------------------


def tag(vr, *values):
    return {"vr": vr, "Value": list(values)}


def instance(rows=64, columns=64, frames=1, sop="1.2.3", **extra) -> dict:
    obj = {"00080018": tag("UI", sop), "00280010": tag("US", rows), "00280011": tag("US", columns),
           "00280008": tag("IS", frames), "00280100": tag("US", 16), "00280101": tag("US", 12)}
    obj.update(extra)
    return obj


JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.sampled_from([-(1 << 40), 1 << 40, 65535]),
                        st.floats(allow_nan=True),
                        st.text(max_size=12))
JSON = st.recursive(JSON_SCALAR, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                    max_leaves=20)
TAGS = st.sampled_from(["00080018", "00280010", "00280011", "00280008", "00280100", "00280101", "00280103",
                        "00280002", "00280004", "00200032", "00200037", "00280030", "00281050", "00281051",
                        "7FE00010", "00083002", "00020010", "52009229", "52009230", "00200013"])
ELEMENT = st.one_of(JSON, st.fixed_dictionaries({"vr": st.text(max_size=2), "Value": JSON}),
                    st.fixed_dictionaries({"vr": st.just("OB"), "InlineBinary": st.one_of(st.text(max_size=20), JSON)}),
                    st.fixed_dictionaries({"vr": st.just("OB"), "BulkDataURI": st.one_of(st.text(max_size=30), JSON)}))


@FEW
@given(st.one_of(JSON, st.lists(st.dictionaries(TAGS, ELEMENT, max_size=10), max_size=4)))
def test_stack_from_any_json_is_a_stack_or_discovery_error(doc):
    with time_limit(3):
        try:
            stack = stack_from_metadata(doc, SERIES)
        except DiscoveryError:
            return
    assert len(stack) >= 1
    assert all(im.frame_url.startswith("http") or "/frames/" in im.frame_url for im in stack.images)


@SETTINGS
@given(st.binary(max_size=400))
def test_loads_of_garbage_is_a_value_error(data):
    for blob in (data, b"\x1f\x8b" + data, gzip.compress(data)[: max(2, len(data) // 2)]):
        try:
            dj.loads(blob)
        except ValueError:
            pass


def test_loads_of_truncated_or_corrupt_gzip_is_a_value_error():
    good = gzip.compress(json.dumps([instance()]).encode())
    for blob in (good[:10], good[:-4], good[:12] + b"\x00" * 20 + good[32:]):
        with pytest.raises(ValueError):
            dj.loads(blob)


@pytest.mark.parametrize("rows, columns, frames", [(65535, 65535, 1000), (65535, 65535, 1), (40000, 40000, 1)])
def test_metadata_declaring_huge_frames_is_refused_before_allocating(rows, columns, frames):
    tracemalloc.start()
    try:
        with pytest.raises(DiscoveryError, match="budget"):
            stack_from_metadata([instance(rows, columns, frames)], SERIES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # refused from the declared sizes, nothing allocated for them


def test_metadata_declaring_a_billion_frames_is_refused_before_building_items():
    tracemalloc.start()
    try:
        with pytest.raises(DiscoveryError, match="frames"):
            stack_from_metadata([instance(8, 8, 1_000_000_000)], SERIES)
        with pytest.raises(DiscoveryError, match="frames"):
            stack_from_metadata([instance(8, 8, 10), instance(8, 8, MAX_STACK_IMAGES, sop="1.4")], SERIES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # no per-frame items for frames that are refused


@pytest.mark.parametrize("blob", ["***not base64***", "abcde", 12, ["QUJD", 5]])
def test_bad_inline_binary_is_a_discovery_error(blob):
    doc = [instance(2, 2, **{"7FE00010": {"vr": "OW", "InlineBinary": blob}})]
    with pytest.raises(DiscoveryError, match="InlineBinary"):
        stack_from_metadata(doc, SERIES)


def test_wrong_transfer_syntax_in_metadata_fails_at_decode_clearly():
    stack = stack_from_metadata([instance(128, 128, **{"00083002": tag("UI", "1.2.3.4.5.nonsense")})], SERIES)
    with pytest.raises(DecodeError, match="unsupported transfer syntax"):
        decode_frame(ct_codestream()[0], stack.images[0].transfer_syntax, stack.images[0].fmt)


# -- decoders --------------------------------------------------------------------------------------------


FORMATS = st.builds(PixelFormat, rows=st.integers(-2, 40), columns=st.integers(-2, 40),
                    samples_per_pixel=st.sampled_from([1, 3, 4, 0]), bits_allocated=st.sampled_from([1, 8, 16, 32, 12]),
                    bits_stored=st.integers(1, 32), pixel_representation=st.sampled_from([0, 1]),
                    photometric_interpretation=st.sampled_from(["MONOCHROME2", "RGB", "YBR_FULL_422", "YBR_FULL"]),
                    planar_configuration=st.sampled_from([0, 1]))


@FEW
@given(st.sampled_from(sorted(CODECS)), st.binary(max_size=3000), FORMATS, st.integers(0, 3))
def test_decode_garbage_is_a_decode_error(syntax, data, fmt, reduce):
    with time_limit(5):
        try:
            pixels = decode_frame(data, syntax, fmt, reduce=reduce)
        except (DecodeError, ValueError):
            return
    assert pixels.shape[0] >= 1 and pixels.shape[1] >= 1


@FEW
@given(st.lists(MUTATION, min_size=1, max_size=3), st.sampled_from([HTJ2K_RPCL, "1.2.840.10008.1.2.4.90",
                                                                    "1.2.840.10008.1.2.4.201"]))
def test_decode_mutated_codestream_never_crashes(mutations, syntax):
    data = mutate(ct_codestream()[0], mutations)
    with time_limit(5):
        try:
            pixels = decode_frame(data, syntax, CT_FMT)
        except DecodeError:
            return
    assert pixels.shape == (128, 128)


def test_decode_refuses_a_stream_declaring_another_size_before_allocating():
    data, pixels = ct_codestream()
    np.testing.assert_array_equal(decode_frame(data, HTJ2K_RPCL, CT_FMT), pixels)
    big = bytearray(data)
    struct.pack_into(">II", big, 8, 65535, 65535)
    with time_limit(2), pytest.raises(DecodeError, match="declares 65535x65535"):
        decode_frame(bytes(big), HTJ2K_RPCL, CT_FMT)
    jpeg = b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03" + b"\x00" * 40
    with time_limit(2), pytest.raises(DecodeError, match="declares 65535x65535"):
        decode_frame(jpeg, "1.2.840.10008.1.2.4.50", PixelFormat(8, 8, 3, 8, 8))


def test_decode_refuses_frames_over_the_budget():
    fmt = PixelFormat(65535, 65535, samples_per_pixel=3)
    assert fmt.decoded_bytes > MAX_FRAME_BYTES
    for syntax in ("1.2.840.10008.1.2.1", HTJ2K_RPCL, "1.2.840.10008.1.2.5"):
        with time_limit(2), pytest.raises(DecodeError, match="budget"):
            decode_frame(b"\x00" * 100, syntax, fmt)


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.9, 0.999])
def test_truncated_native_and_rle_frames_are_decode_errors(cut):
    native = np.arange(64 * 64, dtype="<u2").tobytes()
    fmt = PixelFormat(64, 64)
    with pytest.raises(DecodeError):
        decode_frame(native[: int(len(native) * cut)], "1.2.840.10008.1.2.1", fmt)
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    with pytest.raises(DecodeError):
        decode_frame(header + b"\x00" * int(100 * cut), "1.2.840.10008.1.2.5", fmt)


def test_inline_binary_of_garbage_base64():
    with pytest.raises(ValueError):
        dj.inline_binary({"7FE00010": {"InlineBinary": "@@@"}}, "7FE00010")
    encoded = base64.b64encode(b"abcdef" * 20).decode()
    wrapped = "\n".join(encoded[i : i + 16] for i in range(0, len(encoded), 16))  # line breaks are fine
    assert dj.inline_binary({"7FE00010": {"InlineBinary": wrapped}}, "7FE00010") == b"abcdef" * 20


def test_gzip_bomb_metadata_is_refused(monkeypatch):
    monkeypatch.setattr(dj, "MAX_JSON_BYTES", 4 << 20)  # the same rule at a size quick to build
    bomb = gzip.compress(b" " * (dj.MAX_JSON_BYTES + 1), compresslevel=1)
    with time_limit(10), pytest.raises(ValueError, match="inflates"):
        dj.loads(bomb)


def test_tile_origin_past_the_image_origin_is_refused_before_the_decoder(tmp_path):
    """Found by tools/fuzz.py: one bit flip making YTOsiz 2 (> YOsiz 0) sent OpenJPH into an endless
    loop inside C, which no signal interrupts: the stream must never reach the decoder."""
    data, _ = ct_codestream()
    bad = bytearray(data)
    struct.pack_into(">I", bad, 36, 2)  # YTOsiz
    with pytest.raises(CodestreamError, match="tile grid"):
        scan(bytes(bad), [])
    (tmp_path / "bad.j2c").write_bytes(bad)
    script = (
        "import sys; from app.codecs import decode_frame, DecodeError, PixelFormat\n"
        f"data = open({str(tmp_path / 'bad.j2c')!r}, 'rb').read()\n"
        "try:\n"
        f"    decode_frame(data, {HTJ2K_RPCL!r}, PixelFormat(128, 128, pixel_representation=1))\n"
        "except DecodeError as exc:\n"
        "    print('refused:', exc)\n"
    )
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout.startswith("refused:"), done.stdout + done.stderr[-500:]


@pytest.mark.parametrize("guard, exponent", [(1, 31), (2, 30), (7, 26)])
def test_quantization_beyond_30_magnitude_bits_is_refused_before_the_decoder(tmp_path, guard, exponent):
    """Found by tools/fuzz.py: one bit flip in a real lossy stream's QCD (exponent 15 -> 31) made
    OpenJPH segfault; guard bits + exponent - 1 > 30 must never reach the decoder."""
    data, _ = ct_codestream()
    bad = bytearray(data)
    q = bad.index(b"\xff\x5c")  # QCD: Lqcd, Sqcd (guard bits << 5 | style), SPqcd...
    style = bad[q + 4] & 0x1F
    bad[q + 4] = (guard << 5) | style
    if style == 0:
        bad[q + 5] = (exponent << 3) | (bad[q + 5] & 7)
    else:
        bad[q + 5] = (exponent << 3) | (bad[q + 5] & 7)
    (tmp_path / "bad.j2c").write_bytes(bad)
    script = (
        "from app.codecs import decode_frame, DecodeError, PixelFormat\n"
        f"data = open({str(tmp_path / 'bad.j2c')!r}, 'rb').read()\n"
        "for ts in ('1.2.840.10008.1.2.4.202', '1.2.840.10008.1.2.4.203'):\n"
        "    try:\n"
        "        decode_frame(data, ts, PixelFormat(128, 128, pixel_representation=1))\n"
        "    except DecodeError as exc:\n"
        "        print('refused:', exc)\n"
    )
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.count("magnitude bits") == 2, done.stdout + done.stderr[-300:]


# -- Content-Digest (RFC 9530) part headers --------------------------------------------------------


def test_content_digest_parsing():
    import base64
    import hashlib

    from app.transport.base import parse_content_digest

    d256 = hashlib.sha256(b"x").digest()
    d512 = hashlib.sha512(b"x").digest()
    b64 = lambda d: base64.b64encode(d).decode()  # noqa: E731
    assert parse_content_digest(f"sha-256=:{b64(d256)}:") == ("sha-256", d256)
    assert parse_content_digest(f"SHA-256 = :{b64(d256)}: ") == ("sha-256", d256)
    # the strongest known algorithm wins; unknown ones are ignored
    assert parse_content_digest(f"md5=:AAAA:, sha-256=:{b64(d256)}:, sha-512=:{b64(d512)}:") == ("sha-512", d512)
    for bad in (None, "", "sha-256", "sha-256=", "sha-256=::", f"sha-256={b64(d256)}", "sha-256=:!!!!:",
                f"sha-256=:{b64(d256[:-1])}:", f"sha-512=:{b64(d256)}:", "crc32c=:AAAAAA==:"):
        assert parse_content_digest(bad) is None, bad


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_content_digest_parsing_never_raises(value):
    from app.transport.base import parse_content_digest

    result = parse_content_digest(value)
    assert result is None or result[0] in ("sha-256", "sha-512")
