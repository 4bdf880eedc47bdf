"""The engine's side of the page: runs in a web worker (Pyodide), never touches the DOM.

The page's main thread sends small messages (load, current image, forget, cancel, calls from the
test hooks); this module answers with events. Each refinement's pixels travel as one ArrayBuffer
that is *transferred* to the page (one copy out of the wasm heap, none after).

Message shapes are documented in docs (CONTRACT "Worker protocol"); every message carries the
``generation`` of the load it belongs to, so the page can drop what a replaced load still sends.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from typing import Callable

import js  # type: ignore[import-not-found]
import numpy as np
from pyodide.ffi import create_once_callable, create_proxy, to_js  # type: ignore[import-not-found]

from app.codecs import PYDICOM_SYNTAXES, pixel_sha256
from app.uids import valid_uid
from app.config import PRESET_DESCRIPTIONS, PRESETS, ConfigError, opening_index, parse_config, preset
from app.render import default_window
from app.engine import FirstBytes, ImageFailed, Refinement, RequestRetried, RequestStarted
from app import dicomjson as dj
from app import worker_loop
from app.study import Stack, dicom_date, fetch_json, person_name, stack_from_metadata
from app.viewer_engine import StackLoader, StackReplaced, open_stack, run_stack
from app.warm_up import WARM_UP_SERIES_URL, warm_up_document, warm_up_load

DEFAULT_PRESET = "htj2k"
WARM_UP_AFTER_MS = 250  # discovery's warm-up, after start: a load asked for at once goes first
WARM_UP_INSTANCES = 150
WARM_UP_ROUNDS = 4  # of WARM_UP_INSTANCES each, a task apiece
WARM_UP_PRESETS = ("interleavedPreview", "htj2k")  # then a synthetic load under each: ranges, streams, stages
PROGRESS_SECONDS = 0.05  # progress events (requests, first bytes) are posted together this often
SERIES_LIST_WAIT_SECONDS = 1.0  # the study's series list waits for the image on screen, this long at most


class Engine:
    """One study at a time: discovery, the retrieve engine, and the messages both produce."""

    def __init__(self, post: Callable, epoch: Callable, pydicom_url: str) -> None:
        self._post, self._epoch, self.pydicom_url = post, epoch, pydicom_url
        self.generation = 0
        self.loader: StackLoader | None = None
        self.stack: Stack | None = None
        self.current = 0
        self.task: asyncio.Task | None = None
        self.warming: asyncio.Task | None = None  # warm_up_loads, until a load begins
        self.resume: asyncio.Task | None = None
        self.started = 0.0  # epoch ms of the load's start (the page's clock)
        self.progress: list[list] = []  # [index, kind, t_ms] waiting for flush_progress
        self.progress_flush: asyncio.TimerHandle | None = None
        self.described = -1  # the generation whose "opened" message has been posted
        self.held_result: tuple | None = None  # (pixels, message, buffer) waiting for its replicas
        self._flush_soon = create_proxy(lambda *_: self.flush_result())  # a microtask, kept
        self.collector_paused = False
        self.failed = -1  # the generation whose load failed after discovery: no "done" follows

    # ---- out ----
    def post(self, message: dict, transfer: list | None = None) -> None:
        if self.held_result is not None:
            self.flush_result()  # messages keep the order of the events they come from
        js_message = to_js(message, dict_converter=js.Object.fromEntries)
        self._post(js_message, to_js(transfer or []))

    def hold_result(self, event: Refinement, generation: int, t: float) -> None:
        """A result waits for the rest of its JS task: the nearbyFrames replicas the engine
        emits right after it (the same pixels, other slices) travel in its message, as
        "replicas", not as three more copies of its pixels and three more messages."""
        held = self.held_result
        if held is not None and event.pixels is held[0] and event.index != held[1]["index"]:
            held[1]["replicas"].append(image_fields(self.stack, event, held[0]) | {"t_ms": round(t, 1)})
            return
        self.flush_result()
        message, buffer = refinement_message(self.stack, event, generation)
        message["t_ms"], message["replicas"] = round(t, 1), []
        self.held_result = (event.pixels, message, buffer)
        # right after this asyncio step (its replicas come in the same step), not behind the other
        # steps of the drain or the network's queued messages as a loop callback would be
        if not worker_loop.at_step_end(self.flush_result):
            js.queueMicrotask(self._flush_soon)

    def flush_result(self) -> None:
        if self.held_result is None:
            return
        _, message, buffer = self.held_result
        self.held_result = None
        if not message["replicas"]:
            del message["replicas"]
        self.post(message, [buffer])
        self.flush_progress()  # after the result: its request's progress is never shown later

    def now(self) -> float:
        return float(self._epoch())

    # ---- in ----
    def handle(self, message) -> None:
        msg = message.to_py()
        kind = msg.get("type")
        try:
            if kind == "call":
                asyncio.ensure_future(self.call(msg))
            elif msg.get("generation") != self.generation and kind != "load":
                return  # about a load that has been replaced
            elif kind == "load":
                self.start_load(msg)
            elif kind == "cancel":
                self.stop()
                self.post({"type": "cancelled", "generation": self.generation})
            elif kind == "current" and self.loader is not None:
                self.current = int(msg["index"])
                self.loader.set_current(self.current)
            elif kind == "forget" and self.loader is not None:
                self.loader.forget([int(i) for i in msg["indices"]])
            elif kind == "request" and self.loader is not None:
                self.request_again([int(i) for i in msg["indices"]])
        except Exception as exc:  # noqa: BLE001 - a bad message is reported, never fatal
            self.post({"type": "warning", "generation": self.generation, "message": f"{kind}: {exc}"})

    # ---- loading ----
    def stop(self) -> None:
        for task in (self.task, self.resume, self.warming):
            if task is not None and not task.done():
                task.cancel()
        self.task = self.resume = None

    def start_load(self, msg: dict) -> None:
        self.stop()
        self.flush_progress()  # the old load's, under its own generation
        self.generation = int(msg["generation"])
        self.current = -1
        self.task = asyncio.ensure_future(self.load(msg, self.generation))

    def pause_collector(self) -> None:
        """The cyclic garbage collector paused from a load's start until its first frame request
        is out (describe) or the load ends: a 1000-instance metadata document parses into ~90,000
        containers, and the collections they trigger were a third of the parse; they cost the same
        after the request, while it is on the network."""
        if gc.isenabled():
            gc.disable()
            self.collector_paused = True

    def resume_collector(self) -> None:
        if self.collector_paused:
            self.collector_paused = False
            gc.enable()

    async def load(self, msg: dict, generation: int) -> None:
        self.pause_collector()
        try:
            await self.open_and_run(msg, generation)
        finally:
            self.resume_collector()

    async def open_and_run(self, msg: dict, generation: int) -> None:
        self.started = self.now()
        if self.loader is not None:
            loader, self.loader, self.stack = self.loader, None, None
            await loader.aclose()
        try:
            config = parse_config(msg["config"]) if msg.get("config") else preset(DEFAULT_PRESET)
            viewport = tuple(int(v) for v in msg.get("viewport") or (0, 0)) or None
            stack, loader = await open_stack(msg["url"], config, viewport=viewport)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is a message, never a traceback
            if generation == self.generation:
                self.post({"type": "open-failed", "generation": generation, "url": msg["url"],
                           "message": str(exc) or type(exc).__name__, "error": type(exc).__name__})
            return
        if generation != self.generation:
            await loader.aclose()
            return
        await self.prepare(stack)
        loader.prepare = self.prepare  # a stack that replaces a stack index's too
        self.stack, self.loader = stack, loader
        if msg.get("cacheBytes"):  # the worker's share of the page's ?cacheMB (app/ui/view_state.py)
            loader.engine.budget.cache_bytes = int(msg["cacheBytes"])
        loader.engine.budget.pixels_elsewhere = True  # the page holds them (transferred to it)
        n = len(stack.images)
        self.current = int(msg.get("index", -1))
        if not 0 <= self.current < n:
            self.current = opening_index(n)
        asyncio.ensure_future(self.list_series(stack, loader, generation))
        await self.run(None, generation)

    async def list_series(self, stack: Stack, loader: StackLoader, generation: int) -> None:
        """The study's series (QIDO, or the static tree's index), for the page's study browser."""
        study_url = stack.series_url.rstrip("/").rsplit("/series/", 1)[0]
        # never before the image on screen is answered: the page handles the list while the
        # image's message waits behind it
        await loader.first_image_answered(SERIES_LIST_WAIT_SECONDS)
        found = None
        for url in (f"{study_url}/series", f"{study_url}/series/index.json"):
            try:
                found = await fetch_json(loader.transport, url)
            except Exception:  # noqa: BLE001 - no list: the page shows the open series only
                found = None
            if isinstance(found, list):
                break
        if generation == self.generation and isinstance(found, list):
            self.post({"type": "series-list", "generation": generation, "study": study_url,
                       "series": [summarise_series(s, study_url) for s in found if isinstance(s, dict)
                                  and valid_uid(dj.text(s, dj.Tag.SERIES_INSTANCE_UID))]})

    async def run(self, indices: list[int] | None, generation: int) -> None:
        """Run the loader (the whole stack or ``indices``), then say the run is over."""
        try:
            await run_stack(self.loader, self.current, lambda e: self.on_event(e, generation), indices)
            while generation == self.generation and self.loader.pending():
                await run_stack(self.loader, self.current, lambda e: self.on_event(e, generation),
                                self.loader.pending())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.post({"type": "warning", "generation": generation, "message": f"Loading stopped: {exc}"})
        if generation == self.generation and self.failed != generation:
            self.describe(generation)
            self.flush_progress()
            self.post({"type": "done", "generation": generation})

    def request_again(self, indices: list[int]) -> None:
        """Images the page dropped (memory budget) and wants again."""
        if any(t is not None and not t.done() for t in (self.task, self.resume)):
            self.loader.request(indices)
            return
        self.post({"type": "running", "generation": self.generation})
        self.resume = asyncio.ensure_future(self.run(indices, self.generation))

    def describe(self, generation: int) -> None:
        """The "opened" message, once per load and before any message about its images: posted with
        the first event, when the first frame request is already out (1000 images take a while)."""
        if self.described != generation:
            self.described = generation
            now = time.perf_counter()
            # as JSON text: to_js of its nested dicts (one per image) took 13-23 ms for 1000 images
            # in the worker, json.dumps 3-5 ms, and the page reads messages as JSON text anyway
            text = json.dumps(describe_stack(self.stack, generation, self.current))
            self.post({"type": "opened", "generation": generation, "json": text,
                       "work": discovery_work(self.stack, now, time.perf_counter())})
            self.resume_collector()  # the first frame request is out

    def on_event(self, event, generation: int) -> None:
        if generation != self.generation:
            return
        if isinstance(event, StackReplaced):
            self.replace_stack(event, generation)
            return
        self.describe(generation)
        t = self.now() - self.started
        if isinstance(event, Refinement):
            self.hold_result(event, generation, t)
            return
        elif isinstance(event, ImageFailed):
            self.post({"type": "image-failed", "generation": generation, "index": event.index,
                       "sop": event.sop_instance_uid, "message": event.message, "t_ms": round(t, 1)})
        elif isinstance(event, RequestRetried):
            self.post({"type": "retry", "generation": generation, "index": event.index, "url": event.url,
                       "attempt": event.attempt, "message": event.reason, "t_ms": round(t, 1)})
            return
        elif isinstance(event, (RequestStarted, FirstBytes)):
            self.progress.append([event.index, "request" if isinstance(event, RequestStarted) else "first-bytes",
                                  round(t, 1)])
            if self.progress_flush is None:
                self.progress_flush = asyncio.get_running_loop().call_later(PROGRESS_SECONDS, self.flush_progress)
            return
        self.flush_progress()  # after the result: its request's progress is never shown later

    def replace_stack(self, event: StackReplaced, generation: int) -> None:
        """The series' stack index disagreed with its metadata before anything of it was posted:
        the load goes on from the metadata's stack (a warning says why), or fails."""
        if event.stack is None:  # the load ends as one that could not open: no "opened", no "done"
            self.described = self.failed = generation
            self.post({"type": "open-failed", "generation": generation, "url": self.stack.series_url,
                       "message": event.message, "error": "IndexMismatch"})
            return
        self.stack = event.stack
        self.current = min(self.current, len(event.stack.images) - 1)
        self.post({"type": "warning", "generation": generation, "message": event.message})

    def flush_progress(self) -> None:
        """Requests started and first bytes, one message per PROGRESS_SECONDS (for the waterfall):
        one per event was half of all messages, each a copy into JS and a task on the page."""
        if self.progress_flush is not None:
            self.progress_flush.cancel()
            self.progress_flush = None
        if self.progress:
            items, self.progress = self.progress, []
            self.post({"type": "progress", "generation": self.generation, "items": items})

    # ---- calls (test hooks, configuration) ----
    async def call(self, msg: dict) -> None:
        name, args = msg.get("name"), msg.get("args") or []
        try:
            fn = {"decodeFrame": decode_frame_call, "importCheck": self.import_check,
                  "memoryUsage": memory_usage, "checkConfig": check_config}[name]
            value = fn(*args)
            if asyncio.iscoroutine(value):
                value = await value
            self.post({"type": "reply", "id": msg["id"], "value": value})
        except Exception as exc:  # noqa: BLE001
            self.post({"type": "reply", "id": msg["id"], "error": f"{type(exc).__name__}: {exc}"})

    async def import_check(self) -> str:
        import imagecodecs

        await self.ensure_pydicom()
        import pydicom

        return json.dumps({"numpy": np.__version__, "imagecodecs": imagecodecs.__version__,
                           "pydicom": pydicom.__version__})

    async def prepare(self, stack: Stack) -> None:
        """What a stack needs before it loads: pydicom, for the syntaxes only it decodes."""
        if any(im.transfer_syntax in PYDICOM_SYNTAXES for im in stack.images):
            await self.ensure_pydicom()

    async def ensure_pydicom(self) -> None:
        """Install pydicom from the local wheel the first time a stack (or a call) needs it."""
        try:
            import pydicom  # noqa: F401
            return
        except ImportError:
            pass
        import importlib

        import pyodide_js  # type: ignore[import-not-found]

        await pyodide_js.loadPackage(self.pydicom_url)
        importlib.invalidate_caches()


