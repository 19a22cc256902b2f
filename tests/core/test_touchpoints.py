"""Touchpoint optimisation: conversion estimates, eligibility, the feed and the allocation."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from pipelines.core.touchpoints import (
    INSUFFICIENT,
    Catalogue,
    Touchpoint,
    allocate,
    build_feed,
    eligibility,
    estimate_conversion,
    estimate_conversion_from_predictions,
    holdout_flags,
    in_quiet_hours,
    intent_weights,
    journey_context,
    rate_matrix,
)
from tests.conftest import compose_config
from tests.fixtures import generator_params, synthetic_sessions

CLASSES = ["know", "go", "do", "buy"]


def _labelled(n_journeys: int, seed: int) -> pd.DataFrame:
    return synthetic_sessions(n_journeys, seed=seed).rename(columns={"intent": "label"})


def _truth(estimates: pd.DataFrame) -> np.ndarray:
    p = generator_params()
    tps = list(p.touchpoints)
    return np.array(
        [
            p.conversion[CLASSES.index(r.intent), tps.index(r.touchpoint)]
            for r in estimates.itertuples()
        ]
    )


# ---------------------------------------------------------------------------------------------
# conversion estimates


def test_estimator_recovers_known_rates_within_its_intervals():
    """The generator knows the true conversion of every intent x touchpoint: across four samples
    (128 cells) the 95% intervals cover it about 95% of the time and the estimates are close."""
    touchpoints = list(generator_params().touchpoints)
    covered, errors = [], []
    for seed in range(4):
        logs = _labelled(20000, seed)
        weights, source = intent_weights(logs, CLASSES)
        assert source == "label"
        est = estimate_conversion(logs, weights, CLASSES, touchpoints)
        assert (est["status"] == "ok").all()
        truth = _truth(est)
        covered.append((est["ci_low"] <= truth) & (truth <= est["ci_high"]))
        errors.append(np.abs(est["rate"] - truth))
    coverage = np.concatenate(covered).mean()
    assert coverage >= 0.90, f"intervals cover the true rate in only {coverage:.0%} of cells"
    assert np.concatenate(errors).mean() < 0.006


def test_inverse_propensity_weighting_removes_the_logging_policy_bias():
    """Mobile sessions convert better and were shown the touchpoint far more often: the naive rate
    among shown sessions is biased towards mobile; the weighted estimate is not."""
    rng = np.random.default_rng(0)
    n = 40000
    mobile = rng.random(n) < 0.5
    propensity = np.where(mobile, 0.9, 0.1)
    shown = rng.random(n) < propensity
    converted = rng.random(n) < np.where(mobile, 0.5, 0.1)
    logs = pd.DataFrame(
        {
            "touchpoint": np.where(shown, "offer", "other"),
            "touchpoint_propensity": np.where(shown, propensity, 1 - propensity),
            "converted": converted,
            "label": "buy",
        }
    )
    weights, _ = intent_weights(logs, ["buy"])
    est = estimate_conversion(logs, weights, ["buy"], ["offer"], prior_strength=0).iloc[0]
    naive = converted[shown].mean()
    assert naive > 0.43  # (0.9 * 0.5 + 0.1 * 0.1) / 1.0
    assert est["ci_low"] <= 0.30 <= est["ci_high"]
    assert abs(est["rate_ipw"] - 0.30) < 3 * est["se_ipw"]


def test_sparse_cells_are_reported_not_guessed():
    logs = _labelled(3000, 1)
    # keep only a handful of `go` sessions shown the in-store offer
    cell = (logs["label"] == "go") & (logs["touchpoint"] == "in_store_offer")
    logs = logs[~cell | (cell.cumsum() <= 5)]
    weights, _ = intent_weights(logs, CLASSES)
    est = estimate_conversion(logs, weights, CLASSES, list(generator_params().touchpoints))
    row = est[(est["intent"] == "go") & (est["touchpoint"] == "in_store_offer")].iloc[0]
    assert row["status"] == INSUFFICIENT
    assert np.isnan(row["rate"]) and np.isnan(row["ci_low"]) and np.isnan(row["ci_high"])
    assert row["shown"] == 5


def test_predicted_probabilities_stand_in_for_missing_labels():
    logs = _labelled(2000, 2)
    for k, c in enumerate(CLASSES):
        logs[f"p_{c}"] = (k + 1) / 10
    logs.loc[logs.index[0], "label"] = None  # one session without a label: labels are not used
    weights, source = intent_weights(logs, CLASSES)
    assert source == "predicted"
    np.testing.assert_allclose(weights, np.tile([0.1, 0.2, 0.3, 0.4], (len(logs), 1)))
    with pytest.raises(KeyError, match="p_know"):
        intent_weights(logs.drop(columns=["p_know"]), CLASSES, "predicted")


def _coverage(estimator) -> tuple[float, float]:
    """Share of cells whose 95% interval covers the true rate, and the mean absolute error, over
    four samples of 20,000 journeys, with intents known only as the Bayes posterior (calibrated
    by construction)."""
    touchpoints = list(generator_params().touchpoints)
    covered, errors = [], []
    for seed in range(4):
        logs = synthetic_sessions(20000, seed=seed)
        proba = logs[[f"bayes_p_{c}" for c in CLASSES]].to_numpy()
        est = estimator(logs, proba, CLASSES, touchpoints)
        assert (est["status"] == "ok").all()
        truth = _truth(est)
        covered.append((est["ci_low"] <= truth) & (truth <= est["ci_high"]))
        errors.append(np.abs(est["rate"] - truth))
    return float(np.concatenate(covered).mean()), float(np.concatenate(errors).mean())


def test_rates_from_predicted_intents_cover_the_truth_without_labels():
    """Without labels, regressing conversion on the intent probabilities recovers each intent's
    rate: its intervals cover the truth in about 95% of 128 cells. Weighting sessions by their
    probabilities instead blends the intents' rates, and its intervals miss most of them."""
    coverage, error = _coverage(estimate_conversion_from_predictions)
    assert coverage >= 0.90, f"intervals cover the true rate in only {coverage:.0%} of cells"
    assert error < 0.006
    blended, blended_error = _coverage(estimate_conversion)
    assert blended < 0.6 and blended_error > 1.5 * error


