"""The converter on a process pool writes the tree a serial run writes, and adds studies in place.

Inputs are small series derived from the demo's real MR (tools/large_stacks.py), so these tests
need the demo data (marked ``servers`` by the conftest through the ``demo_data`` fixture).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from app.convert import ConversionError, convert, read_json_pair
from app.convert_pool import convert_parallel, main as convert_main
from tools.large_stacks import StackSpec, write_series


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def same_boundary(reference: Path, target: Path) -> None:
    """Start `target` with the reference tree's manifest: the multipart boundary is per tree."""
    target.mkdir(parents=True)
    shutil.copy(reference / "dicomweb.json", target / "dicomweb.json")


@pytest.fixture(scope="module")
def small_series(demo_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    made = {}
    for name, slices, size in (("pool-a", 9, 128), ("pool-b", 5, 256)):
        made[name] = root / name
        write_series(StackSpec(name, f"pool test {name}", slices, size, 1.5, True, 7), made[name])
    garbage = root / "pool-a" / "zz-not-dicom.dcm"
    garbage.write_bytes(b"this is not a DICOM file" * 10)
    return made


def test_two_workers_write_the_serial_tree_byte_for_byte(small_series, tmp_path):
    inputs = [small_series["pool-a"], small_series["pool-b"]]
    serial = convert(inputs, tmp_path / "serial", quiet=True)
    same_boundary(tmp_path / "serial", tmp_path / "pool")
    pooled = convert_parallel(inputs, tmp_path / "pool", workers=2, quiet=True)

    assert serial.files_converted == pooled.files_converted == 14
    reference, got = tree_files(tmp_path / "serial"), tree_files(tmp_path / "pool")
    assert sorted(got) == sorted(reference)
    assert [name for name in reference if reference[name] != got[name]] == []  # frames and JSON alike
    assert sum(name.endswith("/stack.json") for name in reference) == 2  # a stack index per series
    # the summary is the serial one: records in input order, the same failure, the same counters
    assert [r.sop_uid for r in pooled.instances] == [r.sop_uid for r in serial.instances]
    for kind in ("failures", "skipped"):
        assert [(f.path, f.reason) for f in getattr(pooled, kind)] == [(f.path, f.reason) for f in getattr(serial, kind)]
    assert [f.path.name for f in pooled.skipped] == ["zz-not-dicom.dcm"] and not pooled.failures
    assert pooled.frames == serial.frames and pooled.bytes_by_alternate == serial.bytes_by_alternate


def test_adding_a_study_leaves_the_other_studies_files_alone(small_series, tmp_path):
    out = tmp_path / "tree"
    first = convert_parallel([small_series["pool-a"]], out, workers=2, quiet=True)
    (study_a, _), = first.series
    before = {path: (path.stat().st_ino, path.stat().st_mtime_ns)
              for path in (out / "studies" / study_a).rglob("*") if path.is_file()}

    second = convert_parallel([small_series["pool-b"]], out, workers=2, quiet=True)
    (study_b, series_b), = second.series
    after = {path: (path.stat().st_ino, path.stat().st_mtime_ns)
             for path in (out / "studies" / study_a).rglob("*") if path.is_file()}
    assert after == before  # not one file of study A rewritten

    studies = read_json_pair(out / "studies" / "index.json", [])
    assert sorted(item["0020000D"]["Value"][0] for item in studies) == sorted([study_a, study_b])
    series_index = read_json_pair(out / "studies" / study_b / "series" / "index.json", [])
    assert [item["0020000E"]["Value"][0] for item in series_index] == [series_b]
    assert len(read_json_pair(out / "studies" / study_b / "series" / series_b / "metadata", [])) == 5

    # and the tree equals one converted from both studies at once
    same_boundary(out, tmp_path / "both")
    convert([small_series["pool-a"], small_series["pool-b"]], tmp_path / "both", quiet=True)
    assert tree_files(tmp_path / "both") == tree_files(out)  # the stack indexes too


def test_command_line_workers_flag_and_progress_across_workers(small_series, tmp_path, capsys):
    code = convert_main([str(small_series["pool-b"]), "-o", str(tmp_path / "cli"), "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 0
    assert "files: 5 converted, 0 failed" in captured.out
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert sorted(int(line[1:].split("/")[0]) for line in progress) == [1, 2, 3, 4, 5]  # one line a file
    assert convert_main([str(small_series["pool-b"]), "-o", str(tmp_path / "cli"), "--workers", "0"]) == 2


def _kill_a_pool_worker_once_frames_exist(out: Path, killed: list) -> None:
    import psutil

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = [p for p in psutil.Process().children(recursive=True) if p.ppid() != os.getpid()]
        if workers and any(out.glob("studies/*/series/*/instances/*/frames/*")):
            workers[0].send_signal(signal.SIGKILL)  # the forkserver's children are the pool's workers
            killed.append(workers[0].pid)
            return
        time.sleep(0.005)


def test_a_lost_pool_worker_stops_the_run_cleanly_and_a_rerun_completes(small_series, tmp_path):
    pytest.importorskip("psutil")
    reference = tmp_path / "serial"
    convert([small_series["pool-a"]], reference, quiet=True)
    out = tmp_path / "pool"
    same_boundary(reference, out)
    killed: list = []
    killer = threading.Thread(target=_kill_a_pool_worker_once_frames_exist, args=(out, killed))
    killer.start()
    try:
        convert_parallel([small_series["pool-a"]], out, workers=2, quiet=True)
    except ConversionError as exc:
        assert "run the same command again" in str(exc)
    killer.join()
    assert killed, "no pool worker was caught converting"
    for item in read_json_pair(next(out.glob("studies/*/series/*")) / "metadata", []):
        sop = item["00080018"]["Value"][0]  # listed instances are whole
        instance = next(out.glob(f"studies/*/series/*/instances/{sop}"))
        assert sorted(p.name for p in instance.iterdir() if p.is_dir()) == sorted(
            ["frames", "jls", "jlsThumbnail", "lossy", "htj2kThumbnail"])
    convert_parallel([small_series["pool-a"]], out, workers=2, quiet=True)
    assert tree_files(out) == tree_files(reference)
