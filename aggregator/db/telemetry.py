"""Storing the gateways' telemetry, once per ``(site_id, seq)``.

MQTT QoS 1 delivers at least once, so the same message can arrive again (after a reconnect, or from a
gateway's outbox replay). The ``telemetry`` table's ``UNIQUE (site_id, seq)`` decides: the insert is
``INSERT ... ON CONFLICT (site_id, seq) DO NOTHING``, one statement on SQLite and PostgreSQL alike,
so concurrent ingestion workers cannot both store a message.

Two ways in: :func:`insert_telemetry_once` for one message, and :func:`insert_telemetry_many` for a
batch, which is what ingestion uses under load, through Core rather than the ORM:

- on PostgreSQL, **one statement and one round trip** for the messages and all their EVSE readings:
  every column is bound as one array (binary, psycopg's ``%b``: a third of the client CPU of text
  arrays) and spread into rows by ``unnest()``; a data-modifying CTE inserts the messages
  (``ON CONFLICT DO NOTHING RETURNING``) and, joined to what it returned, the readings of the stored
  ones. The messages go in sorted by ``(site_id, seq)``, so that concurrent writers holding the same
  redelivered message wait for each other in one order and cannot deadlock;
- on SQLite, one multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING id, site_id, seq`` for the
  messages (SQLAlchemy's "insertmanyvalues") and the EVSE readings (ten or so per message) to the
  driver's ``executemany`` as tuples: no SQLAlchemy work per row, which was two thirds of the call's
  CPU.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from aggregator.db.models import Base, EvseTelemetryRecord, TelemetryRecord, utcnow
from wire.contract import EvseTelemetry, Telemetry

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
    for i, message in enumerate(messages):
        first.setdefault((message.site_id, message.seq), i)
    stored = [False] * len(messages)
    if not first:
        return stored
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        arrays = _pg_arrays(messages, first, times)
        for site_id, seq in connection.exec_driver_sql(_PG_TELEMETRY_WITH_EVSES, arrays):
            stored[first[(site_id, seq)]] = True
        return stored
    rows = [_telemetry_row(messages[i], times[i]) for i in first.values()]
    statement = _insert_ignoring_duplicates(session).returning(
        TELEMETRY.c.id, TELEMETRY.c.site_id, TELEMETRY.c.seq
    )
    evse_rows: list[tuple[Any, ...]] = []
    for telemetry_id, site_id, seq in connection.execute(statement, rows):
        i = first[(site_id, seq)]
        stored[i] = True
        evse_rows += [
            (
                telemetry_id,
                e.charger_id,
                e.evse_id,
                e.power_kw,
                e.energy_kwh,
                e.soc_percent,
                *_limit_columns(e),
            )
            for e in messages[i].evses
        ]
    if evse_rows:
        connection.exec_driver_sql(_SQLITE_EVSES, evse_rows)
    return stored


# PostgreSQL: one statement whatever the batch size, each column bound as one binary array and spread
# into rows by unnest(), so the statement text stays small (a multi-row VALUES of 500 messages would
# be ~3,000 placeholders for psycopg to parse) and the arrays cost little to send. Readings name their
# message by its 1-based place in the message arrays (``n``); only the stored messages' readings are
# inserted. INSERT ... SELECT inserts in the order of the ORDER BY.
_PG_TELEMETRY_WITH_EVSES = """\
WITH message AS (
    SELECT * FROM unnest(%(site_id)b::varchar[], %(seq)b::bigint[], %(sent_at)b::timestamptz[],
        %(received_at)b::timestamptz[], %(site_import_kw)b::float8[], %(base_load_kw)b::float8[])
        WITH ORDINALITY AS m(site_id, seq, sent_at, received_at, site_import_kw, base_load_kw, n)
), stored AS (
    INSERT INTO telemetry (site_id, seq, sent_at, received_at, site_import_kw, base_load_kw)
    SELECT site_id, seq, sent_at, received_at, site_import_kw, base_load_kw FROM message ORDER BY n
    ON CONFLICT (site_id, seq) DO NOTHING
    RETURNING id, site_id, seq
), evses AS (
    INSERT INTO telemetry_evses (telemetry_id, charger_id, evse_id, power_kw, energy_kwh, soc_percent,
        limit_kw, limit_reason, limit_discharge)
    SELECT stored.id, e.charger_id, e.evse_id, e.power_kw, e.energy_kwh, e.soc_percent, e.limit_kw,
        e.limit_reason, e.limit_discharge
    FROM unnest(%(e_n)b::bigint[], %(e_charger_id)b::varchar[], %(e_evse_id)b::integer[],
        %(e_power_kw)b::float8[], %(e_energy_kwh)b::float8[], %(e_soc_percent)b::float8[],
        %(e_limit_kw)b::float8[], %(e_limit_reason)b::varchar[], %(e_limit_discharge)b::boolean[])
        AS e(n, charger_id, evse_id, power_kw, energy_kwh, soc_percent, limit_kw, limit_reason,
            limit_discharge)
    JOIN message ON message.n = e.n
    JOIN stored ON stored.site_id = message.site_id AND stored.seq = message.seq
)
SELECT site_id, seq FROM stored"""
_EVSE_COLUMNS = (
    "telemetry_id",
    "charger_id",
    "evse_id",
    "power_kw",
    "energy_kwh",
    "soc_percent",
    "limit_kw",
    "limit_reason",
    "limit_discharge",
)
_SQLITE_EVSES = (
    f"INSERT INTO telemetry_evses ({', '.join(_EVSE_COLUMNS)}) VALUES ({', '.join('?' * len(_EVSE_COLUMNS))})"
)
"""The EVSE readings' insert as the sqlite3 driver takes it (``executemany`` with one tuple per row)."""


