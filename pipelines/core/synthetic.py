"""Synthetic customer journeys and their Bayes-optimal intent posterior.

A journey (macro-moment) is a run of sessions (micro-moments). Each session's hidden intent
follows a Markov chain over the journey; everything observable about a session is drawn from
distributions that depend on its own intent only (given journey context such as the home city
and the device). Because the generator knows its parameters, forward filtering gives the exact
posterior over intents given everything observable up to and including each session: no model
can do better on average, so it is the yardstick of every benchmark.

The posterior conditions on the session context (device, channel, local time, the gap since the
previous session, location, dwell time, pages, returning visitor). It does not condition on the
touchpoint shown or on conversion: those are outcomes, not context a scorer has.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import gammaln, logsumexp

from pipelines.core import geo


@dataclass(frozen=True)
class City:
    name: str
    lat: float
    lon: float
    utc_offset_min: int
    stores: np.ndarray  # (n_stores, 2) lat, lon


@dataclass(frozen=True)
class GeneratorParams:
    """The generator's parameters as arrays; built from the `generator` config by `from_config`."""

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

    @property
    def extraction_time(self) -> pd.Timestamp:
        """When the data is exported, in each city's local time: the end of the window journeys
        start in."""
        return self.start + pd.Timedelta(days=self.days)

    @property
    def n_intents(self) -> int:
        return len(self.intents)

    @classmethod
    def from_config(cls, cfg: Mapping) -> GeneratorParams:
        k = len(cfg["intents"])

        def probs(name: str, rows: int | None = None) -> np.ndarray:
            arr = np.asarray(cfg[name], dtype=float)
            if rows is not None and arr.shape[0] != rows:
                raise ValueError(
                    f"generator.{name} needs {rows} rows (one per intent), got {arr.shape[0]}"
                )
            sums = arr.sum(axis=-1)
            if np.any(arr < 0) or not np.allclose(sums, 1.0, atol=1e-6):
                raise ValueError(
                    f"generator.{name} rows must be probabilities summing to 1, got sums {sums}"
                )
            return arr

        def per_intent(name: str) -> np.ndarray:
            arr = np.asarray(cfg[name], dtype=float)
            if arr.shape != (k,):
                raise ValueError(
                    f"generator.{name} needs one value per intent ({k}), got {list(arr)}"
                )
            return arr

        hours = np.arange(24)
        peak, conc = per_intent("hour_peak"), per_intent("hour_concentration")
        hour_logits = conc[:, None] * np.cos(2 * np.pi * (hours[None, :] - peak[:, None]) / 24)
        hour_probs = np.exp(hour_logits - logsumexp(hour_logits, axis=1, keepdims=True))
        gap_mean = per_intent("gap_mean_days")
        if np.any(gap_mean < 0):
            raise ValueError(f"generator.gap_mean_days must be >= 0, got {list(gap_mean)}")
        devices = tuple(cfg["devices"])
        cities = tuple(
            City(
                name=c["name"],
                lat=float(c["lat"]),
                lon=float(c["lon"]),
                utc_offset_min=int(c["utc_offset_min"]),
                stores=np.asarray(c["stores"], dtype=float).reshape(-1, 2),
            )
            for c in cfg["cities"]
        )
        touchpoints = tuple(cfg["touchpoints"])
        policy = np.asarray([cfg["logging_policy"][d] for d in devices], dtype=float)
        if not np.allclose(policy.sum(axis=1), 1.0):
            raise ValueError("generator.logging_policy rows must sum to 1 for every device")
        return cls(
            intents=tuple(cfg["intents"]),
            initial=probs("initial"),
            transition=probs("transition", k),
            end_prob=per_intent("end_prob"),
            max_sessions=int(cfg["max_sessions"]),
            start=pd.Timestamp(cfg["start_date"]),
            days=int(cfg["days"]),
            cut_at_end=bool(cfg["cut_at_end"]),
            devices=devices,
            device_probs=probs("device_probs", k),
            channels=tuple(cfg["channels"]),
            channel_probs=probs("channel_probs", k),
            hour_probs=hour_probs,
            gap_p=1.0 / (1.0 + gap_mean),
            location_share=np.asarray([cfg["location_share"][d] for d in devices], dtype=float),
            near_store_mobile=per_intent("near_store_mobile"),
            near_store_other=per_intent("near_store_other"),
            near_store_mean_km=float(cfg["near_store_mean_km"]),
            city_radius_km=float(cfg["city_radius_km"]),
            dwell_log_mean=per_intent("dwell_log_mean"),
            dwell_log_sd=per_intent("dwell_log_sd"),
            extra_pages_mean=per_intent("extra_pages_mean"),
            page_types=tuple(cfg["page_types"]),
            page_type_probs=probs("page_type_probs", k),
            returning_first=per_intent("returning_first"),
            cities=cities,
            city_probs=probs("city_probs"),
            touchpoints=touchpoints,
            logging_policy=policy,
            conversion=np.asarray(cfg["conversion"], dtype=float),
        )

    def stores_frame(self) -> pd.DataFrame:
        rows = [
            {"store_id": f"{c.name}-{i + 1}", "region": c.name, "latitude": s[0], "longitude": s[1]}
            for c in self.cities
            for i, s in enumerate(c.stores)
        ]
        return pd.DataFrame(rows)


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a (n, m) probability matrix."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), probs.shape[1] - 1)


