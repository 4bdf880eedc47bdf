"""The bench's network: serve.py as a server process, and a proxy in front of it that emulates a
link (bandwidth per direction, latency) and counts the body bytes the server sent per request.

Counting at the proxy keeps the bench outside the server: it measures any HTTP/1.1 server that
frames bodies with Content-Length (serve.py does), and the numbers are what crossed the wire.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServeProcess", "ResponseMeter", "ThrottleProxy", "RequestRecord"]

PROJECT = Path(__file__).resolve().parents[2]
_URL = re.compile(rb"http://[0-9.]+:\d+/")


class ServeProcess:
    """``python serve.py`` on 127.0.0.1, any free port, over ``data_root``; ``close()`` stops it."""

    def __init__(self, data_root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PROJECT / "serve.py"), "--host", "127.0.0.1", "--port", "0", "--no-setup",
             "--root", str(data_root)], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline() if self.proc.stdout else b""
        match = _URL.search(line)
        if not match:
            self.close()
            raise RuntimeError(f"serve.py did not start: {line.decode(errors='replace').strip()!r}")
        self.url = match.group(0).decode().rstrip("/")
        host, port = self.url.removeprefix("http://").split(":")
        self.address = (host, int(port))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


@dataclass
class RequestRecord:
    path: str
    status: int
    bytes_sent: int = 0


@dataclass
class ResponseMeter:
    """Sans-I/O: fed one connection's request bytes and response bytes, records body bytes per request.

    Requests are GETs without bodies (what the viewer sends); responses are framed by Content-Length.
    A response cut short (a cancelled stream) keeps the bytes that arrived.
    """

    log: deque = field(default_factory=lambda: deque(maxlen=100_000))
    _pending: deque = field(default_factory=deque)  # paths of requests not yet answered
    _req: bytearray = field(default_factory=bytearray)
    _head: bytearray = field(default_factory=bytearray)
    _current: RequestRecord | None = None
    _left: int = 0

    def request_bytes(self, data: bytes) -> None:
        self._req += data
        while (end := self._req.find(b"\r\n\r\n")) >= 0:
            line = bytes(self._req[:self._req.find(b"\r\n")]).split(b" ")
            method = line[0]
            self._pending.append((line[1].decode("latin-1") if len(line) > 1 else "", method == b"HEAD"))
            del self._req[:end + 4]

    def response_bytes(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._current is not None and self._left:
                take = min(self._left, len(view))
                self._current.bytes_sent += take
                self._left -= take
                view = view[take:]
                continue
            self._head += view
            view = memoryview(b"")
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = bytes(self._head[:end]), bytes(self._head[end + 4:])
            self._head.clear()
            self._start(head)
            view = memoryview(rest)

    def _start(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip().split(b",")[0] or 0)
        path, is_head = self._pending.popleft() if self._pending else ("", False)
        self._current = RequestRecord(path, status)
        self._left = 0 if (is_head or status in (204, 304) or status < 200) else length
        self.log.append(self._current)


class _Link:
    def __init__(self, rate: float | None) -> None:
        self.rate = rate  # bytes per second, None = no limit
        self.free_at = 0.0


class ThrottleProxy:
    """A TCP proxy on 127.0.0.1 that emulates a link and meters responses (``request_log``).

    Each direction is one shared link (all connections queue on it, as in Chrome's emulation):
    a chunk is serialised at the link's rate after the previous one, then delivered half the
    latency later. ``down=None`` passes bytes through unthrottled. Runs its own event loop in a
    thread so the measured process is not slowed.
    """

    def __init__(self, target_host: str, target_port: int, down: float | None = None, up: float | None = None,
                 latency_ms: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.down, self.up = _Link(down), _Link(up)
        self.half_latency = latency_ms / 2000.0
        self.request_log: deque[RequestRecord] = deque(maxlen=100_000)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _handle(self, creader, cwriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.close()
            return
        meter = ResponseMeter(self.request_log)
        try:
            await asyncio.gather(self._pipe(creader, uwriter, self.up, meter.request_bytes),
                                 self._pipe(ureader, cwriter, self.down, meter.response_bytes),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # proxy closing: end quietly (asyncio logs a cancelled handler)
            pass

    async def _pipe(self, reader, writer, link: _Link, seen) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                when, data = await queue.get()
                delay = when - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()

        task = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(16384)
                now = loop.time()
                if not data:
                    queue.put_nowait((now + self.half_latency, None))
                    break
                seen(data)
                start = max(now, link.free_at)
                link.free_at = start + (len(data) / link.rate if link.rate else 0.0)
                queue.put_nowait((link.free_at + self.half_latency, data))
            await task
        except (OSError, asyncio.CancelledError):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the peer may already be gone; nothing to report
                pass

    def close(self) -> None:
        async def stop():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()
