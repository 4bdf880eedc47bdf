"""Pyodide transport over the engine's network worker (app/ui/net.mjs, around ``fetch``).

Mirrors NativeTransport: lower-case headers, bytes chunks, cancellation of the awaiting task aborts
the fetch. The requests run in another worker: ``get`` queues an operation, and the operations of
one asyncio step go out as one message right after it (a loop callback waited behind the steps
queued before it: a 20 ms decode held 23 requests back); the network worker reports heads, body batches (the first
piece at once, then >= 8-64 KB or whatever arrived within one short time slice) and ends as one
message per JS task, which ``_Channel.on_events`` hands to the waiting requests and bodies. Each
request used to cost the Python thread ~1.4 ms (fetch() itself ~0.8 ms, an AbortController, a
promise per await); now a list append, and its share of a message. ``priority`` is fetch's hint:
the browser queues requests beyond its few connections per host and gives a free one to the
highest priority first, so the engine keeps ``IN_FLIGHT`` requests queued there (the network never
idles while Python decodes) and the image on screen jumps the queue. Content-Range is readable
cross-origin only when the server exposes it (Access-Control-Expose-Headers). The browser decodes
gzip itself and follows redirects itself: ``url`` of the answer is where it ended
(``response.url``), so the caller can refuse one that left the allowed origins.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import AsyncIterator

import js  # type: ignore[import-not-found]

from .. import worker_loop
from .base import range_header
from .errors import NetworkError

__all__ = ["BrowserTransport", "BrowserResponse", "IN_FLIGHT"]

BATCH_BYTES = 64 * 1024
MIN_BATCH_BYTES = 8 * 1024
BATCH_SECONDS = 0.016
#: a body read whole (nothing is decoded before its end): big batches, but one at least this often
#: so the stall rule still sees it move
WHOLE_BATCH_BYTES = 8 * 1024 * 1024
WHOLE_BATCH_SECONDS = 0.5
#: requests the engine keeps open in the browser: HTTP/1.1 gives six connections per host and queues
#: the rest by priority (the image on screen first). Answers wait in the browser while Python decodes
#: earlier ones; with 12 the pipe still ran dry when the worker was starved of CPU (a 200-slice MR:
#: all 12 answered and none asked for 250 ms), so three rounds of six are kept asked for
IN_FLIGHT = 24


class _Body:
    """What the network worker said about one answer's body so far."""

    __slots__ = ("pieces", "ended", "error", "waiter")

    def __init__(self) -> None:
        self.pieces: deque[bytes] = deque()
        self.ended = False
        self.error: str | None = None
        self.waiter: asyncio.Future | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Channel:
    """The engine worker's end of the network worker: operations out, events in (one message each
    way per asyncio step / JS task). One per worker, made on first use."""

    def __init__(self, batch_bytes: int, batch_seconds: float) -> None:
        self.next_id = 0
        self.heads: dict[int, asyncio.Future] = {}
        self.bodies: dict[int, _Body] = {}
        self.outbox: list[list] = [["config", batch_bytes, MIN_BATCH_BYTES, batch_seconds * 1000.0,
                                    WHOLE_BATCH_BYTES, WHOLE_BATCH_SECONDS * 1000.0]]
        self.flush_due = False
        from pyodide.ffi import create_proxy  # type: ignore[import-not-found]

        self._listener = create_proxy(self.on_events)  # kept: the network worker calls it for ever
        js.engineNet.listen(self._listener)

    def send(self, op: list) -> None:
        self.outbox.append(op)
        if not self.flush_due:
            self.flush_due = True
            if not worker_loop.at_step_end(self.flush):
                asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_due = False
        ops, self.outbox = self.outbox, []
        if ops:
            js.engineNet.send(json.dumps(ops))

    def open(self, url: str, headers: dict[str, str], priority: str | None) -> tuple[int, asyncio.Future]:
        self.next_id += 1
        rid = self.next_id
        head = self.heads[rid] = asyncio.get_running_loop().create_future()
        self.bodies[rid] = _Body()
        self.send(["open", rid, url, headers, priority])
        return rid, head

    def abort(self, rid: int) -> None:
        head = self.heads.pop(rid, None)
        if self.bodies.pop(rid, None) is not None or head is not None:
            self.send(["abort", rid])

    def on_events(self, data) -> None:
        """One message of the network worker: heads, body bytes, ends, failures, in order."""
        bufs = data.bufs
        for event in json.loads(data.meta):
            kind, rid = event[0], event[1]
            if kind == "h":
                head = self.heads.pop(rid, None)
                if head is not None and not head.done():
                    head.set_result(event[2:])
                continue
            body = self.bodies.get(rid)
            if kind == "x":
                head = self.heads.pop(rid, None)
                if head is not None:
                    self.bodies.pop(rid, None)
                    if not head.done():
                        head.set_exception(NetworkError(event[2]))
                    continue
                if body is not None:
                    body.error = event[2]
            elif body is None:
                continue  # aborted: its last words are dropped
            elif kind == "d":
                body.pieces.append(bufs[event[2]].to_bytes())
            elif kind == "e":
                body.ended = True
            if body is not None:
                body.wake()


_channel: _Channel | None = None


class BrowserTransport:
    def __init__(self, *, batch_bytes: int = BATCH_BYTES, batch_seconds: float = BATCH_SECONDS,
                 in_flight: int = IN_FLIGHT) -> None:
        self.batch_bytes = batch_bytes
        self.batch_seconds = batch_seconds
        self.in_flight = in_flight

    def _channel(self) -> _Channel:
        global _channel
        if _channel is None:
            _channel = _Channel(self.batch_bytes, self.batch_seconds)
        return _channel

    async def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        byte_range: tuple[int, int | None] | None = None,
        priority: str | None = None,
    ) -> "BrowserResponse":
        req_headers = dict(headers or {})
        if byte_range is not None:
            req_headers["Range"] = range_header(byte_range)
        channel = self._channel()
        rid, head = channel.open(url, req_headers, priority)
        try:
            status, final_url, pairs, has_body = await head
        except asyncio.CancelledError:
            channel.abort(rid)
            raise
        except NetworkError as exc:
            raise NetworkError(f"GET {url}: {exc}") from None
        headers_out = {str(name).lower(): str(value) for name, value in pairs}
        # fetch follows redirects by itself; response.url says where it ended, for the caller's
        # origin check (the engine refuses an answer from a host the configuration does not allow)
        body = channel.bodies.get(rid) if has_body else None
        if body is None:
            channel.abort(rid)
        return BrowserResponse(channel, rid, str(final_url or "") or url, int(status), headers_out, body)

    async def aclose(self) -> None:
        return None


class BrowserResponse:
    def __init__(self, channel: _Channel, rid: int, url: str, status: int, headers: dict[str, str],
                 body: _Body | None):
        self._channel = channel
        self._rid = rid
        self.url = url
        self.status = status
        self.headers = headers
        self._body = body  # None for a body-less answer
        self._done = body is None

    async def chunks(self, *, whole: bool = False) -> AsyncIterator[bytes]:
        body = self._body
        if body is None:
            return
        if whole:
            self._channel.send(["whole", self._rid])
        try:
            while True:
                if body.pieces:
                    yield body.pieces.popleft()
                    continue
                if body.error is not None:
                    raise NetworkError(f"reading {self.url}: {body.error}")
                if body.ended:
                    break
                body.waiter = asyncio.get_running_loop().create_future()
                await body.waiter
                body.waiter = None
            self._done = True
            self._channel.bodies.pop(self._rid, None)
        finally:
            if not self._done:
                await self.aclose()

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        self._channel.abort(self._rid)
