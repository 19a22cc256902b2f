"""Touchpoint benchmark: how many conversions the recommended touchpoints are worth.

The generator knows the true conversion rate of every intent x touchpoint, so each policy's
choice for a journey is worth exactly `conversion[true intent of its latest session, touchpoint]`
expected conversions: no sampling noise. Generates training sessions and trains the intent model
(`pipelines.stages.train.train` on the configured engine, nothing logged), then generates fresh sessions ("today"), scores them
with the model, estimates conversion by intent x touchpoint from today's logged touchpoints the way
`micromoment touchpoints` does (from *predicted* intents: labels are unknown at feed time), and
compares, on each journey's latest session and with the same eligibility rules
(`conf/touchpoints/default.yaml`):

- **the feed's policy**: model probabilities x estimated rates, best eligible touchpoint;
- **(b) Bayes-driven**: the generator's Bayes-optimal posterior x the same estimated rates;
- **(a) oracle**: the true intent x the true rates, best eligible touchpoint;
- **logging policy**: what the logged propensities would show (ignores eligibility);
- **one touchpoint for everyone**: the touchpoint with the most estimated conversions over all
  journeys, sent to every journey it may meet (the others get no contact).

Target: the feed's policy reaches >= 95% of (b). Also times the budgeted allocation.

    python bench/bench_touchpoints.py                 # 200k training + 100k fresh sessions
    python bench/bench_touchpoints.py --train-sessions 50000 --sessions 30000 --out /tmp/R.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import (
    DEFAULT_RESULTS,
    command_line,
    compose_config,
    generate_sessions,
    pct,
    run_metadata,
    write_section,
)
from threadpoolctl import threadpool_limits

from pipelines.core.contract import DatasetSpec
from pipelines.core.synthetic import GeneratorParams
from pipelines.core.touchpoints import (
    Catalogue,
    allocate,
    build_feed,
    eligibility,
    estimate_conversion,
    estimate_conversion_from_predictions,
    intent_weights,
    journey_context,
    rate_matrix,
)
from pipelines.io.readers import load_stores
from pipelines.stages.train import train

TARGET = 0.95  # the feed's policy / the Bayes-driven policy


def _best(score: np.ndarray) -> np.ndarray:
    """Index of the best allowed touchpoint per row (-1 when none is allowed)."""
    best = np.argmax(score, axis=1)
    best[~np.isfinite(score).any(axis=1)] = -1
    return best


def run(train_sessions: int, sessions: int, threads: int, seed: int) -> dict:
    gen_params = compose_config("generate")["generator"]
    truth = GeneratorParams.from_config(gen_params)
    tcfg = compose_config("touchpoints")["touchpoints"]
    catalogue = Catalogue.from_config(tcfg)
    with tempfile.TemporaryDirectory(prefix="bench_touchpoints_") as tmp:
        root = Path(tmp)
        generate_sessions(train_sessions, root / "train", seed, True, gen_params)
        today = generate_sessions(sessions, root / "today", seed + 1, True, gen_params)
        cfg = compose_config(
            "train",
            [
                f"data.path={root / 'train' / 'sessions'}",
                f"data.stores_path={root / 'train' / 'stores.csv'}",
                f"output_dir={root / 'out'}",
                f"runtime.threads={threads}",
                "baselines=false",
            ],
        )
        with threadpool_limits(limits=threads):
            model = train(cfg).model
        spec = DatasetSpec.from_config(cfg["data"])
        classes = list(spec.classes)
        raw = pd.read_parquet(root / "today" / "sessions")
        stores = np.asarray(load_stores(str(root / "today" / "stores.csv")))

        t0 = time.perf_counter()
        pred = model.predict(raw.drop(columns=["intent", *[f"bayes_p_{c}" for c in classes]]))
        score_s = time.perf_counter() - t0
        sessions_df = raw.assign(label=raw["intent"], intent=pred["intent"].to_numpy())
        for c in classes:
            sessions_df[f"p_{c}"] = pred[f"p_{c}"].to_numpy()

        t0 = time.perf_counter()
        est_cfg = tcfg["estimation"]
        estimates = {}
        for source in ("predicted", "label"):
            w, _ = intent_weights(sessions_df, classes, source)
            # predicted intents: regress conversion on the probabilities (weighting sessions by
            # them mixes the intents' rates), as `micromoment touchpoints` does
            estimator = (
                estimate_conversion_from_predictions
                if source == "predicted"
                else estimate_conversion
            )
            estimates[source] = estimator(
                sessions_df,
                w,
                classes,
                catalogue.names,
                min_effective_sessions=est_cfg["min_effective_sessions"],
                prior_strength=est_cfg["prior_strength"],
                level=est_cfg["level"],
            )
        rates = rate_matrix(estimates["predicted"], classes, catalogue.names)
        ctx = journey_context(sessions_df, catalogue)
        ok, reasons = eligibility(ctx, catalogue, stores)
        feed = build_feed(ctx, classes, rates, catalogue, ok, reasons, holdout_share=0.0)
        feed_s = time.perf_counter() - t0

        true_rates = truth.conversion[
            :, [list(truth.touchpoints).index(t) for t in catalogue.names]
        ]
        z = ctx["label"].map({c: k for k, c in enumerate(classes)}).to_numpy()
        worth = true_rates[z]  # journeys x touchpoints: true conversion of each choice
        allowed = feed.eligible
        n = len(ctx)
        idx = np.arange(n)

        def value(choice: np.ndarray) -> float:
            return float(np.where(choice >= 0, worth[idx, np.maximum(choice, 0)], 0.0).sum())

        ours = _best(feed.score)
        bayes_p = ctx[[f"bayes_p_{c}" for c in classes]].to_numpy()
        bayes = _best(np.where(allowed, bayes_p @ np.nan_to_num(rates), -np.inf))
        oracle = _best(np.where(ok, worth, -np.inf))
        device = ctx["device"].astype(object).to_numpy()
        policy = np.vstack(
            [
                truth.logging_policy[list(truth.devices).index(d)]
                if d in truth.devices
                else np.full(len(truth.touchpoints), np.nan)
                for d in device
            ]
        )[:, [list(truth.touchpoints).index(t) for t in catalogue.names]]
        logging_value = float(np.nansum(policy * worth))
        # the one touchpoint with the most expected conversions over all journeys; journeys it
        # may not meet get no contact
        single = int(np.argmax(np.where(allowed, feed.expected_conversion, 0.0).sum(axis=0)))
        one_for_all = np.where(allowed[:, single], single, -1)
        values = {
            "the feed's policy (model x estimated rates)": value(ours),
            "(b) Bayes-optimal posterior x estimated rates": value(bayes),
            "(a) oracle: true intent x true rates": value(oracle),
            "logging policy (logged propensities)": logging_value,
            f"one touchpoint for everyone ({catalogue.names[single]})": value(one_for_all),
        }

        # the budgeted allocation on the same feed: default capacities, then a budget
        allocs = {}
        for label, budget in (("capacities", None), ("capacities + budget 2000", 2000.0)):
            t0 = time.perf_counter()
            alloc = allocate(feed.score, catalogue.capacities, catalogue.costs, budget)
            allocs[label] = {
                "seconds": time.perf_counter() - t0,
                "value": value(alloc.choice),
                "expected": alloc.objective,
                "contacts": int((alloc.choice >= 0).sum()),
                "status": alloc.status,
                "gap": (alloc.bound - alloc.objective) / alloc.bound if alloc.bound else 0.0,
            }

    err = {}
    for source, est in estimates.items():
        order = [list(truth.touchpoints).index(t) for t in est["touchpoint"]]
        true = truth.conversion[est["intent"].map(classes.index).to_numpy(), order]
        ok_cells = est["status"].eq("ok").to_numpy()
        covered = (est["ci_low"] <= true) & (true <= est["ci_high"])
        err[source] = {
            "mae": float(np.abs(est["rate"].to_numpy() - true)[ok_cells].mean()),
            "coverage": float(covered[ok_cells].mean()),
            "cells": int(ok_cells.sum()),
        }
    return {
        "journeys": n,
        "sessions": today["sessions"],
        "train_sessions": train_sessions,
        "threads": threads,
        "values": values,
        "allocs": allocs,
        "estimate_error": err,
        "score_s": score_s,
        "feed_s": feed_s,
        "unconstrained": value(ours),
    }


def render(res: dict, command: str, meta: list[str]) -> str:
    v = res["values"]
    keys = list(v)
    ours, bayes, oracle, logging_v, single = (v[k] for k in keys)
    lines = [
        f"## Touchpoints: expected conversions of the feed's policy, {res['journeys']:,} journeys",
        "",
        f"`{command}`",
        "",
        *meta,
        f"- the intent model trained on ~{res['train_sessions']:,} generated sessions "
        f"({res['threads']} LightGBM threads); the feed built on {res['sessions']:,} fresh "
        f"sessions ({res['journeys']:,} journeys), each journey judged at its latest session",
        "- conversion by intent x touchpoint estimated from the fresh sessions' logged "
        "touchpoints with *predicted* intents (as `micromoment touchpoints` does without labels); "
        "eligibility from `conf/touchpoints/default.yaml`",
        "- each choice is worth the generator's true conversion rate for the session's true "
        "intent: expected conversions, no sampling noise",
        "",
        "| policy | expected conversions | share of (a) oracle | share of (b) Bayes-driven | "
        "uplift over logging | uplift over one-for-all |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k in keys:
        x = v[k]
        lines.append(
            f"| {k} | {x:,.1f} | {pct(x / oracle)} | {pct(x / bayes)} | "
            f"{pct(x / logging_v - 1)} | {pct(x / single - 1)} |"
        )
    passed = ours >= TARGET * bayes
    lines += [
        "",
        f"**The feed's policy reaches {pct(ours / bayes)} of the Bayes-driven policy** "
        f"(target >= {pct(TARGET, 0)}): **{'PASS' if passed else 'FAIL'}**; "
        f"{pct(ours / oracle)} of the oracle, {pct(ours / logging_v - 1)} more conversions than "
        "the logging policy.",
        "",
        "Conversion estimates against the generator's true rates (cells with enough data):",
        "",
        "| intents from | cells estimated | mean absolute error | 95% intervals covering the truth |",
        "|---|---:|---:|---:|",
    ]
    for source, e in res["estimate_error"].items():
        lines.append(f"| {source} | {e['cells']} | {e['mae']:.4f} | {pct(e['coverage'])} |")
    lines += [
        "",
        "Budgeted allocation on the same feed (HiGHS: the linear relaxation, rounded when large); "
        "time as a ratio of "
        "building the feed (estimates, eligibility, recommendations):",
        "",
        "| limits | journeys contacted | true expected conversions | share of unconstrained | "
        "solver time / feed time | status | gap to the LP bound |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for label, a in res["allocs"].items():
        lines.append(
            f"| {label} | {a['contacts']:,} | {a['value']:,.1f} | "
            f"{pct(a['value'] / res['unconstrained'])} | {a['seconds'] / res['feed_s']:.2f}x | "
            f"{a['status']} | {pct(a['gap'], 3)} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-sessions", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=100_000, help="fresh sessions to feed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--section", default="bench_touchpoints")
    args = parser.parse_args(argv)
    if args.train_sessions < 5000 or args.sessions < 5000 or args.threads < 1:
        parser.error("--train-sessions and --sessions >= 5000, --threads >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = run_metadata()
    res = run(args.train_sessions, args.sessions, args.threads, args.seed)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    report = render(res, command, meta)
    print("\n" + report, flush=True)
    path = write_section(args.out, args.section, report)
    print(f"wrote section {args.section!r} of {path}", flush=True)
    values = list(res["values"].values())
    return 0 if values[0] >= TARGET * values[1] else 1


if __name__ == "__main__":
    sys.exit(main())
