"""`micromoment export`: write a registered model as a standalone MLflow model folder under
`models/` (data plus code, whatever format the version was registered in)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipelines.stages.runner import command
from pipelines.tracking import runs
from pipelines.tracking.registry import export_model


def run_export(cfg: DictConfig) -> Path:
    c = OmegaConf.to_container(cfg, resolve=True)
    runs.setup(c["tracking"])
    path = export_model(c["export"]["model_uri"], c["export"]["out_dir"])
    print(
        f"exported {c['export']['model_uri']} to {path} (load it with mlflow.pyfunc.load_model('{path}'))",
        flush=True,
    )
    return path


main = command("export")(run_export)
