"""Converter throughput: the same conversion as ``app.convert`` over a pool of worker processes.

    python -m app convert INPUT... -o OUT [--workers N] [--dask tcp://scheduler:8786] [...]

Each worker converts whole files (decode, encode every alternate, write the frame files); the
parent merges each finished file's DICOM JSON into the series metadata and the QIDO indexes, so
only one process ever writes JSON and the tree is the one a serial run writes, byte for byte.
One progress line (or a redrawn bar on a terminal) per finished file, across all workers.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from app import convert as serial
from app.convert import (ConversionSummary, EncodeSettings, Failure, Progress, TreeManifest,
                         convert_one_file, iter_input_files, lossy_step, open_manifest, alternate_names,
                         remove_stale_temporaries)

__all__ = ["convert_parallel", "default_workers", "merge_summary", "main"]

IN_FLIGHT_PER_WORKER = 4  # files queued per worker: enough to keep it busy, bounded memory


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def merge_summary(into: ConversionSummary, part: ConversionSummary) -> None:
    """Add a worker's statistics and records to the run's (lists extended, counters added)."""
    for item in dataclasses.fields(ConversionSummary):
        if item.name in ("out", "alternates", "framing", "boundary", "seconds"):
            continue
        mine, theirs = getattr(into, item.name), getattr(part, item.name)
        if isinstance(mine, list):
            mine.extend(theirs)
        elif isinstance(mine, dict):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        elif isinstance(mine, (int, float)):
            setattr(into, item.name, mine + theirs)


def _pool(workers: int) -> ProcessPoolExecutor:
    """Forked workers start at once with the codecs imported; a parent that runs threads (pytest,
    a server) forks a clean forkserver instead, since forking a threaded process can deadlock."""
    if threading.active_count() == 1:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["app.convert"])
    return ProcessPoolExecutor(workers, mp_context=context)


def _bounded(pool: ProcessPoolExecutor, files: Sequence[Path], window: int, out: Path, names: tuple[str, ...],
             settings: EncodeSettings, manifest: TreeManifest) -> Iterator[tuple[int, Future]]:
    """(input index, finished future) as files finish, with at most `window` files queued."""
    queued: dict[Future, int] = {}
    upcoming = iter(enumerate(files))
    for index, path in upcoming:
        queued[pool.submit(convert_one_file, path, out, names, settings, manifest)] = index
        if len(queued) >= window:
            break
    while queued:
        done, _ = wait(queued, return_when=FIRST_COMPLETED)
        for future in done:
            yield queued.pop(future), future
            for index, path in upcoming:
                queued[pool.submit(convert_one_file, path, out, names, settings, manifest)] = index
                break


def convert_parallel(
    inputs: Sequence[Path | str],
    out: Path | str,
    alternates: Iterable[str] | str | None = None,
    *,
    workers: int | None = None,
    lossy_quality: float = serial.DEFAULT_LOSSY_QUALITY,
    raw: bool = False,
    quiet: bool = False,
    progress_stream=None,
) -> ConversionSummary:
    """``app.convert.convert`` on `workers` processes (default: the cores); 1 runs it serially."""
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError("--workers must be >= 1")
    out = Path(out)
    files = list(iter_input_files((Path(path) for path in inputs), exclude=out))
    if workers == 1 or len(files) < 2:  # nothing to share out
        return serial.convert(inputs, out, alternates, lossy_quality=lossy_quality, raw=raw, quiet=quiet,
                              progress_stream=progress_stream)
    started = time.perf_counter()
    names = alternate_names(alternates)
    settings = EncodeSettings(lossy_quality=lossy_quality)
    lossy_step(lossy_quality)
    manifest = open_manifest(out, raw)
    remove_stale_temporaries(out)
    summary = ConversionSummary(out, names, manifest.framing, manifest.boundary)
    progress = Progress(len(files), progress_stream, quiet)
    pending = serial._PendingMetadata(out)  # the serial run's batched JSON merge, in this process only
    finished: list[tuple[int, ConversionSummary]] = []
    try:
        with _pool(min(workers, len(files))) as pool:
            window = workers * IN_FLIGHT_PER_WORKER
            for done, (index, future) in enumerate(_bounded(pool, files, window, out, names, settings, manifest), 1):
                try:
                    part, converted = future.result()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)  # an unwritable tree, Ctrl-C, a lost worker
                    raise
                finished.append((index, part))
                if converted is None:
                    for failure in part.failures:
                        progress.failure(failure.path, failure.reason)
                    for notice in part.skipped:
                        progress.skipped(notice.path, notice.reason)
                    continue
                record = part.instances[0]
                pending.add(record, *converted)
                progress.frame(done, files[index], record.frames, record.frames, part.decode_seconds
                               + sum(part.seconds_by_alternate.values()))
    except BrokenProcessPool as exc:
        raise serial.ConversionError("a worker process died (out of memory, or killed); the files finished "
                                     "are in the tree: run the same command again to complete it") from exc
    finally:
        pending.flush()  # also on KeyboardInterrupt: finished files reach the metadata
        progress.done()
    for _, part in sorted(finished, key=lambda item: item[0]):  # records in input order, as a serial run
        merge_summary(summary, part)
    summary.seconds = time.perf_counter() - started
    return summary


def _failure_lines(failures: Sequence[Failure]) -> None:
    for failure in failures:
        print(f"failed: {failure.path}: {failure.reason}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app convert``: the converter's options plus --workers and --dask."""
    parser = serial.build_parser()
    parser.prog = "python -m app convert"
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the cores; 1 = serial)")
    parser.add_argument("--dask", metavar="SCHEDULER",
                        help="run on a Dask cluster, one task per series (e.g. tcp://scheduler:8786)")
    args = serial.parse_args(parser, argv)
    if args.reindex:
        return serial.reindex(args.out)
    if args.dask and args.workers is not None:
        parser.error("--workers and --dask exclude each other: the cluster's workers do the work")
    try:
        if args.dask:
            from app.convert_dask import convert_on_cluster

            summary = convert_on_cluster(args.inputs, args.out, args.alternates, scheduler=args.dask,
                                         lossy_quality=args.lossy_quality, raw=args.raw, quiet=args.quiet)
        else:
            summary = convert_parallel(args.inputs, args.out, args.alternates, workers=args.workers,
                                       lossy_quality=args.lossy_quality, raw=args.raw, quiet=args.quiet)
    except (serial.ConversionError, ValueError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.table())
    _failure_lines(summary.failures)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
