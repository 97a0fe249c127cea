"""Engines and sessions from a database URL: an SQLite file by default, PostgreSQL by URL.

``FLEETGRID_DATABASE_URL`` overrides the default. A plain ``postgresql://`` URL uses psycopg 3 (the
driver we depend on). SQLite connections get foreign keys switched on (SQLite leaves them off) and,
for files, write-ahead logging so readers do not block the writer.

For FastAPI::

    sessions = make_sessionmaker(make_engine(url))
    SessionDep = Annotated[Session, Depends(session_dependency(sessions))]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_URL = "sqlite:///fleetgrid.sqlite"
URL_ENV = "FLEETGRID_DATABASE_URL"


def database_url(url: str | URL | None = None) -> URL:
    """The URL to use: ``url`` if given, else ``$FLEETGRID_DATABASE_URL``, else :data:`DEFAULT_URL`."""
    parsed = make_url(url or os.environ.get(URL_ENV) or DEFAULT_URL)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url`` (see :func:`database_url`); ``kwargs`` go to :func:`create_engine`."""
    parsed = database_url(url)
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        in_memory = parsed.database in (None, "", ":memory:")
        event.listen(engine, "connect", _sqlite_pragmas(wal=not in_memory))
    return engine


def _sqlite_pragmas(*, wal: bool) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    return on_connect


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (an API returns them after committing)."""
    return sessionmaker(engine, expire_on_commit=False)


def session_dependency(sessions: sessionmaker[Session]) -> Callable[[], Iterator[Session]]:
    """A generator dependency: one session per request, rolled back if the request fails."""

    def get_session() -> Iterator[Session]:
        with sessions() as session:  # closing rolls back whatever was not committed
            yield session

    return get_session
