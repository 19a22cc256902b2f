"""Calibrators recover known distortions, round-trip through JSON, and are chosen only when they
help out of fold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from pipelines.core.calibration import (
    KINDS,
    IsotonicCalibrator,
    TemperatureCalibrator,
    VectorCalibrator,
    calibrator_from_state,
    choose_calibration,
    fit_calibrator,
    log_loss,
)
from pipelines.core.modelling import expected_calibration_error


def softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_proba(n: int, k: int, seed: int, spread: float = 1.5) -> np.ndarray:
    return softmax(np.random.default_rng(seed).normal(0.0, spread, (n, k)))


def draw_labels(proba: np.ndarray, seed: int) -> np.ndarray:
    """One label per row, drawn from that row's probabilities."""
    u = np.random.default_rng(seed).random((len(proba), 1))
    return (proba.cumsum(axis=1) > u).argmax(axis=1)


def overconfident(n: int = 20_000, k: int = 4, power: float = 2.5, seed: int = 0):
    """(true probabilities p*, labels drawn from p*, the over-confident softmax(power * log p*))."""
    truth = random_proba(n, k, seed)
    y = draw_labels(truth, seed + 1)
    return truth, y, softmax(power * np.log(truth))


@pytest.fixture(scope="module")
def four_classes():
    return overconfident()


def test_temperature_recovers_known_overconfidence(four_classes):
    truth, y, distorted = four_classes
    calibrator = fit_calibrator("temperature", distorted, y, seed=0)
    assert isinstance(calibrator, TemperatureCalibrator)
    assert calibrator.temperature == pytest.approx(2.5, rel=0.05)
    calibrated = log_loss(y, calibrator.apply(distorted))
    assert calibrated < log_loss(y, distorted) - 0.1
    # the truth is one of the fitted family (T = 2.5), so the in-sample optimum is at most its loss
    assert log_loss(y, truth) - 0.005 < calibrated <= log_loss(y, truth) + 1e-9


def test_vector_recovers_known_scales_and_biases():
    scale = np.array([0.5, 0.8, 1.3, 0.7])
    bias = np.array([0.0, 0.4, -0.3, 0.2])
    predicted = random_proba(20_000, 4, seed=3)
    truth = softmax(scale * np.log(predicted) + bias)
    y = draw_labels(truth, seed=4)
    calibrator = fit_calibrator("vector", predicted, y, seed=0)
    assert isinstance(calibrator, VectorCalibrator)
    np.testing.assert_allclose(calibrator.scale, scale, rtol=0.1)
    np.testing.assert_allclose(calibrator.bias, bias, atol=0.15)
    assert calibrator.bias[0] == 0.0
    calibrated = log_loss(y, calibrator.apply(predicted))
    assert calibrated < log_loss(y, predicted)
    assert calibrated <= log_loss(y, truth) + 1e-3


def test_isotonic_maps_each_class_as_sklearn_predicts(four_classes):
    _, y, distorted = four_classes
    calibrator = fit_calibrator("isotonic", distorted, y, seed=0)
    assert isinstance(calibrator, IsotonicCalibrator)
    # new rows, the fitted range's ends, values beyond them, and exact 0 and 1
    new = np.vstack([random_proba(2_000, 4, seed=9, spread=3.0), np.eye(4), np.full((1, 4), 0.25)])
    mapped = calibrator.one_vs_rest(new)
    for k in range(4):
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
        iso.fit(distorted[:, k], (y == k).astype(float))
        np.testing.assert_array_equal(mapped[:, k], iso.predict(new[:, k]))
        np.testing.assert_array_equal(
            calibrator.one_vs_rest(distorted)[:, k], iso.predict(distorted[:, k])
        )
    np.testing.assert_array_equal(calibrator.apply(new), mapped / mapped.sum(axis=1, keepdims=True))


def test_isotonic_lowers_ece_of_overconfident_input(four_classes):
    _, y, distorted = four_classes
    calibrator = fit_calibrator("isotonic", distorted[:10_000], y[:10_000], seed=0)
    before = expected_calibration_error(y[10_000:], distorted[10_000:])
    after = expected_calibration_error(y[10_000:], calibrator.apply(distorted[10_000:]))
    assert before > 0.1
    assert after < before / 4


