"""Retraining benchmark: a stale champion against scheduled retraining as the market shifts.

Generates four successive periods of synthetic journeys (with the Bayes-optimal posterior) into
one date-partitioned folder: two with the default generator, then two after a market shift
(`conf/generator/shifted.yaml`: a site redesign, more mobile go-moments near stores, a new
`ai_assistant` channel). Runs the real `micromoment retrain` job (`pipelines.stages.retrain.run_retrain`)
on each period's window in turn, against a temporary SQLite MLflow store, and on each window's
holdout (its most recent journeys, the rows offered to the gate) reports the accuracy of:

- the **stale** model: the first champion, trained on period 1 and never replaced;
- the **retrained** challenger of that window, and the champion the job leaves in service;
- the **Bayes-optimal** posterior (the limit no model can beat on those rows).

Targets: an unshifted window keeps the champion; the first shifted window promotes, and the
retrained model recovers at least half of the accuracy the stale model lost against its level on
unshifted data (relative to the Bayes-optimal accuracy of each window).

    python bench/bench_retrain.py                           # 4 x 100k sessions, 2 threads
    python bench/bench_retrain.py --sessions 30000 --out /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
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
    journeys_for,
    pct,
    run_metadata,
    write_section,
)
from omegaconf import OmegaConf

from pipelines.config import CONF_DIR
from pipelines.core.contract import DatasetSpec
from pipelines.engines.local import generate
from pipelines.io.readers import read_window
from pipelines.stages.retrain import run_retrain, window_holdout
from pipelines.tracking.registry import load_scorer

NAME = "micro_moment_intent"
PERIOD_DAYS = 60
# (label, generator, start of the period)
PERIODS = (
    ("W1", "default", "2026-01-01"),
    ("W2", "default", "2026-03-02"),
    ("W3", "shifted", "2026-05-01"),
    ("W4", "shifted", "2026-06-30"),
)


def generator_config(name: str, start: str) -> dict:
    cfg = OmegaConf.load(f"{CONF_DIR}/generator/default.yaml")
    if name == "shifted":
        shifted = OmegaConf.load(f"{CONF_DIR}/generator/shifted.yaml")
        shifted.pop("defaults")
        cfg = OmegaConf.merge(cfg, shifted)
    cfg.start_date = start
    cfg.days = PERIOD_DAYS
    return OmegaConf.to_container(cfg)


def build_stream(root: Path, sessions: int, seed: int) -> Path:
    """One folder of parquet parts, a part per period, ids unique across periods."""
    stream = root / "sessions"
    stream.mkdir(parents=True)
    for i, (label, name, start) in enumerate(PERIODS):
        gen = generator_config(name, start)
        out = root / f"gen-{label}"
        generate(
            {
                "out_dir": str(out),
                "n_journeys": journeys_for(sessions, gen),
                "chunk_journeys": 50_000,
                "seed": seed + i,
                "posterior": True,
            },
            gen,
        )
        frame = pd.read_parquet(out / "sessions")
        for col in ("session_id", "journey_id"):
            frame[col] = f"{label}-" + frame[col].astype(str)
        frame.to_parquet(stream / f"part-{label}.parquet", index=False)
        (root / "stores.csv").write_text((out / "stores.csv").read_text())
    return stream


def window_end(label: str) -> str:
    """The last day of a period: each job sees that period's window and nothing later."""
    start = pd.Timestamp(dict((p[0], p[2]) for p in PERIODS)[label])
    return (start + pd.Timedelta(days=PERIOD_DAYS - 1)).strftime("%Y-%m-%d")


def accuracy(model_uri: str, rows: pd.DataFrame, labels: pd.Series, threads: int) -> float:
    model, _ = load_scorer(model_uri, threads)
    out = model.predict(rows.reset_index(drop=True))
    return float((out["intent"].to_numpy() == labels.to_numpy()).mean())


def run(sessions: int, threads: int, seed: int) -> dict:
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="bench_retrain_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        stream = build_stream(root, sessions, seed)
        gen_s = time.perf_counter() - t0
        uri = f"sqlite:///{root}/mlflow.db"
        stale_version = None
        for label, name, _ in PERIODS:
            overrides = [
                f"data.path={stream}",
                f"data.stores_path={root / 'stores.csv'}",
                f"tracking.uri={uri}",
                f"output_dir={root / 'out'}",
                f"retrain.lock_path={root / 'retrain.lock'}",
                f"retrain.summary_path={root / f'summary-{label}.json'}",
                f"retrain.window_days={PERIOD_DAYS}",
                f"retrain.end={window_end(label)}",
                f"runtime.threads={threads}",
                "baselines=false",
            ]
            cfg = compose_config("retrain", overrides)
            t0 = time.perf_counter()
            code = run_retrain(OmegaConf.create(cfg))
            job_s = time.perf_counter() - t0
            summary = json.loads((root / f"summary-{label}.json").read_text())
            if code != 0:
                raise RuntimeError(f"retrain on {label} exited {code}: {summary.get('error')}")
            stale_version = stale_version or summary["champion_after"]
            # the very rows offered to the gate, scored again by each model (the gate judges
            # only those in journeys neither version trained on: `holdout.rows_judged`)
            spec = DatasetSpec.from_config(cfg["data"])
            window, _, _ = read_window(
                str(stream), "started_at", PERIOD_DAYS, cfg["retrain"]["end"]
            )
            rows, labels, _ = window_holdout(window, spec, cfg)
            bayes_cols = [f"bayes_p_{c}" for c in spec.classes]
            bayes = np.asarray(spec.classes)[rows[bayes_cols].to_numpy().argmax(axis=1)]
            rows_out.append(
                {
                    "window": label,
                    "generator": name,
                    "holdout_rows": len(rows),
                    "rows_judged": (summary.get("holdout") or {}).get("rows_judged"),
                    "stale": accuracy(f"models:/{NAME}/{stale_version}", rows, labels, threads),
                    "retrained": accuracy(
                        f"models:/{NAME}/{summary['challenger']}", rows, labels, threads
                    ),
                    "champion_after": accuracy(
                        f"models:/{NAME}/{summary['champion_after']}", rows, labels, threads
                    ),
                    "bayes": float((bayes == labels.to_numpy()).mean()),
                    "decision": summary["decision"],
                    "reason": summary["reason"],
                    "versions": f"{summary['champion_before']} -> {summary['champion_after']}",
                    "max_feature_psi": (summary.get("drift") or {}).get("max_feature_psi"),
                    "max_feature": (summary.get("drift") or {}).get("max_feature"),
                    "intent_mix_psi": (summary.get("drift") or {}).get("intent_mix_psi"),
                    "job_s": job_s,
                }
            )
            print(f"{label}: {summary['decision']} ({summary['reason']})", flush=True)
    return {"rows": rows_out, "generate_s": gen_s, "sessions": sessions, "threads": threads}


