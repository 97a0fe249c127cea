"""What the traders' API (``/trader``) accepts and returns. Powers in kW, energies in kWh, money in the
site scenario's currency; every time is ISO-8601 with its UTC offset, every interval half-open."""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, model_validator

from aggregator.db.models import ScheduleStatus
from wire.contract import SITE_ID_PATTERN

WHAT_IF_MAX_TIME_LIMIT_S = 60.0


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


Finite = Annotated[float, AfterValidator(_finite)]

# ---------------------------------------------------------------------------------- versions


class ScheduleVersionSummary(BaseModel):
    """A schedule version in a list: when, why, how well solved, what it costs (from its summary)."""

    id: int
    site_id: str
    created_at: dt.datetime
    horizon_start: dt.datetime
    step_seconds: int
    trigger: str
    status: ScheduleStatus
    supersedes_id: int | None
    objective: float | None
    """The solver's objective (money plus penalties) [currency]."""
    total_cost: float | None
    """Money paid minus money earned over the horizon [currency]."""
    currency: str | None
    peak_import_kw: float | None


class ScheduleVersionPublic(ScheduleVersionSummary):
    """One version in full: what the optimiser was given (``inputs``), its summary and its plan."""

    n_steps: int
    horizon_end: dt.datetime
    inputs: dict[str, Any]
    result_summary: dict[str, Any]
    plan: dict[str, Any]
    counterfactual: dict[str, Any] | None


# ---------------------------------------------------------------------------------- schedules


class PlanVehicle(BaseModel):
    id: str
    """The vehicle's id in the version's scenario."""
    evse_id: str
    session_id: int | None
    """The charging session it stands for, if the version's inputs name one."""


class PlanStep(BaseModel):
    start: dt.datetime
    end: dt.datetime
    site_import_kw: float
    """Planned net import [kW]; negative when the site exports."""
    vehicles_kw: dict[str, float]
    """Planned power of each vehicle [kW], positive charging, negative discharging."""


class SiteSchedule(BaseModel):
    """The site's current plan: its latest schedule version, step by step."""

    site_id: str
    version_id: int
    created_at: dt.datetime
    status: ScheduleStatus
    trigger: str
    horizon_start: dt.datetime
    horizon_end: dt.datetime
    step_seconds: int
    vehicles: list[PlanVehicle]
    steps: list[PlanStep]


class PortfolioSite(BaseModel):
    site_id: str
    version_id: int


class PortfolioStep(BaseModel):
    start: dt.datetime
    end: dt.datetime
    import_kw: float
    """Sum of the planned net import of the sites whose plan covers the interval [kW]."""
    sites_kw: dict[str, float | None]
    """Each site's planned mean net import over the interval [kW]; null where its plan does not cover it."""


class PortfolioSchedule(BaseModel):
    step_seconds: int
    sites: list[PortfolioSite]
    steps: list[PortfolioStep]


# ---------------------------------------------------------------------------- planned vs actual


class PlannedVsActualInterval(BaseModel):
    start: dt.datetime
    end: dt.datetime
    version_id: int | None
    """The version in force: the latest created at or before ``start`` whose horizon covers the interval."""
    planned_import_kw: float | None
    measured_import_kw: float | None
    """Mean of the telemetry readings sent in the interval; null without readings."""
    samples: int
    deviation_kw: float | None
    """Measured minus planned [kW]."""


class PlannedVsActualTotals(BaseModel):
    intervals: int
    intervals_compared: int
    """Intervals with both a plan in force and a measurement."""
    planned_energy_kwh: float
    """Planned net import energy over the intervals with a plan in force."""
    measured_energy_kwh: float
    """Measured net import energy over the intervals with readings."""
    mean_absolute_deviation_kw: float | None
    """Mean of ``|measured - planned|`` over the compared intervals; null if none."""


class PlannedVsActual(BaseModel):
    site_id: str
    start: dt.datetime
    end: dt.datetime
    step_seconds: int
    intervals: list[PlannedVsActualInterval]
    totals: PlannedVsActualTotals


# ---------------------------------------------------------------------------------- flexibility


