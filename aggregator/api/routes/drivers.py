"""Drivers: their vehicles, V2G consent, charging preferences, sessions and overrides.

Everything here is the calling driver's own: a vehicle or session of another driver answers 404, as
one that does not exist, so that its existence is not revealed. A request that contradicts itself or
the stored state (discharge power on a vehicle that cannot discharge, a reserve larger than the
battery, a departure in the past) is a 422 whose ``loc`` names the offending field. Changes that alter
a plan's inputs (consent, overrides) ask the control loop to re-plan the sites concerned, after the
change is committed. Earnings are settlement's (``/driver/earnings``).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.api.deps import CurrentUser, Now, ReplanDep, SessionDep, require_roles
from aggregator.api.paging import PageParams, TimeRangeParams, paginate
from aggregator.api.schemas import Page
from aggregator.api.schemas.drivers import (
    ConsentGive,
    ConsentPublic,
    ConsentStatePublic,
    DepartureSource,
    EnergySummary,
    OverrideCreate,
    OverridePublic,
    PlannedPower,
    SessionDetail,
    SessionPublic,
    VehicleCreate,
    VehicleEnergy,
    VehiclePublic,
    VehicleUpdate,
)
from aggregator.control import schedules
from aggregator.db.consents import (
    ConsentError,
    consent_history,
    current_consent,
    give_consent,
    withdraw_consent,
)
from aggregator.db.models import (
    ChargingSession,
    Role,
    ScheduleVersion,
    SessionOverride,
    Site,
    User,
    Vehicle,
)

router = APIRouter(prefix="/driver", tags=["drivers"], dependencies=[Depends(require_roles(Role.DRIVER))])

WHAT_IF_TRIGGER = "what_if"
"""Schedules made for a trader's what-if question are not plans in force; a session's planned power
is never read from them."""


def _invalid(location: tuple[str, ...], message: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, whose ``loc`` names the offending field."""
    return RequestValidationError([{"type": "value_error", "loc": location, "msg": message, "input": value}])


def _not_found(what: str, ident: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"you have no {what} {ident}")


# ------------------------------------------------------------------------------------------ vehicles


def _own_vehicle(session: Session, user: User, vehicle_id: int) -> Vehicle:
    vehicle = session.get(Vehicle, vehicle_id)
    if vehicle is None or vehicle.owner_id != user.id:
        raise _not_found("vehicle", vehicle_id)
    return vehicle


def _check_vehicle(session: Session, vehicle: Vehicle) -> None:
    """Refuse a vehicle (as it would be stored) whose fields contradict each other or its consent."""
    if vehicle.max_discharge_kw > 0 and not vehicle.v2g_capable:
        raise _invalid(
            ("body", "max_discharge_kw"),
            f"max_discharge_kw is {vehicle.max_discharge_kw} but the vehicle is not v2g_capable; "
            "set it to 0 or set v2g_capable",
            vehicle.max_discharge_kw,
        )
    if vehicle.id is None:
        return
    consent = current_consent(session, vehicle.id)
    if consent is None:
        return
    if not vehicle.v2g_capable:
        raise _invalid(
            ("body", "v2g_capable"),
            f"vehicle {vehicle.id} has V2G consent in force; withdraw it before setting v2g_capable false",
            False,
        )
    if vehicle.battery_kwh < consent.min_reserve_kwh:
        raise _invalid(
            ("body", "battery_kwh"),
            f"battery_kwh {vehicle.battery_kwh} is below the V2G consent's min_reserve_kwh "
            f"{consent.min_reserve_kwh}; change the consent first",
            vehicle.battery_kwh,
        )


def _commit_vehicle(session: Session, vehicle: Vehicle) -> None:
    """Commit the new or changed vehicle; 409 if its ``id_token`` is another vehicle's."""
    id_token = vehicle.id_token
    try:
        session.commit()
    except IntegrityError as error:  # the only unique column a driver sets
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"id_token {id_token!r} is taken") from error


@router.post("/vehicles", status_code=status.HTTP_201_CREATED)
def create_vehicle(body: VehicleCreate, user: CurrentUser, session: SessionDep) -> VehiclePublic:
    vehicle = Vehicle(owner_id=user.id, **body.model_dump())
    _check_vehicle(session, vehicle)
    session.add(vehicle)
    _commit_vehicle(session, vehicle)
    return VehiclePublic.model_validate(vehicle)


