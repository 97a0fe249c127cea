"""What the gateways report: telemetry messages with their EVSE readings, and each gateway's status.

Storing telemetry once per ``(site_id, seq)`` is :mod:`aggregator.db.telemetry`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from aggregator.db.models.base import Base, BigId
from aggregator.db.types import value_enum
from wire.contract import GatewayState, LimitReason


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
    """Net energy into the vehicle since its transaction started [kWh] (import minus export)."""
    soc_percent: Mapped[float | None]
    limit_kw: Mapped[float | None]
    """The most power the gateway let this EVSE have [kW, ≥ 0] when a cap met what was asked
    (:class:`wire.contract.EvseLimit`); ``None`` when only the setpoint limited it."""
    limit_reason: Mapped[LimitReason | None] = mapped_column(value_enum(LimitReason, "limit_reason"))
    """Why ``limit_kw``."""
    limit_discharge: Mapped[bool | None]
    """``limit_kw`` bounds discharging; else charging."""

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
    reads: Mapped[list[Any]] = mapped_column(JSON(), default=list, server_default=text("'[]'"))
    """The centre→site fields added within schema version 1 that the gateway reads, as its latest
    status named them (:attr:`wire.contract.GatewayStatus.reads`; ``[]``: none, or a gateway from
    before the announcement). The control loop sends such a field only to a site whose list names it."""
