"""Transports: typed errors with ``retryable``, sans-I/O body framing, and the mock transport."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from app.transport import IncompleteBody, NetworkError, ProtocolError, StatusError, TransportError
from app.transport.framing import ContentLengthReader, parse_chunk_size, parse_content_length
from app.transport.mock import MockResponse, MockTransport, serve_bytes
from app.transport.native import NativeTransport


# -- framing, sans-I/O -------------------------------------------------------------------------------


def test_repeated_identical_content_length_is_one_value():
    assert parse_content_length("10") == 10
    assert parse_content_length("10, 10") == 10
    assert parse_content_length(" 7 ,7,7 ") == 7


@pytest.mark.parametrize("value", ["10, 11", "", "-1", "ten", "1" * 40])
def test_bad_content_length_is_a_protocol_error(value):
    with pytest.raises(ProtocolError):
        parse_content_length(value)


def test_a_body_cut_short_is_a_retryable_incomplete_body():
    reader = ContentLengthReader(10)
    reader.received(4)
    with pytest.raises(IncompleteBody, match="after 4 of 10 bytes") as info:
        reader.read_eof()
    assert info.value.retryable and isinstance(info.value, NetworkError)
    reader.received(6)
    assert reader.done
    reader.read_eof()  # whole: no error


def test_chunk_size_lines():
    assert parse_chunk_size(b"1f;ext=1\r\n") == 31
    with pytest.raises(ProtocolError):
        parse_chunk_size(b"zz\r\n")


def test_retryable_by_type_and_status():
    assert StatusError(503, "u").retryable and StatusError(429, "u").retryable
    assert not StatusError(404, "u").retryable
    assert not ProtocolError("x").retryable and not TransportError("x").retryable
    assert TransportError("x", retryable=True).retryable


# -- the mock transport ---------------------------------------------------------------------------------


def test_mock_transport_serves_ranges_and_logs_requests():
    data = bytes(range(256)) * 10

    async def main():
        transport = MockTransport(lambda req: serve_bytes(req, data, chunk=100))
        whole = await transport.get("http://x/f")
        got = b"".join([c async for c in whole.chunks()])
        part = await transport.get("http://x/f", byte_range=(2500, None))
        tail = b"".join([c async for c in part.chunks()])
        past = await transport.get("http://x/f", byte_range=(9999, None))
        return transport, got, part, tail, past

    transport, got, part, tail, past = asyncio.run(main())
    assert got == data and whole_status(transport) == [None, "bytes=2500-", "bytes=9999-"]
    assert part.status == 206 and part.headers["content-range"] == "bytes 2500-2559/2560" and tail == data[2500:]
    assert past.status == 416


def whole_status(transport):
    return [r.range for r in transport.requests]


def test_mock_response_raises_its_error_after_the_body():
    async def main():
        transport = MockTransport(lambda req: MockResponse(200, {}, [b"ab", b"cd"], IncompleteBody("cut")))
        resp = await transport.get("http://x/f")
        got = []
        with pytest.raises(IncompleteBody):
            async for c in resp.chunks():
                got.append(c)
        return got

    assert asyncio.run(main()) == [b"ab", b"cd"]


# -- the native transport on a raw loopback socket ------------------------------------------------------


def _raw_server(answer: bytes, *, reset: bool = False):
    """One connection: read the request, send ``answer``, close (with RST if ``reset``)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)

    def serve():
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.sendall(answer)
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()
        sock.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}/f"


async def _read_all(url: str) -> bytes:
    transport = NativeTransport(connect_timeout=2, read_timeout=2)
    try:
        resp = await transport.get(url)
        return b"".join([c async for c in resp.chunks()])
    finally:
        await transport.aclose()


@pytest.mark.servers
def test_two_equal_content_lengths_then_an_early_close_is_retryable():
    url = _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 10\r\n\r\nabcd")
    with pytest.raises(IncompleteBody, match="after 4 of 10 bytes") as info:
        asyncio.run(_read_all(url))
    assert info.value.retryable


@pytest.mark.servers
def test_a_connection_reset_mid_body_is_a_retryable_network_error():
    url = _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000, reset=True)
    with pytest.raises(NetworkError) as info:
        asyncio.run(_read_all(url))
    assert info.value.retryable


@pytest.mark.servers
def test_conflicting_content_lengths_are_not_retried():
    url = _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 12\r\n\r\nabcd")
    with pytest.raises(ProtocolError):
        asyncio.run(_read_all(url))
