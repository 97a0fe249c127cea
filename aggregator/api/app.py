"""The FastAPI application: settings and a sessionmaker in, routes and OpenAPI docs (``/docs``) out.

Routes are grouped by who calls them: ``/auth`` and ``/users`` for everyone, ``/driver`` for drivers
(their vehicles, consent, sessions, overrides, earnings), ``/operator`` for grid operators (their
programs' dispatch events and delivered performance), ``/trader`` for energy traders (schedules,
flexibility, KPIs, what-if) and ``/admin`` for administrators; ``/healthz`` and ``/readyz``
(:mod:`aggregator.api.routes.health`) for load balancers, without login.

With ``observe_request``, every HTTP request is told to it once answered: method, route *template*
(``/admin/sites/{site_id}``, or ``unmatched`` for a path no route has, so the values stay as few as
the routes), status and duration [s, the event loop's time]. The service counts them in its metrics.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aggregator.api.config import Settings
from aggregator.api.routes import admin, auth, drivers, health, operators, settlement, traders, users
from aggregator.control.replanning import ReplanRequests
from aggregator.db.session import make_engine, make_sessionmaker
from wire.clock import SYSTEM_CLOCK

RequestObserver = Callable[[str, str, int, float], None]
"""Told each answered request: method, route template, status code and duration [s]."""

UNMATCHED_ROUTE = "unmatched"
"""The route template of a request that matched no route (a 404 on a made-up path)."""


class RequestObserving:
    """ASGI middleware telling ``observe`` each HTTP request's method, route template, status and
    duration; a request that raised counts as a 500 (the error still propagates)."""

    def __init__(self, app: ASGIApp, observe: RequestObserver) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route: Any = scope.get("route")  # set by the router on the scope it was handed
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.observe(scope["method"], template, status, loop.time() - started)


def create_app(
    settings: Settings,
    sessions: sessionmaker[Session] | None = None,
    *,
    replans: ReplanRequests | None = None,
    clock: Callable[[], dt.datetime] = SYSTEM_CLOCK.now,
    observe_request: RequestObserver | None = None,
) -> FastAPI:
    """The API for ``settings``.

    ``sessions`` defaults to a sessionmaker on ``settings.database_url``; ``replans`` is the control
    loop's inbox, which routes that change a plan's inputs (an override, a dispatch event) write to.
    ``clock`` is "now" for every route (when an event is received, when consent is given); access
    tokens stay on the system's clock, which their signature library checks.
    """
    app = FastAPI(title="fleetgrid aggregator", docs_url="/docs", openapi_url="/openapi.json")
    app.state.settings = settings
    app.state.sessions = sessions or make_sessionmaker(make_engine(settings.database_url))
    app.state.replans = replans or ReplanRequests()
    app.state.clock = clock
    for module in (auth, users, drivers, operators, traders, admin, settlement, health):
        app.include_router(module.router)
    if observe_request is not None:
        app.add_middleware(RequestObserving, observe=observe_request)
    return app
