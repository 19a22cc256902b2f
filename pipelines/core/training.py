"""Training, whatever engine runs it: what a run produces (`TrainResult`), the featurizer it fits,
the early-stopped booster, and the evaluation every trained model gets.

The local and the Dask engine both end in `result_of`, so a model is logged, registered and
judged the same way wherever it was trained.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.core import drift, explain, keys, modelling
from pipelines.core.contract import LABEL, DatasetSpec
from pipelines.core.features import SessionFeaturizer
from pipelines.core.gate import TrainingSpan
from pipelines.core.scorer import IntentModel


@dataclass
class TrainResult:
    """What a training run produced; `main` logs it."""

    metrics: dict[str, float]
    model: IntentModel
    rejects: pd.DataFrame  # rows that broke the contract: the user's columns, reason, source row
    fingerprint: str
    figures: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    input_example: pd.DataFrame | None = None
    # test rows with labels, model and reference probabilities
    test_frame: pd.DataFrame | None = None
    test_raw: pd.DataFrame | None = None  # the test split as it came in (the user's columns)
    test_labels: pd.Series | None = None
    test_fingerprint: str = ""
    drift_reference: dict = field(
        default_factory=dict
    )  # feature profile and intent mix (see drift)
    span: TrainingSpan | None = None  # the journeys it trained and early-stopped on (see gate)


@contextmanager
def timed(timings: dict, stage: str):
    """Add the seconds the block takes to `timings[stage]`."""
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def make_featurizer(
    spec: DatasetSpec, features_cfg: Mapping, stores: list[list[float]] | None
) -> SessionFeaturizer:
    """The unfitted featurizer for the dataset, the `features` config and the store coordinates."""
    return SessionFeaturizer(
        page_types=list(spec.page_counts),
        extra_numeric=list(spec.extra_numeric),
        extra_categorical=list(spec.extra_categorical),
        stores=stores,
        near_store_km=float(features_cfg["near_store_km"]),
        history=bool(features_cfg["history"]),
        min_category_count=int(features_cfg["min_category_count"]),
    )


def check_splits(sizes: Mapping[str, int], source: str) -> None:
    """Refuse a split side without rows."""
    for side in modelling.SPLITS:
        if not sizes.get(side):
            raise ValueError(
                f"{source}: the {side} split is empty; use more journeys or larger split sizes"
            )


def reference_posterior(cfg: Mapping, test_raw: pd.DataFrame, classes: list[str]):
    """The generator's Bayes-optimal posterior of the test rows, when the data carries it."""
    prefix = cfg["data"]["reference_posterior_prefix"]
    ref_cols = [f"{prefix}{c}" for c in classes] if prefix else []
    if ref_cols and all(c in test_raw.columns for c in ref_cols):
        return test_raw[ref_cols].to_numpy(dtype=float)
    return None


def fit_early_stopped(
    model_cfg: Mapping,
    params: Mapping,
    featurizer: SessionFeaturizer,
    X: Mapping[str, pd.DataFrame],
    y: Mapping[str, np.ndarray],
    callbacks: list | None = None,
):
    """LightGBM on the "train" features, stopped early on the "val" ones (`model` config: round
    cap and patience): the model of local training, the round search of Dask training."""
    return modelling.fit_lightgbm(
        X["train"],
        y["train"],
        X["val"],
        y["val"],
        params,
        featurizer.categorical_features_,
        num_boost_round=int(model_cfg["num_boost_round"]),
        early_stopping_rounds=int(model_cfg["early_stopping_rounds"]),
        callbacks=callbacks,
    )


def _evaluate(cfg, model, X, y, test_ids, test_raw, timings) -> dict:
    """Metrics, figures, the test frame and the drift reference of a trained model.

    `X` and `y` hold the "train", "val" and "test" features and class codes; the training rows
    feed the baselines and the drift profile (a sample of them is enough). `test_raw` is the test
    split as it came in: when it carries the generator's Bayes-optimal posterior, the model is
    also measured against it.
    """
    classes = list(model.classes)
    proba = {side: model.predict_features(X[side]) for side in ("val", "test")}
    metrics = _model_metrics(model, y, proba)
    test_frame = pd.DataFrame({"session_id": test_ids, "label": y["test"]})
    for j, c in enumerate(classes):
        test_frame[f"p_{c}"] = proba["test"][:, j]
    if cfg["baselines"]:
        with timed(timings, "baseline_logreg"):
            metrics.update(baseline_metrics(cfg, model, X, y))
    reference = reference_posterior(cfg, test_raw, classes)
    if reference is not None:
        metrics.update(bayes_metrics(metrics, y["test"], reference, classes))
        for j, c in enumerate(classes):
            test_frame[f"bayes_p_{c}"] = reference[:, j]
    predicted = pd.Series(np.asarray(classes, dtype=object)[proba["test"].argmax(axis=1)])
    figures = _figures(model, y["test"], proba["test"])
    if int(cfg["drivers_rows"]) > 0:
        with timed(timings, "drivers"):
            figures["drivers"] = drivers_by_intent(
                model, X["test"], proba["test"], int(cfg["drivers_rows"]), cfg["runtime"]["seed"]
            )
    return {
        "metrics": metrics,
        "figures": figures,
        "test_frame": test_frame,
        "drift_reference": {
            "classes": classes,
            "features": drift.profile(X["train"]),
            "intent_mix": drift.intent_mix(predicted, classes),
        },
    }


