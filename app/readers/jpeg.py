"""Sans-I/O reader of JPEG and JPEG-LS stream headers: size, components, precision, JPEG-LS NEAR.

What a stream declares decides two things before any decoder runs: how much memory the decoder
will allocate (the SOF size, checked against the metadata), and the quality of the result. A
JPEG-LS stream labelled near-lossless (.81) with NEAR = 0 in every scan is lossless, whatever the
label says; lossless JPEG (process 14, SOF3) is lossless too.

``read_jpeg_header(prefix)`` takes any prefix of a stream: it answers None until the SOF has
arrived (or when the bytes are not JPEG), and reads NEAR from every JPEG-LS SOS marker present in
the prefix (a coded JPEG-LS byte after 0xFF is below 0x80, so ``FF DA`` in the data is always a
marker).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["JpegHeader", "JpegError", "read_jpeg_header", "SOF_MARKERS", "SOF55"]

SOI, SOS, DNL, LSE, SOF55 = 0xD8, 0xDA, 0xDC, 0xF8, 0xF7
#: start-of-frame markers (second byte): baseline, extended, progressive, lossless, hierarchical, arithmetic, JPEG-LS
SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, SOF55})
_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})  # process 14 (and its hierarchical/arithmetic forms)
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, SOI}
_SOS = re.compile(rb"\xff\xda")  # re searches any buffer: no copy of the frame


class JpegError(ValueError):
    """The bytes start like JPEG but their markers are malformed."""


@dataclass(frozen=True)
class JpegHeader:
    sof: int  # the SOF marker's second byte (0xC0 baseline ... 0xF7 JPEG-LS)
    precision: int  # bits per sample
    rows: int  # 0 when the rows come later in a DNL marker
    columns: int
    components: int
    near: int | None = None  # JPEG-LS: the largest NEAR of the scans read; None before the first SOS
    scans: int = 0  # SOS markers read
    maxval: int | None = None  # JPEG-LS preset MAXVAL (LSE id 1), when present

    @property
    def is_jpeg_ls(self) -> bool:
        return self.sof == SOF55

    @property
    def size(self) -> tuple[int, int] | None:
        """(rows, columns), None while the rows are deferred to DNL."""
        return (self.rows, self.columns) if self.rows else None

    @property
    def lossless(self) -> bool | None:
        """True for lossless JPEG and JPEG-LS with NEAR 0; None for JPEG-LS before its first scan."""
        if self.is_jpeg_ls:
            return None if self.near is None else self.near == 0
        return self.sof in _LOSSLESS_SOF


def read_jpeg_header(data: bytes | bytearray | memoryview, *, scans: bool = True) -> JpegHeader | None:
    """The header of a JPEG / JPEG-LS stream prefix; None when not JPEG or the SOF is not there yet.

    ``scans=False`` stops at the SOF (size only: no search for later JPEG-LS scans).
    """
    view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
    n = len(view)
    if n < 2 or view[0] != 0xFF or view[1] != SOI:
        return None
    header: JpegHeader | None = None
    maxval = None
    i = 2
    while i + 4 <= n:
        if view[i] != 0xFF:
            raise JpegError(f"expected a marker at byte {i}, found 0x{view[i]:02X}")
        marker = view[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        length = (view[i + 2] << 8) | view[i + 3]
        if length < 2:
            raise JpegError(f"marker 0xFF{marker:02X} at byte {i} has length {length}")
        end = i + 2 + length
        if marker in SOF_MARKERS:
            if end > n:
                return None
            header = _sof(view, i, marker)
            if not scans:
                return header
        elif marker == LSE and end <= n and length >= 13 and view[i + 4] == 1:
            maxval = (view[i + 5] << 8) | view[i + 6]
        elif marker == SOS:
            if header is None:
                raise JpegError("SOS before SOF")
            if not header.is_jpeg_ls:
                return header
            return _jpeg_ls_scans(view, i, header, maxval)
        i = end
    return header


def _sof(view, i: int, marker: int) -> JpegHeader:
    length = (view[i + 2] << 8) | view[i + 3]
    if length < 8:
        raise JpegError(f"SOF of {length} bytes")
    precision = view[i + 4]
    rows = (view[i + 5] << 8) | view[i + 6]
    columns = (view[i + 7] << 8) | view[i + 8]
    components = view[i + 9]
    if not columns or not components or length < 8 + 3 * components:
        raise JpegError(f"SOF declares {columns} columns and {components} components in {length} bytes")
    return JpegHeader(marker, precision, rows, columns, components)


def _jpeg_ls_scans(view, first_sos: int, header: JpegHeader, maxval: int | None) -> JpegHeader:
    """NEAR of every JPEG-LS SOS held in the prefix (Ns, Ns component specs, then NEAR, ILV, Al/Ah)."""
    raw = view
    near, scans, i = None, 0, first_sos
    while i + 4 <= len(raw):
        length = (raw[i + 2] << 8) | raw[i + 3]
        if i + 2 + length > len(raw):
            break
        count = raw[i + 4]
        at = i + 5 + 2 * count
        if length < 6 + 2 * count:
            raise JpegError(f"JPEG-LS SOS of {length} bytes for {count} components")
        near = max(near or 0, raw[at])
        scans += 1
        found = _SOS.search(raw, i + 2 + length)
        if found is None:
            break
        i = found.start()
    return JpegHeader(header.sof, header.precision, header.rows, header.columns, header.components,
                      near, scans, maxval)
