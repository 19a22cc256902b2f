"""Versions registered in the formats of earlier releases load and score with the package as it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

LEGACY = Path(__file__).resolve().parent.parent / "data" / "legacy_models"
PROBS = ["p_know", "p_go", "p_do", "p_buy"]


def example(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    given = json.loads((folder / "input_example.json").read_text())
    expected = pd.read_json(folder / "expected_output.json", orient="split")
    return pd.DataFrame(given["data"], columns=given["columns"]), expected


@pytest.mark.parametrize("fmt", ["pickle", "files_v1"])
def test_a_version_in_an_earlier_format_scores_as_it_did(fmt):
    folder = LEGACY / fmt
    raw, expected = example(folder)
    got = mlflow.pyfunc.load_model(str(folder)).predict(raw)
    assert list(got["session_id"]) == list(expected["session_id"])
    assert list(got["intent"]) == list(expected["intent"])
    diff = got[PROBS].to_numpy(dtype=float) - expected[PROBS].to_numpy(dtype=float)
    assert np.abs(diff).max() <= 1e-12


@pytest.mark.parametrize("fmt", ["pickle", "files_v1"])
def test_a_version_in_an_earlier_format_loads_in_a_fresh_process(fmt, tmp_path):
    """As a registry consumer's process would: nothing of the package imported beforehand."""
    folder = LEGACY / fmt
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "given = json.load(open(sys.argv[1] + '/input_example.json'))\n"
        "raw = pd.DataFrame(given['data'], columns=given['columns'])\n"
        "out = mlflow.pyfunc.load_model(sys.argv[1]).predict(raw)\n"
        "print(json.dumps(out[['p_know', 'p_go', 'p_do', 'p_buy']].to_numpy().tolist()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _, expected = example(folder)
    got = np.asarray(json.loads(done.stdout.strip().splitlines()[-1]))
    assert np.abs(got - expected[PROBS].to_numpy(dtype=float)).max() <= 1e-12
