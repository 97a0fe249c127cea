"""The aggregator's relational schema: SQLAlchemy 2 typed declarative models, one module per domain.

- :mod:`~aggregator.db.models.base`: the declarative base, naming convention and shared column types;
- :mod:`~aggregator.db.models.accounts`: people and credentials, vehicles and V2G consent;
- :mod:`~aggregator.db.models.sites`: sites and chargers, charging sessions and drivers' overrides;
- :mod:`~aggregator.db.models.programs`: programs, enrolled sites, dispatch events and how each event
  is measured at each site;
- :mod:`~aggregator.db.models.telemetry`: what the gateways report (telemetry, status);
- :mod:`~aggregator.db.models.plans`: the schedules the control loop made and the commands it sent;
- :mod:`~aggregator.db.models.settlement`: settlement runs, the ledger and disputes.

Every model is importable from here (``from aggregator.db.models import Site``), and importing this
package registers every table on ``Base.metadata``: Alembic's ``migrations/env.py`` reads it, and the
migrations under ``migrations/`` are generated from it (a test checks they stay equal).

Conventions:

- Every timestamp is a :class:`~aggregator.db.types.UtcDateTime`: aware UTC in, aware UTC out, on
  SQLite and PostgreSQL alike. Columns end in ``_at``.
- Units in the column name (``_kw``, ``_kwh``, ``_seconds``).
- Enums are stored as their values; the wire enums of ``wire.contract`` and
  ``market_adapters.dispatch`` are reused rather than copied.
- Constraint names follow :data:`NAMING_CONVENTION`, so migrations can address them.
"""

from __future__ import annotations

from aggregator.db.models.accounts import ApiKey, Role, User, V2gConsent, Vehicle
from aggregator.db.models.base import NAMING_CONVENTION, Base, BigId, ImmutableRowError, utcnow
from aggregator.db.models.plans import CommandStatus, ScheduleStatus, ScheduleVersion, SetpointCommandRecord
from aggregator.db.models.programs import DispatchEvent, EventSiteBaseline, Program, ProgramKind, ProgramSite
from aggregator.db.models.settlement import (
    Dispute,
    DisputeEvent,
    DisputeEventKind,
    LedgerAccount,
    LedgerAccountKind,
    LedgerEntry,
    LedgerTransaction,
    SettlementRun,
    SettlementRunKind,
)
from aggregator.db.models.sites import Charger, ChargingSession, SessionOverride, Site
from aggregator.db.models.telemetry import EvseTelemetryRecord, GatewayStatusRecord, TelemetryRecord

__all__ = [
    "NAMING_CONVENTION",
    "ApiKey",
    "Base",
    "BigId",
    "Charger",
    "ChargingSession",
    "CommandStatus",
    "DispatchEvent",
    "Dispute",
    "DisputeEvent",
    "DisputeEventKind",
    "EventSiteBaseline",
    "EvseTelemetryRecord",
    "GatewayStatusRecord",
    "ImmutableRowError",
    "LedgerAccount",
    "LedgerAccountKind",
    "LedgerEntry",
    "LedgerTransaction",
    "Program",
    "ProgramKind",
    "ProgramSite",
    "Role",
    "ScheduleStatus",
    "ScheduleVersion",
    "SessionOverride",
    "SetpointCommandRecord",
    "SettlementRun",
    "SettlementRunKind",
    "Site",
    "TelemetryRecord",
    "User",
    "V2gConsent",
    "Vehicle",
    "utcnow",
]
