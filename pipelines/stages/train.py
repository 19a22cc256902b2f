"""`micromoment train`: sessions -> contract -> features -> LightGBM -> evaluate -> MLflow.

The configured engine trains (`pipelines.engines`: in this process, or on a Dask cluster) and
returns a `TrainResult`, evaluated the same way wherever it ran; `tracking.train_run` logs it and
registers the model, so logging and registering do not know where the model was trained.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipelines.core.cv import check_cv
from pipelines.core.objectives import (
    check_calibration,
    check_objective,
    objective_value,
    resolve_direction,
)
from pipelines.core.training import TrainResult
from pipelines.engines import engine_for
from pipelines.stages.runner import command, in_sweep
from pipelines.tracking.train_run import log_and_register


def train(
    cfg: Mapping, sessions: pd.DataFrame | None = None, callbacks: list | None = None
) -> TrainResult:
    """Train and evaluate the intent model of `cfg` (a plain dict of a train config) on the
    engine it names. Reads `cfg["data"]["path"]` unless `sessions` (raw, the user's columns) is
    given; `callbacks` are extra LightGBM callbacks (hyperparameter search prunes with one)."""
    return engine_for(cfg["engine"]).train(cfg, sessions, callbacks)


def print_summary(result: TrainResult, summary: Mapping) -> None:
    m = result.metrics
    lines = [
        "",
        f"run id:         {summary['run_id']}",
        f"registered:     micro_moment_intent version {summary['registered_version']}"
        if summary.get("registered_version")
        else "registered:     (not registered)",
        f"rows:           {int(m['data/rows_in'])} in, {int(m['data/rows_kept'])} kept, {int(m['data/rows_rejected'])} rejected",
        f"test accuracy:  {m['test/accuracy']:.4f}   macro-F1: {m['test/macro_f1']:.4f}   log-loss: {m['test/logloss']:.4f}",
    ]
    if "test/bayes/accuracy" in m:
        lines.append(
            f"Bayes-optimal:  accuracy {m['test/bayes/accuracy']:.4f} (model at {m['test/ratio_to_bayes/accuracy']:.1%}), log-loss {m['test/bayes/logloss']:.4f}"
        )
    if "cv/accuracy/mean" in m:
        lines.append(
            f"cross-val:      accuracy {m['cv/accuracy/mean']:.4f} "
            f"(95% interval {m['cv/accuracy/ci_low']:.4f} to {m['cv/accuracy/ci_high']:.4f}), "
            f"log-loss {m['cv/logloss/mean']:.4f} "
            f"({m['cv/logloss/ci_low']:.4f} to {m['cv/logloss/ci_high']:.4f}) "
            f"over {int(m['cv/folds'])} folds"
        )
    if result.calibration:
        lines.append(f"calibration:    {result.calibration['reason']}")
    if "test/logreg/accuracy" in m:
        lines.append(
            f"baselines:      logistic regression {m['test/logreg/accuracy']:.4f}, majority class {m['test/majority/accuracy']:.4f}"
        )
    if summary.get("gate") is not None:
        verdict = (
            "promoted to @champion" if summary["gate"].promote else "kept the current @champion"
        )
        lines.append(f"gate:           {verdict} ({summary['gate'].reason})")
    uri = summary["tracking_uri"]
    lines.append(
        f"see the run:    mlflow ui --backend-store-uri {uri}"
        + ("" if uri.startswith("sqlite") else "  (or open the server)")
    )
    print("\n".join(lines), flush=True)


def run_train(
    cfg: DictConfig, overrides: list[str] | None = None, output_dir: str | None = None
) -> float:
    """Train, log and register; returns `eval.objective` (what sweepers minimise: the validation
    log-loss unless set)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    objective = container["eval"]["objective"]
    # settings that cannot work are refused before anything trains
    check_objective(objective, container, "eval.objective")
    resolve_direction(objective, container["eval"]["direction"], "eval.direction")
    check_cv(**container["eval"]["cv"])
    check_calibration(container["eval"]["calibration"])
    result = train(container)
    summary = log_and_register(
        container,
        result,
        overrides or [],
        output_dir or container["output_dir"],
        sweep_job=in_sweep(),
    )
    print_summary(result, summary)
    return objective_value(result.metrics, objective, "eval.objective")


def task_overrides() -> list[str]:

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


@command("train")
def main(cfg: DictConfig) -> float:
    return run_train(cfg, task_overrides())
