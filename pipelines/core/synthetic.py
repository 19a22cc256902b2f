"""Synthetic customer journeys and their Bayes-optimal intent posterior.

A journey (macro-moment) is a run of sessions (micro-moments) of one customer. The customer
belongs to a hidden segment (researchers, deal seekers, local shoppers, ...) drawn once per
journey; each session's hidden intent follows a Markov chain over the journey whose matrix
depends on the segment. Everything observable about a session is drawn from distributions that
depend on its own (segment, intent) and on observables drawn before it in the same session:
the chance of being at a store depends on the device and on whether stores are open at the
local hour, a first visit's chance of being a returning customer on its entry channel, the
dwell time on the device and on the pages seen (docs/synthetic.md says what each stands for).
Because the generator knows its parameters, forward filtering over the joint hidden state
(segment, intent) gives the exact posterior over intents given everything observable up to and
including each session: no model can do better on average, so it is the yardstick of every
benchmark.

The posterior conditions on the session context (device, channel, local time, the gap since the
previous session, location, dwell time, pages, returning visitor). It does not condition on the
touchpoint shown or on conversion: those are outcomes, not context a scorer has.

Every effect is off (tilt 1, shift 0) unless configured, and then the generator draws exactly
what it drew before the effect existed: the default world (`conf/generator/default.yaml`) has
segments and interactions; `generator=simple` has neither.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy.special import gammaln, logsumexp

from pipelines.core import geo


class GeneratorConfigError(ValueError):
    """A generator parameter that cannot describe a world (names the `generator.` key)."""


@dataclass(frozen=True)
class City:
    name: str
    lat: float
    lon: float
    utc_offset_min: int
    stores: np.ndarray  # (n_stores, 2) lat, lon


@dataclass(frozen=True)
class Segments:
    """Customer segments: their shares and how each tilts the shared per-intent parameters.

    A tilt multiplies a probability row elementwise and renormalises it (1 = no change); the
    arrays have one row per segment.
    """

    names: tuple[str, ...]
    probs: np.ndarray  # (G,)
    intent_tilt: np.ndarray  # (G, K): a journey's first intent and every move into an intent
    device_tilt: np.ndarray  # (G, D)
    channel_tilt: np.ndarray  # (G, C)
    page_tilt: np.ndarray  # (G, P)
    gap_scale: np.ndarray  # (G,): multiplies the mean day gap between sessions
    near_store_scale: np.ndarray  # (G,): multiplies the chance a located session is at a store
    returning_odds: np.ndarray  # (G,): multiplies the odds a first visit is a returning customer
    dwell_shift: np.ndarray  # (G, K): log-seconds added to the dwell of each intent
    pages_scale: np.ndarray  # (G, K): multiplies the mean extra page views of each intent

    @property
    def n(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Interactions:
    """Effects of one observable on another given the intent (the identity when all off)."""

    store_hours: tuple[int, int]  # local hours [open, close) stores are open
    near_store_closed: np.ndarray  # (K,): multiplies the at-a-store chance outside those hours
    returning_channel_odds: np.ndarray  # (K, C): odds of a returning first visit, by channel
    dwell_device_shift: np.ndarray  # (K, D): log-seconds added to the dwell by device
    dwell_page_slope: np.ndarray  # (K,): log-seconds of dwell per log page view
    dwell_page_shift: np.ndarray  # (K, P): log-seconds added per unit share of a page type

    def store_open(self, hour: np.ndarray) -> np.ndarray:
        return (hour >= self.store_hours[0]) & (hour < self.store_hours[1])

    def dwell_shift(
        self, device: np.ndarray, pages: np.ndarray, counts: np.ndarray, z: np.ndarray | None
    ) -> np.ndarray:
        """Log-seconds added to the dwell log-mean: (n,) for given intents `z`, else (n, K)."""
        share = counts / pages[:, None]
        if z is not None:
            return (
                self.dwell_device_shift[z, device]
                + self.dwell_page_slope[z] * np.log(pages)
                + (share * self.dwell_page_shift[z]).sum(axis=1)
            )
        return (
            self.dwell_device_shift[:, device].T
            + np.log(pages)[:, None] * self.dwell_page_slope[None, :]
            + share @ self.dwell_page_shift.T
        )


@dataclass(frozen=True)
class GeneratorParams:
    """The generator's parameters as arrays; built from the `generator` config by `from_config`.

    The per-intent fields are the base world; `segments` tilts them per customer segment (the
    `*_g` properties: one leading row per segment) and `interactions` conditions some of them
    on other observables of the same session.
    """

    intents: tuple[str, ...]
    initial: np.ndarray
    transition: np.ndarray
    end_prob: np.ndarray
    max_sessions: int
    start: pd.Timestamp
    days: int
    cut_at_end: bool  # the export ends at start + days: sessions after it are not in the data
    devices: tuple[str, ...]
    device_probs: np.ndarray
    channels: tuple[str, ...]
    channel_probs: np.ndarray
    hour_probs: np.ndarray  # (K, 24)
    gap_p: np.ndarray  # geometric success probability of the day gap, per intent
    location_share: np.ndarray  # per device
    near_store_mobile: np.ndarray
    near_store_other: np.ndarray
    near_store_mean_km: float
    city_radius_km: float
    dwell_log_mean: np.ndarray
    dwell_log_sd: np.ndarray
    extra_pages_mean: np.ndarray
    page_types: tuple[str, ...]
    page_type_probs: np.ndarray
    returning_first: np.ndarray
    cities: tuple[City, ...]
    city_probs: np.ndarray
    touchpoints: tuple[str, ...]
    logging_policy: np.ndarray  # (n_devices, n_touchpoints)
    conversion: np.ndarray  # (K, n_touchpoints)
    segments: Segments
    interactions: Interactions

    @property
    def extraction_time(self) -> pd.Timestamp:
        """When the data is exported, in each city's local time: the end of the window journeys
        start in."""
        return self.start + pd.Timedelta(days=self.days)

    @property
    def n_intents(self) -> int:
        return len(self.intents)

    @property
    def n_segments(self) -> int:
        return self.segments.n

    # -- the base world tilted per segment: (G, ...) ------------------------------------------
    @cached_property
    def tilted(self) -> dict[str, np.ndarray]:
        """The base world's probability rows tilted per segment, as (G, ...) arrays by name:
        `initial`, `transition`, `device_probs`, `channel_probs`, `page_type_probs`."""
        s = self.segments
        bases = {
            "initial": (self.initial, s.intent_tilt),
            "transition": (self.transition, s.intent_tilt),
            "device_probs": (self.device_probs, s.device_tilt),
            "channel_probs": (self.channel_probs, s.channel_tilt),
            "page_type_probs": (self.page_type_probs, s.page_tilt),
        }
        return {
            name: np.stack([_tilt(base, tilt) for tilt in tilts])
            for name, (base, tilts) in bases.items()
        }

    @cached_property
    def gap_p_g(self) -> np.ndarray:
        """(G, K) geometric success probability: the mean gap (1 - p) / p times the scale."""
        scale = self.segments.gap_scale[:, None]
        mean = (1 - self.gap_p) / self.gap_p
        return np.where(scale == 1, self.gap_p[None, :], 1 / (1 + mean[None, :] * scale))

    @cached_property
    def dwell_log_mean_g(self) -> np.ndarray:
        """(G, K) log-mean dwell of a one-page session, shifted per segment."""
        return self.dwell_log_mean[None, :] + self.segments.dwell_shift

    @cached_property
    def extra_pages_mean_g(self) -> np.ndarray:
        """(G, K) mean extra page views, scaled per segment."""
        return self.extra_pages_mean[None, :] * self.segments.pages_scale

    def near_store_p(self, mobile: np.ndarray, hour: np.ndarray) -> np.ndarray:
        """(n, G, K) chance a located session is at a store, by device class and local hour."""
        it = self.interactions
        base = np.where(
            mobile[:, None], self.near_store_mobile[None, :], self.near_store_other[None, :]
        )
        base = base * np.where(it.store_open(hour)[:, None], 1.0, it.near_store_closed[None, :])
        return base[:, None, :] * self.segments.near_store_scale[None, :, None]

    def returning_p(self, channel: np.ndarray) -> np.ndarray:
        """(n, G, K) chance a journey's first session is a returning customer, by channel."""
        odds = (
            self.segments.returning_odds[None, :, None]
            * self.interactions.returning_channel_odds[:, channel].T[:, None, :]
        )
        return _scale_odds(self.returning_first[None, None, :], odds)

    def mean_sessions_per_journey(self) -> float:
        """Expected sessions per journey of the chain (cut at max_sessions, not at the export)."""
        alive = (
            self.segments.probs[:, None] * self.tilted["initial"]
        )  # P(a session t, segment, intent)
        step = self.tilted["transition"] * (1 - self.end_prob)[None, :, None]
        total = 0.0
        for _ in range(self.max_sessions):
            total += float(alive.sum())
            alive = np.einsum("gk,gkj->gj", alive, step)
        return total

    @classmethod
    def from_config(cls, cfg: Mapping) -> GeneratorParams:
        """Build and validate; a bad value raises `GeneratorConfigError` naming its key."""
        v = _Validator(cfg)
        k = v.intents
        hours = np.arange(24)
        peak = v.per_intent("hour_peak", lo=0, hi=23)
        conc = v.per_intent("hour_concentration", lo=0)
        hour_logits = conc[:, None] * np.cos(2 * np.pi * (hours[None, :] - peak[:, None]) / 24)
        hour_probs = np.exp(hour_logits - logsumexp(hour_logits, axis=1, keepdims=True))
        gap_mean = v.per_intent("gap_mean_days", lo=0)
        devices, channels = v.names("devices"), v.names("channels")
        page_types = v.names("page_types")
        touchpoints = v.names("touchpoints")
        cities = v.cities()
        policy = np.stack(
            [
                v.probs(f"logging_policy.{d}", v.get("logging_policy", d), len(touchpoints))
                for d in devices
            ]
        )
        return cls(
            intents=k,
            initial=v.probs("initial", v.get("initial"), len(k)),
            transition=v.probs("transition", v.get("transition"), len(k), rows=k),
            end_prob=v.per_intent("end_prob", lo=0, hi=1),
            max_sessions=v.positive_int("max_sessions"),
            start=pd.Timestamp(v.get("start_date")),
            days=v.positive_int("days"),
            cut_at_end=bool(cfg.get("cut_at_end", True)),
            devices=devices,
            device_probs=v.probs("device_probs", v.get("device_probs"), len(devices), rows=k),
            channels=channels,
            channel_probs=v.probs("channel_probs", v.get("channel_probs"), len(channels), rows=k),
            hour_probs=hour_probs,
            gap_p=1.0 / (1.0 + gap_mean),
            location_share=np.asarray(
                [v.unit(f"location_share.{d}", v.get("location_share", d)) for d in devices]
            ),
            near_store_mobile=v.per_intent("near_store_mobile", lo=0, hi=1),
            near_store_other=v.per_intent("near_store_other", lo=0, hi=1),
            near_store_mean_km=v.positive("near_store_mean_km"),
            city_radius_km=v.positive("city_radius_km"),
            dwell_log_mean=v.per_intent("dwell_log_mean"),
            dwell_log_sd=v.per_intent("dwell_log_sd", lo=0, open_lo=True),
            extra_pages_mean=v.per_intent("extra_pages_mean", lo=0, open_lo=True),
            page_types=page_types,
            page_type_probs=v.probs(
                "page_type_probs", v.get("page_type_probs"), len(page_types), rows=k
            ),
            returning_first=v.per_intent("returning_first", lo=0, hi=1),
            cities=cities,
            city_probs=v.probs("city_probs", v.get("city_probs"), len(cities)),
            touchpoints=touchpoints,
            logging_policy=policy,
            conversion=v.matrix("conversion", v.get("conversion"), len(touchpoints), lo=0, hi=1),
            segments=v.segments(devices, channels, page_types),
            interactions=v.interactions(devices, channels, page_types),
        )._checked()

    def _checked(self) -> GeneratorParams:
        """Checks across keys: every at-a-store chance, however scaled, is a probability."""
        for mobile in (True, False):
            for hour in range(24):
                p = self.near_store_p(np.array([mobile]), np.array([hour]))
                if p.max() > 1:
                    g, k = np.unravel_index(p[0].argmax(), p[0].shape)
                    raise GeneratorConfigError(
                        f"generator.near_store_{'mobile' if mobile else 'other'} times "
                        f"near_store_closed and segments[{g}].near_store_scale gives "
                        f"{p.max():.3f} for {self.segments.names[g]}/{self.intents[k]} at "
                        f"hour {hour}: must be <= 1"
                    )
        return self

    def stores_frame(self) -> pd.DataFrame:
        rows = [
            {"store_id": f"{c.name}-{i + 1}", "region": c.name, "latitude": s[0], "longitude": s[1]}
            for c in self.cities
            for i, s in enumerate(c.stores)
        ]
        return pd.DataFrame(rows)


