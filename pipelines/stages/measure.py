"""`micromoment measure`: what a touchpoint feed earned, from its outcome events.

Reads a `micromoment touchpoints` output and the outcome events that followed it (a real export
mapped by `measure.columns`, or `micromoment outcomes` on generated data), quarantines outcome
rows that break the contract with their reason, and writes one folder atomically:

    journeys.parquet            one row per journey of the feed: arm, touchpoint, outcome
    tables/*.csv                by intent x touchpoint, by intent, cohorts, uplift
    rejected_outcomes.parquet   outcome rows refused, each with its reason
    report.html, figures/       the marketer's report with the measured results
    summary.json                the feed's headline numbers and the measured ones

and logs them as an MLflow run linked to the feed's run and the model version it used.
Rows in = rows kept + rows rejected, always.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipelines.core import measure as core_measure
from pipelines.core import touchpoints as tp
from pipelines.core.contract import ContractError
from pipelines.core.outcomes import OutcomeSpec, check_outcomes
from pipelines.io.outputs import atomic_path, claim_output
from pipelines.io.readers import read_sessions
from pipelines.reports import touchpoint_report as report
from pipelines.stages.runner import UserError, command
from pipelines.tracking import runs

TABLES = ("by_intent_touchpoint", "by_intent", "cohorts", "uplift")


def read_feed(feed_dir: str | Path) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """The feed's rows, its summary and its conversion estimates."""
    feed_dir = Path(feed_dir)
    for name in ("feed.parquet", "summary.json", "conversion_estimates.parquet"):
        if not (feed_dir / name).is_file():
            raise FileNotFoundError(
                f"{feed_dir / name}: not found; measure.feed must be a `micromoment touchpoints` "
                "output"
            )
    summary = json.loads((feed_dir / "summary.json").read_text())
    return (
        pd.read_parquet(feed_dir / "feed.parquet"),
        summary,
        pd.read_parquet(feed_dir / "conversion_estimates.parquet"),
    )


def _plain(value):
    """A JSON-ready number or text (NaN becomes None)."""
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_outputs(result: dict, work: Path, feed_tables: dict) -> None:
    """The measured tables, the quarantined rows, the report and the summary into `work`."""
    result["journeys"].to_parquet(work / "journeys.parquet", index=False)
    result["rejects"].to_parquet(work / "rejected_outcomes.parquet", index=False)
    (work / "tables").mkdir()
    for name in TABLES:
        result[name].to_csv(work / "tables" / f"{name}.csv", index=False)
    page, pngs = report.build_report(
        result["summary"]["feed"],
        result["feed"],
        result["estimates"],
        feed_tables,
        result["classes"],
        result["labels"],
        measured={
            **{name: result[name] for name in (*TABLES, "time_to_conversion")},
            "headline": result["summary"],
        },
        level=result["level"],
    )
    (work / "figures").mkdir()
    for name, png in pngs.items():
        (work / "figures" / f"{name}.png").write_bytes(png)
    (work / "report.html").write_text(page)
    (work / "summary.json").write_text(json.dumps(result["summary"], indent=2))


def feed_tables(feed_dir: Path) -> dict[str, pd.DataFrame]:
    """The feed's own tables (tables/*.csv) with the index they were written with, for the
    report: a leading `intent` and `touchpoint` pair, or the first column, or none."""
    tables = {}
    for path in sorted((feed_dir / "tables").glob("*.csv")):
        frame = pd.read_csv(path)
        first = frame.columns[0]
        if first.startswith("Unnamed"):
            frame = frame.drop(columns=first)
        elif list(frame.columns[:2]) == ["intent", "touchpoint"]:
            frame = frame.set_index(["intent", "touchpoint"])
        else:
            frame = frame.set_index(first)
        tables[path.stem] = frame
    return tables


