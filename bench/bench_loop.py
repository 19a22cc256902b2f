"""Loop benchmark: do the feed's intervals hold on the synthetic world, over seeds?

The generator knows every true rate, so each interval the feed and `measure` report can be
checked against the truth it estimates. Trains ONE intent model (`pipelines.stages.train.train`
on generated sessions, nothing logged), then for each of `--seeds` fresh worlds (generator seeds
`seed + 1000`, `seed + 2000`, ...; the response to the feed draws from its own stream):

1. scores the world's sessions with the model and builds the feed as `core/feed.py` `build()`
   does (conversion estimates from *predicted* intents, journey context, eligibility, the feed
   with the configured holdout share, the budgeted allocation) and its policy values
   (`feed.policy_evaluation`: the policies chosen in the context before each journey's latest
   logged decision, valued on that decision's touchpoint, propensity and conversion);
2. **conversion estimates**: share of the 95% intervals (cells with enough data x seeds) that
   cover the generator's true rate (target >= 90%); label-based estimates for reference;
3. **policy value before launch**: the true value of "The feed's choice" is the mean, over the
   journeys it acts on, of the true conversion rate of the true intent of the journey's latest
   session with the chosen touchpoint; target: the SNIPS interval covers it in >= 17 of 20 seeds,
   and so does the doubly robust one. The logging policy (observed) and the touchpoints "for
   everyone" are reported beside it;
4. **measured uplift**: the world responds to the feed (`core/response.respond`: the allocated
   touchpoint, the true intent of the latest session), `core/measure.measure` measures it; the
   true uplift is the mean over the treated arm of the true chance to convert within the window
   with its touchpoint minus without contact (`core/response.expected`); target: the overall
   uplift interval covers it in >= 17 of 20 seeds.

    python bench/bench_loop.py                      # 100k training sessions, 20 worlds of 60k
    python bench/bench_loop.py --train-sessions 30000 --sessions 20000 --seeds 3 --out /tmp/R.md
"""

from __future__ import annotations

import argparse
import shutil
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

from pipelines.core import feed as feed_mod
from pipelines.core import response
from pipelines.core import touchpoints as tp
from pipelines.core.contract import DatasetSpec
from pipelines.core.measure import feed_time, measure
from pipelines.core.policy_value import DOUBLY_ROBUST, LOGGING_POLICY, OBSERVED, SNIPS
from pipelines.core.synthetic import GeneratorParams
from pipelines.io.readers import load_stores
from pipelines.stages.train import train

ESTIMATE_TARGET = 0.90  # share of conversion intervals (cells x seeds) covering the true rate
SEED_TARGET = 17 / 20  # share of seeds whose policy-value or uplift interval covers the truth
FEED_CHOICE = "The feed's choice"
SEED_STEP = 1000  # world i is generated with seed + SEED_STEP * i: independent streams


def train_model(root: Path, sessions: int, gen_params: dict, threads: int, seed: int):
    """The one intent model every world is scored with, and its class order."""
    data = Path(generate_sessions(sessions, root / "train", seed, False, gen_params)["path"]).parent
    cfg = compose_config(
        "train",
        [
            f"data.path={data / 'sessions'}",
            f"data.stores_path={data / 'stores.csv'}",
            f"output_dir={root / 'train_out'}",
            f"runtime.threads={threads}",
            "baselines=false",
        ],
    )
    with threadpool_limits(limits=threads):
        result = train(cfg)
    shutil.rmtree(data)
    return result.model, list(DatasetSpec.from_config(cfg["data"]).classes), result.metrics


