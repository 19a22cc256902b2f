"""`micromoment run`: the whole chain on the embedded default (generate, then train and register)."""

from __future__ import annotations

from omegaconf import DictConfig

from pipelines.config import hydra_main
from pipelines.generate import run_generate
from pipelines.train import run_train, task_overrides


@hydra_main("run")
def main(cfg: DictConfig) -> float:
    run_generate(cfg)
    return run_train(cfg, task_overrides())
