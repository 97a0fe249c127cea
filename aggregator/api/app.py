"""The FastAPI application: settings and a sessionmaker in, routes and OpenAPI docs (``/docs``) out."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from aggregator.api.config import Settings
from aggregator.api.routes import admin, auth, users
from aggregator.db.session import make_engine, make_sessionmaker


def create_app(settings: Settings, sessions: sessionmaker[Session] | None = None) -> FastAPI:
    """The API for ``settings``; ``sessions`` defaults to a sessionmaker on ``settings.database_url``."""
    app = FastAPI(title="fleetgrid aggregator", docs_url="/docs", openapi_url="/openapi.json")
    app.state.settings = settings
    app.state.sessions = sessions or make_sessionmaker(make_engine(settings.database_url))
    app.include_router(auth.router)
    app.include_router(users.router)
    app.include_router(admin.router)
    return app
