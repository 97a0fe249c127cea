"""Grid operators: dispatch events of their own programs, and the performance delivered on them.

An event is a chain of :class:`~aggregator.db.models.DispatchEvent` rows sharing ``(source,
external_event_id)``; a change never updates a row but appends one with ``modification + 1``. The
event's public ``id`` is the row id of the first version in its chain (the lowest row id), and the
event reads as its latest version (highest ``modification``). Events posted here have source
``"api"`` and a new uuid as ``external_event_id``. A program or event of another operator answers
404, as one that does not exist.

Every new version asks the control loop to re-plan the event's target sites (reason
``event:<id>``) and declares how the event is measured at each site that has no declaration yet
(:mod:`aggregator.programs.baseline_declarations`): the program's method and parameters at
notification, fixed.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.api.deps import Caller, Now, ReplanDep, SessionDep, require_roles
from aggregator.api.paging import PageParams, TimeRangeParams
from aggregator.api.schemas import Page
from aggregator.api.schemas.operators import (
    PROGRAM_KINDS,
    EventCreate,
    EventDetail,
    EventInterval,
    EventPerformancePublic,
    EventPublic,
    EventTerms,
    EventUpdate,
    EventVersion,
    IntervalPerformance,
    ProgramSummary,
    SiteBaselinePublic,
    SitePerformance,
)
from aggregator.db.models import DispatchEvent, Program, Role, User
from aggregator.ingestion.metering import DEFAULT_STEP, interval_index, site_import_intervals
from aggregator.programs.baseline_declarations import declare_site_baselines, site_declaration
from aggregator.programs.dispatch_events import EventChain, EventNotFoundError, event_chain, latest_versions
from aggregator.settlement.baselines import BaselineError
from aggregator.settlement.event_measurement import committed_kw, plugged_sessions, site_committed_kw
from aggregator.settlement.performance import EventPerformance, event_performance
from aggregator.settlement.site_baselines import declared_site_baseline
from market_adapters.dispatch import SignalStatus

API_SOURCE = "api"
START_GRACE = dt.timedelta(minutes=1)
"""How far in the past an event's start may lie when it is posted (clocks and networks differ)."""


def operator(caller: Annotated[Caller, Depends(require_roles(Role.GRID_OPERATOR))]) -> User:
    """The calling grid operator's account."""
    return caller.user


CurrentOperator = Annotated[User, Depends(operator)]

router = APIRouter(
    prefix="/operator", tags=["grid operators"], dependencies=[Depends(require_roles(Role.GRID_OPERATOR))]
)


def _not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no {what}")


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


def _conflict(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=detail)


# ----------------------------------------------------------------------------------------- programs


@router.get("/programs")
def list_programs(session: SessionDep, user: CurrentOperator) -> list[ProgramSummary]:
    """The operator's own programs, with the sites enrolled in each."""
    programs = session.scalars(select(Program).where(Program.owner_id == user.id).order_by(Program.id))
    return [
        ProgramSummary(
            id=program.id,
            name=program.name,
            kind=program.kind,
            currency=program.currency,
            site_ids=[site.id for site in program.sites],
            created_at=program.created_at,
        )
        for program in programs
    ]


def _own_program(session: Session, user: User, program_id: str) -> Program:
    program = session.get(Program, program_id)
    if program is None or program.owner_id != user.id:
        raise _not_found(f"program {program_id!r}")
    return program


# ------------------------------------------------------------------------------------------- events


def _version(row: DispatchEvent) -> EventVersion:
    intervals = [EventInterval.model_validate(interval) for interval in row.intervals]
    flat = len(intervals) == 1 and (intervals[0].start, intervals[0].end) == (
        row.window_start,
        row.window_end,
    )
    return EventVersion(
        version_id=row.id,
        modification=row.modification,
        program_id=row.program_id or "",
        kind=row.kind,
        status=row.status,
        start=row.window_start,
        end=row.window_end,
        requested_kw=intervals[0].value if flat else None,
        intervals=intervals,
        price_per_kwh=row.price_per_kwh,
        penalty_per_kwh=row.penalty_per_kwh,
        currency=row.currency,
        target_sites=list(row.target_sites),
        created_by_id=row.created_by_id,
        created_at=row.created_at,
    )


def _public(event_id: int, latest: DispatchEvent) -> EventPublic:
    return EventPublic(id=event_id, **_version(latest).model_dump())


