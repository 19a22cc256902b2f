"""Following an alias: a moved alias is loaded in the background and swapped in, a failing load
keeps the old model, and in the app no request fails while the version changes."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from pipelines.config.schema import ServeBlock
from pipelines.serving.app import create_app
from pipelines.serving.follower import Follower, Served, registry_loader
from tests.fixtures import hand_built_model, hand_built_sessions
from tests.serving.asgi import AsgiClient

URI = "models:/hand_model@champion"


@pytest.fixture(scope="module")
def model():
    return hand_built_model()


class Registry:
    """A fake registry: the version the alias points at, and what loading each version does."""

    def __init__(self, model, version="1"):
        self.model, self.version, self.broken, self.loaded = model, version, set(), []

    def latest(self):
        return self.version

    def load(self, uri):
        self.loaded.append(uri)
        if uri.rsplit("/", 1)[-1] in self.broken:
            raise OSError(f"{uri}: artifact store unreachable")
        return Served(self.model, "hand_model", uri.rsplit("/", 1)[-1], uri)


def test_a_moved_alias_is_loaded_pinned_and_swapped_in(model):
    registry = Registry(model)
    follower = Follower(URI, registry.load, 30, latest=registry.latest)
    assert follower.check() and follower.current.version == "1"
    assert follower.current.alias == "champion"
    assert not follower.check()  # unchanged: nothing loaded again
    registry.version = "2"
    assert follower.check() and follower.current.version == "2" and follower.swaps == 1
    assert registry.loaded == ["models:/hand_model/1", "models:/hand_model/2"]


def test_loading_is_flagged_only_while_a_new_version_loads_beside_the_old(model):
    registry = Registry(model)
    follower = Follower(URI, None, 30, latest=registry.latest)
    seen = []

    def load(uri):  # what the batcher would read while the version loads
        seen.append((uri.rsplit("/", 1)[-1], follower.loading))
        return registry.load(uri)

    follower.load = load
    assert follower.check() and not follower.loading  # the first load: nothing serves yet
    registry.version = "2"
    assert follower.check() and not follower.loading
    registry.version, registry.broken = "3", {"3"}
    assert not follower.check() and not follower.loading  # cleared after a failure too
    assert seen == [("1", False), ("2", True), ("3", True)]


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(model, caplog):
    registry = Registry(model)
    follower = Follower(URI, registry.load, 30, latest=registry.latest)
    follower.check()
    registry.version, registry.broken = "2", {"2"}
    assert not follower.check()
    assert follower.current.version == "1" and "unreachable" in follower.error
    assert "still serving version 1" in caplog.text
    registry.broken = set()
    assert follower.check() and follower.current.version == "2" and follower.error is None


def test_an_error_of_the_registry_is_shown_until_it_answers_again(model):
    registry, down = Registry(model), []

    def latest():
        if down:
            raise ConnectionError("tracking server down")
        return registry.latest()

    follower = Follower(URI, registry.load, 30, latest=latest)
    assert follower.check() and follower.error is None
    down.append(1)
    assert not follower.check() and "tracking server down" in follower.error
    assert follower.current.version == "1"  # still serving
    down.clear()
    assert not follower.check() and follower.error is None


def test_an_unset_alias_or_a_fixed_uri(model):
    unset = Follower(URI, Registry(model).load, 30, latest=lambda: None)
    assert not unset.check() and unset.current is None and "not set" in unset.error
    fixed = Follower("models:/hand_model/3", Registry(model).load, 30)
    assert fixed.latest is None and fixed.check() and fixed.current.version == "3"
    assert not fixed.check()


def test_the_thread_polls_every_interval_and_stops(model):
    registry = Registry(model)
    follower = Follower(URI, registry.load, 0.05, latest=registry.latest)
    follower.start()
    try:
        end = time.monotonic() + 10
        while follower.current is None and time.monotonic() < end:
            time.sleep(0.01)
        registry.version = "2"
        while follower.current.version != "2" and time.monotonic() < end:
            time.sleep(0.01)
        assert follower.current.version == "2"
    finally:
        follower.stop()
    assert not follower.running


def test_interval_zero_loads_once_and_never_asks_again(model):
    registry = Registry(model)
    asked = []
    follower = Follower(URI, registry.load, 0, latest=lambda: asked.append(1) or "1")
    follower.start()
    end = time.monotonic() + 10
    while follower.running and time.monotonic() < end:
        time.sleep(0.01)
    assert not follower.running and follower.current.version == "1" and asked == [1]


def _split(frame):
    return json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)})


async def _traffic_across_a_move(app, body, move, seconds=20.0):
    """Every reply to requests sent four at a time before `move()` and after it, until the
    served version changed and a few more were answered."""
    replies = []
    async with AsgiClient(app) as client:
        while (await client.get("/ready")).status != 200:
            await asyncio.sleep(0.01)

        async def four():
            replies.extend(
                await asyncio.gather(*(client.post("/invocations", body) for _ in range(4)))
            )

        for _ in range(5):
            await four()
        first = replies[0].headers["x-model-version"]
        await asyncio.to_thread(move)
        end = time.monotonic() + seconds
        while replies[-1].headers.get("x-model-version") == first and time.monotonic() < end:
            await four()
        for _ in range(3):
            await four()
    return replies


def test_responses_switch_version_with_no_failed_request(model):
    registry = Registry(model)
    follower = Follower(URI, registry.load, 0.05, latest=registry.latest)
    settings = ServeBlock(model_uri=URI, follow_interval_s=0.05, max_delay_ms=0, timeout_ms=60_000)
    app = create_app(settings, follower)
    body = _split(hand_built_sessions(2).drop(columns=["intent"]))

    def move():
        registry.version = "2"

    replies = asyncio.run(_traffic_across_a_move(app, body, move))
    assert all(r.status == 200 for r in replies)
    versions = [r.headers["x-model-version"] for r in replies]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions)  # once switched, never back
    for reply in replies:
        assert {p["model_version"] for p in reply.json()["predictions"]} == {
            reply.headers["x-model-version"]
        }


def test_a_registry_alias_move_switches_the_served_version(registry_copy):
    """The registry store's versions: @champion moves from 2 to 3 while requests keep coming."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.tracking.model_format import signature_inputs
    from tests.fixtures import synthetic_sessions

    mlflow.set_tracking_uri(registry_copy)
    mlflow.set_registry_uri(registry_copy)
    uri = "models:/micro_moment_intent@champion"
    load = registry_loader(threads=1, compiled=False)
    # the switch on its own: a busy test machine (the next version loads from the store beside
    # the traffic) must not turn answers into 503s, by shedding or by the request timeout
    settings = ServeBlock(model_uri=uri, follow_interval_s=0.2, max_delay_ms=0, timeout_ms=60_000)
    app = create_app(settings, Follower(uri, load, 0.2))
    sample = signature_inputs(synthetic_sessions(3, seed=9), load(uri).model)
    body = _split(sample)

    def move():
        MlflowClient().set_registered_model_alias("micro_moment_intent", "champion", "3")

    replies = asyncio.run(_traffic_across_a_move(app, body, move, seconds=60))
    assert all(r.status == 200 for r in replies), [r.body for r in replies if r.status != 200]
    versions = [r.headers["x-model-version"] for r in replies]
    assert versions[0] == "2" and versions[-1] == "3" and versions == sorted(versions)


def test_the_registry_loader_predicts_with_compiled_trees_when_asked(registry_store, client):
    from pipelines.core.compiled import LLEAVES

    compiled = registry_loader(threads=1, compiled=True)("models:/micro_moment_intent/1")
    plain = registry_loader(threads=1, compiled=False)("models:/micro_moment_intent/1")
    assert (compiled.name, compiled.version) == ("micro_moment_intent", "1")
    assert plain.predictor == "lightgbm"
    assert compiled.predictor == LLEAVES, compiled.model.predictor_note


def test_a_first_load_that_fails_is_tried_again_until_ready(model):
    registry = Registry(model)
    registry.broken = {"3"}
    follower = Follower("models:/hand_model/3", registry.load, 0.05)
    follower.start()
    try:
        end = time.monotonic() + 10
        while len(registry.loaded) < 2 and time.monotonic() < end:
            time.sleep(0.01)
        assert follower.current is None and "unreachable" in follower.error
        registry.broken = set()
        while follower.current is None and time.monotonic() < end:
            time.sleep(0.01)
        assert follower.current.version == "3" and follower.error is None
    finally:
        follower.stop()
