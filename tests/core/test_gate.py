"""The champion/challenger gate never promotes a worse model."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.core.gate import GatePolicy, decide

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


# ---------------------------------------------------------------------------------------------
# what a version trained on: the gate judges two versions only on journeys neither saw


def _journeys(n: int, first_day: str = "2026-09-01", sessions_each: int = 3):
    import pandas as pd

    rows = []
    start = pd.Timestamp(first_day, tz="UTC")
    for j in range(n):
        for s in range(sessions_each):
            rows.append(
                {
                    "session_id": f"j{j}-{s}",
                    "journey_id": f"j{j}",
                    "started_at": start + pd.Timedelta(hours=j * 5 + s),
                }
            )
    return pd.DataFrame(rows)


def test_a_journey_split_version_saw_exactly_its_train_and_val_journeys():
    from pipelines.core.gate import TrainingSpan
    from pipelines.core.modelling import split_sessions

    sessions = _journeys(400)
    side = split_sessions(sessions, 0.15, 0.15, by="journey", seed=7).to_numpy()
    span = TrainingSpan.of(
        sessions, side, {"by": "journey", "val_size": 0.15, "test_size": 0.15}, 7
    )
    # recomputed from the recorded rule alone, in any row order
    shuffled = sessions.sample(frac=1.0, random_state=3)
    seen = span.seen(shuffled)
    expected = side[shuffled.index.to_numpy()] != "test"
    assert (seen == expected).all()
    assert 0 < (~seen).sum() < len(seen)


def test_a_time_split_version_saw_the_journeys_before_its_test_window():
    from pipelines.core.gate import TrainingSpan
    from pipelines.core.modelling import split_sessions

    sessions = _journeys(200)
    # timestamps as parquet files often hold them: second resolution
    sessions["started_at"] = sessions["started_at"].astype("datetime64[s, UTC]")
    side = split_sessions(sessions, 0.15, 0.15, by="time", seed=1).to_numpy()
    span = TrainingSpan.of(sessions, side, {"by": "time", "val_size": 0.15, "test_size": 0.15}, 1)
    assert (span.seen(sessions) == (side != "test")).all()


def test_journeys_outside_a_versions_data_are_unseen_and_journeys_crossing_into_it_are_seen():
    import pandas as pd

    from pipelines.core.gate import TrainingSpan

    old = _journeys(100, "2026-01-01")
    span = TrainingSpan.of(
        old, ["train"] * len(old), {"by": "journey", "val_size": 0.15, "test_size": 0.15}, 7
    )
    later = _journeys(50, "2026-06-01")
    later["journey_id"] = "new-" + later["journey_id"]
    assert not span.seen(later).any()
    # a journey the version trained on that goes on after its data ends is still seen
    crossing = pd.concat([old[old.journey_id == "j0"], later.head(3).assign(journey_id="j0")])
    seen = span.seen(crossing.reset_index(drop=True))
    from pipelines.core.keys import unit_hash

    j0_held_out = unit_hash(pd.Series(["j0"]), "#7")[0] < 0.15
    assert (seen == (not j0_held_out)).all()


def test_the_span_round_trips_through_its_registry_tag():
    from pipelines.core.gate import TrainingSpan

    sessions = _journeys(10)
    span = TrainingSpan.of(
        sessions,
        ["train"] * 24 + ["test"] * 6,
        {"by": "time", "val_size": 0.1, "test_size": 0.2},
        3,
    )
    assert TrainingSpan.from_json(span.to_json()) == span
    assert TrainingSpan.from_json(None) is None


def test_a_gate_metric_outside_the_known_ones_is_refused():
    with pytest.raises(ValueError, match="gate metric must be one of"):
        GatePolicy(metric="f2")
