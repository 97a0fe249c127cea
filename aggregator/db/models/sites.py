"""Sites, their chargers, and the charging sessions at them with the drivers' overrides."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint, event
from sqlalchemy.orm import Mapped, Mapper, mapped_column, relationship

from aggregator.db.models.base import Base, ImmutableRowError, utcnow

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