@router.get("/vehicles")
def list_vehicles(user: CurrentUser, session: SessionDep, page: PageParams) -> Page[VehiclePublic]:
    query = select(Vehicle).where(Vehicle.owner_id == user.id).order_by(Vehicle.id)
    return paginate(session, query, page, VehiclePublic)


@router.get("/vehicles/{vehicle_id}")
def read_vehicle(vehicle_id: int, user: CurrentUser, session: SessionDep) -> VehiclePublic:
    return VehiclePublic.model_validate(_own_vehicle(session, user, vehicle_id))


@router.patch("/vehicles/{vehicle_id}")
def update_vehicle(
    vehicle_id: int, body: VehicleUpdate, user: CurrentUser, session: SessionDep
) -> VehiclePublic:
    """Change the fields sent (details and charging preferences); the others stay as they are."""
    vehicle = _own_vehicle(session, user, vehicle_id)
    with session.no_autoflush:  # checked before anything is written
        for name, value in body.changes().items():
            setattr(vehicle, name, value)
        _check_vehicle(session, vehicle)
    _commit_vehicle(session, vehicle)
    return VehiclePublic.model_validate(vehicle)


# ------------------------------------------------------------------------------------------ consent


def _consent_public(session: Session, vehicle_id: int) -> ConsentPublic:
    history = [ConsentStatePublic.model_validate(state) for state in consent_history(session, vehicle_id)]
    current = history[-1] if history and history[-1].active else None
    return ConsentPublic(vehicle_id=vehicle_id, current=current, history=history)


def _request_replans_for_vehicle(session: Session, replans: ReplanDep, vehicle_id: int) -> None:
    """Ask for a re-plan of every site where the vehicle is plugged in (an open session)."""
    sites = session.scalars(
        select(ChargingSession.site_id)
        .where(ChargingSession.vehicle_id == vehicle_id, ChargingSession.stopped_at.is_(None))
        .distinct()
        .order_by(ChargingSession.site_id)
    )
    for site_id in sites:
        replans.request(site_id, f"consent:vehicle {vehicle_id}")


@router.get("/vehicles/{vehicle_id}/consent")
def read_consent(vehicle_id: int, user: CurrentUser, session: SessionDep) -> ConsentPublic:
    """The consent in force and every state it went through, oldest first."""
    _own_vehicle(session, user, vehicle_id)
    return _consent_public(session, vehicle_id)


@router.put("/vehicles/{vehicle_id}/consent")
def give_vehicle_consent(
    vehicle_id: int, body: ConsentGive, user: CurrentUser, session: SessionDep, replans: ReplanDep, now: Now
) -> ConsentPublic:
    """Give V2G consent, or change its reserve: appends a state, never changes one."""
    vehicle = _own_vehicle(session, user, vehicle_id)
    if not vehicle.v2g_capable:
        raise _invalid(
            ("path", "vehicle_id"),
            f"vehicle {vehicle_id} is not v2g_capable; V2G consent needs a vehicle that can discharge",
            vehicle_id,
        )
    if body.min_reserve_kwh > vehicle.battery_kwh:
        raise _invalid(
            ("body", "min_reserve_kwh"),
            f"min_reserve_kwh {body.min_reserve_kwh} is more than the battery_kwh {vehicle.battery_kwh} "
            f"of vehicle {vehicle_id}",
            body.min_reserve_kwh,
        )
    try:
        give_consent(session, vehicle_id, body.min_reserve_kwh, now)
    except ConsentError as error:
        raise _invalid(("body", "min_reserve_kwh"), str(error), body.min_reserve_kwh) from error
    session.commit()
    _request_replans_for_vehicle(session, replans, vehicle_id)
    return _consent_public(session, vehicle_id)


@router.delete("/vehicles/{vehicle_id}/consent")
def withdraw_vehicle_consent(
    vehicle_id: int, user: CurrentUser, session: SessionDep, replans: ReplanDep, now: Now
) -> ConsentPublic:
    """Withdraw the consent in force (409 if there is none): appends a withdrawn state."""
    _own_vehicle(session, user, vehicle_id)
    try:
        withdraw_consent(session, vehicle_id, now)
    except ConsentError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    session.commit()
    _request_replans_for_vehicle(session, replans, vehicle_id)
    return _consent_public(session, vehicle_id)


