"""`micromoment export`: a registered version written as a model folder that loads by path."""

from __future__ import annotations

import json

import mlflow
from omegaconf import OmegaConf

from pipelines.io.outputs import OUTPUT_MARK
from pipelines.stages.export import run_export
from tests.conftest import compose_config

NAME = "micro_moment_intent"


def test_export_writes_the_champion_as_a_folder_named_for_its_version(
    registry_copy, tmp_path, capsys, small_sessions
):
    cfg = compose_config(
        "export", [f"tracking.uri={registry_copy}", f"export.out_dir={tmp_path / 'models'}"]
    )
    path = run_export(OmegaConf.create(cfg))
    assert path == tmp_path / "models" / f"{NAME}-v2"
    assert (path / "MLmodel").is_file() and (path / OUTPUT_MARK).is_file()
    record = json.loads((path / "export.json").read_text())
    assert (record["model_name"], record["model_version"]) == (NAME, "2")
    assert record["source"] == f"models:/{NAME}@champion"
    assert capsys.readouterr().out.startswith(f"exported models:/{NAME}@champion to {path}")
    out = mlflow.pyfunc.load_model(str(path)).predict(small_sessions.head(2).drop(columns="intent"))
    assert out["model_version"].tolist() == ["2", "2"]
