"""MLflow runs: the tracking URI, the experiment, what every run records (config, commit, figures)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import mlflow
import yaml
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import LoggedModelInput
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

from pipelines.config import command_keys
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


def run_name(command: str, dataset: str | None = None) -> str:
    """A readable, unique run name: the command, the dataset and a short random id
    (`train synthetic 3f9a1c`)."""
    return " ".join(p for p in (command, dataset, uuid.uuid4().hex[:6]) if p)


def log_run_config(cfg: Mapping, overrides: list[str], command: str | None = None) -> None:
    """The resolved config as an artifact and flattened params, and the overrides as a tag.
    With `command`, only the keys that command's config composes (`config.command_keys`): the
    train run of `micromoment run` records no generator or feed settings."""
    if command is not None:
        wanted = command_keys(command)
        cfg = {k: v for k, v in cfg.items() if k in wanted}
    safe = json.loads(redact(json.dumps(cfg, default=str)))
    mlflow.log_text(yaml.safe_dump(safe, sort_keys=False), "config/resolved.yaml")
    mlflow.log_text("\n".join(overrides) + "\n", "config/overrides.txt")
    mlflow.log_params(flatten(safe))
    commit = git_commit()
    tags = {"overrides": redact(" ".join(overrides))[:5000] or "(none)", "git_commit": commit}
    if commit != "unknown":
        # MLflow's own tag: the UI links the run to its source version
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    mlflow.set_tags(tags)


def log_datasets(inputs: list[Mapping]) -> None:
    """Each input of the active run as an MLflow dataset (name, digest, source, schema) with its
    row count and split as tags: `{"name", "context", "digest", "rows", "source", "columns"}`,
    columns as {name: dtype}."""
    for item in inputs:
        origin = _dataset_source(str(item["source"]))
        schema = Schema([ColSpec(_mlflow_type(t), n) for n, t in item["columns"].items()])
        mlflow.log_input(
            MetaDataset(origin, name=item["name"], digest=item["digest"], schema=schema),
            context=item["context"],
            tags={"rows": str(int(item["rows"])), "split": str(item.get("split", ""))},
        )


def _dataset_source(source: str):
    """Where a dataset came from, as MLflow records it (a password in a URI is redacted)."""
    if source.startswith("<"):  # a frame passed in memory
        return CodeDatasetSource(tags={"source": source})
    if "://" not in source:
        source = str(Path(source).resolve())
    with warnings.catch_warnings():  # several registered source kinds claim the same paths
        warnings.simplefilter("ignore")
        return resolve_dataset_source(redact(source))


def _mlflow_type(dtype: str) -> str:
    kind = str(dtype)
    if kind.startswith(("float", "Float")):
        return "double"
    if kind.startswith(("int", "Int", "uint")):
        return "long"
    if kind in ("bool", "boolean"):
        return "boolean"
    if kind.startswith("datetime"):
        return "datetime"
    return "string"


def link_model_version(name: str, version: str) -> None:
    """Record on the active run which registered model version it used: as tags, and as an
    MLflow model input (the run appears in the logged model's lineage)."""
    mlflow.set_tags({"model_name": str(name), "model_version": str(version)})
    try:
        model_id = MlflowClient().get_model_version(name, str(version)).model_id
    except Exception as err:  # a store without the version (an exported folder): tags only
        log.info("no registry link for %s version %s: %s", name, version, err)
        return
    if model_id:
        mlflow.log_input(model=LoggedModelInput(model_id=model_id))


def log_figure(fig, path: str) -> None:
    mlflow.log_figure(fig, path)


def write_json_artifact(data: Mapping, path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / Path(path).name
        target.write_text(json.dumps(data, indent=2, default=str))
        mlflow.log_artifact(
            str(target), str(Path(path).parent) if Path(path).parent != Path(".") else None
        )
