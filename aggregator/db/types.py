"""Column types shared by the models: UTC timestamps and enums stored as their values.

Both are chosen to behave the same on SQLite and PostgreSQL, so that a test on one backend speaks for
the other.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import DateTime, Dialect, Enum
from sqlalchemy.types import TypeDecorator


class NaiveDatetimeError(ValueError):
    """A naive ``datetime`` was given for a timestamp column; we cannot guess its zone."""


class UtcDateTime(TypeDecorator[dt.datetime]):
    """``DateTime(timezone=True)`` that only takes aware datetimes and always returns them in UTC.

    PostgreSQL stores ``timestamptz`` and hands values back in the session's zone; SQLite has no
    zone at all and hands back naive values. Converting to UTC on the way in and tagging UTC on the
    way out gives the same aware UTC ``datetime`` on both.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise NaiveDatetimeError(f"timestamp {value.isoformat()} has no UTC offset")
        utc = value.astimezone(dt.UTC)
        # SQLite's DateTime would write the offset into the string only sometimes; store plain UTC.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def value_enum(enum_class: type[enum.Enum], name: str) -> Enum:
    """An enum column that stores the members' values (``"grid_operator"``), not their names.

    A ``VARCHAR`` with a named ``CHECK`` constraint rather than a native PostgreSQL ``ENUM`` type, so
    adding a member is a constraint change on both backends instead of an ``ALTER TYPE``.
    """
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=_values,
        validate_strings=True,
    )


def _values(enum_class: type[enum.Enum]) -> list[Any]:
    return [member.value for member in enum_class]