def describe_stack(stack: Stack, generation: int, current: int) -> dict:
    """What the page shows about a stack before any pixel: identity, geometry, patient block."""
    first = stack.images[current]
    series = " ".join(x for x in (f"#{stack.series_number}" if stack.series_number is not None else "",
                                  stack.series_description or "") if x)
    info = [["Patient", person_name(stack.patient_name)], ["Patient ID", stack.patient_id or ""],
            ["Study", " ".join(x for x in (dicom_date(stack.study_date), stack.study_description) if x)],
            ["Series", series], ["Modality", stack.modality or ""], ["Images", str(len(stack.images))],
            ["Size", f"{first.fmt.columns} x {first.fmt.rows}"],
            ["Transfer syntax", first.transfer_syntax or ""]]
    return {"type": "opened", "generation": generation, "series": stack.series_uid,
            "study": stack.study_uid, "url": stack.series_url, "current": current,
            "images": describe_images(stack), "info": info}


def describe_images(stack: Stack) -> dict:
    """The images for the page's slots (app/ui/view_state.py): every SOP Instance UID, and each
    other field once when all images agree ("same"), else one value per image ("each"). A dict per
    image made the page's thread parse ~200 KB and build 1000 dicts for a 1000-image stack."""
    columns: dict[str, list] = {"frame": [], "rows": [], "columns": [], "windows": [], "slope": [],
                                "intercept": [], "photometric": [], "aspect": []}
    for im in stack.images:
        fmt, spacing = im.fmt, im.pixel_spacing
        columns["frame"].append(im.frame)
        columns["rows"].append(fmt.rows)
        columns["columns"].append(fmt.columns)
        columns["windows"].append([list(w) for w in im.windows])
        columns["slope"].append(fmt.rescale_slope)
        columns["intercept"].append(fmt.rescale_intercept)
        columns["photometric"].append(fmt.photometric_interpretation)
        columns["aspect"].append(spacing[0] / spacing[1] if spacing and spacing[1] else 1.0)
    same, each = {}, {}
    for name, values in columns.items():
        if values.count(values[0]) == len(values):
            same[name] = values[0]
        else:
            each[name] = values
    return {"sop": [im.sop_instance_uid for im in stack.images], "same": same, "each": each}


