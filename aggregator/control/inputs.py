"""What the optimiser is given for one site: a :class:`~optimizer.Scenario` built from the database.

:func:`site_plan_inputs` reads the site, its chargers, its open charging sessions (with their
vehicles, V2G consents, driver overrides and latest telemetry) and the dispatch events that apply to
it, and returns :class:`PlanInputs`. Pure reading: nothing is written, nothing is solved.

The horizon starts now (:func:`plan_start`: ``now`` to the whole second, not a step boundary before
it) and runs for ``horizon`` (24 h) in steps of ``step_minutes`` (15 min); the defaults for what the
database does not know are :class:`~aggregator.control.planning_settings.PlanningSettings`. Each open
session becomes a vehicle of the scenario by the rules of :mod:`aggregator.control.session_inputs`
(battery, energy now, departure, target, charge now, V2G). The site itself (every assumption is
written to :attr:`PlanInputs.notes`):

- prices: :attr:`PlanningSettings.tariffs` by the site's ``tariff_ref`` (a flat
  :class:`optimizer.Tariff` or a time-of-use :class:`market_adapters.tariffs.TouTariff` priced on the
  horizon's steps), else :attr:`PlanningSettings.default_tariff` (:data:`DEFAULT_TARIFF`);
- base load [kW]: the latest telemetry ``base_load_kw`` if no older than ``base_load_max_age``, as a
  flat forecast (capped at the import limit), else 0;
- demand so far: with demand charges, the site's metered import since its billing period began
  (:func:`billing_period_start`: the calendar month in the site's zone; no tariff here names another
  period) up to now, per minute (:data:`METER_RESOLUTION`,
  :func:`aggregator.ingestion.metering.site_import_aggregated`), in :attr:`PlanInputs.meter_kw`. Every
  plan reads it through :func:`optimizer.online.with_metered_demand`, as the rolling horizon of the ACN
  benchmark does (:meth:`PlanInputs.problem`): each charge's peak already reached, so only a new
  peak costs money, and the interval open at the start with what it has drawn. The peak is also
  written into the scenario's ``peak_already_kw``, and a note per charge says what was metered; a
  site with no readings yet starts from 0 kW (or the tariff's configured peak), and its note says so.

Dispatch events: those :func:`aggregator.control.dispatch_windows.site_event_windows` finds for the site
(latest version, not cancelled, enrolled program, targeted or program-wide), one optimizer event per
interval, by the rules of its kind (:mod:`aggregator.programs.kinds`): ``dr_reduction`` →
:class:`~optimizer.DrEvent` with ``reduction_kw`` below a baseline, ``dr_cap`` →
:class:`~optimizer.DrEvent` with ``cap_kw``, ``v2g_export`` → :class:`~optimizer.V2gDispatch`. The
baseline is the counterfactual plan's import (the site planned without any event), so
:attr:`PlanInputs.scenario` carries no events and :meth:`PlanInputs.scenario_with_events` adds them
once that baseline is known. Once an event has been planned, each vehicle's part of that baseline is
frozen (:mod:`aggregator.programs.event_baselines`): the baseline of a later plan is the fresh
counterfactual import with each present vehicle's fresh power replaced by its frozen power, where it
has one (:meth:`PlanInputs.event_baselines_kw`), so a plan that pre-charged a vehicle before the event
does not lower its own baseline. An event that applies to several sites (:attr:`EventWindow.site_ids`)
is split among them by one optimisation of all of them (:mod:`aggregator.control.groups`).

A session whose data cannot be planned is kept in :attr:`PlanInputs.problems` (a
:class:`PlanningInputError` naming the session and vehicle) and planned with safe defaults; nothing
here crashes the control loop.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.control.dispatch_windows import EventWindow, site_event_windows
from aggregator.control.planning_settings import (
    DEFAULT_CHARGE_TAPER,
    DEFAULT_TARIFF,
    PlanningSettings,
    TariffSource,
)
from aggregator.control.session_inputs import (
    CHARGE_EFFICIENCY,
    PlanningContext,
    PlanningInputError,
    open_sessions,
    planned_session,
    vehicle_key,
)
from aggregator.db.models import Site, TelemetryRecord
from aggregator.ingestion.metering import site_import_aggregated
from aggregator.programs.event_baselines import Assumed, FrozenBaseline, frozen_baselines
from aggregator.programs.kinds import rules_for
from market_adapters.tariffs import TouTariff
from optimizer.demand import demand_so_far
from optimizer.online import with_metered_demand
from optimizer.problem import Problem, build_problem
from optimizer.scenario import DrEvent, Evse, Scenario, Tariff, V2gDispatch
from optimizer.scenario import Site as ScenarioSite
from wire.contract import evse_key

METER_RESOLUTION = dt.timedelta(minutes=1)
"""The metered import a plan starts from is read per minute, as utilities spread power over minutes
(:mod:`market_adapters.billing`): a reading counts for its minute (or until the next, across a gap), so
an interval metered only in part, as the one open now, counts only the part it was metered."""


class SiteNotFoundError(LookupError):
    """No row in ``sites`` for the site asked for."""

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id
        super().__init__(f"site {site_id!r} does not exist")


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
    assumed: dict[str, list[Assumed]] = field(default_factory=dict)
    """Scenario vehicle id → what was assumed for it rather than known
    (:attr:`~aggregator.control.session_inputs.PlanningContext.assumed`)."""
    frozen: dict[int, dict[str, FrozenBaseline]] = field(default_factory=dict)
    """Event public id → scenario vehicle id → the vehicle's baseline frozen when the event was first
    planned with it (:mod:`aggregator.programs.event_baselines`); vehicles not yet planned with it are
    absent."""
    meter_kw: pd.Series | None = None
    """The site's metered import [kW] per minute (UTC start) with readings, from the start of its
    billing period to :attr:`now`; ``None`` when the tariff has no demand charge."""

    def problem(self, scenario: Scenario | None = None) -> Problem:
        """``scenario`` (:attr:`scenario` by default) as the optimizer's problem, every demand charge
        starting from the demand metered so far (:func:`optimizer.online.with_metered_demand`, the
        rolling horizon's own step): what every plan of the site solves."""
        problem = build_problem(self.scenario if scenario is None else scenario)
        return problem if self.meter_kw is None else with_metered_demand(problem, self.meter_kw)

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
            if not rules_for(window.kind).plan_baseline or window.public_id in baselines:
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
            rules = rules_for(event.kind)
            baseline: list[float] | None = None
            if rules.plan_baseline and baseline_import_kw is not None:
                series = event_baselines_kw.get(event.public_id, baseline_import_kw)
                first = (event.start - self.scenario.start) // step
                last = (event.end - self.scenario.start) // step
                baseline = [max(0.0, float(v)) for v in series[first:last]]
            planned = rules.optimizer_input(event, baseline)
            if isinstance(planned, V2gDispatch):
                dispatches.append(planned)
            elif planned is not None:
                dr_events.append(planned)
        return self.scenario.model_copy(update={"dr_events": dr_events, "v2g_dispatches": dispatches})

    def to_json(self, scenario: Scenario | None = None) -> dict[str, object]:
        """The ``schedule_versions.inputs`` document (see :class:`~aggregator.db.models.ScheduleVersion`)."""
        return {
            "scenario": (scenario or self.scenario).model_dump(mode="json"),
            "sessions": dict(self.sessions),
            "events": self.dispatch_event_ids,
            "evses": {key: {"charger_id": cp, "evse_id": evse} for key, (cp, evse) in self.evses.items()},
            "notes": list(self.notes),
            "assumed": {key: [what.value for what in whats] for key, whats in sorted(self.assumed.items())},
        }


def floor_time(moment: dt.datetime, step: dt.timedelta) -> dt.datetime:
    """``moment`` floored to a multiple of ``step`` since the Unix epoch, in UTC."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return epoch + ((moment.astimezone(dt.UTC) - epoch) // step) * step


def plan_start(now: dt.datetime) -> dt.datetime:
    """Where a plan made at ``now`` starts: ``now`` in UTC, to the whole second (its steps then run
    from now; a start floored to a step boundary would plan energy for time already gone)."""
    return now.astimezone(dt.UTC).replace(microsecond=0)


def billing_period_start(moment: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """The start of the billing period ``moment`` falls in: midnight on the first of its calendar
    month in ``zone``, in UTC."""
    local = moment.astimezone(zone)
    return dt.datetime(local.year, local.month, 1, tzinfo=zone).astimezone(dt.UTC)


# --------------------------------------------------------------------------------------- the build


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
    start = plan_start(now)
    end = start + settings.n_steps * settings.step
    ctx = PlanningContext(site_id=site_id, now=now, start=start)
    chargers = {c.id: c for c in site.chargers}
    plugged = open_sessions(session, site_id, chargers, ctx)
    tariff, meter_kw = _metered_demand(session, site, _tariff(site, settings, ctx), ctx)
    vehicles = [
        planned_session(session, site, chargers[charging.charger_id], charging, ctx, settings)
        for charging in plugged
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
        tariff=tariff,
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
    sessions = {vehicle_key(charging.id): charging.id for charging in plugged}
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
        assumed=ctx.assumed,
        frozen=_frozen(session, site_id, events, sessions, ctx),
        meter_kw=meter_kw,
    )


def _frozen(
    session: Session,
    site_id: str,
    events: Sequence[EventWindow],
    sessions: Mapping[str, int],
    ctx: PlanningContext,
) -> dict[int, dict[str, FrozenBaseline]]:
    """The present vehicles' frozen baselines for the events with a baseline, one note per vehicle."""
    public_ids = {e.public_id for e in events if rules_for(e.kind).plan_baseline}
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


def _base_load_kw(session: Session, site: Site, settings: PlanningSettings, ctx: PlanningContext) -> float:
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


def _metered_demand(
    session: Session, site: Site, tariff: Tariff, ctx: PlanningContext
) -> tuple[Tariff, pd.Series | None]:
    """``tariff`` with each demand charge's peak so far this billing period from the meter (never below
    the configured one), and the metered import series (``None`` without demand charges); one note
    per charge saying what the meter gave."""
    if not tariff.demand_charges:
        return tariff, None
    zone = zoneinfo.ZoneInfo(site.timezone)
    since = billing_period_start(ctx.start, zone)
    interval = dt.timedelta(minutes=tariff.demand_interval_minutes)
    meter = pd.Series([], index=pd.DatetimeIndex([], tz=dt.UTC), dtype=float)
    if ctx.start > since:
        means = site_import_aggregated(session, site.id, since, ctx.start, METER_RESOLUTION)
        meter = means.mean_kw[means.samples > 0]
    since_start = pd.DatetimeIndex(meter.index) - pd.Timestamp(since)
    metered = len(set((since_start // pd.Timedelta(interval)).tolist()))
    intervals = math.ceil((ctx.start - since) / interval)
    period = f"since {since.astimezone(zone).isoformat()}"
    charges = []
    for charge in tariff.demand_charges:
        so_far = demand_so_far(
            meter.tz_convert(zone),
            ctx.start,
            interval_minutes=tariff.demand_interval_minutes,
            windows=charge.windows,
        )
        peak = max(charge.peak_already_kw, so_far.peak_kw)
        if meter.empty:
            assumed = f"{peak:g} kW as configured" if peak > 0 else "0 kW"
            ctx.notes.append(
                f"demand charge {charge.name!r}: no metered import this billing period ({period}); "
                f"the peak so far is taken as {assumed}"
            )
        else:
            note = (
                f"demand charge {charge.name!r}: {so_far.peak_kw:.2f} kW reached this billing period "
                f"(metered {period}, {metered} of {intervals} intervals with readings)"
            )
            if so_far.open_interval_hours > 0:
                note += (
                    f"; the open interval has drawn {so_far.open_interval_kwh:.3f} kWh in "
                    f"{so_far.open_interval_hours * 60:.1f} metered min"
                )
            if charge.peak_already_kw > so_far.peak_kw:
                note += f"; the configured {charge.peak_already_kw:g} kW is higher and kept"
            ctx.notes.append(note)
        charges.append(charge.model_copy(update={"peak_already_kw": peak}))
    return tariff.model_copy(update={"demand_charges": charges}), meter


def _tariff(site: Site, settings: PlanningSettings, ctx: PlanningContext) -> Tariff:
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
    "CHARGE_EFFICIENCY",
    "DEFAULT_CHARGE_TAPER",
    "DEFAULT_TARIFF",
    "METER_RESOLUTION",
    "EventWindow",
    "PlanInputs",
    "PlanningInputError",
    "PlanningSettings",
    "SiteNotFoundError",
    "TariffSource",
    "billing_period_start",
    "floor_time",
    "plan_start",
    "site_plan_inputs",
    "vehicle_key",
]
