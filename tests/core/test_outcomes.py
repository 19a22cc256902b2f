"""The outcome-event contract: roles in the user's names, typed values, bad rows quarantined."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipelines.core.contract import ContractError
from pipelines.core.outcomes import ROLES, OutcomeSpec, check_outcomes
from pipelines.core.response import ResponseParams, respond
from tests.conftest import compose_config

T0 = pd.Timestamp("2026-03-01T09:00:00Z")  # when the feed was built
JOURNEYS = ["j1", "j2", "j3"]
TOUCHPOINTS = ["search_ad", "product_offer"]
# the user's own column names, mapped onto the roles (session_id is not recorded)
SPEC = OutcomeSpec(
    {
        "journey_id": "journey",
        "touchpoint": "tp",
        "shown_at": "shown",
        "clicked": "click",
        "converted_at": "bought",
        "value": "amount",
        "session_s": "secs",
        "bounced": "bounce",
        "returned_at": "back",
    }
)


def at(hours: float) -> str:
    """A time `hours` after the feed, as ISO text."""
    return (T0 + pd.Timedelta(hours=hours)).isoformat()


def row(**cells) -> dict:
    """One outcome row in the user's columns: a contact of j1 by a search ad, shown an hour
    after the feed, clicked, bought four hours later for 30, unless `cells` say otherwise."""
    base = {
        "journey": "j1",
        "tp": "search_ad",
        "shown": at(1),
        "click": "yes",
        "bought": at(5),
        "amount": 30.0,
        "secs": 100.0,
        "bounce": "no",
        "back": at(48),
    }
    return {**base, **cells}


def check(raw: pd.DataFrame, spec: OutcomeSpec = SPEC, feed_at=T0):
    return check_outcomes(raw, spec, "outcomes.csv", JOURNEYS, TOUCHPOINTS, feed_at=feed_at)


# ---------------------------------------------------------------------------------------------
# the spec


def test_spec_maps_roles_onto_the_users_columns_and_drops_unrecorded_ones():
    spec = OutcomeSpec.from_config({"journey_id": "journey", "session_id": None, "value": "amt"})
    assert dict(spec.columns) == {"journey_id": "journey", "value": "amt"}


@pytest.mark.parametrize(
    "columns,message",
    [
        ({"journey_id": "j", "revenue": "r"}, "unknown roles ['revenue']"),
        ({"touchpoint": "tp"}, "outcomes.columns.journey_id must name a column"),
        ({"journey_id": None}, "outcomes.columns.journey_id must name a column"),
    ],
)
def test_spec_refuses_unknown_roles_and_a_missing_journey_id(columns, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        OutcomeSpec.from_config(columns)


# ---------------------------------------------------------------------------------------------
# rows kept: canonical roles and types


def test_clean_rows_come_out_in_the_roles_names_and_types():
    raw = pd.DataFrame(
        [
            row(),
            # a held-out journey's own purchase: no contact on the row
            row(journey="j2", tp=None, shown=None, click=None, secs=None, bounce=None, back=None),
            # a contact that was not clicked, in another time zone
            row(
                journey="j3",
                tp="product_offer",
                shown="2026-03-01T12:00:00+02:00",
                click="no",
                bought=None,
                amount=None,
                secs=None,
                bounce=None,
                back=None,
            ),
        ]
    )
    checked = check(raw)
    ev = checked.events
    assert checked.rejects.empty
    assert list(ev.columns) == list(ROLES)
    assert ev["journey_id"].tolist() == JOURNEYS
    assert ev["session_id"].isna().all()  # not recorded
    assert ev["touchpoint"].tolist()[0::2] == ["search_ad", "product_offer"]
    assert pd.isna(ev["touchpoint"].iloc[1])
    assert str(ev["shown_at"].dtype) == "datetime64[ns, UTC]"
    assert ev["shown_at"].iloc[2] == pd.Timestamp("2026-03-01T10:00:00Z")  # 12:00 at UTC+2
    assert ev["clicked"].dtype == "boolean"
    assert ev["clicked"].tolist()[0::2] == [True, False]
    assert ev["converted_at"].iloc[0] == T0 + pd.Timedelta(hours=5)
    assert ev["value"].tolist()[:2] == [30.0, 30.0] and np.isnan(ev["value"].iloc[2])
    assert ev["bounced"].tolist()[0] is False
    assert checked.counts == {"rows_in": 3, "rows_kept": 3, "rows_rejected": 0}


def test_renamed_columns_are_read_through_the_spec_and_others_are_ignored():
    raw = pd.DataFrame([row(note="a comment the contract does not read")])
    ev = check(raw).events
    assert "note" not in ev and "journey" not in ev
    assert ev.loc[0, ["journey_id", "touchpoint", "value"]].tolist() == ["j1", "search_ad", 30.0]
    # the same table under the roles' own names, mapped one to one
    plain = raw.rename(columns={col: role for role, col in SPEC.columns.items()})
    same = check(plain, OutcomeSpec({role: role for role in SPEC.columns})).events
    pd.testing.assert_frame_equal(same, ev)


@pytest.mark.parametrize(
    "flags",
    [
        ["yes", "no", None],
        ["True", "FALSE", None],
        [" t ", "f", ""],  # stray spaces and blank text
        ["1", "0", None],
        [1, 0, None],
        [1.0, 0.0, np.nan],  # a CSV column of 0/1 with blanks is read as floats
        [True, False, None],
        pd.array([True, False, None], dtype="boolean"),
        pd.array([1, 0, None], dtype="Int64"),
    ],
)
def test_flags_are_read_from_text_0_1_and_booleans(flags):
    raw = pd.DataFrame([row(), row(), row(bounce=None)])
    raw["click"] = flags
    raw["bounce"] = flags
    checked = check(raw)
    assert checked.rejects.empty
    assert checked.events["clicked"].tolist()[:2] == [True, False]
    assert pd.isna(checked.events["clicked"].iloc[2])
    assert checked.events["bounced"].tolist()[:2] == [True, False]


def test_plain_boolean_columns_keep_every_value():
    raw = pd.DataFrame([row(), row()])
    raw["click"] = np.array([True, False])
    assert check(raw).events["clicked"].tolist() == [True, False]


def test_blank_cells_are_missing_values_not_unreadable_ones():
    raw = pd.DataFrame([row(journey="j2", tp="", shown="", click=" ", secs="", back="")])
    ev = check(raw).events
    assert ev["touchpoint"].isna().all() and ev["shown_at"].isna().all()
    assert ev["clicked"].isna().all() and ev["session_s"].isna().all()


def test_ids_read_as_floats_are_whole_numbers_as_text():
    """A CSV id column with a blank is read as floats: 17.0 is journey "17"."""
    raw = pd.DataFrame({"journey": [17.0, 18.0], "tp": [None, None]})
    spec = OutcomeSpec({"journey_id": "journey", "touchpoint": "tp"})
    checked = check_outcomes(raw, spec, "outcomes.csv", ["17", "18"], TOUCHPOINTS)
    assert checked.events["journey_id"].tolist() == ["17", "18"]
    assert checked.rejects.empty


def test_a_csv_round_trip_reads_back_the_same_events(tmp_path):
    raw = pd.DataFrame([row(), row(journey="j2", tp=None, shown=None, click=None, bounce=None)])
    raw.to_csv(tmp_path / "outcomes.csv", index=False)
    back = check(pd.read_csv(tmp_path / "outcomes.csv"))
    assert back.rejects.empty
    pd.testing.assert_frame_equal(back.events, check(raw).events)


# ---------------------------------------------------------------------------------------------
# rows quarantined, each with its reason

# (row, reason): each row breaks exactly one rule
BAD_ROWS = [
    (row(journey=""), "journey_id is empty"),
    (row(journey=None), "journey_id is empty"),
    (row(journey="j99"), "journey not in the feed"),
    (row(tp="carrier_pigeon"), "touchpoint not in the catalogue: carrier_pigeon"),
    (row(shown=None), "a contact without shown_at"),
    (row(shown="next tuesday"), "shown_at unreadable: next tuesday"),
    (row(bought="2026-02-31"), "converted_at unreadable: 2026-02-31"),
    (row(back=1772355600), "returned_at unreadable: 1772355600"),  # a number is no timestamp
    (row(click="maybe"), "clicked unreadable: maybe"),
    (row(bounce=2), "bounced unreadable: 2"),
    (row(amount="twelve"), "value unreadable: twelve"),
    (row(secs="long"), "session_s unreadable: long"),
    (row(amount=float("inf")), "value unreadable: inf"),
    (row(amount=-5.0), "value is negative"),
    (row(secs=-1.0), "session_s is negative"),
    (row(bought=None), "a value without converted_at"),
    (row(shown=at(6)), "converted before it was shown"),
    (row(shown=at(-2), bought=None, amount=None), "shown_at before the feed was built"),
    (row(tp=None, shown=None, bought=at(-1)), "converted_at before the feed was built"),
    (row(back=at(-24)), "returned_at before the feed was built (2026-03-01 09:00)"),
]


def test_every_broken_rule_is_quarantined_with_its_reason():
    good = [row(), row(journey="j2", tp="product_offer", click=0, bought=None, amount=0.0)]
    raw = pd.DataFrame(good + [bad for bad, _ in BAD_ROWS])
    raw.index = raw.index * 10 + 3  # the user's own row labels do not matter
    checked = check(raw)
    assert checked.events["journey_id"].tolist() == ["j1", "j2"]
    reasons = checked.rejects["reject_reason"].tolist()
    assert len(reasons) == len(BAD_ROWS)
    for got, (_, want) in zip(reasons, BAD_ROWS, strict=True):
        assert got.startswith(want), (got, want)
    # the rejects are the user's rows as they came, in their own column names
    assert list(checked.rejects.columns) == [*raw.columns, "reject_reason"]
    assert checked.rejects["tp"].iloc[3] == "carrier_pigeon"
    assert checked.counts == {
        "rows_in": len(raw),
        "rows_kept": 2,
        "rows_rejected": len(BAD_ROWS),
    }


def test_the_first_rule_broken_gives_the_reason():
    raw = pd.DataFrame([row(), row(journey="j99", tp="carrier_pigeon", amount=-1.0)])
    assert check(raw).rejects["reject_reason"].tolist() == ["journey not in the feed"]


def test_without_the_feeds_time_early_events_are_kept():
    raw = pd.DataFrame([row(shown=at(-2), bought=at(-1), back=at(-1)), row()])
    assert check(raw, feed_at=None).rejects.empty
    # a feed time without a time zone is UTC
    assert len(check(raw, feed_at=pd.Timestamp("2026-03-01 09:00")).rejects) == 1
    assert check(raw, feed_at=pd.Timestamp("2026-03-01 06:00")).rejects.empty


def test_a_value_of_zero_needs_no_conversion():
    assert check(pd.DataFrame([row(bought=None, amount=0.0)])).rejects.empty


def test_a_missing_mapped_column_names_the_file_and_the_column():
    raw = pd.DataFrame([row()]).drop(columns=["click"])
    with pytest.raises(
        ContractError, match=r"outcomes\.csv: outcome columns \['click \(clicked\)'\]"
    ):
        check(raw)


def test_a_table_with_no_usable_row_is_refused_with_the_most_common_reason():
    raw = pd.DataFrame([row(journey="j99"), row(journey="j98"), row(tp="carrier_pigeon")])
    with pytest.raises(
        ContractError, match="outcomes.csv: no outcome row .* journey not in the feed"
    ):
        check(raw)


def test_an_empty_table_is_no_error():
    checked = check(pd.DataFrame([row()]).iloc[:0])
    assert checked.events.empty and list(checked.events.columns) == list(ROLES)
    assert checked.counts == {"rows_in": 0, "rows_kept": 0, "rows_rejected": 0}


# ---------------------------------------------------------------------------------------------
# the synthetic world's outcomes pass the contract


def test_nothing_is_quarantined_on_the_synthetic_worlds_output(tmp_path):
    params = ResponseParams.from_config(compose_config("generate")["generator"])
    n = 4000
    rng = np.random.default_rng(5)
    journeys = pd.DataFrame(
        {
            "journey_id": [f"j{i}" for i in range(n)],
            "session_id": [f"j{i}-s2" for i in range(n)],
            "intent": rng.choice(params.intents, n),
            "touchpoint": np.where(rng.random(n) < 0.7, rng.choice(params.touchpoints, n), None),
        }
    )
    events = respond(params, journeys, T0, 28.0, rng)
    spec = OutcomeSpec({role: role for role in ROLES})
    ids, names = journeys["journey_id"].tolist(), list(params.touchpoints)
    checked = check_outcomes(events, spec, "outcomes.parquet", ids, names, feed_at=T0)
    assert checked.rejects.empty
    assert len(checked.events) == len(events)
    # and the same once written to CSV and read back, as a real export would arrive
    events.to_csv(tmp_path / "outcomes.csv", index=False)
    raw = pd.read_csv(tmp_path / "outcomes.csv")
    from_csv = check_outcomes(raw, spec, "outcomes.csv", ids, names, feed_at=T0)
    assert from_csv.rejects.empty
    pd.testing.assert_frame_equal(from_csv.events, checked.events)
