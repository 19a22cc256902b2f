"""The Dask engine: scoring gives the same rows and probabilities as local scoring, whatever
happens to the workers; generation writes the local generator's files (training on Dask:
test_dask_train.py)."""

from __future__ import annotations

import json
import os
import sys

import cloudpickle
import mlflow
import numpy as np
import pandas as pd
import pytest
from distributed.diagnostics.plugin import WorkerPlugin

from pipelines.engines.dask import score_dask
from pipelines.engines.dask_cluster import cluster
from pipelines.engines.local import score_file
from pipelines.tracking.registry import load_scorer

PROBS = ["p_know", "p_go", "p_do", "p_buy"]


@pytest.fixture(scope="module")
def champion(registry_store):
    mlflow.set_tracking_uri(registry_store["uri"])
    mlflow.set_registry_uri(registry_store["uri"])
    return "models:/micro_moment_intent@champion"


@pytest.fixture(scope="module")
def local_scores(champion, synthetic_dir, tmp_path_factory):
    model, info = load_scorer(champion, 1)
    out = tmp_path_factory.mktemp("local") / "scores"
    score_file(model, synthetic_dir / "sessions", out, chunk_rows=500, model_info=info)
    return out


def _read(out) -> tuple[pd.DataFrame, pd.DataFrame]:
    pred = pd.read_parquet(out / "predictions").sort_values("input_row").reset_index(drop=True)
    journeys = pd.read_parquet(out / "journeys.parquet")
    return pred, journeys.sort_values("journey_id").reset_index(drop=True)


@pytest.mark.slow
def test_dask_scoring_matches_local_scoring(
    client, champion, registry_store, synthetic_dir, local_scores, tmp_path
):
    out = tmp_path / "scores"
    summary = score_dask(
        client,
        champion,
        synthetic_dir / "sessions",
        out,
        partitions=5,
        tracking_uri=registry_store["uri"],
    )
    pred, journeys = _read(out)
    local_pred, local_journeys = _read(local_scores)
    assert summary["rows_in"] == summary["rows_scored"] + summary["rows_rejected"]
    assert summary["partitions"] == 5 and summary["workers"] == 2
    local_summary = json.loads((local_scores / "summary.json").read_text())
    assert summary["input_fingerprint"] == local_summary["input_fingerprint"]
    assert summary["missing_columns"] == local_summary["missing_columns"] == []
    assert list(pred.columns) == list(local_pred.columns)
    pd.testing.assert_series_equal(pred["session_id"], local_pred["session_id"])
    np.testing.assert_allclose(pred[PROBS], local_pred[PROBS], rtol=0, atol=1e-9)
    assert (pred["intent"] == local_pred["intent"]).all()
    assert pred["session_id"].is_unique
    # a journey never spans two partitions: its summary matches the local one
    pd.testing.assert_frame_equal(journeys, local_journeys, check_exact=False, atol=1e-9)
    assert set(os.listdir(out)) == {
        "predictions",
        "journeys.parquet",
        "summary.json",
        ".micromoment-output",
    }


@pytest.mark.slow
def test_dask_scoring_quarantines_bad_rows(
    client, champion, registry_store, synthetic_dir, tmp_path
):
    sessions = pd.read_parquet(synthetic_dir / "sessions")
    sessions.loc[sessions.index[[3, 40]], "dwell_time_s"] = -5.0
    path = tmp_path / "bad.parquet"
    sessions.to_parquet(path)
    summary = score_dask(
        client, champion, path, tmp_path / "out", partitions=3, tracking_uri=registry_store["uri"]
    )
    assert summary["rows_rejected"] == 2 and summary["rows_in"] == len(sessions)
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert sorted(rejects["source_row"]) == [3, 40]
    assert rejects["reject_reason"].str.contains("dwell_time_s").all()


class _KillOnce(WorkerPlugin):
    """A worker plugin that kills its worker process the first time any worker starts scoring a
    partition (a file marks that it happened), as a node lost mid-job would."""

    name = "kill-once"

    def __init__(self, flag: str):
        self.flag = flag

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        name = key[0] if isinstance(key, tuple) else key
        if finish == "executing" and "score_partition" in str(name):
            try:
                fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(1)


@pytest.mark.slow
def test_a_worker_killed_mid_scoring_loses_and_duplicates_no_row(
    champion, registry_store, synthetic_dir, local_scores, tmp_path
):
    flag = tmp_path / "killed"
    # workers receive the plugin by value: they need not import this test module
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with cluster({"n_workers": 2, "threads_per_worker": 1}) as c:
        c.register_plugin(_KillOnce(str(flag)))
        summary = score_dask(
            c,
            champion,
            synthetic_dir / "sessions",
            tmp_path / "out",
            partitions=6,
            tracking_uri=registry_store["uri"],
        )
    assert flag.exists()  # a worker did die
    pred, _ = _read(tmp_path / "out")
    local_pred, _ = _read(local_scores)
    assert summary["rows_scored"] == len(local_pred) == len(pred)
    assert pred["input_row"].is_unique and pred["session_id"].is_unique
    np.testing.assert_allclose(pred[PROBS], local_pred[PROBS], rtol=0, atol=1e-9)


# -- generation on Dask ------------------------------------------------------------------------


@pytest.mark.slow
def test_dask_generation_writes_the_local_generators_files(generated):
    local, dask = generated["local"], generated["dask"]
    assert generated["dask_summary"] == {**generated["local_summary"], "out_dir": str(dask)}
    names = sorted(p.name for p in (local / "sessions").iterdir())
    assert names == [
        ".micromoment-output",  # the mark that lets the next `generate` replace this folder
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert sorted(p.name for p in (dask / "sessions").iterdir()) == names
    for name in names:  # byte for byte: same sessions, same schema, same file metadata
        assert (dask / "sessions" / name).read_bytes() == (local / "sessions" / name).read_bytes()
    assert (dask / "stores.csv").read_bytes() == (local / "stores.csv").read_bytes()
    sessions = pd.read_parquet(dask / "sessions")
    assert sessions["session_id"].is_unique and sessions["journey_id"].nunique() == 2500
