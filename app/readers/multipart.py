"""Sans-I/O reader for multipart/related bodies (PS3.18 frame and bulk data answers).

Feed it whatever chunks the network hands over; it answers with events. It never re-buffers the
body: apart from part headers it holds at most ``len(delimiter) - 1`` bytes between feeds, so a
multi-megabyte frame costs one copy per chunk, not one per byte received so far.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MultipartReader",
    "MultipartError",
    "PartHeaders",
    "PartData",
    "PartEnd",
    "MultipartEnd",
    "boundary_from_content_type",
    "parse_media_type",
]

MAX_HEADER_BYTES = 64 * 1024


class MultipartError(ValueError):
    """The body is not a well-formed multipart body (or ended too early)."""


@dataclass(frozen=True)
class PartHeaders:
    headers: dict[str, str]  # lower-case names

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass(frozen=True)
class PartData:
    data: memoryview | bytes


@dataclass(frozen=True)
class PartEnd:
    pass


@dataclass(frozen=True)
class MultipartEnd:
    pass


Event = PartHeaders | PartData | PartEnd | MultipartEnd


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/sub; a=b; c="d"`` into ("type/sub", {"a": "b", "c": "d"}); names lower-case."""
    parts = _split_params(value)
    media = parts[0].strip().lower() if parts else ""
    params: dict[str, str] = {}
    for item in parts[1:]:
        name, sep, val = item.partition("=")
        if not sep:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1].replace('\\"', '"')
        params[name.strip().lower()] = val
    return media, params


def _split_params(value: str) -> list[str]:
    if '"' not in value:
        return value.split(";")  # nothing quoted: every ";" separates (no per-character loop)
    out, cur, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def boundary_from_content_type(content_type: str | None) -> bytes | None:
    """The boundary of a multipart Content-Type, or None when it is not multipart or has none."""
    if not content_type:
        return None
    media, params = parse_media_type(content_type)
    if not media.startswith("multipart/"):
        return None
    b = params.get("boundary")
    return b.encode("latin-1") if b else None


# states; _ERROR once the body was rejected: nothing more is read (h11's ERROR state)
_PREAMBLE, _AFTER_DELIM, _HEADERS, _BODY, _EPILOGUE, _ERROR = range(6)


