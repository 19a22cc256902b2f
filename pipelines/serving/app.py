"""The real-time scorer: a Starlette app speaking MLflow's `/invocations` format.

`POST /invocations` takes sessions as `mlflow models serve` does (JSON with one of
`dataframe_split`, `dataframe_records`, `instances` or `inputs`, and optional `params`
such as `{"explain": 3}`; or CSV; or parquet) and answers `{"predictions": [...]}`, one record
per session, with the model's name and version in every record and in the `X-Model-Name` and
`X-Model-Version` headers. Concurrent requests are scored together (`serving.batcher`).

Errors are one line of JSON (`{"error_code": ..., "message": ...}`, MLflow's shape) naming the
problem: 400 for a body that cannot be read or sessions the contract refuses (the column and its
values), 413 for a body over `max_body_bytes` (refused while it is read, never held whole), 415
for a content type other than JSON, CSV or parquet, 503 with `Retry-After` when the queue is full,
the deadline passed or no model is loaded yet. Bad input never gets a 500.

`GET /health` answers while the process is up; `GET /ready` once a model is loaded (503 before),
with the model's name, version and alias and the batching counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from dataclasses import dataclass

import pandas as pd
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from pipelines.config.schema import ServeBlock
from pipelines.core.contract import ContractError
from pipelines.core.scorer import check_explain
from pipelines.serving.batcher import (
    Batcher,
    Overloaded,
    TimedOut,
    batch_ids,
    batch_key,
    predict_together,
)
from pipelines.serving.follower import Follower, Served

log = logging.getLogger(__name__)

JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# a body over the limit is read to its end and dropped (a client still sending would otherwise
# see a reset connection instead of the 413), unless it says it is larger than this
DRAIN_MAX_BYTES = 64 * 1024 * 1024
# bodies up to this are parsed on the event loop (a thread hop costs more than parsing them)
PARSE_INLINE_BYTES = 64 * 1024


class BadRequest(Exception):
    """A request refused with `status` and a one-line `message`."""

    def __init__(self, status: int, message: str, code: str = "BAD_REQUEST"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Answer:
    """What the prediction thread made of one request."""

    status: int
    body: bytes
    served: Served


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": " ".join(message.split())}).encode()


def content_kind(header: str | None) -> str:
    """The media type of a Content-Type header, refusing (415) what the server cannot read."""
    if not header:
        raise BadRequest(415, f"no Content-Type: send {JSON}, {CSV} or {PARQUET}", "UNSUPPORTED")
    kind, *params = (p.strip() for p in header.split(";"))
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            raise BadRequest(
                415,
                f"unsupported Content-Type parameter {param!r} (only charset=utf-8)",
                "UNSUPPORTED",
            )
    if kind.lower() not in (JSON, CSV, PARQUET):
        raise BadRequest(
            415,
            f"unsupported Content-Type {kind!r}: send {JSON}, {CSV} or {PARQUET}",
            "UNSUPPORTED",
        )
    return kind.lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit` bytes: the rest is read and dropped,
    never held, and a body declared larger than `DRAIN_MAX_BYTES` is not read at all."""
    declared = request.headers.get("content-length", "")
    too_big = BadRequest(
        413, f"request body over {limit} bytes (serve.max_body_bytes)", "TOO_LARGE"
    )
    if declared.isdigit() and int(declared) > max(limit, DRAIN_MAX_BYTES):
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            chunks = []
            if size > DRAIN_MAX_BYTES:
                break
        else:
            chunks.append(chunk)
    if size > limit:
        raise too_big
    body = b"".join(chunks)
    if not body.strip():
        raise BadRequest(
            400, f"empty request body: send sessions as JSON ({', '.join(FORMATS)}) or CSV"
        )
    return body


def frame_of(kind: str, body: bytes) -> tuple[pd.DataFrame, int]:
    """The sessions of a request and the number of reasons asked for (`params.explain`)."""
    if kind == CSV:
        return _read(pd.read_csv, body, "CSV"), 0
    if kind == PARQUET:
        return _read(pd.read_parquet, body, "parquet"), 0
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, too deep
        raise BadRequest(400, f"invalid JSON: {type(err).__name__}: {err}") from None
    if not isinstance(doc, dict):
        raise BadRequest(
            400,
            f"the body must be a JSON object with one of {list(FORMATS)}, got a {type(doc).__name__}",
        )
    keys = [k for k in FORMATS if k in doc]
    if len(keys) != 1:
        raise BadRequest(
            400, f"the body must hold exactly one of {list(FORMATS)}; got keys {sorted(doc)[:10]}"
        )
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest(400, f"params must be a JSON object, got {type(params).__name__}")
    try:
        explain = check_explain(params.get("explain"))
    except ValueError as err:
        raise BadRequest(400, f"params: {err}") from None
    return frame_from_json(keys[0], doc[keys[0]]), explain


def _read(reader, body: bytes, what: str) -> pd.DataFrame:
    try:
        return reader(io.BytesIO(body))
    except Exception as err:  # any parser error is the body's
        raise BadRequest(
            400, f"the body is not readable {what}: {type(err).__name__}: {err}"
        ) from None


