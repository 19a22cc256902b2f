"""The synthetic world's answer to a feed: outcome events drawn from known true chances."""

from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd
import pytest

from pipelines.core.response import ResponseParams, expected, respond
from pipelines.core.synthetic import GeneratorConfigError
from tests.conftest import compose_config

T0 = pd.Timestamp("2026-03-01T09:00:00Z")  # when the feed was built
GENERATOR = compose_config("generate")["generator"]
PARAMS = ResponseParams.from_config(GENERATOR)


def journeys_for(cells: list[tuple[str, str | None]], per_cell: int) -> pd.DataFrame:
    """`per_cell` journeys for each (true intent, touchpoint shown or None when held out)."""
    intents, touchpoints = zip(*cells, strict=True)
    n = len(cells) * per_cell
    return pd.DataFrame(
        {
            "journey_id": [f"j{i}" for i in range(n)],
            "session_id": [f"j{i}-s3" for i in range(n)],
            "intent": np.repeat(intents, per_cell),
            "touchpoint": np.repeat(np.array(touchpoints, dtype=object), per_cell),
        }
    )


def per_journey(journeys: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """What happened to each journey, events or none: clicked, converted, returned, value."""
    g = events.groupby("journey_id")
    out = pd.DataFrame(
        {
            "clicked": g["clicked"].any(),
            "converted": g["converted_at"].count() > 0,
            "returned": g["returned_at"].count() > 0,
            "value": g["value"].sum(),
        }
    )
    return out.reindex(journeys["journey_id"]).fillna(
        {"clicked": False, "converted": False, "returned": False, "value": 0.0}
    )


def positions(journeys: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    intent = journeys["intent"].map({k: i for i, k in enumerate(PARAMS.intents)})
    touch = journeys["touchpoint"].map({t: i for i, t in enumerate(PARAMS.touchpoints)})
    return intent.to_numpy(dtype=int), touch.fillna(-1).to_numpy(dtype=int)


# ---------------------------------------------------------------------------------------------
# the parameters


def test_the_default_world_can_answer_a_feed():
    k, t = len(PARAMS.intents), len(PARAMS.touchpoints)
    assert PARAMS.click.shape == (k, t)
    assert ((PARAMS.click > 0) & (PARAMS.click <= 1)).all()
    # a click buys with chance click_to_conversion: a contact converts at the world's rate
    np.testing.assert_allclose(PARAMS.click * PARAMS.click_to_conversion, PARAMS.conversion)


def with_response(**changes) -> dict:
    cfg = copy.deepcopy(GENERATOR)
    for key, value in changes.items():
        if value is KeyError:
            del cfg["response"][key]
        else:
            cfg["response"][key] = value
    return cfg


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"hours_to_convert": KeyError}, "generator.response.hours_to_convert is missing"),
        ({"bounce": [0.5] * 7}, "generator.response.bounce needs 8 numbers"),
        ({"return_days": [6.0, 7.0]}, "generator.response.return_days needs a number"),
        ({"order_value": ["a", 1, 2, 3]}, "generator.response.order_value needs numbers"),
        ({"organic_conversion": [0.1, 1.5, 0, 0]}, "generator.response.organic_conversion values"),
        (
            {"organic_days": [1.0, 0.0, 1.0, 1.0]},
            "generator.response.organic_days values must be in (0",
        ),
        ({"bounce": [-0.1] + [0.5] * 7}, "generator.response.bounce values must be in [0, 1]"),
        ({"order_value_sd": float("nan")}, "generator.response.order_value_sd values"),
        ({"return_lift_after_click": 1.5}, "generator.response.return_lift_after_click values"),
        (
            # 0.15 of `go` shown an in-store offer over 0.1 of clicks buying: a click chance of 1.5
            {"click_to_conversion": [0.3, 0.4, 0.2, 0.35, 0.3, 0.25, 0.4, 0.1]},
            "generator.response.click_to_conversion.in_store_offer: conversion 0.15 of go",
        ),
        (
            {"return_rate": [0.35, 0.25, 0.30, 0.90]},
            "generator.response.return_rate plus return_lift_after_click must stay <= 1",
        ),
    ],
)
def test_a_bad_response_setting_names_its_key(changes, message):
    with pytest.raises(GeneratorConfigError, match=re.escape(message)):
        ResponseParams.from_config(with_response(**changes))


def test_a_world_without_a_response_block_cannot_answer():
    cfg = copy.deepcopy(GENERATOR)
    cfg["response"] = {}
    with pytest.raises(GeneratorConfigError, match=r"generator\.response is missing"):
        ResponseParams.from_config(cfg)


# ---------------------------------------------------------------------------------------------
# the true chances


