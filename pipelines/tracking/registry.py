"""The registry: model URIs, versions and aliases, loading a scorer, rolling back, exporting."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.core.scorer import IntentModel
from pipelines.io.outputs import atomic_path, claim_output
from pipelines.tracking.model_format import COMPILED_TREES_ENV, model_files, requirements

CHAMPION = "champion"


# what the registry answers for an alias that is not set, or a model never registered
NOT_SET = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")


def resolve_version(client: MlflowClient, name: str, ref: str | int) -> str | None:
    """A version number from an alias or a number; None when the alias is not set (or the model
    was never registered). Any other failure (a registry that cannot be reached) is raised: it
    must never read as "there is no champion"."""
    ref = str(ref)
    if ref.isdigit():
        client.get_model_version(name, ref)  # raises when it does not exist
        return ref
    try:
        return str(client.get_model_version_by_alias(name, ref).version)
    except MlflowException as err:
        if err.error_code in NOT_SET:
            return None
        raise


def load_scorer(
    uri: str,
    threads: int,
    compiled: bool = False,
    rows: int | None = None,
    min_rows: int = 0,
) -> tuple[IntentModel, dict]:
    """The `IntentModel` behind a registered model URI (`models:/name@alias`, `models:/name/3`) or a
    model folder, with its name and version. With `compiled`, it predicts with compiled trees
    (`core.compiled`) when they can be built and, for an input of `rows` rows, when it has at
    least `min_rows` or the model is compiled on this machine already
    (`IntentModel.compile_if_worth_it`); `info["predictor"]` says which predicts."""
    previous = os.environ.get(COMPILED_TREES_ENV)
    os.environ[COMPILED_TREES_ENV] = "0"  # the caller decides, after loading
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
    finally:
        if previous is None:
            os.environ.pop(COMPILED_TREES_ENV, None)
        else:
            os.environ[COMPILED_TREES_ENV] = previous
    wrapper = pyfunc.unwrap_python_model()
    model: IntentModel = wrapper.model
    model.threads = threads
    if compiled:
        model.compile_if_worth_it(rows if rows is not None else min_rows, min_rows)
    else:
        model.use_lightgbm()
    return model, {
        "model_name": wrapper.model_name,
        "model_version": wrapper.model_version,
        "model_uri": uri,
        "predictor": model.predictor,
    }


def alias_of(model_uri: str) -> tuple[str, str] | None:
    """(registered name, alias) of `models:/name@alias`; None for any other URI (a version, a run's
    model, a folder), which names one fixed model."""
    if not model_uri.startswith("models:/"):
        return None
    name, at, alias = model_uri.removeprefix("models:/").partition("@")
    return (name, alias) if at and name and alias and "/" not in alias else None


def alias_version(name: str, alias: str) -> str | None:
    """The version `name@alias` points at now (the default registry); None when it is not set."""
    return resolve_version(MlflowClient(), name, alias)


def why_unset(name: str, alias: str) -> str:
    """Why `name@alias` names no version: no model of that name is registered (a typo: the
    names that are), or it has no such alias (the aliases it has)."""
    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code not in NOT_SET:
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=20))
        return f"no model named {name!r} is registered (registered: {names})"
    return f"the alias {alias!r} is not set (aliases of {name!r}: {sorted(model.aliases)})"


def needs_tracking(model_uri: str) -> bool:
    """True for a registry or run URI; False for a model folder, which loads with no server."""
    return model_uri.startswith(("models:/", "runs:/"))


def set_alias(name: str, version: str | int, alias: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def rollback(
    client: MlflowClient, name: str, to_version: str | int | None = None
) -> tuple[str | None, str]:
    """Point `champion` at `to_version`, or at the version the current champion replaced."""
    current = resolve_version(client, name, CHAMPION)
    if to_version is None:
        if current is None:
            raise ValueError(f"{name} has no champion to roll back from")
        previous = client.get_model_version(name, current).tags.get("gate.previous_champion")
        if not previous:
            raise ValueError(
                f"{name} version {current} replaced no earlier champion; name one with rollback.to_version=N"
            )
        to_version = previous
    target = resolve_version(client, name, to_version)
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_model_version_tag(name, target, "rollback.from_version", current or "")
    client.set_model_version_tag(
        name, target, "rollback.at", datetime.now(UTC).isoformat(timespec="seconds")
    )
    return current, target


def export_model(model_uri: str, out_dir: str | Path) -> Path:
    """Write a registered model as a standalone MLflow model folder that loads by path."""
    source = mlflow.artifacts.download_artifacts(model_uri)
    pyfunc = mlflow.pyfunc.load_model(source)
    example = pyfunc.metadata.load_input_example(source)
    wrapper = pyfunc.unwrap_python_model()
    if wrapper.model_version is None and model_uri.startswith("models:/"):
        # loaded from a local copy: ask the registry which version the URI names
        ref = model_uri.removeprefix("models:/")
        name_part, _, alias = ref.partition("@")
        name_part, _, number = name_part.partition("/")
        client = MlflowClient()
        wrapper.model_version = number or str(
            client.get_model_version_by_alias(name_part, alias).version
        )
        wrapper.model_name = wrapper.model_name or name_part
    name, version = wrapper.model_name or "micro_moment_intent", wrapper.model_version
    target = claim_output(Path(out_dir) / (f"{name}-v{version}" if version else name), "export")
    with atomic_path(target, owner="export") as tmp, tempfile.TemporaryDirectory() as files:
        # written as data plus code, whatever format the registered version was logged in
        mlflow.pyfunc.save_model(
            path=str(tmp),
            **model_files(wrapper.model, files),
            signature=pyfunc.metadata.signature,
            input_example=example,
            pip_requirements=requirements(),
            model_config={"model_name": name, "model_version": version},
        )
        (tmp / "export.json").write_text(
            json.dumps(
                {
                    "model_name": name,
                    "model_version": version,
                    "source": model_uri,
                    "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
        )
    return target
