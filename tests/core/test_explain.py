"""Reason codes: exact contributions grouped by input, described in words, toward the predicted
intent; the prediction itself unchanged by asking for them."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from pipelines.core import explain
from pipelines.core.contract import to_contract
from pipelines.core.scorer import MAX_EXPLAIN, check_explain
from tests.fixtures import hand_built_model, hand_built_sessions, synthetic_sessions

PROBS = ["p_know", "p_go", "p_do", "p_buy"]


@pytest.fixture(scope="module")
def model():
    return hand_built_model()


@pytest.fixture(scope="module")
def matrix(model):
    kept = to_contract(hand_built_sessions(20), model.spec, with_label=False).sessions
    return model.featurizer.transform_matrix(kept)


def test_contributions_plus_base_add_up_to_each_class_raw_score(model, matrix):
    contrib = explain.contributions(model.booster, matrix, len(model.classes))
    assert contrib.shape == (len(matrix), 4, matrix.shape[1] + 1)
    raw = model.booster.predict(matrix, raw_score=True)
    np.testing.assert_allclose(contrib.sum(axis=2), raw, atol=1e-9)


def test_a_binary_models_contributions_add_up_on_both_classes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 4, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=10)
    contrib = explain.contributions(booster, X[:50], 2)
    raw = booster.predict(X[:50], raw_score=True)
    np.testing.assert_allclose(contrib[:, 1].sum(axis=1), raw, atol=1e-9)
    np.testing.assert_allclose(contrib[:, 0].sum(axis=1), 0.0)
    # softmax of [0, raw] is the binary model's probability
    p = 1 / (1 + np.exp(-contrib[:, 1].sum(axis=1)))
    np.testing.assert_allclose(p, booster.predict(X[:50]), atol=1e-12)


def test_pieces_of_one_input_make_one_reason():
    names = [
        "device",
        "pages_cart",
        "share_cart",
        "log_dwell",
        "dwell_time_s",
        "dwell_per_page",
        "local_hour",
        "weekend",
        "prev_channel",
        "prev_share_cart",
        "past_share_cart",
        "past_mobile_share",
        "session_index",
        "hours_since_first",
        "basket_value",
    ]
    g = explain.Grouping.of(names)
    assert g.names == (
        "device",
        "cart pages",
        "time on site",
        "time",
        "previous session",
        "earlier sessions",
        "journey so far",
        "basket_value",
    )
    # every feature in exactly one group
    np.testing.assert_array_equal(g.matrix.sum(axis=1), 1.0)
    assert g.features[g.names.index("cart pages")] == ("pages_cart", "share_cart")


def test_a_groups_push_is_the_sum_of_its_features_relative_to_the_other_classes(model, matrix):
    contrib = explain.contributions(model.booster, matrix, 4)
    names = model.featurizer.feature_names_
    grouping = explain.Grouping.of(names)
    predicted = model.predict_features(matrix).argmax(axis=1)
    push = explain.pushes(contrib, predicted, grouping)
    rows = np.arange(len(matrix))
    for g, features in enumerate(grouping.features):
        cols = [names.index(f) for f in features]
        per_class = contrib[:, :, cols].sum(axis=2)
        expected = per_class[rows, predicted] - per_class.mean(axis=1)
        np.testing.assert_allclose(push[:, g], expected, atol=1e-12)
    # all pushes plus the base's together are the predicted class's raw score over the mean
    raw = model.booster.predict(matrix, raw_score=True)
    base = contrib[:, :, -1]
    total = push.sum(axis=1) + base[rows, predicted] - base.mean(axis=1)
    np.testing.assert_allclose(total, raw[rows, predicted] - raw.mean(axis=1), atol=1e-9)


def test_top_reasons_are_the_largest_pushes_in_order():
    contrib = np.zeros((1, 3, 4))  # one row, three classes, three features + base
    contrib[0, 0, :3] = [0.5, 2.0, -1.0]
    grouping = explain.Grouping.of(["a", "b", "c"])
    order, push = explain.top_reasons(contrib, np.array([0]), grouping, 2)
    # a feature's push toward class 0: its contribution minus its mean over the 3 classes
    assert [grouping.names[g] for g in order[0]] == ["b", "a"]
    np.testing.assert_allclose(push[0], [2.0 - 2.0 / 3, 0.5 - 0.5 / 3])


@pytest.mark.parametrize(
    "group, values, words",
    [
        ("cart pages", {"pages_cart": 3.0, "share_cart": 0.5}, "3 cart pages"),
        ("cart pages", {"pages_cart": 1.0}, "1 cart page"),
        ("cart pages", {"pages_cart": 0.0}, "no cart pages"),
        ("page views", {"page_views": 1.0, "bounce": 1.0}, "1 page (bounced)"),
        ("page views", {"page_views": 6.0, "bounce": 0.0}, "6 pages"),
        ("time", {"local_hour": 12.0, "weekday": 1.0, "weekend": 0.0}, "at 12:00 on a Tuesday"),
        ("location", {"has_location": 1.0, "store_distance_km": 0.43}, "0.4 km from a store"),
        ("location", {"has_location": 0.0, "store_distance_km": np.nan}, "no location shared"),
        ("time on site", {"dwell_time_s": 250.0, "log_dwell": 5.5}, "4 min on site"),
        ("time on site", {"dwell_time_s": 40.0}, "40 s on site"),
        ("returning visitor", {"returning_visitor": 1.0}, "returning visitor"),
        ("returning visitor", {"returning_visitor": 0.0}, "new visitor"),
        ("journey so far", {"session_index": 0.0}, "first session of the journey"),
        (
            "journey so far",
            {"session_index": 1.0, "hours_since_first": 72.0},
            "2nd session in 3 days",
        ),
        (
            "journey so far",
            {"session_index": 2.0, "hours_since_first": 5.0},
            "3rd session in 5 hours",
        ),
        ("basket_value", {"basket_value": 12.5}, "basket_value 12.5"),
    ],
)
def test_values_read_as_words(group, values, words):
    assert explain.describe(group, values, {}) == words


def test_categories_read_as_their_level_and_history_as_a_sentence():
    categories = {"device": ["desktop", "mobile"], "prev_channel": ["email", "social"]}
    assert explain.describe("device", {"device": 1.0}, categories) == "mobile"
    assert explain.describe("device", {"device": np.nan}, categories) == "device unknown"
    words = explain.describe(
        "previous session",
        {"prev_channel": 0.0, "prev_page_views": 4.0, "prev_share_cart": 0.75},
        categories,
    )
    assert words == "previous session: email, 4 pages, mostly cart"
    earlier = explain.describe(
        "earlier sessions",
        {"past_page_views": 9.0, "past_share_info": 0.6, "past_mobile_share": 0.5},
        categories,
    )
    assert earlier == "earlier sessions: 9 pages before, 60% info, 50% on mobile"


def test_predict_with_reasons_keeps_the_probabilities_and_explains_every_scored_row(model):
    raw = hand_built_sessions(10)
    raw.loc[4, "dwell"] = -3.0  # breaks the contract: rejected, no reasons
    plain = model.predict(raw)
    out = model.predict(raw, explain=2)
    assert out.columns.tolist() == model.columns_with(explain=2)
    np.testing.assert_array_equal(out[PROBS].to_numpy(), plain[PROBS].to_numpy())
    assert out.loc[4, "reject_reason"] is not None
    assert out.loc[4, ["reason_1", "reason_2", "reasons"]].isna().all()
    scored = out.drop(index=4)
    for _, row in scored.iterrows():
        reasons = json.loads(row["reasons"])
        assert 1 <= len(reasons) <= 2
        pushes = [r["contribution"] for r in reasons]
        assert all(p > 0 for p in pushes) and pushes == sorted(pushes, reverse=True)
        assert row["reason_1"] == f"{reasons[0]['value']} ({reasons[0]['contribution']:+.2f})"
    # the hand-built rule is "intent follows the dwell time": that is what the model says
    assert (scored["reason_1"].str.endswith(")") & scored["reason_1"].str.contains("on site")).all()


def test_reasons_on_the_synthetic_world_name_inputs_a_marketer_reads(train_config):
    from pipelines.stages.train import train

    result = train(train_config)
    raw = synthetic_sessions(60, seed=11).drop(columns="intent")
    out = result.model.predict(raw, explain=3)
    reasons = [r for cell in out["reasons"].dropna() for r in json.loads(cell)]
    assert len(reasons) >= len(out)
    known = {"time on site", "time", "location", "device", "channel", "page views"}
    known |= {"returning visitor", "journey so far", "previous session", "earlier sessions"}
    for r in reasons:
        assert r["reason"] in known or r["reason"].endswith(" pages"), r
        assert r["value"] and "nan" not in r["value"].lower(), r


@pytest.mark.parametrize("bad", [-1, MAX_EXPLAIN + 1, 2.5, "3", True])
def test_explain_must_be_a_small_whole_number(bad):
    with pytest.raises(ValueError, match="explain"):
        check_explain(bad)


@pytest.mark.parametrize("ok, k", [(None, 0), (False, 0), (0, 0), (3, 3), (3.0, 3)])
def test_explain_accepts_whole_numbers(ok, k):
    assert check_explain(ok) == k


def test_driver_summary_ranks_what_pushes_each_intent(model, matrix):
    contrib = explain.contributions(model.booster, matrix, 4)
    predicted = model.predict_features(matrix).argmax(axis=1)
    summary = explain.driver_summary(contrib, predicted, model.featurizer.feature_names_)
    assert set(summary) == set(np.unique(predicted).tolist())
    for c, drivers in summary.items():
        values = list(drivers.values())
        assert values == sorted(values, reverse=True)
        assert next(iter(drivers)) == "time on site", (c, drivers)
    pd.testing.assert_index_equal(
        pd.Index(sorted(summary[int(predicted[0])])),
        pd.Index(sorted(explain.Grouping.of(model.featurizer.feature_names_).names)),
    )
