"""The page boots offline in a real Chromium, served by serve.py, and its Python decodes real frames."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlsplit

import numpy as np
import pytest

from conftest import wait_for_app_state

pytestmark = pytest.mark.browser

READY = ("(window.appTimings && window.appTimings.readyMs > 0)"
         " || document.documentElement.dataset.app === 'error'")


@pytest.fixture
def booted(page, demo_server):
    page.page.goto(demo_server.url + "/?noload=1")
    try:
        page.page.wait_for_function(READY, timeout=90_000)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"never ready: {exc}\n{page.console[-20:]}\n{page.errors}") from exc
    wait_for_app_state(page, ("ready", "loading", "idle"))
    return page


def test_page_reaches_ready_and_imports_packages(booted):
    assert not [u for u in booted.requests if "pydicom" in u]  # loaded on first need only
    versions = json.loads(booted.page.evaluate("window.pyApp.importCheck()"))
    assert versions["numpy"].startswith("2.")
    assert versions["pydicom"] == "3.0.2"
    assert versions["imagecodecs"] == "2026.10.10"
    assert booted.page.inner_text("#status") != ""
    assert booted.errors == []


def test_no_request_leaves_the_origin(booted, demo_server):
    origin = urlsplit(demo_server.url)
    booted.page.evaluate("window.pyApp.importCheck()")
    foreign = [u for u in booted.requests
               if not u.startswith(("data:", "blob:")) and urlsplit(u).netloc != origin.netloc]
    assert foreign == []
    assert any(u.endswith("pyodide.asm.wasm") for u in booted.requests)


def radiograph(demo_server):
    """The demo radiograph: its frame URLs, pixel format and the source's stored pixels."""
    import pydicom

    from tools.demo_data import PROJECT_ROOT

    studies = json.loads((demo_server.server.mounts.data_root / "demo.json").read_text())
    entry = next(s for s in studies if "3072" in s["name"])
    source_file = next((PROJECT_ROOT / ".cache" / "demo" / "radiograph").rglob("cat.dcm"))
    source = pydicom.dcmread(source_file)
    return entry, source


def test_in_page_decode_of_real_16bit_frames_is_bit_exact(booted, demo_server):
    entry, source = radiograph(demo_server)
    series_url = demo_server.url + entry["url"]
    sop = source.SOPInstanceUID
    expected = _source_pixels(source)
    expected_sha = hashlib.sha256(expected.astype("<u2").tobytes()).hexdigest()
    fmt = {"rows": int(source.Rows), "columns": int(source.Columns), "bits_allocated": 16,
           "bits_stored": int(source.BitsStored), "pixel_representation": 0,
           "photometric_interpretation": str(source.PhotometricInterpretation)}
    for path, ts in (("frames", "1.2.840.10008.1.2.4.202"), ("jls", "1.2.840.10008.1.2.4.80")):
        url = f"{series_url}/instances/{sop}/{path}/1"
        got = json.loads(booted.page.evaluate(
            "([u, f]) => window.pyApp.decodeFrame(u, f)",
            [url, json.dumps({**fmt, "transfer_syntax": ts})]))
        assert (got["rows"], got["columns"]) == (source.Rows, source.Columns)
        assert got["dtype"] == "uint16"
        assert got["sha256"] == expected_sha, path


def _source_pixels(source) -> np.ndarray:
    """Stored values of the (uncompressed) source, masked to BitsStored as the codecs table does."""
    raw = np.frombuffer(source.PixelData, dtype="<u2").reshape(source.Rows, source.Columns)
    return raw & ((1 << int(source.BitsStored)) - 1)


