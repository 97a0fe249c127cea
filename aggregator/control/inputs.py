"""What the optimiser is given for one site: a :class:`~optimizer.Scenario` built from the database.

:func:`site_plan_inputs` reads the site, its chargers, its open charging sessions (with their
vehicles, V2G consents, driver overrides and latest telemetry) and the dispatch events that apply to
it, and returns :class:`PlanInputs`. Pure reading: nothing is written, nothing is solved.

The horizon starts at the current step (``now`` floored to ``step_minutes``, 15 min by default) and
runs for ``horizon`` (24 h). Every vehicle already plugged in "arrives" at the horizon start with the
energy it has now.

Where each number comes from, in order of precedence (every assumption is written to
:attr:`PlanInputs.notes`):

- battery [kWh] and max charge / discharge power [kW]: the session's :class:`Vehicle` (by
  ``vehicle_id``, else by the session's ``id_token``), else :class:`PlanningSettings` defaults; the
  EVSE's ``max_kw`` limits both (a model detail of :mod:`optimizer.problem`);
- energy now [kWh]: the latest EVSE telemetry SoC since the session started × battery; else the
  grid-side energy delivered so far × charge efficiency on top of the arrival SoC (the session's
  ``soc_at_start_percent``, else ``default_arrival_soc_percent``);
- departure: the latest :class:`SessionOverride` with one, else the session's ``departure_at`` (ISO
  15118 charging needs), else the vehicle's ``departure_time`` (local ``HH:MM`` at the site's timezone,
  next occurrence after now), else now + ``default_dwell``. A departure already past means the vehicle
  overstays: it is planned to leave ``overdue_stay`` after the horizon start;
- target [kWh]: the override's ``target_soc_percent``, else the vehicle's ``target_soc_percent``, else
  the energy now plus the session's ``energy_request_kwh`` (grid side, × efficiency), else
  ``default_target_soc_percent`` of the battery; never above the battery;
- ``charge_now`` (override): the driver wants the target as soon as possible. It is planned as a
  departure at the earliest step the target can be reached at the vehicle's full power from the
  horizon start (never later than the real departure), so the optimiser must charge at full power
  until then; no discharge for that session. Chosen over a large per-step weight because it keeps the
  model unchanged and states the driver's wish as a deadline the schedule checker already verifies;
- V2G: only with a consent in force (its ``min_reserve_kwh`` becomes ``min_energy_kwh``), no
  ``no_v2g`` override, a V2G-capable vehicle and a bidirectional charger;
- prices: :attr:`PlanningSettings.tariffs` by the site's ``tariff_ref`` (a flat
  :class:`optimizer.Tariff` or a time-of-use :class:`market_adapters.tariffs.TouTariff` priced on the
  horizon's steps), else :attr:`PlanningSettings.default_tariff` (:data:`DEFAULT_TARIFF`);
- base load [kW]: the latest telemetry ``base_load_kw`` if no older than ``base_load_max_age``, as a
  flat forecast (capped at the import limit), else 0.

Dispatch events: those :func:`aggregator.control.dispatch_windows.site_event_windows` finds for the site
(latest version, not cancelled, enrolled program, targeted or program-wide), one optimizer event per
interval: ``dr_reduction`` → :class:`~optimizer.DrEvent` with ``reduction_kw`` below a baseline,
``dr_cap`` → :class:`~optimizer.DrEvent` with ``cap_kw``, ``v2g_export`` →
:class:`~optimizer.V2gDispatch`. The baseline is the counterfactual plan's import (the site planned
without any event), so :attr:`PlanInputs.scenario` carries no events and
:meth:`PlanInputs.scenario_with_events` adds them once that baseline is known. Once an event has been
planned, each vehicle's part of that baseline is frozen (:mod:`aggregator.programs.event_baselines`): the
baseline of a later plan is the fresh counterfactual import with each present vehicle's fresh power
replaced by its frozen power, where it has one (:meth:`PlanInputs.event_baselines_kw`), so a plan
that pre-charged a vehicle before the event does not lower its own baseline. An event that applies
to several sites (:attr:`EventWindow.site_ids`) is split among them by one optimisation of all of
them (:mod:`aggregator.control.groups`).

A session whose data cannot be planned (a malformed ``departure_time``, a target outside 0..100 %,
a second open session on a charger) raises :class:`PlanningInputError` internally, which names the
session and vehicle; it is logged, kept in :attr:`PlanInputs.problems`, and the session is planned
with safe defaults (or, for a stale duplicate, left out). Nothing here crashes the control loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd
from pydantic import ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.control.dispatch_windows import EventWindow, site_event_windows
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
from aggregator.programs.event_baselines import FrozenBaseline, frozen_baselines
from market_adapters.dispatch import SignalKind
from market_adapters.tariffs import TouTariff
from optimizer.problem import steps_to_reach
from optimizer.scenario import ChargeTaper, DrEvent, Evse, Scenario, Tariff, V2gDispatch, VehicleSession
from optimizer.scenario import Site as ScenarioSite

log = logging.getLogger(__name__)

CHARGE_EFFICIENCY = 0.92
"""Battery energy gained per kWh drawn from the grid; the optimizer's default, used to turn metered
(grid-side) energy into battery energy."""

DEFAULT_TARIFF = Tariff(import_price_per_kwh=0.25, export_price_per_kwh=0.0)
"""Used for a site without a known ``tariff_ref``: a flat 0.25 [currency/kWh] import price, nothing
paid for export, no demand charge. Flat prices leave the timing to the tie-breaker (charge early)."""

DEFAULT_CHARGE_TAPER = ChargeTaper(start_soc=0.8, end_fraction=0.05)
"""An assumption, typical of Li-ion CC-CV charging: full power up to 80 % state of charge, then
linearly down to 5 % of it at 100 % (as :mod:`chargersim.vehicles` simulates)."""

TariffSource = Tariff | TouTariff
"""A flat optimizer tariff (one number per price) or a time-of-use tariff priced per step."""


class SiteNotFoundError(LookupError):
    """No row in ``sites`` for the site asked for."""

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id
        super().__init__(f"site {site_id!r} does not exist")


class PlanningInputError(ValueError):
    """A session's data that cannot be planned as it is; names the session, vehicle and field."""

    def __init__(self, session_id: int, vehicle_id: int | None, field: str, problem: str) -> None:
        self.session_id = session_id
        self.vehicle_id = vehicle_id
        self.field = field
        self.problem = problem
        vehicle = f" (vehicle {vehicle_id})" if vehicle_id is not None else ""
        super().__init__(f"charging session {session_id}{vehicle}: {field} {problem}")


