"""Population stability: feature profiles of a training set and the PSI of new data against them.

A profile holds, per feature, bin edges (deciles of the training values, numeric features) or
level shares (categorical features), plus the share of missing values. It is logged with every
model (`drift_reference.json`), so a later job can measure how far new data has moved from what
the champion learned on, without the training data itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

EPS = 1e-4
MISSING = "__missing__"


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return (counts / total).tolist() if total else [0.0] * len(counts)


def profile(features: pd.DataFrame, bins: int = 10) -> dict:
    """Bin edges or levels, with shares, for every column of a feature frame."""
    out: dict[str, dict] = {}
    for col in features.columns:
        s = features[col]
        if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object:
            values = s.astype(object).where(s.notna(), MISSING)
            counts = values.value_counts()
            out[col] = {
                "kind": "categorical",
                "levels": [str(v) for v in counts.index],
                "shares": _shares(counts.to_numpy(float)),
            }
        else:
            v = s.astype(float).to_numpy()
            finite = v[np.isfinite(v)]
            edges = (
                np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
                if finite.size
                else np.array([])
            )
            out[col] = {
                "kind": "numeric",
                "edges": edges.tolist(),
                "shares": _shares(_numeric_counts(v, edges)),
            }
    return out


def _numeric_counts(v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin (len(edges) + 1 bins), then one more for missing values."""
    finite = np.isfinite(v)
    idx = np.searchsorted(edges, v[finite], side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    return np.append(counts, float((~finite).sum()))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two share vectors (empty bins smoothed by EPS)."""
    e = np.clip(np.asarray(expected, float), EPS, None)
    a = np.clip(np.asarray(actual, float), EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def feature_psi(reference: Mapping[str, Mapping], features: pd.DataFrame) -> dict[str, float]:
    """PSI of every profiled feature of `features` against the reference profile."""
    out: dict[str, float] = {}
    for col, ref in reference.items():
        if col not in features.columns:
            continue
        s = features[col]
        if ref["kind"] == "categorical":
            values = s.astype(object).where(s.notna(), MISSING).astype(str)
            counts = values.value_counts()
            levels = list(ref["levels"])
            new_levels = [lv for lv in counts.index if lv not in levels]
            expected = list(ref["shares"]) + [0.0] * len(new_levels)
            actual = [counts.get(lv, 0) for lv in levels + new_levels]
            out[col] = psi(np.asarray(expected), np.asarray(_shares(np.asarray(actual, float))))
        else:
            counts = _numeric_counts(s.astype(float).to_numpy(), np.asarray(ref["edges"], float))
            out[col] = psi(np.asarray(ref["shares"]), np.asarray(_shares(counts)))
    return out


def intent_mix(intents: pd.Series, classes: list[str]) -> list[float]:
    counts = intents.astype(str).value_counts()
    return _shares(np.asarray([counts.get(c, 0) for c in classes], float))
