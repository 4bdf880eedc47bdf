"""The transport protocol: how bytes move, kept apart from what the engine does with them.

One call, ``get(url, headers=..., byte_range=...)``, answers a Response with the status, lower-case
headers and an async iterator of body chunks (content-decoded). Cancelling the asyncio task that
awaits it cancels the transfer (CPython: the connection is closed; browser: AbortController).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import AsyncIterator, Protocol, runtime_checkable

from .errors import (
    RETRY_STATUSES,
    IncompleteBody,
    NetworkError,
    ProtocolError,
    StatusError,
    TransportError,
    TransportTimeout,
    retry_after_seconds,
)

__all__ = [
    "Response",
    "Transport",
    "TransportError",
    "ProtocolError",
    "NetworkError",
    "IncompleteBody",
    "TransportTimeout",
    "StatusError",
    "RETRY_STATUSES",
    "retry_after_seconds",
    "ContentRange",
    "range_header",
    "parse_content_range",
    "parse_content_digest",
]


@runtime_checkable
class Response(Protocol):
    status: int
    headers: dict[str, str]  # lower-case names
    url: str

    # whole: the caller acts only on the whole body, so the transport may hand it over in as few
    # pieces as it likes (still now and then: the stall rule counts pieces)
    def chunks(self, *, whole: bool = False) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    async def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        byte_range: tuple[int, int | None] | None = None,
        priority: str | None = None,  # "high" | "low": a hint (fetch's); transports may ignore it
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


#: RFC 9530 Content-Digest algorithms checked, strongest first, with their hashlib names.
DIGEST_ALGORITHMS = {"sha-512": "sha512", "sha-256": "sha256"}


def parse_content_digest(value: str | None) -> tuple[str, bytes] | None:
    """``sha-256=:<base64>:`` (RFC 9530, a dictionary of byte sequences): the strongest
    algorithm this knows, with its digest; None when there is none (unknown ones are ignored)."""
    if not value:
        return None
    found: dict[str, bytes] = {}
    for member in value.split(","):
        name, sep, rest = member.partition("=")
        name, rest = name.strip().lower(), rest.strip()
        if not sep or name not in DIGEST_ALGORITHMS or len(rest) < 2 or rest[0] != ":" or rest[-1] != ":":
            continue
        try:
            digest = base64.b64decode(rest[1:-1], validate=True)
        except (ValueError, binascii.Error):
            continue
        if len(digest) == hashlib.new(DIGEST_ALGORITHMS[name]).digest_size:
            found[name] = digest
    for name in DIGEST_ALGORITHMS:
        if name in found:
            return name, found[name]
    return None
