"""The page's configuration stays in step with the package it loads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
CPYTHON_ONLY = {"app/convert.py", "app/convert_pool.py", "app/convert_dask.py", "app/thumbnails.py",
                "app/cli.py", "app/check.py", "app/__main__.py", "app/transport/native.py",
                "app/transport/framing.py", "app/transport/mock.py"}


def _config() -> dict:
    return tomllib.loads((PROJECT / "pyscript.toml").read_text())


def _shipped(table: dict) -> set[str]:
    return {Path(src).as_posix().removeprefix("./") for src in table}


def test_every_app_module_is_shipped_to_the_browser():
    """Each module under app/ runs in the page's main thread (MicroPython, [files]) or in the
    engine's worker (Pyodide, [engine.files]): both lists are what the browser gets."""
    config = _config()
    main, worker = _shipped(config["files"]), _shipped(config["engine"]["files"])
    modules = {p.relative_to(PROJECT).as_posix() for p in (PROJECT / "app").rglob("*.py")}
    entry = {"app/ui/main.py"}  # loaded by the <script type="mpy"> tag itself
    cpython_only = CPYTHON_ONLY | {m for m in modules if m.startswith("app/bench/")}  # the benchmark package
    assert modules - main - worker - entry - cpython_only == set()
    assert main | worker <= modules
    assert not {m for m in main if m.startswith("app/ui/")} & worker, "UI modules stay on the main thread"


def test_main_thread_modules_are_micropython_sized():
    """The main thread imports nothing heavy: no numpy, no engine, no dataclasses."""
    for module in _shipped(_config()["files"]):
        text = (PROJECT / module).read_text()
        assert not re.search(r"^\s*(import|from)\s+(numpy|dataclasses|typing|app\.(engine|config|study|codecs))\b",
                             text, re.M), module


def test_runtime_comes_from_local_files_only():
    config = _config()
    assert config["interpreter"].startswith("./static/")
    assert config["engine"]["interpreter"].startswith("./static/")
    assert all(p.startswith("./static/wheels/") for p in config["engine"]["packages"])
    html = (PROJECT / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "no inline script (CSP script-src 'self')"
    for script in (PROJECT / "app" / "ui").glob("*.mjs"):
        assert not re.search(r"""(import|from)\s*\(?\s*["']https?://""", script.read_text()), script


def test_the_lazily_loaded_pydicom_wheel_is_the_one_set_up_lays_out():
    from tools.setup_runtime import WHEEL_PYDICOM

    assert _config()["engine"]["pydicom"] == f"./static/wheels/{WHEEL_PYDICOM.filename}"
