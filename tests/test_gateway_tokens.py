"""Every id token reaches the centre's session: a simulated station, the whole gateway, Mosquitto and
the centre's ingestion on SQLite and PostgreSQL.

On OCPP 2.0.1 a driver may tap the card after plugging in: the transaction starts without a token and
a TransactionEvent(Updated, Authorized) brings it. Before, the gateway kept that token to itself and
the centre's session stayed without a driver (``id_token`` null) for settlement. On 1.6 the card is read
before the transaction starts (Authorize, then StartTransaction with the idTag).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from mosquitto import Mosquitto
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from test_gateway import config, until

from aggregator.db.models import Charger, ChargingSession, Role, Site, User, Vehicle
from aggregator.db.session import make_sessionmaker
from aggregator.ingestion.pipeline import Ingestion, IngestionSettings
from chargersim.clock import SimClock
from chargersim.stations import Protocol, SimulatedCharger
from chargersim.vehicles import Vehicle as SimVehicle
from site_gateway.gateway import Gateway
from wire.reconnect import Backoff

SITE = "depot-tokens"
CARD = "04A2B3C4D5"


def centre_session(engine: Engine) -> ChargingSession | None:
    with make_sessionmaker(engine)() as db:
        return db.scalars(select(ChargingSession).where(ChargingSession.site_id == SITE)).first()


@pytest.mark.parametrize("protocol", ["2.0.1", "1.6"])
def test_a_card_tapped_after_plug_in_reaches_the_centres_session(
    protocol: Protocol, broker: Mosquitto, engine: Engine, session: Session, tmp_path: Path
) -> None:
    session.add(Site(id=SITE, name="Depot", import_limit_kw=50.0, export_limit_kw=0.0))
    session.add(Charger(site_id=SITE, charge_point_id="cp-0", evse_id=1, max_kw=11.0))
    driver = User(email="driver@example.com", password_hash="-", role=Role.DRIVER)
    van = Vehicle(owner=driver, name="van", battery_kwh=60.0, max_charge_kw=11.0, max_discharge_kw=0.0)
    van.id_token = CARD
    session.add(van)
    session.commit()

    async def scenario() -> None:
        clock = SimClock(dt.datetime.now(dt.UTC), speed=60.0)
        ingestion = Ingestion(
            IngestionSettings(
                host=broker.host,
                port=broker.port,
                client_id=f"centre-{protocol}",
                timeout_s=5.0,
                backoff=Backoff(initial_s=0.05, max_s=0.5),
            ),
            make_sessionmaker(engine),
        )
        gateway = Gateway(config(SITE, broker, import_limit_kw=50), outbox_path=tmp_path / "outbox.sqlite")
        sim = SimulatedCharger(
            "cp-0",
            "",
            protocol,
            SimVehicle(capacity_kwh=60, soc=0.3, max_charge_kw=11, arrival=clock.now()),
            clock,
            max_power_w=11_000,
            meter_interval_s=30,
            tick_s=5,
            id_token=CARD,
            token_at_plug_in=False,  # 2.x: the card comes later; 1.6 reads it before the start
        )
        async with ingestion, gateway, asyncio.TaskGroup() as tasks:
            await ingestion.wait_subscribed(10)
            sim.url = f"ws://127.0.0.1:{gateway.ocpp.port}"
            running = tasks.create_task(sim.run(), name="sim-cp-0")
            await until(lambda: centre_session(engine) is not None)
            if protocol != "1.6":
                started = centre_session(engine)
                assert started is not None and started.id_token is None  # plugged in, no card yet
                sim.tap_card()
            await until(lambda: (row := centre_session(engine)) is not None and row.id_token == CARD)
            row = centre_session(engine)
            assert row is not None and row.vehicle_id == van.id  # the card's vehicle, for settlement
            running.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 60))
