"""Features of a session from its own context and from its journey's past.

`SessionFeaturizer` is a scikit-learn transformer from canonical sessions (see `contract`) to a
feature frame. It is fitted on training sessions (category levels, the store index) and travels
inside the registered model, so scoring builds features with the very same code.

Journey history uses only sessions that started before the session being described: a session's
features never see its own label, a later session, or anything about how the journey ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.neighbors import BallTree
from sklearn.utils.validation import check_is_fitted

EARTH_RADIUS_KM = 6371.0088
CONTEXT_CATEGORICALS = ("device", "channel", "region")


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees."""
    lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


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
        if self.stores is not None and len(self.stores):
            self.store_index_ = BallTree(
                np.radians(np.asarray(self.stores, dtype=float)), metric="haversine"
            )
        else:
            self.store_index_ = None
        raw = self._build(X)
        self.categories_ = {}
        for col in self._categorical_columns(raw):
            counts = raw[col].value_counts(dropna=True)
            if col in self._prev_of:
                counts = raw[self._prev_of[col]].value_counts(dropna=True)
            levels = counts[counts >= self.min_category_count].index
            self.categories_[col] = sorted(str(v) for v in levels)
        self.feature_names_ = list(raw.columns)
        return self

    # which categorical features reuse the levels of another (previous channel -> channel)
    _prev_of = {"prev_channel": "channel", "prev_device": "device"}

    def _categorical_columns(self, frame: pd.DataFrame) -> list[str]:
        names = set(CONTEXT_CATEGORICALS) | set(self.extra_categorical) | set(self._prev_of)
        return [c for c in frame.columns if c in names]

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "feature_names_")
        raw = self._build(X)
        for col in self.feature_names_:
            if col not in raw:
                # a role absent at scoring time: the feature is missing for every row
                raw[col] = None if col in self.categories_ else np.nan
        raw = raw[self.feature_names_]
        for col, (index, dtype) in self._category_lookup().items():
            # unseen levels become missing (code -1): LightGBM sends them down the "other" branch
            codes = index.get_indexer(raw[col].astype(object).to_numpy())
            raw[col] = pd.Categorical.from_codes(codes, dtype=dtype)
        return raw

    def _category_lookup(self) -> dict[str, tuple[pd.Index, pd.CategoricalDtype]]:
        """Per categorical feature, its levels as an index and as a dtype, built once: building
        them on every call costs more than encoding one session."""
        lookup = self.__dict__.get("_lookup")
        if lookup is None:
            lookup = {
                col: (pd.Index(levels, dtype=object), pd.CategoricalDtype(levels))
                for col, levels in self.categories_.items()
            }
            self.__dict__["_lookup"] = lookup
        return lookup

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        return np.asarray(self.feature_names_, dtype=object)

    @property
    def categorical_features_(self) -> list[str]:
        return list(self.categories_)

    # -- building ----------------------------------------------------------------------
    def _build(self, X: pd.DataFrame) -> pd.DataFrame:
        if "session_id" not in X.columns:
            raise KeyError("sessions need a 'session_id' column")
        n = len(X)
        f: dict[str, pd.Series | np.ndarray] = {}
        idx = X.index

        def col(name: str) -> pd.Series | None:
            return X[name] if name in X.columns else None

        for name in CONTEXT_CATEGORICALS:
            if col(name) is not None:
                f[name] = col(name).astype(object).where(col(name).notna(), None)
        for name in self.extra_categorical:
            f[name] = X[name].astype(object).where(X[name].notna(), None)

        # local time from UTC plus the session's offset when given
        started = col("started_at")
        if started is not None:
            local = started.dt.tz_convert("UTC").dt.tz_localize(None)
            if col("utc_offset_min") is not None:
                local = local + pd.to_timedelta(X["utc_offset_min"].fillna(0), unit="m")
            f["local_hour"] = local.dt.hour.astype(float)
            f["weekday"] = local.dt.day_of_week.astype(float)
            f["weekend"] = (local.dt.day_of_week >= 5).astype(float).where(local.notna())

        # location
        lat, lon = col("latitude"), col("longitude")
        if lat is not None and lon is not None:
            located = lat.notna() & lon.notna()
            f["has_location"] = located.astype(float)
            if self.store_index_ is not None:
                dist = np.full(n, np.nan)
                if located.any():
                    pts = np.radians(np.column_stack([lat[located], lon[located]]))
                    d, _ = self.store_index_.query(pts, k=1)
                    dist[located.to_numpy()] = d[:, 0] * EARTH_RADIUS_KM
                f["store_distance_km"] = dist
                f["near_store"] = np.where(
                    np.isnan(dist), np.nan, (dist <= self.near_store_km).astype(float)
                )

        # dwell time and pages
        if col("dwell_time_s") is not None:
            f["dwell_time_s"] = X["dwell_time_s"].astype(float)
            f["log_dwell"] = np.log1p(X["dwell_time_s"].astype(float).clip(lower=0))
        page_views = X["page_views"].astype(float) if col("page_views") is not None else None
        type_counts = {
            t: X[f"pages_{t}"].astype(float) for t in self.page_types if f"pages_{t}" in X.columns
        }
        if page_views is None and type_counts:
            page_views = sum(type_counts.values())
        if page_views is not None:
            f["page_views"] = page_views
            f["bounce"] = (page_views <= 1).astype(float).where(page_views.notna())
            if col("dwell_time_s") is not None:
                f["dwell_per_page"] = X["dwell_time_s"].astype(float) / page_views.clip(lower=1)
        for t, counts in type_counts.items():
            f[f"pages_{t}"] = counts
            f[f"share_{t}"] = counts / page_views.where(page_views > 0)
        if col("returning_visitor") is not None:
            f["returning_visitor"] = X["returning_visitor"].astype("Float64").astype(float)
        for name in self.extra_numeric:
            f[name] = X[name].astype(float)

        out = pd.DataFrame(
            {k: (v.to_numpy() if isinstance(v, pd.Series) else v) for k, v in f.items()}, index=idx
        )
        if self.history:
            out = pd.concat([out, self._history(X, out)], axis=1)
        return out

    def _history(self, X: pd.DataFrame, ctx: pd.DataFrame) -> pd.DataFrame:
        """Features from earlier sessions of the same journey (strictly earlier start times)."""
        n = len(X)
        journey = X["journey_id"] if "journey_id" in X.columns else X["session_id"]
        journey = journey.astype(object).where(journey.notna(), X["session_id"].astype(object))
        started = X["started_at"] if "started_at" in X.columns else pd.Series(pd.NaT, index=X.index)
        order = pd.DataFrame(
            {
                "j": journey.to_numpy(),
                "t": started.to_numpy(),
                "s": X["session_id"].to_numpy(),
                "pos": np.arange(n),
            }
        )
        # a stable order that does not depend on the input order: journey, start time, session id
        order = order.sort_values(["j", "t", "s"], kind="mergesort", na_position="last")
        pos = order["pos"].to_numpy()
        j = order["j"].to_numpy()
        first = np.ones(n, dtype=bool)
        first[1:] = j[1:] != j[:-1]
        group = np.cumsum(first) - 1
        starts = np.flatnonzero(first)
        index_in_journey = np.arange(n) - starts[group]

        h: dict[str, np.ndarray] = {"session_index": index_in_journey.astype(float)}
        t = order["t"]
        if t.notna().any():
            secs = (t - t.min()).dt.total_seconds().to_numpy()
            prev_secs = np.where(first, np.nan, np.roll(secs, 1))
            h["hours_since_prev"] = (secs - prev_secs) / 3600.0
            h["hours_since_first"] = (secs - secs[starts[group]]) / 3600.0

        sorted_ctx = ctx.iloc[pos]

        def previous(values: np.ndarray) -> np.ndarray:
            prev = np.roll(values, 1).astype(object if values.dtype == object else float)
            prev[first] = None if values.dtype == object else np.nan
            return prev

        def past_sum(values: np.ndarray) -> np.ndarray:
            """Sum over strictly earlier sessions of the journey (missing counts as 0)."""
            v = np.nan_to_num(values.astype(float))
            cum = np.cumsum(v)
            before = cum - v
            return before - (before[starts[group]])

        for name in ("channel", "device"):
            if name in sorted_ctx:
                h[f"prev_{name}"] = previous(sorted_ctx[name].to_numpy(dtype=object))
        for name in (
            "log_dwell",
            "page_views",
            "local_hour",
            "near_store",
            "store_distance_km",
            "has_location",
        ):
            if name in sorted_ctx:
                h[f"prev_{name}"] = previous(sorted_ctx[name].to_numpy(dtype=float))
        share_cols = [c for c in sorted_ctx.columns if c.startswith("share_")]
        for name in share_cols:
            h[f"prev_{name}"] = previous(sorted_ctx[name].to_numpy(dtype=float))

        n_prev = index_in_journey.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            if "page_views" in sorted_ctx:
                past_pages = past_sum(sorted_ctx["page_views"].to_numpy())
                h["past_page_views"] = past_pages
                for name in share_cols:
                    t_name = name.removeprefix("share_")
                    h[f"past_share_{t_name}"] = np.where(
                        past_pages > 0,
                        past_sum(sorted_ctx[f"pages_{t_name}"].to_numpy()) / past_pages,
                        np.nan,
                    )
            if "log_dwell" in sorted_ctx:
                h["past_mean_log_dwell"] = np.where(
                    n_prev > 0, past_sum(sorted_ctx["log_dwell"].to_numpy()) / n_prev, np.nan
                )
            if "near_store" in sorted_ctx:
                h["past_near_store"] = past_sum(sorted_ctx["near_store"].to_numpy())
            if "device" in sorted_ctx:
                mobile = (sorted_ctx["device"].to_numpy(dtype=object) == "mobile").astype(float)
                h["past_mobile_share"] = np.where(n_prev > 0, past_sum(mobile) / n_prev, np.nan)

        hist = pd.DataFrame(h)
        # back to the input order
        inverse = np.empty(n, dtype=np.int64)
        inverse[pos] = np.arange(n)
        hist = hist.iloc[inverse]
        hist.index = X.index
        return hist
