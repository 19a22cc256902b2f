"""The champion/challenger gate: promote a challenger only when it is better on the same data.

`decide` is a pure function of two sets of metrics computed on the same held-out rows; the
`promote` command (see `pipelines.promote`) computes them and records the decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# metrics where smaller is better; every other metric is better when larger
LOWER_IS_BETTER = {"logloss", "ece"}


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

    def __post_init__(self) -> None:
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
    for c in classes:
        new, old = (
            float(challenger.get(f"f1_{c}", math.nan)),
            float(champion.get(f"f1_{c}", math.nan)),
        )
        if not math.isfinite(new):
            return Decision(False, f"challenger f1_{c} is not a number", score, best, gain)
        if math.isfinite(old) and old - new > policy.max_class_f1_drop:
            return Decision(
                False,
                f"f1_{c} falls from {old:.5f} to {new:.5f}, more than the allowed {policy.max_class_f1_drop}",
                score,
                best,
                gain,
            )
    return Decision(
        True,
        f"{policy.metric} improves by {gain:+.5f} (>= {policy.min_improvement}) and no class F1 falls too far",
        score,
        best,
        gain,
    )
