"""The Dask cluster of the `dask` engine, and inputs read onto it numbered in input order with
journeys whole."""

from __future__ import annotations

import time

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from pipelines.core.scoring import ROW
from pipelines.engines.dask_cluster import ClusterError, cluster, journeys_whole, read_numbered


def test_an_unreachable_scheduler_is_a_clear_error():
    start = time.monotonic()
    unreachable = {"scheduler_address": "tcp://127.0.0.1:9", "connect_timeout_s": 2}
    with (
        pytest.raises(ClusterError, match=r"tcp://127.0.0.1:9 cannot be reached within 2 s"),
        cluster(unreachable),
    ):
        pass
    assert time.monotonic() - start < 30


def sessions(first: int, n: int) -> pd.DataFrame:
    """`n` sessions numbered from `first`, three per journey."""
    idx = np.arange(first, first + n)
    return pd.DataFrame(
        {"session_id": [f"s{i}" for i in idx], "journey_id": [f"j{i // 3}" for i in idx]}
    )


def test_rows_are_numbered_in_input_order_across_files(tmp_path):
    folder = tmp_path / "sessions"
    folder.mkdir()
    for k, (first, n) in enumerate([(0, 7), (7, 5), (12, 9)]):
        sessions(first, n).to_csv(folder / f"part-{k}.csv", index=False)
    ddf, n_rows = read_numbered(folder)
    frame = ddf.compute().reset_index(drop=True)
    assert n_rows == len(frame) == 21
    assert frame[ROW].tolist() == list(range(21))
    assert frame["session_id"].tolist() == [f"s{i}" for i in range(21)]


def test_parquet_parts_are_numbered_like_csv_files(tmp_path):
    folder = tmp_path / "sessions"
    folder.mkdir()
    sessions(0, 4).to_parquet(folder / "part-0.parquet")
    sessions(4, 6).to_parquet(folder / "part-1.parquet")
    ddf, n_rows = read_numbered(folder)
    frame = ddf.compute()
    assert n_rows == 10
    assert dict(zip(frame["session_id"], frame[ROW], strict=True)) == {
        f"s{i}": i for i in range(10)
    }


def test_every_journey_lands_whole_in_one_partition_whatever_the_input_order():
    frame = sessions(0, 60).sample(frac=1.0, random_state=4)
    ddf = dd.from_pandas(frame, npartitions=5)
    whole = journeys_whole(ddf, "journey_id", 3)
    assert whole.npartitions == 3
    parts = [whole.get_partition(i).compute() for i in range(3)]
    where = {j: i for i, part in enumerate(parts) for j in part["journey_id"]}
    for i, part in enumerate(parts):
        assert all(where[j] == i for j in part["journey_id"])
    assert sorted(pd.concat(parts)["session_id"]) == sorted(frame["session_id"])


def test_without_a_journey_column_the_rows_are_only_repartitioned():
    frame = sessions(0, 12).drop(columns="journey_id")
    whole = journeys_whole(dd.from_pandas(frame, npartitions=4), None, 2)
    assert whole.npartitions == 2
    assert whole.compute()["session_id"].tolist() == frame["session_id"].tolist()
