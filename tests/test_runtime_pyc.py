"""The app's compiled twins (tools/runtime/app_pyc.py, tools/setup_runtime.ensure_app_bytecode):
used while their source is unchanged, never after an edit, and rebuilt when a source changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tools" / "runtime"))

from app_pyc import app_bytecode  # noqa: E402

#: Imports ``pkg.mod`` like the worker does (no bytecode written) and says what it ran and
#: whether the interpreter compiled it from source (the same watch as app/ui/worker.mjs).
IMPORT = """
import importlib.machinery as machinery, json, sys
compiled = []
original = machinery.SourceFileLoader.source_to_code
def watched(self, data, path, *a, **k):
    compiled.append(str(path))
    return original(self, data, path, *a, **k)
machinery.SourceFileLoader.source_to_code = watched
import pkg.mod
print(json.dumps({"value": pkg.mod.VALUE, "compiled": compiled}))
"""


def compile_and_unpack(home: Path) -> None:
    """app_pyc.py's job on ``home`` (its sources zipped as set-up does), twins unpacked beside them."""
    sources = home.parent / "sources.zip"
    with zipfile.ZipFile(sources, "w") as zout:
        for path in sorted(home.rglob("*.py")):
            zout.write(path, path.relative_to(home).as_posix())
    stats = app_bytecode(str(sources), str(home.parent / "app.zip"), str(home) + "/")
    assert stats == {"compiled": 2, "failed": 0}
    with zipfile.ZipFile(home.parent / "app.zip") as zin:
        names = zin.namelist()
        zin.extractall(home)
    assert all("/__pycache__/" in name for name in names)


def run_import(home: Path) -> dict:
    done = subprocess.run([sys.executable, "-B", "-c", IMPORT], cwd=home, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def test_twins_are_used_while_sources_are_unchanged_and_never_after_an_edit(tmp_path):
    home = tmp_path / "home"
    (home / "pkg").mkdir(parents=True)
    (home / "pkg" / "__init__.py").write_text("")
    module = home / "pkg" / "mod.py"
    module.write_text("VALUE = 'aaa'\n")
    compile_and_unpack(home)
    assert run_import(home) == {"value": "aaa", "compiled": []}
    # same size, same mtime: only the content hash can tell the twin is stale
    stat = module.stat()
    module.write_text("VALUE = 'bbb'\n")
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fresh = run_import(home)
    assert fresh["value"] == "bbb"
    assert fresh["compiled"] == [str(module)]


def test_a_module_that_does_not_compile_gets_no_twin(tmp_path):
    src = tmp_path / "sources.zip"
    with zipfile.ZipFile(src, "w") as zout:
        zout.writestr("app/good.py", "X = 1\n")
        zout.writestr("app/bad.py", "def (:\n")
    stats = app_bytecode(str(src), str(tmp_path / "app.zip"), "/home/pyodide/")
    assert stats == {"compiled": 1, "failed": 1}
    with zipfile.ZipFile(tmp_path / "app.zip") as zin:
        assert [n.split("/")[-1].split(".")[0] for n in zin.namelist()] == ["good"]


def test_set_up_compiles_again_when_a_source_changes(tmp_path, runtime):
    """The key rule, with the real Pyodide under Node: same sources -> same zip, left alone;
    an edited source -> another key and a zip of its own; the edited twin has the new hash."""
    from tools.setup_runtime import APP_PYC_DIR, app_key, app_sources, ensure_app_bytecode

    project = tmp_path / "project"
    (project / "app").mkdir(parents=True)
    (project / "app" / "__init__.py").write_text("")
    (project / "app" / "a.py").write_text("A = 1\n")
    (project / "pyscript.toml").write_text(
        '[engine.files]\n"./app/__init__.py" = "./app/__init__.py"\n"./app/a.py" = "./app/a.py"\n')
    static = tmp_path / "static"
    built = ensure_app_bytecode(project=project, static=static)
    assert built == static / APP_PYC_DIR / f"{app_key(app_sources(project))}.zip"
    with zipfile.ZipFile(built) as zin:
        assert sorted(zin.namelist()) == ["app/__pycache__/__init__.cpython-314.pyc",
                                          "app/__pycache__/a.cpython-314.pyc"]
        pyc = zin.read("app/__pycache__/a.cpython-314.pyc")
    assert int.from_bytes(pyc[4:8], "little") == 0b11  # hash-based, checked
    mtime = built.stat().st_mtime_ns
    assert ensure_app_bytecode(project=project, static=static) == built
    assert built.stat().st_mtime_ns == mtime  # current: left alone
    (project / "app" / "a.py").write_text("A = 2\n")
    rebuilt = ensure_app_bytecode(project=project, static=static)
    assert rebuilt != built and rebuilt.name == f"{app_key(app_sources(project))}.zip"
    with zipfile.ZipFile(rebuilt) as zin:
        assert zin.read("app/__pycache__/a.cpython-314.pyc")[8:16] != pyc[8:16]  # new source hash
