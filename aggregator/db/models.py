"""The aggregator's relational schema: SQLAlchemy 2 typed declarative models.

One section per domain: people and credentials, vehicles and V2G consent, sites and chargers, programs
and dispatch events, charging sessions, what the gateways report (telemetry, status), and the schedules
the control loop made. Alembic migrations under ``migrations/`` are generated from this metadata and a
test checks they stay equal.

Conventions:

- Every timestamp is a :class:`~aggregator.db.types.UtcDateTime`: aware UTC in, aware UTC out, on
  SQLite and PostgreSQL alike. Columns end in ``_at``.
- Units in the column name (``_kw``, ``_kwh``, ``_seconds``).
- Enums are stored as their values; the wire enums of ``wire.contract`` and
  ``market_adapters.dispatch`` are reused rather than copied.
- Constraint names follow :data:`NAMING_CONVENTION`, so migrations can address them.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column, relationship

from aggregator.db.types import UtcDateTime, value_enum
from market_adapters.dispatch import GridSignal, SignalKind, SignalStatus
from wire.contract import GatewayState

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


# ---------------------------------------------------------------------------- people and credentials


class Role(enum.StrEnum):
    DRIVER = "driver"
    GRID_OPERATOR = "grid_operator"
    TRADER = "trader"
    GATEWAY = "gateway"
    ADMIN = "admin"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(value_enum(Role, "role"))
    is_active: Mapped[bool] = mapped_column(default=True)
    """An admin deactivates an account instead of deleting it (its ledger history stays)."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    vehicles: Mapped[list[Vehicle]] = relationship(back_populates="owner")


class ApiKey(Base):
    """A machine credential (a gateway's, a script's). Only a hash of the key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str | None] = mapped_column(String(100))
    """What the key is for (``"depot-1 gateway"``), for the admin who lists keys."""
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"), index=True)
    """The site a gateway key speaks for; ``None`` for keys not bound to a site."""
    revoked: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --------------------------------------------------------------------------- vehicles and V2G consent


class Vehicle(Base):
    __tablename__ = "vehicles"
    __table_args__ = (
        CheckConstraint("battery_kwh > 0", name="battery_kwh_positive"),
        CheckConstraint("max_charge_kw >= 0", name="max_charge_kw_not_negative"),
        CheckConstraint("max_discharge_kw >= 0", name="max_discharge_kw_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    battery_kwh: Mapped[float]
    max_charge_kw: Mapped[float]
    max_discharge_kw: Mapped[float]
    v2g_capable: Mapped[bool] = mapped_column(default=False)
    id_token: Mapped[str | None] = mapped_column(String(64), unique=True)
    """The RFID / contract id the vehicle's driver presents at a charger; how a charging session is
    matched to this vehicle (``ChargingSession.id_token``)."""
    departure_time: Mapped[str | None] = mapped_column(String(5))
    """Default departure, local ``HH:MM`` at the site; ``None`` for none (then the dwell forecast)."""
    target_soc_percent: Mapped[float] = mapped_column(default=80.0)
    """Default state of charge [%] wanted at departure."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    owner: Mapped[User] = relationship(back_populates="vehicles")


class V2gConsent(Base):
    """One state of a vehicle's V2G consent; append-only, so the history is the table.

    A driver giving (or changing) consent appends a row with ``withdrawn_at`` ``None``; withdrawing
    appends a row that repeats the consent it ends (``given_at``, ``min_reserve_kwh``) with
    ``withdrawn_at`` set. The vehicle's current state is its row with the highest ``id``
    (see :mod:`aggregator.db.consents`). Updating a row raises :class:`ImmutableRowError`.
    """

    __tablename__ = "v2g_consents"
    __table_args__ = (
        CheckConstraint("min_reserve_kwh >= 0", name="min_reserve_kwh_not_negative"),
        Index(None, "vehicle_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id"))
    min_reserve_kwh: Mapped[float]
    """Energy [kWh] V2G must leave in the battery."""
    given_at: Mapped[dt.datetime]
    withdrawn_at: Mapped[dt.datetime | None]
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("v2g_consents.id"))
    """The vehicle's previous state, ``None`` for its first."""

    @property
    def active(self) -> bool:
        return self.withdrawn_at is None


@event.listens_for(V2gConsent, "before_update")
def _refuse_consent_update(mapper: Mapper[Any], connection: Any, target: V2gConsent) -> None:
    raise ImmutableRowError(
        f"v2g_consents row {target.id} is history and cannot be updated; append a new state instead"
    )


