"""The champion/challenger gate: promote a challenger only when it is better on the same data.

`decide` is a pure function of two sets of metrics computed on the same held-out rows; the
`promote` command (see `pipelines.stages.promote`) computes them and records the decision.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from pipelines.core.keys import journey_key, unit_hash

# metrics where smaller is better; every other metric is better when larger
LOWER_IS_BETTER = {"logloss", "ece"}
METRICS = {"macro_f1", "accuracy"} | LOWER_IS_BETTER


@dataclass(frozen=True)
class GatePolicy:
    """When a challenger may replace the champion.

    metric : the primary metric (`macro_f1`, `accuracy`, `logloss`, ...).
    min_improvement : how much better the challenger must be on it (in the metric's units; >= 0).
    max_class_f1_drop : no class's F1 may fall by more than this (>= 0).
    """

    metric: str = "macro_f1"
    min_improvement: float = 0.0
    max_class_f1_drop: float = 0.02
    min_holdout_rows: int = 200

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"gate metric must be one of {sorted(METRICS)}, got {self.metric!r}")
        if self.min_holdout_rows < 1:
            raise ValueError(f"min_holdout_rows must be >= 1, got {self.min_holdout_rows}")
        if not (self.min_improvement >= 0 and math.isfinite(self.min_improvement)):
            raise ValueError(f"min_improvement must be a number >= 0, got {self.min_improvement}")
        if not (self.max_class_f1_drop >= 0 and math.isfinite(self.max_class_f1_drop)):
            raise ValueError(
                f"max_class_f1_drop must be a number >= 0, got {self.max_class_f1_drop}"
            )

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None
    improvement: float | None  # in the "better" direction: positive means the challenger is better
    rows: int | None = None  # held-out sessions both were judged on
    fairness: str = ""  # how rows either version trained on were kept out


def decide(
    policy: GatePolicy,
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    classes: Sequence[str],
) -> Decision:
    """Compare metrics of challenger and champion on the same rows.

    Both mappings hold the primary metric and `f1_<class>` for every class. No champion means the
    challenger becomes champion. A missing or non-finite challenger score never promotes.
    """
    score = float(challenger.get(policy.metric, math.nan))
    if not math.isfinite(score):
        return Decision(
            False, f"challenger {policy.metric} is not a number ({score})", score, None, None
        )
    if champion is None:
        return Decision(
            True, "no champion yet: the first model becomes champion", score, None, None
        )
    best = float(champion.get(policy.metric, math.nan))
    if not math.isfinite(best):
        return Decision(
            True,
            f"champion {policy.metric} is not a number ({best}); replacing it",
            score,
            best,
            None,
        )
    gain = (best - score) if policy.lower_is_better else (score - best)
    # strictly better, and by at least the required margin
    if not (gain > 0 and gain >= policy.min_improvement):
        return Decision(
            False,
            f"{policy.metric} {score:.5f} vs champion {best:.5f}: improvement {gain:+.5f} "
            f"is not above 0 and at least {policy.min_improvement}",
            score,
            best,
            gain,
        )
    refusal = _class_f1_refusal(policy, challenger, champion, classes)
    if refusal is not None:
        return Decision(False, refusal, score, best, gain)
    return Decision(
        True,
        f"{policy.metric} improves by {gain:+.5f} (>= {policy.min_improvement}) and no class F1 falls too far",
        score,
        best,
        gain,
    )


def _class_f1_refusal(
    policy: GatePolicy,
    challenger: Mapping[str, float],
    champion: Mapping[str, float],
    classes: Sequence[str],
) -> str | None:
    """Why a challenger that wins on the primary metric still may not replace the champion: a
    class F1 that is not a number, or that falls too far (None when every class holds up)."""
    for c in classes:
        new = float(challenger.get(f"f1_{c}", math.nan))
        old = float(champion.get(f"f1_{c}", math.nan))
        if not math.isfinite(new):
            return f"challenger f1_{c} is not a number"
        if math.isfinite(old) and old - new > policy.max_class_f1_drop:
            return (
                f"f1_{c} falls from {old:.5f} to {new:.5f}, "
                f"more than the allowed {policy.max_class_f1_drop}"
            )
    return None


@dataclass(frozen=True)
class TrainingSpan:
    """Which journeys a model version trained or early-stopped on, recorded with the version.

    A gate judges two versions only on journeys that neither of them saw. The record is the rule
    the version's split followed, not a list of ids: the split (`journey`: a seeded hash of the
    journey id; `time`: journeys first seen at or after `test_from` were held out), its sizes and
    seed, and the time span of the sessions it was given (`start`..`end`, ISO 8601; None when the
    data had no start times, and then every journey counts as inside the span).
    """

    split: str
    seed: int
    val_size: float
    test_size: float
    start: str | None = None
    end: str | None = None
    test_from: str | None = None

    TAG = "train.span"

    @classmethod
    def of(cls, sessions: pd.DataFrame, side: np.ndarray, split_cfg: Mapping, seed: int):
        """The span of a training run: canonical `sessions` and the split side of each."""
        starts = _starts(sessions)
        test = np.asarray(side) == "test"
        return cls(
            split=str(split_cfg["by"]),
            seed=int(seed),
            val_size=float(split_cfg["val_size"]),
            test_size=float(split_cfg["test_size"]),
            start=iso_time(starts.min()),
            end=iso_time(starts.max()),
            test_from=iso_time(starts[test].min()) if test.any() else None,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> TrainingSpan | None:
        return cls(**json.loads(text)) if text else None

    def seen(self, sessions: pd.DataFrame) -> np.ndarray:
        """Per session of canonical `sessions`: whether its journey was in this version's
        training or validation data (when in doubt, True)."""
        journey = journey_key(sessions).to_numpy()
        starts = _starts(sessions)
        if self.start is None:
            inside = np.ones(len(sessions), dtype=bool)
        else:
            within = (starts >= pd.Timestamp(self.start)) & (starts <= pd.Timestamp(self.end))
            inside = np.asarray(starts.isna() | within, dtype=bool)
        journey_inside = pd.Series(inside).groupby(journey).transform("any").to_numpy()
        if self.split == "journey":
            held_out = unit_hash(pd.Series(journey), f"#{self.seed}") < self.test_size
        else:
            first = starts.where(pd.Series(inside, index=starts.index))
            first = first.groupby(journey).transform("min")
            held_out = (
                (first >= pd.Timestamp(self.test_from)).to_numpy()
                if self.test_from is not None
                else np.zeros(len(journey), dtype=bool)
            )
        return journey_inside & ~held_out


def _starts(sessions: pd.DataFrame) -> pd.Series:
    if "started_at" in sessions:
        starts = pd.to_datetime(sessions["started_at"], utc=True).reset_index(drop=True)
        return starts.astype("datetime64[ns, UTC]")
    return pd.Series(pd.NaT, index=range(len(sessions)), dtype="datetime64[ns, UTC]")


def iso_time(value) -> str | None:
    """A timestamp as ISO 8601 text; None when missing."""
    return None if pd.isna(value) else pd.Timestamp(value).isoformat()
