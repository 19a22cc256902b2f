"""Real `mlflow server` processes on loopback for the tests, stopped whatever happens."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

USER, PASSWORD = "scheduler", "hunter2-secret"
SERVERS: dict[str, subprocess.Popen] = {}  # url -> the server process, to kill one mid-job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (Linux's /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _mlflow_executable() -> str:
    exe = Path(sys.executable).with_name("mlflow")
    return str(exe) if exe.exists() else (shutil.which("mlflow") or "mlflow")


@contextlib.contextmanager
def mlflow_server(
    root: Path,
    port: int | None = None,
    auth: bool = False,
    backend_store_uri: str | None = None,
    startup_s: float = 120,
) -> Iterator[str]:
    """A `mlflow server` process on 127.0.0.1 over `root` (a SQLite store, or `backend_store_uri`,
    and an artifact folder); yields its URL once `/health` answers, and stops it on the way out,
    whatever happened. With `auth`, MLflow's basic authentication with `USER` as its admin
    (password `PASSWORD`)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / f"server-{port}.log", "ab")  # noqa: SIM115  (closed below)
    env = dict(os.environ)
    extra = []
    if auth:
        ini = root / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{root}/basic_auth.db\n"
            f"admin_username = {USER}\n"
            f"admin_password = {PASSWORD}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "test-only-secret-key"
        extra = ["--app-name", "basic-auth"]
    proc = subprocess.Popen(
        [
            _mlflow_executable(),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend_store_uri or f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    SERVERS[url] = proc
    try:
        wait_healthy(
            proc,
            f"{url}/health",
            startup_s,
            lambda: (root / f"server-{port}.log").read_text()[-2000:],
        )
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
        log.close()


def wait_healthy(proc: subprocess.Popen, health_url: str, timeout_s: float, output) -> None:
    """Wait until `health_url` answers 200; raise with the server's `output()` if the process
    exits first, or after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {output()}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{health_url} not healthy after {timeout_s:.0f} s")
        time.sleep(0.5)
