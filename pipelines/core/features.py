"""Features of a session from its own context and from its journey's past.

`SessionFeaturizer` is a scikit-learn transformer from canonical sessions (see `contract`) to a
feature frame. It is fitted on training sessions (category levels, the store index) and travels
inside the registered model, so scoring builds features with the very same code.

Journey history uses only sessions that started before the session being described: a session's
features never see its own label, a later session, or anything about how the journey ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from pipelines.core import geo
from pipelines.core.contract import ArrayLike, Columns

# the canonical sessions: the contract's DataFrame, or its `Columns` for a few rows
Sessions = pd.DataFrame | Columns
Column = pd.Series | ArrayLike

CONTEXT_CATEGORICALS = ("device", "channel", "region")


class SessionFeaturizer(TransformerMixin, BaseEstimator):
    """Canonical sessions -> one row of features per session, in the input order.

    Parameters
    ----------
    page_types : page types with a `pages_<type>` count column (may be empty).
    extra_numeric, extra_categorical : the dataset's own extra feature columns.
    stores : store coordinates as [[lat, lon], ...]; no stores means no store-distance features.
    near_store_km : a located session closer than this to a store is "near a store".
    history : build journey-history features (past sessions of the same journey).
    min_category_count : category levels seen fewer times in training are treated as unknown.
    """

    def __init__(
        self,
        page_types: Sequence[str] = (),
        extra_numeric: Sequence[str] = (),
        extra_categorical: Sequence[str] = (),
        stores: Sequence[Sequence[float]] | None = None,
        near_store_km: float = 1.0,
        history: bool = True,
        min_category_count: int = 5,
    ):
        self.page_types = page_types
        self.extra_numeric = extra_numeric
        self.extra_categorical = extra_categorical
        self.stores = stores
        self.near_store_km = near_store_km
        self.history = history
        self.min_category_count = min_category_count

    def _validate_params(self) -> None:
        if not (isinstance(self.near_store_km, int | float) and self.near_store_km > 0):
            raise ValueError(f"near_store_km must be a positive number, got {self.near_store_km!r}")
        if not (isinstance(self.min_category_count, int) and self.min_category_count >= 1):
            raise ValueError(
                f"min_category_count must be a positive integer, got {self.min_category_count!r}"
            )
        if self.stores is not None and len(self.stores):
            arr = np.asarray(self.stores, dtype=float)
            if arr.ndim != 2 or arr.shape[1] != 2:
                raise ValueError(f"stores must be [[lat, lon], ...], got shape {arr.shape}")
            if np.abs(arr[:, 0]).max() > 90 or np.abs(arr[:, 1]).max() > 180:
                raise ValueError("stores hold a latitude outside +-90 or a longitude outside +-180")

    # -- fitting -----------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y=None) -> SessionFeaturizer:
        self._validate_params()
        self.store_index_ = geo.store_index(self.stores)
        self.__dict__.pop("_level_lookup", None)
        built = self._build(X)
        self.categories_ = {}
        for col in self._categorical_columns(built):
            source = built[self._prev_of.get(col, col)]
            counts = pd.Series(source, dtype=object).value_counts(dropna=True)
            levels = counts[counts >= self.min_category_count].index
            self.categories_[col] = sorted(str(v) for v in levels)
        self.feature_names_ = list(built)
        return self

    # which categorical features reuse the levels of another (previous channel -> channel)
    _prev_of = {"prev_channel": "channel", "prev_device": "device"}

    def _categorical_columns(self, built: dict) -> list[str]:
        names = set(CONTEXT_CATEGORICALS) | set(self.extra_categorical) | set(self._prev_of)
        return [c for c in built if c in names]

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """The feature frame: categorical features as pandas categories of the fitted levels
        (unseen levels and missing values as missing), every other feature as float."""
        features = self._features(X)
        lookup = self._category_lookup()
        columns = {}
        for name, values in features.items():
            if name in lookup:
                columns[name] = pd.Categorical.from_codes(values, dtype=lookup[name][1])
            else:
                columns[name] = values
        return pd.DataFrame(columns, index=X.index)

    def transform_matrix(self, X: Sessions) -> np.ndarray:
        """The features as the float matrix LightGBM predicts from: each categorical feature as
        its level's code (NaN when missing or unseen), in `feature_names_` order. The same
        numbers as `modelling.feature_matrix(self.transform(X))`, without building a frame."""
        features = self._features(X)
        out = np.empty((len(X), len(features)), dtype=np.float64)
        for j, (name, values) in enumerate(features.items()):
            if name in self.categories_:
                out[:, j] = np.where(values < 0, np.nan, values)
            else:
                out[:, j] = values
        return out

    def _features(self, X: Sessions) -> dict[str, np.ndarray]:
        """Feature name -> array in `feature_names_` order: category codes (-1 for missing or
        unseen: LightGBM sends them down the "other" branch) or floats."""
        check_is_fitted(self, "feature_names_")
        built = self._build(X)
        n = len(X)
        lookup = self._category_lookup()
        out = {}
        for name in self.feature_names_:
            values = built.get(name)
            if name in lookup:
                if values is None:  # a role absent at scoring time: missing for every row
                    out[name] = np.full(n, -1, dtype=np.int64)
                else:
                    out[name] = _level_codes(values, *lookup[name])
            else:
                out[name] = np.full(n, np.nan) if values is None else values
        return out

    def _category_lookup(self) -> dict[str, tuple[pd.Index, pd.CategoricalDtype, dict]]:
        """Per categorical feature, its levels as an index, a dtype and a dict (level -> code),
        built once: building them on every call costs more than encoding one session."""
        lookup = self.__dict__.get("_level_lookup")
        if lookup is None:
            lookup = {
                col: (
                    pd.Index(levels, dtype=object),
                    pd.CategoricalDtype(levels),
                    {level: code for code, level in enumerate(levels)},
                )
                for col, levels in self.categories_.items()
            }
            self.__dict__["_level_lookup"] = lookup
        return lookup

    def __getstate__(self) -> dict:
        # the level lookup is a cache, rebuilt on first use: it never travels with the model
        state = super().__getstate__()
        state.pop("_level_lookup", None)
        return state

    def to_state(self) -> dict:
        """The parameters and fitted state as plain JSON values (see `from_state`)."""
        check_is_fitted(self, "feature_names_")
        params = self.get_params()
        for key in ("page_types", "extra_numeric", "extra_categorical"):
            params[key] = list(params[key])
        if params["stores"] is not None:
            params["stores"] = np.asarray(params["stores"], dtype=float).tolist()
        return {
            "params": params,
            "categories_": {k: list(v) for k, v in self.categories_.items()},
            "feature_names_": list(self.feature_names_),
        }

    @classmethod
    def from_state(cls, state: dict) -> SessionFeaturizer:
        """A fitted featurizer from `to_state()`: the same features, bit for bit, with no pickle."""
        featurizer = cls(**state["params"])
        featurizer._validate_params()
        featurizer.store_index_ = geo.store_index(featurizer.stores)
        featurizer.categories_ = {k: list(v) for k, v in state["categories_"].items()}
        featurizer.feature_names_ = list(state["feature_names_"])
        return featurizer

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        return np.asarray(self.feature_names_, dtype=object)

    @property
    def categorical_features_(self) -> list[str]:
        return list(self.categories_)

    # -- building ----------------------------------------------------------------------
    # Features are computed on NumPy arrays rather than pandas Series: the arithmetic is the
    # same, and a real-time call on one session pays microseconds per feature instead of the
    # tens of microseconds each pandas operation costs.
    def _build(self, X: Sessions) -> dict[str, np.ndarray]:
        """Feature name -> raw values (object arrays for categories, floats otherwise), in the
        order the features are named."""
        if "session_id" not in X.columns:
            raise KeyError("sessions need a 'session_id' column")
        f: dict[str, np.ndarray] = {}
        for name in (*(c for c in CONTEXT_CATEGORICALS if c in X.columns), *self.extra_categorical):
            f[name] = _text_or_none(X[name])
        f.update(_time_features(X))
        f.update(self._location_features(X))
        f.update(_activity_features(X, self.page_types))
        if "returning_visitor" in X.columns:
            f["returning_visitor"] = _numbers(X, "returning_visitor")
        for name in self.extra_numeric:
            f[name] = _numbers(X, name)
        if self.history:
            f.update(_history_features(X, f))
        return f

    def _location_features(self, X: Sessions) -> dict[str, np.ndarray]:
        """Whether the session has coordinates and, with stores, how far the nearest one is."""
        lat, lon = _numbers(X, "latitude"), _numbers(X, "longitude")
        if lat is None or lon is None:
            return {}
        f = {"has_location": (~np.isnan(lat) & ~np.isnan(lon)).astype(float)}
        if self.store_index_ is not None:
            dist = geo.nearest_store_km(lat, lon, self.store_index_)
            f["store_distance_km"] = dist
            f["near_store"] = np.where(
                np.isnan(dist), np.nan, (dist <= self.near_store_km).astype(float)
            )
        return f


def _numbers(X: Sessions, name: str) -> np.ndarray | None:
    """A column as floats (NaN where missing); None when the column is absent."""
    if name not in X.columns:
        return None
    return _array(X[name], np.float64, np.nan)


def _time_features(X: Sessions) -> dict[str, np.ndarray]:
    """Local hour, weekday and weekend, from the UTC start plus the session's offset if given."""
    if "started_at" not in X.columns:
        return {}
    ns, valid = geo.utc_nanoseconds(X["started_at"])
    offset = _numbers(X, "utc_offset_min")
    weekday = geo.local_weekday(ns, offset)
    return {
        "local_hour": np.where(valid, geo.local_hour(ns, offset), np.nan),
        "weekday": np.where(valid, weekday, np.nan),
        "weekend": np.where(valid, weekday >= 5, np.nan),
    }


