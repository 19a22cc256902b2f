"""Training, whatever engine runs it: what a run produces (`TrainResult`), the featurizer it fits,
the early-stopped booster, and the evaluation every trained model gets.

The local and the Dask engine both end in `result_of`, so a model is logged, registered and
judged the same way wherever it was trained.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.core import cv, drift, explain, keys, metrics, modelling
from pipelines.core.calibration import choose_calibration
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
    cv_folds: list[dict] = field(default_factory=list)  # each fold's rows and metrics (see cv)
    # per boosting round: {"train": {metric: [...]}, "val": {metric: [...]}}
    learning_curves: dict = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)  # the splits as datasets (see split_inputs)
    calibration: dict = field(default_factory=dict)  # what calibration was tried and kept


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
    curves: dict | None = None,
):
    """LightGBM on the "train" features, stopped early on the "val" ones (`model` config: round
    cap, patience, progress lines): the model of local training, the round search of Dask
    training. `curves` receives each round's training and validation loss."""
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
        curves=curves,
        log_every=int(model_cfg.get("log_every", 0)),
    )


def _evaluate(cfg, model, X, y, test_ids, test_raw, timings) -> dict:
    """Metrics, figures, the test frame and the drift reference of a trained model.

    `X` and `y` hold the "train", "val" and "test" features and class codes; the training rows
    feed the baselines and the drift profile (a sample of them is enough). `test_raw` is the test
    split as it came in: when it carries the generator's Bayes-optimal posterior, the model is
    also measured against it.
    """
    classes = list(model.classes)
    # the booster's own validation loss: a calibrator fitted on those rows would flatter it
    proba = {"val": model.uncalibrated_proba(X["val"]), "test": model.predict_features(X["test"])}
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
    if model.calibrator is not None:  # the same test rows before calibration, to compare
        raw = model.uncalibrated_proba(X["test"])
        before = modelling.classification_metrics(y["test"], raw, classes)
        metrics.update({f"test/uncalibrated/{k}": before[k] for k in SUMMARY_METRICS})
        figures["reliability_uncalibrated"] = (y["test"], raw, classes)
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


