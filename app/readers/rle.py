"""Sans-I/O check of a DICOM RLE Lossless frame header (PS3.5 Annex G) before any decoder sees it.

The header is 16 little-endian uint32: the segment count (1-15), then 15 segment offsets. A native
decoder trusts those offsets: one past the end of the frame makes imagecodecs' dicomrle_decode read
outside its buffer and take the process down. So every offset is checked here first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["RleHeader", "RleError", "read_rle_header", "RLE_HEADER_BYTES"]

RLE_HEADER_BYTES = 64
MAX_SEGMENTS = 15


class RleError(ValueError):
    """The frame's RLE header contradicts itself, the frame or the pixel format."""


@dataclass(frozen=True)
class RleHeader:
    segments: int
    offsets: tuple[int, ...]  # one per segment, increasing, each inside the frame

    def segment_lengths(self, frame_length: int) -> tuple[int, ...]:
        ends = self.offsets[1:] + (frame_length,)
        return tuple(end - start for start, end in zip(self.offsets, ends))


def read_rle_header(data: bytes | bytearray | memoryview, expected_segments: int | None = None) -> RleHeader:
    """The validated header of one RLE frame; RleError says what is wrong with it.

    ``expected_segments`` is samples per pixel x bytes per sample (one segment per byte plane).
    """
    n = len(data)
    if n < RLE_HEADER_BYTES:
        raise RleError(f"RLE frame of {n} bytes has no 64-byte header")
    count, *table = struct.unpack_from("<16I", data, 0)
    if not 1 <= count <= MAX_SEGMENTS:
        raise RleError(f"RLE header declares {count} segments (1 to {MAX_SEGMENTS})")
    if expected_segments is not None and count != expected_segments:
        raise RleError(f"RLE header declares {count} segments, the pixel format needs {expected_segments}")
    offsets = tuple(table[:count])
    if offsets[0] != RLE_HEADER_BYTES:
        raise RleError(f"first RLE segment starts at {offsets[0]}, not right after the header")
    for index in range(1, count):
        if offsets[index] <= offsets[index - 1]:
            raise RleError(f"RLE segment {index + 1} starts at {offsets[index]}, not after segment {index}")
    if offsets[-1] >= n:
        raise RleError(f"RLE segment {count} starts at {offsets[-1]}, past the {n}-byte frame")
    return RleHeader(count, offsets)
