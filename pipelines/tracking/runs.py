"""MLflow runs: the tracking URI, the experiment, what every run records (config, commit, figures)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from pipelines.config.schema import TrackingSchema
from pipelines.core.secrets import redact

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `pipelines` package
MAX_PARAM_LEN = 6000


def resolve_tracking_uri(uri: str | None) -> str:
    """Config first, then MLFLOW_TRACKING_URI, then a SQLite store in the working directory."""
    if uri:
        return str(uri)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def setup(tracking: Mapping) -> str:
    """Point MLflow at the configured store and return the experiment id (created when new)."""
    settings = TrackingSchema(**tracking)  # what a caller leaves out, the schema's defaults
    uri = resolve_tracking_uri(settings.uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = settings.experiment
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = settings.artifact_location
    if not location and uri.startswith("sqlite:///"):
        # keep artifacts beside the local store instead of MLflow's default ./mlruns
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location or None)


def git_commit(path: str | os.PathLike | None = None) -> str:
    """The commit of the checkout the code runs from, with '-dirty' when it has local changes."""
    where = str(path or PACKAGE_DIR)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(cfg: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.params.learning_rate": "0.05", ...}; lists become JSON text."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                out.update(flatten(value, f"{name}."))
            else:
                out[name] = "{}"
        else:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            out[name] = redact(text)[:MAX_PARAM_LEN]
    return out


def log_run_config(cfg: Mapping, overrides: list[str]) -> None:
    """The resolved config as an artifact and flattened params, and the overrides as a tag."""

    safe = json.loads(redact(json.dumps(cfg, default=str)))
    mlflow.log_text(yaml.safe_dump(safe, sort_keys=False), "config/resolved.yaml")
    mlflow.log_text("\n".join(overrides) + "\n", "config/overrides.txt")
    mlflow.log_params(flatten(safe))
    mlflow.set_tags(
        {"overrides": redact(" ".join(overrides))[:5000] or "(none)", "git_commit": git_commit()}
    )


def log_figure(fig, path: str) -> None:
    mlflow.log_figure(fig, path)


def write_json_artifact(data: Mapping, path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / Path(path).name
        target.write_text(json.dumps(data, indent=2, default=str))
        mlflow.log_artifact(
            str(target), str(Path(path).parent) if Path(path).parent != Path(".") else None
        )
