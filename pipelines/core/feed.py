"""The touchpoint feed assembled from scored sessions: conversion estimates by intent x
touchpoint, the feed of each journey, the budgeted allocation, the marketer's tables and the
headline numbers. Pure: frames and a config in, frames and numbers out."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

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
    ok, reasons = tp.eligibility(ctx, catalogue, stores)
    feed = tp.build_feed(
        ctx,
        classes,
        tp.rate_matrix(estimates, classes, catalogue.names),
        catalogue,
        ok,
        reasons,
        objective=tcfg["objective"],
        holdout_share=float(tcfg["holdout_share"]),
        holdout_salt=str(tcfg["holdout_salt"]),
        suppress_after_conversion_hours=tcfg["suppress_after_conversion_hours"],
    )
    rows = feed.rows
    rows.insert(2, "scored_at", pd.Timestamp(datetime.now(UTC)))
    alloc, allocation_table = allocate_budget(rows, feed, catalogue, tcfg["allocation"])
    tables = tp.marketer_tables(sessions, rows, classes)
    tables["allocation"] = allocation_table
    tables["conversion_by_intent_and_touchpoint"] = estimates.set_index(["intent", "touchpoint"])
    headline = {
        **counts,
        **allocation_headline(rows, alloc, allocation_table),
        "objective": tcfg["objective"],
        "intent_source_for_estimates": source,
        "cells_estimated": int(estimates["status"].eq("ok").sum()),
        "cells_insufficient": int((~estimates["status"].eq("ok")).sum()),
        "touchpoints_without_estimates": feed.unestimated,
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
        "expected_value_unconstrained": round(float(rows["expected_value"][contactable].sum()), 2),
        "allocation_status": alloc.status,
        "allocation_bound": None if alloc.bound is None else round(alloc.bound, 3),
    }
