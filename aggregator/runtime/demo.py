"""A whole depot day, end to end, in about a minute: what ``make demo`` runs.

Everything is real and in one process, on loopback: an MQTT broker (in-process unless a URL is
given), the aggregator (API on uvicorn, MQTT ingestion, the rolling-horizon control loop) on an SQLite
file, a site gateway (OCPP server, local safety, uplink) and one simulated OCPP charging station per
vehicle. Time is simulated (:class:`~chargersim.stations.SimClock`) and shared by all of them, so
a 17-hour day passes in ``minutes`` real minutes.

The day:

1. An admin sets up the depot (site, chargers, a DR program, a grid operator) in the database.
2. Drivers sign up through the API, register their vehicles (with the RFID token they charge with)
   and, for V2G-capable vehicles, give V2G consent with a minimum reserve.
3. Vehicles arrive through the morning (a synthetic depot day fitted to ACN-Data), plug in and the
   control loop plans and publishes setpoints that the gateway turns into charging profiles.
4. At 13:00 the grid operator posts an evening DR event through the API; the sites re-plan at once.
5. At the end: energy cost and peak against uncontrolled charging of the same vehicles, DR
   delivered against requested, V2G energy exported, targets met, and the drivers' payouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import zoneinfo
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aggregator.api.app import create_app
from aggregator.api.config import Settings
from aggregator.api.security import hash_password
from aggregator.control.inputs import DEFAULT_CHARGE_TAPER, PlanningSettings
from aggregator.control.loop import ControlLoop, ControlSettings
from aggregator.control.replanning import ReplanRequests
from aggregator.control.setpoints import MqttPublisherSettings, MqttSetpointPublisher
from aggregator.db.migrate import upgrade
from aggregator.db.models import Charger, ChargingSession, Program, ProgramSite, Role, Site, User
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.ingestion.metering import evse_power_intervals, site_import_intervals
from aggregator.ingestion.pipeline import Ingestion, IngestionSettings
from aggregator.programs.kinds import POSTED_KINDS
from aggregator.programs.terms import CURRENCY_EXPONENTS
from aggregator.runtime.broker import EmbeddedBroker, free_port
from aggregator.settlement.event_settlement import settle_event_from_db
from aggregator.settlement.event_statements import statement_of
from chargersim.stations import SimClock, SimulatedCharger
from chargersim.vehicles import Vehicle
from market_adapters.dispatch import SignalKind
from optimizer.evaluation import Evaluation, bill_site, evaluate
from optimizer.policies import run_policy
from optimizer.problem import Problem, build_problem
from optimizer.scenario import Scenario, VehicleSession
from site_gateway.config import GatewayConfig, MqttBrokerSection
from site_gateway.gateway import Gateway
from workbench.synthetic import generate_depot_day, tou_ev_4_tariff

log = logging.getLogger(__name__)

SITE_ID = "depot-demo"
PROGRAM_ID = "evening-dr"
EVENT_KIND = SignalKind.DR_REDUCTION
"""The event the demo's grid operator posts: the scenario's DR reduction."""
TIMEZONE = "America/Los_Angeles"
DAY_START = dt.time(5, 0)
DAY_END = dt.time(22, 0)
EVENT_POSTED_AT = dt.time(13, 0)
PASSWORD = "demo-password-not-secret"
STEP = dt.timedelta(minutes=15)


@dataclass(frozen=True)
class DemoOptions:
    vehicles: int = 24
    seed: int = 7
    minutes: float = 1.0
    """Real minutes the simulated day takes."""
    v2g_share: float = 0.35
    broker_url: str | None = None
    """``mqtt://host:port`` of a broker to use instead of the in-process one."""
    workdir: Path = Path("out/demo")


@dataclass
class DemoProgress:
    """What the progress bar shows; updated as the day runs."""

    now: dt.datetime
    plugged: int = 0
    site_import_kw: float = 0.0
    plans: int = 0
    events_posted: int = 0


