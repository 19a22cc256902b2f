"""Reason codes: why the model predicted a session's intent, in words a marketer reads.

LightGBM's exact per-feature contributions (`pred_contrib`, TreeSHAP) split each class's raw
score into a base value plus one term per feature. Features derived from one input (a page
type's count and share; dwell time, its log and dwell per page; the hour, weekday and weekend)
are summed into one reason, so a reason is something a person recognises: "3 cart pages",
"mobile", "0.4 km from a store", "2nd session in 3 days". A session's reasons are the groups
pushing hardest toward its predicted intent, largest first, each with the session's value in
words and its contribution to the raw score (log-odds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
REASONS = "reasons"  # the JSON column: [{"reason", "value", "contribution"}, ...]


def reason_column(i: int) -> str:
    """The text column of the session's i-th reason (1-based)."""
    return f"reason_{i}"


def group_of(feature: str) -> str:
    """The input a feature comes from: the unit of one reason."""
    for prefix in ("prev_", "past_"):
        if feature.startswith(prefix):
            return "previous session" if prefix == "prev_" else "earlier sessions"
    if feature.startswith(("pages_", "share_")):
        return f"{feature.split('_', 1)[1]} pages"
    return _GROUPS.get(feature, feature)


_GROUPS = {
    "local_hour": "time",
    "weekday": "time",
    "weekend": "time",
    "has_location": "location",
    "store_distance_km": "location",
    "near_store": "location",
    "dwell_time_s": "time on site",
    "log_dwell": "time on site",
    "dwell_per_page": "time on site",
    "page_views": "page views",
    "bounce": "page views",
    "returning_visitor": "returning visitor",
    "session_index": "journey so far",
    "hours_since_prev": "journey so far",
    "hours_since_first": "journey so far",
}


@dataclass(frozen=True)
class Grouping:
    """Which columns of the contribution matrix make each reason."""

    names: tuple[str, ...]  # reason names, in first-feature order
    matrix: np.ndarray  # (n_features, n_groups) 0/1: feature j belongs to group g
    features: tuple[tuple[str, ...], ...]  # the features of each group

    @classmethod
    def of(cls, feature_names: Sequence[str]) -> Grouping:
        names: list[str] = []
        members: dict[str, list[str]] = {}
        for f in feature_names:
            g = group_of(f)
            if g not in members:
                names.append(g)
                members[g] = []
            members[g].append(f)
        matrix = np.zeros((len(feature_names), len(names)))
        for j, f in enumerate(feature_names):
            matrix[j, names.index(group_of(f))] = 1.0
        return cls(tuple(names), matrix, tuple(tuple(members[g]) for g in names))


def contributions(
    booster: lgb.Booster, X: np.ndarray, n_classes: int, threads: int = 1
) -> np.ndarray:
    """(n, n_classes, n_features + 1): each feature's contribution to each class's raw score,
    the base value last; they add up to the booster's raw score. A binary model's one score is
    the positive class's; the negative class gets its negation (softmax of [0, s] = sigmoid)."""
    raw = booster.predict(
        X,
        pred_contrib=True,
        num_iteration=booster.best_iteration or None,
        num_threads=int(threads),
    )
    raw = np.asarray(raw, dtype=float)
    n, width = len(X), X.shape[1] + 1
    if n_classes == 2:
        pos = raw.reshape(n, 1, width)
        return np.concatenate([np.zeros_like(pos), pos], axis=1)
    return raw.reshape(n, n_classes, width)


def pushes(contrib: np.ndarray, predicted: np.ndarray, grouping: Grouping) -> np.ndarray:
    """(n, n_groups): how hard each reason pushes each row toward its predicted class. For more
    than two classes that is the group's contribution to the class minus its mean contribution
    to all classes: only relative scores move a softmax."""
    n, n_classes, _ = contrib.shape
    per_group = contrib[:, :, :-1] @ grouping.matrix  # (n, K, G)
    if n_classes > 2:
        per_group = per_group - per_group.mean(axis=1, keepdims=True)
    return per_group[np.arange(n), predicted]


