"""`micromoment touchpoints`: the touchpoint feed, a budgeted allocation and a marketer's report.

Reads raw sessions (with the touchpoint each was shown, its logging propensity and whether it
converted), scores them with a registered model (or reads a `micromoment score` output of the
same input), estimates conversion by intent x touchpoint, and writes one folder atomically:

    feed.parquet                 one row per journey at its latest session: the touchpoint to use now
    conversion_estimates.parquet conversion per intent x touchpoint with intervals and status
    tables/*.csv                 the marketer's tables (also in the report)
    figures/*.png, report.html   the report
    summary.json                 counts, model, headline numbers
    scores/                      the scoring output, when the input was scored here

Rows in = sessions in the feed's journeys + sessions rejected by the contract, always.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from pipelines.reports import touchpoint_report as report
from pipelines.core.contract import ContractError, DatasetSpec, to_contract
from pipelines.io.outputs import atomic_path, claim_output
from pipelines.io.readers import input_files
from pipelines.stages.runner import command
from pipelines.core.touchpoints import (
    Catalogue,
    allocate,
    build_feed,
    eligibility,
    estimate_conversion,
    intent_weights,
    journey_context,
    marketer_tables,
    rate_matrix,
)

log = logging.getLogger(__name__)

# the roles the feed reads from the raw sessions beside the scorer's output
FEED_ROLES = (
    "session_id",
    "journey_id",
    "started_at",
    "utc_offset_min",
    "device",
    "channel",
    "latitude",
    "longitude",
    "dwell_time_s",
    "touchpoint",
    "touchpoint_propensity",
    "converted",
)


def read_input(path: str | Path, columns: list[str]) -> pd.DataFrame:
    """The given columns of every input file, in the order the scorer numbers rows."""
    parts = []
    for f in input_files(Path(path)):
        if f.suffix == ".csv":
            opts = pacsv.ConvertOptions(include_columns=columns, include_missing_columns=True)
            table = pacsv.read_csv(f, convert_options=opts)
        else:
            schema = pq.read_schema(f)
            table = pq.read_table(f, columns=[c for c in columns if c in schema.names])
        parts.append(table)
    return pa.concat_tables(parts, promote_options="permissive").to_pandas()


def scored_sessions(
    input_path: str | Path, predictions: pd.DataFrame, spec: DatasetSpec
) -> tuple[pd.DataFrame, dict]:
    """The scorer's predictions joined to the sessions' context in canonical role names (and the
    label, when the data has one), matched by row position in the input."""
    feed_spec = replace(
        spec,
        columns={r: c for r, c in spec.columns.items() if r in FEED_ROLES and c},
        page_counts={},
        extra_numeric=(),
        extra_categorical=(),
    )
    cols = list(feed_spec.role_columns().values())
    if spec.label_column:
        cols.append(spec.label_column)
    raw = read_input(input_path, cols)
    contract = to_contract(
        raw, feed_spec, source=str(input_path), with_label=False, all_columns=False
    )
    sessions = contract.sessions
    sessions["input_row"] = contract.kept_rows
    if spec.label_column and spec.label_column in raw:
        label = raw[spec.label_column].astype(object).where(raw[spec.label_column].notna())
        label = label.map(lambda v: None if v is None else spec.label_mapping.get(str(v), str(v)))
        label = label.where(label.isin(spec.classes))
        sessions["label"] = label.to_numpy()[contract.kept_rows]
    keep = [c for c in predictions.columns if c not in sessions.columns or c == "input_row"]
    keep.append("session_id")
    joined = sessions.merge(
        predictions[keep],
        on="input_row",
        how="inner",
        validate="one_to_one",
        suffixes=("", "_scored"),
    )
    differ = joined["session_id"].astype(str) != joined.pop("session_id_scored").astype(str)
    if differ.any():
        raise ContractError(
            f"{input_path}: {int(differ.sum())} of {len(joined)} scored rows carry another "
            "session id than the input row they claim: the scores belong to another input"
        )
    counts = {
        "rows_in": len(raw),
        "rows_scored": len(predictions),
        "rows_in_feed": len(joined),
        "rows_rejected": len(raw) - len(joined),
    }
    return joined, counts


def check_scores_match(scores: str | Path, input_path: str | Path) -> None:
    """Refuse scores that were not computed from `input_path`: the content fingerprint the scoring
    run recorded must equal this input's."""
    from pipelines.stages.score import input_fingerprint

    summary_path = Path(scores) / "summary.json"
    recorded = (
        json.loads(summary_path.read_text()).get("input_fingerprint")
        if summary_path.is_file()
        else None
    )
    if not recorded:
        raise ContractError(
            f"{scores}: records no input fingerprint, so it cannot be matched to {input_path}; "
            "score the input again with `micromoment score` or set feed.scores=null"
        )
    actual = input_fingerprint(input_path)
    if recorded != actual:
        raise ContractError(
            f"{scores}: these scores belong to another input (fingerprint {recorded}, "
            f"{input_path} has {actual}); score {input_path} or set feed.scores=null"
        )