@dataclass(frozen=True)
class DemoReport:
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    """(what, fleetgrid, uncontrolled or requested)."""
    payouts: list[tuple[str, str]] = field(default_factory=list)
    settlement: list[str] = field(default_factory=list)
    """The DR event's settlement line: gross, penalty, platform fee, to drivers, any residual (with its
    reason) or platform loss, unallocated."""
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ the day


def depot_day(options: DemoOptions, day: dt.date) -> tuple[Scenario, dt.datetime, dt.datetime]:
    """The synthetic day, restricted to the vehicles that come and go inside the simulated window,
    with no base load (the simulated site has only its chargers)."""
    zone = zoneinfo.ZoneInfo(TIMEZONE)
    midnight = dt.datetime.combine(day, dt.time(0), zone)
    scenario = generate_depot_day(
        options.vehicles, options.seed, v2g_share=options.v2g_share, dr_event=True, start=midnight
    )
    start = dt.datetime.combine(day, DAY_START, zone)
    end = dt.datetime.combine(day, DAY_END, zone)
    keep = [
        v
        for v in scenario.vehicles
        if v.arrival >= start + dt.timedelta(minutes=30) and v.departure <= end - dt.timedelta(minutes=15)
    ]
    # One simulated station per vehicle: give each its own EVSE (same power as the one it used).
    evse_by_id = {e.id: e for e in scenario.evses}
    evses, vehicles = [], []
    for n, v in enumerate(keep):
        evse = evse_by_id[v.evse_id].model_copy(update={"id": f"cp-{n:02d}"})
        evses.append(evse)
        # The simulated vehicles taper above 80 % like the planner assumes: both columns are modelled alike.
        update = {"evse_id": evse.id, "id": f"veh-{n:02d}", "charge_taper": DEFAULT_CHARGE_TAPER}
        vehicles.append(v.model_copy(update=update))
    site = scenario.site.model_copy(update={"base_load_kw": 0.0, "id": SITE_ID})
    # The day is billed on its own: demand charged from 0 kW.
    charges = [c.model_copy(update={"peak_already_kw": 0.0}) for c in scenario.tariff.demand_charges]
    tariff = scenario.tariff.model_copy(update={"demand_charges": charges})
    day_scenario = scenario.model_copy(
        update={"site": site, "tariff": tariff, "evses": evses, "vehicles": vehicles, "v2g_dispatches": []}
    )
    return day_scenario, start, end


def _sim_vehicle(v: VehicleSession) -> Vehicle:
    taper = v.charge_taper or DEFAULT_CHARGE_TAPER
    return Vehicle(
        capacity_kwh=v.capacity_kwh,
        soc=v.energy_at_arrival_kwh / v.capacity_kwh,
        max_charge_kw=v.max_charge_kw,
        arrival=v.arrival,
        departure=v.departure,
        target_soc=min(1.0, v.target_energy_kwh / v.capacity_kwh),
        max_discharge_kw=v.max_discharge_kw,
        min_soc=v.min_energy_kwh / v.capacity_kwh,
        taper_soc=taper.start_soc,
        min_taper_fraction=taper.end_fraction,
    )


def _token(vehicle_id: str) -> str:
    return f"RFID-{vehicle_id.upper()}"


# ------------------------------------------------------------------------------------- bootstrap


