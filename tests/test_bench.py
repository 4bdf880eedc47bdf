"""The benchmark's CPython engine mode on the demo radiograph: every mode, real numbers, no thresholds."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from app import bench
from app.bench.network import ResponseMeter

FRAME = re.compile(r"/instances/[^/]+/[^/]+/\d+(?:\.mht)?$")


@pytest.fixture(scope="module")
def live(demo_data, serve_dir):
    return serve_dir(demo_data)


@pytest.fixture(scope="module")
def measured(live, demo_data):
    """(result, frame bytes serve.py itself logged during the bench)."""
    mark = len(live.log)
    got = bench.run_bench(engine="cpython", runs=1, profiles=["none"], base_url=live.url, data_root=demo_data)
    time.sleep(0.1)
    served = sum(r["bytes_sent"] for r in list(live.log)[mark:] if FRAME.search(r["path"]))
    return got, served


@pytest.fixture(scope="module")
def result(measured):
    return measured[0]


def test_every_mode_has_a_row_with_a_lossless_final(result):
    assert [r.mode for r in result.rows] == list(bench.MODES)
    for row in result.rows:
        assert row.profile == "none" and row.runs == 1
        assert row.final_status == "FULL_RESOLUTION", row.mode
        assert row.final_size == "3072x2614"
        assert row.final_image_ms.median > 0
        assert row.final_decode_ms.median > 0
        if row.progressive:
            assert 0 < row.first_image_ms.median <= row.final_image_ms.median
            assert row.first_bytes.median < row.size
    progressive = {r.mode for r in result.rows if r.progressive}
    assert progressive == {"jlsReduced", "htj2k", "htj2kByteRange"}


def test_bytes_moved_are_what_the_server_sent(measured):
    result, served = measured
    files = result.image.files
    expected = {"jls": files["jls"], "jlsReduced": files["jls"] + files["jlsThumbnail"],
                "htj2k": files["frames"], "htj2kByteRange": files["frames"], "nonProgressive": files["frames"]}
    for row in result.rows:
        assert row.bytes_moved.median == expected[row.mode], row.mode
        final = next(e for e in row.raw[0]["renderLog"] if e["final"])
        assert final["bytes"] == row.bytes_moved.median  # what the engine says it received
    assert result.rows[3].frame_requests.median >= 2  # byte range: a first range, then the rest
    moved = sum(r.bytes_moved.median for r in result.rows)
    moved += sum(s.bytes_moved.median for s in result.stack)
    assert moved == served  # the bench's proxy counted what serve.py logged


def test_stack_rows_reach_every_slice(result):
    assert [s.preset for s in result.stack] == list(bench.STACK_PRESETS)
    for s in result.stack:
        assert s.slices == 20
        assert s.raw[0]["slices_lossless"] == 20
        assert 0 < s.all_something_ms.median <= s.all_lossless_ms.median
        assert s.bytes_moved.median == s.lossless_bytes


def test_native_decode_and_markdown(result):
    assert result.decode.native["HTJ2K"].median > 0
    text = bench.render_markdown(result)
    for label, *_ in bench.MODES.values():
        assert f"| {label} | none |" in text
    assert "interleavedStack" in text


def test_saved_json_renders_the_same_after_a_round_trip(result):
    saved = json.loads(json.dumps(result.to_json(), default=float))
    again = bench.rerender(bench.BenchResult.from_json(saved))
    assert bench.render_markdown(again) == bench.render_markdown(result)
    assert again.to_json()["rows"] == saved["rows"]


def test_response_meter_counts_bodies_per_request_at_any_split():
    requests = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"
    responses = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                 b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"  # HEAD: no body follows
                 b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\n\r\nabc")  # cut short
    for cut in range(1, len(responses)):
        meter = ResponseMeter()
        meter.request_bytes(requests[:7])
        meter.request_bytes(requests[7:])
        meter.response_bytes(responses[:cut])
        meter.response_bytes(responses[cut:])
        assert [(r.path, r.status, r.bytes_sent) for r in meter.log] == [
            ("/a", 200, 5), ("/b", 200, 0), ("/c", 206, 3)], cut


def test_throttle_proxy_delays_and_passes_bytes(live, result):
    from app.transport.native import NativeTransport

    host, port = live.server.server_address[:2]
    size = result.image.files["jlsThumbnail"]
    path = next(r["path"] for r in list(live.log) if "/jlsThumbnail/" in r["path"])  # requested by the bench
    rate, latency_ms = 4_000_000, 60.0

    async def get(url):
        transport = NativeTransport()
        try:
            t = time.perf_counter()
            response = await transport.get(url)
            n = 0
            async for chunk in response.chunks():
                n += len(chunk)
            return response.status, n, (time.perf_counter() - t) * 1000
        finally:
            await transport.aclose()

    proxy = bench.ThrottleProxy(host, port, rate, rate, latency_ms)
    try:
        status, n, ms = asyncio.run(get(proxy.url + path))
    finally:
        proxy.close()
    assert status == 200 and n == size
    assert ms >= latency_ms + size / rate * 1000 * 0.9
    assert [(r.path, r.bytes_sent) for r in proxy.request_log] == [(path, size)]


@pytest.mark.browser
def test_responsiveness_table_on_the_mr(browser, demo_server, demo_data, tmp_path):
    """--responsiveness, one run, the MR on loopback: every figure measured, positive, p95 >= p50."""
    from app.bench.browser import BrowserDriver
    from app.bench.report import MARK
    from app.bench.responsiveness import (ResponsivenessResult, render_responsiveness, run_responsiveness,
                                          write_responsiveness)
    from app.bench.site import find_demo

    demo = find_demo(demo_server.url, demo_data)
    got = run_responsiveness(BrowserDriver(browser=browser), demo, runs=1, profiles=["none"], series=["mr"])
    [row] = got.rows
    assert row.series == demo.stack["name"] and row.profile == "none" and row.runs == 1
    for name in ("load_ms", "longest_task_ms", "input_p50_ms", "input_p95_ms", "inputs"):
        stats = getattr(row, name)
        assert stats is not None and stats.n == 1 and stats.median > 0, name
    assert row.blocking_ms is not None and row.blocking_ms.median >= 0
    assert row.input_p95_ms.median >= row.input_p50_ms.median
    assert row.raw[0]["tasks"] > 0  # the trace saw the renderer's main thread
    assert got.window_level == []  # the drag is on the radiograph only
    [cold] = got.cold
    assert 0 < cold.preview_ms.median < cold.diagnostic_ms.median  # the badged PREVIEW comes first
    assert 0 < cold.first_image_ms.median <= cold.diagnostic_ms.median
    write_responsiveness(got, tmp_path)
    text = (tmp_path / "benchmark-responsiveness.md").read_text()
    assert f"| {demo.stack['name']} | none |" in text and render_responsiveness(got) in text
    again = ResponsivenessResult.from_json(json.loads((tmp_path / "benchmark-responsiveness.json").read_text()))
    assert render_responsiveness(again) == render_responsiveness(got)
    md = tmp_path / "benchmark-responsiveness.md"
    md.write_text("hand-written note\n" + MARK + "\nold table")
    write_responsiveness(again, tmp_path)  # a new run keeps the text above the mark, rewrites the rest
    assert md.read_text().startswith("hand-written note\n" + MARK) and "old table" not in md.read_text()


def test_page_memory_counts_each_part_once_and_survives_json():
    from app.bench.results import PageMemory

    memory = PageMemory(page_js_heap=5, page_buffers=40, worker_js_heap=11, worker_buffers=31, wasm_heap=65,
                        renderer_extra=2, held_pixels=40, held_images=1000, renderer="2d")
    assert memory.total == 5 + 40 + 11 + 31 + 65 + 2  # the pixels held are in page_buffers, not again
    again = PageMemory.from_raw(json.loads(json.dumps(memory.raw())))
    assert again == memory and again.total == memory.total


def test_scale_report_has_page_and_scroll_rows():
    from app.bench.results import PageMemory
    from app.bench.scale import LargeLoadRow, ScaleResult, ScrollRow, render_scale

    peak = PageMemory(page_js_heap=6 << 20, page_buffers=90 << 20, wasm_heap=70 << 20, held_images=174)
    result = ScaleResult("small", "now", {"workers": 2, "cpus": 2, "loadavg": [1.0, 1.0, 1.0]})
    result.loads = [
        LargeLoadRow("ct174", 174, "512x512", "interleavedStack", "seed4g", None, 120.0, 650.0, 9000.0, 8800.0,
                     33_000_000, 33_000_000, 174, 210.5),
        LargeLoadRow("ct174", 174, "512x512", "interleavedStack", "seed4g", None, 140.0, 700.0, 9100.0, 8800.0,
                     33_000_000, 33_000_000, 174, None, engine="page", peak_page_mb=peak.mb(),
                     baseline_page_mb=90.0, memory=peak.raw())]
    result.scrolls = [ScrollRow("ct174", 174, "512x512", 64, "2d", 90.0, 150.0, 160.0, 174, 55.9, 12.3, peak.raw())]
    text = render_scale(result)
    page_row = next(line for line in text.splitlines() if "| page |" in line)
    assert "| 166.0 (90.0) |" in page_row and "| 174/174 |" in page_row
    assert "| ct174 174 x 512x512 | 64 | 2d | 90.0 | 150.0 | 160.0 | 70.0 | 174/174 | 55.9 | 12.3 |" in text
    assert "Page memory = used JS heap" in text
    assert json.loads(json.dumps(result.to_json()))["scrolls"][0]["cache_mb"] == 64
    from app.bench.discovery import DiscoveryRow

    result.discovery = [DiscoveryRow(1000, 1_540_000, 26.0, 17.0, 0.6, 43.6, 5.5)]
    assert "| 1000 | 1540000 | 26.0 | 17.0 | 0.6 | 43.6 | 5.5 |" in render_scale(result)
    assert json.loads(json.dumps(result.to_json()))["discovery"][0]["instances"] == 1000
    from app.bench.discovery import WorkerDiscoveryRow

    result.worker_discovery = [WorkerDiscoveryRow("series1000", "index", 1000, 42_137, 3.0, 2.0, 20.0, 25.0, 80.0, 5.0)]
    text = render_scale(result)
    assert "in the page's worker" in text
    assert "| series1000 | index | 1000 | 42137 | 3.0 | 2.0 | 20.0 | 25.0 | 80.0 | 5.0 |" in text
    assert json.loads(json.dumps(result.to_json()))["worker_discovery"][0]["stack_ms"] == 2.0
    from app.bench.discovery import IndexRow

    result.discovery_index = [IndexRow(1000, 42_137, 2.2, 1.8, 0.9, 4.9, 74.0)]
    assert "| 1000 | 42137 | 2.2 | 1.8 | 0.9 | 4.9 | 74.0 |" in render_scale(result)
