"""Ranking metrics of predicted intent probabilities: one-vs-rest ROC-AUC and average precision,
the Brier score, top-2 accuracy, and lift and cumulative gain at the top of each intent's ranking,
with the curves the ranking plots draw (see `reports.ranking_plots`).

Every function takes `y` (class codes 0..K-1), `proba` (one row per session, one column per class,
rows summing to 1) and `classes` (the K class names, K >= 2), and is pure.

Ranking by a class's probability: rows are sorted by descending probability, and rows with equal
probability keep their input order (a stable sort), so the same input always gives the same top
rows. The top q of n rows are the first ceil(q * n) rows of that ranking (q * n is rounded to
9 decimals first, so 7% of 100 rows is 7 rows and not the 8 that the floating-point product
7.000000000000001 would give).

A class is *usable* for ROC-AUC and average precision when it occurs in `y` and is not all of
`y`; an unusable class gets NaN for its own keys instead of a warning, and is left out of the
macro averages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

TOP_SHARES = (0.05, 0.10, 0.20)  # the shares of sessions targeted that lift and gain report

Curves = dict[str, tuple[np.ndarray, np.ndarray]]


def ranking_metrics(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """ROC-AUC and average precision per class and macro, the Brier score, top-2 accuracy
    (three classes or more), and lift and gain at the top 5/10/20% of each class's ranking.

    Two classes add `roc_auc` and `avg_precision` (those of `classes[1]`, the positive class) and
    `brier_positive` (the binary Brier score of the positive class).
    """
    y, proba = _checked(y, proba, classes)
    out: dict[str, float] = {}
    for j, c in enumerate(classes):
        out[f"roc_auc_{c}"], out[f"avg_precision_{c}"] = _separation(y == j, proba[:, j])
    for name in ("roc_auc", "avg_precision"):
        values = [out[f"{name}_{c}"] for c in classes if not np.isnan(out[f"{name}_{c}"])]
        out[f"{name}_macro"] = float(np.mean(values)) if values else float("nan")
    out["brier"] = brier(y, proba)
    if len(classes) == 2:
        out["roc_auc"] = out[f"roc_auc_{classes[1]}"]
        out["avg_precision"] = out[f"avg_precision_{classes[1]}"]
        out["brier_positive"] = float(
            brier_score_loss((y == 1).astype(int), proba[:, 1], pos_label=1)
        )
    else:
        out["top2_accuracy"] = top2_accuracy(y, proba)
    for j, c in enumerate(classes):
        gain, lift = _gain_and_lift(y == j, proba[:, j], np.asarray(TOP_SHARES))
        for q, g, lf in zip(TOP_SHARES, gain, lift, strict=True):
            out[f"gain_{c}_at_{round(q * 100)}"] = float(g)
            out[f"lift_{c}_at_{round(q * 100)}"] = float(lf)
    return out


def _checked(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """`y` as integers and `proba` as floats, after checking that they fit `classes`."""
    k = len(classes)
    if k < 2:
        raise ValueError(f"classes must name at least two classes, got {list(classes)}")
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or proba.shape[1] != k:
        raise ValueError(f"proba must have one column per class ({k}), got shape {proba.shape}")
    if y.shape != (proba.shape[0],):
        raise ValueError(
            f"y must have one label per row of proba ({proba.shape[0]}), got {y.shape}"
        )
    if len(y) == 0:
        raise ValueError("y and proba must have at least one row")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
        raise ValueError(f"y must hold class codes 0..{k - 1}, got values {np.unique(y)[:10]}")
    return y.astype(np.int64), proba


def _separation(hit: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """One-vs-rest ROC-AUC and average precision of one class, NaN for both when the class is
    absent or is every row (neither is defined without positives and negatives)."""
    if hit.all() or not hit.any():
        return float("nan"), float("nan")
    return float(roc_auc_score(hit, score)), float(average_precision_score(hit, score))


def brier(y: np.ndarray, proba: np.ndarray) -> float:
    """Multi-class Brier score: the mean over rows of the squared distance to the one-hot label
    (0 is perfect, 2 is sure and wrong)."""
    onehot = np.eye(proba.shape[1])[y]
    return float(((proba - onehot) ** 2).sum(axis=1).mean())


def top2_accuracy(y: np.ndarray, proba: np.ndarray) -> float:
    """Share of rows whose true class is among the two most probable; of classes with equal
    probability, the earlier in `classes` ranks higher."""
    top2 = np.argsort(-proba, axis=1, kind="stable")[:, :2]
    return float((top2 == y[:, None]).any(axis=1).mean())


def _rows_in_top(shares: np.ndarray, n: int) -> np.ndarray:
    """How many of n rows the top `shares` hold: ceil(share * n), share * n rounded to 9 decimals
    first so that float error adds no row."""
    return np.clip(np.ceil(np.round(np.asarray(shares) * n, 9)).astype(int), 0, n)


def _gain_and_lift(
    hit: np.ndarray, score: np.ndarray, shares: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative gain and lift of one class at each share of rows targeted, ranked by `score`.

    Gain is the share of the class's rows found in the top rows; lift is the precision of the top
    rows over the class's base rate, i.e. gain / share when share * n is a whole number of rows
    (lift uses the rows actually taken, so a perfect ranker never exceeds 1 / base rate). Both are
    NaN when the class has no rows; lift is NaN at a share of no rows.
    """
    n, positives = len(hit), int(hit.sum())
    k = _rows_in_top(shares, n)
    if positives == 0:
        nan = np.full(len(k), np.nan)
        return nan, nan.copy()
    order = np.argsort(-score, kind="stable")
    found = np.concatenate([[0], np.cumsum(hit[order])])[k]
    gain = found / positives
    lift = np.where(k > 0, gain * n / np.maximum(k, 1), np.nan)  # no rows taken: no precision
    return gain, lift


