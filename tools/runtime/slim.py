"""Rewrite a zip (the stdlib zip or a wheel) for a fast Pyodide start. Runs inside Pyodide.

Pyodide starts with ``sys.dont_write_bytecode`` set and its npm stdlib zip holds only sources, so
every module the page imports is compiled from source at every start (about 2 s of a 4.5 s cold
start on a 2-core machine). Each ``X.py`` becomes a sourceless ``X.pyc`` (the legacy layout that
zipimport and FileFinder load without a source), compiled by this very interpreter. Files the
page never needs can be dropped (``drop``: fnmatch patterns), which also shrinks what Pyodide
unpacks and, for extension modules, what it compiles and links at start.

job.json: {"items": [{"src", "dst", "prefix", "drop": [...], "keep": [...], "keep_source": [...]}]}
(``keep`` patterns override ``drop``; ``keep_source`` files stay ``.py``; ``store``: no deflate
inside the zip, for a file the server sends gzipped anyway.)
"""

import base64
import fnmatch
import hashlib
import importlib._bootstrap_external as _bx
import json
import zipfile


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim(src: str, dst: str, prefix: str, drop=(), keep=(), keep_source=(), store=False) -> dict:
    stats = {"compiled": 0, "kept": 0, "dropped": 0, "bytes_in": 0, "bytes_out": 0}
    record_name = None
    records = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            name = info.filename
            data = zin.read(info)
            stats["bytes_in"] += len(data)
            if (any(fnmatch.fnmatch(name, pattern) for pattern in drop)
                    and not any(fnmatch.fnmatch(name, pattern) for pattern in keep)):
                stats["dropped"] += 1
                continue
            if name.endswith(".dist-info/RECORD"):
                record_name = (name, info)
                continue
            if name.endswith(".py") and not any(fnmatch.fnmatch(name, p) for p in keep_source):
                try:
                    code = compile(data, prefix + name, "exec", dont_inherit=True, optimize=0)
                except SyntaxError:
                    code = None  # leave it as source: importing it fails the same way it would have
                if code is not None:
                    name = name + "c"
                    data = bytes(_bx._code_to_timestamp_pyc(code, 0, len(data)))
                    stats["compiled"] += 1
            else:
                stats["kept"] += 1
            out = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            out.compress_type = zipfile.ZIP_STORED if store else info.compress_type
            out.external_attr = info.external_attr
            zout.writestr(out, data)
            stats["bytes_out"] += len(data)
            records.append(_record_line(name, data))
        if record_name is not None:  # a wheel: its RECORD lists what it now holds
            name, info = record_name
            records.append(f"{name},,")
            out = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            out.compress_type = info.compress_type
            zout.writestr(out, "\n".join(records) + "\n")
    return stats


def main(job_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    results = []
    for item in job["items"]:
        stats = slim(item["src"], item["dst"], item["prefix"], item.get("drop", ()),
                     item.get("keep", ()), item.get("keep_source", ()), item.get("store", False))
        results.append({"src": item["src"], **stats})
    with open(job_path.replace(".json", ".result.json"), "w") as f:
        json.dump(results, f, indent=1)
