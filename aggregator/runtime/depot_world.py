"""The world a simulated depot day runs in: the scenario, the database an admin sets up, the drivers
who enrol through the API, the grid operator who posts events, and the gateway's configuration.

:mod:`aggregator.runtime.simulation` runs this world through the real loop; the functions here are
what people and set-up would do in a deployment (``fleetgrid admin``, the driver app, the operator's
client), done through the same API.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from aggregator.api.security import hash_password
from aggregator.control.inputs import DEFAULT_CHARGE_TAPER
from aggregator.db.models import Charger, Program, ProgramSite, Role, Site, User
from aggregator.programs.kinds import POSTED_KINDS
from aggregator.runtime.broker import EmbeddedBroker, free_port
from chargersim.vehicles import Vehicle
from market_adapters.dispatch import SignalKind
from optimizer.scenario import DrEvent, Scenario, VehicleSession
from site_gateway.config import GatewayConfig, MqttBrokerSection
from workbench.synthetic import generate_depot_day

SITE_ID = "depot-demo"
PROGRAM_ID = "evening-dr"
TARIFF_REF = "demo-tou"
EVENT_KIND = SignalKind.DR_REDUCTION
"""The event the grid operator posts: the scenario's DR reduction."""
TIMEZONE = "America/Los_Angeles"
DAY_START = dt.time(5, 0)
DAY_END = dt.time(22, 0)
EVENT_NOTICE = dt.timedelta(hours=4)
"""How long before its start the grid operator posts a DR event (at the latest: the day's start)."""
PASSWORD = "demo-password-not-secret"
OPERATOR_EMAIL = "operator@grid.example"


def depot_day(
    vehicles: int, seed: int, v2g_share: float, day: dt.date
) -> tuple[Scenario, dt.datetime, dt.datetime]:
    """The synthetic depot day of ``seed``, restricted to the vehicles that come and go inside
    ``DAY_START``-``DAY_END``, one EVSE each, no base load (the simulated site has only its chargers),
    its demand billed from 0 kW; with ``(scenario, start, end)`` of the simulated window."""
    zone = zoneinfo.ZoneInfo(TIMEZONE)
    midnight = dt.datetime.combine(day, dt.time(0), zone)
    scenario = generate_depot_day(vehicles, seed, v2g_share=v2g_share, dr_event=True, start=midnight)
    start = dt.datetime.combine(day, DAY_START, zone)
    end = dt.datetime.combine(day, DAY_END, zone)
    keep = [
        v
        for v in scenario.vehicles
        if v.arrival >= start + dt.timedelta(minutes=30) and v.departure <= end - dt.timedelta(minutes=15)
    ]
    # One simulated station per vehicle: give each its own EVSE (same power as the one it used).
    evse_by_id = {e.id: e for e in scenario.evses}
    evses, sessions = [], []
    for n, v in enumerate(keep):
        evse = evse_by_id[v.evse_id].model_copy(update={"id": f"cp-{n:02d}"})
        evses.append(evse)
        # The simulated vehicles taper above 80 % like the planner assumes: both columns are modelled alike.
        update = {"evse_id": evse.id, "id": f"veh-{n:02d}", "charge_taper": DEFAULT_CHARGE_TAPER}
        sessions.append(v.model_copy(update=update))
    site = scenario.site.model_copy(update={"base_load_kw": 0.0, "id": SITE_ID})
    charges = [c.model_copy(update={"peak_already_kw": 0.0}) for c in scenario.tariff.demand_charges]
    tariff = scenario.tariff.model_copy(update={"demand_charges": charges})
    day_scenario = scenario.model_copy(
        update={"site": site, "tariff": tariff, "evses": evses, "vehicles": sessions, "v2g_dispatches": []}
    )
    return day_scenario, start, end


def sim_vehicle(v: VehicleSession) -> Vehicle:
    """The simulated vehicle of a scenario's session (same battery, limits, taper and target)."""
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


def token_of(vehicle_id: str) -> str:
    """The RFID token a vehicle's driver charges with."""
    return f"RFID-{vehicle_id.upper()}"


def driver_email(vehicle_id: str) -> str:
    return f"driver-{vehicle_id}@example.org"


# ------------------------------------------------------------------------------------- bootstrap


