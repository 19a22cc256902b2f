"""MLflow runs: the tracking URI, the experiment, and what every run records."""

from __future__ import annotations


def test_secrets_in_tracking_uri_are_redacted():
    from pipelines.tracking.runs import flatten, redact

    uri = "postgresql://mlflow:s3cr3t@db.internal:5432/mlflow"
    assert redact(uri) == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert "s3cr3t" not in str(flatten({"tracking": {"uri": uri}}))


def test_the_tracking_uri_is_the_configs_then_the_environments_then_a_store_here(
    tmp_path, monkeypatch
):
    from pipelines.tracking.runs import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert resolve_tracking_uri(None) == "http://mlflow.internal:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_setup_creates_the_experiment_once_with_its_artifacts_beside_a_sqlite_store(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.tracking.runs import setup

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    first = setup({"uri": uri, "experiment": "intent-tests"})
    assert setup({"uri": uri, "experiment": "intent-tests"}) == first
    assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
    experiment = MlflowClient(uri).get_experiment(first)
    assert experiment.name == "intent-tests"
    assert experiment.artifact_location == (tmp_path / "store" / "mlartifacts").as_uri()


def test_a_config_flattens_to_dotted_params_with_lists_as_json():
    from pipelines.tracking.runs import MAX_PARAM_LEN, flatten

    cfg = {
        "model": {"params": {"learning_rate": 0.05, "num_leaves": 31}},
        "features": {"drop": ["a", "b"], "extra": {}},
        "note": "x" * (MAX_PARAM_LEN + 10),
    }
    assert flatten(cfg) == {
        "model.params.learning_rate": "0.05",
        "model.params.num_leaves": "31",
        "features.drop": '["a", "b"]',
        "features.extra": "{}",
        "note": "x" * MAX_PARAM_LEN,
    }


def test_the_commit_is_the_checkouts_and_unknown_outside_one(tmp_path):
    import re

    from pipelines.tracking.runs import git_commit

    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", git_commit())
    assert git_commit(tmp_path) == "unknown"