# ----------------------------------------------------------------------------------------- sessions


def _own_sessions(user: User) -> Select[ChargingSession]:
    return (
        select(ChargingSession)
        .join(Vehicle, ChargingSession.vehicle_id == Vehicle.id)
        .where(Vehicle.owner_id == user.id)
    )


def _own_session(session: Session, user: User, session_id: int) -> ChargingSession:
    charging = session.scalar(_own_sessions(user).where(ChargingSession.id == session_id))
    if charging is None:
        raise _not_found("charging session", session_id)
    return charging


def _latest_override(session: Session, session_id: int) -> SessionOverride | None:
    return session.scalar(
        select(SessionOverride)
        .where(SessionOverride.session_id == session_id)
        .order_by(SessionOverride.id.desc())
        .limit(1)
    )


def _next_local_time(after: dt.datetime, hh_mm: str, timezone: str) -> dt.datetime:
    """The first local ``HH:MM`` in ``timezone`` strictly after ``after``, in UTC."""
    zone = zoneinfo.ZoneInfo(timezone)
    local = after.astimezone(zone)
    hours, minutes = (int(part) for part in hh_mm.split(":"))
    candidate = local.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    if candidate <= local:
        candidate = (candidate.replace(tzinfo=None) + dt.timedelta(days=1)).replace(tzinfo=zone)
    return candidate.astimezone(dt.UTC)


def _departure(
    session: Session, charging: ChargingSession, vehicle: Vehicle, override: SessionOverride | None
) -> tuple[dt.datetime | None, DepartureSource | None]:
    if override is not None and override.departure_at is not None:
        return override.departure_at, "override"
    if charging.departure_at is not None:
        return charging.departure_at, "session"
    if vehicle.departure_time is not None:
        site = session.get(Site, charging.site_id)
        timezone = site.timezone if site is not None else "UTC"
        return _next_local_time(charging.started_at, vehicle.departure_time, timezone), "vehicle_default"
    return None, None


def _planned_power(session: Session, charging: ChargingSession) -> PlannedPower | None:
    """This session's power in the latest schedule of its site, if that schedule includes it."""
    schedule = session.scalar(
        select(ScheduleVersion)
        .where(ScheduleVersion.site_id == charging.site_id, ScheduleVersion.trigger != WHAT_IF_TRIGGER)
        .where(~ScheduleVersion.trigger.startswith(f"{WHAT_IF_TRIGGER}:"))
        .order_by(ScheduleVersion.created_at.desc(), ScheduleVersion.id.desc())
        .limit(1)
    )
    if schedule is None:
        return None
    try:
        plan = schedules.plan_of(schedule)
    except schedules.ScheduleDataError as error:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail=str(error)) from error
    vehicle = next((vehicle for vehicle in plan.vehicles if vehicle.session_id == charging.id), None)
    if vehicle is None:
        return None
    return PlannedPower(
        schedule_version_id=schedule.id,
        created_at=schedule.created_at,
        status=schedule.status,
        horizon_start=schedule.horizon_start,
        step_seconds=schedule.step_seconds,
        evse_id=vehicle.evse_id or None,
        power_kw=vehicle.power_kw.tolist(),
    )


@router.get("/sessions")
def list_sessions(
    user: CurrentUser,
    session: SessionDep,
    page: PageParams,
    window: TimeRangeParams,
    vehicle_id: Annotated[int | None, Query(description="Only this vehicle's sessions")] = None,
) -> Page[SessionPublic]:
    """The sessions of the caller's vehicles that started in the range, newest first."""
    query = window.apply(_own_sessions(user), ChargingSession.started_at)
    if vehicle_id is not None:
        _own_vehicle(session, user, vehicle_id)
        query = query.where(ChargingSession.vehicle_id == vehicle_id)
    query = query.order_by(ChargingSession.started_at.desc(), ChargingSession.id.desc())
    return paginate(session, query, page, SessionPublic)


