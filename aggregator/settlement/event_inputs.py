"""Gather what a dispatch event's settlement is made from, out of the database (reads only).

:func:`settlement_inputs` reads: the event's latest version (its public id is the row id of its first
version, as in :mod:`aggregator.api.routes.operators`), the program's payment terms (the event's own
``price_per_kwh``/``penalty_per_kwh`` override the program's rates), and

- per target site: the baseline method declared when the event was notified
  (:mod:`aggregator.programs.baseline_declarations`; an event notified before declarations were
  stored is measured by its program's current method, with a note), metered import per 15-minute
  interval (:mod:`aggregator.ingestion.metering`), the charging sessions plugged in during the window
  (:func:`~aggregator.settlement.event_measurement.plugged_sessions`), the site baseline by the
  declared method (:mod:`aggregator.settlement.site_baselines`), the committed kW (the site's share of
  the event's kW, as the operators' API shows it: as its plan in force recorded it when the sites were
  planned together, else an equal share; see
  :func:`~aggregator.settlement.event_measurement.site_committed_kw`) and
  :func:`~aggregator.settlement.performance.event_performance`; the event's performance is that of the
  sites' summed series;
- per charging session plugged in during the window with a vehicle (and so a driver, the vehicle's
  owner): the EVSE's metered power and the vehicle's own baseline, both only over the intervals the
  session overlaps; the energy it discharged [kWh] (for wear compensation); and why its contribution
  does not count, if it does not: no baseline of its own (its state was assumed when the event was
  planned, or no plan of the event planned it: it is never given defaults), V2G consent withdrawn
  before or during a V2G event (a vehicle that never consented is not excluded: it can still deliver
  by charging less), or an override in force during the event with ``no_v2g`` (V2G events) or
  ``charge_now`` (any event); then :func:`~aggregator.settlement.attribution.attribute` per site, so
  the vehicles' deliveries and the unattributed remainder add up to each site's delivery.

A session without a known vehicle is left out (its delivery stays unattributed, with a note). A
cancelled event is read without measurement (it settles to nothing).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db.models import (
    ChargingSession,
    DispatchEvent,
    SessionOverride,
    User,
    V2gConsent,
    Vehicle,
)
from aggregator.ingestion.metering import DEFAULT_STEP, interval_index, site_import_intervals
from aggregator.programs.baseline_declarations import (
    DEFAULT_MEASUREMENT,
    SiteBaselineDeclaration,
    event_site_ids,
    site_declaration,
)
from aggregator.programs.dispatch_events import EventChain, EventNotFoundError, event_chain
from aggregator.programs.kinds import rules_for
from aggregator.programs.terms import PaymentTerms, event_payment_terms
from aggregator.settlement.attribution import (
    Attribution,
    Exclusion,
    ExclusionReason,
    attribute,
    combine,
)
from aggregator.settlement.baselines import Baseline, BaselineError
from aggregator.settlement.event_measurement import (
    SessionSeries,
    committed_kw,
    plugged_sessions,
    site_committed_kw,
)
from aggregator.settlement.performance import EventPerformance, event_performance
from aggregator.settlement.runs import event_ref_for
from aggregator.settlement.site_baselines import declared_site_baseline
from market_adapters.dispatch import SignalInterval, SignalKind, SignalStatus

_INTERVALS: TypeAdapter[list[SignalInterval]] = TypeAdapter(list[SignalInterval])


# -------------------------------------------------------------------------------------------- errors


class SettlementInputError(ValueError):
    """An event that cannot be settled as it stands; the message names the event and the problem."""

    def __init__(self, event_id: int, problem: str) -> None:
        self.event_id = event_id
        super().__init__(f"event {event_id}: {problem}")


class UnknownEventError(SettlementInputError):
    """No event has this public id."""


class EventNotEndedError(SettlementInputError):
    """The event's window has not ended yet: its delivery cannot be measured."""


class NoTelemetryError(SettlementInputError):
    """None of the event's sites reported anything during its window."""


# -------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class SiteInputs:
    """One target site's measurement: series [kW] on the event's interval index."""

    site_id: str
    measured_kw: pd.Series
    samples: pd.Series
    """Telemetry readings behind each interval's mean (``0``: no data)."""
    baseline: Baseline
    committed_kw: pd.Series
    """This site's share of the event's kW (for ``dr_cap``: of the cap)."""
    performance: EventPerformance
    declaration: SiteBaselineDeclaration
    """How the event is measured here, as declared when it was notified."""
    sessions: tuple[SessionSeries, ...] = ()
    """The charging sessions plugged in during the window."""
    plan_versions: tuple[int, ...] = ()
    """For a ``counterfactual`` baseline: the schedule versions it was fixed at."""


