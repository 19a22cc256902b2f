"""`micromoment promote`: the challenger judged against the champion on held-out rows, the
decision recorded, and the champion moved only when the challenger passes."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.stages import runner
from pipelines.stages.promote import run_promote
from tests.conftest import compose_config

NAME = "micro_moment_intent"


def test_promoting_an_alias_that_does_not_exist_is_exit_5(tmp_path):
    from omegaconf import OmegaConf

    from pipelines.stages.promote import run_promote
    from tests.conftest import compose_config

    cfg = compose_config(
        "promote",
        [
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "promote.challenger=nosuch",
            f"data.path={tmp_path}/unused",
        ],
    )
    # an empty store: no model of that name, let alone its alias
    with pytest.raises(
        runner.UserError, match=r"@nosuch: no model named '\w+' is registered \(registered: \[\]\)"
    ) as err:
        run_promote(OmegaConf.create(cfg))
    assert err.value.code == runner.EXIT_MODEL


def promote(store: dict, uri: str, challenger: str):
    cfg = compose_config(
        "promote",
        [
            f"tracking.uri={uri}",
            f"promote.challenger={challenger}",
            "runtime.threads=1",
        ],
    )
    cfg["data"] = {**store["config"]["data"]}  # the data the versions were trained on
    return run_promote(OmegaConf.create(cfg))


def champion(uri: str) -> str:
    client = MlflowClient(uri, registry_uri=uri)
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_a_weaker_challenger_is_kept_out_and_the_decision_recorded(
    registry_store, registry_copy, capsys
):
    decision = promote(registry_store, registry_copy, "challenger")
    assert not decision.promote
    assert decision.challenger_score < decision.champion_score
    assert champion(registry_copy) == "2"
    out = capsys.readouterr().out
    assert out.startswith(f"{NAME} version 3: not promoted")
    tags = MlflowClient(registry_copy, registry_uri=registry_copy).get_model_version(NAME, "3").tags
    assert tags["gate.decision"] == "kept_champion" and tags["gate.champion_version"] == "2"


def test_a_stronger_challenger_named_by_number_becomes_champion(
    registry_store, registry_copy, capsys
):
    client = MlflowClient(registry_copy, registry_uri=registry_copy)
    client.set_registered_model_alias(NAME, "champion", "1")
    decision = promote(registry_store, registry_copy, "2")
    assert decision.promote and decision.challenger_score > decision.champion_score
    assert champion(registry_copy) == "2"
    assert f"{NAME} version 2: promoted to champion" in capsys.readouterr().out
    assert client.get_model_version(NAME, "2").tags["gate.previous_champion"] == "1"