def bootstrap(sessions: sessionmaker[Session], scenario: Scenario) -> None:
    """What an admin would do with ``fleetgrid admin``: the site, its chargers, a DR program and the
    accounts of the grid operator, the trader and the gateway."""
    with sessions() as session:
        password_hash = hash_password(PASSWORD)
        operator = User(email="operator@grid.example", password_hash=password_hash, role=Role.GRID_OPERATOR)
        session.add_all(
            [
                operator,
                User(email="admin@depot.example", password_hash=password_hash, role=Role.ADMIN),
                User(email="trader@depot.example", password_hash=password_hash, role=Role.TRADER),
                Site(
                    id=SITE_ID,
                    name="Demo depot",
                    import_limit_kw=scenario.site.import_limit_kw,
                    export_limit_kw=scenario.site.export_limit_kw,
                    tariff_ref="demo-tou",
                    timezone=TIMEZONE,
                ),
            ]
        )
        session.flush()
        for evse in scenario.evses:
            session.add(
                Charger(
                    site_id=SITE_ID,
                    charge_point_id=evse.id,
                    evse_id=1,
                    max_kw=evse.max_charge_kw,
                    bidirectional=evse.max_discharge_kw > 0,
                )
            )
        event = scenario.dr_events[0]
        session.add(
            Program(
                id=PROGRAM_ID,
                name="Evening peak DR",
                kind=POSTED_KINDS[EVENT_KIND],
                owner_id=operator.id,
                currency=scenario.currency,
                payment_terms={
                    "currency": scenario.currency,
                    "per_kwh_delivered": event.payment_per_kwh,
                    "penalty_per_kwh_short": event.penalty_per_kwh,
                    "platform_fee_percent": 20.0,
                    "wear_compensation_per_kwh_discharged": 0.05,
                },
                measurement={"method": "counterfactual"},
            )
        )
        session.flush()
        session.add(ProgramSite(program_id=PROGRAM_ID, site_id=SITE_ID))
        session.commit()


async def _token_for(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    response = await client.post("/auth/token", data={"username": email, "password": PASSWORD})
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def enrol_drivers(client: httpx.AsyncClient, scenario: Scenario) -> None:
    """Each driver signs up, registers their vehicle and, if it can, consents to V2G."""
    for v in scenario.vehicles:
        email = f"driver-{v.id}@example.org"
        (await client.post("/auth/signup", json={"email": email, "password": PASSWORD})).raise_for_status()
        headers = await _token_for(client, email)
        body = {
            "name": v.id,
            "battery_kwh": v.capacity_kwh,
            "max_charge_kw": v.max_charge_kw,
            "max_discharge_kw": v.max_discharge_kw,
            "v2g_capable": v.max_discharge_kw > 0,
            "id_token": _token(v.id),
            "target_soc_percent": round(min(100.0, 100 * v.target_energy_kwh / v.capacity_kwh), 1),
        }
        created = await client.post("/driver/vehicles", json=body, headers=headers)
        created.raise_for_status()
        if v.max_discharge_kw > 0:
            consent = await client.put(
                f"/driver/vehicles/{created.json()['id']}/consent",
                json={"min_reserve_kwh": round(v.min_energy_kwh, 2)},
                headers=headers,
            )
            consent.raise_for_status()


async def post_dr_event(client: httpx.AsyncClient, scenario: Scenario, requested_kw: float) -> dict[str, Any]:
    """The grid operator asks the program for the scenario's DR reduction."""
    event = scenario.dr_events[0]
    headers = await _token_for(client, "operator@grid.example")
    body = {
        "kind": EVENT_KIND.value,
        "start": event.start.isoformat(),
        "end": event.end.isoformat(),
        "requested_kw": round(requested_kw, 1),
        "price_per_kwh": event.payment_per_kwh,
        "penalty_per_kwh": event.penalty_per_kwh,
    }
    response = await client.post(f"/operator/programs/{PROGRAM_ID}/events", json=body, headers=headers)
    response.raise_for_status()
    posted: dict[str, Any] = response.json()
    return posted


@dataclass(frozen=True)
class Uncontrolled:
    """The same vehicles charging as soon as they plug in: what fleetgrid is compared with."""

    problem: Problem
    evaluation: Evaluation

    @classmethod
    def of(cls, scenario: Scenario) -> Uncontrolled:
        problem = build_problem(scenario)
        return cls(problem, evaluate(problem, *run_policy(problem, "uncontrolled")))

    def requested_reduction_kw(self, scenario: Scenario) -> float:
        """What the operator asks for: 30 % of the uncontrolled import in the event window (>= 5 kW)."""
        event = scenario.dr_events[0]
        steps = [n for n, t in enumerate(self.problem.index) if event.start <= t < event.end]
        return max(5.0, round(0.3 * float(self.evaluation.import_kw[steps].mean()), 1))


async def event_performance(client: httpx.AsyncClient, event_id: int) -> dict[str, Any]:
    headers = await _token_for(client, "operator@grid.example")
    response = await client.get(f"/operator/events/{event_id}/performance", headers=headers)
    response.raise_for_status()
    performance: dict[str, Any] = response.json()
    return performance


# ------------------------------------------------------------------------------------------ run


@contextlib.asynccontextmanager
async def _api_server(app: Any) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve(), name="demo-api")
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def _broker(url: str | None) -> AsyncIterator[tuple[str, int]]:
    if url is not None:
        given = MqttBrokerSection(url=url)  # refuses anything but mqtt:// and mqtts:// by name
        yield given.host, given.port
        return
    async with EmbeddedBroker() as embedded:
        yield embedded.host, embedded.port


