"""The JPEG / JPEG-LS header reader: size, components, precision and JPEG-LS NEAR from real streams."""

from __future__ import annotations

import imagecodecs
import numpy
import pytest

from app.readers.jpeg import SOF55, JpegError, read_jpeg_header

RNG = numpy.random.default_rng(7)
GREY16 = (RNG.integers(0, 4096, (48, 64))).astype(numpy.uint16)
RGB8 = RNG.integers(0, 256, (40, 30, 3)).astype(numpy.uint8)


def test_jpeg_ls_lossless_and_near_lossless():
    lossless = read_jpeg_header(bytes(imagecodecs.jpegls_encode(GREY16)))
    assert lossless.sof == SOF55 and lossless.is_jpeg_ls
    assert (lossless.rows, lossless.columns, lossless.components) == (48, 64, 1)
    assert lossless.near == 0 and lossless.lossless and lossless.scans == 1
    near = read_jpeg_header(bytes(imagecodecs.jpegls_encode(GREY16, level=3)))
    assert near.near == 3 and near.lossless is False


def test_jpeg_baseline_colour_and_lossless_jpeg():
    baseline = read_jpeg_header(bytes(imagecodecs.jpeg8_encode(RGB8, level=90)))
    assert (baseline.sof, baseline.precision, baseline.size, baseline.components) == (0xC0, 8, (40, 30), 3)
    assert baseline.lossless is False and baseline.near is None
    sof3 = read_jpeg_header(bytes(imagecodecs.ljpeg_encode(GREY16, bitspersample=12)))
    assert sof3.sof == 0xC3 and sof3.precision == 12 and sof3.size == (48, 64) and sof3.lossless


@pytest.mark.parametrize("stream", [
    bytes(imagecodecs.jpegls_encode(GREY16)), bytes(imagecodecs.jpeg8_encode(RGB8, level=80))])
def test_any_prefix_answers_none_or_the_full_header(stream):
    full = read_jpeg_header(stream)
    for cut in range(len(stream) + 1):
        got = read_jpeg_header(memoryview(stream)[:cut])
        if got is not None:
            assert (got.sof, got.size, got.components, got.precision) == (full.sof, full.size, full.components,
                                                                          full.precision)
            assert got.near in (None, full.near)


def test_a_second_jpeg_ls_scan_with_near_makes_the_stream_lossy():
    stream = bytes(imagecodecs.jpegls_encode(GREY16))
    sos = stream.index(b"\xff\xda")
    length = int.from_bytes(stream[sos + 2:sos + 4], "big")
    second = bytearray(stream[sos:sos + 2 + length])
    second[2 + 2 + 1 + 2 * second[4]] = 5  # NEAR of the copied scan header
    got = read_jpeg_header(stream[:-2] + bytes(second) + b"\x00" * 8 + b"\xff\xd9")
    assert got.scans == 2 and got.near == 5 and not got.lossless


def test_not_jpeg_and_malformed():
    assert read_jpeg_header(b"\xff\x4f\xff\x51") is None and read_jpeg_header(b"") is None
    with pytest.raises(JpegError, match="SOS before SOF"):
        read_jpeg_header(b"\xff\xd8\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00")
    with pytest.raises(JpegError, match="length"):
        read_jpeg_header(b"\xff\xd8\xff\xe0\x00\x01\x00\x00")
