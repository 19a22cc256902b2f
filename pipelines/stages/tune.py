"""`micromoment tune`: hyperparameter search with Optuna, one MLflow child run per trial.

The search space lives in `conf/search/*.yaml`. The study is persistent (an Optuna journal file),
so a search that is killed resumes where it stopped when the same command runs again: trials that
were running when it died are marked failed, finished ones are kept, and the search runs until
`tune.n_trials` trials have finished. A resumed search never tries a parameter set again: its
sampler is seeded from the configured seed and the number of trials the study already holds, and
a set equal to an earlier trial's is drawn again before the trial starts. Bad trials are pruned
while LightGBM trains, from the validation log-loss reported every few boosting rounds. All trials
of a study nest under one MLflow parent run, which carries the best trial's parameters.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from pipelines.config import hydra_main

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


def pruning_callback(trial: optuna.Trial, every: int = 10):
    """A LightGBM callback that reports validation loss to Optuna and stops a hopeless trial."""

    def _callback(env) -> None:
        if env.iteration % every or not env.evaluation_result_list:
            return
        value = env.evaluation_result_list[0][2]
        trial.report(value, step=env.iteration)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at round {env.iteration} with val loss {value:.5f}")

    _callback.order = 40
    return _callback


def open_study(tune_cfg: Mapping, search: Mapping, seed: int) -> optuna.Study:
    """The study in `tune_cfg["storage"]`, created or resumed, with trials a killed search left
    running marked failed and a sampler that never repeats a parameter set (`NoRepeatSampler`
    around TPE, seeded by `sampler_seed`)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(tune_cfg["storage"])
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(
        study_name=tune_cfg["study_name"],
        storage=storage,
        load_if_exists=True,
        direction=search["direction"],
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=int(tune_cfg["prune_after_trials"]),
            n_warmup_steps=int(tune_cfg["prune_warmup_rounds"]),
        ),
    )
    trials_so_far = len(study.trials)
    seed = sampler_seed(seed, trials_so_far)
    if trials_so_far:
        log.info(
            "resuming study %s after %d trials; sampler seed %d",
            tune_cfg["study_name"],
            trials_so_far,
            seed,
        )
    study.sampler = NoRepeatSampler(
        optuna.samplers.TPESampler(seed=seed), distributions(search["params"]), seed=seed
    )
    # trials left running by a killed search can never finish: close them as failed
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        log.warning("trial %d was interrupted by an earlier kill; marked failed", t.number)
    return study


def run_tune(cfg: DictConfig) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.tracking.runs import runs as tracking
    from pipelines.stages.train import log_and_register, train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    c = OmegaConf.to_container(cfg, resolve=True)
    tune_cfg, search = c["tune"], c["search"]
    metric = search["metric"]
    study = open_study(tune_cfg, search, int(c["runtime"]["seed"]))
    experiment_id = tracking.setup(c["tracking"])
    client = MlflowClient()

    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id and client.get_run(parent_id).info.lifecycle_stage != "active":
        parent_id = None
    parent = (
        mlflow.start_run(run_id=parent_id)
        if parent_id
        else mlflow.start_run(
            experiment_id=experiment_id, run_name=f"tune-{tune_cfg['study_name']}"
        )
    )
    study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
    mlflow.set_tags(
        {
            "sweep": "parent",
            "tune.study": tune_cfg["study_name"],
            "tune.storage": str(tune_cfg["storage"]),
            "git_commit": tracking.git_commit(),
        }
    )

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, search["params"])
        trial_cfg = copy.deepcopy(cfg)
        for key, value in values.items():
            OmegaConf.update(trial_cfg, key, value, force_add=True)
        container = OmegaConf.to_container(trial_cfg, resolve=True)
        overrides = [f"{k}={v}" for k, v in values.items()]
        callbacks = (
            [pruning_callback(trial, int(tune_cfg["report_every"]))]
            if search.get("pruning", True)
            else []
        )
        try:
            result = train(container, callbacks=callbacks)
        except optuna.TrialPruned:
            with mlflow.start_run(
                experiment_id=experiment_id, nested=True, run_name=f"trial-{trial.number}"
            ):
                mlflow.log_params({k: str(v) for k, v in values.items()})
                mlflow.set_tags({"tune.trial": str(trial.number), "tune.state": "PRUNED"})
            raise
        summary = log_and_register(container, result, overrides, container.get("output_dir"))
        client.set_tag(summary["run_id"], "tune.trial", str(trial.number))
        client.set_tag(summary["run_id"], "tune.state", "COMPLETE")
        value = float(result.metrics[metric])
        trial.set_user_attr("run_id", summary["run_id"])
        print(f"trial {trial.number}: {metric}={value:.5f} {' '.join(overrides)}", flush=True)
        return value

    try:
        finished = sum(t.state in FINISHED for t in study.trials)
        remaining = max(0, int(tune_cfg["n_trials"]) - finished)
        if remaining:
            try:
                study.optimize(
                    objective,
                    n_trials=remaining,
                    timeout=tune_cfg.get("timeout_s"),
                    catch=(ValueError,),
                )
            except SearchSpaceExhausted as err:
                print(f"search stopped: {err}", flush=True)
        else:
            print(
                f"study {tune_cfg['study_name']} already has {finished} finished trials", flush=True
            )
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise RuntimeError("no trial completed; see the log for why")
        best = study.best_trial
        mlflow.set_tags(
            {"best_child_run_id": best.user_attrs.get("run_id", ""), "best_trial": str(best.number)}
        )
        mlflow.log_metric(f"best/{metric}", best.value)
        mlflow.log_dict(
            {"metric": metric, "value": best.value, "params": best.params}, "best_params.yaml"
        )
        mlflow.log_metric("tune/finished_trials", sum(t.state in FINISHED for t in study.trials))
        mlflow.log_metric(
            "tune/pruned_trials",
            sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        )
    finally:
        mlflow.end_run()
    command = "micromoment train " + " ".join(f"{k}={v}" for k, v in best.params.items())
    counts = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    print(
        f"\nstudy {tune_cfg['study_name']}: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
        f"\nbest trial {best.number}: {metric}={best.value:.5f} (run {best.user_attrs.get('run_id')})"
        f"\ntrain and register it with:\n  {command}",
        flush=True,
    )
    return {
        "best_value": best.value,
        "best_params": best.params,
        "parent_run_id": parent.info.run_id,
        "counts": counts,
    }


@hydra_main("tune")
def main(cfg: DictConfig) -> float:
    out = run_tune(cfg)
    return float(out["best_value"]) if math.isfinite(out["best_value"]) else math.inf
