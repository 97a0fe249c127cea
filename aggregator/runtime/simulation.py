"""``fleetgrid simulate``: a depot day replayed through the real loop in virtual time, measured at the
meter.

Everything runs in one process on loopback, on a :class:`~wire.virtual_time.VirtualTimeEventLoop`
and one clock (:func:`wire.clock.loop_clock`): an embedded MQTT broker, the aggregator (API on
uvicorn, MQTT ingestion, the control loop, settlement) on an SQLite file, the site gateway, and one
simulated OCPP station per vehicle (1.6, 2.0.1 and 2.1 mixed). Time moves only when nothing is ready
to run, so a day takes what its work takes, and the same options give the same ``summary.json``.

The vehicles behave like vehicles: they taper above 80 % (CC-CV), a 1.6 charger never reports the
state of charge and a 2.x one reports it from its first meter value, some drivers leave later than
their EV announced and one leaves earlier and says so in the app; drivers on 1.6 chargers (no ISO
15118, so no departure from the EV) give their departure in the app at plug-in. The grid operator
posts the day's DR event through the API, ``EVENT_NOTICE`` before it starts.

What is measured, and how (``summary.json``, :class:`Summary`):

- cost, peak and targets at the physical boundary: the stations' meter registers, sampled every
  ``tick_s`` on the clock's grid and netted across EVSEs (one site meter), billed on the tariff's
  clock-aligned intervals; a target is met when the vehicle's simulated state of charge at departure
  is within 1 % of it;
- ``uncontrolled``: the same vehicles through the same vehicle model, each drawing all it can from
  plug-in (:mod:`chargersim.uncontrolled`), judged by the same yardstick;
- each DR event as the grid operator sees it (``/operator/events/{id}/performance``), against the
  site baseline declared at notification, and the event's settlement in minor units.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import select

from aggregator.api.app import create_app
from aggregator.api.config import Settings
from aggregator.control.grid_signals import PortfolioFlexibility
from aggregator.control.inputs import PlanningSettings
from aggregator.control.loop import ControlLoop, ControlSettings
from aggregator.control.replanning import ReplanRequests
from aggregator.control.setpoints import MqttPublisherSettings, MqttSetpointPublisher
from aggregator.db.migrate import upgrade
from aggregator.db.models import ScheduleVersion
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.ingestion.pipeline import Ingestion, IngestionSettings
from aggregator.runtime import depot_world as world
from aggregator.runtime.simulation_summary import (
    STEP,
    TARGET_TOLERANCE_SOC,
    DrEventOutcome,
    SiteMeter,
    Summary,
    VehicleOutcome,
    outcome,
    settlement_outcome,
)
from aggregator.settlement.event_settlement import settle_event_from_db
from aggregator.settlement.event_statements import EventStatement, statement_of
from chargersim.stations import Protocol, SimulatedCharger
from chargersim.uncontrolled import PluggedVehicle, charge_on_plug_in
from chargersim.vehicles import Vehicle
from optimizer.problem import build_problem
from optimizer.scenario import Scenario
from site_gateway.gateway import Gateway
from wire.clock import loop_clock
from wire.virtual_time import VirtualTimeEventLoop, run
from workbench.synthetic import tou_ev_4_tariff

DEFAULT_DAY = dt.date(2026, 6, 9)
"""A summer Tuesday: the tariff's peak prices apply and the day is the same in every run."""
EVENT_KIND = world.EVENT_KIND
SETTLE_AFTER = dt.timedelta(minutes=10)
"""How long the loop runs on after the last station stops, so the last readings are stored."""


