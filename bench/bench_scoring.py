"""Scoring benchmark: batch throughput, memory at two sizes, model load time, one-session latency.

Generates synthetic sessions into a temporary folder, trains the intent model on ~200k of them with
the `train` config composed as the CLI composes it, logs and registers it in a temporary SQLite
MLflow store (the gate makes it `@champion`), then measures, with --threads LightGBM threads:

1. end-to-end throughput of `pipelines.engines.local.score_file` with compiled trees (read, route
   to buckets, contract, features, predict, write) in rows/s, as a ratio to raw `Booster.predict`
   on the same rows' prepared feature matrix (target: >= 3x), with where the end-to-end time goes;
2. peak resident memory (VmHWM) of scoring a small and a large input (1M and 10M sessions), each
   in a fresh process (target: large / small <= 1.3x);
3. the time `mlflow.pyfunc.load_model("models:/micro_moment_intent@champion")` takes in a fresh
   process, next to the time of `import mlflow` alone (no target: context for a serving cold start);
4. the latency of one session through the loaded pyfunc, p50 and p99, next to raw
   `Booster.predict` on one prepared row (target: p99 <= 5 ms), with where the time goes;
5. compiled trees against LightGBM on the same matrix: compile time (first and cached), predict
   rate, and the largest probability difference over every benchmark row (target: <= 1e-9);
   and the cost of reasons (`explain=3`) as a ratio to plain scoring on the same rows.

Timings are repeated and medians quoted. Prints a markdown report and writes it to its own section
of bench/RESULTS.md.

    python bench/bench_scoring.py                              # 1M sessions; memory 1M vs 10M
    python bench/bench_scoring.py --sessions 200000 --rss-large 2000000 --out /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import lightgbm
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
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

import pipelines.core.contract
import pipelines.core.scorer
import pipelines.core.scoring
import pipelines.engines.local
import pipelines.tracking.registry
from pipelines.core import compiled
from pipelines.core.contract import to_contract
from pipelines.core.scorer import IntentModel
from pipelines.io.readers import read_sessions
from pipelines.stages.train import train
from pipelines.tracking.train_run import log_and_register

MODEL_NAME = "micro_moment_intent"
MODEL_URI = f"models:/{MODEL_NAME}@champion"
TARGET_THROUGHPUT = 3.0  # end-to-end rows/s (compiled trees) / raw Booster.predict rows/s
TARGET_RSS_RATIO = 1.3  # peak RSS large / small
TARGET_P99_MS = 5.0  # one-session latency through the pyfunc
TARGET_EXACT = 1e-9  # compiled trees vs LightGBM, largest probability difference
EXPLAIN_ROWS = 3000  # rows scored with and without reasons
EXPLAIN_K = 3
WARMUP_CALLS = 20

# a fresh interpreter that imports only mlflow, then loads the registered model
LOAD_CHILD = """\
import json, time
start = time.perf_counter()
import mlflow
imported = time.perf_counter()
mlflow.pyfunc.load_model({uri!r})
loaded = time.perf_counter()
print(json.dumps({{"import_mlflow_s": imported - start, "load_s": loaded - imported}}))
"""

# end-to-end pieces (timed inside score_file), in pipeline order: (key, label)
SCORE_PIECES = (
    ("read_input", "read input (parquet record batches, pass 1)"),
    ("route", "hash journey ids to buckets (pass 1)"),
    ("write_buckets", "write bucket files (pass 1)"),
    ("read_buckets", "read bucket files (pass 2)"),
    ("contract", "contract: types and conversion"),
    ("validate", "contract: row checks (pandera for a chunk)"),
    ("features", "features (`SessionFeaturizer.transform_matrix`)"),
    ("predict", "predict (compiled trees, from the feature matrix)"),
    ("assemble", "prediction frame (argmax, intent, margin)"),
    ("journeys", "journey summary (`journey_summary`)"),
    ("write_outputs", "write predictions and journeys.parquet"),
    ("other", "other (score_file glue: timestamps, ids, takes)"),
)

# one-session pieces (timed inside pyfunc.predict): (key, label)
LATENCY_PIECES = (
    ("schema", "MLflow input schema enforcement (`_validate_prediction_input`)"),
    ("mlflow", "rest of MLflow `PyFuncModel.predict` (prediction context, metadata)"),
    ("wrapper", "`IntentPyfunc.predict` glue (MLflow's type-hint wrapper, name/version columns)"),
    ("contract", "contract: types and conversion"),
    ("validate", "contract: row checks (on arrays for a few rows)"),
    ("features", "features (`SessionFeaturizer.transform_matrix`)"),
    ("predict", "predict (compiled trees, from the one-row feature matrix)"),
    ("assemble", "prediction frame (argmax, intent, margin)"),
)


# -- measuring ------------------------------------------------------------------------------
class Stopwatch:
    """Inclusive seconds spent in wrapped callables, summed by key."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.active: dict[str, int] = defaultdict(int)

    def wrap(self, key: str, fn: Callable, unless: tuple[str, ...] = ()) -> Callable:
        """`fn`, timed under `key`, except for calls made while a key of `unless` is timing."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if any(self.active[other] for other in unless):
                return fn(*args, **kwargs)
            self.active[key] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start
                self.active[key] -= 1

        return timed

    def wrap_iter(self, key: str, fn: Callable[..., Iterator]) -> Callable[..., Iterator]:
        """Like `wrap` for a generator function: times each step of the iteration."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            it = iter(fn(*args, **kwargs))
            while True:
                start = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    self.seconds[key] += time.perf_counter() - start
                yield item

        return timed

    def take(self) -> dict[str, float]:
        """The sums so far; starts again from zero."""
        out = dict(self.seconds)
        self.seconds.clear()
        return out


