"""A score output read back: predictions joined to the input rows they came from, and refused when
they belong to another input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.core.contract import ContractError, DatasetSpec
from pipelines.io.readers import input_fingerprint
from pipelines.io.scores import check_scores_match, scored_sessions

SPEC = DatasetSpec(
    columns={"session_id": "id", "journey_id": "journey", "dwell_time_s": "dwell"},
    label_column="intent",
    classes=("know", "buy"),
)


@pytest.fixture
def input_path(tmp_path):
    path = tmp_path / "sessions.csv"
    pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "journey": ["j1", "j1", "j2", "j3"],
            "dwell": [10.0, -1.0, 30.0, 40.0],  # row 1 breaks the contract
            "intent": ["know", "buy", "BUY?", "buy"],
            "unused": [1, 2, 3, 4],
        }
    ).to_csv(path, index=False)
    return path


def predictions(ids=("a", "c", "d"), rows=(0, 2, 3)) -> pd.DataFrame:
    return pd.DataFrame(
        {"input_row": list(rows), "session_id": list(ids), "p_buy": [0.1, 0.8, 0.6]}
    )


def test_predictions_are_joined_to_their_input_rows_with_the_label_and_counted(input_path):
    joined, counts = scored_sessions(input_path, predictions(), SPEC)
    assert joined["session_id"].tolist() == ["a", "c", "d"]
    assert joined["journey_id"].tolist() == ["j1", "j2", "j3"]
    assert joined["p_buy"].tolist() == [0.1, 0.8, 0.6]
    label = joined["label"]
    assert label[[0, 2]].tolist() == ["know", "buy"]
    assert pd.isna(label[1])  # a label outside the classes: none
    assert "unused" not in joined
    assert counts == {"rows_in": 4, "rows_scored": 3, "rows_in_feed": 3, "rows_rejected": 1}


def test_predictions_carrying_other_session_ids_are_refused(input_path):
    with pytest.raises(ContractError, match="1 of 3 scored rows carry another session id"):
        scored_sessions(input_path, predictions(ids=("a", "x", "d")), SPEC)


def test_scores_without_a_recorded_fingerprint_are_refused(input_path, tmp_path):
    (tmp_path / "scores").mkdir()
    with pytest.raises(ContractError, match="records no input fingerprint"):
        check_scores_match(tmp_path / "scores", input_path)


def test_scores_of_the_same_input_match_and_of_another_are_refused(input_path, tmp_path):
    scores = tmp_path / "scores"
    scores.mkdir()
    summary = {"input_fingerprint": input_fingerprint(input_path)}
    (scores / "summary.json").write_text(json.dumps(summary))
    check_scores_match(scores, input_path)
    other = tmp_path / "other.csv"
    other.write_text(input_path.read_text().replace("40.0", "41.0"))
    with pytest.raises(ContractError, match="these scores belong to another input"):
        check_scores_match(scores, other)
