"""Micro-batching: concurrent requests gathered into one predict call, answers split back.

A request waits in a queue until the one prediction thread takes it into a batch of at most
`max_batch_rows` rows, gathered for at most `max_wait_ms`. While a batch is predicted the next
one gathers, so batches grow with the load.

Load is shed at the door, telling a burst from overload as CoDel does: by whether the queue
stands. A request that would wait longer than `max_delay_ms` for the work ahead of it gets
`Overloaded` at once while the queue stands, that is, while every batch for `standing_ms` has
started on a request that waited longer than `max_delay_ms`; a burst, which the next batches
clear, is refused only beyond twice `max_delay_ms`. A request finding `max_queue` requests
waiting is refused too, and one arriving while the event loop runs more than half of
`max_delay_ms` late (requests come in faster than they are read, so each waits that long to be
read and again for its answer to be written). The wait is estimated from the batches run so far
(`BatchCost`: seconds = a + b x rows, fitted as they finish). A request still unanswered
`timeout_ms` after arriving gets `TimedOut`, never a hang.

While the server slows itself down (`own_slowdown()`: a new model loading beside serving, whose
thread takes the interpreter in turns), the slower batches and the late loop are not the
clients' doing: no request is refused for them, only for a full queue, and the batches run
meanwhile do not teach `BatchCost`, so shedding starts from the true cost once it is over.

Which requests may share a batch is the caller's rule: each request has a key, and `merge(a, b)`
gives the key of a batch holding both, or None when they may not share one (`ids` that meet never
share one either: a journey's history would otherwise span two requests). The others wait for a
later batch, first in line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """Refused at once: the queue is full or the request would wait too long."""


class TimedOut(Exception):
    """The request was not answered within its deadline."""


def same_key(a: Hashable, b: Hashable) -> Hashable | None:
    """The default rule: only requests of equal keys share a batch."""
    return a if a == b else None


@dataclass
class BatchCost:
    """Seconds a batch of n rows takes, a + b n, fitted by least squares to the batches run, the
    older ones weighing less (`decay` per batch). The slope is drawn towards the prior `b` as if
    `prior_weight` batches `prior_spread` rows apart had shown it: while every batch has about
    one size, the rows cannot tell the slope, and the intercept takes their mean time."""

    a: float = 0.005
    b: float = 0.0002
    decay: float = 0.97
    prior_weight: float = 2.0
    prior_spread: float = 4.0

    def __post_init__(self) -> None:
        self._prior_b = self.b
        self._sums = [0.0] * 5  # weight, n, n^2, t, n t

    def observe(self, rows: int, seconds: float) -> None:
        point = (1.0, rows, rows * rows, seconds, rows * seconds)
        self._sums = [s * self.decay + v for s, v in zip(self._sums, point, strict=True)]
        w, n, nn, t, nt = self._sums
        spread, cov = nn - n * n / w, nt - n * t / w
        strength = self.prior_weight * self.prior_spread**2
        self.b = max((cov + strength * self._prior_b) / (spread + strength), 0.0)
        self.a = max((t - self.b * n) / w, 0.0)

    @property
    def learned(self) -> float:
        """How many batches it has learned from, the older ones counting less."""
        return self._sums[0]

    def seconds(self, rows: float, batches: int = 1) -> float:
        return batches * self.a + rows * self.b


@dataclass(eq=False)
class Job:
    item: Any  # what run_batch receives
    rows: int
    key: Hashable
    ids: frozenset
    future: asyncio.Future
    taken: bool = False
    arrived: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Batcher:
    """Requests in, one `run_batch(items) -> outcomes` call per batch in a worker thread, each
    request's outcome (or the exception in its place) back. `start` inside the event loop."""

    run_batch: Callable[[list[Any]], list[Any]]
    max_batch_rows: int
    max_wait_ms: float
    max_queue: int
    timeout_ms: float
    max_delay_ms: float = 0.0  # 0: no shedding by expected wait
    standing_ms: float = 100.0  # 0: shed at max_delay_ms from the first such request
    merge: Callable[[Hashable, Hashable], Hashable | None] = same_key
    own_slowdown: Callable[[], bool] = field(default=lambda: False)
    cost: BatchCost = field(default_factory=BatchCost)
    stats: dict = field(
        default_factory=lambda: dict.fromkeys(
            ("requests", "batches", "rows", "largest_batch", "refused", "timed_out"), 0
        )
    )

    def __post_init__(self) -> None:
        self._waiting: deque[Job] = deque()
        self._waiting_rows = 0
        self._running: tuple[float, float] | None = None  # (began, expected seconds)
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self.loop_lag = 0.0  # seconds the event loop answered its last tick late
        self._over_since: float | None = None  # since when every batch began late
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="micromoment-predict")

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._arrived = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop())
        if self.max_delay_ms > 0:
            self._watcher = loop.create_task(self._watch_loop())

    async def stop(self) -> None:
        for task in (self._task, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for job in self._waiting:
            job.future.cancel()
        self._waiting.clear()
        self._waiting_rows = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    def expected_delay(self) -> float:
        """Seconds a request arriving now would wait before its own batch is predicted: the rest
        of the running batch, the batches of the rows waiting, and its batch's gathering."""
        delay = self.max_wait_ms / 1000
        if self._running is not None:
            began, expected = self._running
            delay += max(0.0, expected - (time.monotonic() - began))
        if self._waiting_rows:
            batches = math.ceil(self._waiting_rows / self.max_batch_rows)
            delay += self.cost.seconds(self._waiting_rows, batches)
        return delay

    @property
    def standing(self) -> bool:
        """Whether the queue stands: every batch begun for `standing_ms` began on a request that
        had waited longer than `max_delay_ms` (always, with `standing_ms` 0)."""
        since = self._over_since
        if not self.standing_ms:
            return True
        return since is not None and time.monotonic() - since >= self.standing_ms / 1000

    def admit(self) -> None:
        """`Overloaded` when `max_queue` requests wait already, or (unless the server slows
        itself down) a request would wait longer than `max_delay_ms` for the work ahead of it
        (`expected_delay`) while the queue stands (twice as long when it does not), or the event
        loop runs late."""
        if len(self._waiting) >= self.max_queue:
            self.stats["refused"] += 1
            raise Overloaded(f"{len(self._waiting)} requests are waiting already")
        if self.max_delay_ms > 0 and not self.own_slowdown():
            delay = self.expected_delay() * 1000
            limit = self.max_delay_ms if self.standing else 2 * self.max_delay_ms
            if delay > limit:
                self.stats["refused"] += 1
                raise Overloaded(
                    f"about {delay:.0f} ms of work is ahead of this request, over {limit:g} ms"
                    + (" (the queue stands)" if limit == self.max_delay_ms else "")
                )
            # requests reach the server faster than it reads them: each waits about this long
            # to be read and as long again for its answer to be written
            if 2000 * self.loop_lag > self.max_delay_ms:
                self.stats["refused"] += 1
                raise Overloaded(
                    f"the server reads requests {1000 * self.loop_lag:.0f} ms late, over half of "
                    f"{self.max_delay_ms:g} ms"
                )

    async def _watch_loop(self, tick: float = 0.005, ticks: int = 3) -> None:
        """Keeps `loop_lag`: how late the event loop wakes from a `tick`-long sleep, the least of
        the last `ticks` times. A backlog makes every tick late; one slow callback or a moment
        without a core makes one late, and is no reason to refuse anyone."""
        loop = asyncio.get_running_loop()
        recent: deque[float] = deque(maxlen=ticks)
        while True:
            began = loop.time()
            await asyncio.sleep(tick)
            recent.append(max(0.0, loop.time() - began - tick))
            self.loop_lag = min(recent) if len(recent) == ticks else 0.0

    async def submit(self, item: Any, rows: int, key: Hashable, ids: frozenset) -> Any:
        """The outcome of `item`; `Overloaded` at once when it is not admitted (`admit`),
        `TimedOut` after `timeout_ms`. An exception `run_batch` gave in its place is raised."""
        self.admit()
        job = Job(item, rows, key, ids, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self._waiting_rows += rows
        self._arrived.set()
        try:
            return await asyncio.wait_for(job.future, self.timeout_ms / 1000)
        except TimeoutError:
            self.stats["timed_out"] += 1
            raise TimedOut(f"no answer within {self.timeout_ms:g} ms") from None
        finally:  # answered, timed out or the client went away: it no longer waits
            if not job.taken:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(job)
                    self._waiting_rows -= job.rows

    async def _loop(self) -> None:
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            jobs = await self._collect()
            if jobs:
                await self._run(jobs)

    async def _collect(self) -> list[Job]:
        """The first waiting request and those that may join it, gathered for `max_wait_ms`."""
        loop = asyncio.get_running_loop()
        first = self._waiting.popleft()
        self._waiting_rows -= first.rows
        first.taken = True
        began = time.monotonic()
        if began - first.arrived <= self.max_delay_ms / 1000:
            self._over_since = None
        elif self._over_since is None:
            self._over_since = began
        jobs, ids, key = [first], set(first.ids), first.key
        deadline = loop.time() + self.max_wait_ms / 1000
        while True:
            key = self._take_compatible(jobs, ids, key)
            remaining = deadline - loop.time()
            if sum(j.rows for j in jobs) >= self.max_batch_rows or remaining <= 0:
                return jobs
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _take_compatible(self, jobs: list[Job], ids: set, key: Hashable) -> Hashable:
        """Moves the waiting requests that may join the batch into `jobs`; the batch's key."""
        rows = sum(j.rows for j in jobs)
        left: deque[Job] = deque()
        for job in self._waiting:
            merged = None
            if rows + job.rows <= self.max_batch_rows and not (ids & job.ids):
                merged = self.merge(key, job.key)
            if merged is None:
                left.append(job)
                continue
            job.taken = True
            jobs.append(job)
            ids |= job.ids
            rows += job.rows
            self._waiting_rows -= job.rows
            key = merged
        self._waiting = left
        return key

    async def _run(self, jobs: list[Job]) -> None:
        live = [j for j in jobs if not j.future.done()]
        if not live:
            return
        loop = asyncio.get_running_loop()
        rows = sum(j.rows for j in live)
        began = time.monotonic()
        learn = not self.own_slowdown()
        self._running = (began, self.cost.seconds(rows))
        try:
            outcomes = await loop.run_in_executor(
                self._executor, self.run_batch, [j.item for j in live]
            )
        except Exception as err:  # run_batch itself failed: every request gets the error
            log.exception("a batch of %d requests failed", len(live))
            outcomes = [err] * len(live)
        finally:
            self._running = None
        if learn and not self.own_slowdown():  # a batch slowed by the server's own work
            self.cost.observe(rows, time.monotonic() - began)
        self.stats["requests"] += len(live)
        self.stats["batches"] += 1
        self.stats["rows"] += rows
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(live))
        for job, outcome in zip(live, outcomes, strict=True):
            if job.future.done():  # timed out meanwhile
                continue
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