def _own_event(session: Session, user: User, event_id: int) -> EventChain:
    """The event whose public id is ``event_id``, if it belongs to one of ``user``'s programs; else 404."""
    try:
        chain = event_chain(session, event_id)
    except EventNotFoundError as error:
        raise _not_found(f"event {event_id}") from error
    program = chain.latest.program
    if program is None or program.owner_id != user.id:
        raise _not_found(f"event {event_id}")
    return chain


def _target_sites(program: Program, requested: Sequence[str]) -> list[str]:
    """``requested`` (deduplicated) if all are enrolled in ``program``, or all enrolled sites if empty."""
    enrolled = [site.id for site in program.sites]
    for site_id in requested:
        if site_id not in enrolled:
            raise _unprocessable(f"target_sites: site {site_id!r} is not enrolled in program {program.id!r}")
    targets = list(dict.fromkeys(requested)) or enrolled
    if not targets:
        raise _unprocessable(f"target_sites: program {program.id!r} has no enrolled sites to dispatch")
    return targets


def _check_start(start: dt.datetime, now: dt.datetime) -> None:
    if start < now - START_GRACE:
        raise _unprocessable(
            f"start: {start.isoformat()} is in the past (now {now.isoformat()}); an event cannot start "
            f"more than {START_GRACE.total_seconds():.0f} s ago"
        )


def _check_changeable(chain: EventChain, now: dt.datetime) -> None:
    latest = chain.latest
    if latest.source != API_SOURCE:
        raise _conflict(f"event {chain.id} comes from {latest.source!r}; change it there")
    if latest.status in (SignalStatus.CANCELLED, SignalStatus.COMPLETED):
        raise _conflict(f"event {chain.id} is {latest.status.value}")
    if latest.window_end <= now:
        raise _conflict(f"event {chain.id} ended at {latest.window_end.isoformat()}")


def _append(session: Session, chain: EventChain, row: DispatchEvent, replans: ReplanDep) -> EventPublic:
    """Store ``row`` as the next version of ``chain`` and ask for its sites to be re-planned."""
    session.add(row)
    try:
        session.flush()
        declare_site_baselines(session, chain.id)
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise _conflict(f"event {chain.id} was changed at the same time; fetch it and try again") from error
    for site_id in row.target_sites:
        replans.request(site_id, f"event:{chain.id}")
    return _public(chain.id, row)


def _next_version(chain: EventChain, user: User, now: dt.datetime, **changes: Any) -> DispatchEvent:
    latest = chain.latest
    fields: dict[str, Any] = {
        "program_id": latest.program_id,
        "source": latest.source,
        "external_event_id": latest.external_event_id,
        "modification": latest.modification + 1,
        "kind": latest.kind,
        "status": latest.status,
        "price_per_kwh": latest.price_per_kwh,
        "penalty_per_kwh": latest.penalty_per_kwh,
        "window_start": latest.window_start,
        "window_end": latest.window_end,
        "intervals": list(latest.intervals),
        "currency": latest.currency,
        "target_sites": list(latest.target_sites),
    }
    return DispatchEvent(
        **{**fields, **changes}, created_by_id=user.id, received_at=now, created_at=now, updated_at=now
    )


