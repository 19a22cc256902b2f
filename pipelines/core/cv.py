"""Cross-validation: repeated folds of whole journeys, and intervals for each metric.

A single random test split gives one number per metric, and on a few thousand journeys the seed
alone moves it by more than most differences people tune for. Cross-validation scores every
development row once per repeat and reports each metric's mean, standard deviation and a 95%
interval over the folds.

Folds never split a journey: a session's history features come from its journey, so a journey on
both sides would leak. `by="journey"` draws stratified folds of journeys (sklearn's
`StratifiedGroupKFold`, a new shuffle per repeat); `by="time"` orders journeys by their first
session and validates each fold on the journeys after the ones it trained on (an expanding
window, as a model is used: trained on the past, applied to what comes next).

The interval is Student's t over the folds with the variance corrected for overlapping training
sets (Nadeau and Bengio, 2003): the folds of repeated cross-validation are not independent, and
the plain t interval would be too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from pipelines.core import keys
from pipelines.core.contract import ContractError

CV_KINDS = ("journey", "time")


class EvalConfigError(ValueError):
    """An `eval` (or search) setting that cannot work, naming its key: a usage error."""


@dataclass(frozen=True)
class Fold:
    """One fold of one repeat: row positions (in the development rows) to train and to score."""

    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray

    @property
    def name(self) -> str:
        """`repeat 1 fold 2`: counted from 1, as the run names and tags count them."""
        return f"repeat {self.repeat + 1} fold {self.fold + 1}"


def check_cv(folds: int, repeats: int, by: str) -> None:
    """Refuse settings that cannot make folds, naming the key."""
    if folds == 0:
        return
    if folds < 2:
        raise EvalConfigError(f"eval.cv.folds must be 0 (off) or at least 2, got {folds}")
    if repeats < 1:
        raise EvalConfigError(f"eval.cv.repeats must be at least 1, got {repeats}")
    if by not in CV_KINDS:
        raise EvalConfigError(f"eval.cv.by must be one of {list(CV_KINDS)}, got {by!r}")
    if by == "time" and repeats != 1:
        raise EvalConfigError(
            f"eval.cv.by=time has one order, so eval.cv.repeats must be 1, got {repeats}"
        )


def make_folds(
    sessions: pd.DataFrame, labels: np.ndarray, folds: int, repeats: int, by: str, seed: int
) -> list[Fold]:
    """The folds of `sessions` (canonical rows with a journey or session id, `started_at` for
    `by="time"`) with class codes `labels`: `repeats` x `folds` of them for journeys, `folds` for
    time. Every journey lies wholly on one side of every fold."""
    check_cv(folds, repeats, by)
    journey = keys.journey_key(sessions).to_numpy()
    groups = pd.factorize(journey)[0]
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    needed = folds + 1 if by == "time" else folds
    if n_groups < needed:
        raise EvalConfigError(
            f"eval.cv.folds={folds} needs at least {needed} journeys, the data has {n_groups}"
        )
    if by == "time":
        return _time_folds(sessions, groups, n_groups, folds)
    out = []
    for r in range(repeats):
        # one session per journey (a web-analytics export): plain stratified folds keep every
        # journey whole too, and draw in milliseconds where grouping takes seconds
        if n_groups == len(labels):
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + r)
            pieces = splitter.split(np.zeros(len(labels)), labels)
        else:
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + r)
            pieces = splitter.split(np.zeros(len(labels)), labels, groups)
        for f, (train, test) in enumerate(pieces):
            out.append(Fold(r, f, np.sort(train), np.sort(test)))
    return out


def _time_folds(
    sessions: pd.DataFrame, groups: np.ndarray, n_groups: int, folds: int
) -> list[Fold]:
    """Journeys in order of their first start (ties by first appearance); fold k trains on the
    first k blocks and scores block k + 1 (of folds + 1 equal blocks)."""
    if "started_at" not in sessions or sessions["started_at"].isna().all():
        raise ContractError("eval.cv.by=time needs a started_at column with values")
    start_ns = sessions["started_at"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    missing = sessions["started_at"].isna().to_numpy()
    start_ns = np.where(missing, np.iinfo(np.int64).max, start_ns)
    first = pd.Series(start_ns).groupby(groups).min().to_numpy()
    order = np.lexsort((np.arange(n_groups), first))  # journeys, earliest first
    block_of_group = np.empty(n_groups, dtype=np.int64)
    block_of_group[order] = np.arange(n_groups) * (folds + 1) // n_groups
    block = block_of_group[groups]
    return [
        Fold(0, f, np.flatnonzero(block <= f), np.flatnonzero(block == f + 1)) for f in range(folds)
    ]


def summarise(
    fold_metrics: Sequence[Mapping[str, float]], train_rows: float, test_rows: float
) -> dict[str, float]:
    """`<metric>/mean`, `/std`, `/ci_low` and `/ci_high` (95%) over the folds, for every metric
    every fold has. The interval is t with the Nadeau-Bengio corrected variance
    (1/n + test_rows/train_rows) * s^2, with the mean training and test rows of a fold."""
    if not fold_metrics:
        return {}
    # class counts (`support_<class>`) are sizes, not scores: no interval
    names = [
        k
        for k in fold_metrics[0]
        if all(k in m for m in fold_metrics) and not k.startswith("support_")
    ]
    n = len(fold_metrics)
    out: dict[str, float] = {}
    for name in names:
        values = np.array([m[name] for m in fold_metrics], dtype=float)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            continue
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[f"{name}/mean"] = mean
        out[f"{name}/std"] = std
        if len(values) > 1:
            half = interval_half_width(std, len(values), test_rows / max(train_rows, 1.0))
            out[f"{name}/ci_low"] = mean - half
            out[f"{name}/ci_high"] = mean + half
    out["folds"] = float(n)
    return out


def interval_half_width(std: float, n: int, test_to_train: float, level: float = 0.95) -> float:
    """Half the width of the corrected t interval of a mean over `n` cross-validation folds."""
    t = stats.t.ppf(0.5 + level / 2, df=n - 1)
    return float(t * std * math.sqrt(1.0 / n + test_to_train))
