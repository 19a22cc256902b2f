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

Rows in = sessions in the feed's journeys + sessions rejected by the contract, always. A feed
whose input loses more than `feed.max_rejected_share` of its sessions to the contract fails
(exit 3) naming the commonest reasons, and writes nothing.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipelines.core.contract import DatasetSpec
from pipelines.core.feed import build
from pipelines.core.scoring import check_rejected_share
from pipelines.engines.local import score_file
from pipelines.io.outputs import atomic_path, claim_output
from pipelines.io.readers import count_rows, load_stores
from pipelines.io.scores import check_scores_match, scored_sessions
from pipelines.reports import touchpoint_report as report
from pipelines.stages import runner
from pipelines.stages.runner import command
from pipelines.tracking import runs
from pipelines.tracking.registry import load_scorer

log = logging.getLogger(__name__)


def write_outputs(result: dict, work: Path) -> dict[str, bytes]:
    """Write the feed, estimates, tables, figures, report and summary into `work`."""
    result["feed"].to_parquet(work / "feed.parquet", index=False)
    result["estimates"].to_parquet(work / "conversion_estimates.parquet", index=False)
    (work / "tables").mkdir()
    for name, table in result["tables"].items():
        table.to_csv(work / "tables" / f"{name}.csv")
    page, pngs = report.build_report(
        result["headline"],
        result["feed"],
        result["estimates"],
        result["tables"],
        result["classes"],
        result["catalogue"].labels,
        measured=result.get("measured"),
        level=result["level"],
    )
    (work / "figures").mkdir()
    for name, png in pngs.items():
        (work / "figures" / f"{name}.png").write_bytes(png)
    (work / "report.html").write_text(page)
    (work / "summary.json").write_text(json.dumps(result["headline"], indent=2, default=str))
    return pngs


def log_to_mlflow(cfg: dict, result: dict, out_dir: Path, experiment_id: str) -> str:

    h = result["headline"]
    run_name = cfg["tracking"]["run_name"] or runs.run_name(
        "touchpoints", f"{h['model_name']} v{h['model_version']}"
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags(
            {
                "stage": "touchpoints",
                "predictor": str(h.get("predictor")),
                "git_commit": runs.git_commit(),
            }
        )
        runs.link_model_version(str(h["model_name"]), str(h["model_version"]))
        safe = json.loads(runs.redact(json.dumps(cfg["touchpoints"], default=str)))
        mlflow.log_params(runs.flatten({"touchpoints": safe}))
        mlflow.log_metrics(
            {f"feed/{k}": float(v) for k, v in h.items() if isinstance(v, int | float)}
        )
        for name in ("report.html", "summary.json", "conversion_estimates.parquet"):
            mlflow.log_artifact(str(out_dir / name))
        mlflow.log_artifacts(str(out_dir / "tables"), "tables")
        mlflow.log_artifacts(str(out_dir / "figures"), "figures")
        return run.info.run_id


def read_or_score(c: dict, work: Path, explain: int) -> pd.DataFrame:
    """The feed's predictions: a `micromoment score` output of its input (`feed.scores`), checked
    to belong to it, or the input scored now into `work/scores`."""
    f = c["feed"]
    if f["scores"]:
        pred_dir = Path(f["scores"]) / "predictions"
        if not pred_dir.is_dir():
            raise FileNotFoundError(
                f"{pred_dir}: not a `micromoment score` output (feed.scores); "
                "set feed.scores=null to score the input now"
            )
        check_scores_match(f["scores"], f["input"])
        return pd.read_parquet(pred_dir)
    model, info = load_scorer(
        f["model_uri"],
        int(c["runtime"]["threads"]),
        compiled=bool(c["runtime"]["compiled_trees"]),
        rows=count_rows(f["input"]),
        min_rows=int(c["runtime"]["compile_min_rows"]),
    )
    score_file(
        model,
        f["input"],
        work / "scores",
        chunk_rows=int(f["chunk_rows"]),
        model_info=info,
        explain=explain,
    )
    return pd.read_parquet(work / "scores" / "predictions")


def run_touchpoints(cfg: DictConfig) -> dict:

    start = time.perf_counter()
    c = OmegaConf.to_container(cfg, resolve=True)
    f = c["feed"]
    explain = runner.reasons_asked(f["explain"], "feed.explain")
    share = runner.share_asked(f["max_rejected_share"], "feed.max_rejected_share")
    stores_path = c["data"]["stores_path"]
    out = claim_output(f["output"], "touchpoints", inputs=(f["input"], f["scores"], stores_path))
    experiment_id = runs.setup(c["tracking"])
    stores = np.asarray(load_stores(stores_path)) if stores_path else None
    with atomic_path(out, owner="touchpoints") as work:
        work.mkdir(parents=True)
        predictions = read_or_score(c, work, explain)
        spec = DatasetSpec.from_config(c["data"])
        sessions, counts = scored_sessions(f["input"], predictions, spec)
        scores_dir = Path(f["scores"]) if f["scores"] else work / "scores"
        rejects = scores_dir / "rejects.parquet"
        check_rejected_share(counts, share, rejects, str(f["input"]), "feed.max_rejected_share")
        uris = predictions["model_uri"] if "model_uri" in predictions else pd.Series([None])
        model_uri = uris.iloc[0] if len(uris) else None
        result = build(c, sessions, counts, model_uri, stores, f["input"])
        if "predictor" in predictions and len(predictions):
            result["headline"]["predictor"] = ",".join(sorted(set(predictions["predictor"])))
        result["level"] = float(c["touchpoints"]["estimation"]["level"])
        write_outputs(result, work)
    h = result["headline"]
    if f["log_to_mlflow"]:
        h["mlflow_run_id"] = log_to_mlflow(c, result, out, experiment_id)
        # the run id lets `micromoment measure` link its run to this feed's
        with atomic_path(out / "summary.json") as tmp:
            tmp.write_text(json.dumps(h, indent=2, default=str))
    h["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"touchpoint feed: {h['journeys']} journeys ({h['rows_in_feed']} of {h['rows_in']} sessions; "
        f"{h['rows_rejected']} rejected) with {h['model_name']} version {h['model_version']}\n"
        f"  contacted {h['journeys_contacted']}, held out {h['journeys_holdout']}, suppressed "
        f"{h['journeys_suppressed']}; expected conversions {h['expected_conversions_allocated']} "
        f"allocated vs {h['expected_conversions_unconstrained']} without capacity limits\n"
        f"  report: {out / 'report.html'}\n"
        f"  MLflow: {runs.redact(mlflow.get_tracking_uri())} run {h.get('mlflow_run_id', '(not logged)')}",
        flush=True,
    )
    return h


main = command("touchpoints")(run_touchpoints)
