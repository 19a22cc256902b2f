"""The scheduled retraining job: windows, drift, the gate, and every exit path and fault."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.engines.local import generate
from pipelines.io.outputs import exclusive_lock
from pipelines.stages.retrain import (
    EXIT_BAD_DATA,
    EXIT_GATE,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_TRACKING,
    EXIT_USAGE,
    run_retrain,
)
from tests.conftest import compose_config
from tests.fixtures import run_cli

NAME = "micro_moment_intent"
# three periods of about 1500 journeys each: the last one after a market shift
PERIODS = {
    "p1": ("default", "2026-07-01", 1),
    "p2": ("default", "2026-09-01", 2),
    "p3": ("shifted", "2026-11-01", 3),
}
END_OF = {"p1": "2026-08-31", "p2": "2026-10-31", "p3": None}  # None: the latest session


def _generator(name: str, start: str) -> dict:
    """The generator preset `name` (`conf/generator/<name>.yaml`) starting on `start`."""
    cfg = compose_config("generate", [f"generator={name}", f"generator.start_date={start}"])
    return cfg["generator"]


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> Path:
    """A date-partitioned sessions folder: two unshifted periods, then a shifted one."""
    root = tmp_path_factory.mktemp("stream")
    (root / "sessions").mkdir()
    for period, (generator, start, seed) in PERIODS.items():
        out = root / f"gen-{period}"
        generate(
            {
                "out_dir": str(out),
                "n_journeys": 1500,
                "chunk_journeys": 1500,
                "seed": seed,
                "posterior": False,
            },
            _generator(generator, start),
        )
        frame = pd.read_parquet(out / "sessions")
        for col in ("session_id", "journey_id"):
            frame[col] = f"{period}-" + frame[col].astype(str)
        frame.to_parquet(root / "sessions" / f"part-{period}.parquet", index=False)
        (root / "stores.csv").write_text((out / "stores.csv").read_text())
    return root


def retrain_overrides(root: Path, uri: str, data: str | Path, work: Path, *extra: str) -> list:
    """The retrain job's overrides for the test stream `root`, one store and one work folder."""
    return [
        f"data.path={data}",
        f"data.stores_path={root / 'stores.csv'}",
        f"tracking.uri={uri}",
        f"output_dir={work}",
        f"retrain.lock_path={work / 'retrain.lock'}",
        f"retrain.summary_path={work / 'summary.json'}",
        "retrain.window_days=61",
        "runtime.threads=1",
        "baselines=false",
        "model.num_boost_round=200",
        "model.early_stopping_rounds=20",
        "gate.min_improvement=0.02",
        *extra,
    ]


def retrain_config(root: Path, uri: str, data: str | Path, work: Path, *extra: str):
    return OmegaConf.create(
        compose_config("retrain", retrain_overrides(root, uri, data, work, *extra))
    )


def _retrain(stream: Path, uri: str, work: Path, period: str, *extra: str) -> tuple[int, dict]:
    end = END_OF[period]
    cfg = retrain_config(
        stream, uri, stream / "sessions", work, f"retrain.end={end or 'null'}", *extra
    )
    code = run_retrain(cfg)
    summary = json.loads((work / "summary.json").read_text())
    return code, summary


def _versions(uri: str) -> list[str]:
    client = MlflowClient(uri, registry_uri=uri)
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))


def _champion(uri: str) -> str | None:
    client = MlflowClient(uri, registry_uri=uri)
    try:
        return str(client.get_model_version_by_alias(NAME, "champion").version)
    except Exception:
        return None


@pytest.fixture(scope="module")
def scenario(stream, tmp_path_factory):
    """One registry through successive windows, as a scheduler would run the job:
    p1 (first champion), p1 again (identical), p2 with a drift threshold above its drift,
    p2 (unshifted), p3 (shifted)."""
    work = tmp_path_factory.mktemp("scenario")
    uri = f"sqlite:///{work}/mlflow.db"
    steps = {}
    steps["first"] = _retrain(stream, uri, work, "p1")
    steps["versions_after_first"] = _versions(uri)
    steps["again"] = _retrain(stream, uri, work, "p1")
    steps["versions_after_again"] = _versions(uri)
    steps["calm"] = _retrain(stream, uri, work, "p2", "retrain.min_psi=0.5")
    steps["versions_after_calm"] = _versions(uri)
    steps["unshifted"] = _retrain(stream, uri, work, "p2")
    steps["shifted"] = _retrain(stream, uri, work, "p3")
    steps["uri"], steps["work"] = uri, work
    return steps