def discovery_work(stack: Stack, first_request_at: float, described_at: float) -> dict:
    """The worker's own figures for the benchmark (ms, ``time.perf_counter``): the metadata
    parsed, the stack built, then until the first frame request (the loader made, the engine's
    plan), and the "opened" message made."""
    work = stack.work
    return {} if work is None else work.figures(first_request_at, described_at, len(stack.images))


def summarise_series(series: dict, study_url: str) -> dict:
    """One QIDO series entry as the study browser lists it."""
    uid = dj.text(series, dj.Tag.SERIES_INSTANCE_UID)
    return {"uid": uid, "url": f"{study_url}/series/{uid}",
            "description": dj.text(series, dj.Tag.SERIES_DESCRIPTION) or "",
            "modality": dj.text(series, dj.Tag.MODALITY) or "",
            "number": dj.integer(series, dj.Tag.SERIES_NUMBER, None),
            "count": dj.integer(series, dj.Tag.NUMBER_OF_SERIES_RELATED_INSTANCES, None)}


def rank(event: Refinement) -> list[int]:
    """The engine's order of results (status, then pixel count): a higher rank replaces a lower."""
    return [int(event.status), int(event.rows) * int(event.columns)]


def refinement_message(stack: Stack, event: Refinement, generation: int) -> tuple[dict, object]:
    """The event as a message and its pixels as one ArrayBuffer to transfer (one copy out of wasm)."""
    pixels = np.ascontiguousarray(event.pixels)
    samples = int(pixels.shape[2]) if pixels.ndim == 3 else 1
    buffer = js.ArrayBuffer.new(pixels.nbytes)
    js.Uint8Array.new(buffer).assign(memoryview(pixels).cast("B"))
    message = {"type": "refinement", "generation": generation, "series": stack.series_uid,
               "rows": int(event.rows), "columns": int(event.columns), "dtype": str(pixels.dtype),
               "samples": samples, "buffer": buffer, **image_fields(stack, event, pixels)}
    return message, buffer


