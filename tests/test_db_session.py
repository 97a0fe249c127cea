"""Engines from URLs: the default, the environment variable, psycopg for PostgreSQL, SQLite pragmas."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from aggregator.db.session import DEFAULT_URL, URL_ENV, database_url, make_engine


def test_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    assert database_url().render_as_string() == DEFAULT_URL
    monkeypatch.setenv(URL_ENV, "sqlite:////var/lib/fleetgrid/central.sqlite")
    assert database_url().database == "/var/lib/fleetgrid/central.sqlite"
    assert database_url("sqlite://").database is None


def test_plain_postgresql_urls_use_psycopg() -> None:
    url = database_url("postgresql://fleetgrid:secret@db.internal:5433/fleetgrid")
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database) == ("db.internal", 5433, "fleetgrid")


def test_sqlite_file_has_foreign_keys_and_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'central.sqlite'}")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    finally:
        engine.dispose()


def test_sqlite_in_memory_has_foreign_keys() -> None:
    engine = make_engine("sqlite://")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    finally:
        engine.dispose()