@dataclass(frozen=True)
class VehicleInputs:
    """One charging session during the event: its vehicle, driver and power series [kW, + charging]."""

    session_id: int
    vehicle_id: int
    driver_id: int
    site_id: str
    evse: tuple[str, int]
    """(charge point id, EVSE id): the telemetry key."""
    counterfactual_kw: pd.Series
    """Its own baseline: frozen at the event's first plans; ``NaN`` throughout for a vehicle of unknown
    state (``exclusion`` says so)."""
    metered_kw: pd.Series
    discharged_kwh: float
    """Energy taken out of the battery during the event [kWh] (metered, intervals with data)."""
    exclusion: Exclusion | None = None


@dataclass(frozen=True)
class EventSettlementInputs:
    """Everything one event's settlement is made from (module doc, step 1).

    ``performance`` and ``attribution`` are ``None`` for a cancelled event, which settles to nothing.
    ``terms`` are the program's payment terms with the event's own rates applied.
    """

    event_id: int
    event_ref: str
    version_id: int
    """Row id of the event's latest version, the one settled."""
    program_id: str
    kind: SignalKind
    status: SignalStatus
    window_start: dt.datetime
    window_end: dt.datetime
    terms: PaymentTerms
    baseline_method: str
    """The method the event's sites are measured by, as declared when it was notified."""
    performance: EventPerformance | None
    sites: tuple[SiteInputs, ...] = ()
    vehicles: tuple[VehicleInputs, ...] = ()
    attribution: Attribution[int] | None = None
    drivers: Mapping[int, str] = field(default_factory=dict)
    """Driver (user id) → email, for statements."""
    notes: tuple[str, ...] = ()
    step: dt.timedelta = DEFAULT_STEP

    @property
    def cancelled(self) -> bool:
        return self.status is SignalStatus.CANCELLED

    @property
    def event_hours(self) -> float:
        """Length of the event's window [h]."""
        return (self.window_end - self.window_start).total_seconds() / 3600

    @property
    def available_kw(self) -> float:
        """The kW held available for the event: its mean committed kW over the window (for ``dr_cap``,
        the mean reduction the cap asked for, over intervals with a baseline)."""
        if self.performance is None:
            return 0.0
        committed = self.performance.committed_kw.dropna()
        return float(committed.mean()) if len(committed) else 0.0

    def discharged_kwh_by_driver(self) -> dict[int, float]:
        """Energy discharged [kWh] per driver, over all their sessions."""
        totals: dict[int, float] = defaultdict(float)
        for vehicle in self.vehicles:
            totals[vehicle.driver_id] += vehicle.discharged_kwh
        return dict(totals)


def find_event(session: Session, event_id: int) -> EventChain:
    """The event whose public id (its first version's row id) is ``event_id``."""
    try:
        return event_chain(session, event_id)
    except EventNotFoundError as error:
        raise UnknownEventError(event_id, error.problem) from error