def scored_world(model, classes: list[str], data: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The world's sessions as the feed reads them (canonical roles, the model's `p_<class>`
    and predicted `intent`), the true intent kept as `label`; and the store table."""
    raw = pd.read_parquet(data / "sessions")
    stores = np.asarray(load_stores(str(data / "stores.csv")))
    pred = model.predict(raw.drop(columns=["intent"]))
    sessions = raw.assign(label=raw["intent"], intent=pred["intent"].to_numpy())
    for c in classes:
        sessions[f"p_{c}"] = pred[f"p_{c}"].to_numpy()
    return sessions, stores


def build_world_feed(sessions: pd.DataFrame, stores, classes, tcfg: dict) -> dict:
    """The feed as `core/feed.py` `build()` builds it, with the matrices the truth needs."""
    catalogue = tp.Catalogue.from_config(tcfg)
    estimates, source = feed_mod.conversion_estimates(
        sessions, classes, catalogue, tcfg, "bench world"
    )
    assert source == "predicted", source
    ctx = tp.journey_context(sessions, catalogue)
    rates = tp.rate_matrix(estimates, classes, catalogue.names)
    feed = feed_mod.feed_of(ctx, classes, rates, catalogue, stores, tcfg)
    rows = feed.rows
    rows.insert(2, "scored_at", pd.Timestamp("2026-11-01", tz="UTC"))
    feed_mod.allocate_budget(rows, feed, catalogue, tcfg["allocation"])
    level = float(tcfg["estimation"]["level"])
    before, policy, values = feed_mod.policy_evaluation(
        sessions, classes, rates, catalogue, stores, tcfg
    )
    est = tcfg["estimation"]
    weights, _ = tp.intent_weights(sessions, classes, "label")
    by_label = tp.estimate_conversion(
        sessions,
        weights,
        classes,
        catalogue.names,
        min_effective_sessions=float(est["min_effective_sessions"]),
        prior_strength=float(est["prior_strength"]),
        level=level,
    )
    return {
        "catalogue": catalogue,
        "ctx": ctx,
        "feed": feed,
        "policy": policy,
        "before": before,
        "rows": rows,
        "values": values,
        "estimates": {"predicted": estimates, "label": by_label},
    }


def estimate_coverage(estimates: pd.DataFrame, truth: GeneratorParams) -> dict:
    """Cells with an interval, how many cover the true rate, and their total width."""
    ok = estimates["status"].eq("ok").to_numpy()
    est = estimates[ok]
    z = [truth.intents.index(c) for c in est["intent"]]
    t = [truth.touchpoints.index(n) for n in est["touchpoint"]]
    true = truth.conversion[z, t]
    covered = (est["ci_low"].to_numpy() <= true) & (true <= est["ci_high"].to_numpy())
    return {
        "cells": int(ok.sum()),
        "covered": int(covered.sum()),
        "width": float((est["ci_high"] - est["ci_low"]).sum()),
        "missed": [
            (c, n, r, lo, hi)
            for c, n, r, lo, hi, hit in zip(
                est["intent"],
                est["touchpoint"],
                true,
                est["ci_low"],
                est["ci_high"],
                covered,
                strict=True,
            )
            if not hit
        ],
    }


def true_policy_values(world: dict, truth: GeneratorParams) -> tuple[dict[str, float], dict]:
    """Each policy's true value on the rows `policy_values` evaluates it on: the mean true
    conversion of the latest session's true intent with the touchpoint the policy chooses; and
    what the estimators read on the feed's rows (latest sessions that converted)."""
    # the policies as valued: chosen in the context before each latest decision
    ctx, feed, catalogue = world["before"], world["policy"], world["catalogue"]
    names = list(catalogue.names)
    cols = [truth.touchpoints.index(n) for n in names]
    z = ctx["label"].map(truth.intents.index).to_numpy()
    worth = truth.conversion[z][:, cols]  # journeys x catalogue touchpoints
    logged = ctx["touchpoint"].astype(object).map({n: i for i, n in enumerate(names)})
    prop = pd.to_numeric(ctx["touchpoint_propensity"], errors="coerce")
    usable = (logged.notna() & prop.gt(0) & prop.le(1) & ctx["converted"].notna()).to_numpy()
    suppressed = feed.rows["suppressed"].to_numpy(dtype=bool)
    acts = feed.rows["recommended_touchpoint"].notna().to_numpy() & ~suppressed
    best = np.argmax(np.where(np.isfinite(feed.score), feed.score, -np.inf), axis=1)
    idx = np.arange(len(ctx))
    out = {FEED_CHOICE: _mean(worth[idx, best], acts & usable)}
    # what the estimators read on those rows: how many latest sessions converted
    converted = ctx["converted"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    read = {
        "acted_rows": int((acts & usable).sum()),
        "acted_converted": int((converted & acts & usable).sum()),
        "usable_converted_share": float(converted[usable].mean()),
    }
    for j, name in enumerate(names):
        may = feed.eligible[:, j] & ~suppressed
        out[f"{catalogue.labels[name]} for everyone"] = _mean(worth[:, j], may & usable)
    # the logging policy's value: its expected conversion over the touchpoints it may show
    device = ctx["device"].astype(object).map(truth.devices.index).to_numpy()
    shown = truth.logging_policy[device]  # journeys x world touchpoints
    expected = (shown * truth.conversion[z]).sum(axis=1)
    out[LOGGING_POLICY] = _mean(expected, usable)
    return out, read


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else np.nan


def true_uplift(rows: pd.DataFrame, params: response.ResponseParams, window_days: float):
    """The treated arm's mean true chance to convert within the window with its allocated
    touchpoint (none if the allocation did not reach it) minus without contact."""
    treated = (
        rows["recommended_touchpoint"].notna()
        & ~rows["suppressed"].astype(bool)
        & ~rows["holdout"].astype(bool)
    ).to_numpy()
    part = rows[treated]
    z = part["true_intent"].map(params.intents.index).to_numpy()
    touch = part["allocated_touchpoint"].map(
        lambda t: -1 if t is None or pd.isna(t) else params.touchpoints.index(t)
    )
    touch = touch.to_numpy(dtype=np.int64)
    with_contact = response.expected(params, z, touch, window_days)["converted"]
    without = response.expected(params, z, np.full(len(z), -1), window_days)["converted"]
    return float((with_contact - without).mean()), int(treated.sum())


def outcomes(world: dict, params, classes, window_days, return_days, level, rng) -> dict:
    """The world's response to the feed, measured: the overall uplift and its interval, beside
    the true uplift."""
    rows = world["rows"].copy()
    true_intent = world["ctx"].set_index("session_id")["label"]
    rows["true_intent"] = rows["session_id"].map(true_intent).to_numpy()
    journeys = pd.DataFrame(
        {
            "journey_id": rows["journey_id"],
            "session_id": rows["session_id"],
            "intent": rows["true_intent"],
            "touchpoint": rows["allocated_touchpoint"],
        }
    )
    feed_at = feed_time(rows)
    events = response.respond(params, journeys, feed_at, window_days, rng)
    costs = dict(zip(world["catalogue"].names, world["catalogue"].costs, strict=True))
    measured = measure(rows, events, classes, costs, window_days, return_days, level)
    overall = measured["uplift"].iloc[0]
    truth, treated = true_uplift(rows, params, window_days)
    assert treated == overall["treated_journeys"], (treated, overall["treated_journeys"])
    return {
        "true": truth,
        "uplift": float(overall["uplift"]),
        "ci_low": float(overall["ci_low"]),
        "ci_high": float(overall["ci_high"]),
        "treated": int(overall["treated_journeys"]),
        "control": int(overall["control_journeys"]),
    }


def one_world(model, classes, seed: int, args, root: Path, configs: dict) -> dict:
    """Everything measured on one fresh world."""
    gen_params, truth, tcfg, params = (configs[k] for k in ("gen", "truth", "tcfg", "response"))
    t0 = time.perf_counter()
    data = Path(
        generate_sessions(args.sessions, root / f"world_{seed}", seed, False, gen_params, True)[
            "path"
        ]
    ).parent
    sessions, stores = scored_world(model, classes, data)
    shutil.rmtree(data)
    world = build_world_feed(sessions, stores, classes, tcfg)
    table = world["values"].set_index(["policy", "estimator"])
    truths, read = true_policy_values(world, truth)
    rng = np.random.default_rng([seed, 1])  # the response's own stream
    mcfg = configs["measure"]
    res = outcomes(
        world, params, classes, mcfg["window_days"], mcfg["return_days"], mcfg["level"], rng
    )
    return {
        "seed": seed,
        "sessions": len(sessions),
        "journeys": len(world["ctx"]),
        "coverage": {k: estimate_coverage(e, truth) for k, e in world["estimates"].items()},
        "policies": policy_rows(table, truths),
        "read": read,
        "uplift": res,
        "seconds": time.perf_counter() - t0,
    }


def policy_rows(table: pd.DataFrame, truths: dict[str, float]) -> list[dict]:
    """One row per (policy, estimator) of the policy-value table, with the truth beside it."""
    out = []
    for (policy, estimator), row in table.iterrows():
        true = truths.get(policy, np.nan)
        out.append(
            {
                "policy": policy,
                "estimator": estimator,
                "value": float(row["conversion_rate"]),
                "ci_low": float(row["ci_low"]),
                "ci_high": float(row["ci_high"]),
                "rows": int(row["rows"]),
                "true": true,
                "covered": bool(row["ci_low"] <= true <= row["ci_high"]),
            }
        )
    return out


def run(args: argparse.Namespace) -> dict:
    gen_params = compose_config("generate")["generator"]
    tcfg = compose_config(
        "touchpoints",
        [
            f"touchpoints.holdout_share={args.holdout_share}",
            "touchpoints.estimation.intent_source=predicted",
        ],
    )["touchpoints"]
    mcfg = compose_config("measure")["measure"]
    for key in ("window_days", "return_days"):
        if getattr(args, key) is not None:
            mcfg[key] = getattr(args, key)
    configs = {
        "measure": mcfg,
        "gen": gen_params,
        "truth": GeneratorParams.from_config(gen_params),
        "tcfg": tcfg,
        "response": response.ResponseParams.from_config(gen_params),
    }
    worlds = []
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        model, classes, metrics = train_model(
            root, args.train_sessions, gen_params, args.threads, args.seed
        )
        train_s = time.perf_counter() - t0
        print(f"trained: test accuracy {metrics['test/accuracy']:.4f}", flush=True)
        for i in range(1, args.seeds + 1):
            seed = args.seed + SEED_STEP * i
            with threadpool_limits(limits=args.threads):
                w = one_world(model, classes, seed, args, root, configs)
            worlds.append(w)
            print(progress_line(i, args.seeds, w), flush=True)
    return {
        "worlds": worlds,
        "train_s": train_s,
        "accuracy": metrics["test/accuracy"],
        "measure": mcfg,
    }


def progress_line(i: int, n: int, w: dict) -> str:
    feed = {(p["policy"], p["estimator"]): p for p in w["policies"]}
    s, d = feed[(FEED_CHOICE, SNIPS)], feed[(FEED_CHOICE, DOUBLY_ROBUST)]
    u = w["uplift"]
    cov = w["coverage"]["predicted"]
    return (
        f"[{i}/{n}] seed {w['seed']}: estimates {cov['covered']}/{cov['cells']}; "
        f"feed's choice true {s['true']:.4f} SNIPS {s['value']:.4f} [{s['ci_low']:.4f}, "
        f"{s['ci_high']:.4f}] DR {d['value']:.4f} [{d['ci_low']:.4f}, {d['ci_high']:.4f}]; "
        f"uplift true {u['true']:.4f} measured {u['uplift']:.4f} [{u['ci_low']:.4f}, "
        f"{u['ci_high']:.4f}] ({w['seconds']:.0f} s)"
    )


# ---------------------------------------------------------------------------------------------
# the report


def summarise(res: dict) -> dict:
    """The targets' counts over seeds."""
    worlds = res["worlds"]
    n = len(worlds)
    out = {"seeds": n}
    for source in ("predicted", "label"):
        cells = sum(w["coverage"][source]["cells"] for w in worlds)
        covered = sum(w["coverage"][source]["covered"] for w in worlds)
        width = sum(w["coverage"][source]["width"] for w in worlds)
        missed = pd.Series(
            [(m[0], m[1]) for w in worlds for m in w["coverage"][source]["missed"]], dtype=object
        )
        out[f"estimates_{source}"] = {
            "missed": list(missed.value_counts().items()),
            "cells": cells,
            "covered": covered,
            "share": covered / cells if cells else np.nan,
            "width": width / cells if cells else np.nan,
        }
    policies = pd.DataFrame([dict(p, seed=w["seed"]) for w in worlds for p in w["policies"]])
    policies["width"] = policies["ci_high"] - policies["ci_low"]
    policies["error"] = policies["value"] - policies["true"]
    out["policies"] = policies
    out["read"] = [w["read"] for w in worlds]
    uplift = pd.DataFrame([w["uplift"] for w in worlds])
    uplift["covered"] = (uplift["ci_low"] <= uplift["true"]) & (uplift["true"] <= uplift["ci_high"])
    out["uplift"] = uplift
    return out


def seed_target(covered: int, n: int) -> bool:
    return covered >= SEED_TARGET * n


def render(res: dict, s: dict, args, command: str, meta: list[str]) -> tuple[str, bool]:
    n = s["seeds"]
    lines = [
        f"## Loop: intervals against the synthetic world's truth, {n} seeds",
        "",
        f"`{command}`",
        "",
        *meta,
        f"- one intent model trained on ~{args.train_sessions:,} generated sessions (seed "
        f"{args.seed}, {args.threads} LightGBM threads; test accuracy {res['accuracy']:.4f}); "
        f"{n} fresh worlds of {np.mean([w['sessions'] for w in res['worlds']]):,.0f} sessions "
        f"({np.mean([w['journeys'] for w in res['worlds']]):,.0f} journeys) on average, "
        f"generator seeds {args.seed} + {SEED_STEP} x 1..{n}, default generator",
        "- each world: scored by the model, the feed built as `core/feed.py` `build()` does "
        f"(estimates from *predicted* intents, holdout share {args.holdout_share:g}, the default "
        "allocation), its `policy_values`, the world's response to the allocated touchpoints "
        f"(true intent of each journey's latest session) and `measure` over {res['measure']['window_days']:g} "
        f"days (`conf/measure.yaml`); 95% intervals throughout",
        f"- time: training was {res['train_s'] / np.mean([w['seconds'] for w in res['worlds']]):.1f}x "
        "one world (generate, score, feed, policy values, response, measure)",
        "",
    ]
    ok = True
    for block in (render_estimates, render_policy, render_uplift):
        text, passed = block(s)
        lines += text
        ok &= passed
    lines += ["", f"**Overall: {'PASS' if ok else 'FAIL'}**"]
    return "\n".join(lines), ok


def _verdict(passed: bool) -> str:
    return "**PASS**" if passed else "**FAIL**"


def render_estimates(s: dict) -> tuple[list[str], bool]:
    p, lab = s["estimates_predicted"], s["estimates_label"]
    passed = p["share"] >= ESTIMATE_TARGET
    lines = [
        "### Conversion by intent x touchpoint: intervals covering the true rate",
        "",
        "| intents from | cells x seeds with an interval | covering | coverage | target | "
        "mean interval width | result |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| predicted (`estimate_conversion_from_predictions`, what the feed uses) | "
        f"{p['cells']} | {p['covered']} | {pct(p['share'])} | >= {pct(ESTIMATE_TARGET, 0)} | "
        f"{p['width']:.4f} | {_verdict(passed)} |",
        f"| labels (`estimate_conversion`, reference) | {lab['cells']} | {lab['covered']} | "
        f"{pct(lab['share'])} | - | {lab['width']:.4f} | - |",
        "",
        "Cells missed most often (predicted): "
        + (", ".join(f"{c} x {t} ({k})" for (c, t), k in p["missed"][:4]) or "none")
        + ".",
        "",
    ]
    return lines, passed


def render_policy(s: dict) -> tuple[list[str], bool]:
    n, pol = s["seeds"], s["policies"]
    lines = [
        "### Policy value before launch: intervals covering the true value",
        "",
        "True value: the mean, over the journeys the policy acts on (`rows`), of the true "
        "conversion rate of the latest session's true intent with the touchpoint it chooses "
        "(the logging policy: its expected conversion over the touchpoints it may show).",
        "",
        "| policy | estimator | seeds covered | coverage | target | mean estimate | mean truth | "
        "mean error | mean interval width | result |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    passed = True
    order = [(FEED_CHOICE, SNIPS), (FEED_CHOICE, DOUBLY_ROBUST), (LOGGING_POLICY, OBSERVED)]
    best = best_for_everyone(pol)
    order += [(best, SNIPS), (best, DOUBLY_ROBUST)] if best else []
    for policy, estimator in order:
        part = pol[(pol["policy"] == policy) & (pol["estimator"] == estimator)]
        covered = int(part["covered"].sum())
        target = policy == FEED_CHOICE
        ok = seed_target(covered, n)
        passed &= ok or not target
        name = policy if policy != best else f"{policy} (best for everyone by true value)"
        lines.append(
            f"| {name} | {estimator} | {covered}/{len(part)} | {pct(covered / len(part))} | "
            f"{'>= ' + str(int(np.ceil(SEED_TARGET * n))) + '/' + str(n) if target else '-'} | "
            f"{part['value'].mean():.4f} | {part['true'].mean():.4f} | "
            f"{part['error'].mean():+.4f} | {part['width'].mean():.4f} | "
            f"{_verdict(ok) if target else '-'} |"
        )
    every = pol[pol["policy"].str.endswith(" for everyone")]
    for estimator in (SNIPS, DOUBLY_ROBUST):
        part = every[every["estimator"] == estimator]
        blank = int(part["ci_low"].isna().sum())
        part = part.dropna(subset=["ci_low"])
        lines.append(
            f"| every touchpoint for everyone (pooled; {blank} without a value) | {estimator} | "
            f"{int(part['covered'].sum())}/{len(part)} | {pct(part['covered'].mean())} | - | "
            f"{part['value'].mean():.4f} | {part['true'].mean():.4f} | "
            f"{part['error'].mean():+.4f} | {part['width'].mean():.4f} | - |"
        )
    read = pd.DataFrame(s["read"])
    lines += [
        "",
        f"What the estimators read on the feed's rows: {read['acted_rows'].mean():,.0f} journeys "
        f"a seed, of whose latest sessions {read['acted_converted'].mean():,.1f} converted "
        f"(against {pct(read['usable_converted_share'].mean())} of all journeys' latest sessions).",
        "",
    ]
    return lines, passed


def best_for_everyone(pol: pd.DataFrame) -> str | None:
    """The touchpoint-for-everyone policy with the highest mean true value over seeds."""
    every = pol[pol["policy"].str.endswith(" for everyone")]
    if every.empty:
        return None
    return str(every.groupby("policy")["true"].mean().idxmax())


def render_uplift(s: dict) -> tuple[list[str], bool]:
    n, u = s["seeds"], s["uplift"]
    covered = int(u["covered"].sum())
    passed = seed_target(covered, n)
    lines = [
        "### Measured uplift: the overall interval covering the true uplift",
        "",
        "True uplift: the treated arm's mean true chance to convert within the window with its "
        "allocated touchpoint minus without contact (`core/response.expected`).",
        "",
        "| seeds covered | coverage | target | mean treated / control journeys | mean measured | "
        "mean truth | mean error | mean interval width | result |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {covered}/{n} | {pct(covered / n)} | >= {int(np.ceil(SEED_TARGET * n))}/{n} | "
        f"{u['treated'].mean():,.0f} / {u['control'].mean():,.0f} | {u['uplift'].mean():.4f} | "
        f"{u['true'].mean():.4f} | {(u['uplift'] - u['true']).mean():+.4f} | "
        f"{(u['ci_high'] - u['ci_low']).mean():.4f} | {_verdict(passed)} |",
    ]
    return lines, passed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-sessions", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=60_000, help="sessions per fresh world")
    parser.add_argument("--seeds", type=int, default=20, help="fresh worlds")
    parser.add_argument("--seed", type=int, default=17, help="training world; world i: + 1000 i")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--holdout-share", type=float, default=0.2)
    parser.add_argument("--window-days", type=float, help="default: measure.window_days")
    parser.add_argument("--return-days", type=float, help="default: measure.return_days")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--section", default="bench_loop")
    args = parser.parse_args(argv)
    if args.train_sessions < 5000 or args.sessions < 5000 or args.threads < 1 or args.seeds < 1:
        parser.error("--train-sessions and --sessions >= 5000, --threads and --seeds >= 1")
    if not 0 < args.holdout_share < 1:
        parser.error("--holdout-share must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = run_metadata()
    res = run(args)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    report, passed = render(res, summarise(res), args, command, meta)
    print("\n" + report, flush=True)
    path = write_section(args.out, args.section, report)
    print(f"wrote section {args.section!r} of {path}", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
