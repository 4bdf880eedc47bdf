"""Sans-I/O reader of JPEG 2000 packet headers: where each resolution level ends inside one tile-part.

Most HTJ2K in the wild (the Static DICOMweb toolkit, AWS HealthImaging) is RPCL with a single
tile-part and no TLM, so the markers alone never say where a resolution level ends. The packets do:
in a resolution-major progression (RPCL, RLCP, or LRCP with one layer) every packet of level r comes
before any packet of level r + 1, and each packet header says how many body bytes follow it.
Reading headers alone (tag trees, coding passes, codeword segment lengths; ISO 15444-1 B.9-B.10,
with the HT segment rules of ISO 15444-15) finds each level's last byte without decoding anything.

Scope: one tile, one quality layer, packet headers in-line (no PPM/PPT), no POC; default or explicit
precinct sizes; SOP / EPH markers; HT code-blocks (placeholder passes included) and classic Part 1
code-blocks (selective bypass, terminate-each-pass). Anything else is refused at construction.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ComponentCoding",
    "TileCoding",
    "LevelEnd",
    "PacketError",
    "PacketReader",
    "packet_plan",
]

SOP_MARKER = b"\xff\x91"
EPH_MARKER = b"\xff\x92"
SOP_LENGTH = 6
BYPASS, TERMINATE_EACH_PASS, HT_BLOCKS, HT_MIXED = 0x01, 0x04, 0x40, 0x80
CLASSIC_SEGMENT_PASSES = 109  # (37 - 1) * 3 + 1: a classic code-block's passes fit one segment
MAX_ZERO_BIT_PLANES = 74  # far above any real Mb: a longer run of zeros is a corrupt header
MAX_LENGTH_BITS = 32
# bounds that keep hostile headers (a huge SIZ, tiny precincts, runs of 0xFF) cheap to refuse
MAX_PACKETS = 1 << 17  # packets of the levels read
MAX_BLOCKS_PER_BAND = 1 << 18  # code-blocks of one precinct in one subband (tag tree leaves)
MAX_HEADER_BYTES = 1 << 22
REPARSE_FREELY = 1 << 16  # a header held beyond this is parsed again only after 1/4 more arrives
RESOLUTION_MAJOR = ("RPCL", "RLCP", "LRCP")  # LRCP only with one layer


class PacketError(ValueError):
    """A packet header the reader cannot follow: corrupt, or a coding style it does not handle."""


@dataclass(frozen=True)
class ComponentCoding:
    """One component's coding style (COD, or its COC) and sampling (SIZ)."""

    decompositions: int
    block_exponents: tuple[int, int]  # log2 of the nominal code-block width and height
    block_style: int  # SPcod code-block style byte
    precincts: tuple[tuple[int, int], ...]  # (PPx, PPy) per resolution level 0..decompositions
    subsampling: tuple[int, int] = (1, 1)  # (XRsiz, YRsiz)


@dataclass(frozen=True)
class TileCoding:
    """What the packet layout of one tile depends on."""

    x0: int  # the tile's area on the reference grid
    y0: int
    x1: int
    y1: int
    components: tuple[ComponentCoding, ...]
    order: str  # progression order name
    layers: int = 1
    sop: bool = False  # packets may start with an SOP marker segment
    eph: bool = False  # packet headers end with an EPH marker


@dataclass(frozen=True)
class LevelEnd:
    """The last packet of resolution ``level`` ends at codestream offset ``end_offset`` (exclusive)."""

    level: int
    end_offset: int


@dataclass(frozen=True)
class _Packet:
    level: int
    component: int
    bands: tuple[tuple[int, int], ...]  # code-blocks (across, down) of this precinct in each band
    ht: bool
    block_style: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _floor_log2(n: int) -> int:
    return n.bit_length() - 1


# -- layout: which packets, in which order --------------------------------------------------------


