"""Cross-validation benchmark: what `eval.cv` costs, why a single split is not enough, and a
search judged on a cross-validated metric.

On one generated web-analytics-shaped table (12,000 sessions by default, the layout of
`conf/data/web_analytics.yaml`: one row per session, no journeys, a binary purchase label) and
the `train` config as the CLI composes it (`data=web_analytics`), measured in one run:

1. the cost of 3 x 3 cross-validation: the recipe trained without CV and with
   `eval.cv.folds=3 eval.cv.repeats=3` (interleaved, `--repeats` times each), each stage's median
   seconds and the ratios (whole `train()` with CV / without, CV seconds / one model's `train`
   seconds);
2. why cross-validate: the default config with `runtime.seed` = 1..`--seeds` and no CV, the
   spread (min, max, standard deviation) of the test accuracy and ROC-AUC across those seeds,
   beside the width of the 95% interval that one CV run gives;
3. a search judged on a CV metric: `run_tune` with `search.metric=cv/logloss/mean` and
   `--tune-folds` x `--tune-repeats` CV per trial (a temporary SQLite MLflow store and Optuna
   journal), then the best trial's config and the default trained with the same 3 x 3 CV and seed:
   both CV intervals, whether they overlap, the paired per-fold difference (both runs share
   their folds) and both models on the held-out test split.

The search optimises `cv/logloss/mean` (minimize): it is what early stopping and the pruner
watch while boosting, and it moves with every probability, not only the ranking.
Each trial cross-validates 3 x 1 by default (`--tune-repeats 3` for 3 x 3): the comparison's
3 x 3 runs share their first repeat with the search, and their other two repeats are folds the
search never chose on.

    python bench/bench_cv.py                                   # 12k rows, 8 trials, 2 threads
    python bench/bench_cv.py --rows 3000 --trials 3 --out /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from _common import (
    DEFAULT_RESULTS,
    command_line,
    compose_config,
    pct,
    run_metadata,
    write_section,
)
from omegaconf import OmegaConf
from threadpoolctl import threadpool_limits

from pipelines.core.cv import interval_half_width
from pipelines.core.web_analytics import web_analytics_export
from pipelines.stages.train import train
from pipelines.stages.tune import run_tune

# top-level stages timed inside `train` (its `timings`); the logistic baseline and the drivers
# run inside evaluate
STAGES = (
    ("read", "read (CSV)"),
    ("validate", "validate (contract, split)"),
    ("features", "features"),
    ("train", "train (LightGBM, early stopping)"),
    ("cv", "cross-validation"),
    ("calibrate", "calibrate"),
    ("evaluate", "evaluate (metrics, baselines, drivers)"),
)
SEARCH_METRIC = "cv/logloss/mean"  # minimised; see the module docstring


def timed_train(cfg: dict):
    """`train(cfg)` and its wall seconds."""
    start = time.perf_counter()
    result = train(cfg)
    return result, time.perf_counter() - start


def with_params(cfg: dict, params: Mapping[str, object]) -> dict:
    """A copy of `cfg` with the dotted keys of `params` (a trial's parameters) set."""
    out = copy.deepcopy(cfg)
    for key, value in params.items():
        node = out
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return out


def paired_difference(a: list[dict], b: list[dict], metric: str) -> dict[str, float]:
    """Mean of `metric` in folds `b` minus folds `a` (the same folds, in order) and its 95%
    corrected t interval."""
    if [(f["repeat"], f["fold"], f["test_rows"]) for f in a] != [
        (f["repeat"], f["fold"], f["test_rows"]) for f in b
    ]:
        raise ValueError("the two runs did not cross-validate on the same folds")
    diff = np.array(
        [fb["metrics"][metric] - fa["metrics"][metric] for fa, fb in zip(a, b, strict=True)]
    )
    ratio = np.mean([f["test_rows"] for f in a]) / np.mean([f["train_rows"] for f in a])
    half = interval_half_width(float(diff.std(ddof=1)), len(diff), float(ratio))
    mean = float(diff.mean())
    return {"mean": mean, "low": mean - half, "high": mean + half}


def first_repeats_mean(folds: list[dict], metric: str, repeats: int) -> float:
    """The mean of `metric` over the folds of the first `repeats` repeats: what a CV with that
    many repeats and the same seed scores."""
    return float(np.mean([f["metrics"][metric] for f in folds if f["repeat"] < repeats]))


def run(args: argparse.Namespace) -> dict:
    cv_on = [f"eval.cv.folds={args.folds}", f"eval.cv.repeats={args.cv_repeats}"]
    with tempfile.TemporaryDirectory(prefix="bench_cv_") as tmp:
        root = Path(tmp)
        table = root / "sessions.csv"
        export = web_analytics_export(args.rows, args.data_seed)
        export.to_csv(table, index=False)
        base = [
            "data=web_analytics",
            f"data.path={table}",
            # output_dir is ${hydra:runtime.output_dir}, which only a Hydra run resolves
            f"output_dir={root / 'out'}",
            f"runtime.threads={args.threads}",
            "model.log_every=0",
        ]
        plain_cfg = compose_config("train", base)
        cv_cfg = compose_config("train", [*base, *cv_on])
        seed = int(plain_cfg["runtime"]["seed"])
        # LightGBM threads come from runtime.threads; this caps BLAS/OpenMP in scikit-learn too
        with threadpool_limits(limits=args.threads):
            # 1. cost: runs with and without CV interleaved, so the machine's load hits both
            train(plain_cfg)  # a warm-up: the first call pays for lazy imports and caches
            plain_runs, cv_runs = [], []
            for i in range(args.repeats):
                print(f"[cost {i + 1}/{args.repeats}] without CV, then with CV ...", flush=True)
                plain_runs.append(timed_train(plain_cfg))
                cv_runs.append(timed_train(cv_cfg))
            default_cv = cv_runs[0][0]

            # 2. spread of the single-split test metrics over seeds
            seed_metrics = []
            for s in range(1, args.seeds + 1):
                print(f"[seeds] runtime.seed={s} ...", flush=True)
                seed_cfg = compose_config("train", [*base, f"runtime.seed={s}"])
                seed_metrics.append(train(seed_cfg).metrics)

            # 3. a search on a CV metric, then the best trial and the default with the same CV
            tune_cfg = compose_config(
                "tune",
                [
                    *base,
                    f"eval.cv.folds={args.tune_folds}",
                    f"eval.cv.repeats={args.tune_repeats}",
                    f"search.metric={SEARCH_METRIC}",
                    "search.direction=minimize",
                    f"tune.n_trials={args.trials}",
                    f"tune.storage={root / 'study.journal'}",
                    f"tracking.uri=sqlite:///{root}/mlflow.db",
                ],
            )
            print(f"[tune] {args.trials} trials on {SEARCH_METRIC} ...", flush=True)
            start = time.perf_counter()
            tuned = run_tune(OmegaConf.create(tune_cfg))
            tune_s = time.perf_counter() - start
            print("[tune] the best trial's config with the same CV as the default ...", flush=True)
            best = train(with_params(cv_cfg, tuned["best_params"]))
    return {
        "rows": len(export),
        "positive_share": float(export["Revenue"].mean()),
        "threads": args.threads,
        "seed": seed,
        "folds": args.folds,
        "cv_repeats": args.cv_repeats,
        "repeats": args.repeats,
        "plain": [(r.timings, s) for r, s in plain_runs],
        "cv": [(r.timings, s) for r, s in cv_runs],
        "plain_metrics": plain_runs[0][0].metrics,
        "plain_best_iteration": plain_runs[0][0].model.booster.best_iteration,
        "default_cv": default_cv.metrics,
        "default_cv_folds": default_cv.cv_folds,
        "seeds": seed_metrics,
        "tune": tuned,
        "tune_s": tune_s,
        "trials": args.trials,
        "tune_folds": args.tune_folds,
        "tune_repeats": args.tune_repeats,
        "best": best.metrics,
        "best_cv_folds": best.cv_folds,
    }


def median(values) -> float:
    return float(statistics.median(values))


def untimed(timings: Mapping[str, float], seconds: float) -> float:
    """Seconds of a `train()` call outside its top-level timed stages."""
    return max(seconds - sum(timings.get(key, 0.0) for key, _ in STAGES), 0.0)


def ratios(res: dict) -> dict[str, float]:
    """The run's ratios, each from medians of this one run."""
    plain, cv = res["plain"], res["cv"]
    total_plain, total_cv = median(s for _, s in plain), median(s for _, s in cv)
    train_s = median(t["train"] for t, _ in plain + cv)
    cv_s = median(t["cv"] for t, _ in cv)
    folds = res["default_cv_folds"]
    acc = np.array([m["test/accuracy"] for m in res["seeds"]])
    d = res["default_cv"]
    return {
        "total": total_cv / total_plain,
        "cv_to_train": cv_s / train_s,
        "extra_to_train": (total_cv - total_plain) / train_s,
        "per_fold": cv_s / train_s / len(folds),
        "rounds": sum(f["metrics"]["best_iteration"] for f in folds) / res["plain_best_iteration"],
        "width_to_range": (d["cv/accuracy/ci_high"] - d["cv/accuracy/ci_low"])
        / (acc.max() - acc.min()),
        "tune_to_cv_train": res["tune_s"] / total_cv,
    }


def ratio_table(res: dict) -> list[str]:
    r = res["ratios"]
    cv_label = f"{res['folds']} x {res['cv_repeats']}"
    n = len(res["default_cv_folds"])
    return [
        "| ratio (medians of this run) | measured |",
        "|---|---:|",
        f"| whole `train()` with {cv_label} CV / without CV | {r['total']:.1f}x |",
        f"| CV seconds / one model's `train` seconds ({n} fold models) | {r['cv_to_train']:.1f}x |",
        f"| the same, per fold model | {r['per_fold']:.2f}x |",
        f"| seconds CV adds to the whole call / one model's `train` seconds "
        f"| {r['extra_to_train']:.1f}x |",
        f"| the fold models' best iterations, summed / the final model's | {r['rounds']:.1f}x |",
        f"| CV 95% interval width / range of test accuracy over {len(res['seeds'])} seeds "
        f"| {r['width_to_range']:.2f}x |",
        f"| the search ({res['trials']} trials, {res['tune_folds']} x {res['tune_repeats']} CV "
        f"each) / one {cv_label} CV training | {r['tune_to_cv_train']:.1f}x |",
    ]


def cost_section(res: dict) -> list[str]:
    plain, cv, r = res["plain"], res["cv"], res["ratios"]
    lines = [
        f"| stage | without CV (s) | with {res['folds']} x {res['cv_repeats']} CV (s) |",
        "|---|---:|---:|",
    ]
    for key, label in STAGES:
        a = median(t.get(key, 0.0) for t, _ in plain)
        b = median(t.get(key, 0.0) for t, _ in cv)
        lines.append(f"| {label} | {a:.2f} | {b:.2f} |")
    total_plain, total_cv = median(s for _, s in plain), median(s for _, s in cv)
    lines.append(
        f"| other (inside `train()`, outside the timed stages) | "
        f"{median(untimed(t, s) for t, s in plain):.2f} | "
        f"{median(untimed(t, s) for t, s in cv):.2f} |"
    )
    lines.append(f"| **whole `train()` call** | **{total_plain:.2f}** | **{total_cv:.2f}** |")
    folds = res["default_cv_folds"]
    fold_rounds = sum(f["metrics"]["best_iteration"] for f in folds)
    n = len(folds)
    fold_train = np.mean([f["train_rows"] for f in folds])
    lines += [
        "",
        f"- whole `train()` with CV / without: **{r['total']:.1f}x**",
        f"- CV seconds / one model's `train` seconds (median over all {2 * res['repeats']} runs): "
        f"**{r['cv_to_train']:.1f}x** for {n} fold models, {r['per_fold']:.2f}x a final model's "
        f"training per fold (a fold model fits on {fold_train:,.0f} development rows, less its "
        f"early-stopping share, where the final model fits on "
        f"{int(res['plain_metrics']['data/train_rows']):,})",
        f"- seconds CV adds to the whole call (with minus without) / one model's `train` "
        f"seconds: **{r['extra_to_train']:.1f}x** (this also counts what CV costs outside its "
        "timed stage, such as drawing the folds)",
        f"- boosting rounds, which do not depend on the machine's load: the {n} fold models' best "
        f"iterations add up to {r['rounds']:.1f}x the final model's ({fold_rounds:.0f} vs "
        f"{res['plain_best_iteration']}; each model also trains `model.early_stopping_rounds` "
        "more before it stops)",
    ]
    return lines


def spread_section(res: dict) -> list[str]:
    seeds = res["seeds"]
    cv = res["default_cv"]
    lines = [
        f"| metric | test split, seeds 1-{len(seeds)}: min | max | max - min | std "
        f"| one {res['folds']} x {res['cv_repeats']} CV run (seed {res['seed']}): mean "
        "| 95% interval | interval width |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for metric, label in (("accuracy", "accuracy"), ("roc_auc", "ROC-AUC")):
        values = np.array([m[f"test/{metric}"] for m in seeds])
        lo, hi = cv[f"cv/{metric}/ci_low"], cv[f"cv/{metric}/ci_high"]
        lines.append(
            f"| {label} | {values.min():.4f} | {values.max():.4f} | "
            f"{values.max() - values.min():.4f} | {values.std(ddof=1):.4f} | "
            f"{cv[f'cv/{metric}/mean']:.4f} | {lo:.4f} to {hi:.4f} | {hi - lo:.4f} |"
        )
    acc = np.array([m["test/accuracy"] for m in seeds])
    width = cv["cv/accuracy/ci_high"] - cv["cv/accuracy/ci_low"]
    test_rows = int(seeds[0]["data/test_rows"])
    lines += [
        "",
        f"Each seed draws another split ({test_rows:,} test rows) and another model seed. The "
        f"test accuracy moved by {100 * (acc.max() - acc.min()):.1f} points across "
        f"{len(seeds)} seeds: two configs that differ by less than that on one split may differ "
        f"only by the split. One CV run puts the mean accuracy in an interval "
        f"{100 * width:.1f} points wide ({width / (acc.max() - acc.min()):.2f}x that range), "
        f"from {int(cv['cv/folds'])} folds whose accuracy has a standard deviation of "
        f"{cv['cv/accuracy/std']:.4f}.",
    ]
    return lines


def searched_folds_rerun(res: dict) -> bool:
    """Whether the folds the search judged trials on are the first repeats of the comparison's
    CV runs (same folds and seed, no more repeats)."""
    return res["tune_folds"] == res["folds"] and res["tune_repeats"] <= res["cv_repeats"]


def same_folds_note(res: dict) -> str:
    """The best trial and the default on the folds the search judged trials on."""
    n, best = res["tune_repeats"], res["tune"]["best_value"]
    default = first_repeats_mean(res["default_cv_folds"], "logloss", n)
    rerun = first_repeats_mean(res["best_cv_folds"], "logloss", n)
    which = "the first repeat" if n == 1 else f"the first {n} repeats"
    return (
        f" ({rerun:.4f} on {which} of its rerun), against {default:.4f} for the default on the "
        "same folds" + ("." if best <= default else ": no trial beat the default there.")
    )


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def tune_section(res: dict) -> list[str]:
    d, b, tuned = res["default_cv"], res["best"], res["tune"]
    counts = tuned["counts"]
    cv_label = f"{res['folds']} x {res['cv_repeats']}"
    lines = [
        f"- `run_tune` with `search.metric={SEARCH_METRIC}` (minimize), "
        f"`eval.cv.folds={res['tune_folds']} eval.cv.repeats={res['tune_repeats']}` per trial, "
        "pruning on (from the final model's validation loss while boosting): "
        f"{counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned, "
        f"{counts.get('FAIL', 0)} failed of {res['trials']} trials; the whole search took "
        f"{res['tune_s'] / median(s for _, s in res['cv']):.1f}x one {cv_label} CV training",
        f"- both configs then trained once more with {cv_label} CV and `runtime.seed="
        f"{res['seed']}`: the same folds, so the difference is also measured fold by fold"
        + (
            "; the search saw only the first "
            + ("repeat" if res["tune_repeats"] == 1 else f"{res['tune_repeats']} repeats")
            + f" of those {res['cv_repeats']}"
            if searched_folds_rerun(res) and res["tune_repeats"] < res["cv_repeats"]
            else ""
        ),
        "",
        f"| config | {cv_label} CV log-loss: mean | 95% interval "
        f"| CV ROC-AUC: mean | 95% interval | test log-loss | test ROC-AUC | test accuracy |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for label, m in (("default", d), ("best trial", b)):
        lines.append(
            f"| {label} | {m['cv/logloss/mean']:.4f} | {m['cv/logloss/ci_low']:.4f} to "
            f"{m['cv/logloss/ci_high']:.4f} | {m['cv/roc_auc/mean']:.4f} | "
            f"{m['cv/roc_auc/ci_low']:.4f} to {m['cv/roc_auc/ci_high']:.4f} | "
            f"{m['test/logloss']:.4f} | {m['test/roc_auc']:.4f} | {m['test/accuracy']:.4f} |"
        )
    diff = {
        metric: paired_difference(res["default_cv_folds"], res["best_cv_folds"], metric)
        for metric in ("logloss", "roc_auc")
    }
    lines.append(
        "| best - default, fold by fold | "
        f"{diff['logloss']['mean']:+.4f} | {diff['logloss']['low']:+.4f} to "
        f"{diff['logloss']['high']:+.4f} | {diff['roc_auc']['mean']:+.4f} | "
        f"{diff['roc_auc']['low']:+.4f} to {diff['roc_auc']['high']:+.4f} | "
        f"{b['test/logloss'] - d['test/logloss']:+.4f} | "
        f"{b['test/roc_auc'] - d['test/roc_auc']:+.4f} | "
        f"{b['test/accuracy'] - d['test/accuracy']:+.4f} |"
    )

    def interval(m: dict, metric: str) -> tuple[float, float]:
        return m[f"cv/{metric}/ci_low"], m[f"cv/{metric}/ci_high"]

    ll_overlap = overlap(interval(d, "logloss"), interval(b, "logloss"))
    auc_overlap = overlap(interval(d, "roc_auc"), interval(b, "roc_auc"))
    zero_in = diff["logloss"]["low"] <= 0 <= diff["logloss"]["high"]
    params = ", ".join(
        f"`{k.split('.')[-1]}={v:.4g}`" if isinstance(v, float) else f"`{k.split('.')[-1]}={v}`"
        for k, v in tuned["best_params"].items()
    )
    lines += [
        "",
        f"Best trial: {params}; its search score ({SEARCH_METRIC}, "
        f"{res['tune_folds']} x {res['tune_repeats']}) was {tuned['best_value']:.4f}"
        + (same_folds_note(res) if searched_folds_rerun(res) else "."),
        "",
        f"The CV log-loss intervals {'overlap' if ll_overlap else 'do not overlap'}, the ROC-AUC "
        f"intervals {'overlap' if auc_overlap else 'do not overlap'}; the fold-by-fold "
        "log-loss difference's interval "
        + (
            "contains 0: on these rows the search found no config shown to be better."
            if zero_in
            else (
                "lies below 0: the best trial's log-loss is lower beyond the folds' noise "
                "(on folds that include those the search chose it on)."
                if diff["logloss"]["high"] < 0
                else "lies above 0: the best trial's log-loss is higher than the default's."
            )
        ),
    ]
    return lines


def render(res: dict, command: str, meta: list[str]) -> str:
    res = {**res, "ratios": ratios(res)}
    lines = [
        f"## Cross-validation: cost, the spread it measures, and a search on it, "
        f"{res['rows']:,} sessions",
        "",
        f"`{command}`",
        "",
        *meta,
        f"- a generated table shaped like `conf/data/web_analytics.yaml` ({res['rows']:,} "
        f"sessions, one per journey, {pct(res['positive_share'])} purchases), the `train` "
        f"config with `data=web_analytics` (split by journey, 15% validation, 15% test, "
        f"baselines on), LightGBM with {res['threads']} threads; CV runs on the train and "
        "validation rows",
        "",
        *ratio_table(res),
        "",
        f"### Cost of {res['folds']} x {res['cv_repeats']} CV (median of {res['repeats']} "
        f"run{'s' if res['repeats'] > 1 else ''} each, interleaved)",
        "",
        *cost_section(res),
        "",
        "### Why cross-validate: the test split moves with the seed",
        "",
        *spread_section(res),
        "",
        f"### A search judged on `{SEARCH_METRIC}`",
        "",
        *tune_section(res),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=12_000, help="sessions in the table")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated table")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs with and without CV")
    parser.add_argument("--folds", type=int, default=3, help="eval.cv.folds of the CV runs")
    parser.add_argument("--cv-repeats", type=int, default=3, help="eval.cv.repeats of those")
    parser.add_argument("--seeds", type=int, default=7, help="runtime.seed 1..N without CV")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--tune-folds", type=int, default=3, help="eval.cv.folds per trial")
    parser.add_argument("--tune-repeats", type=int, default=1, help="eval.cv.repeats per trial")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--section", default="bench_cv")
    args = parser.parse_args(argv)
    if args.rows < 500 or args.threads < 1 or args.repeats < 1 or args.trials < 1:
        parser.error("--rows >= 500, --threads >= 1, --repeats >= 1 and --trials >= 1")
    if args.folds < 2 or args.tune_folds < 2 or args.cv_repeats < 1 or args.tune_repeats < 1:
        parser.error("--folds and --tune-folds >= 2, --cv-repeats and --tune-repeats >= 1")
    if args.seeds < 2:
        parser.error("--seeds >= 2 (a spread needs two seeds)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = run_metadata()
    start = time.perf_counter()
    res = run(args)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    report = render(res, command, meta)
    print("\n" + report, flush=True)
    print(f"\nthe benchmark took {(time.perf_counter() - start) / 60:.1f} minutes", flush=True)
    path = write_section(args.out, args.section, report)
    print(f"wrote section {args.section!r} of {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
