"""What the page needs from the engine, in one place: open a study URL, run it, steer it.

Kept apart from ``page.py`` so it has no DOM in it and runs (and is tested) in CPython too.
"""

from __future__ import annotations

from typing import Callable

from app.config import RetrieveConfig
from app.engine import EngineEvent, RetrieveEngine
from app.engine import DEFAULT_CONCURRENCY, RetrievePolicy
from app.study import Stack, discover
from app.transport import Transport, default_transport


class StackLoader:
    """One study being loaded: the engine over its stack, and the transport it owns."""

    def __init__(self, stack: Stack, config: RetrieveConfig, transport: Transport,
                 viewport: tuple[int, int] | None = None) -> None:
        self.stack = stack
        self.transport = transport
        # as many jobs as the transport is worth keeping busy (the browser queues them by priority)
        policy = RetrievePolicy(concurrency=getattr(transport, "in_flight", DEFAULT_CONCURRENCY))
        self.engine = RetrieveEngine(stack, config, transport, policy=policy, viewport=viewport)

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
        return self.engine.pending()

    async def run(self, current: int, on_event: Callable[[EngineEvent], None], indices=None) -> None:
        """Load the stack (or only ``indices``: images loaded again after an eviction)."""
        self.engine.set_current(current)
        async for event in self.engine.run(indices):
            on_event(event)

    async def aclose(self) -> None:
        await self.engine.aclose()
        await self.transport.aclose()


async def open_stack(url: str, config: RetrieveConfig, *, series_uid: str | None = None,
                     viewport: tuple[int, int] | None = None,
                     transport: Transport | None = None) -> tuple[Stack, StackLoader]:
    """Discover the stack behind a study/series URL; raises with a readable message on failure."""
    transport = transport or default_transport()
    try:
        stack = await discover(transport, url, series_uid=series_uid)
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
