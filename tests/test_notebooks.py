"""The notebooks in notebooks/ run top to bottom on tiny data and show what they promise.

Each notebook is read from its paired text file (jupytext percent format) and executed with
nbclient in a fresh kernel of this interpreter, in a temporary working directory, with its
parameters set through environment variables.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SESSIONS_NB = NOTEBOOKS / "01_sessions_and_journeys.py"
REPORT_NB = NOTEBOOKS / "02_model_report.py"
COMPARE_NB = NOTEBOOKS / "03_compare_configs.py"
TINY_JOURNEYS = "300"
TINY_SESSIONS = "1500"  # the comparison's web-analytics export: one session per journey


@pytest.fixture
def notebook_env(tmp_path, monkeypatch):
    """A kernel environment that writes nothing outside `tmp_path` and reads no outer MLflow store."""
    for var in (
        "MICROMOMENT_NB_N_JOURNEYS",
        "MICROMOMENT_TRACKING_URI",
        "MICROMOMENT_RUN_ID",
        "MICROMOMENT_DATA_DIR",
        "MICROMOMENT_DATA_PATH",
        "MICROMOMENT_NB_N_SESSIONS",
        "MICROMOMENT_NB_CONFIG_A",
        "MICROMOMENT_NB_CONFIG_B",
        "MICROMOMENT_NB_CV_FOLDS",
        "MICROMOMENT_NB_CV_REPEATS",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
    ):
        monkeypatch.delenv(var, raising=False)
    for var, sub in (
        ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
        ("IPYTHONDIR", "ipython"),
        ("MPLCONFIGDIR", "matplotlib"),
        ("TMPDIR", "tmp"),
    ):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MICROMOMENT_NB_N_JOURNEYS", TINY_JOURNEYS)
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir


def execute(path: Path, workdir: Path):
    """Run a notebook in `workdir`; a failing cell raises with its traceback."""
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return nb


def outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def stdout(nb) -> str:
    return "".join(
        out.get("text", "")
        for out in outputs(nb)
        if out["output_type"] == "stream" and out.get("name") == "stdout"
    )


def n_images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs(nb))


def number_after(label: str, text: str) -> float:
    found = re.search(rf"{re.escape(label)}\s*([0-9]+\.[0-9]+)", text)
    assert found, f"no {label!r} in the notebook output:\n{text}"
    return float(found.group(1))


@pytest.mark.parametrize("path", [SESSIONS_NB, REPORT_NB, COMPARE_NB], ids=lambda p: p.stem)
def test_first_code_cell_holds_the_parameters(path):
    nb = jupytext.read(path)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    first = code[0]
    assert "parameters" in first.metadata.get("tags", [])
    # plain assignments (and the os import they read the environment with), nothing else
    for node in ast.parse(first.source).body:
        assert isinstance(node, ast.Assign | ast.Import), ast.dump(node)
    assert not any(out for cell in nb.cells for out in cell.get("outputs", [])), "outputs committed"


@pytest.mark.slow
def test_sessions_notebook_generates_and_explores_journeys(notebook_env):
    nb = execute(SESSIONS_NB, notebook_env)
    text = stdout(nb)
    assert "generated here" in text
    assert number_after("intent mix sums to", text) == pytest.approx(1.0)
    assert re.search(r"\d+ sessions in 300 journeys", text), text
    assert number_after("mean journey length:", text) >= 1.0
    assert re.search(r"\d+ consecutive session pairs", text)
    # intent mix, context heatmaps, hours, dwell, journey length, transitions, store distance
    assert n_images(nb) >= 7
    assert not list(notebook_env.iterdir()), "the notebook wrote into its working directory"


@pytest.mark.slow
def test_sessions_notebook_reads_a_generated_data_dir(notebook_env, monkeypatch, synthetic_dir):
    import pandas as pd

    monkeypatch.setenv("MICROMOMENT_DATA_DIR", str(synthetic_dir))
    nb = execute(SESSIONS_NB, notebook_env)
    text = stdout(nb)
    sessions = pd.read_parquet(synthetic_dir / "sessions")
    expected = f"{len(sessions)} sessions in {sessions['journey_id'].nunique()} journeys"
    assert expected in text
    assert number_after("intent mix sums to", text) == pytest.approx(1.0)
    assert n_images(nb) >= 7


@pytest.mark.slow
def test_report_notebook_trains_its_own_champion_when_given_no_store(notebook_env):
    nb = execute(REPORT_NB, notebook_env)
    text = stdout(nb)
    assert "trained and registered version 1" in text
    assert "models:/micro_moment_intent@champion (micro_moment_intent version 1)" in text
    accuracy = number_after("test/accuracy:", text)
    assert 0.5 < accuracy <= 1.0
    assert number_after("test/logloss:", text) > 0.0
    assert "model at" in text and "of Bayes-optimal accuracy" in text
    assert "8 logged plots" in text
    assert 0.5 < number_after("fresh accuracy: model", text) <= 1.0
    assert 0.0 <= number_after("mean total variation to the Bayes posterior:", text) < 0.5
    # 8 logged plots, segment accuracy, 2 confusions, distance histograms, TV by position
    assert n_images(nb) >= 13
    assert not list(notebook_env.iterdir()), "the notebook wrote into its working directory"


@pytest.mark.slow
def test_report_notebook_reads_a_run_by_id(notebook_env, monkeypatch, synthetic_dir, tmp_path):
    """A run logged elsewhere (here: not registered) is reported from its store and run id."""
    import mlflow

    from pipelines.stages.train import train
    from pipelines.tracking.train_run import log_and_register
    from tests.conftest import compose_config

    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store}/mlflow.db"
    cfg = compose_config(
        "train",
        [
            f"data.path={synthetic_dir}/sessions",
            f"data.stores_path={synthetic_dir}/stores.csv",
            f"output_dir={store}",
            f"tracking.uri={uri}",
            "runtime.threads=1",
            "registry.register=false",
            "baselines=false",
            "model.num_boost_round=100",
            "model.early_stopping_rounds=10",
        ],
    )
    summary = log_and_register(cfg, train(cfg), [], str(store))
    logged = mlflow.MlflowClient(uri).get_run(summary["run_id"]).data.metrics

    monkeypatch.setenv("MICROMOMENT_TRACKING_URI", uri)
    monkeypatch.setenv("MICROMOMENT_RUN_ID", summary["run_id"])
    nb = execute(REPORT_NB, notebook_env)
    text = stdout(nb)
    assert "trained and registered" not in text
    assert f"run id:    {summary['run_id']}" in text
    assert f"runs:/{summary['run_id']}/model (not registered)" in text
    assert number_after("test/accuracy:", text) == pytest.approx(
        round(logged["test/accuracy"], 4), abs=1e-9
    )
    assert number_after("test/macro_f1:", text) == pytest.approx(
        round(logged["test/macro_f1"], 4), abs=1e-9
    )
    assert "8 logged plots" in text
    assert n_images(nb) >= 13


NUMBER = r"(-?[0-9]+\.[0-9]+)"
VERDICT = re.compile(
    rf"Verdict: B's ROC-AUC (?:is (higher|lower) by {NUMBER}|equals A's) "
    rf"\(95% interval of B - A: {NUMBER} to {NUMBER}\): "
    r"(B is better|A is better|no evidence either is better)\."
)


def cv_interval(config: str, metric: str, text: str) -> tuple[float, float, float]:
    """The mean and 95% interval the comparison printed for one config's metric."""
    found = re.search(
        rf"config {config} {re.escape(metric)}: {NUMBER} \(95% interval {NUMBER} to {NUMBER}\)",
        text,
    )
    assert found, f"no interval of {metric} for config {config} in the output:\n{text}"
    return tuple(float(v) for v in found.groups())


