"""Training benchmark: quality against the Bayes-optimal limit and baselines, and stage times.

Generates synthetic sessions (with the generator's Bayes-optimal posterior) into a temporary
folder, then runs the training recipe `pipelines.stages.train.train` on the configured engine on them with the `train` config
composed as the CLI would. Nothing is logged to MLflow. Prints a markdown report and writes it to
its own section of bench/RESULTS.md:

- accuracy, macro-F1 and log-loss on the test split of the LightGBM model, the Bayes-optimal
  posterior, a logistic regression and the majority class, and the model's ratio to the
  Bayes-optimal accuracy (target: >= 97%);
- with `--no-history`, the same recipe again with `experiment=no_history` (no journey-history
  features) on the same data and split: what a journey's past is worth;
- the targets of a world that tells models apart (the default world), as ratios to the
  Bayes-optimal accuracy: the model >= 98%, the logistic regression <= 94%, no history >= 2
  points below the model, and the Bayes-optimal accuracy itself in [0.80, 0.90] (room to be
  wrong). On the default world a missed target fails the benchmark (exit 1); on the others
  (`--generator simple`) they are reported only;
- each stage's share of the time (data generation included), from one run.

    python bench/bench_training.py --no-history         # 200k sessions, 2 threads, the targets
    python bench/bench_training.py --sessions 50000 --out /tmp/RESULTS.md
    python bench/bench_training.py --generator simple   # the world without segments
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightgbm
from _common import (
    DEFAULT_RESULTS,
    command_line,
    compose_config,
    journeys_for,
    pct,
    run_metadata,
    write_section,
)
from threadpoolctl import threadpool_limits

from pipelines.engines.local import generate
from pipelines.stages.train import train

TARGET_RATIO = 0.97  # model accuracy / Bayes-optimal accuracy
# a world that tells models apart: the model close to the limit, a linear model and
# a model without journey history clearly below it, and the limit itself below certainty
WORLD_TARGETS = {
    "model_ratio": 0.98,  # >= : LightGBM accuracy / Bayes accuracy
    "logreg_ratio": 0.94,  # <= : logistic-regression accuracy / Bayes accuracy
    "history_gap": 0.02,  # >= : LightGBM accuracy minus no-history accuracy
    "bayes_accuracy": (0.80, 0.90),
}
MODELS = (  # (label, metric prefix)
    ("LightGBM model", "test/"),
    ("Bayes-optimal posterior", "test/bayes/"),
    ("logistic regression", "test/logreg/"),
    ("majority class", "test/majority/"),
)
# stages timed inside `train` (its `timings`), in order; baseline_logreg runs inside evaluate
STAGES = (
    ("read", "read (parquet parts)"),
    ("validate", "validate (contract, split)"),
    ("features", "features"),
    ("train", "train (LightGBM, early stopping)"),
    ("evaluate", "evaluate (metrics, baselines, Bayes reference)"),
)


def train_config(
    data_dir: Path, output_dir: Path, threads: int, extra: tuple[str, ...] = ()
) -> dict:
    """The `train` config as the CLI composes it, pointed at the generated data."""
    return compose_config(
        "train",
        [
            f"data.path={data_dir / 'sessions'}",
            f"data.stores_path={data_dir / 'stores.csv'}",
            # output_dir is ${hydra:runtime.output_dir}, which only a Hydra run resolves
            f"output_dir={output_dir}",
            f"runtime.threads={threads}",
            *extra,
        ],
    )


def run(
    sessions: int, threads: int, seed: int, generator: str = "default", no_history: bool = False
) -> dict:
    """Generate, train and evaluate once (twice with `no_history`); returns what the report
    needs."""
    composed = compose_config("generate", [f"generator={generator}"])
    gen_params_cfg, gen_cfg = composed["generator"], composed["generate"]
    n_journeys = journeys_for(sessions, gen_params_cfg)

    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        data_dir = Path(tmp) / "data"
        gen_cfg.update(out_dir=str(data_dir), n_journeys=n_journeys, seed=seed, posterior=True)
        print(f"generating {n_journeys} journeys (~{sessions} sessions) ...", flush=True)
        start = time.perf_counter()
        summary = generate(gen_cfg, gen_params_cfg)
        generate_s = time.perf_counter() - start
        print(f"  {summary['sessions']} sessions in {generate_s:.1f} s", flush=True)

        cfg = train_config(data_dir, Path(tmp) / "output", threads)
        print(f"training on {threads} thread(s) ...", flush=True)
        start = time.perf_counter()
        # LightGBM threads come from runtime.threads; this caps BLAS/OpenMP in scikit-learn too
        with threadpool_limits(limits=threads):
            result = train(cfg)
        train_s = time.perf_counter() - start
        print(f"  train() took {train_s:.1f} s", flush=True)
        no_history_metrics = None
        if no_history:
            print("training again with experiment=no_history ...", flush=True)
            cfg = train_config(
                data_dir, Path(tmp) / "output_nh", threads, ("experiment=no_history",)
            )
            with threadpool_limits(limits=threads):
                no_history_metrics = train(cfg).metrics

    return {
        "generator": generator,
        "no_history_metrics": no_history_metrics,
        "sessions": summary["sessions"],
        "journeys": summary["journeys"],
        "chunk_journeys": int(gen_cfg["chunk_journeys"]),
        "seed": seed,
        "threads": threads,
        "metrics": result.metrics,
        "timings": dict(result.timings),
        "generate_s": generate_s,
        "train_call_s": train_s,
    }


def quality_table(m: dict, no_history: dict | None = None) -> list[str]:
    lines = [
        "| model | accuracy | macro-F1 | log-loss |",
        "|---|---:|---:|---:|",
    ]
    for label, prefix in MODELS:
        if f"{prefix}accuracy" not in m:
            lines.append(f"| {label} | n/a | n/a | n/a |")
            continue
        lines.append(
            f"| {label} | {m[f'{prefix}accuracy']:.4f} | {m[f'{prefix}macro_f1']:.4f} "
            f"| {m[f'{prefix}logloss']:.4f} |"
        )
    if no_history is not None:
        lines.insert(
            3,
            f"| LightGBM, no journey history (`experiment=no_history`) "
            f"| {no_history['test/accuracy']:.4f} | {no_history['test/macro_f1']:.4f} "
            f"| {no_history['test/logloss']:.4f} |",
        )
    return lines


def world_table(m: dict, no_history: dict | None) -> list[str]:
    """Each model's accuracy and log-loss as ratios to the Bayes-optimal ones, and the
    targets of the world, from the same run."""
    if "test/bayes/accuracy" not in m:
        return []
    acc, loss = m["test/bayes/accuracy"], m["test/bayes/logloss"]
    rows = [("LightGBM model", m["test/accuracy"], m["test/logloss"])]
    if no_history is not None:
        rows.append(
            (
                "LightGBM, no journey history",
                no_history["test/accuracy"],
                no_history["test/logloss"],
            )
        )
    if "test/logreg/accuracy" in m:
        rows.append(("logistic regression", m["test/logreg/accuracy"], m["test/logreg/logloss"]))
    lines = [
        "| model | accuracy / Bayes | log-loss / Bayes |",
        "|---|---:|---:|",
        *(f"| {label} | {pct(a / acc)} | {ll / loss:.3f}x |" for label, a, ll in rows),
        "",
        "| target (a world that tells models apart) | measured | status |",
        "|---|---:|---|",
    ]
    checks = world_checks(m, no_history)
    lines += [f"| {name} | {value} | {'PASS' if ok else 'FAIL'} |" for name, value, ok in checks]
    return lines


def world_checks(m: dict, no_history: dict | None) -> list[tuple[str, str, bool]]:
    """The targets of a world that tells models apart: (target, measured, met) for each one
    this run measured."""
    if "test/bayes/accuracy" not in m:
        return []
    acc = m["test/bayes/accuracy"]
    t = WORLD_TARGETS
    lo, hi = t["bayes_accuracy"]
    checks = [
        (
            f"model accuracy >= {pct(t['model_ratio'], 0)} of Bayes",
            pct(m["test/accuracy"] / acc),
            m["test/accuracy"] / acc >= t["model_ratio"],
        ),
        (f"Bayes accuracy in [{lo:.2f}, {hi:.2f}]", f"{acc:.4f}", lo <= acc <= hi),
    ]
    if "test/logreg/accuracy" in m:
        r = m["test/logreg/accuracy"] / acc
        checks.append(
            (
                f"logistic regression <= {pct(t['logreg_ratio'], 0)} of Bayes",
                pct(r),
                r <= t["logreg_ratio"],
            )
        )
    if no_history is not None:
        gap = m["test/accuracy"] - no_history["test/accuracy"]
        checks.append(
            (
                f"no history >= {100 * t['history_gap']:.0f} points below the model",
                f"{100 * gap:.2f} points",
                gap >= t["history_gap"],
            )
        )
    return checks


def verdict(m: dict) -> tuple[float | None, str]:
    if "test/bayes/accuracy" not in m:
        return None, "FAIL (no Bayes-optimal posterior in the data)"
    ratio = m["test/accuracy"] / m["test/bayes/accuracy"]
    return ratio, "PASS" if ratio >= TARGET_RATIO else "FAIL"


def time_table(res: dict) -> list[str]:
    t = res["timings"]
    staged = sum(t.get(key, 0.0) for key, _ in STAGES)
    other = max(res["train_call_s"] - staged, 0.0)
    pipeline = staged + other  # the train() call
    total = res["generate_s"] + pipeline
    lines = [
        "| stage | share of total | share of `train()` | seconds (one noisy run) |",
        "|---|---:|---:|---:|",
        f"| generate data ({res['sessions']:,} sessions, posterior on) "
        f"| {pct(res['generate_s'] / total)} | | {res['generate_s']:.1f} |",
    ]
    for key, label in STAGES:
        s = t.get(key, 0.0)
        lines.append(f"| {label} | {pct(s / total)} | {pct(s / pipeline)} | {s:.1f} |")
        if key == "evaluate" and "baseline_logreg" in t:
            b = t["baseline_logreg"]
            lines.append(
                f"| &nbsp;&nbsp;of which: logistic-regression baseline (inside evaluate) "
                f"| ({pct(b / total)}) | ({pct(b / pipeline)}) | ({b:.1f}) |"
            )
    lines += [
        f"| other (inside `train()`, outside the timed stages) | {pct(other / total)} "
        f"| {pct(other / pipeline)} | {other:.1f} |",
        f"| **total** | 100% | | {total:.1f} |",
    ]
    return lines


def render(res: dict, command: str, meta: list[str]) -> str:
    m = res["metrics"]
    ratio, status = verdict(m)
    ratio_text = "n/a" if ratio is None else pct(ratio)
    rows = (
        f"{int(m['data/rows_kept']):,} sessions kept of {int(m['data/rows_in']):,} "
        f"({int(m['data/train_rows']):,} train / {int(m['data/val_rows']):,} val / "
        f"{int(m['data/test_rows']):,} test, split by journey)"
    )
    lines = [
        f"## Training: {res['sessions']:,} synthetic sessions",
        "",
        f"`{command}`",
        "",
        *meta,
        f"- data: {res['journeys']:,} journeys, {res['sessions']:,} sessions, generator seed "
        f"{res['seed']}, {res['chunk_journeys']:,} journeys per part; {rows}",
        f"- LightGBM {lightgbm.__version__}, {res['threads']} threads, best iteration "
        f"{int(m['train/best_iteration'])}; `generator={res['generator']}`, default `conf/` "
        "otherwise; nothing logged to MLflow",
        "",
        "### Quality on the test split",
        "",
        *quality_table(m, res["no_history_metrics"]),
        "",
        f"**Model accuracy / Bayes-optimal accuracy: {ratio_text}** "
        f"(target >= {pct(TARGET_RATIO, 0)}): **{status}**",
    ]
    if "test/ratio_to_bayes/macro_f1" in m:
        lines += [
            "",
            f"Also: macro-F1 at {pct(m['test/ratio_to_bayes/macro_f1'])} of the Bayes-optimal "
            f"macro-F1; log-loss {m['test/ratio_to_bayes/logloss']:.3f}x the Bayes-optimal "
            "log-loss (lower is better, 1.0 is the limit).",
        ]
    world = world_table(m, res["no_history_metrics"])
    if world:
        lines += [
            "",
            "### Against the limit: ratios to the Bayes-optimal posterior (one run)",
            "",
            *world,
        ]
    lines += [
        "",
        "### Where the time goes",
        "",
        "Shares of one run's wall time; the logistic-regression baseline is part of evaluate "
        "and is not counted twice.",
        "",
        *time_table(res),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train on generated sessions; compare with the Bayes-optimal posterior "
        "and baselines; report stage time shares.",
    )
    parser.add_argument(
        "--sessions", type=int, default=200_000, help="sessions to generate (default 200000)"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="runtime.threads for LightGBM (default 2)"
    )
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument(
        "--generator", default="default", help="the generator preset, conf/generator/ (default)"
    )
    parser.add_argument(
        "--no-history",
        action="store_true",
        help="also train experiment=no_history on the same data and report the accuracy gap",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_RESULTS, help="results file (default bench/RESULTS.md)"
    )
    parser.add_argument(
        "--section",
        default="bench_training",
        help="the marker name of the section rewritten in --out (default bench_training)",
    )
    args = parser.parse_args(argv)
    if args.sessions < 100 or args.threads < 1:
        parser.error("--sessions must be >= 100 and --threads >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = run_metadata()  # before the run: the code version it ran with
    res = run(args.sessions, args.threads, args.seed, args.generator, args.no_history)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    report = render(res, command, meta)
    print("\n" + report, flush=True)
    path = write_section(args.out, args.section, report)
    print(f"wrote section {args.section!r} of {path}", flush=True)
    world_ok = all(ok for _, _, ok in world_checks(res["metrics"], res["no_history_metrics"]))
    ok = verdict(res["metrics"])[1] == "PASS" and (world_ok or args.generator != "default")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
