"""Archives on a Dask cluster: one task per series, each series committed whole or not at all.

    python -m app convert ARCHIVE -o /shared/tree --dask tcp://scheduler:8786

The client (this process) reads the headers of the inputs and groups them by series. Each task
converts one series with the serial converter into a staging tree inside the output folder
(``OUT/.staging/<run>/<series>/``, same file system, so a rename moves it), then renames the
finished series folder into place. A worker that dies mid-task leaves only its staging folder;
Dask runs the task again elsewhere, and the tree never shows a half series. A series that is
already in the tree is hard-linked into the staging tree first, so new instances merge with it.

Only the client writes the study and root QIDO indexes, after each series is in place, so no two
processes ever write the same JSON. Workers need this project importable and the output folder at
the same path (a shared file system); ``dask.distributed`` is an optional extra
(``requirements-dask.txt``).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from app import convert as serial
from app.convert import ConversionSummary, Failure, alternate_names, iter_input_files, open_manifest
from app.convert_pool import merge_summary
from app.uids import check_uid

__all__ = ["SeriesJob", "convert_on_cluster", "convert_series", "group_by_series", "STAGING"]

STAGING = ".staging"


@dataclass(frozen=True)
class SeriesJob:
    """One task: the files of one series, and where its staging tree goes."""

    study_uid: str
    series_uid: str
    files: tuple[Path, ...]
    out: Path
    staging: Path  # OUT/.staging/<run>/<series>
    alternates: tuple[str, ...]
    lossy_quality: float
    raw: bool


def group_by_series(files: Iterable[Path]) -> tuple[dict[tuple[str, str], list[Path]], list[Failure], list[Failure]]:
    """Input files by (study, series) from their headers, and the files left out: failures (no
    valid study or series UID: they become folder names) and skipped ones (not DICOM), as the
    serial converter would report them."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[tuple[str, str], list[Path]] = {}
    failures, skipped = [], []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
            key = (check_uid(str(ds.get("StudyInstanceUID", "")).strip(), "StudyInstanceUID"),
                   check_uid(str(ds.get("SeriesInstanceUID", "")).strip(), "SeriesInstanceUID"))
        except InvalidDicomError:
            skipped.append(Failure(path, "not a DICOM file"))
            continue
        except Exception as exc:  # noqa: BLE001 - any unreadable header is that file's failure
            failures.append(Failure(path, f"{type(exc).__name__}: {exc}"))
            continue
        groups.setdefault(key, []).append(path)
    return groups, failures, skipped


def _publish(built: Path, target: Path) -> None:
    """Rename the finished series folder into place; a previous version is swapped out first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(built, target)
        return
    except OSError:
        if not target.exists():
            raise
    retired = built.with_name(built.name + ".old")
    os.rename(target, retired)  # between these two renames the series is absent, never partial
    os.rename(built, target)
    shutil.rmtree(retired, ignore_errors=True)


def convert_series(job: SeriesJob) -> ConversionSummary:
    """The task a worker runs: convert one series into staging, then move it into the tree."""
    if job.staging.exists():  # an earlier attempt of this task on a worker that died
        shutil.rmtree(job.staging)
    job.staging.mkdir(parents=True)
    shutil.copy(job.out / "dicomweb.json", job.staging / "dicomweb.json")  # the tree's boundary
    relative = Path("studies") / job.study_uid / "series" / job.series_uid
    if (job.out / relative).is_dir():  # merge with what the tree holds: hard links, never rewritten
        shutil.copytree(job.out / relative, job.staging / relative, copy_function=os.link)
    summary = serial.convert(list(job.files), job.staging, job.alternates, lossy_quality=job.lossy_quality,
                             raw=job.raw, quiet=True)
    if summary.instances:
        _publish(job.staging / relative, job.out / relative)
    shutil.rmtree(job.staging, ignore_errors=True)
    summary.out = job.out
    return summary


def _client(scheduler: Any):
    try:
        from distributed import Client
    except ImportError as exc:
        raise ImportError("--dask needs dask.distributed: pip install -r requirements-dask.txt") from exc
    return (scheduler, False) if isinstance(scheduler, Client) else (Client(scheduler), True)


def convert_on_cluster(
    inputs: Sequence[Path | str],
    out: Path | str,
    alternates: Iterable[str] | str | None = None,
    *,
    scheduler: Any,
    lossy_quality: float = serial.DEFAULT_LOSSY_QUALITY,
    raw: bool = False,
    quiet: bool = False,
    retries: int = 2,
) -> ConversionSummary:
    """Convert on the Dask cluster at `scheduler` (an address or a ``distributed.Client``)."""
    from distributed import as_completed

    started = time.perf_counter()
    out = Path(out).resolve()
    names = alternate_names(alternates)
    serial.lossy_step(lossy_quality)
    manifest = open_manifest(out, raw)
    shutil.rmtree(out / STAGING, ignore_errors=True)  # left by a run whose client died (one run a tree)
    summary = ConversionSummary(out, names, manifest.framing, manifest.boundary)
    groups, failures, skipped = group_by_series(iter_input_files((Path(path) for path in inputs), exclude=out))
    run = out / STAGING / uuid.uuid4().hex
    jobs = [SeriesJob(study, series, tuple(files), out, run / series, names, lossy_quality, raw)
            for (study, series), files in groups.items()]
    client, own = _client(scheduler)
    parts: dict[int, ConversionSummary] = {}
    try:
        futures = {client.submit(convert_series, job, key=f"convert-series-{job.series_uid}-{run.name}",
                                 retries=retries, pure=False): number for number, job in enumerate(jobs)}
        for done, future in enumerate(as_completed(futures), 1):
            job, part = jobs[futures[future]], future.result()
            parts[futures[future]] = part
            if part.instances:  # the series is in place: the indexes above it now list it
                serial.rebuild_study_indexes(out, job.study_uid)
                serial.rebuild_studies_index(out)
            if not quiet:
                print(f"[{done}/{len(jobs)} series] {job.series_uid}: {part.files_converted} instances, "
                      f"{len(part.failures)} failed", flush=True)
    finally:
        if own:
            client.close()
        shutil.rmtree(run, ignore_errors=True)
        if (out / STAGING).is_dir() and not any((out / STAGING).iterdir()):
            (out / STAGING).rmdir()
    for number in sorted(parts):  # records in the order the series were found
        merge_summary(summary, parts[number])
    summary.failures[:0] = failures
    summary.skipped[:0] = skipped
    summary.seconds = time.perf_counter() - started
    return summary
