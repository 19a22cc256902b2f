"""`engine=local`: generate, train and score in this process with pandas.

Scoring streams an input of any size through bounded memory:
1. the input (a parquet file, a folder of parquet parts, or CSV) is read in record batches and
   each row is routed to one of N bucket files by a hash of its journey id, so every journey lands
   whole in one bucket whatever the input order;
2. each bucket is scored on its own by `core.scoring.score_chunk` (history features see the
   journey's earlier sessions) and appended to the output.
Outputs appear atomically: `predictions/` (one row per scored session), `journeys.parquet` (one row
per journey: latest intent and the intent sequence), `rejects.parquet` (rows that broke the
contract, with the reason) and `summary.json`. Rows in = rows scored + rows rejected.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from pipelines.core import cv, keys, modelling
from pipelines.core.contract import LABEL, ContractError, DatasetSpec, to_contract
from pipelines.core.gate import TrainingSpan
from pipelines.core.keys import bucket_of
from pipelines.core.scorer import IntentModel, check_explain
from pipelines.core.scoring import (
    ROW,
    ScoreOptions,
    check_rejected_share,
    journey_summary,
    report_absent_columns,
    score_chunk,
    score_summary,
)
from pipelines.core.synthetic import GeneratorParams, generate_chunks, n_chunks
from pipelines.core.training import (
    TrainResult,
    check_splits,
    cross_validate,
    fit_early_stopped,
    make_featurizer,
    result_of,
    split_inputs,
    timed,
)
from pipelines.io.outputs import ParquetAppender, atomic_path, part_name, write_stores
from pipelines.io.readers import (
    InputFingerprint,
    count_rows,
    iter_batches,
    load_stores,
    read_sessions,
)
from pipelines.tracking.registry import load_scorer

log = logging.getLogger(__name__)


class LocalEngine:
    """The `Engine` of this process (see `pipelines.engines.Engine`)."""

    name = "local"

    def __init__(self, cfg: Mapping | None = None):
        self.cfg = cfg

    def generate(self, gen_cfg: Mapping, params_cfg: Mapping) -> dict:
        return generate(gen_cfg, params_cfg)

    def train(
        self, cfg: Mapping, sessions: pd.DataFrame | None = None, callbacks: list | None = None
    ) -> TrainResult:
        return train(cfg, sessions, callbacks)

    def score(self, model_uri: str, input_path: str, out_dir: str, options: ScoreOptions) -> dict:
        rows = count_rows(input_path) if options.compiled and options.compile_min_rows else 0
        model, info = load_scorer(
            model_uri,
            options.threads,
            compiled=options.compiled,
            rows=rows,
            min_rows=options.compile_min_rows,
        )
        return score_file(
            model,
            input_path,
            out_dir,
            chunk_rows=options.chunk_rows,
            model_info=info,
            explain=options.explain,
            max_rejected_share=options.max_rejected_share,
        )


# -- generate ------------------------------------------------------------------------------------


def generate(gen_cfg: Mapping, params_cfg: Mapping) -> dict:
    """Write `<out_dir>/sessions/part-*.parquet` and `<out_dir>/stores.csv`; return a summary.

    Journeys are simulated and written a chunk at a time, so memory does not grow with size.
    Both outputs appear at once, complete, or not at all.
    """
    params = GeneratorParams.from_config(params_cfg)
    out = Path(gen_cfg["out_dir"])
    n_journeys, chunk = int(gen_cfg["n_journeys"]), int(gen_cfg["chunk_journeys"])
    parts = n_chunks(n_journeys, chunk)
    sessions = 0
    tty = sys.stderr.isatty()
    with atomic_path(out / "sessions", owner="generate") as tmp:
        tmp.mkdir(parents=True)
        chunks = generate_chunks(
            params, n_journeys, chunk, int(gen_cfg["seed"]), posterior=bool(gen_cfg["posterior"])
        )
        for i, df in enumerate(tqdm(chunks, total=parts, desc="generate", disable=not tty)):
            df.to_parquet(tmp / part_name(i), index=False)
            sessions += len(df)
            if not tty:
                log.info("chunk %d/%d: %d sessions", i + 1, parts, len(df))
    write_stores(params.stores_frame(), out)
    return {"journeys": n_journeys, "sessions": sessions, "parts": parts, "out_dir": str(out)}


# -- train ---------------------------------------------------------------------------------------


def train(
    cfg: Mapping, sessions: pd.DataFrame | None = None, callbacks: list | None = None
) -> TrainResult:
    """The training recipe in this process with pandas and `lightgbm.train` (early stopping on
    the validation split). Reads `cfg["data"]["path"]` unless `sessions` (raw, the user's columns)
    is given; `callbacks` are extra LightGBM callbacks (hyperparameter search prunes with one)."""
    timings: dict[str, float] = {}
    data_cfg = cfg["data"]
    spec = DatasetSpec.from_config(data_cfg)
    threads, seed = int(cfg["runtime"]["threads"]), int(cfg["runtime"]["seed"])
    source = str(data_cfg["path"] if sessions is None else "<frame>")
    with timed(timings, "read"):
        raw = read_sessions(source) if sessions is None else sessions.reset_index(drop=True)
    with timed(timings, "validate"):
        contract, split = _contract_and_split(raw, spec, cfg, source, seed)
        canon = contract.sessions
    stores = load_stores(data_cfg["stores_path"])
    with timed(timings, "features"):
        featurizer = make_featurizer(spec, cfg["features"], stores)
        sides = split.to_numpy()
        parts = {side: canon[sides == side] for side in modelling.SPLITS}
        featurizer.fit(parts["train"])
        X = {side: featurizer.transform(part) for side, part in parts.items()}
        codes = pd.Categorical(canon[LABEL], categories=list(spec.classes)).codes.astype(int)
        y = {side: codes[sides == side] for side in modelling.SPLITS}
    # the folds are drawn before anything trains: settings the data cannot meet fail at once
    dev = (canon[sides != "test"].reset_index(drop=True), codes[sides != "test"])
    with timed(timings, "cv"):
        folds = _cv_folds(cfg, *dev)
    with timed(timings, "train"):
        params = modelling.lgb_params(cfg["model"], len(spec.classes), threads, seed)
        curves: dict = {}
        booster = fit_early_stopped(cfg["model"], params, featurizer, X, y, callbacks, curves)
    model = IntentModel(spec, featurizer, booster, threads=threads)
    with timed(timings, "cv"):
        cv_metrics, cv_folds = _cross_validated(cfg, dev, folds, spec, stores)
    is_test = sides == "test"
    hashes = keys.row_hashes(canon)  # once: the data's fingerprint and each split's digest
    return result_of(
        cfg,
        model,
        X,
        y,
        parts["test"],
        raw.iloc[contract.kept_rows[is_test]].reset_index(drop=True),
        timings,
        extra_metrics={
            **{f"data/{key}": float(value) for key, value in contract.counts.items()},
            **{f"data/{side}_rows": float(len(y[side])) for side in modelling.SPLITS},
            **cv_metrics,
        },
        cv_folds=cv_folds,
        learning_curves=curves,
        inputs=split_inputs(canon, sides, hashes, str(data_cfg["name"]), source),
        rejects=contract.rejects,
        fingerprint=keys.fingerprint_of_rows(canon.columns, hashes),
        input_example=raw.iloc[contract.kept_rows[:5]],
        span=TrainingSpan.of(canon, sides, cfg["split"], seed),
    )


def _cv_folds(cfg: Mapping, sessions: pd.DataFrame, codes: np.ndarray) -> list:
    """The `eval.cv` folds of the development rows (train and validation: the test split stays
    unseen); none when cross-validation is off."""
    settings = cfg.get("eval", {}).get("cv", {})
    if not int(settings.get("folds", 0)):
        return []
    seed = int(cfg["runtime"]["seed"])
    return cv.make_folds(
        sessions, codes, int(settings["folds"]), int(settings["repeats"]), settings["by"], seed
    )


def _cross_validated(cfg, dev, folds, spec, stores) -> tuple[dict, list[dict]]:
    """The recipe cross-validated over `folds` of the development rows `dev` (sessions, codes)."""
    if not folds:
        return {}, []
    make = lambda: make_featurizer(spec, cfg["features"], stores)  # noqa: E731
    return cross_validate(cfg, *dev, folds, make, spec)


def _contract_and_split(raw: pd.DataFrame, spec: DatasetSpec, cfg: Mapping, source: str, seed: int):
    """The session contract of the training table, and each kept row's split side."""
    contract = to_contract(raw, spec, source=source, with_label=True)
    if len(contract.sessions) == 0:
        raise ValueError(
            f"{source}: no valid sessions left after validation ({len(contract.rejects)} rejected)"
        )
    split = modelling.split_sessions(contract.sessions, **cfg["split"], seed=seed)
    check_splits(split.value_counts().to_dict(), source)
    return contract, split


# -- score ---------------------------------------------------------------------------------------


@dataclass
class Buckets:
    """An input routed to bucket files, every journey whole in one of them."""

    files: list[Path]
    rows_in: int
    fingerprint: str
    absent: list[str]


def score_file(
    model: IntentModel,
    input_path: str | Path,
    out_dir: str | Path,
    chunk_rows: int = 250_000,
    model_info: Mapping | None = None,
    progress: bool | None = None,
    explain: int = 0,
    max_rejected_share: float = 1.0,
) -> dict:
    """Score every session of `input_path` into `out_dir`; returns the summary (counts, timings).
    `explain` = k adds each session's top-k reasons (`core.explain`) to its predictions. A run
    rejecting more than `max_rejected_share` of its rows fails and writes nothing."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive number, got {chunk_rows}")
    explain = check_explain(explain)
    start = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    info = dict(model_info or {})
    with atomic_path(out_dir, owner="score") as work:
        work.mkdir(parents=True)
        buckets = route_to_buckets(model.spec, input_path, work / "_buckets", chunk_rows)
        progress = sys.stderr.isatty() if progress is None else progress
        counts = score_buckets(model, buckets, work, str(input_path), info, progress, explain)
        check_rejected_share(counts, max_rejected_share, work / "rejects.parquet", str(input_path))
        summary = score_summary(
            str(input_path),
            str(out_dir),
            counts,
            info,
            engine="local",
            input_fingerprint=buckets.fingerprint,
            missing_columns=buckets.absent,
            explain=explain,
            buckets=len(buckets.files),
            seconds=round(time.perf_counter() - start, 3),
        )
        (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def route_to_buckets(spec: DatasetSpec, input_path: Path, folder: Path, chunk_rows: int) -> Buckets:
    """Pass 1: every row to a bucket file by its journey id, numbered by its input position
    (`ROW`), with about `chunk_rows` rows per bucket; the input's fingerprint on the way."""
    n_buckets = max(1, math.ceil((count_rows(input_path) or chunk_rows) / chunk_rows))
    journey_col = spec.columns.get("journey_id")
    folder.mkdir()
    writers: dict[int, ParquetAppender] = {}
    fingerprint, rows_in, absent = InputFingerprint(), 0, None
    try:
        for batch in iter_batches(input_path, chunk_rows):
            if absent is None:
                absent = report_absent_columns(spec, batch.schema.names, str(input_path))
            fingerprint.add(batch)
            numbers = np.arange(rows_in, rows_in + batch.num_rows, dtype=np.int64)
            rows_in += batch.num_rows
            batch = batch.append_column(ROW, pa.array(numbers))
            key = pd.Series(numbers).astype(str)
            if journey_col and journey_col in batch.schema.names:
                given = batch.column(journey_col).to_pandas().astype(object)
                key = given.where(given.notna(), key)
            bucket = bucket_of(key, n_buckets)
            for b in np.unique(bucket):
                if b not in writers:
                    writers[b] = ParquetAppender(folder / f"bucket-{b:05d}.parquet")
                writers[b].write(pa.Table.from_batches([batch.filter(pa.array(bucket == b))]))
    finally:
        for writer in writers.values():
            writer.close()
    if rows_in == 0:
        raise ContractError(f"{input_path}: holds no sessions")
    files = sorted(folder.glob("bucket-*.parquet"))
    return Buckets(files, rows_in, fingerprint.hexdigest(), absent or [])


def score_buckets(
    model: IntentModel,
    buckets: Buckets,
    work: Path,
    source: str,
    info: Mapping,
    progress: bool,
    explain: int = 0,
) -> dict[str, int]:
    """Pass 2: score bucket by bucket into `work` (predictions parts, journeys, rejects); the
    bucket files are removed as they are done. Returns the row and journey counts."""
    (work / "predictions").mkdir()
    counts = {"rows_in": buckets.rows_in, "rows_scored": 0, "rows_rejected": 0, "journeys": 0}
    bar = tqdm(total=buckets.rows_in, desc="score", unit="rows", disable=not progress)
    # journey summaries are appended bucket by bucket: holding them all would grow with input
    with (
        ParquetAppender(work / "journeys.parquet") as journeys,
        ParquetAppender(work / "rejects.parquet") as rejects,
    ):
        for i, bucket in enumerate(buckets.files):
            chunk = score_chunk(model, pd.read_parquet(bucket), source, info, explain)
            chunk.scored.to_parquet(work / "predictions" / part_name(i), index=False)
            if len(chunk.journeys):
                journeys.write(chunk.journeys)
            if len(chunk.rejects):
                rejects.write(chunk.rejects)
            counts["rows_scored"] += len(chunk.scored)
            counts["rows_rejected"] += len(chunk.rejects)
            counts["journeys"] += len(chunk.journeys)
            bar.update(chunk.rows)
            if not progress:
                done = counts["rows_scored"] + counts["rows_rejected"]
                log.info(
                    "bucket %d/%d scored: %d rows so far of %d",
                    i + 1,
                    len(buckets.files),
                    done,
                    buckets.rows_in,
                )
            bucket.unlink()
    bar.close()
    (work / "_buckets").rmdir()
    if not journeys.opened:
        empty = journey_summary(pd.DataFrame(), list(model.classes))
        empty.assign(**{k: None if v is None else str(v) for k, v in info.items()}).to_parquet(
            work / "journeys.parquet", index=False
        )
    return counts
