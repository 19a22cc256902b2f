"""A Dask cluster for the `dask` engine, and inputs read onto it with every journey whole in one
partition (scoring and training on Dask both start this way)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config.schema import EngineSchema
from pipelines.core.scoring import ROW
from pipelines.io.readers import csv_dtypes, input_files


class ClusterError(RuntimeError):
    """The Dask cluster cannot be reached or started."""


@contextlib.contextmanager
def cluster(engine: Mapping) -> Iterator:
    """A `distributed.Client` for the configured cluster, closed on the way out."""
    from dask.distributed import Client, LocalCluster

    settings = EngineSchema(**engine)  # what the config leaves out, the schema's defaults
    address = settings.scheduler_address
    timeout = float(settings.connect_timeout_s)
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
            n_workers=int(settings.n_workers),
            threads_per_worker=int(settings.threads_per_worker),
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit=settings.memory_limit,
        ) as local,
        Client(local) as client,
    ):
        yield client


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
