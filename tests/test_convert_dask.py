"""Conversion on a Dask ``LocalCluster`` (2 worker processes on loopback): the serial tree, and
whole-or-absent series when a worker is killed mid-task."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from importlib.util import find_spec

import pytest

from app.convert import convert
from app.convert_dask import STAGING, convert_on_cluster
from tests.test_convert_parallel import same_boundary, tree_files
from tools.large_stacks import StackSpec, write_series

STARTS_SERVERS = True  # a scheduler and two workers on 127.0.0.1
# dask.distributed is imported by the fixture, not at collection: the fast tier never pays for it
pytestmark = pytest.mark.skipif(find_spec("distributed") is None, reason="dask.distributed is not installed")


@pytest.fixture(scope="module")
def archive(demo_data, tmp_path_factory) -> Path:
    """Four small series (two studies' worth of names) derived from the demo MR, and one bad file."""
    root = tmp_path_factory.mktemp("archive")
    for number in range(4):
        name = f"dask-{number}"
        write_series(StackSpec(name, f"dask test {number}", 8, 256, 2.0, True, number), root / name)
    (root / "readme.dcm").write_bytes(b"not DICOM at all" * 8)
    return root


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "tree"
    summary = convert([archive], out, quiet=True)
    assert summary.files_converted == 32 and len(summary.skipped) == 1
    return out


@pytest.fixture(scope="module")
def cluster():
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=logging.CRITICAL) as local:
        with distributed.Client(local) as client:
            yield client


def series_folders(tree: Path) -> dict[str, Path]:
    return {path.name: path for path in (tree / "studies").glob("*/series/*") if path.is_dir()}


def assert_whole_or_absent(tree: Path, reference: Path) -> int:
    """Every series folder in `tree` holds exactly the reference's files; returns how many."""
    expected = series_folders(reference)
    present = series_folders(tree)
    for name, folder in present.items():
        assert tree_files(folder) == tree_files(expected[name]), f"series {name} is partial"
    return len(present)


def test_cluster_writes_the_serial_tree(archive, reference, cluster, tmp_path):
    same_boundary(reference, tmp_path / "tree")
    summary = convert_on_cluster([archive], tmp_path / "tree", scheduler=cluster, quiet=True)
    assert summary.files_converted == 32
    assert [f.path.name for f in summary.skipped] == ["readme.dcm"] and not summary.failures
    assert tree_files(tmp_path / "tree") == tree_files(reference)  # byte-identical frames, equal JSON
    assert any(name.endswith("/stack.json") for name in tree_files(reference))
    assert not (tmp_path / "tree" / STAGING).exists()


def _kill_a_busy_worker(client, tree: Path, killed: dict) -> None:
    """Kill (SIGKILL) a worker process once its series has frames in staging but is not yet in place."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        busy = [address for address, keys in client.processing().items() if keys]
        staged = [p for p in (tree / STAGING).glob("*/*/studies/*/series/*/instances/*/frames/*")]
        if busy and staged:
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed["pid"] = pids[busy[0]]
            killed["whole"] = assert_whole_or_absent(tree, killed["reference"])
            return
        time.sleep(0.01)


def test_a_killed_worker_leaves_no_partial_series_and_a_rerun_completes(archive, reference, cluster, tmp_path):
    tree = tmp_path / "tree"
    same_boundary(reference, tree)
    killed: dict = {"reference": reference}
    killer = threading.Thread(target=_kill_a_busy_worker, args=(cluster, tree, killed))
    killer.start()
    summary = convert_on_cluster([archive], tree, scheduler=cluster, quiet=True)
    killer.join()
    assert "pid" in killed, "no worker was caught mid-series"
    assert killed["whole"] < 4  # the kill came before every series was in place
    assert summary.files_converted == 32  # the lost task ran again on a live worker
    assert tree_files(tree) == tree_files(reference)

    # a run whose client died leaves staging behind, never a half series: a rerun clears and completes
    leftover = tree / STAGING / "deadrun" / "x" / "studies" / "s" / "series" / "x" / "instances" / "i" / "frames"
    leftover.mkdir(parents=True)
    (leftover / "1").write_bytes(b"half")
    cluster.wait_for_workers(2, timeout=60)
    again = convert_on_cluster([archive], tree, scheduler=cluster, quiet=True)
    assert again.files_converted == 32
    assert tree_files(tree) == tree_files(reference)
    assert not (tree / STAGING).exists()


def test_scheduler_address_from_the_command_line(archive, cluster, tmp_path, capsys):
    from app.convert_pool import main

    address = cluster.scheduler.address
    code = main([str(archive / "dask-1"), "-o", str(tmp_path / "cli"), "--dask", address])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[1/1 series]" in out and "files: 8 converted, 0 failed" in out
