"""A training run in MLflow: its metrics, figures and artifacts, the registered model version, its
alias and, when asked, the gate against the champion. Whichever engine trained the model."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipelines.core.gate import Decision, TrainingSpan
from pipelines.core.training import TrainResult
from pipelines.io.outputs import write_rejects
from pipelines.reports import plots, ranking_plots
from pipelines.tracking import runs
from pipelines.tracking.descriptions import (
    CALIBRATION_TAG,
    CONTRACT_ARTIFACT,
    describe_in_registry,
    version_description,
)
from pipelines.tracking.model_format import log_intent_model
from pipelines.tracking.promotion import gate, policy_from
from pipelines.tracking.registry import set_alias

log = logging.getLogger(__name__)


def render_figures(result: TrainResult) -> dict:
    """Matplotlib figures of a training result, keyed by artifact path."""
    cm, classes = result.figures["confusion"]
    y, proba, classes = result.figures["reliability"]
    names, gain = result.figures["importance"]
    figures = {
        "plots/confusion_matrix.png": plots.confusion_figure(cm, classes),
        "plots/reliability.png": plots.reliability_figure(y, proba, classes),
        "plots/feature_importance.png": plots.importance_figure(
            list(names), np.asarray(gain, dtype=float)
        ),
    }
    y, proba, classes = result.figures["ranking"]
    figures.update(
        {
            "plots/roc.png": ranking_plots.roc_figure(y, proba, classes),
            "plots/precision_recall.png": ranking_plots.pr_figure(y, proba, classes),
            "plots/cumulative_gain.png": ranking_plots.gain_figure(y, proba, classes),
            "plots/lift.png": ranking_plots.lift_figure(y, proba, classes),
        }
    )
    if "reliability_uncalibrated" in result.figures:
        y, proba, classes = result.figures["reliability_uncalibrated"]
        figures["plots/reliability_uncalibrated.png"] = plots.reliability_figure(y, proba, classes)
    if "drivers" in result.figures:
        figures["plots/drivers_by_intent.png"] = plots.drivers_figure(result.figures["drivers"])
    return figures


def log_and_register(
    cfg: Mapping,
    result: TrainResult,
    overrides: list[str],
    output_dir: str | None,
    tags: Mapping[str, str] | None = None,
    sweep_job: bool = False,
    command: str = "train",
) -> dict:
    """Log a finished training run to MLflow and register its model; returns a summary.

    `tags` go on the run and on the registered version. A sweep's job (`sweep_job`) is logged
    unregistered and marked registrable: the sweep registers its best job when it ends. The run
    records as params the config keys of `command` (`retrain` adds its window settings).
    """
    start = time.perf_counter()
    experiment_id = runs.setup(cfg["tracking"])
    name = cfg["tracking"]["run_name"] or runs.run_name(command, cfg["data"]["name"])
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=name, nested=mlflow.active_run() is not None
    ) as run:
        log_result(cfg, result, overrides, output_dir, command)
        log_cv_folds(result.cv_folds, name)
        tags = {**(tags or {})}
        if result.span is not None:
            tags[TrainingSpan.TAG] = result.span.to_json()
        if tags:
            mlflow.set_tags(tags)
        info, version = register(cfg["registry"], result, tags, sweep_job)
        mlflow.log_metric("time/log_s", time.perf_counter() - start)
        decision = judge_new_version(cfg, result, version, sweep_job)
        if version is not None:
            text = version_description(
                result.metrics,
                cfg["data"]["name"],
                result.fingerprint,
                result.span,
                result.calibration.get("reason"),
                decision,
            )
            describe_in_registry(
                cfg["registry"]["model_name"], version, result.model.describe(), text
            )
        uri = runs.resolve_tracking_uri(cfg["tracking"]["uri"])
        return {
            "gate": decision,
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "model_uri": info.model_uri,
            "registered_version": version,
            "tracking_uri": runs.redact(uri),
        }


def log_result(
    cfg: Mapping,
    result: TrainResult,
    overrides: list[str],
    output_dir: str | None,
    command: str = "train",
):
    """The active run's config, data fingerprint, metrics, timings, figures, model contract,
    drift reference and rejected rows."""
    runs.log_run_config(cfg, overrides, command=command)
    runs.log_datasets(result.inputs)
    log_learning_curves(result.learning_curves)
    mlflow.set_tags(
        {"data_fingerprint": result.fingerprint, "dataset": cfg["data"]["name"], "stage": "train"}
    )
    mlflow.log_param("data_fingerprint", result.fingerprint)
    mlflow.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
    mlflow.log_metrics({f"time/{k}_s": v for k, v in result.timings.items()})
    for path, fig in render_figures(result).items():
        runs.log_figure(fig, path)
    runs.write_json_artifact(result.model.describe(), CONTRACT_ARTIFACT)
    if result.calibration:
        mlflow.set_tag(CALIBRATION_TAG, result.calibration["reason"][:5000])
    if "drivers" in result.figures:
        runs.write_json_artifact(result.figures["drivers"], "plots/drivers_by_intent.json")
    runs.write_json_artifact(result.drift_reference, "drift_reference.json")
    if len(result.rejects):
        target = Path(output_dir or ".") / "rejects.parquet"
        write_rejects(result.rejects, target)
        mlflow.log_artifact(str(target), "rejects")
        log.warning("%d rows rejected; reasons in %s", len(result.rejects), target)


def log_learning_curves(curves: Mapping[str, Mapping[str, list[float]]]) -> None:
    """Each boosting round's training and validation loss as MLflow metrics with steps
    (`curve/train/multi_logloss` at step 0, 1, ...): the UI draws them as learning curves."""
    run_id = mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    points = [
        Metric(f"curve/{side}/{metric}", float(value), now, step)
        for side, by_metric in curves.items()
        for metric, values in by_metric.items()
        for step, value in enumerate(values)
        if np.isfinite(value)
    ]
    client = MlflowClient()
    for start in range(0, len(points), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=points[start : start + 1000], synchronous=True)


def log_cv_folds(folds: list[dict], parent_name: str) -> None:
    """Each cross-validation fold as a child run of the active run: its rows and metrics."""
    experiment_id = mlflow.active_run().info.experiment_id
    for fold in folds:
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{parent_name} cv {fold['name']}", nested=True
        ):
            # counted from 1, as the run names count them
            mlflow.set_tags(
                {"stage": "cv", "cv.repeat": fold["repeat"] + 1, "cv.fold": fold["fold"] + 1}
            )
            mlflow.log_params(
                {"cv.train_rows": fold["train_rows"], "cv.test_rows": fold["test_rows"]}
            )
            mlflow.log_metrics({f"cv/{k}": v for k, v in fold["metrics"].items() if np.isfinite(v)})


def register(reg: Mapping, result: TrainResult, tags: Mapping[str, str], sweep_job: bool):
    """Log the model, register it (unless `registry.register` is off or this is a sweep's job),
    tag the version and set its alias; returns MLflow's model info and the version (or None)."""
    registering = bool(reg["register"])
    info = log_intent_model(
        result.model,
        result.input_example,
        reg["model_name"] if registering and not sweep_job else None,
        model_name=reg["model_name"],
    )
    if sweep_job and registering:
        # the sweep registers its best job's logged model by its id when the sweep ends
        mlflow.set_tags({"sweep.registrable": "true", "model_id": str(info.model_id)})
    version = getattr(info, "registered_model_version", None)
    if version is not None:
        client = MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(reg["model_name"], str(version), key, value)
        if reg["alias"]:
            set_alias(reg["model_name"], version, reg["alias"])
    return info, version


def judge_new_version(
    cfg: Mapping, result: TrainResult, version: str | None, sweep_job: bool
) -> Decision | None:
    """The gate on a newly registered version when `registry.gate` asks for it (recorded on the
    run as tags); None when there is nothing to judge."""
    if not cfg["registry"]["gate"]:
        return None
    if sweep_job:
        log.warning(
            "registry.gate is not applied to sweep jobs: judge the sweep's best with "
            "`micromoment promote`"
        )
    if version is None:
        return None
    decision = gate(
        MlflowClient(),
        cfg["registry"]["model_name"],
        str(version),
        result.test_raw,
        result.test_labels,
        result.test_fingerprint,
        policy_from(cfg["gate"]),
        int(cfg["runtime"]["threads"]),
    )
    mlflow.set_tags(
        {
            "gate.decision": "promoted" if decision.promote else "kept_champion",
            "gate.reason": decision.reason[:5000],
        }
    )
    return decision
