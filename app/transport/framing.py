"""Sans-I/O HTTP/1.1 body framing (h11 ``_readers`` style): how many bytes the body still owes.

The transport reads from its socket and tells the reader what arrived; the reader says how much
more to read and, at end of file, whether the body was whole. A body cut short raises
IncompleteBody (retryable: the engine resumes it by Range), never a ValueError.
"""

from __future__ import annotations

from .errors import IncompleteBody, ProtocolError

__all__ = ["ContentLengthReader", "parse_content_length", "parse_chunk_size"]


def parse_content_length(value: str) -> int:
    """``Content-Length`` as one number; repeated identical values (``10, 10``, RFC 9110 8.6) are
    one value, different ones are a framing error."""
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        raise ProtocolError(f"conflicting Content-Length {value!r}")
    (text,) = values
    if not text.isdigit() or len(text) > 18:
        raise ProtocolError(f"bad Content-Length {value!r}")
    return int(text)


def parse_chunk_size(line: bytes) -> int:
    """The size of a chunk from its size line (extensions ignored)."""
    text = line.split(b";", 1)[0].strip()
    try:
        if not text or len(text) > 16:
            raise ValueError
        return int(text, 16)
    except ValueError:
        raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None


class ContentLengthReader:
    """Counts a Content-Length body down as bytes arrive."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.remaining = length

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def received(self, n: int) -> None:
        """``n`` body bytes arrived (never more than ``remaining`` were asked for)."""
        if n > self.remaining:
            raise ProtocolError(f"{n} bytes where {self.remaining} were left of the body")
        self.remaining -= n

    def read_eof(self) -> None:
        """The connection closed: fine only if the whole body is in."""
        if self.remaining:
            raise IncompleteBody(f"connection closed after {self.length - self.remaining} of "
                                 f"{self.length} bytes")
