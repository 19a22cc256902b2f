"""Requests as columns of JSON values: MLflow's formats, which requests may share a predict call,
and that sharing one changes no answer."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.serving.follower import Served
from pipelines.serving.sessions import (
    EMPTY,
    JSON,
    MIXED,
    BadRequest,
    Reading,
    column_kind,
    json_columns,
    merge_keys,
    request_ids,
    request_key,
    score_together,
    sessions_of,
)
from tests.fixtures import hand_built_model, hand_built_sessions
from tests.serving.reference import prediction_records


@pytest.fixture(scope="module")
def model():
    return hand_built_model()


def test_every_json_format_gives_the_columns_pandas_would():
    records = [{"id": "a", "dwell": 3.5}, {"id": "b", "dwell": None, "device": "mobile"}]
    want = {"id": ["a", "b"], "dwell": [3.5, None], "device": [None, "mobile"]}
    assert json_columns("dataframe_records", records) == (want, 2)
    assert json_columns("instances", records) == (want, 2)
    split = {"columns": ["id", "dwell"], "data": [["a", 3.5], ["b", None]], "index": [7, 8]}
    assert json_columns("dataframe_split", split) == ({"id": ["a", "b"], "dwell": [3.5, None]}, 2)
    assert json_columns("dataframe_split", {"data": [["a", 1]]}) == ({0: ["a"], 1: [1]}, 1)
    assert json_columns("inputs", {"id": ["a", "b"], "device": "web"}) == (
        {"id": ["a", "b"], "device": ["web", "web"]},
        2,
    )
    assert json_columns("inputs", {"id": "a", "dwell": 2}) == ({"id": ["a"], "dwell": [2]}, 1)
    for name, frame in [
        ("records", pd.DataFrame(records)),
        ("split", pd.DataFrame(data=split["data"], columns=split["columns"])),
    ]:
        cols, _ = json_columns(
            "dataframe_records" if name == "records" else "dataframe_split",
            records if name == "records" else split,
        )
        built = pd.DataFrame(cols)
        assert list(built.columns) == list(frame.columns), name
        assert built.astype(object).where(built.notna(), None).values.tolist() == (
            frame.astype(object).where(frame.notna(), None).values.tolist()
        )


@pytest.mark.parametrize(
    "key, data, words",
    [
        ("dataframe_split", {"columns": ["a", "b"], "data": [["x"]]}, "row 0 has 1 values"),
        ("dataframe_split", {"columns": ["a", "a"], "data": [["x", "y"]]}, "repeats a name"),
        ("dataframe_split", {"data": [["x"]], "index": [1, 2]}, "index must be a list of 1"),
        ("dataframe_split", {"data": ["x"]}, "list of rows"),
        ("dataframe_split", {"columns": [["a"]], "data": [["x"]]}, "list of column names"),
        ("dataframe_split", {"columns": ["a"]}, "'data'"),
        ("inputs", {"a": [1, 2], "b": [1]}, "different lengths [1, 2]"),
        ("dataframe_records", [{"a": 1}, 2], "list of records"),
        ("instances", {"a": 1}, "list of records"),
    ],
)
def test_a_json_table_that_is_not_one_is_refused_naming_why(key, data, words):
    with pytest.raises(BadRequest, match=words.replace("[", r"\[").replace("]", r"\]")):
        json_columns(key, data)


def test_a_columns_kind_is_what_changes_how_it_reads_stacked():
    assert column_kind(["a", None, "b"], as_text=True) == "text"
    assert column_kind([None, math.nan], as_text=False) == EMPTY
    assert column_kind([], as_text=True) == EMPTY
    # in a column read as text, 3 and 3.0 read as '3' only while every number is whole
    assert column_kind([3, 4.0, None], as_text=True) == "whole"
    assert column_kind([3, 4.5], as_text=True) == "fraction"
    assert column_kind([3, 4.5], as_text=False) == "number"
    assert column_kind([True, None], as_text=False) == "flag"
    assert column_kind(["a", 3], as_text=True) == MIXED
    assert column_kind([True, 1], as_text=False) == MIXED
    assert column_kind([[1, 2]], as_text=False) == MIXED
    assert column_kind([2**60], as_text=True) == MIXED  # loses digits as a float


def test_requests_share_a_call_when_each_read_column_has_one_kind_or_is_empty():
    reading = Reading(frozenset({"id", "dwell", "device"}), frozenset({"id", "device"}), ("id",))

    def key(explain=0, **cols):
        return request_key({"id": ["s"], "note": [1]} | cols, explain, reading)

    a = key(dwell=[3.5], device=["web"])
    assert merge_keys(a, key(dwell=[10], device=["app"])) == a  # numbers read as numbers
    both = merge_keys(key(dwell=[None], device=["web"]), key(dwell=[2.5], device=[None]))
    assert both == a  # an empty column joins any kind, and the batch takes the kind
    assert merge_keys(both, key(dwell=["long"], device=["web"])) is None
    assert merge_keys(key(device=[3]), key(device=[3.5])) is None  # '3' alone, '3.0' stacked
    assert merge_keys(key(device=[3]), key(device=[4.0])) is not None
    assert merge_keys(a, key(dwell=[3.5])) is None  # other columns
    assert merge_keys(a, key(3, dwell=[3.5], device=["web"])) is None  # other reasons asked
    assert key(device=["a", 3]) is None  # a mixed column: alone
    # a column the model does not read may hold anything
    assert request_key({"id": ["s"], "note": ["x", [1]]}, 0, reading) is not None
    assert request_key({"id": ["s"], 3: ["x"]}, 0, reading) is None


def test_ids_are_read_as_the_contract_reads_them():
    cols = {"id": [3, 4.0, "x", None, 2.5], "journey": ["j1", None, 3, "x", "x"]}
    assert request_ids(cols, ["id", "journey"]) == {"3", "4", "x", "2.5", "j1"}
    assert request_ids(cols, []) == frozenset()


def test_one_call_for_the_requests_split_back_and_a_bad_request_fails_alone():
    calls = []

    def predict(frame):
        calls.append(len(frame))
        if (frame["x"] < 0).any():
            raise ValueError(f"x must be >= 0, got {frame['x'].min()}")
        return prediction_records(frame.assign(y=frame["x"] * 2))

    reading = Reading(frozenset({"x"}), frozenset(), ())

    def request(*xs):
        return sessions_of(JSON, json.dumps({"inputs": {"x": list(xs)}}).encode(), reading)

    outs = score_together(predict, [request(1, 2), request(3), request(4, 5)])
    assert calls == [5]
    assert [[r["y"] for r in o] for o in outs] == [[2, 4], [6], [8, 10]]
    calls.clear()
    outs = score_together(predict, [request(1, 2), request(-1), request(3)])
    assert calls == [4, 2, 1, 1]
    assert isinstance(outs[1], ValueError) and outs[2] == [{"x": 3, "y": 6}]


def variants(rng: np.random.Generator, base: pd.DataFrame, n: int) -> list[list[dict]]:
    """`n` requests of one to three sessions, each written a different way: numbers as whole
    floats, integers or text, columns left empty, ids as numbers."""
    out = []
    for i in range(n):
        pick = rng.choice(len(base), size=rng.integers(1, 4), replace=False)
        rows = base.iloc[np.sort(pick)].to_dict(orient="records")
        dwell = rng.choice(["float", "int", "empty", "some empty", "text"])
        device = rng.choice(["text", "empty", "code", "float code", "fraction code"])
        numeric_ids = rng.random() < 0.2
        for j, r in enumerate(rows):
            r.pop("intent")
            r["dwell"] = {
                "float": float(r["dwell"]),
                "int": int(round(r["dwell"])),
                "empty": None,
                "some empty": None if j == 0 else float(r["dwell"]),
                "text": str(r["dwell"]),
            }[dwell]
            code = len(r["device"])
            r["device"] = {
                "text": r["device"],
                "empty": None,
                "code": code,
                "float code": float(code),
                "fraction code": code + 0.5,
            }[device]
            if numeric_ids:
                r["id"], r["journey"] = 1000 * (i + 1) + j, None
        out.append(rows)
    return out


def test_requests_scored_together_answer_exactly_as_each_does_alone(model):
    served = Served(model, "hand_model", "1", "hand")
    reading = Reading.of(model.spec)
    sessions = hand_built_sessions(40)
    requests = variants(np.random.default_rng(5), sessions, 120)
    parsed = [
        sessions_of(JSON, json.dumps({"dataframe_records": r}).encode(), reading) for r in requests
    ]

    def outcome(frame: pd.DataFrame) -> list[dict] | str:
        try:
            records = served.records(frame)
        except ValueError as err:  # the contract refusing a column (text in a number column)
            return f"{type(err).__name__}: {err}"
        assert records == prediction_records(served.predict(frame))  # the frame's, without it
        return records

    # alone: as MLflow's scoring server builds the table
    alone = [outcome(pd.DataFrame(r)) for r in requests]
    assert [outcome(p.to_frame()) for p in parsed] == alone
    assert 0 < sum(isinstance(a, str) for a in alone) < len(alone) / 5

    groups: list[tuple[list[int], object, set]] = []  # as the batcher gathers them
    for i, p in enumerate(parsed):
        for members, key, ids in groups:
            merged = merge_keys(key, p.key)
            if merged is not None and not ids & p.ids:
                members.append(i)
                groups[groups.index((members, key, ids))] = (members, merged, ids | p.ids)
                break
        else:
            groups.append(([i], p.key, set(p.ids)))
    stacked = 0
    calls = []

    def predict(frame):
        calls.append(len(frame))
        return served.records(frame)

    for members, _, _ in groups:
        calls.clear()
        outs = score_together(predict, [parsed[i] for i in members])
        for i, out in zip(members, outs, strict=True):
            if isinstance(out, Exception):
                out = f"{type(out).__name__}: {out}"
            assert out == alone[i], (requests[i], [requests[m] for m in members])
        stacked += len(members) > 1 and len(calls) == 1
    # the test stacks many requests of different kinds, not only alike ones
    assert stacked >= 10 and len(groups) < len(parsed) / 3
    mixed_group = [
        m for m, _, _ in groups if len({str(parsed[i].key) for i in m}) > 1 and len(m) > 1
    ]
    assert len(mixed_group) >= 3


@pytest.mark.parametrize("explain", [0, 2])
def test_an_answers_records_are_the_pyfunc_frames_without_building_it(model, explain):
    """Rejected rows (NaN probabilities, a reason), ids written as numbers or missing, reasons
    asked for: the records equal those of the frame, value for value and type for type."""
    served = Served(model, "hand_model", 7, "hand")  # a version that is not text
    frame = hand_built_sessions(6).drop(columns=["intent"]).reset_index(drop=True)
    frame.loc[1, "dwell"] = -3.0  # rejected by the contract
    frame["id"] = frame["id"].astype(object)
    frame.loc[2, "id"], frame.loc[3, "id"] = 12, None
    ours = served.records(frame, explain)
    theirs = prediction_records(served.predict(frame, explain))
    assert ours == theirs
    assert [[type(v) for v in r.values()] for r in ours] == [
        [type(v) for v in r.values()] for r in theirs
    ]
    assert ours[1]["reject_reason"] and ours[1]["p_" + model.classes[0]] is None
    assert ours[2]["session_id"] == "12" and ours[0]["model_version"] == "7"
    assert json.loads(json.dumps(ours)) == ours
