"""`engine=dask`: scoring and generation on a Dask cluster, with the same outputs as locally.

- `cluster(engine)` connects to an existing scheduler by address (a clear error names the address
  when it cannot be reached) or starts a `LocalCluster` of worker processes on 127.0.0.1.
- `read_numbered` and `journeys_whole` read an input as a `dask.dataframe`, number its rows in
  input order and shuffle it so every journey sits whole in one partition (scoring and training
  on Dask both start this way; training itself is in `pipelines.engines.dask_train`).
- `score_dask` reads the input as a `dask.dataframe`, numbers its rows as the local scorer does,
  shuffles by journey id so a journey never spans two partitions, and scores each partition with
  the model loaded once per worker process. Each partition task writes its own part files under a
  name fixed by its partition number, through a temporary name and a rename: a task that Dask runs
  again after losing a worker rewrites the same parts, so no row is lost or written twice. The
  output folder has the local scorer's layout (`predictions/`, `journeys.parquet`,
  `rejects.parquet`, `summary.json`) and appears atomically.

- `generate_dask` simulates the generator's chunks as parallel tasks, each with the random stream
  the local generator gives that chunk, writing its own part file through a temporary name and a
  rename: the output is the local generator's, file for file, and a retried task rewrites the same
  part.

Workers must see the input and output paths (one machine, or a shared file system) and reach the
tracking server when the model is given by a `models:/` URI.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from pipelines.core.scorer import check_explain
from pipelines.core.scoring import (
    ROW,
    ScoreOptions,
    check_rejected_share,
    journey_summary,
    report_absent_columns,
    score_chunk,
    score_summary,
)
from pipelines.core.synthetic import GeneratorParams, generate_chunk, n_chunks
from pipelines.core.training import TrainResult
from pipelines.engines.dask_cluster import (
    cluster,
    journeys_whole,
    n_workers,
    read_numbered,
)
from pipelines.engines.dask_train import train_dask
from pipelines.io.outputs import atomic_path, concat_parts, part_name, write_parquet, write_stores
from pipelines.io.readers import input_fingerprint
from pipelines.tracking.registry import load_scorer, needs_tracking


@functools.lru_cache(maxsize=4)
def _worker_model(model_uri: str, tracking_uri: str | None, threads: int, compiled: bool):
    """The scorer, loaded (and compiled) once per worker process and model."""

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    return load_scorer(model_uri, threads, compiled=compiled)


COUNTS_META = pd.DataFrame(
    {
        **{
            c: pd.Series(dtype=np.int64) for c in ("part", "rows", "scored", "rejected", "journeys")
        },
        "predictor": pd.Series(dtype=object),
    }
)


def _score_partition(
    frame: pd.DataFrame,
    work: str,
    model_uri: str,
    tracking_uri: str | None,
    threads: int,
    source: str,
    explain: int = 0,
    compiled: bool = False,
    partition_info: dict | None = None,
) -> pd.DataFrame:
    """Score one partition into its part files (`core.scoring.score_chunk`, as the local engine
    scores a bucket); returns its counts (one row)."""
    part = int(partition_info["number"]) if partition_info else 0
    model, info = _worker_model(model_uri, tracking_uri, threads, compiled)
    chunk = score_chunk(model, frame, source, info, explain)
    root, name = Path(work), part_name(part)
    write_parquet(chunk.scored, root / "predictions" / name)
    write_parquet(chunk.journeys, root / "_journeys" / name)
    if len(chunk.rejects):
        write_parquet(chunk.rejects, root / "_rejects" / name)
    return pd.DataFrame(
        {
            "part": [part],
            "rows": [chunk.rows],
            "scored": [len(chunk.scored)],
            "rejected": [len(chunk.rejects)],
            "journeys": [len(chunk.journeys)],
            "predictor": [model.predictor],
        }
    )


def score_dask(
    client,
    model_uri: str,
    input_path: str | Path,
    out_dir: str | Path,
    partitions: int | None = None,
    threads: int = 1,
    tracking_uri: str | None = None,
    explain: int = 0,
    compiled: bool = False,
    compile_min_rows: int = 0,
    max_rejected_share: float = 1.0,
) -> dict:
    """Score `input_path` into `out_dir` on the cluster behind `client`; returns the summary.
    `explain`: each session's top-k reasons; `compiled`: workers use compiled trees if they can."""
    explain = check_explain(explain)
    start = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    # the model's column mapping decides the journey column; load it here once for that
    model, info = load_scorer(model_uri, threads)
    ddf, rows_in = read_numbered(input_path)
    # the workers compile when this input is worth it (or the model is compiled already)
    compiled = compiled and model.worth_compiling(rows_in, compile_min_rows)
    absent = report_absent_columns(
        model.spec, [c for c in ddf.columns if c != ROW], str(input_path)
    )
    # one streaming pass on the client: the same fingerprint local scoring records
    fingerprint = input_fingerprint(input_path)
    n_parts = int(partitions or max(ddf.npartitions, n_workers(client)))
    # a journey lands whole in one partition, whatever the input order
    ddf = journeys_whole(ddf, model.spec.columns.get("journey_id"), n_parts)
    with atomic_path(out_dir, owner="score") as work:
        work.mkdir(parents=True)
        for sub in ("predictions", "_journeys", "_rejects"):
            (work / sub).mkdir()
        args = (str(work), model_uri, tracking_uri, threads, str(input_path), explain, compiled)
        scored_parts = ddf.map_partitions(
            _score_partition, *args, meta=COUNTS_META, enforce_metadata=False
        )
        # a partition whose worker dies is run again elsewhere and rewrites the same part files
        counts = client.compute(scored_parts, retries=2).result()
        classes = list(model.classes)
        totals = _gathered(work, classes, counts, rows_in, max_rejected_share, str(input_path))
        # what predicted is what the workers used, whatever this process loaded
        info = {**info, "predictor": ",".join(sorted(set(counts["predictor"].astype(str))))}
        summary = score_summary(
            str(input_path),
            str(out_dir),
            totals,
            info,
            engine="dask",
            input_fingerprint=fingerprint,
            missing_columns=absent,
            explain=explain,
            partitions=int(len(counts)),
            workers=n_workers(client),
            seconds=round(time.perf_counter() - start, 3),
        )
        (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _gathered(
    work: Path,
    classes: list[str],
    counts: pd.DataFrame,
    rows_in: int,
    max_rejected_share: float,
    source: str,
) -> dict[str, int]:
    """The partitions' parts gathered in `work` and the run's totals; a run rejecting more than
    `max_rejected_share` of its rows fails there (`check_rejected_share`), before it appears."""
    _gather_parts(work, classes)
    totals = _totals(counts, rows_in)
    check_rejected_share(totals, max_rejected_share, work / "rejects.parquet", source)
    return totals


def _totals(counts: pd.DataFrame, rows_in: int) -> dict[str, int]:
    """The row and journey counts of a scoring run from its partitions' counts."""
    return {
        "rows_in": rows_in,
        "rows_scored": int(counts["scored"].sum()),
        "rows_rejected": int(counts["rejected"].sum()),
        "journeys": int(counts["journeys"].sum()),
    }


def _gather_parts(work: Path, classes: list[str]) -> None:
    """The partitions' journey and reject parts as one `journeys.parquet` and `rejects.parquet`."""
    journeys = sorted((work / "_journeys").glob("part-*.parquet"))
    if not concat_parts(journeys, work / "journeys.parquet"):
        journey_summary(pd.DataFrame(), classes).to_parquet(work / "journeys.parquet", index=False)
    concat_parts(sorted((work / "_rejects").glob("part-*.parquet")), work / "rejects.parquet")
    for sub in ("_journeys", "_rejects"):
        for p in (work / sub).iterdir():
            p.unlink()
        (work / sub).rmdir()


def _generate_part(
    chunk: int,
    params_cfg: Mapping,
    n_journeys: int,
    chunk_journeys: int,
    seed: int,
    posterior: bool,
    folder: str,
) -> int:
    """Simulate chunk `chunk` into `folder/part-<chunk>.parquet` (temporary name, then a rename:
    a retried task rewrites the same file); returns its session count."""
    params = GeneratorParams.from_config(params_cfg)
    df = generate_chunk(params, n_journeys, chunk_journeys, seed, chunk, posterior)
    write_parquet(df, Path(folder) / part_name(chunk))
    return len(df)


def generate_dask(client, gen_cfg: Mapping, params_cfg: Mapping) -> dict:
    """The local engine's `generate` on the cluster behind `client`: one task per chunk.

    Writes the same `<out_dir>/sessions/part-*.parquet` and `<out_dir>/stores.csv` as the local
    generator for the same seed and chunk size, and returns the same summary. The folder appears
    at once, complete, or not at all; a chunk whose worker dies is simulated again elsewhere.
    """
    params = GeneratorParams.from_config(params_cfg)  # refuse a bad config before any task runs
    out = Path(gen_cfg["out_dir"])
    n_journeys, chunk = int(gen_cfg["n_journeys"]), int(gen_cfg["chunk_journeys"])
    parts = n_chunks(n_journeys, chunk)
    with atomic_path(out / "sessions", owner="generate") as work:
        work.mkdir(parents=True)
        futures = client.map(
            _generate_part,
            range(parts),
            params_cfg=dict(params_cfg),
            n_journeys=n_journeys,
            chunk_journeys=chunk,
            seed=int(gen_cfg["seed"]),
            posterior=bool(gen_cfg["posterior"]),
            folder=str(work),
            retries=2,
        )
        sessions = int(sum(client.gather(futures)))
    write_stores(params.stores_frame(), out)
    return {"journeys": n_journeys, "sessions": sessions, "parts": parts, "out_dir": str(out)}


class DaskEngine:
    """The `Engine` of a Dask cluster (see `pipelines.engines.Engine`): each call runs on the
    cluster `cfg` describes (an existing scheduler, or a `LocalCluster` started for the call)."""

    name = "dask"

    def __init__(self, cfg: Mapping):
        self.cfg = cfg

    def generate(self, gen_cfg: Mapping, params_cfg: Mapping) -> dict:
        with cluster(self.cfg) as client:
            return generate_dask(client, gen_cfg, params_cfg)

    def train(
        self, cfg: Mapping, sessions: pd.DataFrame | None = None, callbacks: list | None = None
    ) -> TrainResult:
        if callbacks:
            raise ValueError(
                "engine=dask trains with lightgbm.dask, which takes no LightGBM callbacks "
                "(hyperparameter search prunes with them): use engine=local"
            )
        return train_dask(cfg, sessions=sessions)

    def score(self, model_uri: str, input_path: str, out_dir: str, options: ScoreOptions) -> dict:
        """Score on the cluster (`options.chunk_rows` is the local engine's: partitions come
        from `engine.partitions`). Workers reach the tracking server this process uses."""

        tracking_uri = mlflow.get_tracking_uri() if needs_tracking(model_uri) else None
        with cluster(self.cfg) as client:
            return score_dask(
                client,
                model_uri,
                input_path,
                out_dir,
                partitions=self.cfg["partitions"],
                threads=options.threads,
                tracking_uri=tracking_uri,
                explain=options.explain,
                compiled=options.compiled,
                compile_min_rows=options.compile_min_rows,
                max_rejected_share=options.max_rejected_share,
            )
