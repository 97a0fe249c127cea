"""MQTT ingestion against a test-owned Mosquitto, storing into SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import aiomqtt
import pytest
from mosquitto import Mosquitto
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from aggregator.control.replanning import ReplanRequests
from aggregator.db.models import (
    Charger,
    ChargingSession,
    CommandStatus,
    EvseTelemetryRecord,
    GatewayStatusRecord,
    Role,
    SetpointCommandRecord,
    Site,
    TelemetryRecord,
    User,
    Vehicle,
)
from aggregator.db.session import make_sessionmaker
from aggregator.ingestion.pipeline import Counters, Ingestion, IngestionSettings
from aggregator.ingestion.store import AwaitingSoc, Received, independent
from site_gateway.uplink import Uplink, UplinkSettings
from wire.contract import (
    KIND_FOR_MODEL,
    QOS,
    RETAINED,
    AckStatus,
    CommandAck,
    GatewayState,
    GatewayStatus,
    LimitReason,
    SessionEvent,
    SiteMessage,
    Telemetry,
    TopicKind,
    build,
    decode_message,
    encode,
    telemetry_topic,
    topic,
)
from wire.reconnect import Backoff

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
        await client.publish(
            topic(m.site_id, KIND_FOR_MODEL[type(m)]), encode(m), qos=QOS, retain=retain, timeout=TIMEOUT_S
        )


async def wait_until(done: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)


def total(ing: Ingestion) -> int:
    return sum(c.received for c in ing.stats.kinds.values()) + ing.stats.unrouted.received


def telemetry(seq: int, import_kw: float, **fields: Any) -> SiteMessage:
    evses = [{"charger_id": "cp-1", "evse_id": 1, "power_kw": 11.0, "energy_kwh": 2.5}]
    return message(Telemetry, seq, site_import_kw=import_kw, evses=evses, **fields)


def command(command_id: str, site_id: str = SITE) -> SetpointCommandRecord:
    """A setpoint command as the control loop records it when publishing."""
    return SetpointCommandRecord(
        command_id=command_id,
        site_id=site_id,
        issued_at=T0,
        valid_until=T0 + dt.timedelta(minutes=15),
        payload={},
    )


def test_ingestion_stores_deduplicates_rejects_and_keeps_going(
    broker: Mosquitto, engine: Engine, seeded: Session
) -> None:
    departure = T0 + dt.timedelta(hours=9)
    seeded.add(command("c-1"))
    seeded.commit()
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

    acked = db.get(SetpointCommandRecord, "c-1")
    assert acked is not None
    assert (acked.status, acked.acked_at) == (CommandStatus.ACCEPTED, T0 + dt.timedelta(minutes=10))


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


def test_a_database_outage_loses_nothing_the_broker_sends_it_again(
    broker: Mosquitto, engine: Engine, seeded: Session
) -> None:
    """The database cannot be reached for its first three opens: what it could not store is not
    acknowledged, the connection is ended, and the broker sends it again; both messages are stored,
    none counted as lost. (Before store-before-acknowledge, one was lost: ``failed=1``.)"""

    async def scenario() -> Ingestion:
        async with ingestion(broker, engine, FailingFirst(engine, failures=3)) as ing:
            await ing.wait_subscribed(TIMEOUT_S)
            async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
                await publish(client, telemetry(1, 40.0), telemetry(2, 41.0))
                counters = ing.stats[TopicKind.TELEMETRY]
                await wait_until(lambda: counters.stored == 2)
                assert ing.running
        return ing

    ing = asyncio.run(asyncio.wait_for(scenario(), 30))
    counters = ing.stats[TopicKind.TELEMETRY]
    assert (counters.stored, counters.failed) == (2, 0) and counters.retried >= 1
    assert ing.connects >= 2  # the connection was ended so that the broker would send them again
    assert seeded.scalars(select(TelemetryRecord.seq).order_by(TelemetryRecord.seq)).all() == [1, 2]


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


# ---------------------------------------------------------------------------- batches, acks, replans

OTHER = "depot-south"


@pytest.fixture
def two_sites(seeded: Session) -> Session:
    seeded.add(Site(id=OTHER, name="Depot South", import_limit_kw=100.0, export_limit_kw=0.0))
    seeded.add(Charger(site_id=SITE, charge_point_id="cp-2", evse_id=1, max_kw=11.0))
    seeded.commit()
    return seeded


def wire(*messages: SiteMessage) -> list[tuple[str, object]]:
    """As the broker hands them over: topic and JSON bytes."""
    return [(topic(m.site_id, KIND_FOR_MODEL[type(m)]), encode(m)) for m in messages]


def offline(engine: Engine, **options: Any) -> Ingestion:
    """An ingestion fed through :meth:`Ingestion.handle_batch` (never connected to a broker)."""
    return Ingestion(
        IngestionSettings(host="127.0.0.1"),
        make_sessionmaker(engine),
        clock=lambda: T0 + dt.timedelta(hours=1),
        **options,
    )


def session_event(seq: int, kind: str, transaction_id: str | None = "tx-1", **fields: Any) -> SiteMessage:
    where: dict[str, Any] = {"charger_id": "cp-1", "evse_id": 1}
    return message(SessionEvent, seq, kind=kind, transaction_id=transaction_id, **(where | fields))


def soc_telemetry(seq: int, soc: float | None, charger_id: str = "cp-1") -> SiteMessage:
    evses = [{"charger_id": charger_id, "evse_id": 1, "power_kw": 7.0, "soc_percent": soc}]
    return message(Telemetry, seq, site_import_kw=20.0, evses=evses)


def stored_seqs(db: Session, site_id: str) -> list[int]:
    db.expire_all()
    query = (
        select(TelemetryRecord.seq).where(TelemetryRecord.site_id == site_id).order_by(TelemetryRecord.seq)
    )
    return list(db.scalars(query))


def test_a_batch_keeps_every_valid_message_when_one_breaks_its_transaction(
    engine: Engine, two_sites: Session
) -> None:
    """160 telemetry messages (with redeliveries inside the batch), a session start, a contract
    breaker, an unknown site and one message the database refuses (a seq beyond 64 bits) in the
    middle: the batch fails, is stored message by message, and only the refused one is lost."""
    replans = ReplanRequests()
    ing = offline(engine, replans=replans)
    first = [telemetry(seq, 40.0) for seq in range(1, 101)]
    again = [telemetry(seq, 99.0) for seq in range(1, 11)]  # redeliveries: the first copy wins
    other = [telemetry(seq, 30.0, site_id=OTHER) for seq in range(1, 51)]  # same seqs, other site
    refused = build(Telemetry, site_id=SITE, seq=2**63, sent_at=T0, site_import_kw=1.0)
    batch = [
        *wire(*first[:60], session_event(101, "started")),
        (telemetry_topic(SITE), b'{"site_id": "depot-north", "seq": 0}'),
        *wire(refused, telemetry(5, 1.0, site_id="depot-unknown"), *first[60:], *again, *other),
    ]

    asyncio.run(ing.handle_batch(batch))

    assert ing.stats[TopicKind.TELEMETRY] == Counters(
        received=163, stored=150, duplicates=10, rejected=2, failed=1
    )
    assert ing.stats[TopicKind.SESSION] == Counters(received=1, stored=1)
    assert (ing.stats.fallbacks, ing.stats.batches) == (1, 162)  # each valid message on its own
    assert stored_seqs(two_sites, SITE) == list(range(1, 101))
    assert stored_seqs(two_sites, OTHER) == list(range(1, 51))
    assert two_sites.scalar(select(func.count()).select_from(EvseTelemetryRecord)) == 150
    kw = two_sites.scalars(select(TelemetryRecord.site_import_kw).where(TelemetryRecord.seq <= 10))
    assert set(kw) == {40.0, 30.0}
    assert replans.take() == {SITE: ["arrival:cp-1/1"]}

    # the next batch commits at once: 100 redeliveries and one new message
    asyncio.run(ing.handle_batch(wire(*first, telemetry(101, 41.0))))
    assert (ing.stats.fallbacks, ing.stats.batches) == (1, 163)
    assert ing.stats[TopicKind.TELEMETRY].stored == 151
    assert ing.stats[TopicKind.TELEMETRY].duplicates == 110
    assert stored_seqs(two_sites, SITE) == list(range(1, 102))


def test_a_telemetry_batch_costs_the_same_statements_whatever_its_size(
    engine: Engine, seeded: Session
) -> None:
    """Bulk inserts, and no query per message (the open session waiting for a state of charge is
    matched in memory)."""
    ing = offline(engine)
    asyncio.run(ing.handle_batch(wire(session_event(1, "started"), telemetry(2, 1.0))))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        asyncio.run(ing.handle_batch(wire(*[soc_telemetry(seq, None) for seq in range(3, 13)])))
        ten = len(statements)
        statements.clear()
        asyncio.run(ing.handle_batch(wire(*[soc_telemetry(seq, None) for seq in range(13, 313)])))
        three_hundred = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert ing.stats[TopicKind.TELEMETRY].stored == 311
    assert three_hundred == ten <= 5


def test_acks_update_their_command_once_and_other_acks_are_rejected(
    engine: Engine, two_sites: Session
) -> None:
    two_sites.add_all([command("c-1"), command("c-2", site_id=OTHER)])
    two_sites.commit()
    outcome = {"charger_id": "cp-1", "evse_id": 1, "status": "rejected", "detail": "Rejected: profile"}
    ing = offline(engine)
    acks = [
        message(CommandAck, 1, command_id="c-1", status="rejected", evses=[outcome], error="x" * 1500),
        message(CommandAck, 2, command_id="c-1", status="accepted"),  # a second answer: changes nothing
        message(CommandAck, 3, command_id="c-2", status="accepted"),  # another site's command
        message(CommandAck, 4, command_id="c-404", status="accepted"),  # never sent
        message(CommandAck, 5, command_id=None, status="error", error="unreadable command"),
    ]

    asyncio.run(ing.handle_batch(wire(*acks)))

    assert ing.stats[TopicKind.ACK] == Counters(received=5, stored=1, duplicates=1, rejected=3)
    two_sites.expire_all()
    acked = two_sites.get(SetpointCommandRecord, "c-1")
    assert acked is not None
    assert (acked.status, acked.acked_at) == (CommandStatus.REJECTED, T0 + dt.timedelta(minutes=1))
    assert acked.ack_outcomes == [outcome]
    assert acked.ack_detail == "x" * 500  # the column's length
    untouched = two_sites.get(SetpointCommandRecord, "c-2")
    assert untouched is not None
    assert (untouched.status, untouched.acked_at, untouched.ack_outcomes) == (CommandStatus.PENDING, None, [])
    assert two_sites.get(SetpointCommandRecord, "c-404") is None


def test_replans_are_asked_for_arrivals_needs_departures_and_a_gateway_back_online(
    engine: Engine, seeded: Session
) -> None:
    replans = ReplanRequests()
    ing = offline(engine, replans=replans)
    first = wire(
        message(GatewayStatus, 1, state="online", since=T0),  # no status before: unknown
        message(GatewayStatus, 2, state="fallback", reason="stale setpoints", since=T0),
        message(GatewayStatus, 3, state="online", since=T0),  # from fallback: still connected
        message(GatewayStatus, 4, state="offline", reason="connection lost"),  # the last will
        session_event(5, "started"),
    )
    second = wire(
        message(GatewayStatus, 6, state="online", since=T0),
        message(GatewayStatus, 6, state="online", since=T0),  # a redelivery
        session_event(5, "started"),  # a redelivery
        session_event(7, "ev_charging_needs", energy_request_kwh=20.0),
        session_event(7, "ev_charging_needs", energy_request_kwh=20.0),
        session_event(8, "stopped", energy_kwh=19.5),
        message(SessionEvent, 9, kind="plugged_in", charger_id="cp-1", evse_id=1),
    )
    asyncio.run(ing.handle_batch(first))
    asyncio.run(ing.handle_batch(second))
    assert replans.take() == {
        SITE: ["gateway_online", "arrival:cp-1/1", "gateway_online", "needs:cp-1/1", "departure:cp-1/1"]
    }


def test_sessions_get_their_vehicle_and_the_first_soc_reported_after_they_start(
    engine: Engine, two_sites: Session
) -> None:
    driver = User(email="driver@example.com", password_hash="-", role=Role.DRIVER)
    van = Vehicle(owner=driver, name="van", battery_kwh=60.0, max_charge_kw=11.0, max_discharge_kw=0.0)
    van.id_token = "RFID1"
    two_sites.add(van)
    two_sites.commit()

    ing = offline(engine)
    asyncio.run(
        ing.handle_batch(
            wire(
                soc_telemetry(1, 30.0),  # sent before the session started: not its start
                session_event(2, "started", id_token="RFID1"),
                soc_telemetry(3, None),
                soc_telemetry(4, 42.0),
                soc_telemetry(5, 43.0),
                session_event(6, "started", "tx-2", charger_id="cp-2", id_token="NOBODY"),
                session_event(7, "started", "tx-3", charger_id="cp-1", evse_id=2),  # unknown charger
            )
        )
    )
    # after a restart, the open session still waiting for its state of charge is found again
    restarted = offline(engine)
    asyncio.run(
        restarted.handle_batch(
            wire(
                soc_telemetry(8, 55.0, charger_id="cp-2"),
                session_event(9, "stopped", energy_kwh=10.0),
                session_event(10, "started", "tx-4"),  # the id token comes with the stop
                session_event(11, "stopped", "tx-4", id_token="RFID1", energy_kwh=1.0),
            )
        )
    )

    two_sites.expire_all()
    rows = {s.transaction_id: s for s in two_sites.scalars(select(ChargingSession))}
    assert (rows["tx-1"].vehicle_id, rows["tx-1"].soc_at_start_percent) == (van.id, 42.0)
    assert (rows["tx-2"].vehicle_id, rows["tx-2"].soc_at_start_percent) == (None, 55.0)
    assert (rows["tx-4"].vehicle_id, rows["tx-4"].soc_at_start_percent) == (van.id, None)
    assert "tx-3" not in rows


def test_a_backlog_from_the_broker_is_stored_in_bounded_batches(
    broker: Mosquitto, engine: Engine, two_sites: Session
) -> None:
    """What the broker kept for the centre's persistent session while it was away (240 messages,
    20 of them redeliveries) arrives as a burst: all stored, batches at most 16 messages."""
    backlog = [telemetry(seq, float(seq)) for seq in range(1, 121)]
    backlog += [telemetry(seq, 0.0, site_id=OTHER) for seq in range(1, 101)]
    backlog += [telemetry(seq, -1.0) for seq in range(101, 121)]
    settings = IngestionSettings(
        host=broker.host, port=broker.port, timeout_s=5.0, batch_max_messages=16, max_pending=64
    )

    async def scenario() -> Ingestion:
        async with Ingestion(settings, make_sessionmaker(engine)) as ing:
            await ing.wait_subscribed(TIMEOUT_S)  # the broker now keeps a session for the centre
        async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
            await publish(client, *backlog)
        async with Ingestion(settings, make_sessionmaker(engine)) as ing:
            counters = ing.stats[TopicKind.TELEMETRY]
            await wait_until(lambda: counters.stored + counters.duplicates == len(backlog))
        return ing

    ing = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert ing.stats[TopicKind.TELEMETRY] == Counters(received=240, stored=220, duplicates=20)
    assert ing.stats.batches >= 240 // 16 and ing.stats.fallbacks == 0
    assert stored_seqs(two_sites, SITE) == list(range(1, 121))
    assert stored_seqs(two_sites, OTHER) == list(range(1, 101))
    two_sites.expire_all()
    assert two_sites.scalar(select(func.max(TelemetryRecord.site_import_kw))) == 120.0  # first copies


# --------------------------------------------------------------------- shared telemetry subscription


def test_telemetry_shared_among_consumers_is_stored_once_and_events_keep_their_order(
    broker: Mosquitto, engine: Engine, two_sites: Session
) -> None:
    """Three connections share the telemetry subscription, the main one takes the rest: every
    telemetry message arrives once in all (not once per connection), and each site's session events
    and statuses, sent between its telemetry, still apply in the order sent."""
    replans = ReplanRequests()
    settings = IngestionSettings(
        host=broker.host,
        port=broker.port,
        timeout_s=5.0,
        backoff=Backoff(initial_s=0.05, max_s=0.5),
        telemetry_consumers=3,
        batch_max_messages=20,
    )
    sent: list[SiteMessage] = []
    for seq in range(1, 121):
        sent += [telemetry(seq, float(seq)), telemetry(seq, 0.0, site_id=OTHER)]
        if seq == 30:
            sent.append(session_event(1000, "started"))
        if seq == 60:
            sent.append(session_event(1001, "ev_charging_needs", energy_request_kwh=20.0))
            sent.append(message(GatewayStatus, 1002, state="fallback", reason="stale", since=T0))
        if seq == 90:
            sent.append(session_event(1003, "stopped", energy_kwh=19.5))
            sent.append(message(GatewayStatus, 1004, state="offline", reason="connection lost"))
    sent.append(telemetry(5, 5.0))  # a redelivery

    async def scenario() -> Ingestion:
        async with Ingestion(settings, make_sessionmaker(engine), replans=replans) as ing:
            await ing.wait_subscribed(TIMEOUT_S)
            async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
                await publish(client, *sent)
            counters = ing.stats[TopicKind.TELEMETRY]
            await wait_until(lambda: counters.stored + counters.duplicates == 241)
            await wait_until(lambda: ing.stats[TopicKind.SESSION].stored == 3)
            await wait_until(lambda: ing.stats[TopicKind.STATUS].stored == 2)
            assert ing.connects == 4
        return ing

    ing = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert ing.stats[TopicKind.TELEMETRY] == Counters(received=241, stored=240, duplicates=1)
    assert ing.stats[TopicKind.SESSION] == Counters(received=3, stored=3)
    assert ing.stats[TopicKind.STATUS] == Counters(received=2, stored=2)
    assert stored_seqs(two_sites, SITE) == list(range(1, 121))
    assert stored_seqs(two_sites, OTHER) == list(range(1, 121))
    assert replans.take() == {SITE: ["arrival:cp-1/1", "needs:cp-1/1", "departure:cp-1/1"]}
    status = two_sites.get(GatewayStatusRecord, SITE)
    assert status is not None
    assert (status.state, status.last_seq) == (GatewayState.OFFLINE, 1004)


def test_telemetry_consumers_must_be_at_least_one(engine: Engine) -> None:
    with pytest.raises(ValueError, match="telemetry_consumers must be at least 1, got 0"):
        Ingestion(IngestionSettings(host="127.0.0.1", telemetry_consumers=0), make_sessionmaker(engine))


def test_messages_beyond_max_pending_wait_in_the_client_and_keep_their_order(
    broker: Mosquitto, engine: Engine, seeded: Session
) -> None:
    """A backlog of 150 messages against room for 8: those that find the queue full wait in the MQTT
    client's queue and come after the ones before them, so none of 50 statuses (each newer than the
    last) arrives after a newer one and is taken for stale."""
    backlog: list[SiteMessage] = []
    for seq in range(1, 151):  # every third a status
        if seq % 3 == 0:
            backlog.append(message(GatewayStatus, seq, state="online" if seq % 2 else "fallback", since=T0))
        else:
            backlog.append(telemetry(seq, float(seq)))
    settings = IngestionSettings(
        host=broker.host, port=broker.port, timeout_s=5.0, batch_max_messages=4, max_pending=8
    )

    async def scenario() -> Ingestion:
        async with Ingestion(settings, make_sessionmaker(engine)) as ing:
            await ing.wait_subscribed(TIMEOUT_S)
        async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
            await publish(client, *backlog)
        async with Ingestion(settings, make_sessionmaker(engine)) as ing:
            status, counters = ing.stats[TopicKind.STATUS], ing.stats[TopicKind.TELEMETRY]
            await wait_until(lambda: counters.stored == 100 and status.stored + status.duplicates >= 50)
            assert ing.pending <= 8
        return ing

    ing = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert ing.stats[TopicKind.TELEMETRY] == Counters(received=100, stored=100)
    # the broker hands the retained status (seq 150) again on the resubscription: a duplicate
    assert ing.stats[TopicKind.STATUS].stored == 50
    assert ing.stats[TopicKind.STATUS].received - ing.stats[TopicKind.STATUS].duplicates == 50
    status = seeded.get(GatewayStatusRecord, SITE)
    assert status is not None and status.last_seq == 150


def test_telemetry_writers_must_be_at_least_one(engine: Engine) -> None:
    with pytest.raises(ValueError, match="telemetry_writers must be at least 1, got 0"):
        Ingestion(IngestionSettings(host="127.0.0.1", telemetry_writers=0), make_sessionmaker(engine))


# ------------------------------------------------------------------ telemetry batches stored at once


def decoded(*messages: SiteMessage) -> list[Received]:
    """As the writer has them once decoded."""
    topics = [topic(m.site_id, KIND_FOR_MODEL[type(m)]) for m in messages]
    return [
        Received(t, parsed.kind, payload, T0)
        for t, m in zip(topics, messages, strict=True)
        for parsed, payload in [decode_message(t, encode(m))]
    ]


def test_only_telemetry_without_an_awaited_state_of_charge_is_independent() -> None:
    """What may be stored alongside other batches: telemetry alone, none of it the state of charge
    (at or after the start) of an open session still waiting for one."""
    waiting = {(SITE, "cp-1", 1): AwaitingSoc(session_id=7, started_at=T0 + dt.timedelta(minutes=10))}
    plain = decoded(telemetry(11, 1.0), soc_telemetry(12, None), soc_telemetry(13, 50.0, charger_id="cp-2"))
    assert independent(plain, waiting)
    assert independent(plain, {})
    assert not independent(plain, None)  # not loaded yet: the first batch is stored alone
    assert independent(decoded(soc_telemetry(9, 30.0)), waiting)  # sent before the session started
    assert not independent(decoded(telemetry(11, 1.0), soc_telemetry(10, 30.0)), waiting)
    assert not independent(decoded(telemetry(11, 1.0), session_event(12, "plugged_in")), {})
    assert not independent(decoded(message(GatewayStatus, 12, state="online", since=T0)), {})
    assert not independent(decoded(message(CommandAck, 12, command_id="c-1", status="accepted")), {})


class Concurrency:
    """Watches an engine's transactions: the most open at once. With ``meet`` (PostgreSQL), the
    telemetry inserts number 2 and 3 (of independent batches: the first batch is stored alone) wait
    for each other, so they must be in two transactions at once or the batches fail."""

    def __init__(self, engine: Engine, *, meet: bool) -> None:
        self.engine, self.meet = engine, meet
        self.open = self.peak = self.inserts = 0
        self.lock = threading.Lock()
        self.rendezvous = threading.Barrier(2, timeout=TIMEOUT_S)

    def begin(self, conn: Any) -> None:
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)

    def end(self, conn: Any) -> None:
        with self.lock:
            self.open -= 1

    def execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.startswith("WITH message AS"):
            return
        with self.lock:
            self.inserts += 1
            meet = self.meet and self.inserts in (2, 3)
        if meet:
            self.rendezvous.wait()

    def __enter__(self) -> Self:
        for name, fn in self._listeners():
            event.listen(self.engine, name, fn)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._listeners():
            event.remove(self.engine, name, fn)

    def _listeners(self) -> list[tuple[str, Callable[..., None]]]:
        return [
            ("begin", self.begin),
            ("commit", self.end),
            ("rollback", self.end),
            ("before_cursor_execute", self.execute),
        ]


def test_telemetry_batches_stored_at_once_keep_every_guarantee(
    broker: Mosquitto, engine: Engine, two_sites: Session
) -> None:
    """Two sites' telemetry (with redeliveries, some in later batches) in batches of at most 8, up
    to 3 stored at once on PostgreSQL (one at a time on SQLite), with one site's session events and
    statuses in between: each message is stored once with its reading, the counters are exact, the
    events and statuses apply in the order sent, and the session gets the first state of charge sent
    after its start."""
    postgres = engine.dialect.name == "postgresql"
    replans = ReplanRequests()
    settings = IngestionSettings(
        host=broker.host,
        port=broker.port,
        timeout_s=5.0,
        backoff=Backoff(initial_s=0.05, max_s=0.5),
        batch_max_messages=8,
        telemetry_writers=3,
    )
    seqs = itertools.count(1)  # one counter for all of SITE's messages, as its uplink has
    sent: list[SiteMessage] = []
    site_telemetry: list[int] = []
    start = last_status = 0
    for k in range(1, 121):
        seq = next(seqs)
        sent.append(soc_telemetry(seq, seq / 2 if start else None))
        site_telemetry.append(seq)
        sent.append(telemetry(k, float(k), site_id=OTHER))
        if k % 15 == 0:  # redeliveries, which may fall into a batch stored alongside the first copy's
            sent += [soc_telemetry(site_telemetry[-4], None), telemetry(k - 3, 0.0, site_id=OTHER)]
        if k == 40:
            start = next(seqs)
            sent.append(session_event(start, "started"))
        if k == 70:
            sent.append(session_event(next(seqs), "ev_charging_needs", energy_request_kwh=20.0))
            sent.append(message(GatewayStatus, next(seqs), state="fallback", reason="stale", since=T0))
        if k == 100:
            sent.append(session_event(next(seqs), "stopped", energy_kwh=19.5))
            last_status = next(seqs)
            sent.append(message(GatewayStatus, last_status, state="online", since=T0))
    telemetry_sent = sum(isinstance(m, Telemetry) for m in sent)

    async def scenario() -> Ingestion:
        async with Ingestion(settings, make_sessionmaker(engine), replans=replans) as ing:
            await ing.wait_subscribed(TIMEOUT_S)
            async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
                await publish(client, *sent)
            counters = ing.stats[TopicKind.TELEMETRY]
            await wait_until(
                lambda: counters.stored + counters.duplicates + counters.failed == telemetry_sent
            )
            await wait_until(
                lambda: ing.stats[TopicKind.STATUS].stored + ing.stats[TopicKind.SESSION].stored == 5
            )
        return ing

    with Concurrency(engine, meet=postgres) as concurrency:
        ing = asyncio.run(asyncio.wait_for(scenario(), 30))

    assert concurrency.peak >= 2 if postgres else concurrency.peak == 1
    assert ing.stats.fallbacks == 0
    assert ing.stats[TopicKind.TELEMETRY] == Counters(received=telemetry_sent, stored=240, duplicates=16)
    assert ing.stats[TopicKind.SESSION] == Counters(received=3, stored=3)
    assert ing.stats[TopicKind.STATUS] == Counters(received=2, stored=2)
    assert stored_seqs(two_sites, SITE) == site_telemetry
    assert stored_seqs(two_sites, OTHER) == list(range(1, 121))
    assert two_sites.scalar(select(func.count()).select_from(EvseTelemetryRecord)) == 240
    assert replans.take() == {SITE: ["arrival:cp-1/1", "needs:cp-1/1", "departure:cp-1/1"]}
    status = two_sites.get(GatewayStatusRecord, SITE)
    assert status is not None
    assert (status.state, status.last_seq) == (GatewayState.ONLINE, last_status)
    (charging,) = two_sites.scalars(select(ChargingSession)).all()
    # the first state of charge after the start: the next telemetry's (sent 1 minute later)
    assert (charging.soc_at_start_percent, charging.energy_kwh) == ((start + 1) / 2, 19.5)


def test_last_seen_only_moves_forward(engine: Engine, seeded: Session) -> None:
    """Batches may commit out of arrival order (stored at once): an earlier reception time committed
    later does not move ``last_seen_at`` back."""
    now = [T0 + dt.timedelta(hours=2)]
    ing = Ingestion(IngestionSettings(host="127.0.0.1"), make_sessionmaker(engine), clock=lambda: now[0])
    asyncio.run(
        ing.handle_batch(wire(message(GatewayStatus, 1, state="online", since=T0), telemetry(2, 1.0)))
    )
    now[0] = T0 + dt.timedelta(hours=1)
    asyncio.run(ing.handle_batch(wire(telemetry(3, 1.0))))
    seeded.expire_all()
    status = seeded.get(GatewayStatusRecord, SITE)
    assert status is not None and status.last_seen_at == T0 + dt.timedelta(hours=2)
    now[0] = T0 + dt.timedelta(hours=3)
    asyncio.run(ing.handle_batch(wire(telemetry(4, 1.0))))
    seeded.expire_all()
    status = seeded.get(GatewayStatusRecord, SITE)
    assert status is not None and status.last_seen_at == T0 + dt.timedelta(hours=3)


def test_the_caps_a_gateway_reports_are_stored_with_each_reading(engine: Engine, seeded: Session) -> None:
    """In a batch (the bulk insert) and on its own (after the batch failed on another message), each
    EVSE reading keeps its cap: power, reason and direction; a reading without one stores none."""
    ing = offline(engine)

    def capped(seq: int, limit: dict[str, Any] | None) -> SiteMessage:
        evses = [{"charger_id": "cp-1", "evse_id": 1, "power_kw": -5.0, "energy_kwh": -0.4, "limit": limit}]
        return message(Telemetry, seq, site_import_kw=-5.0, evses=evses)

    export_cap = {"power_kw": 5.0, "reason": "site_limit", "discharge": True}
    charge_cap = {"power_kw": 3.7, "reason": "reserve"}
    refused = build(Telemetry, site_id=SITE, seq=2**63, sent_at=T0, site_import_kw=1.0)
    asyncio.run(ing.handle_batch(wire(capped(1, export_cap), capped(2, None))))
    asyncio.run(ing.handle_batch(wire(capped(3, charge_cap), refused)))  # fails: stored one by one

    seeded.expire_all()
    rows = seeded.execute(
        select(
            TelemetryRecord.seq,
            EvseTelemetryRecord.limit_kw,
            EvseTelemetryRecord.limit_reason,
            EvseTelemetryRecord.limit_discharge,
            EvseTelemetryRecord.energy_kwh,
        )
        .join(TelemetryRecord)
        .order_by(TelemetryRecord.seq)
    ).all()
    assert [tuple(r) for r in rows] == [
        (1, 5.0, LimitReason.SITE_LIMIT, True, -0.4),
        (2, None, None, None, -0.4),
        (3, 3.7, LimitReason.RESERVE, False, -0.4),
    ]
