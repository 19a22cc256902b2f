"""The touchpoint feed assembled from scored sessions: conversion estimates by intent x
touchpoint, the feed of each journey, the budgeted allocation, the marketer's tables and the
headline numbers. Pure: frames and a config in, frames and numbers out."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core import policy_value as pv
from pipelines.core import touchpoints as tp
from pipelines.core.contract import DatasetSpec


def _model_alias(uri: str | None) -> str | None:
    m = re.match(r"models:/[^@/]+@(.+)$", uri or "")
    return m.group(1) if m else None


def build(
    cfg: dict,
    sessions: pd.DataFrame,
    counts: dict,
    model_uri: str | None,
    stores: np.ndarray | None,
    input_path: str | Path,
) -> dict:
    """Everything the feed command computes from the scored sessions (`io.scores`), as frames
    and numbers: estimates, the feed, the allocation, the marketer's tables, the headline."""
    spec = DatasetSpec.from_config(cfg["data"])
    tcfg = cfg["touchpoints"]
    classes = list(spec.classes)
    catalogue = tp.Catalogue.from_config(tcfg)
    if sessions.empty:
        raise ValueError(f"{input_path}: no scored sessions to build a touchpoint feed from")
    estimates, source = conversion_estimates(sessions, classes, catalogue, tcfg, input_path)
    ctx = tp.journey_context(sessions, catalogue)
    ctx["model_alias"] = _model_alias(model_uri)
    rates = tp.rate_matrix(estimates, classes, catalogue.names)
    feed = feed_of(ctx, classes, rates, catalogue, stores, tcfg)
    rows = feed.rows
    rows.insert(2, "scored_at", pd.Timestamp(datetime.now(UTC)))
    alloc, allocation_table = allocate_budget(rows, feed, catalogue, tcfg["allocation"])
    tables = tp.marketer_tables(sessions, rows, classes)
    tables["allocation"] = allocation_table
    tables["conversion_by_intent_and_touchpoint"] = estimates.set_index(["intent", "touchpoint"])
    tables["policy_value"] = policy_evaluation(sessions, classes, rates, catalogue, stores, tcfg)[2]
    headline = {
        **counts,
        **allocation_headline(rows, alloc, allocation_table),
        "objective": tcfg["objective"],
        "intent_source_for_estimates": source,
        "cells_estimated": int(estimates["status"].eq("ok").sum()),
        "cells_insufficient": int((~estimates["status"].eq("ok")).sum()),
        "touchpoints_without_estimates": feed.unestimated,
        **date_range(sessions),
        **{key: rows[key].iloc[0] for key in ("model_name", "model_version", "model_alias")},
    }
    return {
        "feed": rows,
        "estimates": estimates,
        "tables": tables,
        "headline": headline,
        "classes": classes,
        "catalogue": catalogue,
    }


def feed_of(
    ctx: pd.DataFrame,
    classes: list[str],
    rates: np.ndarray,
    catalogue: tp.Catalogue,
    stores: np.ndarray | None,
    tcfg: dict,
) -> tp.Feed:
    """The feed of each journey under the catalogue's eligibility rules and the config's
    objective, holdout and suppression."""
    ok, reasons = tp.eligibility(ctx, catalogue, stores)
    return tp.build_feed(
        ctx,
        classes,
        rates,
        catalogue,
        ok,
        reasons,
        objective=tcfg["objective"],
        holdout_share=float(tcfg["holdout_share"]),
        holdout_salt=str(tcfg["holdout_salt"]),
        suppress_after_conversion_hours=tcfg["suppress_after_conversion_hours"],
    )


