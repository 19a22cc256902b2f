"""`micromoment serve`: the real-time scorer (`pipelines.serving`) under uvicorn, one worker.

Before listening it checks what it will serve (the tracking server answers and the alias is
set, or the model folder exists), so a wrong URI ends the command with one line and an exit
code; the model itself loads in the background while `/health` already answers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn
from omegaconf import DictConfig, OmegaConf

from pipelines.config.schema import ServeBlock
from pipelines.serving.app import create_app
from pipelines.serving.follower import Follower, registry_loader
from pipelines.stages import runner
from pipelines.stages.runner import EXIT_MODEL, UserError, command
from pipelines.tracking import runs
from pipelines.tracking.registry import alias_of, alias_version, needs_tracking

log = logging.getLogger(__name__)


def check_model(uri: str, tracking: dict) -> None:
    """Refuse a model URI that cannot be served: a missing folder, an alias that is not set."""
    if needs_tracking(uri):
        runner.check_tracking(runs.resolve_tracking_uri(tracking["uri"]))
        runs.setup(tracking)
        alias = alias_of(uri)
        if alias and alias_version(*alias) is None:
            raise UserError(
                f"{uri}: the alias {alias[1]!r} is not set (serve.model_uri)", EXIT_MODEL
            )
    elif "://" not in uri and not Path(uri).is_dir():
        raise FileNotFoundError(f"{uri}: no such model folder (serve.model_uri)")


def run_serve(cfg: DictConfig) -> None:
    c = OmegaConf.to_container(cfg, resolve=True)
    settings = ServeBlock(**c["serve"])
    check_model(settings.model_uri, c["tracking"])
    load = registry_loader(int(c["runtime"]["threads"]), bool(c["runtime"]["compiled_trees"]))
    follower = Follower(settings.model_uri, load, settings.follow_interval_s)
    app = create_app(settings, follower)
    print(
        f"serving {settings.model_uri} on http://{settings.host}:{settings.port} "
        "(/invocations, /health, /ready)",
        flush=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        access_log=settings.access_log,
        log_level=str(c["runtime"]["log_level"]).lower(),
        timeout_graceful_shutdown=5,
    )


main = command("serve", tracking=False)(run_serve)
