"""`engine=dask`: batch scoring on a Dask cluster, with the same outputs as the local scorer.

- `cluster(engine)` connects to an existing scheduler by address (a clear error names the address
  when it cannot be reached) or starts a `LocalCluster` of worker processes on 127.0.0.1.
- `score_dask` reads the input as a `dask.dataframe`, numbers its rows as the local scorer does,
  shuffles by journey id so a journey never spans two partitions, and scores each partition with
  the model loaded once per worker process. Each partition task writes its own part files under a
  name fixed by its partition number, through a temporary name and a rename: a task that Dask runs
  again after losing a worker rewrites the same parts, so no row is lost or written twice. The
  output folder has the local scorer's layout (`predictions/`, `journeys.parquet`,
  `rejects.parquet`, `summary.json`) and appears atomically.

Workers must see the input and output paths (one machine, or a shared file system) and reach the
tracking server when the model is given by a `models:/` URI.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contract import REJECT_REASON, SOURCE_ROW
from pipelines.io import _files, atomic_path

ROW = "__row"


class ClusterError(RuntimeError):
    """The Dask cluster cannot be reached or started."""


@contextlib.contextmanager
def cluster(engine: Mapping) -> Iterator:
    """A `distributed.Client` for the configured cluster, closed on the way out."""
    from dask.distributed import Client, LocalCluster

    address = engine.get("scheduler_address")
    timeout = float(engine.get("connect_timeout_s") or 10)
    if address:
        try:
            client = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise ClusterError(
                f"Dask scheduler {address} cannot be reached within {timeout:g} s "
                f"(engine.scheduler_address): {type(err).__name__}: {err}"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    with (
        LocalCluster(
            n_workers=int(engine.get("n_workers") or 2),
            threads_per_worker=int(engine.get("threads_per_worker") or 1),
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit=engine.get("memory_limit") or "auto",
        ) as local,
        Client(local) as client,
    ):
        yield client


@functools.lru_cache(maxsize=4)
def _worker_model(model_uri: str, tracking_uri: str | None, threads: int):
    """The scorer, loaded once per worker process and model."""
    import mlflow

    from pipelines.score import load_scorer

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    return load_scorer(model_uri, threads)


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


COUNTS_META = pd.DataFrame(
    {c: pd.Series(dtype=np.int64) for c in ("part", "rows", "scored", "rejected", "journeys")}
)


def _score_partition(
    frame: pd.DataFrame,
    work: str,
    model_uri: str,
    tracking_uri: str | None,
    threads: int,
    source: str,
    partition_info: dict | None = None,
) -> pd.DataFrame:
    """Score one partition into its part files; returns its counts (one row)."""
    from pipelines.score import journey_summary

    part = int(partition_info["number"]) if partition_info else 0
    model, info = _worker_model(model_uri, tracking_uri, threads)
    spec = model.spec
    journey_col, started_col = spec.columns.get("journey_id"), spec.columns.get("started_at")
    frame = frame.reset_index(drop=True)
    rows = frame.pop(ROW).to_numpy()
    out = model.predict(frame, source=source)
    bad = out[REJECT_REASON].notna().to_numpy()
    scored = out[~bad].drop(columns=[REJECT_REASON]).reset_index(drop=True)
    scored.insert(
        1,
        "journey_id",
        frame[journey_col].astype(str).to_numpy()[~bad]
        if journey_col and journey_col in frame
        else scored["session_id"].to_numpy(),
    )
    started = (
        pd.to_datetime(frame[started_col], utc=True, errors="coerce", format="ISO8601").array[~bad]
        if started_col and started_col in frame
        else pd.NaT
    )
    scored.insert(2, "started_at", started)
    for key, value in info.items():
        scored[key] = None if value is None else str(value)
    scored["input_row"] = rows[~bad]
    root = Path(work)
    name = f"part-{part:05d}.parquet"
    _write_atomic(pa.Table.from_pandas(scored, preserve_index=False), root / "predictions" / name)
    journeys = journey_summary(scored, list(model.classes))
    for key, value in info.items():
        journeys[key] = None if value is None else str(value)
    _write_atomic(pa.Table.from_pandas(journeys, preserve_index=False), root / "_journeys" / name)
    if bad.any():
        rejected = frame[bad].copy()
        rejected[REJECT_REASON] = out.loc[bad, REJECT_REASON].to_numpy()
        rejected[SOURCE_ROW] = rows[bad]
        rejected = rejected.astype(
            {c: "string" for c in rejected.columns if rejected[c].dtype == object}
        )
        _write_atomic(
            pa.Table.from_pandas(rejected, preserve_index=False), root / "_rejects" / name
        )
    return pd.DataFrame(
        {
            "part": [part],
            "rows": [len(frame)],
            "scored": [int((~bad).sum())],
            "rejected": [int(bad.sum())],
            "journeys": [len(journeys)],
        }
    )


def _concat_parts(parts: list[Path], target: Path) -> None:
    """Stream part files into one parquet file (bounded memory)."""
    writer = None
    try:
        for p in parts:
            table = pq.read_table(p)
            if writer is None:
                writer = pq.ParquetWriter(target, table.schema)
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()


def _with_row_numbers(ddf):
    """Number the rows 0..n-1 in input order, as the local scorer numbers them."""
    lengths = ddf.map_partitions(len).compute()
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    def number(frame: pd.DataFrame, partition_info=None) -> pd.DataFrame:
        start = int(offsets[partition_info["number"]]) if partition_info else 0
        return frame.assign(**{ROW: np.arange(start, start + len(frame), dtype=np.int64)})

    meta = ddf._meta.assign(**{ROW: np.array([], dtype=np.int64)})
    return ddf.map_partitions(number, meta=meta), int(lengths.sum())


def score_dask(
    client,
    model_uri: str,
    input_path: str | Path,
    out_dir: str | Path,
    partitions: int | None = None,
    threads: int = 1,
    tracking_uri: str | None = None,
) -> dict:
    """Score `input_path` into `out_dir` on the cluster behind `client`; returns the summary."""
    import dask.dataframe as dd

    from pipelines.score import journey_summary, load_scorer

    start = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    files = [str(f) for f in _files(input_path)]
    # the model's column mapping decides the journey column; load it here once for that
    model, info = load_scorer(model_uri, threads)
    journey_col = model.spec.columns.get("journey_id")
    if all(f.endswith(".csv") for f in files):
        ddf = dd.read_csv(files, blocksize="64MB", dtype="object")
    else:
        ddf = dd.read_parquet(files)
    ddf, rows_in = _with_row_numbers(ddf)
    n_parts = int(partitions or max(ddf.npartitions, len(client.scheduler_info()["workers"])))
    if journey_col and journey_col in ddf.columns:
        # a journey lands whole in one partition, whatever the input order
        ddf = ddf.shuffle(on=journey_col, npartitions=n_parts)
    else:
        ddf = ddf.repartition(npartitions=n_parts)

    with atomic_path(out_dir) as work:
        work.mkdir(parents=True)
        for sub in ("predictions", "_journeys", "_rejects"):
            (work / sub).mkdir()
        scored_parts = ddf.map_partitions(
            _score_partition,
            str(work),
            model_uri,
            tracking_uri,
            threads,
            str(input_path),
            meta=COUNTS_META,
            enforce_metadata=False,
        )
        # a partition whose worker dies is run again elsewhere and rewrites the same part files
        counts = client.compute(scored_parts, retries=2).result()
        _concat_parts(
            sorted((work / "_journeys").glob("part-*.parquet")), work / "journeys.parquet"
        )
        if not (work / "journeys.parquet").exists():
            journey_summary(pd.DataFrame(), list(model.classes)).to_parquet(
                work / "journeys.parquet", index=False
            )
        rejects = sorted((work / "_rejects").glob("part-*.parquet"))
        if rejects:
            _concat_parts(rejects, work / "rejects.parquet")
        for sub in ("_journeys", "_rejects"):
            for p in (work / sub).iterdir():
                p.unlink()
            (work / sub).rmdir()
        scored, rejected = int(counts["scored"].sum()), int(counts["rejected"].sum())
        if rows_in != scored + rejected:
            raise RuntimeError(
                f"row accounting broke: {rows_in} in, {scored} scored, {rejected} rejected"
            )
        summary = {
            "input": str(input_path),
            "output": str(out_dir),
            "engine": "dask",
            "rows_in": rows_in,
            "rows_scored": scored,
            "rows_rejected": rejected,
            "journeys": int(counts["journeys"].sum()),
            "partitions": int(len(counts)),
            "workers": len(client.scheduler_info()["workers"]),
            "seconds": round(time.perf_counter() - start, 3),
            **{k: (None if v is None else str(v)) for k, v in info.items()},
        }
        (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