@contextlib.contextmanager
def timed_pieces(model: IntentModel, watch: Stopwatch, with_io: bool) -> Iterator[None]:
    """Time the stages of `IntentModel.predict` (and of `score_file` when `with_io`) in place."""

    def timed(owner, name: str, label: str, **kwargs) -> tuple:
        """`owner.name` replaced by a version that adds its time to `label`."""
        return owner, name, watch.wrap(label, getattr(owner, name), **kwargs)

    targets = [
        timed(pipelines.core.scorer, "to_contract", "contract"),
        # row checks: pandera for a chunk, the same rules on arrays for a few rows
        timed(pipelines.core.contract, "schema_failures", "validate"),
        timed(pipelines.core.contract, "array_failures", "validate"),
        timed(model.featurizer, "transform_matrix", "features"),
        timed(model, "predict_features", "predict"),
        timed(model, "predict", "intent_predict"),
    ]
    if with_io:
        local = pipelines.engines.local
        targets += [
            (local, "iter_batches", watch.wrap_iter("read_input", local.iter_batches)),
            timed(local, "bucket_of", "route"),
            # DataFrame.to_parquet writes through ParquetWriter too: counted as outputs
            timed(pq.ParquetWriter, "write_table", "write_buckets", unless=("write_outputs",)),
            timed(pd, "read_parquet", "read_buckets"),
            timed(pipelines.core.scoring, "journey_summary", "journeys"),
            timed(pd.DataFrame, "to_parquet", "write_outputs"),
        ]
    with contextlib.ExitStack() as stack:
        for owner, name, wrapped in targets:
            stack.enter_context(mock.patch.object(owner, name, wrapped))
        yield


def exclusive(seconds: dict[str, float], total: float, keys: tuple[tuple[str, str], ...]) -> dict:
    """Inclusive sums -> the exclusive time of each piece of `keys` (`other` is the rest of total)."""
    s = defaultdict(float, seconds)
    out = {
        "contract": s["contract"] - s["validate"],
        "validate": s["validate"],
        "features": s["features"],
        "predict": s["predict"],
        "assemble": s["intent_predict"] - s["contract"] - s["features"] - s["predict"],
    }
    for key in (
        "read_input",
        "route",
        "write_buckets",
        "read_buckets",
        "journeys",
        "write_outputs",
    ):
        out[key] = s[key]
    out["schema"] = s["schema"]
    out["mlflow"] = total - s["wrapper"] - s["schema"]
    out["wrapper"] = s["wrapper"] - s["intent_predict"]
    out = {key: out[key] for key, _ in keys if key != "other"}
    if any(key == "other" for key, _ in keys):
        out["other"] = total - sum(out.values())
    return out


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"/proc/self/status has no {field}")


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def size_label(sessions: int) -> str:
    if sessions >= 1_000_000 and sessions % 100_000 == 0:
        return f"{sessions / 1_000_000:g}M"
    if sessions >= 1_000 and sessions % 1_000 == 0:
        return f"{sessions // 1_000}k"
    return f"{sessions:,}"


# -- setup ----------------------------------------------------------------------------------
def train_and_register(data_dir: Path, tmp: Path, threads: int, tracking_uri: str) -> dict:
    """Train on the generated sessions and register the model as `@champion`."""
    cfg = compose_config(
        "train",
        [
            f"output_dir={tmp / 'train_output'}",
            f"data.path={data_dir / 'sessions'}",
            f"data.stores_path={data_dir / 'stores.csv'}",
            f"tracking.uri={tracking_uri}",
            f"runtime.threads={threads}",
            "baselines=false",
        ],
    )
    cfg["registry"]["gate"] = True  # the first version passes the gate: it becomes @champion
    print(f"training on {threads} thread(s) ...", flush=True)
    start = time.perf_counter()
    with threadpool_limits(limits=threads):
        result = train(cfg)
    seconds = time.perf_counter() - start
    summary = log_and_register(cfg, result, [], str(tmp / "train_output"))
    if summary["gate"] is None or not summary["gate"].promote:
        raise RuntimeError(f"the trained model did not become champion: {summary['gate']}")
    booster = result.model.booster
    print(f"  trained in {seconds:.1f} s, registered version {summary['registered_version']}")
    return {
        "train_s": seconds,
        "version": summary["registered_version"],
        "best_iteration": int(booster.best_iteration or booster.current_iteration()),
        "trees": booster.num_trees(),
        "features": len(result.model.featurizer.feature_names_),
        "accuracy": result.metrics["test/accuracy"],
        "rows": int(result.metrics["data/rows_kept"]),
    }


def prepared_matrix(features: pd.DataFrame) -> np.ndarray:
    """The float matrix LightGBM predicts from: categories as their codes, unknown as NaN."""
    columns = []
    for col in features.columns:
        values = features[col]
        if isinstance(values.dtype, pd.CategoricalDtype):
            codes = values.cat.codes.to_numpy().astype(float)
            codes[codes < 0] = np.nan
            columns.append(codes)
        else:
            columns.append(values.to_numpy(dtype=float, na_value=np.nan))
    return np.ascontiguousarray(np.column_stack(columns))


