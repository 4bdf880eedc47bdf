"""Pyodide transport over ``js.fetch``: streams the body with a ReadableStream reader.

Mirrors NativeTransport: lower-case headers, bytes chunks, cancellation of the awaiting task aborts
the fetch (AbortController). The browser hands over ~1.5 KB pieces; they are batched (>= 64 KB, or
whatever arrived within one short time slice) so Python work runs per batch, not per piece; the
first piece is handed over at once (the main header and TLM the engine plans with are in it).
Content-Range is readable cross-origin only when the server exposes it (Access-Control-Expose-Headers).
The browser decodes gzip itself and follows redirects itself: ``url`` of the answer is where it
ended (``response.url``), so the caller can refuse one that left the allowed origins.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Iterator

import js  # type: ignore[import-not-found]
from pyodide.ffi import to_js  # type: ignore[import-not-found]

from .base import range_header
from .errors import NetworkError, TransportError

__all__ = ["BrowserTransport", "BrowserResponse"]

BATCH_BYTES = 64 * 1024
MIN_BATCH_BYTES = 8 * 1024
BATCH_SECONDS = 0.016


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
    def __init__(self, *, batch_bytes: int = BATCH_BYTES, batch_seconds: float = BATCH_SECONDS) -> None:
        self.batch_bytes = batch_bytes
        self.batch_seconds = batch_seconds

    async def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        byte_range: tuple[int, int | None] | None = None,
    ) -> "BrowserResponse":
        req_headers = dict(headers or {})
        if byte_range is not None:
            req_headers["Range"] = range_header(byte_range)
        controller = js.AbortController.new()
        options = to_js(
            {"method": "GET", "headers": req_headers, "signal": controller.signal, "redirect": "follow"},
            dict_converter=js.Object.fromEntries,
        )
        try:
            with _mapped(f"GET {url}"):
                resp = await js.fetch(url, options)
        except asyncio.CancelledError:
            controller.abort()
            raise
        headers_out: dict[str, str] = {}
        for pair in resp.headers.entries():
            name, value = pair[0], pair[1]
            headers_out[str(name).lower()] = str(value)
        # fetch follows redirects by itself; response.url says where it ended, for the caller's
        # origin check (the engine refuses an answer from a host the configuration does not allow)
        final_url = str(resp.url or "") or url
        return BrowserResponse(self, final_url, int(resp.status), headers_out, resp, controller)

    async def aclose(self) -> None:
        return None


class BrowserResponse:
    def __init__(self, transport: BrowserTransport, url: str, status: int, headers: dict[str, str], resp, controller):
        self._transport = transport
        self.url = url
        self.status = status
        self.headers = headers
        self._resp = resp
        self._controller = controller
        self._reader = None
        self._done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        body = self._resp.body
        if body is None:
            self._done = True
            return
        self._reader = body.getReader()
        pending: list[bytes] = []
        size = 0
        since = 0.0
        first = True  # the first piece goes on at once: it holds the headers the engine acts on
        total = 0
        try:
            while True:
                with _mapped(f"reading {self.url}"):
                    result = await self._reader.read()
                if result.done:
                    break
                data = result.value.to_bytes()
                if first:
                    first = False
                    yield data
                    continue
                if not pending:
                    since = time.monotonic()
                pending.append(data)
                size += len(data)
                total += len(data)
                # small batches while the body is young (its first resolution levels are small and
                # the first picture waits on them), up to batch_bytes once it has grown
                limit = min(self._transport.batch_bytes, max(MIN_BATCH_BYTES, total // 4))
                if size >= limit or time.monotonic() - since >= self._transport.batch_seconds:
                    yield pending[0] if len(pending) == 1 else b"".join(pending)
                    pending, size = [], 0
            if pending:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
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
