"""The synthetic journey generator and its Bayes-optimal intent posterior.

The forward filter over (segment, intent) is checked against brute-force enumeration of every
path (the recursion), and its output against the sampler on a large sample (calibration of the
intent and of the segment, overall and conditional on observable features, including the
combinations the interactions are about): together they show `emission_loglik` agrees with
`simulate`. The default world has segments and interactions; `generator=simple` (no segments,
no interactions) is checked to be the world before segments existed, session for session.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import pipelines.config
from pipelines.config.schema import register_configs, validate_generator
from pipelines.core.geo import planar_km
from pipelines.core.synthetic import (
    GeneratorConfigError,
    GeneratorParams,
    emission_loglik,
    forward_filter,
    generate_chunks,
    joint_posterior,
    simulate,
)

# enough sessions (about 100k) for sharp calibration checks, still about a second to generate
LARGE_JOURNEYS = 35_000  # about 100k sessions once the export is cut at the extraction time
# statistical checks allow this many (journey-clustered) standard errors
N_SE = 4.5


def _config(name: str = "default") -> dict:
    path = Path(pipelines.config.CONF_DIR) / "generator" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path))


@pytest.fixture(scope="module")
def params() -> GeneratorParams:
    return GeneratorParams.from_config(_config())


@pytest.fixture(scope="module")
def large(params):
    """About 100k sessions with the true intent index `z` and the Bayes posterior (the hidden
    `segment` column is there too)."""
    df = simulate(params, LARGE_JOURNEYS, np.random.default_rng(20260901), with_segment=True)
    z = pd.Categorical(df["intent"], categories=params.intents).codes.astype(int)
    assert (z >= 0).all()
    post = forward_filter(df, params)
    return df, z, post


def _journey_codes(df: pd.DataFrame) -> np.ndarray:
    return pd.factorize(df["journey_id"])[0]


def _clustered_se(values: np.ndarray, clusters: np.ndarray) -> float:
    """Standard error of the mean of `values`, robust to correlation within a journey."""
    resid = values - values.mean()
    sums = np.bincount(clusters, weights=resid)
    return float(np.sqrt((sums**2).sum()) / len(values))


def _positions(df: pd.DataFrame) -> np.ndarray:
    return df.groupby("journey_id", sort=False).cumcount().to_numpy()


def _local_time(df: pd.DataFrame) -> pd.Series:
    utc = df["started_at"].dt.tz_convert("UTC").dt.tz_localize(None)
    return utc + pd.to_timedelta(df["utc_offset_min"], unit="m")


def _session_marginal(params: GeneratorParams) -> np.ndarray:
    """(G, K) share of sessions of each segment and intent, from the chain: sum over positions
    of P(segment, z_t, reached t)."""
    step = params.tilted["transition"] * (1 - params.end_prob)[None, :, None]
    alpha = params.segments.probs[:, None] * params.tilted["initial"]
    total = np.zeros_like(alpha)
    for _ in range(params.max_sessions):
        total += alpha
        alpha = np.einsum("gk,gkj->gj", alpha, step)
    return total / total.sum()


def _segment_codes(df: pd.DataFrame, params: GeneratorParams) -> np.ndarray:
    g = pd.Categorical(df["segment"], categories=params.segments.names).codes.astype(int)
    assert (g >= 0).all()
    return g


def _log_loss(post: np.ndarray, z: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(post[np.arange(len(z)), z], 1e-300))


# ---------------------------------------------------------------------------------------------
# the forward recursion


@pytest.mark.parametrize("preset", ["default", "simple"])
def test_posterior_matches_brute_force_enumeration(preset):
    """p(segment, z_t | x_1..t) by summing over every segment and all 4^t intent paths equals
    the forward filter, to 1e-9; the intent posterior is its sum over segments."""
    p = dataclasses.replace(GeneratorParams.from_config(_config(preset)), max_sessions=4)
    df = simulate(p, 400, np.random.default_rng(7))
    lengths = df.groupby("journey_id", sort=False).size()
    assert set(lengths) == {1, 2, 3, 4}  # every journey length is exercised
    joint = joint_posterior(df, p)
    np.testing.assert_allclose(forward_filter(df, p), joint.sum(axis=1), atol=1e-12)
    ll = emission_loglik(df, p)
    assert ll.shape == (len(df), p.n_segments, p.n_intents)
    k, n_seg = p.n_intents, p.n_segments
    step = p.tilted["transition"] * (1 - p.end_prob)[None, :, None]  # continued, then moved on

    starts = np.flatnonzero(
        np.r_[True, df["journey_id"].to_numpy()[1:] != df["journey_id"].to_numpy()[:-1]]
    )
    n_checked = 0
    for start, n in zip(starts, lengths.to_numpy(), strict=True):
        # rescale each session's likelihood by its max: a constant that cancels on normalising
        block = ll[start : start + n]
        like = np.exp(block - block.max(axis=(1, 2), keepdims=True))
        for t in range(1, n + 1):
            brute = np.zeros((n_seg, k))
            for g in range(n_seg):  # the segment is fixed along the journey
                paths = np.array(list(itertools.product(range(k), repeat=t)))  # (k^t, t)
                weight = p.segments.probs[g] * p.tilted["initial"][g, paths[:, 0]]
                weight = weight * like[0, g, paths[:, 0]]
                for s in range(1, t):
                    weight = weight * step[g, paths[:, s - 1], paths[:, s]]
                    weight = weight * like[s, g, paths[:, s]]
                brute[g] = np.bincount(paths[:, -1], weights=weight, minlength=k)
            brute /= brute.sum()
            np.testing.assert_allclose(joint[start + t - 1], brute, rtol=0, atol=1e-9)
            n_checked += 1
    assert n_checked == len(df)


def test_posterior_uses_only_the_past_and_present_of_a_journey(params):
    """Dropping later sessions, or reordering whole journeys, leaves each posterior unchanged."""
    df = simulate(params, 300, np.random.default_rng(8))
    post = forward_filter(df, params)
    pos = _positions(df)
    keep = pos < 2
    np.testing.assert_allclose(
        forward_filter(df[keep].reset_index(drop=True), params), post[keep], atol=1e-12
    )

    # journeys in reverse order (each journey's sessions still in time order)
    jcode = _journey_codes(df)
    order = np.lexsort((pos, -jcode))
    shuffled = df.iloc[order].reset_index(drop=True)
    np.testing.assert_allclose(forward_filter(shuffled, params), post[order], atol=1e-12)


def test_posterior_ignores_touchpoint_and_conversion(params):
    """The touchpoint shown and the conversion are outcomes, not context the posterior may use."""
    df = simulate(params, 200, np.random.default_rng(9))
    post = forward_filter(df, params)
    other = df.copy()
    other["touchpoint"] = params.touchpoints[0]
    other["touchpoint_propensity"] = 0.5
    other["converted"] = ~other["converted"]
    np.testing.assert_array_equal(forward_filter(other, params), post)


def test_posterior_rows_are_probabilities(large):
    _, _, post = large
    assert np.isfinite(post).all()
    assert (post >= 0).all()
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the posterior against the sampler


def test_posterior_is_calibrated_on_a_large_sample(params, large):
    """Mean posterior per class = class frequency, and argmax accuracy = confidence per bin.

    Bins hold at least 2000 rows; a bin may miss by 0.02, or by 4.5 standard errors if wider.
    """
    df, z, post = large
    assert len(df) > 90_000
    clusters = _journey_codes(df)
    onehot = np.eye(params.n_intents)[z]
    for j, name in enumerate(params.intents):
        diff = onehot[:, j] - post[:, j]
        se = _clustered_se(diff, clusters)
        assert abs(diff.mean()) < N_SE * se, (name, diff.mean(), se)

    conf = post.max(axis=1)
    correct = post.argmax(axis=1) == z
    edges = np.arange(0.25, 1.0001, 0.05)
    bins = np.clip(np.digitize(conf, edges) - 1, 0, len(edges) - 2)
    n_checked = 0
    for b in np.unique(bins):
        sel = bins == b
        if sel.sum() < 2000:
            continue
        gap = correct[sel].mean() - conf[sel].mean()
        se = _clustered_se(correct[sel] - conf[sel], clusters[sel])
        assert abs(gap) < max(0.02, N_SE * se), (edges[b], sel.sum(), gap, se)
        n_checked += 1
    assert n_checked >= 5

    # per-class reliability: within bins of p_k, the share of class k matches the mean p_k
    for j, name in enumerate(params.intents):
        pk = post[:, j]
        bins = np.minimum((pk * 10).astype(int), 9)
        for b in range(10):
            sel = bins == b
            if sel.sum() < 2000:
                continue
            gap = onehot[sel, j].mean() - pk[sel].mean()
            se = _clustered_se(onehot[sel, j] - pk[sel], clusters[sel])
            assert abs(gap) < max(0.02, N_SE * se), (name, b / 10, sel.sum(), gap, se)


def test_log_loss_equals_expected_entropy_of_the_posterior(large):
    """For the true posterior, E[-log p(z|x)] = E[H(p(.|x))]; a wrong likelihood breaks it."""
    df, z, post = large
    entropy = -(post * np.log(np.maximum(post, 1e-300))).sum(axis=1)
    diff = _log_loss(post, z) - entropy
    se = _clustered_se(diff, _journey_codes(df))
    assert abs(diff.mean()) < N_SE * se, (diff.mean(), se)


def _features(df: pd.DataFrame, params: GeneratorParams) -> dict[str, np.ndarray]:
    """Indicators of observable session features, computed independently of emission_loglik."""
    feats: dict[str, np.ndarray] = {"all": np.ones(len(df), bool)}
    pos = _positions(df)
    for t in range(4):
        feats[f"position={t}"] = pos == t
    feats["position>=4"] = pos >= 4
    for d in params.devices:
        feats[f"device={d}"] = (df["device"] == d).to_numpy()
    for c in params.channels:
        feats[f"channel={c}"] = (df["channel"] == c).to_numpy()
    local = _local_time(df)
    hour = local.dt.hour.to_numpy()
    for h in range(0, 24, 3):
        feats[f"hour in {h}..{h + 2}"] = (hour >= h) & (hour < h + 3)
    day = local.dt.normalize().to_numpy()
    gap_days = np.r_[0, (day[1:] - day[:-1]) / np.timedelta64(1, "D")]
    later = pos > 0
    feats["gap=0d"] = later & (gap_days == 0)
    feats["gap=0d, previous hour >= 18"] = later & (gap_days == 0) & (np.r_[0, hour[:-1]] >= 18)
    feats["gap=1d"] = later & (gap_days == 1)
    feats["gap=2-3d"] = later & (gap_days >= 2) & (gap_days <= 3)
    feats["gap>=4d"] = later & (gap_days >= 4)

    lat = df["latitude"].to_numpy(float)
    located = ~np.isnan(lat)
    store_km = _nearest_store_km(df, params)
    mobile = (df["device"] == "mobile").to_numpy()
    feats["unlocated"] = ~located
    for name, dev in (("mobile", mobile), ("other device", ~mobile)):
        feats[f"{name}, store < 0.3 km"] = located & dev & (store_km < 0.3)
        feats[f"{name}, store 0.3-1 km"] = located & dev & (store_km >= 0.3) & (store_km < 1)
        feats[f"{name}, store 1-3 km"] = located & dev & (store_km >= 1) & (store_km < 3)
        feats[f"{name}, store >= 3 km"] = located & dev & (store_km >= 3)

    logd = np.log(df["dwell_time_s"].to_numpy(float))
    for lo, hi in ((-np.inf, 4), (4, 4.75), (4.75, 5.5), (5.5, 6.25), (6.25, np.inf)):
        feats[f"log dwell {lo}..{hi}"] = (logd >= lo) & (logd < hi)
    pages = df["page_views"].to_numpy()
    feats["pages=1"] = pages == 1
    feats["pages=2-3"] = (pages >= 2) & (pages <= 3)
    feats["pages=4-6"] = (pages >= 4) & (pages <= 6)
    feats["pages>=7"] = pages >= 7
    for t in params.page_types:
        feats[f"pages_{t}>0"] = (df[f"pages_{t}"] > 0).to_numpy()
        feats[f"pages_{t} share>=0.5"] = (df[f"pages_{t}"] / pages >= 0.5).to_numpy()
    ret = df["returning_visitor"].to_numpy(bool)
    feats["first, returning"] = (pos == 0) & ret
    feats["first, new"] = (pos == 0) & ~ret
    # the combinations the interactions are about: at a store by opening hours, a first visit's
    # channel by returning customer, dwell by device
    open_hours = (hour >= 9) & (hour < 21)
    for name, dev in (("mobile", mobile), ("other device", ~mobile)):
        at_store = located & dev & (store_km < 0.5)
        feats[f"{name}, store < 0.5 km, open hours"] = at_store & open_hours
        feats[f"{name}, store < 0.5 km, closed hours"] = at_store & ~open_hours
    for c in params.channels:
        for label, r in (("returning", ret), ("new", ~ret)):
            feats[f"first, {label}, channel={c}"] = (pos == 0) & r & (df["channel"] == c).to_numpy()
    for d in params.devices:
        dev = (df["device"] == d).to_numpy()
        feats[f"device={d}, log dwell < 4.5"] = dev & (logd < 4.5)
        feats[f"device={d}, log dwell >= 5.5"] = dev & (logd >= 5.5)
        feats[f"device={d}, pages>=4, log dwell < 5"] = dev & (pages >= 4) & (logd < 5)
    return feats


def _nearest_store_km(df: pd.DataFrame, params: GeneratorParams) -> np.ndarray:
    """Distance (km) to the nearest store of the session's region; NaN when not located."""
    lat = df["latitude"].to_numpy(float)
    lon = df["longitude"].to_numpy(float)
    region = df["region"].to_numpy()
    out = np.full(len(df), np.nan)
    for c in params.cities:
        sel = (region == c.name) & ~np.isnan(lat)
        if sel.any():
            dist = np.stack([planar_km(lat[sel], lon[sel], s[0], s[1]) for s in c.stores], axis=1)
            out[sel] = dist.min(axis=1)
    return out


