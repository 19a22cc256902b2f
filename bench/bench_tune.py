"""Search benchmark: the best trial of `micromoment tune` against the default config.

Generates synthetic sessions (200k by default, with the Bayes-optimal posterior), runs the
project's hyperparameter search (`pipelines.stages.tune.run_tune`: Optuna TPE over
`conf/search/default.yaml`, pruning inside LightGBM's boosting, a child MLflow run per trial in a
temporary SQLite store) choosing on the validation log-loss only, then trains the default config
and the best trial's config once more and compares them on the held-out **test** split: accuracy,
macro-F1, log-loss and their ratio to the Bayes-optimal posterior on the same rows.

    python bench/bench_tune.py                       # 200k sessions, 20 trials, 2 threads
    python bench/bench_tune.py --sessions 50000 --trials 6 --out /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    DEFAULT_RESULTS,
    command_line,
    compose_config,
    journeys_for,
    pct,
    run_metadata,
    write_section,
)
from omegaconf import OmegaConf
from threadpoolctl import threadpool_limits

from pipelines.engines.local import generate
from pipelines.stages.train import train
from pipelines.stages.tune import run_tune


def run(sessions: int, trials: int, threads: int, seed: int) -> dict:
    composed = compose_config("generate")
    gen_params_cfg, gen_cfg = composed["generator"], composed["generate"]
    with tempfile.TemporaryDirectory(prefix="bench_tune_") as tmp:
        root = Path(tmp)
        gen_cfg.update(
            out_dir=str(root / "data"),
            n_journeys=journeys_for(sessions, gen_params_cfg),
            seed=seed,
            posterior=True,
        )
        summary = generate(gen_cfg, gen_params_cfg)
        base = [
            f"data.path={root / 'data' / 'sessions'}",
            f"data.stores_path={root / 'data' / 'stores.csv'}",
            f"output_dir={root / 'out'}",
            f"runtime.threads={threads}",
            f"tracking.uri=sqlite:///{root}/mlflow.db",
            "baselines=false",
        ]
        with threadpool_limits(limits=threads):
            default_cfg = compose_config("train", base)
            start = time.perf_counter()
            default = train(default_cfg)
            default_s = time.perf_counter() - start

            tune_cfg = compose_config(
                "tune",
                [*base, f"tune.n_trials={trials}", f"tune.storage={root / 'study.journal'}"],
            )
            start = time.perf_counter()
            out = run_tune(OmegaConf.create(tune_cfg))
            tune_s = time.perf_counter() - start

            best_cfg = copy.deepcopy(default_cfg)
            for key, value in out["best_params"].items():
                node = best_cfg
                *path, leaf = key.split(".")
                for part in path:
                    node = node[part]
                node[leaf] = value
            best = train(best_cfg)
    return {
        "sessions": summary["sessions"],
        "trials": trials,
        "threads": threads,
        "default": default.metrics,
        "best": best.metrics,
        "best_params": out["best_params"],
        "counts": out["counts"],
        "default_s": default_s,
        "tune_s": tune_s,
    }


ROWS = (
    ("default config", "default"),
    ("best trial (chosen on validation log-loss)", "best"),
)


def render(res: dict, command: str, meta: list[str]) -> str:
    lines = [
        f"## Hyperparameter search: best of {res['trials']} trials vs the default, "
        f"{res['sessions']:,} sessions",
        "",
        f"`{command}`",
        "",
        *meta,
        f"- `micromoment tune` (Optuna TPE over `conf/search/default.yaml`, pruning on) with "
        f"{res['threads']} LightGBM threads; trials judged on `val/logloss` only; both models "
        "then evaluated on the same test split (split by journey)",
        f"- trials: {res['counts'].get('COMPLETE', 0)} complete, {res['counts'].get('PRUNED', 0)} "
        f"pruned, {res['counts'].get('FAIL', 0)} failed; the whole search took "
        f"{res['tune_s'] / res['default_s']:.1f}x one default training",
        "",
        "| model | accuracy | macro-F1 | log-loss | accuracy / Bayes | Bayes log-loss / log-loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    bayes = res["default"]
    for label, key in ROWS:
        m = res[key]
        lines.append(
            f"| {label} | {m['test/accuracy']:.4f} | {m['test/macro_f1']:.4f} | "
            f"{m['test/logloss']:.4f} | {pct(m['test/accuracy'] / bayes['test/bayes/accuracy'], 2)} "
            f"| {pct(bayes['test/bayes/logloss'] / m['test/logloss'], 2)} |"
        )
    lines.append(
        f"| Bayes-optimal posterior | {bayes['test/bayes/accuracy']:.4f} | "
        f"{bayes['test/bayes/macro_f1']:.4f} | {bayes['test/bayes/logloss']:.4f} | 100% | 100% |"
    )
    d, b = res["default"], res["best"]
    params = ", ".join(
        f"`{k.split('.')[-1]}={v:.4g}`" if isinstance(v, float) else f"`{k.split('.')[-1]}={v}`"
        for k, v in res["best_params"].items()
    )
    lines += [
        "",
        f"Best trial: {params}.",
        "",
        f"The search changed test accuracy by {100 * (b['test/accuracy'] - d['test/accuracy']):+.2f} "
        f"points and test log-loss by {b['test/logloss'] - d['test/logloss']:+.4f}. The default "
        f"already reaches {pct(d['test/accuracy'] / bayes['test/bayes/accuracy'], 2)} of the "
        f"Bayes-optimal accuracy on this generator: "
        f"{100 * (bayes['test/bayes/accuracy'] - d['test/accuracy']):.2f} points are all any "
        "search could still win here.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200_000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--section", default="bench_tune")
    args = parser.parse_args(argv)
    if args.sessions < 1000 or args.trials < 1 or args.threads < 1:
        parser.error("--sessions >= 1000, --trials >= 1 and --threads >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = run_metadata()
    res = run(args.sessions, args.trials, args.threads, args.seed)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    report = render(res, command, meta)
    print("\n" + report, flush=True)
    path = write_section(args.out, args.section, report)
    print(f"wrote section {args.section!r} of {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
