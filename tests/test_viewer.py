"""The viewer in a real Chromium on the demo study: progressive drawing, presets, input, errors."""

from __future__ import annotations

import base64
import json
import shutil
import time
from http import HTTPStatus
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

import serve
from conftest import PROJECT, wait_for_app_state
from helpers import stored_frames

pytestmark = pytest.mark.browser

ARTIFACTS = PROJECT / "test-artifacts"
FAST4G = {"offline": False, "latency": 165, "downloadThroughput": 1_012_500, "uploadThroughput": 168_750}


def demo_entry(demo_data: Path, word: str) -> dict:
    entries = json.loads((demo_data / "demo.json").read_text())
    return next(e for e in entries if word in e["name"])


def open_viewer(record, base_url: str, query: str = "", state=("idle",), timeout_ms=90_000) -> None:
    record.page.goto(f"{base_url}/{query}")
    wait_for_app_state(record, state, timeout_ms)


def canvas_pixels(page) -> np.ndarray:
    """The red channel of the viewport as drawn (the renderer reads its canvas back: a WebGL
    canvas has no 2D context), moved as base64 to stay fast."""
    width, height, b64 = page.evaluate("window.pyApp.canvasPixels()")
    rgba = np.frombuffer(base64.b64decode(b64), dtype=np.uint8).reshape(height, width, 4)
    return rgba[..., 0].copy()


def source_sha256(key: str, name: str) -> str:
    """sha256 of a demo source's stored values, masked to BitsStored (what the viewer holds)."""
    import hashlib

    import pydicom

    source = pydicom.dcmread(next((PROJECT / ".cache" / "demo" / key).rglob(name)))
    raw = np.frombuffer(source.PixelData, dtype="<u2").reshape(source.Rows, source.Columns)
    return hashlib.sha256((raw & ((1 << int(source.BitsStored)) - 1)).astype("<u2").tobytes()).hexdigest()


def render_log(page) -> list[dict]:
    return page.evaluate("Array.from(window.renderLog)")


class WorkerNetwork:
    """Network events of the engine's web worker: a page's CDP session throttles the worker's
    fetches but does not report them, so this attaches to the worker target (auto-attach, messages
    through Target.sendMessageToTarget) and enables its Network domain."""

    def __init__(self, page) -> None:
        self.page = page
        self.cdp = page.context.new_cdp_session(page)
        self.handlers: dict[str, list] = {}
        self.enabled = False
        self.cdp.on("Target.attachedToTarget", self._attached)
        self.cdp.on("Target.receivedMessageFromTarget", self._received)
        self.cdp.send("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": False,
                                               "flatten": False})
        for _ in range(100):
            if self.enabled:
                break
            page.wait_for_timeout(50)
        assert self.enabled, "the engine's worker target was not found"

    def on(self, method: str, fn) -> None:
        self.handlers.setdefault(method, []).append(fn)

    def _attached(self, event) -> None:
        if event["targetInfo"]["type"] == "worker":
            message = json.dumps({"id": 1, "method": "Network.enable", "params": {}})
            self.cdp.send("Target.sendMessageToTarget", {"sessionId": event["sessionId"], "message": message})

    def _received(self, event) -> None:
        message = json.loads(event["message"])
        if message.get("id") == 1:
            self.enabled = True
        for fn in self.handlers.get(message.get("method", ""), []):
            fn(message["params"])


def throttle(page, conditions: dict) -> None:
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    cdp.send("Network.emulateNetworkConditions", conditions)


