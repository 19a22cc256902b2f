"""Touchpoint optimisation: which touchpoint should meet each journey now.

Pure functions over frames, wired by `pipelines.stages.touchpoints`:
- `Catalogue.from_config`: the touchpoints with their channel, cost, capacity and eligibility rules;
- `estimate_conversion`: the conversion rate of every intent x touchpoint from labelled logged
  sessions (touchpoint shown, its logging propensity, converted), by self-normalised
  inverse-propensity weighting, shrunk towards the touchpoint's rate over all intents, with
  intervals; a cell with too little data is marked so and left empty, never guessed;
- `estimate_conversion_from_predictions`: the same from predicted intent probabilities alone, by
  regressing conversion on them (what real logs without intent labels allow);
- `eligibility`: which touchpoints may meet each journey now, and why the others may not;
- `build_feed`: one row per journey at its latest session, with the recommended touchpoint, the
  runner-up, the expected conversion and value, suppression and a stable random holdout;
- `allocate`: a budgeted assignment of touchpoints to journeys that maximises expected
  conversions (or value) under per-touchpoint capacities and a total budget (HiGHS through SciPy);
- `marketer_tables`: intent mix by channel and touchpoint, micro- and macro-moment metrics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import LinearConstraint, milp
from scipy.stats import beta as beta_dist

from pipelines.core import geo, keys

INSUFFICIENT = "insufficient data"
OBJECTIVES = ("conversions", "value")


@dataclass(frozen=True)
class Touchpoint:
    """One designed interaction and the rules that say when it may be used."""

    name: str
    label: str | None = None  # what a marketer calls it; None: the name in words
    channel: str = ""
    cost: float = 0.0  # cost per contact
    capacity: float | None = None  # contacts available per feed; None: unlimited
    value: float | None = None  # value of one conversion; None: the catalogue's default
    devices: tuple[str, ...] | None = None  # allowed devices; None: any
    requires_location: bool = False  # needs coordinates in the latest session
    max_store_km: float | None = None  # needs the latest session this close to a store
    requires_app: bool = False  # needs a session of the journey from an app channel
    quiet_hours: tuple[int, int] | None = None  # [start, end) local hours when it is not sent
    frequency_cap: int | None = None  # at most this many contacts per journey ...
    cap_days: float = 7.0  # ... within this many days before the latest session

    def __post_init__(self) -> None:
        if self.cost < 0:
            raise ValueError(f"touchpoint {self.name}: cost must be >= 0, got {self.cost}")
        if self.capacity is not None and self.capacity < 0:
            raise ValueError(f"touchpoint {self.name}: capacity must be >= 0, got {self.capacity}")
        quiet = self.quiet_hours
        if quiet is not None and (len(quiet) != 2 or not all(0 <= h <= 24 for h in quiet)):
            raise ValueError(
                f"touchpoint {self.name}: quiet_hours must be [start, end] hours in 0..24, "
                f"got {list(quiet)}"
            )
        if self.frequency_cap is not None and self.frequency_cap < 1:
            raise ValueError(
                f"touchpoint {self.name}: frequency_cap must be >= 1 or null, got {self.frequency_cap}"
            )


@dataclass(frozen=True)
class Catalogue:
    touchpoints: tuple[Touchpoint, ...]
    value_per_conversion: float = 1.0
    budget: float | None = None  # total cost of all contacts in one feed; None: unlimited
    app_channels: tuple[str, ...] = ("app_push",)

    def __post_init__(self) -> None:
        names = [t.name for t in self.touchpoints]
        if not names:
            raise ValueError("touchpoints.catalogue is empty")
        if len(set(names)) != len(names):
            raise ValueError(f"touchpoints.catalogue has duplicate names: {names}")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"touchpoints.budget must be >= 0 or null, got {self.budget}")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.touchpoints]

    @property
    def labels(self) -> dict[str, str]:
        """Each touchpoint's name in words ("Local listing" for `local_listing`)."""
        return {t.name: t.label or words(t.name) for t in self.touchpoints}

    @property
    def costs(self) -> np.ndarray:
        return np.array([t.cost for t in self.touchpoints], dtype=float)

    @property
    def values(self) -> np.ndarray:
        return np.array(
            [self.value_per_conversion if t.value is None else t.value for t in self.touchpoints],
            dtype=float,
        )

    @property
    def capacities(self) -> np.ndarray:
        return np.array(
            [np.inf if t.capacity is None else t.capacity for t in self.touchpoints], dtype=float
        )

    @classmethod
    def from_config(cls, cfg: Mapping) -> Catalogue:
        """From the `touchpoints` config: `catalogue` maps each name to its settings."""
        tps = []
        for name, spec in (cfg.get("catalogue") or {}).items():
            spec = dict(spec or {})
            for key in ("devices", "quiet_hours"):
                if spec.get(key) is not None:
                    spec[key] = tuple(spec[key])
            unknown = set(spec) - set(Touchpoint.__dataclass_fields__)
            if unknown:
                raise ValueError(
                    f"touchpoints.catalogue.{name}: unknown settings {sorted(unknown)}"
                )
            tps.append(Touchpoint(name=str(name), **spec))
        return cls(
            touchpoints=tuple(tps),
            value_per_conversion=float(cfg.get("value_per_conversion", 1.0)),
            budget=None if cfg.get("budget") is None else float(cfg["budget"]),
            app_channels=tuple(cfg.get("app_channels") or ()),
        )


