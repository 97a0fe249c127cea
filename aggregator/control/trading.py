"""What traders read from the stored plans: the portfolio's plan, planned against measured import,
flexibility and KPIs per site and for the portfolio, and what-if re-solves.

- :func:`portfolio_import`: the sites' current plans' net import on the 15-minute grid, and its sum;
- :func:`planned_vs_actual`: a site's planned net import (the plan in force) against the measured one
  per 15-minute interval, with totals;
- :func:`flexibility_report`: per hour, per site and for the portfolio, the up and down kW the current
  plans leave room for;
- :func:`kpi_report`: over ``[start, end)`` on the 15-minute grid, per site and for the portfolio,
  planned figures from the plan in force in each interval, measured ones from telemetry, and how the
  schedule versions created in the window were solved;
- :func:`what_if`: a stored version's scenario re-solved with changed import prices, beside the
  stored plan priced at the old and the new prices. Nothing is stored.

Powers in kW, energies in kWh, money in the scenario's currency; times aware UTC. Plain dataclasses:
the API turns them into its response models. A stored version that does not have the documented shape
raises :class:`aggregator.control.schedules.ScheduleDataError`; a price change that cannot be applied raises
:class:`WhatIfError` naming the field.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.control import schedules
from aggregator.control.schedules import GRID, StoredPlan
from aggregator.db.models import ScheduleStatus, ScheduleVersion, Site
from aggregator.ingestion.metering import evse_power_intervals, site_import_intervals
from optimizer import ScenarioError, build_problem, evaluate, schedule


def float_or_none(value: Any) -> float | None:
    """``value`` as a float, ``None`` for NaN (unknown)."""
    return None if pd.isna(value) else float(value)


HOUR = dt.timedelta(hours=1)


# ---------------------------------------------------------------------------- portfolio schedule


@dataclass(frozen=True)
class PortfolioImport:
    """The sites' current plans' net import on the common 15-minute grid (UTC-aligned) [kW]."""

    version_ids: dict[str, int]
    """Each site's current plan (its latest version), by site id in order."""
    site_import_kw: pd.DataFrame
    """One column per site: its plan's time-weighted mean over each interval; NaN where its plan does
    not cover the interval completely."""
    import_kw: pd.Series
    """The sum over the sites with a value in each interval."""


def portfolio_import(session: Session) -> PortfolioImport:
    """The sum over sites of their latest plans' net import, per 15-minute interval (see
    :class:`PortfolioImport`)."""
    latest = dict(sorted(schedules.latest_version_ids(session).items()))
    per_site: dict[str, pd.Series] = {}
    for site_id, version_id in latest.items():
        plan = schedules.load_plan(session, version_id)
        gridded = schedules.on_grid(plan.frame()[["site_import_kw"]], plan.step, {"site_import_kw": "mean"})
        per_site[site_id] = gridded["site_import_kw"]
    table = pd.DataFrame(per_site).sort_index() if per_site else pd.DataFrame()
    total = table.sum(axis=1, min_count=1) if per_site else pd.Series(dtype=float)
    return PortfolioImport(version_ids=latest, site_import_kw=table, import_kw=total)


# ---------------------------------------------------------------------------- planned vs actual


@dataclass(frozen=True)
class PlannedVsActualInterval:
    start: dt.datetime
    end: dt.datetime
    version_id: int | None
    """The version in force; ``None`` where no plan covers the interval."""
    planned_import_kw: float | None
    measured_import_kw: float | None
    """Mean of the site's telemetry sent in the interval [kW]; ``None`` without telemetry."""
    samples: int
    deviation_kw: float | None
    """Measured minus planned [kW]; ``None`` where either is unknown."""


@dataclass(frozen=True)
class PlannedVsActualTotals:
    intervals: int
    intervals_compared: int
    """Intervals with both a planned and a measured value."""
    planned_energy_kwh: float
    measured_energy_kwh: float
    mean_absolute_deviation_kw: float | None
    """Over the intervals compared; ``None`` when there are none."""


