"""Scenario schema: everything the scheduler needs to plan one site over one horizon.

These pydantic models are the optimizer's input boundary. A scenario file (JSON or YAML) is exactly
``Scenario.model_json_schema()``; units are in every field name or description:

- power in kW, energy in kWh, prices in currency units per kWh (or per kW for demand charges);
- times are ISO-8601 with a UTC offset; the horizon is ``n_steps`` steps of ``step_minutes`` minutes
  starting at ``start``; step ``k`` covers ``[start + k * step, start + (k + 1) * step)``;
- a per-step series is either one number (the same for every step) or a list of exactly ``n_steps``
  numbers.

Field-level checks (signs, NaN, ranges) live here; cross-object checks (EVSE double-booking, series
lengths, windows inside the horizon) live in :mod:`optimizer.consistency`.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


def _finite_series(value: float | list[float]) -> float | list[float]:
    values = value if isinstance(value, list) else [value]
    for position, item in enumerate(values):
        if not math.isfinite(item):
            where = f" at position {position}" if isinstance(value, list) else ""
            raise ValueError(f"must hold finite numbers, got {item}{where}")
    return value


def _aware(value: dt.datetime) -> dt.datetime:
    """Require an offset and fix it: Python does wall-clock arithmetic between datetimes that share a
    ``ZoneInfo``, which is an hour off across a daylight-saving change. Fixed offsets are exact."""
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(f"must carry a UTC offset (ISO-8601 like 2019-03-01T00:00:00-08:00), got {value}")
    return value.astimezone(dt.timezone(offset))


def _zone(value: str | None) -> str | None:
    if value is not None:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"must be an IANA time zone like Europe/Berlin, got {value!r}") from exc
    return value


Finite = Annotated[float, AfterValidator(_finite)]
NonNegative = Annotated[float, Field(ge=0), AfterValidator(_finite)]
Fraction = Annotated[float, Field(gt=0, le=1)]
Series = Annotated[float | list[float], AfterValidator(_finite_series)]
"""One number for every step, or a list of exactly ``n_steps`` numbers."""
AwareDatetime = Annotated[dt.datetime, AfterValidator(_aware)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(_Model):
    """The grid connection of one depot."""

    id: str = Field(min_length=1)
    import_limit_kw: NonNegative = Field(description="Grid connection import limit [kW]")
    export_limit_kw: NonNegative = Field(0.0, description="Grid connection export limit [kW]")
    base_load_kw: Series = Field(0.0, description="Inflexible base load forecast per step [kW], >= 0")
    generation_kw: Series = Field(0.0, description="On-site generation forecast per step [kW], >= 0")


class TimeWindow(_Model):
    """A time-of-day window in the scenario's local time, ``start`` inclusive, ``end`` exclusive.

    ``end`` before ``start`` wraps past midnight (``22:00``-``06:00``).
    """

    start: dt.time
    end: dt.time
    days: Literal["all", "weekdays", "weekends"] = "all"


class DemandCharge(_Model):
    """A charge on the billing period's highest average import over ``demand_interval_minutes``."""

    name: str = "demand"
    rate_per_kw: NonNegative = Field(description="Demand charge [currency/kW] of the period's peak")
    peak_already_kw: NonNegative = Field(
        0.0, description="Highest demand already reached earlier in this billing period [kW]"
    )
    windows: list[TimeWindow] = Field(
        default_factory=list, description="Time-of-use demand windows; empty means every step counts"
    )


class Tariff(_Model):
    import_price_per_kwh: Series = Field(description="Energy import price per step [currency/kWh]")
    export_price_per_kwh: Series = Field(0.0, description="Energy export price per step [currency/kWh]")
    demand_charges: list[DemandCharge] = Field(default_factory=list)
    demand_interval_minutes: int = Field(
        15, gt=0, description="Averaging interval of billed demand [min], aligned to the clock"
    )


class Evse(_Model):
    """One charging point (connector). It serves one vehicle at a time."""

    id: str = Field(min_length=1)
    max_charge_kw: NonNegative
    max_discharge_kw: NonNegative = Field(0.0, description="0 if the charger is not bidirectional")


class ChargeTaper(_Model):
    """The constant-current/constant-voltage taper of a battery's charge acceptance.

    Up to ``start_soc`` the vehicle accepts its full ``max_charge_kw``; above it the acceptance falls
    linearly with the state of charge, to ``end_fraction`` of ``max_charge_kw`` at a full battery:
    ``acceptance = max_charge_kw * (end_fraction + (1 - end_fraction) * (1 - soc) / (1 - start_soc))``.
    Power is grid side [kW], as everywhere in a scenario; the state of charge is battery energy over
    ``capacity_kwh``. The line is what :mod:`chargersim.vehicles` simulates.
    """

    start_soc: float = Field(ge=0, lt=1, description="State of charge [0..1) where the taper starts")
    end_fraction: float = Field(
        ge=0, le=1, description="Fraction [0..1] of max_charge_kw still accepted at a full battery"
    )


DEFAULT_CHARGE_EFFICIENCY = 0.92
"""Battery energy gained per kWh drawn from the grid, for a vehicle that gives none."""
DEFAULT_DISCHARGE_EFFICIENCY = 0.92
"""Energy delivered to the grid per kWh taken from the battery, for a vehicle that gives none."""