def test_intents_the_probabilities_cannot_tell_apart_are_not_estimated():
    logs = _labelled(3000, 4)
    proba = np.zeros((len(logs), 4))
    proba[:, 0] = proba[:, 1] = 0.5  # know and go always equally likely: their rates mix
    proba[:, 2] = 0.0
    est = estimate_conversion_from_predictions(
        logs, proba, CLASSES, ["search_ad"], min_effective_sessions=1
    )
    assert (est["status"] == INSUFFICIENT).all()
    assert est["rate"].isna().all()
    with pytest.raises(ValueError, match="sessions x intents"):
        estimate_conversion_from_predictions(logs, proba[:, :3], CLASSES, ["search_ad"])


def test_missing_logging_columns_are_named():
    logs = _labelled(100, 3).drop(columns=["touchpoint_propensity"])
    with pytest.raises(KeyError, match="touchpoint_propensity"):
        estimate_conversion(logs, np.ones((len(logs), 4)), CLASSES, ["search_ad"])


# ---------------------------------------------------------------------------------------------
# eligibility and the feed


def _catalogue(**overrides) -> Catalogue:
    tps = (
        Touchpoint("search_ad", cost=0.5),
        Touchpoint("local_listing", requires_location=True),
        Touchpoint("push_message", requires_app=True, devices=("mobile",), quiet_hours=(21, 8)),
        Touchpoint("cart_email", frequency_cap=1, cap_days=3),
        Touchpoint("in_store_offer", max_store_km=5),
    )
    return Catalogue(touchpoints=tps, value_per_conversion=10.0, **overrides)


