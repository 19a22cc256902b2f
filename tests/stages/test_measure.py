"""`micromoment measure`: what a feed earned, from its outcome events."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipelines.core.contract import ContractError
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def outcomes_file(feed_output, synthetic_dir, tmp_path_factory):
    from pipelines.stages.outcomes import run_outcomes

    out = tmp_path_factory.mktemp("outcomes") / "outcomes"
    cfg = compose_config(
        "outcomes",
        [
            f"outcomes.feed={feed_output['dir']}",
            f"outcomes.sessions={synthetic_dir}/sessions",
            f"outcomes.output={out}",
        ],
    )
    run_outcomes(OmegaConf.create(cfg))
    return out / "outcomes.parquet"


def _measure(feed_output, outcomes, out, *extra):
    from pipelines.stages.measure import run_measure

    cfg = compose_config(
        "measure",
        [
            f"measure.feed={feed_output['dir']}",
            f"measure.outcomes={outcomes}",
            f"measure.output={out}",
            f"tracking.uri={feed_output['uri']}",
            *extra,
        ],
    )
    return run_measure(OmegaConf.create(cfg))


def test_measure_writes_the_tables_report_and_a_run_linked_to_the_feed(
    feed_output, outcomes_file, tmp_path
):
    out = tmp_path / "measure"
    s = _measure(feed_output, outcomes_file, out)
    feed = pd.read_parquet(feed_output["dir"] / "feed.parquet")
    journeys = pd.read_parquet(out / "journeys.parquet")
    assert len(journeys) == len(feed) == s["journeys_measured"]
    events = pd.read_parquet(outcomes_file)
    assert (
        s["outcome_rows_in"] == len(events) == s["outcome_rows_kept"] + s["outcome_rows_rejected"]
    )
    uplift = pd.read_csv(out / "tables" / "uplift.csv")
    overall = uplift.iloc[0]
    assert overall["level"] == "overall"
    assert overall["ci_low"] <= overall["uplift"] <= overall["ci_high"]
    assert overall["treated_journeys"] == s["journeys_treated"]
    assert (
        overall["control_journeys"]
        == s["journeys_control"]
        == (feed["holdout"] & feed["recommended_touchpoint"].notna() & ~feed["suppressed"]).sum()
    )
    assert set(pd.read_csv(out / "tables" / "by_intent.csv")["intent"]) == {
        "know",
        "go",
        "do",
        "buy",
    }
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["uplift"] == pytest.approx(overall["uplift"])
    assert on_disk["model_version"] == feed_output["summary"]["model_version"]
    # the MLflow run names the feed's run and the model version, and carries the numbers
    client = mlflow.MlflowClient(feed_output["uri"])
    run = client.get_run(s["mlflow_run_id"])
    assert run.data.tags["feed_run_id"] == feed_output["summary"]["mlflow_run_id"]
    assert run.data.tags["model_version"] == str(feed_output["summary"]["model_version"])
    assert run.data.metrics["measure/uplift"] == pytest.approx(overall["uplift"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "summary.json", "tables", "figures"} <= artifacts


def test_outcome_columns_named_otherwise_are_mapped_by_config(feed_output, outcomes_file, tmp_path):
    renamed = tmp_path / "export.csv"
    pd.read_parquet(outcomes_file).rename(
        columns={"journey_id": "customer_journey", "converted_at": "purchase_time"}
    ).drop(columns=["bounced"]).to_csv(renamed, index=False)
    s = _measure(
        feed_output,
        renamed,
        tmp_path / "m",
        "measure.columns.journey_id=customer_journey",
        "measure.columns.converted_at=purchase_time",
        "measure.columns.bounced=null",
        "measure.log_to_mlflow=false",
    )
    plain = _measure(feed_output, outcomes_file, tmp_path / "plain", "measure.log_to_mlflow=false")
    assert s["uplift"] == pytest.approx(plain["uplift"])
    assert s["conversions"] == plain["conversions"]
    assert "mlflow_run_id" not in s
    with pytest.raises(ContractError, match=r"\['journey_id \(journey_id\)', 'converted_at"):
        _measure(feed_output, renamed, tmp_path / "m2", "measure.log_to_mlflow=false")


def test_bad_outcome_rows_are_set_aside_with_their_reason(feed_output, outcomes_file, tmp_path):
    events = pd.read_parquet(outcomes_file)
    bad = events.head(3).copy()
    bad["journey_id"] = ["not-a-journey", bad["journey_id"].iloc[1], bad["journey_id"].iloc[2]]
    bad["value"] = [1.0, -5.0, 1.0]
    bad["touchpoint"] = [bad["touchpoint"].iloc[0], bad["touchpoint"].iloc[1], "carrier_pigeon"]
    path = tmp_path / "with_bad.parquet"
    pd.concat([events, bad], ignore_index=True).to_parquet(path)
    s = _measure(feed_output, path, tmp_path / "m", "measure.log_to_mlflow=false")
    rejects = pd.read_parquet(tmp_path / "m" / "rejected_outcomes.parquet")
    assert s["outcome_rows_in"] == len(events) + 3
    assert s["outcome_rows_rejected"] == len(rejects) >= 3
    reasons = set(rejects["reject_reason"])
    assert {"journey not in the feed", "value is negative"} <= reasons
    assert "touchpoint not in the catalogue: carrier_pigeon" in reasons


def test_outcomes_of_another_feed_are_refused(feed_output, outcomes_file, tmp_path):
    other = tmp_path / "other.parquet"
    events = pd.read_parquet(outcomes_file)
    events.assign(journey_id="zz" + events["journey_id"]).to_parquet(other)
    with pytest.raises(ContractError, match="journey not in the feed"):
        _measure(feed_output, other, tmp_path / "m", "measure.log_to_mlflow=false")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("measure.window_days=0.5", "measure.window_days"),
        ("measure.return_days=40", "measure.return_days"),
        ("measure.level=95", "measure.level"),
    ],
)
def test_settings_no_measurement_can_meet_exit_2_before_any_work(
    feed_output, outcomes_file, tmp_path, override, key
):
    from pipelines.stages.runner import EXIT_USAGE, UserError

    with pytest.raises(UserError, match=key) as err:
        _measure(feed_output, outcomes_file, tmp_path / "m", override)
    assert err.value.code == EXIT_USAGE
    assert not (tmp_path / "m").exists()


def test_an_empty_export_or_one_without_contacts_is_refused(feed_output, outcomes_file, tmp_path):
    events = pd.read_parquet(outcomes_file)
    empty = tmp_path / "empty.parquet"
    events.head(0).to_parquet(empty)
    with pytest.raises(ContractError, match="no outcome rows to measure"):
        _measure(feed_output, empty, tmp_path / "m1", "measure.log_to_mlflow=false")
    # purchases only: the contacts are missing, unless the touchpoint role is said to be absent
    purchases = tmp_path / "purchases.parquet"
    events[events["converted_at"].notna()].assign(touchpoint=None, shown_at=None).to_parquet(
        purchases
    )
    with pytest.raises(ContractError, match="no row records a contact"):
        _measure(feed_output, purchases, tmp_path / "m2", "measure.log_to_mlflow=false")
    s = _measure(
        feed_output,
        purchases,
        tmp_path / "m3",
        "measure.log_to_mlflow=false",
        "measure.columns.touchpoint=null",
        "measure.columns.shown_at=null",
    )
    full = _measure(feed_output, outcomes_file, tmp_path / "m4", "measure.log_to_mlflow=false")
    assert s["uplift"] == pytest.approx(full["uplift"])
    assert s["journeys_contacted"] == 0


def test_contacts_the_feed_did_not_ask_for_are_counted_and_said(
    feed_output, outcomes_file, tmp_path, capsys
):
    feed = pd.read_parquet(feed_output["dir"] / "feed.parquet")
    held = feed[feed["holdout"] & feed["recommended_touchpoint"].notna() & ~feed["suppressed"]]
    leak = pd.DataFrame(
        {
            "journey_id": held["journey_id"].head(2).to_numpy(),
            "touchpoint": held["recommended_touchpoint"].head(2).to_numpy(),
            "shown_at": pd.to_datetime(feed["scored_at"]).max() + pd.Timedelta(hours=1),
        }
    )
    path = tmp_path / "leaky.parquet"
    pd.concat([pd.read_parquet(outcomes_file), leak], ignore_index=True).to_parquet(path)
    s = _measure(feed_output, path, tmp_path / "m", "measure.log_to_mlflow=false")
    assert s["control_journeys_contacted"] == 2
    assert "warning: 2 held-out journeys were contacted" in capsys.readouterr().out