def _tilt(probs: np.ndarray, tilt: np.ndarray) -> np.ndarray:
    """Rows of `probs` times `tilt`, renormalised; untouched (bit for bit) when all ones."""
    if np.all(tilt == 1):
        return probs
    w = probs * tilt
    return w / w.sum(axis=-1, keepdims=True)


def _scale_odds(p: np.ndarray, odds: np.ndarray) -> np.ndarray:
    """The probability whose odds are `odds` times those of `p` (exactly `p` where odds = 1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = odds * p / (1 - p + odds * p)
    return np.where(odds == 1, p, np.broadcast_to(scaled, np.broadcast_shapes(p.shape, odds.shape)))


class _Validator:
    """Reads the `generator` config, raising `GeneratorConfigError` naming the key at fault."""

    def __init__(self, cfg: Mapping):
        self.cfg = cfg
        self.intents = self.names("intents")

    def fail(self, key: str, message: str) -> GeneratorConfigError:
        return GeneratorConfigError(f"generator.{key} {message}")

    def get(self, *path: str | int):
        node = self.cfg
        for i, part in enumerate(path):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                key = ".".join(map(str, path[: i + 1]))
                raise self.fail(key, "is missing") from None
        return node

    def names(self, key: str) -> tuple[str, ...]:
        values = tuple(str(x) for x in (self.get(key) or ()))
        if not values or len(set(values)) != len(values):
            raise self.fail(key, f"needs at least one name and no repeats, got {list(values)}")
        return values

    def array(self, key: str, value, shape: tuple[int, ...], what: str) -> np.ndarray:
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise self.fail(key, f"needs {what}, got {value!r}") from None
        if arr.shape != shape:
            raise self.fail(key, f"needs {what} (shape {shape}), got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise self.fail(key, f"needs finite numbers, got {value!r}")
        return arr

    def bounded(self, key: str, arr: np.ndarray, lo=None, hi=None, open_lo=False) -> np.ndarray:
        low = lo is not None and (np.any(arr <= lo) if open_lo else np.any(arr < lo))
        if low or (hi is not None and np.any(arr > hi)):
            rng = f"{'(' if open_lo else '['}{'-inf' if lo is None else lo}, "
            rng += f"{'inf' if hi is None else hi}]"
            raise self.fail(key, f"values must be in {rng}, got {arr.tolist()}")
        return arr

    def probs(self, key: str, value, m: int, rows: Sequence[str] | None = None) -> np.ndarray:
        """A probability vector over `m` outcomes, or one per row name."""
        shape = (m,) if rows is None else (len(rows), m)
        what = f"{m} probabilities" if rows is None else f"{len(rows)} rows of {m} probabilities"
        arr = self.bounded(key, self.array(key, value, shape, what), lo=0, hi=1)
        sums = arr.sum(axis=-1)
        bad = np.flatnonzero(~np.isclose(np.atleast_1d(sums), 1.0, atol=1e-6))
        if bad.size:
            where = "" if rows is None else f" row {bad[0]} ({rows[bad[0]]})"
            total = np.atleast_1d(sums)[bad[0]]
            raise self.fail(key, f"rows must be probabilities summing to 1:{where} sums to {total}")
        return arr

    def matrix(self, key: str, value, m: int, lo=None, hi=None) -> np.ndarray:
        arr = self.array(key, value, (len(self.intents), m), f"one row of {m} per intent")
        return self.bounded(key, arr, lo, hi)

    def per_intent(self, key: str, lo=None, hi=None, open_lo=False, value=None) -> np.ndarray:
        value = self.get(key) if value is None else value
        what = f"one value per intent ({len(self.intents)})"
        return self.bounded(
            key, self.array(key, value, (len(self.intents),), what), lo, hi, open_lo
        )

    def unit(self, key: str, value) -> float:
        return float(self.bounded(key, self.array(key, value, (), "a number"), lo=0, hi=1))

    def positive(self, key: str) -> float:
        arr = self.array(key, self.get(key), (), "a number")
        return float(self.bounded(key, arr, lo=0, open_lo=True))

    def positive_int(self, key: str) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, f"must be a positive whole number, got {value!r}")
        return value

    def by_name(self, key: str, value, names: Sequence[str], what: str) -> np.ndarray:
        """Positive multipliers given by name ({name: x}); names not given multiply by 1."""
        out = np.ones(len(names))
        for name, x in dict(value or {}).items():
            if name not in names:
                raise self.fail(key, f"names an unknown {what} {name!r} (known: {list(names)})")
            out[names.index(name)] = self.bounded(
                f"{key}.{name}", self.array(f"{key}.{name}", x, (), "a number"), 0, None, True
            )
        return out

    def cities(self) -> tuple[City, ...]:
        cities = []
        for i, c in enumerate(self.get("cities") or ()):
            key = f"cities[{i}]"
            stores = np.asarray(c.get("stores") or [], dtype=float).reshape(-1, 2)
            if not len(stores):
                raise self.fail(f"{key}.stores", "needs at least one [lat, lon] store")
            cities.append(
                City(
                    str(c["name"]),
                    float(c["lat"]),
                    float(c["lon"]),
                    int(c["utc_offset_min"]),
                    stores,
                )
            )
        if not cities:
            raise self.fail("cities", "needs at least one city")
        return tuple(cities)

    def segments(self, devices, channels, page_types) -> Segments:
        cfg = list(self.cfg.get("segments") or [])
        if not cfg:  # one segment, nothing tilted: the world without segments
            cfg = [{"name": "all", "share": 1.0}]
        rows: dict[str, list] = {name: [] for name in _SEGMENT_FIELDS}
        for i, seg in enumerate(cfg):
            key = f"segments[{i}]"
            unknown = set(seg) - {"name", "share", *_SEGMENT_FIELDS}
            if unknown:
                raise self.fail(key, f"has unknown keys {sorted(unknown)}")
            for name, (what, names) in {
                "intent_tilt": ("intent", self.intents),
                "device_tilt": ("device", devices),
                "channel_tilt": ("channel", channels),
                "page_tilt": ("page type", page_types),
            }.items():
                rows[name].append(self.by_name(f"{key}.{name}", seg.get(name), names, what))
            for name in ("gap_scale", "near_store_scale", "returning_odds"):
                arr = self.array(f"{key}.{name}", seg.get(name, 1.0), (), "a number")
                rows[name].append(float(self.bounded(f"{key}.{name}", arr, 0, None, True)))
            for name, identity, bounds in (
                ("dwell_shift", 0.0, {}),
                ("pages_scale", 1.0, {"lo": 0, "open_lo": True}),
            ):
                value = seg.get(name)
                rows[name].append(
                    np.full(len(self.intents), identity)
                    if value is None
                    else self.per_intent(f"{key}.{name}", value=value, **bounds)
                )
        names = tuple(str(seg.get("name", "")) for seg in cfg)
        if "" in names or len(set(names)) != len(names):
            raise self.fail("segments", f"need distinct non-empty names, got {list(names)}")
        shares = [seg.get("share") for seg in cfg]
        return Segments(
            names=names,
            probs=self.probs("segments.*.share", shares, len(cfg)),
            **{name: np.asarray(values, dtype=float) for name, values in rows.items()},
        )

    def interactions(self, devices, channels, page_types) -> Interactions:
        cfg, k = self.cfg, len(self.intents)
        hours = self.array("store_hours", cfg.get("store_hours") or [0, 24], (2,), "[open, close]")
        if not (0 <= hours[0] < hours[1] <= 24) or np.any(hours != np.round(hours)):
            raise self.fail(
                "store_hours", f"needs whole hours 0 <= open < close <= 24, got {hours}"
            )
        odds = np.ones((k, len(channels)))
        for intent, by_channel in dict(cfg.get("returning_channel_odds") or {}).items():
            key = f"returning_channel_odds.{intent}"
            if intent not in self.intents:
                raise self.fail(key, f"is not an intent (known: {list(self.intents)})")
            odds[self.intents.index(intent)] = self.by_name(key, by_channel, channels, "channel")

        def per_name(key: str, names: Sequence[str], what: str) -> np.ndarray:
            out = np.zeros((k, len(names)))
            for name, shifts in dict(cfg.get(key) or {}).items():
                if name not in names:
                    raise self.fail(key, f"names an unknown {what} {name!r} (known: {list(names)})")
                out[:, names.index(name)] = self.per_intent(f"{key}.{name}", value=shifts)
            return out

        def optional(key: str, default: float, **bounds) -> np.ndarray:
            if cfg.get(key) is None:
                return np.full(k, default)
            return self.per_intent(key, **bounds)

        return Interactions(
            store_hours=(int(hours[0]), int(hours[1])),
            near_store_closed=optional("near_store_closed", 1.0, lo=0),
            returning_channel_odds=odds,
            dwell_device_shift=per_name("dwell_device_shift", devices, "device"),
            dwell_page_slope=optional("dwell_page_slope", 0.0),
            dwell_page_shift=per_name("dwell_page_shift", page_types, "page type"),
        )


_SEGMENT_FIELDS = (
    "intent_tilt",
    "device_tilt",
    "channel_tilt",
    "page_tilt",
    "gap_scale",
    "near_store_scale",
    "returning_odds",
    "dwell_shift",
    "pages_scale",
)


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a (n, m) probability matrix."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), probs.shape[1] - 1)


def simulate(
    params: GeneratorParams,
    n_journeys: int,
    rng: np.random.Generator,
    first_journey: int = 0,
    with_segment: bool = False,
) -> pd.DataFrame:
    """Simulate `n_journeys` journeys; one row per session, ordered by journey then time.

    `with_segment` adds the hidden `segment` column (for analysis: a scorer never sees it).
    """
    p = params
    city = _sample_rows(rng, np.broadcast_to(p.city_probs, (n_journeys, len(p.cities))))
    start_day = rng.integers(0, p.days, size=n_journeys)
    journey_idx = np.arange(n_journeys)
    if p.n_segments > 1:
        segment = _sample_rows(rng, np.broadcast_to(p.segments.probs, (n_journeys, p.n_segments)))
    else:  # no draw: one segment leaves the random stream as it was before segments existed
        segment = np.zeros(n_journeys, dtype=np.int64)

    active = np.ones(n_journeys, dtype=bool)
    z = _sample_rows(rng, p.tilted["initial"][segment])
    day = start_day.astype(np.int64)
    prev_hour = np.full(n_journeys, -1)
    parts = []
    for t in range(p.max_sessions):
        idx = journey_idx[active]
        if idx.size == 0:
            break
        zt, gt = z[idx], segment[idx]
        n = idx.size
        # day gap and local hour; a same-day session must start in a later hour than the
        # previous one, so (gap, hour) pairs that break time order are drawn again
        gap_p = p.gap_p_g[gt, zt]
        if t == 0:
            gap = np.zeros(n, dtype=np.int64)
            hour = _sample_rows(rng, p.hour_probs[zt])
        else:
            gap = rng.geometric(gap_p) - 1
            hour = _sample_rows(rng, p.hour_probs[zt])
            bad = (gap == 0) & (hour <= prev_hour[idx])
            while bad.any():
                gap[bad] = rng.geometric(gap_p[bad]) - 1
                hour[bad] = _sample_rows(rng, p.hour_probs[zt[bad]])
                bad = (gap == 0) & (hour <= prev_hour[idx])
        day[idx] += gap
        prev_hour[idx] = hour
        minute = rng.integers(0, 60, size=n)
        second = rng.integers(0, 60, size=n)

        device = _sample_rows(rng, p.tilted["device_probs"][gt, zt])
        channel = _sample_rows(rng, p.tilted["channel_probs"][gt, zt])
        has_loc = rng.random(n) < p.location_share[device]
        is_mobile = (
            device == p.devices.index("mobile") if "mobile" in p.devices else np.zeros(n, bool)
        )
        near_p = p.near_store_p(is_mobile, hour)[np.arange(n), gt, zt]
        near = has_loc & (rng.random(n) < near_p)
        lat, lon = _locations(p, rng, city[idx], has_loc, near)

        # the dwell's noise is drawn here (where it always was); its mean needs the pages
        dwell_noise = rng.standard_normal(n)
        pages = 1 + rng.poisson(p.extra_pages_mean_g[gt, zt])
        page_counts = rng.multinomial(pages, p.tilted["page_type_probs"][gt, zt])
        mu = p.dwell_log_mean_g[gt, zt] + p.interactions.dwell_shift(device, pages, page_counts, zt)
        dwell = np.exp(mu + p.dwell_log_sd[zt] * dwell_noise)
        if t == 0:
            ret_p = p.returning_p(channel)[np.arange(n), gt, zt]
            returning = rng.random(n) < ret_p
        else:
            returning = np.ones(n, dtype=bool)

        touch = _sample_rows(rng, p.logging_policy[device])
        propensity = p.logging_policy[device, touch]
        converted = rng.random(n) < p.conversion[zt, touch]

        parts.append(
            dict(
                journey=idx,
                t=np.full(n, t),
                z=zt,
                segment=gt,
                day=day[idx].copy(),
                hour=hour,
                minute=minute,
                second=second,
                city=city[idx],
                device=device,
                channel=channel,
                lat=lat,
                lon=lon,
                dwell=dwell,
                pages=pages,
                page_counts=page_counts,
                returning=returning,
                touch=touch,
                propensity=propensity,
                converted=converted,
            )
        )
        # continue the journey and draw the next intent
        cont = rng.random(n) >= p.end_prob[zt]
        active[idx[~cont]] = False
        z[idx] = _sample_rows(rng, p.tilted["transition"][gt, zt])
    return _sessions_frame(p, parts, first_journey, with_segment)


def _locations(
    p: GeneratorParams,
    rng: np.random.Generator,
    c_idx: np.ndarray,
    has_loc: np.ndarray,
    near: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates: around one of the home city's stores when `near`, else uniform in the city."""
    n = len(c_idx)
    lat = np.full(n, np.nan)
    lon = np.full(n, np.nan)
    for ci, c in enumerate(p.cities):
        sel_near = near & (c_idx == ci)
        if sel_near.any():
            s = c.stores[rng.integers(0, len(c.stores), size=sel_near.sum())]
            d = rng.exponential(p.near_store_mean_km, size=len(s))
            theta = rng.uniform(0, 2 * np.pi, size=len(s))
            lat[sel_near], lon[sel_near] = geo.offset_km(
                s[:, 0], s[:, 1], d * np.sin(theta), d * np.cos(theta)
            )
        sel_far = has_loc & ~near & (c_idx == ci)
        if sel_far.any():
            m = sel_far.sum()
            r = p.city_radius_km * np.sqrt(rng.random(m))
            theta = rng.uniform(0, 2 * np.pi, size=m)
            lat[sel_far], lon[sel_far] = geo.offset_km(
                np.full(m, c.lat), np.full(m, c.lon), r * np.sin(theta), r * np.cos(theta)
            )
    return lat, lon


