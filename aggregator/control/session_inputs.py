"""Each open charging session of a site as the optimizer's :class:`~optimizer.scenario.VehicleSession`.

:func:`open_sessions` finds the sessions to plan (one per charger) and :func:`planned_session` turns
one into the vehicle the optimizer plans, for :func:`aggregator.control.inputs.site_plan_inputs`.
Every vehicle already plugged in "arrives" at the horizon start with the energy it has now.

Where each number comes from, in order of precedence (every assumption is written to
:attr:`PlanningContext.notes`; the defaults are
:class:`~aggregator.control.planning_settings.PlanningSettings`):

- battery [kWh] and max charge / discharge power [kW]: the session's :class:`Vehicle` (by
  ``vehicle_id``, else by the session's ``id_token``), else :class:`PlanningSettings` defaults; the
  EVSE's ``max_kw`` limits both (a model detail of :mod:`optimizer.problem`), and so does a cap the
  gateway reports for the EVSE while it holds (:data:`PLAN_BOUNDING_LIMITS`);
- energy now [kWh]: the latest EVSE telemetry SoC since the session started × battery; else the
  grid-side energy delivered so far × charge efficiency (the optimizer's default,
  :data:`CHARGE_EFFICIENCY`) on top of the arrival SoC (the session's ``soc_at_start_percent``, else
  ``default_arrival_soc_percent``);
- departure: the latest :class:`SessionOverride` with one, else the session's ``departure_at`` (ISO
  15118 charging needs), else the vehicle's ``departure_time`` (local ``HH:MM`` at the site's timezone,
  next occurrence after now), else now + ``default_dwell``. A departure already past means the vehicle
  overstays: it is planned to leave ``overdue_stay`` after the horizon start;
- target [kWh]: the override's ``target_soc_percent``, else the vehicle's ``target_soc_percent``, else
  the energy now plus what is left of the session's ``energy_request_kwh`` (asked at plug-in, less the
  net energy delivered since: import minus export; grid side, × efficiency), else
  ``default_target_soc_percent`` of the battery; never above the battery;
- ``charge_now`` (override): the driver wants the target as soon as possible. It is planned as a
  departure at the earliest step the target can be reached at the vehicle's full power from the
  horizon start (never later than the real departure), so the optimiser must charge at full power
  until then; no discharge for that session. Chosen over a large per-step weight because it keeps the
  model unchanged and states the driver's wish as a deadline the schedule checker already verifies;
- V2G: only with a consent in force (its ``min_reserve_kwh`` becomes ``min_energy_kwh``), no
  ``no_v2g`` override, a V2G-capable vehicle and a bidirectional charger.

A session whose data cannot be planned (a malformed ``departure_time``, a target outside 0..100 %,
a second open session on a charger) raises :class:`PlanningInputError` internally, which names the
session and vehicle; it is logged, kept in :attr:`PlanningContext.problems`, and the session is
planned with safe defaults (or, for a stale duplicate, left out). Nothing here crashes the control
loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.control.planning_settings import PlanningSettings
from aggregator.db.consents import current_consent
from aggregator.db.models import (
    Charger,
    ChargingSession,
    EvseTelemetryRecord,
    SessionOverride,
    Site,
    TelemetryRecord,
    Vehicle,
)
from aggregator.programs.event_baselines import Assumed
from optimizer.problem import steps_to_reach
from optimizer.scenario import DEFAULT_CHARGE_EFFICIENCY, VehicleSession
from wire.contract import LimitReason, evse_key

log = logging.getLogger(__name__)

CHARGE_EFFICIENCY = DEFAULT_CHARGE_EFFICIENCY
"""Battery energy gained per kWh drawn from the grid: the optimizer's default (every planned vehicle
has it), used to turn metered (grid-side) energy into battery energy."""

PLAN_BOUNDING_LIMITS: frozenset[LimitReason] = frozenset(
    {
        LimitReason.SITE_LIMIT,
        LimitReason.CHARGER_MAX,
        LimitReason.ENERGY_REQUEST_MET,
        LimitReason.VEHICLE_NOT_BIDIRECTIONAL,
    }
)
"""The caps a gateway reports (:class:`wire.contract.EvseLimit`) that bound the next plan's power for
the EVSE while they hold: what the site, the hardware, the vehicle's own request or its refusal to
discharge (no bidirectional transfer negotiated) allow. Not these:
``reserve`` (room the gateway keeps for, or hands back to, vehicles the centre has not planned yet:
the next plan, which plans them, replaces it) and ``fallback`` (the gateway's own rules while it has
no fresh schedule, which the next plan ends)."""


class PlanningInputError(ValueError):
    """A session's data that cannot be planned as it is; names the session, vehicle and field."""

    def __init__(self, session_id: int, vehicle_id: int | None, field: str, problem: str) -> None:
        self.session_id = session_id
        self.vehicle_id = vehicle_id
        self.field = field
        self.problem = problem
        vehicle = f" (vehicle {vehicle_id})" if vehicle_id is not None else ""
        super().__init__(f"charging session {session_id}{vehicle}: {field} {problem}")