@pytest.fixture
def compare_env(notebook_env, monkeypatch):
    """The comparison on a tiny export: 2 folds x 2 repeats."""
    monkeypatch.setenv("MICROMOMENT_NB_N_SESSIONS", TINY_SESSIONS)
    monkeypatch.setenv("MICROMOMENT_NB_CV_FOLDS", "2")
    monkeypatch.setenv("MICROMOMENT_NB_CV_REPEATS", "2")
    return notebook_env


@pytest.mark.slow
def test_compare_notebook_shows_both_intervals_and_a_verdict(compare_env):
    nb = execute(COMPARE_NB, compare_env)
    text = stdout(nb)
    assert f"{TINY_SESSIONS} sessions generated here" in text
    for config in ("A", "B"):
        for metric in ("ROC-AUC", "average precision", "log-loss", "accuracy"):
            mean, low, high = cv_interval(config, metric, text)
            assert low < mean < high
    assert "4 folds per config" in text
    assert "the 4 folds of A and B match" in text

    verdict = VERDICT.search(text)
    assert verdict, text
    side, by, low, high, decision = verdict.groups()
    # the paired difference is B's mean minus A's, over the same folds
    mean_a, mean_b = cv_interval("A", "ROC-AUC", text)[0], cv_interval("B", "ROC-AUC", text)[0]
    assert float(by) == pytest.approx(abs(mean_b - mean_a), abs=2e-4)
    if abs(mean_b - mean_a) > 2e-4:  # the printed means are rounded to 4 decimals
        assert side == ("higher" if mean_b > mean_a else "lower")
    low, high = float(low), float(high)
    assert low <= (mean_b - mean_a) <= high
    expected = "B is better" if low > 0 else "A is better" if high < 0 else "no evidence"
    assert decision.startswith(expected)
    assert n_images(nb) >= 1  # the interval plot
    assert not list(compare_env.iterdir()), "the notebook wrote into its working directory"


@pytest.mark.slow
def test_compare_notebook_finds_no_difference_between_equal_configs(
    compare_env, monkeypatch, tmp_path
):
    """A given export and store; B the same config as A: the same folds give the same scores."""
    from mlflow.tracking import MlflowClient

    from pipelines.core.web_analytics import web_analytics_export

    export = tmp_path / "export.csv"
    web_analytics_export(int(TINY_SESSIONS), seed=3).to_csv(export, index=False)
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store}/mlflow.db"
    monkeypatch.setenv("MICROMOMENT_DATA_PATH", str(export))
    monkeypatch.setenv("MICROMOMENT_TRACKING_URI", uri)
    monkeypatch.setenv("MICROMOMENT_NB_CONFIG_B", "")
    nb = execute(COMPARE_NB, compare_env)
    text = stdout(nb)
    assert f"source: {export}" in text
    assert cv_interval("A", "ROC-AUC", text) == cv_interval("B", "ROC-AUC", text)
    assert (
        "Verdict: B's ROC-AUC equals A's (95% interval of B - A: 0.0000 to 0.0000): "
        "no evidence either is better." in text
    )
    runs = MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()]
    )
    stages = sorted(r.data.tags.get("stage") for r in runs)
    assert stages == ["cv"] * 8 + ["train"] * 2  # both runs and their folds, in the given store