@router.post("/programs/{program_id}/events", status_code=status.HTTP_201_CREATED)
def create_event(
    program_id: str,
    body: EventCreate,
    session: SessionDep,
    user: CurrentOperator,
    replans: ReplanDep,
    now: Now,
) -> EventPublic:
    """Post an event on one of the operator's programs; its target sites are re-planned."""
    program = _own_program(session, user, program_id)
    if PROGRAM_KINDS[body.kind] is not program.kind:
        raise _unprocessable(
            f"kind: a {body.kind.value} event needs a {PROGRAM_KINDS[body.kind].value} program; "
            f"program {program.id!r} is {program.kind.value}"
        )
    _check_start(body.start, now)
    row = DispatchEvent(
        program_id=program.id,
        source=API_SOURCE,
        external_event_id=str(uuid.uuid4()),
        modification=0,
        kind=body.kind,
        status=SignalStatus.PENDING,
        price_per_kwh=body.price_per_kwh,
        penalty_per_kwh=body.penalty_per_kwh,
        created_by_id=user.id,
        window_start=body.start,
        window_end=body.end,
        intervals=[interval.model_dump(mode="json") for interval in body.schedule()],
        currency=program.currency,
        target_sites=_target_sites(program, body.target_sites),
        received_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    declare_site_baselines(session, row.id)
    session.commit()
    for site_id in row.target_sites:
        replans.request(site_id, f"event:{row.id}")
    return _public(row.id, row)


@router.get("/events")
def list_events(
    session: SessionDep,
    user: CurrentOperator,
    page: PageParams,
    window: TimeRangeParams,
    program_id: Annotated[str | None, Query(description="Only the events of this program")] = None,
    event_status: Annotated[
        SignalStatus | None, Query(alias="status", description="Only events in this status")
    ] = None,
) -> Page[EventPublic]:
    """The operator's events as they stand (latest versions), whose window overlaps ``[start, end)``,
    ordered by start."""
    query: Select[Any] = (
        latest_versions()
        .join(Program, Program.id == DispatchEvent.program_id)
        .where(Program.owner_id == user.id)
    )
    if program_id is not None:
        query = query.where(DispatchEvent.program_id == program_id)
    if event_status is not None:
        query = query.where(DispatchEvent.status == event_status)
    query = window.overlapping(query, DispatchEvent.window_start, DispatchEvent.window_end)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.execute(
        query.order_by(DispatchEvent.window_start, query.selected_columns.event_id)
        .offset(page.offset)
        .limit(page.limit)
    ).all()
    return Page[EventPublic](
        items=[_public(event_id, row) for event_id, row in rows],
        total=total,
        offset=page.offset,
        limit=page.limit,
    )


@router.get("/events/{event_id}")
def get_event(event_id: int, session: SessionDep, user: CurrentOperator) -> EventDetail:
    """The event as it stands, and every version it went through."""
    chain = _own_event(session, user, event_id)
    return EventDetail(
        **_public(chain.id, chain.latest).model_dump(), versions=[_version(row) for row in chain.versions]
    )


@router.patch("/events/{event_id}")
def update_event(
    event_id: int,
    body: EventUpdate,
    session: SessionDep,
    user: CurrentOperator,
    replans: ReplanDep,
    now: Now,
) -> EventPublic:
    """Change an event's window, kW or prices: a new version (``modification + 1``) is appended.

    409 if the event is cancelled or has ended. Moving the window of an event whose kW varies over
    it needs new ``intervals``.
    """
    chain = _own_event(session, user, event_id)
    _check_changeable(chain, now)
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise _unprocessable("nothing to change: give start, end, requested_kw, intervals or prices")
    for name in ("start", "end", "requested_kw", "intervals"):
        if name in changes and changes[name] is None:
            raise _unprocessable(f"{name} cannot be null; leave it out to keep it")
    current = _version(chain.latest)
    terms: dict[str, Any] = {
        "start": changes.get("start", current.start),
        "end": changes.get("end", current.end),
        "price_per_kwh": changes.get("price_per_kwh", current.price_per_kwh),
        "penalty_per_kwh": changes.get("penalty_per_kwh", current.penalty_per_kwh),
    }
    if "requested_kw" in changes or "intervals" in changes:
        terms |= {name: changes[name] for name in ("requested_kw", "intervals") if name in changes}
    elif current.requested_kw is not None:
        terms["requested_kw"] = current.requested_kw
    elif (terms["start"], terms["end"]) == (current.start, current.end):
        terms["intervals"] = [interval.model_dump() for interval in current.intervals]
    else:
        raise _unprocessable(
            f"intervals: event {chain.id} asks for different kW over its window; "
            "moving the window needs the intervals (or one requested_kw) for the new window"
        )
    try:
        checked = EventTerms.model_validate(terms)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False, include_context=False)) from error
    if "start" in changes:
        _check_start(checked.start, now)
    row = _next_version(
        chain,
        user,
        now,
        window_start=checked.start,
        window_end=checked.end,
        intervals=[interval.model_dump(mode="json") for interval in checked.schedule()],
        price_per_kwh=checked.price_per_kwh,
        penalty_per_kwh=checked.penalty_per_kwh,
    )
    return _append(session, chain, row, replans)


@router.post("/events/{event_id}/cancel")
def cancel_event(
    event_id: int, session: SessionDep, user: CurrentOperator, replans: ReplanDep, now: Now
) -> EventPublic:
    """Cancel an event: a version with status ``cancelled`` is appended. 409 if cancelled or ended."""
    chain = _own_event(session, user, event_id)
    _check_changeable(chain, now)
    return _append(session, chain, _next_version(chain, user, now, status=SignalStatus.CANCELLED), replans)


# ------------------------------------------------------------------------------------- performance


def _number(value: Any) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _intervals(performance: EventPerformance, end: dt.datetime) -> list[IntervalPerformance]:
    rows = []
    cap = performance.cap_kw
    for t in performance.committed_kw.index:
        start = t.to_pydatetime()
        measured = _number(performance.measured_kw[t])
        cap_kw = _number(cap[t]) if cap is not None else None
        rows.append(
            IntervalPerformance(
                start=start,
                end=min(start + performance.step, end),
                committed_kw=_number(performance.committed_kw[t]),
                cap_kw=cap_kw,
                expected_kw=_number(performance.baseline_kw[t]),
                measured_kw=measured,
                delivered_kw=_number(performance.delivered_kw[t]),
                within_cap=(measured <= cap_kw if cap_kw is not None and measured is not None else None),
            )
        )
    return rows


