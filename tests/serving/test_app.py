"""The scoring app, in process: MLflow's formats, batching that changes no answer, load shedding,
bad requests, readiness."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from pipelines.config.schema import ServeBlock
from pipelines.serving.app import create_app
from pipelines.serving.follower import Follower, Served
from pipelines.serving.peers import Peers
from pipelines.serving.sessions import predictions_json
from tests.fixtures import hand_built_model, hand_built_sessions
from tests.serving.asgi import AsgiClient
from tests.serving.reference import prediction_records

SESSIONS = hand_built_sessions(12).drop(columns=["intent"])


@pytest.fixture(scope="module")
def model():
    return hand_built_model()


class SlowServed(Served):
    """A model that takes `delay` seconds per predict call."""

    delay = 0.0

    def records(self, frame, explain=0):
        time.sleep(self.delay)
        return super().records(frame, explain)


def make_app(model, version="1", load=None, **settings):
    settings.setdefault("follow_interval_s", 0)
    # shedding by expected delay has tests of its own: here a busy test machine must not turn
    # answers into 503s
    settings.setdefault("max_delay_ms", 0)
    load = load or (lambda uri: Served(model, "hand_model", version, uri))
    return create_app(ServeBlock(model_uri="hand", **settings), Follower("hand", load, 0))


async def until_ready(client: AsgiClient, seconds: float = 20) -> dict:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        reply = await client.get("/ready")
        if reply.status == 200:
            return reply.json()
        await asyncio.sleep(0.01)
    raise AssertionError(f"not ready after {seconds} s: {reply.body}")


def expected(model, frame: pd.DataFrame, version="1") -> list[dict]:
    """What predicting `frame` alone answers, as JSON."""
    alone = Served(model, "hand_model", version, "hand").predict(frame.reset_index(drop=True))
    return json.loads(predictions_json(prediction_records(alone)))["predictions"]


def split_body(frame: pd.DataFrame) -> str:
    return json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)})


def bodies(frame: pd.DataFrame) -> dict[str, tuple[str, bytes | str]]:
    records = frame.to_dict(orient="records")
    return {
        "dataframe_split": ("application/json", split_body(frame)),
        "dataframe_records": ("application/json", json.dumps({"dataframe_records": records})),
        "instances": ("application/json", json.dumps({"instances": records})),
        "inputs as records": ("application/json", json.dumps({"inputs": records})),
        "inputs as columns": (
            "application/json",
            json.dumps({"inputs": frame.to_dict(orient="list")}),
        ),
        "csv": ("text/csv", frame.to_csv(index=False)),
        "json with charset": ("application/json; charset=utf-8", split_body(frame)),
    }


def test_every_input_format_answers_what_the_model_predicts(model):
    frame = SESSIONS.iloc[:7]
    want = expected(model, frame)

    async def scenario():
        async with AsgiClient(make_app(model)) as client:
            await until_ready(client)
            return {
                k: await client.post("/invocations", b, t) for k, (t, b) in bodies(frame).items()
            }

    for name, reply in asyncio.run(scenario()).items():
        assert reply.status == 200, (name, reply.body)
        assert reply.json() == {"predictions": want}, name
        assert (reply.headers["x-model-name"], reply.headers["x-model-version"]) == (
            "hand_model",
            "1",
        )
        assert {r["model_version"] for r in reply.json()["predictions"]} == {"1"}


def test_concurrent_requests_are_scored_together_and_each_as_alone(model):
    # 30 requests: single sessions, whole journeys, journeys split over two requests (which must
    # not meet in a batch), a dwell time written as whole numbers, and one the contract refuses
    frames = [SESSIONS.iloc[[i]] for i in range(0, 12)]
    frames += [SESSIONS[SESSIONS["journey"] == f"j{j}"] for j in range(4, 12)]
    frames += [SESSIONS.iloc[[3 * j, 3 * j + 1]] for j in range(6)]
    frames += [SESSIONS.iloc[[3 * j + 1, 3 * j + 2]] for j in range(2)]
    frames.append(SESSIONS.iloc[[5]].assign(dwell=lambda f: f["dwell"].round().astype(int)))
    frames.append(SESSIONS.iloc[[6]].assign(dwell="long"))
    assert len(frames) == 30

    async def scenario():
        app = make_app(model, max_wait_ms=50, max_queue=100, timeout_ms=20000)
        async with AsgiClient(app) as client:
            await until_ready(client)
            replies = await asyncio.gather(
                *(client.post("/invocations", split_body(f)) for f in frames)
            )
            return replies, app.state.server.batcher.stats

    replies, stats = asyncio.run(scenario())
    for frame, reply in zip(frames[:-1], replies[:-1], strict=True):
        assert reply.status == 200, reply.body
        assert reply.json()["predictions"] == expected(model, frame)
    assert replies[-1].status == 400 and "'dwell'" in replies[-1].json()["message"]
    assert stats["requests"] == 30 and stats["batches"] < 15, stats


def test_beyond_the_queue_a_request_gets_an_immediate_503_with_retry_after(model):
    load = lambda uri: SlowServed(model, "hand_model", "1", uri)  # noqa: E731
    SlowServed.delay = 0.5
    frame = SESSIONS.iloc[[0]]

    async def scenario():
        app = make_app(
            model, load=load, max_queue=2, max_wait_ms=0, timeout_ms=10000, retry_after_s=7
        )
        async with AsgiClient(app) as client:
            await until_ready(client)
            tasks = [
                asyncio.create_task(client.post("/invocations", split_body(frame)))
                for _ in range(8)
            ]
            in_order = [await task for task in asyncio.as_completed(tasks)]
            after = await client.post("/invocations", split_body(frame))
            return in_order, after

    try:
        in_order, after = asyncio.run(scenario())
    finally:
        SlowServed.delay = 0.0
    statuses = [r.status for r in in_order]
    # every refusal came before the first answer (which takes a 0.5 s prediction): at once
    assert 503 in statuses and 200 in statuses and after.status == 200
    assert statuses == sorted(statuses, reverse=True) and set(statuses) == {200, 503}
    refused = [r for r in in_order if r.status == 503]
    assert all(r.headers["retry-after"] == "7" and "busy" in r.json()["message"] for r in refused)
    # refused at the door: the body was never read, and the answer still names the model
    assert not any(r.body_read for r in refused)
    assert all(r.body_read for r in in_order if r.status == 200)
    assert {(r.headers["x-model-version"], r.headers["content-type"]) for r in refused} == {
        ("1", "application/json")
    }
    assert all(int(r.headers["content-length"]) == len(r.body) for r in refused)


def test_a_request_past_its_deadline_gets_a_503_not_a_hang(model):
    load = lambda uri: SlowServed(model, "hand_model", "1", uri)  # noqa: E731

    async def scenario():
        app = make_app(model, load=load, timeout_ms=100, retry_after_s=2)
        async with AsgiClient(app) as client:
            await until_ready(client)
            SlowServed.delay = 1.0
            started = time.monotonic()
            late = await client.post("/invocations", split_body(SESSIONS.iloc[[0]]))
            waited = time.monotonic() - started
            SlowServed.delay = 0.0
            await asyncio.sleep(1.0)  # the slow batch ends
            return late, waited, await client.post("/invocations", split_body(SESSIONS.iloc[[1]]))

    try:
        late, waited, after = asyncio.run(scenario())
    finally:
        SlowServed.delay = 0.0
    assert late.status == 503 and late.headers["retry-after"] == "2" and waited < 0.8
    assert after.status == 200


BAD = {
    "invalid JSON": ("application/json", '{"dataframe_split": ', 400, "invalid JSON"),
    "empty body": ("application/json", "", 400, "empty request body"),
    "blank body": ("application/json", "  \n", 400, "empty request body"),
    "a list": ("application/json", "[1, 2]", 400, "JSON object"),
    "no format key": ("application/json", '{"data": []}', 400, "dataframe_split"),
    "two format keys": ("application/json", '{"inputs": [], "instances": []}', 400, "exactly one"),
    "split without data": (
        "application/json",
        '{"dataframe_split": {"columns": ["id"]}}',
        400,
        "'data'",
    ),
    "ragged split": (
        "application/json",
        '{"dataframe_split": {"columns": ["id", "dwell"], "data": [["a"]]}}',
        400,
        "dataframe_split",
    ),
    "records not objects": ("application/json", '{"dataframe_records": [1, 2]}', 400, "records"),
    "missing session id": (
        "application/json",
        '{"dataframe_records": [{"dwell": 30, "device": "mobile"}]}',
        400,
        "'id' (role session_id) is missing",
    ),
    "wrong type": (
        "application/json",
        '{"dataframe_records": [{"id": "a", "dwell": "long"}]}',
        400,
        "'dwell' (role dwell_time_s) must be numeric",
    ),
    "bad timestamp type": (
        "application/json",
        '{"dataframe_records": [{"id": "a", "start": 5}]}',
        400,
        "'start'",
    ),
    "bad params": (
        "application/json",
        '{"dataframe_records": [{"id": "a", "dwell": 3}], "params": {"explain": -1}}',
        400,
        "params",
    ),
    "not UTF-8": ("application/json", b'{"inputs": [{"id": "\xff"}]}', 400, "invalid JSON"),
    "two id columns": (
        "application/json",
        '{"dataframe_split": {"columns": ["id", "id"], "data": [["a", "b"]]}}',
        400,
        "repeats a name: ['id', 'id']",
    ),
    "plain text": ("text/plain", "id\na", 415, "text/plain"),
    "form": ("application/x-www-form-urlencoded", "id=a", 415, "Content-Type"),
    "no content type": (None, '{"inputs": []}', 415, "Content-Type"),
    "latin-1": ("application/json; charset=latin-1", '{"inputs": []}', 415, "charset"),
    "bad csv": ("text/csv", b'id,dwell\n"a,3\n', 400, "CSV"),
    "bad parquet": ("application/vnd.apache.parquet", b"not parquet", 400, "parquet"),
    "over the limit": (
        "application/json",
        '{"inputs": [' + ", ".join(['{"id": "a"}'] * 400) + "]}",
        413,
        "max_body_bytes",
    ),
}


def test_every_bad_request_gets_a_4xx_naming_the_problem_and_the_server_keeps_answering(model):
    async def scenario():
        async with AsgiClient(make_app(model, max_body_bytes=2000)) as client:
            await until_ready(client)
            replies = {}
            for name, (kind, body, _, _) in BAD.items():
                replies[name] = await client.post("/invocations", body, kind, chunk=100)
            good = await client.post("/invocations", split_body(SESSIONS.iloc[[0]]))
            return replies, good

    replies, good = asyncio.run(scenario())
    for name, reply in replies.items():
        _, _, status, words = BAD[name]
        assert reply.status == status, (name, reply.body)
        assert b"\n" not in reply.body.strip(), name
        assert words in reply.json()["message"], (name, reply.json())
        assert reply.headers["x-model-version"] == "1", name
    assert good.status == 200


def test_json_nested_past_the_parsers_depth_is_a_400(model):
    body = '{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}"

    async def scenario():
        async with AsgiClient(make_app(model)) as client:
            await until_ready(client)
            return await client.post("/invocations", body)

    reply = asyncio.run(scenario())
    assert reply.status == 400 and "RecursionError" in reply.json()["message"]


def test_a_10_mb_body_is_refused_with_413_without_being_kept(model):
    body = b'{"inputs": [' + b'{"id": "a"}, ' * (10 * 1024 * 1024 // 13) + b'{"id": "b"}]}'

    async def scenario():
        async with AsgiClient(make_app(model)) as client:
            await until_ready(client)
            huge = await client.post("/invocations", body)
            declared = await client.post(
                "/invocations", b"{}", headers={"content-length": str(10**9)}
            )
            return huge, declared, await client.post("/invocations", split_body(SESSIONS.iloc[[0]]))

    huge, declared, after = asyncio.run(scenario())
    assert huge.status == 413 and "1048576 bytes" in huge.json()["message"]
    assert declared.status == 413
    assert after.status == 200


def test_health_answers_at_once_and_ready_only_once_a_model_is_loaded(model):
    release = threading.Event()

    def slow_load(uri):
        release.wait(10)
        return Served(model, "hand_model", "4", uri, alias="champion")

    async def scenario():
        async with AsgiClient(make_app(model, load=slow_load, retry_after_s=3)) as client:
            before = [await client.get(p) for p in ("/health", "/ready")]
            early = await client.post("/invocations", split_body(SESSIONS.iloc[[0]]))
            release.set()
            ready = await until_ready(client)
            return before, early, ready, await client.get("/health")

    (health, not_ready), early, ready, health_after = asyncio.run(scenario())
    assert health.status == 200 and health_after.status == 200
    assert (
        "x-model-version" not in health.headers and health_after.headers["x-model-version"] == "4"
    )
    assert not_ready.status == 503 and not_ready.json()["status"] == "loading"
    assert early.status == 503 and early.headers["retry-after"] == "3" and not early.body_read
    assert early.json()["error_code"] == "NOT_READY" and "x-model-version" not in early.headers
    assert (ready["model_name"], ready["model_version"], ready["alias"]) == (
        "hand_model",
        "4",
        "champion",
    )
    assert ready["batching"]["waiting"] == 0 and ready["batching"]["standing"] is False


def test_answers_are_those_of_mlflow_models_serve(registry_store, client):
    """The same body gives the same JSON as MLflow's own scoring server on the same version."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    from pipelines.serving.follower import registry_loader
    from pipelines.tracking.model_format import signature_inputs
    from tests.fixtures import synthetic_sessions

    uri = "models:/micro_moment_intent/2"
    load = registry_loader(threads=1, compiled=False)
    served = load(uri)
    frame = signature_inputs(synthetic_sessions(4, seed=5), served.model).head(9)
    frame.loc[2, "dwell_time_s"] = -5.0  # a row the contract rejects, with its reason
    body = split_body(frame)
    pyfunc = mlflow.pyfunc.load_model(uri)
    theirs = scoring_server.invocations(
        body, "application/json", pyfunc, pyfunc.metadata.get_input_schema()
    )

    async def scenario():
        app = create_app(
            ServeBlock(model_uri=uri, follow_interval_s=0, max_delay_ms=0), Follower(uri, load, 0)
        )
        async with AsgiClient(app) as asgi:
            await until_ready(asgi)
            return await asgi.post("/invocations", body)

    ours = asyncio.run(scenario())
    assert theirs.status == 200 and ours.status == 200
    assert ours.json() == json.loads(theirs.response)
    assert ours.headers["x-model-version"] == "2" and ours.json()["predictions"][2]["reject_reason"]


