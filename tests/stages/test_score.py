"""`micromoment score`: sessions scored with a registered model into an output folder, and a
model folder that does not exist refused before any work."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipelines.core.contract import ContractError
from pipelines.stages.runner import UserError, exit_code_for
from pipelines.stages.score import run_score
from tests.conftest import compose_config


def score_config(uri: str, tmp_path, model_uri: str):
    return OmegaConf.create(
        compose_config(
            "score",
            [
                f"tracking.uri={uri}",
                f"score.input={tmp_path / 'in.parquet'}",
                f"score.output={tmp_path / 'scores'}",
                f"score.model_uri={model_uri}",
                "runtime.threads=1",
            ],
        )
    )


def test_the_champion_scores_every_row_or_rejects_it_and_says_so(
    registry_store, small_sessions, tmp_path, capsys
):
    raw = small_sessions.head(60).drop(columns="intent").reset_index(drop=True)
    raw.loc[7, "dwell_time_s"] = -1.0
    raw.to_parquet(tmp_path / "in.parquet")
    cfg = score_config(registry_store["uri"], tmp_path, "models:/micro_moment_intent@champion")
    summary = run_score(cfg)
    assert (summary["rows_in"], summary["rows_scored"], summary["rows_rejected"]) == (60, 59, 1)
    assert summary["journeys"] == raw["journey_id"].nunique()
    predictions = pd.read_parquet(tmp_path / "scores" / "predictions")
    assert sorted(predictions["session_id"]) == sorted(raw["session_id"].drop(index=7))
    assert set(predictions["model_version"]) == {"2"}
    rejects = pd.read_parquet(tmp_path / "scores" / "rejects.parquet")
    assert rejects["session_id"].tolist() == [raw.loc[7, "session_id"]]
    assert json.loads((tmp_path / "scores" / "summary.json").read_text())["rows_in"] == 60
    assert capsys.readouterr().out.startswith(
        f"scored 59 of 60 sessions (1 rejected) in {summary['journeys']} journeys with "
        "micro_moment_intent version 2 ->"
    )


def test_a_run_rejecting_most_rows_fails_and_leaves_the_last_output_as_it_was(
    registry_store, small_sessions, tmp_path
):
    raw = small_sessions.head(60).drop(columns="intent").reset_index(drop=True)
    raw.to_parquet(tmp_path / "in.parquet")
    cfg = score_config(registry_store["uri"], tmp_path, "models:/micro_moment_intent@champion")
    assert run_score(cfg)["rows_scored"] == 60  # yesterday's good run
    before = (tmp_path / "scores" / "summary.json").read_text()
    raw.loc[:39, "dwell_time_s"] = -1.0  # today's export: 40 of 60 rows broken
    raw.loc[:4, "latitude"] = 123.0
    raw.to_parquet(tmp_path / "in.parquet")
    with pytest.raises(ContractError) as err:
        run_score(cfg)
    message = str(err.value)
    assert "40 of 60 sessions (67%)" in message and "max_rejected_share 0.5" in message
    assert "dwell_time_s" in message and "(40)" in message and "(got" not in message
    assert (tmp_path / "scores" / "summary.json").read_text() == before
    assert exit_code_for(err.value)[0] == 3
    cfg.score.max_rejected_share = 1.0  # scored anyway when asked
    summary = run_score(cfg)
    assert (summary["rows_scored"], summary["rows_rejected"]) == (20, 40)


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_rejected_share_outside_0_and_1_is_refused_before_any_work(
    registry_store, tmp_path, share
):
    pd.DataFrame({"session_id": ["a"]}).to_parquet(tmp_path / "in.parquet")
    cfg = score_config(registry_store["uri"], tmp_path, "models:/micro_moment_intent@champion")
    cfg.score.max_rejected_share = share
    with pytest.raises(
        UserError, match=f"score.max_rejected_share must be from 0 to 1, got {share:g}"
    ):
        run_score(cfg)
    assert not (tmp_path / "scores").exists()


def test_a_model_folder_that_does_not_exist_is_refused_naming_it(tmp_path):
    pd.DataFrame({"session_id": ["a"]}).to_parquet(tmp_path / "in.parquet")
    cfg = score_config("http://127.0.0.1:9", tmp_path, str(tmp_path / "models" / "none"))
    with pytest.raises(FileNotFoundError, match="none: no such model folder"):
        run_score(cfg)
    assert not (tmp_path / "scores").exists()


def test_reasons_are_written_beside_each_prediction_when_asked(
    registry_store, small_sessions, tmp_path
):
    raw = small_sessions.head(40).drop(columns="intent").reset_index(drop=True)
    raw.to_parquet(tmp_path / "in.parquet")
    cfg = score_config(registry_store["uri"], tmp_path, "models:/micro_moment_intent@champion")
    cfg.score.explain = 3
    summary = run_score(cfg)
    assert summary["explain"] == 3 and summary["rows_scored"] == 40
    predictions = pd.read_parquet(tmp_path / "scores" / "predictions")
    assert {"reason_1", "reason_2", "reason_3", "reasons"} <= set(predictions.columns)
    assert predictions["reason_1"].notna().all()
    first = json.loads(predictions["reasons"].iloc[0])
    assert (
        predictions["reason_1"].iloc[0] == f"{first[0]['value']} ({first[0]['contribution']:+.2f})"
    )


@pytest.mark.parametrize("bad", [-1, 99])
def test_a_bad_number_of_reasons_is_refused_before_any_work(registry_store, tmp_path, bad):
    from pipelines.stages.runner import UserError

    pd.DataFrame({"session_id": ["a"]}).to_parquet(tmp_path / "in.parquet")
    cfg = score_config(registry_store["uri"], tmp_path, "models:/micro_moment_intent@champion")
    cfg.score.explain = bad
    with pytest.raises(UserError, match=rf"score.explain: .*{bad}"):
        run_score(cfg)
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize("compiled_trees, predictor", [(True, "lleaves"), (False, "lightgbm")])
def test_the_output_says_which_predictor_scored(
    registry_store, small_sessions, tmp_path, compiled_trees, predictor
):
    raw = small_sessions.head(30).drop(columns="intent").reset_index(drop=True)
    raw.to_parquet(tmp_path / "in.parquet")
    cfg = score_config(registry_store["uri"], tmp_path, "models:/micro_moment_intent@champion")
    cfg.runtime.compiled_trees = compiled_trees
    cfg.runtime.compile_min_rows = 0
    summary = run_score(cfg)
    assert summary["predictor"] == predictor
    predictions = pd.read_parquet(tmp_path / "scores" / "predictions")
    assert set(predictions["predictor"]) == {predictor}


def test_a_small_input_is_not_worth_compiling_for_unless_the_model_is_compiled_already(
    registry_store, small_sessions, tmp_path, monkeypatch
):
    from pipelines.core.compiled import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty-cache"))
    raw = small_sessions.head(30).drop(columns="intent").reset_index(drop=True)
    raw.to_parquet(tmp_path / "in.parquet")
    cfg = score_config(registry_store["uri"], tmp_path, "models:/micro_moment_intent@champion")
    assert cfg.runtime.compiled_trees and cfg.runtime.compile_min_rows == 1_000_000
    assert run_score(cfg)["predictor"] == "lightgbm"
    assert not list((tmp_path / "empty-cache").glob("*.o"))
    # compiled once (a large input, or here: no minimum), later small inputs use it
    cfg.runtime.compile_min_rows = 0
    cfg.score.output = str(tmp_path / "scores-2")
    assert run_score(cfg)["predictor"] == "lleaves"
    cfg.runtime.compile_min_rows = 1_000_000
    cfg.score.output = str(tmp_path / "scores-3")
    assert run_score(cfg)["predictor"] == "lleaves"