SUMMARY_METRICS = ("accuracy", "macro_f1", "logloss", "ece")


def _model_metrics(model: IntentModel, y: Mapping, proba: Mapping) -> dict[str, float]:
    """The model's test metrics, its validation log-loss and its boosting rounds."""
    classes = list(model.classes)
    metrics = {
        f"test/{key}": value
        for key, value in modelling.classification_metrics(
            y["test"], proba["test"], classes
        ).items()
    }
    val = modelling.classification_metrics(y["val"], proba["val"], classes)
    metrics["val/logloss"] = val["logloss"]
    booster = model.booster
    metrics["train/best_iteration"] = float(booster.best_iteration or booster.current_iteration())
    return metrics


def _figures(model: IntentModel, y_test: np.ndarray, proba_test: np.ndarray) -> dict:
    """What the report's figures are drawn from (see `reports.plots`)."""
    classes = list(model.classes)
    return {
        "confusion": (modelling.normalised_confusion(y_test, proba_test, len(classes)), classes),
        "reliability": (y_test, proba_test, classes),
        "importance": (
            model.featurizer.feature_names_,
            model.booster.feature_importance(importance_type="gain"),
        ),
    }


def drivers_by_intent(
    model: IntentModel, X: pd.DataFrame, proba: np.ndarray, rows: int, seed: int
) -> dict[str, dict[str, float]]:
    """What drives each intent (`explain.driver_summary`) on a seeded sample of at most `rows`
    test rows (exact contributions cost far more than predictions), keyed by intent name."""
    rng = np.random.default_rng(int(seed))
    take = np.sort(rng.choice(len(X), size=min(rows, len(X)), replace=False))
    matrix = modelling.feature_matrix(X.iloc[take])
    contrib = explain.contributions(model.booster, matrix, len(model.classes), model.threads)
    summary = explain.driver_summary(
        contrib, proba[take].argmax(axis=1), model.featurizer.feature_names_
    )
    return {model.classes[c]: drivers for c, drivers in summary.items()}


def baseline_metrics(cfg: Mapping, model: IntentModel, X: Mapping, y: Mapping) -> dict[str, float]:
    """The majority class and a logistic regression (on at most `logreg_max_rows` training rows,
    a seeded sample) on the same test rows: what the model has to beat."""
    classes = list(model.classes)
    categorical = model.featurizer.categorical_features_
    majority = modelling.majority_proba(y["train"], len(y["test"]), len(classes))
    rng = np.random.default_rng(int(cfg["runtime"]["seed"]))
    n_train = len(y["train"])
    take = np.sort(
        rng.choice(n_train, size=min(int(cfg["logreg_max_rows"]), n_train), replace=False)
    )
    seed = int(cfg["runtime"]["seed"])
    logreg = modelling.fit_logistic_baseline(
        X["train"].iloc[take], y["train"][take], categorical, seed
    )
    metrics = {}
    for name, proba in (
        ("majority", majority),
        ("logreg", modelling.logistic_proba(logreg, X["test"], categorical)),
    ):
        scores = modelling.classification_metrics(y["test"], proba, classes)
        metrics.update({f"test/{name}/{key}": scores[key] for key in SUMMARY_METRICS})
    return metrics


def bayes_metrics(
    metrics: Mapping[str, float], y_test: np.ndarray, reference: np.ndarray, classes: Sequence[str]
) -> dict[str, float]:
    """The Bayes-optimal posterior's metrics on the test rows, and the model's ratio to them."""
    bayes = modelling.classification_metrics(y_test, reference, list(classes))
    out = {f"test/bayes/{key}": bayes[key] for key in SUMMARY_METRICS}
    for key in ("accuracy", "macro_f1", "logloss"):
        out[f"test/ratio_to_bayes/{key}"] = metrics[f"test/{key}"] / bayes[key]
    return out


def result_of(
    cfg: Mapping,
    model: IntentModel,
    X: Mapping[str, pd.DataFrame],
    y: Mapping[str, np.ndarray],
    test: pd.DataFrame,
    test_raw: pd.DataFrame,
    timings: dict,
    *,
    extra_metrics: Mapping[str, float],
    **fields,
) -> TrainResult:
    """The `TrainResult` of a trained model: evaluated on the test split, plus `extra_metrics`
    (the engine's data counts).

    `test` is the canonical test split (session id and label); `test_raw` the same rows as they
    came in. `fields` are the remaining `TrainResult` fields the engine knows (rejects,
    fingerprint, input example, span, timings).
    """
    with timed(timings, "evaluate"):
        evaluation = _evaluate(cfg, model, X, y, test["session_id"].to_numpy(), test_raw, timings)
    metrics = {**evaluation.pop("metrics"), **extra_metrics}
    return TrainResult(
        **evaluation,
        metrics=metrics,
        model=model,
        test_raw=test_raw,
        test_labels=test[LABEL].reset_index(drop=True),
        test_fingerprint=keys.data_fingerprint(test),
        timings=timings,
        **fields,
    )
