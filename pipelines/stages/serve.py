"""`micromoment serve`: the real-time scorer (`pipelines.serving`) under uvicorn.

Before listening it checks what it will serve (the tracking server answers and the alias is
set, or the model folder exists), so a wrong URI ends the command with one line and an exit
code; the model itself loads in the background while `/health` already answers.

With `serve.workers` above 1, that many worker processes answer on the one socket, each with its
own model, batcher and alias follower (uvicorn's supervisor starts them, replaces one that dies
and stops them all on SIGTERM; this process becomes that supervisor, `serving.workers`). A process runs Python on one core at a time: the workers let one
server use several. The server is ready once every worker has loaded its model
(`serving.peers`): a readiness probe may reach any of them.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import uvicorn
from omegaconf import DictConfig, OmegaConf
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE

from pipelines.config.schema import ServeBlock
from pipelines.serving.app import create_app
from pipelines.serving.follower import Follower, Served, registry_loader
from pipelines.serving.peers import Peers
from pipelines.serving.workers import WORKER_ENV, exec_supervisor, stop_with_supervisor
from pipelines.stages import runner
from pipelines.stages.runner import EXIT_MODEL, UserError, command
from pipelines.tracking import runs
from pipelines.tracking.registry import alias_of, alias_version, needs_tracking, why_unset

log = logging.getLogger(__name__)


def check_model(uri: str, tracking: dict) -> None:
    """Refuse a model URI that cannot be served: a missing folder, an alias that is not set."""
    if needs_tracking(uri):
        runner.check_tracking(runs.resolve_tracking_uri(tracking["uri"]))
        runs.setup(tracking)
        alias = alias_of(uri)
        if alias and alias_version(*alias) is None:
            raise UserError(f"{uri}: {why_unset(*alias)} (serve.model_uri)", EXIT_MODEL)
    elif "://" not in uri and not Path(uri).is_dir():
        raise FileNotFoundError(f"{uri}: no such model folder (serve.model_uri)")


def check_settings(s: ServeBlock) -> None:
    """Settings no server can keep, refused before anything is loaded (exit 2)."""
    at_least = {
        "port": (s.port, 1),
        "max_batch_rows": (s.max_batch_rows, 1),
        "max_queue": (s.max_queue, 1),
        "max_body_bytes": (s.max_body_bytes, 1),
        "max_wait_ms": (s.max_wait_ms, 0),
        "max_delay_ms": (s.max_delay_ms, 0),
        "standing_ms": (s.standing_ms, 0),
        "retry_after_s": (s.retry_after_s, 0),
        "follow_interval_s": (s.follow_interval_s, 0),
        "workers": (s.workers, 1),
    }
    for key, (value, low) in at_least.items():
        if not value >= low:
            raise UserError(f"serve.{key} must be at least {low}, got {value}")
    if s.workers > 1 and os.name != "posix":
        raise UserError(f"serve.workers={s.workers} needs a POSIX system (Linux, macOS); use 1")
    if s.port > 65535:
        raise UserError(f"serve.port must be at most 65535, got {s.port}")
    if not s.timeout_ms > s.max_wait_ms:
        raise UserError(
            f"serve.timeout_ms={s.timeout_ms:g} must exceed serve.max_wait_ms={s.max_wait_ms:g}: "
            "every request would time out while its batch gathers"
        )
    if s.max_delay_ms and not s.max_delay_ms > s.max_wait_ms:
        raise UserError(
            f"serve.max_delay_ms={s.max_delay_ms:g} must exceed serve.max_wait_ms="
            f"{s.max_wait_ms:g} (or be 0): every request would be refused while its batch gathers"
        )


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model is loaded (uvicorn listens on it): an address
    in use, or a host that is not this machine's, is refused at once with exit 2."""
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY on each connection only then, and
    # without it small answers wait up to 40 ms for the client's delayed acknowledgement
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} (serve.host, serve.port): {err.strerror or err}"
        ) from None
    sock.set_inheritable(True)
    return sock


def frozen_after(load: Callable[[str], Served]) -> Callable[[str], Served]:
    """`load`, then every object alive set aside from the cyclic garbage collector (`gc.freeze`).

    A served process holds about 700,000 long-lived objects (the model, pandas, MLflow). A full
    collection walks them all, about half a second with the GIL held, during which no request
    is answered. Frozen, they are skipped; they are still freed by reference counting, and only
    cycles among a replaced model's objects stay in memory (once per alias move)."""

    def load_frozen(uri: str) -> Served:
        served = load(uri)
        gc.freeze()
        return served

    return load_frozen


