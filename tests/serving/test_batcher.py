"""Micro-batching: what may share a batch, one call per batch, answers split back, load shed."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipelines.serving.batcher import BatchCost, Batcher, Overloaded, TimedOut


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


def test_a_merge_rule_decides_who_shares_a_batch_and_the_batch_key_follows_it():
    # keys are sets of what each request needs; two may share a batch when neither needs what
    # the other excludes ("-x" excludes x); the batch's key is the union
    def merge(a, b):
        both = a | b
        return None if any(f"-{k}" in both for k in both) else both

    calls = []
    jobs = [
        (0, 1, frozenset({"a"}), frozenset({0})),
        (1, 1, frozenset({"b"}), frozenset({1})),  # joins: the batch is {a, b}
        (2, 1, frozenset({"-b"}), frozenset({2})),  # excluded by the batch's b: a later batch
        (3, 1, frozenset({"-c"}), frozenset({3})),  # joins {a, b}
    ]
    asyncio.run(_submit_all(recording_batcher(calls, merge=merge), jobs))
    assert calls == [[0, 1, 3], [2]]


def test_the_batch_cost_is_fitted_to_the_batches_run():
    cost = BatchCost(a=0.02, b=0.001)  # a prior ten times too slow
    for rows in [1, 3, 10, 40, 2, 25, 7, 60] * 20:
        cost.observe(rows, 0.002 + 0.0001 * rows)
    assert cost.a == pytest.approx(0.002, rel=0.05)
    assert cost.b == pytest.approx(0.0001, rel=0.05)
    assert cost.seconds(100, batches=2) == pytest.approx(2 * cost.a + 100 * cost.b)
    one_size = BatchCost()
    for _ in range(200):  # every batch of one size: the prior keeps the slope defined
        one_size.observe(1, 0.003)
    assert one_size.seconds(1) == pytest.approx(0.003, rel=0.05)
    assert one_size.b >= 0 and one_size.a >= 0


def test_a_request_that_would_wait_too_long_is_refused_at_once():
    calls = []
    # standing_ms 0: refused at max_delay_ms without waiting to see whether the queue stands
    batcher = recording_batcher(calls, delay=0.2, max_wait_ms=0, max_delay_ms=100, standing_ms=0)
    batcher.cost = BatchCost(a=0.2, b=0.0)  # each batch takes 200 ms, as it does here

    async def scenario():
        batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(0, 1, 0, frozenset()))
            await asyncio.sleep(0.05)  # the first batch runs, 150 ms of it ahead
            started = time.monotonic()
            with pytest.raises(Overloaded, match="ms of work is ahead"):
                await batcher.submit(1, 1, 1, frozenset())
            refused_in = time.monotonic() - started
            assert await first == "answer 0"
            # nothing runs or waits now: admitted again
            return refused_in, await batcher.submit(2, 1, 2, frozenset())
        finally:
            await batcher.stop()

    refused_in, later = asyncio.run(scenario())
    assert refused_in < 0.01 and later == "answer 2"
    assert batcher.stats["refused"] == 1 and calls == [[0], [2]]


def test_a_burst_is_taken_within_twice_the_delay_and_a_standing_queue_is_refused_at_it():
    calls = []
    batcher = recording_batcher(calls, delay=0.2, max_wait_ms=0, max_delay_ms=100, standing_ms=150)
    batcher.cost = BatchCost(a=0.2, b=0.0)  # each batch takes 200 ms

    async def scenario():
        batcher.start()
        try:
            tasks = [asyncio.create_task(batcher.submit(0, 1, 0, frozenset()))]
            await asyncio.sleep(0.02)  # 180 ms of work ahead: over 100 ms, but within 200
            tasks.append(asyncio.create_task(batcher.submit(1, 1, 1, frozenset())))
            await asyncio.sleep(0)
            assert batcher.waiting == 1 and not batcher.standing  # a burst: admitted
            await asyncio.sleep(0.2)  # request 1's batch began after it waited ~180 ms
            tasks.append(asyncio.create_task(batcher.submit(2, 1, 2, frozenset())))
            await asyncio.sleep(0)
            assert batcher.waiting == 1  # late batches for 20 ms only: not standing yet
            await asyncio.sleep(0.2)  # request 2's began late too: late for 200 ms now
            assert batcher.standing
            with pytest.raises(Overloaded, match=r"over 100 ms \(the queue stands\)"):
                await batcher.submit(3, 1, 3, frozenset())
            answers = [await t for t in tasks]
            # drained: the next batch begins at once, and the queue no longer stands
            return answers, await batcher.submit(4, 1, 4, frozenset())
        finally:
            await batcher.stop()

    answers, last = asyncio.run(scenario())
    assert answers == ["answer 0", "answer 1", "answer 2"] and last == "answer 4"
    assert not batcher.standing and batcher.stats["refused"] == 1
    assert calls == [[0], [1], [2], [4]]


def test_while_the_server_slows_itself_no_one_is_refused_for_it_and_nothing_is_learned():
    loading = [True]
    calls = []
    batcher = recording_batcher(
        calls,
        delay=0.2,
        max_wait_ms=0,
        max_delay_ms=100,
        standing_ms=0,
        own_slowdown=lambda: loading[0],
    )
    batcher.cost = BatchCost(a=0.2, b=0.0)

    async def scenario():
        batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(0, 1, 0, frozenset()))
            await asyncio.sleep(0.05)  # 150 ms of work ahead, but the server's own doing
            second = asyncio.create_task(batcher.submit(1, 1, 1, frozenset()))
            await asyncio.sleep(0)
            assert batcher.waiting == 1  # admitted
            answers = [await first, await second]
            loading[0] = False  # the model is loaded: shedding is back
            third = asyncio.create_task(batcher.submit(2, 1, 2, frozenset()))
            await asyncio.sleep(0.05)
            with pytest.raises(Overloaded, match="ms of work is ahead"):
                await batcher.submit(3, 1, 3, frozenset())
            return answers + [await third]
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == ["answer 0", "answer 1", "answer 2"]
    assert calls == [[0], [1], [2]] and batcher.stats["refused"] == 1
    # the two batches run while loading were not learned from; the last one was
    assert batcher.cost.learned == pytest.approx(1.0)


def test_a_request_arriving_while_the_event_loop_runs_late_is_refused():
    batcher = recording_batcher([], max_wait_ms=0, max_delay_ms=60)  # refused past 30 ms late

    async def ticks(n: int = 6) -> None:  # the watcher's next few ticks
        for _ in range(n):
            await asyncio.sleep(0.006)

    async def scenario():
        batcher.start()
        try:
            await ticks()
            time.sleep(0.1)  # one stall of the loop: one late tick, no reason to refuse
            await asyncio.sleep(0.001)
            assert await batcher.submit(0, 1, 0, frozenset()) == "answer 0"
            for _ in range(8):  # a backlog: every tick late
                time.sleep(0.05)
                await asyncio.sleep(0.001)
            assert batcher.loop_lag > 0.03
            with pytest.raises(Overloaded, match="reads requests .* ms late"):
                await batcher.submit(1, 1, 1, frozenset())
            for _ in range(100):  # on time again: admitted
                await ticks()
                try:
                    return await batcher.submit(2, 1, 2, frozenset())
                except Overloaded:
                    pass
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == "answer 2"
