"""The outcome-event contract: what happened after a touchpoint feed was sent.

One row per contact, conversion or return visit of a journey, in the user's own column names
(the `outcomes.columns` config maps each role onto a column, like the session contract):

| role | type | notes |
|---|---|---|
| `journey_id` | text | required; a journey of the feed |
| `session_id` | text | optional: the session the contact answered |
| `touchpoint` | text | the touchpoint shown; empty: no contact on this row (a held-out journey's conversion) |
| `shown_at` | timestamp | when it was shown; required with a touchpoint |
| `clicked` | bool | whether the contact was clicked (or opened) |
| `converted_at` | timestamp | when the journey bought; empty: no conversion on this row |
| `value` | number >= 0 | the order value of that conversion |
| `session_s` | number >= 0 | duration of the session the click led to |
| `bounced` | bool | whether that session left after one page |
| `returned_at` | timestamp | the journey's first return session after the feed |

A journey of the feed with no row had no contact, conversion or return. Rows that break a rule
are quarantined with the reason (`check_outcomes`): rows in = rows kept + rows rejected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from pipelines.core.contract import ContractError, text_values

ROLES = (
    "journey_id",
    "session_id",
    "touchpoint",
    "shown_at",
    "clicked",
    "converted_at",
    "value",
    "session_s",
    "bounced",
    "returned_at",
)
TIMESTAMPS = ("shown_at", "converted_at", "returned_at")
FLAGS = ("clicked", "bounced")
AMOUNTS = ("value", "session_s")
_TRUE = {"true", "1", "1.0", "yes", "t", "y"}
_FALSE = {"false", "0", "0.0", "no", "f", "n"}


@dataclass(frozen=True)
class OutcomeSpec:
    """How a user's outcome table maps onto the roles (the `outcomes.columns` config)."""

    columns: Mapping[str, str | None] = field(default_factory=dict)  # role -> user column

    def __post_init__(self) -> None:
        unknown = sorted(set(self.columns) - set(ROLES))
        if unknown:
            raise ValueError(f"outcomes.columns: unknown roles {unknown}; the roles are {ROLES}")
        if not self.columns.get("journey_id"):
            raise ValueError("outcomes.columns.journey_id must name a column")

    @classmethod
    def from_config(cls, columns: Mapping[str, str | None] | None) -> OutcomeSpec:
        return cls({role: col for role, col in (columns or {}).items() if col})


@dataclass
class CheckedOutcomes:
    """Outcome rows in the roles' names and types, and the rows refused with a reason."""

    events: pd.DataFrame
    rejects: pd.DataFrame

    @property
    def counts(self) -> dict[str, int]:
        kept, rejected = len(self.events), len(self.rejects)
        return {"rows_in": kept + rejected, "rows_kept": kept, "rows_rejected": rejected}


def check_outcomes(
    raw: pd.DataFrame,
    spec: OutcomeSpec,
    source: str,
    journeys: Sequence[str],
    touchpoints: Sequence[str],
    feed_at: pd.Timestamp | None = None,
) -> CheckedOutcomes:
    """Outcome rows in canonical roles, checked against the feed they answer.

    Raises `ContractError` naming the file and column when the table cannot be read as outcomes
    at all (a mapped column missing, no row left of the feed's journeys). Quarantines each row
    that breaks a rule, with the first reason: an empty or unknown journey, a touchpoint outside
    the catalogue, a contact without `shown_at`, an unreadable timestamp, flag or number, a
    negative amount, a value without a conversion, a conversion before its contact, or any event
    before the feed was built (`feed_at`).
    """
    missing = [f"{col} ({role})" for role, col in spec.columns.items() if col not in raw]
    if missing:
        raise ContractError(
            f"{source}: outcome columns {missing} not found; it has {list(raw.columns)[:20]} "
            "(set outcomes.columns.<role> to your column, or null)"
        )
    frame = pd.DataFrame(index=raw.index)
    reason = np.full(len(raw), None, dtype=object)
    for role in ROLES:
        col = spec.columns.get(role)
        values = raw[col] if col else pd.Series(None, index=raw.index, dtype=object)
        frame[role], bad = _convert(role, values)
        if bad.any():  # naming the values costs more than reading them: only when some are bad
            _refuse(reason, bad, f"{role} unreadable: " + values.astype(str))
    _check_rows(frame, reason, journeys, touchpoints, feed_at)
    kept = pd.isna(reason)
    rejects = raw[~kept].copy()
    rejects["reject_reason"] = reason[~kept]
    events = frame[kept].reset_index(drop=True)
    if len(raw) and not kept.any():
        top = pd.Series(reason).value_counts().index[0]
        raise ContractError(f"{source}: no outcome row can be used; the most common reason: {top}")
    return CheckedOutcomes(events=events, rejects=rejects.reset_index(drop=True))


