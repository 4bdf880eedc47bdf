"""Sans-I/O scanner of JPEG 2000 / HTJ2K codestreams: which resolution levels have fully arrived.

A prefix of an HTJ2K codestream decodes bit-exactly at reduced resolution only when it holds every
tile-part of the levels needed; cut anywhere else it decodes to garbage, often without an error.
So progress is never guessed from a byte percentage: the scanner reads the main header (SIZ, COD,
TLM) and the SOT marker of each tile-part and reports a level complete exactly when the last byte
of its last tile-part has been fed.

A stream counts as resolution-progressive when its progression order is RPCL or RLCP, there is no
POC, and every tile has one tile-part per resolution level (decompositions + 1, from TLM or the
SOT TNsot field); tile-part k then carries resolution level k. A single-tile stream in a
resolution-major order without such tile-parts (RPCL with one tile-part and no TLM, as most HTJ2K
in the wild) is followed packet by packet (``packets.PacketReader``): the same events, found from
packet headers. Otherwise the full-resolution level is reported only at EOC.

After a CodestreamError the scanner is in its ERROR state and refuses more input.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from .packets import ComponentCoding, LevelEnd, PacketError, PacketReader, TileCoding, packet_plan

__all__ = [
    "CodestreamScanner",
    "CodestreamError",
    "ScannerState",
    "MainHeader",
    "Siz",
    "Cod",
    "Coc",
    "ResolutionComplete",
    "CodestreamComplete",
    "PROGRESSION_ORDERS",
]

SOC, SIZ, COD, COC, TLM, POC, SOT, EOC = 0xFF4F, 0xFF51, 0xFF52, 0xFF53, 0xFF55, 0xFF5F, 0xFF90, 0xFFD9
SOD, PPM, PPT = 0xFF93, 0xFF60, 0xFF61
PROGRESSION_ORDERS = ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL")
MAX_MAIN_HEADER = 1 << 20
MAX_TILE_PART_HEADER = 1 << 16
DEFAULT_PRECINCT = (15, 15)  # PPx, PPy when COD/COC does not give precinct sizes
# tile-part header markers that change the packet layout the main header gave
LAYOUT_MARKERS = (COD, COC, POC, PPT)


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
    subsampling: tuple[tuple[int, int], ...] = ()  # (XRsiz, YRsiz) of each component

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
    block_style: int = 0
    precincts: tuple[tuple[int, int], ...] = ()  # (PPx, PPy) per resolution level; () = default
    sop: bool = False
    eph: bool = False

    @property
    def progression_name(self) -> str:
        return PROGRESSION_ORDERS[self.progression_order] if self.progression_order < 5 else "?"


@dataclass(frozen=True)
class Coc:
    """A COC marker: one component's coding style, overriding the COD's."""

    component: int
    decompositions: int
    code_block: tuple[int, int]
    block_style: int
    precincts: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class MainHeader:
    siz: Siz
    cod: Cod
    tlm: list[int] | None  # tile-part lengths (Ptlm) in codestream order, when a TLM is present
    length: int = 0  # bytes before the first SOT
    tlm_tiles: list[int] | None = field(default=None, repr=False)  # tile index of each tile-part
    has_poc: bool = False
    coc_decompositions: tuple[int, ...] = ()
    cocs: tuple[Coc, ...] = ()
    has_ppm: bool = False

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

    def tile_coding(self) -> TileCoding | None:
        """The packet layout of a single-tile stream, for reading its packet headers; else None."""
        siz, cod = self.siz, self.cod
        if siz.tiles != 1 or self.has_poc or self.has_ppm or cod.progression_order > 4:
            return None
        by_component = {coc.component: coc for coc in self.cocs}
        components = []
        for c in range(siz.components):
            coc = by_component.get(c)
            decompositions, block, style, precincts = (
                (coc.decompositions, coc.code_block, coc.block_style, coc.precincts) if coc else
                (cod.decompositions, cod.code_block, cod.block_style, cod.precincts))
            sub = siz.subsampling[c] if c < len(siz.subsampling) else (1, 1)
            components.append(ComponentCoding(
                decompositions, (block[0].bit_length() - 1, block[1].bit_length() - 1), style,
                precincts or (DEFAULT_PRECINCT,) * (decompositions + 1), sub))
        x0, y0 = max(siz.tile_x0, siz.x0), max(siz.tile_y0, siz.y0)
        x1 = min(siz.tile_x0 + siz.tile_width, siz.x0 + siz.width)
        y1 = min(siz.tile_y0 + siz.tile_height, siz.y0 + siz.height)
        return TileCoding(x0, y0, x1, y1, tuple(components), cod.progression_name, cod.layers, cod.sop, cod.eph)


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


class ScannerState(enum.Enum):
    """Where the scanner is in the codestream; ERROR is final (h11 style)."""

    MAIN_HEADER = "MAIN_HEADER"
    TILE_PARTS = "TILE_PARTS"
    OPEN_TAIL = "OPEN_TAIL"  # inside a last tile-part with Psot = 0: it runs to EOC
    DONE = "DONE"
    ERROR = "ERROR"

    def __repr__(self) -> str:
        return self.value


_MAIN, _TILES, _OPEN_TAIL, _DONE, _ERROR = ScannerState


class _TilePartPackets:
    """The packets of a single-tile stream's first tile-part: its header up to SOD, then packets.

    Bytes are offered with their codestream offset; bytes seen before (re-offered after the
    scanner re-buffers a split SOT) are skipped.
    """

    def __init__(self, coding: TileCoding, start: int, end: int | None, last_level: int) -> None:
        self.end = end  # the tile-part's end; None when it runs to EOC
        self._start = start  # first byte after the SOT marker segment
        self._next = start
        self._coding, self._last_level = coding, last_level
        self._header = bytearray()
        self._reader: PacketReader | None = None
        self._plan = packet_plan(coding, last_level)  # raises PacketError for what it cannot read

    @property
    def done(self) -> bool:
        """Every level below the top is found: the rest of the tile-part need not be looked at."""
        return self._reader is not None and self._reader.done

    def feed(self, data: bytes | bytearray | memoryview, base: int) -> list[LevelEnd]:
        lo = max(base, self._next)
        hi = base + len(data) if self.end is None else min(base + len(data), self.end)
        if hi <= lo:
            return []
        self._next = hi
        with memoryview(data) as view:
            piece = view[lo - base : hi - base]
            if self._reader is not None:
                return self._reader.feed(piece)
            self._header += piece
        sod = _find_sod(self._header)
        if sod is None:
            if len(self._header) > MAX_TILE_PART_HEADER:
                raise PacketError("tile-part header too long or no SOD marker")
            return []
        self._reader = PacketReader(self._coding, self._start + sod, self.end, self._last_level, plan=self._plan)
        rest, self._header = bytes(self._header[sod:]), bytearray()
        return self._reader.feed(rest)


def _find_sod(header: bytearray) -> int | None:
    """Offset just past SOD in a tile-part header (after its SOT segment), or None if not in yet."""
    pos = 0
    while pos + 2 <= len(header):
        (marker,) = struct.unpack_from(">H", header, pos)
        if marker == SOD:
            return pos + 2
        if marker in LAYOUT_MARKERS:
            raise PacketError(f"tile-part header has marker 0x{marker:04X}: packet layout not from the main header")
        if marker >> 8 != 0xFF or pos + 4 > len(header):
            if marker >> 8 != 0xFF:
                raise PacketError(f"bad marker 0x{marker:04X} in a tile-part header")
            return None
        (length,) = struct.unpack_from(">H", header, pos + 2)
        if length < 2:
            raise PacketError("bad marker segment length in a tile-part header")
        pos += 2 + length
    return None


class CodestreamScanner:
    """Feed codestream bytes in any chunks; get MainHeader, ResolutionComplete, CodestreamComplete."""

    def __init__(self) -> None:
        self.received = 0
        self.header: MainHeader | None = None
        self.state = _MAIN
        self.packet_error: str | None = None  # why packet headers could not be followed, if so
        self._buf = bytearray()  # main header, or < 12 bytes of a split SOT/EOC
        self._buf_off = 0
        self._pos = 0  # offset of the next SOT/EOC marker
        self._tp_end: dict[tuple[int, int], int] = {}
        self._tp_counts: dict[int, int] = {}  # tile-parts seen per tile
        self._tile_parts: dict[int, int] = {}  # declared tile-parts per tile (TLM or TNsot)
        self._tlm_ends: list[int] | None = None
        self._packets: _TilePartPackets | None = None
        self._packet_ends: dict[int, int] = {}
        self._next_level = 0
        self._progressive: bool | None = None
        self._tail = b""

    @property
    def progressive(self) -> bool | None:
        """True / False once known; None while undecided."""
        return self._progressive

    @property
    def complete(self) -> bool:
        return self.state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if self.state == _ERROR:
            raise CodestreamError("can't receive data after a codestream error")
        try:
            return self._feed(data)
        except CodestreamError:
            self.state = _ERROR
            self._buf.clear()
            raise

    def close(self) -> list[Event]:
        """End of data: completes a stream whose last tile-part ran to EOC (Psot = 0)."""
        if self.state == _ERROR:
            raise CodestreamError("can't close a scanner after a codestream error")
        events: list[Event] = []
        if self.state == _OPEN_TAIL and self._tail == b"\xff\xd9":
            self._finish(self.received, events)
        return events

    def _feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        events: list[Event] = []
        n = len(data)
        if not n or self.state == _DONE:
            self.received += n
            return events
        base = self.received
        self.received += n
        if self.state == _MAIN:
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
        if self.state == _OPEN_TAIL:
            self._tail = (self._tail + bytes(data[-2:]))[-2:]
            self._feed_packets(data, base)
            self._emit_levels(events)
            return events
        self._scan(data, base, events)
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
        has_poc = has_ppm = False
        coc: list[Coc] = []
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
                coc.append(_parse_coc(seg, siz))
            elif marker == POC:
                has_poc = True
            elif marker == PPM:
                has_ppm = True
            elif marker == TLM:
                lengths, tiles = _parse_tlm(seg)
                tlm = (tlm or []) + lengths
                tlm_tiles = None if tiles is None else (tlm_tiles or []) + tiles
            pos += 2 + length
        if siz is None or cod is None:
            raise CodestreamError("main header lacks SIZ or COD")
        header = MainHeader(siz, cod, tlm, pos, tlm_tiles, has_poc, tuple(c.decompositions for c in coc),
                            tuple(coc), has_ppm)
        self.header = header
        self._pos = pos
        self.state = _TILES
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
        self._feed_packets(data, base)
        while self.state == _TILES:
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
            self._feed_packets(data, base)
            if psot == 0:
                self.state = _OPEN_TAIL
                self._tail = bytes(data[-2:])
                self._emit_levels(events)
                return
            self._pos = p + psot
        if self.state == _TILES:
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
        if self._progressive is False and tile == 0 and tp == 0 and tn in (0, 1):
            self._follow_packets(start, psot)

    def _follow_packets(self, start: int, psot: int) -> None:
        """Levels inside one tile-part: follow its packet headers, when the layout allows."""
        coding = self.header.tile_coding()
        if coding is None or self.header.levels < 2:
            return
        try:
            self._packets = _TilePartPackets(coding, start + 12, start + psot if psot else None,
                                             self.header.levels - 2)
        except PacketError as exc:
            self.packet_error = str(exc)
            return
        self._progressive = True

    def _feed_packets(self, data: bytes | bytearray | memoryview, base: int) -> None:
        if self._packets is None or self._packets.done:
            return
        try:
            for e in self._packets.feed(data, base):
                self._packet_ends[e.level] = e.end_offset
        except PacketError as exc:  # not a codestream error: the decoder judges the whole stream
            self.packet_error = str(exc)
            self._packets = None
            self._progressive = False

    def _level_end(self, level: int) -> int | None:
        if self._tlm_ends is not None:
            return self._tlm_ends[level]
        if not self._progressive:
            return None
        if self._packets is not None:
            if level == self.header.levels - 1:
                return self._packets.end  # the top level's packets run to the tile-part's end
            return self._packet_ends.get(level)
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
        self.state = _DONE
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
        subsampling=tuple((seg[37 + 3 * c] or 1, seg[38 + 3 * c] or 1) for c in range(csiz)),
    )


def _parse_cod(seg: bytes) -> Cod:
    if len(seg) < 10:
        raise CodestreamError("COD too short")
    scod, order, layers, mct, decomp, xcb, ycb, style, transform = struct.unpack_from(">BBHBBBBBB", seg, 0)
    precincts = _parse_precincts(seg, 10, decomp) if scod & 1 else ()
    return Cod(order, decomp, layers, bool(mct), transform == 1, _code_block(xcb, ycb), style, precincts,
               bool(scod & 2), bool(scod & 4))


def _parse_coc(seg: bytes, siz: Siz | None) -> Coc:
    wide = siz is not None and siz.components >= 257
    i = 2 if wide else 1
    if len(seg) < i + 6:
        raise CodestreamError("COC too short")
    component = int.from_bytes(seg[:i], "big")
    scoc, decomp, xcb, ycb, style = seg[i], seg[i + 1], seg[i + 2], seg[i + 3], seg[i + 4]
    precincts = _parse_precincts(seg, i + 6, decomp) if scoc & 1 else ()
    return Coc(component, decomp, _code_block(xcb, ycb), style, precincts)


def _code_block(xcb: int, ycb: int) -> tuple[int, int]:
    if xcb > 8 or ycb > 8 or xcb + ycb > 8:  # ISO 15444-1 A.6.1: at most 1024 wide, 4096 samples
        raise CodestreamError("bad code-block size")
    return (1 << (xcb + 2), 1 << (ycb + 2))


def _parse_precincts(seg: bytes, at: int, decompositions: int) -> tuple[tuple[int, int], ...]:
    if len(seg) < at + decompositions + 1:
        raise CodestreamError("precinct sizes missing")
    return tuple((b & 0x0F, b >> 4) for b in seg[at : at + decompositions + 1])


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