def evaluation_metrics(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict:
    """Every metric a model is judged on for one set of rows: classification (accuracy, F1,
    log-loss, ECE, per class), ranking (ROC-AUC, average precision, lift, gain) and Brier."""
    return {
        **modelling.classification_metrics(y, proba, classes),
        **metrics.ranking_metrics(y, proba, classes),
    }


SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def split_inputs(
    canon: pd.DataFrame, sides: np.ndarray, hashes: np.ndarray, dataset: str, source: str
) -> list[dict]:
    """Each split of the canonical rows (`sides`: each row's split) as a dataset record for
    lineage: name, context, digest (`keys.data_fingerprint` of its rows, from the rows'
    `hashes`), row count, source and columns."""
    columns = {c: str(t) for c, t in canon.dtypes.items()}
    return [
        {
            "name": f"{dataset}-{side}",
            "context": SPLIT_CONTEXTS[side],
            "split": side,
            "digest": keys.fingerprint_of_rows(canon.columns, hashes[sides == side]),
            "rows": int((sides == side).sum()),
            "source": source,
            "columns": columns,
        }
        for side in modelling.SPLITS
    ]


def calibrate(cfg: Mapping, model: IntentModel, X_val, y_val: np.ndarray) -> dict:
    """Fit the `eval.calibration` kinds on the validation rows and give `model` the one that
    lowers the out-of-fold validation log-loss (`calibration.choose_calibration`), or none.
    Returns what was tried and decided: kind, reason, out-of-fold log-loss per kind."""
    settings = cfg.get("eval", {}).get("calibration") or {}
    if not settings.get("methods"):  # off (or a config from before calibration existed)
        return {}
    model.calibrator = None
    choice = choose_calibration(
        [str(m) for m in settings["methods"]],
        model.predict_features(X_val),
        y_val,
        int(cfg["runtime"]["seed"]),
        folds=int(settings["folds"]),
        min_gain=float(settings["min_gain"]),
    )
    model.calibrator = choice.calibrator
    return {
        "kind": choice.kind,
        "reason": choice.reason,
        "folds": choice.folds,
        "logloss": dict(choice.logloss),
    }


def _fold_sides(
    sessions: pd.DataFrame, codes: np.ndarray, fold: cv.Fold, val_size: float, seed: int
) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    """A fold's rows and class codes as train, val (a seeded `val_size` share of its training
    journeys, for early stopping) and test (the held-out fold)."""
    part = sessions.iloc[fold.train].reset_index(drop=True)
    journey = keys.journey_key(part)
    is_val = keys.unit_hash(journey, f"#cv{seed}-{fold.repeat}-{fold.fold}") < val_size
    if is_val.all() or not is_val.any():  # a tiny fold: early-stop on one journey's rows
        is_val = journey.to_numpy() == journey.iloc[0]
    rows = {
        "train": part[~is_val],
        "val": part[is_val],
        "test": sessions.iloc[fold.test].reset_index(drop=True),
    }
    y = {
        "train": codes[fold.train][~is_val],
        "val": codes[fold.train][is_val],
        "test": codes[fold.test],
    }
    return rows, y


def cross_validate(
    cfg: Mapping,
    sessions: pd.DataFrame,
    codes: np.ndarray,
    folds: list[cv.Fold],
    make: Callable[[], SessionFeaturizer],
    spec: DatasetSpec,
    callbacks: list | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Cross-validation of the training recipe over `folds` (`cv.make_folds` of `sessions`,
    canonical development rows with class codes `codes`); returns the `cv/<metric>/<mean|std|
    ci_low|ci_high>` summary and each fold's rows and metrics.

    Each fold refits everything the final model fits: the featurizer (`make()` gives a fresh one)
    on the fold's training journeys, and LightGBM early-stopped on a seeded `split.val_size` share
    of them; the held-out fold is scored once."""
    seed = int(cfg["runtime"]["seed"])
    classes = list(spec.classes)
    threads = int(cfg["runtime"]["threads"])
    params = modelling.lgb_params(cfg["model"], len(classes), threads, seed)
    val_size = float(cfg["split"]["val_size"])
    done = []
    for fold in folds:
        rows, y = _fold_sides(sessions, codes, fold, val_size, seed)
        featurizer = make()
        featurizer.fit(rows["train"])
        X = {side: featurizer.transform(frame) for side, frame in rows.items()}
        booster = fit_early_stopped(cfg["model"], params, featurizer, X, y, callbacks)
        model = IntentModel(spec, featurizer, booster, threads=threads)
        calibrate(cfg, model, X["val"], y["val"])
        scores = evaluation_metrics(y["test"], model.predict_features(X["test"]), classes)
        scores["best_iteration"] = float(booster.best_iteration or booster.current_iteration())
        done.append(
            {
                "name": fold.name,
                "repeat": fold.repeat,
                "fold": fold.fold,
                "train_rows": len(fold.train),
                "test_rows": len(fold.test),
                "metrics": scores,
            }
        )
    summary = cv.summarise(
        [f["metrics"] for f in done],
        float(np.mean([f["train_rows"] for f in done])),
        float(np.mean([f["test_rows"] for f in done])),
    )
    return {f"cv/{key}": value for key, value in summary.items()}, done


def _model_metrics(model: IntentModel, y: Mapping, proba: Mapping) -> dict[str, float]:
    """The model's test metrics, its validation log-loss and its boosting rounds."""
    classes = list(model.classes)
    metrics = {
        f"test/{key}": value
        for key, value in evaluation_metrics(y["test"], proba["test"], classes).items()
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
        "ranking": (y_test, proba_test, classes),
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
    with timed(timings, "calibrate"):
        calibration = calibrate(cfg, model, X["val"], y["val"])
    with timed(timings, "evaluate"):
        evaluation = _evaluate(cfg, model, X, y, test["session_id"].to_numpy(), test_raw, timings)
    metrics = {**evaluation.pop("metrics"), **extra_metrics}
    metrics.update(
        {f"calibration/oof_logloss/{k}": v for k, v in calibration.get("logloss", {}).items()}
    )
    return TrainResult(
        **evaluation,
        metrics=metrics,
        model=model,
        test_raw=test_raw,
        test_labels=test[LABEL].reset_index(drop=True),
        test_fingerprint=keys.data_fingerprint(test),
        timings=timings,
        calibration=calibration,
        **fields,
    )