def test_subresolution_drawn_before_final_on_a_slow_link(page, demo_server, demo_data):
    """Paste the URL, press Load: a reduced image is on the canvas long before the lossless one."""
    entry = demo_entry(demo_data, "Radiograph")
    p = page.page
    open_viewer(page, demo_server.url, "?noload=1", state=("ready",))
    throttle(p, FAST4G)
    p.fill("#url", entry["url"])
    p.click("#load")
    p.wait_for_function("window.renderLog.length > 0", timeout=60_000)
    badge = p.inner_text("#overlay-tr")
    ARTIFACTS.mkdir(exist_ok=True)
    p.screenshot(path=str(ARTIFACTS / "viewer-loading.png"))
    first_pixels = canvas_pixels(p)
    log = render_log(p)
    assert badge == "SUBRESOLUTION"
    assert log[0]["status"] == "SUBRESOLUTION" and not log[0]["final"] and log[0]["drawn"]
    assert log[0]["columns"] < 3072 and log[0]["rows"] < 2614
    assert (first_pixels > 20).mean() > 0.2, "the reduced image is on the canvas"
    assert not any(e["final"] for e in log), "the screenshot and pixels show the reduced image"
    wait_for_app_state(page, ("idle",), 90_000)
    log = render_log(p)
    finals = [e for e in log if e["final"]]
    assert len(finals) == 1 and finals[0]["status"] == "FULL_RESOLUTION"
    assert (finals[0]["rows"], finals[0]["columns"]) == (2614, 3072)
    sizes = [e["columns"] for e in log]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), "strictly increasing resolutions"
    assert log.index(finals[0]) > 0  # drawn after the reduced image (how much later: the bench)
    final_pixels = canvas_pixels(p)
    assert final_pixels.shape == first_pixels.shape
    # same picture, same place and size on screen (no jump), sharper: small mean difference, not zero
    diff = np.abs(final_pixels.astype(int) - first_pixels.astype(int))
    assert 0 < diff.mean() < 12
    p.screenshot(path=str(ARTIFACTS / "viewer-final.png"))
    assert p.evaluate("window.pyApp.pixelsSha256(0)") == source_sha256("radiograph", "cat.dcm")
    assert "FULL" in p.inner_text("#overlay-tr")
    overlay = p.inner_text("#overlay-tl")
    assert "Native 3072x2614" in overlay and "showing 3072x2614" in overlay
    assert "final" in p.inner_text("#overlay-br")


def test_jls_reduced_preset_requests_the_thumbnail_first(page, demo_server, demo_data):
    entry = demo_entry(demo_data, "Radiograph")
    p = page.page
    open_viewer(page, demo_server.url, f"?url={quote(entry['url'])}")
    page.requests.clear()
    p.select_option("#preset", "jlsReduced")
    wait_for_app_state(page, ("loading", "idle"))
    p.wait_for_function("window.renderLog.some(e => e.final)", timeout=60_000)
    frames = [u for u in page.requests if "/instances/" in u]
    assert "/jlsThumbnail/" in frames[0]
    assert any("/jls/" in u for u in frames[1:])
    log = render_log(p)
    assert log[0]["status"] == "SUBRESOLUTION" and (log[0]["rows"], log[0]["columns"]) == (654, 768)
    assert log[-1]["final"] and log[-1]["columns"] == 3072
    stored = json.loads(p.evaluate("localStorage.getItem('progressive-dicom.retrieveConfig')"))
    assert stored["preset"] == "jlsReduced"


def test_wheel_and_arrow_keys_change_the_image(page, demo_server, demo_data):
    entry = demo_entry(demo_data, "MR")
    p = page.page
    open_viewer(page, demo_server.url, f"?url={quote(entry['url'])}")
    assert len([e for e in render_log(p) if e["final"]]) == 20
    # the request waterfall (redrawn at most every WATERFALL_MS) shows the load: lanes in the
    # status colours, final green among them
    p.wait_for_timeout(400)
    lanes = p.evaluate("""() => { const c = document.getElementById('waterfall');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let green = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i] === 0x50 && d[i + 1] === 0xd0 && d[i + 2] === 0x80) green++;
      return green; }""")
    assert lanes > 20

    def shown():
        return p.inner_text("#overlay-tl").splitlines()[0]

    start = shown()
    before = canvas_pixels(p)
    p.hover("#viewport")
    p.mouse.wheel(0, 120)
    p.wait_for_function(f"document.getElementById('overlay-tl').textContent.split('\\n')[0] !== {json.dumps(start)}")
    after_wheel = shown()
    assert after_wheel != start
    p.wait_for_timeout(100)  # one animation frame for the redraw
    assert not np.array_equal(before, canvas_pixels(p))
    p.focus("#viewport")
    p.keyboard.press("ArrowDown")
    p.wait_for_timeout(100)
    after_key = shown()
    assert after_key not in (after_wheel, start)
    index = lambda text: int(text.split()[1])  # noqa: E731
    assert index(after_key) == index(after_wheel) + 1 == index(start) + 2
    p.keyboard.press("ArrowUp")
    p.wait_for_timeout(100)
    assert shown() == after_wheel
    assert p.eval_on_selector("#slider", "s => s.value") == str(index(after_wheel) - 1)
    # patient, study and series as the series metadata has them (text, never HTML)
    from app import dicomjson as dj
    from app.study import dicom_date, person_name

    first = json.loads((demo_data / entry["url"].removeprefix("/dicomweb/") / "metadata").read_text())[0]
    info = dict(zip(p.eval_on_selector_all("#study-info dt", "l => l.map(e => e.textContent)"),
                    p.eval_on_selector_all("#study-info dd", "l => l.map(e => e.textContent)")))
    assert info["Patient"] == (person_name(dj.text(first, dj.Tag.PATIENT_NAME)) or "-")
    assert info["Modality"] == dj.text(first, dj.Tag.MODALITY) == "MR"
    assert dicom_date(dj.text(first, dj.Tag.STUDY_DATE)) in info["Study"]
    assert info["Images"] == "20"