class VehicleSession(_Model):
    """One vehicle plugged into one EVSE from ``arrival`` to ``departure``."""

    id: str = Field(min_length=1)
    evse_id: str
    arrival: AwareDatetime
    departure: AwareDatetime
    capacity_kwh: float = Field(gt=0, description="Usable battery capacity [kWh]")
    energy_at_arrival_kwh: NonNegative
    target_energy_kwh: NonNegative = Field(description="Energy wanted in the battery at departure [kWh]")
    min_energy_kwh: NonNegative = Field(
        0.0, description="Lowest energy the driver allows V2G discharge to reach [kWh]"
    )
    charge_efficiency: Fraction = Field(
        DEFAULT_CHARGE_EFFICIENCY, description="Battery energy gained per kWh drawn from the grid"
    )
    discharge_efficiency: Fraction = Field(
        DEFAULT_DISCHARGE_EFFICIENCY,
        description="Energy delivered to the grid per kWh taken from the battery",
    )
    max_charge_kw: NonNegative
    max_discharge_kw: NonNegative = 0.0
    v2g_consent: bool = False
    charge_taper: ChargeTaper | None = Field(
        None, description="CC-CV taper of the charge acceptance above a state of charge; None: no taper"
    )

    @field_validator("charge_taper", mode="wrap")
    @classmethod
    def _taper_names_the_vehicle(
        cls, value: object, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> ChargeTaper | None:
        """A bad taper is reported with the vehicle it belongs to (``id`` is validated before it)."""
        try:
            taper: ChargeTaper | None = handler(value)
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(['charge_taper', *map(str, error['loc'])])}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            raise ValueError(f"vehicle {info.data.get('id')!r}: {details}") from exc
        return taper


class DrEvent(_Model):
    """A demand-response commitment: keep site import at or below a target during a window.

    Either ``reduction_kw`` below ``baseline_kw`` (target = baseline - reduction) or a plain
    ``cap_kw`` on site import. Delivered energy is paid up to the commitment; every kWh above the
    target is a shortfall with a penalty.
    """

    id: str = Field(min_length=1)
    start: AwareDatetime
    end: AwareDatetime
    baseline_kw: Series | None = Field(
        None, description="Expected site import without the event [kW]: one number or one per event step"
    )
    reduction_kw: NonNegative | None = Field(None, description="Required import reduction below baseline")
    cap_kw: NonNegative | None = Field(None, description="Cap on site import during the event [kW]")
    payment_per_kwh: NonNegative = Field(0.0, description="Paid per kWh delivered [currency/kWh]")
    penalty_per_kwh: NonNegative = Field(0.0, description="Charged per kWh short [currency/kWh]")
    delivery: Literal["clipped", "net"] = Field(
        "clipped",
        description=(
            "How a step whose import exceeds the baseline counts: 'clipped' delivers nothing there; "
            "'net' delivers negative energy (baseline - import), as a settlement that nets the "
            "event's steps measures it, so energy moved within the window earns nothing"
        ),
    )

    @model_validator(mode="after")
    def _one_kind(self) -> DrEvent:
        if (self.reduction_kw is None) == (self.cap_kw is None):
            raise ValueError(f"DR event {self.id!r}: give exactly one of reduction_kw and cap_kw")
        if self.reduction_kw is not None and self.baseline_kw is None:
            raise ValueError(f"DR event {self.id!r}: reduction_kw needs baseline_kw")
        if self.cap_kw is not None and self.baseline_kw is None and self.payment_per_kwh > 0:
            raise ValueError(
                f"DR event {self.id!r}: payment_per_kwh needs baseline_kw to measure delivered energy"
            )
        return self


class V2gDispatch(_Model):
    """A request for net export from the site's vehicles (sum of discharge minus charge) in a window."""

    id: str = Field(min_length=1)
    start: AwareDatetime
    end: AwareDatetime
    export_kw: NonNegative = Field(description="Requested net vehicle export [kW]")
    price_per_kwh: NonNegative = Field(0.0, description="Paid per kWh delivered, up to the request")
    penalty_per_kwh: NonNegative = Field(0.0, description="Charged per kWh short of the request")


class Scenario(_Model):
    """One site, one horizon: the complete input of :func:`optimizer.schedule`."""

    name: str = "scenario"
    start: AwareDatetime
    step_minutes: int = Field(15, gt=0, le=24 * 60)
    n_steps: int = Field(96, gt=0)
    timezone: Annotated[str | None, AfterValidator(_zone)] = Field(
        None,
        description="IANA zone for time-of-day windows (e.g. America/Los_Angeles); default: start's offset",
    )
    currency: str = Field("EUR", min_length=3, max_length=3)
    site: Site
    tariff: Tariff
    evses: list[Evse] = Field(default_factory=list)
    vehicles: list[VehicleSession] = Field(default_factory=list)
    dr_events: list[DrEvent] = Field(default_factory=list)
    v2g_dispatches: list[V2gDispatch] = Field(default_factory=list)
    battery_wear_cost_per_kwh: NonNegative = Field(
        0.0, description="Battery degradation cost per kWh discharged [currency/kWh]"
    )
    unmet_energy_penalty_per_kwh: NonNegative | None = Field(
        None,
        description=(
            "Penalty per kWh a vehicle leaves below its target. Default: ten times the largest gain any "
            "kWh could buy elsewhere in the objective (see optimizer.problem.default_unmet_penalty)"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _zone_from_start(cls, data: object) -> object:
        """A ``start`` given with an IANA zone (``ZoneInfo``) names the scenario's timezone."""
        if isinstance(data, dict) and data.get("timezone") is None:
            key = getattr(getattr(data.get("start"), "tzinfo", None), "key", None)
            if key:
                data = {**data, "timezone": key}
        return data

    @property
    def step(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.step_minutes)

    @property
    def end(self) -> dt.datetime:
        return self.start + self.n_steps * self.step
