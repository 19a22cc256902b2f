"""`micromoment retrain`: the scheduled job. New window -> challenger -> gate -> promote or keep.

Safe to run unattended:
- a lock file keeps two jobs from running at once (the second exits with EXIT_LOCKED);
- the tracking server is checked first; when it cannot be reached nothing is trained or registered;
- the same data window and config twice reuse the version registered the first time;
- the champion alias moves in one registry call at the very end, so a job killed at any point
  leaves it where it was;
- a JSON summary (window, fingerprint, versions, scores, drift, decision) is written atomically.

Exit codes (documented in the README) tell a scheduler what happened.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipelines.config import hydra_main
from pipelines.core import keys
from pipelines.core.contract import ContractError, DatasetSpec, to_contract
from pipelines.engines import engine_for
from pipelines.io.outputs import atomic_path, claim_output, exclusive_lock
from pipelines.io.readers import EmptyInput, read_window
from pipelines.stages import runner
from pipelines.stages.runner import UserError
from pipelines.tracking import runs
from pipelines.tracking.promotion import champion_drift, gate, holdout, policy_from
from pipelines.tracking.registry import CHAMPION, resolve_version
from pipelines.tracking.train_run import log_and_register

# the exit codes of the README's table, under the names the job uses (see pipelines.stages.runner)
EXIT_OK = runner.EXIT_OK  # promoted, or kept the champion
EXIT_FAILED = runner.EXIT_BUG  # anything unexpected (a bug): the traceback is in the log
EXIT_BAD_DATA = runner.EXIT_BAD_DATA  # the window is empty, or the data cannot be read as sessions
EXIT_TRACKING = runner.EXIT_TRACKING  # the tracking server or registry cannot be reached
EXIT_GATE = runner.EXIT_MODEL  # the champion/challenger evaluation failed
EXIT_LOCKED = runner.EXIT_LOCKED  # another retrain job holds the lock
EXIT_USAGE = runner.EXIT_USAGE  # a config value refused (a password inside a URI, an output path)

log = logging.getLogger(__name__)


class RetrainError(UserError):
    """An expected failure of the job, with the exit code the README promises."""

    def __init__(self, code: int, message: str):
        super().__init__(message, code)


def retrain(cfg: DictConfig, summary: dict | None = None) -> dict:
    """The job; raises RetrainError with an exit code for every expected failure.

    `summary` is filled in as the job goes, so a job that fails still reports how far it got.
    """
    c = OmegaConf.to_container(cfg, resolve=True)
    name = c["registry"]["model_name"]
    summary = {} if summary is None else summary
    summary.update(started_at=datetime.now(UTC).isoformat(timespec="seconds"), model_name=name)
    uri = runs.resolve_tracking_uri(c["tracking"]["uri"])
    summary["tracking_uri"] = runs.redact(uri)
    runner.check_tracking(uri)
    runs.setup(c["tracking"])
    client = MlflowClient()
    spec = DatasetSpec.from_config(c["data"])
    window, key = read_valid_window(c, spec, summary)
    champion = resolve_version(client, name, CHAMPION)
    summary["champion_before"] = champion
    if champion is not None and drift_is_small(c, client, champion, window, summary):
        return summary
    summary["challenger"] = challenger_version(c, client, window, key, summary)
    judge_challenger(c, client, window, spec, summary)
    if summary.get("run_id"):
        with mlflow.start_run(run_id=summary["run_id"]):
            if summary.get("drift", {}).get("available"):
                mlflow.log_metrics(
                    {
                        "drift/intent_mix_psi": summary["drift"]["intent_mix_psi"],
                        "drift/max_feature_psi": summary["drift"]["max_feature_psi"],
                    }
                )
            mlflow.log_dict(summary, "retrain_summary.json")
    return summary


def read_valid_window(c: Mapping, spec: DatasetSpec, summary: dict):
    """The window's raw sessions and the job key (its data fingerprint and the config);
    refuses a dataset without a start column, an unreadable input and too few valid sessions."""
    rt, path = c["retrain"], c["data"]["path"]
    started_col = spec.columns.get("started_at")
    if not started_col:
        raise RetrainError(
            EXIT_BAD_DATA,
            "the dataset config maps no started_at column; retraining needs one to pick a window",
        )
    try:
        window, start, stop = read_window(path, started_col, rt["window_days"], rt["end"])
        contract = to_contract(window, spec, source=str(path), with_label=True)
    except (ContractError, EmptyInput, FileNotFoundError) as err:
        raise RetrainError(EXIT_BAD_DATA, str(err)) from None
    min_rows = max(1, int(rt["min_rows"]))
    if len(contract.sessions) < min_rows:
        raise RetrainError(
            EXIT_BAD_DATA,
            f"{path}: the window {start} .. {stop} holds {len(contract.sessions)} valid "
            f"sessions, fewer than retrain.min_rows={rt['min_rows']}"
            + (f" ({len(contract.rejects)} rows rejected)" if len(contract.rejects) else ""),
        )
    fingerprint = keys.data_fingerprint(contract.sessions)
    key = keys.job_key(fingerprint, c)
    summary.update(
        window={"start": start.isoformat(), "end": stop.isoformat(), "days": rt["window_days"]},
        data={"fingerprint": fingerprint, **contract.counts},
        job_key=key,
    )
    return window, key


def drift_is_small(c: Mapping, client, champion: str, window: pd.DataFrame, summary: dict) -> bool:
    """Measure the window's drift against the champion's training data; True (and the summary's
    decision) when `retrain.min_psi` is set and the drift stays below it."""
    try:
        summary["drift"] = champion_drift(client, c["registry"]["model_name"], champion, window)
    except Exception as err:
        raise RetrainError(
            EXIT_GATE, f"drift against champion version {champion} failed: {err}"
        ) from err
    threshold, found = c["retrain"]["min_psi"], summary["drift"]
    if threshold is None or not found["available"]:
        return False
    if max(found["max_feature_psi"], found["intent_mix_psi"]) >= float(threshold):
        return False
    summary.update(
        decision="kept",
        reason=f"drift below retrain.min_psi={threshold}: no retraining needed",
        champion_after=champion,
    )
    return True


def challenger_version(c: Mapping, client, window: pd.DataFrame, key: str, summary: dict) -> str:
    """The version trained on this window and config: the one registered by an earlier run of
    the same job, or a new one trained, logged and registered now."""
    name = c["registry"]["model_name"]
    existing = [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if v.tags.get("retrain.job_key") == key
    ]
    if existing:
        summary["reused_version"] = True
        version = str(max(int(v.version) for v in existing))
        log.info("this window and config were trained before: reusing version %s", version)
        return version
    try:
        result = engine_for(c["engine"]).train(c, window)
    except ValueError as err:
        raise RetrainError(EXIT_BAD_DATA, str(err)) from None
    run = log_and_register(
        c,
        result,
        list(c["retrain"]["overrides"]),
        c["output_dir"],
        tags={"retrain.job_key": key, "retrain.window_end": summary["window"]["end"]},
        command="retrain",
    )
    summary["run_id"] = run["run_id"]
    summary["metrics"] = {
        k: v for k, v in result.metrics.items() if k.startswith("test/") and "/" not in k[5:]
    }
    return str(run["registered_version"])


def judge_challenger(
    c: Mapping, client, window: pd.DataFrame, spec: DatasetSpec, summary: dict
) -> None:
    """The gate on the window's most recent journeys; its decision into the summary."""
    name, version = c["registry"]["model_name"], summary["challenger"]
    try:
        rows, labels, holdout_fp = window_holdout(window, spec, c)
        policy = policy_from(c["gate"])
        threads = int(c["runtime"]["threads"])
        decision = gate(client, name, version, rows, labels, holdout_fp, policy, threads)
    except Exception as err:
        raise RetrainError(
            EXIT_GATE, f"gate evaluation failed: {type(err).__name__}: {err}"
        ) from err
    challenger = decision.challenger_score
    summary.update(
        decision="promoted" if decision.promote else "kept",
        reason=decision.reason,
        scores={
            "metric": c["gate"]["metric"],
            "challenger": challenger if math.isfinite(challenger) else None,
            "champion": decision.champion_score,
        },
        holdout={
            "fingerprint": holdout_fp,
            "rows_offered": len(rows),
            "rows_judged": decision.rows,
            "fairness": decision.fairness,
        },
        champion_after=resolve_version(client, name, CHAMPION),
    )