def _sessions_frame(
    p: GeneratorParams, parts: list[dict], first_journey: int, with_segment: bool
) -> pd.DataFrame:
    """The simulated sessions in the session contract's layout, cut at the extraction time."""
    cols = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    order = np.lexsort((cols["t"], cols["journey"]))
    cols = {key: v[order] for key, v in cols.items()}
    offsets = np.array([c.utc_offset_min for c in p.cities])[cols["city"]]
    local = (
        p.start.to_datetime64()
        + cols["day"].astype("timedelta64[D]")
        + cols["hour"].astype("timedelta64[h]")
        + cols["minute"].astype("timedelta64[m]")
        + cols["second"].astype("timedelta64[s]")
    )
    utc = pd.to_datetime(local - offsets.astype("timedelta64[m]")).tz_localize("UTC")
    if p.cut_at_end:
        # an export taken at the end of the window (each city's midnight): journeys still open
        # then are cut there, and every journey keeps at least its first session
        kept = local < p.extraction_time.to_datetime64()
        cols = {key: v[kept] for key, v in cols.items()}
        offsets, utc = offsets[kept], utc[kept]
    jid = cols["journey"] + first_journey
    frame = {
        "session_id": [f"s{j:09d}-{t:02d}" for j, t in zip(jid, cols["t"], strict=True)],
        "journey_id": [f"j{j:09d}" for j in jid],
        "started_at": utc,
        "utc_offset_min": offsets.astype(np.int64),
        "device": np.asarray(p.devices, dtype=object)[cols["device"]],
        "channel": np.asarray(p.channels, dtype=object)[cols["channel"]],
        "latitude": cols["lat"],
        "longitude": cols["lon"],
        "region": np.asarray([c.name for c in p.cities], dtype=object)[cols["city"]],
        "dwell_time_s": np.round(cols["dwell"], 1),
        "page_views": cols["pages"].astype(np.int64),
    }
    for j, name in enumerate(p.page_types):
        frame[f"pages_{name}"] = cols["page_counts"][:, j].astype(np.int64)
    frame["returning_visitor"] = cols["returning"]
    frame["touchpoint"] = np.asarray(p.touchpoints, dtype=object)[cols["touch"]]
    frame["touchpoint_propensity"] = cols["propensity"]
    frame["converted"] = cols["converted"]
    frame["intent"] = np.asarray(p.intents, dtype=object)[cols["z"]]
    if with_segment:
        frame["segment"] = np.asarray(p.segments.names, dtype=object)[cols["segment"]]
    df = pd.DataFrame(frame)
    for col in ("device", "channel", "region", "touchpoint", "intent", "segment"):
        if col in df:
            df[col] = df[col].astype(str)
    return df


