"""`micromoment touchpoints`: the feed, the report and the run, from raw sessions or from scores."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from tests.conftest import compose_config


def test_touchpoints_command_writes_the_feed_report_and_run(
    registry_store, synthetic_dir, tmp_path
):
    from pipelines.stages.touchpoints import run_touchpoints

    out = tmp_path / "feed"
    cfg = compose_config(
        "touchpoints",
        [
            f"data.path={synthetic_dir}/sessions",
            f"data.stores_path={synthetic_dir}/stores.csv",
            f"tracking.uri={registry_store['uri']}",
            "runtime.threads=1",
            f"feed.output={out}",
            "touchpoints.estimation.min_effective_sessions=10",
            "touchpoints.catalogue.how_to_video.capacity=50",
            "feed.explain=2",
        ],
    )
    from omegaconf import OmegaConf

    summary = run_touchpoints(OmegaConf.create(cfg))
    sessions = pd.read_parquet(f"{synthetic_dir}/sessions")
    feed = pd.read_parquet(out / "feed.parquet")
    # one row per journey, at its latest session, with the model that scored it
    assert len(feed) == sessions["journey_id"].nunique() == summary["journeys"]
    assert feed["journey_id"].is_unique
    latest = sessions.sort_values("started_at").groupby("journey_id")["session_id"].last()
    assert (feed.set_index("journey_id")["session_id"] == latest.reindex(feed["journey_id"])).all()
    champion = mlflow.MlflowClient(registry_store["uri"]).get_model_version_by_alias(
        "micro_moment_intent", "champion"
    )
    assert set(feed["model_version"]) == {str(champion.version)}
    assert set(feed["model_alias"]) == {"champion"}
    # why: the latest session's reasons toward the journey's intent, at most two, pushing toward it
    assert feed["reason_1"].notna().all()
    for cell in feed["reasons"]:
        reasons = json.loads(cell)
        assert 1 <= len(reasons) <= 2 and all(r["contribution"] > 0 for r in reasons)
    assert summary["rows_in"] == len(sessions) == summary["rows_in_feed"] + summary["rows_rejected"]
    # the allocation honours capacity and eligibility, and never contacts the holdout
    assert (feed["allocated_touchpoint"] == "how_to_video").sum() <= 50
    allocated = feed[feed["allocated_touchpoint"].notna()]
    assert all(
        a in e.split(",")
        for a, e in zip(
            allocated["allocated_touchpoint"], allocated["eligible_touchpoints"], strict=True
        )
    )
    assert not allocated["holdout"].any() and not allocated["suppressed"].any()
    assert 0.03 < feed["holdout"].mean() < 0.2
    # outputs for marketers, on disk and in MLflow
    for name in ("report.html", "summary.json", "conversion_estimates.parquet"):
        assert (out / name).exists()
    assert "Touchpoint report" in (out / "report.html").read_text()
    assert json.loads((out / "summary.json").read_text())["journeys"] == len(feed)
    client = mlflow.MlflowClient(registry_store["uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["feed/journeys"] == len(feed)
    assert run.data.tags["model_version"] == str(champion.version)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "figures", "tables"} <= artifacts


def test_input_without_logged_touchpoints_is_refused(registry_store, synthetic_dir, tmp_path):
    from omegaconf import OmegaConf

    from pipelines.stages.touchpoints import run_touchpoints

    sessions = pd.read_parquet(f"{synthetic_dir}/sessions")
    path = tmp_path / "no_touchpoints.parquet"
    sessions.assign(touchpoint=None).to_parquet(path)
    cfg = compose_config(
        "touchpoints",
        [
            f"feed.input={path}",
            f"data.stores_path={synthetic_dir}/stores.csv",
            f"tracking.uri={registry_store['uri']}",
            "runtime.threads=1",
            f"feed.output={tmp_path / 'feed'}",
        ],
    )
    with pytest.raises(ValueError, match="no session records a touchpoint shown"):
        run_touchpoints(OmegaConf.create(cfg))
    assert not (tmp_path / "feed").exists()


def _quiet_feed(registry_store, synthetic_dir, tmp_path, *overrides) -> dict:
    """`micromoment touchpoints` into `tmp_path/feed`, logging nothing to MLflow."""
    from omegaconf import OmegaConf

    from pipelines.stages.touchpoints import run_touchpoints

    cfg = compose_config(
        "touchpoints",
        [
            f"data.stores_path={synthetic_dir}/stores.csv",
            f"tracking.uri={registry_store['uri']}",
            "runtime.threads=1",
            f"feed.output={tmp_path / 'feed'}",
            "feed.log_to_mlflow=false",
            "touchpoints.estimation.min_effective_sessions=10",
            *overrides,
        ],
    )
    return run_touchpoints(OmegaConf.create(cfg))


def test_scores_of_another_input_are_refused(registry_store, synthetic_dir, tmp_path):

    from pipelines.core.contract import ContractError
    from pipelines.engines.local import score_file
    from pipelines.tracking.registry import load_scorer

    mlflow.set_tracking_uri(registry_store["uri"])
    mlflow.set_registry_uri(registry_store["uri"])
    model, info = load_scorer("models:/micro_moment_intent@champion", threads=1)
    sessions = pd.read_parquet(f"{synthetic_dir}/sessions")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    sessions.iloc[: len(sessions) // 2].to_parquet(a)
    # the same shape and row count, other sessions: positions line up, intents do not
    sessions.iloc[len(sessions) // 2 : 2 * (len(sessions) // 2)].to_parquet(b)
    score_file(model, b, tmp_path / "scores_b", model_info=info)

    def feed(input_path, scores):
        return _quiet_feed(
            registry_store,
            synthetic_dir,
            tmp_path,
            f"feed.input={input_path}",
            f"feed.scores={scores}",
        )

    with pytest.raises(ContractError, match="these scores belong to another input"):
        feed(a, tmp_path / "scores_b")
    assert not (tmp_path / "feed").exists()
    summary = feed(b, tmp_path / "scores_b")  # its own input is accepted
    assert summary["rows_in_feed"] + summary["rows_rejected"] == summary["rows_in"]


def test_a_feed_losing_most_sessions_to_the_contract_fails_and_writes_nothing(
    registry_store, synthetic_dir, tmp_path
):

    from pipelines.core.contract import ContractError
    from pipelines.engines.local import score_file
    from pipelines.stages.runner import UserError
    from pipelines.tracking.registry import load_scorer

    sessions = pd.read_parquet(f"{synthetic_dir}/sessions").head(400).reset_index(drop=True)
    sessions.loc[:299, "dwell_time_s"] = -1.0  # 300 of 400 sessions break the contract
    path = tmp_path / "broken.parquet"
    sessions.to_parquet(path)

    def feed(*overrides):
        return _quiet_feed(
            registry_store, synthetic_dir, tmp_path, f"feed.input={path}", *overrides
        )

    with pytest.raises(ContractError) as err:  # scored here
        feed()
    message = str(err.value)
    assert "300 of 400 sessions (75%)" in message and "feed.max_rejected_share 0.5" in message
    assert "dwell_time_s must be >= 0" in message and "(300)" in message
    assert not (tmp_path / "feed").exists()
    # the same from a scoring output that took every row it could
    mlflow.set_tracking_uri(registry_store["uri"])
    mlflow.set_registry_uri(registry_store["uri"])
    model, info = load_scorer("models:/micro_moment_intent@champion", threads=1)
    score_file(model, path, tmp_path / "scores", model_info=info, max_rejected_share=1.0)
    with pytest.raises(ContractError, match="300 of 400 sessions"):
        feed(f"feed.scores={tmp_path / 'scores'}")
    assert not (tmp_path / "feed").exists()
    with pytest.raises(UserError, match="feed.max_rejected_share must be from 0 to 1, got 2"):
        feed("feed.max_rejected_share=2")
    summary = feed(f"feed.scores={tmp_path / 'scores'}", "feed.max_rejected_share=1")
    assert (summary["rows_in_feed"], summary["rows_rejected"]) == (100, 300)
