"""The registry: champion/challenger gating, tags, rollback and export."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines.promote import export, resolve_version, rollback


@pytest.fixture
def client(registry_store):
    mlflow.set_tracking_uri(registry_store["uri"])
    mlflow.set_registry_uri(registry_store["uri"])
    return MlflowClient(registry_store["uri"], registry_uri=registry_store["uri"])


NAME = "micro_moment_intent"


def test_first_model_becomes_champion_and_a_better_one_replaces_it(registry_store, client):
    gates = [s["gate"] for s in registry_store["summaries"]]
    assert gates[0].promote and "first model" in gates[0].reason
    assert gates[1].promote and gates[1].challenger_score > gates[1].champion_score
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["gate.decision"] == "promoted"
    assert v2.tags["gate.previous_champion"] == "1"
    assert v2.tags["gate.data_fingerprint"]
    assert float(v2.tags["gate.challenger_score"]) > float(v2.tags["gate.champion_score"])


def test_worse_challenger_is_not_promoted(registry_store, client):
    third = registry_store["summaries"][2]["gate"]
    assert not third.promote
    v3 = client.get_model_version(NAME, "3")
    assert v3.tags["gate.decision"] == "kept_champion"
    assert v3.tags["gate.champion_version"] == "2"
    assert float(v3.tags["gate.challenger_score"]) < float(v3.tags["gate.champion_score"])
    # both were scored on the very same rows
    assert (
        v3.tags["gate.data_fingerprint"]
        == client.get_model_version(NAME, "2").tags["gate.data_fingerprint"]
    )
    assert resolve_version(client, NAME, "challenger") == "3"


def test_rollback_is_one_call_and_reversible(registry_store, client):
    assert resolve_version(client, NAME, "champion") == "2"
    before, after = rollback(client, NAME)
    assert (before, after) == ("2", "1")
    assert resolve_version(client, NAME, "champion") == "1"
    rollback(client, NAME, to_version=2)
    assert resolve_version(client, NAME, "champion") == "2"
    with pytest.raises(Exception, match="99"):
        rollback(client, NAME, to_version=99)


def test_predictions_carry_model_name_and_version(registry_store, client, small_sessions):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(small_sessions.head(3).drop(columns=["intent"]))
    assert out["model_name"].tolist() == [NAME] * 3
    assert out["model_version"].tolist() == ["2"] * 3


@pytest.mark.slow
def test_exported_model_loads_by_path_without_a_tracking_server(registry_store, client, tmp_path):
    path = export(f"models:/{NAME}@champion", tmp_path / "models")
    assert (
        path.name == f"{NAME}-v2"
        and (path / "MLmodel").exists()
        and (path / "export.json").exists()
    )
    code = (
        "import mlflow, pandas as pd, sys\n"
        f"m = mlflow.pyfunc.load_model({str(path)!r})\n"
        "out = m.predict(pd.DataFrame({'session_id': ['a'], 'device': ['mobile'], 'dwell_time_s': [30.0]}))\n"
        "print(out.loc[0, 'model_version'], out.loc[0, 'intent'])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = (
        "http://127.0.0.1:9"  # nothing listens: the folder must not need it
    )
    elsewhere = tmp_path / "consumer"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    version, intent = proc.stdout.split()[-2:]
    assert version == "2" and intent in {"know", "go", "do", "buy"}
