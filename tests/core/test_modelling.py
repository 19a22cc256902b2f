"""The model's building blocks: journey-whole splits, LightGBM parameters and probabilities,
calibration error."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from pipelines.core import modelling
from tests.conftest import compose_config


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


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.2), (0.2, 1.0), (0.5, 0.5), (-0.1, 0.2)])
def test_split_sizes_outside_the_unit_interval_or_summing_to_one_are_refused(val, test):
    sessions = pd.DataFrame({"session_id": ["a", "b"], "journey_id": ["j1", "j2"]})
    with pytest.raises(ValueError, match=f"got val={val}, test={test}"):
        modelling.split_sessions(sessions, val, test)


def test_a_time_split_without_start_times_is_refused():
    sessions = pd.DataFrame({"session_id": ["a", "b"], "journey_id": ["j1", "j2"]})
    with pytest.raises(ValueError, match="split.by=time needs a started_at column"):
        modelling.split_sessions(sessions, 0.2, 0.2, by="time")
    with pytest.raises(ValueError, match="split.by must be 'journey' or 'time', got 'random'"):
        modelling.split_sessions(sessions, 0.2, 0.2, by="random")


def test_a_time_split_of_ten_journeys_puts_the_last_two_in_test_and_the_two_before_in_val():
    starts = pd.date_range("2026-01-01", periods=10, freq="D", tz="UTC")
    sessions = pd.DataFrame(
        {"session_id": [f"s{i}" for i in range(10)], "journey_id": [f"j{i}" for i in range(10)]}
    ).assign(started_at=starts)
    shuffled = sessions.sample(frac=1.0, random_state=0)
    side = modelling.split_sessions(shuffled, 0.2, 0.2, by="time").sort_index()
    assert side.tolist() == ["train"] * 6 + ["val"] * 2 + ["test"] * 2


def test_lgb_params_pick_the_objective_for_the_class_count_and_keep_the_models_params():
    model_cfg = {"params": {"learning_rate": 0.1, "num_leaves": 7}}
    binary = modelling.lgb_params(model_cfg, 2, threads=3, seed=9)
    assert binary["objective"] == "binary" and binary["metric"] == "binary_logloss"
    assert "num_class" not in binary
    multi = modelling.lgb_params(model_cfg, 4, threads=1, seed=0)
    assert (multi["objective"], multi["metric"], multi["num_class"]) == (
        "multiclass",
        "multi_logloss",
        4,
    )
    assert binary["learning_rate"] == 0.1 and binary["num_leaves"] == 7
    assert (binary["num_threads"], binary["seed"], binary["deterministic"]) == (3, 9, True)
    assert model_cfg == {"params": {"learning_rate": 0.1, "num_leaves": 7}}  # not changed


def test_binary_probabilities_have_a_column_per_class_that_sum_to_one():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=200)})
    y = (X["x"] > 0).astype(int).to_numpy()
    params = modelling.lgb_params({"params": {"min_data_in_leaf": 5}}, 2, threads=1, seed=0)
    booster = lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=5)
    proba = modelling.booster_proba(booster, X, 2, threads=1)
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (proba[y == 1, 1] > 0.5).all() and (proba[y == 0, 0] > 0.5).all()


def test_a_feature_matrix_holds_category_codes_and_nan_for_missing_values():
    X = pd.DataFrame(
        {
            "device": pd.Categorical(["mobile", None, "desktop"], categories=["desktop", "mobile"]),
            "dwell": [1.5, np.nan, 3.0],
        }
    )
    np.testing.assert_array_equal(
        modelling.feature_matrix(X), np.array([[1.0, 1.5], [np.nan, np.nan], [0.0, 3.0]])
    )
