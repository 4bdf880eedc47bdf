"""Pyodide's event loop with its ready callbacks run together (the page's worker only).

Pyodide's WebLoop gives every ``call_soon`` its own JS task: a setTimeout and a once-callable
proxy each, ~0.1-0.4 ms of the worker per asyncio step (432 of them in the first second of a
174-slice load; 1109 for a 20-slice one). Here ``call_soon`` appends to a queue and one message on
a MessageChannel drains it: every callback ready when the drain starts runs in that JS task, as
asyncio's own ``_run_once`` does; what they schedule waits for the next drain, so JS events (the
network worker's, the page's) still get their turn between drains. Timers keep WebLoop's way.
``at_step_end`` runs a function right after the asyncio step now running (a result posted to the
page then, not after every other step of the drain: 23 request starts delayed it by ~15 ms).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

__all__ = ["install", "at_step_end"]

_ready: deque[asyncio.Handle] = deque()
_drain_due = False
_draining = False
_step_end: list[Callable[[], None]] = []
_channel = None
_keep: list = []


def _drain(_event=None) -> None:
    global _drain_due, _draining
    _drain_due = False
    _draining = True
    try:
        for _ in range(len(_ready)):
            handle = _ready.popleft()
            if not handle._cancelled:
                handle._run()  # asyncio.Handle reports its callback's exceptions to the loop
            while _step_end:
                _run_step_end(handle, _step_end.pop(0))
    finally:
        _draining = False
        if _ready and not _drain_due:  # never left waiting for someone else's call_soon
            _schedule()


def _run_step_end(handle: asyncio.Handle, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - reported like a callback's, never stops the drain
        handle._loop.call_exception_handler({"message": f"step-end function {fn!r} failed", "exception": exc})


def _schedule() -> None:
    global _drain_due
    _drain_due = True
    _channel.port2.postMessage(None)


def at_step_end(fn: Callable[[], None]) -> bool:
    """Run ``fn`` once the asyncio step now running returns; False (nothing queued) when no drain
    is running, e.g. in a JS event's callback: the caller picks another moment."""
    if not _draining:
        return False
    _step_end.append(fn)
    return True


def _call_soon(loop, callback, *args, context=None) -> asyncio.Handle:
    global _drain_due
    handle = asyncio.Handle(callback, args, loop, context=context)
    _ready.append(handle)
    if not _drain_due:
        _schedule()
    return handle


def install() -> None:
    """Make WebLoop.call_soon queue (once per worker; the running loop's pending timers stay)."""
    global _channel
    if _channel is not None:
        return
    import js  # type: ignore[import-not-found]
    from pyodide.ffi import create_proxy  # type: ignore[import-not-found]
    from pyodide.webloop import WebLoop  # type: ignore[import-not-found]

    _channel = js.MessageChannel.new()
    drain = create_proxy(_drain)
    _keep.append(drain)
    _channel.port1.onmessage = drain
    WebLoop.call_soon = _call_soon
    WebLoop.call_soon_threadsafe = _call_soon