def settlement_inputs(
    session: Session, event_id: int, *, now: dt.datetime, step: dt.timedelta = DEFAULT_STEP
) -> EventSettlementInputs:
    """Gather the settlement inputs of event ``event_id`` (module doc, step 1); reads only.

    Raises :class:`UnknownEventError`, :class:`EventNotEndedError` (``now`` before the window's end),
    :class:`NoTelemetryError`, or :class:`SettlementInputError` for an event that commits nothing, has
    no program, or whose program's terms, declared measurement or baseline cannot be used.
    """
    if now.utcoffset() is None:
        raise ValueError(f"now must carry a UTC offset, got {now.isoformat()}")
    found = find_event(session, event_id)
    event = found.latest
    program = event.program
    if program is None:
        raise SettlementInputError(event_id, f"is not mapped to a program (source {event.source!r})")
    site_ids = event_site_ids(event)
    try:
        terms = event_payment_terms(program, event)
        declarations = [_declaration(session, found, site_id) for site_id in site_ids]
        for declaration in declarations:
            declaration.config()
    except ValidationError as error:
        raise SettlementInputError(event_id, f"program {program.id!r} measurement: {error}") from error
    except ValueError as error:
        raise SettlementInputError(event_id, str(error)) from error
    methods = sorted({declaration.method for declaration in declarations})
    common: dict[str, Any] = {
        "event_id": event_id,
        "event_ref": event_ref_for(event.source, event.external_event_id),
        "version_id": event.id,
        "program_id": program.id,
        "kind": event.kind,
        "status": event.status,
        "window_start": event.window_start,
        "window_end": event.window_end,
        "terms": terms,
        "baseline_method": ", ".join(methods) if methods else _program_method(program.measurement),
        "step": step,
    }
    if event.status is SignalStatus.CANCELLED:
        return EventSettlementInputs(**common, performance=None, notes=("cancelled: nothing to settle",))
    if not rules_for(event.kind).commits:
        raise SettlementInputError(event_id, f"is a {event.kind.value} signal, which commits nothing")
    if now < event.window_end:
        raise EventNotEndedError(
            event_id, f"ends at {event.window_end.isoformat()}, after now ({now.isoformat()})"
        )
    if not site_ids:
        raise SettlementInputError(event_id, f"names no sites and program {program.id!r} has none enrolled")
    index = interval_index(event.window_start, event.window_end, step)
    committed = committed_kw(_INTERVALS.validate_python(event.intervals), index, event.window_end, step)
    shares = site_committed_kw(session, event_id, site_ids, committed, event.window_end, step)
    notes: list[str] = [
        f"site {d.site_id}: no baseline was declared when the event was notified; measured by program "
        f"{program.id!r}'s current measurement ({d.method})"
        for d in declarations
        if not d.stored
    ]
    sites = tuple(
        _site_inputs(session, found, declaration, shares[declaration.site_id], index, step)
        for declaration in declarations
    )
    if not any(int(site.samples.sum()) for site in sites):
        raise NoTelemetryError(
            event_id,
            f"no telemetry from {', '.join(site_ids)} between {event.window_start.isoformat()} and "
            f"{event.window_end.isoformat()}",
        )
    performance = event_performance(
        event.kind,
        committed,
        pd.concat([site.baseline.baseline_kw for site in sites], axis=1).sum(axis=1, skipna=False),
        pd.concat([site.measured_kw for site in sites], axis=1).sum(axis=1, skipna=False),
        step=step,
    )
    vehicles = tuple(_vehicle_inputs(session, event, sites, step, notes))
    attribution = combine([_attribution(site, vehicles, step) for site in sites])
    driver_ids = sorted({vehicle.driver_id for vehicle in vehicles})
    emails: dict[int, str] = {
        int(user_id): email
        for user_id, email in session.execute(select(User.id, User.email).where(User.id.in_(driver_ids)))
    }
    return EventSettlementInputs(
        **common,
        performance=performance,
        sites=sites,
        vehicles=vehicles,
        attribution=attribution,
        drivers=emails,
        notes=tuple(notes),
    )


def _program_method(measurement: Mapping[str, Any] | None) -> str:
    return str((measurement or DEFAULT_MEASUREMENT).get("method", "?"))


def _declaration(session: Session, event: EventChain, site_id: str) -> SiteBaselineDeclaration:
    declaration = site_declaration(session, event.id, site_id)
    if declaration is None:
        raise SettlementInputError(event.id, f"target site {site_id!r} does not exist")
    return declaration


def _site_inputs(
    session: Session,
    event: EventChain,
    declaration: SiteBaselineDeclaration,
    committed: pd.Series,
    index: pd.DatetimeIndex,
    step: dt.timedelta,
) -> SiteInputs:
    latest = event.latest
    start, end, site_id = latest.window_start, latest.window_end, declaration.site_id
    window = site_import_intervals(session, site_id, start, end, step)
    sessions = plugged_sessions(session, site_id, event.id, index, end, step)
    try:
        declared = declared_site_baseline(session, declaration, start, end, index, sessions, step)
    except BaselineError as error:
        raise SettlementInputError(event.id, f"site {site_id!r}: {error}") from error
    performance = event_performance(
        latest.kind, committed, declared.baseline.baseline_kw, window.mean_kw, step=step
    )
    return SiteInputs(
        site_id,
        window.mean_kw,
        window.samples,
        declared.baseline,
        committed,
        performance,
        declaration,
        tuple(sessions),
        declared.plan_versions,
    )


