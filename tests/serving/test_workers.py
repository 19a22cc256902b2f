"""The supervisor of several worker processes, in its own interpreter as `micromoment serve`
starts it: the workers answer on the socket it was given, SIGTERM stops them all, a worker that
cannot start stops the server, and the supervisor itself stays small."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.serving.peers import running
from pipelines.serving.workers import START, SUPERVISOR_ENV, WORKER_ENV
from tests.servers import rss_mib

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the supervisor replaces the process")


def _bound() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.set_inheritable(True)
    return sock


def _supervisor(sock: socket.socket, tmp_path: Path, app: str, workers: int = 2):
    """The supervisor's interpreter started as `exec_supervisor` starts it (temporary files in
    `tmp_path`)."""
    port = sock.getsockname()[1]
    given = {
        "fd": sock.fileno(),
        "workers": workers,
        "config": {"host": "127.0.0.1", "port": port, "log_level": "info"},
        "path": sys.path,
        "app": app,
    }
    env = dict(os.environ, TMPDIR=str(tmp_path), **{SUPERVISOR_ENV: json.dumps(given)})
    env[WORKER_ENV] = json.dumps({"serve": {"workers": workers}})
    return subprocess.Popen(
        [sys.executable, "-c", START],
        env=env,
        pass_fds=[sock.fileno()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _answering(url: str, proc: subprocess.Popen, workers: int = 2) -> tuple[set[int], dict]:
    """The process ids of the workers that answered (new connections until each has), and what
    the supervisor gave them."""
    pids, given = set(), {}
    end = time.monotonic() + 60
    while len(pids) < workers and time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                answer = json.loads(reply.read())
        except OSError:  # not listening yet
            time.sleep(0.1)
            continue
        pids.add(answer["pid"])
        given = answer["given"]
    return pids, given


def test_workers_answer_on_the_socket_given_and_stop_on_sigterm(tmp_path):
    sock = _bound()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    proc = _supervisor(sock, tmp_path, "tests.serving.asgi:pid_app")
    sock.close()  # the supervisor holds its own copy
    try:
        pids, given = _answering(url, proc)
        assert len(pids) == 2 and proc.pid not in pids
        # what the parent gave the workers, and the folder they announce their models in
        assert given["serve"] == {"workers": 2}
        peers = Path(given["peers"])
        assert peers.is_dir() and peers.parent == tmp_path
        if os.path.isdir("/proc"):  # the supervisor imports uvicorn, not the project's stack
            assert rss_mib(proc.pid) < 100
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert not peers.exists()
    assert not [pid for pid in pids if running(pid)]


@pytest.mark.parametrize(
    "app, why",
    [
        ("tests.serving.nowhere:app", "Error loading ASGI app"),
        # the project's own factory, given settings it cannot read: no restart loop either
        ("pipelines.stages.serve:worker_app", "this worker could not build its app"),
    ],
)
def test_a_worker_that_cannot_start_stops_the_server_with_exit_1(tmp_path, app, why):
    sock = _bound()
    proc = _supervisor(sock, tmp_path, app)
    sock.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    assert why in err
    assert "micromoment serve: error: a worker did not start" in err
    assert not list(tmp_path.iterdir())  # the workers' folder is removed


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_workers_stop_when_their_supervisor_is_killed_outright(tmp_path):
    sock = _bound()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    proc = _supervisor(sock, tmp_path, "tests.serving.asgi:pid_app")
    sock.close()
    try:
        pids, given = _answering(url, proc)
        assert len(pids) == 2
        peers = Path(given["peers"])
        assert sorted(path.name for path in peers.iterdir()) == sorted(map(str, pids))
    finally:
        proc.kill()  # SIGKILL: it cannot stop its workers
        proc.communicate(timeout=30)
    end = time.monotonic() + 30
    while any(running(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(running(pid) for pid in pids), "the workers serve on without their supervisor"
    assert not peers.exists(), "the workers' folder outlives them"


def test_a_worker_that_dies_while_asked_is_replaced_at_once(tmp_path):
    """Not after the health check's whole timeout (60 s), as uvicorn's own check would."""
    sock = _bound()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    start = time.monotonic()
    proc = _supervisor(sock, tmp_path, "tests.serving.asgi:dies_once_while_asked_app", workers=1)
    sock.close()
    try:
        pids, _ = _answering(url, proc, workers=1)
        took = time.monotonic() - start
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    assert (tmp_path / "died-once").exists(), err[-2000:]  # the first worker did die
    assert len(pids) == 1 and "died" in err, err[-2000:]
    assert took < 20, f"the replacement answered {took:.0f} s after the start"
    assert proc.returncode == 0, err[-2000:]