def emission_loglik(df: pd.DataFrame, params: GeneratorParams) -> np.ndarray:
    """log p(observables of each session | segment, intent, earlier sessions), up to terms that
    depend on neither.

    `df` holds generated sessions ordered by journey then time (as `simulate` returns them).
    Returns an (n_sessions, n_segments, n_intents) array. Every term the sampler draws from a
    distribution that depends on the hidden state is here, conditioned on the same observables
    the sampler conditioned on.
    """
    p = params
    n = len(df)
    journey = df["journey_id"].to_numpy()
    first = np.ones(n, dtype=bool)
    first[1:] = journey[1:] != journey[:-1]

    device = pd.Categorical(df["device"], categories=p.devices).codes
    channel = pd.Categorical(df["channel"], categories=p.channels).codes
    if (device < 0).any() or (channel < 0).any():
        raise ValueError("sessions hold a device or channel the generator does not know")
    # (G, K, n) -> (n, G, K)
    ll = np.log(p.tilted["device_probs"][:, :, device]).transpose(2, 0, 1) + np.log(
        p.tilted["channel_probs"][:, :, channel]
    ).transpose(2, 0, 1)

    utc_ns, _ = geo.utc_nanoseconds(df["started_at"])
    offset = df["utc_offset_min"].to_numpy(dtype=float)
    hour = geo.local_hour(utc_ns, offset)
    ll += _time_loglik(p, utc_ns, offset, hour, first)
    ll += _location_loglik(p, df, hour)

    # dwell time: log-normal, its log-mean shifted by the device and the pages of the session
    pages = df["page_views"].to_numpy(dtype=float)
    counts = np.stack([df[f"pages_{t}"].to_numpy(dtype=float) for t in p.page_types], axis=1)
    logd = np.log(np.maximum(df["dwell_time_s"].to_numpy(dtype=float), 1e-3))
    mu = (
        p.dwell_log_mean_g[None, :, :]
        + p.interactions.dwell_shift(device, pages, counts, None)[:, None, :]
    )  # (n, G, K)
    sd = p.dwell_log_sd[None, None, :]
    ll += -np.log(sd) - 0.5 * ((logd[:, None, None] - mu) / sd) ** 2

    # pages: 1 + Poisson count, then a multinomial page-type mix
    extra = (pages - 1)[:, None, None]
    lam = p.extra_pages_mean_g[None, :, :]
    ll += extra * np.log(lam) - lam - gammaln(extra + 1)
    ll += np.einsum("np,gkp->ngk", counts, np.log(p.tilted["page_type_probs"]))

    # returning visitor: informative on the first session of a journey only
    ret = df["returning_visitor"].to_numpy(dtype=bool)
    rp = p.returning_p(channel[first])
    ll[first] += np.where(ret[first, None, None], np.log(rp), np.log1p(-rp))
    return ll


