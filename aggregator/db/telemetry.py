"""Storing the gateways' telemetry, once per ``(site_id, seq)``.

MQTT QoS 1 delivers at least once, so the same message can arrive again (after a reconnect, or from a
gateway's outbox replay). The ``telemetry`` table's ``UNIQUE (site_id, seq)`` decides: the insert is
``INSERT ... ON CONFLICT (site_id, seq) DO NOTHING``, one statement on SQLite and PostgreSQL alike,
so concurrent ingestion workers cannot both store a message.

Two ways in: :func:`insert_telemetry_once` for one message, and :func:`insert_telemetry_many` for a
batch, which is what ingestion uses under load: one multi-row ``INSERT ... ON CONFLICT DO NOTHING
RETURNING id, site_id, seq`` for the messages (SQLAlchemy's "insertmanyvalues", so a few statements
per thousand rows) and one bulk insert for all their EVSE readings, through Core rather than the ORM.
On SQLite the EVSE readings (ten or so per message) go to the driver's ``executemany`` as tuples: no
SQLAlchemy work per row, which was two thirds of the call's CPU. On PostgreSQL each table takes one
statement whatever the batch size, every column bound as one array and spread by ``unnest()``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from aggregator.db.models import Base, EvseTelemetryRecord, TelemetryRecord, utcnow
from site_gateway.contract import Telemetry

TELEMETRY = Base.metadata.tables[TelemetryRecord.__tablename__]
EVSE_TELEMETRY = Base.metadata.tables[EvseTelemetryRecord.__tablename__]


class UnsupportedBackendError(RuntimeError):
    """The database is neither SQLite nor PostgreSQL."""


def insert_telemetry_once(
    session: Session, message: Telemetry, *, received_at: dt.datetime | None = None
) -> bool:
    """Store ``message`` with its EVSE readings; ``False`` (and nothing written) if its
    ``(site_id, seq)`` is already stored.

    Runs inside the session's transaction; the caller commits. A message for a site the centre does
    not know violates the foreign key and raises :class:`sqlalchemy.exc.IntegrityError`.
    """
    row = _telemetry_row(message, received_at or utcnow())
    statement = _insert_ignoring_duplicates(session).values(row).returning(TelemetryRecord.id)
    telemetry_id = session.execute(statement).scalar_one_or_none()
    if telemetry_id is None:
        return False
    if message.evses:
        session.execute(insert(EvseTelemetryRecord), _evse_rows(telemetry_id, message))
    return True


def insert_telemetry_many(
    session: Session,
    messages: Sequence[Telemetry],
    *,
    received_at: Sequence[dt.datetime] | dt.datetime | None = None,
) -> list[bool]:
    """Store a batch of messages with their EVSE readings; element ``i`` of the result is ``True``
    when ``messages[i]`` was stored, ``False`` when its ``(site_id, seq)`` was already stored or
    came earlier in the same batch (the first copy wins, as with one insert after the other).

    ``received_at`` is one time for all, or one per message (default: now). Runs inside the
    session's transaction; the caller commits. Any row the database refuses (a site it does not
    know, a ``seq`` beyond 64 bits) fails the whole call, as it would fail the transaction.
    """
    if isinstance(received_at, Sequence):
        if len(received_at) != len(messages):
            raise ValueError(
                f"received_at has {len(received_at)} times for {len(messages)} telemetry messages"
            )
        times: Sequence[dt.datetime] = received_at
    else:
        times = [received_at or utcnow()] * len(messages)
    first: dict[tuple[str, int], int] = {}
    rows: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        key = (message.site_id, message.seq)
        if key not in first:
            first[key] = i
            rows.append(_telemetry_row(message, times[i]))
    stored = [False] * len(messages)
    if not rows:
        return stored
    connection = session.connection()
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        inserted = connection.execute(_UNNEST_TELEMETRY, _columns(rows, _TELEMETRY_COLUMNS))
    else:
        statement = _insert_ignoring_duplicates(session).returning(
            TELEMETRY.c.id, TELEMETRY.c.site_id, TELEMETRY.c.seq
        )
        inserted = connection.execute(statement, rows)
    evse_rows: list[tuple[Any, ...]] = []
    for telemetry_id, site_id, seq in inserted:
        i = first[(site_id, seq)]
        stored[i] = True
        evse_rows += [
            (telemetry_id, e.charger_id, e.evse_id, e.power_kw, e.energy_kwh, e.soc_percent)
            for e in messages[i].evses
        ]
    if evse_rows:
        if postgres:
            connection.execute(
                _UNNEST_EVSES, {name: [row[k] for row in evse_rows] for k, name in enumerate(_EVSE_COLUMNS)}
            )
        else:
            connection.exec_driver_sql(_SQLITE_EVSES, evse_rows)
    return stored


# PostgreSQL: one statement per table whatever the batch size, each column bound as one array and
# spread into rows by unnest(), so the statement text stays small (psycopg parses the text of every
# statement it sends, and a multi-row VALUES of 500 messages is ~3,000 placeholders).
_TELEMETRY_COLUMNS = ("site_id", "seq", "sent_at", "received_at", "site_import_kw", "base_load_kw")
_UNNEST_TELEMETRY = text(
    "INSERT INTO telemetry (site_id, seq, sent_at, received_at, site_import_kw, base_load_kw)"
    " SELECT * FROM unnest(CAST(:site_id AS varchar[]), CAST(:seq AS bigint[]),"
    " CAST(:sent_at AS timestamptz[]), CAST(:received_at AS timestamptz[]),"
    " CAST(:site_import_kw AS float8[]), CAST(:base_load_kw AS float8[]))"
    " ON CONFLICT (site_id, seq) DO NOTHING RETURNING id, site_id, seq"
)
_EVSE_COLUMNS = ("telemetry_id", "charger_id", "evse_id", "power_kw", "energy_kwh", "soc_percent")
_UNNEST_EVSES = text(
    "INSERT INTO telemetry_evses (telemetry_id, charger_id, evse_id, power_kw, energy_kwh, soc_percent)"
    " SELECT * FROM unnest(CAST(:telemetry_id AS bigint[]), CAST(:charger_id AS varchar[]),"
    " CAST(:evse_id AS integer[]), CAST(:power_kw AS float8[]), CAST(:energy_kwh AS float8[]),"
    " CAST(:soc_percent AS float8[]))"
)
_SQLITE_EVSES = (
    f"INSERT INTO telemetry_evses ({', '.join(_EVSE_COLUMNS)}) VALUES ({', '.join('?' * len(_EVSE_COLUMNS))})"
)
"""The EVSE readings' insert as the sqlite3 driver takes it (``executemany`` with one tuple per row)."""


