"""app/ui/render.mjs in real Chromium: WebGL2 and the 2D fallback give app/render.py's grey levels.

Every test draws known stored values, reads the canvas back and compares it with the numpy CPU
reference (app.render.to_rgba) placed by the same nearest-pixel rule, byte for byte.
WebGL2 in headless Chromium here is ANGLE on SwiftShader (CPU); if a Chromium stops offering it
without flags, launch it with ``--use-angle=swiftshader --enable-unsafe-swiftshader``.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

import numpy as np
import pytest

from app.render import Appearance, Window, grey_lut, to_rgba

PROJECT = Path(__file__).resolve().parent.parent
ORIGIN = "http://127.0.0.1:9"  # never contacted: page.route answers from disk
SERVED = ("app/ui/", "tests/pages/")
MODES = ("webgl2", "2d")
BLACK = np.array([0, 0, 0, 255], dtype=np.uint8)


def _serve_from_disk(route) -> None:
    path = route.request.url.removeprefix(ORIGIN + "/").split("?")[0]
    file = PROJECT / path
    if not path.startswith(SERVED) or ".." in path or not file.is_file():
        route.fulfill(status=404, body="not here")
        return
    kind = "text/html" if path.endswith(".html") else "text/javascript"
    route.fulfill(status=200, body=file.read_bytes(), content_type=kind)


@pytest.fixture
def harness(page):
    page.page.route(ORIGIN + "/**", _serve_from_disk)
    page.page.goto(ORIGIN + "/tests/pages/render.html")
    page.page.wait_for_function("document.documentElement.dataset.ready === '1'", timeout=20_000)
    yield Harness(page.page)
    assert page.errors == []


class Harness:
    """One canvas per name in the test page, driven through ``window.harness``."""

    def __init__(self, page) -> None:
        self.page = page
        self.sizes: dict[str, tuple[int, int]] = {}

    def open(self, name: str, mode: str, width: int, height: int, dpr: float = 1) -> str:
        """A canvas of ``width`` x ``height`` CSS px at ``dpr`` device pixels per CSS px."""
        self.sizes[name] = (round(width * dpr), round(height * dpr))
        return self.page.evaluate("(a) => harness.open(...a)", [name, mode, width, height, dpr])

    def upload(self, name: str, key: str, pixels: np.ndarray, dtype: str | None = None) -> int:
        samples = 3 if pixels.ndim == 3 else 1
        image = {"rows": pixels.shape[0], "columns": pixels.shape[1], "samples": samples,
                 "dtype": dtype or pixels.dtype.name}
        data = base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode()
        return self.page.evaluate("(a) => harness.upload(...a)", [name, key, data, image])

    def draw(self, name: str, key: str, **view) -> np.ndarray:
        data = self.page.evaluate("(a) => harness.draw(...a)", [name, key, view])
        width, height = self.sizes[name]
        return np.frombuffer(base64.b64decode(data), dtype=np.uint8).reshape(height, width, 4)

    def call(self, name: str, method: str, *args):
        return self.page.evaluate("(a) => harness.call(...a)", [name, method, *args])


def reference(pixels: np.ndarray, center=None, width=None, slope=1.0, intercept=0.0,
              invert=False, monochrome1=False) -> np.ndarray:
    """RGBA of app/render.py for these stored values, (rows, columns, 4) uint8."""
    look = Appearance(window=Window(center if center is not None else 128,
                                    width if width is not None else 256),
                      invert=invert, monochrome1=monochrome1, rescale_slope=slope,
                      rescale_intercept=intercept)
    rgba = to_rgba(pixels, look)
    return rgba.view(np.uint8).reshape(*rgba.shape, 4)


def placed(image_rgba: np.ndarray, canvas: tuple[int, int], full: tuple[int, int],
           zoom=1.0, pan=(0.0, 0.0), aspect=1.0) -> np.ndarray:
    """Nearest-pixel placement of an image stretched to the final ``full`` (rows, cols) geometry,
    fitted into the canvas, zoomed about its centre and panned: the contract's rule, on the CPU."""
    width, height = canvas
    rows, columns = image_rgba.shape[:2]
    shown_h = full[0] * aspect
    scale = min(width / full[1], height / shown_h) * zoom
    dest_w, dest_h = full[1] * scale, shown_h * scale
    x0, y0 = (width - dest_w) / 2 + pan[0], (height - dest_h) / 2 + pan[1]
    u = (np.arange(width) + 0.5 - x0) / dest_w
    v = (np.arange(height) + 0.5 - y0) / dest_h
    col = np.floor(u * columns).astype(int)
    row = np.floor(v * rows).astype(int)
    inside = ((u >= 0) & (u < 1))[None, :] & ((v >= 0) & (v < 1))[:, None]
    out = image_rgba[np.clip(row, 0, rows - 1)][:, np.clip(col, 0, columns - 1)]
    return np.where(inside[..., None], out, BLACK)