def _model_alias(uri: str | None) -> str | None:
    m = re.match(r"models:/[^@/]+@(.+)$", uri or "")
    return m.group(1) if m else None


def build(
    cfg: dict, predictions: pd.DataFrame, input_path: str | Path, stores: np.ndarray | None
) -> dict:
    """Everything the feed command computes, as frames and numbers (no files, no MLflow)."""
    spec = DatasetSpec.from_config(cfg["data"])
    tcfg = cfg["touchpoints"]
    classes = list(spec.classes)
    catalogue = Catalogue.from_config(tcfg)
    sessions, counts = scored_sessions(input_path, predictions, spec)
    if sessions.empty:
        raise ValueError(f"{input_path}: no scored sessions to build a touchpoint feed from")

    est = tcfg["estimation"]
    if "touchpoint" not in sessions or not sessions["touchpoint"].notna().any():
        raise ValueError(
            f"{input_path}: no session records a touchpoint shown (data.columns.touchpoint), "
            "so conversion by touchpoint cannot be estimated"
        )
    logged = sessions[sessions["touchpoint"].notna()]
    weights, source = intent_weights(logged, classes, est["intent_source"])
    estimates = estimate_conversion(
        logged,
        weights,
        classes,
        catalogue.names,
        min_effective_sessions=float(est["min_effective_sessions"]),
        prior_strength=float(est["prior_strength"]),
        level=float(est["level"]),
    )
    rates = rate_matrix(estimates, classes, catalogue.names)

    ctx = journey_context(sessions, catalogue)
    ctx["model_alias"] = _model_alias(predictions.get("model_uri", pd.Series([None])).iloc[0])
    ok, reasons = eligibility(ctx, catalogue, stores)
    feed = build_feed(
        ctx,
        classes,
        rates,
        catalogue,
        ok,
        reasons,
        objective=tcfg["objective"],
        holdout_share=float(tcfg["holdout_share"]),
        holdout_salt=str(tcfg["holdout_salt"]),
        suppress_after_conversion_hours=tcfg["suppress_after_conversion_hours"],
    )
    rows = feed.rows
    rows.insert(2, "scored_at", pd.Timestamp(datetime.now(UTC)))

    # the budgeted allocation covers the journeys that may be contacted
    contactable = rows["contact"].to_numpy()
    score = np.where(contactable[:, None], feed.score, -np.inf)
    alloc = allocate(
        score,
        catalogue.capacities,
        catalogue.costs,
        catalogue.budget,
        time_limit=float(tcfg["allocation"]["time_limit_s"]),
        mip_rel_gap=float(tcfg["allocation"]["mip_rel_gap"]),
        exact_max_pairs=int(tcfg["allocation"]["exact_max_pairs"]),
    )
    names = np.asarray(catalogue.names, dtype=object)
    chosen = alloc.choice >= 0
    idx = np.arange(len(rows))
    pick = np.where(chosen, alloc.choice, 0)
    rows["allocated_touchpoint"] = np.where(chosen, names[pick], None)
    rows["allocated_expected_conversion"] = np.where(
        chosen, feed.expected_conversion[idx, pick], np.nan
    )
    best = rows["recommended_touchpoint"].where(contactable)
    conv, value = rows["expected_conversion"], rows["expected_value"]
    costs = pd.Series(catalogue.costs, index=catalogue.names)
    allocation_table = pd.DataFrame(
        {
            "capacity": catalogue.capacities,
            "cost": catalogue.costs,
            "unconstrained": best.value_counts().reindex(catalogue.names, fill_value=0),
            "allocated": rows["allocated_touchpoint"]
            .value_counts()
            .reindex(catalogue.names, fill_value=0),
        },
        index=pd.Index(catalogue.names, name="touchpoint"),
    )
    allocation_table["allocated_cost"] = allocation_table["allocated"] * costs
    allocated_conv = float(np.nansum(rows["allocated_expected_conversion"]))
    unconstrained_conv = float(conv[contactable].sum())
    tables = marketer_tables(sessions, rows, classes)
    tables["allocation"] = allocation_table
    tables["conversion_by_intent_and_touchpoint"] = estimates.set_index(["intent", "touchpoint"])

    headline = {
        **counts,
        "journeys": len(rows),
        "journeys_contacted": int(chosen.sum()),
        "journeys_holdout": int(rows["holdout"].sum()),
        "journeys_suppressed": int(rows["suppressed"].sum()),
        "expected_conversions_allocated": round(allocated_conv, 3),
        "expected_conversions_unconstrained": round(unconstrained_conv, 3),
        "allocation_share_of_unconstrained": round(allocated_conv / unconstrained_conv, 4)
        if unconstrained_conv > 0
        else None,
        "allocated_cost": round(float(allocation_table["allocated_cost"].sum()), 2),
        "expected_value_unconstrained": round(float(value[contactable].sum()), 2),
        "allocation_status": alloc.status,
        "allocation_bound": None if alloc.bound is None else round(alloc.bound, 3),
        "objective": tcfg["objective"],
        "intent_source_for_estimates": source,
        "cells_estimated": int(estimates["status"].eq("ok").sum()),
        "cells_insufficient": int((~estimates["status"].eq("ok")).sum()),
        "touchpoints_without_estimates": feed.unestimated,
        "model_name": rows["model_name"].iloc[0],
        "model_version": rows["model_version"].iloc[0],
        "model_alias": rows["model_alias"].iloc[0],
    }
    return {
        "feed": rows,
        "estimates": estimates,
        "tables": tables,
        "headline": headline,
        "classes": classes,
        "catalogue": catalogue,
    }


