"""How the synthetic world answers a touchpoint feed: outcome events from known true rates.

Given a feed (which touchpoint each journey was shown, if any) and the true intent of each
journey's latest session, `respond` draws what happened next, in the outcome contract's roles
(`core/outcomes.py`):
- a contact is clicked with chance `click[intent, touchpoint]` = the world's conversion rate
  over `click_to_conversion[touchpoint]` (the share of clicks that buy), and a click buys with
  chance `click_to_conversion`, so a contact converts with the world's `conversion` rate, the
  rate the logged sessions were drawn from; it buys `hours_to_convert[intent]` hours after the
  contact on average (exponential);
- every journey, contacted or held out, may also buy on its own: `organic_conversion[intent]`
  over the whole future, after `organic_days[intent]` days on average;
- a click lands on a session of about `landing_session_s[touchpoint]` seconds (log-normal) that
  bounces with chance `bounce[touchpoint]`;
- a journey returns for another session with chance `return_rate[intent]`, plus
  `return_lift_after_click` after a click, `return_days` days later on average;
- an order is worth `order_value[intent]` on average (log-normal, log-sd `order_value_sd`).

Events later than `window_days` after the feed are not in the export, as a real extract cuts
them. `expected` gives each journey's true chances within the window, the truth the tests and
benchmarks measure against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.core.synthetic import GeneratorConfigError, GeneratorParams

CONTACT_SPREAD_H = 24.0  # contacts go out uniformly over the first day after the feed


@dataclass(frozen=True)
class ResponseParams:
    """The world's response to contacts (`generator.response`), as arrays."""

    conversion: np.ndarray  # (K, T) the world's conversion per intent x touchpoint
    click_to_conversion: np.ndarray  # (T,)
    hours_to_convert: np.ndarray  # (K,)
    organic_conversion: np.ndarray  # (K,)
    organic_days: np.ndarray  # (K,)
    landing_session_s: np.ndarray  # (T,)
    bounce: np.ndarray  # (T,)
    return_rate: np.ndarray  # (K,)
    return_lift_after_click: float
    return_days: float
    order_value: np.ndarray  # (K,)
    order_value_sd: float
    intents: tuple[str, ...]
    touchpoints: tuple[str, ...]

    @property
    def click(self) -> np.ndarray:
        """(K, T) chance a contact is clicked."""
        return self.conversion / self.click_to_conversion[None, :]

    @classmethod
    def from_config(cls, generator: Mapping) -> ResponseParams:
        """From the `generator` config: its world and its `response` block, checked; a bad
        value raises `GeneratorConfigError` naming the `generator.response.` key."""
        world = GeneratorParams.from_config(generator)
        cfg = dict(generator.get("response") or {})
        if not cfg:
            raise GeneratorConfigError(
                "generator.response is missing: this world cannot answer a feed"
            )
        k, t = len(world.intents), len(world.touchpoints)
        get = _Reader(cfg)
        params = cls(
            conversion=world.conversion,
            click_to_conversion=get("click_to_conversion", t, lo=0, hi=1, open_lo=True),
            hours_to_convert=get("hours_to_convert", k, lo=0, open_lo=True),
            organic_conversion=get("organic_conversion", k, lo=0, hi=1),
            organic_days=get("organic_days", k, lo=0, open_lo=True),
            landing_session_s=get("landing_session_s", t, lo=0, open_lo=True),
            bounce=get("bounce", t, lo=0, hi=1),
            return_rate=get("return_rate", k, lo=0, hi=1),
            return_lift_after_click=float(get("return_lift_after_click", None, lo=0, hi=1)),
            return_days=float(get("return_days", None, lo=0, open_lo=True)),
            order_value=get("order_value", k, lo=0, open_lo=True),
            order_value_sd=float(get("order_value_sd", None, lo=0)),
            intents=world.intents,
            touchpoints=world.touchpoints,
        )
        over = np.argwhere(params.click > 1)
        if len(over):
            z, j = over[0]
            raise GeneratorConfigError(
                f"generator.response.click_to_conversion.{world.touchpoints[j]}: conversion "
                f"{world.conversion[z, j]} of {world.intents[z]} over "
                f"{params.click_to_conversion[j]} is a click chance above 1"
            )
        if (params.return_rate + params.return_lift_after_click).max() > 1:
            raise GeneratorConfigError(
                "generator.response.return_rate plus return_lift_after_click must stay <= 1"
            )
        return params