def test_posterior_is_calibrated_conditional_on_observable_features(params, large):
    """E[1{z=k} - p_k | x] = 0, so its mean over any observable subset of sessions is 0.

    Checked for every intent over subsets by device, channel, hour, day gap, distance to a
    store, dwell, pages and returning visitor: a likelihood term that disagrees with the
    sampler makes the posterior miscalibrated on the sessions that term is about. Subsets where
    fewer than 50 sessions of the class (or of the others) are expected are skipped: there the
    count is too small for a normal approximation.
    """
    df, z, post = large
    clusters = _journey_codes(df)
    onehot = np.eye(params.n_intents)[z]
    failures = []
    n_checked = 0
    for fname, f in _features(df, params).items():
        if f.sum() < 500:
            continue
        for j, name in enumerate(params.intents):
            # the normal approximation needs enough expected sessions of the class, and of others
            expected = post[f, j].sum()
            if min(expected, f.sum() - expected) < 50:
                continue
            v = f * (onehot[:, j] - post[:, j])
            se = _clustered_se(v, clusters)
            n_checked += 1
            if abs(v.mean()) > N_SE * se:
                failures.append((fname, name, int(f.sum()), v.mean() / se))
    assert n_checked > 200
    assert not failures, failures


@pytest.fixture(scope="module")
def overlapping(params):
    """Sessions whose at-store and elsewhere-in-the-city locations overlap a lot (stores 3 km
    wide), with every intent a mixture of both: the relative scale of the two densities matters."""
    shares = np.array([0.8, 0.2, 0.5, 0.35])
    p = dataclasses.replace(
        params, near_store_mean_km=3.0, near_store_mobile=shares, near_store_other=shares
    )
    df = simulate(p, 20_000, np.random.default_rng(31), with_segment=True)
    z = pd.Categorical(df["intent"], categories=p.intents).codes.astype(int)
    return p, df, z