def _refuse(reason: np.ndarray, bad: np.ndarray, why: str | pd.Series) -> None:
    """Record `why` for the rows in `bad` that have no reason yet (the first rule broken wins)."""
    new = np.asarray(bad, dtype=bool) & pd.isna(reason)
    if isinstance(why, pd.Series):
        reason[new] = why.to_numpy(dtype=object)[new]
    else:
        reason[new] = why


def _convert(role: str, values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """A role's values in its type, and which present values could not be read as it. Blank
    text is missing, as an empty CSV cell is."""
    values = _blank_as_missing(values)
    present = values.notna().to_numpy()
    if role in TIMESTAMPS:
        out = _timestamps(values)
    elif role in FLAGS:
        out = _flags(values)
    elif role in AMOUNTS:
        out = pd.to_numeric(values, errors="coerce").astype(float)
        out = out.where(np.isfinite(out))
    else:
        # ids as text, whatever their column type: a float column of whole numbers (a CSV id
        # column with a blank) gives "17", not "17.0"
        out = pd.Series(text_values(values.array), index=values.index, dtype=object)
        return out, np.zeros(len(values), dtype=bool)
    return out, present & out.isna().to_numpy()


def _blank_as_missing(values: pd.Series) -> pd.Series:
    """Text that is empty or only spaces as missing (a JSON export's "" for no conversion)."""
    if values.dtype.kind != "O":
        return values
    text = values.astype(object)
    blank = np.fromiter((isinstance(v, str) and not v.strip() for v in text), bool, len(text))
    return text.where(~blank) if blank.any() else values


def _timestamps(values: pd.Series) -> pd.Series:
    """Timestamps from datetimes or text (naive ones are UTC); a number is not a timestamp
    (pandas would read it as nanoseconds since 1970)."""
    numeric = pd.api.types.is_numeric_dtype(values.dtype)
    if numeric and not pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if values.dtype.kind == "O":  # text and datetimes; a number among them is unreadable
        readable = (isinstance(v, str | datetime | np.datetime64) for v in values)
        values = values.where(np.fromiter(readable, bool, len(values)))
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    return parsed.astype("datetime64[ns, UTC]")


def _flags(values: pd.Series) -> pd.Series:
    """True/false flags from booleans, 0/1 or text; anything else is missing."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    if pd.api.types.is_numeric_dtype(values):  # 0/1, also as floats (a CSV column with blanks)
        number = values.astype(float)
        return pd.Series(number.map({1.0: True, 0.0: False}), dtype="boolean")
    text = values.astype(object).map(lambda v: str(v).strip().lower(), na_action="ignore")
    out = pd.Series(pd.NA, index=values.index, dtype="boolean")
    out[text.isin(_TRUE).to_numpy()] = True
    out[text.isin(_FALSE).to_numpy()] = False
    return out


def _check_rows(
    frame: pd.DataFrame,
    reason: np.ndarray,
    journeys: Sequence[str],
    touchpoints: Sequence[str],
    feed_at: pd.Timestamp | None,
) -> None:
    """The row rules, in the order their reasons are given."""
    jid = frame["journey_id"]
    _refuse(reason, jid.isna().to_numpy(), "journey_id is empty")
    _refuse(reason, ~jid.isin({str(j) for j in journeys}).to_numpy(), "journey not in the feed")
    tp = frame["touchpoint"]
    unknown = tp.notna() & ~tp.isin({str(t) for t in touchpoints})
    _refuse(reason, unknown.to_numpy(), "touchpoint not in the catalogue: " + tp.astype(str))
    _refuse(
        reason, (tp.notna() & frame["shown_at"].isna()).to_numpy(), "a contact without shown_at"
    )
    for role in AMOUNTS:
        _refuse(reason, (frame[role] < 0).to_numpy(), f"{role} is negative")
    orphan = (frame["value"] > 0) & frame["converted_at"].isna()
    _refuse(reason, orphan.to_numpy(), "a value without converted_at")
    early = frame["converted_at"] < frame["shown_at"]
    _refuse(reason, early.fillna(False).to_numpy(dtype=bool), "converted before it was shown")
    if feed_at is not None:
        feed_at = pd.Timestamp(feed_at)
        feed_at = feed_at.tz_localize("UTC") if feed_at.tz is None else feed_at
        for role in TIMESTAMPS:
            before = (frame[role] < feed_at).fillna(False).to_numpy(dtype=bool)
            _refuse(reason, before, f"{role} before the feed was built ({feed_at:%Y-%m-%d %H:%M})")
