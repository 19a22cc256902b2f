"""`micromoment tune`: a seeded study that resumes without repeating a trial, and a killed search
that resumes to the requested trial count (the search space and sampler: core/test_search.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipelines.core.search import suggest
from pipelines.stages.tune import open_study
from tests.conftest import compose_config


def _search() -> dict:
    return compose_config("tune", ["output_dir=/tmp"])["search"]


def _tune_cfg(tmp_path) -> dict:
    return {
        "storage": str(tmp_path / "optuna" / "s.journal"),
        "study_name": "s",
        "prune_after_trials": 5,
        "prune_warmup_rounds": 30,
    }


def _objective(space):
    def objective(trial):
        values = suggest(trial, space)
        return float(values["model.params.learning_rate"])

    return objective


def _param_sets(study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.trials if t.params]


def test_resumed_study_draws_no_parameter_set_an_earlier_trial_tried(tmp_path):
    """A killed search resumed with the same seed: the sampler must not replay the first run."""
    search = _search()
    first = open_study(_tune_cfg(tmp_path), search, seed=0)
    first.optimize(_objective(search["params"]), n_trials=2)
    killed = first.ask()  # the run dies inside this trial: its parameters are stored
    suggest(killed, search["params"])

    resumed = open_study(_tune_cfg(tmp_path), search, seed=0)
    resumed.optimize(_objective(search["params"]), n_trials=3)
    states = [t.state for t in resumed.trials]
    assert states[2] == optuna.trial.TrialState.FAIL
    assert states.count(optuna.trial.TrialState.COMPLETE) == 5
    sets = _param_sets(resumed)
    assert len(sets) == 6 and len(set(sets)) == 6


def test_fresh_study_draws_what_tpe_with_the_seed_draws(tmp_path):
    search = _search()
    draws = []
    for run in ("a", "b"):
        study = open_study(_tune_cfg(tmp_path / run), search, seed=7)
        study.optimize(_objective(search["params"]), n_trials=12)  # past TPE's 10 random trials
        draws.append(_param_sets(study))
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=7))
    plain.optimize(_objective(search["params"]), n_trials=12)
    assert draws[0] == draws[1] == _param_sets(plain)


def _tune(args, cwd, **popen):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "pipelines.cli", "tune", *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


@pytest.mark.slow
def test_killed_search_resumes_to_the_requested_trial_count_repeating_no_trial(tmp_path):
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "generate",
            "generate.n_journeys=300",
            "runtime.threads=1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert gen.returncode == 0, gen.stderr[-2000:]
    args = [
        "tune.n_trials=3",
        "runtime.threads=1",
        "model.num_boost_round=40",
        "search.pruning=false",
    ]
    proc = _tune(args, tmp_path)
    # kill the search as soon as its first trial has finished
    deadline = time.time() + 300
    journal = tmp_path / "optuna" / "micromoment.journal"
    while True:
        assert time.time() < deadline, "no trial finished in time"
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        if journal.exists():
            storage = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(journal))
            )
            study = optuna.load_study(study_name="micromoment", storage=storage)
            if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                break
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    resumed = _tune(args, tmp_path)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="micromoment", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert optuna.trial.TrialState.RUNNING not in states
    assert "best trial" in out
    # no parameter set is tried twice: not a finished trial's, nor the one the kill interrupted
    tried = [tuple(sorted(t.params.items())) for t in study.trials if t.params]
    assert len(set(tried)) == len(tried), [(t.number, t.state, t.params) for t in study.trials]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("micromoment").experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert len(parents) == 1, "the resumed search must continue the same parent run"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len([c for c in children if c.data.tags.get("tune.state") == "COMPLETE"]) == 3
    assert parents[0].data.tags["best_child_run_id"] in {c.info.run_id for c in children}


def test_a_cross_validation_metric_without_folds_is_refused_before_any_trial(tmp_path):
    from omegaconf import OmegaConf

    from pipelines.stages.tune import run_tune

    cfg = OmegaConf.create(
        compose_config(
            "tune",
            [
                "output_dir=/tmp",
                "search.metric=cv/logloss/mean",
                f"tune.storage={tmp_path}/s.journal",
                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            ],
        )
    )
    with pytest.raises(ValueError, match=r"search.metric=cv/logloss/mean .* eval.cv.folds is 0"):
        run_tune(cfg)
    assert not (tmp_path / "s.journal").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_search_over_a_cross_validated_metric_finishes_and_picks_the_best_interval(
    tmp_path, synthetic_dir, capsys
):
    from omegaconf import OmegaConf

    from pipelines.stages.tune import run_tune

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = OmegaConf.create(
        compose_config(
            "tune",
            [
                f"output_dir={tmp_path}",
                f"data.path={synthetic_dir}/sessions",
                f"data.stores_path={synthetic_dir}/stores.csv",
                f"tracking.uri={uri}",
                f"tune.storage={tmp_path}/s.journal",
                "tune.n_trials=2",
                "runtime.threads=1",
                "model.num_boost_round=40",
                "search.pruning=false",
                "search.metric=cv/logloss/mean",
                "eval.cv.folds=2",
                "drivers_rows=0",
            ],
        )
    )
    out = run_tune(cfg)
    client = MlflowClient(uri, registry_uri=uri)
    trials = client.search_runs(
        [client.get_experiment_by_name("micromoment").experiment_id],
        "tags.`tune.state` = 'COMPLETE'",
    )
    assert len(trials) == 2
    best = min(t.data.metrics["cv/logloss/mean"] for t in trials)
    assert out["best_value"] == pytest.approx(best)
    assert all("cv/logloss/ci_high" in t.data.metrics for t in trials)
    best_run = next(t for t in trials if t.data.metrics["cv/logloss/mean"] == best)
    low = best_run.data.metrics["cv/logloss/ci_low"]
    assert f"cv/logloss/mean={best:.5f}, 95% interval {low:.5f} to" in capsys.readouterr().out
