"""Gather what a dispatch event's settlement is made from, out of the database (reads only).

:func:`settlement_inputs` reads: the event's latest version (its public id is the row id of its first
version, as in :mod:`aggregator.api.routes.operators`), the program's payment terms (the event's own
``price_per_kwh``/``penalty_per_kwh`` override the program's rates) and measurement method, and

- per target site: metered import per 15-minute interval (:mod:`aggregator.ingestion.metering`), the
  baseline by the program's method (default ``counterfactual``: the plan in force without the event, see
  :mod:`aggregator.settlement.event_measurement`), the committed kW (the site's share of the event's
  kW, as the operators' API shows it: as its plan in force recorded it when the sites were planned
  together, else an equal share; see :func:`~aggregator.settlement.event_measurement.site_committed_kw`) and
  :func:`~aggregator.settlement.performance.event_performance`; the event's performance is that of the
  sites' summed series;
- per charging session plugged in during the window, at a target site, with a vehicle (and so a
  driver, the vehicle's owner): the EVSE's metered power (telemetry key = charge point id + EVSE id)
  and the vehicle's counterfactual power, both only over the intervals the session overlaps; the
  energy it discharged [kWh] (for wear compensation); an exclusion when the driver withdrew V2G
  consent before or during a V2G event (a vehicle that never consented is not excluded: it can still
  deliver by charging less), or an override in force during the event had ``no_v2g`` (V2G events) or
  ``charge_now`` (any event); then :func:`~aggregator.settlement.attribution.attribute`.

A session without a known vehicle is left out (its delivery stays unattributed, with a note). A
cancelled event is read without measurement (it settles to nothing). Holidays are not known to the
database: day-matching baselines get none; prior event days are every other non-cancelled event at
the site.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db.models import (
    Charger,
    ChargingSession,
    DispatchEvent,
    SessionOverride,
    Site,
    User,
    V2gConsent,
    Vehicle,
)
from aggregator.ingestion.metering import (
    DEFAULT_STEP,
    evse_power_intervals,
    interval_index,
    site_import_intervals,
)
from aggregator.programs.dispatch_events import EventChain, EventNotFoundError, event_chain
from aggregator.programs.kinds import rules_for
from aggregator.programs.terms import PaymentTerms, event_payment_terms
from aggregator.settlement.attribution import Attribution, Exclusion, ExclusionReason, attribute
from aggregator.settlement.baselines import (
    Baseline,
    BaselineError,
    BaselineMethod,
    CounterfactualConfig,
    EventWindow,
    MeterBeforeConfig,
    SameDayConfig,
    XofYConfig,
    baseline_method,
    site_baseline,
)
from aggregator.settlement.event_measurement import (
    committed_kw,
    expected_import_kw,
    site_committed_kw,
    vehicle_counterfactual_kw,
)
from aggregator.settlement.performance import EventPerformance, event_performance
from aggregator.settlement.runs import event_ref_for
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
    no program, or whose program's terms, measurement or baseline cannot be used.
    """
    if now.utcoffset() is None:
        raise ValueError(f"now must carry a UTC offset, got {now.isoformat()}")
    found = find_event(session, event_id)
    event = found.latest
    program = event.program
    if program is None:
        raise SettlementInputError(event_id, f"is not mapped to a program (source {event.source!r})")
    try:
        terms = event_payment_terms(program, event)
        method = baseline_method(program.measurement or {"method": "counterfactual"})
    except ValidationError as error:
        raise SettlementInputError(event_id, f"program {program.id!r} measurement: {error}") from error
    except ValueError as error:
        raise SettlementInputError(event_id, str(error)) from error
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
        "baseline_method": method.method,
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
    site_ids = list(event.target_sites) or [site.id for site in program.sites]
    if not site_ids:
        raise SettlementInputError(event_id, f"names no sites and program {program.id!r} has none enrolled")
    index = interval_index(event.window_start, event.window_end, step)
    committed = committed_kw(_INTERVALS.validate_python(event.intervals), index, event.window_end, step)
    shares = site_committed_kw(session, event_id, site_ids, committed, event.window_end, step)
    sites = tuple(
        _site_inputs(session, found, site_id, method, shares[site_id], index, step) for site_id in site_ids
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
    notes: list[str] = []
    vehicles = tuple(_vehicle_inputs(session, event_id, event, site_ids, index, step, notes))
    attribution = attribute(
        sum(site.performance.raw_delivered_kwh for site in sites),
        {vehicle.session_id: vehicle.counterfactual_kw for vehicle in vehicles},
        {vehicle.session_id: vehicle.metered_kw for vehicle in vehicles},
        exclusions={v.session_id: v.exclusion for v in vehicles if v.exclusion is not None},
        step=step,
    )
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


def _site_inputs(
    session: Session,
    event: EventChain,
    site_id: str,
    method: BaselineMethod,
    committed: pd.Series,
    index: pd.DatetimeIndex,
    step: dt.timedelta,
) -> SiteInputs:
    latest = event.latest
    start, end = latest.window_start, latest.window_end
    site = session.get(Site, site_id)
    if site is None:
        raise SettlementInputError(event.id, f"target site {site_id!r} does not exist")
    window = site_import_intervals(session, site_id, start, end, step)
    if isinstance(method, CounterfactualConfig):
        expected = expected_import_kw(session, site_id, event.id, index, end, step)
        baseline = Baseline("counterfactual", expected, expected)
    else:
        span_start, span_end = _metering_span(method, start, end, step)
        metered = site_import_intervals(session, site_id, span_start, span_end, step).mean_kw
        try:
            baseline = site_baseline(
                method,
                metered,
                EventWindow(str(event.id), start, end),
                event_days=_event_days(session, event, site, span_start),
                tz=site.timezone,
                step=step,
            )
        except BaselineError as error:
            raise SettlementInputError(event.id, f"site {site_id!r}: {error}") from error
    performance = event_performance(latest.kind, committed, baseline.baseline_kw, window.mean_kw, step=step)
    return SiteInputs(site_id, window.mean_kw, window.samples, baseline, committed, performance)


def _metering_span(
    method: XofYConfig | SameDayConfig | MeterBeforeConfig,
    start: dt.datetime,
    end: dt.datetime,
    step: dt.timedelta,
) -> tuple[dt.datetime, dt.datetime]:
    """The metered span a day-matching or same-day baseline reads, aligned to ``step``."""
    if isinstance(method, XofYConfig):
        first = start - dt.timedelta(days=method.lookback_days + 2)
        last = end
    elif isinstance(method, SameDayConfig):
        first = start - dt.timedelta(hours=method.skip_before + method.hours_before)
        last = end + dt.timedelta(hours=method.skip_after + method.hours_after)
    else:
        first = start - (method.intervals_before + method.gap_intervals) * step
        last = end
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return epoch + ((first - epoch) // step) * step, last


def _event_days(session: Session, event: EventChain, site: Site, since: dt.datetime) -> set[dt.date]:
    """Local days before the event with another (not cancelled) event at ``site``: not baseline days."""
    latest = event.latest
    rows = session.scalars(
        select(DispatchEvent).where(
            DispatchEvent.window_end > since,
            DispatchEvent.window_start < latest.window_start,
            DispatchEvent.status != SignalStatus.CANCELLED,
            DispatchEvent.external_event_id != latest.external_event_id,
        )
    ).all()
    zone = ZoneInfo(site.timezone)
    days: set[dt.date] = set()
    for row in rows:
        targets = list(row.target_sites) or ([s.id for s in row.program.sites] if row.program else [])
        if site.id in targets:
            days.add(row.window_start.astimezone(zone).date())
    return days


def _vehicle_inputs(
    session: Session,
    event_id: int,
    event: DispatchEvent,
    site_ids: Sequence[str],
    index: pd.DatetimeIndex,
    step: dt.timedelta,
    notes: list[str],
) -> list[VehicleInputs]:
    start, end = event.window_start, event.window_end
    plugged = session.scalars(
        select(ChargingSession)
        .where(ChargingSession.site_id.in_(site_ids))
        .where(ChargingSession.started_at < end)
        .where((ChargingSession.stopped_at.is_(None)) | (ChargingSession.stopped_at > start))
        .order_by(ChargingSession.id)
    ).all()
    evse_power = {site_id: evse_power_intervals(session, site_id, start, end, step) for site_id in site_ids}
    v2g = rules_for(event.kind).v2g_consent
    hours = step.total_seconds() / 3600
    vehicles = []
    for charging in plugged:
        vehicle = session.get(Vehicle, charging.vehicle_id) if charging.vehicle_id is not None else None
        if vehicle is None:
            notes.append(f"session {charging.id} has no known vehicle: its delivery stays unattributed")
            continue
        charger = session.get(Charger, charging.charger_id)
        if charger is None:  # pragma: no cover (a foreign key)
            raise SettlementInputError(
                event_id, f"session {charging.id}: charger {charging.charger_id} missing"
            )
        key = (charger.charge_point_id, charger.evse_id)
        readings = evse_power[charging.site_id].get(key)
        plugged_in = _overlaps(index, step, end, charging.started_at, charging.stopped_at)
        metered = (
            readings.mean_kw if readings is not None else pd.Series(np.nan, index=index, dtype=float)
        ).where(plugged_in)
        planned = vehicle_counterfactual_kw(
            session, charging.site_id, event_id, charging.id, index, end, step
        )
        discharged = float((-metered).clip(lower=0).sum()) * hours
        vehicles.append(
            VehicleInputs(
                session_id=charging.id,
                vehicle_id=vehicle.id,
                driver_id=vehicle.owner_id,
                site_id=charging.site_id,
                evse=key,
                counterfactual_kw=planned.where(plugged_in),
                metered_kw=metered,
                discharged_kwh=discharged,
                exclusion=_exclusion(session, charging, vehicle, start, end, v2g=v2g),
            )
        )
    return vehicles


def _overlaps(
    index: pd.DatetimeIndex,
    step: dt.timedelta,
    end: dt.datetime,
    started_at: dt.datetime,
    stopped_at: dt.datetime | None,
) -> pd.Series:
    """Per interval: does ``[started_at, stopped_at)`` overlap it."""
    flags = []
    for t in index:
        slot_start = t.to_pydatetime()
        slot_end = min(slot_start + step, end)
        flags.append(started_at < slot_end and (stopped_at is None or stopped_at > slot_start))
    return pd.Series(flags, index=index, dtype=bool)


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