def write_outputs(result: dict, work: Path) -> dict[str, bytes]:
    """Write the feed, estimates, tables, figures, report and summary into `work`."""
    classes, names = result["classes"], result["catalogue"].names
    result["feed"].to_parquet(work / "feed.parquet", index=False)
    result["estimates"].to_parquet(work / "conversion_estimates.parquet", index=False)
    (work / "tables").mkdir()
    for name, table in result["tables"].items():
        table.to_csv(work / "tables" / f"{name}.csv")
    figures = {
        "conversion_heatmap": report.conversion_heatmap(result["estimates"], classes, names),
        "conversion_intervals": report.conversion_intervals(result["estimates"], classes),
        "allocation": report.allocation_chart(result["tables"]["allocation"]),
    }
    if "intent_mix_by_channel" in result["tables"]:
        figures["intent_mix_by_channel"] = report.intent_mix_chart(
            result["tables"]["intent_mix_by_channel"], classes, "entry channel"
        )
    pngs = {name: report.png_bytes(fig) for name, fig in figures.items()}
    (work / "figures").mkdir()
    for name, png in pngs.items():
        (work / "figures" / f"{name}.png").write_bytes(png)
    h = result["headline"]
    notes = [
        "Conversion rates are inverse-propensity estimates from the logged touchpoints, shrunk "
        "towards each touchpoint's rate over all intents; intervals are central "
        f"{100 * result['level']:.0f}% intervals.",
        "A touchpoint with too little data for some intent is never recommended: "
        + (", ".join(h["touchpoints_without_estimates"]) or "none this time")
        + ".",
        f"{h['journeys_holdout']} journeys are held out as a control group: compare their "
        "conversion with the contacted journeys to measure uplift.",
    ]
    html = report.render_html(
        f"Touchpoint report: {h['model_name']} version {h['model_version']}",
        {k: v for k, v in h.items() if not isinstance(v, list)},
        pngs,
        result["tables"],
        notes,
    )
    (work / "report.html").write_text(html)
    (work / "summary.json").write_text(json.dumps(h, indent=2, default=str))
    return pngs


