"""Sweeps as one MLflow parent run with a child run per job (a Hydra callback).

`micromoment train -m model.params.learning_rate=0.03,0.1` opens a parent run when the sweep
starts; every job's training run is nested under it; when the sweep ends the best child (lowest
`val/logloss`, what the jobs return) is tagged on the parent, and a table of all jobs is printed and
logged as `sweep_summary.md` and `sweep_summary.csv`. Jobs run one after another in this process
(Hydra's basic launcher), which is what lets them nest under the parent run.
"""

from __future__ import annotations

import logging
import math
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipelines.config.schema import RegistrySchema
from pipelines.core.cv import EvalConfigError
from pipelines.core.gate import TrainingSpan
from pipelines.core.objectives import MINIMIZE, metric_direction, resolve_direction
from pipelines.tracking import runs
from pipelines.tracking.descriptions import describe_from_run

log = logging.getLogger(__name__)
SUMMARY_METRICS = (
    "val/logloss",
    "test/accuracy",
    "test/macro_f1",
    "test/logloss",
    "test/ratio_to_bayes/accuracy",
)


def summary_table(
    jobs: list[dict[str, Any]], metric: str, lower_is_better: bool = True
) -> pd.DataFrame:
    """One row per job, best first; failed jobs last."""
    table = pd.DataFrame(jobs)
    if table.empty:
        return table
    key = table[metric].astype(float)
    key = key if lower_is_better else -key
    table = (
        table.assign(_key=key.fillna(math.inf))
        .sort_values("_key", kind="mergesort")
        .drop(columns="_key")
    )
    return table.reset_index(drop=True)


class MlflowSweepCallback(Callback):
    """Parent run per sweep, child run per job, best child tagged on the parent."""

    def __init__(self, metric: str = "val/logloss", direction: str = "auto") -> None:
        self.metric = metric
        # the metric's own direction: a sweep ranked by ROC-AUC registers its highest job (a
        # direction against the metric is refused by each job, naming eval.direction)
        try:
            chosen = resolve_direction(metric, direction, "eval.direction")
        except EvalConfigError:
            chosen = metric_direction(metric)
        self.lower_is_better = chosen == MINIMIZE
        self.parent = None
        self.jobs: list[dict[str, Any]] = []
        self.registered: tuple[str, str, str | None] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:

        tracking_cfg = OmegaConf.to_container(config.tracking, resolve=True)
        experiment_id = runs.setup(tracking_cfg)
        overrides = list(config.hydra.overrides.task)
        name = f"sweep-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        self.parent = mlflow.start_run(experiment_id=experiment_id, run_name=name)
        mlflow.set_tags(
            {
                "sweep": "parent",
                "overrides": runs.redact(" ".join(overrides))[:5000],
                "git_commit": runs.git_commit(),
            }
        )
        self.jobs = []
        log.info("sweep parent run %s", self.parent.info.run_id)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.parent is None:
            return

        seen = {job["run_id"] for job in self.jobs}
        children = mlflow.search_runs(
            experiment_ids=[self.parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent.info.run_id}'",
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )
        child = next((r for r in children if r.info.run_id not in seen), None)
        row: dict[str, Any] = {
            "job": len(self.jobs),
            "overrides": " ".join(job_return.overrides or []),
            "status": job_return.status.name,
            "run_id": child.info.run_id if child is not None else None,
        }
        metrics = child.data.metrics if child is not None else {}
        for key in SUMMARY_METRICS:
            row[key] = metrics.get(key, math.nan)
        if job_return.status == JobStatus.COMPLETED and isinstance(
            job_return._return_value, int | float
        ):
            row[self.metric] = float(job_return._return_value)
        self.jobs.append(row)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is None:
            return

        table = summary_table(self.jobs, self.metric, self.lower_is_better)
        done = table[table["status"] == "COMPLETED"] if not table.empty else table
        if not done.empty and pd.notna(done.iloc[0][self.metric]):
            best = done.iloc[0]
            mlflow.set_tags(
                {
                    "best_child_run_id": best["run_id"] or "",
                    "best_overrides": best["overrides"] or "(none)",
                }
            )
            mlflow.log_metric(f"best/{self.metric}", float(best[self.metric]))
            if best["run_id"]:
                self.registered = register_best(config, best["run_id"])
        mlflow.log_metric("sweep/jobs", len(table))
        mlflow.log_metric(
            "sweep/failed_jobs",
            int((table["status"] != "COMPLETED").sum()) if not table.empty else 0,
        )
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "sweep_summary.md").write_text(
                table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False)
            )
            table.to_csv(Path(tmp) / "sweep_summary.csv", index=False)
            mlflow.log_artifacts(tmp)
        mlflow.end_run()
        shown = table.drop(columns=["run_id"]) if not table.empty else table
        print(
            f"\nsweep of {len(table)} jobs (parent run {self.parent.info.run_id}), best first by {self.metric}:",
            flush=True,
        )
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
        if self.registered is not None:
            name, version, alias = self.registered
            print(
                f"registered the best job as {name} version {version}"
                + (f" (@{alias})" if alias else ""),
                flush=True,
            )
        self.parent = None


def register_best(config: DictConfig, run_id: str) -> tuple[str, str, str | None] | None:
    """Register the best job's model and point the registry alias (`@challenger`) at it.

    Jobs of a sweep log their models without registering them, so a sweep adds one version to
    the registry, never one per job, and the alias lands on the best job by the sweep metric.
    """

    reg = RegistrySchema(
        **(OmegaConf.to_container(config.registry, resolve=True) if "registry" in config else {})
    )
    if not reg.register:
        return None
    client = MlflowClient()
    run = client.get_run(run_id)
    if run.data.tags.get("sweep.registrable") != "true":
        return None
    name = reg.model_name
    model_id = run.data.tags.get("model_id")
    source = f"models:/{model_id}" if model_id else f"runs:/{run_id}/model"
    version = str(mlflow.register_model(source, name).version)
    for key in (TrainingSpan.TAG, "data_fingerprint"):
        if key in run.data.tags:
            client.set_model_version_tag(name, version, key, run.data.tags[key])
    client.set_model_version_tag(
        name, version, "sweep.parent_run_id", run.data.tags.get("mlflow.parentRunId", "")
    )
    describe_from_run(name, version, run_id)
    alias = reg.alias
    if alias:
        client.set_registered_model_alias(name, alias, version)
    log.info("sweep: registered the best job (run %s) as %s version %s", run_id, name, version)
    return name, version, alias


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