def test_isotonic_row_mapped_to_zeros_keeps_its_input():
    # each class maps [0, 0.5] to 0, then rises linearly to 1 at 1
    calibrator = IsotonicCalibrator(((0.5, 1.0), (0.5, 1.0)), ((0.0, 1.0), (0.0, 1.0)))
    out = calibrator.apply(np.array([[0.1, 0.9], [0.9, 0.6], [0.2, 0.3], [0.0, 0.0]]))
    expected = [[0.0, 1.0], [0.8, 0.2], [0.4, 0.6], [0.5, 0.5]]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trips_through_json_bit_for_bit(kind, four_classes):
    _, y, distorted = four_classes
    calibrator = fit_calibrator(kind, distorted[:5_000], y[:5_000], seed=0)
    state = json.loads(json.dumps(calibrator.to_state()))
    rebuilt = calibrator_from_state(state)
    assert rebuilt == calibrator
    assert rebuilt.kind == kind
    out = calibrator.apply(distorted)
    assert rebuilt.apply(distorted).tobytes() == out.tobytes()


@pytest.mark.parametrize("kind", KINDS)
def test_binary_output_is_a_probability_even_for_exact_zeros_and_ones(kind):
    truth, y, distorted = overconfident(n=3_000, k=2, seed=5)
    # exact 0 and 1 in the fitted rows too
    distorted[:50] = np.round(distorted[:50])
    calibrator = fit_calibrator(kind, distorted, y, seed=0)
    assert calibrator.n_classes == 2
    edge = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1e-300, 1.0]])
    out = calibrator.apply(np.vstack([edge, distorted]))
    assert np.isfinite(out).all()
    assert ((out >= 0) & (out <= 1)).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert log_loss(y, calibrator.apply(distorted)) < log_loss(y, distorted)


def test_calibrated_input_keeps_no_calibration():
    truth, y, _ = overconfident(n=10_000, seed=7)
    choice = choose_calibration(KINDS, truth, y, seed=0, min_gain=1e-3)
    # out of fold, a calibrator fitted to the truth can only match it up to noise
    for kind in KINDS:
        assert choice.logloss[kind] > choice.logloss["none"] * (1 - 1e-3)
    assert (choice.kind, choice.calibrator) == ("none", None)
    assert choice.reason.startswith("no calibration lowers validation log-loss by more than 0.10%")


def test_overconfident_input_is_calibrated_out_of_fold():
    truth, y, distorted = overconfident(n=10_000, seed=8)
    choice = choose_calibration(["temperature", "isotonic"], distorted, y, seed=0)
    assert choice.kind in ("temperature", "isotonic")
    assert set(choice.logloss) == {"none", "temperature", "isotonic"}
    assert choice.logloss[choice.kind] == min(choice.logloss.values())
    assert choice.logloss[choice.kind] < choice.logloss["none"] - 0.1
    assert choice.logloss["none"] == log_loss(y, distorted)
    assert choice.folds == 5
    assert choice.reason.startswith(f"{choice.kind} lowers validation log-loss")
    assert "out-of-fold, 5 folds" in choice.reason
    # the chosen calibrator is refitted on all rows
    assert choice.calibrator == fit_calibrator(choice.kind, distorted, y, seed=0)


def test_unknown_kind_is_refused_by_name():
    proba = random_proba(200, 3, seed=0)
    y = draw_labels(proba, seed=1)
    for call in (
        lambda: fit_calibrator("platt", proba, y, seed=0),
        lambda: choose_calibration(["temperature", "platt"], proba, y, seed=0),
        lambda: calibrator_from_state({"kind": "platt"}),
    ):
        with pytest.raises(ValueError, match="'platt'.*temperature, vector, isotonic"):
            call()


def test_tiny_validation_set_is_not_calibrated():
    proba = random_proba(30, 3, seed=0)
    y = draw_labels(proba, seed=1)
    choice = choose_calibration(KINDS, proba, y, seed=0)
    assert (choice.kind, choice.calibrator, choice.folds) == ("none", None, 0)
    assert choice.reason == "no calibration: 30 validation rows, fewer than the 100 needed"
    assert choice.logloss == {"none": log_loss(y, proba)}


def test_class_with_one_row_is_not_calibrated():
    _, y, distorted = overconfident(n=500, k=3, seed=2)
    y = np.where(y == 2, 0, y)
    y[17] = 2
    choice = choose_calibration(KINDS, distorted, y, seed=0)
    assert choice.kind == "none"
    assert "class 2 has 1 validation rows" in choice.reason


def test_rare_class_lowers_the_number_of_folds():
    _, y, distorted = overconfident(n=2_000, k=3, seed=2)
    y = np.where(y == 2, 0, y)
    y[[3, 30, 300]] = 2
    choice = choose_calibration(["temperature"], distorted, y, seed=0)
    assert choice.folds == 3
    assert "3 folds, not 5: class 2 has 3 validation rows" in choice.reason


def test_apply_refuses_a_matrix_of_another_width():
    calibrator = TemperatureCalibrator(2.0, 3)
    with pytest.raises(ValueError, match="4 columns, the calibrator was fitted on 3 classes"):
        calibrator.apply(np.full((2, 4), 0.25))
