"""Population stability: feature profiles of a training set and the PSI of new data against them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.core.drift import MISSING, feature_psi, intent_mix, profile, psi


def test_psi_of_identical_shares_is_zero_and_of_known_shares_is_the_formula():
    assert psi(np.array([0.2, 0.3, 0.5]), np.array([0.2, 0.3, 0.5])) == 0.0
    expected = (0.75 - 0.5) * np.log(0.75 / 0.5) + (0.25 - 0.5) * np.log(0.25 / 0.5)
    assert psi(np.array([0.5, 0.5]), np.array([0.75, 0.25])) == pytest.approx(expected)


def test_an_empty_bin_is_smoothed_not_infinite():
    value = psi(np.array([0.5, 0.5, 0.0]), np.array([0.4, 0.4, 0.2]))
    assert np.isfinite(value) and value > 0.5


def test_a_numeric_profile_has_decile_edges_and_a_share_for_missing_values():
    values = np.append(np.arange(100, dtype=float), [np.nan] * 25)
    prof = profile(pd.DataFrame({"dwell": values}))["dwell"]
    assert prof["kind"] == "numeric"
    assert prof["edges"] == pytest.approx(np.quantile(np.arange(100.0), np.linspace(0.1, 0.9, 9)))
    assert len(prof["shares"]) == len(prof["edges"]) + 2  # the bins, then missing
    assert sum(prof["shares"]) == pytest.approx(1.0)
    assert prof["shares"][-1] == pytest.approx(0.2)


def test_a_categorical_profile_holds_level_shares_with_missing_as_a_level():
    device = pd.Series(["mobile"] * 6 + ["desktop"] * 3 + [None], dtype="category")
    prof = profile(pd.DataFrame({"device": device}))["device"]
    assert prof["kind"] == "categorical"
    assert dict(zip(prof["levels"], prof["shares"], strict=True)) == pytest.approx(
        {"mobile": 0.6, "desktop": 0.3, MISSING: 0.1}
    )
    json.dumps(prof)  # logged with the model as JSON


def test_data_like_the_reference_does_not_drift_and_shifted_data_does():
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {
            "dwell": rng.normal(100, 20, 5000),
            "device": pd.Categorical(rng.choice(["mobile", "desktop"], 5000, p=[0.7, 0.3])),
        }
    )
    prof = profile(reference)
    same = pd.DataFrame(
        {
            "dwell": rng.normal(100, 20, 5000),
            "device": pd.Categorical(rng.choice(["mobile", "desktop"], 5000, p=[0.7, 0.3])),
        }
    )
    shifted = pd.DataFrame(
        {
            "dwell": rng.normal(160, 20, 5000),
            "device": pd.Categorical(rng.choice(["mobile", "desktop"], 5000, p=[0.2, 0.8])),
        }
    )
    calm, moved = feature_psi(prof, same), feature_psi(prof, shifted)
    assert set(calm) == set(moved) == {"dwell", "device"}
    assert max(calm.values()) < 0.02
    assert min(moved.values()) > 0.25


def test_a_level_never_seen_in_training_counts_as_drift_and_absent_features_are_skipped():
    prof = profile(pd.DataFrame({"device": pd.Categorical(["mobile", "desktop"] * 50)}))
    new = pd.DataFrame({"device": ["smartwatch"] * 50 + ["mobile"] * 50})
    result = feature_psi({**prof, "dwell": {"kind": "numeric", "edges": [], "shares": [1, 0]}}, new)
    assert list(result) == ["device"]
    assert result["device"] > 1.0


def test_the_intent_mix_follows_the_class_order_and_counts_unknown_intents_nowhere():
    intents = pd.Series(["buy", "know", "know", "go", "other"])
    assert intent_mix(intents, ["know", "go", "do", "buy"]) == pytest.approx([0.5, 0.25, 0.0, 0.25])
    assert intent_mix(pd.Series([], dtype=object), ["know", "go"]) == [0.0, 0.0]
