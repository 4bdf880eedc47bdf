"""CPython transport: a small HTTP/1.1 client over asyncio streams (command line, tests, bench).

Keeps idle connections per origin for reuse, reads Content-Length, chunked and close-delimited
bodies, decodes gzip/deflate as it streams, and applies connect and read timeouts. A transfer that
is cancelled or abandoned closes its connection instead of returning it to the pool.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from typing import AsyncIterator
from urllib.parse import urlsplit

from .base import ProtocolError, TransportError, range_header

__all__ = ["NativeTransport", "NativeResponse"]

READ_SIZE = 256 * 1024
MAX_HEADER = 64 * 1024


class NativeTransport:
    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_idle_per_origin: int = 8,
        user_agent: str = "dicom-stack-viewer",
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle_per_origin
        self.user_agent = user_agent
        self._idle: dict[tuple[str, str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self.connections_opened = 0

    async def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        byte_range: tuple[int, int | None] | None = None,
    ) -> "NativeResponse":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise TransportError(f"unsupported URL scheme in {url!r}")
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        origin = (parts.scheme, host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        req_headers = {
            "Host": parts.netloc.rsplit("@", 1)[-1],
            "User-Agent": self.user_agent,
            "Accept-Encoding": "identity" if byte_range else "gzip, deflate",
            "Connection": "keep-alive",
        }
        for k, v in (headers or {}).items():
            req_headers[k] = v
        if byte_range is not None:
            req_headers["Range"] = range_header(byte_range)
        head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in req_headers.items()) + "\r\n"
        request = head.encode("latin-1")

        for attempt in (0, 1):
            reused = False
            conn = self._take_idle(origin) if attempt == 0 else None
            if conn is None:
                conn = await self._connect(parts.scheme, host, port)
            else:
                reused = True
            reader, writer = conn
            try:
                writer.write(request)
                await writer.drain()
                status, resp_headers = await self._read_head(reader)
            except asyncio.CancelledError:
                writer.close()
                raise
            except (OSError, asyncio.IncompleteReadError, TransportError) as exc:
                writer.close()
                if reused:
                    continue  # the server closed an idle connection: one fresh try
                raise TransportError(f"GET {url}: {exc}") from exc
            return NativeResponse(self, origin, url, status, resp_headers, reader, writer)
        raise TransportError(f"GET {url}: connection failed")

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, writer in conns:
                writer.close()
        self._idle.clear()

    # -- connections ---------------------------------------------------------------------------
    def _take_idle(self, origin):
        conns = self._idle.get(origin)
        while conns:
            reader, writer = conns.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    def _release(self, origin, reader, writer) -> None:
        conns = self._idle.setdefault(origin, [])
        if len(conns) < self.max_idle and not writer.is_closing():
            conns.append((reader, writer))
        else:
            writer.close()

    async def _connect(self, scheme: str, host: str, port: int):
        ctx = ssl.create_default_context() if scheme == "https" else None
        try:
            conn = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, limit=MAX_HEADER), self.connect_timeout
            )
        except asyncio.TimeoutError as exc:
            raise TransportError(f"connect to {host}:{port} timed out") from exc
        except OSError as exc:
            raise TransportError(f"connect to {host}:{port}: {exc}") from exc
        self.connections_opened += 1
        return conn

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        while True:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout)
            except asyncio.TimeoutError as exc:
                raise TransportError("timed out waiting for the response head") from exc
            except asyncio.LimitOverrunError as exc:
                raise TransportError("response head too long") from exc
            lines = raw.decode("latin-1").split("\r\n")
            status_line = lines[0].split(" ", 2)
            if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
                raise TransportError(f"bad status line {lines[0][:80]!r}")
            status = int(status_line[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if not line:
                    continue
                name, sep, value = line.partition(":")
                if not sep:
                    raise TransportError(f"bad header line {line[:80]!r}")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if 100 <= status < 200:
                continue  # interim answer
            return status, headers


class NativeResponse:
    def __init__(self, transport: NativeTransport, origin, url: str, status: int, headers: dict[str, str],
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._transport = transport
        self._origin = origin
        self.url = url
        self.status = status
        self.headers = headers
        self._reader = reader
        self._writer = writer
        self._done = False
        self._closed = False
        self._started = False

    @property
    def _keep_alive(self) -> bool:
        return "close" not in self.headers.get("connection", "").lower()

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._started:
            raise TransportError("the body can be read once")
        self._started = True
        encoding = self.headers.get("content-encoding", "").strip().lower()
        inflater = None
        if encoding in ("gzip", "x-gzip"):
            inflater = zlib.decompressobj(wbits=31)
        elif encoding == "deflate":
            inflater = zlib.decompressobj()
        elif encoding not in ("", "identity"):
            raise ProtocolError(f"unsupported Content-Encoding {encoding!r}")
        try:
            async for raw in self._raw_chunks():
                if inflater is None:
                    yield raw
                else:
                    try:
                        out = inflater.decompress(raw)
                    except zlib.error as exc:
                        raise ProtocolError(f"bad {encoding} body: {exc}") from exc
                    if out:
                        yield out
            if inflater is not None:
                tail = inflater.flush()
                if tail:
                    yield tail
        finally:
            if not self._done:
                await self.aclose()

    async def _read(self, n: int) -> bytes:
        try:
            return await asyncio.wait_for(self._reader.read(n), self._transport.read_timeout)
        except asyncio.TimeoutError as exc:
            raise TransportError(f"read timed out ({self.url})") from exc

    async def _readexactly(self, n: int) -> bytes:
        try:
            return await asyncio.wait_for(self._reader.readexactly(n), self._transport.read_timeout)
        except asyncio.TimeoutError as exc:
            raise TransportError(f"read timed out ({self.url})") from exc
        except asyncio.IncompleteReadError as exc:
            raise TransportError(f"connection closed inside the body ({self.url})") from exc

    async def _readline(self) -> bytes:
        try:
            return await asyncio.wait_for(self._reader.readuntil(b"\n"), self._transport.read_timeout)
        except asyncio.TimeoutError as exc:
            raise TransportError(f"read timed out ({self.url})") from exc
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise TransportError(f"bad chunked body ({self.url})") from exc

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        if self.status in (204, 304) or self.status < 200:
            self._finish()
            return
        te = self.headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            while True:
                line = await self._readline()
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise TransportError(f"bad chunk size line {line[:40]!r}") from exc
                if size == 0:
                    while (await self._readline()).strip():
                        pass  # trailers
                    break
                left = size
                while left:
                    data = await self._read(min(left, READ_SIZE))
                    if not data:
                        raise TransportError(f"connection closed inside a chunk ({self.url})")
                    left -= len(data)
                    yield data
                await self._readexactly(2)
            self._finish()
            return
        length = self.headers.get("content-length")
        if length is not None:
            try:
                left = int(length.split(",")[0])
            except ValueError as exc:
                raise TransportError(f"bad Content-Length {length!r}") from exc
            while left > 0:
                data = await self._read(min(left, READ_SIZE))
                if not data:
                    raise TransportError(f"connection closed after {int(length) - left} of {length} bytes")
                left -= len(data)
                yield data
            self._finish()
            return
        while True:  # delimited by close
            data = await self._read(READ_SIZE)
            if not data:
                break
            yield data
        self._done = True
        self._close_connection()

    def _finish(self) -> None:
        self._done = True
        if self._closed:
            return
        self._closed = True
        if self._keep_alive:
            self._transport._release(self._origin, self._reader, self._writer)
        else:
            self._writer.close()

    def _close_connection(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()

    async def aclose(self) -> None:
        """Abandon the rest of the body: the connection cannot be reused."""
        if not self._done:
            self._close_connection()
            self._done = True