@pytest.mark.parametrize("sample", ["default", "overlapping"])
def test_location_likelihood_is_a_normalised_density_for_every_intent(sample, request):
    """The location term is a density in the same measure for every intent.

    For located sessions of intent j, E[p(loc | k) / p(loc | j)] = 1 for every k, within the
    session's own segment (the ratio is bounded as every intent mixes both components, so the
    mean is sharp). The location term is isolated by differencing with the same sessions
    unlocated; a missing Jacobian, a wrong mixture weight or a wrong radial law breaks it.
    """
    if sample == "default":
        params = request.getfixturevalue("params")
        df, z, _ = request.getfixturevalue("large")
    else:
        params, df, z = request.getfixturevalue("overlapping")
    unlocated = df.copy()
    unlocated["latitude"] = np.nan
    unlocated["longitude"] = np.nan
    full = emission_loglik(df, params) - emission_loglik(unlocated, params)
    loc_term = full[np.arange(len(df)), _segment_codes(df, params)]  # (n, K), own segment
    located = df["latitude"].notna().to_numpy()
    np.testing.assert_allclose(full[~located], 0.0, atol=1e-12)
    clusters = _journey_codes(df)
    mobile = (df["device"] == "mobile").to_numpy()
    n_checked = 0
    for group, dev in (("mobile", mobile), ("other device", ~mobile)):
        for j in range(params.n_intents):
            sel = located & dev & (z == j)
            assert sel.sum() > 300
            for k in range(params.n_intents):
                ratio = np.exp(loc_term[sel, k] - loc_term[sel, j])
                se = _clustered_se(ratio, clusters[sel])
                assert abs(ratio.mean() - 1) < N_SE * se + 1e-12, (group, j, k, ratio.mean(), se)
                n_checked += 1
    assert n_checked == 2 * params.n_intents**2


