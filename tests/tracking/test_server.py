"""Retraining against a real `mlflow server` on loopback (SQLite backend, proxied artifacts), with
MLflow's basic authentication, and a server that dies in the middle of a job."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines.engines.local import LocalEngine
from pipelines.stages.retrain import EXIT_OK, EXIT_TRACKING, EXIT_USAGE, run_retrain
from tests.fixtures import run_consumer
from tests.servers import PASSWORD, SERVERS, USER, free_port, mlflow_server
from tests.stages.test_retrain import NAME, retrain_config, stream  # noqa: F401  (the module-scoped data)

pytestmark = pytest.mark.slow


def _every_text(root: Path) -> str:
    return "\n".join(
        p.read_text(errors="replace")
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in (".db", ".lock") and p.stat().st_size < 5e6
    )


def test_retrain_over_http_with_basic_auth_promotes_and_no_secret_is_recorded(
    stream,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
):
    with mlflow_server(tmp_path, auth=True) as url:
        # credentials in the URI are refused, and that refusal records no secret
        work = tmp_path / "refused"
        with_password = url.replace("http://", f"http://{USER}:{PASSWORD}@")
        assert (
            run_retrain(retrain_config(stream, with_password, stream / "sessions", work))
            == EXIT_USAGE
        )
        # no credentials at all: the server says no, and the job says it cannot use the server
        work = tmp_path / "anonymous"
        assert run_retrain(retrain_config(stream, url, stream / "sessions", work)) == EXIT_TRACKING

        # the way the README says: the URI without them, the credentials in MLflow's variables
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        work = tmp_path / "job"
        cfg = retrain_config(stream, url, stream / "sessions", work, "retrain.end=null")
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

        # the password reaches no param, tag, artifact, summary, log file or stream
        artifacts = Path(
            mlflow.artifacts.download_artifacts(
                f"runs:/{run.info.run_id}/", dst_path=str(tmp_path / "dl")
            )
        )
        streams = capsys.readouterr()
        recorded = json.dumps([run.data.params, run.data.tags, champion.tags, summary])
        for text in (
            recorded,
            _every_text(artifacts),
            _every_text(tmp_path / "refused"),
            _every_text(tmp_path / "anonymous"),
            _every_text(work),
            streams.out,
            streams.err,
        ):
            assert PASSWORD not in text

        # a consumer in a fresh process loads @champion over HTTP and scores raw sessions
        code = (
            "import mlflow, pandas as pd\n"
            f"m = mlflow.pyfunc.load_model('models:/{NAME}@champion')\n"
            "out = m.predict(pd.DataFrame({'session_id': ['a'], 'device': ['mobile'],"
            " 'pages_store_locator': [4], 'dwell_time_s': [40.0]}))\n"
            "print(out['model_version'].iloc[0], out['intent'].iloc[0])\n"
        )
        # the credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD
        consumer = run_consumer(code, tmp_path, url)
        assert consumer.returncode == 0, consumer.stderr[-2000:]
        version, intent = consumer.stdout.split()
        assert version == summary["challenger"] and intent in ("know", "go", "do", "buy")


def test_a_server_that_goes_down_exits_4_and_leaves_the_registry_as_it_was(stream, tmp_path):  # noqa: F811
    port = free_port()
    work = tmp_path / "job"
    with mlflow_server(tmp_path, port) as url:
        assert (
            run_retrain(
                retrain_config(stream, url, stream / "sessions", work, "retrain.end=2026-08-31")
            )
            == 0
        )
    # the server is down now: the next job says so and touches nothing
    code = run_retrain(retrain_config(stream, url, stream / "sessions", work, "retrain.end=null"))
    assert code == EXIT_TRACKING
    summary = json.loads((work / "summary.json").read_text())
    assert summary["exit_code"] == EXIT_TRACKING and "cannot be reached" in summary["error"]
    with mlflow_server(tmp_path, port) as url:
        client = MlflowClient(url, registry_uri=url)
        assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]
        assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"


def test_a_server_that_dies_mid_job_exits_4_in_seconds_and_the_summary_says_so(
    stream,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """The server answers the start-up check, then dies while the challenger trains: the job ends
    with exit 4 within a bounded time (not after minutes of retries), its summary replaces the
    last job's, and the registry is as it was."""
    port = free_port()
    work = tmp_path / "job"
    with mlflow_server(tmp_path, port) as url:
        first = retrain_config(stream, url, stream / "sessions", work, "retrain.end=2026-08-31")
        assert run_retrain(first) == EXIT_OK
    assert json.loads((work / "summary.json").read_text())["exit_code"] == EXIT_OK

    original_train = LocalEngine.train
    with mlflow_server(tmp_path, port) as url:
        died = {}

        def train_then_lose_the_server(*args, **kwargs):
            result = original_train(*args, **kwargs)
            os.killpg(SERVERS[url].pid, 9)  # the server dies before the run is logged
            SERVERS[url].wait(timeout=30)
            died["at"] = time.monotonic()
            return result

        monkeypatch.setattr(LocalEngine, "train", train_then_lose_the_server)
        cfg = retrain_config(stream, url, stream / "sessions", work, "retrain.end=2026-10-31")
        code = run_retrain(cfg)
        elapsed = time.monotonic() - died["at"]
    assert code == EXIT_TRACKING
    assert elapsed < 60, f"the job took {elapsed:.0f} s to give up after the server died"
    summary = json.loads((work / "summary.json").read_text())
    assert summary["exit_code"] == EXIT_TRACKING and "stopped answering" in summary["error"]
    assert summary["window"]["end"].startswith("2026-10-31")  # how far it got
    with mlflow_server(tmp_path, port) as url:
        client = MlflowClient(url, registry_uri=url)
        assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
