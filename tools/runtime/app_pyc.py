"""Compile the viewer's own worker modules for a fast start. Runs inside Pyodide (app_pyc.mjs).

Like the stdlib (slim.py), the app's modules would otherwise be compiled from source at every
start. Unlike the stdlib, their sources stay in the worker's file system and the zip holds only
their ``__pycache__`` twins, as *checked* hash-based pycs (PEP 552): the interpreter uses a twin
only while its source is byte-for-byte the one it was made from, so an edit made after set-up
(or another checkout sharing static/) is compiled from source as before, never run stale.

job.json: {"src": zip of the sources laid out as in the worker, "dst": zip to write,
"prefix": where the worker puts them}. Plain Python: CPython can run it too (tests do).
"""

import importlib._bootstrap_external as _bx
import importlib.util
import json
import zipfile


def app_bytecode(src: str, dst: str, prefix: str) -> dict:
    """Write ``dst``: a checked hash-based pyc for each ``.py`` in ``src`` at its __pycache__ path."""
    stats = {"compiled": 0, "failed": 0}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in sorted(n for n in zin.namelist() if n.endswith(".py")):
            data = zin.read(name)
            try:
                code = compile(data, prefix + name, "exec", dont_inherit=True, optimize=0)
            except SyntaxError:
                stats["failed"] += 1  # no twin: importing it reports the error as it always did
                continue
            pyc = _bx._code_to_hash_pyc(code, importlib.util.source_hash(data), checked=True)
            out = zipfile.ZipInfo(_bx.cache_from_source(prefix + name)[len(prefix):],
                                  date_time=(1980, 1, 1, 0, 0, 0))
            out.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(out, bytes(pyc))
            stats["compiled"] += 1
    return stats


def main(job_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    stats = app_bytecode(job["src"], job["dst"], job["prefix"])
    with open(job_path.replace(".json", ".result.json"), "w") as f:
        json.dump(stats, f)
