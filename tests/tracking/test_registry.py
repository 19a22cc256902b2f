"""The registry: champion/challenger gating, tags, rollback and export."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines.tracking.registry import export_model as export
from pipelines.tracking.registry import resolve_version, rollback


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


# ---------------------------------------------------------------------------------------------
# the model format: data plus code, no pickle


PROBS = ["p_know", "p_go", "p_do", "p_buy"]


def _no_pickle_process(code: str, uri: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_registered_version_is_data_plus_code_and_loads_with_pickles_refused(
    registry_store, client, small_sessions, tmp_path
):
    from pipelines.tracking.registry import load_scorer

    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/2", dst_path=str(tmp_path))
    files = {p.name for p in __import__("pathlib").Path(local).rglob("*") if p.is_file()}
    assert "python_model.pkl" not in files and not any(f.endswith(".pkl") for f in files)
    assert {"booster.txt", "state.json", "model_code.py"} <= files
    # a fresh process that refuses to unpickle anything loads and scores it
    raw = small_sessions.drop(columns=["intent"]).head(200)
    raw.to_parquet(tmp_path / "raw.parquet")
    code = (
        "import mlflow, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model('models:/{NAME}/2')\n"
        f"out = m.predict(pd.read_parquet({str(tmp_path / 'raw.parquet')!r}))\n"
        f"out.astype({{c: float for c in {PROBS!r}}}).to_parquet({str(tmp_path / 'out.parquet')!r})\n"
    )
    proc = _no_pickle_process(code, registry_store["uri"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = __import__("pandas").read_parquet(tmp_path / "out.parquet")
    # the same probabilities as the model that was trained, in this process
    model, _ = load_scorer(f"models:/{NAME}/2", threads=1)
    trained = registry_store["summaries"][1]
    assert trained["registered_version"] in (2, "2")
    expected = model.predict(raw)
    assert (served["model_version"] == "2").all()
    assert abs(served[PROBS].to_numpy() - expected[PROBS].to_numpy()).max() <= 1e-12


def test_saved_model_files_round_trip_exactly(registry_store, client, small_sessions, tmp_path):
    from pipelines.core.scorer import load_model, save_model
    from pipelines.tracking.registry import load_scorer

    model, _ = load_scorer(f"models:/{NAME}/2", threads=1)
    again = load_model(save_model(model, tmp_path / "m"), threads=1)
    raw = small_sessions.drop(columns=["intent"])
    assert again.spec == model.spec
    assert again.featurizer.categories_ == model.featurizer.categories_
    features = model.featurizer.transform_matrix(model_contract(model, raw))
    assert (again.featurizer.transform_matrix(model_contract(again, raw)) == features)[
        ~__import__("numpy").isnan(features)
    ].all()
    diff = again.predict(raw)[PROBS].to_numpy() - model.predict(raw)[PROBS].to_numpy()
    assert abs(diff).max() <= 1e-12


def model_contract(model, raw):
    from pipelines.core.contract import to_contract

    return to_contract(raw, model.spec, with_label=False, all_columns=False).sessions


def test_a_version_logged_as_a_pickle_before_still_loads_and_scores(
    registry_store, client, small_sessions, tmp_path
):
    """Versions registered before the model became data plus code were cloudpickled objects:
    they load and score as they always did."""
    from pipelines.tracking.model_format import IntentPyfunc, input_schema
    from pipelines.tracking.registry import load_scorer
    from pipelines.tracking.runs import PACKAGE_DIR

    model, _ = load_scorer(f"models:/{NAME}/2", threads=1)
    with mlflow.start_run() as run:  # as versions were logged before
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=IntentPyfunc(model, model_name="legacy_intent"),
            code_paths=[str(PACKAGE_DIR)],
            signature=mlflow.models.ModelSignature(inputs=input_schema(model)),
            registered_model_name="legacy_intent",
            model_config={"model_name": "legacy_intent", "run_id": run.info.run_id},
        )
    legacy, meta = load_scorer(f"models:/legacy_intent/{info.registered_model_version}", 1)
    raw = small_sessions.drop(columns=["intent"])
    diff = legacy.predict(raw)[PROBS].to_numpy() - model.predict(raw)[PROBS].to_numpy()
    assert abs(diff).max() == 0
    assert meta["model_version"] == str(info.registered_model_version)