def words(name: str) -> str:
    """A snake_case name as a marketer reads it: `local_listing` -> "Local listing"."""
    text = str(name).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def intent_label(intent: str) -> str:
    """An intent as the moment it names: `go` -> "I want to go"."""
    return f"I want to {intent}"


# ---------------------------------------------------------------------------------------------
# conversion by intent x touchpoint


def intent_weights(
    frame: pd.DataFrame, classes: Sequence[str], source: str = "auto"
) -> tuple[np.ndarray, str]:
    """How much each session counts towards each intent: its label (one-hot) when labels are
    known, else the predicted probabilities `p_<class>`. Returns the weights and the source used.

    Labels feed `estimate_conversion`; predicted probabilities feed
    `estimate_conversion_from_predictions` (weighting by them would mix the intents' rates)."""
    if source not in ("auto", "label", "predicted"):
        raise ValueError(f"intent source must be auto, label or predicted, got {source!r}")
    has_label = "label" in frame and frame["label"].notna().all() and len(frame) > 0
    if source == "label" or (source == "auto" and has_label):
        if "label" not in frame:
            raise KeyError("intent source 'label' needs a 'label' column (data.label.column)")
        labels = frame["label"].astype(object).to_numpy()
        unknown = set(pd.unique(labels[pd.notna(labels)])) - set(classes)
        if unknown:
            raise ValueError(f"labels {sorted(map(str, unknown))} are not in {list(classes)}")
        return np.stack([(labels == c).astype(float) for c in classes], axis=1), "label"
    cols = [f"p_{c}" for c in classes]
    missing = [c for c in cols if c not in frame]
    if missing:
        raise KeyError(f"intent source 'predicted' needs columns {missing}")
    return np.nan_to_num(frame[cols].to_numpy(dtype=float)), "predicted"