def test_a_request_larger_than_a_batch_is_answered_whole(model):
    frame = hand_built_sessions(400).drop(columns=["intent"])  # 1200 sessions, about 80 kB
    frame.loc[7, "dwell"] = -1.0  # rejected with its reason, the others scored
    body = split_body(frame)
    assert len(body) > 64 * 1024

    async def scenario():
        async with AsgiClient(make_app(model, max_batch_rows=256, timeout_ms=30000)) as client:
            await until_ready(client)
            return await client.post("/invocations", body)

    reply = asyncio.run(scenario())
    assert reply.status == 200 and reply.json()["predictions"] == expected(model, frame)
    assert "dwell_time_s" in reply.json()["predictions"][7]["reject_reason"]


def test_a_list_or_object_in_a_text_cell_is_a_rejected_session_not_a_category(model):
    good = SESSIONS.iloc[[0]].to_dict(orient="records")
    bad = [
        dict(good[0], id="as-list", device=["mobile"]),
        dict(good[0], id="as-object", device={"kind": "mobile"}),
    ]

    async def scenario():
        async with AsgiClient(make_app(model)) as client:
            await until_ready(client)
            body = json.dumps({"dataframe_records": good + bad})
            return await client.post("/invocations", body)

    reply = asyncio.run(scenario())
    assert reply.status == 200, reply.body
    first, as_list, as_object = reply.json()["predictions"]
    assert first == expected(model, SESSIONS.iloc[[0]])[0]
    assert as_list["reject_reason"] == "device not a single value (got ['mobile'])"
    assert as_object["reject_reason"] == "device not a single value (got {'kind': 'mobile'})"
    for record in (as_list, as_object):
        probabilities = [v for k, v in record.items() if k.startswith("p_")]
        assert len(probabilities) == 4 and all(v is None for v in probabilities), record


