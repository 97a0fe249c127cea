"""The FastAPI application: settings and a sessionmaker in, routes and OpenAPI docs (``/docs``) out.

Routes are grouped by who calls them: ``/auth`` and ``/users`` for everyone, ``/driver`` for drivers
(their vehicles, consent, sessions, overrides, earnings), ``/operator`` for grid operators (their
programs' dispatch events and delivered performance), ``/trader`` for energy traders (schedules,
flexibility, KPIs, what-if) and ``/admin`` for administrators.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from aggregator.api.config import Settings
from aggregator.api.routes import admin, auth, drivers, operators, settlement, traders, users
from aggregator.control.replanning import ReplanRequests
from aggregator.db.session import make_engine, make_sessionmaker
from wire.clock import SYSTEM_CLOCK


def create_app(
    settings: Settings,
    sessions: sessionmaker[Session] | None = None,
    *,
    replans: ReplanRequests | None = None,
    clock: Callable[[], dt.datetime] = SYSTEM_CLOCK.now,
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
    for module in (auth, users, drivers, operators, traders, admin, settlement):
        app.include_router(module.router)
    return app
