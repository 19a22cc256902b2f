"""What a sweep or a search may optimise, and in which direction.

A run logs hundreds of metrics; a sweep (`eval.objective`) or a search (`search.metric`) ranks its
jobs by one of them. Only the validation log-loss and cross-validation summaries are fair to
rank by (a test metric chosen on would no longer be a test), and every name is checked before
anything trains: a misspelt objective would otherwise be noticed only after the first job had
trained, logged and registered. Each metric also knows which way is better, so that a sweep
ranked by ROC-AUC never registers its worst job.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import numpy as np

from pipelines.core.cv import EvalConfigError
from pipelines.core.training import evaluation_metrics

MINIMIZE, MAXIMIZE = "minimize", "maximize"
STATS = ("mean", "ci_low", "ci_high", "std")
# metrics where lower is better; every other metric (accuracy, F1, AUC, precision, lift...) is
# better higher
LOWER_IS_BETTER = ("logloss", "brier", "brier_positive", "ece")


def known_objectives(classes: Sequence[str]) -> set[str]:
    """Every metric a sweep or search may rank by, for a dataset with these classes: the
    validation log-loss and `cv/<metric>/<mean|ci_low|ci_high|std>` of every metric a fold
    reports."""
    k = len(classes)
    y = np.repeat(np.arange(k), 2)
    proba = np.full((len(y), k), 1.0 / k)
    proba[np.arange(len(y)), y] += 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    names = [*evaluation_metrics(y, proba, list(classes)), "best_iteration"]
    return {"val/logloss"} | {f"cv/{m}/{s}" for m in names for s in STATS}


def check_objective(metric: str, cfg: Mapping, key: str) -> None:
    """Refuse, before anything trains, an objective this config's runs will not report: a
    misspelt name (with the closest known ones), a test metric, or a cross-validation metric
    while `eval.cv.folds` is 0."""
    if metric.startswith("test/"):
        raise EvalConfigError(
            f"{key}={metric}: test metrics are for reporting, not for choosing (the test split "
            "would no longer be a test); rank by val/logloss or a cv/ metric"
        )
    known = known_objectives(cfg["data"]["label"]["classes"])
    if metric not in known:
        close = difflib.get_close_matches(metric, sorted(known), n=4, cutoff=0.6)
        hint = f"did you mean {close}?" if close else "e.g. val/logloss or cv/logloss/mean"
        raise EvalConfigError(f"{key}={metric} is not a metric a run reports; {hint}")
    if metric.startswith("cv/") and not int(cfg["eval"]["cv"]["folds"]):
        raise EvalConfigError(
            f"{key}={metric} is a cross-validation metric, but eval.cv.folds is 0: "
            "set eval.cv.folds (e.g. eval.cv.folds=3), or optimise val/logloss"
        )


def check_calibration(settings: Mapping) -> None:
    """Refuse `eval.calibration` settings that cannot work, before anything trains."""
    folds, gain = settings.get("folds", 5), settings.get("min_gain", 0.0)
    if int(folds) != folds or folds < 2:
        raise EvalConfigError(f"eval.calibration.folds must be a whole number >= 2, got {folds}")
    if not 0 <= gain < 1:
        raise EvalConfigError(f"eval.calibration.min_gain must be in [0, 1), got {gain}")


def metric_direction(metric: str) -> str:
    """`minimize` or `maximize`: which way `metric` is better (a spread, `.../std`, is always
    better smaller)."""
    parts = metric.split("/")
    if parts[-1] == "std":
        return MINIMIZE
    base = parts[1] if parts[0] == "cv" and len(parts) > 2 else parts[-1]
    return MINIMIZE if base in LOWER_IS_BETTER else MAXIMIZE


def resolve_direction(metric: str, direction: str, key: str) -> str:
    """The direction to optimise `metric` in: its own with `auto`; a given one only when it
    agrees (minimising an AUC is always a mistake, and it would pick the worst model)."""
    natural = metric_direction(metric)
    if direction in ("auto", None):
        return natural
    if direction != natural:
        raise EvalConfigError(
            f"{key}={direction}, but {metric} is better {'lower' if natural == MINIMIZE else 'higher'}: "
            f"use {key}={natural}" + (" (or auto)" if key == "eval.direction" else "")
        )
    return natural


def objective_value(metrics: Mapping[str, float], metric: str, key: str) -> float:
    """The value of `metric` among a run's `metrics`; an `EvalConfigError` naming `key` when the
    run did not report it."""
    if metric not in metrics:
        close = difflib.get_close_matches(metric, sorted(metrics), n=4, cutoff=0.6)
        raise EvalConfigError(f"{key}={metric} is not a metric of this run (closest: {close})")
    return float(metrics[metric])