@dataclass(frozen=True)
class PlannedVsActual:
    site_id: str
    start: dt.datetime
    end: dt.datetime
    step_seconds: int
    intervals: list[PlannedVsActualInterval]
    totals: PlannedVsActualTotals


def planned_import(
    session: Session, site_id: str, index: pd.DatetimeIndex
) -> tuple[list[StoredPlan | None], pd.Series]:
    """The plan in force at each interval of ``index`` (15-minute grid) and its mean net import [kW]."""
    plans = schedules.plans_in_force(session, site_id, index)
    tables = {
        plan.version_id: schedules.on_grid(
            plan.frame()[["site_import_kw"]], plan.step, {"site_import_kw": "mean"}
        )
        for plan in plans
        if plan is not None
    }
    table = schedules.in_force_table(plans, index, tables, ["site_import_kw"])
    return plans, table["site_import_kw"]


def planned_vs_actual(
    session: Session, site_id: str, start: dt.datetime, end: dt.datetime
) -> PlannedVsActual:
    """Per 15-minute interval of ``[start, end)`` (quarter hours, aware): the planned net import of the
    version in force and the measured mean, their deviation, and totals.

    The version in force at an interval is the latest created at or before the interval's start whose
    horizon covers it. Measured is the mean of the site's telemetry sent in the interval
    (:func:`aggregator.ingestion.metering.site_import_intervals`).
    """
    index = schedules.grid_index(start, end)
    plans, planned = planned_import(session, site_id, index)
    measured = site_import_intervals(session, site_id, start, end, GRID)
    deviation = measured.mean_kw.to_numpy() - planned.to_numpy()
    hours = GRID.total_seconds() / 3600
    compared = ~np.isnan(deviation)
    intervals = [
        PlannedVsActualInterval(
            start=stamp,
            end=stamp + GRID,
            version_id=plan.version_id if plan is not None else None,
            planned_import_kw=float_or_none(planned.iloc[k]),
            measured_import_kw=float_or_none(measured.mean_kw.iloc[k]),
            samples=int(measured.samples.iloc[k]),
            deviation_kw=float_or_none(deviation[k]),
        )
        for k, (stamp, plan) in enumerate(zip(index, plans, strict=True))
    ]
    totals = PlannedVsActualTotals(
        intervals=len(index),
        intervals_compared=int(compared.sum()),
        planned_energy_kwh=float(np.nansum(planned.to_numpy()) * hours),
        measured_energy_kwh=float(np.nansum(measured.mean_kw.to_numpy()) * hours),
        mean_absolute_deviation_kw=float(np.abs(deviation[compared]).mean()) if compared.any() else None,
    )
    return PlannedVsActual(
        site_id=site_id,
        start=start,
        end=end,
        step_seconds=int(GRID.total_seconds()),
        intervals=intervals,
        totals=totals,
    )


# ---------------------------------------------------------------------------------- flexibility


@dataclass(frozen=True)
class FlexibilityHour:
    start: dt.datetime
    end: dt.datetime
    up_kw: float | None
    """How far import could rise for the whole hour [kW]; ``None`` where the plan does not cover it."""
    down_kw: float | None
    """How far import could drop for the whole hour [kW]; ``None`` where the plan does not cover it."""


@dataclass(frozen=True)
class SiteFlexibility:
    site_id: str
    version_id: int | None
    """The site's current plan; ``None`` when it has none."""
    hours: list[FlexibilityHour]


@dataclass(frozen=True)
class PortfolioFlexibilityHour(FlexibilityHour):
    sites: int
    """How many sites have a figure for the hour (the ones summed)."""


@dataclass(frozen=True)
class Flexibility:
    start: dt.datetime
    end: dt.datetime
    sites: list[SiteFlexibility]
    portfolio: list[PortfolioFlexibilityHour]


