"""Splits, the LightGBM intent model, baselines and evaluation metrics (no I/O, no tracking)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipelines.core import keys

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SINGLE_THREAD_MAX_ROWS = 256


def split_sessions(
    sessions: pd.DataFrame, val_size: float, test_size: float, by: str = "journey", seed: int = 0
) -> pd.Series:
    """Assign each session to train, val or test, keeping every journey on one side.

    `by="journey"` assigns journeys at random (seeded hash of the journey id); `by="time"` puts the
    journeys that started last in test and the ones before them in val: train on the past,
    evaluate on the latest window.
    """
    if not (0 < val_size < 1 and 0 < test_size < 1 and val_size + test_size < 1):
        raise ValueError(
            f"split sizes must be in (0, 1) and sum below 1, got val={val_size}, test={test_size}"
        )
    journey = keys.journey_key(sessions)
    if by == "journey":
        ids = pd.Series(journey.unique())
        u = pd.Series(keys.unit_hash(ids, f"#{seed}"), index=ids.to_numpy())
    elif by == "time":
        if "started_at" not in sessions or sessions["started_at"].isna().all():
            raise ValueError("split.by=time needs a started_at column with values")
        first_start = sessions.groupby(journey.to_numpy())["started_at"].min()
        # rank journeys by start (ties broken by id) so the fractions hold exactly
        ranked = first_start.reset_index().sort_values(["started_at", "index"], na_position="first")
        u = pd.Series(
            (np.arange(len(ranked)) + 0.5) / len(ranked), index=ranked["index"].to_numpy()
        )
        u = 1.0 - u  # latest journeys get the smallest numbers, i.e. land in test
    else:
        raise ValueError(f"split.by must be 'journey' or 'time', got {by!r}")
    v = u.reindex(journey.to_numpy()).to_numpy()
    side = np.where(v < test_size, "test", np.where(v < test_size + val_size, "val", "train"))
    return pd.Series(side, index=sessions.index, name="split")


def lgb_params(model_cfg: Mapping, n_classes: int, threads: int, seed: int) -> dict:
    """LightGBM parameters for the class count, with threads and seed from the runtime config."""
    params = {k: v for k, v in model_cfg["params"].items()}
    if n_classes == 2:
        params.update(objective="binary", metric="binary_logloss")
    else:
        params.update(objective="multiclass", metric="multi_logloss", num_class=n_classes)
    params.update(num_threads=int(threads), seed=int(seed), deterministic=True, verbosity=-1)
    return params


def fit_lightgbm(
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_val: pd.DataFrame,
    y_val: np.ndarray,
    params: Mapping,
    categorical: Sequence[str],
    num_boost_round: int,
    early_stopping_rounds: int,
    callbacks: Sequence | None = None,
    curves: dict | None = None,
    log_every: int = 0,
) -> lgb.Booster:
    """Train with early stopping on the validation split; the booster keeps its best iteration.

    `curves`, when given, receives the training and validation loss of every round
    (`{"train": {"multi_logloss": [...]}, "val": {...}}`, LightGBM's `record_evaluation`);
    `log_every` > 0 logs a progress line every that many rounds."""
    train_set = lgb.Dataset(
        X_train, label=y_train, categorical_feature=list(categorical), free_raw_data=False
    )
    val_set = lgb.Dataset(
        X_val, label=y_val, reference=train_set, categorical_feature=list(categorical)
    )
    extra = list(callbacks or [])
    # the training set's loss comes from scores LightGBM keeps anyway: recording it costs little
    valid_sets, valid_names = [val_set], ["val"]
    if curves is not None:
        valid_sets, valid_names = [val_set, train_set], ["val", "train"]
        extra.append(lgb.record_evaluation(curves))
    if log_every > 0:
        extra.append(progress_callback(log_every, num_boost_round))
    booster = lgb.train(
        dict(params),
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=valid_sets,
        valid_names=valid_names,
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False), *extra],
    )
    return booster


def progress_callback(every: int, rounds: int):
    """A LightGBM callback logging the round and the losses every `every` rounds."""

    def _callback(env) -> None:
        done = env.iteration + 1
        if done % every:
            return
        losses = ", ".join(
            f"{name} {metric} {value:.5f}" for name, metric, value, _ in env.evaluation_result_list
        )
        log.info("boosting round %d of at most %d: %s", done, rounds, losses)

    _callback.order = 50
    return _callback


def feature_matrix(X: pd.DataFrame) -> np.ndarray:
    """The float matrix LightGBM sees for a feature frame: categories as their codes (missing or
    unseen: NaN), numbers as floats. Building it directly skips LightGBM's own pandas conversion,
    which costs more than the prediction on small frames."""
    out = np.empty(X.shape, dtype=np.float64)
    for j, (_, col) in enumerate(X.items()):
        if isinstance(col.dtype, pd.CategoricalDtype):
            codes = col.cat.codes.to_numpy()
            out[:, j] = np.where(codes < 0, np.nan, codes)
        else:
            out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def booster_proba(
    booster: lgb.Booster, X: pd.DataFrame | np.ndarray, n_classes: int, threads: int | None = None
) -> np.ndarray:
    """Class probabilities (n, n_classes) from a trained booster, binary included."""
    if isinstance(X, pd.DataFrame):
        X = feature_matrix(X)
    kwargs = {"num_iteration": booster.best_iteration or None}
    if threads is not None:
        # a few rows are predicted on one thread: LightGBM splits rows across threads, and for
        # a real-time call waking a second thread on a busy machine costs more than predicting
        kwargs["num_threads"] = 1 if len(X) <= SINGLE_THREAD_MAX_ROWS else int(threads)
    p = booster.predict(X, **kwargs)
    if n_classes == 2:
        p = np.column_stack([1 - p, p])
    return np.asarray(p, dtype=float)


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: the gap between confidence and accuracy, weighted over confidence bins."""
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)