def _vehicle_inputs(
    session: Session,
    event: DispatchEvent,
    sites: Sequence[SiteInputs],
    step: dt.timedelta,
    notes: list[str],
) -> list[VehicleInputs]:
    start, end = event.window_start, event.window_end
    v2g = rules_for(event.kind).v2g_consent
    hours = step.total_seconds() / 3600
    vehicles = []
    for site in sites:
        for series in site.sessions:
            charging = session.get(ChargingSession, series.session_id)
            vehicle = session.get(Vehicle, series.vehicle_id) if series.vehicle_id is not None else None
            if charging is None or vehicle is None:
                notes.append(
                    f"session {series.session_id} has no known vehicle: its delivery stays unattributed"
                )
                continue
            unknown = series.unknown_reason
            exclusion = (
                Exclusion(ExclusionReason.UNKNOWN_STATE, unknown)
                if unknown is not None
                else _exclusion(session, charging, vehicle, start, end, v2g=v2g)
            )
            vehicles.append(
                VehicleInputs(
                    session_id=series.session_id,
                    vehicle_id=vehicle.id,
                    driver_id=vehicle.owner_id,
                    site_id=site.site_id,
                    evse=series.evse,
                    counterfactual_kw=series.baseline_kw,
                    metered_kw=series.metered_kw,
                    discharged_kwh=float((-series.metered_kw).clip(lower=0).sum()) * hours,
                    exclusion=exclusion,
                )
            )
    return vehicles


def _attribution(site: SiteInputs, vehicles: Sequence[VehicleInputs], step: dt.timedelta) -> Attribution[int]:
    """The vehicles' deliveries at ``site`` and its remainder (:func:`attribute`)."""
    here = [vehicle for vehicle in vehicles if vehicle.site_id == site.site_id]
    unknown = {
        v.session_id: v.exclusion
        for v in here
        if v.exclusion is not None and v.exclusion.reason is ExclusionReason.UNKNOWN_STATE
    }
    known = [vehicle for vehicle in here if vehicle.session_id not in unknown]
    return attribute(
        site.baseline.baseline_kw,
        site.measured_kw,
        {vehicle.session_id: vehicle.counterfactual_kw for vehicle in known},
        {vehicle.session_id: vehicle.metered_kw for vehicle in known},
        exclusions={v.session_id: v.exclusion for v in known if v.exclusion is not None},
        unknown=unknown,
        step=step,
    )


def _exclusion(
    session: Session,
    charging: ChargingSession,
    vehicle: Vehicle,
    start: dt.datetime,
    end: dt.datetime,
    *,
    v2g: bool,
) -> Exclusion | None:
    """Why the session's contribution does not count, if it does not (module doc)."""
    overrides = session.scalars(
        select(SessionOverride)
        .where(SessionOverride.session_id == charging.id, SessionOverride.created_at < end)
        .order_by(SessionOverride.id)
    ).all()
    in_force_at_start = [row for row in overrides if row.created_at <= start][-1:]
    during = [row for row in overrides if row.created_at > start]
    for row in [*in_force_at_start, *during]:
        flag = "charge_now" if row.charge_now else "no_v2g" if (v2g and row.no_v2g) else None
        if flag is not None:
            return Exclusion(
                ExclusionReason.OVERRIDE,
                f"session {charging.id}: {flag} override at {row.created_at.isoformat()}",
            )
    if v2g:
        withdrawn_at = _consent_withdrawn(session, vehicle.id, start, end)
        if withdrawn_at is not None:
            return Exclusion(
                ExclusionReason.CONSENT_WITHDRAWN,
                f"vehicle {vehicle.id}: V2G consent withdrawn at {withdrawn_at.isoformat()}",
            )
    return None


def _consent_withdrawn(
    session: Session, vehicle_id: int, start: dt.datetime, end: dt.datetime
) -> dt.datetime | None:
    """When the vehicle's V2G consent was withdrawn, if it was withdrawn at the event's start (and not
    given again) or during the event; ``None`` otherwise (including a vehicle that never consented)."""
    history = session.scalars(
        select(V2gConsent).where(V2gConsent.vehicle_id == vehicle_id).order_by(V2gConsent.id)
    ).all()
    before = [row for row in history if _consent_time(row) <= start]
    if before and before[-1].withdrawn_at is not None:
        return before[-1].withdrawn_at
    during = [
        row.withdrawn_at for row in history if row.withdrawn_at is not None and start < row.withdrawn_at < end
    ]
    return during[0] if during else None


def _consent_time(row: V2gConsent) -> dt.datetime:
    return row.withdrawn_at if row.withdrawn_at is not None else row.given_at