def top_reasons(
    contrib: np.ndarray, predicted: np.ndarray, grouping: Grouping, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` reasons pushing each row hardest toward its predicted class, as (n, k) group
    indices and pushes, largest first."""
    toward = pushes(contrib, predicted, grouping)
    order = np.argsort(-toward, axis=1, kind="stable")[:, : min(k, toward.shape[1])]
    return order, np.take_along_axis(toward, order, axis=1)


def describe(group: str, values: Mapping[str, float], categories: Mapping[str, Sequence]) -> str:
    """A session's value of one reason's inputs, in words ("3 cart pages", "at 12:00 on a
    Tuesday"). `values` holds the group's features as the model saw them (category codes)."""

    def level(name: str) -> str | None:
        code = values.get(name)
        if code is None or _missing(code):
            return None
        return str(categories[name][int(code)])

    for prefix, words in _DESCRIBERS.items():
        if group.endswith(prefix) if prefix.startswith(" ") else group == prefix:
            return words(group, values, level)
    if group in categories:
        return level(group) or f"{group} unknown"
    value = values.get(group)
    return f"{group} {_number(value)}" if value is not None else group


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: float | None, digits: int = 1) -> str:
    if _missing(value):
        return "unknown"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.{digits}f}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _span(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} minutes"
    if hours < 48:
        return f"{hours:.0f} hours" if hours >= 2 else "1 hour"
    return f"{hours / 24:.0f} days"


def _time_words(_group, v, _level) -> str:
    hour, weekday = v.get("local_hour"), v.get("weekday")
    parts = []
    if not _missing(hour):
        parts.append(f"at {int(hour):02d}:00")
    if not _missing(weekday):
        parts.append(f"on a {WEEKDAYS[int(weekday) % 7]}")
    return " ".join(parts) or "time unknown"


def _location_words(_group, v, _level) -> str:
    if v.get("has_location") == 0:
        return "no location shared"
    dist = v.get("store_distance_km")
    if _missing(dist):
        return "location shared" if v.get("has_location") == 1 else "location unknown"
    return f"{dist:.1f} km from a store"


def _dwell_words(_group, v, _level) -> str:
    dwell = v.get("dwell_time_s")
    if _missing(dwell):
        log_dwell = v.get("log_dwell")
        dwell = None if _missing(log_dwell) else math.expm1(log_dwell)
    return "time on site unknown" if dwell is None else f"{_duration(dwell)} on site"


def _pages_words(_group, v, _level) -> str:
    pages = v.get("page_views")
    if _missing(pages):
        return "page views unknown"
    return "1 page (bounced)" if pages <= 1 else f"{int(pages)} pages"


def _page_type_words(group, v, _level) -> str:
    kind = group.removesuffix(" pages")
    count = v.get(f"pages_{kind}")
    if _missing(count):
        share = v.get(f"share_{kind}")
        return f"{kind} pages unknown" if _missing(share) else f"{share:.0%} {kind} pages"
    count = int(count)
    return f"no {kind} pages" if count == 0 else f"{count} {kind} page{'s' * (count != 1)}"


def _returning_words(_group, v, _level) -> str:
    value = v.get("returning_visitor")
    if _missing(value):
        return "returning visitor unknown"
    return "returning visitor" if value else "new visitor"


def _journey_words(_group, v, _level) -> str:
    index = v.get("session_index")
    if _missing(index):
        return "position in the journey unknown"
    n = int(index) + 1
    if n == 1:
        return "first session of the journey"
    first = v.get("hours_since_first")
    return f"{_ordinal(n)} session" + ("" if _missing(first) else f" in {_span(first)}")


def _previous_words(_group, v, level) -> str:
    parts = [x for x in (level("prev_channel"), level("prev_device")) if x]
    pages = v.get("prev_page_views")
    if not _missing(pages):
        parts.append(f"{int(pages)} page{'s' * (int(pages) != 1)}")
    shares = {k.removeprefix("prev_share_"): x for k, x in v.items() if k.startswith("prev_share_")}
    top = max(
        ((k, x) for k, x in shares.items() if not _missing(x)), key=lambda t: t[1], default=None
    )
    if top and top[1] > 0:
        parts.append(f"mostly {top[0]}")
    return "previous session: " + ", ".join(parts) if parts else "no previous session"


def _earlier_words(_group, v, _level) -> str:
    pages = v.get("past_page_views")
    if _missing(pages) or pages == 0:
        return "no earlier sessions"
    parts = [f"{int(pages)} pages before"]
    shares = {k.removeprefix("past_share_"): x for k, x in v.items() if k.startswith("past_share_")}
    top = max(
        ((k, x) for k, x in shares.items() if not _missing(x)), key=lambda t: t[1], default=None
    )
    if top and top[1] > 0:
        parts.append(f"{top[1]:.0%} {top[0]}")
    near = v.get("past_near_store")
    if not _missing(near) and near > 0:
        parts.append(f"{int(near)} near a store")
    mobile = v.get("past_mobile_share")
    if not _missing(mobile):
        parts.append(f"{mobile:.0%} on mobile")
    return "earlier sessions: " + ", ".join(parts)


_Describer = Callable[[str, Mapping[str, float], Callable[[str], str | None]], str]
_DESCRIBERS: dict[str, _Describer] = {
    "time": _time_words,
    "location": _location_words,
    "time on site": _dwell_words,
    "page views": _pages_words,
    " pages": _page_type_words,  # a suffix: "<page type> pages"
    "returning visitor": _returning_words,
    "journey so far": _journey_words,
    "previous session": _previous_words,
    "earlier sessions": _earlier_words,
}


def explain_rows(
    contrib: np.ndarray,
    predicted: np.ndarray,
    X: np.ndarray,
    feature_names: Sequence[str],
    categories: Mapping[str, Sequence],
    k: int,
) -> list[list[dict]]:
    """Each row's top-`k` reasons toward its predicted class: [{"reason", "value",
    "contribution"}, ...], largest contribution first; only reasons that push toward it (a row
    can have fewer than `k`)."""
    grouping = Grouping.of(feature_names)
    order, strength = top_reasons(contrib, predicted, grouping, k)
    column = {name: j for j, name in enumerate(feature_names)}
    out = []
    for i in range(len(X)):
        reasons = []
        for g, push in zip(order[i], strength[i], strict=True):
            push = round(float(push), 6)
            if push <= 0:  # sorted: the rest do not push toward the predicted intent
                break
            group = grouping.names[g]
            values = {f: X[i, column[f]] for f in grouping.features[g]}
            reasons.append(
                {
                    "reason": group,
                    "value": describe(group, values, categories),
                    "contribution": push,
                }
            )
        out.append(reasons)
    return out


def reason_columns(explained: list[list[dict] | None], k: int) -> dict[str, list]:
    """The reason columns of a prediction frame: `reason_1`..`reason_k` (the value in words, with
    its contribution) and `reasons` (JSON), None for rows without reasons (rejected ones)."""
    cols: dict[str, list] = {reason_column(i + 1): [] for i in range(k)}
    cols[REASONS] = []
    for reasons in explained:
        for i in range(k):
            r = reasons[i] if reasons and i < len(reasons) else None
            cols[reason_column(i + 1)].append(
                None if r is None else f"{r['value']} ({r['contribution']:+.2f})"
            )
        cols[REASONS].append(None if reasons is None else json.dumps(reasons))
    return cols


def driver_summary(
    contrib: np.ndarray, predicted: np.ndarray, feature_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """What drives each intent: for the rows predicted as each class, the mean push of each
    reason toward it (as in `top_reasons`), {class index: {reason: mean push}}."""
    grouping = Grouping.of(feature_names)
    toward = pushes(contrib, predicted, grouping)
    out = {}
    for c in np.unique(predicted):
        mean = toward[predicted == c].mean(axis=0)
        out[int(c)] = {grouping.names[g]: float(mean[g]) for g in np.argsort(-mean)}
    return out
