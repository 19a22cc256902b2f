"""`micromoment rollback`: point `champion` back at an earlier version (by default the one the
current champion replaced)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipelines.stages.runner import command
from pipelines.tracking import runs
from pipelines.tracking.registry import rollback


def run_rollback(cfg: DictConfig) -> str:
    c = OmegaConf.to_container(cfg, resolve=True)
    runs.setup(c["tracking"])
    name = c["registry"]["model_name"]
    current, target = rollback(MlflowClient(), name, c["rollback"]["to_version"])
    print(f"{name}: champion moved from version {current} to version {target}", flush=True)
    return target


main = command("rollback")(run_rollback)
