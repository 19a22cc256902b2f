"""A `micromoment score` output read back: its predictions joined to the input rows they were
computed from, refused when the scores belong to another input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from pipelines.core.contract import ContractError, DatasetSpec, to_contract
from pipelines.io.readers import input_fingerprint, read_columns

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
    raw = read_columns(input_path, cols)
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