def _gateway_config(scenario: Scenario, host: str, port: int, outbox: Path) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "site": {
                "id": SITE_ID,
                "import_limit_kw": scenario.site.import_limit_kw,
                "export_limit_kw": scenario.site.export_limit_kw,
            },
            # Durations on the simulated clock. The clock runs ~1,000x real time, so a charger's
            # answer that takes a few real milliseconds takes simulated seconds: give it ten minutes.
            "ocpp": {"host": "127.0.0.1", "port": 0, "allow_unknown": True, "response_timeout_s": 600},
            "mqtt": {"url": f"mqtt://{host}:{port}", "outbox": str(outbox)},
            "control": {"schedule_stale_after_s": 3 * 3600, "telemetry_interval_s": 120},
            "chargers": [
                {"id": e.id, "max_charge_kw": e.max_charge_kw, "max_discharge_kw": e.max_discharge_kw}
                for e in scenario.evses
            ],
        }
    )


async def run_day(
    options: DemoOptions, on_progress: Callable[[DemoProgress, float], None] | None = None
) -> DemoReport:
    """Run the day; ``on_progress(progress, fraction done)`` is called a few times a second."""
    zone = zoneinfo.ZoneInfo(TIMEZONE)
    day = (dt.datetime.now(zone) + dt.timedelta(days=1)).date()  # in the future: events are not "past"
    scenario, start, end = depot_day(options, day)
    uncontrolled = Uncontrolled.of(scenario)
    options.workdir.mkdir(parents=True, exist_ok=True)
    database = options.workdir / "demo.sqlite"
    for stale in (database, options.workdir / "outbox.sqlite"):
        stale.unlink(missing_ok=True)
    url = f"sqlite:///{database}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    bootstrap(sessions, scenario)

    speed = (end - start).total_seconds() / (options.minutes * 60)
    replans = ReplanRequests()
    progress = DemoProgress(now=start)
    app = create_app(Settings(database_url=url), sessions, replans=replans)
    control_settings = ControlSettings(
        cadence=STEP,
        solver_time_limit_s=3.0,
        setpoint_validity=dt.timedelta(hours=3),
        poll_s=0.05,
        planning=PlanningSettings(
            horizon=dt.timedelta(hours=12),
            tariffs={"demo-tou": tou_ev_4_tariff()},
            currency=scenario.currency,
        ),
    )

    async with (
        _broker(options.broker_url) as (host, port),
        _api_server(app) as api_url,
        httpx.AsyncClient(base_url=api_url, timeout=30) as client,
    ):
        await enrol_drivers(client, scenario)
        clock = SimClock(start, speed=speed)  # the day starts once the drivers are enrolled
        ingestion = Ingestion(
            IngestionSettings(host=host, port=port, client_id="demo-centre"),
            sessions,
            clock=clock.now,
            replans=replans,
        )
        publisher = MqttSetpointPublisher(
            MqttPublisherSettings(host=host, port=port, client_id="demo-centre-setpoints"), clock=clock.now
        )
        control = ControlLoop(sessions, publisher, replans, control_settings, clock=clock.now)
        gateway = Gateway(
            _gateway_config(scenario, host, port, options.workdir / "outbox.sqlite"),
            control_interval_s=60,
            clock=clock,
        )
        async with ingestion, publisher, control, gateway, asyncio.TaskGroup() as tasks:
            await ingestion.wait_subscribed(10)
            ocpp_url = f"ws://127.0.0.1:{gateway.ocpp.port}"
            stations = [
                SimulatedCharger(
                    evse.id,
                    ocpp_url,
                    "2.1" if evse.max_discharge_kw > 0 else "2.0.1",
                    _sim_vehicle(vehicle),
                    clock,
                    max_power_w=evse.max_charge_kw * 1000,
                    max_discharge_w=evse.max_discharge_kw * 1000,
                    meter_interval_s=120,
                    tick_s=30,
                    id_token=_token(vehicle.id),
                )
                for evse, vehicle in zip(scenario.evses, scenario.vehicles, strict=True)
            ]
            runs = [tasks.create_task(s.run(), name=f"station-{s.station_id}") for s in stations]
            posted_at = dt.datetime.combine(day, EVENT_POSTED_AT, zone)
            posted: dict[str, Any] | None = None
            while (now := clock.now()) < end:
                if posted is None and now >= posted_at:
                    posted = await post_dr_event(
                        client, scenario, uncontrolled.requested_reduction_kw(scenario)
                    )
                    progress.events_posted = 1
                progress.now = now
                progress.plugged = sum(1 for s in stations if s.transaction is not None)
                progress.site_import_kw = sum(s.power_w for s in stations) / 1000
                progress.plans = control.stats.plans
                if on_progress is not None:
                    on_progress(progress, (now - start) / (end - start))
                await asyncio.sleep(0.1)
            for run in runs:
                run.cancel()
        performance = await event_performance(client, posted["id"]) if posted is not None else None
        payouts, settled = (
            await asyncio.to_thread(_settle, sessions, posted["id"], clock.now())
            if posted is not None
            else ([], "")
        )
        targets = [_charged(s, v) for s, v in zip(stations, scenario.vehicles, strict=True)]
        report = _report(sessions, scenario, uncontrolled, performance, targets)
        report.payouts.extend(payouts)
        report.settlement.extend([settled] if settled else [])
    engine.dispose()
    return report