def test_window_level_drag_changes_canvas_pixels(page, demo_server, demo_data):
    entry = demo_entry(demo_data, "MR")
    p = page.page
    open_viewer(page, demo_server.url, f"?url={quote(entry['url'])}")
    before = canvas_pixels(p)
    wl_before = p.inner_text("#overlay-bl")
    box = p.locator("#viewport").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    p.mouse.move(cx, cy)
    p.mouse.down()
    p.mouse.move(cx + 120, cy + 60, steps=6)
    p.mouse.up()
    p.wait_for_timeout(150)
    assert p.inner_text("#overlay-bl") != wl_before
    after = canvas_pixels(p)
    assert np.abs(after.astype(int) - before.astype(int)).mean() > 1


def test_invalid_configuration_names_the_path_and_keeps_the_old_one(page, demo_server, demo_data):
    entry = demo_entry(demo_data, "Radiograph")
    p = page.page
    open_viewer(page, demo_server.url, f"?url={quote(entry['url'])}&config=htj2kByteRange")
    kept = p.eval_on_selector("#config", "t => t.value")
    stored = p.evaluate("localStorage.getItem('progressive-dicom.retrieveConfig')")
    # the configuration is checked by the engine's worker: the answer comes back asynchronously
    error_shown = "(t) => document.getElementById('config-error').textContent.includes(t)"
    p.fill("#config", json.dumps({"stages": [{"id": "x", "decimate": 0}]}))
    p.click("#apply")
    p.wait_for_function(error_shown, arg="$.stages[0].decimate")
    assert p.evaluate("localStorage.getItem('progressive-dicom.retrieveConfig')") == stored
    p.fill("#config", '{"stages": [')
    p.click("#apply")
    p.wait_for_function(error_shown, arg="line 1")
    # the configuration in force is still the byte-range one: a reload fetches a first range again
    page.requests.clear()
    p.fill("#config", kept)
    p.click("#apply")
    p.wait_for_function("document.getElementById('config-status').textContent === 'applied'")
    assert p.is_hidden("#config-error")
    wait_for_app_state(page, ("idle",))
    assert render_log(p)[-1]["final"]


class FailOneInstance(serve.Handler):
    """serve.py's handler, except that one instance's frames answer 500."""

    failing_uid = ""

    def do_GET(self):  # noqa: N802 (stdlib name)
        if self.failing_uid and f"/instances/{self.failing_uid}/" in self.path:
            return self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, "injected failure")
        return super().do_GET()


def test_server_error_on_one_image_is_shown_and_the_others_load(page, demo_data, runtime, serve_dir):
    entry = demo_entry(demo_data, "MR")
    live = serve_dir(demo_data)
    series_dir = demo_data / entry["url"].removeprefix("/dicomweb/")
    victim = sorted(p.name for p in (series_dir / "instances").iterdir() if p.is_dir())[3]
    handler = type("Failing", (FailOneInstance,), {"failing_uid": victim})
    live.server.RequestHandlerClass = handler
    p = page.page
    open_viewer(page, live.url, f"?url={quote(entry['url'])}&config=htj2k")
    errors = p.inner_text("#errors")
    assert "500" in errors or "injected failure" in errors or "Internal Server Error" in errors
    assert "Traceback" not in errors
    finals = {e["index"] for e in render_log(p) if e["final"]}
    assert len(finals) == 19
    assert p.evaluate("document.documentElement.dataset.app") == "idle"


