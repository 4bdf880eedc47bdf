"""The image on screen always belongs to the series and slice the overlay names (Chromium).

A new series whose frames stall, a URL that fails, fast switching between series, CORS-blocked and
unreachable URLs: the page clears the old image, overlay and patient block at once, draws only what
the overlay names, shows one short message, and never a PyScript error block.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import numpy as np
import pytest

import serve
from conftest import wait_for_app_state
from test_viewer import canvas_pixels, demo_entry, open_viewer

pytestmark = pytest.mark.browser


def sops_of(demo_data, entry) -> set[str]:
    series_dir = demo_data / entry["url"].removeprefix("/dicomweb/")
    return {p.name for p in (series_dir / "instances").iterdir() if p.is_dir()}


def draws(p) -> list:
    return p.evaluate("Array.from(window.drawLog, e => Array.from(e))")


def overlay(p) -> dict:
    return {c: p.inner_text(f"#overlay-{c}") for c in ("tl", "tr", "bl", "br")}


class StallingHandler(serve.Handler):
    """serve.py's handler, except that frames of one series answer nothing until released."""

    stalled_series = ""
    release = threading.Event()

    def do_GET(self):  # noqa: N802 (stdlib name)
        if self.stalled_series and self.stalled_series in self.path and "/instances/" in self.path:
            self.release.wait(60)
            return self._send_error(503, "stalled for the test")
        return super().do_GET()


def test_a_stalled_new_series_never_shows_the_old_image(page, demo_data, runtime, serve_dir):
    mr, radiograph = demo_entry(demo_data, "MR"), demo_entry(demo_data, "Radiograph")
    live = serve_dir(demo_data)
    release = threading.Event()
    live.server.RequestHandlerClass = type("Stalling", (StallingHandler,), {
        "stalled_series": radiograph["url"].rsplit("/", 1)[1], "release": release})
    p = page.page
    try:
        open_viewer(page, live.url, f"?url={quote(mr['url'])}&config=htj2k")
        assert canvas_pixels(p).max() > 0 and "Image 10 / 20" in overlay(p)["tl"]
        patient_before = p.inner_text("#study-info")
        drawn_before = len(draws(p))
        p.fill("#url", radiograph["url"])
        p.click("#load")
        p.wait_for_function("document.getElementById('overlay-tl').textContent.startsWith('Image 1 / 1')",
                            timeout=30_000)
        p.wait_for_timeout(1500)  # frames requested and stalled; nothing may be drawn meanwhile
        corners = overlay(p)
        assert corners["tr"] == "LOADING"
        assert "showing" not in corners["tl"]
        assert canvas_pixels(p).max() == 0, "the MR image stayed under the radiograph's overlay"
        info = p.inner_text("#study-info")
        assert info != patient_before and "DX" in info
        assert draws(p)[drawn_before:] == [], "a draw happened for a series with no pixels yet"
        assert p.is_visible("#cancel")
        p.click("#cancel")  # a running load can be stopped
        wait_for_app_state(page, ("idle",), 30_000)
        assert p.inner_text("#status") == "Cancelled" and p.is_hidden("#cancel")
        assert canvas_pixels(p).max() == 0
    finally:
        release.set()
    wait_for_app_state(page, ("idle", "error"), 60_000)
    assert not p.query_selector_all(".py-error")


def test_a_failed_url_clears_the_previous_study(page, demo_server, demo_data):
    mr = demo_entry(demo_data, "MR")
    p = page.page
    open_viewer(page, demo_server.url, f"?url={quote(mr['url'])}")
    size = p.locator("#viewport").bounding_box()
    p.fill("#url", "/dicomweb/studies/1.2.3/series/4.5.6")
    p.click("#load")
    wait_for_app_state(page, ("error",))
    errors = p.inner_text("#errors")
    assert "not found" in errors and "Traceback" not in errors and len(errors.splitlines()) == 1
    assert canvas_pixels(p).max() == 0
    assert all(text == "" for text in overlay(p).values())
    assert p.inner_text("#study-info") == ""
    assert p.locator("#viewport").bounding_box() == size
    assert not p.query_selector_all(".py-error")


