"""Scoring a piece of an input: the per-chunk function every engine runs, and the journey summary.

`score_chunk` is what the local engine runs on each bucket and the Dask engine on each partition:
the model's predictions of the chunk's sessions with their journey and start, the chunk's
rejected rows with their reason, and one row per journey. Engines differ only in how chunks are
made and where their parts are written.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core import contract
from pipelines.core.contract import REJECT_REASON, SOURCE_ROW, DatasetSpec
from pipelines.core.scorer import IntentModel

log = logging.getLogger(__name__)
ROW = "__row"  # each row's number in the whole input, carried through chunking


@dataclass(frozen=True)
class ScoreOptions:
    """How an engine scores an input: LightGBM threads, rows per bucket (the local engine's
    memory bound), reasons per row (`explain`, 0: none) and whether to compile the trees (for
    inputs of at least `compile_min_rows` rows, or a model compiled on this machine already)."""

    threads: int = 1
    chunk_rows: int = 250_000
    explain: int = 0
    compiled: bool = False
    compile_min_rows: int = 0  # smaller inputs use LightGBM unless the model is compiled already
    # a run rejecting a larger share of its rows fails before its output appears (1: never)
    max_rejected_share: float = 1.0


@dataclass
class ScoredChunk:
    """What one chunk of an input became."""

    scored: pd.DataFrame  # one row per scored session: predictions, journey, start, input row
    journeys: pd.DataFrame  # one row per journey of the chunk (see `journey_summary`)
    rejects: pd.DataFrame  # the rejected rows as they came in, with reason and input row

    @property
    def rows(self) -> int:
        return len(self.scored) + len(self.rejects)


def score_chunk(
    model: IntentModel,
    frame: pd.DataFrame,
    source: str,
    info: Mapping[str, object],
    explain: int = 0,
) -> ScoredChunk:
    """Score `frame` (the user's columns plus `ROW`, every journey whole) with `model`.

    `info` (model name, version, URI) is added to every scored and journey row as text. With
    `explain` = k, each scored session also gets its top-k reasons (`IntentModel.predict`).
    """
    frame = frame.reset_index(drop=True)
    rows = frame.pop(ROW).to_numpy()
    out = model.predict(frame, source=source, row_numbers=rows, explain=explain)
    bad = out[REJECT_REASON].notna().to_numpy()
    scored = out[~bad].drop(columns=[REJECT_REASON]).reset_index(drop=True)
    scored.insert(1, "journey_id", _journeys_of(frame, model, scored, bad))
    scored.insert(2, "started_at", _starts_of(frame, model, bad))
    text = {key: None if value is None else str(value) for key, value in info.items()}
    scored = scored.assign(**text)
    scored["input_row"] = rows[~bad]
    journeys = journey_summary(scored, list(model.classes)).assign(**text)
    rejects = frame[bad].copy()
    rejects[REJECT_REASON] = out.loc[bad, REJECT_REASON].to_numpy()
    rejects[SOURCE_ROW] = rows[bad]
    rejects = rejects.astype({c: "string" for c in rejects.columns if rejects[c].dtype == object})
    return ScoredChunk(scored, journeys, rejects)


def _journeys_of(
    frame: pd.DataFrame, model: IntentModel, scored: pd.DataFrame, bad: np.ndarray
) -> np.ndarray:
    """The scored rows' journey id as text; a session without one is its own journey (as the
    features and the splits key it: `keys.journey_key`)."""
    own = scored["session_id"].astype(str).to_numpy()
    col = model.spec.columns.get("journey_id")
    if not (col and col in frame):
        return own
    given = frame[col].to_numpy(dtype=object)[~bad]
    present = pd.notna(given)
    return np.where(present, pd.Series(given).astype(str).to_numpy(), own)


def _starts_of(frame: pd.DataFrame, model: IntentModel, bad: np.ndarray):
    """The scored rows' session start as UTC timestamps (NaT when the input has none)."""
    col = model.spec.columns.get("started_at")
    if not (col and col in frame):
        return pd.NaT
    starts = pd.to_datetime(frame[col], utc=True, errors="coerce", format="ISO8601")
    return starts.array[~bad]


