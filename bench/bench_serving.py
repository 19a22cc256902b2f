"""Serving benchmark: real-time scoring under load, over loopback, for several servers in one run.

Trains a small intent model on synthetic sessions, logs and registers it in a temporary SQLite
MLflow store (the gate makes it `@champion`), compiles its trees once (every server finds them in
the same cache), then starts each server in turn as its own process and drives it with a bounded
open-loop load generator on the same machine (asyncio + aiohttp, loopback only):

- `mlflow models serve -m models:/micro_moment_intent@champion --env-manager local`, with 1 and
  with 2 workers (`--workers`);
- MLServer with its MLflow runtime (`mlserver-mlflow`), when --mlserver-venv names a virtualenv
  where it is installed: once on MLflow's `/invocations` (what existing clients call; a custom
  handler that adaptive batching does not reach), once on its V2 `/v2/models/<name>/infer`
  endpoint, where adaptive batching applies. MLServer 1.7.1 needs fastapi < 0.116 and
  protobuf < 7, below our pins, so it lives in its own virtualenv, never in the project's:

      python3.11 -m venv /tmp/mlsv2 && /tmp/mlsv2/bin/pip install mlserver mlserver-mlflow
      git archive HEAD | (mkdir /tmp/mm_src && tar -x -C /tmp/mm_src)
      grep -viE "^(fastapi|starlette|protobuf|pydantic|pydantic_core|annotated-doc|uvloop)==" \
          constraints.txt > /tmp/mlsv_cons.txt
      /tmp/mlsv2/bin/pip install -c /tmp/mlsv_cons.txt /tmp/mm_src "uvloop<0.22"

  (uvloop 0.22+ kills MLServer 1.7.1's inference workers at start);
- the project's own server, `micromoment serve serve.port=P tracking.uri=...`, when the checkout
  has that command (it is skipped with a line saying so otherwise), ready on `/ready`; once with
  one process and once with `serve.workers=2` (`micromoment2`), two processes on the one port.

Open loop: request i is due at start + i / rate whatever happened to earlier ones, and its
latency is measured from that due time, so queueing in the generator or the server counts. Each
request has a timeout; at most --max-inflight are outstanding (a due request beyond that is
counted as `not sent`), and every phase has a fixed duration, so a run stops by itself. Between
phases the generator waits until the server answers a lone request within 50 ms again.

For each server: one-session requests at --rate for --duration; the highest rate that holds
(every request answered 200, p99 <= 50 ms) for one-session and for 20-session requests, by a
ladder of short steps and one bisection, counted only when a later window holds it again. The
capacity is that one-session rate, or --rate when the fixed phase held it and a noisy search found
less. Then overload at twice the capacity (share of fast 503s with Retry-After, p99 of accepted
requests, the time until p99 is back under 50 ms once the overload stops); a soak at half the
capacity (resident memory of the server's processes at its start and end); bad requests (status code of each, and whether the server still answers).

Bodies use MLflow's `/invocations` format, `{"dataframe_split": {"columns": [...], "data": [...]}}`,
built from generated sessions without the label, the posterior and the session's outcome.

    python bench/bench_serving.py                           # ~30 min
    python bench/bench_serving.py --quick                   # a few minutes: a smoke run
    python bench/bench_serving.py --mlserver-venv /tmp/mlsv2 --servers mlflow1,mlserver-v2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pandas as pd
from _common import (
    DEFAULT_RESULTS,
    command_line,
    compose_config,
    generate_sessions,
    pct,
    run_metadata,
    write_section,
)
from mlflow import MlflowClient
from threadpoolctl import threadpool_limits

from pipelines import cli
from pipelines.core import compiled
from pipelines.stages.train import train
from pipelines.tracking.registry import load_scorer
from pipelines.tracking.train_run import log_and_register

try:
    import psutil
except ImportError:  # /proc/<pid>/status instead
    psutil = None

MODEL_NAME = "micro_moment_intent"
MODEL_URI = f"models:/{MODEL_NAME}@champion"
TARGET_P99_MS = 50.0  # a rate holds when every request is answered 200 within this at p99
TARGET_OVERLOAD_P99_MS = 100.0  # accepted requests during overload
TARGET_RECOVERY_S = 5.0  # back under TARGET_P99_MS after the overload stops
TARGET_SOAK_GROWTH = 0.10  # resident memory over the soak
FAST_503_MS = 50.0  # a 503 this fast sheds load; a slow one is a timeout by another name
BIG_SESSIONS = 20  # sessions in a multi-session request
LADDER_FACTOR = 1.5
WINDOW_S = 1.0  # recovery is judged on windows of this length
FOLLOW_INTERVAL_S = 2.0  # how often `micromoment serve` checks the alias here
TARGET_SWITCH_S = FOLLOW_INTERVAL_S + 5.0  # the interval, then loading and warming the version
# columns a client does not have while the session is open: the label, the session's outcome
DROP_COLUMNS = ("intent", "converted", "touchpoint", "touchpoint_propensity")
JSON = {"Content-Type": "application/json"}
WARMUP_TIMEOUT = aiohttp.ClientTimeout(total=30)
SERVERS = ("mlflow1", "mlflow2", "mlserver", "mlserver-v2", "micromoment", "micromoment2")
OWN = ("micromoment", "micromoment2")  # `micromoment serve` with 1 and 2 worker processes


# -- request bodies -------------------------------------------------------------------------
def request_frame(path: str) -> pd.DataFrame:
    """Generated sessions as a client would send them: no label, posterior or outcome."""
    frame = pd.read_parquet(path)
    drop = [c for c in frame.columns if c in DROP_COLUMNS or c.startswith("p_")]
    frame = frame.drop(columns=drop)
    frame["started_at"] = frame["started_at"].map(lambda t: t.isoformat())
    return frame.reset_index(drop=True)


def json_rows(frame: pd.DataFrame) -> list[list]:
    """Rows as JSON-ready values (NaN -> null, numpy scalars -> Python)."""
    values = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
    return [[v.item() if isinstance(v, np.generic) else v for v in row] for row in values]


def mlflow_body(frame: pd.DataFrame) -> bytes:
    split = {"columns": list(frame.columns), "data": json_rows(frame)}
    return json.dumps({"dataframe_split": split}).encode()


def v2_body(frame: pd.DataFrame) -> bytes:
    """The same rows as an Open Inference Protocol (V2) request decoded by MLServer's pandas codec.

    V2 has no null and MLServer refuses NaN in JSON: the coordinates (missing for most sessions)
    are left out, as a client without them would."""
    frame = frame.drop(columns=["latitude", "longitude"], errors="ignore")
    inputs = []
    for col in frame.columns:
        values = frame[col]
        if pd.api.types.is_bool_dtype(values):
            kind, data, params = "BOOL", values.astype(bool).tolist(), None
        elif pd.api.types.is_integer_dtype(values):
            kind, data, params = "INT64", values.astype("int64").tolist(), None
        elif pd.api.types.is_float_dtype(values):
            kind, data, params = "FP64", values.astype(float).tolist(), None
        else:
            kind, params = "BYTES", {"content_type": "str"}
            data = ["" if v is None or v != v else str(v) for v in values]
        entry = {"name": col, "shape": [len(frame)], "datatype": kind, "data": data}
        if params:
            entry["parameters"] = params
        inputs.append(entry)
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs}).encode()


def build_bodies(frame: pd.DataFrame, count: int, seed: int, encode) -> dict[str, list[bytes]]:
    """`count` one-session bodies (random sessions) and 20-session bodies (consecutive rows)."""
    rng = np.random.default_rng(seed)
    one = [encode(frame.iloc[[i]]) for i in rng.choice(len(frame), count, replace=False)]
    starts = rng.choice(len(frame) - BIG_SESSIONS, count, replace=False)
    big = [encode(frame.iloc[s : s + BIG_SESSIONS]) for s in starts]
    return {"one": one, "big": big}


def bad_requests(frame: pd.DataFrame) -> list[tuple[str, bytes, str]]:
    """(name, body, content type) of the malformed requests every server gets."""
    row = frame.iloc[[0]]
    wrong = row.copy().astype({"dwell_time_s": object})
    wrong.loc[wrong.index[0], "dwell_time_s"] = "twelve seconds"
    per_frame = len(mlflow_body(frame))
    copies = math.ceil(10.2 * 2**20 / per_frame)  # just over 10 MB of valid JSON
    big = mlflow_body(pd.concat([frame] * copies, ignore_index=True))
    return [
        ("missing column (session_id)", mlflow_body(row.drop(columns=["session_id"])), "json"),
        ("wrong type (dwell_time_s as text)", mlflow_body(wrong), "json"),
        ("empty body", b"", "json"),
        (f"{len(big) / 2**20:.0f} MB body", big, "json"),
        ("invalid JSON", b'{"dataframe_split": {"columns": ["session_id"], "data": [[', "json"),
    ]


# -- the model ------------------------------------------------------------------------------
def train_and_register(data_dir: Path, tmp: Path, tracking_uri: str) -> dict:
    """Train on one thread and register the model as `@champion` (the gate passes the first)."""
    cfg = compose_config(
        "train",
        [
            f"output_dir={tmp / 'train_output'}",
            f"data.path={data_dir / 'sessions'}",
            f"data.stores_path={data_dir / 'stores.csv'}",
            f"tracking.uri={tracking_uri}",
            "runtime.threads=1",
            "baselines=false",
        ],
    )
    cfg["registry"]["gate"] = True
    with threadpool_limits(limits=1):
        result = train(cfg)
    summary = log_and_register(cfg, result, [], str(tmp / "train_output"))
    if summary["gate"] is None or not summary["gate"].promote:
        raise RuntimeError(f"the trained model did not become champion: {summary['gate']}")
    booster = result.model.booster
    return {
        "version": summary["registered_version"],
        "trees": booster.num_trees(),
        "rows": int(result.metrics["data/rows_kept"]),
        "accuracy": result.metrics["test/accuracy"],
    }


# -- servers --------------------------------------------------------------------------------
@dataclass
class Server:
    key: str
    label: str
    argv: list[str]
    ready_path: str
    invoke_path: str = "/invocations"
    body_kind: str = "mlflow"  # or "v2"
    cwd: Path | None = None
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlflow_server(workers: int, bin_dir: Path) -> Server:
    port = free_port()
    argv = [str(bin_dir / "mlflow"), "models", "serve", "-m", MODEL_URI, "--env-manager", "local"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    label = f"`mlflow models serve`, {workers} worker{'s' if workers > 1 else ''}"
    return Server(f"mlflow{workers}", label, argv, "/ping", port=port)


def mlserver_server(key: str, venv: Path, tmp: Path, args: argparse.Namespace) -> Server:
    """MLServer with the MLflow runtime and adaptive batching, configured in its own folder."""
    port, grpc, metrics = free_port(), free_port(), free_port()
    folder = tmp / key
    (folder / "model").mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "parallel_workers": args.mlserver_workers,
    }
    model = {
        "name": MODEL_NAME,
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "max_batch_size": args.mlserver_batch,
        "max_batch_time": args.mlserver_batch_ms / 1000,
        "parameters": {"uri": MODEL_URI},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / "model" / "model-settings.json").write_text(json.dumps(model, indent=2))
    v2 = key == "mlserver-v2"
    batching = f"adaptive batching {args.mlserver_batch} / {args.mlserver_batch_ms:g} ms"
    label = f"MLServer + mlserver-mlflow, {'V2 infer' if v2 else '`/invocations`'} ({batching})"
    return Server(
        key,
        label,
        [str(venv / "bin" / "mlserver"), "start", str(folder)],
        f"/v2/models/{MODEL_NAME}/ready",  # the server is ready even when its model failed
        invoke_path=f"/v2/models/{MODEL_NAME}/infer" if v2 else "/invocations",
        body_kind="v2" if v2 else "mlflow",
        cwd=folder,
        port=port,
    )


def project_server(bin_dir: Path, tmp: Path, tracking_uri: str, workers: int) -> Server | None:
    """`micromoment serve` with `workers` processes, or None when this checkout has no such
    command."""
    if "serve" not in cli.COMMANDS:
        return None
    port = free_port()
    argv = [str(bin_dir / "micromoment"), "serve", f"serve.port={port}"]
    argv += [f"tracking.uri={tracking_uri}", f"serve.follow_interval_s={FOLLOW_INTERVAL_S:g}"]
    key, label = "micromoment", "`micromoment serve`"
    if workers > 1:
        argv.append(f"serve.workers={workers}")
        key, label = f"micromoment{workers}", f"`micromoment serve`, {workers} workers"
    cwd = tmp / f"{key}_serve"
    cwd.mkdir(exist_ok=True)
    return Server(key, label, argv, "/ready", cwd=cwd, port=port)


def start(server: Server, env: dict, logs: Path, timeout: float) -> float:
    """Start the server in its own process group; seconds until its readiness path answers 200."""
    server.log = logs / f"{server.key}.log"
    began = time.perf_counter()
    with open(server.log, "wb") as log:
        server.proc = subprocess.Popen(
            server.argv,
            env=env,
            cwd=server.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{server.port}{server.ready_path}"
    while time.perf_counter() - began < timeout:
        check_running(server)
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return time.perf_counter() - began
        time.sleep(0.5)
    raise RuntimeError(f"{server.key} was not ready within {timeout:g} s: {tail(server)}")


def stop(server: Server) -> None:
    """SIGTERM to the server's process group, SIGKILL after 15 s."""
    if server.proc is None or server.proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=15)


