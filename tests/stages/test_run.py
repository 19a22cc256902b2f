"""`micromoment run`: the whole chain on tiny data, from generation to the measured feed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.reports.touchpoint_report import data_value
from tests.fixtures import run_cli, run_consumer


@pytest.mark.slow
def test_micromoment_run_end_to_end_registers_a_version(tmp_path):
    """The README's main job on tiny data, in a fresh working directory with the embedded store."""
    proc = run_cli(
        ["run", "generate.n_journeys=500", "runtime.threads=1", "model.num_boost_round=150"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run id:" in proc.stdout and "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    db = tmp_path / "mlflow.db"
    assert db.exists() and (tmp_path / "mlartifacts").is_dir()
    assert len(list((tmp_path / "data" / "synthetic" / "sessions").glob("part-*.parquet"))) == 1

    client = MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    version = client.get_model_version_by_alias("micro_moment_intent", "challenger")
    assert str(version.version) == "1"
    run = client.get_run(version.run_id)
    for key in (
        "test/accuracy",
        "test/macro_f1",
        "test/logloss",
        "test/ece",
        "test/bayes/accuracy",
        "test/logreg/accuracy",
    ):
        assert key in run.data.metrics, key
    assert run.data.metrics["test/accuracy"] > 0.7
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "plots",
        "config",
        "model_contract.json",
    }

    # a consumer in a fresh process, in another directory, with only the tracking URI
    elsewhere = tmp_path / "consumer"
    elsewhere.mkdir()
    code = (
        "import mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/micro_moment_intent@challenger')\n"
        "raw = pd.DataFrame({'session_id': ['a', 'b'], 'device': ['mobile', 'smartwatch'],"
        " 'dwell_time_s': [45.0, 600.0], 'pages_store_locator': [3, 0], 'pages_how_to': [0, 6]})\n"
        "out = m.predict(raw)\n"
        "print(out['intent'].tolist(), round(float(out[['p_know','p_go','p_do','p_buy']].sum(axis=1).max()), 6))\n"
    )
    consumer = run_consumer(code, elsewhere, f"sqlite:///{db}")
    assert consumer.returncode == 0, consumer.stderr[-3000:]
    assert consumer.stdout.strip().endswith("1.0")

    # and the champion's touchpoint feed: one row per journey, with the report beside it
    feed_dir = tmp_path / "touchpoints" / "latest"
    assert "touchpoint feed:" in proc.stdout and "report.html" in proc.stdout
    feed = pd.read_parquet(feed_dir / "feed.parquet")
    sessions = pd.read_parquet(tmp_path / "data" / "synthetic" / "sessions")
    assert len(feed) == sessions["journey_id"].nunique() == 500
    assert set(feed["model_version"]) == {"1"} and set(feed["model_alias"]) == {"champion"}
    assert (feed_dir / "report.html").stat().st_size > 10_000

    # then the world answers the feed and what it earned is measured, linked to the feed's run
    assert "outcomes:" in proc.stdout and "measured:" in proc.stdout
    events = pd.read_parquet(tmp_path / "outcomes" / "latest" / "outcomes.parquet")
    assert set(events["journey_id"]) <= set(feed["journey_id"])
    summary = json.loads((tmp_path / "measure" / "latest" / "summary.json").read_text())
    feed_summary = json.loads((feed_dir / "summary.json").read_text())
    assert summary["feed_run_id"] == feed_summary["mlflow_run_id"]
    assert summary["outcome_rows_in"] == len(events)
    assert summary["journeys_treated"] + summary["journeys_control"] <= len(feed)
    measure_run = client.get_run(summary["mlflow_run_id"])
    assert measure_run.data.tags["feed_run_id"] == feed_summary["mlflow_run_id"]
    # both reports, as a marketer opens them
    check_in_browser(feed_dir / "report.html", tmp_path / "feed_report")
    check_in_browser(tmp_path / "measure" / "latest" / "report.html", tmp_path / "measure_report")


def check_in_browser(report, tmp_path) -> None:
    """The real report in headless Chromium: images load, nothing overflows 1280 px, no console
    errors, and each headline number is its summary's value."""
    from tests.reports.test_report_browser import CHROMIUM, errors_in, open_in_chromium

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/ensure_chromium.sh installs it)")
    found, events = open_in_chromium(report, tmp_path / "profile", tmp_path / "shot.png")
    assert found["images"] and all(i["ok"] for i in found["images"])
    assert not found["wide"] and found["scrollWidth"] <= found["clientWidth"]
    assert not errors_in(events), errors_in(events)
    summary = json.loads((report.parent / "summary.json").read_text())
    sources = {"feed": summary.get("feed", summary), "measured": summary}
    for n in found["numbers"]:
        assert n["value"] == data_value(sources[n["source"]][n["key"]]), n