def _session_grid(params: GeneratorParams, prev_hours, gaps) -> pd.DataFrame:
    """Two-session journeys alike in everything but the local times: the first session at
    each hour in `prev_hours`, the second `gap` days later at every hour that keeps time order."""
    start = params.start + pd.Timedelta(days=3)
    rows = []
    for h0 in prev_hours:
        for g in gaps:
            for h in range(24):
                if g == 0 and h <= h0:
                    continue
                jid = f"j{h0:02d}-{g:02d}-{h:02d}"
                for t, local in enumerate(
                    (start + pd.Timedelta(hours=h0), start + pd.Timedelta(days=g, hours=h))
                ):
                    rows.append({"journey_id": jid, "session_id": f"{jid}-{t}", "local": local})
    df = pd.DataFrame(rows)
    offset = 60
    df["started_at"] = (df.pop("local") + pd.Timedelta(minutes=30 - offset)).dt.tz_localize("UTC")
    df["utc_offset_min"] = offset
    df["device"] = "mobile"
    df["channel"] = params.channels[0]
    df["latitude"] = np.nan
    df["longitude"] = np.nan
    df["region"] = params.cities[0].name
    df["dwell_time_s"] = 100.0
    df["page_views"] = 2
    for i, t in enumerate(params.page_types):
        df[f"pages_{t}"] = int(i < 2)
    df["returning_visitor"] = True
    return df


def test_day_gap_and_hour_likelihood_is_the_redrawn_geometric_times_hour(params):
    """The (day gap, local hour) of a later session: geometric gap times the intent's hour
    distribution, restricted to pairs after the previous session and renormalised.

    Every other observable is the same, so emission_loglik minus the log of that distribution
    (normalised here by explicit summation) must be one constant per intent across all rows.
    """
    prev_hours, gaps = range(24), range(6)
    df = _session_grid(params, prev_hours, gaps)
    ll = emission_loglik(df, params)
    local = _local_time(df)
    hour = local.dt.hour.to_numpy()
    first, second = ll[0::2], ll[1::2]
    h0, h = hour[0::2], hour[1::2]
    g = (
        local.dt.normalize().to_numpy()[1::2] - local.dt.normalize().to_numpy()[0::2]
    ) / np.timedelta64(1, "D")

    # first sessions: only the hour varies (and, with store hours, nothing else: unlocated)
    resid = first - np.log(params.hour_probs[:, h0].T)[:, None, :]
    np.testing.assert_allclose(resid - resid[0], 0.0, atol=1e-9)

    all_gaps = np.arange(5000)[:, None]
    for s in range(params.n_segments):
        for k in range(params.n_intents):
            gp = params.gap_p_g[s, k]
            joint = gp * (1 - gp) ** all_gaps * params.hour_probs[k][None, :]  # (gap, hour)
            norm = {a: joint.sum() - joint[0, : a + 1].sum() for a in prev_hours}
            log_p = np.log(joint[g.astype(int), h] / np.array([norm[a] for a in h0]))
            resid = second[:, s, k] - log_p
            np.testing.assert_allclose(
                resid - resid[0], 0.0, atol=1e-9, err_msg=(params.segments.names[s], k)
            )


def test_bayes_posterior_beats_history_free_alternatives(params, large):
    """History carries information: filtering beats the per-session posterior on log-loss.

    The per-session posterior uses the same session likelihood with the marginal share of each
    intent among sessions as its prior; that share must itself match the sample.
    """
    df, z, post = large
    clusters = _journey_codes(df)
    joint_marginal = _session_marginal(params)  # (G, K)
    marginal = joint_marginal.sum(axis=0)
    # without the export cut: the cut shortens journeys, which the chain's marginal ignores
    whole = simulate(
        dataclasses.replace(params, cut_at_end=False), 20_000, np.random.default_rng(17)
    )
    zw = pd.Categorical(whole["intent"], categories=params.intents).codes
    freq = np.bincount(zw, minlength=params.n_intents) / len(zw)
    np.testing.assert_allclose(freq, marginal, atol=0.01)

    ll = emission_loglik(df, params)
    a = np.log(joint_marginal)[None, :, :] + ll
    per_session = np.exp(a - a.max(axis=(1, 2), keepdims=True)).sum(axis=1)
    per_session /= per_session.sum(axis=1, keepdims=True)

    bayes_loss = _log_loss(post, z)
    diff = _log_loss(per_session, z) - bayes_loss
    se = _clustered_se(diff, clusters)
    assert diff.mean() > N_SE * se, (diff.mean(), se)
    # the gain comes from later sessions, which have a history; first sessions have none
    first = _positions(df) == 0
    assert diff[~first].mean() > diff[first].mean()

    prior_only = _log_loss(np.broadcast_to(marginal, post.shape), z)
    assert bayes_loss.mean() < 0.5 * prior_only.mean()

    # a filter that believes intents do not persist (every row of the transition = the marginal)
    wrong = dataclasses.replace(params, transition=np.tile(marginal, (params.n_intents, 1)))
    assert not np.allclose(wrong.tilted["transition"], params.tilted["transition"])
    diff_wrong = _log_loss(forward_filter(df, wrong), z) - bayes_loss
    assert diff_wrong.mean() > N_SE * _clustered_se(diff_wrong, clusters)


