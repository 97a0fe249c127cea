"""Run the Alembic migrations in ``migrations/`` from code, without an ``alembic.ini``.

``upgrade(url)`` brings a database to the latest schema; ``revision(url, message)`` autogenerates a
new revision by comparing that (upgraded) database with the models, to be reviewed before committing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import Script
from sqlalchemy.engine import URL

from aggregator.db.session import database_url

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic config for our migrations and the database at ``url`` (see ``database_url``)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["url"] = database_url(url)
    return config


def upgrade(url: str | URL | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL | None, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def revision(url: str | URL | None, message: str) -> Script | None:
    """Autogenerate a revision from the difference between the database at ``url`` and the models."""
    script = command.revision(alembic_config(url), message=message, autogenerate=True)
    return script if isinstance(script, Script) else None