@dataclass
class PlanningContext:
    """What every step of one site's build shares: where and when, and what it had to assume."""

    site_id: str
    now: dt.datetime
    start: dt.datetime
    """The horizon start: ``now`` to the whole second (:func:`aggregator.control.inputs.plan_start`)."""
    notes: list[str] = field(default_factory=list)
    problems: list[PlanningInputError] = field(default_factory=list)
    assumed: dict[str, list[Assumed]] = field(default_factory=dict)
    """Scenario vehicle id → what was assumed for it rather than known (``inputs["assumed"]``): a
    baseline made from a plan that assumed a vehicle's state is no measure of what it would have
    drawn (:mod:`aggregator.programs.event_baselines`)."""

    def assume(self, key: str, what: Assumed, note: str | None) -> None:
        """Record that vehicle ``key``'s ``what`` is assumed, and the note saying so (if any)."""
        if what not in self.assumed.setdefault(key, []):
            self.assumed[key].append(what)
        if note is not None:
            self.notes.append(note)


def vehicle_key(session_id: int) -> str:
    """The scenario vehicle id of a charging session, stable across plans: ``"session-{id}"``."""
    return f"session-{session_id}"


def open_sessions(
    session: Session, site_id: str, chargers: Mapping[int, Charger], ctx: PlanningContext
) -> list[ChargingSession]:
    """Open sessions, one per charger: an older open session on the same charger is stale (its stop
    was lost) and is left out, with a problem naming it."""
    rows = session.scalars(
        select(ChargingSession)
        .where(ChargingSession.site_id == site_id, ChargingSession.stopped_at.is_(None))
        .order_by(ChargingSession.started_at.desc(), ChargingSession.id.desc())
    ).all()
    latest: dict[int, ChargingSession] = {}
    for row in rows:
        if row.charger_id not in chargers:
            continue
        if row.charger_id in latest:
            _problem(
                ctx,
                PlanningInputError(
                    row.id,
                    row.vehicle_id,
                    "stopped_at",
                    f"is missing but session {latest[row.charger_id].id} started later on the same "
                    "charger; left out of the plan as stale",
                ),
            )
            continue
        latest[row.charger_id] = row
    # In a physical order (when each plugged in, where), not by row id: ids follow the order in which
    # messages were stored, which may differ between two runs of the same day, and the order of the
    # vehicles is the order of the model's columns, which can change a degenerate optimum.
    return sorted(
        latest.values(),
        key=lambda r: (r.started_at, chargers[r.charger_id].charge_point_id, r.evse_id, r.id),
    )


def _problem(ctx: PlanningContext, error: PlanningInputError) -> None:
    log.warning("planning %s: %s", ctx.site_id, error)
    ctx.problems.append(error)
    ctx.notes.append(str(error))


def _vehicle_of(session: Session, charging: ChargingSession) -> Vehicle | None:
    if charging.vehicle_id is not None:
        return session.get(Vehicle, charging.vehicle_id)
    if charging.id_token is not None:
        return session.scalars(select(Vehicle).where(Vehicle.id_token == charging.id_token)).first()
    return None