# ---------------------------------------------------------------------------------------------
# the data the generator writes


def test_same_seed_same_data_and_different_seeds_differ(params):
    a = pd.concat(generate_chunks(params, 120, 50, seed=5), ignore_index=True)
    b = pd.concat(generate_chunks(params, 120, 50, seed=5), ignore_index=True)
    c = pd.concat(generate_chunks(params, 120, 50, seed=6), ignore_index=True)
    pd.testing.assert_frame_equal(a, b)
    assert not a["started_at"].equals(c["started_at"])
    assert not a["dwell_time_s"].equals(c["dwell_time_s"])

    x = simulate(params, 50, np.random.default_rng(1))
    y = simulate(params, 50, np.random.default_rng(1))
    pd.testing.assert_frame_equal(x, y)


def test_chunks_keep_journeys_whole_with_unique_ordered_utc_sessions(params):
    n_journeys, chunk = 250, 60
    chunks = list(generate_chunks(params, n_journeys, chunk, seed=12))
    assert len(chunks) == -(-n_journeys // chunk)

    seen: set[str] = set()
    for df in chunks:
        journeys = set(df["journey_id"])
        assert 1 <= len(journeys) <= chunk
        assert not journeys & seen, "a journey spans two chunks"
        seen |= journeys
        # a chunk holds each journey as one contiguous run of rows
        assert df["journey_id"].ne(df["journey_id"].shift()).sum() == len(journeys)
        # the posterior columns are there and are probabilities
        bayes = df[[f"bayes_p_{k}" for k in params.intents]].to_numpy()
        np.testing.assert_allclose(bayes.sum(axis=1), 1.0, atol=1e-9)
    assert seen == {f"j{j:09d}" for j in range(n_journeys)}
    # each chunk is a fresh draw, not a copy of the first one under new journey ids
    n = min(len(chunks[0]), len(chunks[1]))
    assert not np.array_equal(
        chunks[0]["dwell_time_s"].to_numpy()[:n], chunks[1]["dwell_time_s"].to_numpy()[:n]
    )

    df = pd.concat(chunks, ignore_index=True)
    assert df["session_id"].is_unique
    assert df.groupby("journey_id").size().max() <= params.max_sessions
    assert isinstance(df["started_at"].dtype, pd.DatetimeTZDtype)
    assert str(df["started_at"].dt.tz) == "UTC"
    step = df.groupby("journey_id")["started_at"].diff().dropna()
    assert (step > pd.Timedelta(0)).all(), "sessions of a journey must strictly increase in time"

    # journeys start (in local time) within the configured window
    local = _local_time(df)
    first = local[~df["journey_id"].duplicated()]
    assert first.min() >= params.start
    assert first.max() < params.start + pd.Timedelta(days=params.days)
    assert set(df["intent"]) <= set(params.intents)

    with_no_posterior = next(generate_chunks(params, 10, 10, seed=12, posterior=False))
    assert not any(c.startswith("bayes_p_") for c in with_no_posterior.columns)


@pytest.mark.parametrize("n_journeys, chunk_journeys", [(0, 10), (10, 0)])
def test_generate_chunks_rejects_non_positive_sizes(params, n_journeys, chunk_journeys):
    with pytest.raises(ValueError, match="must be a positive number"):
        next(generate_chunks(params, n_journeys, chunk_journeys, seed=0))


def test_journey_lengths_follow_the_end_probabilities_and_the_cap(params):
    # whole journeys: no export cut at the extraction time
    p = dataclasses.replace(params, max_sessions=3, cut_at_end=False)
    df = simulate(p, 20_000, np.random.default_rng(13))
    lengths = df.groupby("journey_id").size()
    assert lengths.max() == 3
    # P(length = 1) = sum_g share_g sum_k initial_gk * end_k
    expected = float(p.segments.probs @ p.tilted["initial"] @ p.end_prob)
    n = len(lengths)
    share = (lengths == 1).mean()
    assert abs(share - expected) < N_SE * np.sqrt(expected * (1 - expected) / n)


def test_mobile_go_sessions_are_mostly_near_a_store_and_desktops_share_location_less(params, large):
    df, z, _ = large
    lat = df["latitude"].to_numpy(float)
    lon = df["longitude"].to_numpy(float)
    located = ~np.isnan(lat)
    assert (np.isnan(lon) == ~located).all()
    device = df["device"].to_numpy()

    # the share of located sessions per device is the configured one
    shares = {}
    for d, share in zip(params.devices, params.location_share, strict=True):
        sel = device == d
        shares[d] = located[sel].mean()
        assert abs(shares[d] - share) < N_SE * np.sqrt(share * (1 - share) / sel.sum()), d
    assert shares["desktop"] < shares["mobile"]

    store_km = _nearest_store_km(df, params)
    # every located session lies in its region: within the city radius, or near a store
    for c in params.cities:
        sel = located & (df["region"].to_numpy() == c.name)
        centre_km = planar_km(lat[sel], lon[sel], c.lat, c.lon)
        assert ((centre_km <= params.city_radius_km + 1e-9) | (store_km[sel] < 8)).all(), c.name

    # sessions at a store are spread over all the stores of their region
    region = df["region"].to_numpy()
    for c in params.cities:
        sel = located & (region == c.name) & (store_km < 1.0)
        dist = np.stack([planar_km(lat[sel], lon[sel], s[0], s[1]) for s in c.stores], axis=1)
        share = np.bincount(dist.argmin(axis=1), minlength=len(c.stores)) / sel.sum()
        assert (share > 0.5 / len(c.stores)).all(), (c.name, share)

    # located sessions within 1 km of a store: those placed at a store (exponential distance),
    # plus a few placed uniformly over the city that happen to fall near one
    within = 1.0 - np.exp(-1.0 / params.near_store_mean_km)
    go = params.intents.index("go")
    mobile_go = located & (device == "mobile") & (z == go)
    near_share = (store_km[mobile_go] < 1.0).mean()
    assert mobile_go.sum() > 5000
    assert near_share > 0.5  # mostly
    # the configured at-a-store chance of each session's own segment, intent and hour
    hour = _local_time(df).dt.hour.to_numpy()
    chance = params.near_store_p(device == "mobile", hour)[
        np.arange(len(df)), _segment_codes(df, params), z
    ]
    near_p = chance[mobile_go].mean()
    max_stores = max(len(c.stores) for c in params.cities)
    city_near = max_stores / params.city_radius_km**2  # union bound on area within 1 km of a store
    se = np.sqrt(near_share * (1 - near_share) / mobile_go.sum())
    assert (
        near_p * within - N_SE * se
        < near_share
        < near_p * within + (1 - near_p) * city_near + N_SE * se
    )

    # intents with a low store chance are rarely near a store, on any device
    know = params.intents.index("know")
    for dev in ("mobile", "desktop"):
        sel = located & (device == dev) & (z == know)
        share = (store_km[sel] < 1.0).mean()
        upper = chance[sel].mean() * within + (1 - chance[sel].mean()) * city_near
        assert share < upper + N_SE * np.sqrt(upper / sel.sum()), dev


def test_touchpoints_follow_the_logging_policy_and_conversions_the_configured_rates(params, large):
    df, z, _ = large
    dev = pd.Categorical(df["device"], categories=params.devices).codes
    touch = pd.Categorical(df["touchpoint"], categories=params.touchpoints).codes
    assert (dev >= 0).all() and (touch >= 0).all()
    np.testing.assert_allclose(
        df["touchpoint_propensity"].to_numpy(), params.logging_policy[dev, touch]
    )
    for d in range(len(params.devices)):
        sel = dev == d
        freq = np.bincount(touch[sel], minlength=len(params.touchpoints)) / sel.sum()
        pol = params.logging_policy[d]
        se = np.sqrt(pol * (1 - pol) / sel.sum())
        assert (np.abs(freq - pol) <= N_SE * se + 1e-12).all(), params.devices[d]

    converted = df["converted"].to_numpy(bool)
    n_checked = 0
    for k in range(params.n_intents):
        for t in range(len(params.touchpoints)):
            sel = (z == k) & (touch == t)
            if sel.sum() < 1000:
                continue
            rate = params.conversion[k, t]
            se = np.sqrt(rate * (1 - rate) / sel.sum())
            got = converted[sel].mean()
            assert abs(got - rate) < N_SE * se, (
                params.intents[k],
                params.touchpoints[t],
                got,
                rate,
            )
            n_checked += 1
    assert n_checked >= 20


# ---------------------------------------------------------------------------------------------
# the config (base keys)


def test_from_config_rejects_a_transition_row_that_does_not_sum_to_one():
    cfg = _config()
    transition = [list(row) for row in cfg["transition"]]
    transition[1][0] += 0.1
    with pytest.raises(GeneratorConfigError, match=r"generator\.transition.* row 1 \(go\)"):
        GeneratorParams.from_config(_with(transition=transition))


@pytest.mark.parametrize(
    "field, value",
    [
        ("transition", [[0.25, 0.25, 0.25, 0.25]] * 3),  # a row short
        ("initial", [1.2, -0.2, 0.0, 0.0]),  # sums to 1 but is not a probability
        ("device_probs", [[0.5, 0.5, 0.1]] * 4),
        ("end_prob", [0.3, 0.3, 0.3]),  # one value per intent
        ("gap_mean_days", [1.0, -1.0, 1.0, 1.0]),
    ],
)
def test_from_config_rejects_malformed_fields_naming_them(field, value):
    with pytest.raises(ValueError, match=rf"generator\.{field}"):
        GeneratorParams.from_config(_with(**{field: value}))


def test_from_config_builds_the_default_generator(params):
    assert params.intents == ("know", "go", "do", "buy")
    assert params.transition.shape == (4, 4)
    np.testing.assert_allclose(params.hour_probs.sum(axis=1), 1.0)
    # each intent's local hour peaks at the configured hour
    assert list(params.hour_probs.argmax(axis=1)) == _config()["hour_peak"]
    # the geometric day gap has the configured mean (1 - p) / p
    np.testing.assert_allclose((1 - params.gap_p) / params.gap_p, _config()["gap_mean_days"])
    assert params.logging_policy.shape == (len(params.devices), len(params.touchpoints))
    assert set(params.stores_frame()["region"]) == {c.name for c in params.cities}


def test_the_export_ends_at_the_extraction_time_with_steady_traffic_before_it(params):
    df = simulate(params, 20_000, np.random.default_rng(5))
    cut = params.extraction_time  # local time
    assert _local_time(df).max() < cut
    assert df["journey_id"].nunique() == 20_000  # every journey started before the export
    whole = simulate(
        dataclasses.replace(params, cut_at_end=False), 20_000, np.random.default_rng(5)
    )
    assert _local_time(whole).max() > cut  # journeys still open at the export were cut
    # sessions before the cut are the same whether or not the export cut the rest
    kept = whole[(_local_time(whole) < cut).to_numpy()].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, df.reset_index(drop=True))
    # once journeys have built up, every week up to the export holds about the same traffic
    week = (cut - _local_time(df)).dt.days // 7
    per_week = df.groupby(week).size().sort_index()
    recent = per_week.loc[0:3]  # the last four weeks
    assert recent.min() > 0.85 * recent.max()
    last_28_days = (_local_time(df) >= cut - pd.Timedelta(days=28)).sum()
    assert last_28_days > 0.4 * len(df)


