"""CPython transport: a small HTTP/1.1 client over asyncio streams (command line, tests, bench).

Keeps idle connections per origin for reuse, reads Content-Length, chunked and close-delimited
bodies, decodes gzip/deflate as it streams, and applies connect and read timeouts. A transfer that
is cancelled or abandoned closes its connection instead of returning it to the pool. What asyncio,
the socket and zlib raise becomes the transport's typed errors in one place, ``_mapped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from typing import AsyncIterator, Iterator
from urllib.parse import urlsplit

from .base import range_header
from .errors import IncompleteBody, NetworkError, ProtocolError, TransportError, TransportTimeout
from .framing import ContentLengthReader, parse_chunk_size, parse_content_length

__all__ = ["NativeTransport", "NativeResponse"]

READ_SIZE = 256 * 1024
MAX_HEADER = 64 * 1024


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """The one place where platform exceptions become TransportErrors (most specific first)."""
    try:
        yield
    except TransportError:
        raise
    except TimeoutError as exc:  # before OSError: asyncio.TimeoutError is an OSError subclass
        raise TransportTimeout(f"{what}: timed out") from exc
    except asyncio.IncompleteReadError as exc:
        raise IncompleteBody(f"{what}: connection closed after {len(exc.partial)} bytes") from exc
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(f"{what}: line too long") from exc
    except zlib.error as exc:
        raise ProtocolError(f"{what}: bad compressed body: {exc}") from exc
    except (OSError, EOFError) as exc:  # refused, reset, broken pipe, TLS failures
        raise NetworkError(f"{what}: {exc or type(exc).__name__}") from exc


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
        priority: str | None = None,  # one connection per request here: nothing to order
    ) -> "NativeResponse":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ProtocolError(f"unsupported URL scheme in {url!r}")
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
        req_headers.update(headers or {})
        if byte_range is not None:
            req_headers["Range"] = range_header(byte_range)
        head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in req_headers.items()) + "\r\n"
        request = head.encode("latin-1")

        for attempt in (0, 1):
            conn = self._take_idle(origin) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(parts.scheme, host, port)
            reader, writer = conn
            try:
                with _mapped(f"GET {url}"):
                    writer.write(request)
                    await writer.drain()
                    status, resp_headers = await self._read_head(reader)
            except asyncio.CancelledError:
                writer.close()
                raise
            except TransportError as exc:
                writer.close()
                if reused and exc.retryable and not isinstance(exc, TransportTimeout):
                    continue  # the server closed an idle connection: one fresh try
                raise
            return NativeResponse(self, origin, url, status, resp_headers, reader, writer)
        raise NetworkError(f"GET {url}: connection failed")

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
        with _mapped(f"connect to {host}:{port}"):
            conn = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, limit=MAX_HEADER), self.connect_timeout
            )
        self.connections_opened += 1
        return conn

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        while True:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout)
            except TimeoutError as exc:
                raise TransportTimeout("timed out waiting for the response head") from exc
            except asyncio.LimitOverrunError as exc:
                raise ProtocolError("response head too long") from exc
            lines = raw.decode("latin-1").split("\r\n")
            status_line = lines[0].split(" ", 2)
            if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
                raise ProtocolError(f"bad status line {lines[0][:80]!r}")
            status = int(status_line[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if not line:
                    continue
                name, sep, value = line.partition(":")
                if not sep:
                    raise ProtocolError(f"bad header line {line[:80]!r}")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if 100 <= status < 200:
                continue  # interim answer
            return status, headers


def _inflater(encoding: str):
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=31)
    if encoding == "deflate":
        return zlib.decompressobj()
    if encoding not in ("", "identity"):
        raise ProtocolError(f"unsupported Content-Encoding {encoding!r}")
    return None


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
        self.encoded_bytes = 0  # body bytes as they came over the wire (before Content-Encoding)

    @property
    def _keep_alive(self) -> bool:
        return "close" not in self.headers.get("connection", "").lower()

    async def chunks(self, *, whole: bool = False) -> AsyncIterator[bytes]:  # reads as they come
        if self._started:
            raise ProtocolError("the body can be read once")
        self._started = True
        inflater = _inflater(self.headers.get("content-encoding", "").strip().lower())
        try:
            with _mapped(f"reading {self.url}"):
                async for raw in self._raw_chunks():
                    self.encoded_bytes += len(raw)
                    out = raw if inflater is None else inflater.decompress(raw)
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
        return await asyncio.wait_for(self._reader.read(n), self._transport.read_timeout)

    async def _readexactly(self, n: int) -> bytes:
        return await asyncio.wait_for(self._reader.readexactly(n), self._transport.read_timeout)

    async def _readline(self) -> bytes:
        return await asyncio.wait_for(self._reader.readuntil(b"\n"), self._transport.read_timeout)

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        if self.status in (204, 304) or self.status < 200:
            self._finish()
            return
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            async for data in self._chunked():
                yield data
            self._finish()
            return
        length = self.headers.get("content-length")
        if length is not None:
            async for data in self._counted(parse_content_length(length)):
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

    async def _chunked(self) -> AsyncIterator[bytes]:
        while True:
            size = parse_chunk_size(await self._readline())
            if size == 0:
                while (await self._readline()).strip():
                    pass  # trailers
                return
            async for data in self._counted(size):
                yield data
            await self._readexactly(2)

    async def _counted(self, length: int) -> AsyncIterator[bytes]:
        """Exactly ``length`` bytes (a Content-Length body or one chunk), or IncompleteBody."""
        body = ContentLengthReader(length)
        while not body.done:
            data = await self._read(min(body.remaining, READ_SIZE))
            if not data:
                body.read_eof()
            body.received(len(data))
            yield data

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
