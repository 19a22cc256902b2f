"""Batch scoring: chunked like unchunked, journeys whole, rows accounted for, outputs atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines.engines.local import score_file
from pipelines.tracking.registry import load_scorer

NAME = "micro_moment_intent"


@pytest.fixture(scope="module")
def champion(registry_store):
    mlflow.set_tracking_uri(registry_store["uri"])
    mlflow.set_registry_uri(registry_store["uri"])
    return load_scorer(f"models:/{NAME}@champion", threads=1)


def probs(frame: pd.DataFrame) -> pd.DataFrame:
    cols = ["p_know", "p_go", "p_do", "p_buy"]
    return frame.set_index("session_id")[cols].sort_index()


def test_chunked_scoring_matches_scoring_everything_at_once(champion, small_sessions, tmp_path):
    model, info = champion
    raw = small_sessions.drop(columns=["intent"])
    raw.to_parquet(tmp_path / "in.parquet")
    summary = score_file(
        model, tmp_path / "in.parquet", tmp_path / "out", chunk_rows=97, model_info=info
    )
    assert summary["buckets"] > 5
    got = pd.read_parquet(tmp_path / "out" / "predictions")
    expected = model.predict(raw)
    pd.testing.assert_frame_equal(probs(got), probs(expected), rtol=0, atol=1e-12)
    assert (got["model_version"] == "2").all()
    assert sorted(got["input_row"]) == list(range(len(raw)))


def test_input_order_does_not_change_scores(champion, small_sessions, tmp_path):
    model, _ = champion
    raw = small_sessions.drop(columns=["intent"])
    raw.sample(frac=1.0, random_state=9).to_parquet(tmp_path / "shuffled.parquet")
    raw.to_parquet(tmp_path / "sorted.parquet")
    score_file(model, tmp_path / "shuffled.parquet", tmp_path / "a", chunk_rows=50)
    score_file(model, tmp_path / "sorted.parquet", tmp_path / "b", chunk_rows=50)
    a = pd.read_parquet(tmp_path / "a" / "predictions")
    b = pd.read_parquet(tmp_path / "b" / "predictions")
    pd.testing.assert_frame_equal(probs(a), probs(b), rtol=0, atol=1e-12)


def test_journey_table_has_latest_intent_and_sequence(champion, small_sessions, tmp_path):
    model, _ = champion
    raw = small_sessions.drop(columns=["intent"])
    raw.to_parquet(tmp_path / "in.parquet")
    summary = score_file(model, tmp_path / "in.parquet", tmp_path / "out", chunk_rows=120)
    journeys = pd.read_parquet(tmp_path / "out" / "journeys.parquet")
    preds = pd.read_parquet(tmp_path / "out" / "predictions")
    assert summary["journeys"] == raw["journey_id"].nunique() == len(journeys)
    assert journeys["journey_id"].is_unique
    one = journeys.loc[journeys["sessions"].idxmax()]
    sessions = preds[preds["journey_id"] == one["journey_id"]].sort_values("started_at")
    assert one["intent_sequence"] == ">".join(sessions["intent"])
    assert one["latest_session_id"] == sessions["session_id"].iloc[-1]
    assert one["intent"] == sessions["intent"].iloc[-1]


def test_rows_in_equal_rows_scored_plus_rejected(champion, small_sessions, tmp_path):
    model, _ = champion
    raw = small_sessions.drop(columns=["intent"]).copy()
    raw.loc[[3, 40], "dwell_time_s"] = -1.0
    raw.loc[77, "latitude"] = 200.0
    raw.to_csv(tmp_path / "in.csv", index=False)
    summary = score_file(model, tmp_path / "in.csv", tmp_path / "out", chunk_rows=100)
    assert summary["rows_in"] == len(raw)
    assert summary["rows_rejected"] == 3
    assert summary["rows_scored"] + summary["rows_rejected"] == summary["rows_in"]
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert sorted(rejects["source_row"]) == [3, 40, 77]
    assert rejects.set_index("source_row").loc[77, "reject_reason"].startswith("latitude")
    assert len(pd.read_parquet(tmp_path / "out" / "predictions")) == len(raw) - 3


def test_unknown_device_and_missing_location_are_scored(champion, small_sessions, tmp_path):
    model, _ = champion
    raw = small_sessions.drop(columns=["intent"]).head(30).copy()
    raw["device"] = "smart_tv"
    raw[["latitude", "longitude"]] = np.nan
    raw.to_parquet(tmp_path / "in.parquet")
    summary = score_file(model, tmp_path / "in.parquet", tmp_path / "out")
    assert summary["rows_scored"] == 30


def test_a_rerun_replaces_the_output(champion, small_sessions, tmp_path):
    model, _ = champion
    small_sessions.head(50).drop(columns=["intent"]).to_parquet(tmp_path / "a.parquet")
    small_sessions.head(80).drop(columns=["intent"]).to_parquet(tmp_path / "b.parquet")
    score_file(model, tmp_path / "a.parquet", tmp_path / "out")
    score_file(model, tmp_path / "b.parquet", tmp_path / "out")
    assert len(pd.read_parquet(tmp_path / "out" / "predictions")) == 80
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


KILL_SCRIPT = """
import sys, time
import mlflow
from pipelines.tracking.registry import load_scorer
from pipelines.engines.local import score_file
from pipelines.core.scorer import IntentModel

mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
model, info = load_scorer("models:/micro_moment_intent@champion", 1)
calls = []
original = IntentModel.predict
def slow_predict(self, *a, **k):
    calls.append(1)
    if len(calls) == 2:
        open(sys.argv[4], "w").write("half-way")
        time.sleep(120)
    return original(self, *a, **k)
IntentModel.predict = slow_predict
score_file(model, sys.argv[2], sys.argv[3], chunk_rows=100)
"""


def test_killed_scoring_run_leaves_nothing_half_written(
    registry_store, champion, small_sessions, tmp_path
):
    small_sessions.drop(columns=["intent"]).to_parquet(tmp_path / "in.parquet")
    marker = tmp_path / "half-way"
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILL_SCRIPT,
            registry_store["uri"],
            str(tmp_path / "in.parquet"),
            str(out),
            str(marker),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"scoring ended before the kill: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, "scoring never reached its second bucket"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run left a partial output"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert leftovers, "the killed run's temporary should be there to clean"
    # a rerun completes and removes what the killed run left
    model, _ = champion
    summary = score_file(model, tmp_path / "in.parquet", out, chunk_rows=100)
    assert summary["rows_scored"] == len(small_sessions)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_chunk_rows_must_be_positive(champion, tmp_path):
    with pytest.raises(ValueError, match="chunk_rows must be a positive number, got 0"):
        score_file(champion[0], tmp_path / "x.parquet", tmp_path / "out", chunk_rows=0)


def test_a_table_without_session_ids_is_scored_in_buckets_with_ids_from_its_row_numbers(tmp_path):
    """Rows of an export with no id column are named by their row in the whole input, however the
    scorer buckets them: ids stay unique and mean the same as a single call's."""
    from pipelines.core.web_analytics import web_analytics_export
    from pipelines.stages.train import train
    from tests.conftest import compose_config

    export = web_analytics_export(900, seed=4)
    export.to_csv(tmp_path / "shop.csv", index=False)
    cfg = compose_config(
        "train",
        [
            "data=web_analytics",
            f"data.path={tmp_path / 'shop.csv'}",
            f"output_dir={tmp_path}",
            "runtime.threads=1",
            "baselines=false",
            "model.num_boost_round=30",
        ],
    )
    model = train(cfg).model
    sessions = export.drop(columns=["Revenue"])
    sessions.to_csv(tmp_path / "today.csv", index=False)
    summary = score_file(model, tmp_path / "today.csv", tmp_path / "out", chunk_rows=100)
    assert summary["buckets"] > 1
    predictions = pd.read_parquet(tmp_path / "out" / "predictions")
    assert len(predictions) == len(sessions)
    assert (predictions["session_id"] == "row-" + predictions["input_row"].astype(str)).all()
    at_once = model.predict(sessions)
    expected = at_once.set_index("session_id")["p_purchase"]
    got = predictions.set_index("session_id")["p_purchase"]
    np.testing.assert_allclose(got.loc[expected.index].to_numpy(), expected.to_numpy())
    journeys = pd.read_parquet(tmp_path / "out" / "journeys.parquet")
    assert journeys["journey_id"].is_unique and len(journeys) == len(sessions)