class _Reader:
    """Reads one `generator.response` key as numbers of a given length and range."""

    def __init__(self, cfg: Mapping):
        self.cfg = cfg

    def __call__(self, key: str, n: int | None, lo=None, hi=None, open_lo=False) -> np.ndarray:
        name = f"generator.response.{key}"
        if key not in self.cfg:
            raise GeneratorConfigError(f"{name} is missing")
        try:
            arr = np.asarray(self.cfg[key], dtype=float)
        except (TypeError, ValueError):
            raise GeneratorConfigError(f"{name} needs numbers, got {self.cfg[key]!r}") from None
        shape = () if n is None else (n,)
        if arr.shape != shape:
            what = "a number" if n is None else f"{n} numbers"
            raise GeneratorConfigError(f"{name} needs {what}, got {self.cfg[key]!r}")
        low = lo is not None and bool(np.any(arr <= lo) if open_lo else np.any(arr < lo))
        if not np.isfinite(arr).all() or low or (hi is not None and np.any(arr > hi)):
            bounds = f"{'(' if open_lo else '['}{lo}, {'inf' if hi is None else hi}]"
            raise GeneratorConfigError(f"{name} values must be in {bounds}, got {arr.tolist()}")
        return arr


def _exp_cdf_after_uniform_start(window_h: float, mean_h: np.ndarray) -> np.ndarray:
    """P(start + delay <= window) for a start uniform over the first `CONTACT_SPREAD_H` hours
    and an exponential delay of mean `mean_h`: 1 - exp(-window/m) m/s (exp(s/m) - 1)."""
    s = CONTACT_SPREAD_H
    return 1.0 - np.exp(-window_h / mean_h) * (mean_h / s) * np.expm1(s / mean_h)


def _check_window(window_days: float) -> float:
    """The window in hours; it must hold the day the contacts go out over, or a contact itself
    could fall after it (and the chances below would not be its chances)."""
    window_h = 24.0 * float(window_days)
    if not window_h >= CONTACT_SPREAD_H:
        raise ValueError(
            f"window_days must be at least {CONTACT_SPREAD_H / 24:g} (contacts go out over the "
            f"first {CONTACT_SPREAD_H:g} hours after the feed), got {window_days}"
        )
    return window_h


def expected(
    params: ResponseParams, intent: np.ndarray, touch: np.ndarray, window_days: float
) -> pd.DataFrame:
    """Each journey's true chances within the window: clicked, converted (from the contact or on
    its own), returned, and its expected order value. `intent` indexes the world's intents;
    `touch` its touchpoints, -1 where the journey was not contacted."""
    window_h = _check_window(window_days)
    intent, touch = np.asarray(intent), np.asarray(touch)
    shown = touch >= 0
    t = np.where(shown, touch, 0)
    click = np.where(shown, params.click[intent, t], 0.0)
    contact = np.where(
        shown,
        params.conversion[intent, t]
        * _exp_cdf_after_uniform_start(window_h, params.hours_to_convert[intent]),
        0.0,
    )
    organic = params.organic_conversion[intent] * -np.expm1(
        -window_days / params.organic_days[intent]
    )
    converted = 1.0 - (1.0 - contact) * (1.0 - organic)
    returns = (params.return_rate[intent] + params.return_lift_after_click * click) * -np.expm1(
        -window_days / params.return_days
    )
    return pd.DataFrame(
        {
            "clicked": click,
            "converted": converted,
            "returned": returns,
            "value": converted * params.order_value[intent],
        }
    )