def _journeys() -> pd.DataFrame:
    """Three journeys built by hand: j1 a mobile app user near the store at 14:00 local time who
    got a cart e-mail yesterday; j2 on desktop at 23:00 with no location; j3 on mobile at 22:30,
    an app user 50 km from the store who converted an hour ago."""
    t0 = pd.Timestamp("2026-06-01 12:00", tz="UTC")
    rows = [
        ("j1", "s1a", t0 - pd.Timedelta(days=1), "mobile", "app_push", 48.85, 2.35, "cart_email", False),
        ("j1", "s1b", t0, "mobile", "organic_search", 48.85, 2.35, None, False),
        ("j2", "s2a", t0 + pd.Timedelta(hours=9), "desktop", "direct", np.nan, np.nan, None, False),
        ("j3", "s3a", t0 + pd.Timedelta(hours=7.5), "mobile", "app_push", 48.4, 2.35, "search_ad", True),
        ("j3", "s3b", t0 + pd.Timedelta(hours=8.5), "mobile", "direct", 48.4, 2.35, None, False),
    ]  # fmt: skip
    frame = pd.DataFrame(
        rows,
        columns=[
            "journey_id",
            "session_id",
            "started_at",
            "device",
            "channel",
            "latitude",
            "longitude",
            "touchpoint",
            "converted",
        ],
    )
    frame["utc_offset_min"] = 120
    # shuffled: the latest session is found by time, not by row order
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_eligibility_rules_and_their_reasons():
    catalogue = _catalogue(app_channels=("app_push",))
    ctx = journey_context(_journeys(), catalogue).set_index("journey_id")
    ok, reasons = eligibility(ctx.reset_index(), catalogue, stores=np.array([[48.85, 2.35]]))
    ok = pd.DataFrame(ok, index=ctx.index, columns=catalogue.names)
    why = pd.DataFrame(reasons, index=ctx.index, columns=catalogue.names)
    assert ctx.loc["j1", "session_id"] == "s1b" and ctx.loc["j1", "sessions"] == 2
    assert ok.loc["j1"].drop("cart_email").all()
    assert why.loc["j1", "cart_email"] == "frequency cap 1 per 3 days"
    assert why.loc["j2", "local_listing"] == "no location"
    assert why.loc["j2", "push_message"] == "device not in ['mobile']"
    assert why.loc["j2", "in_store_offer"] == "no location"
    assert why.loc["j3", "push_message"] == "quiet hours 21-8h"  # 22:30 local time
    assert why.loc["j3", "in_store_offer"] == "more than 5 km from a store"
    assert ok.loc["j3", "local_listing"] and ok.loc["j3", "cart_email"]
    assert ctx.loc["j3", "hours_since_conversion"] == pytest.approx(1.0)


def test_quiet_hours_wrap_past_midnight():
    hours = np.arange(24)
    assert list(hours[in_quiet_hours(hours, (21, 8))]) == [0, 1, 2, 3, 4, 5, 6, 7, 21, 22, 23]
    assert list(hours[in_quiet_hours(hours, (12, 14))]) == [12, 13]
    assert not in_quiet_hours(hours, (5, 5)).any()


def _feed(ctx: pd.DataFrame, catalogue: Catalogue, rates: np.ndarray, **kw):
    ok, reasons = eligibility(ctx, catalogue, stores=np.array([[48.85, 2.35]]))
    return build_feed(ctx, CLASSES, rates, catalogue, ok, reasons, **kw)


def _with_intents(ctx: pd.DataFrame) -> pd.DataFrame:
    ctx = ctx.copy()
    ctx[[f"p_{c}" for c in CLASSES]] = [[0.1, 0.7, 0.1, 0.1], [0.2, 0.1, 0.1, 0.6], [0, 1, 0, 0]]
    return ctx