def frame_from_json(key: str, data) -> pd.DataFrame:
    """A frame from one of MLflow's JSON input formats, built as MLflow's scoring server does."""
    try:
        if key == "dataframe_split":
            if (
                not isinstance(data, dict)
                or "data" not in data
                or set(data) - {"columns", "data", "index"}
            ):
                raise BadRequest(
                    400,
                    "dataframe_split must be an object with 'data' and optionally 'columns' and 'index'",
                )
            return pd.DataFrame(
                index=data.get("index"), columns=data.get("columns"), data=data["data"]
            )
        if key == "inputs" and isinstance(data, dict):
            scalar = all(not isinstance(v, list) for v in data.values())
            return pd.DataFrame([data] if scalar else data)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise BadRequest(400, f"{key} must be a list of records (objects), one per session")
        return pd.DataFrame(data)
    except BadRequest:
        raise
    except Exception as err:  # pandas refusing the shape (ragged rows, mismatched columns)
        raise BadRequest(400, f"{key} is not a table: {type(err).__name__}: {err}") from None


def prepare(kind: str, body: bytes, served: Served) -> tuple[pd.DataFrame, int, tuple, frozenset]:
    """A request's sessions, the reasons asked for, and what decides which batch it may join."""
    frame, explain = frame_of(kind, body)
    spec = served.model.spec.columns
    ids = batch_ids(frame, [spec.get("session_id"), spec.get("journey_id")])
    return frame, explain, batch_key(frame, explain), ids


def predictions_json(frame: pd.DataFrame) -> bytes:
    """`{"predictions": [records]}` as `mlflow models serve` writes it (missing values null)."""
    names = [str(c) for c in frame.columns]
    cols = [frame[c].to_numpy(dtype=object, na_value=None) for c in frame.columns]
    records = [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)]
    return json.dumps({"predictions": records}).encode()


def answer(served: Served, outcome: pd.DataFrame | Exception) -> Answer:
    """A request's answer: its predictions, or a 400 naming what the model could not read."""
    if isinstance(outcome, pd.DataFrame):
        return Answer(200, predictions_json(outcome), served)
    if isinstance(outcome, ContractError | ValueError):
        return Answer(400, error_body("BAD_REQUEST", str(outcome)), served)
    log.error("a request could not be scored", exc_info=outcome)
    message = f"the model could not score this input ({type(outcome).__name__}: {outcome})"
    return Answer(400, error_body("BAD_REQUEST", message), served)


class ScoringServer:
    """The app's state: the settings, the follower that holds the model, the batcher."""

    def __init__(self, settings: ServeBlock, follower: Follower):
        self.settings = settings
        self.follower = follower
        self.batcher = Batcher(
            self.run_batch,
            max_batch_rows=settings.max_batch_rows,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            timeout_ms=settings.timeout_ms,
        )

    def run_batch(self, items: list[tuple[pd.DataFrame, int]]) -> list[Answer]:
        """One predict call for the batch (in the prediction thread), on one model."""
        served = self.follower.current
        explain = items[0][1]
        outcomes = predict_together(lambda f: served.predict(f, explain), [f for f, _ in items])
        return [answer(served, o) for o in outcomes]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        self.batcher.start()
        self.follower.start()
        try:
            yield
        finally:
            self.follower.stop()
            await self.batcher.stop()

    def response(
        self, status: int, body: bytes, served: Served | None = None, retry: bool = False
    ) -> Response:
        headers = {}
        served = served or self.follower.current
        if served is not None:
            headers["X-Model-Name"] = str(served.name)
            headers["X-Model-Version"] = str(served.version)
        if retry:
            headers["Retry-After"] = str(self.settings.retry_after_s)
        return Response(body, status, headers=headers, media_type=JSON)

    async def invocations(self, request: Request) -> Response:
        served = self.follower.current
        if served is None:
            return self.response(503, error_body("NOT_READY", "no model loaded yet"), retry=True)
        try:
            kind = content_kind(request.headers.get("content-type"))
            body = await read_body(request, self.settings.max_body_bytes)
            if len(body) > PARSE_INLINE_BYTES:  # a large body is parsed off the event loop
                frame, explain, key, ids = await asyncio.to_thread(prepare, kind, body, served)
            else:
                frame, explain, key, ids = prepare(kind, body, served)
        except BadRequest as err:
            return self.response(err.status, error_body(err.code, err.message))
        except ClientDisconnect:
            return self.response(400, error_body("BAD_REQUEST", "the client went away"))
        except Exception as err:  # a body no check foresaw: still the request's fault, not a 500
            log.exception("a request could not be read")
            message = f"the request could not be read ({type(err).__name__}: {err})"
            return self.response(400, error_body("BAD_REQUEST", message))
        try:
            done: Answer = await self.batcher.submit((frame, explain), len(frame), key, ids)
        except (Overloaded, TimedOut) as err:
            busy = f"server busy ({err}); retry after {self.settings.retry_after_s} s"
            return self.response(503, error_body("TEMPORARILY_UNAVAILABLE", busy), retry=True)
        return self.response(done.status, done.body, done.served)

    async def health(self, request: Request) -> Response:
        return self.response(200, b'{"status": "ok"}')

    async def ready(self, request: Request) -> Response:
        served = self.follower.current
        state = {"batching": dict(self.batcher.stats, waiting=self.batcher.waiting)}
        if served is None:
            state.update(status="loading", model_uri=self.follower.uri, error=self.follower.error)
            return self.response(503, json.dumps(state).encode(), retry=True)
        state.update(status="ready", **served.describe(), last_error=self.follower.error)
        return self.response(200, json.dumps(state).encode(), served)


def create_app(settings: ServeBlock, follower: Follower) -> Starlette:
    """The ASGI app; its lifespan starts the batcher and the follower (which loads the model)."""
    server = ScoringServer(settings, follower)
    routes = [
        Route("/invocations", server.invocations, methods=["POST"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/ping", server.health, methods=["GET"]),  # `mlflow models serve`'s name for it
        Route("/ready", server.ready, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=server.lifespan)
    app.state.server = server
    return app
