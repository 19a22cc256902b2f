"""The intent scorer: raw sessions in, one row of probabilities per input row out, in input
order; saved as LightGBM text and JSON and loaded back exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.core import modelling
from pipelines.core.contract import to_contract
from pipelines.core.scorer import BOOSTER_FILE, STATE_FILE, IntentModel, load_model, save_model
from pipelines.stages.train import train
from tests.fixtures import HAND_CLASSES, HAND_SPEC, hand_built_model, hand_built_sessions

NAME = "micro_moment_intent"

CLASSES = HAND_CLASSES
SPEC = HAND_SPEC


@pytest.fixture(scope="module")
def tiny_model() -> IntentModel:
    """A five-round LightGBM model on hand-built sessions, on one thread."""
    return hand_built_model()


def test_model_predicts_raw_sessions_in_input_order(train_config, small_sessions):
    model = train(train_config).model
    raw = small_sessions.drop(columns=["intent"]).sample(frac=1.0, random_state=1)
    out = model.predict(raw)
    assert out["session_id"].tolist() == raw["session_id"].tolist()
    probs = out[[f"p_{c}" for c in model.classes]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert (out["confidence"] >= out["margin"]).all()
    assert set(out["intent"]) <= set(model.classes)


def test_unknown_device_and_missing_location_are_scored(train_config, small_sessions):
    model = train(train_config).model
    raw = small_sessions.head(4).drop(columns=["intent"]).copy()
    raw["device"] = "smartwatch"
    raw["latitude"] = np.nan
    raw["longitude"] = np.nan
    out = model.predict(raw)
    assert out["reject_reason"].isna().all()
    assert np.isfinite(out["p_know"]).all()


def test_invalid_rows_are_returned_with_reason_not_dropped(train_config, small_sessions):
    model = train(train_config).model
    raw = small_sessions.head(5).drop(columns=["intent"]).copy()
    raw.loc[2, "dwell_time_s"] = -3.0
    out = model.predict(raw)
    assert len(out) == 5
    assert "dwell_time_s must be >= 0" in out.loc[2, "reject_reason"]
    assert np.isnan(out.loc[2, "p_know"]) and pd.isna(out.loc[2, "intent"])
    assert out.drop(index=2)["reject_reason"].isna().all()


PROBS = ["p_know", "p_go", "p_do", "p_buy"]


def test_saved_model_files_round_trip_exactly(registry_store, client, small_sessions, tmp_path):
    from pipelines.core.scorer import load_model, save_model
    from pipelines.tracking.registry import load_scorer

    model, _ = load_scorer(f"models:/{NAME}/2", threads=1)
    again = load_model(save_model(model, tmp_path / "m"), threads=1)
    raw = small_sessions.drop(columns=["intent"])
    assert again.spec == model.spec
    assert again.featurizer.categories_ == model.featurizer.categories_
    features = model.featurizer.transform_matrix(model_contract(model, raw))
    assert (again.featurizer.transform_matrix(model_contract(again, raw)) == features)[
        ~__import__("numpy").isnan(features)
    ].all()
    diff = again.predict(raw)[PROBS].to_numpy() - model.predict(raw)[PROBS].to_numpy()
    assert abs(diff).max() <= 1e-12


def model_contract(model, raw):

    return to_contract(raw, model.spec, with_label=False, all_columns=False).sessions


def test_the_scorer_learns_the_hand_built_rule(tiny_model):
    raw = hand_built_sessions().drop(columns=["intent"])
    out = tiny_model.predict(raw)
    assert (out["intent"] == hand_built_sessions()["intent"]).mean() > 0.9
    assert out.columns.tolist() == tiny_model.output_columns
    assert tiny_model.output_columns == [
        "session_id",
        "p_know",
        "p_go",
        "p_do",
        "p_buy",
        "intent",
        "confidence",
        "margin",
        "reject_reason",
    ]


def test_a_saved_model_is_booster_text_and_json_and_loads_with_the_same_scores(
    tiny_model, tmp_path
):
    folder = save_model(tiny_model, tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == sorted([BOOSTER_FILE, STATE_FILE])
    state = json.loads((folder / STATE_FILE).read_text())
    assert state["format_version"] == 1 and state["spec"]["columns"]["dwell_time_s"] == "dwell"
    again = load_model(folder)
    assert again.spec == tiny_model.spec and again.classes == CLASSES
    raw = hand_built_sessions().drop(columns=["intent"]).sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(again.predict(raw), tiny_model.predict(raw))


def test_a_loaded_model_scores_on_the_threads_it_is_given_with_the_same_probabilities(
    tiny_model, tmp_path
):
    folder = save_model(tiny_model, tmp_path / "model")
    one, four = load_model(folder, threads=1), load_model(folder, threads=4)
    assert (one.threads, four.threads) == (1, 4)
    raw = pd.concat([hand_built_sessions()] * 3, ignore_index=True).drop(columns=["intent"])
    assert len(raw) > modelling.SINGLE_THREAD_MAX_ROWS  # enough rows to use every thread
    probs = [f"p_{c}" for c in CLASSES]
    np.testing.assert_array_equal(four.predict(raw)[probs], one.predict(raw)[probs])


def test_a_model_folder_of_another_format_version_is_refused(tiny_model, tmp_path):
    folder = save_model(tiny_model, tmp_path / "model")
    state = json.loads((folder / STATE_FILE).read_text())
    (folder / STATE_FILE).write_text(json.dumps({**state, "format_version": 99}))
    with pytest.raises(ValueError, match="model format 99, expected 1"):
        load_model(folder)


def test_a_rejected_row_has_nan_scores_or_missing_values_when_asked_for_nullable_columns(
    tiny_model,
):
    raw = hand_built_sessions(2).drop(columns=["intent"])
    raw.loc[1, "dwell"] = -5.0
    plain = tiny_model.predict(raw)
    assert np.isnan(plain.loc[1, "p_buy"]) and pd.isna(plain.loc[1, "intent"])
    nullable = tiny_model.predict(raw, nullable=True, extra={"model_version": "7"})
    assert nullable["p_buy"].dtype == "Float64" and nullable.loc[1, "p_buy"] is pd.NA
    assert nullable.loc[1, "intent"] is pd.NA and nullable.loc[0, "reject_reason"] is pd.NA
    assert "dwell" in nullable.loc[1, "reject_reason"]
    assert nullable["model_version"].tolist() == ["7"] * len(raw)


def test_a_model_describes_its_classes_columns_and_features(tiny_model):
    described = tiny_model.describe()
    assert described["classes"] == list(CLASSES)
    assert described["columns"]["session_id"] == "id"
    assert described["features"] == list(tiny_model.featurizer.feature_names_)
    json.dumps(described)  # plain JSON, for the model README


def test_a_session_scored_alone_gets_what_a_large_batch_gives_it(tiny_model):
    """One session at a time takes the few-row path (arrays, no DataFrame); a batch of more
    than ARRAY_CHECK_MAX_ROWS rows takes the batch path (pandera). First sessions of their
    journeys have no history either way, so every output column must be equal, reasons too."""
    from pipelines.core.contract import ARRAY_CHECK_MAX_ROWS

    raw = hand_built_sessions(400).drop(columns=["intent"])
    raw = raw.drop_duplicates("journey").reset_index(drop=True)  # one session per journey
    raw.loc[3, "dwell"] = -5.0
    raw.loc[5, "start"] = "not a time"
    assert len(raw) > ARRAY_CHECK_MAX_ROWS
    for nullable in (False, True):
        batch = tiny_model.predict(raw, nullable=nullable, explain=2, extra={"model_version": "3"})
        alone = pd.concat(
            [
                tiny_model.predict(
                    raw.iloc[[i]].reset_index(drop=True),
                    nullable=nullable,
                    explain=2,
                    extra={"model_version": "3"},
                )
                for i in range(40)
            ],
            ignore_index=True,
        )
        pd.testing.assert_frame_equal(alone, batch.head(40), check_exact=True)
    assert "dwell" in batch.loc[3, "reject_reason"] and "start" in batch.loc[5, "reject_reason"]
    assert batch["reject_reason"].notna().sum() == 2


def test_a_calibrated_model_saves_and_loads_its_calibrator_as_json(tiny_model, tmp_path):
    import copy

    from pipelines.core.calibration import TemperatureCalibrator

    model = copy.copy(tiny_model)
    model.calibrator = TemperatureCalibrator(temperature=1.7, n_classes=len(model.classes))
    raw = hand_built_sessions(10).drop(columns=["intent"])
    plain, calibrated = tiny_model.predict(raw), model.predict(raw)
    assert not np.allclose(plain[probs_of(model)], calibrated[probs_of(model)])
    state = json.loads((save_model(model, tmp_path / "m") / STATE_FILE).read_text())
    assert state["calibration"] == {"kind": "temperature", **state["calibration"]}
    loaded = load_model(tmp_path / "m")
    pd.testing.assert_frame_equal(loaded.predict(raw), calibrated, check_exact=True)
    # the booster's own probabilities stay available, e.g. to compare before and after
    X = model.featurizer.transform_matrix(to_contract(raw, model.spec, with_label=False).columns)
    np.testing.assert_array_equal(loaded.uncalibrated_proba(X), tiny_model.predict_features(X))


def probs_of(model) -> list[str]:
    return [f"p_{c}" for c in model.classes]