def test_expected_chances_by_hand():
    """`buy` shown a product offer, over 28 days: conversion 0.12 from the contact (12 hours on
    average, contacts spread over the first day) and 0.10 of its own (4 days on average)."""
    window = 28.0
    out = expected(PARAMS, np.array([3, 3]), np.array([3, -1]), window)
    contact = 0.12 * (1 - np.exp(-window * 24 / 12) * (12 / 24) * np.expm1(24 / 12))
    organic = 0.10 * (1 - np.exp(-window / 4))
    assert out["clicked"].tolist() == pytest.approx([0.12 / 0.35, 0.0])
    converted = 1 - (1 - contact) * (1 - organic)
    assert out["converted"].tolist() == pytest.approx([converted, organic])
    returned = 1 - np.exp(-window / 6)
    assert out["returned"].tolist() == pytest.approx(
        [(0.40 + 0.15 * 0.12 / 0.35) * returned, 0.40 * returned]
    )
    assert out["value"].tolist() == pytest.approx([80 * converted, 80 * organic])


def test_a_longer_window_only_adds_chances():
    intent, touch = np.repeat(np.arange(4), 9), np.tile(np.arange(-1, 8), 4)
    short, long = expected(PARAMS, intent, touch, 2.0), expected(PARAMS, intent, touch, 60.0)
    grows = ["converted", "returned", "value"]
    assert (long[grows].to_numpy() >= short[grows].to_numpy()).all()
    chances = ["clicked", "converted", "returned"]
    assert (short[chances].to_numpy() >= 0).all() and (long[chances].to_numpy() <= 1).all()
    np.testing.assert_allclose(short["clicked"], long["clicked"])  # clicks come with the contact


