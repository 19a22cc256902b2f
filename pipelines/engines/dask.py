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

from pipelines.core.contract import REJECT_REASON, SOURCE_ROW
from pipelines.io.outputs import atomic_path, write_parquet
from pipelines.io.readers import input_files

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

    from pipelines.stages.score import load_scorer

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
    from pipelines.stages.score import journey_summary

    part = int(partition_info["number"]) if partition_info else 0
    model, info = _worker_model(model_uri, tracking_uri, threads)
    spec = model.spec
    journey_col, started_col = spec.columns.get("journey_id"), spec.columns.get("started_at")
    frame = frame.reset_index(drop=True)
    rows = frame.pop(ROW).to_numpy()
    out = model.predict(frame, source=source, row_numbers=rows)
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


def read_numbered(path: str | Path):
    """`path` (parquet file or folder, or CSV) as a `dask.dataframe` with its rows numbered in
    input order (column `__row`), and the row count."""
    import dask.dataframe as dd

    files = [str(f) for f in input_files(Path(path))]
    if all(f.endswith(".csv") for f in files):
        ddf = dd.read_csv(files, blocksize="64MB", dtype=csv_dtypes(files))
    elif any(f.endswith(".csv") for f in files):
        raise ValueError(f"{path}: mixes .csv and .parquet files; keep one format per dataset")
    else:
        ddf = dd.read_parquet(files)
    return with_row_numbers(ddf)


def csv_dtypes(files: list[str], chunk_rows: int = 1_000_000) -> dict[str, str]:
    """The type pandas gives each column when it reads the CSV files whole, found in one
    streaming pass. Dask infers types from the first block alone, and a later block that differs
    (a missing value in a column of integers, text in a mostly numeric one) would fail the read;
    every column as text would refuse numbers at the session contract."""
    kinds: dict[str, set[str]] = {}
    for f in files:
        for chunk in pd.read_csv(f, chunksize=chunk_rows):
            for col in chunk.columns:
                kinds.setdefault(col, set()).update(_csv_kinds(chunk[col]))
    return {col: _csv_dtype(found) for col, found in kinds.items()}


def _csv_kinds(values: pd.Series) -> set[str]:
    """What a chunk's column holds: its values' kind, and "missing" when some are missing."""
    found = {"missing"} if values.isna().any() else set()
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "empty":
        return found
    if kind == "boolean":
        return found | {"bool"}
    if kind == "integer":
        return found | {"int"}
    if kind in ("floating", "mixed-integer-float"):
        return found | {"float"}
    return found | {"text"}


def _csv_dtype(kinds: set[str]) -> str:
    """The type of a column whose chunks held `kinds`."""
    values = kinds - {"missing"}
    if "text" in values:
        return "str"
    if "bool" in values:
        # true/false with missing values or numbers: pandas keeps the values as objects
        return "bool" if kinds == {"bool"} else "object"
    if values == {"int"} and "missing" not in kinds:
        return "int64"
    return "float64"


def journeys_whole(ddf, journey_col: str | None, partitions: int):
    """`ddf` in `partitions` partitions with every journey whole in one of them, whatever the
    input order (rows without a journey column are their own journeys)."""
    if journey_col and journey_col in ddf.columns:
        return ddf.shuffle(on=journey_col, npartitions=partitions)
    return ddf.repartition(npartitions=partitions)


def n_workers(client) -> int:
    return len(client.scheduler_info()["workers"])


def with_row_numbers(ddf):
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
    from pipelines.stages.score import (
        absent_columns,
        check_accounting,
        input_fingerprint,
        journey_summary,
        load_scorer,
    )

    start = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    # the model's column mapping decides the journey column; load it here once for that
    model, info = load_scorer(model_uri, threads)
    ddf, rows_in = read_numbered(input_path)
    absent = absent_columns(model.spec, [c for c in ddf.columns if c != ROW], str(input_path))
    # one streaming pass on the client: the same fingerprint local scoring records
    fingerprint = input_fingerprint(input_path)
    n_parts = int(partitions or max(ddf.npartitions, n_workers(client)))
    # a journey lands whole in one partition, whatever the input order
    ddf = journeys_whole(ddf, model.spec.columns.get("journey_id"), n_parts)

    with atomic_path(out_dir, owner="score") as work:
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
        check_accounting(rows_in, scored, rejected)
        summary = {
            "input": str(input_path),
            "output": str(out_dir),
            "engine": "dask",
            "rows_in": rows_in,
            "rows_scored": scored,
            "rows_rejected": rejected,
            "journeys": int(counts["journeys"].sum()),
            "input_fingerprint": fingerprint,
            "missing_columns": absent,
            "missing_columns_count": len(absent),
            "partitions": int(len(counts)),
            "workers": n_workers(client),
            "seconds": round(time.perf_counter() - start, 3),
            **{k: (None if v is None else str(v)) for k, v in info.items()},
        }
        (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


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
    from pipelines.stages.generate import part_name
    from pipelines.core.synthetic import GeneratorParams, generate_chunk

    params = GeneratorParams.from_config(params_cfg)
    df = generate_chunk(params, n_journeys, chunk_journeys, seed, chunk, posterior)
    write_parquet(df, Path(folder) / part_name(chunk))
    return len(df)


def generate_dask(client, gen_cfg: Mapping, params_cfg: Mapping) -> dict:
    """`pipelines.stages.generate.generate` on the cluster behind `client`: one task per chunk.

    Writes the same `<out_dir>/sessions/part-*.parquet` and `<out_dir>/stores.csv` as the local
    generator for the same seed and chunk size, and returns the same summary. The folder appears
    at once, complete, or not at all; a chunk whose worker dies is simulated again elsewhere.
    """
    from pipelines.stages.generate import write_stores
    from pipelines.core.synthetic import GeneratorParams, n_chunks

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
    write_stores(params, out)
    return {"journeys": n_journeys, "sessions": sessions, "parts": parts, "out_dir": str(out)}
