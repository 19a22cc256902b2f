"""The registry's words about the model (its contract) and each version (its record)."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.core.gate import Decision, TrainingSpan
from pipelines.core.training import TrainResult
from pipelines.tracking.descriptions import (
    MAX_DESCRIPTION,
    model_description,
    version_description,
)
from tests.fixtures import hand_built_model


@pytest.fixture(scope="module")
def model():
    return hand_built_model(30)


def result_of(model, metrics: dict, calibration: dict | None = None) -> TrainResult:
    return TrainResult(
        metrics=metrics,
        model=model,
        rejects=pd.DataFrame(),
        fingerprint="abc123",
        span=TrainingSpan("journey", 7, 0.15, 0.15, "2026-09-01T00:00:00", "2026-10-31T00:00:00"),
        calibration=calibration or {},
    )


def test_the_model_description_names_every_input_column_and_output(model):
    text = model_description(model, "micro_moment_intent")
    for col in model.spec.columns.values():
        if col:
            assert f"`{col}`" in text
    for col in model.spec.page_counts.values():
        assert f"`{col}`" in text
    for c in model.classes:
        assert f"`p_{c}`" in text
    assert 'load_model("models:/micro_moment_intent@champion")' in text
    assert "explain" in text


def test_a_version_description_has_the_window_metrics_cv_interval_and_gate(model):
    metrics = {
        "data/rows_kept": 12000.0,
        "data/rows_rejected": 3.0,
        "test/accuracy": 0.81234,
        "test/macro_f1": 0.8,
        "test/logloss": 0.5,
        "cv/folds": 9.0,
        "cv/accuracy/mean": 0.8,
        "cv/accuracy/ci_low": 0.79,
        "cv/accuracy/ci_high": 0.81,
    }
    decision = Decision(True, "macro_f1 +0.01 over the champion", 0.8, 0.79, 0.01)
    text = version_description(
        result_of(model, metrics, {"reason": "temperature lowers validation log-loss"}),
        "synthetic",
        decision,
    )
    assert "12,000 sessions (3 rejected)" in text
    assert "2026-09-01T00:00:00 to 2026-10-31T00:00:00" in text
    assert "accuracy 0.8123" in text and "macro-F1 0.8000" in text
    assert "over 9 folds: accuracy 0.8000 (95% interval 0.7900 to 0.8100)" in text
    assert "Calibration: temperature lowers validation log-loss." in text
    assert "Gate: promoted to @champion (macro_f1 +0.01 over the champion)." in text


def test_a_version_without_cv_calibration_or_gate_says_only_what_happened(model):
    text = version_description(result_of(model, {"test/accuracy": 0.7}), "web_analytics")
    assert "Cross-validation" not in text and "Calibration" not in text and "Gate" not in text
    assert "Trained on web_analytics" in text


def test_descriptions_fit_mlflows_limit(model):
    decision = Decision(False, "x" * 20000, 0.8, 0.81, -0.01)
    text = version_description(result_of(model, {}), "synthetic", decision)
    assert len(text) == MAX_DESCRIPTION
