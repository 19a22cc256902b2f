"""MLflow at the edge: the tracking URI, run metadata, the logged scorer and the registry."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient

from pipelines.core.scorer import IntentModel
from pipelines.core.secrets import redact

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
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
    uri = resolve_tracking_uri(tracking.get("uri"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = tracking.get("experiment") or "micromoment"
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = tracking.get("artifact_location")
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
    import yaml

    safe = json.loads(redact(json.dumps(cfg, default=str)))
    mlflow.log_text(yaml.safe_dump(safe, sort_keys=False), "config/resolved.yaml")
    mlflow.log_text("\n".join(overrides) + "\n", "config/overrides.txt")
    mlflow.log_params(flatten(safe))
    mlflow.set_tags(
        {"overrides": redact(" ".join(overrides))[:5000] or "(none)", "git_commit": git_commit()}
    )


def log_figure(fig, path: str) -> None:
    mlflow.log_figure(fig, path)


def log_intent_model(
    model: IntentModel,
    input_example: pd.DataFrame,
    registered_name: str | None,
    model_name: str | None = None,
):
    """Log the scorer as a pyfunc model that takes raw sessions; register it when a name is given.

    `model_name` (default: `registered_name`) is the registered name the model reports once it
    is registered later (a sweep registers its best job when the sweep ends).
    """
    from pipelines.tracking.model_format import IntentPyfunc, input_schema, signature_inputs

    run = mlflow.active_run()
    model_name = model_name or registered_name
    wrapper = IntentPyfunc(model, model_name=model_name)
    example = signature_inputs(input_example.reset_index(drop=True), model)
    output = wrapper.predict(None, example)
    signature = ModelSignature(inputs=input_schema(model), outputs=infer_signature(output).inputs)
    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name="model",
            **model_files(model, tmp),
            signature=signature,
            input_example=example,
            registered_model_name=registered_name,
            pip_requirements=requirements(),
            model_config={"model_name": model_name, "run_id": run.info.run_id if run else None},
        )
    return info


def model_files(model: IntentModel, tmp: str | os.PathLike) -> dict:
    """The arguments that log or save `model` as data plus code: its files (`save_model`) as the
    `model` artifact, loaded by `pipelines/tracking/model_code.py` (MLflow's models-from-code), with the
    package beside it. Loading such a model runs no pickle."""
    from pipelines.core.scorer import save_model

    return {
        "python_model": str(PACKAGE_DIR / "model_code.py"),
        "artifacts": {"model": str(save_model(model, Path(tmp) / "model"))},
        "code_paths": [str(PACKAGE_DIR)],
    }


def requirements() -> list[str]:
    from importlib.metadata import version

    pkgs = ["mlflow", "lightgbm", "scikit-learn", "pandas", "pandera", "pyarrow", "numpy", "scipy"]
    return [f"{p}=={version(p)}" for p in pkgs]


def set_alias(name: str, version: str | int, alias: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def write_json_artifact(data: Mapping, path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / Path(path).name
        target.write_text(json.dumps(data, indent=2, default=str))
        mlflow.log_artifact(
            str(target), str(Path(path).parent) if Path(path).parent != Path(".") else None
        )