def verdicts(rows: list[dict]) -> list[tuple[str, bool]]:
    by = {r["window"]: r for r in rows}
    lost = by["W2"]["stale"] / by["W2"]["bayes"] - by["W3"]["stale"] / by["W3"]["bayes"]
    regained = by["W3"]["retrained"] / by["W3"]["bayes"] - by["W3"]["stale"] / by["W3"]["bayes"]
    return [
        ("the unshifted window W2 keeps the champion", by["W2"]["decision"] == "kept"),
        ("the first shifted window W3 promotes", by["W3"]["decision"] == "promoted"),
        (
            f"on W3 the retrained model regains >= half of what the stale one lost "
            f"(lost {pct(lost)}, regained {pct(regained)} of Bayes-optimal accuracy)",
            lost > 0 and regained >= 0.5 * lost,
        ),
    ]


def render(res: dict, command: str, meta: list[str]) -> str:
    lines = [
        f"## Retraining: a stale champion vs scheduled retraining, 4 windows of "
        f"~{res['sessions']:,} sessions",
        "",
        f"`{command}`",
        "",
        *meta,
        f"- windows of {PERIOD_DAYS} days; W1, W2 from the default generator, W3, W4 after the "
        "shift of `conf/generator/shifted.yaml`; one `micromoment retrain` job per window, in "
        "order, on one SQLite MLflow store; default `retrain` config (gate: macro-F1 + 0.005), "
        f"LightGBM with {res['threads']} threads",
        "- accuracy on each window's holdout (its most recent journeys: the rows offered to the "
        "gate); *judged* is how many of them the gate actually judged on (`holdout.rows_judged`: "
        "only journeys neither version trained or early-stopped on); *stale* is the first "
        "champion (trained on W1) never replaced",
        "",
        "| window | data | holdout rows offered | judged by the gate | stale | retrained | "
        "in service after the job | Bayes-optimal | stale / Bayes | retrained / Bayes | "
        "decision (champion) | max feature PSI | intent-mix PSI |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in res["rows"]:
        psi = (
            ""
            if r["max_feature_psi"] is None
            else f"{r['max_feature_psi']:.3f} ({r['max_feature']})"
        )
        mix = "" if r["intent_mix_psi"] is None else f"{r['intent_mix_psi']:.3f}"
        judged = "" if r["rows_judged"] is None else f"{r['rows_judged']:,}"
        lines.append(
            f"| {r['window']} | {r['generator']} | {r['holdout_rows']:,} | {judged} | "
            f"{r['stale']:.4f} | {r['retrained']:.4f} | {r['champion_after']:.4f} | {r['bayes']:.4f} | "
            f"{pct(r['stale'] / r['bayes'])} | {pct(r['retrained'] / r['bayes'])} | "
            f"{r['decision']} ({r['versions']}) | {psi} | {mix} |"
        )
    lines += ["", "Gate reasons:", ""]
    lines += [f"- {r['window']}: {r['reason']}" for r in res["rows"]]
    lines += ["", "| check | result |", "|---|---|"]
    for text, ok in verdicts(res["rows"]):
        lines.append(f"| {text} | **{'PASS' if ok else 'FAIL'}** |")
    job = np.median([r["job_s"] for r in res["rows"]])
    lines += [
        "",
        f"A retrain job (read, validate, drift, train, log, register, gate) took a median "
        f"{job / res['generate_s']:.1f}x the time of generating all four windows.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions per window")
    parser.add_argument("--threads", type=int, default=2, help="LightGBM threads")
    parser.add_argument("--seed", type=int, default=21, help="generator seed of the first window")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="results file")
    parser.add_argument("--section", default="bench_retrain", help="section of the results file")
    args = parser.parse_args(argv)
    if args.sessions < 5000 or args.threads < 1:
        parser.error("--sessions must be >= 5000 and --threads >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = run_metadata()
    res = run(args.sessions, args.threads, args.seed)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    report = render(res, command, meta)
    print("\n" + report, flush=True)
    path = write_section(args.out, args.section, report)
    print(f"wrote section {args.section!r} of {path}", flush=True)
    return 0 if all(ok for _, ok in verdicts(res["rows"])) else 1


if __name__ == "__main__":
    sys.exit(main())
