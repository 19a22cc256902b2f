"""A request's sessions as columns of JSON values, and several requests scored in one call.

A JSON request becomes `Sessions`: its columns as lists of the values sent, never a DataFrame of
its own. Requests that may share a predict call are stacked column by column into one frame, so
building it and scoring it cost about as much for fifty requests as for one.

Stacked, a request must score exactly as it does alone, although pandas then infers each column's
type from every request's values. So each column the session contract reads gets a kind from its
values (`column_kind`): text, numbers (in columns read as text, whole or not: 3.0 reads as '3'
only when every number of the column is whole), flags, empty (only nulls), or mixed. Requests
may share a call when they have the same columns and explanation count, and each read column
has one kind or is empty in all but one kind (`merge_keys`): a null reads as missing whatever the
column's type. A column of mixed kinds never shares. Requests must also share no session or
journey (`Sessions.ids`), or a journey's history would span two requests.

CSV and parquet requests are read as frames and always scored alone.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain

import pandas as pd

from pipelines.core.contract import DatasetSpec, text_columns
from pipelines.core.scorer import check_explain

JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")

# column kinds: only nulls; more than one kind, or values that are not scalars (never batched);
# a column the model does not read (any values)
EMPTY, MIXED, UNREAD = "empty", "mixed", "-"
# integers beyond this lose digits as floats: a column holding one never shares a call
EXACT_INT = 2**53

# (explanation count, ((column, kind), ...) sorted by column); None: scored alone
Key = tuple[int, tuple[tuple[str, str], ...]]


class BadRequest(Exception):
    """A request refused with `status` and a one-line `message`."""

    def __init__(self, status: int, message: str, code: str = "BAD_REQUEST"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass(frozen=True)
class Reading:
    """What the served model reads: every column it maps, and those it reads as text."""

    columns: frozenset[str]
    text: frozenset[str]
    ids: tuple[str, ...]  # the session and journey id columns

    @classmethod
    def of(cls, spec: DatasetSpec) -> Reading:
        ids = tuple(
            c for c in (spec.columns.get("session_id"), spec.columns.get("journey_id")) if c
        )
        return cls(frozenset(spec.input_columns(False)), frozenset(text_columns(spec)), ids)


@dataclass(eq=False)
class Sessions:
    """One request's sessions: `columns` (JSON) or `frame` (CSV, parquet), the reasons asked
    for, and what decides which requests it may be scored with (`key`, `ids`)."""

    rows: int
    explain: int
    columns: dict | None = None
    frame: pd.DataFrame | None = None
    key: Key | None = None
    ids: frozenset = frozenset()

    def to_frame(self) -> pd.DataFrame:
        return self.frame if self.frame is not None else pd.DataFrame(self.columns)


def sessions_of(kind: str, body: bytes, reading: Reading) -> Sessions:
    """A request's sessions from a body of media type `kind` (JSON, CSV or parquet)."""
    if kind == CSV:
        frame = _read(pd.read_csv, body, "CSV")
        return Sessions(len(frame), 0, frame=frame)
    if kind == PARQUET:
        frame = _read(pd.read_parquet, body, "parquet")
        return Sessions(len(frame), 0, frame=frame)
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, too deep
        raise BadRequest(400, f"invalid JSON: {type(err).__name__}: {err}") from None
    if not isinstance(doc, dict):
        raise BadRequest(
            400,
            f"the body must be a JSON object with one of {list(FORMATS)}, got a {type(doc).__name__}",
        )
    keys = [k for k in FORMATS if k in doc]
    if len(keys) != 1:
        raise BadRequest(
            400, f"the body must hold exactly one of {list(FORMATS)}; got keys {sorted(doc)[:10]}"
        )
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest(400, f"params must be a JSON object, got {type(params).__name__}")
    try:
        explain = check_explain(params.get("explain"))
    except ValueError as err:
        raise BadRequest(400, f"params: {err}") from None
    columns, rows = json_columns(keys[0], doc[keys[0]])
    return Sessions(
        rows,
        explain,
        columns=columns,
        key=request_key(columns, explain, reading),
        ids=request_ids(columns, reading.ids),
    )


def _read(reader, body: bytes, what: str) -> pd.DataFrame:
    try:
        return reader(io.BytesIO(body))
    except Exception as err:  # any parser error is the body's
        raise BadRequest(
            400, f"the body is not readable {what}: {type(err).__name__}: {err}"
        ) from None


def json_columns(key: str, data) -> tuple[dict, int]:
    """Column name -> values, and the number of rows, from one of MLflow's JSON input formats
    (the table `mlflow models serve` builds from it: missing values null, a scalar of `inputs`
    repeated down its column)."""
    if key == "dataframe_split":
        return _split_columns(data)
    if key == "inputs" and isinstance(data, dict):
        return _column_lists(data)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BadRequest(400, f"{key} must be a list of records (objects), one per session")
    names = list(dict.fromkeys(chain.from_iterable(data)))
    return {name: [r.get(name) for r in data] for name in names}, len(data)