def _time_loglik(
    p: GeneratorParams, utc_ns: np.ndarray, offset: np.ndarray, hour: np.ndarray, first
) -> np.ndarray:
    """(n, G, K): the local hour and, for later sessions, the whole-day gap since the previous
    one (geometric, renormalised for the same-day pairs that were drawn again)."""
    n = len(hour)
    ll = np.zeros((n, p.n_segments, p.n_intents))
    ll += np.log(p.hour_probs[:, hour].T)[:, None, :]
    # whole local days from the start date to the session's local midnight
    day = (geo.local_day(utc_ns, offset) * geo.NS_PER_DAY - p.start.value) // geo.NS_PER_DAY
    later = ~first
    if later.any():
        g = (day[1:] - day[:-1])[later[1:]]
        ph = hour[:-1][later[1:]]
        gp = p.gap_p_g[None, :, :]
        log_geom = np.log(gp) + g[:, None, None] * np.log1p(-gp)
        cdf_prev = np.cumsum(p.hour_probs, axis=1)[:, ph].T[:, None, :]  # P(hour <= prev hour)
        ll[later] += log_geom - np.log(1.0 - gp * cdf_prev)
    return ll


def _location_loglik(p: GeneratorParams, df: pd.DataFrame, hour: np.ndarray) -> np.ndarray:
    """(n, G, K): a mixture of "at a store" and "elsewhere in the city", its weight by segment,
    intent, device class and whether stores are open at the local hour."""
    n = len(df)
    ll = np.zeros((n, p.n_segments, p.n_intents))
    lat = df["latitude"].to_numpy(dtype=float)
    lon = df["longitude"].to_numpy(dtype=float)
    located = ~np.isnan(lat)
    if not located.any():
        return ll
    region = df["region"].to_numpy()
    is_mobile = df["device"].to_numpy() == "mobile"
    near_p = p.near_store_p(is_mobile[located], hour[located])
    dens_store = np.zeros(n)
    dens_city = np.zeros(n)
    m = p.near_store_mean_km
    for c in p.cities:
        sel = located & (region == c.name)
        if not sel.any():
            continue
        d = np.stack([geo.planar_km(lat[sel], lon[sel], s[0], s[1]) for s in c.stores], axis=1)
        d = np.maximum(d, 1e-9)
        # exponential distance, uniform bearing: density per km^2 is f(d) / (2 pi d); the
        # cosine turns km^2 around each reference point into the same degree^2 measure
        jac = np.cos(np.radians(c.stores[:, 0]))[None, :]
        dens_store[sel] = (np.exp(-d / m) / m / (2 * np.pi * d) * jac).mean(axis=1)
        r = geo.planar_km(lat[sel], lon[sel], c.lat, c.lon)
        inside = r <= p.city_radius_km
        dens_city[sel] = np.where(
            inside, np.cos(np.radians(c.lat)) / (np.pi * p.city_radius_km**2), 0.0
        )
    ds, dc = dens_store[located, None, None], dens_city[located, None, None]
    ll[located] = np.log(np.maximum(near_p * ds + (1 - near_p) * dc, 1e-300))
    return ll