def conversion_estimates(
    sessions: pd.DataFrame, classes: list[str], catalogue: tp.Catalogue, tcfg: dict, input_path
) -> tuple[pd.DataFrame, str]:
    """Conversion by intent x touchpoint from the sessions that logged a touchpoint, and which
    intents they were estimated from (labels or predictions)."""
    if "touchpoint" not in sessions or not sessions["touchpoint"].notna().any():
        raise ValueError(
            f"{input_path}: no session records a touchpoint shown (data.columns.touchpoint), "
            "so conversion by touchpoint cannot be estimated"
        )
    est = tcfg["estimation"]
    logged = sessions[sessions["touchpoint"].notna()]
    weights, source = tp.intent_weights(logged, classes, est["intent_source"])
    estimator = (
        tp.estimate_conversion if source == "label" else tp.estimate_conversion_from_predictions
    )
    estimates = estimator(
        logged,
        weights,
        classes,
        catalogue.names,
        min_effective_sessions=float(est["min_effective_sessions"]),
        prior_strength=float(est["prior_strength"]),
        level=float(est["level"]),
    )
    return estimates, source


def allocate_budget(rows: pd.DataFrame, feed, catalogue: tp.Catalogue, acfg: dict):
    """The budgeted allocation over the journeys that may be contacted: each row's allocated
    touchpoint and its expected conversion (added to `rows`), and the allocation by touchpoint."""
    contactable = rows["contact"].to_numpy()
    alloc = tp.allocate(
        np.where(contactable[:, None], feed.score, -np.inf),
        catalogue.capacities,
        catalogue.costs,
        catalogue.budget,
        time_limit=float(acfg["time_limit_s"]),
        mip_rel_gap=float(acfg["mip_rel_gap"]),
        exact_max_pairs=int(acfg["exact_max_pairs"]),
    )
    names = np.asarray(catalogue.names, dtype=object)
    chosen = alloc.choice >= 0
    pick = np.where(chosen, alloc.choice, 0)
    rows["allocated_touchpoint"] = np.where(chosen, names[pick], None)
    rows["allocated_expected_conversion"] = np.where(
        chosen, feed.expected_conversion[np.arange(len(rows)), pick], np.nan
    )
    best = rows["recommended_touchpoint"].where(contactable)
    table = pd.DataFrame(
        {
            "capacity": catalogue.capacities,
            "cost": catalogue.costs,
            "unconstrained": best.value_counts().reindex(catalogue.names, fill_value=0),
            "allocated": rows["allocated_touchpoint"]
            .value_counts()
            .reindex(catalogue.names, fill_value=0),
        },
        index=pd.Index(catalogue.names, name="touchpoint"),
    )
    table["allocated_cost"] = table["allocated"] * pd.Series(catalogue.costs, index=catalogue.names)
    return alloc, table


def allocation_headline(rows: pd.DataFrame, alloc, table: pd.DataFrame) -> dict:
    """The feed's headline numbers: journeys by treatment, and expected conversions and value
    allocated against the unconstrained best."""
    contactable = rows["contact"].to_numpy()
    allocated = float(np.nansum(rows["allocated_expected_conversion"]))
    unconstrained = float(rows["expected_conversion"][contactable].sum())
    return {
        "journeys": len(rows),
        "journeys_contacted": int((alloc.choice >= 0).sum()),
        "journeys_holdout": int(rows["holdout"].sum()),
        "journeys_suppressed": int(rows["suppressed"].sum()),
        "expected_conversions_allocated": round(allocated, 3),
        "expected_conversions_unconstrained": round(unconstrained, 3),
        "allocation_share_of_unconstrained": round(allocated / unconstrained, 4)
        if unconstrained > 0
        else None,
        "allocated_cost": round(float(table["allocated_cost"].sum()), 2),
        "expected_cost_per_conversion": _ratio(float(table["allocated_cost"].sum()), allocated),
        "expected_value_unconstrained": round(float(rows["expected_value"][contactable].sum()), 2),
        "allocation_status": alloc.status,
        "allocation_bound": None if alloc.bound is None else round(alloc.bound, 3),
    }


def _ratio(a: float, b: float) -> float | None:
    return round(float(a) / float(b), 4) if b and np.isfinite(b) and b > 0 else None