@router.get("/sessions/{session_id}")
def read_session(session_id: int, user: CurrentUser, session: SessionDep) -> SessionDetail:
    """The session with its energy so far, its departure and target, the override in force and the
    power the latest schedule plans for it."""
    charging = _own_session(session, user, session_id)
    vehicle = session.get(Vehicle, charging.vehicle_id)
    assert vehicle is not None  # _own_session joined it
    override = _latest_override(session, session_id)
    departure_at, departure_source = _departure(session, charging, vehicle, override)
    target = vehicle.target_soc_percent
    if override is not None and override.target_soc_percent is not None:
        target = override.target_soc_percent
    return SessionDetail(
        **SessionPublic.model_validate(charging).model_dump(),
        energy_request_kwh=charging.energy_request_kwh,
        soc_at_start_percent=charging.soc_at_start_percent,
        departure_at=departure_at,
        departure_source=departure_source,
        target_soc_percent=target,
        override=OverridePublic.model_validate(override) if override is not None else None,
        planned=_planned_power(session, charging),
    )


@router.post("/sessions/{session_id}/override", status_code=status.HTTP_201_CREATED)
def create_override(
    session_id: int,
    body: OverrideCreate,
    user: CurrentUser,
    session: SessionDep,
    replans: ReplanDep,
    now: Now,
) -> OverridePublic:
    """Append an override for a running session and ask for its site to be re-planned at once."""
    charging = _own_session(session, user, session_id)
    if charging.stopped_at is not None:
        detail = f"charging session {session_id} stopped at {charging.stopped_at.isoformat()}"
        raise HTTPException(status.HTTP_409_CONFLICT, detail=detail)
    if body.departure_at is not None:
        departure = body.departure_at.astimezone(dt.UTC)
        if departure <= now:
            raise _invalid(
                ("body", "departure_at"),
                f"departure_at {departure.isoformat()} is not in the future (now {now.isoformat()})",
                body.departure_at.isoformat(),
            )
        if departure <= charging.started_at:
            raise _invalid(
                ("body", "departure_at"),
                f"departure_at {departure.isoformat()} is not after the session started at "
                f"{charging.started_at.isoformat()}",
                body.departure_at.isoformat(),
            )
    values = body.model_dump()
    if body.departure_at is not None:
        values["departure_at"] = body.departure_at.astimezone(dt.UTC)
    override = SessionOverride(session_id=session_id, created_by_id=user.id, created_at=now, **values)
    session.add(override)
    session.commit()
    replans.request(charging.site_id, f"override:session {session_id}")
    return OverridePublic.model_validate(override)


@router.get("/sessions/{session_id}/overrides")
def list_overrides(
    session_id: int, user: CurrentUser, session: SessionDep, page: PageParams, window: TimeRangeParams
) -> Page[OverridePublic]:
    """The session's overrides made in the range, oldest first (the last one is in force)."""
    _own_session(session, user, session_id)
    query = window.apply(
        select(SessionOverride).where(SessionOverride.session_id == session_id), SessionOverride.created_at
    )
    return paginate(session, query.order_by(SessionOverride.id), page, OverridePublic)


# ------------------------------------------------------------------------------------------- energy


@router.get("/energy")
def energy_summary(user: CurrentUser, session: SessionDep, window: TimeRangeParams) -> EnergySummary:
    """Net energy charged [kWh] per vehicle and in total, over the sessions that started in the range.

    Every vehicle of the driver is listed, with zero when it had no session. V2G discharge and
    earnings are settlement's to report.
    """
    totals = (
        window.apply(_own_sessions(user), ChargingSession.started_at)
        .with_only_columns(
            ChargingSession.vehicle_id,
            func.count(ChargingSession.id),
            func.coalesce(func.sum(ChargingSession.energy_kwh), 0.0),
        )
        .group_by(ChargingSession.vehicle_id)
    )
    by_vehicle = {
        vehicle_id: (count, float(kwh or 0.0)) for vehicle_id, count, kwh in session.execute(totals)
    }
    vehicles = [
        VehicleEnergy(
            vehicle_id=vehicle.id,
            name=vehicle.name,
            sessions=by_vehicle.get(vehicle.id, (0, 0.0))[0],
            charged_kwh=by_vehicle.get(vehicle.id, (0, 0.0))[1],
        )
        for vehicle in session.scalars(
            select(Vehicle).where(Vehicle.owner_id == user.id).order_by(Vehicle.id)
        )
    ]
    return EnergySummary(
        start=window.start,
        end=window.end,
        vehicles=vehicles,
        total_sessions=sum(vehicle.sessions for vehicle in vehicles),
        total_charged_kwh=sum(vehicle.charged_kwh for vehicle in vehicles),
    )
