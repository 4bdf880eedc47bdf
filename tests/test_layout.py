"""The page's configuration stays in step with the package it loads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def test_every_app_module_is_shipped_to_the_browser():
    config = tomllib.loads((PROJECT / "pyscript.toml").read_text())
    shipped = {Path(src).as_posix().removeprefix("./") for src in config["files"]}
    modules = {p.relative_to(PROJECT).as_posix() for p in (PROJECT / "app").rglob("*.py")}
    browser_only_entry = {"app/main.py"}  # loaded by the <script type="py"> tag itself
    cpython_only = {"app/convert.py", "app/convert_pool.py", "app/convert_dask.py", "app/thumbnails.py", "app/cli.py", "app/check.py", "app/__main__.py",
                    "app/transport/native.py", "app/transport/framing.py", "app/transport/mock.py"}
    cpython_only |= {m for m in modules if m.startswith("app/bench/")}  # the benchmark package
    assert modules - shipped - browser_only_entry - cpython_only == set()
    assert shipped <= modules


def test_runtime_comes_from_local_files_only():
    config = tomllib.loads((PROJECT / "pyscript.toml").read_text())
    assert config["interpreter"].startswith("./static/")
    assert all(p.startswith("./static/wheels/") for p in config["packages"])
    html = (PROJECT / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html)


def test_the_lazily_loaded_pydicom_wheel_is_the_one_set_up_lays_out():
    from tools.setup_runtime import WHEEL_PYDICOM

    page = (PROJECT / "app" / "page.py").read_text()
    (wheel,) = re.findall(r'^PYDICOM_WHEEL = "\./static/wheels/([^"]+)"', page, re.M)
    assert wheel == WHEEL_PYDICOM.filename
