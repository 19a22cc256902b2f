"""`micromoment rollback`: champion back to the version it replaced, or to a version named."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.stages.rollback import run_rollback
from tests.conftest import compose_config

NAME = "micro_moment_intent"


def rollback_to(uri: str, *extra: str) -> str:
    return run_rollback(
        OmegaConf.create(compose_config("rollback", [f"tracking.uri={uri}", *extra]))
    )


def champion(uri: str) -> str:
    client = MlflowClient(uri, registry_uri=uri)
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_rollback_moves_the_champion_to_the_version_it_replaced_and_says_so(registry_copy, capsys):
    assert champion(registry_copy) == "2"
    assert rollback_to(registry_copy) == "1"
    assert champion(registry_copy) == "1"
    assert capsys.readouterr().out.strip() == (
        f"{NAME}: champion moved from version 2 to version 1"
    )
    version = MlflowClient(registry_copy, registry_uri=registry_copy).get_model_version(NAME, "1")
    assert version.tags["rollback.from_version"] == "2"


def test_rollback_to_a_named_version_and_from_a_first_champion(registry_copy):
    assert rollback_to(registry_copy, "rollback.to_version=3") == "3"
    assert champion(registry_copy) == "3"
    rollback_to(registry_copy, "rollback.to_version=1")
    with pytest.raises(ValueError, match="version 1 replaced no earlier champion"):
        rollback_to(registry_copy)  # version 1 was the first champion
    assert champion(registry_copy) == "1"