def stopped(signum: int, frame) -> None:
    log.info("stopped on %s", signal.Signals(signum).name)
    raise SystemExit(0)


def run_serve(cfg: DictConfig) -> None:
    c = OmegaConf.to_container(cfg, resolve=True)
    settings = ServeBlock(**c["serve"])
    check_settings(settings)
    with listening_socket(settings.host, settings.port) as sock:
        check_model(settings.model_uri, c["tracking"])
        serve(settings, c["runtime"], sock)


def app_for(settings: ServeBlock, runtime: dict, peers: Peers | None = None) -> Starlette:
    """The scoring app, following `settings.model_uri` with the runtime's threads and trees."""
    load = frozen_after(registry_loader(int(runtime["threads"]), bool(runtime["compiled_trees"])))
    follower = Follower(settings.model_uri, load, settings.follow_interval_s)
    return create_app(settings, follower, peers)


def worker_app() -> Starlette:
    """A worker process's app (an app factory for uvicorn), from what the parent set in
    `WORKER_ENV`: the settings, the runtime, the MLflow store the parent checked, and the folder
    where the workers announce their models to each other (`Peers`). A worker that cannot build
    it stops the server (uvicorn's start-up failure) rather than being restarted in a loop."""
    try:
        given = json.loads(os.environ[WORKER_ENV])
        logging.basicConfig(
            # the single process's (Hydra's) line, naming the worker
            format="[%(asctime)s][%(name)s][%(levelname)s][worker %(process)d] - %(message)s",
            level=str(given["runtime"]["log_level"]).upper(),
        )
        if given["tracking_uri"]:  # a model folder needs none
            mlflow.set_tracking_uri(given["tracking_uri"])
            mlflow.set_registry_uri(given["registry_uri"])
        settings = ServeBlock(**given["serve"])
        peers = Peers(Path(given["peers"]), settings.workers)
        app = app_for(settings, given["runtime"], peers)
        stop_with_supervisor(peers)
        return app
    except Exception:
        log.exception("this worker could not build its app")
        sys.stderr.flush()
        # at once: threads the imports started would otherwise hold the process up, and the
        # supervisor would take a worker still running for one still starting
        os._exit(STARTUP_FAILURE)


def serve(settings: ServeBlock, runtime: dict, sock: socket.socket) -> None:
    """Load and follow the model in the background, and answer on `sock` until stopped."""
    workers = f", {settings.workers} workers" if settings.workers > 1 else ""
    print(
        f"serving {settings.model_uri} on http://{settings.host}:{settings.port} "
        f"(/invocations, /health, /ready){workers}",
        flush=True,
    )
    config = dict(
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
        log_level=str(runtime["log_level"]).lower(),
        timeout_graceful_shutdown=5,
    )
    if settings.workers > 1:
        serve_workers(settings, runtime, sock, config)
        return
    app = app_for(settings, runtime)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again for the handler it
    # found: this one, so that a stop asked for ends with exit code 0 rather than by the signal
    signal.signal(signal.SIGTERM, stopped)
    server = uvicorn.Server(uvicorn.Config(app, workers=1, **config))
    server.run(sockets=[sock])
    if not server.started:
        raise RuntimeError("the server did not start: its log above says why")


def serve_workers(settings: ServeBlock, runtime: dict, sock: socket.socket, config: dict) -> None:
    """`settings.workers` processes answering on `sock`, under a supervisor that replaces this
    process (`serving.workers`): it runs until a SIGTERM or SIGINT stops them all (exit 0), and a
    worker that fails to start stops the server (exit 1)."""
    tracked = needs_tracking(settings.model_uri)
    os.environ[WORKER_ENV] = json.dumps(
        {
            "serve": dataclasses.asdict(settings),
            "runtime": runtime,
            "tracking_uri": mlflow.get_tracking_uri() if tracked else None,
            "registry_uri": mlflow.get_registry_uri() if tracked else None,
        }
    )
    exec_supervisor(sock, settings.workers, config)


main = command("serve", tracking=False)(run_serve)
