"""Lay out the browser runtime under ``static/`` so the page never needs a CDN.

Pieces come from the registries this project may use (npm and PyPI) with pinned versions and
sha256 checks; numpy for Pyodide comes from ``tools/wheels/`` (built by
``tools/build_numpy_wasm.sh``, no registry has one). Downloads are cached in ``.cache/downloads``.

    python tools/setup_runtime.py [--force]

Result::

    static/pyodide/   pyodide.mjs, pyodide.asm.mjs, pyodide.asm.wasm, python_stdlib.zip, pyodide-lock.json
    static/pyscript/  core.js, core.css and the chunks they import
    static/wheels/    numpy, imagecodecs (wasm32), pydicom
    static/micropython/  micropython.mjs, micropython.wasm (the page's main thread; Pyodide runs in a worker)

Then the stdlib zip and the wheels are *slimmed* for a fast start (``tools/runtime/slim.py``, run
inside Pyodide under Node by ``tools/runtime/compile.mjs``): every ``.py`` becomes sourceless
bytecode compiled by the page's own interpreter (Pyodide ships sources only and never writes
bytecode, so each start compiled every imported module again), and files the viewer never uses
are dropped (imagecodecs' other codecs, numpy.random/fft, typing stubs, pydicom's test files).
Navigation to ready went from 4.6 s to 2.4 s on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
CACHE = PROJECT / ".cache" / "downloads"
STATIC = PROJECT / "static"
STAMP_VERSION = 4

PYODIDE_VERSION = "314.0.7"
PYSCRIPT_VERSION = "0.7.31"
#: The MicroPython PyScript 0.7.31 asks for by default (its core.js names this version).
MICROPYTHON_VERSION = "1.28.0-6"


@dataclass(frozen=True)
class Artifact:
    """One pinned download: how to get it and the sha256 it must have."""

    filename: str
    sha256: str
    fetch: tuple[str, ...]  # command run in CACHE; None-like empty for local files


NPM_PYODIDE = Artifact(
    f"pyodide-{PYODIDE_VERSION}.tgz",
    "66b7949e5a0cba2250b586d7e368bf12fb482800748d182c4618254b685ffaa0",
    ("npm", "pack", "--silent", f"pyodide@{PYODIDE_VERSION}"),
)
NPM_PYSCRIPT = Artifact(
    f"pyscript-core-{PYSCRIPT_VERSION}.tgz",
    "b2ca1a0c0956aebd990a7c8524cca1eb061444a8319a7264d2f31ef30bea276a",
    ("npm", "pack", "--silent", f"@pyscript/core@{PYSCRIPT_VERSION}"),
)
NPM_MICROPYTHON = Artifact(
    f"micropython-micropython-webassembly-pyscript-{MICROPYTHON_VERSION}.tgz",
    "1f22644874da319a46bf607840d518cca320d67b16b21fb2633cd1147a7a198b",
    ("npm", "pack", "--silent", f"@micropython/micropython-webassembly-pyscript@{MICROPYTHON_VERSION}"),
)
#: Files of the MicroPython package the page's main thread needs (no ulab, no settrace build).
MICROPYTHON_FILES = ("micropython.mjs", "micropython.wasm")
WHEEL_PYDICOM = Artifact(
    "pydicom-3.0.2-py3-none-any.whl",
    "abf971a5440f84dbaf42c4b6758e30e62480902584f8b270b9a5d146e278a07b",
    (sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
     "pydicom==3.0.2", "-d", "."),
)
WHEEL_IMAGECODECS = Artifact(
    "imagecodecs-2026.10.10-cp312-abi3-pyemscripten_2026_0_wasm32.whl",
    "e9518d868cd862d17c9cb721435054c54671e30a01d385a8e263d07c2bbb83b8",
    (sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
     "--platform", "pyemscripten_2026_0_wasm32", "--python-version", "3.14",
     "--implementation", "cp", "--abi", "cp314", "imagecodecs==2026.10.10", "-d", "."),
)
NUMPY_WHEEL = "numpy-2.4.6-cp314-cp314-pyemscripten_2026_0_wasm32.whl"

#: Files of the npm pyodide package the page needs (the rest are docs, maps and typings).
PYODIDE_FILES = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip",
                 "pyodide-lock.json", "package.json")

#: Wheels in the order the page loads them (numpy before imagecodecs, which needs it).
WHEELS = (NUMPY_WHEEL, WHEEL_IMAGECODECS.filename, WHEEL_PYDICOM.filename)

#: imagecodecs extension modules the viewer's codecs need (app/codecs.py); the others are dropped.
#: ``_imcd`` stays out on purpose: its PackBits-based codecs (DICOMRLE among them) need symbols
#: Pyodide lacks and would abort the interpreter; DICOM RLE falls back to pydicom.
IMAGECODECS_MODULES = ("_shared", "_htj2k", "_jpeg2k", "_jpeg8", "_jpegls", "_ljpeg")

#: What slim.py does per zip: ``prefix`` is where Pyodide puts the files (for code objects'
#: file names); ``drop``/``keep`` are fnmatch patterns.
SITE = "/lib/python3.14/site-packages/"
SLIM_JOBS = {
    # stored, not deflated: zipimport reads it without inflating and serve.py sends its gzip twin
    "python_stdlib.zip": {"prefix": "/lib/python314.zip/", "store": True},
    NUMPY_WHEEL: {"prefix": SITE, "drop": ["*.pyi", "numpy/random/*", "numpy/fft/*", "numpy/f2py/*",
                                           "numpy/_pyinstaller/*", "numpy/testing/_private/*"]},
    WHEEL_IMAGECODECS.filename: {
        "prefix": SITE,
        "drop": ["*.pyi", "imagecodecs/_*.so", "imagecodecs/numcodecs.py", "imagecodecs/zarr.py"],
        "keep": [f"imagecodecs/{m}.*.so" for m in IMAGECODECS_MODULES],
    },
    WHEEL_PYDICOM.filename: {"prefix": SITE, "drop": ["pydicom/data/test_files/*"]},
}
SLIM_TOOLS = (PROJECT / "tools" / "runtime" / "slim.py", PROJECT / "tools" / "runtime" / "compile.mjs")

#: Runtime assets worth storing pre-compressed next to the original (serve.py sends them gzipped).
PRECOMPRESS_SUFFIXES = (".wasm", ".mjs", ".js", ".css", ".zip", ".json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(artifact: Artifact) -> Path:
    """Return the cached download, fetching it with the registry's own client if missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / artifact.filename
    if not path.exists():
        print(f"setup: fetching {artifact.filename}", flush=True)
        subprocess.run(artifact.fetch, cwd=CACHE, check=True)
        if not path.exists():
            raise SystemExit(f"setup: {' '.join(artifact.fetch)} did not produce {artifact.filename}")
    actual = sha256_of(path)
    if actual != artifact.sha256:
        path.unlink()
        raise SystemExit(f"setup: {artifact.filename} has sha256 {actual}, expected {artifact.sha256}")
    return path