def image_fields(stack: Stack, event: Refinement, pixels: np.ndarray) -> dict:
    """What a refinement says about the slice it is for (a replica's differ from its source's)."""
    image = stack.images[event.index]
    return {"index": event.index, "sop": event.sop_instance_uid, "frame": event.frame,
            "status": event.status.name, "rank": rank(event), "final": bool(event.final),
            "photometric": image.fmt.photometric_interpretation,
            "window": list(image.windows[0]) if image.windows else starting_window(pixels, image),
            "rescale": [image.fmt.rescale_slope, image.fmt.rescale_intercept],
            "bytes": int(event.bytes_received), "image_t_ms": round(float(event.t_ms), 1),
            "decode_ms": round(float(event.decode_ms), 1)}


def starting_window(pixels: np.ndarray, image) -> list[float]:
    """The full range of the image when its header offers no window (app/render.py's rule)."""
    window = default_window(pixels, image.fmt.rescale_slope, image.fmt.rescale_intercept)
    return [window.center, window.width]


async def decode_frame_call(url: str, fmt_json: str) -> str:
    """Fetch a frame URL, decode it with the viewer's codecs, return sha256 of the stored values."""
    from app.codecs import PixelFormat, decode_frame
    from app.readers.multipart import MultipartReader, PartData, boundary_from_content_type

    spec = json.loads(fmt_json)
    ts = spec.pop("transfer_syntax")
    if ts in PYDICOM_SYNTAXES:
        await ENGINE.ensure_pydicom()
    response = await js.fetch(url)
    if not response.ok:
        raise RuntimeError(f"{url}: HTTP {response.status}")
    data = (await response.arrayBuffer()).to_bytes()
    ctype = response.headers.get("content-type") or ""
    if ctype.startswith("multipart/") or data[:2] == b"--":
        reader = MultipartReader(boundary_from_content_type(ctype))  # None: learnt from the body
        events = reader.feed(data) + reader.close()
        data = b"".join(bytes(e.data) for e in events if isinstance(e, PartData))
    t0 = time.perf_counter()
    pixels = decode_frame(data, ts, PixelFormat(**spec))
    decode_ms = (time.perf_counter() - t0) * 1000.0
    return json.dumps({"sha256": pixel_sha256(pixels),
                       "rows": int(pixels.shape[0]), "columns": int(pixels.shape[1]),
                       "dtype": str(pixels.dtype), "decode_ms": decode_ms})


