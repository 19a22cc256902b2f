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

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipelines.core import drift, modelling
from pipelines.stages import runner
from pipelines.tracking.runs import runs as tracking
from pipelines.config import hydra_main
from pipelines.core.contract import ContractError, DatasetSpec, to_contract
from pipelines.io.outputs import atomic_path, claim_output
from pipelines.io.readers import read_sessions
from pipelines.stages.promote import CHAMPION, gate, holdout, policy_from, resolve_version
from pipelines.stages.runner import UserError
from pipelines.stages.score import load_scorer
from pipelines.stages.train import log_and_register, train

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


@contextlib.contextmanager
def job_lock(path: str | Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on `path` for the life of the job (released if it dies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "another process"
            raise RetrainError(
                EXIT_LOCKED, f"another retrain job holds the lock {path} ({holder}); exiting"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}".encode(),
        )
        yield
    finally:
        os.close(fd)


def read_window(
    path: str, started_col: str, days: float, end: str | None
) -> tuple[pd.DataFrame, pd.Timestamp, pd.Timestamp]:
    """Sessions that started in the last `days` days before `end` (default: the latest session)."""
    raw = read_sessions(path)
    if started_col not in raw.columns:
        raise RetrainError(
            EXIT_BAD_DATA,
            f"{path}: the time column '{started_col}' is missing; retraining needs it to pick a window",
        )
    started = pd.to_datetime(raw[started_col], utc=True, errors="coerce", format="ISO8601")
    if started.notna().sum() == 0:
        raise RetrainError(EXIT_BAD_DATA, f"{path}: no readable timestamps in '{started_col}'")
    stop = pd.Timestamp(end, tz="UTC") if end else started.max()
    start = stop - pd.Timedelta(days=float(days))
    window = raw[(started > start) & (started <= stop)].reset_index(drop=True)
    if window.empty:
        raise RetrainError(EXIT_BAD_DATA, f"{path}: no sessions between {start} and {stop}")
    return window, start, stop


def job_key(fingerprint: str, cfg: Mapping) -> str:
    """Same data and same training config -> same key (volatile keys such as paths excluded)."""
    relevant = {k: cfg[k] for k in ("data", "features", "model", "split", "runtime") if k in cfg}
    relevant = json.loads(json.dumps(relevant, default=str))
    relevant.get("data", {}).pop("path", None)
    relevant.get("runtime", {}).pop("threads", None)
    relevant.get("runtime", {}).pop("log_level", None)
    text = fingerprint + json.dumps(relevant, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def champion_drift(client, name: str, champion: str, window: pd.DataFrame) -> dict:
    """PSI of the window's features and predicted-intent mix against the champion's training data."""
    version = client.get_model_version(name, champion)
    try:
        reference = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/drift_reference.json")
    except Exception:
        return {"available": False, "reason": f"version {champion} has no drift_reference.json"}
    model, _ = load_scorer(f"models:/{name}/{champion}", threads=1)
    canon = to_contract(
        window, model.spec, source="window", with_label=False, all_columns=False
    ).sessions
    features = model.featurizer.transform(canon)
    per_feature = drift.feature_psi(reference["features"], features)
    proba = model.predict_features(features)
    predicted = pd.Series([reference["classes"][i] for i in proba.argmax(axis=1)])
    mix_psi = drift.psi(reference["intent_mix"], drift.intent_mix(predicted, reference["classes"]))
    top = sorted(per_feature.items(), key=lambda kv: -kv[1])
    return {
        "available": True,
        "intent_mix_psi": mix_psi,
        "max_feature_psi": top[0][1] if top else 0.0,
        "max_feature": top[0][0] if top else None,
        "features": dict(top),
    }


def retrain(cfg: DictConfig, summary: dict | None = None) -> dict:
    """The job; raises RetrainError with an exit code for every expected failure.

    `summary` is filled in as the job goes, so a job that fails still reports how far it got.
    """
    c = OmegaConf.to_container(cfg, resolve=True)
    rt = c["retrain"]
    name = c["registry"]["model_name"]
    summary = {} if summary is None else summary
    summary.update(started_at=datetime.now(UTC).isoformat(timespec="seconds"), model_name=name)
    uri = tracking.resolve_tracking_uri(c["tracking"].get("uri"))
    summary["tracking_uri"] = tracking.redact(uri)
    runner.check_tracking(uri)
    tracking.setup(c["tracking"])
    client = MlflowClient()

    spec = DatasetSpec.from_config(c["data"])
    started_col = spec.columns.get("started_at")
    if not started_col:
        raise RetrainError(
            EXIT_BAD_DATA,
            "the dataset config maps no started_at column; retraining needs one to pick a window",
        )
    try:
        window, start, stop = read_window(
            c["data"]["path"], started_col, rt["window_days"], rt.get("end")
        )
        contract = to_contract(window, spec, source=str(c["data"]["path"]), with_label=True)
    except (ContractError, FileNotFoundError) as err:
        raise RetrainError(EXIT_BAD_DATA, str(err)) from None
    min_rows = int(rt.get("min_rows") or 1)
    if len(contract.sessions) < min_rows:
        raise RetrainError(
            EXIT_BAD_DATA,
            f"{c['data']['path']}: the window {start} .. {stop} holds {len(contract.sessions)} valid sessions, "
            f"fewer than retrain.min_rows={min_rows}",
        )
    if contract.sessions.empty:
        raise RetrainError(
            EXIT_BAD_DATA,
            f"every session of the window was rejected ({len(contract.rejects)} rows)",
        )
    fingerprint = modelling.data_fingerprint(contract.sessions)
    key = job_key(fingerprint, c)
    summary.update(
        window={"start": start.isoformat(), "end": stop.isoformat(), "days": rt["window_days"]},
        data={"fingerprint": fingerprint, **contract.counts},
        job_key=key,
    )

    champion = resolve_version(client, name, CHAMPION)
    summary["champion_before"] = champion
    if champion is not None:
        try:
            summary["drift"] = champion_drift(client, name, champion, window)
        except Exception as err:
            raise RetrainError(
                EXIT_GATE, f"drift against champion version {champion} failed: {err}"
            ) from err
        threshold = rt.get("min_psi")
        if (
            threshold is not None
            and summary["drift"]["available"]
            and max(summary["drift"]["max_feature_psi"], summary["drift"]["intent_mix_psi"])
            < float(threshold)
        ):
            summary.update(
                decision="kept",
                reason=f"drift below retrain.min_psi={threshold}: no retraining needed",
                champion_after=champion,
            )
            return summary

    existing = [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if v.tags.get("retrain.job_key") == key
    ]
    if existing:
        version = str(max(int(v.version) for v in existing))
        summary["reused_version"] = True
        log.info("this window and config were trained before: reusing version %s", version)
    else:
        try:
            result = train(c, sessions=window)
        except ValueError as err:
            raise RetrainError(EXIT_BAD_DATA, str(err)) from None
        run = log_and_register(
            c,
            result,
            list(rt.get("overrides") or []),
            c.get("output_dir"),
            tags={"retrain.job_key": key, "retrain.window_end": stop.isoformat()},
        )
        version = str(run["registered_version"])
        summary["run_id"] = run["run_id"]
        summary["metrics"] = {
            k: v for k, v in result.metrics.items() if k.startswith("test/") and "/" not in k[5:]
        }
    summary["challenger"] = version

    try:
        rows, labels, holdout_fp = window_holdout(window, spec, c)
        decision = gate(
            client,
            name,
            version,
            rows,
            labels,
            holdout_fp,
            policy_from(c["gate"]),
            int(c["runtime"]["threads"]),
        )
    except Exception as err:
        raise RetrainError(
            EXIT_GATE, f"gate evaluation failed: {type(err).__name__}: {err}"
        ) from err
    summary.update(
        decision="promoted" if decision.promote else "kept",
        reason=decision.reason,
        scores={
            "metric": c["gate"]["metric"],
            "challenger": decision.challenger_score
            if math.isfinite(decision.challenger_score)
            else None,
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
        with job_lock(rt.lock_path):
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
