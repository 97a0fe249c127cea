"""What the drivers' API (``/driver/...``) accepts and returns: vehicles, V2G consent, charging
sessions, session overrides and the energy summary.

Powers are in kW, energies in kWh, states of charge in percent (0..100). Times are ISO-8601 with an
offset (UTC in responses); a time without an offset is refused.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aggregator.db.models import ScheduleStatus

DEPARTURE_TIME_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"

VehicleName = Annotated[str, Field(min_length=1, max_length=100)]
BatteryKwh = Annotated[float, Field(gt=0, description="Usable battery capacity [kWh]")]
ChargeKw = Annotated[float, Field(ge=0, description="Maximum charging power [kW]")]
DischargeKw = Annotated[
    float, Field(ge=0, description="Maximum discharging power [kW]; 0 unless V2G capable")
]
IdToken = Annotated[
    str, Field(min_length=1, max_length=64, description="RFID / contract id used at chargers")
]
DepartureTime = Annotated[
    str, Field(pattern=DEPARTURE_TIME_PATTERN, description="Default departure, local HH:MM at the site")
]
SocPercent = Annotated[float, Field(ge=0, le=100, description="State of charge [%]")]
ReserveKwh = Annotated[float, Field(ge=0, description="Energy V2G must leave in the battery [kWh]")]


# ------------------------------------------------------------------------------------------ vehicles


class VehicleCreate(BaseModel):
    """A driver registering a vehicle. ``max_discharge_kw`` > 0 needs ``v2g_capable``."""

    model_config = ConfigDict(extra="forbid")

    name: VehicleName
    battery_kwh: BatteryKwh
    max_charge_kw: ChargeKw
    max_discharge_kw: DischargeKw = 0.0
    v2g_capable: bool = False
    id_token: IdToken | None = None
    departure_time: DepartureTime | None = None
    target_soc_percent: SocPercent = 80.0


_NOT_NULL_VEHICLE_FIELDS = (
    "name",
    "battery_kwh",
    "max_charge_kw",
    "max_discharge_kw",
    "v2g_capable",
    "target_soc_percent",
)


class VehicleUpdate(BaseModel):
    """A change of a vehicle's details or charging preferences: only the fields sent are changed.

    ``id_token`` and ``departure_time`` may be sent as ``null`` to clear them; the other fields may not.
    """

    model_config = ConfigDict(extra="forbid")

    name: VehicleName | None = None
    battery_kwh: BatteryKwh | None = None
    max_charge_kw: ChargeKw | None = None
    max_discharge_kw: DischargeKw | None = None
    v2g_capable: bool | None = None
    id_token: IdToken | None = None
    departure_time: DepartureTime | None = None
    target_soc_percent: SocPercent | None = None

    @field_validator(*_NOT_NULL_VEHICLE_FIELDS)
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs only for fields that were sent: a default is not validated.
        if value is None:
            raise ValueError(f"{info.field_name} cannot be cleared (null); leave it out to keep it")
        return value

    def changes(self) -> dict[str, Any]:
        """The fields that were sent, with their new values."""
        return self.model_dump(exclude_unset=True)


class VehiclePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    battery_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    v2g_capable: bool
    id_token: str | None
    departure_time: str | None
    target_soc_percent: float
    created_at: dt.datetime


# ------------------------------------------------------------------------------------------ consent


class ConsentGive(BaseModel):
    """Give (or change) V2G consent: V2G may discharge the vehicle down to ``min_reserve_kwh``."""

    model_config = ConfigDict(extra="forbid")

    min_reserve_kwh: ReserveKwh


class ConsentStatePublic(BaseModel):
    """One state of the consent history; a withdrawal repeats the consent it ends."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    min_reserve_kwh: float
    given_at: dt.datetime
    withdrawn_at: dt.datetime | None
    supersedes_id: int | None
    active: bool


class ConsentPublic(BaseModel):
    """A vehicle's V2G consent: the one in force (``None`` if none) and every state, oldest first."""

    vehicle_id: int
    current: ConsentStatePublic | None
    history: list[ConsentStatePublic]


# ---------------------------------------------------------------------------------------- overrides


class OverrideCreate(BaseModel):
    """A driver's instruction for one session; fields left out keep the vehicle's defaults.

    ``departure_at`` must be in the future and after the session started.
    """

    model_config = ConfigDict(extra="forbid")

    departure_at: AwareDatetime | None = None
    target_soc_percent: SocPercent | None = None
    charge_now: bool = False
    """Charge at full power until the target is reached, whatever it costs."""
    no_v2g: bool = False
    """No discharging for this session (and no V2G earnings from it)."""

    @model_validator(mode="after")
    def _sets_something(self) -> OverrideCreate:
        if (
            self.departure_at is None
            and self.target_soc_percent is None
            and not self.charge_now
            and not self.no_v2g
        ):
            raise ValueError(
                "an empty override: set at least one of departure_at, target_soc_percent, charge_now, no_v2g"
            )
        return self


class OverridePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    session_id: int
    created_by_id: int
    created_at: dt.datetime
    departure_at: dt.datetime | None
    target_soc_percent: float | None
    charge_now: bool
    no_v2g: bool


# ----------------------------------------------------------------------------------------- sessions


class SessionPublic(BaseModel):
    """A charging session of one of the driver's vehicles."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    vehicle_id: int
    site_id: str
    evse_id: int
    started_at: dt.datetime
    stopped_at: dt.datetime | None
    energy_kwh: float | None
    """Net energy into the vehicle so far [kWh] (the total once stopped); ``None`` before a reading."""


DepartureSource = Literal["override", "session", "vehicle_default"]


class PlannedPower(BaseModel):
    """This session's part of the latest schedule of its site: one power per step from
    ``horizon_start`` [kW], positive charging, negative discharging."""

    schedule_version_id: int
    created_at: dt.datetime
    status: ScheduleStatus
    horizon_start: dt.datetime
    step_seconds: int
    evse_id: str | None
    power_kw: list[float]


class SessionDetail(SessionPublic):
    energy_request_kwh: float | None
    soc_at_start_percent: float | None
    departure_at: dt.datetime | None
    """When the vehicle is expected to leave: the override's, else the one the session reported, else
    the vehicle's default ``departure_time`` (next occurrence after the start, in the site's zone)."""
    departure_source: DepartureSource | None
    target_soc_percent: float
    """The state of charge [%] wanted at departure: the override's, else the vehicle's default."""
    override: OverridePublic | None
    """The override in force (the latest), ``None`` if the driver gave none."""
    planned: PlannedPower | None
    """``None`` when the site's latest schedule does not include this session (or there is none)."""


# ------------------------------------------------------------------------------------------- energy


class VehicleEnergy(BaseModel):
    vehicle_id: int
    name: str
    sessions: int
    """Sessions that started in the range."""
    charged_kwh: float
    """Net energy into the vehicle [kWh] over those sessions (sessions without a reading count 0)."""


class EnergySummary(BaseModel):
    """Energy per vehicle and in total over sessions that started in ``[start, end)``.

    Discharged (V2G) energy and earnings are reported by settlement, not here.
    """

    start: dt.datetime | None
    end: dt.datetime | None
    vehicles: list[VehicleEnergy]
    total_sessions: int
    total_charged_kwh: float