def _totals(performance: EventPerformance) -> dict[str, Any]:
    return {
        "committed_kwh": performance.committed_kwh,
        "delivered_kwh": performance.delivered_kwh,
        "shortfall_kwh": performance.shortfall_kwh,
        "performance_factor": performance.performance_factor,
        "missing_intervals": performance.missing_intervals,
    }


@router.get("/events/{event_id}/performance")
def get_event_performance(
    event_id: int, session: SessionDep, user: CurrentOperator
) -> EventPerformancePublic:
    """What the event's target sites delivered, per 15-minute interval of its window (latest version).

    Each target site is committed its share of the event's kW (for ``dr_cap``, of the cap): the share
    its plan in force recorded when the sites were planned together, else an equal share (see
    :func:`site_committed_kw`); the event-level figures are those of the sites' summed series.
    Expected import is each site's baseline by the method declared when the event was notified
    (:mod:`aggregator.settlement.site_baselines`), as settlement measures it; each site's ``baseline``
    says which, with its parameters, so it can be recomputed from the meter (a ``counterfactual`` names
    the plans it was fixed at). Measured import is the metered mean
    (:func:`aggregator.ingestion.metering.site_import_intervals`); intervals not yet metered or without a
    baseline show ``null`` and are left out of the totals.
    """
    chain = _own_event(session, user, event_id)
    event = chain.latest
    if event.kind not in PROGRAM_KINDS:
        raise _unprocessable(f"event {chain.id} is a {event.kind.value} signal, which commits nothing")
    end = event.window_end
    step = DEFAULT_STEP
    index = interval_index(event.window_start, end, step)
    intervals = [EventInterval.model_validate(interval) for interval in event.intervals]
    committed = committed_kw(intervals, index, end, step)
    site_ids = list(event.target_sites)
    if not site_ids and event.program is not None:  # an adapter's event for the whole program
        site_ids = [site.id for site in event.program.sites]
    shares = site_committed_kw(session, chain.id, site_ids, committed, end, step)
    nothing = pd.Series(math.nan, index=index, dtype=float)
    sites: list[SitePerformance] = []
    expected, measured = [], []
    for site_id in site_ids:
        site_expected, baseline = _site_baseline(session, chain, site_id, index, step)
        site_measured = site_import_intervals(session, site_id, event.window_start, end, step).mean_kw
        performance = event_performance(event.kind, shares[site_id], site_expected, site_measured, step=step)
        sites.append(
            SitePerformance(
                site_id=site_id,
                baseline=baseline,
                intervals=_intervals(performance, end),
                **_totals(performance),
            )
        )
        expected.append(site_expected)
        measured.append(site_measured)
    total = event_performance(
        event.kind,
        committed,
        pd.concat(expected, axis=1).sum(axis=1, skipna=False) if expected else nothing,
        pd.concat(measured, axis=1).sum(axis=1, skipna=False) if measured else nothing,
        step=step,
    )
    return EventPerformancePublic(
        event_id=chain.id,
        kind=event.kind,
        status=event.status,
        step_seconds=int(step.total_seconds()),
        intervals=_intervals(total, end),
        sites=sites,
        **_totals(total),
    )


def _site_baseline(
    session: Session, chain: EventChain, site_id: str, index: pd.DatetimeIndex, step: dt.timedelta
) -> tuple[pd.Series, SiteBaselinePublic | None]:
    """A site's expected import [kW per interval] by its declared baseline, and the declaration; an
    expected import that cannot be made yet (too little meter data) is ``NaN``, with the problem."""
    event = chain.latest
    declaration = site_declaration(session, chain.id, site_id)
    nothing = pd.Series(math.nan, index=index, dtype=float)
    if declaration is None:
        return nothing, None
    sessions = plugged_sessions(session, site_id, chain.id, index, event.window_end, step)
    try:
        declared = declared_site_baseline(
            session, declaration, event.window_start, event.window_end, index, sessions, step
        )
    except (BaselineError, ValidationError) as error:
        return nothing, SiteBaselinePublic(**declaration.public(), problem=str(error))
    public = SiteBaselinePublic(**declaration.public(), plan_versions=list(declared.plan_versions))
    return declared.baseline.baseline_kw, public