def test_ineligible_touchpoints_are_never_recommended():
    catalogue = _catalogue(app_channels=("app_push",))
    ctx = _with_intents(journey_context(_journeys(), catalogue))
    # make the ineligible touchpoints the most attractive ones
    rates = np.full((4, 5), 0.01)
    rates[:, [2, 3, 4]] = 0.5
    feed = _feed(ctx, catalogue, rates, holdout_share=0.0, suppress_after_conversion_hours=None)
    rows = feed.rows.set_index("journey_id")
    assert rows.loc["j1", "recommended_touchpoint"] in ("push_message", "in_store_offer")
    assert rows.loc["j2", "recommended_touchpoint"] == "cart_email"
    assert rows.loc["j3", "recommended_touchpoint"] == "cart_email"
    for _, r in rows.iterrows():
        eligible = r["eligible_touchpoints"].split(",")
        assert r["recommended_touchpoint"] in eligible
        assert r["runner_up_touchpoint"] in eligible
        assert r["runner_up_touchpoint"] != r["recommended_touchpoint"]
    assert "push_message: device not in ['mobile']" in rows.loc["j2", "ineligible_reasons"]


def test_touchpoints_without_estimates_are_not_recommended():
    catalogue = _catalogue(app_channels=("app_push",))
    ctx = _with_intents(journey_context(_journeys(), catalogue))
    rates = np.full((4, 5), 0.01)
    rates[:, 0] = 0.9
    rates[3, 0] = np.nan  # search_ad has too little data for `buy`
    feed = _feed(ctx, catalogue, rates, holdout_share=0.0, suppress_after_conversion_hours=None)
    assert feed.unestimated == ["search_ad"]
    assert not feed.rows["recommended_touchpoint"].eq("search_ad").any()
    assert feed.rows["ineligible_reasons"].str.contains(f"search_ad: {INSUFFICIENT}").all()


