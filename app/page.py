"""Page glue: the only module that touches the DOM and the canvas.

The engine and everything below it never import ``js``; this module turns their events into
pixels on a canvas and text in the page.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
from pyodide.ffi import create_proxy
from pyscript import document, window

from app.render import Appearance, Window, to_rgba

_proxies: list = []  # JS callbacks kept alive for the life of the page


def set_state(state: str) -> None:
    document.documentElement.dataset.app = state


def show_error(message: str) -> None:
    """An error where the user looks: the error strip under the toolbar (as text, never HTML)."""
    box = document.getElementById("errors")
    item = document.createElement("div")
    item.className = "error"
    item.textContent = message
    box.appendChild(item)


def put_rgba(canvas, rgba: np.ndarray) -> None:
    """Draw a (rows, cols) uint32 RGBA array on ``canvas`` at 1:1 without copying in Python.

    The canvas receives a Uint8ClampedArray view of the wasm heap (zero copy); ``putImageData``
    makes the only copy, into the canvas itself.
    """
    rgba = np.ascontiguousarray(rgba)
    rows, cols = rgba.shape
    if canvas.width != cols or canvas.height != rows:
        canvas.width, canvas.height = cols, rows
    proxy = create_proxy(memoryview(rgba).cast("B"))
    buf = proxy.getBuffer("u8clamped")
    try:
        image = window.ImageData.new(buf.data, cols, rows)
        canvas.getContext("2d").putImageData(image, 0, 0)
    finally:
        buf.release()
        proxy.destroy()


# -- hooks for end-to-end tests and scripting (window.pyApp) ---------------------------------------
async def decode_frame_hook(url: str, fmt_json: str) -> str:
    """Fetch a frame URL, decode it with the viewer's codecs, return sha256 of the stored values."""
    from app.codecs import PixelFormat, decode_frame
    from app.readers.multipart import MultipartReader, PartData

    spec = json.loads(fmt_json)
    ts = spec.pop("transfer_syntax")
    response = await window.fetch(url)
    if not response.ok:
        raise RuntimeError(f"{url}: HTTP {response.status}")
    body = (await response.arrayBuffer()).to_py()
    ctype = response.headers.get("content-type") or ""
    data = bytes(body)
    if ctype.startswith("multipart/"):
        boundary = ctype.split("boundary=")[1].split(";")[0].strip().strip('"').encode()
        reader = MultipartReader(boundary)
        parts = [bytes(e.data) for e in reader.feed(data) + reader.close() if isinstance(e, PartData)]
        data = b"".join(parts)
    t0 = time.perf_counter()
    pixels = decode_frame(data, ts, PixelFormat(**spec))
    decode_ms = (time.perf_counter() - t0) * 1000.0
    stored = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<"), copy=False)
    return json.dumps({"sha256": hashlib.sha256(stored.tobytes()).hexdigest(),
                       "rows": int(pixels.shape[0]), "columns": int(pixels.shape[1]),
                       "dtype": str(pixels.dtype), "decode_ms": decode_ms})


def draw_pattern_hook(canvas_id: str) -> str:
    """Draw a known 16-bit ramp through the real render path; tests read the canvas back."""
    canvas = document.getElementById(canvas_id)
    ramp = (np.arange(256, dtype=np.uint16)[None, :] * 16).repeat(64, axis=0)  # 0..4080
    rgba = to_rgba(ramp, Appearance(window=Window(center=2048, width=4096)))
    put_rgba(canvas, rgba)
    return json.dumps({"rows": 64, "columns": 256})


def import_check_hook() -> str:
    import imagecodecs
    import pydicom

    return json.dumps({"numpy": np.__version__, "imagecodecs": imagecodecs.__version__,
                       "pydicom": pydicom.__version__})


def _expose_hooks() -> None:
    hooks = {"decodeFrame": decode_frame_hook, "drawPattern": draw_pattern_hook,
             "importCheck": import_check_hook}
    api = window.Object.new()
    for name, fn in hooks.items():
        proxy = create_proxy(fn)
        _proxies.append(proxy)
        setattr(api, name, proxy)
    window.pyApp = api


async def start() -> None:
    _expose_hooks()
    window.appTimings.readyMs = window.performance.now()
    document.getElementById("status").textContent = "Ready"
    set_state("ready")