# ---------------------------------------------------------------------------------------------
# presets, segments and interactions

# sha256 of the sessions of `simulate(simple, 300, default_rng(2026))` (floats to 6 decimals),
# as the generator wrote them (as its default world) before segments and interactions existed
SIMPLE_SESSIONS_SHA256 = "740be5fb261615a56f28c429b3ba2eca1aff7b939b38377ea7d391db2c56d90c"


def test_the_simple_world_is_the_world_before_segments_session_for_session():
    p = GeneratorParams.from_config(_config("simple"))
    assert p.segments.names == ("all",)
    it = p.interactions
    assert it.store_hours == (0, 24)
    assert (it.near_store_closed == 1).all() and (it.returning_channel_odds == 1).all()
    assert not it.dwell_device_shift.any() and not it.dwell_page_slope.any()
    assert not it.dwell_page_shift.any()
    df = simulate(p, 300, np.random.default_rng(2026))
    floats = df.select_dtypes("float").columns
    df[floats] = df[floats].round(6)
    digest = hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()
    assert digest == SIMPLE_SESSIONS_SHA256


def test_default_world_has_segments_that_change_the_chain_and_the_emissions(params):
    assert params.n_segments == 3
    np.testing.assert_allclose(params.segments.probs.sum(), 1.0)
    # every segment's chain and emission rows are probabilities, and segments differ
    for arr in (
        params.tilted["initial"],
        params.tilted["transition"],
        params.tilted["device_probs"],
        params.tilted["channel_probs"],
        params.tilted["page_type_probs"],
    ):
        np.testing.assert_allclose(arr.sum(axis=-1), 1.0)
        assert not np.allclose(arr[0], arr[1]) or not np.allclose(arr[1], arr[2])
    assert len(set(params.gap_p_g[:, 0])) == params.n_segments
    # the same intent reads differently by segment: a researcher's buy session is longer and
    # has more pages than a deal seeker's
    buy = params.intents.index("buy")
    researcher, deal_seeker = (
        params.segments.names.index(n) for n in ("researcher", "deal_seeker")
    )
    assert params.dwell_log_mean_g[researcher, buy] > params.dwell_log_mean_g[deal_seeker, buy] + 1
    assert (
        params.extra_pages_mean_g[researcher, buy] > 2 * params.extra_pages_mean_g[deal_seeker, buy]
    )