SLOW4G = {"offline": False, "latency": 562.5, "downloadThroughput": 180_000, "uploadThroughput": 84_375}


@pytest.mark.parametrize("config", ["htj2k", "interleavedStack"])
def test_fast_scrolling_on_slow4g(page, demo_server, demo_data, config):
    """Scroll through the 20 slices while they load on "Slow 4G": no image of another slice is ever
    drawn over the current one, the image on screen is asked for first and at high priority,
    memory stays bounded, and the slice the user stops on ends lossless and bit-exact."""
    entry = demo_entry(demo_data, "MR")
    p = page.page
    open_viewer(page, demo_server.url, f"?noload=1&url={quote(entry['url'])}&config={config}", state=("ready",))
    cdp = p.context.new_cdp_session(p)
    cdp.send("HeapProfiler.collectGarbage")
    js_before = cdp.send("Runtime.getHeapUsage")["usedSize"]
    wasm_before = json.loads(p.evaluate("window.pyApp.memoryUsage()"))["wasmHeapBytes"]
    net = WorkerNetwork(p)  # the frames are fetched by the engine's network worker
    frame_ids: set = set()
    priorities: list = []  # fetch's priority of each frame request, in the order they went out
    received: dict = {}  # bytes the page actually took in, per frame request (what crossed the link)

    def sent(e):
        if "/frames/" in e["request"]["url"]:
            frame_ids.add(e["requestId"])
            priorities.append(e["request"].get("initialPriority"))
    net.on("Network.requestWillBeSent", sent)
    net.on("Network.dataReceived", lambda e: received.__setitem__(
        e["requestId"], received.get(e["requestId"], 0) + e["encodedDataLength"]))
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    cdp.send("Network.emulateNetworkConditions", SLOW4G)
    demo_server.log.clear()
    p.click("#load")
    p.wait_for_function("document.getElementById('slider').max === '19'", timeout=30_000)
    p.focus("#viewport")
    start = int(p.eval_on_selector("#slider", "s => s.value"))
    for key in ["ArrowDown"] * (19 - start) + ["ArrowUp"] * 17:  # from the middle to the last slice, then to the third
        p.keyboard.press(key)
        p.wait_for_timeout(40)
    assert p.eval_on_selector("#slider", "s => s.value") == "2"
    p.wait_for_function("Array.from(window.renderLog).some(e => e.index === 2 && e.final && e.drawn)",
                        timeout=60_000, polling=50)
    wait_for_app_state(page, ("idle",), timeout_ms=120_000)

    draws = p.evaluate("Array.from(window.drawLog, e => Array.from(e))")
    assert draws, "nothing was drawn"
    stale = [d for d in draws if d[0] != d[1]]
    assert not stale, f"images of other slices drawn over the current one: {stale[:5]}"
    assert any(d[0] == 2 and d[2] == "FULL_RESOLUTION" for d in draws)
    # the page keeps 24 requests asked for (more than 20 slices): nothing has to give way; the
    # browser hands its connections to the image on screen first (fetch priority), and that image
    # goes out alone, before the others (the engine's tests pin giving way when slots run out)
    assert priorities[0] == "High" and "Low" in priorities[1:], priorities

    assert p.evaluate("window.pyApp.pixelsSha256(2)") == _mr_source_sha(demo_server, demo_data, entry, 2)

    cdp.send("HeapProfiler.collectGarbage")
    js_after = cdp.send("Runtime.getHeapUsage")["usedSize"]
    mem = json.loads(p.evaluate("window.pyApp.memoryUsage()"))
    frames = [e for e in demo_server.log if "/frames/" in e["path"]]
    series_dir = demo_data / entry["url"].removeprefix("/dicomweb/")
    sizes = sum(f.stat().st_size for f in stored_frames(series_dir, "instances/*/frames/1"))
    taken_in = sum(n for rid, n in received.items() if rid in frame_ids)
    print(f"slow4g scroll ({config}): {len(draws)} draws, {len(frames)} frame "
          f"requests; the page took in {taken_in} B of frames for {sizes} B of frame files "
          f"(the server wrote {sum(e['bytes_sent'] for e in frames)} B into its sockets); "
          f"JS heap {js_before / 1e6:.1f} -> {js_after / 1e6:.1f} MB, wasm heap {wasm_before / 1e6:.1f} -> "
          f"{mem['wasmHeapBytes'] / 1e6:.1f} MB, pixels held {mem['heldPixelBytes'] / 1e6:.2f} MB in {mem['heldImages']} images")
    assert taken_in <= 1.1 * sizes  # no frame byte taken in twice
    assert mem["heldImages"] == 20 and mem["heldPixelBytes"] <= 20 * 256 * 256 * 2
    assert js_after - js_before < 32e6
    assert mem["wasmHeapBytes"] - wasm_before < 64e6