def _pg_arrays(
    messages: Sequence[Telemetry], first: dict[tuple[str, int], int], times: Sequence[dt.datetime]
) -> dict[str, list[Any]]:
    """The bound arrays of :data:`_PG_TELEMETRY_WITH_EVSES`: the first copy of each message, sorted by
    ``(site_id, seq)``, and their EVSE readings."""
    site_id: list[str] = []
    seq: list[int] = []
    sent_at: list[dt.datetime] = []
    received_at: list[dt.datetime] = []
    import_kw: list[float] = []
    base_kw: list[float | None] = []
    e_n: list[int] = []
    e_cp: list[str] = []
    e_evse: list[int] = []
    e_kw: list[float] = []
    e_kwh: list[float | None] = []
    e_soc: list[float | None] = []
    e_limit: list[float | None] = []
    e_reason: list[str | None] = []
    e_discharge: list[bool | None] = []
    for n, (_, i) in enumerate(sorted(first.items()), 1):
        message = messages[i]
        site_id.append(message.site_id)
        seq.append(message.seq)
        sent_at.append(message.sent_at)
        received_at.append(times[i])
        import_kw.append(message.site_import_kw)
        base_kw.append(message.base_load_kw)
        for e in message.evses:
            e_n.append(n)
            e_cp.append(e.charger_id)
            e_evse.append(e.evse_id)
            e_kw.append(e.power_kw)
            e_kwh.append(e.energy_kwh)
            e_soc.append(e.soc_percent)
            limit_kw, reason, discharge = _limit_columns(e)
            e_limit.append(limit_kw)
            e_reason.append(reason)
            e_discharge.append(discharge)
    return {
        "site_id": site_id,
        "seq": seq,
        "sent_at": sent_at,
        "received_at": received_at,
        "site_import_kw": import_kw,
        "base_load_kw": base_kw,
        "e_n": e_n,
        "e_charger_id": e_cp,
        "e_evse_id": e_evse,
        "e_power_kw": e_kw,
        "e_energy_kwh": e_kwh,
        "e_soc_percent": e_soc,
        "e_limit_kw": e_limit,
        "e_limit_reason": e_reason,
        "e_limit_discharge": e_discharge,
    }


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
            "limit_kw": None if evse.limit is None else evse.limit.power_kw,
            "limit_reason": None if evse.limit is None else evse.limit.reason,
            "limit_discharge": None if evse.limit is None else evse.limit.discharge,
        }
        for evse in message.evses
    ]


def _limit_columns(evse: EvseTelemetry) -> tuple[float | None, str | None, bool | None]:
    """``limit_kw``, ``limit_reason`` (its value) and ``limit_discharge`` of one EVSE reading."""
    limit = evse.limit
    if limit is None:
        return None, None, None
    return limit.power_kw, limit.reason.value, limit.discharge


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