def simulate(
    params: GeneratorParams, n_journeys: int, rng: np.random.Generator, first_journey: int = 0
) -> pd.DataFrame:
    """Simulate `n_journeys` journeys; one row per session, ordered by journey then time."""
    p = params
    k = p.n_intents
    city = _sample_rows(rng, np.broadcast_to(p.city_probs, (n_journeys, len(p.cities))))
    start_day = rng.integers(0, p.days, size=n_journeys)
    journey_idx = np.arange(n_journeys)

    active = np.ones(n_journeys, dtype=bool)
    z = _sample_rows(rng, np.broadcast_to(p.initial, (n_journeys, k)))
    day = start_day.astype(np.int64)
    prev_hour = np.full(n_journeys, -1)
    parts = []
    for t in range(p.max_sessions):
        idx = journey_idx[active]
        if idx.size == 0:
            break
        zt = z[idx]
        n = idx.size
        # day gap and local hour; a same-day session must start in a later hour than the
        # previous one, so (gap, hour) pairs that break time order are drawn again
        if t == 0:
            gap = np.zeros(n, dtype=np.int64)
            hour = _sample_rows(rng, p.hour_probs[zt])
        else:
            gap = rng.geometric(p.gap_p[zt]) - 1
            hour = _sample_rows(rng, p.hour_probs[zt])
            bad = (gap == 0) & (hour <= prev_hour[idx])
            while bad.any():
                gap[bad] = rng.geometric(p.gap_p[zt[bad]]) - 1
                hour[bad] = _sample_rows(rng, p.hour_probs[zt[bad]])
                bad = (gap == 0) & (hour <= prev_hour[idx])
        day[idx] += gap
        prev_hour[idx] = hour
        minute = rng.integers(0, 60, size=n)
        second = rng.integers(0, 60, size=n)

        device = _sample_rows(rng, p.device_probs[zt])
        channel = _sample_rows(rng, p.channel_probs[zt])
        has_loc = rng.random(n) < p.location_share[device]
        is_mobile = (
            device == p.devices.index("mobile") if "mobile" in p.devices else np.zeros(n, bool)
        )
        near_p = np.where(is_mobile, p.near_store_mobile[zt], p.near_store_other[zt])
        near = has_loc & (rng.random(n) < near_p)
        lat = np.full(n, np.nan)
        lon = np.full(n, np.nan)
        c_idx = city[idx]
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

        dwell = np.exp(rng.normal(p.dwell_log_mean[zt], p.dwell_log_sd[zt]))
        pages = 1 + rng.poisson(p.extra_pages_mean[zt])
        page_counts = rng.multinomial(pages, p.page_type_probs[zt])
        returning = (rng.random(n) < p.returning_first[zt]) if t == 0 else np.ones(n, dtype=bool)

        touch = _sample_rows(rng, p.logging_policy[device])
        propensity = p.logging_policy[device, touch]
        converted = rng.random(n) < p.conversion[zt, touch]

        parts.append(
            dict(
                journey=idx,
                t=np.full(n, t),
                z=zt,
                day=day[idx].copy(),
                hour=hour,
                minute=minute,
                second=second,
                city=c_idx,
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
        z[idx] = _sample_rows(rng, p.transition[zt])

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
    df = pd.DataFrame(frame)
    for col in ("device", "channel", "region", "touchpoint", "intent"):
        df[col] = df[col].astype(str)
    return df


def emission_loglik(df: pd.DataFrame, params: GeneratorParams) -> np.ndarray:
    """log p(observables of each session | intent) up to terms that do not depend on the intent.

    `df` holds generated sessions ordered by journey then time (as `simulate` returns them).
    Returns an (n_sessions, n_intents) array.
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
    ll = np.log(p.device_probs[:, device].T) + np.log(p.channel_probs[:, channel].T)

    # local time: hour, and for later sessions the whole-day gap since the previous one
    utc_ns, _ = geo.utc_nanoseconds(df["started_at"])
    offset = df["utc_offset_min"].to_numpy(dtype=float)
    hour = geo.local_hour(utc_ns, offset)
    # whole local days from the start date to the session's local midnight
    day = (geo.local_day(utc_ns, offset) * geo.NS_PER_DAY - p.start.value) // geo.NS_PER_DAY
    log_hour = np.log(p.hour_probs[:, hour].T)
    ll += log_hour
    later = ~first
    if later.any():
        gap = day[1:] - day[:-1]
        prev_h = hour[:-1]
        g = gap[later[1:]]
        ph = prev_h[later[1:]]
        gp = p.gap_p[None, :]
        log_geom = np.log(gp) + g[:, None] * np.log1p(-gp)
        # renormalise for the redrawn (same day, not later hour) pairs
        cdf_prev = np.cumsum(p.hour_probs, axis=1)[:, ph].T  # P(hour <= prev hour)
        z_norm = 1.0 - gp * cdf_prev
        ll[later] += log_geom - np.log(z_norm)

    # location: a mixture of "at a store" and "elsewhere in the city", weighted by intent
    lat = df["latitude"].to_numpy(dtype=float)
    lon = df["longitude"].to_numpy(dtype=float)
    located = ~np.isnan(lat)
    if located.any():
        region = df["region"].to_numpy()
        is_mobile = df["device"].to_numpy() == "mobile"
        near_p = np.where(
            is_mobile[:, None], p.near_store_mobile[None, :], p.near_store_other[None, :]
        )
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
        mix = near_p * dens_store[:, None] + (1 - near_p) * dens_city[:, None]
        ll[located] += np.log(np.maximum(mix[located], 1e-300))

    # dwell time: log-normal
    logd = np.log(np.maximum(df["dwell_time_s"].to_numpy(dtype=float), 1e-3))
    mu, sd = p.dwell_log_mean[None, :], p.dwell_log_sd[None, :]
    ll += -np.log(sd) - 0.5 * ((logd[:, None] - mu) / sd) ** 2

    # pages: 1 + Poisson count, then a multinomial page-type mix
    extra = df["page_views"].to_numpy(dtype=float) - 1
    lam = p.extra_pages_mean[None, :]
    ll += extra[:, None] * np.log(lam) - lam - gammaln(extra + 1)[:, None]
    counts = np.stack([df[f"pages_{t}"].to_numpy(dtype=float) for t in p.page_types], axis=1)
    ll += counts @ np.log(p.page_type_probs).T

    # returning visitor: informative on the first session of a journey only
    ret = df["returning_visitor"].to_numpy(dtype=bool)
    rf = p.returning_first[None, :]
    ll[first] += np.where(ret[first, None], np.log(rf), np.log1p(-rf))
    return ll


def forward_filter(df: pd.DataFrame, params: GeneratorParams) -> np.ndarray:
    """Exact p(intent_t | observables of sessions 1..t of the journey) for every session.

    `df` is ordered by journey then time, as `simulate` returns it.
    """
    p = params
    ll = emission_loglik(df, p)
    journey = df["journey_id"].to_numpy()
    first = np.ones(len(df), dtype=bool)
    first[1:] = journey[1:] != journey[:-1]
    # position of each session within its journey
    starts = np.flatnonzero(first)
    pos = np.arange(len(df)) - np.repeat(starts, np.diff(np.append(starts, len(df))))
    log_trans = np.log(p.transition * (1 - p.end_prob)[:, None])
    post = np.empty_like(ll)
    prior0 = np.log(p.initial)[None, :]
    for t in range(int(pos.max()) + 1 if len(df) else 0):
        rows = np.flatnonzero(pos == t)
        if t == 0:
            log_prior = prior0
        else:
            prev = np.log(np.maximum(post[rows - 1], 1e-300))
            log_prior = logsumexp(prev[:, :, None] + log_trans[None, :, :], axis=1)
        a = log_prior + ll[rows]
        post[rows] = np.exp(a - logsumexp(a, axis=1, keepdims=True))
    return post


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
