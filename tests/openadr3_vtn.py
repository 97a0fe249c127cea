"""A small OpenADR 3.0.1 VTN for the tests: the specification's paths and objects, state in memory.

``/auth/token`` (client credentials, form-encoded, RFC 6749 errors), ``/auth/server`` (``tokenURL``),
``/programs``, ``/events`` (GET with ``programID``, ``skip``, ``limit``; POST/PUT/DELETE for the test to
drive it), ``/reports`` (POSTs kept in :attr:`Vtn.reports`), ``/subscriptions`` (a POST, PUT or DELETE of
an event is sent to every subscriber's ``callbackUrl`` as a ``notification``). Errors are RFC 7807
problems; ``fail_next`` queues statuses (503, ...) to answer instead of the next requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import parse_qs

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


class ProblemError(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        self.status, self.title, self.detail = status, title, detail


def _bearer(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    token = (authorization or "").removeprefix("Bearer ")
    if token not in request.app.state.vtn.tokens:
        raise ProblemError(401, "Unauthorized", "missing or unknown bearer token")
    return token


Auth = Annotated[str, Depends(_bearer)]


class Vtn:
    def __init__(
        self, client_id: str = "ven-1", client_secret: str = "s3cret", token_ttl_s: int = 3600
    ) -> None:
        self.credentials = {client_id: client_secret}
        self.token_ttl_s = token_ttl_s
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.programs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.reports: list[dict[str, Any]] = []
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.notifications_sent: list[dict[str, Any]] = []
        self.fail_next: list[int] = []
        self.requests: list[str] = []
        self._ids = itertools.count(1)
        self.app = self._build()

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    # -- driving it from the test

    def add_program(self, name: str, **fields: Any) -> dict[str, Any]:
        program = {"id": self.next_id("program"), "objectType": "PROGRAM", "programName": name, **fields}
        program["createdDateTime"] = program["modificationDateTime"] = _now()
        self.programs[program["id"]] = program
        return program

    async def _notify(self, operation: str, event: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            for subscription in list(self.subscriptions.values()):
                if subscription["programID"] != event["programID"]:
                    continue
                for ops in subscription["objectOperations"]:
                    if "EVENT" in ops["objects"] and operation in ops["operations"]:
                        body = {"objectType": "EVENT", "operation": operation, "object": event}
                        token = ops.get("bearerToken")
                        headers = {"Authorization": f"Bearer {token}"} if token else {}
                        response = await client.post(ops["callbackUrl"], json=body, headers=headers)
                        self.notifications_sent.append({"status": response.status_code, **body})

    # -- the app

    def _build(self) -> FastAPI:
        app = FastAPI()
        app.state.vtn = vtn = self

        @app.exception_handler(ProblemError)
        async def problem(request: Request, exc: ProblemError) -> JSONResponse:
            return JSONResponse(
                {"type": "about:blank", "title": exc.title, "status": exc.status, "detail": exc.detail},
                status_code=exc.status,
                media_type="application/problem+json",
            )

        @app.middleware("http")
        async def injected_failures(request: Request, call_next: Any) -> Any:
            vtn.requests.append(f"{request.method} {request.url.path}")
            if vtn.fail_next:
                status = vtn.fail_next.pop(0)
                return JSONResponse(
                    {"title": "Service Unavailable", "status": status, "detail": "injected by the test"},
                    status_code=status,
                    media_type="application/problem+json",
                )
            return await call_next(request)

        @app.get("/auth/server")
        async def auth_server() -> dict[str, Any]:
            return {"tokenURL": "auth/token"}

        @app.post("/auth/token")
        async def token(request: Request) -> JSONResponse:
            # form-encoded per RFC 6749; parsed by hand (FastAPI's Form() needs python-multipart)
            if request.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            grant_type, client_id = form.get("grant_type"), form.get("client_id", "")
            client_secret = form.get("client_secret")
            vtn.token_requests += 1
            if grant_type != "client_credentials":
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            if vtn.credentials.get(client_id) != client_secret:
                return JSONResponse(
                    {
                        "error": "invalid_client",
                        "error_description": "unknown client_id or wrong client_secret",
                    },
                    status_code=401,
                )
            access = secrets.token_urlsafe(16)
            vtn.tokens.add(access)
            return JSONResponse(
                {"access_token": access, "token_type": "Bearer", "expires_in": vtn.token_ttl_s}
            )

        def page(items: list[dict[str, Any]], skip: int, limit: int) -> list[dict[str, Any]]:
            if not 0 <= limit <= 50:
                raise ProblemError(400, "Bad Request", "limit must be within 0..50")
            return items[skip : skip + limit]

        @app.get("/programs")
        async def programs(_: Auth, skip: int = 0, limit: int = 50) -> list[dict[str, Any]]:
            return page(list(vtn.programs.values()), skip, limit)

        @app.get("/programs/{program_id}")
        async def program(_: Auth, program_id: str) -> dict[str, Any]:
            if program_id not in vtn.programs:
                raise ProblemError(404, "Not Found", f"no program {program_id}")
            return vtn.programs[program_id]

        @app.get("/events")
        async def events(
            _: Auth, programID: str | None = None, skip: int = 0, limit: int = 50
        ) -> list[dict[str, Any]]:
            found = [e for e in vtn.events.values() if programID is None or e.get("programID") == programID]
            return page(found, skip, limit)

        @app.post("/events", status_code=201)
        async def create_event(_: Auth, body: dict[str, Any]) -> dict[str, Any]:
            event = {**body, "id": body.get("id") or vtn.next_id("event"), "objectType": "EVENT"}
            event["createdDateTime"] = event["modificationDateTime"] = _now()
            vtn.events[event["id"]] = event
            await vtn._notify("POST", event)
            return event

        @app.put("/events/{event_id}")
        async def update_event(_: Auth, event_id: str, body: dict[str, Any]) -> dict[str, Any]:
            if event_id not in vtn.events:
                raise ProblemError(404, "Not Found", f"no event {event_id}")
            event = {**body, "id": event_id, "objectType": "EVENT", "modificationDateTime": _now()}
            event["createdDateTime"] = vtn.events[event_id]["createdDateTime"]
            vtn.events[event_id] = event
            await vtn._notify("PUT", event)
            return event

        @app.delete("/events/{event_id}")
        async def delete_event(_: Auth, event_id: str) -> dict[str, Any]:
            if event_id not in vtn.events:
                raise ProblemError(404, "Not Found", f"no event {event_id}")
            event = vtn.events.pop(event_id)
            await vtn._notify("DELETE", event)
            return event

        @app.post("/reports", status_code=201)
        async def create_report(_: Auth, body: dict[str, Any]) -> dict[str, Any]:
            missing = [f for f in ("programID", "eventID", "clientName", "resources") if f not in body]
            if missing:
                raise ProblemError(400, "Bad Request", f"report lacks {', '.join(missing)}")
            report = {**body, "id": vtn.next_id("report"), "objectType": "REPORT", "createdDateTime": _now()}
            vtn.reports.append(report)
            return report

        @app.get("/reports")
        async def reports(_: Auth, eventID: str | None = None) -> list[dict[str, Any]]:
            return [r for r in vtn.reports if eventID is None or r["eventID"] == eventID]

        @app.post("/subscriptions", status_code=201)
        async def create_subscription(_: Auth, body: dict[str, Any]) -> dict[str, Any]:
            for field in ("clientName", "programID", "objectOperations"):
                if field not in body:
                    raise ProblemError(400, "Bad Request", f"subscription lacks {field}")
            subscription = {**body, "id": vtn.next_id("subscription"), "objectType": "SUBSCRIPTION"}
            vtn.subscriptions[subscription["id"]] = subscription
            return subscription

        @app.get("/subscriptions")
        async def subscriptions(_: Auth) -> list[dict[str, Any]]:
            return list(vtn.subscriptions.values())

        return app


@contextlib.asynccontextmanager
async def serve(app: Any, *, timeout: float = 5.0) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name=f"uvicorn:{port}")
    try:
        async with asyncio.timeout(timeout):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(timeout):
            await task
