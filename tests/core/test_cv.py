"""Cross-validation folds of whole journeys, and the intervals over them."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipelines.core import cv
from pipelines.core.contract import to_contract
from tests.fixtures import HAND_SPEC, hand_built_sessions


@pytest.fixture(scope="module")
def sessions() -> tuple[pd.DataFrame, np.ndarray]:
    canon = to_contract(hand_built_sessions(90), HAND_SPEC, with_label=True).sessions
    codes = pd.Categorical(canon["label"], categories=list(HAND_SPEC.classes)).codes
    return canon, np.asarray(codes, dtype=int)


@pytest.mark.parametrize("by,repeats", [("journey", 3), ("time", 1)])
def test_no_journey_crosses_a_fold_and_each_fold_is_disjoint(sessions, by, repeats):
    canon, codes = sessions
    folds = cv.make_folds(canon, codes, folds=3, repeats=repeats, by=by, seed=4)
    assert len(folds) == 3 * repeats
    journey = canon["journey_id"].to_numpy()
    for fold in folds:
        assert not set(fold.train) & set(fold.test)
        assert not set(journey[fold.train]) & set(journey[fold.test])


def test_journey_folds_score_every_row_once_per_repeat_with_new_shuffles(sessions):
    canon, codes = sessions
    folds = cv.make_folds(canon, codes, folds=3, repeats=2, by="journey", seed=4)
    for r in (0, 1):
        tested = np.concatenate([f.test for f in folds if f.repeat == r])
        assert sorted(tested) == list(range(len(canon)))
    first = [tuple(f.test) for f in folds if f.repeat == 0]
    second = [tuple(f.test) for f in folds if f.repeat == 1]
    assert first != second
    again = cv.make_folds(canon, codes, folds=3, repeats=2, by="journey", seed=4)
    assert [tuple(f.test) for f in again] == [tuple(f.test) for f in folds]  # seeded


def test_journey_folds_keep_the_class_mix(sessions):
    canon, codes = sessions
    overall = np.bincount(codes) / len(codes)
    for fold in cv.make_folds(canon, codes, folds=3, repeats=1, by="journey", seed=1):
        mix = np.bincount(codes[fold.test], minlength=len(overall)) / len(fold.test)
        assert np.abs(mix - overall).max() < 0.08


def test_time_folds_train_on_earlier_journeys_than_they_score(sessions):
    canon, codes = sessions
    first = canon.groupby("journey_id")["started_at"].min()
    for fold in cv.make_folds(canon, codes, folds=3, repeats=1, by="time", seed=0):
        trained = first[canon["journey_id"].iloc[fold.train].unique()]
        scored = first[canon["journey_id"].iloc[fold.test].unique()]
        assert trained.max() <= scored.min()
    # expanding window: each fold trains on more rows than the one before
    sizes = [len(f.train) for f in cv.make_folds(canon, codes, 3, 1, "time", 0)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


@pytest.mark.parametrize(
    "folds,repeats,by,message",
    [
        (1, 1, "journey", "eval.cv.folds must be 0 (off) or at least 2, got 1"),
        (3, 0, "journey", "eval.cv.repeats must be at least 1, got 0"),
        (3, 2, "time", "eval.cv.repeats must be 1, got 2"),
        (3, 1, "random", "eval.cv.by must be one of"),
        (500, 1, "journey", "needs at least 500 journeys, the data has 90"),
    ],
)
def test_settings_that_cannot_make_folds_are_refused_naming_the_key(
    sessions, folds, repeats, by, message
):
    canon, codes = sessions
    with pytest.raises(ValueError, match=re.escape(message)):
        cv.make_folds(canon, codes, folds, repeats, by, 0)


def test_the_summary_has_mean_std_and_the_corrected_t_interval():
    folds = [{"accuracy": a, "logloss": 0.5} for a in (0.80, 0.82, 0.84, 0.86)]
    out = cv.summarise(folds, train_rows=750.0, test_rows=250.0)
    values = np.array([0.80, 0.82, 0.84, 0.86])
    s = values.std(ddof=1)
    # Nadeau-Bengio: var = (1/n + n_test/n_train) * s^2, t with n - 1 degrees of freedom
    half = stats.t.ppf(0.975, 3) * s * math.sqrt(1 / 4 + 250 / 750)
    assert out["accuracy/mean"] == pytest.approx(0.83)
    assert out["accuracy/std"] == pytest.approx(s)
    assert out["accuracy/ci_low"] == pytest.approx(0.83 - half)
    assert out["accuracy/ci_high"] == pytest.approx(0.83 + half)
    # the corrected interval is wider than the naive one over the same folds
    naive = stats.t.ppf(0.975, 3) * s / 2
    assert half > naive
    assert out["logloss/std"] == 0.0 and out["logloss/ci_low"] == pytest.approx(0.5)
    assert out["folds"] == 4.0


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    """Independent folds (no overlap correction: test_to_train = 0) drawn from a known normal:
    the t interval must cover its mean in 95% of many draws."""
    rng = np.random.default_rng(0)
    covered = 0
    trials = 2000
    for _ in range(trials):
        values = rng.normal(0.7, 0.03, size=5)
        half = cv.interval_half_width(values.std(ddof=1), 5, 0.0)
        covered += abs(values.mean() - 0.7) <= half
    assert 0.93 <= covered / trials <= 0.97


def test_one_session_journeys_get_stratified_folds_scoring_each_row_once_per_repeat():
    """A web-analytics export: every row its own journey (plain stratified folds, drawn fast)."""
    n = 600
    labels = (np.random.default_rng(0).random(n) < 0.2).astype(int)
    rows = pd.DataFrame({"session_id": [f"r{i}" for i in range(n)]})
    folds = cv.make_folds(rows, labels, folds=3, repeats=2, by="journey", seed=5)
    for r in (0, 1):
        tested = np.concatenate([f.test for f in folds if f.repeat == r])
        assert sorted(tested) == list(range(n))
    for fold in folds:
        assert abs(labels[fold.test].mean() - labels.mean()) < 0.01
    summary = cv.summarise(
        [{"accuracy": 0.8, "support_buy": 10.0}, {"accuracy": 0.9, "support_buy": 12.0}], 2, 1
    )
    assert "accuracy/ci_low" in summary and not any(k.startswith("support_") for k in summary)