def assert_same(drawn: np.ndarray, expected: np.ndarray, what: str) -> None:
    diff = np.argwhere((drawn != expected).any(axis=-1))
    if len(diff):
        y, x = diff[0]
        raise AssertionError(f"{what}: {len(diff)} pixels differ, first at row {y} column {x}: "
                             f"drawn {drawn[y, x]}, reference {expected[y, x]}")


EVERY_UINT16 = np.arange(65536, dtype=np.uint16).reshape(256, 256)
WINDOWS = [(30000, 20000), (2048, 4096), (40, 400), (100.5, 511), (0, 1), (70.25, 2),
           (-500, 3000.5), (65535, 1), (1000, 0.5)]


@pytest.mark.parametrize("mode", MODES)
def test_the_renderer_is_the_kind_asked_for(harness, mode):
    kind = harness.open("a", mode, 8, 8)
    assert kind == mode, (f"asked for {mode}, got {kind}: without WebGL2, launch Chromium with "
                          "--use-angle=swiftshader --enable-unsafe-swiftshader")


def test_auto_picks_webgl2_where_it_exists(harness):
    assert harness.open("a", "auto", 8, 8) == "webgl2"


@pytest.mark.parametrize("mode", MODES)
def test_every_uint16_value_under_several_windows(harness, mode):
    harness.open("a", mode, 256, 256)
    harness.upload("a", "ramp", EVERY_UINT16)
    for center, width in WINDOWS:  # one canvas, successive W/L changes as in a drag
        drawn = harness.draw("a", "ramp", center=center, width=width, smooth=False)
        assert_same(drawn, reference(EVERY_UINT16, center, width), f"{mode} W/L {center}/{width}")


