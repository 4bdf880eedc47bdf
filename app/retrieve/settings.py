"""The engine's knobs in one frozen value (httpx ``Limits``/``Timeout`` style), apart from the
Cornerstone-shaped RetrieveConfig, which says *what* to fetch; this says how hard to try."""

from __future__ import annotations

from dataclasses import dataclass

from ..codecs import MAX_FRAME_BYTES
from ..transport.limits import TransferLimits

__all__ = ["RetrievePolicy", "DEFAULT_CONCURRENCY", "ACCEPT_ANY", "MAX_REDIRECTS", "REDIRECT_STATUSES"]

ACCEPT_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DEFAULT_CONCURRENCY = 6
MAX_REDIRECTS = 5  # a frame request followed further than this is a loop, not a move
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class RetrievePolicy:
    """How the engine moves bytes: concurrency, budgets, retries, give-up rules."""

    concurrency: int = DEFAULT_CONCURRENCY
    cache_bytes: int = 1 << 30  # decoded pixels plus held frame bytes
    retries: int = 2  # further attempts after a retryable failure (5xx/429, a lost transfer)
    retry_backoff: float = 0.5  # seconds before the first retry; doubles each time
    max_retry_after: float = 5.0  # longest Retry-After honoured (seconds)
    max_frame_bytes: int = MAX_FRAME_BYTES  # a frame resource larger than this is refused
    # fewer than low_speed_bytes in low_speed_seconds: the transfer is given up (and tried again
    # like a lost one): curl's --speed-limit / --speed-time; a trickle never ends otherwise
    low_speed_bytes: int = 1024
    low_speed_seconds: float = 30.0
    # all requests of one stage of one image, retries included: a trickle just above the
    # low-speed limit ends here (None: no deadline). Six 7 MB radiographs sharing "Slow 4G"
    # (1.44 Mbit/s) take ~235 s each, so the limit sits above that
    image_seconds: float | None = 300.0
    # how long the image on screen may wait for a slot before a running job gives way: while the
    # user scrolls fast nothing is cancelled, only where they stop
    preempt_delay: float = 0.2
    # the image on screen starts alone: the others' requests wait for its first bytes, at most
    # this long (starting 23 requests kept its bytes waiting 67 ms in the page's worker)
    first_image_head_start: float = 0.15
    # frames of one multi-frame instance asked in one request (``frames/1,2,3``) when a stage
    # fetches whole frames; 1: one request per frame. A server that refuses a list gets single
    # requests for the rest of the load (retrieve.batch)
    frames_per_request: int = 16
    frames_request_bytes: int = 4 << 20  # at most this much declared (native) frame data in one

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.retries < 0 or self.retry_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("retries, retry_backoff and max_retry_after must be >= 0")
        if self.first_image_head_start < 0:
            raise ValueError("first_image_head_start must be >= 0")
        if self.low_speed_seconds <= 0 or self.max_frame_bytes <= 0 or self.cache_bytes < 0:
            raise ValueError("low_speed_seconds and max_frame_bytes must be > 0, cache_bytes >= 0")
        if self.frames_per_request < 1 or self.frames_request_bytes < 1:
            raise ValueError("frames_per_request and frames_request_bytes must be >= 1")
        if self.image_seconds is not None and self.image_seconds <= 0:
            raise ValueError("image_seconds must be > 0 (or None: no deadline)")

    @property
    def transfer_limits(self) -> TransferLimits:
        """The give-up rules a frame transfer shares with discovery's (transport.limits)."""
        return TransferLimits(self.low_speed_bytes, self.low_speed_seconds, self.image_seconds)

    def retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: Retry-After (capped) or back-off."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.retry_backoff * (1 << attempt)
