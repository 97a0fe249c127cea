"""The declarative base every table derives from, and what all of them share.

:class:`Base` carries the one ``MetaData`` (constraint names by :data:`NAMING_CONVENTION`, so
migrations can address them) and the column types of annotations; :data:`BigId` is the 64-bit key of
the large append-only tables; :class:`ImmutableRowError` is what an update of an append-only row raises.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, MetaData
from sqlalchemy.orm import DeclarativeBase

from aggregator.db.types import UtcDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BigId = BigInteger().with_variant(Integer(), "sqlite")
"""A 64-bit surrogate key; ``INTEGER`` on SQLite, where only that type is an auto-incrementing rowid."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads it as a class attribute)
        dt.datetime: UtcDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class ImmutableRowError(RuntimeError):
    """An attempt to update a row of an append-only table (its history would be lost)."""
