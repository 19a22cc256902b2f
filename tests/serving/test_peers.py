"""Readiness across worker processes: a worker counts once it announced its model, and only
while it runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipelines.serving.peers import Peers, running


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_workers_count_once_announced_and_only_while_they_run(tmp_path):
    peers = Peers(tmp_path, workers=2)
    assert peers.ready() == 0
    peers.announce()  # this process
    assert peers.ready() == 1
    other = _sleeper()
    try:
        peers.announce(other.pid)
        assert peers.ready() == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            str(p) for p in (other.pid, os.getpid())
        )
    finally:
        other.kill()
        other.wait()
    assert not running(other.pid)
    # the dead worker no longer counts, and its file goes
    assert peers.ready() == 1
    assert not (tmp_path / str(other.pid)).exists()


def test_other_files_are_not_workers_and_a_removed_folder_counts_none(tmp_path):
    folder = tmp_path / "workers"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a worker")
    peers = Peers(folder, workers=1)
    assert peers.ready() == 0
    peers.announce()
    assert peers.ready() == 1
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    assert peers.ready() == 0


def test_the_last_worker_to_leave_removes_the_folder(tmp_path):
    folder = tmp_path / "workers"
    folder.mkdir()
    peers = Peers(folder, workers=3)
    other, dead = _sleeper(), _sleeper()
    try:
        for pid in (os.getpid(), other.pid, dead.pid):
            peers.announce(pid)
        dead.kill()  # died without leaving
        dead.wait()
        peers.leave(other.pid)
        assert peers.ready() == 1  # this process has not left: the folder stays
        assert folder.is_dir()
        peers.leave()  # the last one running: the dead worker's file does not keep the folder
        assert not folder.exists()
        peers.leave()  # again, or after the supervisor removed it: nothing to do
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process states come from /proc")
def test_a_worker_killed_but_not_yet_collected_does_not_count(tmp_path):
    peers = Peers(tmp_path, workers=1)
    worker = _sleeper()
    try:
        peers.announce(worker.pid)
        assert peers.ready() == 1
        worker.kill()  # not waited for: a zombie until its parent collects it
        os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOWAIT)  # dead, still not collected
        assert os.path.exists(f"/proc/{worker.pid}")
        assert not running(worker.pid)
        assert peers.ready() == 0
    finally:
        worker.kill()
        worker.wait()