@dataclass(frozen=True)
class PlanningSettings:
    """Horizon, defaults for what the database does not know, and the tariffs by name."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")
    """For :meth:`ControlSettings.from_mapping`: unknown keys are refused."""

    step_minutes: int = 15
    horizon: dt.timedelta = dt.timedelta(hours=24)
    tariffs: Mapping[str, TariffSource] = field(default_factory=dict)
    """Tariff name (a site's ``tariff_ref``) → tariff. A flat :class:`Tariff` must give one number per
    price (a per-step list would not follow the rolling horizon): use a ``TouTariff`` for that."""
    default_tariff: Tariff = DEFAULT_TARIFF
    currency: str = "EUR"
    default_battery_kwh: float = 60.0
    """Battery [kWh] assumed for a session without a known vehicle."""
    default_max_charge_kw: float = 11.0
    """Charging power [kW] assumed for a session without a known vehicle (the EVSE may limit it)."""
    default_arrival_soc_percent: float = 20.0
    default_target_soc_percent: float = 80.0
    default_dwell: dt.timedelta = dt.timedelta(hours=8)
    """Stay assumed from now for a session with no departure from anywhere."""
    overdue_stay: dt.timedelta = dt.timedelta(hours=1)
    """How long a vehicle past its departure is assumed to stay from the horizon start."""
    base_load_max_age: dt.timedelta = dt.timedelta(hours=1)
    charge_taper: ChargeTaper | None = DEFAULT_CHARGE_TAPER
    """The CC-CV taper every planned vehicle gets (the database knows no battery's own); None: none."""

    def __post_init__(self) -> None:
        if self.step_minutes <= 0 or self.horizon <= dt.timedelta(0):
            raise ValueError(
                f"planning settings: step_minutes and horizon must be positive, got {self.step_minutes} "
                f"and {self.horizon}"
            )

    @property
    def step(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.step_minutes)

    @property
    def n_steps(self) -> int:
        return max(1, math.ceil(self.horizon / self.step))


@dataclass
class PlanInputs:
    """Everything one site's plan is made from, and how scenario objects map back to rows."""

    site_id: str
    now: dt.datetime
    scenario: Scenario
    """The site without dispatch events: the counterfactual, and the plan when no event applies."""
    sessions: dict[str, int]
    """Scenario vehicle id → ``charging_sessions.id``."""
    evses: dict[str, tuple[str, int]]
    """Scenario EVSE id → (OCPP charge point id, EVSE id), to address setpoints."""
    events: list[EventWindow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Everything assumed or corrected, one sentence each."""
    problems: list[PlanningInputError] = field(default_factory=list)
    frozen: dict[int, dict[str, FrozenBaseline]] = field(default_factory=dict)
    """Event public id → scenario vehicle id → the vehicle's baseline frozen when the event was first
    planned with it (:mod:`aggregator.programs.event_baselines`); vehicles not yet planned with it are
    absent."""

    @property
    def dispatch_event_ids(self) -> list[int]:
        return sorted({e.event_id for e in self.events})

    def event_baselines_kw(
        self, import_kw: Sequence[float], vehicle_power_kw: Mapping[str, Sequence[float]]
    ) -> dict[int, list[float]]:
        """Per event with a baseline (``dr_reduction``, ``dr_cap``; by public id), the site's import
        without it per step [kW]: the fresh counterfactual's ``import_kw`` minus each present vehicle's
        fresh counterfactual power (``vehicle_power_kw``, scenario vehicle id → kW per step, positive
        charging) plus its frozen power (:attr:`frozen`), step by step where the frozen baseline covers
        the step; the fresh value elsewhere."""
        step, start, n_steps = self.scenario.step, self.scenario.start, self.scenario.n_steps
        baselines: dict[int, list[float]] = {}
        for window in self.events:
            if window.kind is SignalKind.V2G_EXPORT or window.public_id in baselines:
                continue
            series = [float(v) for v in import_kw]
            for key, frozen in self.frozen.get(window.public_id, {}).items():
                fresh = vehicle_power_kw.get(key)
                if fresh is None:
                    continue
                for k, value in enumerate(frozen.on_grid(start, step, n_steps)):
                    if math.isfinite(value):
                        series[k] += value - float(fresh[k])
            baselines[window.public_id] = series
        return baselines

    def scenario_with_events(
        self,
        baseline_import_kw: Sequence[float] | None,
        events: Sequence[EventWindow] | None = None,
        event_baselines_kw: Mapping[int, Sequence[float]] | None = None,
    ) -> Scenario:
        """:attr:`scenario` with the dispatch events, ``baseline_import_kw`` the counterfactual import
        per step [kW] (needed for ``dr_reduction`` events and to pay DR delivery; ``None`` drops the
        reduction events and the DR payment).

        ``events`` replaces :attr:`events` (all of them by default): a site planned with others
        leaves the events it shares with them to the joint model (:mod:`aggregator.control.groups`).
        ``event_baselines_kw`` (event public id → kW per step, :meth:`event_baselines_kw`) replaces
        ``baseline_import_kw`` for the events it names.
        """
        events = self.events if events is None else events
        event_baselines_kw = event_baselines_kw or {}
        if not events:
            return self.scenario
        step = self.scenario.step
        dr_events: list[DrEvent] = []
        dispatches: list[V2gDispatch] = []
        for event in events:
            if event.kind is SignalKind.V2G_EXPORT:
                dispatches.append(
                    V2gDispatch(
                        id=event.scenario_id,
                        start=event.start,
                        end=event.end,
                        export_kw=event.value_kw,
                        price_per_kwh=event.price_per_kwh,
                        penalty_per_kwh=event.penalty_per_kwh,
                    )
                )
                continue
            baseline: list[float] | None = None
            if baseline_import_kw is not None:
                series = event_baselines_kw.get(event.public_id, baseline_import_kw)
                first = (event.start - self.scenario.start) // step
                last = (event.end - self.scenario.start) // step
                baseline = [max(0.0, float(v)) for v in series[first:last]]
            if event.kind is SignalKind.DR_REDUCTION:
                if baseline is None:
                    continue
                dr_events.append(
                    DrEvent(
                        id=event.scenario_id,
                        start=event.start,
                        end=event.end,
                        baseline_kw=baseline,
                        reduction_kw=event.value_kw,
                        payment_per_kwh=event.price_per_kwh,
                        penalty_per_kwh=event.penalty_per_kwh,
                    )
                )
            else:
                dr_events.append(
                    DrEvent(
                        id=event.scenario_id,
                        start=event.start,
                        end=event.end,
                        baseline_kw=baseline,
                        cap_kw=event.value_kw,
                        payment_per_kwh=event.price_per_kwh if baseline is not None else 0.0,
                        penalty_per_kwh=event.penalty_per_kwh,
                    )
                )
        return self.scenario.model_copy(update={"dr_events": dr_events, "v2g_dispatches": dispatches})

    def to_json(self, scenario: Scenario | None = None) -> dict[str, object]:
        """The ``schedule_versions.inputs`` document (see :class:`~aggregator.db.models.ScheduleVersion`)."""
        return {
            "scenario": (scenario or self.scenario).model_dump(mode="json"),
            "sessions": dict(self.sessions),
            "events": self.dispatch_event_ids,
            "evses": {key: {"charger_id": cp, "evse_id": evse} for key, (cp, evse) in self.evses.items()},
            "notes": list(self.notes),
        }


def floor_time(moment: dt.datetime, step: dt.timedelta) -> dt.datetime:
    """``moment`` floored to a multiple of ``step`` since the Unix epoch, in UTC."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return epoch + ((moment.astimezone(dt.UTC) - epoch) // step) * step


def evse_key(charge_point_id: str, evse_id: int) -> str:
    """The scenario EVSE id of a charger row: ``"{charge_point_id}/{evse_id}"``."""
    return f"{charge_point_id}/{evse_id}"


def vehicle_key(session_id: int) -> str:
    """The scenario vehicle id of a charging session, stable across plans: ``"session-{id}"``."""
    return f"session-{session_id}"


# --------------------------------------------------------------------------------------- the build


@dataclass
class _Context:
    """What every step of one build shares: where and when, and what it had to assume."""

    site_id: str
    now: dt.datetime
    start: dt.datetime
    notes: list[str] = field(default_factory=list)
    problems: list[PlanningInputError] = field(default_factory=list)


def site_plan_inputs(
    session: Session, site_id: str, now: dt.datetime, settings: PlanningSettings | None = None
) -> PlanInputs:
    """The optimiser's inputs for ``site_id`` at ``now`` (see the module docstring for every rule).

    Raises :class:`SiteNotFoundError` for an unknown site and :class:`ValueError` for a naive ``now``;
    problems with a session's data never raise (see :attr:`PlanInputs.problems`).
    """
    settings = settings or PlanningSettings()
    if now.utcoffset() is None:
        raise ValueError(f"now must carry a UTC offset, got {now.isoformat()}")
    site = session.get(Site, site_id)
    if site is None:
        raise SiteNotFoundError(site_id)
    start = floor_time(now, settings.step)
    end = start + settings.n_steps * settings.step
    ctx = _Context(site_id=site_id, now=now, start=start)
    chargers = {c.id: c for c in site.chargers}
    open_sessions = _open_sessions(session, site_id, chargers, ctx)
    vehicles = [
        _planned_session(session, site, chargers[charging.charger_id], charging, ctx, settings)
        for charging in open_sessions
    ]
    scenario = Scenario(
        name=f"{site_id} {start.isoformat()}",
        start=start,
        step_minutes=settings.step_minutes,
        n_steps=settings.n_steps,
        timezone=site.timezone,
        currency=settings.currency,
        site=ScenarioSite(
            id=site_id,
            import_limit_kw=site.import_limit_kw,
            export_limit_kw=site.export_limit_kw,
            base_load_kw=_base_load_kw(session, site, settings, ctx),
        ),
        tariff=_tariff(site, settings, ctx),
        evses=[
            Evse(
                id=evse_key(c.charge_point_id, c.evse_id),
                max_charge_kw=c.max_kw,
                max_discharge_kw=c.max_kw if c.bidirectional else 0.0,
            )
            for c in chargers.values()
        ],
        vehicles=vehicles,
    )
    sessions = {vehicle_key(charging.id): charging.id for charging in open_sessions}
    events = site_event_windows(session, site_id, start, end, settings.step, ctx.notes)
    return PlanInputs(
        site_id=site_id,
        now=now,
        scenario=scenario,
        sessions=sessions,
        evses={
            evse_key(c.charge_point_id, c.evse_id): (c.charge_point_id, c.evse_id) for c in chargers.values()
        },
        events=events,
        notes=ctx.notes,
        problems=ctx.problems,
        frozen=_frozen(session, site_id, events, sessions, ctx),
    )


def _frozen(
    session: Session, site_id: str, events: Sequence[EventWindow], sessions: Mapping[str, int], ctx: _Context
) -> dict[int, dict[str, FrozenBaseline]]:
    """The present vehicles' frozen baselines for the events with a baseline, one note per vehicle."""
    public_ids = {e.public_id for e in events if e.kind is not SignalKind.V2G_EXPORT}
    if not public_ids:
        return {}
    keys = {charging_id: key for key, charging_id in sessions.items()}
    found = frozen_baselines(session, site_id, public_ids, set(keys))
    frozen: dict[int, dict[str, FrozenBaseline]] = {}
    for event_id, by_session in sorted(found.items()):
        for charging_id, baseline in sorted(by_session.items()):
            frozen.setdefault(event_id, {})[keys[charging_id]] = baseline
            ctx.notes.append(
                f"dispatch event {event_id}: {keys[charging_id]}'s baseline is frozen at schedule "
                f"version {baseline.version_id}"
            )
    return frozen


def _open_sessions(
    session: Session, site_id: str, chargers: Mapping[int, Charger], ctx: _Context
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
    return sorted(latest.values(), key=lambda r: r.id)


def _problem(ctx: _Context, error: PlanningInputError) -> None:
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


def _planned_session(
    session: Session,
    site: Site,
    charger: Charger,
    charging: ChargingSession,
    ctx: _Context,
    settings: PlanningSettings,
) -> VehicleSession:
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
    ctx: _Context,
    settings: PlanningSettings,
) -> VehicleSession:
    start = ctx.start
    key = vehicle_key(charging.id)
    vehicle_id = vehicle.id if vehicle is not None else None
    override = _latest_override(session, charging.id)
    if vehicle is None:
        ctx.notes.append(f"{key}: no known vehicle; assumed {settings.default_battery_kwh} kWh battery")
        capacity, max_charge, max_discharge = (
            settings.default_battery_kwh,
            settings.default_max_charge_kw,
            0.0,
        )
    else:
        capacity, max_charge = vehicle.battery_kwh, vehicle.max_charge_kw
        max_discharge = vehicle.max_discharge_kw if vehicle.v2g_capable else 0.0

    energy_now = _energy_now(session, site, charger, charging, capacity, ctx, settings)
    target = _target_kwh(charging, vehicle, override, capacity, energy_now, ctx, settings)
    departure = _departure(charging, vehicle, override, site, ctx, settings)
    if departure <= ctx.now:
        ctx.notes.append(
            f"{key}: departure {departure.isoformat()} has passed; assumed to stay {settings.overdue_stay}"
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
    ctx: _Context,
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
    ctx.notes.append(f"{vehicle_key(charging.id)}: planned with safe defaults")
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
    ctx: _Context,
    settings: PlanningSettings,
) -> float:
    key = vehicle_key(charging.id)
    reading = _latest_evse_reading(session, site.id, charger, charging.started_at)
    if reading is not None and reading.soc_percent is not None:
        return min(capacity, capacity * reading.soc_percent / 100)
    arrival_soc = charging.soc_at_start_percent
    if arrival_soc is None:
        arrival_soc = settings.default_arrival_soc_percent
        ctx.notes.append(f"{key}: no SoC reported; assumed {arrival_soc} % at arrival")
    delivered = reading.energy_kwh if reading is not None and reading.energy_kwh is not None else None
    if delivered is None:
        delivered = charging.energy_kwh or 0.0
    energy = capacity * arrival_soc / 100 + delivered * CHARGE_EFFICIENCY
    return min(capacity, max(0.0, energy))


def _target_kwh(
    charging: ChargingSession,
    vehicle: Vehicle | None,
    override: SessionOverride | None,
    capacity: float,
    energy_now: float,
    ctx: _Context,
    settings: PlanningSettings,
) -> float:
    vehicle_id = vehicle.id if vehicle is not None else None
    if override is not None and override.target_soc_percent is not None:
        percent = override.target_soc_percent
    elif vehicle is not None:
        percent = vehicle.target_soc_percent
    elif charging.energy_request_kwh is not None:
        return min(capacity, energy_now + charging.energy_request_kwh * CHARGE_EFFICIENCY)
    else:
        percent = settings.default_target_soc_percent
        ctx.notes.append(f"{vehicle_key(charging.id)}: no target; assumed {percent} %")
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
    ctx: _Context,
    settings: PlanningSettings,
) -> dt.datetime:
    if override is not None and override.departure_at is not None:
        return override.departure_at
    if charging.departure_at is not None:
        return charging.departure_at
    if vehicle is not None and vehicle.departure_time is not None:
        return _next_local_time(charging, vehicle, site, ctx.now)
    ctx.notes.append(
        f"{vehicle_key(charging.id)}: no departure known; assumed {settings.default_dwell} from now"
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


def _base_load_kw(session: Session, site: Site, settings: PlanningSettings, ctx: _Context) -> float:
    now = ctx.now
    latest = session.scalars(
        select(TelemetryRecord)
        .where(
            TelemetryRecord.site_id == site.id, TelemetryRecord.sent_at >= now - settings.base_load_max_age
        )
        .order_by(TelemetryRecord.sent_at.desc(), TelemetryRecord.seq.desc())
        .limit(1)
    ).first()
    if latest is None or latest.base_load_kw is None:
        return 0.0
    load = max(0.0, latest.base_load_kw)
    if load > site.import_limit_kw:
        ctx.notes.append(
            f"base load {load} kW is above the import limit {site.import_limit_kw} kW; capped at the limit"
        )
        load = site.import_limit_kw
    return load


def _tariff(site: Site, settings: PlanningSettings, ctx: _Context) -> Tariff:
    start = ctx.start
    source = settings.tariffs.get(site.tariff_ref) if site.tariff_ref is not None else None
    if source is None:
        if site.tariff_ref is not None:
            ctx.notes.append(f"tariff {site.tariff_ref!r} is not configured; default tariff used")
        return settings.default_tariff
    if isinstance(source, TouTariff):
        zone = zoneinfo.ZoneInfo(site.timezone)
        index = pd.date_range(start, periods=settings.n_steps, freq=settings.step).tz_convert(zone)
        return source.to_optimizer_tariff(index, demand_interval_minutes=settings.step_minutes)
    for name in ("import_price_per_kwh", "export_price_per_kwh"):
        if isinstance(getattr(source, name), list):
            ctx.notes.append(f"tariff {site.tariff_ref!r}: {name} is a list, not a flat price; default used")
            return settings.default_tariff
    return source


__all__ = [
    "DEFAULT_TARIFF",
    "EventWindow",
    "PlanInputs",
    "PlanningInputError",
    "PlanningSettings",
    "SiteNotFoundError",
    "TariffSource",
    "evse_key",
    "floor_time",
    "site_plan_inputs",
    "vehicle_key",
]