def check_running(server: Server) -> None:
    """Raise when the server's process has exited (its numbers would be the generator's)."""
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.key} exited with {server.proc.returncode}: {tail(server)}")


def tail(server: Server, chars: int = 1500) -> str:
    return server.log.read_text(errors="replace")[-chars:] if server.log else ""


def tree_pids(pid: int) -> list[int]:
    """The server's process and its descendants (uvicorn workers, MLServer's inference pool)."""
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            return [pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []
    children = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = status.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(status.parent.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of the process tree, MiB (psutil, else /proc/<pid>/status VmRSS)."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(Exception):
            if psutil is not None:
                total += psutil.Process(p).memory_info().rss
                continue
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total / 2**20


# -- the load generator ---------------------------------------------------------------------
@dataclass
class Phase:
    """What one fixed-rate phase sent and got: one entry per due request."""

    rate: float
    seconds: float
    due: np.ndarray  # due time from the phase start, s
    latency: np.ndarray  # from due time to the answer (or the timeout), s; NaN when not sent
    status: np.ndarray  # HTTP status; 0 timeout, -1 connection error, -2 not sent
    retry_after: np.ndarray  # bool: a Retry-After header came back
    lag: np.ndarray  # how late the generator sent it, s
    cpu_s: float  # the generator's CPU time during the phase
    errors: dict[str, str]  # the first answer of each failing status, or exception
    version: np.ndarray  # the X-Model-Version answered (-1: none)


TIMEOUT, CONN_ERROR, NOT_SENT = 0, -1, -2


async def fire(http, url, body, headers, timeout, due, loop, errors=None):
    """(latency from `due`, status, Retry-After present, X-Model-Version or -1); the first answer
    of each failing status (or the first exception of each kind) goes into `errors`."""
    try:
        async with http.post(url, data=body, headers=headers, timeout=timeout) as resp:
            text = await resp.read()
            if errors is not None and resp.status != 200:
                errors.setdefault(
                    str(resp.status), " ".join(text[:160].decode(errors="replace").split())
                )
            version = resp.headers.get("X-Model-Version", "")
            retry = "Retry-After" in resp.headers
            return loop.time() - due, resp.status, retry, int(version) if version.isdigit() else -1
    except TimeoutError:
        return loop.time() - due, TIMEOUT, False, -1
    except aiohttp.ClientError as err:
        if errors is not None:
            errors.setdefault(type(err).__name__, str(err)[:160])
        return loop.time() - due, CONN_ERROR, False, -1


async def open_loop(http, url, bodies, rate, seconds, timeout, max_inflight, content_type) -> Phase:
    """Send request i at start + i / rate for `seconds`; never more than `max_inflight` at once."""
    loop = asyncio.get_running_loop()
    n = max(1, int(rate * seconds))
    latency, status = np.full(n, np.nan), np.full(n, NOT_SENT)
    retry, lag, version = np.zeros(n, bool), np.zeros(n), np.full(n, -1)
    headers = {"Content-Type": content_type}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    inflight: set[asyncio.Task] = set()
    cpu0, t0 = time.process_time(), loop.time() + 0.05
    errors: dict[str, str] = {}

    async def one(i: int, due: float) -> None:
        body = bodies[i % len(bodies)]
        latency[i], status[i], retry[i], version[i] = await fire(
            http, url, body, headers, client_timeout, due, loop, errors
        )

    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag[i] = max(0.0, loop.time() - due)
        if len(inflight) >= max_inflight:
            continue  # the generator's own bound: counted as not sent
        task = asyncio.create_task(one(i, due))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    if inflight:
        await asyncio.gather(*inflight)
    due_rel = np.arange(n) / rate
    cpu = time.process_time() - cpu0
    return Phase(rate, seconds, due_rel, latency, status, retry, lag, cpu, errors, version)


def summarize(phase: Phase) -> dict:
    """Counts and percentiles of a phase; latencies over every sent request (timeouts included)."""
    sent = phase.status != NOT_SENT
    ok = phase.status == 200
    shed = phase.status == 503
    lat_ms = phase.latency[sent] * 1000
    ok_ms = phase.latency[ok] * 1000
    # fast from when it went out: a generator running late on the shared cores is not the server
    fast_shed = shed & phase.retry_after & ((phase.latency - phase.lag) * 1000 <= FAST_503_MS)
    n = len(phase.status)
    return {
        "rate": phase.rate,
        "seconds": phase.seconds,
        "requests": n,
        "ok": int(ok.sum()),
        "p50_ms": float(np.percentile(lat_ms, 50)) if lat_ms.size else math.inf,
        "p99_ms": float(np.percentile(lat_ms, 99)) if lat_ms.size else math.inf,
        "ok_p99_ms": float(np.percentile(ok_ms, 99)) if ok_ms.size else math.nan,
        "timeouts": int((phase.status == TIMEOUT).sum()),
        "conn_errors": int((phase.status == CONN_ERROR).sum()),
        "not_sent": int((~sent).sum()),
        "503": int(shed.sum()),
        "fast_503": int(fast_shed.sum()),
        "other_errors": int((sent & ~ok & ~shed & (phase.status > 0)).sum()),
        "lag_p99_ms": float(np.percentile(phase.lag, 99) * 1000),
        "generator_cpu": phase.cpu_s / phase.seconds,
        "achieved_rate": n / phase.seconds,
        "errors": phase.errors,
    }


def holds(s: dict) -> bool:
    return s["ok"] == s["requests"] and s["p99_ms"] <= TARGET_P99_MS


def fmt_rate(s: dict) -> str:
    failures = s["requests"] - s["ok"]
    return (
        f"{s['rate']:.0f}/s x {s['seconds']:.3g} s: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
        f"{failures} not 200 ({s['timeouts']} timeouts, {s['503']} 503, {s['other_errors']} other, "
        f"{s['conn_errors']} conn, {s['not_sent']} not sent), generator lag p99 "
        f"{s['lag_p99_ms']:.1f} ms, generator CPU {pct(s['generator_cpu'], 0)}"
        + "".join(f"; first {k}: {v}" for k, v in s["errors"].items() if k != "503")
    )


# -- the phases -----------------------------------------------------------------------------
@dataclass
class Driver:
    """One server's URL, bodies and the generator's bounds."""

    server: Server
    http: aiohttp.ClientSession
    url: str
    bodies: dict[str, list[bytes]]
    args: argparse.Namespace

    async def phase(self, kind: str, rate: float, seconds: float) -> Phase:
        a = self.args
        return await open_loop(
            self.http,
            self.url,
            self.bodies[kind],
            rate,
            seconds,
            a.timeout,
            a.max_inflight,
            "application/json",
        )

    async def settle(self) -> float:
        """Seconds until 3 lone requests in a row are answered 200 within the target."""
        check_running(self.server)
        loop = asyncio.get_running_loop()
        began, good = loop.time(), 0
        timeout = aiohttp.ClientTimeout(total=self.args.timeout)
        headers = {"Content-Type": "application/json"}
        while good < 3 and loop.time() - began < self.args.settle_max:
            lat, status, _, _ = await fire(
                self.http, self.url, self.bodies["one"][0], headers, timeout, loop.time(), loop
            )
            good = good + 1 if status == 200 and lat * 1000 <= TARGET_P99_MS else 0
            await asyncio.sleep(0.2)
        return loop.time() - began

    def step_seconds(self, rate: float) -> float:
        """A step lasts --step-seconds, longer at low rates: p99 needs --step-requests requests."""
        return max(self.args.step_seconds, self.args.step_requests / rate)

    async def search(self, kind: str) -> dict:
        """The highest rate that holds: a ladder from --search-start, then one bisection, then a
        confirmation. The rate found must hold again in a later window, else the next lower rate
        that held is tried: the machine's speed changes by up to 2x within minutes, and one fast
        window must not set the rates the overload, the soak and the switch run at."""
        a, steps = self.args, []
        rate, best, worst = a.search_start, 0.0, None
        while rate <= a.search_max:
            if not await self.step(kind, rate, steps):
                worst = rate
                break
            best, rate = rate, rate * LADDER_FACTOR
        if best and worst:
            mid = math.sqrt(best * worst)
            best = mid if await self.step(kind, mid, steps) else best
        found, capacity = best, 0.0
        for rate in sorted({s["rate"] for s in steps if holds(s) and s["rate"] <= best})[::-1]:
            if await self.step(kind, rate, steps, confirm=True):
                capacity = rate
                break
        return {"capacity": capacity, "found": found, "steps": steps, "ceiling": worst is None}

    async def step(self, kind: str, rate: float, steps: list[dict], confirm: bool = False) -> bool:
        """Whether `rate` holds; a failing step is run once more (the cores are shared with other
        jobs, and one stall of theirs must not end the search), and holds if the second does."""
        for attempt in range(2):
            s = summarize(await self.phase(kind, rate, self.step_seconds(rate)))
            s["confirm"] = confirm
            steps.append(s)
            label = f"{kind}{' confirm' if confirm else ''}{' (again)' if attempt else ''}"
            print(f"    {label}: {fmt_rate(s)}", flush=True)
            await self.settle()
            if holds(s):
                return True
        return False

    async def overload(self, capacity: float) -> dict:
        """Twice the capacity, then half of it at once: shedding, and the time to recover."""
        a = self.args
        high = await self.phase("one", 2 * capacity, a.overload_seconds)
        after = await self.phase("one", capacity / 2, a.recovery_seconds)
        recovery = recovery_seconds(after)
        print(f"    overload: {fmt_rate(summarize(high))}", flush=True)
        print(f"    after it: {fmt_rate(summarize(after))}; recovered in {recovery} s", flush=True)
        settle = await self.settle()
        return {
            "high": summarize(high),
            "after": summarize(after),
            "recovery_s": recovery,
            "settle_s": settle,
        }

    async def switch(self, rate: float, seconds: float) -> dict:
        """`rate` for `seconds`; a quarter of the way in, `@champion` moves to a new version (the
        same model registered again): when the new version answers, and what failed meanwhile."""
        loop = asyncio.get_running_loop()
        began = loop.time() + 0.05  # the phase's start, as `open_loop` sets it
        sending = asyncio.create_task(self.phase("one", rate, seconds))
        await asyncio.sleep(seconds / 4)
        old, new = await asyncio.to_thread(move_champion)
        moved = loop.time() - began
        phase = await sending
        s = summarize(phase)
        answered = phase.due + phase.latency
        ok = phase.status == 200
        new_at = answered[ok & (phase.version == int(new))]
        old_at = answered[ok & (phase.version == int(old))]
        result = {
            "summary": s,
            "old": old,
            "new": new,
            "moved_s": moved,
            "first_new_s": float(new_at.min() - moved) if new_at.size else None,
            "last_old_s": float(old_at.max() - moved) if old_at.size else None,
            "unversioned": int((ok & (phase.version < 0)).sum()),
        }
        print(
            f"    alias moved {old} -> {new} at {moved:.1f} s: first answer of {new} "
            f"{result['first_new_s']} s later; {fmt_rate(s)}",
            flush=True,
        )
        return result

    async def soak(self, rate: float, seconds: float, pid: int) -> dict:
        """`rate` for `seconds`, the server's resident memory sampled every few seconds."""
        samples: list[tuple[float, float]] = []
        began = time.perf_counter()

        async def sample() -> None:
            while True:
                samples.append((time.perf_counter() - began, rss_mib(pid)))
                await asyncio.sleep(max(1.0, seconds / 60))

        sampler = asyncio.create_task(sample())
        try:
            phase = await self.phase("one", rate, seconds)
        finally:
            sampler.cancel()
        samples.append((time.perf_counter() - began, rss_mib(pid)))
        s = summarize(phase)
        print(f"    soak: {fmt_rate(s)}; RSS {samples[0][1]:.0f} -> {samples[-1][1]:.0f} MiB")
        return {"summary": s, "rss": samples}


def move_champion() -> tuple[str, str]:
    """Registers the champion's model again and points `@champion` at the new version."""
    client = MlflowClient()
    old = client.get_model_version_by_alias(MODEL_NAME, "champion")
    new = client.create_model_version(MODEL_NAME, old.source, old.run_id)
    client.set_registered_model_alias(MODEL_NAME, "champion", new.version)
    return str(old.version), str(new.version)


def recovery_seconds(after: Phase) -> float | None:
    """End of the first window after which every window's p99 is under target and all are 200."""
    windows = int(math.ceil(after.seconds / WINDOW_S))
    good = []
    for w in range(windows):
        inside = (after.due >= w * WINDOW_S) & (after.due < (w + 1) * WINDOW_S)
        lat, status = after.latency[inside], after.status[inside]
        fine = bool(inside.any()) and (status == 200).all()
        good.append(fine and float(np.nanpercentile(lat, 99)) * 1000 <= TARGET_P99_MS)
    for w in range(windows):
        if all(good[w:]):
            return w * WINDOW_S
    return None


async def probe_bad(base: str, bad, good_body: bytes, timeout) -> list:
    """Each malformed request's status and the start of its answer, then a good request.

    A fresh connection for every request: a server that drops the connection of a bad request
    must not make the good one after it fail on a pooled connection."""
    out = []
    url = f"{base}/invocations"
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for name, body, _ in bad:
            began = time.perf_counter()
            try:
                async with http.post(url, data=body, headers=JSON, timeout=timeout) as resp:
                    text = (await resp.read())[:160].decode(errors="replace")
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as err:
                status, text = type(err).__name__, ""
            spent = (time.perf_counter() - began) * 1000
            alive, _ = await answer(http, url, good_body, timeout)
            out.append(
                {
                    "name": name,
                    "status": status,
                    "ms": spent,
                    "answer": " ".join(text.split()),
                    "alive": alive == 200,
                }
            )
            print(f"    bad request {name}: {status}, still answers: {alive == 200}", flush=True)
    return out


async def answer(http, url: str, body: bytes, timeout) -> tuple[int | str, str]:
    """One request's status (or error name) and the start of its answer."""
    try:
        async with http.post(url, data=body, headers=JSON, timeout=timeout) as resp:
            return resp.status, (await resp.read())[:300].decode(errors="replace")
    except (TimeoutError, aiohttp.ClientError) as err:
        return type(err).__name__, str(err)[:300]


async def measure_server(server: Server, bodies: dict, bad, args) -> dict:
    """Every phase against one running server."""
    # the generator's own objects (the bodies, MLflow, pandas) set aside from its garbage
    # collector: a full collection stalls it for about half a second, which would be counted as
    # the server's latency
    gc.collect()
    gc.freeze()
    base = f"http://127.0.0.1:{server.port}"
    # idle connections are dropped before uvicorn's 5-s keep-alive closes them from its side, so a
    # request never goes out on a connection the server is closing (a client artefact, not the server's)
    connector = aiohttp.TCPConnector(limit=args.max_inflight, keepalive_timeout=2)
    async with aiohttp.ClientSession(connector=connector) as http:
        drv = Driver(server, http, base + server.invoke_path, bodies[server.body_kind], args)
        res: dict = {"rss_ready": rss_mib(server.proc.pid), "load_before": os.getloadavg()[0]}
        for i in range(args.warmup):
            status, text = await answer(http, drv.url, drv.bodies["one"][i % 7], WARMUP_TIMEOUT)
            if status != 200:  # a server that cannot score the bodies has no numbers to give
                raise RuntimeError(f"{server.invoke_path} answers {status}: {text}")
        print(f"  fixed rate {args.rate:g}/s for {args.duration:g} s ...", flush=True)
        res["fixed"] = summarize(await drv.phase("one", args.rate, args.duration))
        print(f"    {fmt_rate(res['fixed'])}", flush=True)
        res["fixed_settle_s"] = await drv.settle()
        print("  capacity search ...", flush=True)
        res["search_one"] = await drv.search("one")
        res["search_big"] = await drv.search("big")
        # the rate shown to hold: the search's, or the fixed rate's when that held and a noisy
        # search window found less (twice a rate the server is not at is no overload)
        capacity = res["search_one"]["capacity"] or args.search_start
        if holds(res["fixed"]):
            capacity = max(capacity, args.rate)
        res["capacity_used"] = capacity
        res["overload"] = await drv.overload(capacity)
        soak_s = args.soak_seconds if server.key in OWN else args.soak_others
        print(f"  soak at {capacity / 2:.0f}/s for {soak_s:g} s ...", flush=True)
        res["soak"] = await drv.soak(capacity / 2, soak_s, server.proc.pid)
        if server.key in OWN:
            print(f"  alias switch at {capacity / 2:.0f}/s for {args.switch_seconds:g} s ...")
            res["switch"] = await drv.switch(capacity / 2, args.switch_seconds)
        await drv.settle()
        timeout = aiohttp.ClientTimeout(total=max(args.timeout, 30))
        good = bodies["mlflow"]["one"][0]
    res["bad"] = await probe_bad(base, bad, good, timeout)
    res["exit_code"] = server.proc.poll()
    res["load_after"] = os.getloadavg()[0]
    return res


# -- report ---------------------------------------------------------------------------------
def ms(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "> timeout" if math.isinf(x) else f"{x:.1f}"


def ratio(x: float, base: float | None) -> str:
    return f"{x / base:.2f}x" if base else "-"


def growth(soak: dict) -> float:
    first, last = soak["rss"][0][1], soak["rss"][-1][1]
    return (last - first) / first if first else math.nan


def summary_table(results: dict, servers: dict[str, Server], args) -> list[str]:
    base = results.get("mlflow1")
    b1 = base["search_one"]["capacity"] if base and "search_one" in base else None
    b20 = base["search_big"]["capacity"] if base and "search_big" in base else None
    lines = [
        f"| server | 1-session capacity (req/s) | vs mlflow 1 worker | {BIG_SESSIONS}-session "
        f"capacity (req/s) | vs mlflow 1 worker | {args.rate:g}/s for {args.duration:g} s: "
        "p50 / p99 ms | not 200 (timeouts, 503) | overload: fast 503 share | overload: accepted "
        "p99 ms | recovery s | soak RSS MiB start -> end | bad requests: codes | still answers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for key, res in results.items():
        label = servers[key].label
        if "error" in res:
            lines.append(f"| {label} | {res['error']} |" + " |" * 11)
            continue
        c1, c20 = res["search_one"], res["search_big"]
        fx, ov = res["fixed"], res["overload"]
        high = ov["high"]
        rss = res["soak"]["rss"]
        codes = ", ".join(str(b["status"]) for b in res["bad"])
        alive = "yes" if all(b["alive"] for b in res["bad"]) else "**no**"
        rec = ov["recovery_s"]
        lines.append(
            f"| {label} | {cap(c1)} | {ratio(c1['capacity'], b1)} | {cap(c20)} "
            f"| {ratio(c20['capacity'], b20)} | {ms(fx['p50_ms'])} / {ms(fx['p99_ms'])} "
            f"| {fx['requests'] - fx['ok']} ({fx['timeouts']}, {fx['503']}) "
            f"| {pct(high['fast_503'] / high['requests'], 0)} | {ms(high['ok_p99_ms'])} "
            f"| {'> ' + format(args.recovery_seconds, 'g') if rec is None else f'{rec:g}'} "
            f"| {rss[0][1]:.0f} -> {rss[-1][1]:.0f} ({growth(res['soak']):+.1%}) "
            f"| {codes} | {alive} |"
        )
    return lines


def cap(search: dict) -> str:
    if not search["capacity"]:
        return "< " + format(search["steps"][0]["rate"], ".0f")
    text = f"{search['capacity']:.0f}" + (" (ladder top)" if search["ceiling"] else "")
    found = search.get("found", search["capacity"])
    if found > search["capacity"]:  # the ladder's best did not hold again
        text += f" (held once at {found:.0f})"
    return text


def detail(key: str, res: dict, server: Server, args) -> list[str]:
    lines = [f"#### {server.label}", "", f"`{' '.join(server.argv[1:])}`", ""]
    lines += [f"- {note}" for note in server.notes]
    sw = res.get("switch")
    if sw:
        first = "never" if sw["first_new_s"] is None else f"{sw['first_new_s']:.1f} s"
        last = "-" if sw["last_old_s"] is None else f"{sw['last_old_s']:.1f} s"
        lines.append(
            f"- alias switch under load (`serve.follow_interval_s={FOLLOW_INTERVAL_S:g}`): "
            f"`@champion` moved from version {sw['old']} to {sw['new']} {sw['moved_s']:.1f} s "
            f"into a {sw['summary']['seconds']:g}-s phase at {sw['summary']['rate']:.0f}/s; "
            f"the first answer of version {sw['new']} came {first} after the move, the last of "
            f"version {sw['old']} {last} after it; {sw['summary']['requests'] - sw['summary']['ok']}"
            f" requests not 200, {sw['unversioned']} answers without a version"
        )
    if "error" in res:
        return [*lines, f"- not measured: {res['error']}", ""]
    lines += [
        f"- ready after {res['ready_s']:.1f} s; resident memory when ready "
        f"{res['rss_ready']:.0f} MiB (the server's processes together)",
        f"- machine load average (1 min) {res['load_before']:.1f} before, "
        f"{res['load_after']:.1f} after (other jobs on the 2 cores)",
        f"- fixed rate: {fmt_rate(res['fixed'])}; lone requests fast again after "
        f"{res['fixed_settle_s']:.1f} s",
        "",
        "| phase | rate (req/s) | p50 ms | p99 ms | accepted p99 ms | not 200 | timeouts | 503 "
        "(fast, Retry-After) | other 4xx/5xx | not sent | generator lag p99 ms | generator CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("fixed", res["fixed"])]
    for sessions, search in ((1, res["search_one"]), (BIG_SESSIONS, res["search_big"])):
        rows += [
            (
                f"{sessions}-session {'confirm' if s.get('confirm') else 'step'}"
                + (" holds" if holds(s) else ""),
                s,
            )
            for s in search["steps"]
        ]
    rows += [
        ("overload (2x)", res["overload"]["high"]),
        ("after overload (0.5x)", res["overload"]["after"]),
    ]
    rows += [("soak (0.5x)", res["soak"]["summary"])]
    sw = res.get("switch")
    if sw:
        rows += [(f"alias moved {sw['old']} -> {sw['new']} (0.5x)", sw["summary"])]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['rate']:.0f} | {ms(s['p50_ms'])} | {ms(s['p99_ms'])} "
            f"| {ms(s['ok_p99_ms'])} | {s['requests'] - s['ok']} | {s['timeouts']} "
            f"| {s['503']} ({s['fast_503']}) | {s['other_errors']} | {s['not_sent']} "
            f"| {s['lag_p99_ms']:.1f} | {pct(s['generator_cpu'], 0)} |"
        )
    seen = {}
    for name, s in rows:
        for kind, text in s["errors"].items():
            seen.setdefault(kind, (name, text))
    if seen:
        lines += ["", "First answer of each kind of failure:", ""]
        lines += [f"- {kind} ({name}): `{text}`" for kind, (name, text) in seen.items()]
    lines += [
        "",
        "| bad request | status | ms | answer (start) | answers a good request after |",
        "|---|---:|---:|---|---|",
    ]
    for b in res["bad"]:
        answer = b["answer"].replace("|", "\\|")[:100]
        lines.append(
            f"| {b['name']} | {b['status']} | {b['ms']:.0f} | `{answer}` "
            f"| {'yes' if b['alive'] else '**no**'} |"
        )
    return [*lines, ""]


def verdicts(res: dict, args) -> dict[str, str]:
    """The issue's targets, checked for the project's server."""
    fx, ov, high = res["fixed"], res["overload"], res["overload"]["high"]
    shed = high["requests"] - high["ok"]
    rec = ov["recovery_s"]
    all_shed_fast = high["timeouts"] == 0 and high["fast_503"] == shed
    bad_ok = all(
        isinstance(b["status"], int) and 400 <= b["status"] < 500 and b["alive"] for b in res["bad"]
    )
    checks = {
        f"{args.rate:g}/s one-session: p99 <= {TARGET_P99_MS:g} ms, every request 200": holds(fx),
        "overload: every request beyond capacity a fast 503 with Retry-After": all_shed_fast,
        f"overload: accepted p99 <= {TARGET_OVERLOAD_P99_MS:g} ms": high["ok_p99_ms"]
        <= TARGET_OVERLOAD_P99_MS,
        f"back to normal within {TARGET_RECOVERY_S:g} s": rec is not None
        and rec <= TARGET_RECOVERY_S,
        f"soak: RSS grows < {TARGET_SOAK_GROWTH:.0%}": growth(res["soak"]) < TARGET_SOAK_GROWTH,
        f"alias moved under load: the new version answers within {TARGET_SWITCH_S:g} s, no "
        "failed request, every answer names its version": switched(res.get("switch")),
        "bad requests: a 4xx each, and the server answers after each": bad_ok,
    }
    return {name: "PASS" if ok else "FAIL" for name, ok in checks.items()}


def cpu_per_request(s: dict) -> float:
    """The generator's CPU seconds per request of a phase: the same code doing the same work per
    request, so at one rate it gauges how fast the shared machine ran."""
    return s["generator_cpu"] * s["seconds"] / max(s["requests"], 1)


def machine_speed(res: dict) -> str | None:
    """How much slower the machine ran in the soak and the alias switch than in the phase at the
    same rate just after the overload (its 0.5x), by the generator's CPU per request."""
    base = cpu_per_request(res["overload"]["after"])
    if not base:
        return None
    phases = [("the soak", res["soak"]["summary"])]
    if res.get("switch"):
        phases.append(("the alias switch", res["switch"]["summary"]))
    slower = ", ".join(f"{cpu_per_request(s) / base:.2f}x in {name}" for name, s in phases)
    return (
        "machine speed: the generator's CPU per request against the phase at the same rate just "
        f"after the overload: {slower} (the same work per request, so well above 1x means the "
        "shared machine ran slower, not only the server)"
    )


def switched(sw: dict | None) -> bool:
    if not sw or sw["first_new_s"] is None:
        return False
    s = sw["summary"]
    return (
        sw["first_new_s"] <= TARGET_SWITCH_S and s["ok"] == s["requests"] and not sw["unversioned"]
    )


def render(results, servers, skipped, setup, args, command, meta) -> str:
    lines = [
        "## Serving: real-time scoring under load",
        "",
        f"`{command}`",
        "",
        *meta,
        "- the load generator (asyncio + aiohttp, one process, open loop) shares the 2 cores "
        "with the server: read ratios between servers of this run, not absolute rates",
        f"- model: {MODEL_NAME} version {setup['version']} `@champion` in a temporary SQLite "
        f"store, trained on {setup['rows']:,} synthetic sessions ({setup['trees']} trees, test "
        f"accuracy {setup['accuracy']:.3f}), its trees compiled once and found compiled by every "
        "server",
        f"- a rate holds when every request is answered 200 and p99 <= {TARGET_P99_MS:g} ms "
        "(latency from each request's due time, so queueing counts; timeouts count as the "
        f"timeout); ladder from {args.search_start:g}/s by x{LADDER_FACTOR:g} (a failing step "
        "is run once more and counts if it holds then), "
        f"{args.step_seconds:g} s a step, then one bisection; request timeout {args.timeout:g} s,"
        f" at most {args.max_inflight} in flight",
        "- capacity, for the phases below: the one-session capacity found, or the fixed rate when "
        "that held and the search found less",
        f"- overload: 2x the capacity for {args.overload_seconds:g} s, then 0.5x for "
        f"{args.recovery_seconds:g} s; a fast 503 has Retry-After and comes within "
        f"{FAST_503_MS:g} ms of being sent; recovery = the first {WINDOW_S:g}-s window after which every "
        f"window is all 200 with p99 <= {TARGET_P99_MS:g} ms",
        f"- soak at 0.5x the capacity: {args.soak_seconds:g} s for `micromoment serve`, "
        f"{args.soak_others:g} s for the others; RSS of the server's process tree",
        *[f"- skipped: {line}" for line in skipped],
        "",
        "### Summary",
        "",
        *summary_table(results, servers, args),
        "",
    ]
    for key in OWN:
        own = results.get(key)
        if own and "error" not in own:
            lines += [f"Targets of the issue for {servers[key].label}:", ""]
            lines += [f"- {name}: **{v}**" for name, v in verdicts(own, args).items()]
            speed = machine_speed(own)
            lines += [f"- {speed}", ""] if speed else [""]
    lines += ["### Each server", ""]
    for key, res in results.items():
        lines += detail(key, res, servers[key], args)
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------
def plan_servers(args, bin_dir: Path, tmp: Path, tracking_uri: str) -> tuple[dict, list[str]]:
    servers, skipped = {}, []
    for key in args.servers:
        if key in ("mlflow1", "mlflow2"):
            servers[key] = mlflow_server(int(key[-1]), bin_dir)
        elif key.startswith("mlserver"):
            venv = args.mlserver_venv
            if venv is None or not (venv / "bin" / "mlserver").exists():
                skipped.append(
                    f"{key}: no MLServer (pass --mlserver-venv, a virtualenv with "
                    "mlserver, mlserver-mlflow and this project installed)"
                )
                continue
            servers[key] = mlserver_server(key, venv, tmp, args)
        elif key in OWN:
            server = project_server(bin_dir, tmp, tracking_uri, 2 if key.endswith("2") else 1)
            if server is None:
                skipped.append(f"{key}: this checkout cannot run it (`micromoment serve`)")
                continue
            servers[key] = server
    return servers, skipped


def prepare(tmp: Path, args) -> tuple[dict, dict, list]:
    """The registered champion, its compiled trees, the request bodies and the bad requests."""
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ[compiled.CACHE_ENV] = str(tmp / "compiled")
    print(f"training on ~{args.train_sessions:,} sessions ...", flush=True)
    generate_sessions(args.train_sessions, tmp / "train", args.seed, posterior=False)
    setup = train_and_register(tmp / "train", tmp, tracking_uri)
    model, _ = load_scorer(MODEL_URI, 1)
    if args.compiled_trees:
        print(f"compiling the champion's trees: {model.use_compiled_trees()}", flush=True)
    frame = request_frame(
        generate_sessions(5_000, tmp / "requests", args.seed + 1, posterior=False)["path"]
    )
    bodies = {
        "mlflow": build_bodies(frame, args.bodies, args.seed, mlflow_body),
        "v2": build_bodies(frame, args.bodies, args.seed, v2_body),
    }
    return setup, bodies, bad_requests(frame)


def run(args) -> tuple[dict, dict, list[str], dict]:
    bin_dir = Path(sys.executable).parent
    if args.tmp_dir:
        args.tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_serving_", dir=args.tmp_dir) as tmp_name:
        tmp = Path(tmp_name)
        setup, bodies, bad = prepare(tmp, args)
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        env["MICROMOMENT_COMPILED_TREES"] = "auto" if args.compiled_trees else "0"
        servers, skipped = plan_servers(args, bin_dir, tmp, env["MLFLOW_TRACKING_URI"])
        for line in skipped:
            print(f"skipped {line}", flush=True)
        results = {}
        for key, server in servers.items():
            print(f"{server.label} ...", flush=True)
            try:
                ready = start(server, env, tmp, args.start_timeout)
                print(f"  ready after {ready:.1f} s", flush=True)
                results[key] = asyncio.run(measure_server(server, bodies, bad, args))
                results[key]["ready_s"] = ready
            except Exception as err:  # one server failing must not hide the others' numbers
                print(f"  {key} failed: {err}", flush=True)
                why = " ".join(str(err).split()).replace("|", "/")[-400:]
                results[key] = {"error": f"{type(err).__name__}: {why}"}
            finally:
                stop(server)
            if args.keep_logs and server.log:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                (args.keep_logs / server.log.name).write_text(tail(server, 200_000))
    return results, servers, skipped, setup


QUICK = {
    "train_sessions": 10_000,
    "duration": 8.0,
    "step_seconds": 3.0,
    "step_requests": 60,
    "overload_seconds": 4.0,
    "recovery_seconds": 8.0,
    "soak_seconds": 20.0,
    "soak_others": 15.0,
    "switch_seconds": 12.0,
    "timeout": 2.0,
    "settle_max": 20.0,
    "bodies": 200,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Real-time scoring under a bounded open-loop load over loopback: "
        "mlflow models serve (1 and 2 workers), MLServer, micromoment serve."
    )
    add = p.add_argument
    add(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated, of {', '.join(SERVERS)} (default: all; absent ones are skipped)",
    )
    add("--rate", type=float, default=300.0, help="fixed one-session rate, req/s (default 300)")
    add("--duration", type=float, default=60.0, help="seconds at the fixed rate (default 60)")
    add("--search-start", type=float, default=10.0, help="first ladder rate (default 10)")
    add("--search-max", type=float, default=3000.0, help="ladder stops above (default 3000)")
    add("--step-seconds", type=float, default=8.0, help="seconds per ladder step (default 8)")
    add(
        "--step-requests",
        type=int,
        default=200,
        help="a ladder step lasts until it has sent this many requests at least (default 200)",
    )
    add("--overload-seconds", type=float, default=15.0, help="at 2x capacity (default 15)")
    add("--recovery-seconds", type=float, default=15.0, help="at 0.5x after it (default 15)")
    add(
        "--soak-seconds",
        type=float,
        default=600.0,
        help="soak of micromoment serve at half capacity (default 600)",
    )
    add("--soak-others", type=float, default=60.0, help="soak of the other servers (default 60)")
    add(
        "--switch-seconds",
        type=float,
        default=20.0,
        help="micromoment serve at half capacity while @champion moves (default 20)",
    )
    add("--timeout", type=float, default=5.0, help="per-request timeout, s (default 5)")
    add("--max-inflight", type=int, default=512, help="outstanding requests at most (default 512)")
    add("--settle-max", type=float, default=60.0, help="wait for a server to drain (default 60)")
    add("--start-timeout", type=float, default=180.0, help="wait for readiness (default 180)")
    add("--warmup", type=int, default=30, help="sequential requests before measuring")
    add("--bodies", type=int, default=1000, help="distinct bodies of each size (default 1000)")
    add("--train-sessions", type=int, default=50_000, help="sessions to train on (default 50000)")
    add(
        "--no-compiled-trees",
        dest="compiled_trees",
        action="store_false",
        help="serve with LightGBM's predict instead of the compiled trees",
    )
    add(
        "--mlserver-venv",
        type=Path,
        default=os.environ.get("MLSERVER_VENV"),
        help="virtualenv with mlserver + mlserver-mlflow + this project ($MLSERVER_VENV)",
    )
    add("--mlserver-workers", type=int, default=1, help="MLServer parallel_workers (default 1)")
    add("--mlserver-batch", type=int, default=32, help="MLServer max_batch_size (default 32)")
    add("--mlserver-batch-ms", type=float, default=5.0, help="MLServer max_batch_time, ms")
    add(
        "--quick",
        action="store_true",
        help="a few-minute smoke run: "
        + ", ".join(f"{k.replace('_', '-')}={v:g}" for k, v in QUICK.items()),
    )
    add("--seed", type=int, default=11)
    add("--tmp-dir", type=Path, default=None)
    add("--keep-logs", type=Path, default=None, help="copy each server's log here")
    add("--out", type=Path, default=DEFAULT_RESULTS, help="results file (bench/RESULTS.md)")
    add("--section", default="bench_serving")
    args = p.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        for key, value in QUICK.items():
            if f"--{key.replace('_', '-')}" not in given:
                setattr(args, key, value)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        p.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    if args.mlserver_venv is not None:
        args.mlserver_venv = Path(args.mlserver_venv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = run_metadata()
    began = time.perf_counter()
    results, servers, skipped, setup = run(args)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    report = render(results, servers, skipped, setup, args, command, meta)
    print("\n" + report, flush=True)
    print(f"(benchmark took {(time.perf_counter() - began) / 60:.1f} min)", flush=True)
    path = write_section(args.out, args.section, report)
    print(f"wrote section {args.section!r} of {path}", flush=True)
    own = [results[key] for key in OWN if key in results]  # none asked for: nothing to judge
    if any("error" in res for res in own):
        return 1
    return 0 if all(v == "PASS" for res in own for v in verdicts(res, args).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