def site_flexibility(session: Session, version_id: int | None, index: pd.DatetimeIndex) -> pd.DataFrame:
    """``up_kw`` and ``down_kw`` per hour of ``index`` left by plan ``version_id`` [kW]: the smallest
    over the hour's plan steps (:func:`aggregator.control.schedules.flexibility_frame`), so it can be
    held for the whole hour; NaN where the plan does not cover the hour, or without a plan."""
    if version_id is None:
        return pd.DataFrame(np.nan, index=index, columns=["up_kw", "down_kw"])
    plan = schedules.load_plan(session, version_id)
    scenario = schedules.scenario_of(version_id, schedules.load_inputs(session, version_id))
    steps = schedules.flexibility_frame(plan, scenario)
    gridded = schedules.on_grid(steps, plan.step, {"up_kw": "min", "down_kw": "min"}, HOUR)
    return gridded.reindex(index)


def portfolio_flexibility(
    hourly: Sequence[pd.DataFrame], index: pd.DatetimeIndex
) -> list[PortfolioFlexibilityHour]:
    """The sum over the sites' ``hourly`` figures (:func:`site_flexibility`) per hour of ``index``,
    over the sites with a figure; ``None`` where none has one."""
    up = np.array([frame["up_kw"].to_numpy(dtype=float) for frame in hourly]).reshape(-1, len(index))
    down = np.array([frame["down_kw"].to_numpy(dtype=float) for frame in hourly]).reshape(-1, len(index))
    known = ~np.isnan(up)
    return [
        PortfolioFlexibilityHour(
            start=stamp,
            end=stamp + HOUR,
            up_kw=float(np.nansum(up[:, k])) if known[:, k].any() else None,
            down_kw=float(np.nansum(down[:, k])) if known[:, k].any() else None,
            sites=int(known[:, k].sum()),
        )
        for k, stamp in enumerate(index)
    ]


def flexibility_report(session: Session, start: dt.datetime, end: dt.datetime) -> Flexibility:
    """Per hour of ``[start, end)`` (whole hours, aware), per site and for the portfolio: the up and down
    kW each site's current plan (its latest version) leaves room for (:func:`site_flexibility`), and
    their sum (:func:`portfolio_flexibility`)."""
    index = schedules.grid_index(start, end, HOUR)
    latest = schedules.latest_version_ids(session)
    sites = []
    hourly = []
    for site_id in list(session.scalars(select(Site.id).order_by(Site.id))):
        version_id = latest.get(site_id)
        frame = site_flexibility(session, version_id, index)
        hourly.append(frame)
        sites.append(
            SiteFlexibility(
                site_id=site_id,
                version_id=version_id,
                hours=[
                    FlexibilityHour(
                        start=stamp,
                        end=stamp + HOUR,
                        up_kw=float_or_none(row.up_kw),
                        down_kw=float_or_none(row.down_kw),
                    )
                    for stamp, row in zip(index, frame.itertuples(), strict=True)
                ],
            )
        )
    return Flexibility(start=start, end=end, sites=sites, portfolio=portfolio_flexibility(hourly, index))


# ------------------------------------------------------------------------------------------ KPIs

KPI_FLOWS: dict[str, schedules.Aggregation] = {
    "site_import_kw": "mean",
    "ev_charge_kwh": "sum",
    "ev_discharge_kwh": "sum",
    "energy_cost": "sum",
}
"""The per-step flows a site's KPIs are made from, and how each is put on the 15-minute grid."""


@dataclass(frozen=True)
class Kpis:
    """Planned and measured figures over a window (see :func:`kpi_report`)."""

    currency: str | None
    """``None`` for a portfolio whose sites price in different currencies (its cost is then ``None``)."""
    energy_cost_planned: float | None
    """Energy bought minus energy sold in the plans in force [currency]."""
    peak_import_kw_planned: float | None
    """Highest 15-min mean of planned net import [kW]."""
    peak_import_kw_measured: float | None
    """Highest 15-min mean of measured net import [kW]."""
    energy_to_vehicles_kwh_planned: float
    """Grid-side charging energy in the plans in force [kWh]."""
    energy_to_vehicles_kwh_measured: float
    """Charging energy from EVSE telemetry (positive 15-min means) [kWh]."""
    v2g_export_kwh_planned: float
    """Grid-side discharging energy in the plans in force [kWh]."""
    unmet_energy_kwh: float
    """What the latest version (created in the window) holding each vehicle expected it to be left short."""
    schedule_versions: int
    """Versions created in the window."""
    statuses: dict[str, int]
    """Those versions counted by solver status."""
    share_optimal: float | None
    """Share of those versions solved to optimality, 0..1; ``None`` without versions."""


