"""Energy traders: schedules, planned against actual import, flexibility, KPIs, what-if re-optimisation.

Traders see the whole portfolio: every site and every schedule version. Nothing here changes a plan;
``POST /trader/what-if`` re-solves a copy and stores nothing. Schedules come out as JSON or, with
``?format=csv`` or ``Accept: text/csv``, as CSV with a header (times ISO-8601 with offset).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import AwareDatetime, BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from aggregator.api.deps import SessionDep, require_roles
from aggregator.api.paging import PageParams, TimeRangeParams
from aggregator.api.schemas import Page
from aggregator.api.schemas.traders import (
    Flexibility,
    KpiReport,
    PlannedVsActual,
    PlanStep,
    PlanVehicle,
    PortfolioSchedule,
    PortfolioSite,
    PortfolioStep,
    ScheduleVersionPublic,
    ScheduleVersionSummary,
    SiteSchedule,
    WhatIf,
    WhatIfRequest,
)
from aggregator.control import schedules, trading
from aggregator.control.schedules import GRID, StoredPlan
from aggregator.control.trading import HOUR, float_or_none
from aggregator.db.models import Role, ScheduleVersion, Site

router = APIRouter(prefix="/trader", tags=["traders"], dependencies=[Depends(require_roles(Role.TRADER))])

MAX_WINDOW = dt.timedelta(days=31)
"""Longest ``start``..``end`` of the per-interval reports."""
CSV = "text/csv"
RENDERED_PLANS = 256
"""How many rendered current plans each app keeps (one per site is what the hot path needs)."""
CSV_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {CSV: {}}}}

# ------------------------------------------------------------------------------------ helpers


def _not_found(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=detail)


def _invalid(field: str, message: str, where: str = "query") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the field."""
    detail = [{"loc": [where, field], "msg": message, "type": "value_error"}]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


def _require_site(session: Session, site_id: str) -> Site:
    site = session.get(Site, site_id)
    if site is None:
        raise _not_found(f"no site {site_id!r}")
    return site


def _data_error(error: schedules.ScheduleDataError) -> HTTPException:
    return HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail=str(error))


