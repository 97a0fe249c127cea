"""What the OCPP server tells the rest of the gateway: typed events for an async sink, and token lookups.

Every event carries the charge point id and the time the gateway received it; values are in our units
(W, Wh, %, timezone-aware datetimes) whatever the OCPP version. The gateway forwards them to MQTT.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from site_gateway.ocpp.capabilities import NO_DISCHARGE, DischargeCapability


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    charge_point_id: str
    received_at: datetime


class StationBooted(_Event):
    kind: Literal["boot"] = "boot"
    ocpp_version: str  # the negotiated subprotocol, e.g. "ocpp2.0.1"
    vendor: str
    model: str
    serial_number: str | None = None
    firmware_version: str | None = None
    reason: str | None = None  # 2.x boot reason


class ConnectorStatusChanged(_Event):
    kind: Literal["status"] = "status"
    evse_id: int  # 1.6: the connector id (0 = the whole charge point)
    connector_id: int
    status: str  # as the charger says it: "Available", "Charging", "Occupied", "Faulted", ...
    error_code: str | None = None  # 1.6 only


class SessionStarted(_Event):
    kind: Literal["session_started"] = "session_started"
    evse_id: int
    transaction_id: str
    started_at: datetime
    id_token: str | None = None
    driver_id: str | None = None
    vehicle_id: str | None = None
    meter_start_wh: float | None = None
    resumed: bool = False  # first seen mid-transaction (gateway restarted, or Started was lost)
    discharge: DischargeCapability = NO_DISCHARGE
    """What the session may discharge so far (the charger's declaration; the vehicle's needs may
    change it, :class:`ChargingNeedsReported`)."""


class SessionAuthorized(_Event):
    """An idToken presented during a running transaction (a card tapped after plug-in): the session's
    driver from now on."""

    kind: Literal["session_authorized"] = "session_authorized"
    evse_id: int
    transaction_id: str
    id_token: str
    driver_id: str | None = None
    vehicle_id: str | None = None


class SessionStopped(_Event):
    kind: Literal["session_stopped"] = "session_stopped"
    evse_id: int
    transaction_id: str
    stopped_at: datetime
    meter_stop_wh: float | None = None
    energy_wh: float | None = None  # meter_stop - meter_start when both are known
    reason: str | None = None
    id_token: str | None = None  # the session's token, however late it came


class MeterReading(_Event):
    kind: Literal["meter"] = "meter"
    evse_id: int
    measured_at: datetime
    transaction_id: str | None = None
    energy_wh: float | None = None  # Energy.Active.Import.Register
    export_energy_wh: float | None = None  # Energy.Active.Export.Register (bidirectional chargers)
    power_w: float | None = None  # import minus export: negative while discharging
    soc_pct: float | None = None


class ChargingNeedsReported(_Event):
    kind: Literal["charging_needs"] = "charging_needs"
    evse_id: int
    transaction_id: str | None = None
    requested_energy_transfer: str  # e.g. "AC_three_phase", "DC_BPT"
    departure_time: datetime | None = None
    energy_request_wh: float | None = None
    max_charge_power_w: float | None = None
    max_discharge_power_w: float | None = None  # 2.1 V2X parameters
    soc_pct: float | None = None
    discharge: DischargeCapability | None = None
    """What the session may discharge after these needs (``None``: no session to apply them to)."""


OcppEvent = Annotated[
    StationBooted
    | ConnectorStatusChanged
    | SessionStarted
    | SessionAuthorized
    | SessionStopped
    | MeterReading
    | ChargingNeedsReported,
    Field(discriminator="kind"),
]

EventSink = Callable[[OcppEvent], Awaitable[None]]


class TokenIdentity(BaseModel):
    """Who an idToken belongs to."""

    model_config = ConfigDict(frozen=True)

    driver_id: str | None = None
    vehicle_id: str | None = None


TokenLookup = Callable[[str], Awaitable[TokenIdentity | None]]
"""Resolve an idToken (1.6 idTag) to a driver/vehicle; None for an unknown token."""


async def discard_events(event: OcppEvent) -> None:
    """Default sink: drop the event."""


async def no_tokens(id_token: str) -> TokenIdentity | None:
    """Default lookup: no token is known."""
    return None
