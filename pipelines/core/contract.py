"""The session contract: map a user's table onto roles, check types, quarantine bad rows.

A dataset config (`conf/data/*.yaml`) names which of the user's columns plays each role. Only
the session id (which may also be the row number) and, for training, the label are required;
every other role is optional. `to_contract` returns the sessions in canonical role names with
canonical types, plus the rejected rows with the reason each was rejected:
rows in = rows kept + rows rejected, always.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandas.api.extensions import ExtensionArray

ArrayLike = np.ndarray | ExtensionArray  # a column's values, as `Series.array` holds them

# role -> kind; the kinds decide type checks and features
ROLES: dict[str, str] = {
    "session_id": "id",
    "journey_id": "id",
    "started_at": "timestamp",
    "utc_offset_min": "numeric",
    "device": "categorical",
    "channel": "categorical",
    "latitude": "numeric",
    "longitude": "numeric",
    "region": "categorical",
    "dwell_time_s": "numeric",
    "page_views": "numeric",
    "returning_visitor": "bool",
    "touchpoint": "categorical",
    "touchpoint_propensity": "numeric",
    "converted": "bool",
}
LABEL = "label"
REJECT_REASON = "reject_reason"
SOURCE_ROW = "source_row"


class ContractError(ValueError):
    """The input cannot be read as sessions at all (a missing column, a column of the wrong type)."""


@dataclass(frozen=True)
class DatasetSpec:
    """How a user's table maps onto the session contract (the `data` config, minus paths)."""

    columns: Mapping[str, str | None] = field(default_factory=dict)  # role -> user column
    page_counts: Mapping[str, str] = field(default_factory=dict)  # page type -> user column
    label_column: str | None = None
    classes: tuple[str, ...] = ("know", "go", "do", "buy")
    label_mapping: Mapping[str, str] = field(default_factory=dict)  # raw label text -> class
    extra_numeric: tuple[str, ...] = ()
    extra_categorical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.columns) - set(ROLES)
        if unknown:
            raise ValueError(
                f"data.columns names unknown roles {sorted(unknown)}; known roles: {sorted(ROLES)}"
            )
        if len(self.classes) < 2:
            raise ValueError(
                f"data.label.classes needs at least two classes, got {list(self.classes)}"
            )
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.label.classes has duplicates: {list(self.classes)}")
        bad = set(self.label_mapping.values()) - set(self.classes)
        if bad:
            raise ValueError(
                f"data.label.mapping maps onto {sorted(bad)}, which are not in data.label.classes"
            )

    @classmethod
    def from_config(cls, cfg: Mapping) -> DatasetSpec:
        label = cfg["label"]
        return cls(
            columns={k: v for k, v in cfg["columns"].items()},
            page_counts=dict(cfg["page_counts"]),
            label_column=label["column"],
            classes=tuple(str(c) for c in label["classes"]),
            label_mapping={str(k): str(v) for k, v in label["mapping"].items()},
            extra_numeric=tuple(cfg["extra_numeric"]),
            extra_categorical=tuple(cfg["extra_categorical"]),
        )

    def to_dict(self) -> dict:
        """Plain JSON values (see `from_dict`)."""
        return {
            "columns": dict(self.columns),
            "page_counts": dict(self.page_counts),
            "label_column": self.label_column,
            "classes": list(self.classes),
            "label_mapping": dict(self.label_mapping),
            "extra_numeric": list(self.extra_numeric),
            "extra_categorical": list(self.extra_categorical),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DatasetSpec:
        return cls(
            columns=dict(data["columns"]),
            page_counts=dict(data["page_counts"]),
            label_column=data["label_column"],
            classes=tuple(data["classes"]),
            label_mapping=dict(data["label_mapping"]),
            extra_numeric=tuple(data["extra_numeric"]),
            extra_categorical=tuple(data["extra_categorical"]),
        )

    def role_columns(self) -> dict[str, str]:
        """Roles this dataset provides -> the user's column names."""
        return {role: col for role, col in self.columns.items() if col}

    @property
    def page_roles(self) -> dict[str, str]:
        return {f"pages_{t}": col for t, col in self.page_counts.items()}

    def input_columns(self, with_label: bool) -> list[str]:
        """Every user column the contract reads, in a stable order."""
        cols = list(self.role_columns().values()) + list(self.page_counts.values())
        cols += list(self.extra_numeric) + list(self.extra_categorical)
        if with_label and self.label_column:
            cols.append(self.label_column)
        return list(dict.fromkeys(cols))


def text_columns(spec: DatasetSpec) -> set[str]:
    """The user columns the contract reads as text (ids and categories), where a number becomes
    its digits (`text_values`): 3 and 3.0 read as '3', 3.5 as '3.5'."""
    cols = {c for r, c in spec.role_columns().items() if _kind_of(r) in ("id", "categorical")}
    return cols | set(spec.extra_categorical)


def optional_columns(spec: DatasetSpec) -> list[str]:
    """The mapped columns a scoring input may lack (all but the session id and the label)."""
    cols = [c for r, c in spec.columns.items() if c and r != "session_id"]
    cols += list(spec.page_counts.values()) + list(spec.extra_numeric)
    cols += list(spec.extra_categorical)
    return list(dict.fromkeys(cols))


def absent_columns(spec: DatasetSpec, present) -> list[str]:
    """Mapped optional columns missing from `present` (column names)."""
    present = set(present)
    return [c for c in optional_columns(spec) if c not in present]


def check_any_present(spec: DatasetSpec, present, source: str) -> None:
    """Refuse an input that holds none of the mapped optional columns: every prediction would
    rest on nothing but the session id (most likely the columns were renamed)."""
    optional = optional_columns(spec)
    if optional and len(absent_columns(spec, present)) == len(optional):
        raise ContractError(
            f"{source}: none of the mapped columns is present (expected e.g. "
            f"{optional[:5]}); columns found: {list(present)[:15]}; map them in data.columns"
        )


def _kind_of(role: str) -> str:
    return "numeric" if role.startswith("pages_") else ROLES[role]


def _type_error(
    source: str, col: str, role: str, expected: str, values: ArrayLike
) -> ContractError:
    series = pd.Series(values)
    present = series.dropna()
    if expected == "numeric":  # show the values that are not numbers, not the ones that are
        not_numbers = present[pd.to_numeric(present, errors="coerce").isna()]
        present = not_numbers if len(not_numbers) else present  # else numbers written as text
    sample = present.astype(str).unique()[:3].tolist()
    return ContractError(
        f"{source}: column '{col}' (role {role}) must be {expected}, found {series.dtype} (e.g. {sample})"
    )


# Conversions work on a column's array (`Series.array`), not on the Series: the same operations
# cost a few microseconds instead of tens, which is most of the time of scoring one session.
def _as_numeric(values: ArrayLike, source: str, col: str, role: str) -> np.ndarray:
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in "biuf":
        return np.array(values, dtype=np.float64)  # NumPy numbers: NaN is their only missing value
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    if pd.isna(values).all():
        return np.full(len(values), np.nan)
    raise _type_error(source, col, role, "numeric", values)


def _as_bool(values: ArrayLike, source: str, col: str, role: str) -> pd.arrays.BooleanArray:
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("boolean")
    if pd.api.types.is_numeric_dtype(values.dtype):
        if set(pd.unique(values[~pd.isna(values)]).tolist()) <= {0, 1}:
            return values.astype("Float64").astype("boolean")
    else:
        text = pd.Series(values).astype("string").str.strip().str.lower()
        mapped = text.map(
            {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
        )
        if (mapped.notna() | text.isna()).all():
            return mapped.astype("boolean").array
    raise _type_error(source, col, role, "boolean (true/false or 0/1)", values)


def _as_timestamp(values: ArrayLike, source: str, col: str, role: str) -> pd.arrays.DatetimeArray:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        # naive timestamps are read as UTC, which the contract asks them to be
        return pd.array(values).tz_localize("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.isna(values).all():
        raise _type_error(source, col, role, "a timestamp (ISO 8601 text or datetime)", values)
    parsed = pd.to_datetime(pd.Series(values), utc=True, errors="coerce", format="ISO8601")
    return parsed.array.astype("datetime64[ns, UTC]")


def text_values(values: ExtensionArray) -> np.ndarray:
    """Category values as text in an object array, None when missing; numbers such as browser
    codes become their digits (a float column of whole numbers too: 3.0 -> '3')."""
    return _text_and_kind(values)[0]


def _text_and_kind(values: ExtensionArray) -> tuple[np.ndarray, str]:
    """`text_values`, and what pandas infers the values to be."""
    objects = values.to_numpy(dtype=object)
    missing = pd.isna(objects)
    kind = pd.api.types.infer_dtype(objects, skipna=True)
    if kind in ("string", "empty"):
        out = objects.copy()
    elif pd.api.types.is_integer_dtype(values.dtype) and not missing.any():
        out = values.to_numpy().astype(str).astype(object)
    elif pd.api.types.is_float_dtype(values.dtype):
        floats = values.to_numpy(dtype=np.float64, na_value=np.nan)
        present = floats[~missing]
        if (present == np.floor(present)).all():
            out = np.where(missing, 0, floats).astype(np.int64).astype(str).astype(object)
        else:
            out = np.array([str(v) for v in floats], dtype=object)
    else:
        out = np.array([str(v) for v in objects], dtype=object)
    out[missing] = None
    return out, kind


# a cell holding these is not one value: its text would be read as an unknown category
NOT_ONE_VALUE = (list, tuple, dict, set, frozenset, np.ndarray)


def _text_or_rejected(
    values: ExtensionArray, role: str, bad_rows: dict[int, list[str]]
) -> np.ndarray:
    """`text_values`, with each cell holding a list, a mapping or an array missing and its row
    recorded in `bad_rows` (JSON and parquet inputs can hold them)."""
    out, kind = _text_and_kind(values)
    if kind in ("mixed", "mixed-integer"):  # only an object column can hold them
        for i, v in enumerate(values):
            if isinstance(v, NOT_ONE_VALUE) and getattr(v, "ndim", 1) != 0:  # 0-d: one value
                out[i] = None
                shown = repr(v if not isinstance(v, np.ndarray) else v.tolist())
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                bad_rows.setdefault(i, []).append(f"{role} not a single value (got {shown})")
    return out


def as_text(series: pd.Series) -> pd.Series:
    """`text_values` of a column as an object Series on a fresh row index."""
    # an explicit object Series: pandas 3 would otherwise infer its `str` dtype
    return pd.Series(text_values(series.array), dtype=object, copy=False)


class Columns:
    """Canonical session columns as arrays of one length: text as object arrays (None when
    missing), numbers as floats (NaN), flags as nullable booleans, times as UTC datetimes.

    What the featurizer reads. `frame()` is the same table as a DataFrame, which costs more to
    build than scoring a session, so a real-time call never builds it."""

    def __init__(self, data: dict[str, ArrayLike], rows: int):
        self.data = data
        self.rows = rows

    @property
    def columns(self) -> list[str]:
        return list(self.data)

    def __getitem__(self, name: str) -> ArrayLike:
        return self.data[name]

    def __len__(self) -> int:
        return self.rows

    def take(self, rows: np.ndarray) -> Columns:
        """The given rows (positions), in that order."""
        return Columns({name: values[rows] for name, values in self.data.items()}, len(rows))

    def frame(self) -> pd.DataFrame:
        # text stays object: pandas 3 would infer its `str` dtype from an object array
        return pd.DataFrame(
            {
                name: pd.Series(values, dtype=object, copy=False)
                if values.dtype == object
                else values
                for name, values in self.data.items()
            }
        )


@dataclass(frozen=True)
class RangeRule:
    """A row rule on a numeric column: the value (when present) lies within [low, high], and is
    finite (no upper bound means below infinity; `low=-inf` means any finite number).

    The same rules build the pandera schema that checks batches and the array checks used for a
    few rows at a time, so both quarantine the same rows with the same reasons."""

    low: float
    high: float | None = None
    include_low: bool = True

    @property
    def error(self) -> str:
        if self.low == -np.inf:
            return "must be a finite number"
        if self.high is None:
            return f"must be >= {self.low:g} and finite"
        return f"must be within {'[' if self.include_low else '('}{self.low:g}, {self.high:g}]"

    def check(self) -> pa.Check:
        return pa.Check.in_range(
            self.low,
            np.inf if self.high is None else self.high,
            include_min=self.include_low and self.low != -np.inf,
            include_max=self.high is not None,
            error=self.error,
        )

    def breaks(self, values: np.ndarray) -> np.ndarray:
        """Which values break the rule (missing values never do)."""
        with np.errstate(invalid="ignore"):
            ok = values >= self.low if self.include_low else values > self.low
            ok &= values <= self.high if self.high is not None else values < np.inf
            ok &= values > -np.inf
        return ~ok & ~np.isnan(values)


# in the order the checks report: a row breaking several rules lists them in this order
RANGE_RULES: dict[str, RangeRule] = {
    # local time is UTC + offset: real offsets lie within -12 h .. +14 h
    "utc_offset_min": RangeRule(-14 * 60, 14 * 60),
    "latitude": RangeRule(-90, 90),
    "longitude": RangeRule(-180, 180),
    "dwell_time_s": RangeRule(0),
    "page_views": RangeRule(0),
    "touchpoint_propensity": RangeRule(0, 1, include_low=False),
}
PAGE_COUNT_RULE = RangeRule(0)
FINITE_RULE = RangeRule(-np.inf)  # extra numeric columns: any finite number
# below this many rows, rows are checked on arrays: building pandera's failure report costs
# more than checking a few sessions, which is what a real-time call sends
ARRAY_CHECK_MAX_ROWS = 256


def _row_schema(spec: DatasetSpec, with_label: bool) -> pa.DataFrameSchema:
    """Row-level checks on the canonical frame; failures are quarantined, not raised."""
    return _cached_row_schema(
        tuple(spec.page_roles), tuple(spec.extra_numeric), tuple(spec.classes), with_label
    )


def _rules(page_roles, extra_numeric) -> dict[str, RangeRule]:
    """Every range rule of a dataset, in the order reasons are reported."""
    return (
        dict(RANGE_RULES)
        | dict.fromkeys(page_roles, PAGE_COUNT_RULE)
        | dict.fromkeys((c for c in extra_numeric if c not in RANGE_RULES), FINITE_RULE)
    )


@functools.lru_cache(maxsize=64)
def _cached_row_schema(
    page_roles: tuple[str, ...],
    extra_numeric: tuple[str, ...],
    classes: tuple[str, ...],
    with_label: bool,
) -> pa.DataFrameSchema:
    # built once per dataset shape: building a schema costs more than checking one session
    cols = {
        "session_id": pa.Column(
            object, nullable=False, unique=True, report_duplicates="exclude_first", coerce=False
        ),
    }
    for role, rule in _rules(page_roles, extra_numeric).items():
        cols[role] = pa.Column(float, rule.check(), nullable=True, required=False)
    if with_label:
        cols[LABEL] = pa.Column(
            object,
            pa.Check.isin(list(classes), error=f"must be one of {list(classes)}"),
            nullable=False,
        )
    return pa.DataFrameSchema(cols, strict=False)


def schema_failures(df: pd.DataFrame, spec: DatasetSpec, with_label: bool, source: str) -> list:
    """(row, reason) of every row rule broken, by pandera."""
    try:
        _row_schema(spec, with_label).validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        row_cases = cases[cases["index"].notna()]
        table_cases = cases[cases["index"].isna()]
        if len(table_cases):
            first = table_cases.iloc[0]
            raise ContractError(
                f"{source}: column '{first['column']}' failed {first['check']}: {first['failure_case']}"
            ) from None
        return list(zip(row_cases["index"].astype(int), _check_names(row_cases), strict=True))
    return []


def array_failures(columns: Mapping[str, object], spec: DatasetSpec, with_label: bool) -> list:
    """(row, reason) of every row rule broken, checked on the converted columns' arrays: the
    rules and reasons of `_cached_row_schema`, in its order, for frames of a few rows."""
    failures = []
    ids = np.asarray(columns["session_id"], dtype=object)
    id_missing = pd.isna(ids)
    for i in np.flatnonzero(id_missing):
        failures.append((int(i), "session_id missing value (got None)"))
    seen = set()
    for i in np.flatnonzero(~id_missing):
        if ids[i] in seen:
            failures.append((int(i), f"session_id duplicate value (got {ids[i]!r})"))
        seen.add(ids[i])
    for role, rule in _rules(spec.page_roles, spec.extra_numeric).items():
        if role in columns:
            values = np.asarray(columns[role], dtype=np.float64)
            for i in np.flatnonzero(rule.breaks(values)):
                failures.append((int(i), f"{role} {rule.error} (got {float(values[i])!r})"))
    if with_label:
        classes = list(spec.classes)
        for i, v in enumerate(np.asarray(columns[LABEL], dtype=object)):
            if v is None:
                failures.append((i, f"{LABEL} missing value (got None)"))
            elif v not in classes:
                failures.append((i, f"{LABEL} must be one of {classes} (got {v!r})"))
    return failures


def _check_names(failure_cases: pd.DataFrame) -> pd.Series:
    """One readable reason per failure case: column, rule and the offending value."""
    rows = []
    for case in failure_cases.itertuples(index=False):
        check = str(case.check)
        if check == "field_uniqueness" or "unique" in check:
            check = "duplicate value"
        elif check == "not_nullable":
            check = "missing value"
        rows.append(f"{case.column} {check} (got {case.failure_case!r})")
    return pd.Series(rows, index=failure_cases.index)


@dataclass
class ContractResult:
    columns: Columns  # canonical, kept rows
    source: pd.DataFrame = field(repr=False)  # the input as given
    reasons: dict[int, str] = field(default_factory=dict)  # input row -> why it was rejected

    @functools.cached_property
    def sessions(self) -> pd.DataFrame:
        """The kept rows as a DataFrame (built when asked for: scoring reads `columns`)."""
        return self.columns.frame()

    @functools.cached_property
    def rejects(self) -> pd.DataFrame:
        """The user's columns of the rejected rows, with reject_reason and source_row (built
        when asked for: a scoring call needs only `reasons`)."""
        rows = np.array(sorted(self.reasons), dtype=np.int64)
        rejects = self.source.iloc[rows].reset_index(drop=True)
        return rejects.assign(
            **{
                REJECT_REASON: np.array([self.reasons[i] for i in rows], dtype=object),
                SOURCE_ROW: rows,
            }
        )

    @property
    def kept_rows(self) -> np.ndarray:
        """Positions in the input of the kept rows, in order."""
        if not self.reasons:
            return np.arange(len(self.source))
        return np.setdiff1d(np.arange(len(self.source)), np.fromiter(self.reasons, dtype=np.int64))

    @property
    def counts(self) -> dict[str, int]:
        kept, rejected = len(self.columns), len(self.reasons)
        return {"rows_in": kept + rejected, "rows_kept": kept, "rows_rejected": rejected}


def to_contract(
    raw: pd.DataFrame,
    spec: DatasetSpec,
    source: str = "<frame>",
    with_label: bool = True,
    all_columns: bool = True,
    row_numbers: np.ndarray | None = None,
    repeated_elsewhere: np.ndarray | None = None,
) -> ContractResult:
    """Map `raw` onto the session contract; raise `ContractError` if it cannot be read at all.

    Rows that break a rule (negative dwell, latitude outside +-90, a label outside the class set,
    a duplicate session id, an unreadable timestamp, ...) go to `rejects` with the reason.
    `source` names the file in messages. With `all_columns=False` (scoring), configured columns
    that are absent are treated as unavailable; only the session id (and label) must be there.
    A table without a session id column gets `row-<n>` ids from its row numbers: `row_numbers`
    when `raw` is a piece of a larger input (a bucket, a partition), else its own positions.
    `repeated_elsewhere` marks (True) the rows whose session id first appeared elsewhere in that
    larger input: they are rejected as duplicates, as a repeat within `raw` is.
    """
    if not all_columns:
        spec = _present_only(spec, raw, source)
    _check_columns_present(raw, spec, with_label, source)
    # columns are converted to arrays or to Series on a fresh row index, so the input's own
    # index never matters; rows are addressed by position
    out, bad_rows = _canonical_columns(raw, spec, source, with_label, row_numbers)
    columns = Columns(out, len(raw))

    failures = (
        array_failures(out, spec, with_label)
        if len(raw) <= ARRAY_CHECK_MAX_ROWS
        else schema_failures(columns.frame(), spec, with_label, source)
    )
    if repeated_elsewhere is not None:
        # session id reasons come first, as pandera's do
        failures = _repeats(out["session_id"], repeated_elsewhere) + list(failures)
    for i, reason in failures:
        reasons = bad_rows.setdefault(i, [])
        role = reason.split(" ", 1)[0]
        if not any(r.startswith(f"{role} not a single value") for r in reasons):
            reasons.append(reason)  # a cell that was not one value was read as missing
    if with_label:
        for i in np.flatnonzero(pd.isna(out[LABEL])):
            reasons = bad_rows.setdefault(int(i), [])
            if not any(
                r.startswith((f"{LABEL} missing", f"{LABEL} not a single")) for r in reasons
            ):
                reasons.append(f"{LABEL} missing value (column {spec.label_column})")

    reasons = {i: "; ".join(dict.fromkeys(bad_rows[i])) for i in sorted(bad_rows)}
    if reasons:
        keep = np.ones(len(raw), dtype=bool)
        keep[list(reasons)] = False
        columns = columns.take(np.flatnonzero(keep))
    return ContractResult(columns, raw, reasons)


def _present_only(spec: DatasetSpec, raw: pd.DataFrame, source: str) -> DatasetSpec:
    """The spec without the optional columns `raw` lacks (scoring input), refusing an input
    that lacks all of them."""
    present = set(raw.columns)
    check_any_present(spec, raw.columns, source)
    return replace(
        spec,
        columns={
            r: c for r, c in spec.columns.items() if c and (c in present or r == "session_id")
        },
        page_counts={t: c for t, c in spec.page_counts.items() if c in present},
        extra_numeric=tuple(c for c in spec.extra_numeric if c in present),
        extra_categorical=tuple(c for c in spec.extra_categorical if c in present),
    )


def _check_columns_present(
    raw: pd.DataFrame, spec: DatasetSpec, with_label: bool, source: str
) -> None:
    """Refuse an input without a column the spec maps (or without the label, for training),
    naming the first missing column, its role, and how many more are missing."""
    needed = dict(spec.role_columns())
    needed.update(spec.page_roles)
    for col in spec.extra_numeric + spec.extra_categorical:
        needed[f"extra:{col}"] = col
    if with_label:
        if not spec.label_column:
            raise ContractError(
                f"{source}: no label column configured (data.label.column) for training"
            )
        needed[LABEL] = spec.label_column
    missing = [(role, col) for role, col in needed.items() if col not in raw.columns]
    if missing:
        role, col = missing[0]
        others = (
            f" (and {len(missing) - 1} more: {[c for _, c in missing[1:]]})"
            if len(missing) > 1
            else ""
        )
        raise ContractError(
            f"{source}: required column '{col}' (role {role.removeprefix('extra:')}) is missing{others}; "
            f"columns found: {list(raw.columns)[:30]}"
        )


def _canonical_columns(
    raw: pd.DataFrame,
    spec: DatasetSpec,
    source: str,
    with_label: bool,
    row_numbers: np.ndarray | None,
) -> tuple[dict[str, object], dict[int, list[str]]]:
    """Every role, page count, extra column and the label in canonical names and types, and the
    rows already rejected (unreadable timestamps) with their reasons."""
    roles = spec.role_columns()
    out: dict[str, object] = {}
    bad_rows: dict[int, list[str]] = {}
    if "session_id" in roles:
        out["session_id"] = _text_or_rejected(
            raw[roles["session_id"]].array, "session_id", bad_rows
        )
    else:
        # no id column: the row number in the source is the id
        out["session_id"] = np.array(row_ids(len(raw), row_numbers), dtype=object)
    for role, col in list(roles.items()) + list(spec.page_roles.items()):
        if role == "session_id":
            continue
        if _kind_of(role) == "timestamp":
            out[role] = _timestamps(raw[col].array, source, col, role, bad_rows)
        elif _kind_of(role) in ("id", "categorical"):
            out[role] = _text_or_rejected(raw[col].array, role, bad_rows)
        else:
            out[role] = _convert(raw[col].array, source, col, role)
    for col in spec.extra_numeric:
        out[col] = _as_numeric(raw[col].array, source, col, "extra numeric")
    for col in spec.extra_categorical:
        out[col] = _text_or_rejected(raw[col].array, col, bad_rows)
    if with_label:
        label = _text_or_rejected(raw[spec.label_column].array, LABEL, bad_rows)
        if spec.label_mapping:
            label = np.array(
                [spec.label_mapping.get(v, v) if v is not None else None for v in label],
                dtype=object,
            )
        out[LABEL] = label
    return out, bad_rows


def _convert(values: ExtensionArray, source: str, col: str, role: str) -> ArrayLike:
    """A role's column in its canonical type: text for ids and categories, floats for numbers,
    nullable booleans for flags."""
    kind = _kind_of(role)
    if kind in ("id", "categorical"):
        return text_values(values)
    if kind == "numeric":
        return _as_numeric(values, source, col, role)
    return _as_bool(values, source, col, role)


def _timestamps(
    values: ExtensionArray, source: str, col: str, role: str, bad_rows: dict[int, list[str]]
) -> pd.arrays.DatetimeArray:
    """A timestamp column in UTC; each value that cannot be read is missing, and its row is
    recorded in `bad_rows`."""
    parsed = _as_timestamp(values, source, col, role)
    unreadable = parsed.isna() & ~pd.isna(values)
    for i in np.flatnonzero(unreadable):
        bad_rows.setdefault(int(i), []).append(f"{role} unreadable timestamp (got {values[i]!r})")
    return parsed


def _repeats(ids: np.ndarray, repeated_elsewhere: np.ndarray) -> list[tuple[int, str]]:
    """(row, reason) for each session id that first appeared elsewhere in the larger input."""
    return [
        (int(i), f"session_id duplicate value (got {ids[i]!r})")
        for i in np.flatnonzero(repeated_elsewhere)
        if ids[i] is not None
    ]


def row_ids(n: int, row_numbers: np.ndarray | None = None) -> list[str]:
    """`row-<n>` ids for a table without a session id column, from its rows' numbers in the whole
    input (their positions when not given)."""
    numbers = range(n) if row_numbers is None else row_numbers
    return [f"row-{int(i)}" for i in numbers]
