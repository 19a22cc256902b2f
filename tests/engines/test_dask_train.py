"""Training on a Dask cluster with lightgbm.dask: a model as good as local training's, on the same
rows with the same fingerprint, registered and loaded the same way; clear errors without a
cluster."""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipelines.core import modelling
from pipelines.core.contract import LABEL, DatasetSpec, to_contract
from pipelines.core.web_analytics import web_analytics_export
from pipelines.engines.dask_cluster import ClusterError
from pipelines.engines.dask_train import train_dask
from pipelines.stages.train import run_train, train
from tests.conftest import compose_config

PROBS = ["p_know", "p_go", "p_do", "p_buy"]


def _train_overrides(data_dir, tmp_path) -> list[str]:
    return [
        f"data.path={data_dir}/sessions",
        f"data.stores_path={data_dir}/stores.csv",
        f"output_dir={tmp_path}",
        "runtime.threads=1",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    ]


@pytest.mark.slow
def test_dask_training_registers_a_model_as_good_as_local_training(generated, tmp_path):
    overrides = _train_overrides(generated["local"], tmp_path)
    local = train(compose_config("train", overrides))
    # the command's path: its own LocalCluster from the engine config, then log and register
    cfg = compose_config("train", [*overrides, "engine=dask", "engine.n_workers=2"])
    val_logloss = run_train(OmegaConf.create(cfg), ["engine=dask"], str(tmp_path))

    store = cfg["tracking"]["uri"]
    client = mlflow.tracking.MlflowClient(store, registry_uri=store)
    version = client.get_model_version_by_alias("micro_moment_intent", "challenger")
    run = client.get_run(version.run_id).data
    assert run.metrics["val/logloss"] == pytest.approx(val_logloss)
    # distributed histograms make a slightly different model of the same quality: on the default
    # world (accuracy about 0.75 on about a thousand test rows) that moves accuracy by up to a
    # point or two; the two must still agree on almost every session (below)
    assert abs(run.metrics["test/accuracy"] - local.metrics["test/accuracy"]) <= 0.02
    # and both are near the Bayes-optimal accuracy on the same rows
    assert run.metrics["test/accuracy"] > 0.95 * run.metrics["test/bayes/accuracy"]
    # the same rows, split the same way: the data fingerprint is local training's
    assert run.tags["data_fingerprint"] == local.fingerprint
    for key in ("data/rows_kept", "data/train_rows", "data/val_rows", "data/test_rows"):
        assert run.metrics[key] == local.metrics[key], key
    # every training row fits the sample: the round count is local early stopping's
    assert run.metrics["train/sample_rows"] == local.metrics["data/train_rows"]
    assert run.metrics["train/best_iteration"] == local.metrics["train/best_iteration"]
    assert run.params["engine.name"] == "dask"

    # a consumer loads the registered version by alias and passes raw sessions
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    scorer = mlflow.pyfunc.load_model("models:/micro_moment_intent@challenger")
    raw = pd.read_parquet(generated["local"] / "sessions").head(300)
    out = scorer.predict(raw)
    assert len(out) == 300 and out["reject_reason"].isna().all()
    assert set(out["intent"]) <= {"know", "go", "do", "buy"}
    assert set(out["model_version"]) == {str(version.version)}
    np.testing.assert_allclose(out[PROBS].sum(axis=1), 1.0, atol=1e-9)
    local_out = local.model.predict(raw)
    assert (out["intent"] == local_out["intent"]).mean() > 0.95


@pytest.mark.slow
def test_dask_trained_booster_reads_categories_as_the_scorer_encodes_them(
    client, generated, tmp_path
):
    """The scorer predicts from a float matrix with categories as the featurizer's codes; the
    booster trained on pandas categories on the cluster gives the same probabilities."""
    cfg = compose_config(
        "train",
        [
            *_train_overrides(generated["dask"], tmp_path),
            "engine=dask",
            "engine.num_boost_round=40",  # a fixed round count: no local search
            "baselines=false",
        ],
    )
    result = train_dask(cfg, client=client)
    assert result.model.booster.current_iteration() == 40
    assert "train/sample_best_iteration" not in result.metrics
    assert result.model.featurizer.categorical_features_  # there are categories to get right
    features = result.model.featurizer.transform(
        to_contract(result.test_raw, result.model.spec).sessions
    )
    from_matrix = result.model.predict_features(features)
    from_frame = result.model.booster.predict(features)  # LightGBM's own pandas categories
    np.testing.assert_allclose(from_matrix, from_frame, rtol=0, atol=1e-12)
    assert result.test_frame["session_id"].tolist() == result.test_raw["session_id"].tolist()


