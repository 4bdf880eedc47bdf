"""What the viewer's page holds, read from outside while it runs (the bench and tests/test_page_scale.py).

The page's JS heap and ArrayBuffers come from its own CDP session; the engine's worker is reached
through ``Target.setAutoAttach`` on that session (non-flat: its replies arrive as events), since a
worker has no ``performance.memory``. The wasm heap and the renderer's bytes come from the page's
own hook, ``window.pyApp.memoryUsage()``. ``PageMemory`` (results.py) says what each part is.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .results import PageMemory

__all__ = ["MemoryProbe", "MEMORY_EVERY_MS", "scroll_through", "wait_sampling"]

MEMORY_EVERY_MS = 500  # memory samples during a load (each a CDP round trip and a worker call)

_SCROLL_JS = """async ([key, steps]) => {
  for (let i = 0; i < steps; i++) {
    document.getElementById('viewport').dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
    await new Promise((r) => requestAnimationFrame(r));
  }
  return steps; }"""


class MemoryProbe:
    """Samples ``PageMemory`` of one page; ``peak`` is the sample with the largest total.

    Create it before the page navigates (the worker must be attached as it starts). With
    ``collect`` each sample first has both JS heaps collected (``HeapProfiler.collectGarbage``):
    live memory, not garbage V8 has yet to free (it frees it under pressure); without, what the
    processes hold at that moment, garbage included."""

    def __init__(self, cdp: Any, *, collect: bool = False) -> None:
        self.cdp = cdp
        self.collect = collect
        self.worker: str | None = None  # the engine worker's CDP session id
        self._replies: dict[int, dict] = {}
        self._next_id = 0
        self.baseline: PageMemory | None = None
        self.peak: PageMemory | None = None
        self.samples = 0
        cdp.on("Target.attachedToTarget", self._attached)
        cdp.on("Target.receivedMessageFromTarget", self._received)
        cdp.send("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": False, "flatten": False})

    def _attached(self, event: dict) -> None:
        if event["targetInfo"]["type"] == "worker":
            self.worker = event["sessionId"]

    def _received(self, event: dict) -> None:
        message = json.loads(event["message"])
        if "id" in message:
            self._replies[message["id"]] = message

    def _in_worker(self, page: Any, method: str) -> dict:
        """The result of a CDP method in the worker (its reply arrives as an event)."""
        if self.worker is None:
            return {}
        self._next_id += 1
        ask = self._next_id
        self.cdp.send("Target.sendMessageToTarget", {"sessionId": self.worker, "message": json.dumps(
            {"id": ask, "method": method})})
        deadline = time.monotonic() + 5.0
        while ask not in self._replies and time.monotonic() < deadline:
            page.wait_for_timeout(5)  # lets Playwright deliver the reply event
        return self._replies.pop(ask, {}).get("result", {})

    def sample(self, page: Any) -> PageMemory:
        if self.collect:
            self.cdp.send("HeapProfiler.collectGarbage")
            self._in_worker(page, "HeapProfiler.collectGarbage")
        heap = self.cdp.send("Runtime.getHeapUsage")
        worker = self._in_worker(page, "Runtime.getHeapUsage")
        usage = json.loads(page.evaluate("window.pyApp.memoryUsage()"))
        kind = page.evaluate("window.viewerRenderer ? window.viewerRenderer.kind : ''")
        held, renderer = int(usage.get("heldPixelBytes", 0)), int(usage.get("rendererBytes", 0))
        memory = PageMemory(
            page_js_heap=int(heap.get("usedSize", 0)), page_buffers=int(heap.get("backingStorageSize", 0)),
            worker_js_heap=int(worker.get("usedSize", 0)), worker_buffers=int(worker.get("backingStorageSize", 0)),
            wasm_heap=int(usage.get("wasmHeapBytes", 0)),
            renderer_extra=renderer if kind == "webgl2" else max(0, renderer - held),
            held_pixels=held, held_images=int(usage.get("heldImages", 0)), renderer=kind)
        self.samples += 1
        if self.baseline is None:
            self.baseline = memory
        if self.peak is None or memory.total > self.peak.total:
            self.peak = memory
        return memory

    def record(self) -> dict:
        return {"baseline": self.baseline and self.baseline.raw(), "peak": self.peak and self.peak.raw(),
                "samples": self.samples}


def scroll_through(page: Any, probe: MemoryProbe, *, every: int = 50) -> int:
    """Scroll the stack on screen end to end, one slice per animation frame (ArrowDown from the
    first slice, as a held key or cine would), sampling memory every ``every`` slices."""
    count = int(page.evaluate("Number(document.getElementById('slider').max) + 1"))
    page.evaluate(_SCROLL_JS, ["Home", 1])
    probe.sample(page)
    done = 0
    while done < count - 1:
        steps = min(every, count - 1 - done)
        done += page.evaluate(_SCROLL_JS, ["ArrowDown", steps])
        probe.sample(page)
    return count


def wait_sampling(page: Any, probe: MemoryProbe, condition: str, timeout_ms: float) -> None:
    """Wait for the JS ``condition`` (a function's source), sampling memory every
    ``MEMORY_EVERY_MS`` meanwhile and once at the end."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout_ms / 1000.0
    while True:
        try:
            page.wait_for_function(condition, timeout=MEMORY_EVERY_MS, polling=20)
            break
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise
            probe.sample(page)
    probe.sample(page)
