"""`micromoment outcomes`: the synthetic world's answer to a touchpoint feed.

Reads a `micromoment touchpoints` output and the generated sessions it was built from (which
carry each session's true intent), and writes the outcome events the world draws for the feed's
journeys (`core/response.py`): contacts, clicks, conversions after a delay, return sessions and
order values, from known true rates. `micromoment measure` reads them as it would a real export.
Only generated data can answer: real sessions have no true intent.

    outcomes.parquet   one row per journey with an event, in the outcome contract's columns
    truth.parquet      each journey's true chances within the window (for checking measurements)
    summary.json       counts, the window, the seed
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipelines.core import measure as core_measure
from pipelines.core.response import ResponseParams, expected, respond
from pipelines.io.outputs import atomic_path, claim_output
from pipelines.io.readers import read_sessions
from pipelines.stages.runner import EXIT_BAD_DATA, UserError, command


def feed_journeys(feed_dir: str | Path, sessions_path: str | Path, intent_column: str):
    """The feed's journeys with the touchpoint each was shown and the true intent of its latest
    session, and the feed itself."""
    feed_file = Path(feed_dir) / "feed.parquet"
    if not feed_file.is_file():
        raise FileNotFoundError(
            f"{feed_file}: not a `micromoment touchpoints` output (outcomes.feed)"
        )
    feed = pd.read_parquet(feed_file)
    sessions = read_sessions(sessions_path, columns=["session_id", intent_column])
    if intent_column not in sessions:
        raise UserError(
            f"{sessions_path}: has no true-intent column '{intent_column}'; only sessions from "
            "`micromoment generate` can answer a feed (outcomes.sessions)",
            EXIT_BAD_DATA,
        )
    truth = pd.Series(
        sessions[intent_column].to_numpy(), index=sessions["session_id"].astype(str).to_numpy()
    )
    intent = truth.reindex(feed["session_id"].astype(str).to_numpy())
    if intent.isna().any():
        missing = feed["session_id"][intent.isna().to_numpy()].astype(str).head(3).tolist()
        raise UserError(
            f"{sessions_path}: the feed's latest sessions {missing} are not in these sessions; "
            f"outcomes.sessions must be the input the feed in {feed_dir} was built from",
            EXIT_BAD_DATA,
        )
    journeys = pd.DataFrame(
        {
            "journey_id": feed["journey_id"].astype(str).to_numpy(),
            "session_id": feed["session_id"].astype(str).to_numpy(),
            "intent": intent.to_numpy(),
            "touchpoint": feed["allocated_touchpoint"].to_numpy(),
        }
    )
    return journeys, feed


def run_outcomes(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    c = OmegaConf.to_container(cfg, resolve=True)
    o = c["outcomes"]
    if not o["window_days"] >= 1:
        raise UserError(f"outcomes.window_days must be at least 1 day, got {o['window_days']}")
    params = ResponseParams.from_config(c["generator"])
    out = claim_output(o["output"], "outcomes", inputs=(o["feed"], o["sessions"]))
    journeys, feed = feed_journeys(o["feed"], o["sessions"], c["data"]["label"]["column"])
    feed_at = core_measure.feed_time(feed)
    events = respond(
        params, journeys, feed_at, float(o["window_days"]), np.random.default_rng(o["seed"])
    )
    intent = journeys["intent"].map({k: i for i, k in enumerate(params.intents)}).to_numpy()
    touch = journeys["touchpoint"].map({t: i for i, t in enumerate(params.touchpoints)})
    truth = expected(params, intent, touch.fillna(-1).to_numpy(dtype=np.int64), o["window_days"])
    truth.insert(0, "journey_id", journeys["journey_id"].to_numpy())
    summary = {
        "journeys": len(journeys),
        "journeys_contacted": int(journeys["touchpoint"].notna().sum()),
        "rows": len(events),
        "conversions": int(events["converted_at"].notna().sum()),
        "feed_at": feed_at.isoformat(),
        "window_days": float(o["window_days"]),
        "seed": o["seed"],
        "feed": str(o["feed"]),
    }
    with atomic_path(out, owner="outcomes") as work:
        work.mkdir(parents=True)
        events.to_parquet(work / "outcomes.parquet", index=False)
        truth.to_parquet(work / "truth.parquet", index=False)
        (work / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"outcomes: {summary['rows']} events for {summary['journeys']} journeys of {o['feed']} "
        f"({summary['journeys_contacted']} contacted, {summary['conversions']} conversions within "
        f"{o['window_days']:g} days)\n  written to {out / 'outcomes.parquet'}",
        flush=True,
    )
    return summary


main = command("outcomes")(run_outcomes)
