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

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from pipelines.core.cv import check_cv
from pipelines.core.objectives import (
    check_calibration,
    check_objective,
    objective_value,
    resolve_direction,
)
from pipelines.core.search import (
    FINISHED,
    NoRepeatSampler,
    SearchSpaceExhausted,
    distributions,
    pruning_callback,
    sampler_seed,
    suggest,
)
from pipelines.engines import engine_for
from pipelines.stages.runner import command
from pipelines.tracking import runs
from pipelines.tracking.train_run import log_and_register

log = logging.getLogger(__name__)


def open_study(tune_cfg: Mapping, search: Mapping, seed: int) -> optuna.Study:
    """The study in `tune_cfg["storage"]`, created or resumed, with trials a killed search left
    running marked failed and a sampler that never repeats a parameter set (`NoRepeatSampler`
    around TPE, seeded by `sampler_seed`)."""

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


class Trial:
    """One trial of the search: the sampled parameters trained, logged as a child run of the
    study's parent run, and judged by the search metric (pruned trials are logged as such)."""

    def __init__(self, cfg: DictConfig, experiment_id: str, client: MlflowClient):
        self.cfg, self.experiment_id, self.client = cfg, experiment_id, client
        self.search, self.tune = cfg.search, cfg.tune

    def __call__(self, trial: optuna.Trial) -> float:
        values = suggest(trial, OmegaConf.to_container(self.search.params, resolve=True))
        trial_cfg = copy.deepcopy(self.cfg)
        for key, value in values.items():
            OmegaConf.update(trial_cfg, key, value, force_add=True)
        container = OmegaConf.to_container(trial_cfg, resolve=True)
        overrides = [f"{k}={v}" for k, v in values.items()]
        every = int(self.tune.report_every)
        callbacks = (
            [pruning_callback(trial, every, str(self.search.direction))]
            if self.search.pruning
            else []
        )
        try:
            result = engine_for(container["engine"]).train(container, callbacks=callbacks)
        except optuna.TrialPruned:
            name = f"trial-{trial.number}"
            with mlflow.start_run(experiment_id=self.experiment_id, nested=True, run_name=name):
                mlflow.log_params({k: str(v) for k, v in values.items()})
                mlflow.set_tags({"tune.trial": str(trial.number), "tune.state": "PRUNED"})
            raise
        summary = log_and_register(container, result, overrides, container["output_dir"])
        self.client.set_tag(summary["run_id"], "tune.trial", str(trial.number))
        self.client.set_tag(summary["run_id"], "tune.state", "COMPLETE")
        metric = self.search.metric
        value = objective_value(result.metrics, metric, "search.metric")
        trial.set_user_attr("run_id", summary["run_id"])
        print(f"trial {trial.number}: {metric}={value:.5f} {' '.join(overrides)}", flush=True)
        return value


def parent_run(study: optuna.Study, tune_cfg: Mapping, experiment_id: str, client: MlflowClient):
    """The study's MLflow parent run: the one a killed search started, or a new one."""
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
            "git_commit": runs.git_commit(),
        }
    )
    return parent


def search(study: optuna.Study, objective: Trial, tune_cfg: Mapping) -> optuna.trial.FrozenTrial:
    """Run trials until `tune.n_trials` have finished (or the time or the space runs out);
    the best completed trial."""
    finished = sum(t.state in FINISHED for t in study.trials)
    remaining = max(0, int(tune_cfg["n_trials"]) - finished)
    if not remaining:
        print(f"study {tune_cfg['study_name']} already has {finished} finished trials", flush=True)
    else:
        try:
            study.optimize(
                objective, n_trials=remaining, timeout=tune_cfg["timeout_s"], catch=(ValueError,)
            )
        except SearchSpaceExhausted as err:
            print(f"search stopped: {err}", flush=True)
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise RuntimeError("no trial completed; see the log for why")
    return study.best_trial


def log_best(study: optuna.Study, best: optuna.trial.FrozenTrial, metric: str) -> None:
    """The best trial and the study's trial counts, on the parent run."""
    mlflow.set_tags(
        {"best_child_run_id": best.user_attrs.get("run_id", ""), "best_trial": str(best.number)}
    )
    mlflow.log_metric(f"best/{metric}", best.value)
    mlflow.log_dict(
        {"metric": metric, "value": best.value, "params": best.params}, "best_params.yaml"
    )
    mlflow.log_metric("tune/finished_trials", sum(t.state in FINISHED for t in study.trials))
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    mlflow.log_metric("tune/pruned_trials", pruned)


def interval_of(client: MlflowClient, run_id: str | None, metric: str) -> str:
    """`, 95% interval a to b` for a cross-validation mean (`cv/<m>/mean`) logged on `run_id`;
    empty for any other metric."""
    if not run_id or not metric.startswith("cv/") or not metric.endswith("/mean"):
        return ""
    logged = client.get_run(run_id).data.metrics
    base = metric.removesuffix("/mean")
    low, high = logged.get(f"{base}/ci_low"), logged.get(f"{base}/ci_high")
    return "" if low is None or high is None else f", 95% interval {low:.5f} to {high:.5f}"


def run_tune(cfg: DictConfig) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    c = OmegaConf.to_container(cfg, resolve=True)
    tune_cfg, metric = c["tune"], c["search"]["metric"]
    check_objective(metric, c, "search.metric")
    resolve_direction(metric, c["search"]["direction"], "search.direction")
    check_cv(**c["eval"]["cv"])
    check_calibration(c["eval"]["calibration"])
    study = open_study(tune_cfg, c["search"], int(c["runtime"]["seed"]))
    experiment_id = runs.setup(c["tracking"])
    client = MlflowClient()
    parent = parent_run(study, tune_cfg, experiment_id, client)
    try:
        best = search(study, Trial(cfg, experiment_id, client), tune_cfg)
        log_best(study, best, metric)
    finally:
        mlflow.end_run()
    command = "micromoment train " + " ".join(f"{k}={v}" for k, v in best.params.items())
    counts = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    print(
        f"\nstudy {tune_cfg['study_name']}: {counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed"
        f"\nbest trial {best.number}: {metric}={best.value:.5f}"
        f"{interval_of(client, best.user_attrs.get('run_id'), metric)}"
        f" (run {best.user_attrs.get('run_id')})"
        f"\ntrain and register it with:\n  {command}",
        flush=True,
    )
    return {
        "best_value": best.value,
        "best_params": best.params,
        "parent_run_id": parent.info.run_id,
        "counts": counts,
    }


@command("tune")
def main(cfg: DictConfig) -> float:
    out = run_tune(cfg)
    return float(out["best_value"]) if math.isfinite(out["best_value"]) else math.inf
