"""A training run in MLflow: metrics, params, tags, figures, config, and the version registered
under its alias."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.stages.train import train
from pipelines.tracking.train_run import log_and_register


def test_training_run_is_logged_and_registered(train_config, tmp_path):
    result = train(train_config)
    summary = log_and_register(train_config, result, ["runtime.threads=1"], str(tmp_path))
    client = MlflowClient(
        train_config["tracking"]["uri"], registry_uri=train_config["tracking"]["uri"]
    )
    run = client.get_run(summary["run_id"])
    assert run.data.metrics["test/accuracy"] == pytest.approx(result.metrics["test/accuracy"])
    assert "test/bayes/accuracy" in run.data.metrics and "data/rows_rejected" in run.data.metrics
    assert run.data.params["model.params.learning_rate"] == "0.05"
    assert run.data.tags["data_fingerprint"] == result.fingerprint
    assert run.data.tags["overrides"] == "runtime.threads=1"
    assert run.data.tags["git_commit"]
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"], "plots")}
    assert artifacts == {
        "plots/confusion_matrix.png",
        "plots/reliability.png",
        "plots/feature_importance.png",
        "plots/drivers_by_intent.png",
        "plots/drivers_by_intent.json",
    }
    drivers = json.loads(
        Path(
            client.download_artifacts(
                summary["run_id"], "plots/drivers_by_intent.json", str(tmp_path)
            )
        ).read_text()
    )
    assert drivers and set(drivers) <= {"know", "go", "do", "buy"}
    assert all(len(by_reason) >= 5 for by_reason in drivers.values())
    assert {a.path for a in client.list_artifacts(summary["run_id"], "config")} == {
        "config/resolved.yaml",
        "config/overrides.txt",
    }
    version = client.get_model_version_by_alias("micro_moment_intent", "challenger")
    assert version.run_id == summary["run_id"]
    assert str(summary["registered_version"]) == str(version.version)
