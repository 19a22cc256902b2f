"""Micro-batching: concurrent requests gathered into one predict call, answers split back.

A request waits in a bounded queue (`max_queue`; beyond it `Overloaded`, at once) until the one
prediction thread takes it into a batch of at most `max_batch_rows` rows, gathered for at most
`max_wait_ms`; a request not answered within `timeout_ms` of arriving gets `TimedOut`, never a
hang. While a batch is predicted the next one gathers, so batches grow with the load.

A request's rows must score exactly as they do alone, so a batch only holds requests that the
session contract reads the same way together as apart (`batch_key`: the same columns, types and
number formats) and that share no session or journey (`batch_ids`: a journey's history would
otherwise span two requests). The others wait for a later batch, first in line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.contract import text_values

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full: the request is refused at once instead of waiting."""


class TimedOut(Exception):
    """The request was not answered within its deadline."""


def batch_key(frame: pd.DataFrame, *extra: Hashable) -> tuple:
    """What requests batched together must share: each column's name and type, and for float
    columns whether every value is whole (the contract writes 3.0 as '3' only then), plus
    `extra` (the reasons asked for)."""
    cols = []
    # dtypes first: reading a column out of a frame costs more than the check itself
    for i, (name, dtype) in enumerate(frame.dtypes.items()):
        whole = None
        if pd.api.types.is_float_dtype(dtype):
            v = frame.iloc[:, i].to_numpy(dtype=np.float64, na_value=np.nan)
            whole = bool(np.all(np.isnan(v) | (v == np.floor(v))))
        cols.append((str(name), str(dtype), whole))
    return (*extra, tuple(sorted(cols)))


def batch_ids(frame: pd.DataFrame, columns: Sequence[str | None]) -> frozenset:
    """The session and journey ids of a request as the contract reads them (one namespace: a
    session without a journey is its own journey, keyed by its id)."""
    ids: set = set()
    for name in columns:
        if name and name in frame.columns:
            try:
                ids.update(v for v in text_values(frame[name].array) if v is not None)
            except Exception:  # unreadable ids (or two id columns): it can only go alone
                ids.add(object())
    return frozenset(ids)


def predict_together(
    predict: Callable[[pd.DataFrame], pd.DataFrame], frames: Sequence[pd.DataFrame]
) -> list[pd.DataFrame | Exception]:
    """`predict` once over `frames` stacked, split back into one output per frame (one output
    row per input row, in order). When the stacked call fails, each frame is predicted alone, so
    a bad request gets its own error and the others their answers."""
    if len(frames) > 1:
        try:
            out = predict(pd.concat(frames, ignore_index=True))
        except Exception:
            log.debug("a batch of %d requests failed; predicting each alone", len(frames))
        else:
            ends = np.cumsum([len(f) for f in frames])
            starts = ends - [len(f) for f in frames]
            return [out.iloc[a:b].reset_index(drop=True) for a, b in zip(starts, ends, strict=True)]
    return [_alone(predict, f) for f in frames]


def _alone(predict: Callable[[pd.DataFrame], pd.DataFrame], frame: pd.DataFrame):
    try:
        return predict(frame)
    except Exception as err:
        return err


@dataclass(eq=False)
class Job:
    item: Any  # what run_batch receives
    rows: int
    key: Hashable
    ids: frozenset
    future: asyncio.Future
    taken: bool = False


@dataclass(eq=False)
class Batcher:
    """Requests in, one `run_batch(items) -> outcomes` call per batch in a worker thread, each
    request's outcome (or the exception in its place) back. `start` inside the event loop."""

    run_batch: Callable[[list[Any]], list[Any]]
    max_batch_rows: int
    max_wait_ms: float
    max_queue: int
    timeout_ms: float
    stats: dict = field(
        default_factory=lambda: dict.fromkeys(
            ("requests", "batches", "rows", "largest_batch", "refused", "timed_out"), 0
        )
    )

    def __post_init__(self) -> None:
        self._waiting: deque[Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="micromoment-predict")

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._waiting:
            job.future.cancel()
        self._waiting.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, item: Any, rows: int, key: Hashable, ids: frozenset) -> Any:
        """The outcome of `item`; `Overloaded` when `max_queue` requests wait already, `TimedOut`
        after `timeout_ms`. An exception `run_batch` gave in its place is raised."""
        if len(self._waiting) >= self.max_queue:
            self.stats["refused"] += 1
            raise Overloaded(f"{len(self._waiting)} requests are waiting already")
        job = Job(item, rows, key, ids, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
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
        first.taken = True
        jobs, ids = [first], set(first.ids)
        deadline = loop.time() + self.max_wait_ms / 1000
        while True:
            self._take_compatible(jobs, ids)
            remaining = deadline - loop.time()
            if sum(j.rows for j in jobs) >= self.max_batch_rows or remaining <= 0:
                return jobs
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _take_compatible(self, jobs: list[Job], ids: set) -> None:
        rows = sum(j.rows for j in jobs)
        left: deque[Job] = deque()
        for job in self._waiting:
            fits = rows + job.rows <= self.max_batch_rows
            if fits and job.key == jobs[0].key and not (ids & job.ids):
                job.taken = True
                jobs.append(job)
                ids |= job.ids
                rows += job.rows
            else:
                left.append(job)
        self._waiting = left

    async def _run(self, jobs: list[Job]) -> None:
        live = [j for j in jobs if not j.future.done()]
        if not live:
            return
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(
                self._executor, self.run_batch, [j.item for j in live]
            )
        except Exception as err:  # run_batch itself failed: every request gets the error
            log.exception("a batch of %d requests failed", len(live))
            outcomes = [err] * len(live)
        rows = sum(j.rows for j in live)
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