def _split_columns(data) -> tuple[dict, int]:
    if not isinstance(data, dict) or "data" not in data or set(data) - {"columns", "data", "index"}:
        raise BadRequest(
            400,
            "dataframe_split must be an object with 'data' and optionally 'columns' and 'index'",
        )
    rows = data["data"]
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise BadRequest(400, "dataframe_split.data must be a list of rows (lists of values)")
    names = data.get("columns")
    if names is None:  # pandas numbers the columns
        names = list(range(len(rows[0]) if rows else 0))
    if not isinstance(names, list) or not all(isinstance(n, str | int) for n in names):
        raise BadRequest(400, "dataframe_split.columns must be a list of column names")
    if len(set(names)) != len(names):
        raise BadRequest(400, f"dataframe_split.columns repeats a name: {names[:30]}")
    for i, row in enumerate(rows):
        if len(row) != len(names):
            raise BadRequest(
                400,
                f"dataframe_split.data row {i} has {len(row)} values for {len(names)} columns",
            )
    index = data.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        raise BadRequest(400, f"dataframe_split.index must be a list of {len(rows)} labels")
    return {n: [r[j] for r in rows] for j, n in enumerate(names)}, len(rows)


def _column_lists(data: dict) -> tuple[dict, int]:
    """`inputs` as columns: lists of one length, scalars repeated (all scalars: one row)."""
    lengths = {len(v) for v in data.values() if isinstance(v, list)}
    if len(lengths) > 1:
        raise BadRequest(400, f"inputs: the columns have different lengths {sorted(lengths)}")
    rows = lengths.pop() if lengths else 1
    return {k: v if isinstance(v, list) else [v] * rows for k, v in data.items()}, rows


def column_kind(values: list, as_text: bool) -> str:
    """The kind of a column's values (nulls and NaN left out), as far as it changes how the
    contract reads the column stacked with others: `text`, `flag`, `number` (`whole` or
    `fraction` in a column read as text), `empty`, or `mixed`."""
    kinds, fraction = set(), False
    for v in values:
        t = type(v)
        if v is None or (t is float and math.isnan(v)):
            continue
        if t is str:
            kinds.add("text")
        elif t is bool:
            kinds.add("flag")
        elif t is int:
            if abs(v) > EXACT_INT:
                return MIXED
            kinds.add("number")
        elif t is float:
            kinds.add("number")
            fraction = fraction or not v.is_integer()
        else:  # a list or an object in a cell
            return MIXED
    if not kinds:
        return EMPTY
    if len(kinds) > 1:
        return MIXED
    kind = kinds.pop()
    if kind == "number" and as_text:
        return "fraction" if fraction else "whole"
    return kind


def request_key(columns: dict, explain: int, reading: Reading) -> Key | None:
    """What a request must share with the others of its call (None: it is scored alone)."""
    try:
        names = sorted(columns)
    except TypeError:  # names of mixed types (text and numbers): alone
        return None
    kinds = []
    for name in names:
        if name in reading.columns:
            kind = column_kind(columns[name], name in reading.text)
            if kind == MIXED:
                return None
        else:
            kind = UNREAD
        kinds.append((name, kind))
    return explain, tuple(kinds)


def merge_keys(a: Key | None, b: Key | None) -> Key | None:
    """The key of a call holding requests of keys `a` and `b`, or None when they may not share
    one: the same explanation count and columns, and per column one kind (empty joins any)."""
    if a is None or b is None or a[0] != b[0] or len(a[1]) != len(b[1]):
        return None
    if a == b:
        return a
    merged = []
    for (name_a, kind_a), (name_b, kind_b) in zip(a[1], b[1], strict=True):
        if name_a != name_b:
            return None
        if kind_a == kind_b or kind_b == EMPTY:
            merged.append((name_a, kind_a))
        elif kind_a == EMPTY:
            merged.append((name_a, kind_b))
        else:
            return None
    return a[0], tuple(merged)


def request_ids(columns: dict, id_columns: Sequence[str]) -> frozenset:
    """The session and journey ids of a request as the contract reads them (3, 3.0 and '3' are
    one id), in one namespace: a session without a journey is its own journey."""
    ids: set = set()
    for name in id_columns:
        for v in columns.get(name, ()):
            if v is None:
                continue
            if type(v) is float:
                ids.add(str(int(v)) if v.is_integer() else str(v))
            elif isinstance(v, str | int):
                ids.add(str(v))
            else:  # not an id the contract can read: the request is refused alone anyway
                ids.add(object())
    return frozenset(ids)


def stack(requests: Sequence[Sessions]) -> pd.DataFrame:
    """One frame of the requests' sessions, in order (requests of one key: the same columns)."""
    names = list(requests[0].columns)
    return pd.DataFrame(
        {n: list(chain.from_iterable(r.columns[n] for r in requests)) for n in names}
    )


def score_together(
    predict: Callable[[pd.DataFrame], list[dict]], requests: Sequence[Sessions]
) -> list[list[dict] | Exception]:
    """Each request's prediction records from one `predict` call (a frame in, one record per
    row out) over them all, or the error in its place. When the call fails, each request is
    predicted alone, so a bad request gets its own error and the others their answers."""
    if len(requests) > 1:
        try:
            records = predict(stack(requests))
        except Exception:
            pass  # each alone below
        else:
            out, start = [], 0
            for r in requests:
                out.append(records[start : start + r.rows])
                start += r.rows
            return out
    return [_alone(predict, r) for r in requests]


def _alone(predict: Callable[[pd.DataFrame], list[dict]], request: Sessions):
    try:
        return predict(request.to_frame())
    except Exception as err:
        return err


def predictions_json(records: list[dict]) -> bytes:
    return json.dumps({"predictions": records}).encode()