def _mr_source_sha(demo_server, demo_data, entry, index: int) -> str:
    import hashlib

    import pydicom

    from app.study import stack_from_metadata

    series_dir = demo_data / entry["url"].removeprefix("/dicomweb/")
    sop = stack_from_metadata(json.loads((series_dir / "metadata").read_text()),
                              demo_server.url + entry["url"]).images[index].sop_instance_uid
    source = next(ds for ds in (pydicom.dcmread(f) for f in (PROJECT / ".cache" / "demo" / "mr-stack").glob("*.dcm"))
                  if ds.SOPInstanceUID == sop)
    return hashlib.sha256(source.pixel_array.astype("<i2").tobytes()).hexdigest()


def _mr_sops(demo_data, entry) -> list[str]:
    """The SOP Instance UID of each slice of the demo MR, in stack order (discovery's own rule)."""
    from app.dicomjson import maybe_gunzip
    from app.study import stack_from_metadata

    series_dir = demo_data / entry["url"].removeprefix("/dicomweb/")
    raw = next(p for p in (series_dir / "metadata", series_dir / "metadata.gz") if p.exists()).read_bytes()
    stack = stack_from_metadata(json.loads(maybe_gunzip(raw)), entry["url"])
    return [im.sop_instance_uid for im in stack.images]


def test_nearby_frame_replicas_are_badged_and_name_their_own_slice(page, demo_server, demo_data):
    """interleavedStack shows a decoded slice at its neighbours until their own data comes
    (nearbyFrames). The worker sends those replicas in their source's message (one buffer); the page
    hands each on as the neighbour's own entry: the neighbour's SOP, a replica badge, never final,
    and every slice still ends final with its own pixels."""
    entry = demo_entry(demo_data, "MR")
    sops = _mr_sops(demo_data, entry)
    p = page.page
    open_viewer(page, demo_server.url, f"?noload=1&url={quote(entry['url'])}&config=interleavedStack",
                state=("ready",))
    throttle(p, FAST4G)
    p.click("#load")
    wait_for_app_state(page, ("idle",), 90_000)
    log = render_log(p)
    replicas = [e for e in log if e["status"] in ("ADJACENT_REPLICATE", "FAR_REPLICATE")]
    assert replicas, "no slice showed a neighbour's image first"
    assert all(e["sop"] == sops[e["index"]] for e in log), "an entry names another slice's SOP"
    assert not any(e["final"] for e in replicas)
    finals = {e["index"] for e in log if e["final"]}
    assert finals == set(range(len(sops)))
    for e in replicas:  # each replica came before that slice's own final image
        own = next(i for i, x in enumerate(log) if x["index"] == e["index"] and x["final"])
        assert log.index(e) < own
    draws = p.evaluate("Array.from(window.drawLog, e => Array.from(e))")
    assert all(d[0] == d[1] and d[3] == sops[d[0]] for d in draws)
    assert p.evaluate("window.pyApp.pixelsSha256(3)") == _mr_source_sha(demo_server, demo_data, entry, 3)


