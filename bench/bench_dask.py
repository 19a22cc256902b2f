"""Dask benchmark: batch scoring on a local Dask cluster against the in-process scorer.

Trains a model on generated sessions and registers it as `@champion` in a temporary SQLite
MLflow store, then scores 1M and 5M fresh sessions twice each:

- **local**: `score_file` in a fresh process with 2 LightGBM threads;
- **dask**: `score_dask` on a `LocalCluster` of 2 worker processes x 1 thread, LightGBM with 1
  thread per worker, so both use the machine's 2 cores.

Reports rows/s and their ratio, the local process's peak RSS and each Dask worker's peak RSS.
On one 2-core machine Dask can only add overhead (the shuffle by journey, task scheduling,
serialisation); the benchmark measures how much, which is what a user pays before a cluster of
several machines pays it back.

    python bench/bench_dask.py                    # 1M and 5M sessions
    python bench/bench_dask.py --sizes 200000 500000 --out /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_RESULTS, command_line, run_metadata, write_section
from bench_scoring import generate_sessions, train_and_register

MODEL_URI = "models:/micro_moment_intent@champion"


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _local_child(input_path: str, out_dir: str, tracking_uri: str, queue) -> None:
    import mlflow

    from pipelines.score import load_scorer, score_file

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
    from pipelines.dask_engine import cluster, score_dask

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
    parser.add_argument("--section", default="bench_dask")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = run_metadata()
    res = run(args.sizes, args.train_sessions, args.seed)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    report = render(res, command, meta)
    print("\n" + report, flush=True)
    path = write_section(args.out, args.section, report)
    print(f"wrote section {args.section!r} of {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
