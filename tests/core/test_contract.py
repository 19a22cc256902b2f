"""The session contract: required columns, types, and quarantine of impossible rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.core.contract import (
    ARRAY_CHECK_MAX_ROWS,
    REJECT_REASON,
    SOURCE_ROW,
    ContractError,
    DatasetSpec,
    array_failures,
    as_text,
    schema_failures,
    to_contract,
)
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    cfg = compose_config("train", ["output_dir=/tmp"])
    return DatasetSpec.from_config(cfg["data"])


def test_clean_sessions_are_all_kept(small_sessions, spec):
    result = to_contract(small_sessions, spec, source="clean.parquet")
    assert result.counts == {
        "rows_in": len(small_sessions),
        "rows_kept": len(small_sessions),
        "rows_rejected": 0,
    }
    assert str(result.sessions["started_at"].dtype) == "datetime64[ns, UTC]"
    assert set(result.sessions["label"]) <= set(spec.classes)


def test_missing_required_column_names_column_and_file(small_sessions, spec):
    with pytest.raises(
        ContractError,
        match=r"sessions\.csv: required column 'session_id' \(role session_id\) is missing",
    ):
        to_contract(small_sessions.drop(columns=["session_id"]), spec, source="sessions.csv")


def test_missing_label_column_is_an_error_for_training_only(small_sessions, spec):
    raw = small_sessions.drop(columns=["intent"])
    with pytest.raises(ContractError, match="'intent' \\(role label\\)"):
        to_contract(raw, spec, source="x.parquet")
    assert len(to_contract(raw, spec, with_label=False).sessions) == len(raw)


def test_wrong_type_names_column_expected_and_found(small_sessions, spec):
    raw = small_sessions.copy()
    raw["dwell_time_s"] = raw["dwell_time_s"].astype(str)
    raw.loc[3, "dwell_time_s"] = "about a minute"
    with pytest.raises(ContractError) as err:
        to_contract(raw, spec, source="export.csv")
    message = str(err.value)
    assert "export.csv" in message and "'dwell_time_s'" in message
    assert "must be numeric" in message and "found" in message
    assert "about a minute" in message  # the value that is not a number, not the ones that are
    raw["dwell_time_s"] = ["12.5"] * len(raw)  # numbers written as text: they are the example
    with pytest.raises(ContractError, match=r"found str \(e\.g\. \['12\.5'\]\)"):
        to_contract(raw, spec, source="export.csv")


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("dwell_time_s", -5.0, "dwell_time_s must be >= 0"),
        ("latitude", 123.0, "latitude must be within [-90, 90]"),
        ("longitude", -200.0, "longitude must be within [-180, 180]"),
        ("intent", "browse", "label must be one of"),
        ("pages_cart", -1, "pages_cart must be >= 0"),
        ("started_at", "not a time", "started_at unreadable timestamp"),
        ("dwell_time_s", float("inf"), "dwell_time_s must be >= 0 and finite (got inf)"),
        ("page_views", float("inf"), "page_views must be >= 0 and finite"),
        ("utc_offset_min", 99999, "utc_offset_min must be within [-840, 840] (got 99999.0)"),
        ("utc_offset_min", -900, "utc_offset_min must be within [-840, 840]"),
        ("latitude", float("-inf"), "latitude must be within [-90, 90]"),
    ],
)
def test_impossible_values_are_quarantined_with_reason(small_sessions, spec, column, value, reason):
    raw = small_sessions.copy()
    if column == "started_at":
        raw[column] = raw[column].astype(str).astype(object)
    elif column in ("pages_cart", "page_views", "utc_offset_min"):
        raw[column] = raw[column].astype(float)
    raw.loc[7, column] = value
    result = to_contract(raw, spec, source="s.parquet")
    assert result.counts["rows_rejected"] == 1
    assert result.counts["rows_in"] == result.counts["rows_kept"] + result.counts["rows_rejected"]
    rejected = result.rejects.iloc[0]
    assert rejected[SOURCE_ROW] == 7
    assert reason in rejected[REJECT_REASON]
    assert rejected["session_id"] == raw.loc[7, "session_id"]
    assert raw.loc[7, "session_id"] not in set(result.sessions["session_id"])


def test_duplicate_session_ids_keep_the_first_and_reject_repeats(small_sessions, spec):
    raw = pd.concat([small_sessions, small_sessions.iloc[[0, 5]]], ignore_index=True)
    result = to_contract(raw, spec)
    assert result.counts == {
        "rows_in": len(raw),
        "rows_kept": len(small_sessions),
        "rows_rejected": 2,
    }
    assert list(result.rejects[SOURCE_ROW]) == [len(small_sessions), len(small_sessions) + 1]
    assert all("duplicate" in r for r in result.rejects[REJECT_REASON])


def test_several_problems_on_one_row_are_all_named(small_sessions, spec):
    raw = small_sessions.copy()
    raw.loc[2, "dwell_time_s"] = -1.0
    raw.loc[2, "latitude"] = 95.0
    result = to_contract(raw, spec)
    reason = result.rejects.loc[0, REJECT_REASON]
    assert "dwell_time_s" in reason and "latitude" in reason


def test_missing_label_value_is_rejected(small_sessions, spec):
    raw = small_sessions.copy()
    raw["intent"] = raw["intent"].astype(object)
    raw.loc[4, "intent"] = None
    result = to_contract(raw, spec)
    assert result.counts["rows_rejected"] == 1
    assert "label" in result.rejects.loc[0, REJECT_REASON]


def test_scoring_tolerates_absent_optional_roles(spec):
    raw = pd.DataFrame({"session_id": ["a", "b"], "device": ["mobile", "smartwatch"]})
    result = to_contract(raw, spec, with_label=False, all_columns=False)
    assert list(result.sessions.columns) == ["session_id", "device"]
    assert result.counts["rows_kept"] == 2


def test_naive_timestamps_are_read_as_utc_and_aware_ones_converted(spec):
    raw = pd.DataFrame(
        {
            "session_id": ["a", "b"],
            "started_at": ["2026-03-01T10:00:00+01:00", "2026-03-01T10:00:00"],
        }
    )
    result = to_contract(raw, spec, with_label=False, all_columns=False)
    assert list(result.sessions["started_at"].dt.hour) == [9, 10]


def test_booleans_accept_text_and_numbers(spec):
    raw = pd.DataFrame(
        {"session_id": ["a", "b", "c"], "returning_visitor": ["true", "False", None]}
    )
    result = to_contract(raw, spec, with_label=False, all_columns=False)
    assert result.sessions["returning_visitor"].tolist()[:2] == [True, False]
    bad = pd.DataFrame({"session_id": ["a"], "returning_visitor": ["sometimes"]})
    with pytest.raises(ContractError, match="returning_visitor.*boolean"):
        to_contract(bad, spec, with_label=False, all_columns=False)


def test_dataset_spec_rejects_unknown_roles_and_bad_class_sets():
    with pytest.raises(ValueError, match="unknown roles \\['devise'\\]"):
        DatasetSpec(columns={"devise": "device"})
    with pytest.raises(ValueError, match="at least two classes"):
        DatasetSpec(classes=("buy",))
    with pytest.raises(ValueError, match="not in data.label.classes"):
        DatasetSpec(classes=("a", "b"), label_mapping={"1": "c"})


def test_row_counts_add_up_on_random_corruption(small_sessions, spec):
    rng = np.random.default_rng(0)
    raw = small_sessions.copy()
    bad = rng.choice(len(raw), size=40, replace=False)
    raw.loc[bad[:20], "dwell_time_s"] = -1.0
    raw.loc[bad[20:], "intent"] = "unknown"
    result = to_contract(raw, spec)
    assert result.counts["rows_rejected"] == 40
    assert len(result.sessions) + len(result.rejects) == len(raw)
    assert sorted(result.rejects[SOURCE_ROW]) == sorted(bad)


# -- a few rows are checked on arrays, a batch by pandera: the same rows, the same reasons ------

_maybe = st.one_of(
    st.none(),
    st.sampled_from([-1e9, -181.0, -91.0, -1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 89.9, 90.0, 180.0, 1e9]),
)
_row = st.fixed_dictionaries(
    {
        "session_id": st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),
        "latitude": _maybe,
        "longitude": _maybe,
        "dwell_time_s": _maybe,
        "page_views": _maybe,
        "touchpoint_propensity": _maybe,
        "pages_info": _maybe,
        "label": st.one_of(st.none(), st.sampled_from(["know", "go", "sleep", ""])),
    }
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(_row, min_size=1, max_size=12), with_label=st.booleans())
def test_array_checks_quarantine_what_the_pandera_schema_does(rows, with_label):
    spec = DatasetSpec(
        columns={"session_id": "id", "page_views": "pv", "latitude": "lat"},
        page_counts={"info": "pi"},
        label_column="y",
    )
    frame = pd.DataFrame(rows)
    # the canonical frame as `to_contract` builds it: text with None for missing, floats
    df = pd.DataFrame(
        {
            "session_id": as_text(frame["session_id"]),
            **{
                c: frame[c].astype(float) for c in frame.columns if c not in ("session_id", "label")
            },
        }
    )
    if with_label:
        df["label"] = as_text(frame["label"])
    columns = {c: df[c] for c in df.columns}
    by_arrays = sorted(array_failures(columns, spec, with_label))
    by_pandera = sorted(schema_failures(df, spec, with_label, source="x"))
    assert by_arrays == by_pandera


def test_a_small_and_a_large_frame_reject_the_same_rows_with_the_same_reasons(small_sessions, spec):
    raw = small_sessions.copy()
    raw.loc[[1, 7], "dwell_time_s"] = -3.0
    raw.loc[4, "latitude"] = 123.0
    raw.loc[9, "session_id"] = raw.loc[2, "session_id"]
    raw.loc[11, "intent"] = "sleep"
    assert len(raw) > ARRAY_CHECK_MAX_ROWS  # the whole frame goes through pandera
    batch = to_contract(raw, spec, source="s.parquet")
    head = raw.iloc[:20]  # a few rows: checked on arrays
    few = to_contract(head, spec, source="s.parquet")
    expected = batch.rejects[batch.rejects[SOURCE_ROW] < 20].reset_index(drop=True)
    pd.testing.assert_frame_equal(few.rejects, expected)
    assert set(few.reasons) == {1, 4, 7, 9, 11}


@pytest.mark.parametrize(
    "series",
    [
        pd.Series(["a", None, "c"], dtype=object),
        pd.Series(["a", None, "c"], dtype="string"),
        pd.Series(["a", None, "c"], dtype="str"),
        pd.Series([1.0, np.nan, 3.0]),
        pd.Series([1.5, np.nan, 3.0]),
        pd.Series([1, 2, 3], dtype="int64"),
        pd.Series([1, None, 3], dtype="Int64"),
        pd.Series([True, False, True]),
        pd.Series([True, None, False], dtype="boolean"),
        pd.Series(["a", 2, 3.5, None], dtype=object),
        pd.Series([np.nan, np.nan]),
        pd.Series(["x", "y"], dtype="category"),
    ],
    ids=lambda s: str(s.dtype),
)
def test_category_text_matches_pandas_string_conversion(series):
    """Category values become the text pandas' own string conversion gives (whole floats as their
    digits), with None for missing values, in an object column."""
    expected = series.astype("string")
    if pd.api.types.is_float_dtype(series) and (series.dropna() % 1 == 0).all():
        expected = series.astype("Int64").astype("string")
    expected = expected.astype(object).where(expected.notna(), None)
    got = as_text(series)
    assert got.dtype == object
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("rows", [5, 400])  # arrays for a few rows, pandera for batches
def test_infinite_extra_numeric_values_are_quarantined_both_ways(rows):
    spec = DatasetSpec(columns={"session_id": "id"}, extra_numeric=("PageValues",))
    raw = pd.DataFrame({"id": [f"s{i}" for i in range(rows)], "PageValues": 1.0})
    raw.loc[1, "PageValues"] = float("inf")
    raw.loc[2, "PageValues"] = float("-inf")
    result = to_contract(raw, spec, with_label=False)
    assert result.reasons == {
        1: "PageValues must be a finite number (got inf)",
        2: "PageValues must be a finite number (got -inf)",
    }


def test_an_input_with_none_of_the_mapped_columns_is_refused_naming_them(small_sessions, spec):
    renamed = small_sessions.rename(columns=lambda c: c if c == "session_id" else c.title())
    with pytest.raises(ContractError, match="none of the mapped columns is present") as err:
        to_contract(renamed, spec, source="renamed.csv", with_label=False, all_columns=False)
    assert "renamed.csv" in str(err.value) and "Device" in str(err.value)


@pytest.mark.parametrize("rows", [None, ARRAY_CHECK_MAX_ROWS + 10])
def test_a_list_or_mapping_in_a_text_column_is_a_rejected_row(small_sessions, spec, rows):
    raw = small_sessions.copy()
    if rows is not None:  # the large-frame path checks rows with the pandera schema
        raw = raw.sample(rows, replace=True, random_state=0).reset_index(drop=True)
        raw["session_id"] = [f"s{i}" for i in range(rows)]
    for col in ("session_id", "device", "channel", "intent"):
        raw[col] = raw[col].astype(object)
    raw.at[3, "device"] = ["mobile"]
    raw.at[5, "channel"] = {"name": "search"}
    raw.at[8, "session_id"] = ("s8", "again")
    raw.at[9, "intent"] = np.array(["buy", "know"], dtype=object)
    result = to_contract(raw, spec, source="events.json")
    assert result.counts["rows_in"] == len(raw)
    assert result.counts["rows_rejected"] == 4
    reasons = dict(zip(result.rejects[SOURCE_ROW], result.rejects[REJECT_REASON], strict=True))
    assert set(reasons) == {3, 5, 8, 9}
    assert reasons[3].startswith("device not a single value (got ['mobile'])")
    assert reasons[5].startswith("channel not a single value (got {'name': 'search'})")
    assert reasons[8].startswith("session_id not a single value (got ('s8', 'again'))")
    assert reasons[9] == "label not a single value (got ['buy', 'know'])"  # named once
    # the text of a list is never read as a category
    assert "['mobile']" not in set(result.sessions["device"])