def test_the_grey_table_equals_render_py_for_random_windows(harness):
    """The table both paths sample, against app/render.py's grey_lut, over many random views."""
    rng = np.random.default_rng(12)
    for i in range(40):
        dtype = ("uint16", "int16", "uint8", "int8")[i % 4]
        view = {"center": float(rng.choice([rng.integers(-70000, 70000), rng.uniform(-3000, 9000)])),
                "width": float(rng.choice([rng.integers(1, 70000), rng.uniform(0, 4000), 1, 2])),
                "slope": float(rng.choice([1, 1, 2.5, -1, 0.1, -0.37, 3e-4])),
                "intercept": float(rng.choice([0, -1024, 3.7, -32768.5])),
                "invert": bool(rng.integers(2)), "monochrome1": bool(rng.integers(2))}
        data = harness.page.evaluate("(a) => harness.table(...a)", [dtype, view])
        levels = np.frombuffer(base64.b64decode(data), dtype=np.uint8)
        look = Appearance(Window(view["center"], view["width"]), view["invert"],
                          view["monochrome1"], view["slope"], view["intercept"])
        expected = (grey_lut(np.dtype(dtype), look) & 0xFF).astype(np.uint8)
        wrong = np.flatnonzero(levels != expected)
        assert not len(wrong), (f"{dtype} {view}: pattern {wrong[0]} gives {levels[wrong[0]]}, "
                                f"render.py {expected[wrong[0]]}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("slope,intercept", [(1.0, -1024.0), (2.5, -3.7), (0.1, 12.3), (-1.0, 0.0)])
def test_signed_16_bit_with_rescale(harness, mode, slope, intercept):
    stored = EVERY_UINT16.view(np.int16)
    harness.open("a", mode, 256, 256)
    harness.upload("a", "ct", stored)
    for center, width in [(40, 400), (-600, 1500), (300.5, 2001)]:
        drawn = harness.draw("a", "ct", center=center, width=width, slope=slope,
                             intercept=intercept, smooth=False)
        expected = reference(stored, center, width, slope, intercept)
        assert_same(drawn, expected, f"{mode} int16 x{slope}+{intercept} at {center}/{width}")


@pytest.mark.parametrize("mode", MODES)
def test_monochrome1_and_invert(harness, mode):
    ramp = (np.arange(64 * 48, dtype=np.uint16) * 3).reshape(48, 64)
    harness.open("a", mode, 64, 48)
    harness.upload("a", "cr", ramp)
    for mono1, invert in [(True, False), (False, True), (True, True), (False, False)]:
        drawn = harness.draw("a", "cr", center=4000, width=6000, monochrome1=mono1, invert=invert)
        expected = reference(ramp, 4000, 6000, invert=invert, monochrome1=mono1)
        assert_same(drawn, expected, f"{mode} monochrome1={mono1} invert={invert}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_8_bit_images(harness, mode, dtype):
    stored = np.arange(256, dtype=np.uint8).view(dtype).reshape(16, 16)
    harness.open("a", mode, 16, 16)
    harness.upload("a", "us", stored)
    for center, width, invert in [(128, 256, False), (10, 60, True), (-20.5, 41, False)]:
        drawn = harness.draw("a", "us", center=center, width=width, invert=invert)
        assert_same(drawn, reference(stored, center, width, invert=invert), f"{mode} {dtype}")


@pytest.mark.parametrize("mode", MODES)
def test_rgb_keeps_its_channels_and_inverts(harness, mode):
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    harness.open("a", mode, 30, 20)
    harness.upload("a", "photo", rgb)
    for invert in (False, True):
        drawn = harness.draw("a", "photo", center=10, width=20, invert=invert)
        assert_same(drawn, reference(rgb, invert=invert), f"{mode} RGB invert={invert}")


@pytest.mark.parametrize("mode", MODES)
def test_a_reduced_image_is_stretched_to_the_final_geometry(harness, mode):
    full = (np.arange(48 * 64, dtype=np.uint16) * 11).reshape(48, 64)
    reduced = full[::2, ::2].copy()
    harness.open("a", mode, 64, 48)
    harness.upload("a", "level1", reduced)
    drawn = harness.draw("a", "level1", center=15000, width=30000, fullRows=48, fullColumns=64,
                         smooth=False)
    block = reference(reduced, 15000, 30000).repeat(2, axis=0).repeat(2, axis=1)
    assert_same(drawn, block, f"{mode} reduced x2")
    assert_same(drawn, placed(reference(reduced, 15000, 30000), (64, 48), (48, 64)), mode)


@pytest.mark.parametrize("mode", MODES)
def test_zoom_pan_and_aspect(harness, mode):
    image = (np.arange(48 * 64, dtype=np.uint16) * 5).reshape(48, 64)
    rgba = reference(image, 8000, 16000)
    harness.open("a", mode, 64, 48)
    harness.upload("a", "im", image)
    for zoom, pan in [(2, (0, 0)), (2, (5, -3)), (0.6, (7, 4)), (1, (-10, 0))]:
        drawn = harness.draw("a", "im", center=8000, width=16000, zoom=zoom, panX=pan[0],
                             panY=pan[1], smooth=False)
        assert_same(drawn, placed(rgba, (64, 48), (48, 64), zoom, pan), f"{mode} zoom {zoom} {pan}")
    harness.open("b", mode, 32, 32)
    tall = image[:16, :32].copy()
    harness.upload("b", "tall", tall)
    drawn = harness.draw("b", "tall", center=8000, width=16000, aspect=2, smooth=False)
    expected = placed(reference(tall, 8000, 16000), (32, 32), (16, 32), aspect=2)
    assert_same(drawn, expected, f"{mode} aspect 2")
    assert_same(drawn, reference(tall, 8000, 16000).repeat(2, axis=0), f"{mode} rows doubled")


@pytest.mark.parametrize("mode", MODES)
def test_device_pixel_ratio_sizes_the_canvas_and_scales_the_pan(harness, mode):
    image = (np.arange(48 * 64, dtype=np.uint16) * 5).reshape(48, 64)
    harness.open("a", mode, 32, 24, dpr=2)
    harness.upload("a", "im", image)
    drawn = harness.draw("a", "im", center=8000, width=16000, panX=5, panY=-3, smooth=False)
    expected = placed(reference(image, 8000, 16000), (64, 48), (48, 64), pan=(10, -6))
    assert_same(drawn, expected, f"{mode} dpr 2")


@pytest.mark.parametrize("mode", MODES)
def test_smooth_drawing_at_one_to_one_is_exact(harness, mode):
    image = (np.arange(40 * 50, dtype=np.uint16) * 17).reshape(40, 50)
    harness.open("a", mode, 50, 40)
    harness.upload("a", "im", image)
    drawn = harness.draw("a", "im", center=20000, width=30000, smooth=True)
    assert_same(drawn, reference(image, 20000, 30000), f"{mode} smooth 1:1")


@pytest.mark.parametrize("mode", MODES)
def test_float32_images(harness, mode):
    values = np.linspace(-1500, 3000, 40 * 30, dtype=np.float32).reshape(30, 40)
    harness.open("a", mode, 40, 30)
    harness.upload("a", "pet", values)
    drawn = harness.draw("a", "pet", center=700.5, width=1201, slope=1.5, intercept=-20,
                         smooth=False)
    expected = reference(values, 700.5, 1201, 1.5, -20)
    if mode == "2d":
        assert_same(drawn, expected, "2d float32")
    else:  # shader arithmetic: the GPU's float division may round a level the other way
        assert np.abs(drawn.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("mode", MODES)
def test_keys_bytes_clear_and_bad_input(harness, mode):
    harness.open("a", mode, 16, 16)
    stored = np.arange(256, dtype=np.uint16).reshape(16, 16)
    held = harness.upload("a", "one", stored)
    assert held >= stored.nbytes
    assert harness.call("a", "has", "one") == {"value": True}
    short = harness.page.evaluate("""() => { const r = [];
        try { window.harness.upload('a', 'bad', btoa('xx'), {rows: 4, columns: 4, dtype: 'uint16'}); }
        catch (e) { r.push(e.message); }
        try { window.harness.upload('a', 'bad', btoa('x'.repeat(32)), {rows: 4, columns: 4,
              dtype: 'uint16', samples: 3}); } catch (e) { r.push(e.message); }
        return r; }""")
    assert "2 bytes for 4x4x1 uint16" in short[0] and "colour must be 3 x uint8" in short[1]
    assert harness.call("a", "has", "bad") == {"value": False}
    assert "no image uploaded as nothing" in harness.call("a", "draw", "nothing", {})["error"]
    drawn = harness.draw("a", "one", center=128, width=256)
    assert (drawn[..., 0] > 0).any()
    harness.call("a", "clear")
    cleared = harness.call("a", "readPixels")["value"]
    assert set(base64.b64decode(cleared)[0::4]) == {0}
    before = harness.call("a", "bytesHeld")["value"]
    harness.call("a", "drop", "one")
    assert harness.call("a", "has", "one") == {"value": False}
    assert harness.call("a", "bytesHeld")["value"] <= before - stored.nbytes


@pytest.mark.parametrize("mode", MODES)
def test_window_level_drag_rate_on_the_radiograph_size(harness, mode):
    """Reported, not asserted: W/L updates per second on a 3072x2614 uint16 texture."""
    rate = harness.page.evaluate("(a) => harness.dragRate(...a)", [mode, 2614, 3072, 1280, 900, 3])
    assert rate["kind"] == mode and rate["updates"] > 0 and math.isfinite(rate["perSecond"])
    print(f"\nW/L drag {mode}: {rate['perSecond']:.1f} updates/s, p50 {rate['p50']:.1f} ms, "
          f"p95 {rate['p95']:.1f} ms, 65536-entry table {rate['tableMs']:.2f} ms")


@pytest.mark.parametrize("mode", MODES)
def test_smooth_magnification_interpolates_between_grey_levels(harness, mode):
    ramp = np.repeat((np.arange(16, dtype=np.uint16) * 100)[None, :], 8, axis=0)  # 16x8
    grey = reference(ramp, 800, 1600)[0, :, 0].astype(int)
    harness.open("a", mode, 64, 32)
    harness.upload("a", "ramp", ramp)
    nearest = harness.draw("a", "ramp", center=800, width=1600, smooth=False)[..., 0].astype(int)
    smooth = harness.draw("a", "ramp", center=800, width=1600, smooth=True)[..., 0].astype(int)
    assert (nearest == np.repeat(grey, 4)[None, :]).all()
    assert (np.diff(smooth, axis=1) >= 0).all() and (smooth == smooth[:1]).all()
    assert smooth.min() >= grey.min() and smooth.max() <= grey.max()
    assert len(set(smooth[0])) > len(set(grey))  # levels between the stored ones: interpolated


def test_a_lost_webgl_context_asks_for_uploads_again(harness):
    image = (np.arange(16 * 16, dtype=np.uint16) * 9).reshape(16, 16)
    harness.open("a", "webgl2", 16, 16)
    harness.upload("a", "im", image)
    harness.draw("a", "im", center=1000, width=2000)
    assert harness.page.evaluate("harness.context('a', false)") == "webglcontextlost"
    assert harness.call("a", "has", "im") == {"value": False}
    assert harness.page.evaluate("harness.context('a', true)") == "webglcontextrestored"
    harness.upload("a", "im", image)
    assert_same(harness.draw("a", "im", center=1000, width=2000), reference(image, 1000, 2000),
                "after the context came back")


def test_2d_keeps_the_rgba_of_the_last_few_images_only(harness):
    harness.open("a", "2d", 16, 16)
    slices = [np.full((16, 16), 100 * i, dtype=np.uint16) for i in range(8)]
    for i, pixels in enumerate(slices):
        harness.upload("a", f"s{i}", pixels)
    stored = sum(p.nbytes for p in slices)
    for i, pixels in enumerate(slices):  # scroll through the series, then back to the first
        drawn = harness.draw("a", f"s{i}", center=400, width=800)
        assert_same(drawn, reference(pixels, 400, 800), f"slice {i}")
    held = harness.call("a", "bytesHeld")["value"]
    assert stored + 4 * 16 * 16 * 8 <= held < stored + 5 * 16 * 16 * 8 + 65536 * 4
    assert_same(harness.draw("a", "s0", center=400, width=800), reference(slices[0], 400, 800), "s0")


def test_2d_maps_only_the_pixels_a_minified_draw_shows(harness):
    """Drawn at 1/4 of its size, a grey image is painted from the middle pixel of each 4x4 block
    (a nearest draw shows no others): the same picture, a 16th of the table loop and of the RGBA
    held; drawn at full size again, every pixel is painted."""
    image = (np.arange(64 * 96, dtype=np.uint32) * 7 % 60000).astype(np.uint16).reshape(64, 96)
    harness.open("a", "2d", 24, 16)
    harness.upload("a", "im", image)
    drawn = harness.draw("a", "im", center=30000, width=60000, smooth=False)
    assert_same(drawn, reference(image, 30000, 60000)[2::4, 2::4], "2d at 1/4")
    held = harness.call("a", "bytesHeld")["value"]
    assert image.nbytes + 24 * 16 * 8 <= held <= image.nbytes + 24 * 16 * 8 + 65536 * 4  # + the table
    drawn = harness.draw("a", "im", center=30000, width=60000, zoom=4, smooth=False)
    assert_same(drawn, placed(reference(image, 30000, 60000), (24, 16), (64, 96), zoom=4), "2d zoomed 4x")
    assert harness.call("a", "bytesHeld")["value"] >= image.nbytes + 64 * 96 * 8


def test_without_webgl2_auto_falls_back_to_2d(page):
    """A browser without WebGL2 (getContext("webgl2") gives null) draws through the 2D path."""
    page.page.add_init_script("""{
        const original = HTMLCanvasElement.prototype.getContext;
        HTMLCanvasElement.prototype.getContext = function (type, options) {
            return type === "webgl2" ? null : original.call(this, type, options);
        };
    }""")
    page.page.route(ORIGIN + "/**", _serve_from_disk)
    page.page.goto(ORIGIN + "/tests/pages/render.html")
    page.page.wait_for_function("document.documentElement.dataset.ready === '1'", timeout=20_000)
    harness = Harness(page.page)
    assert harness.open("a", "auto", 256, 256) == "2d"
    harness.upload("a", "ramp", EVERY_UINT16)
    assert_same(harness.draw("a", "ramp", center=2048, width=4096), reference(EVERY_UINT16, 2048, 4096),
                "fallback")
    refused = page.page.evaluate("""async () => {
        const { createRenderer } = await import("/app/ui/render.mjs");
        try { createRenderer(document.createElement("canvas"), { mode: "webgl2" }); return null; }
        catch (error) { return error.message; } }""")
    assert refused == "render: WebGL2 is not available in this browser"
    assert page.errors == []