def journey_summary(pred: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per journey: its latest session's intent and probabilities, and the intent sequence."""
    probs = [f"p_{c}" for c in classes]
    if pred.empty:
        cols = ["journey_id", "sessions", "latest_session_id", "latest_started_at", "intent"]
        return pd.DataFrame(columns=[*cols, *probs, "intent_sequence"])
    order = pred.sort_values(
        ["journey_id", "started_at", "session_id"], kind="mergesort", na_position="last"
    )
    # sorted by journey, each journey's sessions are one run of rows: its last row is the latest
    journey = order["journey_id"].to_numpy(dtype=object)
    first = np.ones(len(journey), dtype=bool)
    first[1:] = journey[1:] != journey[:-1]
    starts = np.flatnonzero(first)
    last = np.append(starts[1:], len(journey)) - 1
    out = pd.DataFrame(
        {
            "journey_id": journey[last],
            "sessions": np.diff(np.append(starts, len(journey))),
            "latest_session_id": order["session_id"].to_numpy()[last],
            "latest_started_at": order["started_at"].array[last],
            "intent": order["intent"].to_numpy()[last],
        }
    )
    for p in probs:
        out[p] = order[p].to_numpy()[last]
    out["intent_sequence"] = _sequences(order["intent"].to_numpy(dtype=object), first, starts)
    return out


def _sequences(intents: np.ndarray, first: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each journey's intents joined with '>' (`know>do>buy`), from the intents in journey then
    time order, where `first` marks each journey's first row and `starts` lists those rows:
    string concatenation per run of rows in one NumPy call, not a Python function per journey."""
    tokens = np.array([str(v) for v in intents], dtype=object)
    tokens[~first] = ">" + tokens[~first]
    return np.add.reduceat(tokens, starts)


def check_accounting(rows_in: int, scored: int, rejected: int) -> None:
    """Rows in = rows scored + rows rejected, or the run fails before its output appears."""
    if rows_in != scored + rejected:
        raise RuntimeError(
            f"row accounting broke: {rows_in} in, {scored} scored, {rejected} rejected"
        )


def check_rejected_share(
    counts: Mapping[str, int],
    limit: float,
    rejects: Path,
    source: str,
    setting: str = "score.max_rejected_share",
) -> None:
    """Refuse (`ContractError`, raised before the run's output appears) a run that rejected more
    than `limit` (the config key `setting`) of its rows, naming the commonest reasons from
    `rejects`: a scheduled job would otherwise publish a mostly empty output and end with exit 0."""
    rows_in, rejected = counts["rows_in"], counts["rows_rejected"]
    if limit >= 1 or not rows_in or rejected / rows_in <= limit:
        return
    reasons = pd.read_parquet(rejects, columns=[REJECT_REASON])[REJECT_REASON]
    common = reasons.str.split("; ").explode().str.replace(r" \(got .*\)$", "", regex=True)
    top = ", ".join(f"{reason} ({n:,})" for reason, n in common.value_counts().head(3).items())
    raise contract.ContractError(
        f"{source}: {rejected:,} of {rows_in:,} sessions ({rejected / rows_in:.0%}) broke the "
        f"contract, over {setting} {limit:g}; commonest reasons: {top}. Nothing was "
        f"written; raise {setting} to use the rest"
    )


def score_summary(
    input_path: str,
    out_dir: str,
    counts: Mapping[str, int],
    info: Mapping[str, object],
    **extra,
) -> dict:
    """The `summary.json` of a scoring run, after checking its row accounting.

    `counts` holds `rows_in`, `rows_scored`, `rows_rejected` and `journeys`; `extra` what the
    engine adds (the input fingerprint, missing columns, buckets or partitions, seconds).
    """
    check_accounting(counts["rows_in"], counts["rows_scored"], counts["rows_rejected"])
    missing = list(extra.pop("missing_columns", None) or [])
    return {
        "input": str(input_path),
        "output": str(out_dir),
        **{k: int(counts[k]) for k in ("rows_in", "rows_scored", "rows_rejected", "journeys")},
        "missing_columns": missing,
        "missing_columns_count": len(missing),
        **extra,
        **{k: (None if v is None else str(v)) for k, v in info.items()},
    }


def report_absent_columns(spec: DatasetSpec, names: list[str], source: str) -> list[str]:
    """Warn about each mapped optional column missing from an input (it is scored without it),
    naming a column that differs only in case or spelling; refuse an input with none of them."""
    absent = contract.absent_columns(spec, names)
    contract.check_any_present(spec, names, source)
    plain = {re.sub(r"[^a-z0-9]", "", n.lower()): n for n in names}
    for col in absent:
        key = re.sub(r"[^a-z0-9]", "", col.lower())
        near = [plain[k] for k in difflib.get_close_matches(key, list(plain), n=1, cutoff=0.8)]
        hint = f" (found '{near[0]}': map it in data.columns)" if near else ""
        log.warning("%s: mapped column '%s' is missing; scored without it%s", source, col, hint)
    return absent