def test_expected_conversion_mixes_rates_by_intent_probabilities():
    catalogue = _catalogue(app_channels=("app_push",))
    ctx = _with_intents(journey_context(_journeys(), catalogue))
    rates = np.random.default_rng(0).uniform(0, 0.2, size=(4, 5))
    feed = _feed(ctx, catalogue, rates, holdout_share=0.0, suppress_after_conversion_hours=None)
    proba = ctx[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(feed.expected_conversion, proba @ rates)
    best = feed.rows["recommended_touchpoint"].map(catalogue.names.index).to_numpy()
    got = feed.rows["expected_conversion"].to_numpy()
    np.testing.assert_allclose(got, (proba @ rates)[np.arange(3), best])
    value = got * 10.0 - catalogue.costs[best]
    np.testing.assert_allclose(feed.rows["expected_value"], value)


def test_value_objective_skips_touchpoints_that_cost_more_than_they_return():
    tps = (Touchpoint("cheap", cost=0.01), Touchpoint("dear", cost=50.0))
    catalogue = Catalogue(touchpoints=tps, value_per_conversion=10.0)
    ctx = _with_intents(journey_context(_journeys(), catalogue))
    rates = np.array([[0.05, 0.9]] * 4)
    by_conv = _feed(ctx, catalogue, rates, objective="conversions", holdout_share=0.0)
    by_value = _feed(ctx, catalogue, rates, objective="value", holdout_share=0.0)
    assert by_conv.rows["recommended_touchpoint"].eq("dear").all()
    assert by_value.rows["recommended_touchpoint"].eq("cheap").all()
    assert by_value.rows["runner_up_touchpoint"].isna().all()


def test_recent_conversions_are_suppressed():
    catalogue = _catalogue(app_channels=("app_push",))
    ctx = _with_intents(journey_context(_journeys(), catalogue))
    rates = np.full((4, 5), 0.05)
    feed = _feed(ctx, catalogue, rates, holdout_share=0.0, suppress_after_conversion_hours=24)
    rows = feed.rows.set_index("journey_id")
    assert rows.loc["j3", "suppressed"] and rows.loc["j3", "suppression_reason"] == (
        "converted within 24 h"
    )
    assert not rows.loc["j3", "contact"]
    assert rows.loc[["j1", "j2"], "contact"].all()


def test_holdout_is_stable_and_close_to_its_share():
    ids = pd.Series([f"j{i}" for i in range(20000)])
    flags = holdout_flags(ids, 0.1, "salt")
    assert 0.09 < flags.mean() < 0.11
    np.testing.assert_array_equal(
        flags, holdout_flags(ids.sample(frac=1).sort_index(), 0.1, "salt")
    )
    assert (flags != holdout_flags(ids, 0.1, "another salt")).any()
    with pytest.raises(ValueError, match="holdout_share"):
        holdout_flags(ids, 1.5, "salt")


def test_holdout_keeps_the_journeys_it_always_kept():
    """A journey is held out when the hash of "<id>|<salt>", as a fraction of 2**64, is below
    the share: the rule every earlier feed followed, so a journey never changes side."""
    ids = pd.Series([f"j{i}" for i in range(5000)] + [17, 18])
    h = pd.util.hash_pandas_object(ids.astype(str) + "|" + "salt", index=False).to_numpy()
    np.testing.assert_array_equal(holdout_flags(ids, 0.2, "salt"), h / np.float64(2**64) < 0.2)


# ---------------------------------------------------------------------------------------------
# allocation


def _brute_force(score, capacity, cost, budget):
    n, T = score.shape
    best = 0.0
    for choice in itertools.product(range(-1, T), repeat=n):
        ch = np.array(choice)
        used = ch >= 0
        if not np.isfinite(score[np.flatnonzero(used), ch[used]]).all():
            continue
        if (np.bincount(ch[used], minlength=T) > capacity).any():
            continue
        if budget is not None and cost[ch[used]].sum() > budget + 1e-9:
            continue
        best = max(best, np.where(used, score[np.arange(n), np.maximum(ch, 0)], 0).sum())
    return best


@pytest.mark.parametrize("seed", range(12))
def test_allocation_matches_brute_force_and_respects_every_limit(seed):
    rng = np.random.default_rng(seed)
    n, T = 6, 3
    score = rng.uniform(0, 1, size=(n, T))
    score[rng.random((n, T)) < 0.25] = -np.inf  # ineligible pairs
    capacity = rng.integers(0, 4, size=T).astype(float)
    capacity[rng.random(T) < 0.3] = np.inf
    cost = rng.uniform(0.5, 2, size=T)
    budget = None if seed % 2 else float(rng.uniform(1, 5))
    alloc = allocate(score, capacity, cost, budget)
    ch = alloc.choice
    used = ch >= 0
    assert np.isfinite(score[np.flatnonzero(used), ch[used]]).all()
    assert (np.bincount(ch[used], minlength=T) <= capacity).all()
    if budget is not None:
        assert cost[ch[used]].sum() <= budget + 1e-6
    assert alloc.objective == pytest.approx(_brute_force(score, capacity, cost, budget), abs=1e-6)
    assert alloc.bound >= alloc.objective - 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_large_allocations_round_the_relaxation_within_a_few_journeys_of_its_bound(seed):
    rng = np.random.default_rng(seed)
    n, T = 400, 4
    score = rng.uniform(0, 1, size=(n, T))
    score[rng.random((n, T)) < 0.3] = -np.inf
    capacity = np.array([60.0, np.inf, 90.0, 40.0])
    cost = rng.uniform(0.5, 3, size=T)
    alloc = allocate(score, capacity, cost, budget=250.0, exact_max_pairs=0)
    ch = alloc.choice
    used = ch >= 0
    assert np.isfinite(score[np.flatnonzero(used), ch[used]]).all()
    assert (np.bincount(ch[used], minlength=T) <= capacity).all()
    assert cost[ch[used]].sum() <= 250.0 + 1e-6
    # a basic solution of the relaxation splits at most a couple of journeys per side constraint
    assert (
        alloc.bound - 8 * np.nanmax(np.where(np.isfinite(score), score, np.nan)) <= alloc.objective
    )
    assert alloc.objective <= alloc.bound + 1e-9
    exact = allocate(score, capacity, cost, budget=250.0)
    assert exact.objective >= alloc.objective - 1e-9


def test_allocation_without_limits_is_the_best_choice_per_journey():
    score = np.array([[0.2, 0.5], [0.9, -np.inf], [-np.inf, -np.inf], [0.0, 0.1]])
    alloc = allocate(score, np.array([np.inf, np.inf]))
    np.testing.assert_array_equal(alloc.choice, [1, 0, -1, 1])
    assert alloc.objective == pytest.approx(1.5)


def test_rate_matrix_follows_class_and_touchpoint_order():
    est = pd.DataFrame(
        {
            "intent": ["go", "know", "go", "know"],
            "touchpoint": ["b", "b", "a", "a"],
            "rate": [1, 2, 3, 4],
        }
    )
    np.testing.assert_array_equal(rate_matrix(est, ["know", "go"], ["a", "b"]), [[4, 2], [3, 1]])


def test_catalogue_settings_are_checked():
    with pytest.raises(ValueError, match="unknown settings"):
        Catalogue.from_config({"catalogue": {"x": {"costs": 1}}})
    with pytest.raises(ValueError, match="cost must be >= 0"):
        Touchpoint("x", cost=-1)
    with pytest.raises(ValueError, match="quiet_hours"):
        Touchpoint("x", quiet_hours=(22, 30))
    cat = Catalogue.from_config(compose_config("touchpoints")["touchpoints"])
    assert "in_store_offer" in cat.names and cat.capacities[cat.names.index("search_ad")] == np.inf


def test_a_typo_in_the_catalogue_fails_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="cots"):
        compose_config("touchpoints", ["touchpoints.catalogue.search_ad.cots=1"])
    with pytest.raises(ConfigCompositionException, match="cost"):
        compose_config("touchpoints", ["touchpoints.catalogue.search_ad.cost=cheap"])
    # a key forced in with + still cannot reach a run
    cfg = compose_config("touchpoints", ["+touchpoints.catalogue.search_ad.cots=1"])
    with pytest.raises(ValueError, match=r"search_ad: unknown settings \['cots'\]"):
        Catalogue.from_config(cfg["touchpoints"])


