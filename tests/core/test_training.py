"""Training, whatever engine runs it: the featurizer, the split check, timings, the baselines and
the Bayes reference on tiny known cases, and the `TrainResult` every engine ends in."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipelines.core import keys, metrics, modelling, training
from pipelines.core.contract import LABEL, to_contract
from pipelines.core.scorer import IntentModel
from pipelines.core.training import (
    TrainResult,
    baseline_metrics,
    bayes_metrics,
    check_splits,
    make_featurizer,
    result_of,
    timed,
)
from tests.fixtures import HAND_SPEC

CLASSES = ("know", "go", "do", "buy")
SPEC = dataclasses.replace(
    HAND_SPEC,
    page_counts={"info": "info_pages", "cart": "cart_pages"},
    extra_numeric=("score",),
    extra_categorical=("browser",),
)
FEATURES = {"near_store_km": 1.0, "history": True, "min_category_count": 1}


def test_the_featurizer_follows_the_dataset_and_the_features_config():
    stores = [[51.5, -0.14], [40.7, -73.9]]
    cfg = {"near_store_km": "2.5", "history": 0, "min_category_count": "3"}
    featurizer = make_featurizer(SPEC, cfg, stores)
    assert featurizer.page_types == ["info", "cart"]
    assert featurizer.extra_numeric == ["score"]
    assert featurizer.extra_categorical == ["browser"]
    assert featurizer.stores == stores
    assert featurizer.near_store_km == 2.5 and featurizer.history is False
    assert featurizer.min_category_count == 3
    assert not hasattr(featurizer, "feature_names_"), "returned unfitted"


@pytest.mark.parametrize("empty", ["train", "val", "test"])
def test_a_split_without_rows_is_refused_naming_the_side(empty):
    sizes = {"train": 80, "val": 10, "test": 10, empty: 0}
    with pytest.raises(ValueError, match=f"sessions.csv: the {empty} split is empty"):
        check_splits(sizes, "sessions.csv")


def test_a_split_side_absent_from_the_counts_is_refused():
    with pytest.raises(ValueError, match="the test split is empty"):
        check_splits({"train": 80, "val": 10}, "sessions.csv")


def test_splits_with_rows_on_every_side_pass():
    check_splits({"train": 1, "val": 1, "test": 1}, "sessions.csv")


def test_timed_adds_the_seconds_of_each_block_to_its_stage(monkeypatch):
    clock = iter([10.0, 12.5, 20.0, 21.0, 30.0, 30.25])
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    timings = {"read": 1.0}
    with timed(timings, "train"):
        pass
    with timed(timings, "train"):
        pass
    with timed(timings, "evaluate"):
        pass
    assert timings == {"read": 1.0, "train": 3.5, "evaluate": 0.25}


# -- baselines and the Bayes reference on known answers ------------------------------------------


def test_baselines_on_a_tiny_separable_case():
    """Training: three rows of class 0, one of class 1, separated by x. Test: two of each.
    The majority baseline always says class 0 with the prior (0.75, 0.25); the logistic
    regression separates the classes."""
    model = SimpleNamespace(
        classes=("no", "yes"), featurizer=SimpleNamespace(categorical_features_=[])
    )
    X = {
        "train": pd.DataFrame({"x": [-3.0, -2.0, -1.0, 3.0]}),
        "test": pd.DataFrame({"x": [-2.5, -1.5, 2.5, 3.5]}),
    }
    y = {"train": np.array([0, 0, 0, 1]), "test": np.array([0, 0, 1, 1])}
    cfg = {"runtime": {"seed": 0}, "logreg_max_rows": 1000}
    metrics = baseline_metrics(cfg, model, X, y)
    assert set(metrics) == {
        f"test/{name}/{key}"
        for name in ("majority", "logreg")
        for key in ("accuracy", "macro_f1", "logloss", "ece")
    }
    assert metrics["test/majority/accuracy"] == 0.5
    assert metrics["test/majority/macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert metrics["test/majority/logloss"] == pytest.approx(
        -(2 * math.log(0.75) + 2 * math.log(0.25)) / 4
    )
    assert metrics["test/majority/ece"] == pytest.approx(0.25)  # 75% sure, right half the time
    assert metrics["test/logreg/accuracy"] == 1.0
    assert metrics["test/logreg/logloss"] < metrics["test/majority/logloss"]


def test_bayes_metrics_and_the_models_ratio_to_them():
    y_test = np.array([0, 1])
    reference = np.array([[0.9, 0.1], [0.2, 0.8]])  # right on both rows
    model_metrics = {"test/accuracy": 0.5, "test/macro_f1": 0.25, "test/logloss": 1.2}
    out = bayes_metrics(model_metrics, y_test, reference, ["no", "yes"])
    bayes_logloss = -(math.log(0.9) + math.log(0.8)) / 2
    assert out["test/bayes/accuracy"] == 1.0
    assert out["test/bayes/macro_f1"] == 1.0
    assert out["test/bayes/logloss"] == pytest.approx(bayes_logloss)
    assert out["test/bayes/ece"] == pytest.approx(abs((0.9 + 0.8) / 2 - 1.0))
    assert out["test/ratio_to_bayes/accuracy"] == 0.5
    assert out["test/ratio_to_bayes/macro_f1"] == 0.25
    assert out["test/ratio_to_bayes/logloss"] == pytest.approx(1.2 / bayes_logloss)
    assert "test/ratio_to_bayes/ece" not in out


# -- result_of -----------------------------------------------------------------------------------


def sessions(n_journeys: int = 30) -> pd.DataFrame:
    """`n_journeys` journeys of 4 sessions; the intent follows the dwell time, and each row
    carries a (made-up) reference posterior that puts 0.7 on its intent."""
    rows = []
    for j in range(n_journeys):
        for s in range(4):
            k = (j + s) % 4
            row = {
                "id": f"j{j:02d}-s{s}",
                "journey": f"j{j:02d}",
                "start": (pd.Timestamp("2026-03-01T09:00Z") + pd.Timedelta(days=s, hours=j)),
                "device": ["mobile", "desktop"][j % 2],
                "dwell": 30.0 + 100.0 * k + j % 5,
                "info_pages": k,
                "cart_pages": int(k == 3),
                "score": float(j % 3),
                "browser": ["chrome", "safari"][s % 2],
                "intent": CLASSES[k],
            }
            row.update({f"bayes_p_{c}": 0.7 if i == k else 0.1 for i, c in enumerate(CLASSES)})
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def trained():
    """A five-round model trained on hand-built journeys split 20/5/5 by journey."""
    raw = sessions()
    contract = to_contract(raw, SPEC, with_label=True)
    canon = contract.sessions
    number = canon["journey_id"].str[1:].astype(int)
    sides = np.where(number < 20, "train", np.where(number < 25, "val", "test"))
    parts = {side: canon[sides == side] for side in modelling.SPLITS}
    featurizer = make_featurizer(SPEC, FEATURES, None).fit(parts["train"])
    X = {side: featurizer.transform(part) for side, part in parts.items()}
    codes = pd.Categorical(canon[LABEL], categories=list(CLASSES)).codes.astype(int)
    y = {side: codes[sides == side] for side in modelling.SPLITS}
    params = modelling.lgb_params(
        {"params": {"num_leaves": 4, "min_data_in_leaf": 5}}, len(CLASSES), threads=1, seed=0
    )
    booster = training.fit_early_stopped(
        {"num_boost_round": 5, "early_stopping_rounds": 5}, params, featurizer, X, y
    )
    model = IntentModel(SPEC, featurizer, booster, threads=1)
    test_raw = raw.iloc[contract.kept_rows[sides == "test"]].reset_index(drop=True)
    return SimpleNamespace(model=model, X=X, y=y, test=parts["test"], test_raw=test_raw)


def cfg(prefix: str | None = None, baselines: bool = False, drivers_rows: int = 0) -> dict:
    return {
        "baselines": baselines,
        "data": {"reference_posterior_prefix": prefix},
        "runtime": {"seed": 0},
        "logreg_max_rows": 1000,
        "drivers_rows": drivers_rows,
    }


def result(trained, config: dict, **fields) -> TrainResult:
    return result_of(
        config,
        trained.model,
        trained.X,
        trained.y,
        trained.test,
        trained.test_raw,
        {"read": 0.5},
        extra_metrics={"data/rows_in": 120.0},
        rejects=pd.DataFrame(),
        fingerprint="abc",
        **fields,
    )


def test_the_result_test_labels_and_fingerprint_are_those_of_the_test_rows(trained):
    res = result(trained, cfg())
    assert len(trained.test) == 20  # 5 journeys of 4 sessions
    assert res.test_labels.tolist() == trained.test[LABEL].tolist()
    assert res.test_labels.index.tolist() == list(range(20))
    assert res.test_fingerprint == keys.data_fingerprint(trained.test)
    assert res.test_frame["session_id"].tolist() == trained.test["session_id"].tolist()
    codes = [CLASSES.index(label) for label in trained.test[LABEL]]
    assert res.test_frame["label"].tolist() == codes
    assert res.test_raw is trained.test_raw


def test_the_result_holds_the_models_metrics_and_the_engines_extras(trained):
    res = result(trained, cfg())
    proba = trained.model.predict_features(trained.X["test"])
    expected = modelling.classification_metrics(trained.y["test"], proba, CLASSES)
    assert res.metrics["test/accuracy"] == expected["accuracy"]
    assert res.metrics["test/logloss"] == expected["logloss"]
    assert res.metrics["data/rows_in"] == 120.0
    assert res.metrics["train/best_iteration"] <= 5
    assert not any(k.startswith(("test/majority", "test/bayes")) for k in res.metrics)
    np.testing.assert_allclose(res.test_frame[[f"p_{c}" for c in CLASSES]].to_numpy(), proba)
    assert res.fingerprint == "abc" and res.model is trained.model
    assert set(res.figures) == {"confusion", "reliability", "importance", "ranking"}
    assert (
        res.metrics["test/roc_auc_macro"]
        == metrics.ranking_metrics(trained.y["test"], proba, CLASSES)["roc_auc_macro"]
    )
    assert res.drift_reference["classes"] == list(CLASSES)


def test_the_result_times_its_evaluation_beside_the_engines_stages(trained):
    res = result(trained, cfg())
    assert res.timings["read"] == 0.5
    assert res.timings["evaluate"] > 0


def test_a_reference_posterior_in_the_test_rows_is_measured_and_kept(trained):
    res = result(trained, cfg(prefix="bayes_p_", baselines=True))
    # the made-up posterior puts 0.7 on the true intent of every row
    assert res.metrics["test/bayes/accuracy"] == 1.0
    assert res.metrics["test/bayes/logloss"] == pytest.approx(-math.log(0.7))
    assert res.metrics["test/ratio_to_bayes/accuracy"] == res.metrics["test/accuracy"]
    np.testing.assert_allclose(res.test_frame["bayes_p_know"], trained.test_raw["bayes_p_know"])
    assert "test/majority/accuracy" in res.metrics and "test/logreg/accuracy" in res.metrics


def test_what_drives_each_intent_is_measured_on_a_sample_of_test_rows(trained):
    res = result(trained, cfg(drivers_rows=40))
    drivers = res.figures["drivers"]
    predicted = {
        trained.model.classes[c] for c in res.test_frame.filter(like="p_").to_numpy().argmax(axis=1)
    }
    assert set(drivers) <= predicted and drivers
    for by_reason in drivers.values():
        values = list(by_reason.values())
        assert values == sorted(values, reverse=True)
        assert "time on site" in by_reason  # the hand-built rule: intent follows dwell
    assert "drivers" in res.timings
    assert "drivers" not in result(trained, cfg(drivers_rows=0)).figures
