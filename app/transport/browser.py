"""Pyodide transport over the worker's ``engineNet`` (app/ui/net.mjs, around ``fetch``).

Mirrors NativeTransport: lower-case headers, bytes chunks, cancellation of the awaiting task aborts
the fetch (AbortController). The browser hands over ~1.5 KB pieces; net.mjs batches them on the JS
side (>= 64 KB, or whatever arrived within one short time slice) so Python runs per batch, not per
piece; the first piece is handed over at once (the main header and TLM the engine plans with are in
it). ``priority`` is fetch's hint: the browser queues requests beyond its few connections per host
and gives a free one to the highest priority first, so the engine keeps ``IN_FLIGHT`` requests
queued there (the network never idles while Python decodes) and the image on screen jumps the queue.
Content-Range is readable cross-origin only when the server exposes it (Access-Control-Expose-Headers).
The browser decodes gzip itself and follows redirects itself: ``url`` of the answer is where it
ended (``response.url``), so the caller can refuse one that left the allowed origins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator, Iterator

import js  # type: ignore[import-not-found]

from .base import range_header
from .errors import NetworkError, TransportError

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


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """The one place where a JsException (network error, CORS refusal, abort) becomes a
    TransportError; fetch gives no finer reason, so every one counts as a network error."""
    try:
        yield
    except (asyncio.CancelledError, TransportError):
        raise
    except Exception as exc:  # noqa: BLE001 - JsException has no finer types to map
        raise NetworkError(f"{what}: {exc}") from exc


class BrowserTransport:
    def __init__(self, *, batch_bytes: int = BATCH_BYTES, batch_seconds: float = BATCH_SECONDS,
                 in_flight: int = IN_FLIGHT) -> None:
        self.batch_bytes = batch_bytes
        self.batch_seconds = batch_seconds
        self.in_flight = in_flight

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
        controller = js.AbortController.new()
        try:
            with _mapped(f"GET {url}"):
                answer = await js.engineNet.open(url, json.dumps(req_headers), priority, controller.signal)
        except asyncio.CancelledError:
            controller.abort()
            raise
        headers_out = {str(name).lower(): str(value) for name, value in json.loads(answer.headers)}
        # fetch follows redirects by itself; response.url says where it ended, for the caller's
        # origin check (the engine refuses an answer from a host the configuration does not allow)
        final_url = str(answer.url or "") or url
        return BrowserResponse(self, final_url, int(answer.status), headers_out, answer.body, controller)

    async def aclose(self) -> None:
        return None


class BrowserResponse:
    def __init__(self, transport: BrowserTransport, url: str, status: int, headers: dict[str, str], body,
                 controller):
        self._transport = transport
        self.url = url
        self.status = status
        self.headers = headers
        self._body = body  # net.mjs Body (batches of the stream), or None for a body-less answer
        self._controller = controller
        self._done = False

    async def chunks(self, *, whole: bool = False) -> AsyncIterator[bytes]:
        body = self._body
        if body is None:
            self._done = True
            return
        first = True  # the first piece goes on at once: it holds the headers the engine acts on
        total = 0
        try:
            while True:
                # small batches while the body is young (its first resolution levels are small and
                # the first picture waits on them), up to batch_bytes once it has grown
                if whole:
                    want, seconds = WHOLE_BATCH_BYTES, WHOLE_BATCH_SECONDS
                else:
                    want = 1 if first else min(self._transport.batch_bytes, max(MIN_BATCH_BYTES, total // 4))
                    seconds = self._transport.batch_seconds
                with _mapped(f"reading {self.url}"):
                    piece = await body.batch(want, seconds * 1000.0)
                if piece is None:
                    break
                data = piece.to_bytes()
                first = False
                total += len(data)
                yield data
            self._done = True
        finally:
            if not self._done:
                await self.aclose()

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._controller.abort()
        except Exception:  # noqa: BLE001 - aborting a finished fetch may throw; nothing to undo
            pass
