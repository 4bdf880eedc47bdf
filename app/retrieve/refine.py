"""Turning held frame bytes into pixels: a level prefix or the whole frame, checked first."""

from __future__ import annotations

import numpy

from ..codecs import DecodeError, PixelFormat, decode_frame
from ..study import StackImage
from .body import FrameBody

__all__ = ["decode_pixels", "scaled_spacing"]


def decode_pixels(body: FrameBody, fmt: PixelFormat, *, reduce: int, end: int | None) -> numpy.ndarray | None:
    """The pixels of ``body.data[:end]`` at ``reduce`` levels down; None when this decoder cannot
    read a prefix (the body remembers, so no stage tries again). A whole frame (``end`` None)
    must pass the codestream and Content-Digest checks first: a cut or flipped stream often
    decodes without an error to a wrong picture."""
    if end is None:
        body.check_whole_codestream()
    with memoryview(body.data) as view:
        part = view[:end] if end is not None else view
        try:
            return decode_frame(part, body.resolved_syntax, fmt, reduce=reduce)
        except DecodeError:
            if end is None:
                raise
            body.partial_failed = True
            return None
        finally:
            part.release()


def scaled_spacing(image: StackImage, rows: int, columns: int) -> tuple[float, float] | None:
    """Pixel spacing of a rows x columns picture of the image: it covers the same extent."""
    if image.pixel_spacing is None:
        return None
    return image.pixel_spacing[0] * image.rows / rows, image.pixel_spacing[1] * image.columns / columns