def test_a_mapped_column_missing_from_the_input_is_named_and_counted(
    champion, small_sessions, tmp_path, caplog
):
    model, _ = champion
    raw = small_sessions.drop(columns=["intent"]).rename(
        columns={"device": "Device", "started_at": "StartedAt"}
    )
    raw.to_parquet(tmp_path / "in.parquet")
    with caplog.at_level("WARNING", logger="pipelines.stages.score"):
        summary = score_file(model, tmp_path / "in.parquet", tmp_path / "out")
    assert summary["missing_columns"] == ["started_at", "device"]
    assert summary["missing_columns_count"] == 2
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "mapped column 'device' is missing" in warned and "found 'Device'" in warned
    assert "mapped column 'started_at' is missing" in warned and "found 'StartedAt'" in warned
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["missing_columns_count"] == 2


def test_an_input_with_no_mapped_column_is_refused(champion, small_sessions, tmp_path):
    from pipelines.core.contract import ContractError

    model, _ = champion
    raw = small_sessions[["session_id"]].assign(Whatever=1)
    raw.to_parquet(tmp_path / "in.parquet")
    with pytest.raises(ContractError, match="none of the mapped columns is present"):
        score_file(model, tmp_path / "in.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_input_without_rows_is_refused(champion, tmp_path):
    from pipelines.core.contract import ContractError

    model, _ = champion
    (tmp_path / "header_only.csv").write_text("session_id,journey_id,device,dwell_time_s\n")
    with pytest.raises(ContractError, match="holds no sessions"):
        score_file(model, tmp_path / "header_only.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_summary_fingerprints_the_input_whatever_the_batch_size(
    champion, small_sessions, tmp_path
):
    from pipelines.io.readers import input_fingerprint

    model, _ = champion
    raw = small_sessions.drop(columns=["intent"])
    raw.to_parquet(tmp_path / "in.parquet")
    summary = score_file(model, tmp_path / "in.parquet", tmp_path / "out", chunk_rows=70)
    assert summary["input_fingerprint"] == input_fingerprint(tmp_path / "in.parquet", 1000)
    raw.assign(dwell_time_s=raw["dwell_time_s"] + 1).to_parquet(tmp_path / "other.parquet")
    assert input_fingerprint(tmp_path / "other.parquet") != summary["input_fingerprint"]


def test_a_column_of_lists_is_rejected_row_by_row_not_a_crash(champion, small_sessions, tmp_path):
    from pipelines.io.readers import input_fingerprint

    model, _ = champion
    raw = small_sessions.drop(columns=["intent"]).head(60)
    raw["device"] = [[d] for d in raw["device"]]  # an export that wrote arrays: list<string>
    raw.to_parquet(tmp_path / "in.parquet")
    summary = score_file(model, tmp_path / "in.parquet", tmp_path / "out", chunk_rows=25)
    assert (summary["rows_in"], summary["rows_scored"], summary["rows_rejected"]) == (60, 0, 60)
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert rejects["reject_reason"].str.startswith("device not a single value (got [").all()
    # the fingerprint reads nested columns too, whatever the batch size
    assert summary["input_fingerprint"] == input_fingerprint(tmp_path / "in.parquet", 7)
    raw["device"] = [[d, "x"] for d in small_sessions["device"].head(60)]
    raw.to_parquet(tmp_path / "other.parquet")
    assert input_fingerprint(tmp_path / "other.parquet") != summary["input_fingerprint"]
