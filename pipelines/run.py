"""`micromoment run`: the whole chain on the embedded default (generate, then train and register)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.config import CONF_DIR
from pipelines.generate import run_generate
from pipelines.train import run_train, task_overrides


@hydra.main(config_path=CONF_DIR, config_name="run", version_base="1.3")
def main(cfg: DictConfig) -> float:
    run_generate(cfg)
    return run_train(cfg, task_overrides())