# --------------------------------------------------------------------------------------- report


def _settle(
    sessions: sessionmaker[Session], event_id: int, now: dt.datetime
) -> tuple[list[tuple[str, str]], str]:
    """Settle the event on the ledger; each driver's payout (share + wear) or why they earned nothing,
    and the settlement's line: gross, penalty, platform fee, to drivers, any residual with its reason,
    any platform loss, and what is unallocated (nothing)."""
    settlement = settle_event_from_db(sessions, event_id, now=now)
    booking = settlement.booking
    with sessions() as session:
        emails = {user_id: email for user_id, email in session.execute(select(User.id, User.email))}
    exponent = 10 ** CURRENCY_EXPONENTS[booking.currency]
    payouts = []
    drivers = sorted(
        set(booking.driver_shares_minor) | set(booking.wear_minor_by_driver) | set(booking.zero_reasons)
    )
    for driver in drivers:
        minor = booking.driver_shares_minor.get(driver, 0) + booking.wear_minor_by_driver.get(driver, 0)
        reason = booking.zero_reasons.get(driver)
        amount = f"{minor / exponent:,.2f} {booking.currency}" + (
            f" ({reason})" if reason and minor == 0 else ""
        )
        payouts.append((emails.get(driver, str(driver)), amount))
    statement = statement_of(settlement)
    baselines = "; ".join(
        f"{site.site_id}: {site.declaration.method}"
        + (" (the plan without the event, fixed at its first plans)" if site.plan_versions else "")
        for site in settlement.inputs.sites
    )
    note = (
        f"settlement {settlement.outcome.status.value}: {statement.summary()} (ledger balanced; "
        f"`fleetgrid settle --event {event_id}` re-runs it). DR measured against the baseline declared "
        f"at notification ({baselines})"
    )
    excluded = [str(vehicle.session_id) for vehicle in statement.vehicles if vehicle.excluded]
    if excluded:
        note += f"; sessions {', '.join(excluded)} do not count (see the payouts for why)"
    return payouts, note