def roc_curves(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> Curves:
    """Per class, the one-vs-rest ROC curve (false positive rate, true positive rate), from (0, 0)
    to (1, 1); classes that are absent from `y` or are all of it are left out."""
    y, proba = _checked(y, proba, classes)
    curves = {}
    for j, c in enumerate(classes):
        hit = y == j
        if hit.any() and not hit.all():
            fpr, tpr, _ = roc_curve(hit, proba[:, j])
            curves[c] = (fpr, tpr)
    return curves


def pr_curves(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> Curves:
    """Per class, the one-vs-rest precision-recall curve (recall, precision), recall rising from
    0 to 1; classes absent from `y` are left out."""
    y, proba = _checked(y, proba, classes)
    curves = {}
    for j, c in enumerate(classes):
        hit = y == j
        if hit.any():
            precision, recall, _ = precision_recall_curve(hit, proba[:, j])
            curves[c] = (recall[::-1], precision[::-1])
    return curves


def gain_curves(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[str], points: int = 101
) -> Curves:
    """Per class, cumulative gain (share of targeted sessions, share of the class's sessions found)
    at `points` evenly spaced shares from 0 to 1: from (0, 0) to (1, 1), never falling; classes
    absent from `y` are left out."""
    y, proba = _checked(y, proba, classes)
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    shares = np.linspace(0.0, 1.0, points)
    curves = {}
    for j, c in enumerate(classes):
        if (y == j).any():
            curves[c] = (shares, _gain_and_lift(y == j, proba[:, j], shares)[0])
    return curves


def lift_curves(
    y: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    points: int = 100,
    start: float = 0.01,
) -> Curves:
    """Per class, lift (share of sessions targeted, lift) at `points` evenly spaced shares from
    `start` to 1, where it is 1; classes absent from `y` are left out. The smallest shares are
    left out by `start` because a handful of rows makes lift noisy there."""
    y, proba = _checked(y, proba, classes)
    if not 0 < start < 1 or points < 2:
        raise ValueError(f"start must be in (0, 1) and points at least 2, got {start}, {points}")
    shares = np.linspace(start, 1.0, points)
    curves = {}
    for j, c in enumerate(classes):
        if (y == j).any():
            curves[c] = (shares, _gain_and_lift(y == j, proba[:, j], shares)[1])
    return curves
