"""Storing the gateways' telemetry, once per ``(site_id, seq)``.

MQTT QoS 1 delivers at least once, so the same message can arrive again (after a reconnect, or from a
gateway's outbox replay). The ``telemetry`` table's ``UNIQUE (site_id, seq)`` decides: the insert is
``INSERT ... ON CONFLICT (site_id, seq) DO NOTHING``, one statement on SQLite and PostgreSQL alike,
so concurrent ingestion workers cannot both store a message.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Insert, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from aggregator.db.models import EvseTelemetryRecord, TelemetryRecord, utcnow
from site_gateway.contract import Telemetry


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
    row = {
        "site_id": message.site_id,
        "seq": message.seq,
        "sent_at": message.sent_at,
        "received_at": received_at or utcnow(),
        "site_import_kw": message.site_import_kw,
        "base_load_kw": message.base_load_kw,
    }
    statement = _insert_ignoring_duplicates(session).values(row).returning(TelemetryRecord.id)
    telemetry_id = session.execute(statement).scalar_one_or_none()
    if telemetry_id is None:
        return False
    if message.evses:
        session.execute(
            insert(EvseTelemetryRecord),
            [
                {
                    "telemetry_id": telemetry_id,
                    "charger_id": evse.charger_id,
                    "evse_id": evse.evse_id,
                    "power_kw": evse.power_kw,
                    "energy_kwh": evse.energy_kwh,
                    "soc_percent": evse.soc_percent,
                }
                for evse in message.evses
            ],
        )
    return True


def _insert_ignoring_duplicates(session: Session) -> Insert:
    dialect = session.get_bind().dialect.name
    conflict = ["site_id", "seq"]
    if dialect == "postgresql":
        return postgresql.insert(TelemetryRecord).on_conflict_do_nothing(index_elements=conflict)
    if dialect == "sqlite":
        return sqlite.insert(TelemetryRecord).on_conflict_do_nothing(index_elements=conflict)
    raise UnsupportedBackendError(
        f"cannot store telemetry on {dialect!r}: fleetgrid supports sqlite and postgresql"
    )
