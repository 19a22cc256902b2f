"""Hyperparameter search with Optuna: the search space as distributions, a sampler that never
repeats a parameter set, its seed on resume, and the pruning callback LightGBM reports to.

Pure: no storage, no MLflow (the study's storage and the trial runs are `stages.tune`'s).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

log = logging.getLogger(__name__)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def distributions(space: list[Mapping]) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each search-space entry:
    {name, type: float|int|categorical, low, high, log, choices}."""
    out: dict[str, BaseDistribution] = {}
    for p in space:
        kind, name = p["type"], p["name"]
        if kind in ("float", "int") and not (
            p.get("low") is not None and p.get("high") is not None and p["low"] < p["high"]
        ):
            raise ValueError(
                f"search.params: {name} ({kind}) needs low < high, got low={p.get('low')} "
                f"high={p.get('high')}"
            )
        if kind == "categorical" and not p.get("choices"):
            raise ValueError(f"search.params: {name} (categorical) needs a list of choices")
        if kind == "float":
            out[name] = FloatDistribution(
                float(p["low"]), float(p["high"]), log=bool(p.get("log", False))
            )
        elif kind == "int":
            out[name] = IntDistribution(
                int(p["low"]), int(p["high"]), log=bool(p.get("log", False))
            )
        elif kind == "categorical":
            out[name] = CategoricalDistribution(list(p["choices"]))
        else:
            raise ValueError(
                f"search.params: {name} has type {kind!r}; use float, int or categorical"
            )
    return out


def suggest(trial: optuna.Trial, space: list[Mapping]) -> dict[str, object]:
    """Draw one value per search-space entry (see `distributions`)."""
    values: dict[str, object] = {}
    for name, dist in distributions(space).items():
        if isinstance(dist, FloatDistribution):
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        else:
            values[name] = trial.suggest_categorical(name, list(dist.choices))
    return values


class SearchSpaceExhausted(RuntimeError):
    """Every parameter set the sampler can find has been tried by a trial of the study."""


def _params_key(params: Mapping[str, object]) -> tuple:
    return tuple(sorted(params.items()))


class NoRepeatSampler(optuna.samplers.BaseSampler):
    """Wraps a sampler so that no trial tries a parameter set an earlier trial of the study tried
    (complete, pruned, failed or still running).

    Optuna stores each parameter as soon as it is drawn, so a repeat must be refused before the
    trial sees it: the whole set is drawn when the trial starts (Optuna's "relative" parameters),
    by the wrapped sampler exactly as a trial would ask it (its joint draw, then a draw per
    parameter it left out), and drawn again while it equals an earlier trial's. After
    `max_draws // 2` repeats the draws come from a seeded random sampler, which a sampler settled
    on one point cannot hold back; after `max_draws`, `SearchSpaceExhausted`.
    """

    def __init__(
        self,
        sampler: optuna.samplers.BaseSampler,
        space: Mapping[str, BaseDistribution],
        seed: int | None = None,
        max_draws: int = 100,
    ):
        self.sampler = sampler
        self.space = dict(space)
        self.max_draws = max_draws
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self.space)

    def sample_relative(self, study, trial, search_space) -> dict[str, object]:
        if not search_space:
            return {}
        tried = {
            _params_key(t.params): t.number
            for t in study.get_trials(deepcopy=False)
            if t.params and t.number != trial.number
        }
        # what the wrapped sampler draws jointly (multivariate TPE: the parameters all finished
        # trials share), where it agrees with the configured space
        joint = {
            name: dist
            for name, dist in self.sampler.infer_relative_search_space(study, trial).items()
            if search_space.get(name) == dist
        }
        for draw in range(self.max_draws):
            if draw < self.max_draws // 2:
                values = self._draw(self.sampler, study, trial, search_space, joint)
            else:
                values = self._draw(self._random, study, trial, search_space, {})
            earlier = tried.get(_params_key(values))
            if earlier is None:
                return values
            if draw == 0:
                log.warning(
                    "trial %d drew the parameters trial %d already tried; drawing another set",
                    trial.number,
                    earlier,
                )
        raise SearchSpaceExhausted(
            f"trial {trial.number} found no parameter set that none of the study's "
            f"{len(tried)} trials tried in {self.max_draws} draws"
        )

    @staticmethod
    def _draw(sampler, study, trial, search_space, joint) -> dict[str, object]:
        drawn = sampler.sample_relative(study, trial, joint) if joint else {}
        values = {}
        for name, dist in search_space.items():
            value = (
                drawn[name]
                if name in drawn and name in joint
                else sampler.sample_independent(study, trial, name, dist)
            )
            # as the trial will store it
            values[name] = dist.to_external_repr(dist.to_internal_repr(value))
        return values

    def sample_independent(self, study, trial, param_name, param_distribution) -> object:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.sampler.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()
        self._random.reseed_rng()


def sampler_seed(seed: int, trials_so_far: int) -> int:
    """The sampler's seed for a study that holds `trials_so_far` trials: `seed` itself for a fresh
    study, so a search is reproducible; mixed with the trial count for a resumed one, whose
    sampler would otherwise replay the first run's draws."""
    if trials_so_far == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), trials_so_far]).generate_state(1)[0])


def pruning_callback(trial: optuna.Trial, every: int = 10, direction: str = "minimize"):
    """A LightGBM callback that reports validation loss to Optuna and stops a hopeless trial.

    The pruner compares reports in the study's `direction`: a study that maximises (a ROC-AUC)
    gets the loss negated, so that it still stops the trials whose loss is high, not the best."""
    sign = 1.0 if direction == "minimize" else -1.0

    def _callback(env) -> None:
        if env.iteration % every or not any(e[0] == "val" for e in env.evaluation_result_list):
            return
        value = next(v for name, _, v, _ in env.evaluation_result_list if name == "val")
        trial.report(sign * value, step=env.iteration)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at round {env.iteration} with val loss {value:.5f}")

    _callback.order = 40
    return _callback
