"""The multipart/related reader: any chunking of the same body gives the same events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.readers.multipart import (
    MultipartEnd,
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartHeaders,
    boundary_from_content_type,
    parse_media_type,
)
from helpers import split


def body(parts: list[tuple[str, bytes]], boundary: bytes = b"B", preamble: bytes = b"") -> bytes:
    out = bytearray(preamble)
    for i, (ctype, data) in enumerate(parts):
        out += (b"\r\n" if i or preamble else b"") + b"--" + boundary + b"\r\n"
        out += b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + data
    out += b"\r\n--" + boundary + b"--\r\n"
    return bytes(out)


def run(reader: MultipartReader, chunks) -> list:
    events = []
    for c in chunks:
        events += reader.feed(c)
    events += reader.close()
    return normalise(events)


def normalise(events) -> list:
    """Merge consecutive PartData so events compare independent of chunking."""
    out: list = []
    for e in events:
        if isinstance(e, PartData):
            if out and isinstance(out[-1], PartData):
                out[-1] = PartData(bytes(out[-1].data) + bytes(e.data))
            else:
                out.append(PartData(bytes(e.data)))
        else:
            out.append(e)
    return out


payload = st.binary(max_size=300).map(lambda b: b.replace(b"--B", b"-XB"))
tricky = st.sampled_from([b"\r", b"\r\n", b"\r\n-", b"\r\n--", b"\r\n--X", b"--B", b"\r\r\n--"])
part_bytes = st.lists(st.one_of(payload, tricky), max_size=6).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(part_bytes, min_size=1, max_size=3), st.lists(st.integers(0, 2000), max_size=12), st.booleans())
def test_any_split_gives_the_same_events(datas, cuts, learn):
    datas = [d for d in datas if b"\r\n--B" not in d]
    if not datas:
        return
    raw = body([("image/jphc;transfer-syntax=1.2.840.10008.1.2.4.202", d) for d in datas])
    whole = run(MultipartReader(None if learn else b"B"), [raw])
    pieces = run(MultipartReader(None if learn else b"B"), split(raw, cuts))
    assert whole == pieces
    expected = []
    for d in datas:
        expected.append(PartHeaders({"content-type": "image/jphc;transfer-syntax=1.2.840.10008.1.2.4.202"}))
        if d:
            expected.append(PartData(d))
        expected.append(PartEnd())
    expected.append(MultipartEnd())
    assert whole == expected


def test_byte_by_byte_static_frame_file():
    code = bytes(range(256)) * 40 + b"\r\n--" + b"\r\n-"
    raw = b"--abc123\r\nContent-Type: image/jphc;transfer-syntax=1.2.840.10008.1.2.4.202\r\n\r\n" + code + b"\r\n--abc123--"
    r = MultipartReader(None)
    events = run(r, [raw[i : i + 1] for i in range(len(raw))])
    assert r.boundary == b"abc123"
    assert events[1] == PartData(code)
    assert r.part_data_offset == raw.index(code)


def test_preamble_and_epilogue_are_ignored():
    raw = body([("application/octet-stream", b"xyz")], boundary=b"q", preamble=b"ignored preamble")
    raw += b"epilogue"
    assert run(MultipartReader(b"q"), [raw])[1] == PartData(b"xyz")


def test_no_quadratic_buffering():
    r = MultipartReader(b"B")
    r.feed(b"--B\r\nContent-Type: x\r\n\r\n")
    chunk = b"a" * 65536
    for _ in range(100):
        ev = r.feed(chunk)
        assert sum(len(e.data) for e in ev) == len(chunk)
        assert len(r._buf) < 16


@pytest.mark.parametrize(
    "raw",
    [
        b"--B\r\nContent-Type: x\r\n\r\nabc",  # no closing boundary
        b"--B\r\nContent-Type: x\r\n",  # ends inside the headers
        b"",
    ],
)
def test_truncated_bodies_raise(raw):
    r = MultipartReader(b"B")
    r.feed(raw)
    with pytest.raises(MultipartError):
        r.close()


def test_not_multipart_raises():
    with pytest.raises(MultipartError):
        MultipartReader(None).feed(b"\xff\x4f\xff\x51 this is a codestream\n")
    with pytest.raises(MultipartError):
        MultipartReader(b"B").feed(b"--B\r\nno colon here\r\n\r\n")


def test_content_type_helpers():
    ct = 'multipart/related; type="application/octet-stream"; boundary="a;b"; transfer-syntax=*'
    assert boundary_from_content_type(ct) == b"a;b"
    assert boundary_from_content_type("image/jphc") is None
    media, params = parse_media_type("image/jphc;transfer-syntax=1.2.840.10008.1.2.4.202")
    assert media == "image/jphc" and params["transfer-syntax"] == "1.2.840.10008.1.2.4.202"


def test_a_rejected_body_takes_no_more_bytes():
    """h11's ERROR state: after a MultipartError the reader refuses everything, whatever comes."""
    reader = MultipartReader(b"B")
    with pytest.raises(MultipartError):
        reader.feed(b"--B\r\nContent-Type x\r\n\r\nabc")  # a header line without a colon
    for more in (b"\r\n--B--\r\n", b"x"):
        with pytest.raises(MultipartError, match="already rejected"):
            reader.feed(more)
    with pytest.raises(MultipartError, match="already rejected"):
        reader.close()


def test_headers_fed_a_byte_at_a_time_split_anywhere():
    body = b"--B\r\nContent-Type: image/jls\r\nX-A: 1\r\n\r\npayload\r\n--B--\r\n"
    reader = MultipartReader(b"B")
    events = [e for i in range(len(body)) for e in reader.feed(body[i:i + 1])]
    (headers,) = [e for e in events if isinstance(e, PartHeaders)]
    assert headers.headers == {"content-type": "image/jls", "x-a": "1"}
    assert b"".join(bytes(e.data) for e in events if isinstance(e, PartData)) == b"payload"
