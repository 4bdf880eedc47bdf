"""The CPython engine of the bench: ``RetrieveEngine`` over ``NativeTransport``, no browser.

Profiles other than ``none`` go through the throttling proxy; timings come from the engine's own
``Refinement`` events, in the renderLog shape the page writes, so both engines share the report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..config import opening_index
from .network import ThrottleProxy
from .results import LoadRun
from .site import Demo, frame_bytes

__all__ = ["run_async", "cpython_load", "native_decode", "radiograph_format"]


def run_async(make_coro: Callable[[], Any]) -> Any:
    """asyncio.run in a helper thread: Playwright's sync API keeps an event loop on this thread."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make_coro())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _load(base_url: str, entry: dict, preset: str, policy=None) -> LoadRun:
    from app.config import preset as get_preset
    from app.engine import Refinement, RetrieveEngine
    from app.study import discover
    from app.transport.native import NativeTransport

    transport = NativeTransport()
    log: list[dict] = []
    try:
        t0 = time.perf_counter()
        stack = await discover(transport, base_url + entry["url"])
        engine = RetrieveEngine(stack, get_preset(preset), transport, viewport=(900, 1280),
                                **({"policy": policy} if policy else {}))  # a memory budget (scale.py)
        current = opening_index(len(stack))
        engine.set_current(current)
        t_loading = (time.perf_counter() - t0) * 1000.0
        async for event in engine.run():
            if isinstance(event, Refinement):
                now = (time.perf_counter() - t0) * 1000.0
                log.append({"index": event.index, "status": event.status.name, "rows": event.rows,
                            "columns": event.columns, "t_ms": now, "image_t_ms": event.t_ms,
                            "bytes": event.bytes_received, "final": event.final,
                            "drawn": event.index == current, "decode_ms": event.decode_ms, "bench_now": now})
        return LoadRun(log=log, t_click=0.0, t_loading=t_loading, count=len(stack))
    finally:
        await transport.aclose()


def cpython_load(metered: ThrottleProxy, entry: dict, preset: str) -> LoadRun:
    """One load through ``metered`` (the proxy), with the frame bytes it saw."""
    mark = len(metered.request_log)
    run = run_async(lambda: _load(metered.url, entry, preset))
    time.sleep(0.05)  # let the proxy see the last bytes
    run.bytes_frames, run.bytes_total, run.frame_requests = frame_bytes(metered.request_log, mark)
    return run


def native_decode(fmt: dict, paths: dict[str, tuple[Path, str]], runs: int) -> dict[str, list[float]]:
    """decode_frame on the stored frame of each codec, native imagecodecs (first call warms)."""
    from app.codecs import PixelFormat, decode_frame
    from app.readers.multipart import MultipartReader, PartData

    out = {}
    for name, (path, ts) in paths.items():
        raw = path.read_bytes()
        reader = MultipartReader(None)
        events = reader.feed(raw) + reader.close()
        data = b"".join(bytes(e.data) for e in events if isinstance(e, PartData)) or raw
        times = []
        for i in range(runs + 1):
            t = time.perf_counter()
            decode_frame(data, ts, PixelFormat(**fmt))
            if i:
                times.append((time.perf_counter() - t) * 1000.0)
        out[name] = times
    return out


def radiograph_format(demo: Demo) -> tuple[dict, str]:
    """The radiograph's pixel format (PixelFormat fields) and SOP instance UID, from its metadata."""
    from app.study import discover
    from app.transport.native import NativeTransport

    async def go():
        transport = NativeTransport()
        try:
            return await discover(transport, demo.base + demo.radiograph["url"])
        finally:
            await transport.aclose()

    stack = run_async(go)
    image = stack.images[0]
    return dataclasses.asdict(image.fmt), image.sop_instance_uid
