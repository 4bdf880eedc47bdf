"""Give-up rules for any transfer, frames and JSON alike: a low-speed limit (curl's --speed-limit /
--speed-time), an overall deadline (a trickle just above the low-speed limit never ends otherwise),
and a byte budget. Pure asyncio over the Response protocol, so it runs unchanged in CPython and
Pyodide (the browser's fetch has no read timeout of its own).

``SpeedWatch`` is the sans-I/O rule (told how many bytes arrived, raises when the rule is broken);
``paced`` applies it to a response's chunks; ``LimitedTransport`` wraps a transport so every
answer it gives is paced (discovery uses it for QIDO, metadata and alternates documents).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from .base import Response, Transport
from .errors import ProtocolError, TransportTimeout

__all__ = ["TransferLimits", "SpeedWatch", "paced", "LimitedTransport", "JSON_LIMITS"]

Clock = Callable[[], float]


@dataclass(frozen=True)
class TransferLimits:
    """When a transfer is given up: fewer than ``low_speed_bytes`` in ``low_speed_seconds`` (or no
    answer head in that time), more than ``deadline_seconds`` in all, more than ``max_bytes``."""

    low_speed_bytes: int = 1024
    low_speed_seconds: float = 30.0
    deadline_seconds: float | None = 300.0
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.low_speed_seconds <= 0 or self.low_speed_bytes < 0:
            raise ValueError("low_speed_seconds must be > 0 and low_speed_bytes >= 0")
        if self.deadline_seconds is not None and self.deadline_seconds <= 0:
            raise ValueError("deadline_seconds must be > 0")


#: discovery documents (QIDO answers, series metadata, alternates.json): the same low-speed rule
#: and deadline as frames; the byte budget is dicomjson.MAX_JSON_BYTES, checked where the body is
#: collected (a 50 MB metadata document takes ~280 s at "Slow 4G")
JSON_LIMITS = TransferLimits()


class SpeedWatch:
    """The rule itself, fed byte counts: no I/O, the clock is injected (tests advance it)."""

    def __init__(self, limits: TransferLimits, url: str, clock: Clock = time.monotonic,
                 started: float | None = None) -> None:
        self.limits = limits
        self.url = url
        self.clock = clock
        self.started = clock() if started is None else started  # the deadline counts from here
        self.window_start = self.started
        self.window_bytes = 0

    def restart_window(self) -> None:
        """A new request (a retry): a fresh low-speed window, the same deadline."""
        self.window_start, self.window_bytes = self.clock(), 0

    def received(self, n: int) -> None:
        """``n`` more bytes arrived: TransportTimeout when too slow or past the deadline."""
        now = self.clock()
        self.window_bytes += n
        limits = self.limits
        if now - self.window_start >= limits.low_speed_seconds:
            if self.window_bytes < limits.low_speed_bytes:
                raise TransportTimeout(f"{self.url}: fewer than {limits.low_speed_bytes} bytes in "
                                       f"{limits.low_speed_seconds:g} s")
            self.window_start, self.window_bytes = now, 0
        self.check_deadline(now)

    def check_deadline(self, now: float | None = None) -> None:
        deadline = self.limits.deadline_seconds
        if deadline is not None and (self.clock() if now is None else now) - self.started > deadline:
            # not retried: another attempt would only run past the deadline further
            raise TransportTimeout(f"{self.url}: not done after {deadline:g} s", retryable=False)

    def wait_seconds(self) -> float:
        """How long the next chunk may take: the low-speed time, less near the deadline."""
        seconds = self.limits.low_speed_seconds
        deadline = self.limits.deadline_seconds
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - (self.clock() - self.started)))
        return seconds


class _Stall:
    """One timer per transfer, not one per chunk (each costs a setTimeout under Pyodide): it fires
    when the wait for a chunk has lasted ``wait_seconds()``; while the reader is busy elsewhere (not
    waiting) or got a chunk since, it is set again for what is left."""

    def __init__(self, watch: SpeedWatch) -> None:
        self.watch = watch
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.waiting_since: float | None = None
        self.fired = False
        self.seconds = watch.wait_seconds()
        self.handle = self.loop.call_later(self.seconds, self._due)

    def _due(self) -> None:
        self.seconds = self.watch.wait_seconds()
        waited = 0.0 if self.waiting_since is None else self.loop.time() - self.waiting_since
        if self.waiting_since is not None and waited >= self.seconds and self.task is not None:
            self.fired = True
            self.task.cancel()
        else:
            self.handle = self.loop.call_later(max(self.seconds - waited, 0.001), self._due)

    def timed_out(self) -> bool:
        """After a CancelledError while waiting: True (and the cancel withdrawn) if it was ours."""
        if not self.fired:
            return False
        self.fired = False
        if self.task is not None:
            self.task.uncancel()
        return True

    def close(self) -> None:
        self.handle.cancel()


async def paced(resp: Response, watch: SpeedWatch, *, max_bytes: int | None = None,
                whole: bool = False) -> AsyncIterator[bytes]:
    """The response's chunks under the watch's rule; no byte for the wait time is a timeout, more
    than ``max_bytes`` (default: the limits' budget) a ProtocolError. Closes the chunk iterator."""
    budget = watch.limits.max_bytes if max_bytes is None else max_bytes
    chunks = (resp.chunks(whole=True) if whole else resp.chunks()).__aiter__()
    total = 0
    stall = _Stall(watch)
    try:
        while True:
            stall.waiting_since = stall.loop.time()
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except asyncio.CancelledError as exc:
                if not stall.timed_out():
                    raise
                watch.check_deadline()
                raise TransportTimeout(f"{resp.url or watch.url}: no bytes for {stall.seconds:g} s") from exc
            finally:
                stall.waiting_since = None
            total += len(chunk)
            if budget is not None and total > budget:
                raise ProtocolError(f"{resp.url or watch.url}: more than {budget} bytes")
            watch.received(len(chunk))
            yield chunk
    finally:
        stall.close()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def head_within(transport: Transport, url: str, seconds: float, **kwargs) -> Response:
    """transport.get with ``seconds`` as the deadline for the answer's head."""
    try:
        async with asyncio.timeout(seconds):
            return await transport.get(url, **kwargs)
    except TimeoutError as exc:
        raise TransportTimeout(f"GET {url}: no answer in {seconds:g} s") from exc


class _LimitedResponse:
    def __init__(self, resp: Response, watch: SpeedWatch) -> None:
        self._resp = resp
        self._watch = watch
        self.status = resp.status
        self.headers = resp.headers
        self.url = resp.url

    def chunks(self, *, whole: bool = False) -> AsyncIterator[bytes]:
        return paced(self._resp, self._watch, whole=whole)

    async def aclose(self) -> None:
        await self._resp.aclose()


class LimitedTransport:
    """Every answer of ``inner`` under ``limits``: head within the low-speed time, body paced,
    the deadline counted from the request."""

    def __init__(self, inner: Transport, limits: TransferLimits = JSON_LIMITS, clock: Clock = time.monotonic) -> None:
        self.inner = inner
        self.limits = limits
        self.clock = clock

    async def get(self, url: str, *, headers: dict[str, str] | None = None,
                  byte_range: tuple[int, int | None] | None = None, priority: str | None = None) -> Response:
        watch = SpeedWatch(self.limits, url, self.clock)
        resp = await head_within(self.inner, url, watch.wait_seconds(), headers=headers, byte_range=byte_range,
                                 priority=priority)
        return _LimitedResponse(resp, watch)

    async def aclose(self) -> None:
        await self.inner.aclose()