def log_to_mlflow(cfg: dict, result: dict, out_dir: Path, experiment_id: str) -> str:
    import mlflow

    from pipelines.tracking.runs import runs as tracking

    h = result["headline"]
    run_name = cfg["tracking"].get("run_name") or "touchpoints"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags(
            {
                "stage": "touchpoints",
                "model_name": str(h["model_name"]),
                "model_version": str(h["model_version"]),
                "git_commit": tracking.git_commit(),
            }
        )
        safe = json.loads(tracking.redact(json.dumps(cfg["touchpoints"], default=str)))
        mlflow.log_params(tracking.flatten({"touchpoints": safe}))
        mlflow.log_metrics(
            {f"feed/{k}": float(v) for k, v in h.items() if isinstance(v, int | float)}
        )
        for name in ("report.html", "summary.json", "conversion_estimates.parquet"):
            mlflow.log_artifact(str(out_dir / name))
        mlflow.log_artifacts(str(out_dir / "tables"), "tables")
        mlflow.log_artifacts(str(out_dir / "figures"), "figures")
        return run.info.run_id


def run_touchpoints(cfg: DictConfig) -> dict:
    import mlflow

    from pipelines.tracking.runs import runs as tracking
    from pipelines.stages.score import load_scorer, score_file
    from pipelines.stages.train import load_stores

    start = time.perf_counter()
    c = OmegaConf.to_container(cfg, resolve=True)
    f = c["feed"]
    stores_path = c["data"].get("stores_path")
    out = claim_output(
        f["output"], "touchpoints", inputs=(f["input"], f.get("scores"), stores_path)
    )
    experiment_id = tracking.setup(c["tracking"])
    stores = np.asarray(load_stores(stores_path)) if stores_path else None
    with atomic_path(out, owner="touchpoints") as work:
        work.mkdir(parents=True)
        if f.get("scores"):
            pred_dir = Path(f["scores"]) / "predictions"
            if not pred_dir.is_dir():
                raise FileNotFoundError(
                    f"{pred_dir}: not a `micromoment score` output (feed.scores); "
                    "set feed.scores=null to score the input now"
                )
            check_scores_match(f["scores"], f["input"])
        else:
            model, info = load_scorer(f["model_uri"], int(c["runtime"]["threads"]))
            score_file(
                model, f["input"], work / "scores", chunk_rows=int(f["chunk_rows"]), model_info=info
            )
            pred_dir = work / "scores" / "predictions"
        predictions = pd.read_parquet(pred_dir)
        result = build(c, predictions, f["input"], stores)
        result["level"] = float(c["touchpoints"]["estimation"]["level"])
        write_outputs(result, work)
    h = result["headline"]
    if f.get("log_to_mlflow", True):
        h["mlflow_run_id"] = log_to_mlflow(c, result, out, experiment_id)
    h["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"touchpoint feed: {h['journeys']} journeys ({h['rows_in_feed']} of {h['rows_in']} sessions; "
        f"{h['rows_rejected']} rejected) with {h['model_name']} version {h['model_version']}\n"
        f"  contacted {h['journeys_contacted']}, held out {h['journeys_holdout']}, suppressed "
        f"{h['journeys_suppressed']}; expected conversions {h['expected_conversions_allocated']} "
        f"allocated vs {h['expected_conversions_unconstrained']} without capacity limits\n"
        f"  report: {out / 'report.html'}\n"
        f"  MLflow: {tracking.redact(mlflow.get_tracking_uri())} run {h.get('mlflow_run_id', '(not logged)')}",
        flush=True,
    )
    return h


@command("touchpoints")
def main(cfg: DictConfig) -> None:
    run_touchpoints(cfg)
