"""Scoring one chunk of an input: every row scored or rejected, journeys summarised in time order."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from pipelines.core.contract import (
    REJECT_REASON,
    SOURCE_ROW,
    ContractError,
)
from pipelines.core.scorer import IntentModel
from pipelines.core.scoring import (
    ROW,
    check_accounting,
    check_rejected_share,
    journey_summary,
    report_absent_columns,
    score_chunk,
    score_summary,
)
from tests.fixtures import HAND_CLASSES, HAND_SPEC, HAND_T0, hand_built_model

CLASSES = HAND_CLASSES
SPEC = HAND_SPEC
INFO = {"model_name": "intent", "model_version": 3, "model_uri": None}
T0 = HAND_T0


@pytest.fixture(scope="module")
def model() -> IntentModel:
    """A five-round LightGBM model on hand-built sessions, on one thread."""
    return hand_built_model(40)


def chunk_of_input() -> pd.DataFrame:
    """Six rows that were rows 100-105 of a larger input: two journeys, a negative dwell time
    (row 101) and an unreadable start (row 104)."""
    return pd.DataFrame(
        {
            "id": ["a1", "a2", "b1", "a3", "b2", "b3"],
            "journey": ["a", "a", "b", "a", "b", "b"],
            "start": [
                "2026-03-01T10:00:00Z",
                "2026-03-02T10:00:00Z",
                "2026-03-01T08:00:00+01:00",
                "2026-03-03T10:00:00Z",
                "not a time",
                "2026-03-04T10:00:00Z",
            ],
            "device": ["mobile", "mobile", "desktop", "mobile", "desktop", "desktop"],
            "dwell": [40.0, -1.0, 240.0, 150.0, 300.0, 330.0],
            ROW: np.arange(100, 106),
        }
    )


def test_every_row_is_scored_or_rejected(model):
    chunk = score_chunk(model, chunk_of_input(), "in.csv", INFO)
    assert chunk.rows == len(chunk.scored) + len(chunk.rejects) == 6
    assert len(chunk.scored) == 4 and len(chunk.rejects) == 2
    probs = chunk.scored[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert REJECT_REASON not in chunk.scored and ROW not in chunk.scored


def test_rejected_rows_keep_their_input_row_number_and_reason(model):
    rejects = score_chunk(model, chunk_of_input(), "in.csv", INFO).rejects
    assert rejects[SOURCE_ROW].tolist() == [101, 104]
    assert rejects["id"].tolist() == ["a2", "b2"]  # the user's columns, as they came in
    assert rejects["start"].tolist() == ["2026-03-02T10:00:00Z", "not a time"]
    reasons = rejects[REJECT_REASON].tolist()
    assert reasons[0].startswith("dwell_time_s")
    assert reasons[1].startswith("started_at unreadable timestamp")


def test_scored_rows_carry_their_journey_start_and_input_row(model):
    scored = score_chunk(model, chunk_of_input(), "in.csv", INFO).scored
    assert scored["session_id"].tolist() == ["a1", "b1", "a3", "b3"]
    assert scored["journey_id"].tolist() == ["a", "b", "a", "b"]
    assert scored["input_row"].tolist() == [100, 102, 103, 105]
    # every start in UTC, an offset converted
    assert scored["started_at"].tolist() == [
        pd.Timestamp("2026-03-01T10:00:00Z"),
        pd.Timestamp("2026-03-01T07:00:00Z"),
        pd.Timestamp("2026-03-03T10:00:00Z"),
        pd.Timestamp("2026-03-04T10:00:00Z"),
    ]


def test_model_information_is_added_as_text_to_scored_and_journey_rows(model):
    chunk = score_chunk(model, chunk_of_input(), "in.csv", INFO)
    for frame in (chunk.scored, chunk.journeys):
        assert frame["model_name"].tolist() == ["intent"] * len(frame)
        assert frame["model_version"].tolist() == ["3"] * len(frame)
        assert frame["model_uri"].isna().all()


def test_the_chunk_journeys_are_summarised_from_its_scored_rows(model):
    chunk = score_chunk(model, chunk_of_input(), "in.csv", INFO)
    journeys = chunk.journeys.set_index("journey_id")
    assert journeys["sessions"].to_dict() == {"a": 2, "b": 2}
    assert journeys["latest_session_id"].to_dict() == {"a": "a3", "b": "b3"}
    a = chunk.scored[chunk.scored["journey_id"] == "a"]
    assert journeys.loc["a", "intent_sequence"] == ">".join(a["intent"])


def test_the_scores_do_not_depend_on_the_row_order_of_the_chunk(model):
    frame = chunk_of_input()
    straight = score_chunk(model, frame, "in.csv", INFO)
    shuffled = score_chunk(model, frame.sample(frac=1.0, random_state=4), "in.csv", INFO)
    cols = ["session_id", "input_row", *[f"p_{c}" for c in CLASSES]]

    def by_row(f):
        return f.sort_values("input_row")[cols].reset_index(drop=True)

    pd.testing.assert_frame_equal(by_row(straight.scored), by_row(shuffled.scored))
    assert sorted(shuffled.rejects[SOURCE_ROW]) == [101, 104]


def test_without_a_journey_or_start_column_each_session_is_its_own_journey(model):
    frame = chunk_of_input().drop(columns=["journey", "start"])
    chunk = score_chunk(model, frame, "in.csv", INFO)
    assert chunk.scored["journey_id"].tolist() == chunk.scored["session_id"].tolist()
    assert chunk.scored["started_at"].isna().all()
    assert chunk.journeys["sessions"].tolist() == [1] * len(chunk.scored)


def test_sessions_with_a_missing_journey_id_are_each_their_own_journey(model):
    frame = chunk_of_input()
    frame.loc[[0, 2], "journey"] = None  # a1 and b1 belong to no journey
    chunk = score_chunk(model, frame, "in.csv", INFO)
    assert chunk.scored["journey_id"].tolist() == ["a1", "b1", "a", "b"]
    journeys = chunk.journeys.set_index("journey_id")
    assert journeys["sessions"].to_dict() == {"a": 1, "a1": 1, "b": 1, "b1": 1}


def test_score_chunk_leaves_the_given_frame_as_it_was(model):
    frame = chunk_of_input()
    before = frame.copy()
    score_chunk(model, frame, "in.csv", INFO)
    pd.testing.assert_frame_equal(frame, before)


# -- journey_summary -----------------------------------------------------------------------------


def predictions() -> pd.DataFrame:
    """Journey `a` of three sessions whose starts are out of row order, journey `b` of one."""
    return pd.DataFrame(
        {
            "session_id": ["a-late", "b-only", "a-first", "a-middle"],
            "journey_id": ["a", "b", "a", "a"],
            "started_at": pd.to_datetime(
                ["2026-03-03", "2026-03-02", "2026-03-01", "2026-03-02"], utc=True
            ),
            "intent": ["buy", "go", "know", "do"],
            "p_know": [0.1, 0.2, 0.7, 0.1],
            "p_buy": [0.9, 0.8, 0.3, 0.9],
        }
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_journey_summary_takes_the_latest_session_and_the_sequence_in_time_order(seed):
    pred = predictions().sample(frac=1.0, random_state=seed)
    out = journey_summary(pred, ["know", "buy"]).set_index("journey_id")
    assert out.loc["a", "sessions"] == 3
    assert out.loc["a", "latest_session_id"] == "a-late"
    assert out.loc["a", "latest_started_at"] == pd.Timestamp("2026-03-03", tz="UTC")
    assert out.loc["a", "intent"] == "buy"
    assert out.loc["a", "intent_sequence"] == "know>do>buy"
    assert (out.loc["a", "p_know"], out.loc["a", "p_buy"]) == (0.1, 0.9)
    assert out.loc["b", "intent_sequence"] == "go" and out.loc["b", "sessions"] == 1


def test_sessions_starting_at_the_same_time_are_ordered_by_session_id():
    pred = predictions().assign(started_at=pd.Timestamp("2026-03-01", tz="UTC"))
    out = journey_summary(pred, ["know", "buy"]).set_index("journey_id")
    # a-first < a-late < a-middle as text
    assert out.loc["a", "intent_sequence"] == "know>buy>do"
    assert out.loc["a", "latest_session_id"] == "a-middle"


def test_an_empty_prediction_frame_gives_an_empty_summary_with_every_column():
    out = journey_summary(pd.DataFrame(), ["know", "buy"])
    assert out.empty
    assert list(out.columns) == [
        "journey_id",
        "sessions",
        "latest_session_id",
        "latest_started_at",
        "intent",
        "p_know",
        "p_buy",
        "intent_sequence",
    ]


# -- accounting and the summary ------------------------------------------------------------------


def test_row_accounting_that_adds_up_passes():
    check_accounting(10, 7, 3)


def test_row_accounting_that_does_not_add_up_is_refused_with_the_counts():
    with pytest.raises(RuntimeError, match="10 in, 7 scored, 2 rejected"):
        check_accounting(10, 7, 2)


def test_score_summary_holds_the_counts_missing_columns_extras_and_model_as_text():
    counts = {
        "rows_in": np.int64(10),
        "rows_scored": np.int64(8),
        "rows_rejected": 2,
        "journeys": 4,
    }
    summary = score_summary(
        "in.csv", "out", counts, INFO, engine="local", missing_columns=("device",), buckets=2
    )
    assert summary == {
        "input": "in.csv",
        "output": "out",
        "rows_in": 10,
        "rows_scored": 8,
        "rows_rejected": 2,
        "journeys": 4,
        "missing_columns": ["device"],
        "missing_columns_count": 1,
        "engine": "local",
        "buckets": 2,
        "model_name": "intent",
        "model_version": "3",
        "model_uri": None,
    }
    assert all(type(summary[k]) is int for k in ("rows_in", "rows_scored"))


def test_a_summary_whose_rows_do_not_add_up_is_refused():
    counts = {"rows_in": 10, "rows_scored": 8, "rows_rejected": 1, "journeys": 4}
    with pytest.raises(RuntimeError, match="row accounting broke"):
        score_summary("in.csv", "out", counts, {})


# -- absent columns ------------------------------------------------------------------------------


def test_a_missing_mapped_column_is_named_with_a_look_alike(caplog):
    names = ["id", "journey", "start", "Device"]  # `device` spelled otherwise, `dwell` absent
    with caplog.at_level(logging.WARNING, logger="pipelines.core.scoring"):
        absent = report_absent_columns(SPEC, names, "today.csv")
    assert absent == ["device", "dwell"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "today.csv: mapped column 'device' is missing; scored without it "
        "(found 'Device': map it in data.columns)",
        "today.csv: mapped column 'dwell' is missing; scored without it",
    ]


def test_an_input_with_every_mapped_column_warns_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="pipelines.core.scoring"):
        assert report_absent_columns(SPEC, ["id", "journey", "start", "device", "dwell"], "x") == []
    assert not caplog.records


def test_an_input_with_no_mapped_column_but_the_id_is_refused():
    with pytest.raises(ContractError, match="today.csv: none of the mapped columns is present"):
        report_absent_columns(SPEC, ["id", "Whatever"], "today.csv")


def test_journey_summary_equals_the_per_journey_definition_on_many_shuffled_journeys():
    """Against the definition written out per journey (sort by start then id, missing starts
    last; the latest row; intents joined by '>'), with ties, missing starts and one-session
    journeys."""
    rng = np.random.default_rng(4)
    n = 3000
    starts = pd.to_datetime(rng.integers(0, 50, n), unit="D", utc=True).to_series().to_numpy()
    pred = pd.DataFrame(
        {
            "session_id": [f"s{i:05d}" for i in rng.permutation(n)],
            "journey_id": [f"j{k}" for k in rng.integers(0, 900, n)],
            "started_at": pd.array(starts, dtype="datetime64[ns, UTC]"),
            "intent": rng.choice(["know", "go", "do", "buy"], n),
            "p_buy": rng.random(n),
        }
    )
    pred.loc[rng.choice(n, 200, replace=False), "started_at"] = pd.NaT
    out = journey_summary(pred, ["buy"]).set_index("journey_id")
    assert len(out) == pred["journey_id"].nunique()
    for journey, rows in pred.groupby("journey_id"):
        rows = rows.sort_values(["started_at", "session_id"], na_position="last")
        got = out.loc[journey]
        assert got["sessions"] == len(rows)
        assert got["latest_session_id"] == rows["session_id"].iloc[-1]
        assert got["p_buy"] == rows["p_buy"].iloc[-1]
        assert got["intent_sequence"] == ">".join(rows["intent"])


def test_a_rejected_share_over_the_limit_is_refused_naming_the_commonest_reasons(tmp_path):
    reasons = ["device not a single value (got ['a'])"] * 3 + [
        "dwell_time_s negative value (got -1.0); latitude out of range (got 99.0)",
        "latitude out of range (got 91.0)",
    ]
    path = tmp_path / "rejects.parquet"
    pd.DataFrame({REJECT_REASON: reasons}).to_parquet(path)
    counts = {"rows_in": 8, "rows_scored": 3, "rows_rejected": 5}
    with pytest.raises(ContractError) as err:
        check_rejected_share(counts, 0.5, path, "in.parquet")
    assert str(err.value).startswith("in.parquet: 5 of 8 sessions (62%) broke the contract")
    assert (
        "device not a single value (3), latitude out of range (2), dwell_time_s negative value (1)"
        in str(err.value)
    )
    check_rejected_share(counts, 0.625, path, "in.parquet")  # at the limit: not over it
    check_rejected_share(counts, 1.0, path / "not read", "in.parquet")  # 1: never checked
    check_rejected_share({**counts, "rows_in": 0, "rows_rejected": 0}, 0.0, path, "x")