def test_a_worker_is_ready_only_once_every_worker_of_its_server_has_a_model(model, tmp_path):
    peers = Peers(tmp_path, workers=2)
    settings = ServeBlock(model_uri="hand", follow_interval_s=0, max_delay_ms=0)
    follower = Follower("hand", lambda uri: Served(model, "hand_model", "1", uri), 0)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    async def scenario():
        async with AsgiClient(create_app(settings, follower, peers)) as client:
            end = time.monotonic() + 20
            while not peers.ready() and time.monotonic() < end:  # this worker announces itself
                await asyncio.sleep(0.01)
            alone = await client.get("/ready")
            answered = await client.post("/invocations", split_body(SESSIONS.iloc[[0]]))
            peers.announce(other.pid)  # the other worker has loaded its model
            both = await client.get("/ready")
            other.kill()
            other.wait()
            return alone, answered, both, await client.get("/ready")

    try:
        alone, answered, both, after_death = asyncio.run(scenario())
    finally:
        other.kill()
        other.wait()
    assert alone.status == 503 and alone.headers["retry-after"] == "1"
    assert alone.json()["status"] == "loading"
    assert (alone.json()["workers"], alone.json()["workers_ready"]) == (2, 1)
    assert answered.status == 200  # the worker itself answers requests meanwhile
    assert both.status == 200 and both.json()["status"] == "ready"
    assert (both.json()["workers"], both.json()["workers_ready"]) == (2, 2)
    assert after_death.status == 503 and after_death.json()["workers_ready"] == 1
