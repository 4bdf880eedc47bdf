"""Build the Cornerstone3D peer page (``static/peer/``) that the benchmark runs side by side with ours.

Everything comes from the npm registry through npm itself, pinned by ``tools/peer/package-lock.json``
(``@cornerstonejs/core`` and ``@cornerstonejs/dicom-image-loader`` 5.14.0, esbuild); esbuild bundles
the page, their decode worker and their codecs' wasm into one folder served by ``serve.py`` at
``/static/peer/peer.html``: no CDN. Idempotent: ``static/peer/build.json`` records a hash of the
inputs, and a current build is left alone.

    python tools/setup_peer.py [--force]

``static/`` is shared with other checkouts: only ``static/peer/`` is ever written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PEER_SRC = PROJECT / "tools" / "peer"
OUT = PROJECT / "static" / "peer"
STAMP = "build.json"
INPUTS = ("package.json", "package-lock.json", "build.mjs", "src/peer.js", "src/peer.html", "src/node-url.js")
PAGE = "peer.html"


class PeerBuildError(RuntimeError):
    """The peer page could not be built (npm or Node.js missing, the registry unreachable...)."""


def inputs_hash() -> str:
    digest = hashlib.sha256()
    for name in INPUTS:
        digest.update(name.encode() + b"\0" + (PEER_SRC / name).read_bytes() + b"\0")
    return digest.hexdigest()


def is_current(out: Path = OUT) -> bool:
    try:
        stamp = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("inputs") == inputs_hash() and (out / PAGE).exists()


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as exc:
        raise PeerBuildError(f"{cmd[0]} is not installed (tools/test.sh installs Node.js and npm)") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise PeerBuildError(f"`{' '.join(cmd)}` failed in {cwd}:\n{tail}")


def _installed_lock() -> Path:
    return PEER_SRC / "node_modules" / ".package-lock.json"


def ensure_peer(force: bool = False) -> Path:
    """Make ``static/peer/`` hold a current build of the peer page; returns that folder."""
    if not force and is_current():
        return OUT
    started = time.perf_counter()
    lock = PEER_SRC / "package-lock.json"
    installed = _installed_lock()
    # npm ci wipes node_modules; skip it when the installed tree already matches the lock
    if force or not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], PEER_SRC)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".peer-", dir=OUT.parent))
    try:
        _run(["node", "build.mjs", str(tmp)], PEER_SRC)
        versions = {name: json.loads((PEER_SRC / "node_modules" / name / "package.json").read_text())["version"]
                    for name in ("@cornerstonejs/core", "@cornerstonejs/dicom-image-loader", "esbuild")}
        (tmp / STAMP).write_text(json.dumps({"inputs": inputs_hash(), "versions": versions}, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        old = OUT.with_name(f".peer-old-{os.getpid()}")
        if OUT.exists():
            OUT.rename(old)
        tmp.rename(OUT)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"setup: Cornerstone3D peer page built in {OUT} ({time.perf_counter() - started:.1f} s)", flush=True)
    return OUT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="reinstall and rebuild even if current")
    args = parser.parse_args(argv)
    try:
        ensure_peer(force=args.force)
    except PeerBuildError as exc:
        print(f"setup_peer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