@dataclass(frozen=True)
class SimulationOptions:
    """What to simulate (a generated depot day of ``vehicles`` drawn from ``seed``) and how."""

    vehicles: int = 20
    seed: int = 1
    v2g_share: float = 0.35
    ocpp16_share: float = 0.25
    """Share of the vehicles without V2G on 1.6 chargers (the others on 2.0.1; V2G ones on 2.1)."""
    late_share: float = 0.2
    """Share of drivers who leave 30-90 min after their EV's announced departure."""
    day: dt.date = DEFAULT_DAY
    workdir: Path = Path("out/simulate")
    solve_latency_s: float = 0.0
    """Virtual seconds a solve (or any executor work) takes; 0: it holds time until it is done."""
    tick_s: float = 30.0
    """The stations' plant step and the site meter's sampling period [virtual s]."""
    meter_interval_s: float = 120.0
    """Simulated seconds between the stations' meter values."""

    def __post_init__(self) -> None:
        if self.vehicles < 1:
            raise ValueError(f"vehicles must be at least 1, got {self.vehicles}")
        for name in ("v2g_share", "ocpp16_share", "late_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.tick_s <= 0 or self.meter_interval_s <= 0 or self.solve_latency_s < 0:
            raise ValueError("tick_s and meter_interval_s must be > 0 s and solve_latency_s >= 0 s")


@dataclass
class SimulationProgress:
    """What a progress bar shows; updated as the day runs."""

    now: dt.datetime
    plugged: int = 0
    site_import_kw: float = 0.0
    plans: int = 0
    events_posted: int = 0


@dataclass(frozen=True)
class SimulationResult:
    summary: Summary
    statement: EventStatement | None
    """The DR event's statement (drivers' shares, exclusions), if an event was settled."""
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ the world


@dataclass(frozen=True)
class Behaviour:
    """How each vehicle's day goes beyond the scenario: its charger's protocol, when it in fact
    leaves, and whether its driver gives the departure in the app."""

    protocol: Protocol
    departure: dt.datetime
    """When the vehicle leaves (the scenario's departure is what the EV announces)."""
    tells_app: bool
    """The driver posts the departure as an override once the session shows in the app."""


def behaviours(scenario: Scenario, options: SimulationOptions, end: dt.datetime) -> dict[str, Behaviour]:
    """Each vehicle's behaviour, drawn from ``options.seed``: protocols by share, late leavers, and one
    early leaver who says so (the first vehicle without V2G that stays over 4 h)."""
    rng = random.Random(options.seed)
    latest = end - STEP
    out: dict[str, Behaviour] = {}
    plain = [v for v in scenario.vehicles if v.max_discharge_kw <= 0]
    on_16 = set(rng.sample([v.id for v in plain], round(options.ocpp16_share * len(plain))))
    late = set(
        rng.sample([v.id for v in scenario.vehicles], round(options.late_share * len(scenario.vehicles)))
    )
    early = next((v.id for v in plain if v.departure - v.arrival > dt.timedelta(hours=4)), None)
    for v in scenario.vehicles:
        protocol: Protocol = "2.1" if v.max_discharge_kw > 0 else "1.6" if v.id in on_16 else "2.0.1"
        departure = v.departure
        if v.id in late and v.id != early:
            departure = min(latest, departure + dt.timedelta(minutes=rng.randint(30, 90)))
        if v.id == early:
            departure = departure - dt.timedelta(minutes=45)
        out[v.id] = Behaviour(protocol, departure, tells_app=protocol == "1.6" or v.id == early)
    return out


def _vehicle(scenario_vehicle: Any, behaviour: Behaviour) -> Vehicle:
    vehicle = world.sim_vehicle(scenario_vehicle)
    vehicle.announced_departure = scenario_vehicle.departure
    vehicle.departure = behaviour.departure
    return vehicle


def requested_reduction_kw(
    scenario: Scenario, start: dt.datetime, tick_s: float, import_kwh: np.ndarray
) -> float:
    """What the grid operator asks for: 30 % of uncontrolled charging's mean import over the event
    window (at least 5 kW), from the same simulator."""
    event = scenario.dr_events[0]
    first = int((event.start - start).total_seconds() // tick_s)
    last = int((event.end - start).total_seconds() // tick_s)
    window = import_kwh[max(first, 0) : max(last, 0)]
    mean_kw = float(window.sum()) / max((event.end - event.start).total_seconds() / 3600, 1e-9)
    return max(5.0, round(0.3 * mean_kw, 1))


# ------------------------------------------------------------------------------------------ run


def simulate(
    options: SimulationOptions,
    on_progress: Callable[[SimulationProgress, float], None] | None = None,
) -> SimulationResult:
    """Run the day in virtual time; write ``workdir/summary.json``; ``on_progress(progress, done)``
    is called every few simulated minutes."""
    result = run(
        run_day(options, on_progress),
        executor_latency_s=options.solve_latency_s,
    )
    (options.workdir / "summary.json").write_text(result.summary.to_json())
    return result


@contextlib.contextmanager
def _holding() -> Iterator[None]:
    """Hold virtual time (the API's worker threads are not the loop's executor), if it is virtual."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, VirtualTimeEventLoop):
        with loop.holding():
            yield
    else:
        yield


async def run_day(
    options: SimulationOptions,
    on_progress: Callable[[SimulationProgress, float], None] | None = None,
) -> SimulationResult:
    """The day (see the module docstring); on a virtual-time loop for reproducible results."""
    scenario, start, end = world.depot_day(options.vehicles, options.seed, options.v2g_share, options.day)
    problem = build_problem(scenario)
    plan_of = behaviours(scenario, options, end)
    arrival_kwh = [v.energy_at_arrival_kwh for v in scenario.vehicles]

    uncontrolled_vehicles = [_vehicle(v, plan_of[v.id]) for v in scenario.vehicles]
    evse_max = {e.id: e.max_charge_kw for e in scenario.evses}
    plugged = [
        PluggedVehicle(vehicle, evse_max[v.evse_id])
        for vehicle, v in zip(uncontrolled_vehicles, scenario.vehicles, strict=True)
    ]
    free_lists = charge_on_plug_in(plugged, start, end, options.tick_s)
    free_import, free_export = np.array(free_lists[0]), np.array(free_lists[1])
    uncontrolled = outcome(
        problem, start, options.tick_s, free_import, free_export, uncontrolled_vehicles, arrival_kwh
    )

    options.workdir.mkdir(parents=True, exist_ok=True)
    database = options.workdir / "simulation.sqlite"
    for stale in (database, options.workdir / "outbox.sqlite"):
        stale.unlink(missing_ok=True)
    url = f"sqlite:///{database}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    world.bootstrap(sessions, scenario)

    clock = loop_clock(start)
    replans = ReplanRequests()
    app = create_app(Settings(database_url=url), sessions, replans=replans, clock=clock.now)
    control_settings = ControlSettings(
        cadence=STEP,
        # A wall-clock limit no solve of a depot day reaches: a limit hit under load would change the
        # plan with the machine's speed. (Not threads=1: HiGHS keeps one thread pool per process, and a
        # solve asking for another count after the first answers "unknown".)
        solver_time_limit_s=600.0,
        setpoint_validity=dt.timedelta(hours=3),
        poll_s=60.0,  # virtual seconds; a re-plan request still wakes the loop at once
        replan_gather_s=15.0,  # simultaneous arrivals planned once, whatever order they were stored in
        planning=PlanningSettings(
            horizon=dt.timedelta(hours=12),
            tariffs={world.TARIFF_REF: tou_ev_4_tariff()},
            currency=scenario.currency,
        ),
    )
    progress = SimulationProgress(now=start)
    dr_events: list[DrEventOutcome] = []
    statement: EventStatement | None = None
    notes: list[str] = []
    try:
        async with (
            world.mqtt_broker(None) as (host, port),
            # The real app in process, without a server's socket and its 0.1 s housekeeping tick.
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://api", timeout=60
            ) as client,
        ):
            with _holding():
                authorization = await world.enrol_drivers(client, scenario)
            ingestion = Ingestion(
                IngestionSettings(host=host, port=port, client_id="simulated-centre"),
                sessions,
                clock=clock.now,
                sleep=clock.sleep,
                replans=replans,
            )
            publisher = MqttSetpointPublisher(
                MqttPublisherSettings(host=host, port=port, client_id="simulated-centre-setpoints"),
                clock=clock.now,
            )
            control = ControlLoop(sessions, publisher, replans, control_settings, clock=clock.now)
            gateway = Gateway(
                world.gateway_config(scenario, host, port, options.workdir / "outbox.sqlite"),
                control_interval_s=60,
                clock=clock,
            )
            async with ingestion, publisher, control, gateway, asyncio.TaskGroup() as tasks:
                await ingestion.wait_subscribed(60)
                ocpp_url = f"ws://127.0.0.1:{gateway.ocpp.port}"
                stations = []
                for n, (evse, v) in enumerate(zip(scenario.evses, scenario.vehicles, strict=True)):
                    behaviour = plan_of[v.id]
                    stations.append(
                        SimulatedCharger(
                            evse.id,
                            ocpp_url,
                            behaviour.protocol,
                            _vehicle(v, behaviour),
                            clock,
                            max_power_w=evse.max_charge_kw * 1000,
                            max_discharge_w=evse.max_discharge_kw * 1000,
                            meter_interval_s=options.meter_interval_s,
                            tick_s=options.tick_s,
                            id_token=world.token_of(v.id),
                            rng=random.Random(options.seed * 1000 + n),
                            reports_soc=behaviour.protocol != "1.6",
                        )
                    )
                meter = SiteMeter(stations, clock, options.tick_s)
                background = [tasks.create_task(s.run(), name=f"station-{s.station_id}") for s in stations]
                background.append(tasks.create_task(meter.run(), name="site-meter"))

                posted: dict[str, Any] | None = None
                offered_kw: float | None = None
                flexibility = PortfolioFlexibility(sessions, programs=[world.PROGRAM_ID], clock=clock.now)
                event = scenario.dr_events[0] if scenario.dr_events else None
                notify_at = max(start, event.start - world.EVENT_NOTICE) if event else end
                told: set[str] = set()
                while (now := clock.now()) < end:
                    if event is not None and offered_kw is None and now >= notify_at:
                        # What the site's plan can hold is recorded; the operator asks for its own figure.
                        offered_kw = await flexibility.available_kw(EVENT_KIND, event.start, event.end)
                        requested_kw = requested_reduction_kw(scenario, start, options.tick_s, free_import)
                        with _holding():
                            posted = await world.post_dr_event(client, event, requested_kw)
                        progress.events_posted += 1
                    await _drivers_tell_the_app(client, scenario, plan_of, authorization, stations, told)
                    progress.now = now
                    progress.plugged = sum(1 for s in stations if s.transaction is not None)
                    progress.site_import_kw = sum(s.power_w for s in stations) / 1000
                    progress.plans = control.stats.plans
                    if on_progress is not None:
                        on_progress(progress, (now - start) / (end - start))
                    await clock.sleep(min(60.0, (end - now).total_seconds()))
                await clock.sleep(SETTLE_AFTER.total_seconds())
                for task in background:
                    task.cancel()
            plans = control.stats.plans
            if posted is not None and event is not None:
                with _holding():
                    performance = await world.event_performance(client, posted["id"])
                settlement = settle_event_from_db(sessions, posted["id"], now=clock.now())
                statement = statement_of(settlement)
                site = performance["sites"][0] if performance["sites"] else {}
                dr_events.append(
                    DrEventOutcome(
                        event_id=posted["id"],
                        offered_kw=round(offered_kw or 0.0, 4),
                        planned_kwh=round(_planned_delivery(sessions, posted["id"], event.start), 4),
                        requested_kw=float(posted["requested_kw"]),
                        requested_kwh=round(performance["committed_kwh"], 4),
                        delivered_kwh=round(performance["delivered_kwh"], 4),
                        performance_factor=round(performance["performance_factor"], 4),
                        baseline=(site.get("baseline") or {}).get("method", "unknown"),
                        missing_intervals=performance["missing_intervals"],
                    )
                )
    finally:
        engine.dispose()

    controlled = outcome(
        problem,
        start,
        options.tick_s,
        np.array(meter.import_kwh),
        np.array(meter.export_kwh),
        [s.vehicle for s in stations if s.vehicle is not None],
        arrival_kwh,
    )
    exported_kwh = sum(s.export_wh for s in stations) / 1000
    vehicle_days = []
    for v, station, free in zip(scenario.vehicles, stations, uncontrolled_vehicles, strict=True):
        assert station.vehicle is not None
        target = min(free.target_soc, 1.0)
        vehicle_days.append(
            VehicleOutcome(
                id=v.id,
                protocol=plan_of[v.id].protocol,
                arrival=v.arrival,
                departure=plan_of[v.id].departure,
                announced_departure=v.departure,
                told_app=plan_of[v.id].tells_app,
                target_soc=round(target, 4),
                soc=round(station.vehicle.soc, 4),
                uncontrolled_soc=round(free.soc, 4),
                met=station.vehicle.soc >= target - TARGET_TOLERANCE_SOC,
                uncontrolled_met=free.soc >= target - TARGET_TOLERANCE_SOC,
            )
        )
    summary = Summary(
        **controlled.model_dump(),
        version=importlib.metadata.version("fleetgrid"),
        seed=options.seed,
        vehicles=len(scenario.vehicles),
        start=start,
        end=end,
        currency=scenario.currency,
        uncontrolled=uncontrolled,
        dr_events=dr_events,
        v2g_exported_kwh=round(exported_kwh, 4),
        settlement=settlement_outcome(statement) if statement is not None else None,
        plans=plans,
        vehicle_days=vehicle_days,
    )
    return SimulationResult(summary, statement, notes)


def _planned_delivery(sessions: Any, event_id: int, start: dt.datetime) -> float:
    """What the site's last plan before the event's start promised to deliver [kWh]: the sum over
    the event's intervals (``dispatch-{id}-{n}``) of its summary's ``delivered_kwh``."""
    with sessions() as session:
        version = session.scalars(
            select(ScheduleVersion)
            .where(
                ScheduleVersion.site_id == world.SITE_ID,
                ScheduleVersion.created_at < start.astimezone(dt.UTC),
            )
            .order_by(ScheduleVersion.created_at.desc(), ScheduleVersion.id.desc())
            .limit(1)
        ).first()
        events = (version.result_summary or {}).get("dr_events", {}) if version is not None else {}
    prefix = f"dispatch-{event_id}-"
    return sum(float(v.get("delivered_kwh", 0.0)) for k, v in events.items() if k.startswith(prefix))


async def _drivers_tell_the_app(
    client: httpx.AsyncClient,
    scenario: Scenario,
    plan_of: dict[str, Behaviour],
    authorization: dict[str, str],
    stations: list[SimulatedCharger],
    told: set[str],
) -> None:
    """Drivers who give their departure in the app do so once their session shows there."""
    for v, station in zip(scenario.vehicles, stations, strict=True):
        behaviour = plan_of[v.id]
        if not behaviour.tells_app or v.id in told or station.transaction is None:
            continue
        with _holding():
            open_sessions = [
                s for s in await world.driver_sessions(client, authorization[v.id]) if s["stopped_at"] is None
            ]
            if open_sessions:
                await world.override_departure(
                    client, authorization[v.id], open_sessions[0]["id"], behaviour.departure
                )
                told.add(v.id)
