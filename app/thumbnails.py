"""Rendered thumbnails of a static tree: an 8-bit JPEG any browser shows, as the Static DICOMweb
toolkit writes them (``.../instances/{sop}/thumbnail``, ``.../series/{uid}/thumbnail``).

A viewer shows them in a study browser and as a preview before Python has started, so they are
finished images: reduced by area averaging to at most ``THUMBNAIL_SIZE`` pixels a side, rescaled,
windowed with the image's first default window (else its value range), MONOCHROME1 inverted,
colour kept. All numpy; the JPEG comes from imagecodecs.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy

from .codecs import PixelFormat, area_mean, to_modality
from .render import Window, apply_window

__all__ = ["THUMBNAIL_SIZE", "THUMBNAIL_MEDIA_TYPE", "render_thumbnail", "thumbnail_pixels"]

THUMBNAIL_SIZE = 128
THUMBNAIL_MEDIA_TYPE = "image/jpeg"


def _reduce(pixels: numpy.ndarray, size: int) -> numpy.ndarray:
    factor = max(1, math.ceil(max(pixels.shape[:2]) / size))
    return area_mean(pixels, factor) if factor > 1 else pixels


def _grey(stored: numpy.ndarray, fmt: PixelFormat, windows: Sequence[tuple[float, float]]) -> numpy.ndarray:
    values = to_modality(stored, fmt).astype(numpy.float32, copy=False)
    if windows:
        window = Window(*windows[0])
    else:  # no default window: the image's own range
        low, high = float(values.min()), float(values.max())
        window = Window((low + high + 1) / 2, max(1.0, high - low + 1))
    grey = apply_window(values, window)
    if fmt.photometric_interpretation == "MONOCHROME1":
        numpy.subtract(255, grey, out=grey)
    return grey


def _colour(stored: numpy.ndarray) -> numpy.ndarray:
    if stored.dtype == numpy.uint8:
        return stored
    top = max(1, int(stored.max()))
    return numpy.rint(stored.astype(numpy.float32) * (255.0 / top)).astype(numpy.uint8)


def thumbnail_pixels(stored: numpy.ndarray, fmt: PixelFormat, windows: Sequence[tuple[float, float]] = (),
                     size: int = THUMBNAIL_SIZE) -> numpy.ndarray:
    """The displayed 8-bit image (grey 2-D or RGB 3-D), longest side at most ``size``."""
    small = _reduce(stored, size)
    if small.ndim == 3:
        return numpy.ascontiguousarray(_colour(small))
    if fmt.photometric_interpretation == "PALETTE COLOR" or fmt.bits_allocated == 1:
        windows = ()
    return _grey(small, fmt, windows)


def render_thumbnail(stored: numpy.ndarray, fmt: PixelFormat, windows: Sequence[tuple[float, float]] = (),
                     size: int = THUMBNAIL_SIZE, quality: int = 85) -> bytes:
    """A baseline JPEG of the thumbnail (browser-decodable)."""
    import imagecodecs

    return bytes(imagecodecs.jpeg8_encode(thumbnail_pixels(stored, fmt, windows, size), level=quality))