def _latest_override(session: Session, session_id: int) -> SessionOverride | None:
    return session.scalars(
        select(SessionOverride)
        .where(SessionOverride.session_id == session_id)
        .order_by(SessionOverride.id.desc())
        .limit(1)
    ).first()


def _latest_evse_reading(
    session: Session, site_id: str, charger: Charger, since: dt.datetime
) -> EvseTelemetryRecord | None:
    return session.scalars(
        select(EvseTelemetryRecord)
        .join(TelemetryRecord)
        .where(
            TelemetryRecord.site_id == site_id,
            TelemetryRecord.sent_at >= since,
            EvseTelemetryRecord.charger_id == charger.charge_point_id,
            EvseTelemetryRecord.evse_id == charger.evse_id,
        )
        .order_by(TelemetryRecord.sent_at.desc(), TelemetryRecord.seq.desc())
        .limit(1)
    ).first()


def planned_session(
    session: Session,
    site: Site,
    charger: Charger,
    charging: ChargingSession,
    ctx: PlanningContext,
    settings: PlanningSettings,
) -> VehicleSession:
    """The vehicle the optimizer plans for ``charging`` on ``charger`` (module doc for every rule); a
    session whose own data cannot be used is planned with safe defaults and a problem naming it."""
    vehicle = _vehicle_of(session, charging)
    try:
        return _vehicle_session(session, site, charger, charging, vehicle, ctx, settings)
    except PlanningInputError as error:
        _problem(ctx, error)
        return _safe_default_session(charging, charger, vehicle, ctx, settings)


def _vehicle_session(
    session: Session,
    site: Site,
    charger: Charger,
    charging: ChargingSession,
    vehicle: Vehicle | None,
    ctx: PlanningContext,
    settings: PlanningSettings,
) -> VehicleSession:
    start = ctx.start
    key = vehicle_key(charging.id)
    vehicle_id = vehicle.id if vehicle is not None else None
    override = _latest_override(session, charging.id)
    if vehicle is None:
        note = f"{key}: no known vehicle; assumed {settings.default_battery_kwh} kWh battery"
        ctx.assume(key, Assumed.VEHICLE, note)
        capacity, max_charge, max_discharge = (
            settings.default_battery_kwh,
            settings.default_max_charge_kw,
            0.0,
        )
    else:
        capacity, max_charge = vehicle.battery_kwh, vehicle.max_charge_kw
        max_discharge = vehicle.max_discharge_kw if vehicle.v2g_capable else 0.0

    reading = _latest_evse_reading(session, site.id, charger, charging.started_at)
    max_charge, max_discharge = _within_gateway_limit(reading, max_charge, max_discharge, key, ctx)
    energy_now = _energy_now(session, site, charger, charging, capacity, ctx, settings)
    delivered = _delivered_kwh(reading, charging)
    target = _target_kwh(charging, vehicle, override, capacity, energy_now, ctx, settings, delivered)
    departure = _departure(charging, vehicle, override, site, ctx, settings)
    if departure <= ctx.now:
        ctx.assume(
            key,
            Assumed.DEPARTURE,
            f"{key}: departure {departure.isoformat()} has passed; assumed to stay {settings.overdue_stay}",
        )
        departure = start + settings.overdue_stay
    departure = max(departure, start + settings.step)

    charge_now = override is not None and override.charge_now
    if charge_now:
        steps = steps_to_reach(
            capacity_kwh=capacity,
            energy_kwh=energy_now,
            target_kwh=target,
            max_charge_kw=min(max_charge, charger.max_kw),
            charge_efficiency=CHARGE_EFFICIENCY,
            taper=settings.charge_taper,
            step_hours=settings.step_minutes / 60,
            limit=settings.n_steps,
        )
        departure = min(departure, start + max(1, steps) * settings.step)
        ctx.notes.append(f"{key}: charge now; target due at {departure.isoformat()}")

    consent = current_consent(session, vehicle.id) if vehicle is not None else None
    v2g = (
        consent is not None
        and not charge_now
        and not (override is not None and override.no_v2g)
        and charger.bidirectional
        and max_discharge > 0
    )
    reserve = min(consent.min_reserve_kwh, capacity) if (v2g and consent is not None) else 0.0
    try:
        return VehicleSession(
            id=key,
            evse_id=evse_key(charger.charge_point_id, charger.evse_id),
            arrival=start,
            departure=departure,
            capacity_kwh=capacity,
            energy_at_arrival_kwh=energy_now,
            target_energy_kwh=target,
            min_energy_kwh=reserve,
            max_charge_kw=max_charge,
            max_discharge_kw=max_discharge if v2g else 0.0,
            v2g_consent=v2g,
            charge_taper=settings.charge_taper,
        )
    except ValueError as exc:  # a value the scenario refuses (NaN, negative, ...)
        raise PlanningInputError(charging.id, vehicle_id, "vehicle", f"cannot be planned: {exc}") from exc


