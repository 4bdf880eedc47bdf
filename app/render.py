"""Stored pixel values to RGBA for a canvas: window/level, rescale, MONOCHROME1, invert.

One table lookup per pixel, done by numpy: the LUT maps every possible stored value straight to a
packed little-endian RGBA word, so a 3072x2614 frame is one ``numpy.take`` and the result's bytes
go to ``ImageData`` unchanged. Pure numpy: runs the same in CPython and Pyodide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPAQUE = np.uint32(0xFF000000)
GREY_TO_RGBA = np.uint32(0x00010101)


@dataclass(frozen=True)
class Window:
    """A VOI linear window in modality units (after rescale)."""

    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width >= 1:
            object.__setattr__(self, "width", 1.0)


@dataclass(frozen=True)
class Appearance:
    """How stored values become grey levels; everything the LUT depends on."""

    window: Window
    invert: bool = False  # user invert, XOR-ed with MONOCHROME1
    monochrome1: bool = False
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear window to 0..255 (float32 in, uint8 out)."""
    c, w = float(window.center), float(window.width)
    scaled = ((values - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0 if w > 1 else (
        np.where(values > c - 0.5, 255.0, 0.0))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def grey_lut(dtype: np.dtype, appearance: Appearance) -> np.ndarray:
    """A uint32 RGBA word for every possible stored value of an 8- or 16-bit dtype."""
    dtype = np.dtype(dtype)
    if dtype.itemsize == 1:
        stored = np.arange(256, dtype=np.uint8).view(dtype)
    elif dtype.itemsize == 2:
        stored = np.arange(65536, dtype=np.uint16).view(dtype)
    else:
        raise ValueError(f"no lookup table for {dtype}")
    return _grey_rgba(stored, appearance)


def to_rgba(pixels: np.ndarray, appearance: Appearance) -> np.ndarray:
    """(rows, cols) uint32 array of packed RGBA (little-endian bytes R, G, B, A)."""
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return _colour_to_rgba(pixels, appearance)
    if pixels.dtype.itemsize <= 2 and pixels.dtype.kind in "ui":
        lut = grey_lut(pixels.dtype, appearance)
        index = pixels.view(np.uint8 if pixels.dtype.itemsize == 1 else np.uint16)
        return np.take(lut, index)
    return _grey_rgba(pixels, appearance)


def _grey_rgba(values: np.ndarray, appearance: Appearance) -> np.ndarray:
    """Rescale, window and MONOCHROME1/invert, packed as opaque grey RGBA words."""
    modality = values.astype(np.float32) * np.float32(appearance.rescale_slope) + np.float32(
        appearance.rescale_intercept)
    grey = apply_window(modality, appearance.window)
    if appearance.invert != appearance.monochrome1:
        grey = 255 - grey
    return grey.astype(np.uint32) * GREY_TO_RGBA | OPAQUE


def _colour_to_rgba(pixels: np.ndarray, appearance: Appearance) -> np.ndarray:
    rgb = pixels
    if rgb.dtype != np.uint8:
        top = float(rgb.max()) or 1.0
        rgb = (rgb.astype(np.float32) * (255.0 / top)).astype(np.uint8)
    if appearance.invert:
        rgb = 255 - rgb
    out = rgb[..., 0].astype(np.uint32)
    out |= rgb[..., 1].astype(np.uint32) << 8
    out |= rgb[..., 2].astype(np.uint32) << 16
    out |= OPAQUE
    return out


def default_window(pixels: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> Window:
    """Full range of the image when the DICOM header offers no window."""
    lo, hi = float(pixels.min()), float(pixels.max())
    lo, hi = lo * slope + intercept, hi * slope + intercept
    if slope < 0:
        lo, hi = hi, lo
    return Window(center=(lo + hi + 1) / 2.0, width=max(hi - lo + 1, 1.0))
