"""Sweeps: one parent run with a child run per job, the best job tagged and registered."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.fixtures import run_cli


@pytest.mark.slow
def test_sweep_is_one_parent_run_with_a_child_per_job(tmp_path):
    gen = run_cli(["generate", "generate.n_journeys=300", "runtime.threads=1"], cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    proc = run_cli(
        [
            "train",
            "-m",
            "model.params.learning_rate=0.05,0.2",
            "runtime.threads=1",
            "model.num_boost_round=60",
            "baselines=false",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep of 2 jobs" in proc.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("micromoment")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert sorted(c.data.params["model.params.learning_rate"] for c in children) == ["0.05", "0.2"]
    best = min(children, key=lambda c: c.data.metrics["val/logloss"])
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/logloss"] == pytest.approx(
        best.data.metrics["val/logloss"]
    )
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "sweep_summary.md",
        "sweep_summary.csv",
    }
    # one version for the whole sweep, @challenger on its best job, reporting its own version
    versions = client.search_model_versions("name = 'micro_moment_intent'")
    assert [v.run_id for v in versions] == [best.info.run_id]
    challenger = client.get_model_version_by_alias("micro_moment_intent", "challenger")
    assert challenger.run_id == best.info.run_id
    assert "registered the best job as micro_moment_intent version 1" in proc.stdout
    # described from the job's run, as a version registered by `train` is
    assert challenger.description.startswith("Trained on synthetic: ")
    assert "Input columns" in client.get_registered_model("micro_moment_intent").description
    assert "no artifacts at artifact path" not in proc.stderr
    code = (
        "import mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/micro_moment_intent@challenger')\n"
        "print(m.predict(pd.DataFrame({'session_id': ['a'], 'device': ['mobile']}))"
        "['model_version'].iloc[0])\n"
    )
    consumer = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert consumer.returncode == 0, consumer.stderr[-2000:]
    assert consumer.stdout.strip().splitlines()[-1] == "1"


def test_the_summary_table_puts_the_best_job_first_and_failed_jobs_last():
    from pipelines.tracking.sweep import summary_table

    jobs = [
        {"job": 0, "val/logloss": 0.6},
        {"job": 1, "val/logloss": None},  # failed
        {"job": 2, "val/logloss": 0.4},
        {"job": 3, "val/logloss": 0.6},
    ]
    assert summary_table(jobs, "val/logloss")["job"].tolist() == [2, 0, 3, 1]
    higher = summary_table(jobs, "val/logloss", lower_is_better=False)
    assert higher["job"].tolist() == [0, 3, 2, 1]
    assert summary_table([], "val/logloss").empty


@pytest.mark.parametrize(
    "metric,lower", [("val/logloss", True), ("cv/accuracy/mean", False), ("cv/brier/mean", True)]
)
def test_a_sweep_ranks_by_its_metrics_own_direction(metric, lower):
    from pipelines.tracking.sweep import MlflowSweepCallback

    assert MlflowSweepCallback(metric).lower_is_better is lower
    assert MlflowSweepCallback(metric, "auto").lower_is_better is lower
