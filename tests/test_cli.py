"""The `micromoment` command, its configs, and the MLflow record of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from pipelines.cli import COMMANDS, main
from pipelines.config import CONF_DIR
from pipelines.stages.train import train
from pipelines.tracking.train_run import log_and_register
from tests.conftest import compose_config
from tests.fixtures import run_cli

PRIMARY_CONFIGS = sorted(p.stem for p in Path(CONF_DIR).glob("*.yaml"))


@pytest.mark.parametrize("name", PRIMARY_CONFIGS)
def test_every_primary_config_composes(name):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(name)
    assert "runtime" in cfg and cfg.runtime.threads >= 1


@pytest.mark.parametrize("override", ["data=web_analytics", "split=time", "features.history=false"])
def test_config_groups_compose(override):
    cfg = compose_config("train", [override, "output_dir=/tmp", "data.path=x.csv"])
    assert cfg["model"]["num_boost_round"] > 0


def test_run_config_reads_what_generate_writes():
    cfg = compose_config("run", ["output_dir=/tmp", "generate.out_dir=/data/x"])
    assert cfg["data"]["path"] == "/data/x/sessions"
    assert cfg["data"]["stores_path"] == "/data/x/stores.csv"


def test_usage_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_training_run_is_logged_and_registered(train_config, tmp_path):
    result = train(train_config)
    summary = log_and_register(train_config, result, ["runtime.threads=1"], str(tmp_path))
    client = MlflowClient(
        train_config["tracking"]["uri"], registry_uri=train_config["tracking"]["uri"]
    )
    run = client.get_run(summary["run_id"])
    assert run.data.metrics["test/accuracy"] == pytest.approx(result.metrics["test/accuracy"])
    assert "test/bayes/accuracy" in run.data.metrics and "data/rows_rejected" in run.data.metrics
    assert run.data.params["model.params.learning_rate"] == "0.05"
    assert run.data.tags["data_fingerprint"] == result.fingerprint
    assert run.data.tags["overrides"] == "runtime.threads=1"
    assert run.data.tags["git_commit"]
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"], "plots")}
    assert artifacts == {
        "plots/confusion_matrix.png",
        "plots/reliability.png",
        "plots/feature_importance.png",
    }
    assert {a.path for a in client.list_artifacts(summary["run_id"], "config")} == {
        "config/resolved.yaml",
        "config/overrides.txt",
    }
    version = client.get_model_version_by_alias("micro_moment_intent", "challenger")
    assert version.run_id == summary["run_id"]
    assert str(summary["registered_version"]) == str(version.version)


def test_secrets_in_tracking_uri_are_redacted():
    from pipelines.tracking.runs import flatten, redact

    uri = "postgresql://mlflow:s3cr3t@db.internal:5432/mlflow"
    assert redact(uri) == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert "s3cr3t" not in str(flatten({"tracking": {"uri": uri}}))


def _cli(args: list[str], cwd: Path, env_extra: dict | None = None, timeout: int = 600):
    return run_cli(args, cwd, env_extra, timeout)


@pytest.mark.slow
def test_micromoment_run_end_to_end_registers_a_version(tmp_path):
    """The README's main job on tiny data, in a fresh working directory with the embedded store."""
    proc = _cli(
        ["run", "generate.n_journeys=500", "runtime.threads=1", "model.num_boost_round=150"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run id:" in proc.stdout and "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    db = tmp_path / "mlflow.db"
    assert db.exists() and (tmp_path / "mlartifacts").is_dir()
    assert len(list((tmp_path / "data" / "synthetic" / "sessions").glob("part-*.parquet"))) == 1

    client = MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    version = client.get_model_version_by_alias("micro_moment_intent", "challenger")
    assert str(version.version) == "1"
    run = client.get_run(version.run_id)
    for key in (
        "test/accuracy",
        "test/macro_f1",
        "test/logloss",
        "test/ece",
        "test/bayes/accuracy",
        "test/logreg/accuracy",
    ):
        assert key in run.data.metrics, key
    assert run.data.metrics["test/accuracy"] > 0.7
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "plots",
        "config",
        "model_contract.json",
    }

    # a consumer in a fresh process, in another directory, with only the tracking URI
    elsewhere = tmp_path / "consumer"
    elsewhere.mkdir()
    code = (
        "import mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/micro_moment_intent@challenger')\n"
        "raw = pd.DataFrame({'session_id': ['a', 'b'], 'device': ['mobile', 'smartwatch'],"
        " 'dwell_time_s': [45.0, 600.0], 'pages_store_locator': [3, 0], 'pages_how_to': [0, 6]})\n"
        "out = m.predict(raw)\n"
        "print(out['intent'].tolist(), round(float(out[['p_know','p_go','p_do','p_buy']].sum(axis=1).max()), 6))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    consumer = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert consumer.returncode == 0, consumer.stderr[-3000:]
    assert consumer.stdout.strip().endswith("1.0")

    # and the champion's touchpoint feed: one row per journey, with the report beside it
    feed_dir = tmp_path / "touchpoints" / "latest"
    assert "touchpoint feed:" in proc.stdout and "report.html" in proc.stdout
    feed = pd.read_parquet(feed_dir / "feed.parquet")
    sessions = pd.read_parquet(tmp_path / "data" / "synthetic" / "sessions")
    assert len(feed) == sessions["journey_id"].nunique() == 500
    assert set(feed["model_version"]) == {"1"} and set(feed["model_alias"]) == {"champion"}
    assert (feed_dir / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_sweep_is_one_parent_run_with_a_child_per_job(tmp_path):
    gen = _cli(["generate", "generate.n_journeys=300", "runtime.threads=1"], cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    proc = _cli(
        [
            "train",
            "-m",
            "model.params.learning_rate=0.05,0.2",
            "runtime.threads=1",
            "model.num_boost_round=60",
            "baselines=false",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep of 2 jobs" in proc.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("micromoment")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert sorted(c.data.params["model.params.learning_rate"] for c in children) == ["0.05", "0.2"]
    best = min(children, key=lambda c: c.data.metrics["val/logloss"])
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/logloss"] == pytest.approx(
        best.data.metrics["val/logloss"]
    )
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "sweep_summary.md",
        "sweep_summary.csv",
    }
    # one version for the whole sweep, @challenger on its best job, reporting its own version
    versions = client.search_model_versions("name = 'micro_moment_intent'")
    assert [v.run_id for v in versions] == [best.info.run_id]
    challenger = client.get_model_version_by_alias("micro_moment_intent", "challenger")
    assert challenger.run_id == best.info.run_id
    assert "registered the best job as micro_moment_intent version 1" in proc.stdout
    code = (
        "import mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/micro_moment_intent@challenger')\n"
        "print(m.predict(pd.DataFrame({'session_id': ['a'], 'device': ['mobile']}))"
        "['model_version'].iloc[0])\n"
    )
    consumer = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert consumer.returncode == 0, consumer.stderr[-2000:]
    assert consumer.stdout.strip().splitlines()[-1] == "1"


def test_config_typos_fail_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="devise"):
        compose_config("train", ["output_dir=/tmp", "data.columns.devise=device"])
    with pytest.raises(ConfigCompositionException, match="threads"):
        compose_config("train", ["output_dir=/tmp", "runtime.threads=two"])


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
)
def test_every_experiment_preset_composes_for_train_and_run(preset):
    cfg = compose_config("train", [f"experiment={preset}", "output_dir=/tmp"])
    assert cfg["tracking"]["run_name"] == preset
    run_cfg = compose_config("run", [f"experiment={preset}", "output_dir=/tmp"])
    assert run_cfg["tracking"]["run_name"] == preset


def test_presets_change_what_they_say():
    assert (
        compose_config("train", ["experiment=no_history", "output_dir=/tmp"])["features"]["history"]
        is False
    )
    assert (
        compose_config("train", ["experiment=time_split", "output_dir=/tmp"])["split"]["by"]
        == "time"
    )
    assert (
        compose_config("train", ["experiment=high_capacity", "output_dir=/tmp"])["model"]["params"][
            "num_leaves"
        ]
        == 127
    )


@pytest.mark.slow
def test_run_then_retrain_on_the_embedded_default_exits_0_and_a_rerun_reuses_the_version(tmp_path):
    """What a scheduler does after `make demo`: the default data holds a full recent window."""
    run = _cli(["run", "runtime.threads=1"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    first = _cli(["retrain", "runtime.threads=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "retrain_summary.json").read_text())
    assert summary["exit_code"] == 0 and summary["data"]["rows_kept"] > 20_000
    assert summary["decision"] in ("promoted", "kept") and summary["reason"]
    # judged only on journeys neither version trained on: a fraction of the window's latest ones
    held_out = summary["holdout"]
    assert 200 <= held_out["rows_judged"] < held_out["rows_offered"]
    again = _cli(["retrain", "runtime.threads=1"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "retrain_summary.json").read_text())
    assert rerun["reused_version"] is True and rerun["challenger"] == summary["challenger"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    versions = MlflowClient(uri, registry_uri=uri).search_model_versions(
        "name = 'micro_moment_intent'"
    )
    assert len(versions) == 2


@pytest.mark.parametrize(
    ("config", "override"),
    [
        ("score", "score.chunk_rows=many"),
        ("score", "score.inptu=x.csv"),
        ("touchpoints", "feed.log_to_mlflow=maybe"),
        ("run", "feed.enabled=sometimes"),
        ("retrain", "retrain.window_days=a_month"),
        ("retrain", "retrain.min_row=10"),
        ("tune", "tune.n_trials=lots"),
        ("tune", "search.direction=up"),
        ("promote", "promote.challanger=3"),
        ("rollback", "rollback.to_version=previous"),
        ("export", "export.out=models"),
        ("generate", "generator.days=soon"),
        ("generate", "generator.dayz=30"),
    ],
)
def test_every_command_block_is_typed_at_compose_time(config, override):
    from hydra.errors import ConfigCompositionException

    extra = ["output_dir=/tmp"] if config in ("run", "retrain", "tune") else []
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(config, [override, *extra])
    assert override.split("=")[0].split(".")[-1] in str(err.value) + str(err.value.__cause__)