def test_the_first_model_becomes_champion(scenario):
    code, summary = scenario["first"]
    assert code == EXIT_OK and summary["exit_code"] == EXIT_OK
    assert summary["decision"] == "promoted"
    assert summary["champion_before"] is None and summary["champion_after"] == "1"
    assert summary["window"]["end"].startswith("2026-08-31")
    assert summary["data"]["rows_kept"] > 3000 and summary["data"]["rows_rejected"] == 0
    assert scenario["versions_after_first"] == ["1"]


def test_the_window_holds_only_sessions_of_the_last_days(scenario, stream):
    summary = scenario["unshifted"][1]
    sessions = pd.read_parquet(stream / "sessions")
    start, end = pd.Timestamp(summary["window"]["start"]), pd.Timestamp(summary["window"]["end"])
    inside = (sessions["started_at"] > start) & (sessions["started_at"] <= end)
    assert summary["data"]["rows_in"] == inside.sum()
    assert end - start == pd.Timedelta(days=61)


def test_the_same_window_and_config_twice_registers_no_duplicate(scenario):
    code, summary = scenario["again"]
    assert code == EXIT_OK
    assert summary["reused_version"] is True and summary["challenger"] == "1"
    assert scenario["versions_after_again"] == ["1"]
    assert summary["decision"] == "kept" and "already the champion" in summary["reason"]


def test_drift_below_the_threshold_keeps_the_champion_without_training(scenario):
    code, summary = scenario["calm"]
    assert code == EXIT_OK and summary["decision"] == "kept"
    assert "retrain.min_psi=0.5" in summary["reason"]
    drift = summary["drift"]
    assert drift["available"] and drift["max_feature_psi"] < 0.5 and drift["intent_mix_psi"] < 0.5
    assert scenario["versions_after_calm"] == ["1"]  # nothing trained, nothing registered


def test_an_unshifted_window_keeps_the_champion(scenario):
    code, summary = scenario["unshifted"]
    assert code == EXIT_OK
    assert summary["challenger"] == "2" and summary["decision"] == "kept"
    assert summary["champion_before"] == summary["champion_after"] == "1"
    scores = summary["scores"]
    assert abs(scores["challenger"] - scores["champion"]) < 0.02  # same market, same quality


def test_a_shifted_window_restores_accuracy_and_promotes(scenario):
    code, summary = scenario["shifted"]
    assert code == EXIT_OK
    assert summary["decision"] == "promoted" and summary["champion_after"] == "3"
    scores = summary["scores"]
    # the stale champion lost ground on the shifted window; the retrained model wins it back
    assert scores["challenger"] - scores["champion"] > 0.03
    assert scores["challenger"] > scenario["unshifted"][1]["scores"]["champion"] - 0.1
    # drift is large and names the shifted features
    drift = summary["drift"]
    assert drift["max_feature_psi"] > 0.25
    assert drift["max_feature_psi"] > 5 * scenario["unshifted"][1]["drift"]["max_feature_psi"]
    assert _champion(scenario["uri"]) == "3"
    client = MlflowClient(scenario["uri"], registry_uri=scenario["uri"])
    version = client.get_model_version(NAME, "3")
    assert version.tags["gate.decision"] == "promoted"
    assert version.tags["gate.previous_champion"] == "1"
    assert version.tags["retrain.job_key"] == summary["job_key"]
    run = client.get_run(summary["run_id"])
    assert "drift/max_feature_psi" in run.data.metrics


# ---------------------------------------------------------------------------------------------
# bad data: exit 3, nothing registered


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_path", "no such file or folder"),
        ("empty_window", "no sessions between"),
        ("too_few_rows", "fewer than retrain.min_rows=100000"),
        ("no_label_column", "required column 'intent'"),
        ("no_time_column", "the time column 'started_at' is missing"),
    ],
)
def test_bad_or_empty_data_exits_3_naming_the_file(stream, tmp_path, capsys, case, message):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    data, extra = stream / "sessions", []
    if case == "missing_path":
        data = tmp_path / "nowhere"
    elif case == "empty_window":
        extra = ["retrain.end=2020-01-01"]
    elif case == "too_few_rows":
        extra = ["retrain.min_rows=100000"]
    else:
        column = "intent" if case == "no_label_column" else "started_at"
        data = tmp_path / "broken.parquet"
        pd.read_parquet(stream / "sessions").drop(columns=[column]).to_parquet(data)
    code = run_retrain(retrain_config(stream, uri, data, tmp_path, *extra))
    assert code == EXIT_BAD_DATA
    err = capsys.readouterr().err
    assert message in err and str(data) in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_code"] == EXIT_BAD_DATA and message in summary["error"]
    assert _versions(uri) == []