class MultipartReader:
    """Bytes in, events out. ``boundary=None`` learns the boundary from the body's first line."""

    def __init__(self, boundary: bytes | str | None = None) -> None:
        if isinstance(boundary, str):
            boundary = boundary.encode("latin-1")
        self._boundary: bytes | None = boundary or None
        self._delim = b"\r\n--" + boundary if boundary else b""
        self._state = _PREAMBLE
        self._buf = bytearray()  # small: preamble line, headers, or a partial delimiter
        self._parts = 0
        self.offset = 0  # total bytes fed
        self.part_data_offset: int | None = None  # body offset where the first part's data begins
        self._searched = 0  # bytes of self._buf already searched for the end of part headers
        self._error: str | None = None

    @property
    def boundary(self) -> bytes | None:
        return self._boundary

    @property
    def finished(self) -> bool:
        return self._state == _EPILOGUE

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if self._state == _ERROR:
            raise MultipartError(f"can't read more of a body already rejected ({self._error})")
        try:
            return self._feed(data)
        except MultipartError as exc:
            self._state, self._error = _ERROR, str(exc)
            raise

    def _feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if not data:
            return []
        events: list[Event] = []
        start = self.offset
        self.offset += len(data)
        if self._state == _EPILOGUE:
            return events
        if self._state == _BODY:
            self._feed_body(data, start, events)
        else:
            self._buf += data
            self._run(events)
        return events

    def close(self) -> list[Event]:
        """Signal the end of the body; raises MultipartError when it ended inside a part."""
        if self._state == _ERROR:
            raise MultipartError(f"the body was already rejected ({self._error})")
        if self._state != _EPILOGUE:
            where = {
                _PREAMBLE: "before the first boundary",
                _AFTER_DELIM: "after a boundary",
                _HEADERS: "inside part headers",
                _BODY: f"inside part {self._parts}",
            }[self._state]
            raise MultipartError(f"multipart body ended {where} ({self.offset} bytes)")
        return []

    # -- states working on self._buf ---------------------------------------------------------
    def _run(self, events: list[Event]) -> None:
        while True:
            if self._state == _PREAMBLE:
                if not self._preamble():
                    return
            elif self._state == _AFTER_DELIM:
                if not self._after_delim(events):
                    return
            elif self._state == _HEADERS:
                if not self._headers(events):
                    return
            elif self._state == _BODY:
                rest = bytes(self._buf)
                self._buf.clear()
                self._feed_body(rest, self.offset - len(rest), events)
                return
            else:
                self._buf.clear()
                return

    def _preamble(self) -> bool:
        buf = self._buf
        if self._boundary is None:
            # learn the boundary from the first non-empty line "--BOUNDARY"
            s = 0
            while s < len(buf) and buf[s] in b"\r\n":
                s += 1
            nl = buf.find(b"\n", s)
            if nl < 0:
                if len(buf) > 1024:
                    raise MultipartError("no boundary line at the start of the body")
                return False
            line = bytes(buf[s:nl]).rstrip(b"\r \t")
            if not line.startswith(b"--") or len(line) < 3:
                raise MultipartError(f"body does not start with a boundary line: {line[:40]!r}")
            self._boundary = line[2:]
            self._delim = b"\r\n--" + self._boundary
            del buf[:s]
        dash = b"--" + self._boundary
        if buf[: len(dash)] == dash:
            del buf[: len(dash)]
            self._state = _AFTER_DELIM
            return True
        i = buf.find(self._delim)
        if i < 0:
            keep = len(self._delim) - 1
            if len(buf) > keep:
                del buf[: len(buf) - keep]
            return False
        del buf[: i + len(self._delim)]
        self._state = _AFTER_DELIM
        return True

    def _after_delim(self, events: list[Event]) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            if self._parts:
                events.append(PartEnd())
            events.append(MultipartEnd())
            self._state = _EPILOGUE
            buf.clear()
            return False
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > 256:
                raise MultipartError("garbage after boundary")
            return False
        if bytes(buf[:nl]).strip(b" \t\r"):
            raise MultipartError(f"garbage after boundary: {bytes(buf[:nl])[:40]!r}")
        del buf[: nl + 1]
        if self._parts:
            events.append(PartEnd())
        self._parts += 1
        self._state = _HEADERS
        return True

    def _headers(self, events: list[Event]) -> bool:
        buf = self._buf
        if buf[:2] == b"\r\n":
            end, skip = 0, 2
        elif buf[:1] == b"\n":
            end, skip = 0, 1
        else:
            # only search buffer space not looked at yet (h11 _receivebuffer), 3 bytes back for a
            # terminator split across feeds: headers fed a byte at a time cost O(n), not O(n^2)
            since = max(0, self._searched - 3)
            end = buf.find(b"\r\n\r\n", since)
            skip = 4
            alt = buf.find(b"\n\n", since)
            if alt >= 0 and (end < 0 or alt < end):
                end, skip = alt, 2
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError("part headers too long")
                self._searched = len(buf)
                return False
        headers: dict[str, str] = {}
        for raw in bytes(buf[:end]).split(b"\n"):
            line = raw.rstrip(b"\r").decode("latin-1")
            if not line.strip():
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise MultipartError(f"malformed part header line: {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        del buf[: end + skip]
        self._searched = 0
        events.append(PartHeaders(headers))
        if self.part_data_offset is None:
            self.part_data_offset = self.offset - len(buf)
        self._state = _BODY
        return True

    # -- the body: no accumulation -------------------------------------------------------------
    def _feed_body(self, data: bytes | bytearray | memoryview, start: int, events: list[Event]) -> None:
        if self._buf:
            data = bytes(self._buf) + bytes(data)
            self._buf.clear()
        elif isinstance(data, memoryview):
            data = bytes(data)
        delim = self._delim
        i = data.find(delim)
        if i >= 0:
            if i:
                events.append(PartData(memoryview(data)[:i]))
            self._buf += data[i + len(delim):]
            self._state = _AFTER_DELIM
            self._run(events)
            return
        hold = _partial_suffix(data, delim)
        n = len(data) - hold
        if n:
            events.append(PartData(memoryview(data)[:n]))
        if hold:
            self._buf += data[n:]


def _partial_suffix(data: bytes | bytearray, delim: bytes) -> int:
    """Length of the longest suffix of data that is a proper prefix of delim."""
    lo = max(0, len(data) - len(delim) + 1)
    j = data.find(b"\r", lo)
    while j >= 0:
        tail = data[j:]
        if delim.startswith(tail):
            return len(tail)
        j = data.find(b"\r", j + 1)
    return 0
