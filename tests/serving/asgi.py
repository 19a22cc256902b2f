"""An in-process client for an ASGI app: requests as coroutines in the test's event loop, no
sockets, and the app's lifespan (startup, shutdown) around them."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    body_read: bool = False  # whether the app asked for any of the request's body

    def json(self):
        return json.loads(self.body)


class AsgiClient:
    """`async with AsgiClient(app) as client: await client.post("/invocations", ...)`."""

    def __init__(self, app):
        self.app = app

    async def __aenter__(self) -> AsgiClient:
        self._events: asyncio.Queue = asyncio.Queue()
        self._replies: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(
            self.app(
                {"type": "lifespan", "asgi": {"version": "3.0"}},
                self._events.get,
                self._replies.put,
            )
        )
        await self._events.put({"type": "lifespan.startup"})
        reply = await self._replies.get()
        assert reply["type"] == "lifespan.startup.complete", reply
        return self

    async def __aexit__(self, *exc) -> None:
        await self._events.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(self._replies.get(), 10)
        await asyncio.wait_for(self._task, 10)

    async def get(self, path: str) -> Reply:
        return await self.request("GET", path)

    async def post(
        self,
        path: str,
        body: bytes | str,
        content_type: str | None = "application/json",
        chunk: int = 65536,
        headers: dict | None = None,
    ) -> Reply:
        body = body.encode() if isinstance(body, str) else body
        hdrs = dict(headers or {})
        if content_type is not None:
            hdrs.setdefault("content-type", content_type)
        hdrs.setdefault("content-length", str(len(body)))
        return await self.request("POST", path, body, hdrs, chunk)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict | None = None,
        chunk: int = 65536,
    ) -> Reply:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
        answered = asyncio.Event()
        sent = {"status": None, "headers": {}, "body": [], "read": False}

        async def receive():
            sent["read"] = True
            if pieces:
                piece = pieces.pop(0)
                return {"type": "http.request", "body": piece, "more_body": bool(pieces)}
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                sent["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            elif message["type"] == "http.response.body":
                sent["body"].append(message.get("body", b""))
                if not message.get("more_body"):
                    answered.set()

        await self.app(scope, receive, send)
        return Reply(sent["status"], sent["headers"], b"".join(sent["body"]), sent["read"])


def pid_app():
    """An app factory for a worker process: each request is answered with the worker's process
    id and what its supervisor gave it (`WORKER_ENV`); it stops when its supervisor is gone."""
    import os
    from pathlib import Path

    from pipelines.serving.peers import Peers
    from pipelines.serving.workers import WORKER_ENV, stop_with_supervisor

    given = json.loads(os.environ[WORKER_ENV])
    peers = Peers(Path(given["peers"]), given["serve"]["workers"])
    peers.announce()
    stop_with_supervisor(peers, poll_s=0.1)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = json.dumps({"pid": os.getpid(), "given": json.loads(os.environ[WORKER_ENV])})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})

    return app


def dies_once_while_asked_app():
    """An app factory whose first worker dies while a health check waits for its answer: it
    holds the interpreter in C code (as loading a model can), so its answering thread cannot run,
    and the kernel ends it meanwhile (SIGALRM, not handled). Later workers are `pid_app`s."""
    import ctypes
    import signal
    import tempfile
    from pathlib import Path

    marker = Path(tempfile.gettempdir()) / "died-once"
    if not marker.exists():
        marker.touch()
        signal.alarm(2)
        ctypes.PyDLL(None).sleep(30)  # a PyDLL call keeps the GIL
    return pid_app()