def classification_metrics(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[str]
) -> dict[str, float]:
    """Accuracy, macro-F1, log-loss, ECE and per-class precision/recall/F1."""
    labels = np.arange(len(classes))
    pred = proba.argmax(axis=1)
    eps = 1e-15
    clipped = np.clip(proba, eps, 1)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "logloss": float(log_loss(y, clipped, labels=labels)),
        "ece": expected_calibration_error(y, proba),
    }
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    for i, c in enumerate(classes):
        out[f"precision_{c}"] = float(prec[i])
        out[f"recall_{c}"] = float(rec[i])
        out[f"f1_{c}"] = float(f1[i])
        out[f"support_{c}"] = float(support[i])
    return out


def normalised_confusion(y: np.ndarray, proba: np.ndarray, n_classes: int) -> np.ndarray:
    cm = confusion_matrix(y, proba.argmax(axis=1), labels=np.arange(n_classes)).astype(float)
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def majority_proba(y_train: np.ndarray, n_rows: int, n_classes: int) -> np.ndarray:
    """The majority-class baseline: always the most frequent training class, with the training class mix as probabilities."""
    freq = np.bincount(y_train, minlength=n_classes).astype(float)
    prior = freq / freq.sum()
    # predict the majority class; its probabilities are the class prior (a fair log-loss)
    return np.broadcast_to(prior, (n_rows, n_classes)).copy()


def fit_logistic_baseline(
    X: pd.DataFrame, y: np.ndarray, categorical: Sequence[str], seed: int, max_iter: int = 300
):
    """Multinomial logistic regression on the same features: one-hot categories, scaled numbers."""
    categorical = [c for c in categorical if c in X.columns]
    numeric = [c for c in X.columns if c not in categorical]
    pre = ColumnTransformer(
        [
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="__missing__"),
                    OneHotEncoder(handle_unknown="ignore", min_frequency=5),
                ),
                categorical,
            ),
            (
                "num",
                make_pipeline(
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                    StandardScaler(),
                ),
                numeric,
            ),
        ]
    )
    model = make_pipeline(pre, LogisticRegression(max_iter=max_iter, random_state=seed))
    model.fit(_for_sklearn(X, categorical), y)
    return model


def logistic_proba(model, X: pd.DataFrame, categorical: Sequence[str]) -> np.ndarray:
    categorical = [c for c in categorical if c in X.columns]
    return model.predict_proba(_for_sklearn(X, categorical))


def _for_sklearn(X: pd.DataFrame, categorical: Sequence[str]) -> pd.DataFrame:
    out = X.copy()
    for c in categorical:
        out[c] = out[c].astype(object).where(out[c].notna(), "__missing__").astype(str)
    return out