def _activity_features(X: Sessions, page_types: Sequence[str]) -> dict[str, np.ndarray]:
    """Dwell time, page views (summed from the page-type counts when not given) and each page
    type's count and share."""
    f: dict[str, np.ndarray] = {}
    dwell = _numbers(X, "dwell_time_s")
    if dwell is not None:
        f["dwell_time_s"] = dwell
        f["log_dwell"] = np.log1p(np.maximum(dwell, 0))
    page_views = _numbers(X, "page_views")
    type_counts = {t: _numbers(X, f"pages_{t}") for t in page_types if f"pages_{t}" in X.columns}
    if page_views is None and type_counts:
        page_views = sum(type_counts.values())
    if page_views is not None:
        f["page_views"] = page_views
        f["bounce"] = np.where(np.isnan(page_views), np.nan, page_views <= 1)
        if dwell is not None:
            f["dwell_per_page"] = dwell / np.maximum(page_views, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        for t, counts in type_counts.items():
            f[f"pages_{t}"] = counts
            f[f"share_{t}"] = counts / np.where(page_views > 0, page_views, np.nan)
    return f


# context features whose value in the journey's previous session is a feature too
_PREVIOUS_NUMBERS = (
    "log_dwell",
    "page_views",
    "local_hour",
    "near_store",
    "store_distance_km",
    "has_location",
)


@dataclass(frozen=True)
class _JourneyOrder:
    """Sessions sorted by journey, then start time (missing last), then session id: an order
    that does not depend on the input order. Arrays are in that sorted order."""

    pos: np.ndarray  # input row of each sorted row
    first: np.ndarray  # whether the row starts its journey
    head: np.ndarray  # sorted row of the journey's first session
    index: np.ndarray  # position of the session in its journey, 0, 1, ...
    started: np.ndarray  # start time, int64 nanoseconds (0 when missing)
    timed: np.ndarray  # whether the start time is known
    inverse: np.ndarray  # sorted row of each input row

    @classmethod
    def of(cls, X: Sessions) -> _JourneyOrder:
        n = len(X)
        session = _array(X["session_id"], object)
        journey = _text_or_none(X["journey_id"]) if "journey_id" in X.columns else session
        journey = np.where(pd.isna(journey), session, journey)
        if "started_at" in X.columns:
            started, timed = geo.utc_nanoseconds(X["started_at"])
        else:
            started, timed = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        if n == 1:  # the real-time call: one session is its own order
            pos = np.zeros(1, dtype=np.int64)
        else:
            pos = np.lexsort(
                (
                    pd.factorize(session, sort=True)[0],
                    np.where(timed, started, np.iinfo(np.int64).max),
                    pd.factorize(journey, sort=True)[0],
                )
            )
        j = journey[pos]
        first = np.ones(n, dtype=bool)
        first[1:] = j[1:] != j[:-1]
        group = np.cumsum(first) - 1
        head = np.flatnonzero(first)[group]
        inverse = np.empty(n, dtype=np.int64)
        inverse[pos] = np.arange(n)
        return cls(pos, first, head, np.arange(n) - head, started[pos], timed[pos], inverse)


def _history_features(X: Sessions, ctx: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Features from earlier sessions of the same journey (strictly earlier start times), from
    the session's own context features `ctx`."""
    order = _JourneyOrder.of(X)
    sorted_ctx = {name: values[order.pos] for name, values in ctx.items()}
    h: dict[str, np.ndarray] = {"session_index": order.index.astype(float)}
    h.update(_time_since(order))
    h.update(_previous_session(sorted_ctx, order.first))
    h.update(_past_sessions(sorted_ctx, order.index))
    return {name: values[order.inverse] for name, values in h.items()}


def _time_since(order: _JourneyOrder) -> dict[str, np.ndarray]:
    """Hours since the journey's previous and first sessions. Differences of integer nanoseconds
    within the journey: exact, whatever else is in the batch."""
    t, t_valid = order.started, order.timed
    if not t_valid.any():
        return {}
    prev = np.roll(np.arange(len(t)), 1)
    since_prev = ~order.first & t_valid & t_valid[prev]
    since_first = t_valid & t_valid[order.head]
    return {
        "hours_since_prev": np.where(since_prev, 1e-9 * (t - t[prev]), np.nan) / 3600.0,
        "hours_since_first": np.where(since_first, 1e-9 * (t - t[order.head]), np.nan) / 3600.0,
    }


def _previous_session(
    sorted_ctx: dict[str, np.ndarray], first: np.ndarray
) -> dict[str, np.ndarray]:
    """`prev_<feature>`: the feature's value in the journey's previous session (missing for a
    journey's first session)."""

    before = np.arange(len(first)) - 1  # the row before each (the last row for the first)

    def previous(values: np.ndarray) -> np.ndarray:
        prev = values[before].astype(object if values.dtype == object else float)
        prev[first] = None if values.dtype == object else np.nan
        return prev

    h = {}
    for name in ("channel", "device"):
        if name in sorted_ctx:
            h[f"prev_{name}"] = previous(sorted_ctx[name])
    for name in _PREVIOUS_NUMBERS:
        if name in sorted_ctx:
            h[f"prev_{name}"] = previous(sorted_ctx[name].astype(float))
    for name in sorted_ctx:
        if name.startswith("share_"):
            h[f"prev_{name}"] = previous(sorted_ctx[name])
    return h


def _past_sessions(
    sorted_ctx: dict[str, np.ndarray], index_in_journey: np.ndarray
) -> dict[str, np.ndarray]:
    """Sums, means and shares over all earlier sessions of the journey."""
    past_sum = _past_summer(index_in_journey)
    n_prev = index_in_journey.astype(float)
    h = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        if "page_views" in sorted_ctx:
            past_pages = past_sum(sorted_ctx["page_views"])
            h["past_page_views"] = past_pages
            for name in (c for c in sorted_ctx if c.startswith("share_")):
                t_name = name.removeprefix("share_")
                h[f"past_share_{t_name}"] = np.where(
                    past_pages > 0, past_sum(sorted_ctx[f"pages_{t_name}"]) / past_pages, np.nan
                )
        if "log_dwell" in sorted_ctx:
            h["past_mean_log_dwell"] = np.where(
                n_prev > 0, past_sum(sorted_ctx["log_dwell"]) / n_prev, np.nan
            )
        if "near_store" in sorted_ctx:
            h["past_near_store"] = past_sum(sorted_ctx["near_store"])
        if "device" in sorted_ctx:
            mobile = (sorted_ctx["device"] == "mobile").astype(float)
            h["past_mobile_share"] = np.where(n_prev > 0, past_sum(mobile) / n_prev, np.nan)
    return h


def _past_summer(index_in_journey: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A function summing values over strictly earlier sessions of each journey (missing counts
    as 0). It adds session by session across all journeys at once, so each journey's sums are
    the same floating-point numbers whether it is scored alone or in a batch."""
    n = len(index_in_journey)
    # rows holding the k-th session of their journey, k = 1, 2, ...
    by_index = np.argsort(index_in_journey, kind="stable")
    bounds = np.searchsorted(index_in_journey[by_index], np.arange(1, index_in_journey.max() + 2))
    kth = [by_index[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def past_sum(values: np.ndarray) -> np.ndarray:
        v = values.astype(float)
        v[np.isnan(v)] = 0.0
        out = np.zeros(n)
        for rows in kth:
            out[rows] = out[rows - 1] + v[rows - 1]
        return out

    return past_sum


def _level_codes(
    values: np.ndarray, index: pd.Index, dtype: pd.CategoricalDtype, codes: dict
) -> np.ndarray:
    """The code of each value's level, -1 for a missing or unseen one. A few values are looked up
    in a dict, many at once by the index (vectorised, but with a fixed cost per call)."""
    if len(values) <= 64:
        return np.fromiter((codes.get(v, -1) for v in values), dtype=np.int64, count=len(values))
    return index.get_indexer(values)


def _text_or_none(values: Column) -> np.ndarray:
    """Category values as an object array with None for missing values."""
    values = _array(values, object)
    return np.where(pd.isna(values), None, values)


def _array(values: Column, dtype, na_value=None) -> np.ndarray:
    """A column's values (a Series, an array, or `Columns`' NumPy array) as a NumPy array."""
    if isinstance(values, np.ndarray):
        return values.astype(dtype, copy=False)
    return values.to_numpy(dtype=dtype, na_value=na_value)