def _safe_default_session(
    charging: ChargingSession,
    charger: Charger,
    vehicle: Vehicle | None,
    ctx: PlanningContext,
    settings: PlanningSettings,
) -> VehicleSession:
    """Charge-only, default battery and SoCs, default dwell: what is planned for a session whose own
    data could not be used."""
    start = ctx.start
    capacity = (
        vehicle.battery_kwh
        if vehicle is not None and vehicle.battery_kwh > 0
        else settings.default_battery_kwh
    )
    max_charge = vehicle.max_charge_kw if vehicle is not None else settings.default_max_charge_kw
    key = vehicle_key(charging.id)
    for what in (Assumed.SOC, Assumed.TARGET, Assumed.DEPARTURE, *(() if vehicle else (Assumed.VEHICLE,))):
        ctx.assume(key, what, None)
    ctx.notes.append(f"{key}: planned with safe defaults")
    return VehicleSession(
        id=vehicle_key(charging.id),
        evse_id=evse_key(charger.charge_point_id, charger.evse_id),
        arrival=start,
        departure=max(ctx.now + settings.default_dwell, start + settings.step),
        capacity_kwh=capacity,
        energy_at_arrival_kwh=capacity * settings.default_arrival_soc_percent / 100,
        target_energy_kwh=capacity * settings.default_target_soc_percent / 100,
        max_charge_kw=max(0.0, max_charge),
        charge_taper=settings.charge_taper,
    )


def _energy_now(
    session: Session,
    site: Site,
    charger: Charger,
    charging: ChargingSession,
    capacity: float,
    ctx: PlanningContext,
    settings: PlanningSettings,
) -> float:
    key = vehicle_key(charging.id)
    reading = _latest_evse_reading(session, site.id, charger, charging.started_at)
    if reading is not None and reading.soc_percent is not None:
        return min(capacity, capacity * reading.soc_percent / 100)
    arrival_soc = charging.soc_at_start_percent
    if arrival_soc is None:
        arrival_soc = settings.default_arrival_soc_percent
        ctx.assume(key, Assumed.SOC, f"{key}: no SoC reported; assumed {arrival_soc} % at arrival")
    delivered = reading.energy_kwh if reading is not None and reading.energy_kwh is not None else None
    if delivered is None:
        delivered = charging.energy_kwh or 0.0
    energy = capacity * arrival_soc / 100 + delivered * CHARGE_EFFICIENCY
    return min(capacity, max(0.0, energy))


def _delivered_kwh(reading: EvseTelemetryRecord | None, charging: ChargingSession) -> float:
    """Net energy into the vehicle so far [kWh]: the latest reading's, else the session's."""
    if reading is not None and reading.energy_kwh is not None:
        return reading.energy_kwh
    return charging.energy_kwh or 0.0


