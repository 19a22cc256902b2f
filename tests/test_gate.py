"""The champion/challenger gate never promotes a worse model."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.gate import GatePolicy, decide

CLASSES = ["know", "go", "do", "buy"]
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
scores = st.fixed_dictionaries(
    {
        "macro_f1": unit,
        "accuracy": unit,
        "logloss": st.floats(0.0, 5.0),
        **{f"f1_{c}": unit for c in CLASSES},
    }
)
policies = st.builds(
    GatePolicy,
    metric=st.sampled_from(["macro_f1", "accuracy", "logloss"]),
    min_improvement=st.floats(0.0, 0.2),
    max_class_f1_drop=st.floats(0.0, 0.2),
)


@settings(max_examples=500, deadline=None)
@given(policy=policies, challenger=scores, champion=scores)
def test_worse_challenger_is_not_promoted(policy, challenger, champion):
    decision = decide(policy, challenger, champion, CLASSES)
    a, b = challenger[policy.metric], champion[policy.metric]
    gain = (b - a) if policy.metric == "logloss" else (a - b)
    if decision.promote:
        assert gain > 0 and gain >= policy.min_improvement
        for c in CLASSES:
            assert champion[f"f1_{c}"] - challenger[f"f1_{c}"] <= policy.max_class_f1_drop
    else:
        assert decision.reason


@settings(max_examples=200, deadline=None)
@given(policy=policies, metrics=scores)
def test_a_tie_keeps_the_champion(policy, metrics):
    assert not decide(policy, metrics, dict(metrics), CLASSES).promote


@settings(max_examples=200, deadline=None)
@given(policy=policies, challenger=scores)
def test_first_model_becomes_champion(policy, challenger):
    assert decide(policy, challenger, None, CLASSES).promote


def test_better_model_is_promoted():
    old = {"macro_f1": 0.80, **{f"f1_{c}": 0.80 for c in CLASSES}}
    new = {"macro_f1": 0.85, **{f"f1_{c}": 0.85 for c in CLASSES}}
    assert decide(GatePolicy(min_improvement=0.01), new, old, CLASSES).promote


def test_class_guard_blocks_a_better_average():
    old = {"macro_f1": 0.80, **{f"f1_{c}": 0.80 for c in CLASSES}}
    new = {"macro_f1": 0.84, "f1_know": 0.95, "f1_go": 0.70, "f1_do": 0.85, "f1_buy": 0.86}
    decision = decide(GatePolicy(max_class_f1_drop=0.05), new, old, CLASSES)
    assert not decision.promote and "f1_go" in decision.reason


def test_lower_is_better_for_logloss():
    old = {"logloss": 0.50, **{f"f1_{c}": 0.8 for c in CLASSES}}
    assert decide(GatePolicy(metric="logloss"), {**old, "logloss": 0.40}, old, CLASSES).promote
    assert not decide(GatePolicy(metric="logloss"), {**old, "logloss": 0.60}, old, CLASSES).promote


def test_nan_challenger_never_promotes():
    assert not decide(GatePolicy(), {"macro_f1": math.nan}, None, CLASSES).promote


def test_policy_rejects_negative_margins():
    with pytest.raises(ValueError, match="min_improvement must be a number >= 0, got -0.1"):
        GatePolicy(min_improvement=-0.1)