def test_known_image_drawn_to_canvas_reads_back(booted):
    from app.render import Appearance, Window, to_rgba

    page = booted.page
    page.evaluate("""() => { const c = document.createElement('canvas'); c.id = 'selftest';
                             document.body.appendChild(c); }""")
    shape = json.loads(page.evaluate("window.pyApp.drawPattern('selftest')"))
    pixels = page.evaluate("""() => { const c = document.getElementById('selftest');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")
    got = np.array(pixels, dtype=np.uint8).reshape(shape["rows"], shape["columns"], 4)
    ramp = (np.arange(256, dtype=np.uint16)[None, :] * 16).repeat(64, axis=0)
    expected = to_rgba(ramp, Appearance(window=Window(2048, 4096))).view(np.uint8).reshape(64, 256, 4)
    assert np.array_equal(got, expected)
    # independent of render.py: the DICOM linear window formula, grey in R=G=B, opaque
    grey = np.clip(np.rint(((ramp[0] - 2047.5) / 4095 + 0.5) * 255), 0, 255)
    assert np.array_equal(got[0, :, 0], grey.astype(np.uint8))
    assert np.array_equal(got[..., 0], got[..., 2]) and (got[..., 3] == 255).all()
    assert got[0, 0, 0] < 5 and got[0, 255, 0] > 250


def test_in_page_rle_decodes_bit_exactly(booted):
    """DICOM RLE in the page: the trimmed runtime has no imagecodecs DICOMRLE (its module needs
    symbols Pyodide lacks and would abort the interpreter), so pydicom's decoder takes over."""
    import base64

    from test_codecs import rle_encode

    image = ((np.arange(61 * 83, dtype=np.uint32) * 2654435761) % 4096).astype(np.uint16).reshape(61, 83)
    url = "data:application/octet-stream;base64," + base64.b64encode(rle_encode(image)).decode()
    fmt = {"rows": 61, "columns": 83, "bits_allocated": 16, "bits_stored": 12, "pixel_representation": 0,
           "photometric_interpretation": "MONOCHROME2", "transfer_syntax": "1.2.840.10008.1.2.5"}
    got = json.loads(booted.page.evaluate("([u, f]) => window.pyApp.decodeFrame(u, f)", [url, json.dumps(fmt)]))
    assert (got["rows"], got["columns"], got["dtype"]) == (61, 83, "uint16")
    assert got["sha256"] == hashlib.sha256(image.astype("<u2").tobytes()).hexdigest()


def test_discovery_starts_while_python_boots(page, demo_server):
    """With ?url= a series, the page's own script preloads its metadata and alternates.json at
    navigation; the engine's fetch of the same URLs takes those responses (one request each)."""
    entries = json.loads((demo_server.server.mounts.data_root / "demo.json").read_text())
    url = next(e for e in entries if "MR" in e["name"])["url"]
    demo_server.log.clear()
    page.page.goto(f"{demo_server.url}/?url={url}&config=htj2k")
    wait_for_app_state(page, ("idle",))
    timings = page.page.evaluate("Object.assign({}, window.appTimings)")
    python_started = (timings["navigationStart"] + timings["pythonStartMs"]) / 1000.0
    # the app's imports in the worker: after the packages, before ready (the bench's cold-start row)
    assert 0 < timings["pythonImportsMs"] < timings["worker_readyMs"] - timings["pythonStartMs"]
    for name in ("metadata", "alternates.json"):
        hits = [e for e in demo_server.log if e["path"] == f"{url}/{name}"]
        assert len(hits) == 1, (name, hits)
        assert hits[0]["time"] < python_started  # asked for before any Python ran


def test_a_badged_preview_before_the_runtime_is_ready(page, demo_server):
    """With ?url= a series, the tree's rendered thumbnail is on screen, badged PREVIEW, before the
    runtime is ready; the first real image replaces it."""
    entries = json.loads((demo_server.server.mounts.data_root / "demo.json").read_text())
    url = next(e for e in entries if "MR" in e["name"])["url"]
    page.page.add_init_script("""window.__badges = [];
      new MutationObserver(() => { const b = document.querySelector('#overlay-tr .badge');
        const p = document.getElementById('preview');
        window.__badges.push([b ? b.textContent : '', p && !p.hidden]); })
      .observe(document, {childList: true, subtree: true, attributes: true, attributeFilter: ['hidden']});""")
    page.page.goto(f"{demo_server.url}/?url={url}")
    wait_for_app_state(page, ("idle",))
    timings = page.page.evaluate("Object.assign({}, window.appTimings)")
    assert 0 < timings["previewMs"] < timings["readyMs"]
    badges = page.page.evaluate("window.__badges")
    assert all(badge == "PREVIEW" for badge, shown in badges if shown), "an unbadged preview"
    assert any(shown for _, shown in badges)
    assert page.page.is_hidden("#preview") and page.page.inner_text("#overlay-tr") == "FULL"
    assert any(u.endswith(f"{url}/thumbnail") for u in page.requests)


def test_worker_imports_the_app_from_set_up_bytecode(booted):
    """Set-up's compiled twins (static/app-pyc/KEY.zip) are what the worker ran: it named these
    sources as set-up does, and no app module was compiled from source (serve.py's set-up made
    the zip from these very sources)."""
    from tools.setup_runtime import app_key, app_sources

    report = json.loads(booted.page.evaluate("window.engine.call('bytecodeReport')"))
    assert report["key"] == app_key(app_sources())
    assert report["bytecode"] == "present"
    assert report["modules"] >= 20  # app.worker and what it imports
    assert report["compiled"] == []
