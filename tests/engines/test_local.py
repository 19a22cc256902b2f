"""The engines: one interface, picked by name; the local engine scores journeys whole whatever
the row order, and generates the same data for the same seed."""

from __future__ import annotations

import inspect
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipelines.config import CONF_DIR
from pipelines.core.contract import DatasetSpec
from pipelines.core.scoring import ROW
from pipelines.engines import ENGINES, Engine, engine_for
from pipelines.engines.dask import DaskEngine
from pipelines.engines.local import LocalEngine, generate, route_to_buckets, score_file
from pipelines.io.outputs import OUTPUT_MARK
from pipelines.io.readers import input_fingerprint
from tests.conftest import compose_config

PROBS = ["p_know", "p_go", "p_do", "p_buy"]


# -- the interface -------------------------------------------------------------------------------


def test_the_engine_config_name_picks_the_engine():
    local = engine_for({"name": "local"})
    dask = engine_for({"name": "dask", "scheduler_address": None})
    assert isinstance(local, LocalEngine) and local.name == "local"
    assert isinstance(dask, DaskEngine) and dask.name == "dask"
    assert dask.cfg == {"name": "dask", "scheduler_address": None}
    assert sorted(ENGINES) == ["dask", "local"]


@pytest.mark.parametrize("engine", [LocalEngine, DaskEngine])
@pytest.mark.parametrize("method", ["generate", "train", "score"])
def test_both_engines_have_the_interfaces_methods_with_its_parameters(engine, method):
    expected = inspect.signature(getattr(Engine, method)).parameters
    got = inspect.signature(getattr(engine, method)).parameters
    assert list(got) == list(expected)
    assert [p.default for p in got.values()] == [p.default for p in expected.values()]


# -- scoring -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(small_sessions, tmp_path_factory):
    """A five-round model of the local engine, trained on the small sessions on one thread."""
    cfg = compose_config(
        "train",
        [
            f"output_dir={tmp_path_factory.mktemp('train')}",
            "data.stores_path=null",
            "runtime.threads=1",
            "baselines=false",
            "model.num_boost_round=5",
        ],
    )
    return engine_for(cfg["engine"]).train(cfg, sessions=small_sessions).model


@pytest.fixture
def raw(small_sessions):
    """The small sessions as a scoring input: no label, two rows the contract rejects."""
    raw = small_sessions.drop(columns=["intent"]).copy()
    raw.loc[[5, 50], "dwell_time_s"] = -1.0
    return raw


def test_journeys_shuffled_across_csv_rows_score_as_the_sorted_input(model, raw, tmp_path):
    raw.to_csv(tmp_path / "sorted.csv", index=False)
    raw.sample(frac=1.0, random_state=7).to_csv(tmp_path / "shuffled.csv", index=False)
    a = score_file(model, tmp_path / "sorted.csv", tmp_path / "a", chunk_rows=80)
    b = score_file(model, tmp_path / "shuffled.csv", tmp_path / "b", chunk_rows=80)
    assert a["buckets"] == b["buckets"] > 5
    assert (a["rows_scored"], a["rows_rejected"]) == (b["rows_scored"], b["rows_rejected"])
    assert a["rows_rejected"] == 2

    def scores(out: Path, name: str, key: str) -> pd.DataFrame:
        frame = pd.read_parquet(out / name)
        return frame.set_index(key).sort_index()

    pd.testing.assert_frame_equal(
        scores(tmp_path / "a", "predictions", "session_id")[[*PROBS, "intent", "journey_id"]],
        scores(tmp_path / "b", "predictions", "session_id")[[*PROBS, "intent", "journey_id"]],
        rtol=0,
        atol=1e-12,
    )
    journey_cols = ["sessions", "latest_session_id", "intent", "intent_sequence"]
    pd.testing.assert_frame_equal(
        scores(tmp_path / "a", "journeys.parquet", "journey_id")[journey_cols],
        scores(tmp_path / "b", "journeys.parquet", "journey_id")[journey_cols],
    )
    # predictions equal scoring the whole input at once
    whole = model.predict(raw).dropna(subset=["intent"]).set_index("session_id").sort_index()
    got = scores(tmp_path / "b", "predictions", "session_id")
    pd.testing.assert_frame_equal(got[PROBS], whole[PROBS], rtol=0, atol=1e-12)