def _wants_csv(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "csv"
    return CSV in request.headers.get("accept", "")


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def _csv(text: str, filename: str) -> Response:
    return Response(
        text,
        media_type=f"{CSV}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


Format = Annotated[
    Literal["json", "csv"] | None,
    Query(description="json or csv; default from the Accept header (text/csv), else json"),
]


class Window:
    """A required, bounded ``[start, end)``, aligned to whole ``grid`` intervals."""

    def __init__(self, grid: dt.timedelta) -> None:
        self.grid = grid

    def __call__(
        self,
        start: Annotated[AwareDatetime, Query(description="From (inclusive), ISO-8601 with offset")],
        end: Annotated[AwareDatetime, Query(description="Until (exclusive), ISO-8601 with offset")],
    ) -> tuple[dt.datetime, dt.datetime]:
        minutes = int(self.grid.total_seconds() // 60)
        for name, value in (("start", start), ("end", end)):
            if not schedules.aligned(value, self.grid):
                raise _invalid(name, f"must be on a whole {minutes}-minute boundary, got {value.isoformat()}")
        if end <= start:
            raise _invalid("end", f"must be after start ({start.isoformat()}), got {end.isoformat()}")
        if end - start > MAX_WINDOW:
            raise _invalid("end", f"the window may span at most {MAX_WINDOW.days} days")
        return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


QuarterHourWindow = Annotated[tuple[dt.datetime, dt.datetime], Depends(Window(GRID))]
HourWindow = Annotated[tuple[dt.datetime, dt.datetime], Depends(Window(HOUR))]


# ----------------------------------------------------------------------------------- versions


def _summary(version: Any) -> ScheduleVersionSummary:
    """The list view of a :class:`ScheduleVersion` or of a row of its columns."""
    summary = version.result_summary or {}

    def number(key: str) -> float | None:
        value = summary.get(key)
        return float(value) if isinstance(value, int | float) else None

    return ScheduleVersionSummary(
        id=version.id,
        site_id=version.site_id,
        created_at=version.created_at,
        horizon_start=version.horizon_start,
        step_seconds=version.step_seconds,
        trigger=version.trigger,
        status=version.status,
        supersedes_id=version.supersedes_id,
        objective=number("objective"),
        total_cost=number("total_cost"),
        currency=summary.get("currency") if isinstance(summary.get("currency"), str) else None,
        peak_import_kw=number("peak_import_kw"),
    )


@router.get("/schedules")
def list_schedules(
    session: SessionDep,
    page: PageParams,
    window: TimeRangeParams,
    site_id: Annotated[str | None, Query(description="Only this site's versions")] = None,
) -> Page[ScheduleVersionSummary]:
    """Schedule versions, newest first; ``start``/``end`` filter on when they were created."""
    if site_id is not None:
        _require_site(session, site_id)
    # The list needs neither the plan nor the inputs: only these columns are read.
    columns = [
        ScheduleVersion.id,
        ScheduleVersion.site_id,
        ScheduleVersion.created_at,
        ScheduleVersion.horizon_start,
        ScheduleVersion.step_seconds,
        ScheduleVersion.trigger,
        ScheduleVersion.status,
        ScheduleVersion.supersedes_id,
        ScheduleVersion.result_summary,
    ]
    base: Select[Any] = select(*columns)  # type: ignore[assignment]  # ten columns: mypy's tuple is too long
    query = window.apply(base, ScheduleVersion.created_at)
    if site_id is not None:
        query = query.where(ScheduleVersion.site_id == site_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.execute(
        query.order_by(ScheduleVersion.created_at.desc(), ScheduleVersion.id.desc())
        .offset(page.offset)
        .limit(page.limit)
    ).all()
    items = [_summary(row) for row in rows]
    return Page[ScheduleVersionSummary](items=items, total=total, offset=page.offset, limit=page.limit)


@router.get("/schedules/{version_id}")
def get_schedule(version_id: int, session: SessionDep) -> ScheduleVersionPublic:
    """One version in full: its inputs (why it was made), its summary and its plan."""
    version = session.get(ScheduleVersion, version_id)
    if version is None:
        raise _not_found(f"no schedule version {version_id}")
    try:
        plan = schedules.plan_of(version)
    except schedules.ScheduleDataError as error:
        raise _data_error(error) from error
    return ScheduleVersionPublic(
        **_summary(version).model_dump(),
        n_steps=plan.n_steps,
        horizon_end=plan.horizon_end,
        inputs=version.inputs,
        result_summary=version.result_summary,
        plan=version.plan,
        counterfactual=version.counterfactual,
    )


# ---------------------------------------------------------------------------------- schedules


@dataclass
class RenderedPlan:
    """A version's current-plan response, made once: the JSON, and the CSV when first asked for."""

    plan: StoredPlan
    json: bytes
    csv: str | None = None


class RenderedPlans:
    """The last :data:`RENDERED_PLANS` rendered plans, by ``(version id, created_at)``.

    A stored version never changes, so its response can be kept; ``created_at`` in the key guards
    against an id reused after rows were deleted (SQLite reuses the highest rowid).
    """

    def __init__(self, size: int = RENDERED_PLANS) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[int, dt.datetime], RenderedPlan] = OrderedDict()

    def get(self, key: tuple[int, dt.datetime]) -> RenderedPlan | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[int, dt.datetime], value: RenderedPlan) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_cache_lock = threading.Lock()


def get_rendered_plans(request: Request) -> RenderedPlans:
    """The app's cache of rendered plans (made on first use)."""
    state = request.app.state
    with _cache_lock:
        cache: RenderedPlans | None = getattr(state, "trader_rendered_plans", None)
        if cache is None:
            cache = state.trader_rendered_plans = RenderedPlans()
    return cache


RenderedPlansDep = Annotated[RenderedPlans, Depends(get_rendered_plans)]


def _render_site_schedule(session: Session, site_id: str, version_id: int) -> RenderedPlan:
    row = session.execute(
        select(
            ScheduleVersion.created_at,
            ScheduleVersion.status,
            ScheduleVersion.trigger,
            ScheduleVersion.horizon_start,
            ScheduleVersion.step_seconds,
            ScheduleVersion.plan,
            ScheduleVersion.inputs["sessions"].label("sessions"),
        ).where(ScheduleVersion.id == version_id)
    ).one()
    try:
        plan = schedules.read_plan(
            version_id, site_id, row.horizon_start, row.step_seconds, row.plan, row.sessions
        )
    except schedules.ScheduleDataError as error:
        raise _data_error(error) from error
    starts = list(plan.index.to_pydatetime())
    ids = [vehicle.id for vehicle in plan.vehicles]
    powers = [vehicle.power_kw.tolist() for vehicle in plan.vehicles]
    site_import = plan.site_import_kw.tolist()
    steps = [
        PlanStep.model_construct(
            start=start,
            end=start + plan.step,
            site_import_kw=site_import[k],
            vehicles_kw={vehicle_id: power[k] for vehicle_id, power in zip(ids, powers, strict=True)},
        )
        for k, start in enumerate(starts)
    ]
    body = SiteSchedule(
        site_id=site_id,
        version_id=version_id,
        created_at=row.created_at,
        status=row.status,
        trigger=row.trigger,
        horizon_start=plan.horizon_start,
        horizon_end=plan.horizon_end,
        step_seconds=row.step_seconds,
        vehicles=[PlanVehicle(id=v.id, evse_id=v.evse_id, session_id=v.session_id) for v in plan.vehicles],
        steps=steps,
    )
    return RenderedPlan(plan, body.model_dump_json().encode())


@router.get("/sites/{site_id}/schedule", response_model=SiteSchedule, responses=CSV_RESPONSES)
def get_site_schedule(
    site_id: str, session: SessionDep, request: Request, rendered: RenderedPlansDep, format: Format = None
) -> Response:
    """The site's current plan (its latest version) per step: net import and each vehicle's power [kW].

    CSV columns: ``start``, ``end``, ``site_import_kw``, then one ``<vehicle id>_kw`` per vehicle.
    """
    latest = schedules.latest_version(session, site_id)
    if latest is None:
        _require_site(session, site_id)
        raise _not_found(f"site {site_id!r} has no schedule version yet")
    found = rendered.get(latest)
    if found is None:
        found = _render_site_schedule(session, site_id, latest[0])
        rendered.put(latest, found)
    if not _wants_csv(request, format):
        return Response(found.json, media_type="application/json")
    if found.csv is None:
        plan = found.plan
        frame = plan.frame()
        frame.insert(0, "end", frame.index + plan.step)
        frame.columns = ["end", "site_import_kw", *(f"{vehicle.id}_kw" for vehicle in plan.vehicles)]
        found.csv = schedules.to_csv(frame)
    return _csv(found.csv, f"{site_id}-schedule-{found.plan.version_id}.csv")


@router.get("/portfolio/schedule", response_model=PortfolioSchedule, responses=CSV_RESPONSES)
def get_portfolio_schedule(session: SessionDep, request: Request, format: Format = None) -> Response:
    """The sum over sites of their latest plans' net import, on a common 15-minute grid (UTC-aligned).

    A site's value for an interval is its plan's time-weighted mean over it; an interval its plan
    does not cover completely is null for it and left out of the sum. CSV columns: ``start``,
    ``end``, ``import_kw``, then one ``<site id>_kw`` per site.
    """
    try:
        portfolio = trading.portfolio_import(session)
    except schedules.ScheduleDataError as error:
        raise _data_error(error) from error
    table, total = portfolio.site_import_kw, portfolio.import_kw
    if _wants_csv(request, format):
        frame = pd.DataFrame(
            {"end": [stamp + GRID for stamp in table.index], "import_kw": total},
            index=table.index.rename("start"),
        )
        for site_id in portfolio.version_ids:
            frame[f"{site_id}_kw"] = table[site_id]
        return _csv(schedules.to_csv(frame), "portfolio-schedule.csv")
    steps = [
        PortfolioStep(
            start=stamp,
            end=stamp + GRID,
            import_kw=float(total[stamp]),
            sites_kw={site_id: float_or_none(table.at[stamp, site_id]) for site_id in portfolio.version_ids},
        )
        for stamp in table.index
    ]
    sites = [
        PortfolioSite(site_id=site_id, version_id=version_id)
        for site_id, version_id in portfolio.version_ids.items()
    ]
    return _json(PortfolioSchedule(step_seconds=int(GRID.total_seconds()), sites=sites, steps=steps))


# ---------------------------------------------------------------------------- planned vs actual


@router.get("/sites/{site_id}/planned-vs-actual")
def planned_vs_actual(site_id: str, session: SessionDep, window: QuarterHourWindow) -> PlannedVsActual:
    """Per 15-minute interval: the planned net import of the version in force and the measured mean.

    The version in force at an interval is the latest created at or before the interval's start
    whose horizon covers it. Measured is the mean of the site's telemetry sent in the interval
    (:func:`aggregator.ingestion.metering.site_import_intervals`). Null where unknown. ``start`` and ``end``
    must be on quarter hours. See :func:`aggregator.control.trading.planned_vs_actual`.
    """
    _require_site(session, site_id)
    start, end = window
    try:
        report = trading.planned_vs_actual(session, site_id, start, end)
    except schedules.ScheduleDataError as error:
        raise _data_error(error) from error
    return PlannedVsActual.model_validate(report, from_attributes=True)


# ---------------------------------------------------------------------------------- flexibility


@router.get("/flexibility")
def flexibility(session: SessionDep, window: HourWindow) -> Flexibility:
    """Per hour, per site and for the portfolio: the up and down kW the current plans leave room for.

    Against each site's current plan (its latest version) and the scenario it was made from, per plan
    step (see :func:`aggregator.control.schedules.flexibility_frame`):

    - down = how far import could drop: planned charging of plugged vehicles that could pause, plus
      discharge headroom (up to the vehicle's and EVSE's ``max_discharge_kw``) of vehicles whose
      scenario allows discharge (V2G consent), limited by the site's export limit;
    - up = how far import could rise: charge headroom of plugged vehicles up to the tighter of vehicle
      and EVSE ``max_charge_kw``, limited by the site's import limit.

    An hour's figure is the smallest over its steps, so it can be held for the whole hour; null where
    the plan does not cover the hour. Power headroom only: state of charge and targets are not
    checked. The portfolio sums the sites with a figure (``sites`` says how many). ``start`` and
    ``end`` must be whole hours. See :func:`aggregator.control.trading.flexibility_report`.
    """
    start, end = window
    try:
        report = trading.flexibility_report(session, start, end)
    except schedules.ScheduleDataError as error:
        raise _data_error(error) from error
    return Flexibility.model_validate(report, from_attributes=True)


# ------------------------------------------------------------------------------------------ KPIs


@router.get("/kpis")
def kpis(session: SessionDep, window: QuarterHourWindow) -> KpiReport:
    """Per site and for the portfolio over ``[start, end)`` (quarter hours).

    Planned figures come from the plan in force in each 15-minute interval (as in planned-vs-actual):
    energy cost (import priced at the version's tariff minus export revenue), peak net import,
    charging and V2G discharging energy. Measured: peak of the 15-minute mean net import and charging
    energy from EVSE telemetry. Unmet energy: for each vehicle, what the latest version created in the
    window expected to leave short (keyed by the scenario's vehicle id). Versions: those created in
    the window, by status, and the share solved optimal. The portfolio's peaks are of the summed
    15-minute series (over the sites known in each interval), not sums of the sites' peaks.
    See :func:`aggregator.control.trading.kpi_report`.
    """
    start, end = window
    try:
        report = trading.kpi_report(session, start, end)
    except schedules.ScheduleDataError as error:
        raise _data_error(error) from error
    return KpiReport.model_validate(report, from_attributes=True)


# --------------------------------------------------------------------------------------- what-if


@router.post("/what-if")
def what_if(body: WhatIfRequest, session: SessionDep) -> WhatIf:
    """Re-solve the site's latest scenario with changed import prices, beside the stored plan.

    Exactly one change: ``import_price_per_kwh`` (a series with one price per step of the horizon),
    ``price_multiplier`` or ``price_offset_per_kwh`` (applied to every step's import price). Export
    prices and everything else stay. Nothing is stored and nothing is published.
    See :func:`aggregator.control.trading.what_if`.
    """
    _require_site(session, body.site_id)
    version_id = schedules.latest_version_id(session, body.site_id)
    if version_id is None:
        raise _not_found(f"site {body.site_id!r} has no schedule version to re-solve")
    version = session.get(ScheduleVersion, version_id)
    assert version is not None
    try:
        outcome = trading.what_if(
            version,
            import_price_per_kwh=body.import_price_per_kwh,
            price_multiplier=body.price_multiplier,
            price_offset_per_kwh=body.price_offset_per_kwh,
            time_limit_s=body.time_limit_s,
        )
    except schedules.ScheduleDataError as error:
        raise _data_error(error) from error
    except trading.WhatIfError as error:
        raise _invalid(error.field, error.message, where="body") from error
    return WhatIf.model_validate(outcome, from_attributes=True)
