"""Issue 14.4 in the page: ~40 KB of nested metadata JSON overflowed the browser's stack inside
Pyodide and left the page on "Loading study…" until a reload. Now the nesting is refused before
the parser runs (dicomjson.check_shape), the page says why, and the next study loads."""

from __future__ import annotations

import json
import os
import shutil
from urllib.parse import quote

import pytest

from conftest import wait_for_app_state

pytestmark = pytest.mark.browser

DEEP = "studies/1.2.3/series/1.2.3.4"


def test_deeply_nested_metadata_fails_clearly_and_the_page_recovers(page, runtime, demo_data, serve_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_data, root, copy_function=os.link)  # hard links: the demo tree is never written
    (root / DEEP).mkdir(parents=True)
    (root / DEEP / "metadata").write_bytes(b"[" * 40_000 + b"]" * 40_000)
    server = serve_dir(root)
    good = next(e for e in json.loads((root / "demo.json").read_text()) if "MR" in e["name"])["url"]

    page.page.goto(f"{server.url}/?url={quote(server.url + '/dicomweb/' + DEEP)}&config=htj2k")
    said = ("() => (document.querySelector('#errors').innerText + ' '"
            " + document.querySelector('#status').innerText).includes('nested more than')")
    try:
        page.page.wait_for_function(said, timeout=120_000)
    except Exception as exc:  # noqa: BLE001 - the page's story is the useful failure message
        raise AssertionError(f"no clear message: {page.page.inner_text('#status')!r} "
                             f"{page.page.inner_text('#errors')!r} {page.console[-10:]} {page.errors}") from exc
    assert page.errors == []

    page.page.fill("#url", good)
    page.page.press("#url", "Enter")
    wait_for_app_state(page, ("idle",), 120_000)
    finals = [e for e in page.page.evaluate("Array.from(window.renderLog)") if e["final"]]
    assert finals, page.console[-10:]
