"""render.py: the DICOM linear window, rescale, MONOCHROME1 and invert, by table lookup."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app.render import Appearance, Window, apply_window, default_window, to_rgba


def reference_grey(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2, written out per case."""
    v = values.astype(np.float64)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    out = ((v - (center - 0.5)) / (width - 1) + 0.5) * 255
    out = np.where(v <= low, 0, np.where(v > high, 255, out))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def channels(rgba: np.ndarray) -> np.ndarray:
    return rgba.view(np.uint8).reshape(*rgba.shape, 4)


@settings(max_examples=60, deadline=None)
@given(center=st.integers(-2000, 5000), width=st.integers(2, 8000), signed=st.booleans())
def test_lut_matches_the_window_formula(center, width, signed):
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    values = np.linspace(max(info.min, -4096), min(info.max, 8191), 3000).astype(dtype).reshape(30, 100)
    rgba = channels(to_rgba(values, Appearance(window=Window(center, width))))
    expected = reference_grey(values, center, width)
    # float32 LUT vs float64 reference may differ by one level right at a rounding edge
    assert np.abs(rgba[..., 0].astype(int) - expected.astype(int)).max() <= 1
    assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()
    assert (rgba[..., 3] == 255).all()


def test_rescale_is_applied_before_the_window():
    stored = np.array([[0, 1000, 2000]], dtype=np.uint16)
    ct = Appearance(window=Window(40, 400), rescale_slope=1.0, rescale_intercept=-1024)
    grey = channels(to_rgba(stored, ct))[..., 0]
    assert list(grey[0]) == list(reference_grey(stored.astype(float) - 1024, 40, 400)[0])


def test_monochrome1_and_invert_flip_and_cancel():
    ramp = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    w = Window(2048, 4096)
    plain = channels(to_rgba(ramp, Appearance(window=w)))[..., 0].astype(int)
    mono1 = channels(to_rgba(ramp, Appearance(window=w, monochrome1=True)))[..., 0].astype(int)
    both = channels(to_rgba(ramp, Appearance(window=w, monochrome1=True, invert=True)))[..., 0]
    assert (mono1 == 255 - plain).all()
    assert (both == plain).all()


def test_colour_images_keep_their_channels():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    out = channels(to_rgba(rgb, Appearance(window=Window(128, 256))))
    assert (out[..., :3] == [10, 20, 30]).all() and (out[..., 3] == 255).all()


def test_default_window_covers_the_image():
    pixels = np.array([[100, 4000]], dtype=np.uint16)
    w = default_window(pixels)
    grey = apply_window(np.array([100.0, 4000.0], dtype=np.float32), w)
    assert grey[0] == 0 and grey[1] == 255