def joint_posterior(df: pd.DataFrame, params: GeneratorParams) -> np.ndarray:
    """Exact p(segment, intent_t | observables of sessions 1..t of the journey), (n, G, K).

    `df` is ordered by journey then time, as `simulate` returns it. The segment stays put along
    a journey, so the chain over (segment, intent) moves within a segment only.
    """
    p = params
    ll = emission_loglik(df, p)
    journey = df["journey_id"].to_numpy()
    first = np.ones(len(df), dtype=bool)
    first[1:] = journey[1:] != journey[:-1]
    # position of each session within its journey
    starts = np.flatnonzero(first)
    pos = np.arange(len(df)) - np.repeat(starts, np.diff(np.append(starts, len(df))))
    # a later session means the journey continued after the previous one, then moved on
    log_step = np.log(p.tilted["transition"] * (1 - p.end_prob)[None, :, None])  # (G, K, K)
    post = np.empty_like(ll)
    prior0 = (np.log(p.segments.probs)[:, None] + np.log(p.tilted["initial"]))[None, :, :]
    for t in range(int(pos.max()) + 1 if len(df) else 0):
        rows = np.flatnonzero(pos == t)
        if t == 0:
            log_prior = prior0
        else:
            prev = np.log(np.maximum(post[rows - 1], 1e-300))
            log_prior = logsumexp(prev[:, :, :, None] + log_step[None], axis=2)
        a = log_prior + ll[rows]
        post[rows] = np.exp(a - logsumexp(a, axis=(1, 2), keepdims=True))
    return post