def test_segments_show_in_the_sample_as_configured(params, large):
    """Each segment's share of journeys, and its device mix, are the configured ones."""
    df, z, _ = large
    g = _segment_codes(df, params)
    first = ~df["journey_id"].duplicated().to_numpy()
    share = np.bincount(g[first], minlength=params.n_segments) / first.sum()
    se = np.sqrt(params.segments.probs * (1 - params.segments.probs) / first.sum())
    assert (np.abs(share - params.segments.probs) < N_SE * se).all(), share
    dev = pd.Categorical(df["device"], categories=params.devices).codes
    for s in range(params.n_segments):
        for k in range(params.n_intents):
            sel = (g == s) & (z == k)
            freq = np.bincount(dev[sel], minlength=len(params.devices)) / sel.sum()
            expected = params.tilted["device_probs"][s, k]
            se = np.sqrt(expected * (1 - expected) / sel.sum())
            assert (np.abs(freq - expected) < N_SE * se + 1e-3).all(), (s, k, freq, expected)


def test_pages_and_dwell_per_segment_and_intent_are_the_configured_ones(params, large):
    """The mean extra page views, and the mean log dwell once the session's own shifts (device,
    pages, page mix) are taken off, match each (segment, intent)'s configured values."""
    df, z, _ = large
    g = _segment_codes(df, params)
    pages = df["page_views"].to_numpy()
    counts = np.stack([df[f"pages_{t}"].to_numpy() for t in params.page_types], axis=1)
    device = pd.Categorical(df["device"], categories=params.devices).codes
    # the dwell is rounded to 0.1 s on output: negligible against its log-normal spread
    resid = np.log(df["dwell_time_s"].to_numpy()) - params.interactions.dwell_shift(
        device, pages, counts, z
    )
    for s in range(params.n_segments):
        for k in range(params.n_intents):
            sel = (g == s) & (z == k)
            lam = params.extra_pages_mean_g[s, k]
            assert abs((pages[sel] - 1).mean() - lam) < N_SE * np.sqrt(lam / sel.sum()), (s, k)
            sd = params.dwell_log_sd[k]
            mean = resid[sel].mean()
            assert abs(mean - params.dwell_log_mean_g[s, k]) < N_SE * sd / np.sqrt(sel.sum()) + 1e-3


