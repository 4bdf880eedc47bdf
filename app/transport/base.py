"""The transport protocol: how bytes move, kept apart from what the engine does with them.

One call, ``get(url, headers=..., byte_range=...)``, answers a Response with the status, lower-case
headers and an async iterator of body chunks (content-decoded). Cancelling the asyncio task that
awaits it cancels the transfer (CPython: the connection is closed; browser: AbortController).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import AsyncIterator, Protocol, runtime_checkable

__all__ = [
    "Response",
    "Transport",
    "TransportError",
    "ContentRange",
    "range_header",
    "parse_content_range",
]


class TransportError(Exception):
    """The request could not be made or its answer could not be read (not an HTTP status)."""


@runtime_checkable
class Response(Protocol):
    status: int
    headers: dict[str, str]  # lower-case names
    url: str

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    async def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        byte_range: tuple[int, int | None] | None = None,
    ) -> Response: ...

    async def aclose(self) -> None: ...


def range_header(byte_range: tuple[int, int | None]) -> str:
    """``(start, end_inclusive | None)`` -> ``bytes=start-end``."""
    start, end = byte_range
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"bad byte range {byte_range}")
    return f"bytes={start}-{'' if end is None else end}"


@dataclass(frozen=True)
class ContentRange:
    start: int
    end: int  # inclusive
    total: int | None


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)


def parse_content_range(value: str | None) -> ContentRange | None:
    if not value:
        return None
    m = _CONTENT_RANGE.match(value)
    if not m:
        return None
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        return None
    return ContentRange(start, end, None if m.group(3) == "*" else int(m.group(3)))
