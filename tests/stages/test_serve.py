"""`micromoment serve`: what it refuses before listening, and the command end to end."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.config.schema import ServeBlock
from pipelines.stages.runner import EXIT_MODEL, EXIT_USAGE, UserError
from pipelines.stages.serve import (
    check_model,
    check_settings,
    frozen_after,
    listening_socket,
    run_serve,
)
from tests.conftest import compose_config
from tests.servers import free_port, rss_mib

NAME = "micro_moment_intent"


def test_the_serve_config_composes_with_its_defaults():
    cfg = compose_config("serve", ["serve.port=9001"])
    assert cfg["serve"]["port"] == 9001 and cfg["serve"]["model_uri"].endswith("@champion")
    assert cfg["serve"]["max_queue"] > 0 and cfg["serve"]["follow_interval_s"] > 0


def test_an_unset_alias_or_a_missing_folder_is_refused_before_listening(registry_copy, tmp_path):
    tracking = compose_config("serve", [f"tracking.uri={registry_copy}"])["tracking"]
    with pytest.raises(UserError, match="'nobody' is not set") as err:
        check_model(f"models:/{NAME}@nobody", tracking)
    assert err.value.code == EXIT_MODEL
    assert "aliases of 'micro_moment_intent': ['challenger', 'champion']" in str(err.value)
    # a typo in the model's name is named as such, beside the names that are registered
    with pytest.raises(
        UserError, match="no model named 'micro_moment_intnet' is registered"
    ) as err:
        check_model("models:/micro_moment_intnet@champion", tracking)
    assert err.value.code == EXIT_MODEL and f"['{NAME}']" in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        check_model(str(tmp_path / "nothing"), tracking)
    check_model(f"models:/{NAME}@champion", tracking)


@pytest.mark.parametrize(
    "override, words",
    [
        ({"max_queue": 0}, "serve.max_queue must be at least 1, got 0"),
        ({"port": 70000}, "serve.port must be at most 65535"),
        ({"max_wait_ms": -1}, "serve.max_wait_ms must be at least 0"),
        ({"standing_ms": -5}, "serve.standing_ms must be at least 0, got -5"),
        ({"workers": 0}, "serve.workers must be at least 1, got 0"),
        ({"max_wait_ms": 50}, "serve.max_delay_ms=25 must exceed serve.max_wait_ms=50"),
        ({"timeout_ms": 2, "max_wait_ms": 5, "max_delay_ms": 0}, "serve.timeout_ms=2 must exceed"),
    ],
)
def test_settings_no_server_can_keep_are_refused_before_loading(override, words):
    settings = ServeBlock(**(compose_config("serve", [])["serve"] | override))
    with pytest.raises(UserError, match=re.escape(words)) as err:
        check_settings(settings)
    assert err.value.code == EXIT_USAGE
    check_settings(ServeBlock(**(compose_config("serve", [])["serve"] | {"max_delay_ms": 0})))


def test_a_port_in_use_or_a_foreign_host_is_refused_before_anything_is_loaded(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            UserError,
            match=rf"cannot listen on 127\.0\.0\.1:{port} \(serve\.host, serve\.port\): Address already in use",
        ) as err:
            listening_socket("127.0.0.1", port)
        assert err.value.code == EXIT_USAGE
        # the whole command: the port is refused before the (missing) model is looked at
        cfg = compose_config(
            "serve", [f"serve.port={port}", f"serve.model_uri={tmp_path / 'no-model'}"]
        )
        with pytest.raises(UserError, match="Address already in use"):
            run_serve(OmegaConf.create(cfg))
    with pytest.raises(UserError, match=r"cannot listen on no-such-host\.invalid:8080") as err:
        listening_socket("no-such-host.invalid", 8080)
    assert err.value.code == EXIT_USAGE
    with listening_socket("127.0.0.1", port) as free:  # once freed, it is bound
        assert free.getsockname() == ("127.0.0.1", port)


def test_connections_to_the_bound_socket_send_without_waiting_nagle():
    async def nodelay_of_a_connection() -> int:
        accepted = asyncio.get_running_loop().create_future()

        def on_connect(reader, writer):
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        with listening_socket("127.0.0.1", 0) as sock:
            server = await asyncio.start_server(on_connect, sock=sock)
            async with server:
                _, writer = await asyncio.open_connection(*sock.getsockname())
                value = await asyncio.wait_for(accepted, 10)
                writer.close()
        return value

    # without TCP_NODELAY each small answer can wait 40 ms for a delayed acknowledgement
    assert asyncio.run(nodelay_of_a_connection()) != 0


def _call(url: str, body: bytes | None = None, kind: str = "application/json"):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def _wait_ready(base: str, proc: subprocess.Popen, seconds: float = 120) -> dict:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read()
        try:
            status, _, body = _call(f"{base}/ready")
            if status == 200:
                return body
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError("the server never got ready")


def _start_serve(registry_copy: str, cwd, port: int, *overrides: str) -> subprocess.Popen:
    """`micromoment serve` on the registry copy, in its own process, with one model thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    args = [
        f"tracking.uri={registry_copy}",
        f"serve.port={port}",
        "runtime.threads=1",
        "runtime.compiled_trees=false",
        *overrides,
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_micromoment_serve_answers_follows_the_alias_and_stops_on_sigterm(
    registry_copy, tmp_path, small_sessions
):
    port = free_port()
    proc = _start_serve(registry_copy, tmp_path, port, "serve.follow_interval_s=0.5")
    base = f"http://127.0.0.1:{port}"
    try:
        assert _wait_ready(base, proc)["model_version"] == "2"
        sessions = small_sessions.head(3).drop(columns="intent")
        body = json.dumps(
            {
                "dataframe_split": json.loads(
                    sessions.to_json(orient="split", index=False, date_format="iso")
                )
            }
        ).encode()
        status, headers, answer = _call(f"{base}/invocations", body)
        assert status == 200 and headers["X-Model-Version"] == "2"
        assert [p["model_version"] for p in answer["predictions"]] == ["2"] * 3
        status, _, error = _call(f"{base}/invocations", b"{not json")
        assert status == 400 and "invalid JSON" in error["message"]
        huge = b'{"inputs": [' + b'{"id": "a"}, ' * (10 * 1024 * 1024 // 13) + b'{"id": "b"}]}'
        status, _, error = _call(f"{base}/invocations", huge)  # a 413, not a reset connection
        assert status == 413 and "serve.max_body_bytes" in error["message"]
        assert _call(f"{base}/health")[0] == 200

        MlflowClient(registry_copy, registry_uri=registry_copy).set_registered_model_alias(
            NAME, "champion", "3"
        )
        end = time.monotonic() + 60
        while time.monotonic() < end:
            status, headers, _ = _call(f"{base}/invocations", body)
            assert status == 200
            if headers["X-Model-Version"] == "3":
                break
            time.sleep(0.1)
        assert headers["X-Model-Version"] == "3"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then ends by the signal it caught
    assert proc.returncode == 0, err[-3000:]  # a stop asked for is not a failure
    assert "Application shutdown complete" in err
    assert f"on http://127.0.0.1:{port}" in out


def _children(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (Linux's /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads worker processes from /proc")
def test_workers_answer_on_one_port_each_with_the_model_and_all_stop_on_sigterm(
    registry_copy, tmp_path, small_sessions
):
    port = free_port()
    # the workers on their own: a busy test machine must not turn answers into 503s
    no_shedding = ("serve.max_delay_ms=0", "serve.timeout_ms=60000")
    proc = _start_serve(
        registry_copy, tmp_path, port, "serve.workers=2", "serve.follow_interval_s=0", *no_shedding
    )
    base = f"http://127.0.0.1:{port}"
    sessions = small_sessions.head(3).drop(columns="intent")
    body = json.dumps(
        {"dataframe_split": json.loads(sessions.to_json(orient="split", date_format="iso"))}
    ).encode()
    try:
        # ready once both workers have their model, whichever of them answers the probe
        assert (_wait_ready(base, proc)["workers_ready"], proc.poll()) == (2, None)
        # each call is a new connection, taken by either worker: /ready says which one answered
        pids, answers = set(), []
        end = time.monotonic() + 120
        while (len(pids) < 2 or len(answers) < 6) and time.monotonic() < end:
            status, _, ready = _call(f"{base}/ready")
            assert status == 200 and ready["workers"] == 2, ready
            pids.add(ready["pid"])
            status, headers, answer = _call(f"{base}/invocations", body)
            assert status == 200 and headers["X-Model-Version"] == "2", answer
            answers.append(answer["predictions"])
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert len(pids) == 2 and pids <= workers, (pids, workers)
        # the command became a supervisor that holds none of the model's stack
        assert rss_mib(proc.pid) < 100
        assert len(answers) >= 6 and all(a == answers[0] for a in answers)  # one model in each
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert f"on http://127.0.0.1:{port}" in out and "2 workers" in out
    for pid in pids:  # each worker's log lines name it, as a single process's would be dated
        assert re.search(
            rf"\]\[INFO\]\[worker {pid}\] - serving micro_moment_intent version 2", err
        )
    # the parent ends after its workers, not before
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def test_a_loaded_model_is_frozen_out_of_the_garbage_collector():
    gc.unfreeze()
    try:
        loaded = frozen_after(lambda uri: f"model at {uri}")("models:/m/1")
        assert loaded == "model at models:/m/1" and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