# ---------------------------------------------------------------------------------------------
# the tracking server: exit 4, and secrets stay out of every record


def test_unreachable_tracking_server_exits_4_naming_it(stream, tmp_path, capsys):
    uri = "http://127.0.0.1:9/"  # the discard port: nothing listens
    code = run_retrain(retrain_config(stream, uri, stream / "sessions", tmp_path))
    assert code == EXIT_TRACKING
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "127.0.0.1:9" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_code"] == EXIT_TRACKING and summary["tracking_uri"] == uri


def test_a_password_inside_the_tracking_uri_is_refused_and_never_recorded(stream, tmp_path, capsys):
    uri = "http://retrain:s3cr3t-pw@127.0.0.1:9/"
    code = run_retrain(retrain_config(stream, uri, stream / "sessions", tmp_path))
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_PASSWORD" in err and "s3cr3t-pw" not in err
    summary_text = (tmp_path / "summary.json").read_text()
    assert "s3cr3t-pw" not in summary_text
    assert json.loads(summary_text)["exit_code"] == EXIT_USAGE


def test_an_empty_csv_exits_3_and_the_summary_replaces_the_last_jobs(stream, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "summary.json").write_text(json.dumps({"written_by": "retrain", "exit_code": 0}))
    for content in ("", "session_id,journey_id,started_at,intent\n"):
        (tmp_path / "empty.csv").write_text(content)
        code = run_retrain(retrain_config(stream, uri, tmp_path / "empty.csv", tmp_path))
        assert code == EXIT_BAD_DATA
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["exit_code"] == EXIT_BAD_DATA and "empty.csv" in summary["error"]
    assert len([ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]) == 2


def test_a_summary_path_that_is_the_data_is_refused_and_the_data_kept(stream, tmp_path):
    data = tmp_path / "sessions.parquet"
    pd.read_parquet(stream / "sessions").head(50).to_parquet(data)
    before = data.read_bytes()
    cfg = retrain_config(stream, f"sqlite:///{tmp_path}/mlflow.db", data, tmp_path)
    cfg.retrain.summary_path = str(data)
    assert run_retrain(cfg) == EXIT_USAGE
    assert data.read_bytes() == before


@pytest.mark.slow
def test_the_gate_judges_only_journeys_the_champion_did_not_train_on(stream, tmp_path):
    """A champion trained with a journey split over all the data saw most journeys of any later
    window: only the window's latest journeys that were in the champion's own test split count."""
    from pipelines.core.contract import DatasetSpec, to_contract
    from pipelines.core.modelling import split_sessions
    from pipelines.io.readers import read_sessions, read_window
    from pipelines.stages.train import train
    from pipelines.tracking.promotion import holdout
    from pipelines.tracking.train_run import log_and_register

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = [
        f"data.path={stream / 'sessions'}",
        f"data.stores_path={stream / 'stores.csv'}",
        f"tracking.uri={uri}",
        f"output_dir={tmp_path}",
        "runtime.threads=1",
        "baselines=false",
        "model.num_boost_round=60",
        "registry.gate=true",
    ]
    champion_cfg = compose_config("train", base)
    log_and_register(champion_cfg, train(champion_cfg), [], str(tmp_path))
    assert _champion(uri) == "1"

    cfg = retrain_config(stream, uri, stream / "sessions", tmp_path, "retrain.end=2026-10-31")
    assert run_retrain(cfg) == EXIT_OK
    summary = json.loads((tmp_path / "summary.json").read_text())

    # independently: the window's held-out rows, and which journeys were the champion's test split
    c = OmegaConf.to_container(cfg, resolve=True)
    spec = DatasetSpec.from_config(c["data"])
    window, _, _ = read_window(str(stream / "sessions"), "started_at", 61, "2026-10-31")
    rows, _, _ = holdout(window, spec, dict(c["split"], by="time"), 42, "window")
    everything = to_contract(read_sessions(stream / "sessions"), spec).sessions
    side = split_sessions(everything, 0.15, 0.15, by="journey", seed=42)
    champion_test = set(everything.loc[side.to_numpy() == "test", "journey_id"])
    expected = int(rows["journey_id"].isin(champion_test).sum())

    assert summary["holdout"]["rows_offered"] == len(rows)
    assert summary["holdout"]["rows_judged"] == expected
    assert 0 < expected < 0.3 * len(rows)
    assert "neither version trained" in summary["holdout"]["fairness"]
    if expected < 200:
        assert summary["decision"] == "kept" and "gate.min_holdout_rows=200" in summary["reason"]