def estimate_conversion(
    logs: pd.DataFrame,
    weights: np.ndarray,
    classes: Sequence[str],
    touchpoints: Sequence[str],
    min_effective_sessions: float = 50.0,
    prior_strength: float = 20.0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Conversion rate of each intent x touchpoint from logged sessions.

    `logs` has `touchpoint`, `touchpoint_propensity` (the logging policy's probability of showing
    it) and `converted`; `weights` (sessions x intents) says how much each session counts towards
    each intent (see `intent_weights`). Per cell:
    - `rate_ipw`: the self-normalised inverse-propensity estimate of the conversion rate had every
      session of that intent been shown the touchpoint, with its standard error `se_ipw`
      (sandwich); unbiased under the logging policy as long as its propensities are right and
      positive where the touchpoint is used;
    - `rate`, `ci_low`, `ci_high`: shrunk towards the touchpoint's rate over all intents by a
      Beta prior worth `prior_strength` sessions, counting the cell's Kish effective sample size
      as its evidence; the interval is the posterior's central `level` interval;
    - `status`: `ok`, or `insufficient data` when the effective sample size is below
      `min_effective_sessions`, in which case the rates and interval are left empty.
    """
    shown, inv, conv = _logged_arrays(logs, weights, len(classes), "weights")
    rows = []
    for t in touchpoints:
        hit, w_all, pooled = _shown(t, shown, inv, conv)
        for k, c in enumerate(classes):
            cell = _cell_estimate(
                w_all * weights[:, k], hit * weights[:, k], conv, pooled, min_effective_sessions
            )
            if cell["status"] == "ok":
                ess = cell["effective_sessions"]
                cell.update(_shrunk(cell["rate_ipw"], ess, pooled, prior_strength, level))
            rows.append({"intent": c, "touchpoint": t, **cell})
    return pd.DataFrame(rows)


def estimate_conversion_from_predictions(
    logs: pd.DataFrame,
    proba: np.ndarray,
    classes: Sequence[str],
    touchpoints: Sequence[str],
    min_effective_sessions: float = 50.0,
    prior_strength: float = 20.0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Conversion rate of each intent x touchpoint when only predicted intents are known.

    A session's chance to convert after touchpoint t is the mixture of the intents' rates by its
    intent probabilities: P(converted | x, t) = sum_k P(k | x) rate(k, t), because conversion
    depends on the intent, and the logging policy chose t from what it saw of x. With calibrated
    probabilities `proba` (sessions x intents) the same holds for them, so regressing conversion
    on the probabilities over the sessions shown t (no intercept, weighted by the inverse logging
    propensity) recovers every intent's rate of t without bias. Weighting each session towards
    the intents by its probabilities instead (`intent_weights(..., "predicted")` into
    `estimate_conversion`) mixes the intents' rates and its intervals miss them.

    Each cell's `rate_ipw` is the regression coefficient with its sandwich standard error
    `se_ipw`; `effective_sessions` is the Kish size of the inverse-propensity weights times the
    intent's probabilities. `rate` and its interval come from the Beta posterior described in
    `estimate_conversion`, counting as evidence the sessions a rate that precise would take
    (rate x (1 - rate) / se^2). Columns as `estimate_conversion`'s.
    """
    proba = np.nan_to_num(np.asarray(proba, dtype=float))
    shown, inv, conv = _logged_arrays(logs, proba, len(classes), "proba")
    rows = []
    for t in touchpoints:
        hit, w_all, pooled = _shown(t, shown, inv, conv)
        rate, se = _mixture_rates(proba[hit], conv[hit], inv[hit])
        for k, c in enumerate(classes):
            cell = _cell_estimate(
                w_all * proba[:, k], hit * proba[:, k], conv, pooled, min_effective_sessions
            )
            if cell["status"] == "ok" and np.isfinite(se[k]):
                # no more evidence than the sessions behind the cell (a zero error gives none)
                evidence = min(_evidence(rate[k], se[k]), cell["effective_sessions"])
                cell.update(rate_ipw=rate[k], se_ipw=se[k])
                cell.update(
                    _shrunk(min(max(rate[k], 0.0), 1.0), evidence, pooled, prior_strength, level)
                )
            else:
                cell.update(rate_ipw=np.nan, se_ipw=np.nan, status=INSUFFICIENT)
            rows.append({"intent": c, "touchpoint": t, **cell})
    return pd.DataFrame(rows)


def _logged_arrays(
    logs: pd.DataFrame, per_intent: np.ndarray, n_intents: int, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The touchpoint shown, its inverse logging propensity (0 where it is unusable) and whether
    the session converted, as arrays; refuses logs without those columns, and a `per_intent`
    matrix (called `name`) that is not sessions x intents."""
    for col in ("touchpoint", "touchpoint_propensity", "converted"):
        if col not in logs:
            raise KeyError(f"conversion estimates need a '{col}' column in the logged sessions")
    if per_intent.shape != (len(logs), n_intents):
        raise ValueError(
            f"{name} must be sessions x intents {(len(logs), n_intents)}, got {per_intent.shape}"
        )
    shown = logs["touchpoint"].astype(object).to_numpy()
    prop = pd.to_numeric(logs["touchpoint_propensity"], errors="coerce").to_numpy(dtype=float)
    conv = logs["converted"].astype("boolean").fillna(False).to_numpy(dtype=float)
    valid = pd.notna(shown) & np.isfinite(prop) & (prop > 0) & (prop <= 1)
    inv = np.where(valid, 1.0 / np.where(valid, prop, 1.0), 0.0)
    return shown, inv, conv


def _shown(
    touchpoint: str, shown: np.ndarray, inv: np.ndarray, conv: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """The sessions shown `touchpoint` (with a usable propensity), their inverse-propensity
    weights (0 elsewhere), and the touchpoint's weighted rate over all intents."""
    hit = (inv > 0) & (shown == touchpoint)
    w_all = inv * hit
    pooled = float((w_all * conv).sum() / w_all.sum()) if w_all.sum() > 0 else np.nan
    return hit, w_all, pooled


def _mixture_rates(
    proba: np.ndarray, conv: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of `conv` on `proba` without intercept: the coefficients and their
    sandwich (HC0) standard errors; NaN for intents the probabilities cannot tell apart."""
    k = proba.shape[1]
    if len(proba) <= k:
        return np.full(k, np.nan), np.full(k, np.nan)
    xtw = proba.T * w
    gram = xtw @ proba
    if np.linalg.matrix_rank(gram) < k:
        return np.full(k, np.nan), np.full(k, np.nan)
    inv_gram = np.linalg.inv(gram)
    coef = inv_gram @ (xtw @ conv)
    resid = conv - proba @ coef
    meat = (proba.T * (w * resid) ** 2) @ proba
    cov = inv_gram @ meat @ inv_gram
    return coef, np.sqrt(np.clip(np.diag(cov), 0.0, None))


def _evidence(rate: float, se: float) -> float:
    """How many sessions a rate this precise is worth: rate x (1 - rate) / se^2."""
    r = min(max(rate, 1e-6), 1 - 1e-6)
    return float(r * (1 - r) / se**2) if se > 0 else float("inf")


def _cell_estimate(
    w: np.ndarray,
    shown: np.ndarray,
    conv: np.ndarray,
    pooled: float,
    min_effective_sessions: float,
) -> dict:
    """One intent x touchpoint cell from its sessions' inverse-propensity weights `w` and their
    intent weights where the touchpoint was shown (`shown`): the counts, the effective sample
    size and, with enough of it, the IPW rate and its standard error (rates left empty)."""
    sw, sw2 = float(w.sum()), float((w**2).sum())
    ess = sw**2 / sw2 if sw2 > 0 else 0.0
    cell = {
        "shown": float(shown.sum()),
        "conversions": float((shown * conv).sum()),
        "effective_sessions": ess,
        "rate_ipw": np.nan,
        "se_ipw": np.nan,
        "rate": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "prior_rate": pooled,
        "status": INSUFFICIENT,
    }
    if sw > 0 and ess >= min_effective_sessions:
        rate = float((w * conv).sum() / sw)
        se = float(np.sqrt((w**2 * (conv - rate) ** 2).sum()) / sw)
        cell.update(rate_ipw=rate, se_ipw=se, status="ok")
    return cell


def _shrunk(rate: float, ess: float, pooled: float, prior_strength: float, level: float) -> dict:
    """The rate shrunk towards the pooled rate by a Beta prior worth `prior_strength` sessions,
    with the posterior's central `level` interval."""
    prior = pooled if np.isfinite(pooled) else rate
    a = prior_strength * prior + ess * rate
    b = prior_strength * (1 - prior) + ess * (1 - rate)
    # a rate of exactly 0 or 1 with no prior mass still needs a proper Beta
    a, b = max(a, 1e-9), max(b, 1e-9)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    return {
        "rate": a / (a + b),
        "ci_low": float(beta_dist.ppf(lo_q, a, b)),
        "ci_high": float(beta_dist.ppf(hi_q, a, b)),
    }


def rate_matrix(
    estimates: pd.DataFrame, classes: Sequence[str], touchpoints: Sequence[str]
) -> np.ndarray:
    """intents x touchpoints matrix of the shrunk rates; NaN where the data is insufficient."""
    table = estimates.pivot(index="intent", columns="touchpoint", values="rate")
    return table.reindex(index=list(classes), columns=list(touchpoints)).to_numpy(dtype=float)


# ---------------------------------------------------------------------------------------------
# eligibility


def in_quiet_hours(hour: np.ndarray, quiet: tuple[int, int]) -> np.ndarray:
    """Whether each local hour falls in the quiet window [start, end), which may wrap past
    midnight (21-8h)."""
    start, end = quiet
    if start == end:
        return np.zeros(len(hour), dtype=bool)
    if start < end:
        return (hour >= start) & (hour < end)
    return (hour >= start) | (hour < end)  # the window wraps past midnight


def journey_context(
    sessions: pd.DataFrame, catalogue: Catalogue, before_latest: bool = False
) -> pd.DataFrame:
    """One row per journey, at its latest session, with what eligibility and suppression need.

    `sessions` holds canonical roles (`journey_id`, `session_id`, `started_at`, and any of
    `device`, `channel`, `latitude`, `longitude`, `utc_offset_min`, `touchpoint`, `converted`) plus
    the scorer's output (`p_<class>`, `intent`). Adds: `sessions` (count), `app_user`,
    `hours_since_conversion` (NaN if none), and `shown_<touchpoint>` (contacts within each
    touchpoint's frequency-cap window before and including the latest session).

    `before_latest`: the context as it stood when the latest session's touchpoint was chosen:
    its own touchpoint and conversion count towards neither the caps nor the suppression (the
    row keeps them: they are what was logged). Valuing a policy on the latest logged decisions
    needs it: otherwise every journey whose latest session converted is suppressed, so the
    reward read is always 0, and the caps depend on the logged action.
    """
    for col in ("journey_id", "session_id"):
        if col not in sessions:
            raise KeyError(f"the feed needs a '{col}' column in the scored sessions")
    frame = sessions.copy()
    if "started_at" not in frame:
        frame["started_at"] = pd.NaT
    frame["started_at"] = pd.to_datetime(frame["started_at"], utc=True)
    frame = frame.sort_values(
        ["journey_id", "started_at", "session_id"], kind="mergesort", na_position="first"
    )
    grouped = frame.groupby("journey_id", sort=False)
    latest = grouped.tail(1).set_index("journey_id")
    ctx = latest.copy()
    ctx["sessions"] = grouped.size().reindex(ctx.index)
    ctx["first_started_at"] = grouped["started_at"].min().reindex(ctx.index)
    if "channel" in frame and catalogue.app_channels:
        app = frame["channel"].astype(object).isin(catalogue.app_channels)
        ctx["app_user"] = app.groupby(frame["journey_id"]).any().reindex(ctx.index)
    else:
        ctx["app_user"] = False
    latest_at = ctx["started_at"].reindex(frame["journey_id"]).to_numpy()
    age_h = (latest_at - frame["started_at"].to_numpy()) / np.timedelta64(1, "h")
    # rows that count: all, or all but each journey's latest (the last of its sorted rows)
    counted = ~frame["journey_id"].duplicated(keep="last").to_numpy() if before_latest else None
    counted = np.ones(len(frame), dtype=bool) if counted is None else ~counted
    if "converted" in frame:
        conv = frame["converted"].astype("boolean").fillna(False).to_numpy(dtype=bool) & counted
        since = pd.Series(np.where(conv, age_h, np.nan), index=frame.index)
        ctx["hours_since_conversion"] = since.groupby(frame["journey_id"]).min().reindex(ctx.index)
    else:
        ctx["hours_since_conversion"] = np.nan
    shown = frame["touchpoint"].astype(object) if "touchpoint" in frame else None
    for tp in catalogue.touchpoints:
        if shown is None:
            ctx[f"shown_{tp.name}"] = 0
            continue
        recent = (shown == tp.name).to_numpy() & (age_h <= tp.cap_days * 24) & counted
        counts = pd.Series(recent, index=frame.index).groupby(frame["journey_id"]).sum()
        ctx[f"shown_{tp.name}"] = counts.reindex(ctx.index).fillna(0).astype(int)
    return ctx.reset_index()


def eligibility(
    ctx: pd.DataFrame, catalogue: Catalogue, stores: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Which touchpoints may meet each journey now (journeys x touchpoints booleans), and for
    each ineligible pair the first rule it breaks (text; None where eligible)."""
    n, T = len(ctx), len(catalogue.touchpoints)
    ok = np.ones((n, T), dtype=bool)
    reason = np.full((n, T), None, dtype=object)

    def refuse(j: int, mask: np.ndarray, why: str) -> None:
        new = mask & ok[:, j]
        reason[new, j] = why
        ok[new, j] = False

    device = ctx["device"].astype(object).to_numpy() if "device" in ctx else np.full(n, None)
    lat = (
        pd.to_numeric(ctx["latitude"], errors="coerce").to_numpy(dtype=float)
        if "latitude" in ctx
        else np.full(n, np.nan)
    )
    lon = (
        pd.to_numeric(ctx["longitude"], errors="coerce").to_numpy(dtype=float)
        if "longitude" in ctx
        else np.full(n, np.nan)
    )
    has_location = np.isfinite(lat) & np.isfinite(lon)
    hour = _local_hours(ctx)
    store_km = None
    app_user = ctx["app_user"].fillna(False).to_numpy(dtype=bool)
    for j, tp in enumerate(catalogue.touchpoints):
        if tp.devices is not None:
            refuse(j, ~np.isin(device, list(tp.devices)), f"device not in {list(tp.devices)}")
        if tp.requires_location or tp.max_store_km is not None:
            refuse(j, ~has_location, "no location")
        if tp.max_store_km is not None:
            if stores is None:
                refuse(j, np.ones(n, dtype=bool), "no store table")
            else:
                if store_km is None:
                    store_km = geo.nearest_store_km(lat, lon, geo.store_index(stores))
                far = ~(store_km <= tp.max_store_km)
                refuse(j, far, f"more than {tp.max_store_km:g} km from a store")
        if tp.requires_app:
            refuse(j, ~app_user, "not an app user")
        if tp.quiet_hours is not None:
            quiet = np.isfinite(hour) & in_quiet_hours(np.nan_to_num(hour), tp.quiet_hours)
            refuse(j, quiet, f"quiet hours {tp.quiet_hours[0]}-{tp.quiet_hours[1]}h")
        if tp.frequency_cap is not None:
            capped = ctx[f"shown_{tp.name}"].to_numpy() >= tp.frequency_cap
            refuse(j, capped, f"frequency cap {tp.frequency_cap} per {tp.cap_days:g} days")
    return ok, reason


def _local_hours(ctx: pd.DataFrame) -> np.ndarray:
    """The local hour of each journey's latest session (NaN without a start time)."""
    if "started_at" not in ctx:
        return np.full(len(ctx), np.nan)
    utc_ns, timed = geo.utc_nanoseconds(pd.to_datetime(ctx["started_at"], utc=True))
    offset = (
        pd.to_numeric(ctx["utc_offset_min"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if "utc_offset_min" in ctx
        else None
    )
    return np.where(timed, geo.local_hour(utc_ns, offset), np.nan)


# ---------------------------------------------------------------------------------------------
# the feed


def holdout_flags(journey_ids: pd.Series, share: float, salt: str) -> np.ndarray:
    """A stable random share of journeys kept as a control group: the same journey id and salt
    always land on the same side, so uplift can be measured later."""
    if not 0 <= share < 1:
        raise ValueError(f"touchpoints.holdout_share must be in [0, 1), got {share}")
    return (keys.salted_hash(journey_ids, "|" + salt) / np.float64(2**64)) < share


@dataclass
class Feed:
    """The feed and the matrices the allocation and the report reuse."""

    rows: pd.DataFrame
    expected_conversion: np.ndarray  # journeys x touchpoints
    score: np.ndarray  # the objective per pair; -inf where not allowed
    eligible: np.ndarray
    unestimated: list[str] = field(default_factory=list)


def build_feed(
    ctx: pd.DataFrame,
    classes: Sequence[str],
    rates: np.ndarray,
    catalogue: Catalogue,
    eligible: np.ndarray,
    reasons: np.ndarray,
    objective: str = "conversions",
    holdout_share: float = 0.1,
    holdout_salt: str = "micromoment",
    suppress_after_conversion_hours: float | None = 24.0,
) -> Feed:
    """One row per journey: the touchpoint to use now and why.

    Expected conversion of touchpoint t for a journey = sum over intents of P(intent) x rate(intent,
    t). A touchpoint whose rate is unknown for some intent (insufficient data) is not recommended.
    The objective is expected `conversions`, or `value` (conversion x value - cost); with `value`
    a touchpoint that costs more than it is expected to return is not recommended.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"touchpoints.objective must be one of {OBJECTIVES}, got {objective!r}")
    names = np.asarray(catalogue.names, dtype=object)
    proba = np.nan_to_num(ctx[[f"p_{c}" for c in classes]].to_numpy(dtype=float))
    unknown = ~np.isfinite(rates).all(axis=0)
    expected = proba @ np.nan_to_num(rates)
    value = expected * catalogue.values - catalogue.costs
    allowed = eligible & ~unknown[None, :]
    score = np.where(allowed, expected if objective == "conversions" else value, -np.inf)
    if objective == "value":
        score = np.where(score > 0, score, -np.inf)
    best, second = _best_two(score)

    rows = _journey_columns(ctx, classes, proba)
    rows["recommended_touchpoint"] = np.where(best >= 0, names[best], None)
    rows["expected_conversion"] = _chosen(expected, best)
    rows["expected_value"] = _chosen(value, best)
    rows["runner_up_touchpoint"] = np.where(second >= 0, names[second], None)
    rows["runner_up_expected_conversion"] = _chosen(expected, second)
    rows["runner_up_expected_value"] = _chosen(value, second)
    rows["eligible_touchpoints"] = [",".join(names[row]) for row in allowed]
    rows["ineligible_reasons"] = _ineligible_reasons(names, eligible, reasons, unknown)

    suppression = _suppression(ctx, best >= 0, objective, suppress_after_conversion_hours)
    rows["suppressed"] = pd.notna(suppression)
    rows["suppression_reason"] = suppression
    rows["holdout"] = holdout_flags(rows["journey_id"], holdout_share, holdout_salt)
    rows["contact"] = (best >= 0) & ~rows["suppressed"].to_numpy() & ~rows["holdout"].to_numpy()
    return Feed(
        rows=rows,
        expected_conversion=expected,
        score=score,
        eligible=allowed,
        unestimated=[str(t) for t in names[unknown]],
    )


def _best_two(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per journey, the touchpoint with the highest score and the runner-up (-1 where there is
    none with a finite score); ties go to the earlier touchpoint of the catalogue."""
    order = np.argsort(-score, axis=1, kind="stable")
    best, second = order[:, 0], order[:, 1] if score.shape[1] > 1 else order[:, 0]
    idx = np.arange(len(score))
    has_best = np.isfinite(score[idx, best])
    has_second = np.isfinite(score[idx, second]) & (second != best)
    return np.where(has_best, best, -1), np.where(has_second, second, -1)


def _chosen(matrix: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """Per journey, the entry of `matrix` (journeys x touchpoints) of its chosen touchpoint;
    NaN where none was chosen (-1)."""
    return np.where(choice >= 0, matrix[np.arange(len(matrix)), choice], np.nan)


def _journey_columns(ctx: pd.DataFrame, classes: Sequence[str], proba: np.ndarray) -> pd.DataFrame:
    """The feed's columns that describe each journey: ids, its latest session, the model that
    scored it, and its intent probabilities."""
    rows = pd.DataFrame(
        {
            "journey_id": ctx["journey_id"].astype(str).to_numpy(),
            "session_id": ctx["session_id"].astype(str).to_numpy(),
            "latest_started_at": ctx["started_at"].to_numpy(),
            "sessions": ctx["sessions"].to_numpy(),
        }
    )
    for col in ("model_name", "model_version", "model_alias"):
        rows[col] = ctx[col].to_numpy() if col in ctx else None
    rows["intent"] = ctx["intent"].to_numpy() if "intent" in ctx else None
    for k, c in enumerate(classes):
        rows[f"p_{c}"] = proba[:, k]
    # the latest session's reason codes, when it was scored with them (`score.explain`)
    for col in (c for c in ctx.columns if re.fullmatch(r"reason_\d+|reasons", str(c))):
        rows[col] = ctx[col].to_numpy()
    return rows


def _ineligible_reasons(
    names: np.ndarray, eligible: np.ndarray, reasons: np.ndarray, unknown: np.ndarray
) -> list[str | None]:
    """Per journey, why each touchpoint that is not allowed is not ("name: reason; ...")."""
    why = []
    for i in range(len(eligible)):
        parts = [f"{names[j]}: {reasons[i, j]}" for j in np.flatnonzero(~eligible[i])]
        parts += [f"{names[j]}: {INSUFFICIENT}" for j in np.flatnonzero(eligible[i] & unknown)]
        why.append("; ".join(parts) or None)
    return why


def _suppression(
    ctx: pd.DataFrame, has_best: np.ndarray, objective: str, after_conversion_hours: float | None
) -> np.ndarray:
    """Why each journey is not contacted (None where it may be): a recent conversion, or no
    touchpoint to recommend."""
    suppression = np.full(len(ctx), None, dtype=object)
    if after_conversion_hours is not None:
        recent = ctx["hours_since_conversion"].to_numpy(dtype=float)
        hit = np.isfinite(recent) & (recent <= after_conversion_hours)
        suppression[hit] = f"converted within {after_conversion_hours:g} h"
    none_left = pd.isna(suppression) & ~has_best
    suppression[none_left] = (
        "no eligible touchpoint" if objective == "conversions" else "no touchpoint worth its cost"
    )
    return suppression


# ---------------------------------------------------------------------------------------------
# budgeted allocation


@dataclass
class Allocation:
    choice: np.ndarray  # per journey: index of the allocated touchpoint, -1 for none
    objective: float  # total of the objective over allocated pairs
    status: str
    bound: float | None = None  # the LP relaxation's optimum: no assignment can beat it


def allocate(
    score: np.ndarray,
    capacity: np.ndarray,
    cost: np.ndarray | None = None,
    budget: float | None = None,
    time_limit: float = 120.0,
    mip_rel_gap: float = 1e-6,
    exact_max_pairs: int = 2_000,
) -> Allocation:
    """Assign at most one touchpoint to each journey so that the total score is largest while each
    touchpoint stays within its capacity and the total cost within the budget.

    `score` is journeys x touchpoints with -inf (or NaN) where a pair is not allowed; pairs that
    would add nothing (score <= 0) are left out. The linear relaxation is solved first by HiGHS
    (`scipy.optimize.linprog`): with capacities alone its constraint matrix is totally unimodular,
    so its optimum is already an assignment. A budget adds one constraint, and the relaxation may
    then split a few journeys: up to `exact_max_pairs` candidate pairs the integer program is solved
    exactly (`scipy.optimize.milp`); beyond, the split journeys are dropped and the spare budget
    and capacity filled greedily, which stays within a few journeys' worth of the LP bound (both
    are reported).
    """
    from scipy.optimize import linprog

    n, T = score.shape
    capacity = np.asarray(capacity, dtype=float)
    cost = np.zeros(T) if cost is None else np.asarray(cost, dtype=float)
    if capacity.shape != (T,) or cost.shape != (T,):
        raise ValueError(f"capacity and cost need one entry per touchpoint ({T})")
    s = np.where(np.isfinite(score), score, 0.0)
    rows, cols = np.nonzero(s > 0)
    choice = np.full(n, -1, dtype=np.int64)
    if len(rows) == 0:
        return Allocation(choice, 0.0, "nothing to allocate", 0.0)
    # when every pair fits within every capacity and there is no budget, the best per journey wins
    fits = (np.bincount(cols, minlength=T) <= capacity).all()
    if fits and budget is None:
        return _best_per_journey(s)

    c = -s[rows, cols]
    A, b = _allocation_constraints(rows, cols, n, capacity, cost, budget)
    lp = linprog(c, A_ub=A, b_ub=b, bounds=(0, 1), method="highs")
    if lp.status != 0:
        raise RuntimeError(f"the allocation's linear relaxation failed: {lp.message}")
    integral = np.all((lp.x < 1e-9) | (lp.x > 1 - 1e-9))
    if integral:
        take, status = lp.x > 1 - 1e-9, "optimal"
    elif len(rows) <= exact_max_pairs:
        take, status = _solve_exactly(c, A, b, time_limit, mip_rel_gap)
    else:
        # drop split journeys, then fill what capacity and budget are left, best pairs first
        take = _fill_greedily(lp.x > 1 - 1e-9, rows, cols, c, n, capacity, cost, budget)
        status = "rounded from the linear relaxation"
    choice[rows[take]] = cols[take]
    return Allocation(choice, float(s[rows[take], cols[take]].sum()), status, float(-lp.fun))


def _best_per_journey(s: np.ndarray) -> Allocation:
    """Each journey's best pair with a positive score: optimal when no limit binds."""
    n = len(s)
    choice = np.full(n, -1, dtype=np.int64)
    best = np.argmax(np.where(s > 0, s, -np.inf), axis=1)
    any_pos = (s > 0).any(axis=1)
    choice[any_pos] = best[any_pos]
    total = float(s[np.arange(n), best][any_pos].sum())
    return Allocation(choice, total, "optimal", total)


def _allocation_constraints(
    rows: np.ndarray,
    cols: np.ndarray,
    n: int,
    capacity: np.ndarray,
    cost: np.ndarray,
    budget: float | None,
) -> tuple[sparse.csr_array, np.ndarray]:
    """`A x <= b` over the candidate pairs (journey `rows`, touchpoint `cols`): at most one
    touchpoint per journey, each finite capacity, and the budget when there is one."""
    m, T = len(rows), len(capacity)
    blocks = [sparse.csr_array((np.ones(m), (rows, np.arange(m))), shape=(n, m))]
    upper = [np.ones(n)]
    finite = np.flatnonzero(np.isfinite(capacity))
    if len(finite):
        pos = np.full(T, -1)
        pos[finite] = np.arange(len(finite))
        sel = np.flatnonzero(pos[cols] >= 0)
        blocks.append(
            sparse.csr_array((np.ones(len(sel)), (pos[cols[sel]], sel)), shape=(len(finite), m))
        )
        upper.append(capacity[finite])
    if budget is not None:
        blocks.append(sparse.csr_array(cost[cols][None, :]))
        upper.append(np.array([budget], dtype=float))
    return sparse.vstack(blocks).tocsr(), np.concatenate(upper)


def _solve_exactly(
    c: np.ndarray, A: sparse.csr_array, b: np.ndarray, time_limit: float, mip_rel_gap: float
) -> tuple[np.ndarray, str]:
    """The integer program by HiGHS: which pairs to take, and whether it proved optimality."""
    res = milp(
        c,
        constraints=[LinearConstraint(A, -np.inf, b)],
        integrality=np.ones(len(c)),
        bounds=(0, 1),
        options={"time_limit": time_limit, "mip_rel_gap": mip_rel_gap, "disp": False},
    )
    if res.x is None:
        raise RuntimeError(f"the allocation found no solution: {res.message}")
    return res.x > 0.5, "optimal" if res.status == 0 else f"stopped: {res.message}"


def _fill_greedily(
    take: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    c: np.ndarray,
    n: int,
    capacity: np.ndarray,
    cost: np.ndarray,
    budget: float | None,
) -> np.ndarray:
    """Add pairs to the whole ones taken, best first (lowest `c`), while each journey has at
    most one touchpoint and capacity and budget allow."""
    take = take.copy()
    used = np.bincount(cols[take], minlength=len(capacity)).astype(float)
    spent = float(cost[cols[take]].sum())
    taken = np.zeros(n, dtype=bool)
    taken[rows[take]] = True
    for k in np.argsort(c, kind="stable"):
        r, t = rows[k], cols[k]
        if taken[r] or used[t] + 1 > capacity[t]:
            continue
        if budget is not None and spent + cost[t] > budget + 1e-9:
            continue
        take[k], taken[r] = True, True
        used[t] += 1
        spent += cost[t]
    return take


# ---------------------------------------------------------------------------------------------
# marketer tables


def _share_table(index: pd.Series, columns: pd.Series, classes: Sequence[str]) -> pd.DataFrame:
    table = pd.crosstab(index, columns).reindex(columns=list(classes), fill_value=0)
    out = table.div(table.sum(axis=1).where(lambda s: s > 0), axis=0)
    out.insert(0, "sessions", table.sum(axis=1))
    return out


def marketer_tables(
    sessions: pd.DataFrame, feed: pd.DataFrame, classes: Sequence[str]
) -> dict[str, pd.DataFrame]:
    """Tables a marketer reads: intent mix by entry channel and by touchpoint shown, the feed's
    recommendations by intent, and micro-moment (session) beside macro-moment (journey) metrics."""
    out: dict[str, pd.DataFrame] = {}
    scored = sessions[sessions["intent"].notna()]
    for col, table in (
        ("channel", "intent_mix_by_channel"),
        ("touchpoint", "intent_mix_by_touchpoint_shown"),
    ):
        if col in scored:
            out[table] = _share_table(
                scored[col].astype(object).fillna("(none)").rename(col), scored["intent"], classes
            )
    rec = feed[feed["recommended_touchpoint"].notna()]
    out["recommendations_by_intent"] = pd.crosstab(
        rec["intent"].rename("intent"), rec["recommended_touchpoint"].rename("touchpoint")
    )
    converted = (
        scored["converted"].astype("boolean").astype(float)
        if "converted" in scored
        else pd.Series(np.nan, index=scored.index)
    )
    out["micro_moment_metrics"] = _micro_moment_metrics(scored, converted, classes)
    out["macro_moment_metrics"] = _macro_moment_metrics(scored, converted)
    return out


def _micro_moment_metrics(
    scored: pd.DataFrame, converted: pd.Series, classes: Sequence[str]
) -> pd.DataFrame:
    """Micro-moments: one session each, by predicted intent."""
    dwell = (
        pd.to_numeric(scored["dwell_time_s"], errors="coerce")
        if "dwell_time_s" in scored
        else pd.Series(np.nan, index=scored.index)
    )
    micro = pd.DataFrame(
        {
            "sessions": scored.groupby("intent").size(),
            "conversion_rate": converted.groupby(scored["intent"]).mean(),
            "median_session_s": dwell.groupby(scored["intent"]).median(),
            "median_converting_session_s": dwell[converted == 1]
            .groupby(scored["intent"][converted == 1])
            .median(),
        }
    ).reindex(list(classes))
    micro.index.name = "intent"
    return micro


def _macro_moment_metrics(scored: pd.DataFrame, converted: pd.Series) -> pd.DataFrame:
    """Macro-moments: whole journeys, by the channel they entered through, and over all."""
    journeys = _journey_outcomes(scored, converted)

    def macro(group: pd.DataFrame) -> pd.Series:
        return pd.Series(
            {
                "journeys": len(group),
                "journey_conversion_rate": group["converted"].mean(),
                "sessions_per_journey": group["sessions"].mean(),
                "median_days_to_convert": group["days_to_convert"].median(),
            }
        )

    by_channel = journeys.groupby("entry_channel").apply(macro, include_groups=False)
    overall = macro(journeys).to_frame("(all)").T
    table = pd.concat([by_channel, overall])
    table.index.name = "entry_channel"
    return table


def _journey_outcomes(scored: pd.DataFrame, converted: pd.Series) -> pd.DataFrame:
    """One row per journey: its entry channel, its sessions, whether it converted and how many
    days after its first session."""
    frame = scored.assign(_converted=converted.to_numpy())
    frame = frame.assign(
        started_at=pd.to_datetime(frame.get("started_at", pd.NaT), utc=True)
    ).sort_values(["journey_id", "started_at"], kind="mergesort")
    g = frame.groupby("journey_id", sort=False)
    first = g["started_at"].min()
    conv_at = frame["started_at"].where(frame["_converted"] == 1).groupby(frame["journey_id"]).min()
    return pd.DataFrame(
        {
            "entry_channel": g["channel"].first() if "channel" in frame else "(all)",
            "sessions": g.size(),
            "converted": g["_converted"].max() == 1,
            "days_to_convert": (conv_at - first) / pd.Timedelta(days=1),
        }
    )
