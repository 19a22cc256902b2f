"""The real-time scorer: a Starlette app speaking MLflow's `/invocations` format.

`POST /invocations` takes sessions as `mlflow models serve` does (JSON with one of
`dataframe_split`, `dataframe_records`, `instances` or `inputs`, and optional `params`
such as `{"explain": 3}`; or CSV; or parquet) and answers `{"predictions": [...]}`, one record
per session, with the model's name and version in every record and in the `X-Model-Name` and
`X-Model-Version` headers. Concurrent requests are scored together (`serving.batcher`, with
`serving.sessions` deciding which may share a call).

Errors are one line of JSON (`{"error_code": ..., "message": ...}`, MLflow's shape) naming the
problem: 400 for a body that cannot be read or sessions the contract refuses (the column and its
values), 413 for a body over `max_body_bytes` (refused while it is read, never held whole), 415
for a content type other than JSON, CSV or parquet, 503 with `Retry-After` when no model is loaded
yet, the work ahead of the request would take longer than `max_delay_ms`, the queue is full or
the deadline passed. Bad input never gets a 500.

A request the server cannot take now is refused by `Doorman`, a plain ASGI layer in front of the
routes, before its body is read and before a `Request` or `Response` object exists: under
overload most requests are refused, and what each refusal costs the event loop is taken from
the requests it accepted.

`GET /health` answers while the process is up; `GET /ready` once a model is loaded (503 before),
with the model's name, version and alias and the batching counters; in a server of several
worker processes, once every worker has loaded one (`serving.peers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pipelines.config.schema import ServeBlock
from pipelines.core.contract import ContractError
from pipelines.serving.batcher import Batcher, Overloaded, TimedOut
from pipelines.serving.follower import Follower, Served
from pipelines.serving.peers import Peers
from pipelines.serving.sessions import (
    CSV,
    FORMATS,
    JSON,
    PARQUET,
    BadRequest,
    Reading,
    Sessions,
    merge_keys,
    predictions_json,
    score_together,
    sessions_of,
)

log = logging.getLogger(__name__)

# a body over the limit is read to its end and dropped (a client still sending would otherwise
# see a reset connection instead of the 413), unless it says it is larger than this
DRAIN_MAX_BYTES = 64 * 1024 * 1024
# bodies up to this are parsed on the event loop (a thread hop costs more than parsing them)
PARSE_INLINE_BYTES = 64 * 1024


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


def answer(served: Served, outcome: list[dict] | Exception) -> Answer:
    """A request's answer: its predictions, or a 400 naming what the model could not read."""
    if isinstance(outcome, list):
        return Answer(200, predictions_json(outcome), served)
    if isinstance(outcome, ContractError | ValueError):
        return Answer(400, error_body("BAD_REQUEST", str(outcome)), served)
    log.error("a request could not be scored", exc_info=outcome)
    message = f"the model could not score this input ({type(outcome).__name__}: {outcome})"
    return Answer(400, error_body("BAD_REQUEST", message), served)


