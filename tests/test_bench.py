"""The benchmark's CPython engine mode on the demo radiograph: every mode, real numbers, no thresholds."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from app import bench

FRAME = re.compile(r"/instances/[^/]+/[^/]+/\d+$")


@pytest.fixture(scope="module")
def live(demo_data, serve_dir):
    return serve_dir(demo_data)


@pytest.fixture(scope="module")
def result(live):
    mark = len(live.log)
    got = bench.run_bench(engine="cpython", runs=1, profiles=["none"], server=live.server)
    time.sleep(0.1)
    got["_served_frame_bytes"] = sum(r["bytes_sent"] for r in list(live.log)[mark:] if FRAME.search(r["path"]))
    return got


def test_every_mode_has_a_row_with_a_lossless_final(result):
    assert [r["mode"] for r in result["rows"]] == list(bench.MODES)
    for row in result["rows"]:
        assert row["profile"] == "none" and row["runs"] == 1
        assert row["final_status"] == "FULL_RESOLUTION", row["mode"]
        assert row["final_size"] == "3072x2614"
        assert row["final_image_ms"]["median"] > 0
        assert row["final_decode_ms"]["median"] > 0
        if row["progressive"]:
            assert 0 < row["first_image_ms"]["median"] <= row["final_image_ms"]["median"]
            assert row["first_bytes"]["median"] < row["size"]
    progressive = {r["mode"] for r in result["rows"] if r["progressive"]}
    assert progressive == {"jlsReduced", "htj2k", "htj2kByteRange"}


def test_bytes_moved_are_what_the_server_sent(result, live):
    files = result["image"]["files"]
    expected = {"jls": files["jls"], "jlsReduced": files["jls"] + files["jlsThumbnail"],
                "htj2k": files["frames"], "htj2kByteRange": files["frames"], "nonProgressive": files["frames"]}
    for row in result["rows"]:
        assert row["bytes_moved"]["median"] == expected[row["mode"]], row["mode"]
        final = next(e for e in row["raw"][0]["renderLog"] if e["final"])
        assert final["bytes"] == row["bytes_moved"]["median"]  # what the engine says it received
    assert result["rows"][3]["frame_requests"]["median"] >= 2  # byte range: a first range, then the rest
    moved = sum(r["bytes_moved"]["median"] for r in result["rows"])
    moved += sum(s["bytes_moved"]["median"] for s in result["stack"])
    assert moved == result["_served_frame_bytes"]


def test_stack_rows_reach_every_slice(result):
    assert [s["preset"] for s in result["stack"]] == list(bench.STACK_PRESETS)
    for s in result["stack"]:
        assert s["slices"] == 20
        assert s["raw"][0]["slices_lossless"] == 20
        assert 0 < s["all_something_ms"]["median"] <= s["all_lossless_ms"]["median"]
        assert s["bytes_moved"]["median"] == s["lossless_bytes"]


def test_native_decode_and_markdown(result):
    assert result["decode"]["native"]["HTJ2K"]["median"] > 0
    text = bench.render_markdown(result)
    for label, *_ in bench.MODES.values():
        assert f"| {label} | none |" in text
    assert "interleavedStack" in text


def test_throttle_proxy_delays_and_passes_bytes(live, result):
    from app.transport.native import NativeTransport

    host, port = live.server.server_address[:2]
    size = result["image"]["files"]["jlsThumbnail"]
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
