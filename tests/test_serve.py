"""`mlflow models serve` answers /invocations with the registered scorer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


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
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited: {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("mlflow models serve did not become healthy in 120 s")
        time.sleep(0.5)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_invocations_return_probabilities(server, small_sessions):
    rows = small_sessions.head(3).drop(columns=["intent"]).copy()
    rows["started_at"] = rows["started_at"].map(lambda t: t.isoformat())
    records = json.loads(rows.to_json(orient="records"))
    status, body = post(f"{server}/invocations", {"dataframe_records": records})
    assert status == 200, body
    preds = body["predictions"]
    assert [p["session_id"] for p in preds] == rows["session_id"].tolist()
    for p in preds:
        total = p["p_know"] + p["p_go"] + p["p_do"] + p["p_buy"]
        assert abs(total - 1.0) < 1e-9
        assert p["intent"] in {"know", "go", "do", "buy"} and p["model_version"] == "2"


def test_request_missing_the_session_id_is_a_clear_400(server):
    status, body = post(
        f"{server}/invocations", {"dataframe_records": [{"device": "mobile", "dwell_time_s": 30}]}
    )
    assert status == 400
    assert "session_id" in json.dumps(body)