def test_routing_keeps_every_journey_whole_in_one_bucket(model, raw, tmp_path):
    shuffled = raw.sample(frac=1.0, random_state=3).reset_index(drop=True)
    shuffled.to_parquet(tmp_path / "in.parquet")
    buckets = route_to_buckets(model.spec, tmp_path / "in.parquet", tmp_path / "b", 100)
    assert len(buckets.files) == -(-len(raw) // 100)
    frames = [pd.read_parquet(f).assign(bucket=i) for i, f in enumerate(buckets.files)]
    routed = pd.concat(frames, ignore_index=True)
    assert routed.groupby("journey_id")["bucket"].nunique().eq(1).all()
    assert routed["bucket"].nunique() > 1
    # every row once, numbered by its position in the input
    assert sorted(routed[ROW]) == list(range(len(raw)))
    by_row = routed.set_index(ROW).sort_index()
    assert by_row["session_id"].tolist() == shuffled["session_id"].tolist()
    assert buckets.rows_in == len(raw)
    assert buckets.fingerprint == input_fingerprint(tmp_path / "in.parquet")
    assert buckets.absent == []


def test_rows_without_a_journey_id_are_spread_by_their_row_number(tmp_path):
    spec = DatasetSpec(columns={"session_id": "id", "journey_id": "journey", "device": "device"})
    n = 40
    pd.DataFrame(
        {"id": [f"s{i}" for i in range(n)], "journey": [None] * n, "device": ["mobile"] * n}
    ).to_parquet(tmp_path / "in.parquet")
    buckets = route_to_buckets(spec, tmp_path / "in.parquet", tmp_path / "b", 10)
    sizes = [len(pd.read_parquet(f)) for f in buckets.files]
    assert sum(sizes) == n and len(sizes) > 1


def test_a_missing_mapped_column_is_reported_by_routing(model, raw, tmp_path):
    raw.drop(columns=["channel"]).to_parquet(tmp_path / "in.parquet")
    buckets = route_to_buckets(model.spec, tmp_path / "in.parquet", tmp_path / "b", 1000)
    assert buckets.absent == ["channel"]


# -- generate ------------------------------------------------------------------------------------


def generator_config() -> dict:
    return OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/generator/default.yaml"))


def generate_into(out: Path, seed: int) -> dict:
    gen = {"out_dir": str(out), "n_journeys": 25, "chunk_journeys": 10, "seed": seed}
    return generate({**gen, "posterior": False}, generator_config())


def test_generate_writes_its_parts_and_the_store_table(tmp_path):
    summary = generate_into(tmp_path, seed=5)
    assert sorted(p.name for p in (tmp_path / "sessions").iterdir()) == [
        OUTPUT_MARK,
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    sessions = pd.read_parquet(tmp_path / "sessions")
    assert summary == {
        "journeys": 25,
        "sessions": len(sessions),
        "parts": 3,
        "out_dir": str(tmp_path),
    }
    assert sessions["journey_id"].nunique() == 25
    stores = pd.read_csv(tmp_path / "stores.csv")
    assert {"latitude", "longitude"} <= set(stores.columns) and len(stores) > 0


def test_the_same_seed_generates_the_same_frames_and_another_seed_others(tmp_path):
    generate_into(tmp_path / "a", seed=5)
    generate_into(tmp_path / "b", seed=5)
    generate_into(tmp_path / "c", seed=6)
    for name in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "a" / "sessions" / name),
            pd.read_parquet(tmp_path / "b" / "sessions" / name),
        )
    a = pd.read_parquet(tmp_path / "a" / "sessions")
    c = pd.read_parquet(tmp_path / "c" / "sessions")
    assert not a["dwell_time_s"].equals(c["dwell_time_s"])
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "a" / "stores.csv"), pd.read_csv(tmp_path / "b" / "stores.csv")
    )
