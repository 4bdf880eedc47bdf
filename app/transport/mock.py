"""A transport whose answers come from a function (httpx ``MockTransport`` style), for unit tests.

``MockTransport(handler)``: ``handler(request)`` (plain or async) returns a MockResponse or raises a
TransportError. No socket, no sleep: a test scripts retries, ranges, cut transfers and slow links
(a body that awaits an asyncio.Event) and reads what was asked from ``transport.requests``.
``serve_bytes`` answers a request for a stored file as a static server would (Range, 416).
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable

from .base import range_header
from .errors import TransportError

__all__ = ["MockRequest", "MockResponse", "MockTransport", "serve_bytes"]


@dataclass(frozen=True)
class MockRequest:
    url: str
    headers: dict[str, str]
    byte_range: tuple[int, int | None] | None
    priority: str | None = None  # the engine's hint: "high" for the image on screen

    @property
    def range(self) -> str | None:
        """The Range header as a client would send it."""
        return None if self.byte_range is None else range_header(self.byte_range)


Body = bytes | Iterable[bytes] | AsyncIterable[bytes]


@dataclass
class MockResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Body = b""
    error: TransportError | None = None  # raised after the body's chunks: a transfer cut short
    url: str = ""  # set: the URL a followed redirect ended at (as the browser's response.url)
    closed: bool = False
    sent: int = 0  # body bytes handed to the reader

    async def chunks(self, *, whole: bool = False) -> AsyncIterator[bytes]:
        if isinstance(self.body, (bytes, bytearray)):
            pieces: Iterable[bytes] | AsyncIterable[bytes] = [bytes(self.body)] if self.body else []
        else:
            pieces = self.body
        if isinstance(pieces, AsyncIterable):
            async for piece in pieces:
                self.sent += len(piece)
                yield piece
        else:
            for piece in pieces:
                await asyncio.sleep(0)  # a chance for others to run, as a network read gives
                self.sent += len(piece)
                yield piece
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


Handler = Callable[[MockRequest], "MockResponse | Awaitable[MockResponse]"]


class MockTransport:
    """Answers every request with ``handler(request)``; ``requests`` logs them in order."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []

    async def get(self, url: str, *, headers: dict[str, str] | None = None,
                  byte_range: tuple[int, int | None] | None = None, priority: str | None = None) -> MockResponse:
        request = MockRequest(url, dict(headers or {}), byte_range, priority)
        self.requests.append(request)
        await asyncio.sleep(0)
        answer = self.handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        answer.url = answer.url or url  # a handler may name where a followed redirect ended
        return answer

    async def aclose(self) -> None:
        return None


def serve_bytes(request: MockRequest, data: bytes, content_type: str = "application/octet-stream", *,
                chunk: int = 16384, headers: dict[str, str] | None = None) -> MockResponse:
    """What a static server answers for a file holding ``data``: 200, 206 with Content-Range, 416."""
    extra = {"content-type": content_type, "accept-ranges": "bytes", **(headers or {})}
    if request.byte_range is None:
        return MockResponse(200, {**extra, "content-length": str(len(data))}, _pieces(data, chunk))
    start, end = request.byte_range
    if start >= len(data):
        return MockResponse(416, {"content-range": f"bytes */{len(data)}"})
    end = len(data) - 1 if end is None else min(end, len(data) - 1)
    body = data[start:end + 1]
    return MockResponse(206, {**extra, "content-range": f"bytes {start}-{end}/{len(data)}",
                              "content-length": str(len(body))}, _pieces(body, chunk))


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]
