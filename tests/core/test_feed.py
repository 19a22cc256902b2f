"""The touchpoint feed assembled from scored sessions: one row per journey, the headline numbers
that add up, and clear refusals when the sessions cannot give a feed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipelines.core import feed
from pipelines.core.contract import DatasetSpec, to_contract
from tests.conftest import compose_config
from tests.fixtures import synthetic_sessions


@pytest.fixture(scope="module")
def config() -> dict:
    return compose_config("touchpoints", [])


@pytest.fixture(scope="module")
def scored(config) -> pd.DataFrame:
    """Generated sessions as the scorer returns them: 70% on the true intent, 10% on the others."""
    spec = DatasetSpec.from_config(config["data"])
    sessions = to_contract(synthetic_sessions(150, seed=1), spec).sessions
    classes = list(spec.classes)
    truth = pd.get_dummies(pd.Categorical(sessions["label"], categories=classes)).to_numpy(float)
    for j, c in enumerate(classes):
        sessions[f"p_{c}"] = 0.1 + 0.6 * truth[:, j]
    return sessions.assign(intent=sessions["label"], model_name="intent", model_version="4")


def test_the_feed_has_one_row_per_journey_and_names_the_model_it_came_from(config, scored):
    out = feed.build(config, scored.copy(), {"rows_in": 500}, "models:/intent@champion", None, "x")
    rows = out["feed"]
    assert len(rows) == rows["journey_id"].nunique() == scored["journey_id"].nunique()
    assert set(rows["model_alias"]) == {"champion"} and set(rows["model_version"]) == {"4"}
    headline = out["headline"]
    assert headline["rows_in"] == 500 and headline["journeys"] == len(rows)
    assert headline["model_alias"] == "champion"
    # predicted intents by default, as real logs without labels allow
    assert headline["intent_source_for_estimates"] == "predicted"
    assert headline["cells_estimated"] + headline["cells_insufficient"] == len(out["estimates"])
    assert headline["journeys_contacted"] <= int(rows["contact"].sum())


def test_a_model_folder_has_no_alias(config, scored):
    out = feed.build(config, scored.copy(), {}, "models/intent-v4", None, "x")
    assert out["feed"]["model_alias"].isna().all() and out["headline"]["model_alias"] is None


def test_no_scored_sessions_are_refused_naming_the_input(config, scored):
    with pytest.raises(ValueError, match="in.parquet: no scored sessions"):
        feed.build(config, scored.head(0), {}, None, None, "in.parquet")


def test_sessions_that_never_logged_a_touchpoint_are_refused(config, scored):
    silent = scored.assign(touchpoint=None)
    with pytest.raises(ValueError, match="in.parquet: no session records a touchpoint shown"):
        feed.build(config, silent, {}, None, None, "in.parquet")


def test_the_headline_adds_the_allocated_against_the_unconstrained_best():
    rows = pd.DataFrame(
        {
            "contact": [True, True, False, True],
            "holdout": [False, False, True, False],
            "suppressed": [False, False, False, False],
            "expected_conversion": [0.2, 0.3, 0.9, 0.5],
            "expected_value": [2.0, 3.0, 9.0, 5.0],
            "allocated_expected_conversion": [0.2, np.nan, np.nan, 0.5],
        }
    )
    alloc = SimpleNamespace(choice=np.array([0, -1, -1, 1]), status="optimal", bound=0.71234)
    table = pd.DataFrame({"allocated_cost": [1.5, 2.25]})
    headline = feed.allocation_headline(rows, alloc, table)
    assert headline == {
        "journeys": 4,
        "journeys_contacted": 2,
        "journeys_holdout": 1,
        "journeys_suppressed": 0,
        "expected_conversions_allocated": 0.7,
        "expected_conversions_unconstrained": 1.0,
        "allocation_share_of_unconstrained": 0.7,
        "allocated_cost": 3.75,
        "expected_cost_per_conversion": 5.3571,  # 3.75 / 0.7
        "expected_value_unconstrained": 10.0,
        "allocation_status": "optimal",
        "allocation_bound": 0.712,
    }


def test_policy_values_compare_the_feeds_choice_with_the_logging_policy(config, scored):
    out = feed.build(
        compose_config("touchpoints", ["touchpoints.estimation.min_effective_sessions=5"]),
        scored.copy(),
        {},
        None,
        None,
        "x",
    )
    table, rows = out["tables"]["policy_value"], out["feed"]
    assert set(rows["journey_id"]) == set(scored["journey_id"])
    # the logging policy's observed value first, then SNIPS and DR for each policy
    assert table.iloc[0][["policy", "estimator"]].tolist() == [
        "Logging policy (what was shown)",
        "Observed",
    ]
    ours = table[table["policy"] == "The feed's choice"]
    assert ours["estimator"].tolist() == ["SNIPS", "Doubly robust"]
    # valued where the logged touchpoints were chosen: before each journey's latest session
    # converted, so a conversion there neither suppresses the journey nor hides the reward
    converted = scored.sort_values("started_at").groupby("journey_id")["converted"].last()
    assert converted.sum() > 0
    now = rows["recommended_touchpoint"].notna() & ~rows["suppressed"]
    assert (ours["rows"] > now.sum()).all()
    assert (ours["conversion_rate"] > 0).all()
    np.testing.assert_allclose(ours["expected_conversions"], ours["conversion_rate"] * ours["rows"])
    assert (ours["ci_low"] <= ours["conversion_rate"]).all()
    # one touchpoint for everyone, for each touchpoint with an estimate for every intent
    everyone = table[table["policy"].str.endswith("for everyone")]
    estimated = out["estimates"].groupby("touchpoint")["status"].apply(lambda s: s.eq("ok").all())
    labels = out["catalogue"].labels
    assert set(everyone["policy"]) == {
        f"{labels[t]} for everyone" for t in estimated[estimated].index
    }


def test_the_headline_gives_the_sessions_date_range(config, scored):
    out = feed.build(config, scored.copy(), {}, None, None, "x")
    started = pd.to_datetime(scored["started_at"], utc=True)
    assert out["headline"]["date_from"] == started.min().isoformat()
    assert out["headline"]["date_to"] == started.max().isoformat()
    assert feed.date_range(scored.drop(columns=["started_at"])) == {
        "date_from": None,
        "date_to": None,
    }
