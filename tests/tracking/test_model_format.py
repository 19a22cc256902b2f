"""The registered model: a pyfunc over the scorer, logged as data plus code (no pickle), that
reports its name and version, and that `mlflow models serve` answers /invocations with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from pipelines.core.contract import ContractError
from tests.servers import free_port, wait_healthy

NAME = "micro_moment_intent"
PROBS = ["p_know", "p_go", "p_do", "p_buy"]


def _refuse(constant: str):
    raise ValueError(f"{constant} is not JSON")


def strict_json(body: bytes):
    """JSON as a strict client reads it: a bare NaN or Infinity is an error, not a number."""
    return json.loads(body, parse_constant=_refuse)


def post(url: str, payload: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def as_records(rows) -> list[dict]:
    rows = rows.drop(columns=["intent"]).copy()
    rows["started_at"] = rows["started_at"].map(lambda t: t.isoformat())
    return json.loads(rows.to_json(orient="records"))


@pytest.fixture(scope="module")
def server(registry_store):
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    # the server starts uvicorn from PATH: the environment's own bin folder must be on it
    path = f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=registry_store["uri"], PATH=path)
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "models",
            "serve",
            "-m",
            "models:/micro_moment_intent@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{base}/ping", 120, lambda: proc.stderr.read()[-3000:])
    except (RuntimeError, TimeoutError) as err:
        proc.kill()
        pytest.fail(f"mlflow models serve did not start: {err}")
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
def test_invocations_return_probabilities(server, small_sessions):
    rows = small_sessions.head(3)
    status, body = post(f"{server}/invocations", {"dataframe_records": as_records(rows)})
    assert status == 200, body
    preds = strict_json(body)["predictions"]
    assert [p["session_id"] for p in preds] == rows["session_id"].tolist()
    for p in preds:
        total = p["p_know"] + p["p_go"] + p["p_do"] + p["p_buy"]
        assert abs(total - 1.0) < 1e-9
        assert p["intent"] in {"know", "go", "do", "buy"} and p["model_version"] == "2"


@pytest.mark.slow
def test_rejected_rows_answer_null_not_nan(server, small_sessions):
    records = as_records(small_sessions.head(3))
    records[1]["dwell_time_s"] = -5.0
    status, body = post(f"{server}/invocations", {"dataframe_records": records})
    assert status == 200, body
    preds = strict_json(body)["predictions"]
    rejected = preds[1]
    assert "dwell_time_s" in rejected["reject_reason"]
    for key in ("p_know", "p_go", "p_do", "p_buy", "intent", "confidence", "margin"):
        assert rejected[key] is None, key
    for p in (preds[0], preds[2]):
        assert p["reject_reason"] is None
        assert abs(p["p_know"] + p["p_go"] + p["p_do"] + p["p_buy"] - 1.0) < 1e-9
        assert 0 <= p["margin"] <= p["confidence"] <= 1


@pytest.mark.slow
def test_in_process_predictions_stay_numeric_with_na_for_rejected_rows(
    registry_store, small_sessions
):
    import mlflow
    import pandas as pd

    from pipelines.core.contract import ContractError

    mlflow.set_tracking_uri(registry_store["uri"])
    mlflow.set_registry_uri(registry_store["uri"])
    model = mlflow.pyfunc.load_model("models:/micro_moment_intent@champion")
    raw = small_sessions.head(3).drop(columns=["intent"]).reset_index(drop=True)
    raw.loc[1, "dwell_time_s"] = -5.0
    out = model.predict(raw)
    probs = ["p_know", "p_go", "p_do", "p_buy"]
    assert all(out[c].dtype == "Float64" for c in [*probs, "confidence", "margin"])
    assert out[probs].iloc[[0, 2]].sum(axis=1).round(9).tolist() == [1.0, 1.0]
    assert out.loc[1, [*probs, "intent", "confidence", "margin"]].isna().all()
    assert (out["confidence"] > 0.25).tolist() == [True, pd.NA, True]
    assert out["reject_reason"].isna().tolist() == [True, False, True]
    # what the scoring server sends: None, never NaN, for what is missing
    strict_json(json.dumps(out.to_dict(orient="records")).encode())

    with pytest.raises(ContractError, match="'dwell_time_s'"):
        model.predict(raw.assign(dwell_time_s="long"))


def _assert_short_error_naming(status: int, body: bytes, column: str, records: list[dict]):
    assert 400 <= status < 500, body[:2000]
    error = strict_json(body)
    assert column in error["message"], error
    # the message names the column; it does not send the request back
    assert len(body) < 1000, body[:2000]
    text = body.decode()
    for key in ("session_id", "journey_id", "channel", "started_at"):
        assert not any(r[key] in text for r in records), key


@pytest.mark.slow
def test_wrongly_typed_column_is_a_short_4xx_naming_it(server, small_sessions):
    records = as_records(small_sessions.head(500))
    sent = [{**r, "dwell_time_s": "long"} for r in records]
    status, body = post(f"{server}/invocations", {"dataframe_records": sent})
    _assert_short_error_naming(status, body, "dwell_time_s", records)


@pytest.mark.slow
def test_request_missing_the_session_id_is_a_short_4xx_naming_it(server, small_sessions):
    records = as_records(small_sessions.head(500))
    sent = [{k: v for k, v in r.items() if k != "session_id"} for r in records]
    status, body = post(f"{server}/invocations", {"dataframe_records": sent})
    _assert_short_error_naming(status, body, "session_id", records)


def test_predictions_carry_model_name_and_version(registry_store, client, small_sessions):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(small_sessions.head(3).drop(columns=["intent"]))
    assert out["model_name"].tolist() == [NAME] * 3
    assert out["model_version"].tolist() == ["2"] * 3


def _no_pickle_process(code: str, uri: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_registered_version_is_data_plus_code_and_loads_with_pickles_refused(
    registry_store, client, small_sessions, tmp_path
):
    from pipelines.tracking.registry import load_scorer

    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/2", dst_path=str(tmp_path))
    files = {p.name for p in __import__("pathlib").Path(local).rglob("*") if p.is_file()}
    assert "python_model.pkl" not in files and not any(f.endswith(".pkl") for f in files)
    assert {"booster.txt", "state.json", "model_code.py"} <= files
    # a fresh process that refuses to unpickle anything loads and scores it
    raw = small_sessions.drop(columns=["intent"]).head(200)
    raw.to_parquet(tmp_path / "raw.parquet")
    code = (
        "import mlflow, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model('models:/{NAME}/2')\n"
        f"out = m.predict(pd.read_parquet({str(tmp_path / 'raw.parquet')!r}))\n"
        f"out.astype({{c: float for c in {PROBS!r}}}).to_parquet({str(tmp_path / 'out.parquet')!r})\n"
    )
    proc = _no_pickle_process(code, registry_store["uri"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = __import__("pandas").read_parquet(tmp_path / "out.parquet")
    # the same probabilities as the model that was trained, in this process
    model, _ = load_scorer(f"models:/{NAME}/2", threads=1)
    trained = registry_store["summaries"][1]
    assert trained["registered_version"] in (2, "2")
    expected = model.predict(raw)
    assert (served["model_version"] == "2").all()
    assert abs(served[PROBS].to_numpy() - expected[PROBS].to_numpy()).max() <= 1e-12


def test_a_version_logged_as_a_pickle_before_still_loads_and_scores(
    registry_store, client, small_sessions, tmp_path
):
    """Versions registered before the model became data plus code were cloudpickled objects:
    they load and score as they always did."""
    from pipelines.tracking.model_format import IntentPyfunc, input_schema
    from pipelines.tracking.registry import load_scorer
    from pipelines.tracking.runs import PACKAGE_DIR

    model, _ = load_scorer(f"models:/{NAME}/2", threads=1)
    with mlflow.start_run() as run:  # as versions were logged before
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=IntentPyfunc(model, model_name="legacy_intent"),
            code_paths=[str(PACKAGE_DIR)],
            signature=mlflow.models.ModelSignature(inputs=input_schema(model)),
            registered_model_name="legacy_intent",
            model_config={"model_name": "legacy_intent", "run_id": run.info.run_id},
        )
    legacy, meta = load_scorer(f"models:/legacy_intent/{info.registered_model_version}", 1)
    raw = small_sessions.drop(columns=["intent"])
    diff = legacy.predict(raw)[PROBS].to_numpy() - model.predict(raw)[PROBS].to_numpy()
    assert abs(diff).max() == 0
    assert meta["model_version"] == str(info.registered_model_version)


@pytest.mark.slow
def test_served_model_returns_reasons_when_the_request_asks(server, small_sessions):
    rows = small_sessions.head(3)
    payload = {"dataframe_records": as_records(rows), "params": {"explain": 2}}
    status, body = post(f"{server}/invocations", payload)
    assert status == 200, body
    preds = strict_json(body)["predictions"]
    for p in preds:
        reasons = json.loads(p["reasons"])
        assert 1 <= len(reasons) <= 2
        assert p["reason_1"].startswith(reasons[0]["value"])
    # without params: no reason columns
    status, body = post(f"{server}/invocations", {"dataframe_records": as_records(rows)})
    assert status == 200 and "reason_1" not in strict_json(body)["predictions"][0]
    status, body = post(f"{server}/invocations", {**payload, "params": {"explain": -2}})
    assert 400 <= status < 500 and b"explain" in body


def test_the_pyfunc_explains_when_its_params_ask(registry_store, small_sessions):
    mlflow.set_tracking_uri(registry_store["uri"])
    mlflow.set_registry_uri(registry_store["uri"])
    scorer = mlflow.pyfunc.load_model("models:/micro_moment_intent@champion")
    raw = small_sessions.head(5).drop(columns="intent")
    plain = scorer.predict(raw)
    out = scorer.predict(raw, params={"explain": 3})
    assert out[PROBS].astype(float).equals(plain[PROBS].astype(float))
    assert out["reasons"].notna().all() and out["reason_1"].notna().all()
    with pytest.raises(ContractError, match="explain"):
        scorer.predict(raw, params={"explain": 50})