# ------------------------------------------------------------------------------- sites and chargers


class Site(Base):
    __tablename__ = "sites"
    __table_args__ = (
        CheckConstraint("import_limit_kw >= 0", name="import_limit_kw_not_negative"),
        CheckConstraint("export_limit_kw >= 0", name="export_limit_kw_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The site's slug; also its gateway's MQTT username and topic segment (``SITE_ID_PATTERN``)."""
    name: Mapped[str] = mapped_column(String(200))
    import_limit_kw: Mapped[float]
    export_limit_kw: Mapped[float]
    tariff_ref: Mapped[str | None] = mapped_column(String(200))
    """Which tariff prices this site's import (a tariff file name or URDB label)."""
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    """IANA zone name of the site, for local-time tariffs and reports."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    chargers: Mapped[list[Charger]] = relationship(back_populates="site", order_by="Charger.id")


class Charger(Base):
    """One EVSE of a charging station (OCPP charge point id + EVSE id / 1.6 connector id)."""

    __tablename__ = "chargers"
    __table_args__ = (
        UniqueConstraint("site_id", "charge_point_id", "evse_id"),
        CheckConstraint("max_kw >= 0", name="max_kw_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    charge_point_id: Mapped[str] = mapped_column(String(64))
    evse_id: Mapped[int]
    max_kw: Mapped[float]
    bidirectional: Mapped[bool] = mapped_column(default=False)

    site: Mapped[Site] = relationship(back_populates="chargers")


# ----------------------------------------------------------------------- programs and dispatch events


class ProgramSite(Base):
    """A site enrolled in a program: an event for the whole program is shared among these sites."""

    __tablename__ = "program_sites"

    program_id: Mapped[str] = mapped_column(ForeignKey("programs.id"), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    enrolled_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ProgramKind(enum.StrEnum):
    DR = "dr"
    V2G = "v2g"


class Program(Base):
    __tablename__ = "programs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The program's slug; what :attr:`GridSignal.program_id` names."""
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[ProgramKind] = mapped_column(value_enum(ProgramKind, "program_kind"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    """The grid operator who runs the program and posts its events."""
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    payment_terms: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """How the program pays (per kWh, per kW-hour available, per event, capacity), its penalties,
    the platform fee and wear compensation; validated by ``aggregator.settlement``."""
    measurement: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """How delivery is measured: the baseline method and its parameters (``aggregator.settlement``)."""
    unpaid: Mapped[bool] = mapped_column(default=False)
    """The operator declared that the program pays nothing (``fleetgrid admin create-program
    --unpaid``): no ``payment_terms``, and its events are planned without payment on purpose."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    sites: Mapped[list[Site]] = relationship(secondary="program_sites", order_by="Site.id")
    events: Mapped[list[DispatchEvent]] = relationship(back_populates="program", order_by="DispatchEvent.id")


class DispatchEvent(Base):
    """One version of a grid operator's event, as a :class:`GridSignal` carries it.

    ``(source, external_event_id, modification)`` is unique: a modification is a new row, so the
    versions an event went through are all kept, and a redelivered version is refused by the
    constraint. Events posted through our API use source ``"api"``.
    """

    __tablename__ = "dispatch_events"
    __table_args__ = (
        UniqueConstraint("source", "external_event_id", "modification"),
        CheckConstraint("window_end > window_start", name="window_ordered"),
        Index(None, "window_start", "window_end"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    program_id: Mapped[str | None] = mapped_column(ForeignKey("programs.id"), index=True)
    """``None`` while an adapter's event is not mapped to one of our programs."""
    source: Mapped[str] = mapped_column(String(200))
    external_event_id: Mapped[str] = mapped_column(String(200))
    modification: Mapped[int] = mapped_column(BigInteger, default=0)
    """The source's version number: 0, 1, 2 ... from our API and OpenADR 2.0b, the modification time in
    epoch milliseconds from OpenADR 3."""
    kind: Mapped[SignalKind] = mapped_column(value_enum(SignalKind, "signal_kind"))
    status: Mapped[SignalStatus] = mapped_column(value_enum(SignalStatus, "signal_status"))
    price_per_kwh: Mapped[float | None]
    """Paid per kWh delivered [currency/kWh]; ``None`` for the program's payment terms."""
    penalty_per_kwh: Mapped[float | None]
    """Charged per kWh short of the request [currency/kWh]; ``None`` for the program's terms."""
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    """The grid operator who posted this version through the API; ``None`` for adapter events."""
    window_start: Mapped[dt.datetime]
    window_end: Mapped[dt.datetime]
    intervals: Mapped[list[Any]]
    """``[{"start": ISO 8601, "end": ISO 8601, "value": float}, ...]``; unit by ``kind`` (see
    :mod:`market_adapters.dispatch`)."""
    currency: Mapped[str | None] = mapped_column(String(3))
    target_sites: Mapped[list[Any]] = mapped_column(default=list)
    """Our site ids the event names; empty for the whole portfolio."""
    received_at: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    program: Mapped[Program | None] = relationship(back_populates="events")

    @classmethod
    def from_signal(cls, signal: GridSignal) -> DispatchEvent:
        return cls(
            program_id=signal.program_id,
            source=signal.source,
            external_event_id=signal.event_id,
            modification=signal.modification,
            kind=signal.kind,
            status=signal.status,
            window_start=signal.start,
            window_end=signal.end,
            intervals=[interval.model_dump(mode="json") for interval in signal.intervals],
            currency=signal.currency,
            target_sites=list(signal.target_sites),
            received_at=signal.received_at,
        )


# ------------------------------------------------------------------------------- charging sessions


class ChargingSession(Base):
    """A vehicle's stay at an EVSE, from plug-in to unplug, built from the gateway's session events."""

    __tablename__ = "charging_sessions"
    __table_args__ = (
        UniqueConstraint("charger_id", "transaction_id"),
        Index(None, "site_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    charger_id: Mapped[int] = mapped_column(ForeignKey("chargers.id"))
    evse_id: Mapped[int]
    transaction_id: Mapped[str | None] = mapped_column(String(64))
    """The charger's transaction id; ``None`` until the transaction starts."""
    vehicle_id: Mapped[int | None] = mapped_column(ForeignKey("vehicles.id"), index=True)
    """The vehicle, once the id token is matched to one."""
    id_token: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[dt.datetime]
    stopped_at: Mapped[dt.datetime | None]
    energy_kwh: Mapped[float | None]
    """Net energy into the vehicle so far [kWh] (the total once stopped)."""
    departure_at: Mapped[dt.datetime | None]
    energy_request_kwh: Mapped[float | None]
    soc_at_start_percent: Mapped[float | None]
    """The vehicle's state of charge when the session started, as first reported."""


class SessionOverride(Base):
    """A driver's instruction for one charging session; append-only, the latest row applies.

    "I need the car at 07:00 with 80 %" sets ``departure_at`` and ``target_soc_percent``;
    "charge now, no V2G this session" sets ``charge_now`` and ``no_v2g``. Fields left ``None`` keep
    the vehicle's defaults. A session with ``no_v2g`` earns nothing from V2G events (settlement).
    """

    __tablename__ = "session_overrides"
    __table_args__ = (
        CheckConstraint(
            "target_soc_percent IS NULL OR (target_soc_percent >= 0 AND target_soc_percent <= 100)",
            name="target_soc_percent_range",
        ),
        Index(None, "session_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("charging_sessions.id"))
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    departure_at: Mapped[dt.datetime | None]
    target_soc_percent: Mapped[float | None]
    charge_now: Mapped[bool] = mapped_column(default=False)
    """Charge at full power until the target is reached, whatever it costs."""
    no_v2g: Mapped[bool] = mapped_column(default=False)
    """No discharging for this session (and no V2G earnings from it)."""


@event.listens_for(SessionOverride, "before_update")
def _refuse_override_update(mapper: Mapper[Any], connection: Any, target: SessionOverride) -> None:
    raise ImmutableRowError(f"session_overrides row {target.id} is history; append a new override instead")


# ------------------------------------------------------------------------ what the gateways report


class TelemetryRecord(Base):
    """One :class:`wire.contract.Telemetry` message.

    ``UNIQUE (site_id, seq)`` is how ingestion drops the broker's redeliveries (see
    :func:`aggregator.db.telemetry.insert_telemetry_once`).
    """

    __tablename__ = "telemetry"
    __table_args__ = (
        UniqueConstraint("site_id", "seq"),
        Index(None, "site_id", "sent_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[dt.datetime]
    received_at: Mapped[dt.datetime]
    site_import_kw: Mapped[float]
    """Net import at the grid connection [kW]; negative when the site exports."""
    base_load_kw: Mapped[float | None]

    evses: Mapped[list[EvseTelemetryRecord]] = relationship(
        back_populates="telemetry",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
        order_by="(EvseTelemetryRecord.charger_id, EvseTelemetryRecord.evse_id)",
    )


class EvseTelemetryRecord(Base):
    """One EVSE's reading within a telemetry message."""

    __tablename__ = "telemetry_evses"

    telemetry_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("telemetry.id", ondelete="CASCADE"), primary_key=True
    )
    charger_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The charge point id as the gateway reported it (not a key into ``chargers``: telemetry is
    stored even for a charger the centre does not know yet)."""
    evse_id: Mapped[int] = mapped_column(primary_key=True)
    power_kw: Mapped[float]
    """Positive charging, negative discharging [kW]."""
    energy_kwh: Mapped[float | None]
    soc_percent: Mapped[float | None]

    telemetry: Mapped[TelemetryRecord] = relationship(back_populates="evses")


class GatewayStatusRecord(Base):
    """The latest known status of each site's gateway (one row per site)."""

    __tablename__ = "gateway_status"

    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    state: Mapped[GatewayState] = mapped_column(value_enum(GatewayState, "gateway_state"))
    reason: Mapped[str | None] = mapped_column(String(200))
    since: Mapped[dt.datetime | None]
    """When the gateway entered ``state``, as it reported; ``None`` when unknown (the last will)."""
    last_seen_at: Mapped[dt.datetime]
    """When the centre last received anything from the gateway."""
    last_seq: Mapped[int | None] = mapped_column(BigInteger)
    """``seq`` of the status message recorded here, so an older redelivery cannot overwrite it."""


# ---------------------------------------------------------------------------------------- schedules


class ScheduleStatus(enum.StrEnum):
    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    """The solver's best schedule when it hit its time limit."""
    HEURISTIC = "heuristic"
    """Made by a rule, not the solver."""
    SHIFTED = "shifted"
    """The previous version moved forward in time, because no new schedule was found."""


class ScheduleVersion(Base):
    """Every schedule the control loop made for a site, with what it was made from."""

    __tablename__ = "schedule_versions"
    __table_args__ = (
        CheckConstraint("step_seconds > 0", name="step_seconds_positive"),
        Index(None, "site_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    horizon_start: Mapped[dt.datetime]
    step_seconds: Mapped[int]
    trigger: Mapped[str] = mapped_column(String(200), default="cadence")
    """Why it was made: ``cadence``, ``arrival``, ``departure``, ``override``, ``event``,
    ``gateway_online``, ``what_if`` ... (with detail, e.g. ``override:session 12``)."""
    inputs: Mapped[dict[str, Any]]
    """What the optimiser was given: ``{"scenario": <optimizer Scenario JSON>, "sessions": {vehicle id
    in the scenario: charging_sessions.id}, "events": [dispatch_events.id, ...]}``; enough to explain
    and to re-run the result. A site planned with others for a shared dispatch event also has
    ``"event_shares": {public event id: [kW committed by this site per step]}`` and ``"portfolio":
    {"site_ids", "events", "status", "message"}`` (see ``aggregator.control.groups``). A plan with
    dispatch events has ``"event_baselines": {public event id: [baseline import kW per step]}``, each
    vehicle at the power frozen when the event was first planned with it
    (``aggregator.programs.event_baselines``)."""
    result_summary: Mapped[dict[str, Any]]
    status: Mapped[ScheduleStatus] = mapped_column(value_enum(ScheduleStatus, "schedule_status"))
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The schedule: ``{"site_import_kw": [...], "vehicles": {scenario vehicle id: {"power_kw":
    [...], "evse_id": str}}}``, one value per step from ``horizon_start`` (positive charging)."""
    counterfactual: Mapped[dict[str, Any] | None] = mapped_column(JSON())
    """The same plan made without the dispatch events, when there were any: the site's and each
    vehicle's expected import without the event, for performance and vehicle attribution."""
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("schedule_versions.id"))


class CommandStatus(enum.StrEnum):
    PENDING = "pending"
    """Published (or queued to be), no acknowledgement yet."""
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERROR = "error"


class SetpointCommandRecord(Base):
    """Each :class:`wire.contract.SetpointCommand` the centre published, and the gateway's ack."""

    __tablename__ = "setpoint_commands"
    __table_args__ = (Index(None, "site_id", "issued_at"),)

    command_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    schedule_version_id: Mapped[int | None] = mapped_column(ForeignKey("schedule_versions.id"))
    issued_at: Mapped[dt.datetime]
    valid_until: Mapped[dt.datetime]
    payload: Mapped[dict[str, Any]]
    status: Mapped[CommandStatus] = mapped_column(
        value_enum(CommandStatus, "command_status"), default=CommandStatus.PENDING
    )
    acked_at: Mapped[dt.datetime | None]
    ack_outcomes: Mapped[list[Any]] = mapped_column(default=list)
    """The gateway's per-EVSE outcomes (:class:`wire.contract.EvseOutcome` JSON)."""
    ack_detail: Mapped[str | None] = mapped_column(String(500))


# ---------------------------------------------------------------------------------------- settlement


class LedgerAccountKind(enum.StrEnum):
    """What a ledger account records; its owner ref says whose (see :mod:`aggregator.settlement.ledger`)."""

    PROGRAM_RECEIVABLE = "program_receivable"
    """What a program (its grid operator) owes us; owner ``program:<id>``."""
    PENALTIES = "penalties"
    """Penalties a program withholds for under-delivery; owner ``program:<id>``."""
    PLATFORM_REVENUE = "platform_revenue"
    """Our fee; owner ``platform``."""
    WEAR_COMPENSATION_EXPENSE = "wear_compensation_expense"
    """Battery wear we compensate drivers for; owner ``platform``."""
    DRIVER_PAYABLE = "driver_payable"
    """What we owe a driver; owner ``user:<id>``."""


class SettlementRunKind(enum.StrEnum):
    EVENT = "event"
    PERIOD = "period"


class SettlementRun(Base):
    """One version of the settlement of a scope (an event, or a program's period); append-only.

    ``inputs`` is the canonical form of what was booked and ``inputs_hash`` its SHA-256, so a re-run
    with the same inputs is recognised. A run with changed inputs is the scope's next ``version``; it
    reverses the previous version's transactions and books its own. ``UNIQUE (scope, version)`` is
    what stops two concurrent runs of a scope from both booking.
    """

    __tablename__ = "settlement_runs"
    __table_args__ = (
        UniqueConstraint("scope", "version"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(300))
    """What is settled: ``event:<event ref>`` or ``period:<program id>:<start>/<end>``."""
    kind: Mapped[SettlementRunKind] = mapped_column(value_enum(SettlementRunKind, "settlement_run_kind"))
    version: Mapped[int]
    inputs_hash: Mapped[str] = mapped_column(String(64))
    """Hex SHA-256 of the canonical JSON of ``inputs``."""
    inputs: Mapped[dict[str, Any]]
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("settlement_runs.id"))
    """The scope's previous version, ``None`` for version 1."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LedgerAccount(Base):
    """An account of the double-entry ledger: ``(kind, owner_ref, currency)`` is unique."""

    __tablename__ = "ledger_accounts"
    __table_args__ = (UniqueConstraint("kind", "owner_ref", "currency"), Index(None, "owner_ref"))

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[LedgerAccountKind] = mapped_column(value_enum(LedgerAccountKind, "ledger_account_kind"))
    owner_ref: Mapped[str] = mapped_column(String(100))
    """``program:<id>``, ``user:<id>`` or ``platform``."""
    currency: Mapped[str] = mapped_column(String(3))
    """ISO 4217 code; every entry on the account is in it."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LedgerTransaction(Base):
    """A balanced set of entries, booked at once; append-only.

    Its entries sum to zero in each currency: checked before insert by
    :func:`aggregator.settlement.ledger.post_transaction` and, on PostgreSQL, at commit by a deferred
    constraint trigger (migration 0003). A correction is a new transaction with ``reverses_id`` set
    (``UNIQUE``, so a transaction is reversed at most once), never an update.
    """

    __tablename__ = "ledger_transactions"
    __table_args__ = (UniqueConstraint("reverses_id"), Index(None, "occurred_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("settlement_runs.id"), index=True)
    """The settlement run that booked it; ``None`` for a transaction booked by hand."""
    description: Mapped[str] = mapped_column(String(500))
    occurred_at: Mapped[dt.datetime]
    """When what it books happened (an event's start, a period's start); balances over a time range
    select by it. A reversal keeps the reversed transaction's ``occurred_at``."""
    booked_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reverses_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("ledger_transactions.id"))

    entries: Mapped[list[LedgerEntry]] = relationship(
        back_populates="transaction", order_by="LedgerEntry.id", lazy="selectin"
    )


class LedgerEntry(Base):
    """One line of a transaction: ``amount_minor`` in the account's currency's minor unit (cents),
    positive for a debit, negative for a credit; append-only."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount_minor <> 0", name="amount_minor_not_zero"),
        Index(None, "account_id", "transaction_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    transaction_id: Mapped[int] = mapped_column(BigId, ForeignKey("ledger_transactions.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    memo: Mapped[str] = mapped_column(String(300), default="")

    transaction: Mapped[LedgerTransaction] = relationship(back_populates="entries")
    account: Mapped[LedgerAccount] = relationship(lazy="joined")


def _refuse_ledger_update(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    # A row is flushed as "dirty" when only a collection of it changed (entries added to a new
    # transaction); only a changed column is an update.
    state = inspect(target)
    changed = [prop.key for prop in mapper.column_attrs if state.attrs[prop.key].history.has_changes()]
    if changed:
        raise ImmutableRowError(
            f"{target.__tablename__} row {target.id} is settlement history and cannot be changed "
            f"({', '.join(changed)}); book a reversing transaction (or a new settlement run) instead"
        )


def _refuse_ledger_delete(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    raise ImmutableRowError(
        f"{target.__tablename__} row {target.id} is settlement history and cannot be deleted; "
        "book a reversing transaction (or a new settlement run) instead"
    )


for _ledger_model in (SettlementRun, LedgerAccount, LedgerTransaction, LedgerEntry):
    event.listen(_ledger_model, "before_update", _refuse_ledger_update)
    event.listen(_ledger_model, "before_delete", _refuse_ledger_delete)


# ------------------------------------------------------------------------------------------ disputes


class DisputeEventKind(enum.StrEnum):
    """What happened to a dispute; the resolutions are :attr:`ADJUSTED` and :attr:`REJECTED`."""

    OPENED = "opened"
    COMMENT = "comment"
    ADJUSTED = "adjusted"
    """Resolved in the disputing party's favour with an adjusting ledger transaction."""
    REJECTED = "rejected"
    """Resolved without a change to the ledger, with a note saying why."""


class Dispute(Base):
    """A driver's or grid operator's objection to one ledger entry of their own account; append-only.

    ``account_owner_ref`` is the entry's account owner (``user:<id>``, ``program:<id>``): whose line
    it is. What happened since is :class:`DisputeEvent` rows (see :mod:`aggregator.settlement.disputes`).
    """

    __tablename__ = "disputes"
    __table_args__ = (Index(None, "account_owner_ref", "opened_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ledger_entry_id: Mapped[int] = mapped_column(BigId, ForeignKey("ledger_entries.id"), index=True)
    account_owner_ref: Mapped[str] = mapped_column(String(100))
    opened_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    reason: Mapped[str] = mapped_column(String(2000))
    opened_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DisputeEvent(Base):
    """One step of a dispute's history (opened, a comment, its resolution); append-only.

    A resolution sets ``resolves_id`` to its dispute (``UNIQUE``: a dispute is resolved at most once,
    even by two admins at the same moment); an adjustment names its ledger transaction.
    """

    __tablename__ = "dispute_events"
    __table_args__ = (
        UniqueConstraint("resolves_id"),
        UniqueConstraint("adjustment_transaction_id"),
        CheckConstraint("resolves_id IS NULL OR resolves_id = dispute_id", name="resolves_own_dispute"),
        Index(None, "dispute_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dispute_id: Mapped[int] = mapped_column(ForeignKey("disputes.id"))
    kind: Mapped[DisputeEventKind] = mapped_column(value_enum(DisputeEventKind, "dispute_event_kind"))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    note: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolves_id: Mapped[int | None] = mapped_column(ForeignKey("disputes.id"))
    """The dispute, on its resolution (``adjusted``/``rejected``); ``None`` on other events."""
    adjustment_transaction_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("ledger_transactions.id"))
    """The adjusting ledger transaction of an ``adjusted`` resolution."""


def _refuse_dispute_change(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    raise ImmutableRowError(
        f"{target.__tablename__} row {target.id} is a dispute's history and cannot be changed or "
        "deleted; append a dispute event instead"
    )


for _dispute_model in (Dispute, DisputeEvent):
    event.listen(_dispute_model, "before_update", _refuse_dispute_change)
    event.listen(_dispute_model, "before_delete", _refuse_dispute_change)