def window_holdout(window: pd.DataFrame, spec, c: Mapping):
    """The most recent journeys of the window: both models are judged on exactly these rows."""
    split = dict(c["split"], by="time")
    return holdout(window, spec, split, int(c["runtime"]["seed"]), str(c["data"]["path"]))


def write_summary(summary: Mapping, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str))


def run_retrain(cfg: DictConfig) -> int:
    """The job with its lock; the summary is written on every exit path but a locked one."""
    rt = cfg.retrain
    summary: dict = {"written_by": "retrain"}
    runner.STARTED["value"] = True
    summary_path = None  # known to be the job's own only once claimed
    try:
        summary_path = claim_output(rt.summary_path, "retrain", inputs=(cfg.data.path,))
        runner.start(cfg, tracking=False)  # retrain checks the server itself, into the summary
        claim_output(rt.lock_path, "retrain", inputs=(cfg.data.path, rt.summary_path))
        with exclusive_lock(rt.lock_path, "retrain job"):
            retrain(cfg, summary)
            code = EXIT_OK
    except Exception as err:
        code, message = runner.exit_code_for(err)
        if code == EXIT_FAILED:
            log.exception("retrain failed with a bug")
        summary.update(decision="error", error=message)
        runner.fail("retrain", code, message)
    summary["exit_code"] = code
    summary["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    # a job that never ran must not overwrite the running job's summary, nor a refused path
    if code != EXIT_LOCKED and summary_path is not None:
        try:
            write_summary(summary, summary_path)
        except Exception as err:  # the exit code still tells the scheduler what happened
            runner.fail("retrain", code, f"the summary could not be written: {err}")
    if code == EXIT_OK:
        print(
            f"retrain: {summary['decision']} (champion {summary.get('champion_before')} -> {summary.get('champion_after')}); "
            f"{summary.get('reason', '')}\nsummary: {rt.summary_path}",
            flush=True,
        )
    return code


@hydra_main("retrain")
def main(cfg: DictConfig) -> None:
    code = run_retrain(cfg)
    if code:
        sys.exit(code)
