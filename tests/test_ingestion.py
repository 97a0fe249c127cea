"""MQTT ingestion against a test-owned Mosquitto, storing into SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import mosquitto
import pytest
from mosquitto import Mosquitto
from postgres import database_url, engine, postgres_database_url, postgres_server, session
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from aggregator.db.models import (
    Charger,
    ChargingSession,
    EvseTelemetryRecord,
    GatewayStatusRecord,
    Site,
    TelemetryRecord,
)
from aggregator.db.session import make_sessionmaker
from aggregator.ingestion import Counters, Ingestion, IngestionSettings
from site_gateway.contract import (
    KIND_FOR_MODEL,
    QOS,
    RETAINED,
    AckStatus,
    CommandAck,
    GatewayState,
    GatewayStatus,
    SessionEvent,
    SiteMessage,
    Telemetry,
    TopicKind,
    build,
    encode,
    telemetry_topic,
    topic_for,
)
from site_gateway.uplink import Backoff, Uplink, UplinkSettings

__all__ = ["database_url", "engine", "postgres_database_url", "postgres_server", "session"]

broker = mosquitto.broker

SITE = "depot-north"
T0 = dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC)
TIMEOUT_S = 10.0


@pytest.fixture
def seeded(session: Session) -> Session:
    session.add(Site(id=SITE, name="Depot North", import_limit_kw=200.0, export_limit_kw=100.0))
    session.add(Charger(site_id=SITE, charge_point_id="cp-1", evse_id=1, max_kw=22.0, bidirectional=True))
    session.commit()
    return session


def ingestion(mq: Mosquitto, engine: Engine, sessions: Callable[[], Session] | None = None) -> Ingestion:
    settings = IngestionSettings(
        host=mq.host, port=mq.port, timeout_s=5.0, backoff=Backoff(initial_s=0.05, max_s=0.5)
    )
    return Ingestion(
        settings, sessions or make_sessionmaker(engine), clock=lambda: T0 + dt.timedelta(hours=1)
    )


def message(model: type[SiteMessage], seq: int, *, site_id: str = SITE, **fields: Any) -> SiteMessage:
    return build(model, site_id=site_id, seq=seq, sent_at=T0 + dt.timedelta(minutes=seq), **fields)


async def publish(client: aiomqtt.Client, *messages: SiteMessage) -> None:
    for m in messages:
        retain = KIND_FOR_MODEL[type(m)] in RETAINED  # as the gateway does: statuses are retained
        await client.publish(topic_for(m), encode(m), qos=QOS, retain=retain, timeout=TIMEOUT_S)


async def wait_until(done: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)


def total(ing: Ingestion) -> int:
    return sum(c.received for c in ing.stats.kinds.values()) + ing.stats.unrouted.received


def telemetry(seq: int, import_kw: float, **fields: Any) -> SiteMessage:
    evses = [{"charger_id": "cp-1", "evse_id": 1, "power_kw": 11.0, "energy_kwh": 2.5}]
    return message(Telemetry, seq, site_import_kw=import_kw, evses=evses, **fields)


def test_ingestion_stores_deduplicates_rejects_and_keeps_going(
    broker: Mosquitto, engine: Engine, seeded: Session
) -> None:
    departure = T0 + dt.timedelta(hours=9)
    sent = [
        telemetry(1, 40.0),
        telemetry(2, 41.0),
        telemetry(1, 40.0),  # a redelivery
        message(
            SessionEvent,
            3,
            kind="started",
            charger_id="cp-1",
            evse_id=1,
            transaction_id="tx-9",
            id_token="RFID1",
        ),
        message(
            SessionEvent,
            4,
            kind="ev_charging_needs",
            charger_id="cp-1",
            evse_id=1,
            departure_time=departure,
            energy_request_kwh=30.0,
        ),
        message(
            SessionEvent,
            3,
            kind="started",
            charger_id="cp-1",
            evse_id=1,
            transaction_id="tx-9",
            id_token="RFID1",
        ),
        message(SessionEvent, 5, kind="plugged_in", charger_id="cp-1", evse_id=1),
        message(
            SessionEvent,
            6,
            kind="stopped",
            charger_id="cp-1",
            evse_id=1,
            transaction_id="tx-9",
            energy_kwh=28.5,
        ),
        message(SessionEvent, 7, kind="started", charger_id="cp-404", evse_id=1, transaction_id="tx-1"),
        message(GatewayStatus, 9, state="fallback", reason="no setpoints", since=T0),
        message(GatewayStatus, 8, state="online", since=T0),  # older, arrives late
        message(CommandAck, 10, command_id="c-1", status=AckStatus.ACCEPTED),
        telemetry(1, 5.0, site_id="depot-unknown"),
    ]

    async def scenario() -> Ingestion:
        async with ingestion(broker, engine) as ing:
            await ing.wait_subscribed(TIMEOUT_S)
            async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
                await publish(client, *sent)
                await client.publish(
                    telemetry_topic(SITE), b'{"site_id": "depot-north", "seq": "x"}', qos=QOS
                )
                await client.publish(telemetry_topic(SITE), b"\xff not json", qos=QOS)
                await wait_until(lambda: total(ing) == len(sent) + 2)
                assert ing.running
                await publish(client, telemetry(11, 42.0))  # ingestion goes on after the bad ones
                await wait_until(lambda: ing.stats[TopicKind.TELEMETRY].stored == 3)
            return ing

    ing = asyncio.run(asyncio.wait_for(scenario(), 30))

    assert ing.stats[TopicKind.TELEMETRY] == Counters(received=7, stored=3, duplicates=1, rejected=3)
    assert ing.stats[TopicKind.SESSION] == Counters(received=6, stored=3, duplicates=1, ignored=1, rejected=1)
    assert ing.stats[TopicKind.STATUS] == Counters(received=2, stored=1, duplicates=1)
    assert ing.stats[TopicKind.ACK] == Counters(received=1, stored=1)

    db = seeded
    db.expire_all()
    rows = db.scalars(select(TelemetryRecord).order_by(TelemetryRecord.seq)).all()
    assert [(r.site_id, r.seq, r.site_import_kw) for r in rows] == [
        (SITE, 1, 40.0),
        (SITE, 2, 41.0),
        (SITE, 11, 42.0),
    ]
    assert rows[0].received_at == T0 + dt.timedelta(hours=1)
    assert db.scalar(select(func.count()).select_from(EvseTelemetryRecord)) == 3

    (charging,) = db.scalars(select(ChargingSession)).all()
    assert charging.transaction_id == "tx-9"
    assert charging.id_token == "RFID1"
    assert charging.started_at == T0 + dt.timedelta(minutes=3)
    assert charging.departure_at == departure
    assert charging.energy_request_kwh == 30.0
    assert charging.stopped_at == T0 + dt.timedelta(minutes=6)
    assert charging.energy_kwh == 28.5

    status = db.get(GatewayStatusRecord, SITE)
    assert status is not None
    assert (status.state, status.reason, status.last_seq) == (GatewayState.FALLBACK, "no setpoints", 9)
    assert status.last_seen_at == T0 + dt.timedelta(hours=1)


def test_the_last_will_applies_in_arrival_order_and_a_persistent_session_catches_up(
    broker: Mosquitto, engine: Engine, seeded: Session
) -> None:
    async def scenario() -> None:
        async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
            async with ingestion(broker, engine) as ing:
                await ing.wait_subscribed(TIMEOUT_S)
                await publish(client, message(GatewayStatus, 2, state="online", since=T0))
                await wait_until(lambda: ing.stats[TopicKind.STATUS].stored == 1)
            # while the centre is away, the broker keeps its session's messages
            will = message(GatewayStatus, 1, state="offline", reason="connection lost")
            await publish(client, telemetry(3, 40.0), will)
            async with ingestion(broker, engine) as ing:
                await wait_until(lambda: ing.stats[TopicKind.STATUS].stored >= 1)
                await wait_until(lambda: ing.stats[TopicKind.TELEMETRY].stored == 1)

    asyncio.run(asyncio.wait_for(scenario(), 30))
    seeded.expire_all()
    status = seeded.get(GatewayStatusRecord, SITE)
    assert status is not None
    assert (status.state, status.reason, status.last_seq) == (GatewayState.OFFLINE, "connection lost", 2)
    assert seeded.scalar(select(func.count()).select_from(TelemetryRecord)) == 1


class FailingFirst:
    """Sessions whose first ``failures`` opens fail as a lost database connection would."""

    def __init__(self, engine: Engine, failures: int) -> None:
        self.sessions = make_sessionmaker(engine)
        self.failures = failures

    def __call__(self) -> Session:
        if self.failures > 0:
            self.failures -= 1
            raise OperationalError("SELECT", {}, ConnectionError("database went away"))
        return self.sessions()


def test_a_database_error_loses_one_message_and_ingestion_goes_on(
    broker: Mosquitto, engine: Engine, seeded: Session
) -> None:
    async def scenario() -> Ingestion:
        async with ingestion(broker, engine, FailingFirst(engine, failures=1)) as ing:
            await ing.wait_subscribed(TIMEOUT_S)
            async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
                await publish(client, telemetry(1, 40.0), telemetry(2, 41.0))
                counters = ing.stats[TopicKind.TELEMETRY]
                await wait_until(lambda: counters.stored + counters.failed == 2)
                assert ing.running
        return ing

    ing = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert ing.stats[TopicKind.TELEMETRY] == Counters(received=2, stored=1, failed=1)
    assert seeded.scalars(select(TelemetryRecord.seq)).all() == [2]


def test_messages_from_a_real_uplink_are_stored(
    broker: Mosquitto, engine: Engine, seeded: Session, tmp_path: Path
) -> None:
    uplink_settings = UplinkSettings(
        site_id=SITE,
        host=broker.host,
        port=broker.port,
        outbox_path=tmp_path / "outbox.sqlite",
        backoff=Backoff(initial_s=0.05, max_s=0.5),
        timeout_s=5.0,
    )
    evses = [{"charger_id": "cp-1", "evse_id": 1, "power_kw": 7.4}]

    async def scenario() -> None:
        async with ingestion(broker, engine) as ing:
            await ing.wait_subscribed(TIMEOUT_S)
            async with Uplink(uplink_settings) as uplink:
                await uplink.wait_connected(TIMEOUT_S)
                for kw in (10.0, 20.0, 30.0):
                    uplink.send(Telemetry, site_import_kw=kw, evses=evses)
                await uplink.flush(TIMEOUT_S)
                await wait_until(lambda: ing.stats[TopicKind.TELEMETRY].stored == 3)
                await wait_until(lambda: ing.stats[TopicKind.STATUS].stored >= 1)

    asyncio.run(asyncio.wait_for(scenario(), 30))
    seeded.expire_all()
    assert seeded.scalars(select(TelemetryRecord.site_import_kw).order_by(TelemetryRecord.seq)).all() == [
        10.0,
        20.0,
        30.0,
    ]
    status = seeded.get(GatewayStatusRecord, SITE)
    assert status is not None
    assert status.state in (GatewayState.ONLINE, GatewayState.OFFLINE)  # offline once the uplink exits