def memory_usage() -> str:
    import pyodide_js  # type: ignore[import-not-found]

    return json.dumps({"wasmHeapBytes": int(pyodide_js._module.HEAPU8.length)})


def check_config(text: str) -> str:
    """Validate a configuration's JSON for the sidebar: ok, or where it is wrong."""
    try:
        parse_config(text)
    except ConfigError as exc:
        return json.dumps({"ok": False, "error": str(exc)})
    return json.dumps({"ok": True})


def warm_up_decoders() -> None:
    """The first decode in a fresh wasm instance is slower (~70 ms): pay that before "ready", on the
    paths a first frame takes: a reduced HTJ2K level, a full one, then JPEG-LS."""
    import imagecodecs

    from app.codecs import HTJ2K_LOSSLESS, JPEG_LS_LOSSLESS, PixelFormat, decode_frame

    tile = (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64)
    fmt = PixelFormat(rows=64, columns=64, bits_allocated=16, bits_stored=12)
    try:
        htj2k = imagecodecs.htj2k_encode(tile, resolutions=3)
        decode_frame(htj2k, HTJ2K_LOSSLESS, fmt, reduce=1)
        decode_frame(htj2k, HTJ2K_LOSSLESS, fmt)
        decode_frame(imagecodecs.jpegls_encode(tile), JPEG_LS_LOSSLESS, fmt)
    except Exception:  # noqa: BLE001 - a codec missing here is reported when a frame needs it
        pass