def raw_predict(model: IntentModel, matrix: np.ndarray, threads: int) -> np.ndarray:
    booster = model.booster
    return booster.predict(
        matrix, num_iteration=booster.best_iteration or None, num_threads=threads
    )


# -- 1. throughput --------------------------------------------------------------------------
def throughput(
    model: IntentModel, info: dict, input_path: str, tmp: Path, args: argparse.Namespace
) -> tuple[dict, np.ndarray]:
    """Raw predict and end-to-end `score_file` on the same rows, alternating, `repeats` times."""
    raw = read_sessions(input_path)
    canon = to_contract(raw, model.spec, with_label=False, all_columns=False).sessions
    features = model.featurizer.transform(canon)
    matrix = prepared_matrix(features)
    # the matrix is what LightGBM makes of the feature frame: same predictions
    check = slice(0, 5000)
    expected = model.predict_features(features.iloc[check])
    if not np.allclose(raw_predict(model, matrix[check], args.threads), expected):
        raise RuntimeError("the prepared matrix does not predict like the feature frame")
    rows = len(raw)
    del raw, canon, features

    watch = Stopwatch()
    raw_s, e2e_s, pieces, summaries = [], [], [], []
    for i in range(args.repeats):
        start = time.perf_counter()
        raw_predict(model, matrix, args.threads)
        raw_s.append(time.perf_counter() - start)
        print(f"  run {i + 1}: raw Booster.predict {rows / raw_s[-1]:,.0f} rows/s", flush=True)

        out_dir = tmp / f"scores_{i}"
        watch.take()
        with timed_pieces(model, watch, with_io=True):
            start = time.perf_counter()
            summary = pipelines.engines.local.score_file(
                model,
                input_path,
                out_dir,
                chunk_rows=args.chunk_rows,
                model_info=info,
                progress=False,
            )
            e2e_s.append(time.perf_counter() - start)
        pieces.append(exclusive(watch.take(), e2e_s[-1], SCORE_PIECES))
        summaries.append(summary)
        shutil.rmtree(out_dir, ignore_errors=True)
        print(f"  run {i + 1}: score_file {rows / e2e_s[-1]:,.0f} rows/s", flush=True)
    if summaries[0]["rows_scored"] != rows:
        raise RuntimeError(f"score_file scored {summaries[0]['rows_scored']} of {rows} rows")
    result = {
        "rows": rows,
        "target": args.sessions,
        "buckets": summaries[0]["buckets"],
        "journeys": summaries[0]["journeys"],
        "raw_s": raw_s,
        "e2e_s": e2e_s,
        "raw_rate": rows / median(raw_s),
        "e2e_rate": rows / median(e2e_s),
        # the stages of the median run, so that they add up to its time
        "pieces": pieces[e2e_s.index(sorted(e2e_s)[(len(e2e_s) - 1) // 2])],
    }
    result["ratio"] = result["e2e_rate"] / result["raw_rate"]
    return result, matrix


# -- 5. compiled trees and reasons -----------------------------------------------------------
def compile_times(model: IntentModel, cache: Path) -> dict:
    """Seconds to compile the booster into an empty cache, then to load it from the cache."""
    text = model.booster.model_to_string()
    start = time.perf_counter()
    compiled.compile_trees(text, len(model.classes), cache)
    first = time.perf_counter() - start
    start = time.perf_counter()
    compiled.compile_trees(text, len(model.classes), cache)
    return {"compile_s": first, "cached_s": time.perf_counter() - start}


def compiled_vs_lightgbm(model: IntentModel, matrix: np.ndarray, threads: int) -> dict:
    """Compiled and LightGBM predictions of every row, alternating three times: rates and the
    largest difference."""
    n_classes = len(model.classes)
    lgb_s, comp_s = [], []
    for _ in range(3):
        start = time.perf_counter()
        exact = raw_predict(model, matrix, threads)
        lgb_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        fast = model.compiled.predict(matrix, threads)
        comp_s.append(time.perf_counter() - start)
    exact = exact if n_classes > 2 else np.column_stack([1 - exact, exact])
    return {
        "rows": len(matrix),
        "lightgbm_rate": len(matrix) / median(lgb_s),
        "compiled_rate": len(matrix) / median(comp_s),
        "max_diff": compiled.largest_difference(fast, exact),
    }


def explain_cost(model: IntentModel, input_path: str) -> dict:
    """`IntentModel.predict` on the same rows without and with reasons, alternating; medians."""
    first_part = sorted(Path(input_path).glob("*.parquet"))[0]
    raw = pd.read_parquet(first_part).head(EXPLAIN_ROWS)
    plain_s, explain_s = [], []
    for _ in range(2):
        start = time.perf_counter()
        model.predict(raw)
        plain_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.predict(raw, explain=EXPLAIN_K)
        explain_s.append(time.perf_counter() - start)
    return {
        "rows": len(raw),
        "plain_s": median(plain_s),
        "explain_s": median(explain_s),
        "ratio": median(explain_s) / median(plain_s),
    }


def compiled_section(comp: dict, expl: dict, threads: int) -> list[str]:
    ok = comp["max_diff"] <= TARGET_EXACT
    return [
        "### 5. Compiled trees and reasons",
        "",
        f"The champion's booster compiled by lleaves into an empty cache, then loaded from it; "
        f"both predictors on the same {comp['rows']:,} prepared rows, {threads} threads, "
        "alternating three times (medians).",
        "",
        "| | value |",
        "|---|---:|",
        f"| compile (first time on this machine) | {comp['compile_s']:.1f} s |",
        f"| load from the cache | {comp['cached_s']:.2f} s |",
        f"| LightGBM `Booster.predict` | {comp['lightgbm_rate']:,.0f} rows/s |",
        f"| compiled trees | {comp['compiled_rate']:,.0f} rows/s |",
        f"| compiled / LightGBM | **{comp['compiled_rate'] / comp['lightgbm_rate']:.1f}x** |",
        f"| largest probability difference, every row | {comp['max_diff']:.2g} |",
        "",
        f"**Compiled trees equal LightGBM to {comp['max_diff']:.2g}** (target <= "
        f"{TARGET_EXACT:g}): **{'PASS' if ok else 'FAIL'}**",
        "",
        f"Reasons: `IntentModel.predict` on {expl['rows']:,} raw sessions, plain "
        f"{expl['plain_s']:.2f} s, with `explain={EXPLAIN_K}` {expl['explain_s']:.1f} s: "
        f"**{expl['ratio']:.0f}x** the cost of scoring. LightGBM's exact contributions "
        "(`pred_contrib`, TreeSHAP) cost far more than a prediction, which is why reasons are "
        "opt-in.",
    ]


# -- 2. peak memory -------------------------------------------------------------------------
def child_score(input_path: str, out_dir: Path, threads: int, chunk_rows: int) -> dict:
    """Load the champion and score `input_path`; runs in a fresh process."""
    model, info = pipelines.tracking.registry.load_scorer(MODEL_URI, threads, compiled=True)
    rss_before = _status_kib("VmRSS")
    start = time.perf_counter()
    summary = pipelines.engines.local.score_file(
        model, input_path, out_dir, chunk_rows=chunk_rows, model_info=info, progress=False
    )
    return {
        "rows": summary["rows_in"],
        "journeys": summary["journeys"],
        "buckets": summary["buckets"],
        "seconds": time.perf_counter() - start,
        "rss_before_kib": rss_before,
        "peak_rss_kib": _status_kib("VmHWM"),
    }


def measure_rss(input_path: str, tmp: Path, env: dict, args: argparse.Namespace) -> dict:
    """Score `input_path` in a fresh process; its output is removed afterwards."""
    out_dir = tmp / "rss_scores"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-score",
        input_path,
        "--child-out",
        str(out_dir),
        "--threads",
        str(args.threads),
        "--chunk-rows",
        str(args.chunk_rows),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        raise RuntimeError(f"the child scoring {input_path} failed ({proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  {result['rows']:,} rows in {result['seconds']:.1f} s, "
        f"peak RSS {result['peak_rss_kib'] / 1024:.0f} MiB",
        flush=True,
    )
    return result


def memory(
    small_data: dict, tmp: Path, env: dict, args: argparse.Namespace
) -> tuple[dict, dict, str | None]:
    """Peak RSS of the small and the large input; the large one shrinks to fit --max-minutes."""
    print(f"peak RSS: scoring {small_data['sessions']:,} sessions in a fresh process ...")
    small = measure_rss(small_data["path"], tmp, env, args)
    small.update(generate_s=small_data["seconds"], target=small_data["target"])
    per_session = (small_data["seconds"] + small["seconds"]) / small["rows"]
    large_size = args.rss_large
    projected_min = per_session * large_size / 60
    note = None
    print(f"generating and scoring {large_size:,} sessions should take ~{projected_min:.1f} min")
    if projected_min > args.max_minutes:
        fits = int(args.max_minutes * 60 / per_session)
        large_size = max(fits // 1_000_000 * 1_000_000, 2 * args.rss_small)
        note = (
            f"{size_label(args.rss_large)} sessions would have taken ~{projected_min:.1f} min to "
            f"generate and score here (above --max-minutes {args.max_minutes:g}); the large run "
            f"used {size_label(large_size)} sessions instead"
        )
        print(note, flush=True)
    large_dir = tmp / "rss_large"
    large_data = generate_sessions(large_size, large_dir, args.seed + 2, posterior=False)
    try:
        print(f"peak RSS: scoring {large_data['sessions']:,} sessions in a fresh process ...")
        large = measure_rss(large_data["path"], tmp, env, args)
    finally:
        shutil.rmtree(large_dir, ignore_errors=True)
    large.update(generate_s=large_data["seconds"], target=large_size)
    return small, large, note


# -- 3. load time ---------------------------------------------------------------------------
def load_times(env: dict, runs: int) -> dict:
    """`import mlflow` and `load_model` in fresh processes: one warm-up run, then `runs` runs."""
    code = LOAD_CHILD.format(uri=MODEL_URI)
    results = []
    for i in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-5000:])
            raise RuntimeError(f"loading {MODEL_URI} in a fresh process failed")
        if i == 0:
            continue  # warm-up: file system caches
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["process_s"] = wall
        results.append(result)
        print(
            f"  run {i}: import mlflow {result['import_mlflow_s']:.2f} s, "
            f"load_model {result['load_s']:.2f} s",
            flush=True,
        )
    out = {key: median([r[key] for r in results]) for key in results[0]}
    out["runs"] = results
    out["ratio"] = out["load_s"] / out["import_mlflow_s"]
    return out


# -- 4. latency -----------------------------------------------------------------------------
def latency(input_path: str, matrix: np.ndarray, args: argparse.Namespace) -> dict:
    """One session at a time through the pyfunc, then raw predict on one prepared row."""
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(MODEL_URI)
    wrapper = pyfunc.unwrap_python_model()
    model: IntentModel = wrapper.model
    model.threads = args.threads
    columns = [c.name for c in pyfunc.metadata.get_input_schema().inputs]
    first_part = sorted(Path(input_path).glob("*.parquet"))[0]
    raw = pd.read_parquet(first_part)
    raw = raw[[c for c in columns if c in raw.columns]]
    n = args.latency_calls
    calls = [raw.iloc[[i]].reset_index(drop=True) for i in range(n + WARMUP_CALLS)]
    prepared = [matrix[i : i + 1] for i in range(n + WARMUP_CALLS)]

    def run(fn: Callable, inputs: list) -> np.ndarray:
        for x in inputs[:WARMUP_CALLS]:
            fn(x)
        seconds = []
        for x in inputs[WARMUP_CALLS:]:
            start = time.perf_counter()
            fn(x)
            seconds.append(time.perf_counter() - start)
        return np.asarray(seconds) * 1000

    out = pyfunc.predict(calls[0])
    if len(out) != 1 or out["reject_reason"].notna().any():
        raise RuntimeError(f"the pyfunc did not score a one-row call: {out.to_dict('records')}")
    pyfunc_ms = run(pyfunc.predict, calls)
    # the project's scorer as the pyfunc calls it, without MLflow's layer around it
    extra = {"model_name": wrapper.model_name, "model_version": wrapper.model_version}
    scorer_ms = run(lambda x: model.predict(x, extra=extra, nullable=True), calls)
    # one row on one thread, as the scorer predicts a few rows (more threads only wait)
    raw_ms = run(lambda x: raw_predict(model, x, 1), prepared)

    # where the time goes: the same calls again, with the stages timed
    watch = Stopwatch()
    per_call = []
    enforce = mlflow.pyfunc._validate_prediction_input
    with (
        timed_pieces(model, watch, with_io=False),
        mock.patch.object(wrapper, "predict", watch.wrap("wrapper", wrapper.predict)),
        mock.patch.object(
            mlflow.pyfunc, "_validate_prediction_input", watch.wrap("schema", enforce)
        ),
    ):
        for x in calls[:WARMUP_CALLS]:
            pyfunc.predict(x)
        for x in calls[WARMUP_CALLS:]:
            watch.take()
            start = time.perf_counter()
            pyfunc.predict(x)
            total = time.perf_counter() - start
            per_call.append({"total": total, **exclusive(watch.take(), total, LATENCY_PIECES)})
    pieces = {
        key: np.asarray([c[key] for c in per_call]) * 1000
        for key in ("total", *(k for k, _ in LATENCY_PIECES))
    }
    return {
        "calls": n,
        "pyfunc_p50": float(np.percentile(pyfunc_ms, 50)),
        "pyfunc_p99": float(np.percentile(pyfunc_ms, 99)),
        "scorer_p50": float(np.percentile(scorer_ms, 50)),
        "scorer_p99": float(np.percentile(scorer_ms, 99)),
        "raw_p50": float(np.percentile(raw_ms, 50)),
        "raw_p99": float(np.percentile(raw_ms, 99)),
        "pieces": {
            key: (float(np.percentile(v, 50)), float(v.mean()), float(np.percentile(v, 99)))
            for key, v in pieces.items()
        },
    }


# -- report ---------------------------------------------------------------------------------
def verdicts(res: dict) -> dict[str, tuple[float, str]]:
    tp, rss, lat = res["throughput"], res["rss"], res["latency"]
    ratio_rss = rss["large"]["peak_rss_kib"] / rss["small"]["peak_rss_kib"]
    return {
        "throughput": (tp["ratio"], "PASS" if tp["ratio"] >= TARGET_THROUGHPUT else "FAIL"),
        "rss": (ratio_rss, "PASS" if ratio_rss <= TARGET_RSS_RATIO else "FAIL"),
        "latency": (lat["pyfunc_p99"], "PASS" if lat["pyfunc_p99"] <= TARGET_P99_MS else "FAIL"),
        "exact": (
            res["compiled"]["max_diff"],
            "PASS" if res["compiled"]["max_diff"] <= TARGET_EXACT else "FAIL",
        ),
    }


def ratio_table(res: dict) -> list[str]:
    tp, rss, load, lat = res["throughput"], res["rss"], res["load"], res["latency"]
    v = verdicts(res)
    small, large = rss["small"], rss["large"]
    ls, ll = size_label(small["target"]), size_label(large["target"])
    return [
        "| measure | value | reference | ratio | target | result |",
        "|---|---:|---:|---:|---|---|",
        f"| end-to-end `score_file` throughput ({size_label(tp['target'])} sessions) "
        f"| {tp['e2e_rate']:,.0f} rows/s | raw `Booster.predict`: {tp['raw_rate']:,.0f} rows/s "
        f"| **{tp['ratio']:.2f}x** | >= {TARGET_THROUGHPUT:g}x | **{v['throughput'][1]}** |",
        f"| peak RSS, scoring {ll} vs {ls} sessions "
        f"| {large['peak_rss_kib'] / 1024:,.0f} MiB | {small['peak_rss_kib'] / 1024:,.0f} MiB "
        f"| **{v['rss'][0]:.2f}x** | <= {TARGET_RSS_RATIO}x | **{v['rss'][1]}** |",
        f"| fresh-process `load_model({MODEL_URI!r})` | {load['load_s']:.2f} s "
        f"| `import mlflow`: {load['import_mlflow_s']:.2f} s | **{load['ratio']:.2f}x** "
        "| none | (context) |",
        f"| one-session latency through the pyfunc, p99 | {lat['pyfunc_p99']:.1f} ms "
        f"| raw `Booster.predict`, one row: {lat['raw_p99']:.2f} ms "
        f"| **{lat['pyfunc_p99'] / lat['raw_p99']:.0f}x** | p99 <= {TARGET_P99_MS:g} ms "
        f"| **{v['latency'][1]}** |",
        f"| MLflow's own share of the one-session call (mean) | {pct(mlflow_share(lat))} "
        f"| the scorer alone, p99: {lat['scorer_p99']:.1f} ms "
        f"| **{lat['pyfunc_p99'] / lat['scorer_p99']:.1f}x** | none | (context) |",
        f"| compiled trees vs LightGBM, largest probability difference "
        f"| {res['compiled']['max_diff']:.2g} | {res['compiled']['rows']:,} rows "
        f"| {res['compiled']['compiled_rate'] / res['compiled']['lightgbm_rate']:.1f}x faster "
        f"| <= {TARGET_EXACT:g} | **{v['exact'][1]}** |",
        f"| reasons (`explain={EXPLAIN_K}`) vs plain scoring | {res['explain']['explain_s']:.1f} s "
        f"| {res['explain']['plain_s']:.2f} s | **{res['explain']['ratio']:.0f}x** | none "
        "| (context) |",
    ]


def throughput_section(tp: dict, status: str, args: argparse.Namespace) -> list[str]:
    e2e_med = sum(tp["pieces"].values())  # the median run (the lower middle one when even)
    pieces = tp["pieces"]
    in_file_predict = tp["rows"] / pieces["predict"]
    lines = [
        f"### 1. Throughput: {tp['rows']:,} sessions ({tp['journeys']:,} journeys)",
        "",
        f"`score_file(model, input, out, chunk_rows={args.chunk_rows})` on parquet parts "
        f"({tp['buckets']} buckets), against `Booster.predict(X, num_threads={args.threads})` on "
        "the prepared float matrix of the same rows (featurized beforehand, categories as codes; "
        "checked to predict exactly like the feature frame). "
        f"{args.repeats} runs each, alternating; medians.",
        "",
        "| | rows/s (median) | seconds of each run |",
        "|---|---:|---|",
        f"| raw `Booster.predict` | {tp['raw_rate']:,.0f} "
        f"| {', '.join(f'{s:.1f}' for s in tp['raw_s'])} |",
        f"| end-to-end `score_file` | {tp['e2e_rate']:,.0f} "
        f"| {', '.join(f'{s:.1f}' for s in tp['e2e_s'])} |",
        "",
        f"**End-to-end / raw predict: {tp['ratio']:.2f}x** "
        f"(target >= {TARGET_THROUGHPUT:g}x): **{status}**",
        "",
        "Where the end-to-end time goes (each stage timed in place inside the same `score_file` "
        "runs; the stages of the median run):",
        "",
        "| stage | seconds | share |",
        "|---|---:|---:|",
    ]
    for key, label in SCORE_PIECES:
        lines.append(f"| {label} | {pieces[key]:.1f} | {pct(pieces[key] / e2e_med)} |")
    lines += [
        f"| **total** | {e2e_med:.1f} | 100% |",
        "",
        f"The compiled trees inside `score_file` predict {in_file_predict:,.0f} rows/s "
        f"({in_file_predict / tp['raw_rate']:.1f}x the raw LightGBM matrix rate). Everything "
        f"but the predict stage costs {pct(1 - pieces['predict'] / e2e_med)} of the end-to-end "
        "time: the table above is where the rest goes.",
    ]
    return lines


def memory_section(rss: dict, args: argparse.Namespace) -> list[str]:
    small, large = rss["small"], rss["large"]
    ratio = large["peak_rss_kib"] / small["peak_rss_kib"]
    lines = [
        f"### 2. Peak memory: scoring {size_label(small['target'])} vs "
        f"{size_label(large['target'])} sessions",
        "",
        "Each size scored once by `score_file` in a fresh process that first loads the champion "
        f"with `load_scorer` (chunk_rows={args.chunk_rows}, {args.threads} threads); peak RSS is "
        "the child's VmHWM read when scoring has finished (not getrusage's ru_maxrss, which "
        "keeps the parent's high-water mark across the child's exec). Input generated with the "
        "posterior off, 50,000 journeys per part.",
    ]
    if rss["note"]:
        lines.append(f"- **size used**: {rss['note']}.")
    lines += [
        "",
        "| run | sessions | journeys | buckets | peak RSS (VmHWM) | RSS after loading the model "
        "| score time | rows/s | generate time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (small, large):
        lines.append(
            f"| {size_label(r['target'])} | {r['rows']:,} | {r['journeys']:,} | {r['buckets']} "
            f"| {r['peak_rss_kib'] / 1024:,.0f} MiB | {r['rss_before_kib'] / 1024:,.0f} MiB "
            f"| {r['seconds']:.0f} s "
            f"| {r['rows'] / r['seconds']:,.0f} | {r['generate_s']:.0f} s |"
        )
    growth = (large["peak_rss_kib"] - small["peak_rss_kib"]) / 1024
    lines += [
        "",
        f"**Peak RSS {size_label(large['target'])} / {size_label(small['target'])}: {ratio:.2f}x** "
        f"(target <= {TARGET_RSS_RATIO}x): **{'PASS' if ratio <= TARGET_RSS_RATIO else 'FAIL'}** "
        f"({growth:+,.0f} MiB for {large['rows'] / small['rows']:.1f}x the sessions)",
    ]
    return lines


def load_section(load: dict, args: argparse.Namespace) -> list[str]:
    def each(key: str) -> str:
        return ", ".join(f"{r[key]:.2f}" for r in load["runs"])

    return [
        "### 3. Fresh-process model load",
        "",
        f"`python -c 'import mlflow; mlflow.pyfunc.load_model(\"{MODEL_URI}\")'` with "
        "MLFLOW_TRACKING_URI pointing at the SQLite store; both times measured inside the child. "
        f"One warm-up run, then {args.load_runs} runs; medians.",
        "",
        "| | median | each run |",
        "|---|---:|---|",
        f"| `import mlflow` | {load['import_mlflow_s']:.2f} s | {each('import_mlflow_s')} s |",
        f"| `mlflow.pyfunc.load_model` (after the import) | {load['load_s']:.2f} s "
        f"| {each('load_s')} s |",
        f"| whole child process (interpreter start to exit) | {load['process_s']:.2f} s "
        f"| {each('process_s')} s |",
        "",
        f"**load_model / import mlflow: {load['ratio']:.2f}x** (no target; a serving cold start "
        f"costs about {load['import_mlflow_s'] + load['load_s']:.1f} s before the first "
        "prediction).",
    ]


def mlflow_share(lat: dict) -> float:
    """MLflow's own part of the mean one-session call: schema enforcement and its other glue."""
    pieces = lat["pieces"]
    return (pieces["schema"][1] + pieces["mlflow"][1]) / pieces["total"][1]


def latency_section(lat: dict) -> list[str]:
    pieces = lat["pieces"]
    total_mean = pieces["total"][1]
    status = "PASS" if lat["pyfunc_p99"] <= TARGET_P99_MS else "FAIL"
    lines = [
        "### 4. One-session latency",
        "",
        f"The champion loaded with `mlflow.pyfunc.load_model`, called {lat['calls']} times with a "
        "one-row DataFrame of a raw session's input columns (its native parquet types; a "
        f"different session each call, after {WARMUP_CALLS} warm-up calls); raw "
        "`Booster.predict` on one row of the prepared float matrix, the same way, on one thread "
        "(as the scorer predicts a few rows: a second thread only waits).",
        "",
        "| | p50 | p99 |",
        "|---|---:|---:|",
        f"| `pyfunc.predict` (one raw session) | {lat['pyfunc_p50']:.2f} ms "
        f"| {lat['pyfunc_p99']:.2f} ms |",
        f"| `IntentModel.predict` (the same sessions, no MLflow layer) | {lat['scorer_p50']:.2f} ms "
        f"| {lat['scorer_p99']:.2f} ms |",
        f"| raw `Booster.predict` (one prepared row) | {lat['raw_p50']:.2f} ms "
        f"| {lat['raw_p99']:.2f} ms |",
        f"| ratio | {lat['pyfunc_p50'] / lat['raw_p50']:.0f}x "
        f"| {lat['pyfunc_p99'] / lat['raw_p99']:.0f}x |",
        "",
        f"**pyfunc p99: {lat['pyfunc_p99']:.1f} ms** (target <= {TARGET_P99_MS:g} ms): "
        f"**{status}**. MLflow's own share of a call (its input schema enforcement and the rest "
        f"of `PyFuncModel.predict`): **{pct(mlflow_share(lat))}** of the mean.",
        "",
        "Where the time of one call goes (the same calls again with each stage timed in place; "
        "per-call milliseconds):",
        "",
        "| stage | p50 | mean | p99 | share of mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in LATENCY_PIECES:
        p50, mean, p99 = pieces[key]
        lines.append(f"| {label} | {p50:.2f} | {mean:.2f} | {p99:.2f} | {pct(mean / total_mean)} |")
    p50, mean, p99 = pieces["total"]
    lines.append(f"| **total (timed pass)** | {p50:.2f} | {mean:.2f} | {p99:.2f} | 100% |")
    return lines


def render(res: dict, args: argparse.Namespace, command: str, meta: list[str]) -> str:
    setup = res["setup"]
    lines = [
        "## Scoring: throughput, memory, load time and latency",
        "",
        f"`{command}`",
        "",
        *meta,
        "- 2 shared cores, other jobs running: read medians and ratios, not absolute times",
        f"- model: trained on {setup['rows']:,} synthetic sessions (`train` config, "
        f"baselines off), {setup['features']} features, best iteration "
        f"{setup['best_iteration']} ({setup['trees']} trees), test accuracy "
        f"{setup['accuracy']:.4f}; registered in a temporary SQLite MLflow store as "
        f"{MODEL_NAME} version {setup['version']} `@champion` through the gate",
        f"- LightGBM {lightgbm.__version__}, pandas {pd.__version__}, {args.threads} threads for "
        "every LightGBM call; scoring input: fresh synthetic sessions (another seed)",
        "",
        "### Summary",
        "",
        *ratio_table(res),
        "",
        *throughput_section(res["throughput"], verdicts(res)["throughput"][1], args),
        "",
        *memory_section(res["rss"], args),
        "",
        *load_section(res["load"], args),
        "",
        *latency_section(res["latency"]),
        "",
        *compiled_section(res["compiled"], res["explain"], args.threads),
    ]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_scoring_", dir=args.tmp_dir) as tmp_name:
        tmp = Path(tmp_name)
        tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
        env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri

        train_data = generate_sessions(args.train_sessions, tmp / "train", args.seed, True)
        res["setup"] = train_and_register(tmp / "train", tmp, args.threads, tracking_uri)
        data = {
            args.sessions: generate_sessions(args.sessions, tmp / "score", args.seed + 1, False)
        }
        del train_data
        shutil.rmtree(tmp / "train", ignore_errors=True)

        # compiled models are cached here: the first compile is measured, later loads hit it
        os.environ[compiled.CACHE_ENV] = env[compiled.CACHE_ENV] = str(tmp / "compiled")
        print("compiling the champion's trees ...", flush=True)
        model, info = pipelines.tracking.registry.load_scorer(MODEL_URI, args.threads)
        res["compiled"] = compile_times(model, tmp / "compiled")
        model.use_compiled_trees(tmp / "compiled")
        if model.predictor != compiled.LLEAVES:
            raise RuntimeError(f"the champion did not compile: {model.predictor_note}")
        print(f"throughput: {args.repeats} runs of raw predict and score_file ...", flush=True)
        res["throughput"], matrix = throughput(model, info, data[args.sessions]["path"], tmp, args)
        res["compiled"].update(compiled_vs_lightgbm(model, matrix, args.threads))
        print(f"reasons: {EXPLAIN_ROWS} rows with and without explain={EXPLAIN_K} ...", flush=True)
        res["explain"] = explain_cost(model, data[args.sessions]["path"])
        del model

        print(f"latency: {args.latency_calls} one-session calls ...", flush=True)
        res["latency"] = latency(data[args.sessions]["path"], matrix, args)
        del matrix

        print(f"load time: {args.load_runs} fresh processes ...", flush=True)
        res["load"] = load_times(env, args.load_runs)

        if args.rss_small not in data:
            data[args.rss_small] = generate_sessions(
                args.rss_small, tmp / "rss_small", args.seed + 1, False
            )
        small, large, note = memory(data[args.rss_small], tmp, env, args)
        res["rss"] = {"small": small, "large": large, "note": note}
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Batch scoring throughput against raw LightGBM predict, peak memory at two "
        "input sizes, fresh-process model load time and one-session pyfunc latency.",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=1_000_000,
        help="sessions scored for throughput and latency (default 1000000)",
    )
    parser.add_argument(
        "--train-sessions", type=int, default=200_000, help="sessions to train on (default 200000)"
    )
    parser.add_argument(
        "--rss-small", type=int, default=1_000_000, help="small memory run (default 1000000)"
    )
    parser.add_argument(
        "--rss-large", type=int, default=10_000_000, help="large memory run (default 10000000)"
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=20.0,
        help="generating and scoring the large memory run must fit this, or it shrinks to the "
        "largest whole number of millions that fits (default 20)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="threads for every LightGBM call (default 2)"
    )
    parser.add_argument(
        "--chunk-rows", type=int, default=250_000, help="score_file chunk_rows (default 250000)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="throughput runs of each kind (default 3)"
    )
    parser.add_argument(
        "--load-runs", type=int, default=5, help="fresh processes loading the model (default 5)"
    )
    parser.add_argument(
        "--latency-calls", type=int, default=500, help="one-session calls timed (default 500)"
    )
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument(
        "--tmp-dir", type=Path, default=None, help="where the temporary folder goes ($TMPDIR)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_RESULTS, help="results file (default bench/RESULTS.md)"
    )
    parser.add_argument(
        "--section",
        default="bench_scoring",
        help="the marker name of the section rewritten in --out (default bench_scoring)",
    )
    # the memory child's mode
    parser.add_argument("--child-score", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.load_runs < 1 or args.chunk_rows < 1:
        parser.error("--threads, --repeats, --load-runs and --chunk-rows must be >= 1")
    if args.child_score is None:
        if not 0 < args.rss_small < args.rss_large:
            parser.error("need 0 < --rss-small < --rss-large")
        if args.sessions < args.latency_calls + WARMUP_CALLS or args.train_sessions < 1000:
            parser.error("--sessions must exceed --latency-calls, --train-sessions >= 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_score is not None:
        result = child_score(args.child_score, args.child_out, args.threads, args.chunk_rows)
        print(json.dumps(result), flush=True)
        return 0

    meta = run_metadata()  # before the run: the code version it ran with
    start = time.perf_counter()
    res = run(args)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    report = render(res, args, command, meta)
    print("\n" + report, flush=True)
    print(f"(benchmark took {(time.perf_counter() - start) / 60:.0f} min)", flush=True)
    path = write_section(args.out, args.section, report)
    print(f"wrote section {args.section!r} of {path}", flush=True)
    return 0 if all(status == "PASS" for _, status in verdicts(res).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