def _charged(station: SimulatedCharger, session: VehicleSession) -> tuple[bool, float, float]:
    """(target met within 1 % of SoC, energy stored [kWh], energy wanted [kWh]) of a station's vehicle."""
    vehicle = station.vehicle
    assert vehicle is not None
    wanted = max(0.0, min(vehicle.target_soc, 1.0) * vehicle.capacity_kwh - session.energy_at_arrival_kwh)
    stored = vehicle.soc * vehicle.capacity_kwh - session.energy_at_arrival_kwh
    return vehicle.soc >= min(vehicle.target_soc, 1.0) - 0.01, stored, wanted


def _report(
    sessions: sessionmaker[Session],
    scenario: Scenario,
    baseline: Uncontrolled,
    performance: dict[str, Any] | None,
    targets: list[tuple[bool, float, float]],
) -> DemoReport:
    money = scenario.currency
    day_start = scenario.start
    with sessions() as session:
        full_day_end = day_start + STEP * scenario.n_steps
        metered = site_import_intervals(session, SITE_ID, day_start, full_day_end)
        evses = evse_power_intervals(session, SITE_ID, day_start, full_day_end)
        stored_sessions = session.scalar(
            select(func.count()).select_from(ChargingSession).where(ChargingSession.site_id == SITE_ID)
        )
    measured = metered.mean_kw.to_numpy()
    measured_filled = np.where(np.isnan(measured), 0.0, measured)
    problem, uncontrolled = baseline.problem, baseline.evaluation
    imported, exported = np.maximum(measured_filled, 0.0), np.maximum(-measured_filled, 0.0)
    cost, peak = bill_site(problem, imported, exported).total, float(imported.max(initial=0.0))
    uncontrolled_cost = bill_site(problem, uncontrolled.import_kw, uncontrolled.export_kw).total
    exported_kwh = sum(
        float(np.nansum(np.minimum(series.mean_kw.to_numpy(), 0.0))) * -0.25 for series in evses.values()
    )
    met_uncontrolled = sum(1 for v in uncontrolled.vehicles if v.unmet_kwh <= 0.5)
    rows = [
        ("energy + demand cost", f"{cost:,.2f} {money}", f"{uncontrolled_cost:,.2f} {money}"),
        ("peak import (15 min)", f"{peak:.1f} kW", f"{uncontrolled.peak_import_kw:.1f} kW"),
        ("V2G energy exported", f"{exported_kwh:.1f} kWh", "0.0 kWh"),
        (
            "charging targets met",
            f"{sum(met for met, _, _ in targets)} of {len(targets)}",
            f"{met_uncontrolled} of {len(targets)}",
        ),
        (
            "energy stored / wanted",
            f"{sum(s for _, s, _ in targets):.1f} / {sum(w for _, _, w in targets):.1f} kWh",
            f"{sum(v.delivered_kwh for v in uncontrolled.vehicles):.1f} /"
            f" {sum(v.requested_kwh for v in uncontrolled.vehicles):.1f} kWh",
        ),
    ]
    if performance is not None:
        rows.append(
            (
                "DR delivered / requested",
                f"{performance['delivered_kwh']:.1f} kWh ({100 * performance['performance_factor']:.0f} %)",
                f"{performance['committed_kwh']:.1f} kWh",
            )
        )
    notes = [
        f"{stored_sessions} charging sessions and {int(metered.samples.sum())} telemetry readings stored;"
        f" {int((metered.samples > 0).sum())} of {len(metered.samples)} quarter-hours metered",
    ]
    return DemoReport(rows=rows, notes=notes)
