"""Sans-I/O scanner of JPEG 2000 / HTJ2K codestreams: which resolution levels have fully arrived.

A prefix of an HTJ2K codestream decodes bit-exactly at reduced resolution only when it holds every
tile-part of the levels needed; cut anywhere else it decodes to garbage, often without an error.
So progress is never guessed from a byte percentage: the scanner reads the main header (SIZ, COD,
TLM) and the SOT marker of each tile-part and reports a level complete exactly when the last byte
of its last tile-part has been fed.

A stream counts as resolution-progressive when its progression order is RPCL or RLCP, there is no
POC, and every tile has one tile-part per resolution level (decompositions + 1, from TLM or the
SOT TNsot field); tile-part k then carries resolution level k. Otherwise the full-resolution level
is reported only at EOC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "CodestreamScanner",
    "CodestreamError",
    "MainHeader",
    "Siz",
    "Cod",
    "ResolutionComplete",
    "CodestreamComplete",
    "PROGRESSION_ORDERS",
]

SOC, SIZ, COD, COC, TLM, POC, SOT, EOC = 0xFF4F, 0xFF51, 0xFF52, 0xFF53, 0xFF55, 0xFF5F, 0xFF90, 0xFFD9
PROGRESSION_ORDERS = ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL")
MAX_MAIN_HEADER = 1 << 20


class CodestreamError(ValueError):
    """Not a JPEG 2000 codestream, or its markers contradict each other."""


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Siz:
    width: int  # Xsiz - XOsiz: columns of the full-resolution image
    height: int  # rows
    x0: int
    y0: int
    components: int
    precision: int  # bits of component 0
    signed: bool
    tiles: int
    tile_width: int = 0
    tile_height: int = 0
    tile_x0: int = 0
    tile_y0: int = 0

    def size_at(self, reduce: int) -> tuple[int, int]:
        """(rows, columns) of the image with ``reduce`` resolution levels skipped."""
        d = 1 << reduce
        xs, ys = self.x0 + self.width, self.y0 + self.height
        return _ceil_div(ys, d) - _ceil_div(self.y0, d), _ceil_div(xs, d) - _ceil_div(self.x0, d)


@dataclass(frozen=True)
class Cod:
    progression_order: int  # index into PROGRESSION_ORDERS
    decompositions: int
    layers: int
    multiple_component_transform: bool = False
    reversible: bool = True
    code_block: tuple[int, int] = (64, 64)

    @property
    def progression_name(self) -> str:
        return PROGRESSION_ORDERS[self.progression_order] if self.progression_order < 5 else "?"


@dataclass(frozen=True)
class MainHeader:
    siz: Siz
    cod: Cod
    tlm: list[int] | None  # tile-part lengths (Ptlm) in codestream order, when a TLM is present
    length: int = 0  # bytes before the first SOT
    tlm_tiles: list[int] | None = field(default=None, repr=False)  # tile index of each tile-part
    has_poc: bool = False
    coc_decompositions: tuple[int, ...] = ()

    @property
    def levels(self) -> int:
        return self.cod.decompositions + 1

    def size_at(self, reduce: int) -> tuple[int, int]:
        return self.siz.size_at(reduce)

    @property
    def order_allows_progressive(self) -> bool:
        return (
            self.cod.progression_order in (1, 2)
            and not self.has_poc
            and all(d == self.cod.decompositions for d in self.coc_decompositions)
        )

    def level_end_offsets(self) -> list[int] | None:
        """Codestream offset (exclusive) at which each level 0..D is complete, known from TLM alone.

        None when there is no TLM or the stream is not resolution-progressive.
        """
        if self.tlm is None or not self.order_allows_progressive:
            return None
        tiles = self.tlm_tiles or _implied_tiles(len(self.tlm), self.siz.tiles)
        if tiles is None:
            return None
        ends: dict[tuple[int, int], int] = {}
        counts: dict[int, int] = {}
        pos = self.length
        for tile, length in zip(tiles, self.tlm):
            k = counts.get(tile, 0)
            counts[tile] = k + 1
            pos += length
            ends[(tile, k)] = pos
        if len(counts) != self.siz.tiles or any(c != self.levels for c in counts.values()):
            return None
        return [max(ends[(t, r)] for t in counts) for r in range(self.levels)]


def _implied_tiles(entries: int, tiles: int) -> list[int] | None:
    """TLM without tile indices: tile-parts are in tile order."""
    if tiles == 1:
        return [0] * entries
    if entries == tiles:
        return list(range(tiles))
    return None


@dataclass(frozen=True)
class ResolutionComplete:
    level: int  # 0 = lowest resolution
    reduce: int  # levels to skip when decoding (decompositions - level)
    end_offset: int  # codestream bytes needed to decode this level
    rows: int
    columns: int


@dataclass(frozen=True)
class CodestreamComplete:
    end_offset: int


Event = MainHeader | ResolutionComplete | CodestreamComplete

_MAIN, _TILES, _OPEN_TAIL, _DONE = range(4)


class CodestreamScanner:
    """Feed codestream bytes in any chunks; get MainHeader, ResolutionComplete, CodestreamComplete."""

    def __init__(self) -> None:
        self.received = 0
        self.header: MainHeader | None = None
        self._state = _MAIN
        self._buf = bytearray()  # main header, or < 12 bytes of a split SOT/EOC
        self._buf_off = 0
        self._pos = 0  # offset of the next SOT/EOC marker
        self._tp_end: dict[tuple[int, int], int] = {}
        self._tp_counts: dict[int, int] = {}  # tile-parts seen per tile
        self._tile_parts: dict[int, int] = {}  # declared tile-parts per tile (TLM or TNsot)
        self._tlm_ends: list[int] | None = None
        self._next_level = 0
        self._progressive: bool | None = None
        self._tail = b""

    @property
    def progressive(self) -> bool | None:
        """True / False once known; None while undecided."""
        return self._progressive

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        events: list[Event] = []
        n = len(data)
        if not n or self._state == _DONE:
            self.received += n
            return events
        base = self.received
        self.received += n
        if self._state == _MAIN:
            self._buf += data
            if not self._parse_main(events):
                if len(self._buf) > MAX_MAIN_HEADER:
                    raise CodestreamError("main header too long or no SOT marker")
                return events
            data = bytes(self._buf[self._pos :])
            base = self._pos
            self._buf.clear()
        elif self._buf:
            data = bytes(self._buf) + bytes(data)
            base = self._buf_off
            self._buf.clear()
        if self._state == _OPEN_TAIL:
            self._tail = (self._tail + bytes(data[-2:]))[-2:]
            return events
        self._scan(data, base, events)
        return events

    def close(self) -> list[Event]:
        """End of data: completes a stream whose last tile-part ran to EOC (Psot = 0)."""
        events: list[Event] = []
        if self._state == _OPEN_TAIL and self._tail == b"\xff\xd9":
            self._finish(self.received, events)
        return events

    # -- main header -------------------------------------------------------------------------
    def _parse_main(self, events: list[Event]) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[0:2] != b"\xff\x4f":
            raise CodestreamError("not a JPEG 2000 codestream (no SOC marker)")
        pos = 2
        siz = cod = None
        tlm: list[int] | None = None
        tlm_tiles: list[int] | None = None
        has_poc = False
        coc: list[int] = []
        while True:
            if pos + 2 > len(buf):
                return False
            (marker,) = struct.unpack_from(">H", buf, pos)
            if marker == SOT:
                break
            if marker >> 8 != 0xFF or marker < 0xFF30:
                raise CodestreamError(f"bad marker 0x{marker:04X} at {pos} in main header")
            if 0xFF30 <= marker <= 0xFF3F:  # no length
                pos += 2
                continue
            if pos + 4 > len(buf):
                return False
            (length,) = struct.unpack_from(">H", buf, pos + 2)
            if length < 2:
                raise CodestreamError(f"bad length of marker 0x{marker:04X}")
            if pos + 2 + length > len(buf):
                return False
            seg = bytes(buf[pos + 4 : pos + 2 + length])
            if marker == SIZ:
                siz = _parse_siz(seg)
            elif marker == COD:
                cod = _parse_cod(seg)
            elif marker == COC:
                coc.append(_parse_coc_decompositions(seg, siz))
            elif marker == POC:
                has_poc = True
            elif marker == TLM:
                lengths, tiles = _parse_tlm(seg)
                tlm = (tlm or []) + lengths
                tlm_tiles = None if tiles is None else (tlm_tiles or []) + tiles
            pos += 2 + length
        if siz is None or cod is None:
            raise CodestreamError("main header lacks SIZ or COD")
        header = MainHeader(siz, cod, tlm, pos, tlm_tiles, has_poc, tuple(coc))
        self.header = header
        self._pos = pos
        self._state = _TILES
        events.append(header)
        if not header.order_allows_progressive:
            self._progressive = False
        elif tlm is not None:
            self._tlm_ends = header.level_end_offsets()
            self._progressive = self._tlm_ends is not None
        return True

    # -- tile-parts ----------------------------------------------------------------------------
    def _scan(self, data: bytes | bytearray | memoryview, base: int, events: list[Event]) -> None:
        end = base + len(data)
        while self._state == _TILES:
            self._emit_levels(events)
            p = self._pos
            if p + 2 > end:
                break
            i = p - base
            marker = (data[i] << 8) | data[i + 1]
            if marker == EOC:
                self._finish(p + 2, events)
                return
            if marker != SOT:
                raise CodestreamError(f"expected SOT or EOC at {p}, found 0x{marker:04X}")
            if p + 12 > end:
                break
            _, lsot, isot, psot, tpsot, tnsot = struct.unpack_from(">HHHIBB", data, i)
            if lsot != 10:
                raise CodestreamError(f"bad SOT length {lsot} at {p}")
            if isot >= self.header.siz.tiles:
                raise CodestreamError(f"tile index {isot} out of range at {p}")
            self._tile_part(isot, tpsot, tnsot, p, psot)
            if psot == 0:
                self._state = _OPEN_TAIL
                self._tail = bytes(data[-2:])
                return
            self._pos = p + psot
        if self._state == _TILES:
            self._emit_levels(events)
            if self._pos < end:
                self._buf += data[self._pos - base :]
                self._buf_off = self._pos

    def _tile_part(self, tile: int, tp: int, tn: int, start: int, psot: int) -> None:
        k = self._tp_counts.get(tile, 0)
        if tp != k:
            raise CodestreamError(f"tile {tile}: tile-part {tp} where {k} was expected")
        self._tp_counts[tile] = k + 1
        if psot and psot < 14:
            raise CodestreamError(f"bad Psot {psot} at {start}")
        self._tp_end[(tile, tp)] = start + psot if psot else -1
        if self._tlm_ends is not None:
            return
        if self._progressive is None and tp == 0:
            if tn == 0:
                self._progressive = False  # tile-part count unknown: wait for EOC
            else:
                self._tile_parts[tile] = tn
                if tn != self.header.levels:
                    self._progressive = False
        if self._progressive is None and len(self._tile_parts) == self.header.siz.tiles:
            self._progressive = True

    def _level_end(self, level: int) -> int | None:
        if self._tlm_ends is not None:
            return self._tlm_ends[level]
        if not self._progressive:
            return None
        ends = []
        for t in range(self.header.siz.tiles):
            e = self._tp_end.get((t, level))
            if e is None or e < 0:
                return None
            ends.append(e)
        return max(ends)

    def _emit_levels(self, events: list[Event]) -> None:
        if self._progressive is False:
            return
        while self._next_level < self.header.levels:
            # without TLM, progressiveness is only settled once every tile's first SOT is seen
            if self._progressive is None:
                return
            e = self._level_end(self._next_level)
            if e is None or self.received < e:
                return
            events.append(self._level_event(self._next_level, e))
            self._next_level += 1

    def _level_event(self, level: int, end: int) -> ResolutionComplete:
        reduce = self.header.cod.decompositions - level
        rows, cols = self.header.size_at(reduce)
        return ResolutionComplete(level, reduce, end, rows, cols)

    def _finish(self, end: int, events: list[Event]) -> None:
        top = self.header.levels - 1
        if self._progressive:
            self._emit_levels(events)
        if self._next_level <= top:
            events.append(self._level_event(top, end))
            self._next_level = top + 1
        events.append(CodestreamComplete(end))
        self._state = _DONE
        self._buf.clear()


def _parse_siz(seg: bytes) -> Siz:
    if len(seg) < 36 + 3:
        raise CodestreamError("SIZ too short")
    (_, xs, ys, xo, yo, xt, yt, xto, yto, csiz) = struct.unpack_from(">HIIIIIIIIH", seg, 0)
    if len(seg) < 36 + 3 * csiz or csiz == 0 or xt == 0 or yt == 0 or xs <= xo or ys <= yo:
        raise CodestreamError("bad SIZ")
    if xto > xo or yto > yo or xto + xt <= xo or yto + yt <= yo:  # ISO 15444-1 A.5.1
        raise CodestreamError("bad SIZ: the tile grid does not cover the image origin")
    ssiz = seg[36]
    tiles = _ceil_div(xs - xto, xt) * _ceil_div(ys - yto, yt)
    return Siz(
        width=xs - xo,
        height=ys - yo,
        x0=xo,
        y0=yo,
        components=csiz,
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        tiles=tiles,
        tile_width=xt,
        tile_height=yt,
        tile_x0=xto,
        tile_y0=yto,
    )


def _parse_cod(seg: bytes) -> Cod:
    if len(seg) < 10:
        raise CodestreamError("COD too short")
    _scod, order, layers, mct, decomp, xcb, ycb, _style, transform = struct.unpack_from(">BBHBBBBBB", seg, 0)
    return Cod(order, decomp, layers, bool(mct), transform == 1, (1 << (xcb + 2), 1 << (ycb + 2)))


def _parse_coc_decompositions(seg: bytes, siz: Siz | None) -> int:
    wide = siz is not None and siz.components >= 257
    i = 2 if wide else 1
    if len(seg) < i + 2:
        raise CodestreamError("COC too short")
    return seg[i + 1]


def _parse_tlm(seg: bytes) -> tuple[list[int], list[int] | None]:
    if len(seg) < 2:
        raise CodestreamError("TLM too short")
    stlm = seg[1]
    st = (stlm >> 4) & 3
    sp = (stlm >> 6) & 1
    if st == 3:
        raise CodestreamError("bad TLM Stlm")
    tsize, psize = st, 4 if sp else 2
    entry = tsize + psize
    body = seg[2:]
    if len(body) % entry:
        raise CodestreamError("TLM length is not a whole number of entries")
    lengths: list[int] = []
    tiles: list[int] | None = [] if tsize else None
    for off in range(0, len(body), entry):
        if tsize == 1:
            tiles.append(body[off])
        elif tsize == 2:
            tiles.append(int.from_bytes(body[off : off + 2], "big"))
        lengths.append(int.from_bytes(body[off + tsize : off + entry], "big"))
    return lengths, tiles
