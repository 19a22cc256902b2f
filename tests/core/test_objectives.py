"""What a sweep or a search may rank by, checked before anything trains, and which way is better."""

from __future__ import annotations

import pytest

from pipelines.core.cv import EvalConfigError
from pipelines.core.objectives import (
    MAXIMIZE,
    MINIMIZE,
    check_calibration,
    check_objective,
    known_objectives,
    metric_direction,
    objective_value,
    resolve_direction,
)

CLASSES = ["know", "go", "do", "buy"]


def cfg(folds: int = 3, classes=CLASSES) -> dict:
    return {"data": {"label": {"classes": classes}}, "eval": {"cv": {"folds": folds}}}


def test_the_known_objectives_are_the_validation_loss_and_every_cv_summary():
    known = known_objectives(CLASSES)
    assert "val/logloss" in known
    for name in ("cv/logloss/mean", "cv/roc_auc_macro/ci_low", "cv/lift_buy_at_10/mean"):
        assert name in known
    assert "cv/top2_accuracy/mean" in known and "cv/roc_auc/mean" not in known
    binary = known_objectives(["no_purchase", "purchase"])
    assert "cv/roc_auc/mean" in binary and "cv/top2_accuracy/mean" not in binary


@pytest.mark.parametrize(
    "metric,message",
    [
        ("val/log_loss", r"not a metric a run reports; did you mean \['val/logloss', "),
        ("cv/rocauc_macro/mean", r"did you mean \['cv/roc_auc_macro/mean'"),
        ("test/accuracy", "test metrics are for reporting, not for choosing"),
    ],
)
def test_a_misspelt_or_test_objective_is_refused_with_the_closest_names(metric, message):
    with pytest.raises(EvalConfigError, match=message):
        check_objective(metric, cfg(), "eval.objective")


def test_a_cv_objective_needs_folds():
    check_objective("cv/logloss/mean", cfg(folds=3), "eval.objective")
    with pytest.raises(EvalConfigError, match="eval.cv.folds is 0"):
        check_objective("cv/logloss/mean", cfg(folds=0), "eval.objective")


@pytest.mark.parametrize(
    "metric,direction",
    [
        ("val/logloss", MINIMIZE),
        ("cv/logloss/mean", MINIMIZE),
        ("cv/brier/ci_high", MINIMIZE),
        ("cv/ece/mean", MINIMIZE),
        ("cv/accuracy/std", MINIMIZE),
        ("cv/roc_auc_macro/mean", MAXIMIZE),
        ("cv/accuracy/ci_low", MAXIMIZE),
        ("cv/lift_buy_at_5/mean", MAXIMIZE),
        ("cv/f1_go/mean", MAXIMIZE),
    ],
)
def test_each_metric_knows_which_way_is_better(metric, direction):
    assert metric_direction(metric) == direction
    assert resolve_direction(metric, "auto", "eval.direction") == direction


def test_a_direction_against_the_metric_is_refused():
    assert resolve_direction("cv/roc_auc/mean", "maximize", "search.direction") == MAXIMIZE
    with pytest.raises(EvalConfigError, match="better higher: use search.direction=maximize"):
        resolve_direction("cv/roc_auc/mean", "minimize", "search.direction")


def test_an_objective_missing_from_a_run_is_a_usage_error_naming_the_key():
    assert objective_value({"val/logloss": 0.5}, "val/logloss", "eval.objective") == 0.5
    with pytest.raises(EvalConfigError, match="eval.objective=cv/logloss/mean is not a metric"):
        objective_value({"val/logloss": 0.5}, "cv/logloss/mean", "eval.objective")


@pytest.mark.parametrize(
    "settings,message",
    [({"folds": 1}, "eval.calibration.folds must be"), ({"min_gain": 2.0}, "min_gain must be")],
)
def test_calibration_settings_that_cannot_work_are_refused(settings, message):
    check_calibration({"folds": 5, "min_gain": 0.001})
    with pytest.raises(EvalConfigError, match=message):
        check_calibration({"folds": 5, "min_gain": 0.001, **settings})