def test_memory_budget_reduces_far_images_and_reloads_them_on_return(page, demo_server, demo_data):
    """?cacheMB=1 on the 20-slice MR (128 KB per slice): the page keeps about 6 slices in full around
    the one on screen and a copy reduced 4x each way of the others; going back to a reduced slice
    loads it again, lossless and bit-exact."""
    entry = demo_entry(demo_data, "MR")
    p = page.page
    open_viewer(page, demo_server.url, f"?url={quote(entry['url'])}&config=htj2k&cacheMB=1")
    mem = json.loads(p.evaluate("window.pyApp.memoryUsage()"))
    assert mem["heldPixelBytes"] <= 1 << 20 and mem["heldImages"] == 20, mem  # every slice shows something
    assert mem["heldCounted"] == mem["heldPixelBytes"]  # the running count the budget uses
    assert "reduced to stay within 1 MB" in p.inner_text("#status")
    source = _mr_source_sha(demo_server, demo_data, entry, 0)
    assert p.evaluate("window.pyApp.pixelsSha256(0)") != source  # far from the middle: the reduced copy
    before = len(render_log(p))
    p.focus("#viewport")
    p.keyboard.press("Home")
    p.wait_for_function(f"Array.from(window.renderLog).slice({before}).some(e => e.index === 0 && e.final && e.drawn)",
                        timeout=30_000, polling=50)
    wait_for_app_state(page, ("idle",))
    assert p.evaluate("window.pyApp.pixelsSha256(0)") == source
    mem = json.loads(p.evaluate("window.pyApp.memoryUsage()"))
    assert mem["heldPixelBytes"] <= 1 << 20 and mem["heldCounted"] == mem["heldPixelBytes"], mem
    draws = p.evaluate("Array.from(window.drawLog, e => Array.from(e))")
    assert all(d[0] == d[1] for d in draws)


def test_an_rle_series_loads_pydicom_on_demand(page, runtime, serve_dir, tmp_path):
    """pydicom is not part of the page's start; a DICOM RLE series makes the page install it from
    the local wheel, and the RLE frames then decode to the source pixels."""
    import gzip
    import hashlib

    import pydicom
    from pydicom.data import get_testdata_file

    from app.codecs import RLE_LOSSLESS
    from app.convert import convert

    source_path = get_testdata_file("MR_small_RLE.dcm")
    source = pydicom.dcmread(source_path)
    out = tmp_path / "tree"
    assert convert([source_path], out, "jls", quiet=True).ok
    series_dir = next(d for d in (out / "studies").glob("*/series/*") if d.is_dir())
    frame = stored_frames(series_dir, "instances/*/frames/1")[0]
    boundary = b"rle-boundary-0123456789"
    rle = next(pydicom.encaps.generate_frames(source.PixelData, number_of_frames=1))
    frame.write_bytes(b"--" + boundary + b"\r\nContent-Type: application/octet-stream;transfer-syntax="
                      + RLE_LOSSLESS.encode() + b"\r\n\r\n" + rle + b"\r\n--" + boundary + b"--")
    metadata = json.loads((series_dir / "metadata").read_text())
    metadata[0]["00083002"] = {"vr": "UI", "Value": [RLE_LOSSLESS]}
    (series_dir / "metadata").write_text(json.dumps(metadata))
    (series_dir / "metadata.gz").write_bytes(gzip.compress(json.dumps(metadata).encode()))
    (series_dir / "alternates.json").unlink()
    (series_dir / "alternates.json.gz").unlink(missing_ok=True)
    live = serve_dir(out)
    url = "/dicomweb/" + series_dir.relative_to(out).as_posix()
    p = page.page
    open_viewer(page, live.url, f"?noload=1&url={quote(url)}&config=nonProgressive", state=("ready",))
    assert not [u for u in page.requests if "pydicom" in u]  # not at start
    p.click("#load")
    wait_for_app_state(page, ("idle",))
    assert [u for u in page.requests if u.endswith("pydicom-3.0.2-py3-none-any.whl")]
    log = render_log(p)
    assert log and log[-1]["final"], (p.inner_text("#errors"), page.console[-10:])
    expected = hashlib.sha256(source.pixel_array.astype("<i2").tobytes()).hexdigest()
    assert p.evaluate("window.pyApp.pixelsSha256(0)") == expected