@pytest.mark.slow
def test_dask_training_quarantines_the_rows_local_training_rejects(client, generated, tmp_path):
    sessions = pd.read_parquet(generated["local"] / "sessions").head(3000)
    sessions.loc[[5, 70], "dwell_time_s"] = -1.0
    first_of_journey = sessions.drop_duplicates("journey_id").index
    # session ids repeated in other journeys: all but the first occurrence are duplicates
    for a, b in zip(first_of_journey[10:16], first_of_journey[400:406], strict=True):
        sessions.loc[b, "session_id"] = sessions.loc[a, "session_id"]
    # a first occurrence rejected for another reason still makes its repeat a duplicate, and a
    # duplicate that breaks another rule too gives both reasons, in local training's order
    first, repeat = first_of_journey[20], first_of_journey[420]
    sessions.loc[first, "dwell_time_s"] = -2.0
    sessions.loc[repeat, "session_id"] = sessions.loc[first, "session_id"]
    both = first_of_journey[430]
    sessions.loc[both, ["session_id", "latitude"]] = [
        sessions.loc[first_of_journey[30], "session_id"],
        95.0,
    ]
    overrides = [*_train_overrides(generated["local"], tmp_path), "baselines=false"]
    local = train(compose_config("train", overrides), sessions=sessions)
    dask = train_dask(
        compose_config("train", [*overrides, "engine=dask"]), sessions=sessions, client=client
    )
    assert len(local.rejects) == 11
    reasons = dict(zip(local.rejects["source_row"], local.rejects["reject_reason"], strict=True))
    assert reasons[repeat].startswith("session_id duplicate value")
    assert reasons[both].startswith("session_id duplicate value") and "latitude" in reasons[both]
    for col in ("source_row", "reject_reason", "session_id"):
        assert dask.rejects[col].tolist() == local.rejects[col].tolist(), col
    assert dask.fingerprint == local.fingerprint
    assert dask.metrics["data/rows_rejected"] == 11 and dask.metrics["data/rows_in"] == 3000


def test_training_on_an_unreachable_scheduler_is_a_clear_error(train_config):
    start = time.monotonic()
    cfg = compose_config(
        "train",
        [
            f"data.path={train_config['data']['path']}",
            "output_dir=/tmp",
            "engine=dask",
            "engine.scheduler_address=tcp://127.0.0.1:9",
            "engine.connect_timeout_s=2",
        ],
    )
    with pytest.raises(ClusterError, match=r"tcp://127.0.0.1:9 cannot be reached within 2 s"):
        train(cfg)
    assert time.monotonic() - start < 30


def test_dask_training_refuses_lightgbm_callbacks(train_config):
    cfg = {**train_config, "engine": {**train_config["engine"], "name": "dask"}}
    with pytest.raises(ValueError, match="engine=dask .* no LightGBM callbacks"):
        train(cfg, callbacks=[lambda env: None])


def test_the_round_count_rule(small_sessions):
    """A fixed engine.num_boost_round wins; otherwise the sample's best iteration x the factor."""
    from pipelines.core.training import make_featurizer
    from pipelines.engines.dask_train import num_boost_round
    from pipelines.io.readers import load_stores

    cfg = compose_config("train", ["data.path=unused", "data.stores_path=null", "output_dir=/tmp"])
    spec = DatasetSpec.from_config(cfg["data"])
    canon = to_contract(small_sessions, spec).sessions
    side = modelling.split_sessions(canon, 0.3, 0.1, seed=0).to_numpy()
    featurizer = make_featurizer(
        spec, cfg["features"], load_stores(cfg["data"]["stores_path"])
    ).fit(canon[side == "train"])
    X = {s: featurizer.transform(canon[side == s]) for s in ("train", "val")}
    y = {s: pd.Categorical(canon[LABEL][side == s], spec.classes).codes for s in ("train", "val")}
    params = modelling.lgb_params({"params": {"learning_rate": 0.3}}, 4, 1, 0)
    model_cfg = {"num_boost_round": 300, "early_stopping_rounds": 5}
    fixed = num_boost_round({"num_boost_round": 17}, model_cfg, params, featurizer, X, y)
    assert fixed == (17, None)
    rounds, best = num_boost_round({"rounds_factor": 1.5}, model_cfg, params, featurizer, X, y)
    assert 1 <= best < 300 and rounds == round(best * 1.5)


@pytest.mark.slow
def test_dask_reads_a_csv_export_without_ids_as_local_training_does(client, tmp_path):
    """A CSV on Dask keeps the types pandas gives it (numbers stay numbers), and rows without an
    id are named by their input row, not by their place in a partition: the same rows, ids and
    fingerprint as local training."""
    export = web_analytics_export(2400, seed=5)
    export["PageValues"] = export["PageValues"].astype(float)
    export.loc[2000:, "ExitRates"] = np.nan  # a column whose later rows are all missing
    path = tmp_path / "shop.csv"
    export.to_csv(path, index=False)
    overrides = [
        "data=web_analytics",
        f"data.path={path}",
        f"output_dir={tmp_path}",
        "runtime.threads=1",
        "baselines=false",
        "model.num_boost_round=60",
    ]
    local = train(compose_config("train", overrides))
    on_dask = train_dask(compose_config("train", [*overrides, "engine=dask"]), client=client)
    assert on_dask.fingerprint == local.fingerprint
    for key in ("data/rows_kept", "data/rows_rejected", "data/train_rows", "data/test_rows"):
        assert on_dask.metrics[key] == local.metrics[key], key
    assert sorted(on_dask.test_frame["session_id"]) == sorted(local.test_frame["session_id"])
    assert abs(on_dask.metrics["test/accuracy"] - local.metrics["test/accuracy"]) <= 0.03
