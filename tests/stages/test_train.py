"""Training and evaluation on small generated data, and the bring-your-own-table config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core import keys, modelling
from pipelines.stages.train import train
from tests.conftest import compose_config
from tests.fixtures import web_analytics_export


def test_training_on_small_synthetic_data_learns_intent(train_config):
    result = train(train_config)
    m = result.metrics
    # far above the majority class, close to the generator's Bayes-optimal posterior
    assert m["test/accuracy"] > m["test/majority/accuracy"] + 0.3
    assert m["test/ratio_to_bayes/accuracy"] > 0.9
    assert m["test/bayes/logloss"] <= m["test/logloss"] * 1.05
    for key in (
        "test/macro_f1",
        "test/ece",
        "test/logreg/accuracy",
        "val/logloss",
        "test/f1_go",
        "test/recall_buy",
    ):
        assert np.isfinite(m[key]), key
    assert m["data/rows_in"] == m["data/rows_kept"] + m["data/rows_rejected"]
    assert m["data/train_rows"] + m["data/val_rows"] + m["data/test_rows"] == m["data/rows_kept"]


def test_model_predicts_raw_sessions_in_input_order(train_config, small_sessions):
    model = train(train_config).model
    raw = small_sessions.drop(columns=["intent"]).sample(frac=1.0, random_state=1)
    out = model.predict(raw)
    assert out["session_id"].tolist() == raw["session_id"].tolist()
    probs = out[[f"p_{c}" for c in model.classes]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert (out["confidence"] >= out["margin"]).all()
    assert set(out["intent"]) <= set(model.classes)


def test_unknown_device_and_missing_location_are_scored(train_config, small_sessions):
    model = train(train_config).model
    raw = small_sessions.head(4).drop(columns=["intent"]).copy()
    raw["device"] = "smartwatch"
    raw["latitude"] = np.nan
    raw["longitude"] = np.nan
    out = model.predict(raw)
    assert out["reject_reason"].isna().all()
    assert np.isfinite(out["p_know"]).all()


def test_invalid_rows_are_returned_with_reason_not_dropped(train_config, small_sessions):
    model = train(train_config).model
    raw = small_sessions.head(5).drop(columns=["intent"]).copy()
    raw.loc[2, "dwell_time_s"] = -3.0
    out = model.predict(raw)
    assert len(out) == 5
    assert "dwell_time_s must be >= 0" in out.loc[2, "reject_reason"]
    assert np.isnan(out.loc[2, "p_know"]) and pd.isna(out.loc[2, "intent"])
    assert out.drop(index=2)["reject_reason"].isna().all()


def test_time_split_tests_on_the_latest_journeys(small_sessions):
    from pipelines.core.contract import DatasetSpec, to_contract

    spec = DatasetSpec.from_config(compose_config("train", ["output_dir=/tmp"])["data"])
    canon = to_contract(small_sessions, spec).sessions
    side = modelling.split_sessions(canon, 0.2, 0.2, by="time", seed=0)
    first = canon.groupby("journey_id")["started_at"].min()
    by_journey = side.groupby(canon["journey_id"]).agg(lambda s: set(s))
    assert by_journey.map(len).eq(1).all(), "a journey spans two splits"
    journey_side = by_journey.map(lambda s: next(iter(s)))
    assert first[journey_side == "test"].min() >= first[journey_side == "train"].max()
    assert first[journey_side == "val"].min() >= first[journey_side == "train"].max()


def test_journey_split_keeps_journeys_whole_and_is_seeded(small_sessions):
    side = modelling.split_sessions(small_sessions, 0.15, 0.15, by="journey", seed=5)
    assert side.groupby(small_sessions["journey_id"]).nunique().eq(1).all()
    again = modelling.split_sessions(
        small_sessions.sample(frac=1.0, random_state=2), 0.15, 0.15, by="journey", seed=5
    )
    assert (again.sort_index() == side.sort_index()).all()
    shares = side.value_counts(normalize=True)
    assert 0.5 < shares["train"] < 0.85


def test_expected_calibration_error_of_perfect_and_overconfident_models():
    y = np.array([0, 1, 0, 1])
    assert modelling.expected_calibration_error(y, np.eye(2)[y]) == 0.0
    over = np.array([[0.99, 0.01]] * 4)  # always 99% sure of class 0, right half the time
    assert modelling.expected_calibration_error(y, over) == pytest.approx(0.49)


def test_bring_your_own_table_trains_binary_from_a_csv(tmp_path):
    export = web_analytics_export(1500)
    path = tmp_path / "online_shoppers.csv"
    export.to_csv(path, index=False)
    cfg = compose_config(
        "train",
        [
            "data=web_analytics",
            f"data.path={path}",
            f"output_dir={tmp_path}",
            "runtime.threads=1",
            "model.num_boost_round=200",
        ],
    )
    result = train(cfg)
    m = result.metrics
    assert result.model.classes == ("no_purchase", "purchase")
    assert m["data/rows_in"] == len(export)
    assert m["test/accuracy"] >= m["test/majority/accuracy"]
    assert m["test/logloss"] < m["test/majority/logloss"], (
        "the model learned nothing beyond the class mix"
    )
    assert "f1_purchase" in "".join(m)
    features = result.model.featurizer.feature_names_
    assert {"PageValues", "VisitorType", "share_product", "bounce"} <= set(features)
    # scoring the raw export (label dropped) works with the same mapping
    out = result.model.predict(export.drop(columns=["Revenue"]).head(20))
    assert out["session_id"].tolist() == [f"row-{i}" for i in range(20)]
    assert out["intent"].isin(["no_purchase", "purchase"]).all()


def test_bring_your_own_table_names_a_missing_column(tmp_path):
    export = web_analytics_export(200).drop(columns=["PageValues"])
    path = tmp_path / "export.csv"
    export.to_csv(path, index=False)
    cfg = compose_config(
        "train", ["data=web_analytics", f"data.path={path}", f"output_dir={tmp_path}"]
    )
    with pytest.raises(ValueError, match=r"export\.csv: required column 'PageValues'"):
        train(cfg)


def test_empty_split_is_a_clear_error(train_config, small_sessions):
    tiny = small_sessions[small_sessions["journey_id"] == small_sessions["journey_id"].iloc[0]]
    with pytest.raises(ValueError, match="split is empty"):
        train(train_config, sessions=tiny)


def test_data_fingerprint_changes_with_content_only():
    a = pd.DataFrame({"x": [1, 2, 3]})
    assert keys.data_fingerprint(a) == keys.data_fingerprint(a.copy())
    assert keys.data_fingerprint(a) != keys.data_fingerprint(a.assign(x=[1, 2, 4]))