def test_segment_posterior_is_calibrated_and_sharpens_along_the_journey(params, large):
    """The joint posterior summed over intents is the segment's posterior: calibrated, and more
    certain the more sessions of the journey it has seen (the past carries the segment)."""
    df, _, _ = large
    g = _segment_codes(df, params)
    seg_post = joint_posterior(df, params).sum(axis=2)
    clusters = _journey_codes(df)
    onehot = np.eye(params.n_segments)[g]
    for s, name in enumerate(params.segments.names):
        diff = onehot[:, s] - seg_post[:, s]
        assert abs(diff.mean()) < N_SE * _clustered_se(diff, clusters), name
        for lo in np.arange(0, 1, 0.2):
            sel = (seg_post[:, s] >= lo) & (seg_post[:, s] < lo + 0.2)
            if sel.sum() < 2000:
                continue
            d = diff[sel]
            assert abs(d.mean()) < max(0.02, N_SE * _clustered_se(d, clusters[sel])), (name, lo)
    pos = _positions(df)
    certainty = seg_post.max(axis=1)
    by_position = [certainty[pos == t].mean() for t in range(4)]
    assert all(a < b for a, b in zip(by_position, by_position[1:], strict=False)), by_position


def test_interactions_make_the_same_context_mean_different_intents(params, large):
    """At a store while stores are open, a mobile session is mostly "go"; at a store after
    closing, mostly not; a returning customer's first visit by e-mail is mostly "buy", a new
    visitor's by e-mail much less so."""
    df, z, _ = large
    go, buy = params.intents.index("go"), params.intents.index("buy")
    hour = _local_time(df).dt.hour.to_numpy()
    opened = params.interactions.store_open(hour)
    at_store = (df["device"] == "mobile").to_numpy() & (_nearest_store_km(df, params) < 0.5)
    go_open = (z[at_store & opened] == go).mean()
    go_closed = (z[at_store & ~opened] == go).mean()
    assert go_open > 0.5 > go_closed + 0.2, (go_open, go_closed)

    first = _positions(df) == 0
    email = first & (df["channel"] == "email").to_numpy()
    ret = df["returning_visitor"].to_numpy(bool)
    assert (z[email & ret] == buy).mean() > (z[email & ~ret] == buy).mean() + 0.2


# ---------------------------------------------------------------------------------------------
# the config


def _with(**changes) -> dict:
    cfg = _config()
    cfg.update(changes)
    return cfg


def _segment_change(i: int, **changes) -> list[dict]:
    segments = [dict(s) for s in _config()["segments"]]
    segments[i].update(changes)
    return segments


@pytest.mark.parametrize(
    "key, change",
    [
        ("segments", {"segments": _segment_change(1, share=0.5)}),  # shares sum to 1.15
        ("segments[0].device_tilt", {"segments": _segment_change(0, device_tilt={"phone": 2.0})}),
        ("segments[2].gap_scale", {"segments": _segment_change(2, gap_scale=-1.0)}),
        ("segments[1]", {"segments": _segment_change(1, colour="red")}),
        ("segments[0].dwell_shift", {"segments": _segment_change(0, dwell_shift=[0.1, 0.2])}),
        ("segments[1].pages_scale", {"segments": _segment_change(1, pages_scale=[1, 0, 1, 1])}),
        ("store_hours", {"store_hours": [21, 9]}),
        ("near_store_closed", {"near_store_closed": [1.0, 0.1]}),
        ("near_store_mobile", {"near_store_mobile": [0.25, 0.95, 0.2, 0.3]}),  # x 1.15 > 1
        ("returning_channel_odds.browse", {"returning_channel_odds": {"browse": {"email": 2}}}),
        ("returning_channel_odds.buy", {"returning_channel_odds": {"buy": {"fax": 2}}}),
        ("dwell_device_shift.mobile", {"dwell_device_shift": {"mobile": [0.1, 0.2]}}),
        ("dwell_page_shift", {"dwell_page_shift": {"video": [0.0, 0.0, 0.0, 0.0]}}),
        ("dwell_log_sd", {"dwell_log_sd": [0.8, 0.0, 0.8, 0.8]}),
        ("city_probs", {"city_probs": [0.5, 0.5]}),
        ("logging_policy.desktop", {"logging_policy": {"mobile": [0.125] * 8}}),
    ],
)
def test_from_config_rejects_bad_segments_and_interactions_naming_the_key(key, change):
    with pytest.raises(GeneratorConfigError, match=r"generator\." + re.escape(key)):
        GeneratorParams.from_config(_with(**change))


def _composed_generator(overrides: list[str]) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=pipelines.config.CONF_DIR, version_base="1.3"):
        cfg = compose("generate", overrides=overrides)
    return cfg.generator


@pytest.mark.parametrize("preset", ["default", "simple", "shifted"])
def test_every_preset_composes_and_validates(preset):
    validate_generator(_composed_generator([f"generator={preset}"]))


@pytest.mark.parametrize(
    "override, key",
    [
        ("generator.initial=[0.5,0.5,0.5,0.1]", "initial"),
        ("generator.transition.1=[0.5,0.5,0.5,0.1]", "transition"),
        ("generator.device_probs.0=[1.5,-0.5,0.0]", "device_probs"),
        ("generator.end_prob=[0.3,0.3]", "end_prob"),
        ("generator.segments.0.share=0.9", "segments"),
    ],
)
def test_a_composed_config_with_a_bad_value_is_refused_naming_the_key(override, key):
    """What `micromoment generate <override>` composes is refused before any work."""
    with pytest.raises(GeneratorConfigError, match=rf"generator\.{key}"):
        validate_generator(_composed_generator(["generator=default", override]))
