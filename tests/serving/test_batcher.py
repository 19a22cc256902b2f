"""Micro-batching: what may share a batch, one call per batch, answers split back, load shed."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
import pytest

from pipelines.serving.batcher import (
    Batcher,
    Overloaded,
    TimedOut,
    batch_ids,
    batch_key,
    predict_together,
)


def test_requests_the_contract_reads_alike_share_a_key():
    a = pd.DataFrame({"id": ["a"], "dwell": [30.0]})
    assert batch_key(a) == batch_key(pd.DataFrame({"dwell": [12.0], "id": ["b"]}))
    # 3.0 reads as '3' only when every value of the column is whole
    assert batch_key(a) != batch_key(pd.DataFrame({"id": ["b"], "dwell": [30.5]}))
    assert batch_key(a) != batch_key(pd.DataFrame({"id": ["b"], "dwell": [30]}))
    assert batch_key(a) != batch_key(pd.DataFrame({"id": ["b"]}))
    assert batch_key(a, 0) != batch_key(a, 3)


def test_ids_are_sessions_and_journeys_as_the_contract_reads_them():
    frame = pd.DataFrame({"id": [3.0, 4.0, np.nan], "journey": ["x", None, "y"]})
    assert batch_ids(frame, ["id", "journey", None]) == {"3", "4", "x", "y"}
    assert batch_ids(frame, ["session", "journey"]) == {"x", "y"}


def test_one_call_for_the_frames_split_back_and_a_bad_frame_fails_alone():
    calls = []

    def predict(frame):
        calls.append(len(frame))
        if (frame["x"] < 0).any():
            raise ValueError(f"x must be >= 0, got {frame['x'].min()}")
        return frame.assign(y=frame["x"] * 2)

    frames = [pd.DataFrame({"x": [1, 2]}), pd.DataFrame({"x": [3]}), pd.DataFrame({"x": [4, 5]})]
    outs = predict_together(predict, frames)
    assert calls == [5]
    assert [o["y"].tolist() for o in outs] == [[2, 4], [6], [8, 10]]
    assert all(o.index.tolist() == list(range(len(o))) for o in outs)
    calls.clear()
    outs = predict_together(predict, [frames[0], pd.DataFrame({"x": [-1]}), frames[1]])
    assert calls == [4, 2, 1, 1]
    assert isinstance(outs[1], ValueError) and outs[2]["y"].tolist() == [6]


async def _submit_all(batcher: Batcher, jobs, gap: float = 0.0):
    batcher.start()
    try:
        tasks = []
        for item, rows, key, ids in jobs:
            tasks.append(asyncio.create_task(batcher.submit(item, rows, key, ids)))
            await asyncio.sleep(gap)
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await batcher.stop()


def recording_batcher(calls: list, delay: float = 0.0, **settings) -> Batcher:
    def run_batch(items):
        calls.append(list(items))
        time.sleep(delay)
        return [f"answer {i}" for i in items]

    settings = {
        "max_batch_rows": 100,
        "max_wait_ms": 50,
        "max_queue": 100,
        "timeout_ms": 5000,
    } | settings
    return Batcher(run_batch, **settings)


def test_concurrent_requests_are_gathered_into_one_call():
    calls = []
    jobs = [(i, 1, "k", frozenset({f"s{i}"})) for i in range(10)]
    answers = asyncio.run(_submit_all(recording_batcher(calls), jobs))
    assert answers == [f"answer {i}" for i in range(10)]
    assert calls == [list(range(10))]


def test_requests_sharing_a_journey_or_a_key_never_share_a_batch():
    calls = []
    jobs = [
        (0, 1, "k", frozenset({"j1"})),
        (1, 1, "k", frozenset({"j1"})),  # the same journey: a later batch
        (2, 1, "other", frozenset({"j2"})),  # other columns: a later batch
        (3, 1, "k", frozenset({"j3"})),
    ]
    asyncio.run(_submit_all(recording_batcher(calls), jobs))
    assert calls[0] == [0, 3]
    assert sorted(map(sorted, calls[1:])) == [[1], [2]]


def test_a_batch_holds_at_most_max_batch_rows():
    calls = []
    jobs = [(i, 4, "k", frozenset({i})) for i in range(6)]
    asyncio.run(_submit_all(recording_batcher(calls, max_batch_rows=10), jobs))
    assert [len(c) for c in calls] == [2, 2, 2]


def test_a_full_queue_refuses_at_once_and_a_late_answer_times_out():
    calls = []
    batcher = recording_batcher(calls, delay=0.3, max_wait_ms=0, max_queue=2, timeout_ms=10000)
    jobs = [(i, 1, i, frozenset()) for i in range(6)]  # distinct keys: one per batch
    answers = asyncio.run(_submit_all(batcher, jobs, gap=0.01))
    refused = [a for a in answers if isinstance(a, Overloaded)]
    assert len(refused) == 3 and batcher.stats["refused"] == 3
    assert [a for a in answers if isinstance(a, str)] == ["answer 0", "answer 1", "answer 2"]

    slow = recording_batcher([], delay=1.0, timeout_ms=100)
    started = time.monotonic()
    (late,) = asyncio.run(_submit_all(slow, [(0, 1, "k", frozenset())]))
    assert isinstance(late, TimedOut) and time.monotonic() - started < 0.8


def test_an_error_in_place_of_an_answer_is_raised_to_its_request_only():
    def run_batch(items):
        return [ValueError("bad") if i == 1 else i for i in items]

    batcher = Batcher(run_batch, max_batch_rows=10, max_wait_ms=20, max_queue=10, timeout_ms=5000)
    answers = asyncio.run(_submit_all(batcher, [(i, 1, "k", frozenset({i})) for i in range(3)]))
    assert answers[0] == 0 and answers[2] == 2
    with pytest.raises(ValueError, match="bad"):
        raise answers[1]