def _within_gateway_limit(
    reading: EvseTelemetryRecord | None,
    max_charge_kw: float,
    max_discharge_kw: float,
    key: str,
    ctx: PlanningContext,
) -> tuple[float, float]:
    """The vehicle's max charge and discharge power [kW] within the cap the gateway reports for its
    EVSE while it holds (the latest reading of the session carries it), for the reasons that bound a
    plan (:data:`PLAN_BOUNDING_LIMITS`); a note says so."""
    if reading is None or reading.limit_kw is None or reading.limit_reason not in PLAN_BOUNDING_LIMITS:
        return max_charge_kw, max_discharge_kw
    way = "discharge" if reading.limit_discharge else "charge"
    ctx.notes.append(
        f"{key}: the gateway limits its {way} to {reading.limit_kw:.2f} kW "
        f"({reading.limit_reason.value}); planned within it"
    )
    if reading.limit_discharge:
        return max_charge_kw, min(max_discharge_kw, reading.limit_kw)
    return min(max_charge_kw, reading.limit_kw), max_discharge_kw


def _target_kwh(
    charging: ChargingSession,
    vehicle: Vehicle | None,
    override: SessionOverride | None,
    capacity: float,
    energy_now: float,
    ctx: PlanningContext,
    settings: PlanningSettings,
    delivered_kwh: float,
) -> float:
    vehicle_id = vehicle.id if vehicle is not None else None
    if override is not None and override.target_soc_percent is not None:
        percent = override.target_soc_percent
    elif vehicle is not None:
        percent = vehicle.target_soc_percent
    elif charging.energy_request_kwh is not None:  # asked at plug-in: what is left of it, net
        still_asked = max(charging.energy_request_kwh - delivered_kwh, 0.0)
        return min(capacity, energy_now + still_asked * CHARGE_EFFICIENCY)
    else:
        percent = settings.default_target_soc_percent
        key = vehicle_key(charging.id)
        ctx.assume(key, Assumed.TARGET, f"{key}: no target; assumed {percent} %")
    if not 0 <= percent <= 100:
        raise PlanningInputError(
            charging.id, vehicle_id, "target_soc_percent", f"={percent} is not in 0..100"
        )
    return capacity * percent / 100


def _departure(
    charging: ChargingSession,
    vehicle: Vehicle | None,
    override: SessionOverride | None,
    site: Site,
    ctx: PlanningContext,
    settings: PlanningSettings,
) -> dt.datetime:
    if override is not None and override.departure_at is not None:
        return override.departure_at
    if charging.departure_at is not None:
        return charging.departure_at
    if vehicle is not None and vehicle.departure_time is not None:
        return _next_local_time(charging, vehicle, site, ctx.now)
    ctx.assume(
        vehicle_key(charging.id),
        Assumed.DEPARTURE,
        f"{vehicle_key(charging.id)}: no departure known; assumed {settings.default_dwell} from now",
    )
    return ctx.now + settings.default_dwell


def _next_local_time(
    charging: ChargingSession, vehicle: Vehicle, site: Site, now: dt.datetime
) -> dt.datetime:
    """The next ``HH:MM`` of the vehicle's ``departure_time`` at the site's timezone, after ``now``."""
    text = vehicle.departure_time or ""
    try:
        clock = dt.time.fromisoformat(text)
    except ValueError as exc:
        raise PlanningInputError(
            charging.id, vehicle.id, "departure_time", f"={text!r} is not a local time HH:MM"
        ) from exc
    try:
        zone = zoneinfo.ZoneInfo(site.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise PlanningInputError(
            charging.id, vehicle.id, "departure_time", f"cannot be read at site timezone {site.timezone!r}"
        ) from exc
    local = now.astimezone(zone)
    candidate = dt.datetime.combine(local.date(), clock, tzinfo=zone)
    if candidate <= local:
        candidate = dt.datetime.combine(local.date() + dt.timedelta(days=1), clock, tzinfo=zone)
    return candidate.astimezone(dt.UTC)


__all__ = [
    "CHARGE_EFFICIENCY",
    "PlanningContext",
    "PlanningInputError",
    "open_sessions",
    "planned_session",
    "vehicle_key",
]
