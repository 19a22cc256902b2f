"""The hyperparameter search space, the sampler that never repeats a parameter set, and pruning."""

from __future__ import annotations

import optuna
import pytest

from pipelines.core.search import (
    NoRepeatSampler,
    SearchSpaceExhausted,
    distributions,
    pruning_callback,
    suggest,
)
from tests.conftest import compose_config

SMALL_SPACE = [
    {"name": "model.params.boosting", "type": "categorical", "choices": ["gbdt", "dart"]},
    {"name": "model.params.num_leaves", "type": "int", "low": 2, "high": 4},
]


def _param_sets(study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.trials if t.params]


def test_search_space_draws_within_bounds():
    space = compose_config("tune", ["output_dir=/tmp"])["search"]["params"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        values = suggest(trial, space)
        for p in space:
            v = values[p["name"]]
            assert p["low"] <= v <= p["high"]
            if p["type"] == "int":
                assert isinstance(v, int)
        study.tell(trial, 0.0)


def test_unknown_parameter_type_is_named():
    trial = optuna.create_study().ask()
    with pytest.raises(ValueError, match="model.params.x has type 'normal'"):
        suggest(trial, [{"name": "model.params.x", "type": "normal"}])


def test_no_repeat_sampler_tries_each_set_once_then_stops(caplog):
    # a small space and a sampler that settles at once: repeats are drawn and refused
    sampler = NoRepeatSampler(
        optuna.samplers.TPESampler(seed=0, n_startup_trials=1),
        distributions(SMALL_SPACE),
        seed=0,
    )
    study = optuna.create_study(sampler=sampler)
    with caplog.at_level("WARNING", logger="pipelines.stages.tune"):
        study.optimize(lambda t: float(suggest(t, SMALL_SPACE)["model.params.num_leaves"]), 6)
    sets = _param_sets(study)
    assert len(set(sets)) == 6  # 2 x 3: every set, each once
    assert "already tried; drawing another set" in caplog.text
    with pytest.raises(SearchSpaceExhausted, match="none of the study's 6 trials"):
        study.optimize(lambda t: float(suggest(t, SMALL_SPACE)["model.params.num_leaves"]), 1)
    assert len(set(_param_sets(study))) == len(_param_sets(study)) == 6


def test_pruning_callback_stops_a_trial_worse_than_the_median():
    study = optuna.create_study(
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    )
    good = study.ask()
    for step in range(0, 50, 10):
        good.report(0.2, step)
    study.tell(good, 0.2)
    bad = study.ask()
    cb = pruning_callback(bad, every=10)

    class Env:
        iteration = 10
        evaluation_result_list = [("val", "multi_logloss", 0.9, False)]

    with pytest.raises(optuna.TrialPruned):
        cb(Env())


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_pruning_stops_the_high_loss_trial_whichever_way_the_study_optimises(direction):
    """A study that maximises (a ROC-AUC) must still prune the trial whose validation loss is
    high, never the one whose loss is low."""
    study = optuna.create_study(
        direction=direction,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )

    class Env:
        iteration = 10

    def report(loss: float) -> bool:
        trial = study.ask()
        Env.evaluation_result_list = [
            ("train", "multi_logloss", 0.01, False),  # the training loss is never reported
            ("val", "multi_logloss", loss, False),
        ]
        try:
            pruning_callback(trial, every=10, direction=direction)(Env())
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return True
        study.tell(trial, (1 - loss) if direction == "maximize" else loss)
        return False

    assert not report(0.5) and not report(0.4)  # the startup trials
    assert not report(0.3)  # better than the median: goes on
    assert report(0.6)  # worse than the median: pruned


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "model.params.x", "type": "float", "low": None, "high": 1.0}, "needs low < high"),
        ({"name": "model.params.x", "type": "int", "low": 9, "high": 3}, "needs low < high"),
        ({"name": "model.params.x", "type": "categorical", "choices": None}, "list of choices"),
    ],
)
def test_a_malformed_search_entry_is_named(entry, message):
    from pipelines.core.search import distributions

    with pytest.raises(ValueError, match=message):
        distributions([entry])