def test_before_the_latest_decision_its_own_touchpoint_and_conversion_do_not_count():
    catalogue = Catalogue((Touchpoint("email", frequency_cap=1), Touchpoint("ad")))
    sessions = pd.DataFrame(
        {
            "journey_id": ["a", "a", "b", "a"],
            "session_id": ["a1", "a3", "b1", "a2"],
            "started_at": pd.to_datetime(
                ["2026-01-01", "2026-01-03", "2026-01-02", "2026-01-02"], utc=True
            ),
            "touchpoint": ["ad", "email", "email", "ad"],
            "converted": [False, True, True, False],
        }
    ).sample(frac=1, random_state=0)
    after = journey_context(sessions, catalogue).set_index("journey_id")
    before = journey_context(sessions, catalogue, before_latest=True).set_index("journey_id")
    # a3 and b1 are the latest sessions: afterwards they count, before their decision they don't
    assert after["hours_since_conversion"].tolist() == [0.0, 0.0]
    assert before["hours_since_conversion"].isna().all()
    assert after["shown_email"].tolist() == [1, 1] and before["shown_email"].tolist() == [0, 0]
    assert before.loc["a", "shown_ad"] == 2  # a1 and a2 came before a3's decision
    # the row keeps what was logged at that decision
    assert before["touchpoint"].tolist() == ["email", "email"]
    assert before["converted"].tolist() == [True, True]
