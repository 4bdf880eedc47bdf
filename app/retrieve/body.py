"""The bytes of one frame resource as they arrive: framing peeled off, codestream levels found.

Sans-I/O like the readers it drives: the fetch strategies feed it file bytes (the stored file,
possibly a single-part multipart wrapper) and read what it learnt (syntax, levels, completeness).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from ..codecs import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K_PRIVATE,
    DecodeError,
    codec_for,
)
from ..readers.codestream import (
    CodestreamComplete,
    CodestreamError,
    CodestreamScanner,
    MainHeader,
    ResolutionComplete,
)
from ..readers.jpeg import JpegError, JpegHeader, read_jpeg_header
from ..readers.multipart import (
    MultipartEnd,
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartHeaders,
    boundary_from_content_type,
    parse_media_type,
)
from ..transport.base import DIGEST_ALGORITHMS, parse_content_digest

if TYPE_CHECKING:
    from .budget import HeldBytes

__all__ = ["FrameBody", "PREFIX_DECODABLE", "media_of"]

# syntaxes whose decoder reads a prefix holding whole resolution levels (OpenJPH, skipres)
PREFIX_DECODABLE = frozenset({HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K, HTJ2K_PRIVATE})

_MEDIA_DEFAULT_SYNTAX = {
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/jhc": "1.2.840.10008.1.2.4.201",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "application/octet-stream": EXPLICIT_VR_LITTLE_ENDIAN,
}


class FrameBody:
    """The bytes of one frame resource received so far, parsed as they arrive.

    File bytes (what the server stores, possibly a single-part multipart wrapper) go in; the frame
    bytes (codestream) accumulate in one bytearray; the scanner reports complete levels.
    """

    def __init__(self, url: str, fallback_syntax: str, held: "HeldBytes | None" = None) -> None:
        self.url = url
        self.fallback_syntax = fallback_syntax
        self.held = held  # the budget's running total of frame bytes held, counted as they arrive
        self.file_offset = 0  # file bytes fed
        self.total: int | None = None  # file size when known (Content-Range / 200 end)
        self.data = bytearray()
        self.syntax: str | None = None
        self._content_type: str | None = None
        self._reader: MultipartReader | None = None
        self._mode: str | None = None  # "multipart" | "raw"
        self._sniff = bytearray()
        self._part_done = False
        self.scanner: CodestreamScanner | None = None
        self.header: MainHeader | None = None
        self.levels: list[ResolutionComplete] = []
        self.codestream_complete = False
        self.codestream_error: str | None = None  # the scanner's reason to reject the codestream
        self.complete = False
        self.partial_failed = False
        self.error: str | None = None  # why the framing was rejected; the body takes no more bytes
        self.encoded = False  # a response came Content-Encoded: its file offsets are not the server's
        # the part's Content-Digest (the converter writes one), checked before the final decode;
        # hashed as the bytes arrive, so the check costs nothing when the last byte is in
        self.digest: tuple[str, bytes] | None = None
        self._hasher = None

    @property
    def data_offset(self) -> int | None:
        """File offset of the first frame byte (after part headers)."""
        if self._mode == "raw":
            return 0
        if self._reader is not None:
            return self._reader.part_data_offset
        return None

    def set_content_type(self, content_type: str | None) -> None:
        if self._content_type is None and content_type:
            self._content_type = content_type

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.error is not None:
            raise MultipartError(f"the frame body was already rejected: {self.error}")
        if not chunk:
            return
        self.file_offset += len(chunk)
        try:
            self._feed(chunk)
        except MultipartError as exc:
            self.error = str(exc)  # h11's ERROR state: nothing more is fed to a reader that raised
            raise

    def _feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._mode is None:
            self._sniff += chunk
            if len(self._sniff) < 2:
                return
            chunk, self._sniff = bytes(self._sniff), bytearray()
            ctype = self._content_type or ""
            boundary = boundary_from_content_type(ctype)
            if boundary is not None or chunk.lstrip(b"\r\n")[:2] == b"--":
                self._mode = "multipart"
                self._reader = MultipartReader(boundary)
            else:
                self._mode = "raw"
                self._set_syntax(ctype)
        if self._mode == "raw":
            self._add(chunk)
            return
        if self._part_done:
            self._reader.feed(chunk)
            return
        for event in self._reader.feed(chunk):
            if self._part_done:
                break
            if isinstance(event, PartHeaders):
                self._set_syntax(event.content_type or self._content_type or "")
                self.digest = parse_content_digest(event.headers.get("content-digest"))
                if self.digest is not None and not self.data:
                    self._hasher = hashlib.new(DIGEST_ALGORITHMS[self.digest[0]])
            elif isinstance(event, PartData):
                self._add(event.data)
            elif isinstance(event, (PartEnd, MultipartEnd)):
                self._part_done = True
                self.complete = True

    def start_part(self, headers: dict[str, str]) -> None:
        """The frame comes as one part of a frame-list answer (``frames/1,2,3``): the part's
        headers say its type and digest, and its bytes follow unframed."""
        self._mode = "raw"
        self._set_syntax(headers.get("content-type") or "")
        self.digest = parse_content_digest(headers.get("content-digest"))
        if self.digest is not None:
            self._hasher = hashlib.new(DIGEST_ALGORITHMS[self.digest[0]])

    def count_in(self, held: "HeldBytes") -> None:
        """Bytes received before the frame was known to be its image's now count in the budget."""
        if self.held is None:
            self.held = held
            held.total += len(self.data)

    def end_of_file(self) -> None:
        """All of the file has been fed (a 200 body ended, or the last range reached the end)."""
        if self._mode == "raw" or self._mode is None:
            if self._sniff:
                sniff, self._sniff = bytes(self._sniff), bytearray()
                self._mode = "raw"
                self._set_syntax(self._content_type or "")
                self._add(sniff)
            self.complete = True
        elif not self._part_done and not self.codestream_complete:
            try:
                self._reader.close()  # raises MultipartError: the body ended inside the part
            except MultipartError as exc:
                self.error = str(exc)
                raise
        if self.scanner is not None:
            try:
                self.scanner.close()
            except CodestreamError:
                pass

    def _set_syntax(self, content_type: str) -> None:
        media, params = parse_media_type(content_type) if content_type else ("", {})
        if media.startswith("multipart/"):
            media = params.get("type", "").lower()
        ts = params.get("transfer-syntax")
        if ts and ts != "*":
            self.syntax = ts
        elif media in _MEDIA_DEFAULT_SYNTAX and media != "application/octet-stream":
            self.syntax = self.fallback_syntax if media_of(self.fallback_syntax) == media else _MEDIA_DEFAULT_SYNTAX[media]
        else:
            self.syntax = None  # generic type: decided from the bytes (resolved_syntax)

    @property
    def resolved_syntax(self) -> str:
        """The transfer syntax of the frame bytes: declared, else the expected one if the bytes
        look compressed (a raw static tree serves every frame as application/octet-stream)."""
        if self.syntax:
            return self.syntax
        looks_compressed = self.data[:2] in (b"\xff\x4f", b"\xff\xd8") or self.data[:4] == b"\x00\x00\x00\x0c"
        if looks_compressed or media_of(self.fallback_syntax) == "application/octet-stream":
            return self.fallback_syntax
        return EXPLICIT_VR_LITTLE_ENDIAN

    def _add(self, data) -> None:
        if not len(data):
            return
        start = len(self.data)
        self.data += data
        if self.held is not None:
            self.held.total += len(data)
        if self._hasher is not None:
            self._hasher.update(data)
        if self.scanner is None and start == 0 and len(self.data) >= 2:
            if self.data[:2] == b"\xff\x4f":
                self.scanner = CodestreamScanner()
        if self.scanner is not None:
            try:
                events = self.scanner.feed(data)
            except CodestreamError as exc:
                self.scanner = None
                self.codestream_error = str(exc)
                return
            for e in events:
                if isinstance(e, MainHeader):
                    self.header = e
                elif isinstance(e, ResolutionComplete):
                    self.levels.append(e)
                elif isinstance(e, CodestreamComplete):
                    self.codestream_complete = True

    def check_whole_codestream(self) -> None:
        """A JPEG 2000 codestream cut short (or garbled past its headers) often decodes without an
        error to a wrong image: never let one through as the whole frame. Neither bytes that fail
        the Content-Digest of their part (a bit flip inside entropy-coded data decodes silently)."""
        if self.codestream_error is not None:
            raise DecodeError(f"corrupt codestream: {self.codestream_error}")
        if self.scanner is not None and not self.scanner.complete:
            raise DecodeError(f"codestream truncated: {len(self.data)} bytes end before its EOC marker")
        if self._hasher is not None and self._hasher.digest() != self.digest[1]:
            raise DecodeError(f"the frame's bytes do not match their Content-Digest ({self.digest[0]}): "
                              "corrupted on the server or on the way")

    def jpeg_header(self, *, scans: bool = True) -> JpegHeader | None:
        """The JPEG / JPEG-LS header of the frame bytes held, None if they are not JPEG (or
        their markers are broken: the decoder then says why)."""
        try:
            return read_jpeg_header(self.data, scans=scans)
        except JpegError:
            return None

    @property
    def stream_lossless(self) -> bool | None:
        """What the stream itself says of its quality: JPEG-LS NEAR = 0 or lossless JPEG is
        lossless, any other JPEG is not; None when the stream does not say (not JPEG)."""
        header = self.jpeg_header()
        return None if header is None else header.lossless

    @property
    def decodable_complete(self) -> bool:
        return self.complete or self.codestream_complete

    def level_file_end(self, level: int) -> int | None:
        """File offset (exclusive) where a level's last tile-part ends, from the TLM."""
        if self.header is None or self.data_offset is None:
            return None
        ends = self.header.level_end_offsets()
        if ends is None:
            return None
        return self.data_offset + ends[level]

    def release(self) -> None:
        """The body is dropped: its bytes leave the running total (a transfer still feeding it
        is no longer counted)."""
        if self.held is not None:
            self.held.total -= len(self.data)
            self.held = None

    def reset(self) -> None:
        held = self.held
        self.release()
        self.__init__(self.url, self.fallback_syntax, held)  # type: ignore[misc]


def media_of(syntax: str) -> str | None:
    try:
        return codec_for(syntax).media_type
    except DecodeError:
        return None