def respond(
    params: ResponseParams,
    journeys: pd.DataFrame,
    feed_at: pd.Timestamp,
    window_days: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Outcome events for the feed's journeys, one row per journey with any event (and a second
    for a purchase of its own made before its contact went out).

    `journeys` has `journey_id`, `intent` (the true intent of its latest session) and
    `touchpoint` (shown, or missing when not contacted). Returns the outcome contract's roles.
    """
    window_h = _check_window(window_days)
    n = len(journeys)
    intent = _index(journeys["intent"], params.intents, "intent")
    touch = _index(journeys["touchpoint"], params.touchpoints, "touchpoint", allow_missing=True)
    shown = touch >= 0
    t = np.where(shown, touch, 0)
    shown_h = rng.uniform(0, CONTACT_SPREAD_H, n)  # hours after the feed
    clicked = shown & (rng.random(n) < params.click[intent, t])
    buys_after_click = clicked & (rng.random(n) < params.click_to_conversion[t])
    contact_h = shown_h + rng.exponential(params.hours_to_convert[intent])
    organic = rng.random(n) < params.organic_conversion[intent]
    organic_h = 24 * rng.exponential(params.organic_days[intent])
    converted_h = np.where(organic, organic_h, np.inf)
    converted_h = np.where(buys_after_click, np.minimum(converted_h, contact_h), converted_h)
    log_value = np.log(params.order_value[intent]) - params.order_value_sd**2 / 2
    value = np.exp(log_value + params.order_value_sd * rng.standard_normal(n))
    bounced = clicked & (rng.random(n) < params.bounce[t])
    session_s = np.where(
        bounced,
        rng.uniform(1, 10, n),
        params.landing_session_s[t] * np.exp(0.5 * rng.standard_normal(n)),
    )
    returns = rng.random(n) < params.return_rate[intent] + params.return_lift_after_click * clicked
    returned_h = np.where(returns, 24 * rng.exponential(params.return_days, n), np.inf)
    has_conversion = converted_h <= window_h
    events = pd.DataFrame(
        {
            "journey_id": journeys["journey_id"].astype(str).to_numpy(),
            "touchpoint": np.where(shown, np.asarray(params.touchpoints, dtype=object)[t], None),
            "shown_at": _after(feed_at, np.where(shown, shown_h, np.inf)),
            "clicked": pd.array(np.where(shown, clicked, False), dtype="boolean"),
            "converted_at": _after(feed_at, np.where(has_conversion, converted_h, np.inf)),
            "value": np.where(has_conversion, np.round(value, 2), np.nan),
            "session_s": np.where(clicked, np.round(session_s, 1), np.nan),
            "bounced": pd.array(np.where(clicked, bounced, False), dtype="boolean"),
            "returned_at": _after(feed_at, np.where(returned_h <= window_h, returned_h, np.inf)),
        }
    )
    events.loc[~shown, "clicked"] = pd.NA
    events.loc[~clicked, "bounced"] = pd.NA
    if "session_id" in journeys:
        events.insert(1, "session_id", journeys["session_id"].astype(str).to_numpy())
    keep = shown | has_conversion | events["returned_at"].notna().to_numpy()
    return _purchases_before_contact(events[keep]).reset_index(drop=True)


def _purchases_before_contact(events: pd.DataFrame) -> pd.DataFrame:
    """A journey that bought on its own before its contact went out: the purchase on a row of its
    own, with no contact, as an export records it (on the contact's row it would read as bought
    before it was shown, which the outcome contract refuses), just after the contact's row."""
    early = (events["converted_at"] < events["shown_at"]).to_numpy()
    if not early.any():
        return events
    purchase = events[early].copy()
    for col in purchase.columns.difference(["journey_id", "session_id", "converted_at", "value"]):
        purchase[col] = purchase[col].where(np.zeros(len(purchase), dtype=bool))
    events = events.copy()
    events.loc[early, "converted_at"] = pd.NaT
    events.loc[early, "value"] = np.nan
    return pd.concat([events, purchase]).sort_index(kind="stable")


def _after(start: pd.Timestamp, hours: np.ndarray) -> pd.DatetimeIndex:
    """`start` plus each number of hours, to the second; NaT where hours is infinite."""
    finite = np.isfinite(hours)
    seconds = np.where(finite, np.round(hours * 3600), 0).astype(np.int64)
    at = pd.DatetimeIndex(start + pd.to_timedelta(seconds, unit="s"))
    return at.where(finite, pd.NaT)


def _index(values: pd.Series, names: tuple[str, ...], what: str, allow_missing=False) -> np.ndarray:
    """Positions of `values` among `names` (-1 for missing when allowed)."""
    lookup = {name: i for i, name in enumerate(names)}
    out = values.astype(object).map(lookup)
    bad = out.isna() & (values.notna() | (not allow_missing))
    if bad.any():
        sample = sorted(map(str, pd.unique(values[bad])))[:5]
        raise ValueError(f"{what} values {sample} are not in the world's {what}s {list(names)}")
    return out.fillna(-1).to_numpy(dtype=np.int64)
