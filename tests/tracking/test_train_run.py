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
        "plots/roc.png",
        "plots/precision_recall.png",
        "plots/cumulative_gain.png",
        "plots/lift.png",
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


def test_a_cross_validated_calibrated_run_logs_folds_intervals_datasets_and_curves(
    train_config, tmp_path
):
    cfg = {
        **train_config,
        "eval": {
            **train_config["eval"],
            "cv": {"folds": 3, "repeats": 2, "by": "journey"},
            "calibration": {**train_config["eval"]["calibration"], "methods": ["temperature"]},
        },
        "baselines": False,
        "drivers_rows": 0,
        # what `micromoment run` composes besides the train config: never a train run's param
        "generator": {"n_cities": 3},
        "feed": {"input": "x"},
    }
    result = train(cfg)
    summary = log_and_register(cfg, result, [], str(tmp_path))
    uri = cfg["tracking"]["uri"]
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(summary["run_id"])
    m = run.data.metrics

    # six folds, each a child run in the same experiment, with its own held-out metrics
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert len(children) == 6
    assert {c.data.tags["cv.fold"] for c in children} == {"1", "2", "3"}
    assert {c.data.tags["cv.repeat"] for c in children} == {"1", "2"}
    fold_acc = sorted(c.data.metrics["cv/accuracy"] for c in children)
    assert m["cv/accuracy/mean"] == pytest.approx(sum(fold_acc) / 6)
    assert m["cv/accuracy/ci_low"] < m["cv/accuracy/mean"] < m["cv/accuracy/ci_high"]
    assert m["cv/folds"] == 6.0 and "cv/roc_auc_macro/mean" in m

    # calibration: out-of-fold log-loss per kind, before/after on test, both reliability plots
    assert {"calibration/oof_logloss/none", "calibration/oof_logloss/temperature"} <= set(m)
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    if result.model.calibrator is not None:
        assert "test/uncalibrated/ece" in m and "plots/reliability_uncalibrated.png" in plots

    # lineage: the three splits as datasets, the commit, a readable name, the registry's words
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"synthetic-train", "synthetic-val", "synthetic-test"}
    rows = {k: int({t.key: t.value for t in i.tags}["rows"]) for k, i in inputs.items()}
    assert rows["synthetic-test"] == int(m["data/test_rows"])
    assert run.data.tags["mlflow.source.git.commit"] in run.data.tags["git_commit"]
    assert run.info.run_name.startswith("train synthetic ")
    version = client.get_model_version("micro_moment_intent", summary["registered_version"])
    assert "Cross-validation over 6 folds" in version.description
    assert "Input columns" in client.get_registered_model("micro_moment_intent").description
    assert not any(k.startswith(("generator.", "feed.")) for k in run.data.params)

    # learning curves: one point per boosting round trained (the best one plus the patience
    # early stopping waited), training and validation
    best, cap = result.model.booster.best_iteration, cfg["model"]["num_boost_round"]
    rounds = min(best + cfg["model"]["early_stopping_rounds"], cap)
    for side in ("train", "val"):
        history = client.get_metric_history(run.info.run_id, f"curve/{side}/multi_logloss")
        assert sorted(h.step for h in history) == list(range(rounds))