def packet_plan(coding: TileCoding, last_level: int | None = None) -> list[list[_Packet]]:
    """The packets of resolution levels 0..last_level, in codestream order (refuses what it cannot order)."""
    _check_supported(coding)
    top = coding.components[0].decompositions
    plan, count = [], 0
    for r in range(top + 1 if last_level is None else min(last_level, top) + 1):
        keyed = []
        for c, comp in enumerate(coding.components):
            for key, packet in _resolution_packets(coding, c, comp, r):
                keyed.append((key, packet))
        keyed.sort(key=lambda item: item[0])
        plan.append([packet for _, packet in keyed])
        count += len(keyed)
        if count > MAX_PACKETS:
            raise PacketError(f"more than {MAX_PACKETS} packets")
    return plan


def _check_supported(coding: TileCoding) -> None:
    if coding.order not in RESOLUTION_MAJOR:
        raise PacketError(f"{coding.order} progression is not resolution-major")
    if coding.layers != 1:
        raise PacketError("more than one quality layer")
    if not coding.components or len({c.decompositions for c in coding.components}) != 1:
        raise PacketError("components with different numbers of decompositions")
    for comp in coding.components:
        if comp.block_style & HT_MIXED:
            raise PacketError("mixed HT / classic code-blocks")
        if len(comp.precincts) != comp.decompositions + 1:
            raise PacketError("precinct sizes do not match the decompositions")
        if any(ppx < 1 or ppy < 1 for ppx, ppy in comp.precincts[1:]):
            raise PacketError("precinct exponent 0 above the lowest resolution")
    if coding.order == "RPCL":
        for axis in (0, 1):  # the position loop visits every precinct only on a common grid
            steps = [c.subsampling[axis] << (c.precincts[r][axis] + c.decompositions - r)
                     for c in coding.components for r in range(c.decompositions + 1)]
            if any(s % min(steps) for s in steps):
                raise PacketError("RPCL with subsampling whose precinct grids do not nest")


def _resolution_packets(coding: TileCoding, c: int, comp: ComponentCoding, r: int):
    """((sort key), _Packet) for each precinct of component c at resolution r."""
    xr, yr = comp.subsampling
    n = comp.decompositions - r
    tcx0, tcy0 = _ceil_div(coding.x0, xr), _ceil_div(coding.y0, yr)
    tcx1, tcy1 = _ceil_div(coding.x1, xr), _ceil_div(coding.y1, yr)
    rx0, ry0 = _ceil_div(tcx0, 1 << n), _ceil_div(tcy0, 1 << n)
    rx1, ry1 = _ceil_div(tcx1, 1 << n), _ceil_div(tcy1, 1 << n)
    if rx1 <= rx0 or ry1 <= ry0:
        return
    ppx, ppy = comp.precincts[r]
    px0, py0 = rx0 >> ppx, ry0 >> ppy  # precinct grid origin, in precincts
    across = _ceil_div(rx1, 1 << ppx) - px0
    down = _ceil_div(ry1, 1 << ppy) - py0
    if across * down > MAX_PACKETS:
        raise PacketError(f"more than {MAX_PACKETS} precincts in one resolution")
    bands = _bands(tcx0, tcy0, tcx1, tcy1, comp.decompositions, r)
    shift = 0 if r == 0 else 1  # precincts and code-blocks of r > 0 subbands are half size
    ex = min(comp.block_exponents[0], ppx - shift)
    ey = min(comp.block_exponents[1], ppy - shift)
    ht = bool(comp.block_style & HT_BLOCKS)
    for j in range(down):
        by0 = (py0 + j) << (ppy - shift)
        for i in range(across):
            bx0 = (px0 + i) << (ppx - shift)
            blocks = tuple(_blocks(band, bx0, by0, ppx - shift, ppy - shift, ex, ey) for band in bands)
            packet = _Packet(r, c, blocks, ht, comp.block_style)
            if coding.order == "RPCL":
                key = (max(coding.y0, ((py0 + j) << (ppy + n)) * yr), max(coding.x0, ((px0 + i) << (ppx + n)) * xr), c)
            else:
                key = (c, j, i)
            yield key, packet


