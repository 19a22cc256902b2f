"""The registry: versions by alias or number, rollback and export."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ErrorCode

from pipelines.tracking.registry import alias_of, alias_version, resolve_version, rollback
from pipelines.tracking.registry import export_model as export
from tests.fixtures import run_consumer

NAME = "micro_moment_intent"


def test_rollback_is_one_call_and_reversible(registry_store, client):
    assert resolve_version(client, NAME, "champion") == "2"
    before, after = rollback(client, NAME)
    assert (before, after) == ("2", "1")
    assert resolve_version(client, NAME, "champion") == "1"
    rollback(client, NAME, to_version=2)
    assert resolve_version(client, NAME, "champion") == "2"
    with pytest.raises(Exception, match="99"):
        rollback(client, NAME, to_version=99)


def test_only_an_alias_uri_names_an_alias_to_follow():
    assert alias_of(f"models:/{NAME}@champion") == (NAME, "champion")
    for fixed in (f"models:/{NAME}/3", "runs:/abc/model", "models/micro_moment_intent-v2", ""):
        assert alias_of(fixed) is None


def test_alias_version_reads_where_an_alias_points_now(registry_store, client):
    assert alias_version(NAME, "champion") == "2"
    assert alias_version(NAME, "no_such_alias") is None


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
    elsewhere = tmp_path / "consumer"
    elsewhere.mkdir()
    # nothing listens at the tracking URI: the folder must not need it
    proc = run_consumer(code, elsewhere, "http://127.0.0.1:9", keep_mlflow_env=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    version, intent = proc.stdout.split()[-2:]
    assert version == "2" and intent in {"know", "go", "do", "buy"}


class _Unreachable:
    """A client whose registry answers `get_model_version_by_alias` with `error_code`."""

    def __init__(self, error_code: str):
        self.error_code = error_code

    def get_model_version_by_alias(self, name, alias):
        code = ErrorCode.Value(self.error_code)
        raise MlflowException(f"{name}@{alias}: failed", error_code=code)


def test_an_unset_alias_is_none_and_an_unreachable_registry_is_an_error():
    assert resolve_version(_Unreachable("INVALID_PARAMETER_VALUE"), NAME, "champion") is None
    assert resolve_version(_Unreachable("RESOURCE_DOES_NOT_EXIST"), NAME, "champion") is None
    # a registry that cannot be reached must never read as "there is no champion"
    with pytest.raises(MlflowException, match="failed"):
        resolve_version(_Unreachable("INTERNAL_ERROR"), NAME, "champion")
    with pytest.raises(MlflowException):
        resolve_version(_Unreachable("TEMPORARILY_UNAVAILABLE"), NAME, "champion")