def forward_filter(df: pd.DataFrame, params: GeneratorParams) -> np.ndarray:
    """Exact p(intent_t | observables of sessions 1..t of the journey) for every session: the
    joint posterior with the segment summed out.

    `df` is ordered by journey then time, as `simulate` returns it.
    """
    return joint_posterior(df, params).sum(axis=1)


def generate_chunks(
    params: GeneratorParams,
    n_journeys: int,
    chunk_journeys: int,
    seed: int,
    posterior: bool = True,
) -> Iterator[pd.DataFrame]:
    """Yield session frames of at most `chunk_journeys` journeys each; journeys never span chunks."""
    for chunk in range(n_chunks(n_journeys, chunk_journeys)):
        yield generate_chunk(params, n_journeys, chunk_journeys, seed, chunk, posterior)


def n_chunks(n_journeys: int, chunk_journeys: int) -> int:
    """How many chunks of at most `chunk_journeys` journeys make `n_journeys` journeys."""
    if n_journeys < 1:
        raise ValueError(f"n_journeys must be a positive number, got {n_journeys}")
    if chunk_journeys < 1:
        raise ValueError(f"chunk_journeys must be a positive number, got {chunk_journeys}")
    return -(-n_journeys // chunk_journeys)


def generate_chunk(
    params: GeneratorParams,
    n_journeys: int,
    chunk_journeys: int,
    seed: int,
    chunk: int,
    posterior: bool = True,
) -> pd.DataFrame:
    """Chunk number `chunk` of `generate_chunks`, on its own.

    Its random stream is derived from `(seed, chunk)` alone, so a chunk comes out the same
    whichever process simulates it and in whatever order: chunks can be generated in parallel.
    """
    if not 0 <= chunk < n_chunks(n_journeys, chunk_journeys):
        raise ValueError(
            f"chunk must be in [0, {n_chunks(n_journeys, chunk_journeys)}) for {n_journeys} "
            f"journeys in chunks of {chunk_journeys}, got {chunk}"
        )
    first = chunk * chunk_journeys
    size = min(chunk_journeys, n_journeys - first)
    rng = np.random.default_rng([seed, chunk])
    df = simulate(params, size, rng, first_journey=first)
    if posterior:
        post = forward_filter(df, params)
        for j, name in enumerate(params.intents):
            df[f"bayes_p_{name}"] = post[:, j]
    return df