class FlexibilityHour(BaseModel):
    start: dt.datetime
    end: dt.datetime
    up_kw: float | None
    """Import increase that could be held for the whole hour [kW]; null where no plan covers the hour."""
    down_kw: float | None
    """Import decrease that could be held for the whole hour [kW]; null where no plan covers the hour."""


class SiteFlexibility(BaseModel):
    site_id: str
    version_id: int | None
    hours: list[FlexibilityHour]


class PortfolioFlexibilityHour(FlexibilityHour):
    sites: int
    """How many sites' plans cover the hour (the sum is over these)."""


class Flexibility(BaseModel):
    start: dt.datetime
    end: dt.datetime
    sites: list[SiteFlexibility]
    portfolio: list[PortfolioFlexibilityHour]


# ------------------------------------------------------------------------------------------ KPIs


class Kpis(BaseModel):
    currency: str | None
    """Null for a portfolio whose sites price in different currencies (its cost is then null too)."""
    energy_cost_planned: float | None
    """Energy bought minus energy sold in the plans in force [currency]."""
    peak_import_kw_planned: float | None
    """Highest 15-min mean of planned net import."""
    peak_import_kw_measured: float | None
    """Highest 15-min mean of measured net import."""
    energy_to_vehicles_kwh_planned: float
    """Grid-side charging energy in the plans in force."""
    energy_to_vehicles_kwh_measured: float
    """Charging energy from EVSE telemetry (positive 15-min means)."""
    v2g_export_kwh_planned: float
    """Grid-side discharging energy in the plans in force."""
    unmet_energy_kwh: float
    """What the latest version (created in the window) holding each vehicle expected it to be left short."""
    schedule_versions: int
    """Versions created in the window."""
    statuses: dict[str, int]
    share_optimal: float | None
    """Share of those versions solved to optimality, 0..1; null without versions."""


class SiteKpis(Kpis):
    site_id: str


class KpiReport(BaseModel):
    start: dt.datetime
    end: dt.datetime
    sites: list[SiteKpis]
    portfolio: Kpis


# --------------------------------------------------------------------------------------- what-if


class WhatIfRequest(BaseModel):
    """Re-solve a site's latest scenario with other import prices. Give exactly one price change."""

    site_id: Annotated[str, Field(pattern=SITE_ID_PATTERN)]
    import_price_per_kwh: list[Finite] | None = None
    """A full import price series, one per step of the latest version's horizon [currency/kWh]."""
    price_multiplier: Annotated[Finite, Field(ge=0)] | None = None
    """Multiplies the scenario's import price of every step."""
    price_offset_per_kwh: Finite | None = None
    """Added to the scenario's import price of every step [currency/kWh]."""
    time_limit_s: Annotated[float, Field(gt=0, le=WHAT_IF_MAX_TIME_LIMIT_S)] = 10.0
    """Solver time limit [s]."""

    @model_validator(mode="after")
    def _one_change(self) -> WhatIfRequest:
        given = [
            name
            for name in ("import_price_per_kwh", "price_multiplier", "price_offset_per_kwh")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of import_price_per_kwh, price_multiplier, price_offset_per_kwh; "
                f"got {', '.join(given) or 'none'}"
            )
        return self


class WhatIfPlan(BaseModel):
    status: str
    total_cost: float
    """Money paid minus money earned over the horizon at this plan's prices [currency]."""
    energy_cost: float
    """Import cost minus export revenue [currency]."""
    peak_import_kw: float
    site_import_kw: list[float]
    import_price_per_kwh: list[float]


class WhatIfStep(BaseModel):
    start: dt.datetime
    stored_import_kw: float
    what_if_import_kw: float
    stored_price_per_kwh: float
    what_if_price_per_kwh: float


class WhatIf(BaseModel):
    """The stored plan and the re-optimised one side by side; nothing is stored or published."""

    site_id: str
    version_id: int
    horizon_start: dt.datetime
    step_seconds: int
    currency: str
    stored: WhatIfPlan
    """The stored plan at the prices it was made with (status of the stored version)."""
    stored_total_cost_at_new_prices: float
    """What keeping the stored plan would cost at the new prices [currency]."""
    what_if: WhatIfPlan
    solve_seconds: float
    steps: list[WhatIfStep]
