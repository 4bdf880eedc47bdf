"""What the engine reports: value objects, one per thing that happened (h11 ``_events`` style)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from ..codecs import DecodeError
from ..config import ImageQualityStatus
from ..readers.multipart import MultipartError
from ..transport.errors import TransportError

__all__ = ["Refinement", "ImageFailed", "failure_message", "RequestStarted", "FirstBytes", "RequestFinished", "EngineEvent"]


@dataclass(frozen=True)
class Refinement:
    """A decoded image for a stack position, better than anything shown before for it."""

    index: int
    sop_instance_uid: str
    frame: int
    stage_id: str
    status: ImageQualityStatus
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # scaled: a reduced image covers the same extent
    bytes_received: int  # frame bytes received for this image so far (all requests)
    t_ms: float  # since the image's first request
    decode_ms: float
    final: bool  # no later stage will improve this image
    pixels: numpy.ndarray = field(repr=False, compare=False)
    transfer_syntax: str
    reduce: int = 0  # resolution levels skipped (0 = full size of the encoding)
    url: str = ""

    @property
    def rank(self) -> tuple[int, int]:
        """Better images rank higher: quality status first, then pixel count."""
        return int(self.status), self.rows * self.columns


@dataclass(frozen=True)
class ImageFailed:
    index: int
    sop_instance_uid: str
    frame: int
    stage_id: str
    message: str
    t_ms: float = 0.0


def failure_message(exc: BaseException) -> str:
    """An ImageFailed message: the error's own words for the expected kinds, else its type too."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (DecodeError, TransportError, MultipartError)) else f"{type(exc).__name__}: {text}"


@dataclass(frozen=True)
class RequestStarted:
    index: int
    stage_id: str
    url: str
    byte_range: tuple[int, int | None] | None
    t_ms: float


@dataclass(frozen=True)
class FirstBytes:
    index: int
    stage_id: str
    url: str
    status: int
    t_ms: float


@dataclass(frozen=True)
class RequestFinished:
    index: int
    stage_id: str
    url: str
    status: int
    bytes_received: int
    t_ms: float
    cancelled: bool = False


@dataclass(frozen=True)
class RequestRetried:
    """A request failed in a way worth another try (5xx, 429, a lost or stalled transfer) and goes
    out again after ``delay_s``: said, so a slow load can be told from a server that stalls."""

    index: int
    stage_id: str
    url: str
    attempt: int  # 1: the first retry
    reason: str
    delay_s: float
    t_ms: float


EngineEvent = Refinement | ImageFailed | RequestStarted | FirstBytes | RequestFinished | RequestRetried
