"""The supervisor of a server of several worker processes (`serve.workers` above 1).

`micromoment serve` checks the settings and the model and binds the socket; with several workers
it then replaces itself (`exec`) with this module: a fresh interpreter that imports uvicorn and
little else. So the process that only watches the workers does not keep what the checks needed
(MLflow, pandas, LightGBM: about 250 MiB, in a replica whose workers hold a model each). It keeps
the process id, so a scheduler's SIGTERM still reaches it, and the socket, which it passes on.

uvicorn's supervisor (`Multiprocess`) starts the workers, replaces one that dies and stops them all
on SIGTERM or SIGINT (exit 0). A worker that fails before serving stops the server (exit 1). The
workers announce their models in a folder made here and removed at the end (`serving.peers`).
Each worker builds its app from `WORKER_ENV` (`pipelines.stages.serve.worker_app`), and stops
when the supervisor is gone (`stop_with_supervisor`): killed outright, it cannot stop them itself.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.connection import wait
from typing import NoReturn

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess, multiprocess

from pipelines.serving.peers import Peers

# what a worker builds its app from, and what the supervisor starts them with (set before `exec`)
WORKER_ENV = "MICROMOMENT_SERVE_WORKER"
SUPERVISOR_ENV = "MICROMOMENT_SERVE_SUPERVISOR"
WORKER_APP = "pipelines.stages.serve:worker_app"
EXIT_WORKER_FAILED = 1

log = logging.getLogger(__name__)


def exec_supervisor(sock: socket.socket, workers: int, config: dict) -> NoReturn:
    """Replaces this process with the supervisor of `workers` processes answering on `sock`,
    under uvicorn's `config` (host, port, logging). Never returns."""
    sock.set_inheritable(True)
    os.environ[SUPERVISOR_ENV] = json.dumps(
        # this interpreter's module path: the workers import the project as this process did
        {"fd": sock.fileno(), "workers": workers, "config": config, "path": sys.path}
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # the first line is what `ps` shows of the process from now on
    title = f"# micromoment serve: the supervisor of {workers} workers on {config['host']}:{config['port']}"
    os.execv(sys.executable, [sys.executable, "-c", f"{title}\n{START}"])


# the supervisor's interpreter, from the module path it was given
START = (
    "import json, os, sys; "
    f"sys.path[:] = json.loads(os.environ[{SUPERVISOR_ENV!r}])['path']; "
    f"from {__name__} import main; main()"
)


def main() -> NoReturn:
    given = json.loads(os.environ.pop(SUPERVISOR_ENV))
    given.pop("path")
    sys.exit(supervise(**given))


class Worker(multiprocess.Process):
    """uvicorn's worker process, whose health check ends as soon as the worker dies.

    uvicorn pings each worker every half second and waits up to `timeout_worker_healthcheck` for
    the answer (60 s here: a worker loading a model can leave its answering thread no time). A
    worker killed while asked left that wait running its full length, and the supervisor neither
    replaced it nor acted on SIGTERM meanwhile; here the wait also ends when the process does."""

    def _healthcheck(self, timeout: float) -> bool | None:
        try:
            self.parent_conn.send(b"ping")
            if self.parent_conn in wait([self.parent_conn, self.process.sentinel], timeout):
                return self.parent_conn.recv()
            return None  # no answer in time, or the worker ended
        except (OSError, EOFError, pickle.UnpicklingError):
            return None


def supervise(fd: int, workers: int, config: dict, app: str = WORKER_APP) -> int:
    """Runs `workers` processes of `app` on the socket `fd` until stopped; the exit code."""
    multiprocess.Process = Worker  # what uvicorn's supervisor starts (in this interpreter only)
    sock = socket.socket(fileno=fd)
    with tempfile.TemporaryDirectory(prefix="micromoment-workers-") as peers:
        os.environ[WORKER_ENV] = json.dumps(
            dict(json.loads(os.environ.get(WORKER_ENV, "{}")), peers=peers)
        )
        supervisor = Multiprocess(
            uvicorn.Config(
                app,
                factory=True,
                workers=workers,
                # a worker loading (or compiling) a model still answers the supervisor's checks
                timeout_worker_healthcheck=60,
                **config,
            ),
            sockets=[sock],
        )
        supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        print(
            "micromoment serve: error: a worker did not start: its log above says why",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_WORKER_FAILED
    return 0


def stop_with_supervisor(peers: Peers | None = None, poll_s: float = 1.0) -> threading.Thread:
    """In a worker: stops it gracefully (SIGTERM to itself) once its supervisor is gone, killed
    without the chance to stop its workers, rather than serve on as an orphan no one watches.
    It leaves `peers` first: the last worker to go removes the folder the supervisor made."""
    supervisor = os.getppid()

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(poll_s)
        log.warning("the supervisor (process %d) is gone: this worker stops", supervisor)
        if peers is not None:
            peers.leave()
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="micromoment-supervisor-watch", daemon=True)
    thread.start()
    return thread
