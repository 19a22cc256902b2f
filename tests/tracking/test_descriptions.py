"""The registry's words about the model (its contract) and each version (its record)."""

from __future__ import annotations

import pytest

from pipelines.core.contract import DatasetSpec
from pipelines.core.gate import Decision, TrainingSpan
from pipelines.tracking.descriptions import (
    MAX_DESCRIPTION,
    model_description,
    version_description,
)
from tests.fixtures import hand_built_model

SPAN = TrainingSpan("journey", 7, 0.15, 0.15, "2026-09-01T00:00:00", "2026-10-31T00:00:00")


@pytest.fixture(scope="module")
def contract() -> dict:
    return hand_built_model(30).describe()


def test_the_model_description_names_every_input_column_and_output(contract):
    text = model_description(contract, "micro_moment_intent")
    for col in contract["columns"].values():
        if col:
            assert f"`{col}`" in text
    for col in contract["page_counts"].values():
        assert f"`{col}`" in text
    for c in contract["classes"]:
        assert f"`p_{c}`" in text
    assert 'load_model("models:/micro_moment_intent@champion")' in text
    assert f"Only `{contract['columns']['session_id']}` is required" in text


def test_a_table_without_ids_and_with_extra_columns_is_described_as_it_is():
    spec = DatasetSpec(
        columns={"session_id": None, "region": "Region"},
        page_counts={"product": "ProductRelated"},
        label_column="Revenue",
        classes=("no_purchase", "purchase"),
        extra_numeric=("PageValues", "BounceRates"),
        extra_categorical=("VisitorType",),
    )
    contract = {
        "classes": list(spec.classes),
        "columns": dict(spec.columns),
        "page_counts": dict(spec.page_counts),
        "extra_numeric": list(spec.extra_numeric),
        "extra_categorical": list(spec.extra_categorical),
    }
    text = model_description(contract, "m")
    assert "`PageValues`, `BounceRates`, `VisitorType`" in text
    assert "No column is required (the row number is the session id)" in text
    assert "`p_no_purchase`, `p_purchase`" in text


def test_a_version_description_has_the_window_metrics_cv_interval_and_gate():
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
        metrics, "synthetic", "abc123", SPAN, "temperature lowers validation log-loss", decision
    )
    assert "12,000 sessions (3 rejected)" in text and "fingerprint abc123" in text
    assert "2026-09-01T00:00:00 to 2026-10-31T00:00:00" in text
    assert "accuracy 0.8123" in text and "macro-F1 0.8000" in text
    assert "over 9 folds: accuracy 0.8000 (95% interval 0.7900 to 0.8100)" in text
    assert "Calibration: temperature lowers validation log-loss." in text
    assert "Gate: promoted to @champion (macro_f1 +0.01 over the champion)." in text


def test_a_version_without_cv_calibration_or_gate_says_only_what_happened():
    text = version_description({"test/accuracy": 0.7}, "web_analytics", "f00")
    assert "Cross-validation" not in text and "Calibration" not in text and "Gate" not in text
    assert "Trained on web_analytics" in text


def test_descriptions_fit_mlflows_limit():
    decision = Decision(False, "x" * 20000, 0.8, 0.81, -0.01)
    text = version_description({}, "synthetic", "f00", SPAN, None, decision)
    assert len(text) == MAX_DESCRIPTION
