"""`micromoment outcomes`: the synthetic world answers a touchpoint feed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipelines.stages.runner import EXIT_BAD_DATA, UserError
from tests.conftest import compose_config


def _config(feed_output, sessions, out, *extra) -> dict:
    return compose_config(
        "outcomes",
        [
            f"outcomes.feed={feed_output['dir']}",
            f"outcomes.sessions={sessions}",
            f"outcomes.output={out}",
            *extra,
        ],
    )


def test_every_contact_of_the_feed_gets_an_answer_from_the_world(
    feed_output, synthetic_dir, tmp_path
):
    from pipelines.stages.outcomes import run_outcomes

    out = tmp_path / "outcomes"
    summary = run_outcomes(OmegaConf.create(_config(feed_output, f"{synthetic_dir}/sessions", out)))
    feed = pd.read_parquet(feed_output["dir"] / "feed.parquet")
    events = pd.read_parquet(out / "outcomes.parquet")
    truth = pd.read_parquet(out / "truth.parquet")
    contacted = feed[feed["allocated_touchpoint"].notna()]
    # each contacted journey has one row naming the touchpoint it was allocated
    shown = events[events["touchpoint"].notna()].set_index("journey_id")["touchpoint"]
    assert shown.sort_index().equals(
        contacted.set_index("journey_id")["allocated_touchpoint"].sort_index().rename("touchpoint")
    )
    # held-out journeys are never shown anything, but may still buy or come back
    held = set(feed.loc[feed["holdout"], "journey_id"])
    assert not (events["journey_id"].isin(held) & events["touchpoint"].notna()).any()
    assert len(truth) == len(feed) and truth["converted"].between(0, 1).all()
    assert summary["journeys_contacted"] == len(contacted)
    assert json.loads((out / "summary.json").read_text())["rows"] == len(events)
    # the same seed draws the same answer
    again = tmp_path / "again"
    run_outcomes(OmegaConf.create(_config(feed_output, f"{synthetic_dir}/sessions", again)))
    pd.testing.assert_frame_equal(events, pd.read_parquet(again / "outcomes.parquet"))


def test_sessions_without_a_true_intent_cannot_answer(feed_output, synthetic_dir, tmp_path):
    from pipelines.stages.outcomes import run_outcomes

    real = tmp_path / "real.parquet"
    pd.read_parquet(f"{synthetic_dir}/sessions").drop(columns=["intent"]).to_parquet(real)
    with pytest.raises(UserError, match="no true-intent column 'intent'") as err:
        run_outcomes(OmegaConf.create(_config(feed_output, real, tmp_path / "o")))
    assert err.value.code == EXIT_BAD_DATA


def test_sessions_the_feed_was_not_built_from_are_refused(feed_output, synthetic_dir, tmp_path):
    from pipelines.stages.outcomes import run_outcomes

    other = tmp_path / "other.parquet"
    sessions = pd.read_parquet(f"{synthetic_dir}/sessions")
    sessions.assign(session_id="x" + sessions["session_id"]).to_parquet(other)
    with pytest.raises(UserError, match="are not in these sessions"):
        run_outcomes(OmegaConf.create(_config(feed_output, other, tmp_path / "o")))