def date_range(sessions: pd.DataFrame) -> dict:
    """The first and last session start the feed was built from (ISO text; None without times)."""
    started = pd.to_datetime(sessions.get("started_at", pd.Series(dtype=object)), utc=True)
    if started.notna().any():
        return {"date_from": started.min().isoformat(), "date_to": started.max().isoformat()}
    return {"date_from": None, "date_to": None}


def policy_evaluation(
    sessions: pd.DataFrame,
    classes: list[str],
    rates: np.ndarray,
    catalogue: tp.Catalogue,
    stores: np.ndarray | None,
    tcfg: dict,
) -> tuple[pd.DataFrame, tp.Feed, pd.DataFrame]:
    """The policies valued where the logging policy decided: at each journey's latest session,
    in the context as it stood before that session's touchpoint and conversion
    (`journey_context(..., before_latest=True)`). Returns that context, the feed's choices in
    it, and the table of `policy_values`."""
    before = tp.journey_context(sessions, catalogue, before_latest=True)
    policy = feed_of(before, classes, rates, catalogue, stores, tcfg)
    level = float(tcfg["estimation"]["level"])
    return before, policy, policy_values(before, policy, classes, rates, catalogue, level)


def policy_values(
    ctx: pd.DataFrame,
    feed: tp.Feed,
    classes: list[str],
    rates: np.ndarray,
    catalogue: tp.Catalogue,
    level: float,
) -> pd.DataFrame:
    """What the feed's choice, and each touchpoint sent to everyone it may meet, would convert,
    estimated before launch from each journey's latest logged touchpoint and conversion (SNIPS
    and doubly robust), beside what the logging policy converted. `ctx` holds the logged
    decisions; `feed` is the policy's, built on the context before them (`policy_evaluation`).

    Journeys whose latest session logged no usable touchpoint (outside the catalogue, or no
    propensity) are left out of every estimate; `rows` says how many each policy acts on."""
    names = list(catalogue.names)
    logged = ctx["touchpoint"].astype(object).map({n: i for i, n in enumerate(names)})
    prop = pd.to_numeric(ctx.get("touchpoint_propensity"), errors="coerce")
    usable = (logged.notna() & prop.gt(0) & prop.le(1) & ctx["converted"].notna()).to_numpy()
    if not usable.any():
        return pd.DataFrame(columns=[*pv.COLUMNS, "expected_conversions"])
    proba = np.nan_to_num(ctx[[f"p_{c}" for c in classes]].to_numpy(dtype=float))
    # a touchpoint without an estimate for some intent is never chosen; its model rate is its
    # mean over the intents that have one
    known = np.isfinite(rates)
    mean = np.where(known, rates, 0.0).sum(axis=0) / np.maximum(known.sum(axis=0), 1)
    filled = np.where(known, rates, mean[None, :])
    q_hat = proba @ np.nan_to_num(filled)
    acts = (
        feed.rows["recommended_touchpoint"].notna().to_numpy() & ~feed.rows["suppressed"].to_numpy()
    )
    best = np.argmax(np.where(np.isfinite(feed.score), feed.score, -np.inf), axis=1)
    policies = {"The feed's choice": pv.one_hot(np.where(acts, best, -1), len(names))}
    for j, name in enumerate(names):
        if np.isfinite(rates[:, j]).all():
            may = feed.eligible[:, j] & ~feed.rows["suppressed"].to_numpy()
            policies[f"{catalogue.labels[name]} for everyone"] = pv.one_hot(
                np.where(may, j, -1), len(names)
            )
    table = pv.compare_policies(
        {k: m[usable] for k, m in policies.items()},
        logged.to_numpy()[usable].astype(np.int64),
        prop.to_numpy(dtype=float)[usable],
        ctx["converted"].astype("boolean").to_numpy(dtype=float)[usable],
        q_hat[usable],
        level,
    )
    for col in ("conversion_rate", "ci_low", "ci_high"):
        suffix = {"conversion_rate": "", "ci_low": "_low", "ci_high": "_high"}[col]
        table[f"expected_conversions{suffix}"] = table[col] * table["rows"]
    return table