# ---------------------------------------------------------------------------------------------
# one job at a time: exit 6


def test_a_second_job_exits_6_while_the_first_holds_the_lock(stream, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "summary.json").write_text('{"written_by": "retrain", "from": "the running job"}')
    with exclusive_lock(tmp_path / "retrain.lock"):
        code = run_retrain(retrain_config(stream, uri, stream / "sessions", tmp_path))
    assert code == EXIT_LOCKED
    err = capsys.readouterr().err
    assert "another retrain job holds the lock" in err and f"pid {os.getpid()}" in err
    # the job that never ran leaves the running job's summary alone, and registers nothing
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "written_by": "retrain",
        "from": "the running job",
    }
    assert _versions(uri) == []


# ---------------------------------------------------------------------------------------------
# faults after training: exit 5, and a job killed before the alias moves


def test_a_failed_gate_evaluation_exits_5_and_keeps_the_champion(stream, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code, _ = _retrain(stream, uri, tmp_path, "p1")
    assert code == EXIT_OK and _champion(uri) == "1"
    # the champion's artifacts are lost (a wiped bucket, a bad mount): it cannot be evaluated
    for model_file in (tmp_path / "mlartifacts").rglob("MLmodel"):
        model_file.unlink()
    code, summary = _retrain(stream, uri, tmp_path, "p3")
    assert code == EXIT_GATE
    assert "champion version 1" in capsys.readouterr().err
    assert summary["exit_code"] == EXIT_GATE
    assert _champion(uri) == "1"


@pytest.mark.slow
def test_a_job_killed_before_the_alias_moves_leaves_the_champion_and_a_rerun_completes(
    stream, tmp_path
):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code, first = _retrain(stream, uri, tmp_path, "p1")
    assert code == EXIT_OK and _champion(uri) == "1"
    # a job on the shifted window is killed (SIGKILL) at the last moment: when it moves the alias
    overrides = retrain_overrides(stream, uri, stream / "sessions", tmp_path)
    script = textwrap.dedent(
        f"""
        import os, signal
        from mlflow.tracking import MlflowClient
        from omegaconf import OmegaConf
        from pipelines.stages.retrain import run_retrain
        from tests.conftest import compose_config

        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        MlflowClient.set_registered_model_alias = killed
        run_retrain(OmegaConf.create(compose_config("retrain", {overrides!r})))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _versions(uri) == ["1", "2"]  # the challenger was registered ...
    assert _champion(uri) == "1"  # ... but the champion did not move
    assert json.loads((tmp_path / "summary.json").read_text()) == first  # no half summary
    # the next scheduled run takes the lock, reuses the registered challenger and promotes it
    code, summary = _retrain(stream, uri, tmp_path, "p3")
    assert code == EXIT_OK
    assert summary["reused_version"] is True and summary["challenger"] == "2"
    assert summary["decision"] == "promoted" and _champion(uri) == "2"
    assert _versions(uri) == ["1", "2"]


@pytest.mark.slow
def test_run_then_retrain_on_the_embedded_default_exits_0_and_a_rerun_reuses_the_version(tmp_path):
    """What a scheduler does after `make demo`: the default data holds a full recent window."""
    run = run_cli(["run", "runtime.threads=1"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    first = run_cli(["retrain", "runtime.threads=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "retrain_summary.json").read_text())
    assert summary["exit_code"] == 0 and summary["data"]["rows_kept"] > 20_000
    assert summary["decision"] in ("promoted", "kept") and summary["reason"]
    # judged only on journeys neither version trained on: a fraction of the window's latest ones
    held_out = summary["holdout"]
    assert 200 <= held_out["rows_judged"] < held_out["rows_offered"]
    again = run_cli(["retrain", "runtime.threads=1"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "retrain_summary.json").read_text())
    assert rerun["reused_version"] is True and rerun["challenger"] == summary["challenger"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    versions = MlflowClient(uri, registry_uri=uri).search_model_versions(
        "name = 'micro_moment_intent'"
    )
    assert len(versions) == 2
