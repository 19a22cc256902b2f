"""Retraining against a real `mlflow server` on loopback (SQLite backend, proxied artifacts)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.retrain import EXIT_OK, EXIT_TRACKING, run_retrain
from tests.test_retrain import NAME, _config, stream  # noqa: F401  (the module-scoped data)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_executable() -> str:
    exe = Path(sys.executable).with_name("mlflow")
    return str(exe) if exe.exists() else (shutil.which("mlflow") or "mlflow")


@contextlib.contextmanager
def mlflow_server(root: Path, port: int | None = None) -> Iterator[str]:
    """A `mlflow server` process on 127.0.0.1 over `root` (SQLite store and artifact folder);
    yields its URL once `/health` answers, and stops it on the way out, whatever happened."""
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / f"server-{port}.log", "ab")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [
            _mlflow_executable(),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {proc.returncode}: "
                    f"{(root / f'server-{port}.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server on {url} not healthy after 120 s")
            time.sleep(0.5)
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


def _with_password(url: str) -> str:
    return url.replace("http://", "http://scheduler:hunter2-secret@")


def test_retrain_over_http_promotes_and_the_registry_answers_over_http(stream, tmp_path):  # noqa: F811
    with mlflow_server(tmp_path) as url:
        work = tmp_path / "job"
        cfg = _config(stream, _with_password(url), stream / "sessions", work, "retrain.end=null")
        assert run_retrain(cfg) == EXIT_OK
        summary = json.loads((work / "summary.json").read_text())
        assert summary["decision"] == "promoted" and summary["champion_after"] == "1"

        # aliases, versions and runs read over HTTP agree with the job's summary
        client = MlflowClient(url, registry_uri=url)
        champion = client.get_model_version_by_alias(NAME, "champion")
        challenger = client.get_model_version_by_alias(NAME, "challenger")
        assert str(champion.version) == str(challenger.version) == summary["challenger"]
        assert champion.tags["retrain.job_key"] == summary["job_key"]
        run = client.get_run(summary["run_id"])
        assert run.data.metrics["test/macro_f1"] > 0.7
        # the password in the tracking URI reaches no param, tag or summary
        recorded = json.dumps([run.data.params, run.data.tags, summary])
        assert "hunter2-secret" not in recorded
        assert summary["tracking_uri"] == _with_password(url).replace("hunter2-secret", "***")

        # a consumer in a fresh process loads @champion over HTTP and scores raw sessions
        code = (
            "import mlflow, pandas as pd\n"
            f"m = mlflow.pyfunc.load_model('models:/{NAME}@champion')\n"
            "out = m.predict(pd.DataFrame({'session_id': ['a'], 'device': ['mobile'],"
            " 'pages_store_locator': [4], 'dwell_time_s': [40.0]}))\n"
            "print(out['model_version'].iloc[0], out['intent'].iloc[0])\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["MLFLOW_TRACKING_URI"] = url
        consumer = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert consumer.returncode == 0, consumer.stderr[-2000:]
        version, intent = consumer.stdout.split()
        assert version == summary["challenger"] and intent in ("know", "go", "do", "buy")


def test_a_server_that_goes_down_exits_4_and_leaves_the_registry_as_it_was(stream, tmp_path):  # noqa: F811
    port = _free_port()
    work = tmp_path / "job"
    with mlflow_server(tmp_path, port) as url:
        assert (
            run_retrain(_config(stream, url, stream / "sessions", work, "retrain.end=2026-08-31"))
            == 0
        )
    # the server is down now: the next job says so and touches nothing
    code = run_retrain(_config(stream, url, stream / "sessions", work, "retrain.end=null"))
    assert code == EXIT_TRACKING
    summary = json.loads((work / "summary.json").read_text())
    assert summary["exit_code"] == EXIT_TRACKING and "cannot be reached" in summary["error"]
    with mlflow_server(tmp_path, port) as url:
        client = MlflowClient(url, registry_uri=url)
        assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]
        assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