def _bands(tcx0: int, tcy0: int, tcx1: int, tcy1: int, decompositions: int, r: int) -> list[tuple[int, int, int, int]]:
    """The non-empty subbands of resolution r (LL; or HL, LH, HH), as (x0, y0, x1, y1)."""
    if r == 0:
        nb, offsets = decompositions, ((0, 0),)
    else:
        nb, offsets = decompositions - r + 1, ((1, 0), (0, 1), (1, 1))
    out = []
    for xo, yo in offsets:
        half = (1 << nb) >> 1
        x0, x1 = _ceil_div(tcx0 - half * xo, 1 << nb), _ceil_div(tcx1 - half * xo, 1 << nb)
        y0, y1 = _ceil_div(tcy0 - half * yo, 1 << nb), _ceil_div(tcy1 - half * yo, 1 << nb)
        if x1 > x0 and y1 > y0:
            out.append((x0, y0, x1, y1))
    return out


def _blocks(band, bx0: int, by0: int, pw: int, ph: int, ex: int, ey: int) -> tuple[int, int]:
    """Code-blocks (across, down) where precinct (bx0, by0, 2^pw x 2^ph) meets the band."""
    x0, y0 = max(bx0, band[0]), max(by0, band[1])
    x1, y1 = min(bx0 + (1 << pw), band[2]), min(by0 + (1 << ph), band[3])
    if x1 <= x0 or y1 <= y0:
        return (0, 0)
    across, down = _ceil_div(x1, 1 << ex) - (x0 >> ex), _ceil_div(y1, 1 << ey) - (y0 >> ey)
    if across * down > MAX_BLOCKS_PER_BAND:
        raise PacketError(f"more than {MAX_BLOCKS_PER_BAND} code-blocks in one precinct")
    return across, down


# -- bits ----------------------------------------------------------------------------------------


class _NeedMore(Exception):
    """The header goes on past the bytes held."""


