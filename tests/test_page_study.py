"""The study browser (Chromium): a study's series listed from its QIDO series list, each loadable."""

from __future__ import annotations

import json
import shutil
from urllib.parse import quote

import pytest

from conftest import wait_for_app_state

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def three_series_study(demo_data, tmp_path_factory):
    """One study holding the three demo series (copied), with its series list (index.json)."""
    root = tmp_path_factory.mktemp("study")
    study = "1.2.826.0.1.3680043.8.498.1"
    listing = []
    for entry in json.loads((demo_data / "demo.json").read_text()):
        source = demo_data / entry["url"].removeprefix("/dicomweb/")
        shutil.copytree(source, root / "studies" / study / "series" / source.name)
        listing += json.loads((source.parent / "index.json").read_text())
    (root / "studies" / study / "series" / "index.json").write_text(json.dumps(listing))
    return root, study, listing


def test_the_study_browser_lists_every_series_and_loads_one(page, runtime, serve_dir, three_series_study):
    root, study, listing = three_series_study
    live = serve_dir(root)
    uids = [s["0020000E"]["Value"][0] for s in listing]
    p = page.page
    p.goto(f"{live.url}/?url={quote(f'/dicomweb/studies/{study}/series/{uids[1]}')}")
    wait_for_app_state(page, ("idle",))
    p.wait_for_function("document.querySelectorAll('#series-list .series-item').length === 3", timeout=30_000)
    items = p.eval_on_selector_all("#series-list .series-item", "l => l.map(e => [e.dataset.url, e.textContent])")
    assert [url.rsplit("/", 1)[1] for url, _ in items] == uids
    assert any("MR" in text and "20 images" in text for _, text in items)
    p.wait_for_function("Array.from(document.querySelectorAll('#series-list img')).every(i => i.complete)")
    sizes = p.eval_on_selector_all("#series-list .series-item img", "l => l.map(i => i.naturalWidth)")
    assert len(sizes) == 3 and all(w > 0 for w in sizes), "the tree's rendered thumbnails are shown"
    assert p.eval_on_selector("#series", "s => s.querySelector('optgroup').children.length") == 3
    assert p.input_value("#series").endswith(uids[1])
    mr = next(url for url, text in items if "MR" in text)
    p.click(f"#series-list .series-item[data-url='{mr}']")
    p.wait_for_function("document.getElementById('overlay-tl').textContent.includes('/ 20')", timeout=30_000)
    wait_for_app_state(page, ("idle",))
    assert "MR" in p.inner_text("#study-info")
    assert p.input_value("#series") == mr
    assert not p.query_selector_all(".py-error")
    # the "opened" message came as JSON text (slider, overlay above); the worker's own figures of
    # that discovery went to appTimings for the benchmark
    work = p.evaluate("window.appTimings.discovery")
    assert work["images"] == 20 and min(work["parse_ms"], work["stack_ms"], work["to_first_request_ms"]) >= 0
