"""Phones, small windows, keyboard and the URL (Chromium): touch gestures on the image, a drawer
sidebar, focus back on the viewport after menus, the view state in the URL with back/forward."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from conftest import wait_for_app_state
from test_viewer import demo_entry

pytestmark = pytest.mark.browser


def slice_number(p) -> int:
    return int(p.inner_text("#overlay-tl").split()[1])


def zoom(p) -> float:
    return float(p.inner_text("#overlay-bl").split("zoom")[1])


def touch(cdp, kind: str, points: list[tuple[float, float]]) -> None:
    cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
        {"x": x, "y": y, "id": i, "radiusX": 2, "radiusY": 2, "force": 1} for i, (x, y) in enumerate(points)]})


@pytest.fixture
def phone(browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True,
                                  device_scale_factor=1)
    page = context.new_page()
    yield page
    context.close()


def test_phone_image_takes_the_screen_and_touch_scrolls_and_zooms(phone, demo_server, demo_data):
    p = phone
    p.goto(f"{demo_server.url}/?url={quote(demo_entry(demo_data, 'MR')['url'])}")
    p.wait_for_function("['idle', 'error'].includes(document.documentElement.dataset.app)", timeout=90_000)
    assert p.evaluate("document.documentElement.dataset.app") == "idle"
    box = p.locator("#viewport").bounding_box()
    assert box["width"] >= 0.9 * 390 and box["height"] >= 300
    for selector in ("#load", "#url", "#series", "#drawer", "#invert", "#tool", "#slider"):
        b = p.locator(selector).bounding_box()
        assert b and b["x"] >= 0 and b["x"] + b["width"] <= 390 and b["y"] + b["height"] <= 844, selector
    assert p.is_hidden("#sidebar")  # a drawer, closed on a phone; it opens and closes again
    p.click("#drawer")
    assert p.is_visible("#sidebar")
    p.click("#drawer")
    assert p.is_hidden("#sidebar")
    if p.get_attribute("#tool", "data-tool") != "scroll":
        p.click("#tool")
    assert p.get_attribute("#tool", "data-tool") == "scroll"
    cdp = p.context.new_cdp_session(p)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before = slice_number(p)
    touch(cdp, "touchStart", [(cx, cy + 100)])
    for dy in range(100, -101, -20):  # one finger up the screen
        touch(cdp, "touchMove", [(cx, cy + dy)])
    touch(cdp, "touchEnd", [])
    p.wait_for_timeout(200)
    assert slice_number(p) != before, "a swipe did not change the slice"
    zoom_before = zoom(p)
    touch(cdp, "touchStart", [(cx - 30, cy), (cx + 30, cy)])
    for spread in range(30, 151, 15):  # two fingers apart
        touch(cdp, "touchMove", [(cx - spread, cy), (cx + spread, cy)])
    touch(cdp, "touchEnd", [])
    p.wait_for_timeout(200)
    assert zoom(p) > zoom_before * 1.5, "a pinch did not zoom the image"
    assert p.evaluate("window.visualViewport.scale") == 1, "the page zoomed instead of the image"
    assert not p.query_selector_all(".py-error")
    p.screenshot(path=str(demo_server.server.mounts.project_root / "test-artifacts" / "viewer-phone.png"))


def test_controls_reachable_at_800px(browser, demo_server):
    context = browser.new_context(viewport={"width": 800, "height": 600})
    p = context.new_page()
    try:
        p.goto(f"{demo_server.url}/?noload=1")
        p.wait_for_function("document.documentElement.dataset.app === 'ready'", timeout=90_000)
        for selector in ("#load", "#url", "#invert", "#reset", "#fit", "#tool", "#slider", "#drawer", "#help"):
            b = p.locator(selector).bounding_box()
            assert b and b["x"] >= 0 and b["x"] + b["width"] <= 800 and b["y"] + b["height"] <= 600, selector
    finally:
        context.close()


def test_keys_after_menus_url_state_and_history(page, demo_server, demo_data):
    mr, cr = demo_entry(demo_data, "MR"), demo_entry(demo_data, "CR")
    p = page.page
    p.goto(f"{demo_server.url}/?url={quote(mr['url'])}")
    wait_for_app_state(page, ("idle",))
    p.select_option("#series", cr["url"])  # the series menu, then arrows: the slice, not the menu
    wait_for_app_state(page, ("idle",))
    p.keyboard.press("Escape")
    p.select_option("#series", mr["url"])
    wait_for_app_state(page, ("idle",))
    start = slice_number(p)
    p.keyboard.press("ArrowDown")
    p.wait_for_timeout(150)
    assert slice_number(p) == start + 1
    assert p.input_value("#series") == mr["url"], "the arrow changed the series menu"
    query = parse_qs(urlsplit(p.url).query)
    assert query["url"][0].endswith(mr["url"]) and query["slice"] == [str(start + 1)]
    assert "wl" in query and "zoom" in query
    p.go_back()  # back: the CR series again
    p.wait_for_function(f"document.getElementById('study-info').textContent.includes('CR')", timeout=30_000)
    wait_for_app_state(page, ("idle",))
    assert p.inner_text("#overlay-tl").startswith("Image 1 / 1")
    p.go_forward()
    p.wait_for_function("document.getElementById('overlay-tl').textContent.includes('/ 20')", timeout=30_000)
    # '?' shows the shortcuts
    p.focus("#viewport")
    p.keyboard.press("?")
    assert p.is_visible("#shortcuts") and "invert" in p.inner_text("#shortcuts")


def test_deep_links_are_checked_and_not_saved(page, demo_server, demo_data):
    p = page.page
    p.goto(f"{demo_server.url}/?noload=1")
    wait_for_app_state(page, ("ready",))
    p.select_option("#preset", "jls")
    p.wait_for_function("document.getElementById('config-status').textContent === 'applied'")
    saved = p.evaluate("localStorage.getItem('progressive-dicom.retrieveConfig')")
    p.goto(f"{demo_server.url}/?noload=1&config=htj2kByteRange&cacheMB=abc")
    wait_for_app_state(page, ("ready",))
    assert p.input_value("#preset") == "htj2kByteRange"
    assert "cacheMB=abc" in p.inner_text("#errors")
    assert p.evaluate("localStorage.getItem('progressive-dicom.retrieveConfig')") == saved
    p.goto(f"{demo_server.url}/?noload=1&config=nosuchpreset")
    wait_for_app_state(page, ("ready",))
    assert "Unknown preset 'nosuchpreset'" in p.inner_text("#errors")
    assert json.loads(saved)["preset"] == p.input_value("#preset") == "jls"