class _Bits:
    """Packet-header bits, MSB first, with the bit stuffing after 0xFF (B.10.1)."""

    __slots__ = ("buf", "pos", "end", "limit", "byte", "left", "after_ff")

    def __init__(self, buf, pos: int, end: int, limit: int) -> None:
        self.buf, self.pos, self.end, self.limit = buf, pos, end, limit
        self.byte = self.left = 0
        self.after_ff = False

    def _next_byte(self) -> int:
        if self.pos >= self.end:
            if self.pos >= self.limit:
                raise PacketError("a packet header runs past the end of its tile-part")
            raise _NeedMore()
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def bit(self) -> int:
        if not self.left:
            b = self._next_byte()
            self.left = 7 if self.after_ff else 8
            self.after_ff = b == 0xFF
            self.byte = b
        self.left -= 1
        return (self.byte >> self.left) & 1

    def bits(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = (v << 1) | self.bit()
        return v

    def align(self) -> None:
        """End of header: a last 0xFF byte is followed by its stuffed byte."""
        self.left = 0
        if self.after_ff:
            self._next_byte()
            self.after_ff = False

    def marker(self, marker: bytes) -> bool:
        """Consume ``marker`` if it comes next (byte-aligned)."""
        if self.pos + 2 > self.end:
            if self.pos + 2 > self.limit:
                return False
            raise _NeedMore()
        if bytes(self.buf[self.pos : self.pos + 2]) == marker:
            self.pos += 2
            return True
        return False


class _TagTree:
    """A tag tree (B.10.2) over w x h leaves, decoded lazily leaf by leaf."""

    __slots__ = ("levels",)

    def __init__(self, w: int, h: int) -> None:
        self.levels = []  # leaves first: (width, lower bounds, known flags)
        while True:
            self.levels.append((w, [0] * (w * h), [False] * (w * h)))
            if w == 1 and h == 1:
                break
            w, h = (w + 1) >> 1, (h + 1) >> 1

    def decode(self, bits: _Bits, x: int, y: int, threshold: int) -> int:
        """The leaf's value if below ``threshold``; else some value >= threshold."""
        low = 0
        for lev in range(len(self.levels) - 1, -1, -1):
            w, lows, known = self.levels[lev]
            i = (y >> lev) * w + (x >> lev)
            v = max(lows[i], low)
            while not known[i] and v < threshold:
                if bits.bit():
                    known[i] = True
                else:
                    v += 1
            lows[i] = v
            if not known[i]:
                return v
            low = v
        return low


# -- one packet header ----------------------------------------------------------------------------


def _passes(bits: _Bits) -> int:
    """Number of coding passes (Table B.4)."""
    if not bits.bit():
        return 1
    if not bits.bit():
        return 2
    n = bits.bits(2)
    if n != 3:
        return 3 + n
    n = bits.bits(5)
    if n != 31:
        return 6 + n
    return 37 + bits.bits(7)


def _length(bits: _Bits, n: int) -> int:
    if n > MAX_LENGTH_BITS:
        raise PacketError("codeword segment length field too long")
    return bits.bits(n)


def _ht_bytes(bits: _Bits, passes: int, lblock: int) -> int:
    """Bytes of an HT code-block's first contribution (15444-15: cleanup, then refinement segments).

    Placeholder passes sit in the cleanup segment; a zero cleanup length means the contribution is
    placeholders only, whose length field is as wide as a classic one for all its passes.
    """
    refinement = (passes - 1) % 3
    cleanup_passes = passes - refinement
    cleanup = _length(bits, lblock + _floor_log2(cleanup_passes))
    if not cleanup:
        extra = _floor_log2(passes) - _floor_log2(cleanup_passes)
        if _length(bits, extra):
            raise PacketError("bad length of HT placeholder passes")
        return 0
    if cleanup < 2:
        raise PacketError("an HT cleanup segment shorter than 2 bytes")
    total, left, segment = cleanup, refinement, 2
    while left > 0:
        n = segment if left > 1 else 1
        total += _length(bits, lblock + _floor_log2(n))
        left -= n
        segment = 3 - segment
    return total


def _classic_bytes(bits: _Bits, passes: int, lblock: int, style: int) -> int:
    """Bytes of a Part 1 code-block's first contribution: one length per codeword segment."""
    total, left, previous = 0, passes, 0
    while left > 0:
        if style & TERMINATE_EACH_PASS:
            most = 1
        elif style & BYPASS:
            most = 10 if not previous else (2 if previous in (1, 10) else 1)
        else:
            most = CLASSIC_SEGMENT_PASSES
        n = min(most, left)
        total += _length(bits, lblock + _floor_log2(n))
        left -= n
        previous = most
    return total


def _band_bytes(bits: _Bits, across: int, down: int, packet: _Packet) -> int:
    inclusion, zero_planes = _TagTree(across, down), _TagTree(across, down)
    total = 0
    for y in range(down):
        for x in range(across):
            if inclusion.decode(bits, x, y, 1):  # first layer: included iff its value is 0
                continue
            if zero_planes.decode(bits, x, y, MAX_ZERO_BIT_PLANES) >= MAX_ZERO_BIT_PLANES:
                raise PacketError("too many zero bit-planes")
            passes = _passes(bits)
            lblock = 3
            while bits.bit():
                lblock += 1
                if lblock > MAX_LENGTH_BITS:
                    raise PacketError("Lblock beyond any codeword segment length")
            if packet.ht:
                total += _ht_bytes(bits, passes, lblock)
            else:
                total += _classic_bytes(bits, passes, lblock, packet.block_style)
    return total


def _read_packet(buf, pos: int, end: int, limit: int, packet: _Packet, sop: bool, eph: bool) -> tuple[int, int]:
    """(header bytes, body bytes) of the packet starting at buf[pos]; raises _NeedMore."""
    bits = _Bits(buf, pos, end, limit)
    if sop and bits.marker(SOP_MARKER):
        if bits.pos - 2 + SOP_LENGTH > end:
            raise _NeedMore()
        bits.pos += SOP_LENGTH - 2
    body = 0
    if bits.bit():
        for across, down in packet.bands:
            if across and down:
                body += _band_bytes(bits, across, down, packet)
    bits.align()
    if eph and not bits.marker(EPH_MARKER):
        raise PacketError("EPH marker missing after a packet header")
    return bits.pos - pos, body


# -- the reader -----------------------------------------------------------------------------------

_READING, _DONE, _ERROR = "READING", "DONE", "ERROR"


class PacketReader:
    """Feed the bytes after SOD in any chunks; get a LevelEnd as each level's last header is read.

    ``start`` is the codestream offset of the first packet byte, ``limit`` that of the tile-part's
    end (None: runs to EOC). Levels up to ``last_level`` are reported (the top one ends with the
    tile-part, which the caller knows). After a PacketError the reader is in ERROR and refuses data.
    """

    def __init__(self, coding: TileCoding, start: int, limit: int | None = None,
                 last_level: int | None = None, *, plan: list[list[_Packet]] | None = None) -> None:
        self.state = _READING
        self._plan = plan if plan is not None else packet_plan(coding, last_level)
        self._sop, self._eph = coding.sop, coding.eph
        self._limit = limit if limit is not None else 1 << 62
        self._last = len(self._plan) - 1
        self._pos = start  # offset of the next unread byte (a header's start, or inside a body)
        self._skip = 0  # body bytes still to pass over
        self._level, self._index = 0, 0
        self._held = bytearray()  # the start of a header that straddles chunks
        self._parse_at = 0  # held bytes needed before that header is parsed again

    @property
    def done(self) -> bool:
        return self.state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> list[LevelEnd]:
        if self.state == _ERROR:
            raise PacketError("can't read packets after an error")
        events: list[LevelEnd] = []
        if self.state == _DONE:
            return events
        try:
            self._consume(memoryview(data), events)
        except PacketError:
            self.state = _ERROR
            self._held = bytearray()
            raise
        return events

    def _consume(self, data: memoryview, events: list[LevelEnd]) -> None:
        self._close_empty_levels(events)
        i, n = 0, len(data)
        while i < n and self.state == _READING:
            if self._skip:
                step = min(self._skip, n - i)
                i += step
                self._skip -= step
                self._pos += step
                continue
            if self._held:
                before = len(self._held)
                self._held += data[i:]
                if len(self._held) < self._parse_at:
                    return
                src, off, end = self._held, 0, len(self._held)
            else:
                before, src, off, end = 0, data, i, n
            limit = self._limit - self._pos + off
            packet = self._plan[self._level][self._index]
            try:
                header, body = _read_packet(src, off, end, limit, packet, self._sop, self._eph)
            except _NeedMore:
                if not self._held:
                    self._held += data[i:]
                self._parse_later()
                return
            self._parse_at = 0
            if header >= before:
                i += header - before
                self._held = bytearray()
            else:  # an optional marker's look-ahead held bytes of the next packet
                self._held = self._held[header:before]
            self._pos += header
            if self._pos + body > self._limit:
                raise PacketError("a packet body runs past the end of its tile-part")
            self._skip = body
            self._index += 1
            self._close_empty_levels(events, self._pos + body)

    def _parse_later(self) -> None:
        """Parse a long straddling header again only after a quarter more of it: linear, not quadratic."""
        held = len(self._held)
        if held > MAX_HEADER_BYTES:
            raise PacketError(f"a packet header longer than {MAX_HEADER_BYTES} bytes")
        self._parse_at = held + 1 if held <= REPARSE_FREELY else min(held + held // 4, self._limit - self._pos)

    def _close_empty_levels(self, events: list[LevelEnd], end: int | None = None) -> None:
        """Report each level whose packets are all read (levels with no packets at once)."""
        end = self._pos + self._skip if end is None else end
        while self.state == _READING and self._index >= len(self._plan[self._level]):
            events.append(LevelEnd(self._level, end))
            if self._level >= self._last:
                self.state = _DONE
                return
            self._level += 1
            self._index = 0
