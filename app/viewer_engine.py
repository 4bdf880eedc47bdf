"""What the page needs from the engine, in one place: open a study URL, run it, steer it.

Kept apart from ``page.py`` so it has no DOM in it and runs (and is tested) in CPython too.

A stack built from the series' stack index (``stack.json``, app/tree/stack_index.py) is provisional:
its engine plans and asks for frames at once, but none of its events leaves the loader (no
"opened", no image, no progress) until the series metadata, parsed after the first frame request
is out, has been found to describe the same series, patient and images, field by field. When it
does not, what the engine did is dropped unseen, one StackReplaced event says why, and the load
starts again from the metadata's stack (or ends, when the metadata cannot be read).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from app.config import RetrieveConfig
from app.engine import EngineEvent, ImageFailed, Refinement, RequestStarted, RetrieveEngine
from app.engine import DEFAULT_CONCURRENCY, RetrievePolicy
from app.study import IndexCheck, Stack, discover
from app.transport import Transport, default_transport


@dataclass(frozen=True)
class StackReplaced:
    """The stack index disagreed with the metadata (nothing of it was shown): the load goes on
    from ``stack``, the metadata's, or ends when it is None."""

    stack: Stack | None
    message: str


class _Gate:
    """The events of a provisional stack: held until its check passes, then passed on in order;
    dropped when it fails."""

    def __init__(self, on_event: Callable) -> None:
        self.on_event = on_event
        self.held: list = []
        self.passed: bool | None = None

    def push(self, event) -> None:
        if self.passed:
            self.on_event(event)
        elif self.passed is None:
            self.held.append(event)

    def settle(self, result: asyncio.Future) -> None:
        if self.passed is not None or not result.done():
            return
        self.passed = not result.cancelled() and result.exception() is None
        held, self.held = self.held, []
        if self.passed:
            for event in held:
                self.on_event(event)


class StackLoader:
    """One study being loaded: the engine over its stack, and the transport it owns."""

    def __init__(self, stack: Stack, config: RetrieveConfig, transport: Transport,
                 viewport: tuple[int, int] | None = None, *, policy: RetrievePolicy | None = None) -> None:
        self.stack = stack
        self.transport = transport
        self.config, self.viewport = config, viewport
        # as many jobs as the transport is worth keeping busy (the browser queues them by priority)
        self.policy = policy or RetrievePolicy(concurrency=getattr(transport, "in_flight", DEFAULT_CONCURRENCY))
        self.engine = self._engine(stack)
        self.check: IndexCheck | None = stack.index_check  # a provisional stack's, until it passes
        # awaited before a stack that replaces a provisional one loads (the worker installs pydicom)
        self.prepare: Callable[[Stack], Awaitable[None]] | None = None
        self.refused = False  # a provisional stack the metadata could not confirm: nothing runs again

    def _engine(self, stack: Stack) -> RetrieveEngine:
        return RetrieveEngine(stack, self.config, self.transport, policy=self.policy, viewport=self.viewport)

    def set_current(self, index: int) -> None:
        self.engine.set_current(index)

    def forget(self, indices) -> None:
        self.engine.forget(indices)

    def request(self, indices) -> None:
        self.engine.request(indices)

    async def first_image_answered(self, seconds: float) -> None:
        """Once the first frame request of the load has gone out and the image on screen is
        answered (its first result or its failure), or ``seconds`` after that request."""
        await self.engine.first_request.wait()
        await self.engine.first_request.answered(seconds)

    def pending(self) -> list[int]:
        """Images with stages still to run."""
        return [] if self.refused else self.engine.pending()

    async def run(self, current: int, on_event: Callable[[EngineEvent], None], indices=None) -> None:
        """Load the stack (or only ``indices``: images loaded again after an eviction)."""
        if self.refused:
            return
        self.engine.set_current(current)
        if self.check is None:
            async for event in self.engine.run(indices):
                on_event(event)
            return
        check = self.check
        passed = await self._run_checked(check, on_event, indices)
        self.check = None
        if not passed:
            await self._replace(check, current, on_event, indices)

    async def _run_checked(self, check: IndexCheck, on_event: Callable, indices) -> bool:
        """The provisional stack's run, its events held until the check passes; whether it did."""
        gate = _Gate(on_event)
        check.result.add_done_callback(gate.settle)
        run = self.engine.run(indices)
        stopped = False
        try:
            async for event in run:
                if not check.go.is_set():
                    self._start_check(check, event)
                gate.push(event)
                if gate.passed is None and isinstance(event, (Refinement, ImageFailed)):
                    await asyncio.wait([check.result])  # nothing more is made until it is checked
                    gate.settle(check.result)
                if gate.passed is False and not stopped:
                    stopped = True  # its jobs cancelled; the run drains to its end, its events dropped
                    await self.engine.aclose()
            if gate.passed is None:
                check.start()
                await asyncio.wait([check.result])
                gate.settle(check.result)
        finally:
            if not check.result.done():
                check.cancel()  # this run was cancelled: the metadata's requests go with it
            await run.aclose()
        if check.result.cancelled():
            raise asyncio.CancelledError()
        return bool(gate.passed)

    def _start_check(self, check: IndexCheck, event: EngineEvent) -> None:
        """The metadata's parse starts at the run's first event, the first frame request made (its
        message to the network is sent before the parse's task runs), never before it: not at
        ``first_request`` either, which is also set while the first request waits on alternates.json."""
        if self.stack.work is not None and isinstance(event, RequestStarted):
            self.stack.work.first_request_at = time.perf_counter()
        check.start()

    async def _replace(self, check: IndexCheck, current: int, on_event: Callable, indices=None) -> None:
        """The check failed: the provisional engine's work dropped, the metadata's stack loaded."""
        failure = check.result.exception()
        stack = getattr(failure, "stack", None)
        old = self.engine
        await old.aclose()
        on_event(StackReplaced(stack, str(failure)))
        if stack is None:
            self.refused = True
            return
        if self.prepare is not None:
            await self.prepare(stack)
        self.stack, self.engine = stack, self._engine(stack)
        self.engine.budget.cache_bytes = old.budget.cache_bytes
        self.engine.budget.pixels_elsewhere = old.budget.pixels_elsewhere
        if indices is not None:  # the same positions, those the metadata's stack has
            indices = [i for i in indices if i < len(stack.images)]
        await self.run(min(current, len(stack.images) - 1), on_event, indices)

    async def aclose(self) -> None:
        if self.check is not None:
            self.check.cancel()
        await self.engine.aclose()
        await self.transport.aclose()


async def open_stack(url: str, config: RetrieveConfig, *, series_uid: str | None = None,
                     viewport: tuple[int, int] | None = None,
                     transport: Transport | None = None) -> tuple[Stack, StackLoader]:
    """Discover the stack behind a study/series URL; raises with a readable message on failure."""
    transport = transport or default_transport()
    try:
        stack = await discover(transport, url, series_uid=series_uid, provisional=True)
    except BaseException:
        await transport.aclose()
        raise
    if not stack.images:
        await transport.aclose()
        raise ValueError("the series has no images")
    return stack, StackLoader(stack, config, transport, viewport)


async def run_stack(loader: StackLoader, current: int, on_event: Callable[[EngineEvent], None],
                    indices=None) -> None:
    await loader.run(current, on_event, indices)