def bootstrap(sessions: sessionmaker[Session], scenario: Scenario) -> None:
    """What an admin would do with ``fleetgrid admin``: the site, its chargers, a DR program and the
    accounts of the grid operator, the trader and the admin."""
    with sessions() as session:
        password_hash = hash_password(PASSWORD)
        operator = User(email=OPERATOR_EMAIL, password_hash=password_hash, role=Role.GRID_OPERATOR)
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
                    tariff_ref=TARIFF_REF,
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
        terms = scenario.dr_events[0] if scenario.dr_events else None
        session.add(
            Program(
                id=PROGRAM_ID,
                name="Evening peak DR",
                kind=POSTED_KINDS[EVENT_KIND],
                owner_id=operator.id,
                currency=scenario.currency,
                payment_terms={
                    "currency": scenario.currency,
                    "per_kwh_delivered": terms.payment_per_kwh if terms else 1.0,
                    "penalty_per_kwh_short": terms.penalty_per_kwh if terms else 0.5,
                    "platform_fee_percent": 20.0,
                    "wear_compensation_per_kwh_discharged": 0.05,
                },
                measurement={"method": "counterfactual"},
            )
        )
        session.flush()
        session.add(ProgramSite(program_id=PROGRAM_ID, site_id=SITE_ID))
        session.commit()


# ------------------------------------------------------------------------------------- the API


async def auth_headers(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    response = await client.post("/auth/token", data={"username": email, "password": PASSWORD})
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def enrol_drivers(client: httpx.AsyncClient, scenario: Scenario) -> dict[str, str]:
    """Each driver signs up, registers their vehicle and, if it can, consents to V2G; the access
    header of each driver by vehicle id."""
    headers_by_vehicle = {}
    for v in scenario.vehicles:
        email = driver_email(v.id)
        (await client.post("/auth/signup", json={"email": email, "password": PASSWORD})).raise_for_status()
        headers = await auth_headers(client, email)
        headers_by_vehicle[v.id] = headers["Authorization"]
        body = {
            "name": v.id,
            "battery_kwh": v.capacity_kwh,
            "max_charge_kw": v.max_charge_kw,
            "max_discharge_kw": v.max_discharge_kw,
            "v2g_capable": v.max_discharge_kw > 0,
            "id_token": token_of(v.id),
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
    return headers_by_vehicle


async def post_dr_event(client: httpx.AsyncClient, event: DrEvent, requested_kw: float) -> dict[str, Any]:
    """The grid operator asks the program for a DR reduction of ``requested_kw`` over ``event``."""
    headers = await auth_headers(client, OPERATOR_EMAIL)
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


async def event_performance(client: httpx.AsyncClient, event_id: int) -> dict[str, Any]:
    """What the grid operator sees of an event: committed, delivered, the performance factor."""
    headers = await auth_headers(client, OPERATOR_EMAIL)
    response = await client.get(f"/operator/events/{event_id}/performance", headers=headers)
    response.raise_for_status()
    performance: dict[str, Any] = response.json()
    return performance


async def driver_sessions(client: httpx.AsyncClient, authorization: str) -> list[dict[str, Any]]:
    """A driver's charging sessions, as their app lists them."""
    response = await client.get("/driver/sessions", headers={"Authorization": authorization})
    response.raise_for_status()
    page: dict[str, Any] = response.json()
    items: list[dict[str, Any]] = page["items"]
    return items


async def override_departure(
    client: httpx.AsyncClient, authorization: str, session_id: int, departure: dt.datetime
) -> None:
    """A driver tells the platform they leave at ``departure``."""
    response = await client.post(
        f"/driver/sessions/{session_id}/override",
        json={"departure_at": departure.isoformat()},
        headers={"Authorization": authorization},
    )
    response.raise_for_status()


# ------------------------------------------------------------------------------------ services


@contextlib.asynccontextmanager
async def api_server(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve(), name="simulated-api")
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def mqtt_broker(url: str | None) -> AsyncIterator[tuple[str, int]]:
    """``url``'s host and port, or those of an embedded broker run for the block."""
    if url is not None:
        given = MqttBrokerSection(url=url)  # refuses anything but mqtt:// and mqtts:// by name
        yield given.host, given.port
        return
    async with EmbeddedBroker() as embedded:
        yield embedded.host, embedded.port


def gateway_config(scenario: Scenario, host: str, port: int, outbox: Path) -> GatewayConfig:
    """The depot gateway's configuration: the site's limits, one charger per EVSE, durations on the
    simulation's clock."""
    return GatewayConfig.model_validate(
        {
            "site": {
                "id": SITE_ID,
                "import_limit_kw": scenario.site.import_limit_kw,
                "export_limit_kw": scenario.site.export_limit_kw,
            },
            "ocpp": {"host": "127.0.0.1", "port": 0, "allow_unknown": True},
            "mqtt": {"url": f"mqtt://{host}:{port}", "outbox": str(outbox)},
            "control": {"schedule_stale_after_s": 3 * 3600, "telemetry_interval_s": 120},
            "chargers": [
                {"id": e.id, "max_charge_kw": e.max_charge_kw, "max_discharge_kw": e.max_discharge_kw}
                for e in scenario.evses
            ],
        }
    )