@dataclass(frozen=True)
class SiteKpis(Kpis):
    site_id: str


@dataclass(frozen=True)
class KpiReport:
    start: dt.datetime
    end: dt.datetime
    sites: list[SiteKpis]
    portfolio: Kpis


def site_kpis(
    session: Session, site_id: str, start: dt.datetime, end: dt.datetime
) -> tuple[SiteKpis, pd.Series, pd.Series]:
    """A site's KPIs, and its planned and measured net import [kW] per 15-min interval (for the portfolio)."""
    index = schedules.grid_index(start, end)
    plans = schedules.plans_in_force(session, site_id, index)
    tables: dict[int, pd.DataFrame] = {}
    currencies = set()
    for plan in plans:
        if plan is None or plan.version_id in tables:
            continue
        scenario = schedules.scenario_of(plan.version_id, schedules.load_inputs(session, plan.version_id))
        currencies.add(scenario.currency)
        flows = plan.flows()
        flows["energy_cost"] = schedules.energy_cost_per_step(plan, scenario)
        tables[plan.version_id] = schedules.on_grid(flows, plan.step, KPI_FLOWS)
    table = schedules.in_force_table(plans, index, tables, list(KPI_FLOWS))
    measured = site_import_intervals(session, site_id, start, end, GRID)
    evses = evse_power_intervals(session, site_id, start, end, GRID)
    charged = sum(float(np.nansum(np.maximum(e.energy_kwh.to_numpy(), 0.0))) for e in evses.values())

    versions = session.execute(
        select(ScheduleVersion.status, ScheduleVersion.result_summary)
        .where(ScheduleVersion.site_id == site_id)
        .where(ScheduleVersion.created_at >= start)
        .where(ScheduleVersion.created_at < end)
        .order_by(ScheduleVersion.created_at, ScheduleVersion.id)
    ).all()
    statuses = Counter(row.status.value for row in versions)
    unmet: dict[str, float] = {}
    for row in versions:  # oldest first: the latest version holding a vehicle wins
        vehicles = (row.result_summary or {}).get("vehicles", {})
        if isinstance(vehicles, Mapping):
            for vehicle_id, outcome in vehicles.items():
                if isinstance(outcome, Mapping) and isinstance(outcome.get("unmet_kwh"), int | float):
                    unmet[vehicle_id] = float(outcome["unmet_kwh"])
    planned_any = bool(table["site_import_kw"].notna().any())
    currency = next(iter(currencies)) if len(currencies) == 1 else None
    kpis = SiteKpis(
        site_id=site_id,
        currency=currency,
        energy_cost_planned=float(table["energy_cost"].sum()) if planned_any and currency else None,
        peak_import_kw_planned=float_or_none(table["site_import_kw"].max()),
        peak_import_kw_measured=float_or_none(measured.mean_kw.max()),
        energy_to_vehicles_kwh_planned=float(table["ev_charge_kwh"].sum()),
        energy_to_vehicles_kwh_measured=charged,
        v2g_export_kwh_planned=float(table["ev_discharge_kwh"].sum()),
        unmet_energy_kwh=sum(unmet.values()),
        schedule_versions=len(versions),
        statuses=dict(statuses),
        share_optimal=statuses[ScheduleStatus.OPTIMAL.value] / len(versions) if versions else None,
    )
    return kpis, table["site_import_kw"], measured.mean_kw


