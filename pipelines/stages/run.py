"""`micromoment run`: the whole chain on the embedded default: generate, train and register (with
the gate), score the sessions with the champion into a touchpoint feed and report, let the
synthetic world answer the feed, and measure what it earned."""

from __future__ import annotations

from omegaconf import DictConfig

from pipelines.stages.generate import run_generate
from pipelines.stages.measure import run_measure
from pipelines.stages.outcomes import run_outcomes
from pipelines.stages.runner import command
from pipelines.stages.touchpoints import run_touchpoints
from pipelines.stages.train import run_train, task_overrides


@command("run")
def main(cfg: DictConfig) -> float:
    run_generate(cfg)
    val_logloss = run_train(cfg, task_overrides())
    if cfg.feed.enabled:
        run_touchpoints(cfg)
        if cfg.outcomes.enabled:
            run_outcomes(cfg)
            if cfg.measure.enabled:
                run_measure(cfg)
    return val_logloss
