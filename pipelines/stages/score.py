"""`micromoment score`: batch-score sessions and journeys with a registered (or exported) model.

The configured engine does the work (`pipelines.engines`): in this process, streaming the input
through journey buckets in bounded memory, or on a Dask cluster. Both write the same folder,
atomically: `predictions/` (one row per scored session), `journeys.parquet` (one row per journey:
latest intent and the intent sequence), `rejects.parquet` (rows that broke the contract, with the
reason) and `summary.json`. Rows in = rows scored + rows rejected. A run that rejects more than
`score.max_rejected_share` of its rows fails (exit 3) naming the commonest reasons, and writes
nothing: a scheduler must not take a mostly empty output for a good one.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipelines.core.scoring import ScoreOptions
from pipelines.engines import engine_for
from pipelines.io.outputs import claim_output
from pipelines.stages import runner
from pipelines.stages.runner import command
from pipelines.tracking import runs
from pipelines.tracking.registry import needs_tracking


def run_score(cfg: DictConfig) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    s = c["score"]
    uri = str(s["model_uri"])
    explain = runner.reasons_asked(s["explain"], "score.explain")
    share = runner.share_asked(s["max_rejected_share"], "score.max_rejected_share")
    claim_output(s["output"], "score", inputs=(s["input"], uri))
    if needs_tracking(uri):
        runner.check_tracking(runs.resolve_tracking_uri(c["tracking"]["uri"]))
        runs.setup(c["tracking"])
    elif "://" not in uri and not Path(uri).is_dir():
        raise FileNotFoundError(f"{uri}: no such model folder (score.model_uri)")
    options = ScoreOptions(
        threads=int(c["runtime"]["threads"]),
        chunk_rows=int(s["chunk_rows"]),
        explain=explain,
        compiled=bool(c["runtime"]["compiled_trees"]),
        compile_min_rows=int(c["runtime"]["compile_min_rows"]),
        max_rejected_share=share,
    )
    summary = engine_for(c["engine"]).score(uri, s["input"], s["output"], options)
    missing = summary["missing_columns"]
    print(
        f"scored {summary['rows_scored']} of {summary['rows_in']} sessions "
        f"({summary['rows_rejected']} rejected) in {summary['journeys']} journeys with "
        f"{summary['model_name']} version {summary['model_version']} -> {summary['output']}"
        + (
            f"\n  {len(missing)} mapped columns missing from the input, scored without them: "
            + ", ".join(missing)
            if missing
            else ""
        ),
        flush=True,
    )
    return summary


main = command("score", tracking=False)(run_score)