def kpi_report(session: Session, start: dt.datetime, end: dt.datetime) -> KpiReport:
    """Per site and for the portfolio over ``[start, end)`` (quarter hours, aware).

    Planned figures come from the plan in force in each 15-minute interval (as in planned-vs-actual):
    energy cost (import priced at the version's tariff minus export revenue), peak net import,
    charging and V2G discharging energy. Measured: peak of the 15-minute mean net import and charging
    energy from EVSE telemetry. Unmet energy: for each vehicle, what the latest version created in the
    window expected to leave short (keyed by the scenario's vehicle id). Versions: those created in
    the window, by status, and the share solved optimal. The portfolio's peaks are of the summed
    15-minute series (over the sites known in each interval), not sums of the sites' peaks.
    """
    site_ids = list(session.scalars(select(Site.id).order_by(Site.id)))
    sites, planned, measured = [], {}, {}
    for site_id in site_ids:
        site, planned[site_id], measured[site_id] = site_kpis(session, site_id, start, end)
        sites.append(site)
    priced = [site for site in sites if site.energy_cost_planned is not None]
    currencies = {site.currency for site in priced}
    currency = next(iter(currencies)) if len(currencies) == 1 else None
    statuses: Counter[str] = Counter()
    for site in sites:
        statuses.update(site.statuses)
    versions = sum(site.schedule_versions for site in sites)
    planned_sum = pd.DataFrame(planned).sum(axis=1, min_count=1) if planned else pd.Series(dtype=float)
    measured_sum = pd.DataFrame(measured).sum(axis=1, min_count=1) if measured else pd.Series(dtype=float)
    portfolio = Kpis(
        currency=currency,
        energy_cost_planned=sum(site.energy_cost_planned or 0.0 for site in priced) if currency else None,
        peak_import_kw_planned=float_or_none(planned_sum.max()) if len(planned_sum) else None,
        peak_import_kw_measured=float_or_none(measured_sum.max()) if len(measured_sum) else None,
        energy_to_vehicles_kwh_planned=sum(site.energy_to_vehicles_kwh_planned for site in sites),
        energy_to_vehicles_kwh_measured=sum(site.energy_to_vehicles_kwh_measured for site in sites),
        v2g_export_kwh_planned=sum(site.v2g_export_kwh_planned for site in sites),
        unmet_energy_kwh=sum(site.unmet_energy_kwh for site in sites),
        schedule_versions=versions,
        statuses=dict(statuses),
        share_optimal=statuses[ScheduleStatus.OPTIMAL.value] / versions if versions else None,
    )
    return KpiReport(start=start, end=end, sites=sites, portfolio=portfolio)


# --------------------------------------------------------------------------------------- what-if


class WhatIfError(ValueError):
    """A what-if that cannot be solved as asked; ``field`` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class PlanFigures:
    """One plan over the version's horizon, priced at ``import_price_per_kwh``."""

    status: str
    total_cost: float
    """Money paid minus money earned over the horizon at these prices [currency]."""
    energy_cost: float
    """Import cost minus export revenue [currency]."""
    peak_import_kw: float
    site_import_kw: list[float]
    """Net import per step [kW]."""
    import_price_per_kwh: list[float]
    """Import price per step [currency/kWh]."""


@dataclass(frozen=True)
class WhatIfStep:
    start: dt.datetime
    stored_import_kw: float
    what_if_import_kw: float
    stored_price_per_kwh: float
    what_if_price_per_kwh: float


@dataclass(frozen=True)
class WhatIf:
    """The stored plan and the re-optimised one side by side."""

    site_id: str
    version_id: int
    horizon_start: dt.datetime
    step_seconds: int
    currency: str
    stored: PlanFigures
    """The stored plan at the prices it was made with (status of the stored version)."""
    stored_total_cost_at_new_prices: float
    """What keeping the stored plan would cost at the new prices [currency]."""
    what_if: PlanFigures
    solve_seconds: float
    """Model build plus solve time of the re-solve [s]."""
    steps: list[WhatIfStep]