def log_to_mlflow(c: dict, result: dict, out: Path, experiment_id: str) -> str:
    s = result["summary"]
    name = c["tracking"]["run_name"] or runs.run_name(
        "measure", f"{s.get('model_name')} v{s.get('model_version')}"
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        tags = {"stage": "measure", "git_commit": runs.git_commit()}
        if s.get("feed_run_id"):
            tags["feed_run_id"] = s["feed_run_id"]
        mlflow.set_tags(tags)
        if s.get("model_name") and s.get("model_version") is not None:
            runs.link_model_version(str(s["model_name"]), str(s["model_version"]))
        mlflow.log_params(
            runs.flatten({"measure": {k: v for k, v in c["measure"].items() if k != "columns"}})
        )
        mlflow.log_metrics(
            {
                f"measure/{k}": float(v)
                for k, v in s.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            }
        )
        for name in ("report.html", "summary.json", "journeys.parquet"):
            mlflow.log_artifact(str(out / name))
        mlflow.log_artifacts(str(out / "tables"), "tables")
        mlflow.log_artifacts(str(out / "figures"), "figures")
        return run.info.run_id


def check_export(checked, feed: pd.DataFrame, m: dict) -> None:
    """Refuse an export that cannot be a whole record of the feed's outcomes: no usable row at
    all, or not one contact when the feed allocated some and the touchpoint role is mapped (an
    export of purchases only measures uplift alone: map `measure.columns.touchpoint=null`)."""
    if checked.events.empty:
        raise ContractError(
            f"{m['outcomes']}: no outcome rows to measure; an export of a feed's outcomes has at "
            "least its contacts"
        )
    allocated = (
        int(feed["allocated_touchpoint"].notna().sum()) if "allocated_touchpoint" in feed else 0
    )
    if m["columns"].get("touchpoint") and allocated and checked.events["touchpoint"].isna().all():
        raise ContractError(
            f"{m['outcomes']}: no row records a contact ({m['columns']['touchpoint']} is empty), "
            f"yet the feed allocated {allocated:,}; export the contacts too, or set "
            "measure.columns.touchpoint=null to measure conversions and uplift only"
        )


def measured(c: dict, feed: pd.DataFrame, feed_summary: dict) -> dict:
    """Check the outcome events against the feed and compute every measured table."""
    m = c["measure"]
    catalogue = tp.Catalogue.from_config(c["touchpoints"])
    raw = read_sessions(m["outcomes"])
    checked = check_outcomes(
        raw,
        OutcomeSpec.from_config(m["columns"]),
        str(m["outcomes"]),
        feed["journey_id"].astype(str).tolist(),
        catalogue.names,
        feed_at=core_measure.feed_time(feed),
    )
    check_export(checked, feed, m)
    classes = list(c["data"]["label"]["classes"])
    result = core_measure.measure(
        feed,
        checked.events,
        classes,
        dict(zip(catalogue.names, catalogue.costs, strict=True)),
        window_days=float(m["window_days"]),
        return_days=float(m["return_days"]),
        level=float(m["level"]),
    )
    counts = {f"outcome_{k}": v for k, v in checked.counts.items()}
    summary = {k: _plain(v) for k, v in {**result["headline"], **counts}.items()}
    summary.update(
        {key: feed_summary.get(key) for key in ("model_name", "model_version", "model_alias")},
        feed_run_id=feed_summary.get("mlflow_run_id"),
        feed={k: v for k, v in feed_summary.items() if k not in ("seconds",)},
    )
    return {
        **result,
        "summary": summary,
        "rejects": checked.rejects.astype({col: str for col in checked.rejects.columns}),
        "classes": classes,
        "labels": catalogue.labels,
        "level": float(m["level"]),
    }


def check_settings(m: dict) -> None:
    """Settings no measurement can meet, refused before any work (exit 2)."""
    if not m["window_days"] >= 1:
        raise UserError(f"measure.window_days must be at least 1 day, got {m['window_days']}")
    if not 0 < m["return_days"] <= m["window_days"]:
        raise UserError(
            f"measure.return_days must be in (0, measure.window_days={m['window_days']:g}], got "
            f"{m['return_days']}: returns after the window are not in the outcomes"
        )
    if not 0 < m["level"] < 1:
        raise UserError(f"measure.level must be in (0, 1), got {m['level']}")


def run_measure(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    c = OmegaConf.to_container(cfg, resolve=True)
    m = c["measure"]
    check_settings(m)
    out = claim_output(m["output"], "measure", inputs=(m["feed"], m["outcomes"]))
    feed, feed_summary, estimates = read_feed(m["feed"])
    experiment_id = runs.setup(c["tracking"]) if m["log_to_mlflow"] else None
    result = measured(c, feed, feed_summary)
    result.update(feed=feed, estimates=estimates)
    with atomic_path(out, owner="measure") as work:
        work.mkdir(parents=True)
        write_outputs(result, work, feed_tables(Path(m["feed"])))
    s = result["summary"]
    if m["log_to_mlflow"]:
        s["mlflow_run_id"] = log_to_mlflow(c, result, out, experiment_id)
        with atomic_path(out / "summary.json") as tmp:
            tmp.write_text(json.dumps(s, indent=2))
    s["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"measured: {s['journeys_measured']} journeys of {m['feed']} over {m['window_days']:g} days "
        f"({s['outcome_rows_kept']} outcome rows; {s['outcome_rows_rejected']} rejected)\n"
        f"  contacted arm {s['journeys_treated']}, held out {s['journeys_control']}: conversion "
        f"{_pct(s['conversion_rate_treated'])} vs {_pct(s['conversion_rate_control'])}, uplift "
        f"{_pts(s['uplift'])} (95% interval {_pts(s['uplift_ci_low'])} to {_pts(s['uplift_ci_high'])})\n"
        + _experiment_warning(s)
        + f"  report: {out / 'report.html'}\n"
        f"  MLflow: {runs.redact(mlflow.get_tracking_uri())} run {s.get('mlflow_run_id', '(not logged)')}",
        flush=True,
    )
    return s


def _experiment_warning(s: dict) -> str:
    """A line when the experiment did not run as the feed asked (empty when it did)."""
    broken = []
    if s["control_journeys_contacted"]:
        broken.append(f"{s['control_journeys_contacted']:,} held-out journeys were contacted")
    if s["contacts_not_as_allocated"]:
        broken.append(f"{s['contacts_not_as_allocated']:,} contacts differ from the allocation")
    if not broken:
        return ""
    return "  warning: " + "; ".join(broken) + ": the uplift measures the feed as it was run\n"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _pts(x) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f} pts"


main = command("measure")(run_measure)
