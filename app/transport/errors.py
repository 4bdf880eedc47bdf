"""One hierarchy for every way a request can fail below HTTP semantics (httpx ``_exceptions`` style).

Each transport maps what its platform raises (OSError, asyncio timeouts, zlib errors, a JsException)
to these in one place; the engine decides whether to try again from ``retryable`` alone.

    TransportError
    ├── NetworkError        connect failed, connection reset or lost        (retryable)
    │   └── IncompleteBody  the server closed before the framing said the body ends (retryable)
    ├── TransportTimeout    no connection, head or bytes in time             (retryable)
    ├── ProtocolError       the answer cannot be read: bad framing, encoding  (not retryable)
    └── StatusError         an HTTP status the caller cannot use (retryable for 429/5xx)
"""

from __future__ import annotations

__all__ = [
    "RETRY_STATUSES",
    "IncompleteBody",
    "NetworkError",
    "ProtocolError",
    "StatusError",
    "TransportError",
    "TransportTimeout",
]

#: answers worth asking again for: the server is busy or failed, not the request
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class TransportError(Exception):
    """The request could not be made or its answer could not be read."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After), if any


class NetworkError(TransportError):
    """The connection failed or was lost (refused, reset, closed early): asking again may work."""

    retryable = True


class IncompleteBody(NetworkError):
    """The connection closed before the body ended; what arrived is good, the rest can be resumed."""


class TransportTimeout(TransportError):
    """Nothing arrived in time (connect, response head, body bytes, or the low-speed limit)."""

    retryable = True


class ProtocolError(TransportError):
    """The answer arrived but cannot be read (an unsupported Content-Encoding, a corrupt gzip
    body, contradictory framing): asking again would get the same answer, so it is not retried."""


class StatusError(TransportError):
    """An HTTP status the caller cannot use; 429 and 5xx are worth another attempt."""

    def __init__(self, status: int, url: str, *, retry_after: float | None = None, detail: str = "") -> None:
        super().__init__(f"HTTP {status} for {url}{detail}", retryable=status in RETRY_STATUSES,
                         retry_after=retry_after)
        self.status = status


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds of a Retry-After header given in seconds (an HTTP date counts as absent)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
