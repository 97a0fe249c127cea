"""People, their credentials, and their vehicles with V2G consent."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, event
from sqlalchemy.orm import Mapped, Mapper, mapped_column, relationship

from aggregator.db.models.base import Base, ImmutableRowError, utcnow
from aggregator.db.types import value_enum

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
