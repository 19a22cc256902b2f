"""Dask benchmark: scoring and training on a local Dask cluster against the in-process stages.

**Scoring** (`--part scoring`): trains a model on generated sessions and registers it as
`@champion` in a temporary SQLite MLflow store, then scores 1M and 5M fresh sessions twice each:

- **local**: `score_file` in a fresh process with 2 LightGBM threads;
- **dask**: `score_dask` on a `LocalCluster` of 2 worker processes x 1 thread, LightGBM with 1
  thread per worker, so both use the machine's 2 cores.

Reports rows/s and their ratio, the local process's peak RSS and each Dask worker's peak RSS.
On one 2-core machine Dask can only add overhead (the shuffle by journey, task scheduling,
serialisation); the benchmark measures how much, which is what a user pays before a cluster of
several machines pays it back.

**Training** (`--part training`): trains on the same ~200k generated sessions in fresh processes:

- **local**: `train` with LightGBM on 2 threads (early stopping on the validation split);
- **dask**: `train` with `engine=dask` on a `LocalCluster` of 2 worker processes x 1 thread, once
  per `--sample-rows` (the training sample gathered to the client, on which the featurizer is
  fitted and the round count found by a local early-stopped run with 2 threads).

Reports the wall time of `train()` (not the cluster start) and its ratio to local, the test
accuracy and log-loss of both, the rounds, and the peak RSS of the client process and of each
worker. Baselines are off in both. Each run is repeated `--repeats` times; medians are reported.

    python bench/bench_dask.py                    # both parts: 1M and 5M sessions scored, 200k trained
    python bench/bench_dask.py --part training --repeats 3
    python bench/bench_dask.py --sizes 200000 500000 --out /tmp/RESULTS.md

Each part rewrites only its own half of the `bench_dask` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    DEFAULT_RESULTS,
    command_line,
    compose_config,
    generate_sessions,
    markers,
    run_metadata,
    write_section,
)
from bench_scoring import train_and_register

MODEL_URI = "models:/micro_moment_intent@champion"


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _local_child(input_path: str, out_dir: str, tracking_uri: str, queue) -> None:
    import mlflow

    from pipelines.engines.local import score_file
    from pipelines.tracking.registry import load_scorer

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    model, info = load_scorer(MODEL_URI, 2)
    start = time.perf_counter()
    summary = score_file(model, input_path, out_dir, model_info=info, progress=False)
    queue.put(
        {
            "rows": summary["rows_in"],
            "seconds": time.perf_counter() - start,
            "peak_mib": _peak_rss_mib(),
        }
    )


def score_local(input_path: str, out_dir: Path, tracking_uri: str) -> dict:
    """The in-process scorer, in a fresh process so its peak memory is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_local_child, args=(input_path, str(out_dir), tracking_uri, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def score_on_dask(input_path: str, out_dir: Path, tracking_uri: str) -> dict:
    from pipelines.engines.dask import score_dask
    from pipelines.engines.dask_cluster import cluster

    with cluster({"n_workers": 2, "threads_per_worker": 1, "memory_limit": "8GiB"}) as client:
        start = time.perf_counter()
        summary = score_dask(
            client, MODEL_URI, input_path, out_dir, threads=1, tracking_uri=tracking_uri
        )
        seconds = time.perf_counter() - start
        peaks = client.run(_peak_rss_mib)
    return {
        "rows": summary["rows_in"],
        "seconds": seconds,
        "partitions": summary["partitions"],
        "worker_peaks_mib": sorted(peaks.values()),
    }


def _train_child(cfg: dict, queue) -> None:
    from pipelines.engines.dask_cluster import cluster
    from pipelines.engines.dask_train import train_dask
    from pipelines.stages.train import train

    if cfg["engine"]["name"] == "dask":
        with cluster(cfg["engine"]) as client:
            start = time.perf_counter()
            result = train_dask(cfg, client=client)
            seconds = time.perf_counter() - start
            worker_peaks = sorted(client.run(_peak_rss_mib).values())
    else:
        start = time.perf_counter()
        result = train(cfg)
        seconds = time.perf_counter() - start
        worker_peaks = []
    m = result.metrics
    queue.put(
        {
            "seconds": seconds,
            "accuracy": m["test/accuracy"],
            "logloss": m["test/logloss"],
            "rounds": int(m["train/best_iteration"]),
            "sample_rows": int(m.get("train/sample_rows", m["data/train_rows"])),
            "sample_best": m.get("train/sample_best_iteration"),
            "rounds_s": result.timings.get("rounds", 0.0),
            "cluster_s": result.timings["train"] if worker_peaks else 0.0,
            "peak_mib": _peak_rss_mib(),
            "worker_peaks_mib": worker_peaks,
            "rows": int(m["data/rows_kept"]),
            "train_rows": int(m["data/train_rows"]),
        }
    )


def train_once(cfg: dict) -> dict:
    """`train(cfg)` in a fresh process, so its peak memory is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_train_child, args=(cfg, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def run_training(sessions: int, sample_rows: list[int], repeats: int, seed: int) -> dict:
    """Local and Dask training on the same generated sessions, `repeats` times each."""
    with tempfile.TemporaryDirectory(prefix="bench_dask_train_") as tmp:
        root = Path(tmp)
        data = generate_sessions(sessions, root / "data", seed, posterior=False)
        base = [
            f"output_dir={root / 'out'}",
            f"data.path={root / 'data' / 'sessions'}",
            f"data.stores_path={root / 'data' / 'stores.csv'}",
            f"tracking.uri=sqlite:///{root}/mlflow.db",
            "runtime.threads=2",
            "baselines=false",
        ]
        dask = [
            "engine=dask",
            "engine.n_workers=2",
            "engine.threads_per_worker=1",
            "engine.memory_limit=8GiB",
        ]
        variants = {"local": compose_config("train", base)}
        for rows in sample_rows:
            variants[f"dask, sample {rows:,}"] = compose_config(
                "train", [*base, *dask, f"engine.sample_rows={rows}"]
            )
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for i in range(repeats):
            for name, cfg in variants.items():
                print(f"training ({name}), run {i + 1}/{repeats} ...", flush=True)
                runs[name].append(train_once(cfg))
                print(f"  {runs[name][-1]['seconds']:.1f} s", flush=True)
    return {"data": data, "runs": runs, "repeats": repeats}


def render_training(res: dict, command: str, meta: list[str]) -> str:
    runs = res["runs"]

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    first = runs["local"][0]
    lines = [
        "### Training: lightgbm.dask on a local Dask cluster vs local training",
        "",
        f"`{command}`",
        "",
        *meta,
        f"- data: {first['rows']:,} generated sessions ({first['train_rows']:,} training rows), "
        "split by journey; both runs see the same rows and the same test split",
        "- local: `train` in a fresh process, LightGBM 2 threads, early stopping on the "
        "validation split; dask: `train` with `engine=dask` on a `LocalCluster` of 2 worker "
        "processes x 1 thread (the same 2 cores), the round count from a local early-stopped run "
        "(2 threads) on the training sample of `engine.sample_rows` sessions; baselines off; "
        "wall time of `train()` without the cluster start",
        f"- medians of {res['repeats']} run(s) each",
        "",
        "| run | wall time | vs local | of which: round search / cluster training | test accuracy "
        "| test log-loss | rounds | client peak RSS | worker peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    local_s = med("local", "seconds")
    for name in runs:
        s = med(name, "seconds")
        is_dask = name != "local"
        split = f"{med(name, 'rounds_s'):.0f} s / {med(name, 'cluster_s'):.0f} s" if is_dask else ""
        peaks = (
            ", ".join(f"{p:,.0f} MiB" for p in runs[name][-1]["worker_peaks_mib"])
            if is_dask
            else ""
        )
        lines.append(
            f"| {name} | {s:.0f} s | **{s / local_s:.2f}x** | {split} | "
            f"{med(name, 'accuracy'):.4f} | {med(name, 'logloss'):.4f} | "
            f"{med(name, 'rounds'):.0f} | {med(name, 'peak_mib'):,.0f} MiB | {peaks} |"
        )
    lines += [
        "",
        "The round search is a local early-stopped run on the sample, so while the training rows "
        "fit in `engine.sample_rows` Dask training costs a local training plus a cluster one; a "
        "smaller sample trades a few rounds' worth of precision in the round count (and the rarest "
        "category levels) for time and client memory. On one 2-core machine the cluster adds no "
        "cores; with more machines the cluster part spreads over them.",
    ]
    return "\n".join(lines)


def _current_parts(path: Path) -> tuple[str, str]:
    """The scoring and the training halves of the `bench_dask` section as it stands."""
    start, end = markers("bench_dask")
    text = path.read_text() if path.exists() else ""
    found = re.search(re.escape(start) + r"(.*?)" + re.escape(end), text, flags=re.DOTALL)
    body = found.group(1) if found else ""
    t_start, t_end = markers("bench_dask_training")
    inner = re.search(re.escape(t_start) + r"(.*?)" + re.escape(t_end), body, flags=re.DOTALL)
    scoring = body.split(t_start)[0].strip()
    return scoring, inner.group(1).strip() if inner else ""


def write_results(path: Path, scoring: str | None, training: str | None) -> Path:
    """Rewrite the parts that ran inside the `bench_dask` section; keep the other one."""
    old_scoring, old_training = _current_parts(path)
    scoring = scoring if scoring is not None else old_scoring
    training = training if training is not None else old_training
    t_start, t_end = markers("bench_dask_training")
    body = scoring
    if training:
        body += f"\n\n{t_start}\n{training}\n{t_end}"
    return write_section(path, "bench_dask", body)


def run(sizes: list[int], train_sessions: int, seed: int) -> dict:
    import mlflow

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_dask_") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        train_data = root / "train"
        generate_sessions(train_sessions, train_data, seed, posterior=False)
        model = train_and_register(train_data, root, 2, uri)
        for i, size in enumerate(sizes):
            data = root / f"score-{size}"
            generate_sessions(size, data, seed + 1 + i, posterior=False)
            print(f"scoring {size:,} sessions locally ...", flush=True)
            local = score_local(str(data / "sessions"), root / f"local-{size}", uri)
            print(f"  {local['rows'] / local['seconds']:,.0f} rows/s", flush=True)
            print(f"scoring {size:,} sessions on Dask ...", flush=True)
            dask = score_on_dask(str(data / "sessions"), root / f"dask-{size}", uri)
            print(f"  {dask['rows'] / dask['seconds']:,.0f} rows/s", flush=True)
            results.append({"size": size, "local": local, "dask": dask})
    return {"model": model, "results": results, "train_sessions": train_sessions}


def render(res: dict, command: str, meta: list[str]) -> str:
    lines = [
        "## Dask: scoring on a local Dask cluster vs the in-process scorer",
        "",
        f"`{command}`",
        "",
        *meta,
        f"- model: trained on ~{res['train_sessions']:,} sessions, {res['model']['trees']} trees; "
        "`@champion` in a temporary SQLite store, loaded by every worker from it",
        "- local: `score_file` in a fresh process, LightGBM 2 threads; dask: `score_dask` on a "
        "`LocalCluster` of 2 worker processes x 1 thread, LightGBM 1 thread each (the same 2 "
        "cores); the Dask time includes reading, numbering rows, the shuffle by journey, scoring "
        "and writing, not the cluster start",
        "",
        "| sessions | local rows/s | dask rows/s | dask / local | local peak RSS | "
        "dask partitions | dask peak RSS per worker |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["results"]:
        loc, dsk = r["local"], r["dask"]
        lr, dr = loc["rows"] / loc["seconds"], dsk["rows"] / dsk["seconds"]
        peaks = ", ".join(f"{p:,.0f} MiB" for p in dsk["worker_peaks_mib"])
        lines.append(
            f"| {loc['rows']:,} | {lr:,.0f} | {dr:,.0f} | **{dr / lr:.2f}x** | "
            f"{loc['peak_mib']:,.0f} MiB | {dsk['partitions']} | {peaks} |"
        )
    first, last = res["results"][0], res["results"][-1]
    growth = max(last["dask"]["worker_peaks_mib"]) / max(first["dask"]["worker_peaks_mib"])
    lines += [
        "",
        f"Worker peak memory grows {growth:.2f}x from the smallest to the largest input (each "
        "worker holds one partition at a time, plus its share of the shuffle). On one 2-core "
        "machine the ratio above is Dask's overhead; with more machines the same job spreads "
        "over their cores.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--train-sessions", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--part", choices=["all", "scoring", "training"], default="all")
    parser.add_argument(
        "--sample-rows",
        type=int,
        nargs="+",
        default=[200_000, 50_000],
        help="engine.sample_rows of each Dask training run",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each training variant")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = run_metadata()
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    scoring = training = None
    if args.part in ("all", "scoring"):
        scoring = render(run(args.sizes, args.train_sessions, args.seed), command, meta)
        print("\n" + scoring, flush=True)
    if args.part in ("all", "training"):
        res = run_training(args.train_sessions, args.sample_rows, args.repeats, args.seed)
        training = render_training(res, command, meta)
        print("\n" + training, flush=True)
    path = write_results(args.out, scoring, training)
    print(f"wrote section 'bench_dask' of {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
