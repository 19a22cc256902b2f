"""The configs and their schemas: every primary config, group and preset composes, and a typo
or a wrongly typed value in any command's block fails at compose time."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pipelines.config import CONF_DIR
from pipelines.config.schema import register_configs
from tests.conftest import compose_config

PRIMARY_CONFIGS = sorted(p.stem for p in Path(CONF_DIR).glob("*.yaml"))


@pytest.mark.parametrize("name", PRIMARY_CONFIGS)
def test_every_primary_config_composes(name):
    register_configs()  # as the CLI does before composing (the schemas the configs extend)
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
        ("serve", "serve.max_queue=lots"),
        ("serve", "serve.prot=8080"),
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


def test_a_value_outside_a_choice_is_refused_naming_the_allowed_ones():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_config("train", ["output_dir=/tmp", "split.by=random"])
    text = str(err.value) + str(err.value.__cause__)
    assert "random" in text and "journey" in text and "time" in text


def test_a_partial_engine_mapping_gets_the_schemas_defaults():
    from pipelines.config.schema import EngineName, EngineSchema

    engine = EngineSchema(**{"name": "dask", "n_workers": 3})
    assert engine.name == EngineName.dask == "dask"
    assert (engine.n_workers, engine.threads_per_worker, engine.connect_timeout_s) == (3, 1, 10.0)
    assert engine.scheduler_address is None


def test_every_group_and_command_block_is_registered_once_whatever_the_calls():
    from hydra.core.config_store import ConfigStore

    from pipelines.config.schema import BLOCKS, SCHEMAS

    register_configs()
    register_configs()
    repo = ConfigStore.instance().repo
    for group in SCHEMAS:
        assert "schema.yaml" in repo[group], group
    assert sorted(repo["blocks"]) == sorted(f"{name}.yaml" for name in BLOCKS)
