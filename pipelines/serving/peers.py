"""Readiness of a server of several worker processes: ready once every worker has its model.

With `serve.workers` above 1, a request (a readiness probe's too) reaches whichever worker takes
its connection, and each worker loads its own model. So one worker's `/ready` speaks for the
server only if it knows about the others. The supervisor makes a folder before it starts them;
a worker with a model in place writes a file named by its process id there (`Peers.announce`),
and `/ready` counts the files of workers still running (`Peers.ready`): below `workers`, the
server is still loading. A worker that dies stops counting at once (its file is removed when next
counted), and the one the supervisor starts in its place counts once it has loaded. Workers
whose supervisor was killed outright leave (`Peers.leave`), and the last one removes the folder.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


def running(pid: int) -> bool:
    """Whether a process `pid` runs. A worker killed outright stays a zombie until its supervisor
    collects it, which can take that supervisor a health check's timeout: it does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # gone meanwhile
        return False
    except OSError:  # no /proc here: that it exists is all we know
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # the state after the name


@dataclass(frozen=True)
class Peers:
    """The workers of one server: their folder, and how many there are."""

    folder: Path
    workers: int

    def announce(self, pid: int | None = None) -> None:
        """Says that process `pid` (this one by default) has a model and answers requests."""
        pid = os.getpid() if pid is None else pid
        (self.folder / str(pid)).touch()

    def leave(self, pid: int | None = None) -> None:
        """Says that process `pid` (this one by default) no longer answers. The last worker to
        leave removes the folder: a supervisor killed outright could not."""
        pid = os.getpid() if pid is None else pid
        (self.folder / str(pid)).unlink(missing_ok=True)
        self.ready()  # forgets the workers that died without leaving
        with contextlib.suppress(OSError):  # others are still in it, or it is gone already
            self.folder.rmdir()

    def ready(self) -> int:
        """How many workers have announced a model and are still running."""
        count = 0
        try:
            paths = list(self.folder.iterdir())
        except FileNotFoundError:  # removed under the server: no worker can be counted
            return 0
        for path in paths:
            if not path.name.isdigit():
                continue
            if running(int(path.name)):
                count += 1
            else:  # a worker that died: its replacement announces itself
                path.unlink(missing_ok=True)
        return count
