"""The whole loop with real peers: Mosquitto, a site gateway with a simulated OCPP 2.0.1 charger, the
centre's ingestion and the control loop publishing over MQTT, on SQLite.

A vehicle arrives → the centre plans it and the charger follows the planned power; a driver's override
changes that power within seconds; a DR event caps the site's import and the metered import drops
below the cap.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mosquitto import Mosquitto
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from aggregator.control.inputs import PlanningSettings
from aggregator.control.loop import ControlLoop, ControlSettings
from aggregator.control.replanning import ReplanRequests
from aggregator.control.setpoints import MqttPublisherSettings, MqttSetpointPublisher
from aggregator.db.migrate import upgrade
from aggregator.db.models import (
    Charger,
    ChargingSession,
    DispatchEvent,
    EvseTelemetryRecord,
    Program,
    ProgramKind,
    ProgramSite,
    Role,
    ScheduleVersion,
    SessionOverride,
    SetpointCommandRecord,
    Site,
    TelemetryRecord,
    User,
    Vehicle,
    utcnow,
)
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.ingestion.pipeline import Ingestion, IngestionSettings
from chargersim.clock import SimClock
from chargersim.stations import SimulatedCharger
from chargersim.vehicles import Vehicle as SimVehicle
from market_adapters.dispatch import SignalKind, SignalStatus
from optimizer.scenario import DemandCharge, Tariff
from site_gateway.config import GatewayConfig
from site_gateway.gateway import Gateway
from wire.contract import EvseSetpoint, LimitReason, SetpointCommand, decode, setpoint_topic
from wire.reconnect import Backoff

SITE = "depot-int"
TOKEN = "SIMTOKEN"
SPEED = 10.0
"""Simulated seconds per real second for the charger: a meter value every half second."""
TIMEOUT_S = 20.0
TARIFFS = {"demand": Tariff(import_price_per_kwh=0.2, demand_charges=[DemandCharge(rate_per_kw=10.0)])}
"""A flat price and a demand charge: the cheapest plan charges at one steady power until departure."""


def seed(engine: Engine) -> None:
    with make_sessionmaker(engine)() as db:
        driver = User(email="ada@example.com", password_hash="x", role=Role.DRIVER)
        operator = User(email="dso@example.com", password_hash="x", role=Role.GRID_OPERATOR)
        db.add_all([driver, operator])
        db.flush()
        db.add(Site(id=SITE, name="Depot", import_limit_kw=20.0, export_limit_kw=0.0, tariff_ref="demand"))
        db.add(Charger(site_id=SITE, charge_point_id="cp-0", evse_id=1, max_kw=11.0))
        db.add(
            Vehicle(
                owner_id=driver.id,
                name="van",
                battery_kwh=80.0,
                max_charge_kw=11.0,
                max_discharge_kw=0.0,
                id_token=TOKEN,
                target_soc_percent=80.0,
            )
        )
        db.add(Program(id="dso", name="DSO", kind=ProgramKind.DR, owner_id=operator.id))
        db.flush()
        db.add(ProgramSite(program_id="dso", site_id=SITE))
        db.commit()


def gateway_config(mq: Mosquitto, import_limit_kw: float = 50) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "site": {"id": SITE, "import_limit_kw": import_limit_kw},
            "ocpp": {"host": "127.0.0.1", "port": 0, "allow_unknown": True},
            "mqtt": {"url": f"mqtt://{mq.host}:{mq.port}"},
            "control": {"telemetry_interval_s": 0.5},
            "chargers": [{"id": "cp-0", "max_charge_kw": 11, "limit_unit": "W"}],
        }
    )


async def until(condition: Callable[[], object], timeout: float = TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def query(sessions: sessionmaker[Session], read: Callable[[Session], Any]) -> Any:
    def work() -> Any:
        with sessions() as db:
            return read(db)

    return await asyncio.to_thread(work)


async def add(sessions: sessionmaker[Session], *rows: Any) -> None:
    def work() -> None:
        with sessions() as db, db.begin():
            db.add_all(rows)

    await asyncio.to_thread(work)


def planned_now_kw(db: Session) -> float | None:
    """The power the latest command asks of cp-0 now [kW]."""
    record = db.scalars(
        select(SetpointCommandRecord).order_by(SetpointCommandRecord.issued_at.desc())
    ).first()
    if record is None:
        return None
    now = utcnow().isoformat()
    periods = record.payload["setpoints"][0]["schedule"]
    started = [p for p in periods if dt.datetime.fromisoformat(p["start"]).isoformat() <= now]
    return float(started[-1]["power_kw"])


def test_arrival_override_and_dr_event_reach_the_charger(tmp_path: Path, broker: Mosquitto) -> None:
    url = f"sqlite:///{tmp_path / 'centre.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    seed(engine)
    sessions = make_sessionmaker(engine)
    replans = ReplanRequests()
    settings = ControlSettings(poll_s=0.1, planning=PlanningSettings(tariffs=TARIFFS))
    quick = Backoff(initial_s=0.05, max_s=0.5)

    async def scenario() -> None:
        gateway = Gateway(
            gateway_config(broker), outbox_path=tmp_path / "outbox.sqlite", control_interval_s=0.5
        )
        ingestion = Ingestion(IngestionSettings(host=broker.host, port=broker.port, backoff=quick), sessions)
        publisher = MqttSetpointPublisher(
            MqttPublisherSettings(host=broker.host, port=broker.port, backoff=quick)
        )
        async with ingestion, publisher, gateway, ControlLoop(sessions, publisher, replans, settings) as loop:
            await ingestion.wait_subscribed(TIMEOUT_S)
            clock = SimClock(utcnow(), speed=SPEED)
            charger = SimulatedCharger(
                "cp-0",
                f"ws://127.0.0.1:{gateway.ocpp.port}",
                "2.0.1",
                SimVehicle(
                    capacity_kwh=80,
                    soc=0.2,
                    max_charge_kw=11,
                    arrival=clock.now(),
                    departure=clock.now() + dt.timedelta(hours=8),
                    target_soc=0.8,
                ),
                clock,
                max_power_w=11_000,
                meter_interval_s=5,
                tick_s=1,
                id_token=TOKEN,
            )
            async with asyncio.TaskGroup() as tasks:
                run = tasks.create_task(charger.run(), name="sim-cp-0")

                # 1. The vehicle arrives: the session (with its ISO 15118 departure) and its SoC reach
                # the centre; the arrival re-plan makes a schedule that the charger follows.
                def arrived(db: Session) -> ChargingSession | None:
                    charging = db.scalars(select(ChargingSession)).first()
                    soc = db.scalars(
                        select(EvseTelemetryRecord.soc_percent).where(
                            EvseTelemetryRecord.soc_percent.is_not(None)
                        )
                    ).first()
                    return charging if charging is not None and charging.departure_at and soc else None

                charging = None
                async with asyncio.timeout(TIMEOUT_S):
                    while charging is None:
                        charging = await query(sessions, arrived)
                        await asyncio.sleep(0.1)
                plans = loop.stats.plans
                replans.request(SITE, f"arrival:session {charging.id}")  # until ingestion asks itself
                await until(lambda: loop.stats.plans > plans)
                first_kw = await query(sessions, planned_now_kw)
                # 48 kWh into the battery over the 8 h stay, evenly (the demand charge): about 6.5 kW.
                assert first_kw is not None and 5.5 < first_kw < 7.5, first_kw
                await until(lambda: abs(charger.power_w / 1000 - first_kw) < 0.2)

                # 2. The driver wants only 50 %: the setpoint drops within seconds.
                driver_id = await query(
                    sessions, lambda db: db.scalars(select(User.id).where(User.role == Role.DRIVER)).one()
                )
                await add(
                    sessions,
                    SessionOverride(session_id=charging.id, created_by_id=driver_id, target_soc_percent=50.0),
                )
                plans = loop.stats.plans
                replans.request(SITE, f"override:session {charging.id}")
                await until(lambda: loop.stats.plans > plans)
                second_kw = await query(sessions, planned_now_kw)
                assert second_kw is not None and second_kw < first_kw - 2.0, (first_kw, second_kw)
                await until(lambda: abs(charger.power_w / 1000 - second_kw) < 0.2)

                # 3. A DR event caps the site at 1.5 kW for the next hour: the metered import follows.
                now = utcnow()
                start, end = now - dt.timedelta(minutes=1), now + dt.timedelta(hours=1)
                await add(
                    sessions,
                    DispatchEvent(
                        program_id="dso",
                        source="api",
                        external_event_id="cap-1",
                        kind=SignalKind.DR_CAP,
                        status=SignalStatus.ACTIVE,
                        price_per_kwh=None,
                        penalty_per_kwh=10.0,
                        window_start=start,
                        window_end=end,
                        intervals=[{"start": start.isoformat(), "end": end.isoformat(), "value": 1.5}],
                        received_at=now,
                    ),
                )
                plans = loop.stats.plans
                replans.request(SITE, "event:cap-1")
                await until(lambda: loop.stats.plans > plans)
                third_kw = await query(sessions, planned_now_kw)
                assert third_kw is not None and third_kw <= 1.5 + 1e-6, third_kw
                await until(lambda: charger.power_w / 1000 <= 1.5 + 0.05)
                telemetry_seq = await query(
                    sessions,
                    lambda db: db.scalars(
                        select(TelemetryRecord.seq).order_by(TelemetryRecord.seq.desc())
                    ).first(),
                )
                async with asyncio.timeout(TIMEOUT_S):  # a reading taken after the charger followed
                    while True:
                        latest = await query(
                            sessions,
                            lambda db: db.scalars(
                                select(TelemetryRecord)
                                .where(TelemetryRecord.seq > telemetry_seq)
                                .order_by(TelemetryRecord.seq.desc())
                            ).first(),
                        )
                        if latest is not None and latest.site_import_kw <= 1.5 + 0.05:
                            break
                        await asyncio.sleep(0.1)
                run.cancel()

            (last,) = await query(
                sessions,
                lambda db: db.scalars(
                    select(ScheduleVersion).order_by(ScheduleVersion.id.desc()).limit(1)
                ).all(),
            )
            assert last.counterfactual is not None and last.inputs["events"]
            assert loop.stats.failures == 0 and publisher.published >= 3

    asyncio.run(asyncio.wait_for(scenario(), 90))
    engine.dispose()


def test_a_cap_the_gateway_reports_lowers_the_next_plan(tmp_path: Path, broker: Mosquitto) -> None:
    """The site's connection at the gateway is 4 kW, where the centre believes 20: the vehicle planned
    at about 6.5 kW gets 4, the gateway reports the cap (site limit, 4 kW) with its telemetry,
    ingestion stores it and the next plans hold the vehicle to 4 kW. The cap stays reported while the
    centre plans to it (the site is then full), so the plan after that keeps it too."""
    url = f"sqlite:///{tmp_path / 'centre.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    seed(engine)
    sessions = make_sessionmaker(engine)
    replans = ReplanRequests()
    settings = ControlSettings(poll_s=0.1, planning=PlanningSettings(tariffs=TARIFFS))
    quick = Backoff(initial_s=0.05, max_s=0.5)

    def latest_cap(db: Session) -> EvseTelemetryRecord | None:
        return db.scalars(
            select(EvseTelemetryRecord).join(TelemetryRecord).order_by(TelemetryRecord.seq.desc())
        ).first()

    def latest_plan(db: Session) -> ScheduleVersion:
        return db.scalars(select(ScheduleVersion).order_by(ScheduleVersion.id.desc()).limit(1)).one()

    def scheduled_kw(db: Session) -> list[float]:
        record = db.scalars(
            select(SetpointCommandRecord).order_by(SetpointCommandRecord.issued_at.desc())
        ).first()
        assert record is not None
        return [float(p["power_kw"]) for p in record.payload["setpoints"][0]["schedule"]]

    async def replan(loop: ControlLoop, why: str) -> None:
        plans = loop.stats.plans
        replans.request(SITE, why)
        await until(lambda: loop.stats.plans > plans)

    async def scenario() -> None:
        gateway = Gateway(
            gateway_config(broker, import_limit_kw=4),
            outbox_path=tmp_path / "outbox.sqlite",
            control_interval_s=0.5,
        )
        ingestion = Ingestion(IngestionSettings(host=broker.host, port=broker.port, backoff=quick), sessions)
        publisher = MqttSetpointPublisher(
            MqttPublisherSettings(host=broker.host, port=broker.port, backoff=quick)
        )
        async with ingestion, publisher, gateway, ControlLoop(sessions, publisher, replans, settings) as loop:
            await ingestion.wait_subscribed(TIMEOUT_S)
            clock = SimClock(utcnow(), speed=SPEED)
            charger = SimulatedCharger(
                "cp-0",
                f"ws://127.0.0.1:{gateway.ocpp.port}",
                "2.0.1",
                SimVehicle(
                    capacity_kwh=80,
                    soc=0.2,
                    max_charge_kw=11,
                    arrival=clock.now(),
                    departure=clock.now() + dt.timedelta(hours=8),
                    target_soc=0.8,
                ),
                clock,
                max_power_w=11_000,
                meter_interval_s=5,
                tick_s=1,
                id_token=TOKEN,
            )
            async with asyncio.TaskGroup() as tasks:
                run = tasks.create_task(charger.run(), name="sim-cp-0")
                async with asyncio.timeout(TIMEOUT_S):
                    while (
                        await query(sessions, lambda db: db.scalars(select(ChargingSession)).first()) is None
                    ):
                        await asyncio.sleep(0.1)

                # 1. Planned as the centre sees the site: about 6.5 kW, more than the gateway allows.
                await replan(loop, "arrival")
                first = await query(sessions, scheduled_kw)
                assert first[0] > 5.5, first
                await until(lambda: abs(charger.power_w - 4000) < 100)

                # 2. The gateway's cap reaches the centre's database with the telemetry.
                async with asyncio.timeout(TIMEOUT_S):
                    while True:
                        cap = await query(sessions, latest_cap)
                        if cap is not None and cap.limit_reason is LimitReason.SITE_LIMIT:
                            break
                        await asyncio.sleep(0.1)
                assert cap.limit_kw == pytest.approx(4.0) and cap.limit_discharge is False

                # 3. The next plan holds the vehicle to it; the cap still holds, and so does the plan after.
                for why in ("telemetry", "cadence"):
                    await replan(loop, why)
                    plan = await query(sessions, latest_plan)
                    (vehicle,) = plan.inputs["scenario"]["vehicles"]
                    assert vehicle["max_charge_kw"] == pytest.approx(4.0), why
                    assert any("limits its charge to 4.00 kW (site_limit)" in n for n in plan.inputs["notes"])
                    assert max(await query(sessions, scheduled_kw)) <= 4.0 + 1e-6, why
                    await asyncio.sleep(1.0)  # telemetry after the new command
                    cap = await query(sessions, latest_cap)
                    assert cap is not None and cap.limit_reason is LimitReason.SITE_LIMIT, why
                run.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 90))
    engine.dispose()


def test_the_publisher_keeps_commands_through_a_broker_outage_and_drops_expired_ones(
    broker: Mosquitto,
) -> None:
    quick = Backoff(initial_s=0.05, max_s=0.3)

    def command(command_id: str, valid_s: float) -> SetpointCommand:
        now = utcnow()
        return SetpointCommand(
            site_id=SITE,
            command_id=command_id,
            issued_at=now,
            valid_until=now + dt.timedelta(seconds=valid_s),
            setpoints=(EvseSetpoint(charger_id="cp-0", evse_id=1, power_kw=4.0),),
        )

    async def gateway_session() -> aiomqtt.Client:
        return aiomqtt.Client(broker.host, broker.port, identifier="gw-depot-int", clean_session=False)

    async def scenario() -> list[str]:
        async with await gateway_session() as gateway:  # a persistent session, as the gateway's uplink
            await gateway.subscribe(setpoint_topic(SITE), qos=1)
        publisher = MqttSetpointPublisher(
            MqttPublisherSettings(host=broker.host, port=broker.port, backoff=quick)
        )
        async with publisher:
            await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
            broker.stop()
            await until(lambda: not publisher.connected.is_set())
            await publisher.publish(command("stale", valid_s=0.2))
            await publisher.publish(command("fresh", valid_s=600))
            await asyncio.sleep(0.3)  # the first one expires while the broker is away
            broker.start()
            await until(lambda: publisher.published == 1)
            assert publisher.expired == 1 and publisher.queued == 0
        received: list[str] = []
        async with await gateway_session() as gateway:
            async with asyncio.timeout(TIMEOUT_S):
                async for message in gateway.messages:
                    received.append(decode(SetpointCommand, message.payload).command_id)
                    break
        return received

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == ["fresh"]