class ScoringServer:
    """The app's state: the settings, the follower that holds the model, the batcher."""

    def __init__(self, settings: ServeBlock, follower: Follower, peers: Peers | None = None):
        self.settings = settings
        self.follower = follower
        self.peers = peers
        self.batcher = Batcher(
            self.run_batch,
            max_batch_rows=settings.max_batch_rows,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            timeout_ms=settings.timeout_ms,
            max_delay_ms=settings.max_delay_ms,
            standing_ms=settings.standing_ms,
            merge=merge_keys,
            own_slowdown=lambda: follower.loading,
        )

    def run_batch(self, items: list[tuple[Sessions, Reading]]) -> list[Answer]:
        """One predict call for the batch (in the prediction thread), on one model. Requests read
        for another model (the alias moved meanwhile) are scored alone."""
        served = self.follower.current
        requests = [r for r, _ in items]
        explain = requests[0].explain
        predict = lambda f: served.records(f, explain)  # noqa: E731
        if len(items) > 1 and any(reading != served.reading for _, reading in items):
            outcomes = [score_together(predict, [r])[0] for r in requests]
        else:
            outcomes = score_together(predict, requests)
        return [answer(served, o) for o in outcomes]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        self.batcher.start()
        self.follower.start()
        announcing = asyncio.create_task(self.announce()) if self.peers else None
        try:
            yield
        finally:
            if announcing is not None:
                announcing.cancel()
            self.follower.stop()
            await self.batcher.stop()

    async def announce(self, poll_s: float = 0.1) -> None:
        """Tells the other workers (`peers`) once this one has a model."""
        while self.follower.current is None:
            await asyncio.sleep(poll_s)
        self.peers.announce()

    def headers(self, served: Served | None = None, retry: bool = False) -> dict[str, str]:
        headers = {}
        served = served or self.follower.current
        if served is not None:
            headers["X-Model-Name"] = str(served.name)
            headers["X-Model-Version"] = str(served.version)
        if retry:
            headers["Retry-After"] = str(self.settings.retry_after_s)
        return headers

    def response(
        self, status: int, body: bytes, served: Served | None = None, retry: bool = False
    ) -> Response:
        return Response(body, status, headers=self.headers(served, retry), media_type=JSON)

    def refusal(self) -> bytes | None:
        """The 503 body for a request that cannot be taken now (no model yet, or the batcher
        sheds it: `Batcher.admit`), None when it may come in."""
        if self.follower.current is None:
            return error_body("NOT_READY", "no model loaded yet")
        try:
            self.batcher.admit()
        except Overloaded as err:
            return self.busy_body(err)
        return None

    async def invocations(self, request: Request) -> Response:
        served = self.follower.current  # loaded: `Doorman` let the request in
        reading = served.reading
        try:
            kind = content_kind(request.headers.get("content-type"))
            body = await read_body(request, self.settings.max_body_bytes)
            if len(body) > PARSE_INLINE_BYTES:  # a large body is read off the event loop
                sessions = await asyncio.to_thread(sessions_of, kind, body, reading)
            else:
                sessions = sessions_of(kind, body, reading)
        except BadRequest as err:
            return self.response(err.status, error_body(err.code, err.message))
        except ClientDisconnect:
            return self.response(400, error_body("BAD_REQUEST", "the client went away"))
        except Exception as err:  # a body no check foresaw: still the request's fault, not a 500
            log.exception("a request could not be read")
            message = f"the request could not be read ({type(err).__name__}: {err})"
            return self.response(400, error_body("BAD_REQUEST", message))
        try:
            done: Answer = await self.batcher.submit(
                (sessions, reading), sessions.rows, sessions.key, sessions.ids
            )
        except (Overloaded, TimedOut) as err:
            return self.busy(err)
        return self.response(done.status, done.body, done.served)

    def busy_body(self, why: Exception) -> bytes:
        message = f"server busy ({why}); retry after {self.settings.retry_after_s} s"
        return error_body("TEMPORARILY_UNAVAILABLE", message)

    def busy(self, why: Exception) -> Response:
        return self.response(503, self.busy_body(why), retry=True)

    async def health(self, request: Request) -> Response:
        return self.response(200, b'{"status": "ok"}')

    async def ready(self, request: Request) -> Response:
        served = self.follower.current
        batcher = self.batcher
        state = {
            "pid": os.getpid(),  # which worker process answered
            "batching": dict(batcher.stats, waiting=batcher.waiting, standing=batcher.standing),
        }
        some_loading = False
        if self.peers is not None:  # a server of several workers is ready when each of them is
            ready = self.peers.ready()
            state.update(workers=self.peers.workers, workers_ready=ready)
            some_loading = ready < self.peers.workers
        if served is None or some_loading:
            state.update(status="loading", model_uri=self.follower.uri, error=self.follower.error)
            return self.response(503, json.dumps(state).encode(), retry=True)
        state.update(status="ready", **served.describe(), last_error=self.follower.error)
        return self.response(200, json.dumps(state).encode(), served)


class Doorman:
    """ASGI middleware answering a `POST /invocations` the server cannot take now with its 503
    (`ScoringServer.refusal`), written straight to the connection: no routing, no `Request`, no
    `Response`, and the body is never read. Everything else goes on to the routes."""

    def __init__(self, app: ASGIApp, server: ScoringServer):
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/invocations"
            and scope["method"] == "POST"
            and (body := self.server.refusal()) is not None
        ):
            headers = self.server.headers(retry=True)
            raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            raw += [(b"content-type", JSON.encode()), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 503, "headers": raw})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def create_app(settings: ServeBlock, follower: Follower, peers: Peers | None = None) -> Starlette:
    """The ASGI app; its lifespan starts the batcher and the follower (which loads the model).
    With `peers` (one of several worker processes), `/ready` waits for every worker's model."""
    server = ScoringServer(settings, follower, peers)
    routes = [
        Route("/invocations", server.invocations, methods=["POST"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/ping", server.health, methods=["GET"]),  # `mlflow models serve`'s name for it
        Route("/ready", server.ready, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes, middleware=[Middleware(Doorman, server=server)], lifespan=server.lifespan
    )
    app.state.server = server
    return app
