"""Training and evaluation on small generated data, and the bring-your-own-table config."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.core.web_analytics import web_analytics_export
from pipelines.stages.train import train
from tests.conftest import compose_config


def test_training_on_small_synthetic_data_learns_intent(train_config):
    result = train(train_config)
    m = result.metrics
    # far above the majority class, close to the generator's Bayes-optimal posterior
    assert m["test/accuracy"] > m["test/majority/accuracy"] + 0.3
    assert m["test/ratio_to_bayes/accuracy"] > 0.9
    assert m["test/bayes/logloss"] <= m["test/logloss"] * 1.05
    for key in (
        "test/macro_f1",
        "test/ece",
        "test/logreg/accuracy",
        "val/logloss",
        "test/f1_go",
        "test/recall_buy",
    ):
        assert np.isfinite(m[key]), key
    assert m["data/rows_in"] == m["data/rows_kept"] + m["data/rows_rejected"]
    assert m["data/train_rows"] + m["data/val_rows"] + m["data/test_rows"] == m["data/rows_kept"]


def test_bring_your_own_table_trains_binary_from_a_csv(tmp_path):
    export = web_analytics_export(1500)
    path = tmp_path / "online_shoppers.csv"
    export.to_csv(path, index=False)
    cfg = compose_config(
        "train",
        [
            "data=web_analytics",
            f"data.path={path}",
            f"output_dir={tmp_path}",
            "runtime.threads=1",
            "model.num_boost_round=200",
        ],
    )
    result = train(cfg)
    m = result.metrics
    assert result.model.classes == ("no_purchase", "purchase")
    assert m["data/rows_in"] == len(export)
    assert m["test/accuracy"] >= m["test/majority/accuracy"]
    assert m["test/logloss"] < m["test/majority/logloss"], (
        "the model learned nothing beyond the class mix"
    )
    assert "f1_purchase" in "".join(m)
    features = result.model.featurizer.feature_names_
    assert {"PageValues", "VisitorType", "share_product", "bounce"} <= set(features)
    # scoring the raw export (label dropped) works with the same mapping
    out = result.model.predict(export.drop(columns=["Revenue"]).head(20))
    assert out["session_id"].tolist() == [f"row-{i}" for i in range(20)]
    assert out["intent"].isin(["no_purchase", "purchase"]).all()


def test_bring_your_own_table_names_a_missing_column(tmp_path):
    export = web_analytics_export(200).drop(columns=["PageValues"])
    path = tmp_path / "export.csv"
    export.to_csv(path, index=False)
    cfg = compose_config(
        "train", ["data=web_analytics", f"data.path={path}", f"output_dir={tmp_path}"]
    )
    with pytest.raises(ValueError, match=r"export\.csv: required column 'PageValues'"):
        train(cfg)


def test_empty_split_is_a_clear_error(train_config, small_sessions):
    tiny = small_sessions[small_sessions["journey_id"] == small_sessions["journey_id"].iloc[0]]
    with pytest.raises(ValueError, match="split is empty"):
        train(train_config, sessions=tiny)
