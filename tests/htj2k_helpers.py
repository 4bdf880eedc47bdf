"""Test helpers for JPEG 2000 codestreams: scanning, and the one-tile-part rewrite.

``one_tile_part`` turns the converter's encoding (RPCL, one tile-part per resolution level, TLM)
into what the Static DICOMweb toolkit and AWS HealthImaging serve (one tile-part, no TLM) without
re-encoding: the packets stay byte for byte the same, only the markers around them change. That is
a legal rewrite for a single tile whose tile-part headers hold nothing but SOT and SOD.
"""

from __future__ import annotations

import struct

from app.readers.codestream import CodestreamComplete, CodestreamScanner, ResolutionComplete

SOT, SOD, TLM, EOC = b"\xff\x90", b"\xff\x93", 0xFF55, b"\xff\xd9"


def scan(chunks) -> list:
    s = CodestreamScanner()
    events = []
    for c in chunks:
        events += s.feed(c)
    return events + s.close()


def level_ends(codestream: bytes, chunk: int = 4096) -> list[ResolutionComplete]:
    events = scan([codestream[i : i + chunk] for i in range(0, len(codestream), chunk)])
    assert isinstance(events[-1], CodestreamComplete), events[-1]
    return [e for e in events if isinstance(e, ResolutionComplete)]


def _main_header_end(cs: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(offset of the first SOT, [(start, end)] of each TLM segment)."""
    pos, tlms = 2, []
    while cs[pos : pos + 2] != SOT:
        marker, length = struct.unpack_from(">HH", cs, pos)
        if marker == TLM:
            tlms.append((pos, pos + 2 + length))
        pos += 2 + length
    return pos, tlms


def tile_parts(cs: bytes) -> list[tuple[int, int, int]]:
    """(SOT offset, first packet byte, end) of each tile-part, for tile-part headers of SOT + SOD."""
    pos, _ = _main_header_end(cs)
    parts = []
    while cs[pos : pos + 2] == SOT:
        (psot,) = struct.unpack_from(">I", cs, pos + 6)
        assert cs[pos + 12 : pos + 14] == SOD, "tile-part header with more than SOT and SOD"
        end = pos + psot if psot else len(cs) - 2
        parts.append((pos, pos + 14, end))
        pos = end
    assert cs[pos:] == EOC
    return parts


def one_tile_part(cs: bytes) -> bytes:
    """The same single-tile codestream with all tile-parts merged into one and no TLM."""
    first_sot, tlms = _main_header_end(cs)
    main = bytearray(cs[:first_sot])
    for start, end in reversed(tlms):
        del main[start:end]
    parts = tile_parts(cs)
    body = b"".join(cs[data:end] for _, data, end in parts)
    sot = SOT + struct.pack(">HHIBB", 10, 0, 12 + 2 + len(body), 0, 1)
    return bytes(main) + sot + SOD + body + EOC


def packet_bytes_before(cs: bytes, offset: int) -> int:
    """How many packet bytes (bytes after an SOD) lie before ``offset``: markers do not count."""
    return sum(max(0, min(offset, end) - data) for _, data, end in tile_parts(cs))