def test_fast_series_switching_draws_only_the_series_named(page, demo_server, demo_data):
    entries = [demo_entry(demo_data, w) for w in ("MR", "Radiograph", "CR", "MR")]
    p = page.page
    open_viewer(page, demo_server.url, "?noload=1", state=("ready",))
    p.wait_for_function("document.getElementById('series').options.length >= 3")
    marks = []
    switch = """(url) => {  // the mark and the switch in one task: no draw can fall between them
        const n = window.drawLog.length, menu = document.getElementById('series');
        menu.value = url;
        menu.dispatchEvent(new Event('change', {bubbles: true}));
        return n;
    }"""
    for entry in entries:
        p.wait_for_function("(u) => Array.from(document.getElementById('series').options).some(o => o.value === u)",
                            arg=entry["url"])
        marks.append(p.evaluate(switch, entry["url"]))
        p.wait_for_timeout(150)
    wait_for_app_state(page, ("idle",), 90_000)
    log = draws(p)
    mr_sops = sops_of(demo_data, entries[-1])
    assert log[marks[-1]:], "the last series was never drawn"
    assert all(d[3] in mr_sops for d in log[marks[-1]:]), "an image of another series was drawn"
    assert all(d[0] == d[1] for d in log)
    top = overlay(p)["tl"].splitlines()[0]
    assert top.endswith("/ 20") and overlay(p)["tr"] == "FULL"
    assert json.loads(p.evaluate("window.pyApp.memoryUsage()"))["heldImages"] == 20


class NoCorsHandler(BaseHTTPRequestHandler):
    """A DICOMweb-looking server on another origin that sends no CORS headers."""

    def do_GET(self):  # noqa: N802
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_cors_blocked_and_unreachable_urls_are_one_clear_message(page, demo_server, demo_data):
    other = ThreadingHTTPServer(("127.0.0.1", 0), NoCorsHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    p = page.page
    try:
        open_viewer(page, demo_server.url, f"?url={quote(demo_entry(demo_data, 'MR')['url'])}")
        size = p.locator("#viewport").bounding_box()
        long_tail = "/x" * 120
        for url in (f"http://127.0.0.1:{other.server_address[1]}/studies/1/series/2{long_tail}",
                    "http://127.0.0.1:9/studies/1/series/2"):
            p.fill("#url", url)
            p.click("#load")
            wait_for_app_state(page, ("error",), 60_000)
            message = p.inner_text("#errors").splitlines()
            assert len(message) == 1 and "could not be reached" in message[0] and "CORS" in message[0]
            assert not p.query_selector_all(".py-error")
            assert p.locator("#viewport").bounding_box() == size
            box = p.locator("#errors .error").bounding_box()
            assert box["width"] <= p.viewport_size["width"], "a long URL widened the page"
            assert canvas_pixels(p).max() == 0
    finally:
        other.shutdown()
        other.server_close()


class OnceUnavailableHandler(serve.Handler):
    """serve.py's handler, except that the first request for one instance's frames answers 503."""

    instance = ""
    answered = threading.Event()

    def do_GET(self):  # noqa: N802 (stdlib name)
        if self.instance and f"/instances/{self.instance}/frames" in self.path and not self.answered.is_set():
            self.answered.set()
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            return None
        return super().do_GET()


def test_a_request_asked_again_is_said_in_the_console_and_the_load_ends_lossless(page, demo_data, runtime,
                                                                                 serve_dir):
    mr = demo_entry(demo_data, "MR")
    sop = sorted(sops_of(demo_data, mr))[3]
    live = serve_dir(demo_data)
    live.server.RequestHandlerClass = type("Once", (OnceUnavailableHandler,), {
        "instance": sop, "answered": threading.Event()})
    p = page.page
    warnings = []
    p.on("console", lambda msg: warnings.append(msg.text) if msg.type == "warning" else None)
    open_viewer(page, live.url, f"?url={quote(mr['url'])}&config=htj2k")
    wait_for_app_state(page, ("idle",), 60_000)
    retries = [json.loads(r) for r in p.evaluate("Array.from(window.retryLog)")]
    assert len(retries) == 1 and "503" in retries[0]["message"] and retries[0]["attempt"] == 1
    log = p.evaluate("Array.from(window.renderLog)")
    assert {e["index"] for e in log if e["final"]} == set(range(20))  # nothing lost
    assert any("retry 1 of slice" in w and "503" in w for w in warnings)
    assert not p.inner_text("#errors").strip() and not p.query_selector_all(".py-error")
