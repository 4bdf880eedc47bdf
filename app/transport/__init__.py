"""Transports: the one place that knows how bytes move (CPython asyncio vs browser fetch)."""

from __future__ import annotations

import sys

from .base import ContentRange, Response, Transport, TransportError, parse_content_range, range_header

__all__ = [
    "ContentRange",
    "Response",
    "Transport",
    "TransportError",
    "default_transport",
    "parse_content_range",
    "range_header",
]


def default_transport(**kwargs) -> Transport:
    """The browser transport under Pyodide, the asyncio one elsewhere."""
    if sys.platform == "emscripten":
        from .browser import BrowserTransport

        return BrowserTransport(**kwargs)
    from .native import NativeTransport

    return NativeTransport(**kwargs)