def _columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in names}


def _telemetry_row(message: Telemetry, received_at: dt.datetime) -> dict[str, Any]:
    return {
        "site_id": message.site_id,
        "seq": message.seq,
        "sent_at": message.sent_at,
        "received_at": received_at,
        "site_import_kw": message.site_import_kw,
        "base_load_kw": message.base_load_kw,
    }


def _evse_rows(telemetry_id: int, message: Telemetry) -> list[dict[str, Any]]:
    return [
        {
            "telemetry_id": telemetry_id,
            "charger_id": evse.charger_id,
            "evse_id": evse.evse_id,
            "power_kw": evse.power_kw,
            "energy_kwh": evse.energy_kwh,
            "soc_percent": evse.soc_percent,
        }
        for evse in message.evses
    ]


def _insert_ignoring_duplicates(session: Session) -> Insert:
    dialect = session.get_bind().dialect.name
    conflict = ["site_id", "seq"]
    if dialect == "postgresql":
        return postgresql.insert(TELEMETRY).on_conflict_do_nothing(index_elements=conflict)
    if dialect == "sqlite":
        return sqlite.insert(TELEMETRY).on_conflict_do_nothing(index_elements=conflict)
    raise UnsupportedBackendError(
        f"cannot store telemetry on {dialect!r}: fleetgrid supports sqlite and postgresql"
    )