@pytest.mark.parametrize("window", [0.5, 0.0, float("nan")])
def test_a_window_shorter_than_the_day_contacts_go_out_over_is_refused(window):
    with pytest.raises(ValueError, match="window_days must be at least 1"):
        expected(PARAMS, np.array([0]), np.array([0]), window)
    with pytest.raises(ValueError, match="window_days must be at least 1"):
        respond(PARAMS, journeys_for([("buy", None)], 1), T0, window, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# the draws agree with the true chances

CELLS = [
    ("know", "how_to_video"),
    ("go", "local_listing"),
    ("go", "in_store_offer"),
    ("do", "chat_assist"),
    ("buy", "product_offer"),
    ("buy", "cart_email"),
    ("know", None),
    ("go", None),
    ("do", None),
    ("buy", None),
]


@pytest.mark.parametrize("window", [1.0, 28.0])
def test_draws_agree_with_the_true_chances(window):
    """Per (intent, touchpoint or held out), 8,000 journeys: the share that clicked, converted and
    returned within the window, and the value per journey, lie within 4.5 standard errors of
    what `expected` says. A one-day window cuts most conversions and returns, so the chances
    of an event inside the window are tested, not only over the whole future."""
    per_cell = 8000
    journeys = journeys_for(CELLS, per_cell)
    drawn = per_journey(journeys, respond(PARAMS, journeys, T0, window, np.random.default_rng(1)))
    truth = expected(PARAMS, *positions(journeys), window)
    cell = np.repeat(np.arange(len(CELLS)), per_cell)
    for c, (intent, touchpoint) in enumerate(CELLS):
        mine, true = drawn[cell == c], truth[cell == c]
        for col in ("clicked", "converted", "returned"):
            p = true[col].iloc[0]
            if touchpoint is None and col == "clicked":
                assert p == 0 and not mine[col].any()
                continue
            z = (mine[col].mean() - p) / np.sqrt(p * (1 - p) / per_cell)
            assert abs(z) < 4.5, f"{intent} x {touchpoint}: {col} {mine[col].mean():.4f} vs {p:.4f}"
        se = mine["value"].std() / np.sqrt(per_cell)
        gap = mine["value"].mean() - true["value"].iloc[0]
        assert abs(gap) < 4.5 * se, f"{intent} x {touchpoint}: value off by {gap:.3f}"


def test_a_click_lands_on_a_session_that_may_bounce():
    journeys = journeys_for([("go", "push_message")], 20000)
    ev = respond(PARAMS, journeys, T0, 28.0, np.random.default_rng(2))
    clicks = ev[ev["clicked"].fillna(False).astype(bool)]
    bounced = clicks["bounced"].astype(bool)
    p = PARAMS.bounce[PARAMS.touchpoints.index("push_message")]
    assert abs(bounced.mean() - p) < 4.5 * np.sqrt(p * (1 - p) / len(clicks))
    assert clicks.loc[bounced, "session_s"].between(1, 10).all()
    median = clicks.loc[~bounced, "session_s"].median()
    assert median == pytest.approx(60.0, rel=0.1)  # landing_session_s of push messages
    # no click, no landing session
    others = ev[~ev["clicked"].fillna(False).astype(bool)]
    assert others["session_s"].isna().all() and others["bounced"].isna().all()


# ---------------------------------------------------------------------------------------------
# the shape of the export


def test_events_outside_the_window_are_absent():
    journeys = journeys_for([("know", "search_ad"), ("know", None), ("do", "chat_assist")], 3000)
    ev = respond(PARAMS, journeys, T0, 2.0, np.random.default_rng(3))
    end = T0 + pd.Timedelta(days=2)
    for col in ("shown_at", "converted_at", "returned_at"):
        at = ev[col].dropna()
        assert len(at) and ((at >= T0) & (at <= end)).all(), col
    # and the window did cut: over 28 days there are many more conversions and returns
    late = respond(PARAMS, journeys, T0, 28.0, np.random.default_rng(3))
    assert late["converted_at"].count() > 2 * ev["converted_at"].count()
    assert late["returned_at"].count() > 2 * ev["returned_at"].count()
    # a value comes with its conversion and only with it
    assert (ev["value"].notna() == ev["converted_at"].notna()).all()


def test_held_out_journeys_have_no_contact_and_no_click():
    journeys = journeys_for([("buy", None), ("go", None)], 5000)
    ev = respond(PARAMS, journeys, T0, 28.0, np.random.default_rng(4))
    assert len(ev) > 0
    assert ev["touchpoint"].isna().all() and ev["shown_at"].isna().all()
    assert ev["clicked"].isna().all() and ev["session_s"].isna().all()
    # their rows hold only what happened of their own accord: a purchase or a return
    assert (ev["converted_at"].notna() | ev["returned_at"].notna()).all()


def test_every_contacted_journey_has_its_contact_row_and_nothing_else_is_invented():
    journeys = journeys_for([("do", "how_to_video"), ("know", None)], 2000)
    ev = respond(PARAMS, journeys, T0, 28.0, np.random.default_rng(5))
    contacted = set(journeys.loc[journeys["touchpoint"].notna(), "journey_id"])
    assert set(ev.loc[ev["touchpoint"].notna(), "journey_id"]) == contacted
    assert set(ev["journey_id"]) <= set(journeys["journey_id"])
    assert list(ev.columns[:2]) == ["journey_id", "session_id"]
    assert (ev["session_id"] == ev["journey_id"] + "-s3").all()


def test_a_purchase_before_the_contact_went_out_is_a_row_of_its_own():
    """`go` buys on its own after 3 days on average, and contacts go out over the first day: some
    buy before their contact. That purchase is recorded without the contact, so no row reads as
    bought before it was shown, and the journey still has its contact row."""
    journeys = journeys_for([("go", "local_listing")], 20000)
    ev = respond(PARAMS, journeys, T0, 28.0, np.random.default_rng(6))
    assert not (ev["converted_at"] < ev["shown_at"]).any()
    twice = ev[ev["journey_id"].duplicated(keep=False)]
    assert len(twice) > 0 and twice.groupby("journey_id").size().eq(2).all()
    contact, purchase = twice.iloc[0::2], twice.iloc[1::2]
    assert contact["touchpoint"].notna().all() and contact["converted_at"].isna().all()
    assert purchase["touchpoint"].isna().all() and purchase["converted_at"].notna().all()
    assert (purchase["converted_at"].to_numpy() < contact["shown_at"].to_numpy()).all()


def test_the_same_seed_gives_the_same_events():
    journeys = journeys_for([("buy", "cart_email"), ("buy", None)], 500)

    def draw(seed: int) -> pd.DataFrame:
        return respond(PARAMS, journeys, T0, 28.0, np.random.default_rng(seed))

    pd.testing.assert_frame_equal(draw(7), draw(7))
    assert not draw(7).equals(draw(8))


def test_without_session_ids_the_events_have_none():
    journeys = journeys_for([("buy", "cart_email")], 10).drop(columns=["session_id"])
    assert "session_id" not in respond(PARAMS, journeys, T0, 28.0, np.random.default_rng(0))


@pytest.mark.parametrize(
    "column,value,message",
    [
        ("intent", "wander", "intent values ['wander'] are not in the world's intents"),
        ("intent", None, "intent values ['None'] are not in the world's intents"),
        ("touchpoint", "carrier_pigeon", "touchpoint values ['carrier_pigeon'] are not in"),
    ],
)
def test_an_unknown_intent_or_touchpoint_is_named(column, value, message):
    journeys = journeys_for([("buy", "cart_email")], 3)
    journeys[column] = journeys[column].astype(object)
    journeys.loc[1, column] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        respond(PARAMS, journeys, T0, 28.0, np.random.default_rng(0))