def what_if(
    version: ScheduleVersion,
    *,
    import_price_per_kwh: Sequence[float] | None = None,
    price_multiplier: float | None = None,
    price_offset_per_kwh: float | None = None,
    time_limit_s: float,
) -> WhatIf:
    """Re-solve ``version``'s scenario with changed import prices, beside the stored plan.

    Exactly one change: ``import_price_per_kwh`` (a series with one price per step of the horizon
    [currency/kWh]), ``price_multiplier`` or ``price_offset_per_kwh`` [currency/kWh] (applied to every
    step's import price). Export prices and everything else stay. ``time_limit_s`` bounds the solver [s].
    """
    given = [
        name
        for name, value in (
            ("import_price_per_kwh", import_price_per_kwh),
            ("price_multiplier", price_multiplier),
            ("price_offset_per_kwh", price_offset_per_kwh),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise WhatIfError(
            "import_price_per_kwh",
            f"give exactly one of import_price_per_kwh, price_multiplier, price_offset_per_kwh; "
            f"got {', '.join(given) or 'none'}",
        )
    version_id = version.id
    stored = schedules.plan_of(version)
    scenario = schedules.scenario_of(version_id, version.inputs)
    old_prices, _ = schedules.tariff_prices(scenario)
    if import_price_per_kwh is not None:
        if len(import_price_per_kwh) != scenario.n_steps:
            raise WhatIfError(
                "import_price_per_kwh",
                f"must hold one price per step of version {version_id}'s horizon: {scenario.n_steps} "
                f"values, got {len(import_price_per_kwh)}",
            )
        new_prices = np.asarray(import_price_per_kwh, dtype=float)
    elif price_multiplier is not None:
        new_prices = old_prices * price_multiplier
    else:
        assert price_offset_per_kwh is not None
        new_prices = old_prices + price_offset_per_kwh
    raw = scenario.model_dump(mode="json")
    raw["tariff"]["import_price_per_kwh"] = [float(p) for p in new_prices]
    changed = type(scenario).model_validate(raw)
    try:
        problem, new_problem = build_problem(scenario), build_problem(changed)
        result = schedule(new_problem, time_limit=time_limit_s)
    except ScenarioError as error:
        raise WhatIfError(error.field, str(error)) from error

    by_id = {vehicle.id: vehicle.power_kw for vehicle in stored.vehicles}
    powers = np.array([by_id.get(v.id, np.zeros(problem.n_steps)) for v in problem.vehicles]).reshape(
        -1, problem.n_steps
    )
    charge, discharge = np.maximum(powers, 0.0), np.maximum(-powers, 0.0)
    stored_eval = evaluate(problem, charge, discharge)
    stored_at_new = evaluate(new_problem, charge, discharge)
    new_import = result.evaluation.import_kw - result.evaluation.export_kw
    starts = list(stored.index.to_pydatetime())
    return WhatIf(
        site_id=version.site_id,
        version_id=version_id,
        horizon_start=stored.horizon_start,
        step_seconds=version.step_seconds,
        currency=scenario.currency,
        stored=PlanFigures(
            status=version.status.value,
            total_cost=stored_eval.total_cost,
            energy_cost=stored_eval.costs["energy_cost"] - stored_eval.costs["export_revenue"],
            peak_import_kw=float(stored.site_import_kw.max()),
            site_import_kw=stored.site_import_kw.tolist(),
            import_price_per_kwh=old_prices.tolist(),
        ),
        stored_total_cost_at_new_prices=stored_at_new.total_cost,
        what_if=PlanFigures(
            status=result.status.value,
            total_cost=result.total_cost,
            energy_cost=result.costs["energy_cost"] - result.costs["export_revenue"],
            peak_import_kw=float(new_import.max()),
            site_import_kw=new_import.tolist(),
            import_price_per_kwh=new_prices.tolist(),
        ),
        solve_seconds=result.build_seconds + result.solve_seconds,
        steps=[
            WhatIfStep(
                start=start,
                stored_import_kw=float(stored.site_import_kw[k]),
                what_if_import_kw=float(new_import[k]),
                stored_price_per_kwh=float(old_prices[k]),
                what_if_price_per_kwh=float(new_prices[k]),
            )
            for k, start in enumerate(starts)
        ],
    )