def warm_up_discovery(rounds: int = WARM_UP_ROUNDS, raw: bytes | None = None) -> None:
    """The first parse of a large metadata document in a fresh wasm instance runs in V8's baseline
    code (a call stays in the code it began in): 1000 instances took ~50 ms to parse and ~22 ms to
    stack the first time, ~32 and ~17 ms after. A synthetic series parsed and stacked a few times
    while the page waits for the user gets the optimised code compiled before the first load (in the
    page: 1000 instances 153 -> 61-72 ms to the first frame request); a round per task, so a Load
    click waits for one at most, and none once a load has begun (it warms the same code itself)."""
    if ENGINE is None or ENGINE.task is not None:
        return
    if rounds <= 0:
        ENGINE.warming = asyncio.ensure_future(warm_up_loads())
        return
    raw = raw or warm_up_document(WARM_UP_INSTANCES)
    dj.check_shape(raw * 5)  # its loops run over arrays long enough to be worth optimising too
    stack_from_metadata(dj.loads(raw), WARM_UP_SERIES_URL)
    js.setTimeout(create_once_callable(lambda: warm_up_discovery(rounds - 1, raw)), 0)


async def warm_up_loads() -> None:
    """The load path once per WARM_UP_PRESETS on a synthetic series (app/warm_up.py): the first
    real load of a page then runs in compiled code (a 20-slice MR kept the worker busy ~560 ms cold,
    ~135 ms warm). Idle time only: a load cancels it (``Engine.stop``)."""
    for name in WARM_UP_PRESETS:
        try:
            await warm_up_load(preset(name))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a warm-up that fails costs nothing but its warmth
            return


ENGINE: Engine | None = None
_KEEP: list = []


def start(post, epoch, pydicom_url: str):
    """Called once by app/ui/worker.mjs: returns the message handler (a JS function)."""
    global ENGINE
    worker_loop.install()
    ENGINE = Engine(post, epoch, str(pydicom_url))
    warm_up_decoders()
    ENGINE.post({"type": "presets", "presets": PRESETS, "descriptions": PRESET_DESCRIPTIONS,
                 "default": DEFAULT_PRESET})
    handler = create_proxy(ENGINE.handle)
    _KEEP.append(handler)
    js.setTimeout(create_once_callable(warm_up_discovery), WARM_UP_AFTER_MS)
    return handler