def numpy_wheel() -> Path:
    """The committed numpy wheel, checked against tools/wheels/SHA256SUMS."""
    wheels = PROJECT / "tools" / "wheels"
    path = wheels / NUMPY_WHEEL
    sums = {}
    sums_file = wheels / "SHA256SUMS"
    if sums_file.exists():
        for line in sums_file.read_text().splitlines():
            if line.strip():
                digest, name = line.split(maxsplit=1)
                sums[name.lstrip("*")] = digest
    if not path.exists():
        raise SystemExit(f"setup: {path} is missing (build it with tools/build_numpy_wasm.sh)")
    expected = sums.get(NUMPY_WHEEL)
    if expected and sha256_of(path) != expected:
        raise SystemExit(f"setup: {path} does not match tools/wheels/SHA256SUMS")
    return path


def extract_npm(tgz: Path, dest: Path, wanted) -> None:
    """Copy selected members of an npm tarball (under ``package/``) flat into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            rel = member.name.removeprefix("package/")
            target = wanted(rel)
            if target is None:
                continue
            out = dest / target
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst)


def precompress(root: Path) -> None:
    """Write ``X.gz`` beside each compressible runtime file so serve.py never gzips at request time."""
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in PRECOMPRESS_SUFFIXES:
            gz = path.with_name(path.name + ".gz")
            if gz.exists() and gz.stat().st_mtime >= path.stat().st_mtime:
                continue
            data = path.read_bytes()
            tmp = gz.with_name(gz.name + ".tmp")
            tmp.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
            tmp.replace(gz)


def stamp_contents() -> dict:
    return {
        "version": STAMP_VERSION,
        "pyodide": NPM_PYODIDE.sha256,
        "pyscript": NPM_PYSCRIPT.sha256,
        "wheels": [WHEEL_PYDICOM.sha256, WHEEL_IMAGECODECS.sha256,
                   sha256_of(numpy_wheel())],
        "slim": hashlib.sha256(json.dumps(SLIM_JOBS, sort_keys=True).encode()
                               + b"".join(p.read_bytes() for p in SLIM_TOOLS)).hexdigest(),
    }


def slim(targets: dict[str, Path]) -> list[dict]:
    """Rewrite ``targets`` (zip name -> path in static/) in place with tools/runtime/slim.py."""
    work = PROJECT / ".cache" / "runtime-slim"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    items = []
    for name, path in targets.items():
        shutil.copyfile(path, work / ("in-" + name))
        items.append({"src": f"/work/in-{name}", "dst": f"/work/{name}", **SLIM_JOBS[name]})
    (work / "job.json").write_text(json.dumps({"items": items}))
    node = shutil.which("node")
    if node is None:
        raise SystemExit("setup: Node.js is needed to prepare the runtime (apt install nodejs)")
    done = subprocess.run([node, str(SLIM_TOOLS[1]), str(STATIC / "pyodide"), str(work)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"setup: slimming the runtime failed:\n{done.stdout}{done.stderr}")
    results = json.loads((work / "job.result.json").read_text())
    for name, path in targets.items():
        (work / name).replace(path)
        path.chmod(0o644)
    shutil.rmtree(work, ignore_errors=True)
    return results


def stamp_is(stamp: Path, wanted: dict) -> bool:
    """True when a set-up stamp file holds exactly ``wanted`` (missing or unreadable: False)."""
    try:
        return json.loads(stamp.read_text()) == wanted
    except (OSError, ValueError):
        return False


def ensure_micropython(force: bool = False) -> Path:
    """static/micropython/: the page's main-thread interpreter. Its own stamp, so that checkouts
    that do not know it yet never see ``runtime.json`` change (and never lay out static/ again)."""
    dest = STATIC / "micropython"
    stamp = dest / "stamp.json"
    wanted = {"micropython": NPM_MICROPYTHON.sha256}
    if not force and stamp_is(stamp, wanted):
        return dest
    tmp = STATIC / "micropython.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    extract_npm(fetch(NPM_MICROPYTHON), tmp, lambda rel: rel if rel in MICROPYTHON_FILES else None)
    precompress(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    stamp.write_text(json.dumps(wanted))
    return dest


def ensure_runtime(force: bool = False) -> Path:
    """Make ``static/`` hold the runtime; a no-op when the stamps say it is current."""
    ensure_micropython(force)
    stamp = STATIC / "runtime.json"
    wanted = stamp_contents()
    if not force and stamp_is(stamp, wanted):
        return STATIC
    started = time.perf_counter()
    pyodide_tgz = fetch(NPM_PYODIDE)
    pyscript_tgz = fetch(NPM_PYSCRIPT)
    wheel_paths = [numpy_wheel(), fetch(WHEEL_IMAGECODECS), fetch(WHEEL_PYDICOM)]

    for sub in ("pyodide", "pyscript", "wheels"):
        shutil.rmtree(STATIC / sub, ignore_errors=True)
    extract_npm(pyodide_tgz, STATIC / "pyodide", lambda rel: rel if rel in PYODIDE_FILES else None)

    def pyscript_member(rel: str) -> str | None:
        if rel.startswith("dist/") and rel.endswith((".js", ".css")):
            return rel.removeprefix("dist/")
        return None

    extract_npm(pyscript_tgz, STATIC / "pyscript", pyscript_member)
    (STATIC / "wheels").mkdir(parents=True, exist_ok=True)
    for path in wheel_paths:
        shutil.copyfile(path, STATIC / "wheels" / path.name)
    targets = {"python_stdlib.zip": STATIC / "pyodide" / "python_stdlib.zip"}
    targets.update({path.name: STATIC / "wheels" / path.name for path in wheel_paths})
    for result in slim(targets):
        print(f"setup: slimmed {result['src'].removeprefix('/work/in-')}: {result['compiled']} modules "
              f"compiled, {result['dropped']} files dropped", flush=True)
    precompress(STATIC / "pyodide")
    precompress(STATIC / "pyscript")
    stamp.write_text(json.dumps(wanted, indent=1))
    print(f"setup: runtime ready in {STATIC} ({time.perf_counter() - started:.1f} s)", flush=True)
    return STATIC


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="lay out static/ again")
    args = parser.parse_args(argv)
    ensure_runtime(force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
