"""Transports: the one place that knows how bytes move (CPython asyncio vs browser fetch)."""

from __future__ import annotations

import sys

from .base import ContentRange, Response, Transport, parse_content_range, range_header
from .errors import (IncompleteBody, NetworkError, ProtocolError, StatusError, TransportError,
                     TransportTimeout)

__all__ = [
    "ContentRange",
    "Response",
    "Transport",
    "TransportError",
    "NetworkError",
    "IncompleteBody",
    "TransportTimeout",
    "ProtocolError",
    "StatusError",
    "default_transport",
    "parse_content_range",
    "range_header",
]


def default_transport() -> Transport:
    """The browser transport under Pyodide, the asyncio one elsewhere (each with its defaults;
    build one directly for other settings: their parameters differ)."""
    if sys.platform == "emscripten":
        from .browser import BrowserTransport

        return BrowserTransport()
    from .native import NativeTransport

    return NativeTransport()
