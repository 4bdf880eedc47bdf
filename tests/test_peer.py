"""The Cornerstone3D peer page builds and draws a known image exactly, so the side-by-side
benchmark (``python -m app bench --peer cornerstone``) can never measure a broken peer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.config import PRESETS
from conftest import CHROMIUM, CHROMIUM_ARGS
from app.config import RetrieveConfig
from tools.peer.cornerstone import (CornerstonePage, PeerError, check_build, chromium_args, source_sha256, to_cornerstone,
                                    to_ours)


@pytest.fixture(scope="module")
def peer_build() -> Path:
    return check_build()


@pytest.fixture(scope="module")
def webgl_browser(browser):
    """A second Chromium from the same Playwright, launched with WebGL (SwiftShader)."""
    webgl = browser.browser_type.launch(executable_path=CHROMIUM, headless=True, args=chromium_args(CHROMIUM_ARGS))
    yield webgl
    webgl.close()


@pytest.fixture
def peer(webgl_browser, demo_data, serve_dir, peer_build):
    server = serve_dir(demo_data)
    page = CornerstonePage(webgl_browser, server.url, viewport={"width": 640, "height": 480})
    page.open()
    page.server = server
    yield page
    page.close()


def _radiograph(demo_data: Path) -> dict:
    return next(e for e in json.loads((demo_data / "demo.json").read_text()) if "3072" in e["name"])


def _canvas_red(page) -> np.ndarray:
    width, height, values = page.evaluate("""() => { const c = document.querySelector('#viewport canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const red = new Array(d.length / 4); for (let i = 0; i < red.length; i++) red[i] = d[4 * i];
        return [c.width, c.height, red]; }""")
    return np.array(values, dtype=np.uint8).reshape(height, width)


@pytest.mark.browser
def test_build_is_local_and_complete(peer_build):
    """The page, their decode worker and the codecs' wasm are all in the build folder."""
    for name in ("peer.html", "peer.js", "decodeImageFrameWorker.js", "wasm/openjphjs.wasm",
                 "wasm/charlswasm_decode.wasm"):
        assert (peer_build / name).stat().st_size > 0, name
    assert "cdn" not in (peer_build / "peer.html").read_text().lower()
    versions = json.loads((peer_build / "build.json").read_text())["versions"]
    assert versions["@cornerstonejs/core"].startswith("5.14.")
    assert versions["@cornerstonejs/dicom-image-loader"].startswith("5.14.")


@pytest.mark.browser
def test_peer_draws_the_radiograph_progressively_and_exactly(peer, demo_data):
    """HTJ2K byte range: a SUBRESOLUTION draw, then the full image, whose pixels are the source's;
    the draw is on screen (WebGL canvas not blank) and every request went to our server."""
    entry = _radiograph(demo_data)
    requests: list[str] = []
    peer.page.on("request", lambda r: requests.append(r.url))
    run = peer.load(peer.server.url + entry["url"], to_cornerstone(PRESETS["htj2kByteRange"]))
    drawn = [e for e in run.log if e["drawn"]]
    assert [e["status"] for e in drawn] == ["SUBRESOLUTION", "FULL_RESOLUTION"], run.log
    assert drawn[0]["columns"] < 3072 and drawn[-1]["columns"] == 3072 and drawn[-1]["final"]
    assert all(e["image_t_ms"] is not None and e["image_t_ms"] > 0 for e in drawn)
    got = peer.check_pixels()
    assert got["columns"] == 3072 and got["rows"] == 2614
    red = _canvas_red(peer.page)
    assert red.max() - red.min() > 100, "the viewport canvas is blank: nothing was drawn"
    assert requests and all(u.startswith(peer.server.url) for u in requests)
    frames = [r for r in peer.server.log if "/frames/" in r["path"]]
    assert len(frames) == 2, frames  # the first range, then the rest


@pytest.mark.browser
def test_pixel_check_tells_images_apart(peer, demo_data):
    """The exactness check can fail: another instance's source, or a wrong type, gives another hash."""
    entry = _radiograph(demo_data)
    peer.load(peer.server.url + entry["url"], to_cornerstone(PRESETS["jls"]))
    got = peer.pixels()
    assert got["status"] == "FULL_RESOLUTION"
    assert got["sha256"] == source_sha256(got["sop"], got["type"])
    cr = next(e for e in json.loads((demo_data / "demo.json").read_text()) if "CR" in e["name"])
    other = json.loads((demo_data / cr["url"].removeprefix("/dicomweb/") / "metadata").read_text())[0]
    assert source_sha256(other["00080018"]["Value"][0], got["type"]) != got["sha256"]
    assert source_sha256(got["sop"], "Float32Array") != got["sha256"]
    peer.page.evaluate("() => { const i = window.peer.viewport().getCornerstoneImage();"
                       " i.voxelManager.getScalarData()[0] ^= 1; }")
    with pytest.raises(PeerError, match="differ from the source"):
        peer.check_pixels()


@pytest.mark.browser
def test_missing_series_is_reported_not_measured(peer):
    with pytest.raises(PeerError, match="HTTP 404"):
        peer.load(peer.server.url + "/dicomweb/studies/1.2/series/3.4", to_cornerstone(PRESETS["htj2k"]))


def test_byte_range_rows_give_both_pages_the_same_first_range():
    from app.bench.peer import row_specs

    rows = row_specs(["htj2kByteRange", "jls"])
    assert [r.key for r in rows][:2] == ["htj2kByteRange64k", "htj2kByteRange128k"] and rows[-1].key == "jls"
    for row, size in zip(rows, (65536, 131072)):
        fast = to_cornerstone(row.config)["retrieveOptions"]["singleFast"]
        assert fast["rangeIndex"] == 0 and fast["initialChunkSize"] == fast["chunkSize"] == size
        ours = RetrieveConfig.from_json(to_ours(row.config))  # our page accepts what it is given
        assert ours.options_for("singleFast").chunk_size == size
    assert to_cornerstone(rows[-1].config) == PRESETS["jls"]


def test_cpu_load_goes_with_peer(capsys):
    from app.bench.runner import main

    with pytest.raises(SystemExit) as exc:
        main(["--cpu-load", "2"])
    assert exc.value.code == 2 and "--peer" in capsys.readouterr().err


@pytest.mark.browser
def test_bench_peer_runs_both_pages_on_one_row(runtime, demo_data, peer_build, tmp_path):
    """``python -m app bench --peer cornerstone`` end to end (one run, no emulation): both pages
    draw the radiograph exactly, the proxy counts the same frame bytes for both, the table has it."""
    import subprocess
    import sys

    from conftest import PROJECT

    command = ["-m", "app", "bench", "--peer", "cornerstone", "--runs", "1", "--profiles", "none",
               "--modes", "jls", "--no-stack", "--quiet", "--root", str(demo_data), "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, *command], cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads((tmp_path / "peer.json").read_text())["rows"]
    assert (row["ours"]["exact"], row["theirs"]["exact"]) == ("1/1", "1/1"), row
    assert row["ours"]["final_ms"]["n"] == row["theirs"]["final_ms"]["n"] == 1, row
    assert row["ours"]["bytes_frames"]["median"] == row["theirs"]["bytes_frames"]["median"] > 6_000_000, row
    assert "| JLS | none |" in done.stdout and (tmp_path / "peer.md").exists()


def test_stack_rows_are_chosen_by_name_or_slice_count(capsys):
    from app.bench.peer import STACK_PRESETS, select_stacks, stack_specs
    from app.bench.runner import main

    assert select_stacks(None) == ["mr20", "mr200", "ct174"]
    assert select_stacks("ct174, 20") == ["mr20", "ct174"]  # table order, whatever the order asked
    assert select_stacks("200") == ["mr200"] and select_stacks("") == []
    with pytest.raises(ValueError, match="mr300"):
        select_stacks("mr200,mr300")
    rows = stack_specs(["mr200", "ct174"])
    assert [(r.key, r.series, r.stack) for r in rows] == [
        ("mr200", "mr200", True), ("mr200:interleavedPreview", "mr200", True),
        ("ct174", "ct174", True), ("ct174:interleavedPreview", "ct174", True)]
    # both pages, every stack: one JSON per row, a row per stack preset
    assert [r.config for r in rows] == [PRESETS[name] for name in STACK_PRESETS] * 2
    assert main(["--peer", "cornerstone", "--stacks", "300"]) == 2  # refused before any browser starts
    assert "unknown stack 300" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--stacks", "200"])  # only with --peer
    assert "--stacks goes with --peer" in capsys.readouterr().err


def _saved_stack_result() -> dict:
    """A peer.json as written by a run with one 200-slice stack row (two runs a side) and its floor."""
    from dataclasses import asdict

    from app.bench.peer import PeerRow, Side, SideRun, to_json
    from app.bench.results import Stats

    def side(visible: list[float], lossless: list[float], exact: list[bool]) -> Side:
        return Side.of([SideRun(v, f, None, 22_100_000, 400, 60.0, e, []) for v, f, e in zip(visible, lossless, exact)])

    row = PeerRow("mr200", "200-slice MR-like 256x256 interleaved", "seed4g", True,
                  side([1100, 1200], [6400, 6500], [True, True]), side([1300, 1400], [6700, 6800], [True, False]),
                  [], "mr200")
    result = {"peer": "cornerstone", "runs": 2, "cpu_load": 1, "stacks": ["mr200"], "started": "2026-11-30T02:00:00Z",
              "skipped": ["ct174 rows skipped: the large stacks could not be made"],
              "machine": {"cpus": 2, "loadavg_start": [1.0], "loadavg_end": [1.5], "platform": "Linux",
                          "chromium": "156", "chromium_flags": ["--use-angle=swiftshader"]},
              "peer_build": {"@cornerstonejs/core": "5.14.0"}, "rows": [row], "floors": {},
              "stack_floors": {"seed4g": {"mr200": {"ms": asdict(Stats.of([5900, 6000])), "bytes": 21_900_000,
                                                    "requests": 200, "in_flight": 6}}}, "elapsed_s": 60.0}
    return json.loads(json.dumps(to_json(result)))  # as main() writes it, without a fallback


def test_a_saved_stack_row_renders_with_its_floor_and_ratios():
    from app.bench.peer import from_json, render_peer

    text = render_peer(from_json(_saved_stack_result()))
    assert "| Row | Network | First draw" not in text  # no single-image row, no single-image table
    assert "| Stack | Network | Every slice visible | Every slice lossless | Plain-fetch floor" in text
    line = next(line for line in text.splitlines() if line.startswith("| 200-slice MR-like"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:5] == ["seed4g", "1150 (1100-1200) / 1350 (1300-1400) (0.85)",
                          "6450 (6400-6500) / 6750 (6700-6800) (0.96)", "5950 (5900-6000) (21.90 MB)"]
    assert cells[5] == "22.10 MB / 22.10 MB" and cells[7] == "2/2 / 1/2"
    assert "Not measured: ct174 rows skipped" in text and "1 busy background processes" in text


def test_large_stacks_that_cannot_be_made_are_skipped_with_one_line(demo_data, monkeypatch):
    """No demo MR to derive them from (offline, say): the other rows still run, the table says why."""
    import tools.large_stacks
    from app.bench import peer

    def cannot(names):
        raise RuntimeError("the demo MR stack could not be downloaded\n(more detail)")

    monkeypatch.setattr(tools.large_stacks, "ensure_large_stacks", cannot)
    trees, skipped = peer._Trees(), []
    try:
        targets, _demo = peer._targets(trees, demo_data, ["mr20", "mr200", "ct174"], skipped)
    finally:
        trees.close()
    assert set(targets) == {"radiograph", "mr20"}
    assert targets["mr20"].count == 20 and targets["mr20"].expect_bytes > 0
    [line] = skipped
    assert line.startswith("mr200, ct174 rows skipped") and "could not be downloaded" in line and "\n" not in line
