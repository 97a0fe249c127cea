"""A setpoint belongs to a session, from the centre's side: with real peers (a test-owned Mosquitto,
the site gateway with a simulated OCPP 2.0.1 charger, the centre's ingestion and the control loop
publishing over MQTT, on SQLite), every command the centre publishes names the transaction of the
session its vehicle stands for, and a plan made for a session that has since stopped sends nothing
for the next car on that EVSE.

The stale plan is made as the control loop makes one whose inputs were read before the first car left
(a solve that outlasts the stop): its ``plan_inputs`` hands back the first session's inputs. Before
this rule the centre sent that plan's setpoint naming no transaction, and the gateway bound it to the
second car's transaction (the test fails there).

The transaction id is a field added within schema version 1, so the centre names it only to a gateway
whose status says it reads it (``GatewayStatus.reads``); a gateway from before the field refuses any
command that carries it. The gateway here says so; one that does not (as a gateway from before the
field) gets commands a strict reader without the field accepts (before the handshake the centre named
the transaction to every gateway, and that reader refused them: the test fails there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mosquitto import Mosquitto
from pydantic import BaseModel, ValidationError, create_model
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_control_integration import SITE, TARIFFS, TIMEOUT_S, TOKEN, gateway_config, query, seed, until

from aggregator.control.inputs import PlanInputs, PlanningSettings, site_plan_inputs
from aggregator.control.loop import ControlLoop, ControlSettings
from aggregator.control.replanning import ReplanRequests
from aggregator.control.schedules import read_plan
from aggregator.control.setpoints import (
    MqttPublisherSettings,
    MqttSetpointPublisher,
    gateway_reads,
    setpoint_command,
)
from aggregator.db.migrate import upgrade
from aggregator.db.models import ChargingSession, GatewayStatusRecord, utcnow
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.ingestion.pipeline import Ingestion, IngestionSettings
from chargersim.clock import SimClock
from chargersim.stations import SimulatedCharger
from chargersim.vehicles import Vehicle as SimVehicle
from site_gateway.gateway import Gateway
from wire.contract import (
    READS_SETPOINT_TRANSACTION_ID,
    EvseSetpoint,
    GatewayState,
    SetpointCommand,
    decode,
    encode,
    setpoint_topic,
)
from wire.reconnect import Backoff

SPEED = 10.0
"""Simulated seconds per real second for the charger."""
EVSE = "cp-0/1"


def sim_vehicle(clock: SimClock) -> SimVehicle:
    now = clock.now()
    return SimVehicle(
        capacity_kwh=80,
        soc=0.2,
        max_charge_kw=11,
        arrival=now,
        departure=now + dt.timedelta(hours=8),
        target_soc=0.8,
    )


def open_session(db: Session) -> ChargingSession | None:
    """The centre's open session on cp-0 with its transaction id, if there is one."""
    return db.scalars(
        select(ChargingSession).where(
            ChargingSession.stopped_at.is_(None), ChargingSession.transaction_id.is_not(None)
        )
    ).first()


def _as_before(model: type[BaseModel], *, dropped: str = "", **replaced: Any) -> type[BaseModel]:
    """``model`` as a reader from before its field ``dropped``: every other field (those ``replaced``
    as given), unknown fields refused as the contract's models refuse them."""
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in model.model_fields.items() if name != dropped
    }
    fields.update(replaced)
    return create_model(f"Pre{model.__name__}", __config__=model.model_config, **fields)


PreTransactionSetpoint = _as_before(EvseSetpoint, dropped="transaction_id")
PreTransactionCommand = _as_before(
    SetpointCommand,
    setpoints=(
        tuple[PreTransactionSetpoint, ...],  # type: ignore[valid-type]  # a model made at run time
        SetpointCommand.model_fields["setpoints"],
    ),
)
"""A setpoint command as a gateway from before ``EvseSetpoint.transaction_id`` reads it."""


def held_for(gateway: Gateway) -> str | None:
    """The transaction the gateway holds a setpoint of the centre's for at the EVSE, if any."""
    held = gateway.setpoints.get(EVSE)
    return None if held is None else held.transaction_id


def test_a_command_names_its_session_and_a_stopped_sessions_plan_is_not_sent_to_the_next_car(
    tmp_path: Path, broker: Mosquitto
) -> None:
    url = f"sqlite:///{tmp_path / 'centre.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    seed(engine)
    sessions = make_sessionmaker(engine)
    replans = ReplanRequests()
    settings = ControlSettings(poll_s=0.1, planning=PlanningSettings(tariffs=TARIFFS))
    quick = Backoff(initial_s=0.05, max_s=0.5)
    stale: list[PlanInputs] = []
    """When it holds inputs, every plan is made from them (a plan whose inputs were read earlier)."""

    def plan_inputs(db: Session, site_id: str, now: dt.datetime, planning: PlanningSettings) -> PlanInputs:
        return stale[0] if stale else site_plan_inputs(db, site_id, now, planning)

    published: list[SetpointCommand] = []

    async def listen(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            published.append(decode(SetpointCommand, message.payload))

    def named(transaction_id: str) -> list[SetpointCommand]:
        return [c for c in published if c.setpoints[0].transaction_id == transaction_id]

    async def replan(loop: ControlLoop, why: str) -> None:
        plans = loop.stats.plans
        replans.request(SITE, why)
        await until(lambda: loop.stats.plans > plans)

    async def scenario() -> None:
        gateway = Gateway(
            gateway_config(broker), outbox_path=tmp_path / "outbox.sqlite", control_interval_s=0.5
        )
        ingestion = Ingestion(IngestionSettings(host=broker.host, port=broker.port, backoff=quick), sessions)
        publisher = MqttSetpointPublisher(
            MqttPublisherSettings(host=broker.host, port=broker.port, backoff=quick)
        )
        loop = ControlLoop(sessions, publisher, replans, settings, plan_inputs=plan_inputs)
        listener = aiomqtt.Client(broker.host, broker.port, identifier="test-setpoint-listener")
        async with listener, ingestion, publisher, gateway, loop, asyncio.TaskGroup() as tasks:
            await listener.subscribe(setpoint_topic(SITE), qos=1)
            listening = tasks.create_task(listen(listener), name="setpoint-listener")
            await ingestion.wait_subscribed(TIMEOUT_S)
            clock = SimClock(utcnow(), speed=SPEED)
            charger = SimulatedCharger(
                "cp-0",
                f"ws://127.0.0.1:{gateway.ocpp.port}",
                "2.0.1",
                sim_vehicle(clock),
                clock,
                max_power_w=11_000,
                meter_interval_s=5,
                tick_s=1,
                id_token=TOKEN,
            )
            run = tasks.create_task(charger.run(), name="sim-cp-0")

            # 1. The first car: the command the centre publishes names its transaction, and the
            # gateway holds it for that transaction.
            first = None
            async with asyncio.timeout(TIMEOUT_S):
                while first is None:
                    first = await query(sessions, open_session)
                    await asyncio.sleep(0.1)
            tx1 = first.transaction_id
            assert tx1 is not None and tx1 == gateway.evses[EVSE].transaction_id
            await replan(loop, f"arrival:session {first.id}")
            await until(lambda: named(tx1))
            # ... because the gateway said it reads the field, which a gateway from before it refuses
            reads = await query(sessions, lambda db: gateway_reads(db, SITE))
            assert reads == {READS_SETPOINT_TRANSACTION_ID}
            with pytest.raises(ValidationError, match="transaction_id"):
                PreTransactionCommand.model_validate_json(encode(named(tx1)[0]))
            await until(lambda: held_for(gateway) == tx1)
            held = gateway.setpoints.get(EVSE)
            assert held is not None and held.setpoint.transaction_id == tx1
            first_inputs = await query(
                sessions, lambda db: site_plan_inputs(db, SITE, utcnow(), settings.planning)
            )
            assert first_inputs.sessions == {f"session-{first.id}": first.id}

            # 2. It leaves; the next car plugs in at the same EVSE and is planned for its own session.
            charger.vehicle.departure = clock.now()  # type: ignore[union-attr]
            await until(lambda: gateway.evses[EVSE].transaction_id is None)
            await until(lambda: charger.transaction is None)
            charger.plug_in(sim_vehicle(clock))
            await until(lambda: gateway.evses[EVSE].transaction_id not in (None, tx1))
            tx2 = gateway.evses[EVSE].transaction_id
            assert tx2 is not None
            second = None
            async with asyncio.timeout(TIMEOUT_S):
                while second is None or second.id == first.id:
                    second = await query(sessions, open_session)
                    await asyncio.sleep(0.1)
            assert second.transaction_id == tx2
            await replan(loop, f"arrival:session {second.id}")
            await until(lambda: named(tx2))
            await until(lambda: held_for(gateway) == tx2)

            # 3. A plan made from the first session's inputs sends nothing: not for the second car.
            before = len(published)
            stale.append(first_inputs)
            await replan(loop, "stale")
            await asyncio.sleep(1.0)  # a command would have reached the listener by now
            assert published[before:] == [], [c.model_dump() for c in published[before:]]
            held = gateway.setpoints.get(EVSE)
            assert held is not None and held.transaction_id == tx2
            assert held.setpoint.transaction_id == tx2, "the first session's plan was applied to the second"

            # 4. Plans from fresh inputs name the second session again.
            stale.clear()
            await replan(loop, "fresh")
            await until(lambda: len(named(tx2)) >= 2)
            assert all(s.transaction_id in (tx1, tx2) for c in published for s in c.setpoints)
            run.cancel()
            listening.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 90))
    engine.dispose()


def test_a_gateway_that_does_not_say_it_reads_transaction_ids_gets_commands_it_can_read(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A gateway from before ``EvseSetpoint.transaction_id`` announces nothing in its status: every
    command the centre publishes to it leaves the field out, a reader without the field accepts each,
    and the gateway binds the setpoint to the transaction it runs."""
    url = f"sqlite:///{tmp_path / 'centre.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    seed(engine)
    sessions = make_sessionmaker(engine)
    replans = ReplanRequests()
    settings = ControlSettings(poll_s=0.1, planning=PlanningSettings(tariffs=TARIFFS))
    quick = Backoff(initial_s=0.05, max_s=0.5)
    raw: list[bytes] = []

    async def listen(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            raw.append(message.payload)

    async def scenario() -> None:
        gateway = Gateway(
            gateway_config(broker), outbox_path=tmp_path / "outbox.sqlite", control_interval_s=0.5
        )
        # what a gateway from before the field says: its statuses name nothing it reads
        gateway.uplink.settings = dataclasses.replace(gateway.uplink.settings, reads=frozenset())
        ingestion = Ingestion(IngestionSettings(host=broker.host, port=broker.port, backoff=quick), sessions)
        publisher = MqttSetpointPublisher(
            MqttPublisherSettings(host=broker.host, port=broker.port, backoff=quick)
        )
        loop = ControlLoop(sessions, publisher, replans, settings)
        listener = aiomqtt.Client(broker.host, broker.port, identifier="test-setpoint-listener")
        async with listener, ingestion, publisher, gateway, loop, asyncio.TaskGroup() as tasks:
            await listener.subscribe(setpoint_topic(SITE), qos=1)
            listening = tasks.create_task(listen(listener), name="setpoint-listener")
            await ingestion.wait_subscribed(TIMEOUT_S)
            clock = SimClock(utcnow(), speed=SPEED)
            charger = SimulatedCharger(
                "cp-0",
                f"ws://127.0.0.1:{gateway.ocpp.port}",
                "2.0.1",
                sim_vehicle(clock),
                clock,
                max_power_w=11_000,
                meter_interval_s=5,
                tick_s=1,
                id_token=TOKEN,
            )
            run = tasks.create_task(charger.run(), name="sim-cp-0")
            first = None
            async with asyncio.timeout(TIMEOUT_S):
                while first is None:
                    first = await query(sessions, open_session)
                    await asyncio.sleep(0.1)
            tx = first.transaction_id
            assert tx is not None and tx == gateway.evses[EVSE].transaction_id
            status = await query(sessions, lambda db: db.get(GatewayStatusRecord, SITE))
            assert status is not None and status.reads == []  # it said nothing of what it reads

            plans = loop.stats.plans
            replans.request(SITE, f"arrival:session {first.id}")
            await until(lambda: loop.stats.plans > plans and raw)
            await until(lambda: held_for(gateway) == tx)
            for data in raw:
                assert b"transaction_id" not in data, data
                command = PreTransactionCommand.model_validate_json(data)  # what the old gateway reads
                assert command.model_dump(mode="json") == decode(SetpointCommand, data).model_dump(
                    mode="json", exclude={"setpoints": {"__all__": {"transaction_id"}}}
                )
            held = gateway.setpoints.get(EVSE)
            assert held is not None and held.setpoint.transaction_id is None  # bound on arrival
            run.cancel()
            listening.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 90))
    engine.dispose()


# ------------------------------------------------------------------------ the command, on its own

T0 = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.UTC)


def test_each_setpoint_names_its_sessions_transaction_and_a_stopped_session_gets_none() -> None:
    stored = {
        "site_import_kw": [7.0, 7.0],
        "vehicles": {
            "session-1": {"power_kw": [4.0, 4.0], "evse_id": "cp-1/1"},
            "session-2": {"power_kw": [3.0, 3.0], "evse_id": "cp-2/1"},
            "session-3": {"power_kw": [-2.0, -2.0], "evse_id": "cp-3/1"},
        },
    }
    plan = read_plan(1, SITE, T0, 900, stored, {"session-1": 1, "session-2": 2, "session-3": 3})
    evses = {f"cp-{n}/1": (f"cp-{n}", 1) for n in (1, 2, 3)}
    # session 1 runs tx-a; session 2 has no transaction id yet; session 3 has stopped
    open_ = {1: "tx-a", 2: None}
    reads = {READS_SETPOINT_TRANSACTION_ID}
    command = setpoint_command(
        plan, evses, now=T0, validity=dt.timedelta(minutes=30), transactions=open_, reads=reads
    )
    assert command is not None
    assert [(s.charger_id, s.transaction_id) for s in command.setpoints] == [("cp-1", "tx-a"), ("cp-2", None)]
    assert b'"transaction_id":"tx-a"' in encode(command)
    only_stopped = setpoint_command(
        plan, evses, now=T0, validity=dt.timedelta(minutes=30), transactions={}, reads=reads
    )
    assert only_stopped is None


@pytest.mark.parametrize("reads", [(), ("status.colour",)], ids=["nothing", "only-others"])
def test_a_gateway_that_does_not_read_transaction_ids_gets_none_and_still_nothing_for_a_stopped_session(
    reads: tuple[str, ...],
) -> None:
    plan = read_plan(
        1,
        SITE,
        T0,
        900,
        {
            "site_import_kw": [7.0],
            "vehicles": {
                "session-1": {"power_kw": [4.0], "evse_id": "cp-1/1"},
                "session-3": {"power_kw": [3.0], "evse_id": "cp-3/1"},
            },
        },
        {"session-1": 1, "session-3": 3},
    )
    evses = {f"cp-{n}/1": (f"cp-{n}", 1) for n in (1, 3)}
    command = setpoint_command(
        plan, evses, now=T0, validity=dt.timedelta(minutes=30), transactions={1: "tx-a"}, reads=reads
    )
    assert command is not None
    assert [(s.charger_id, s.transaction_id) for s in command.setpoints] == [("cp-1", None)]
    data = encode(command)
    assert b"transaction_id" not in data
    PreTransactionCommand.model_validate_json(data)


def test_what_a_gateway_reads_is_its_latest_status_s(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'centre.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    seed(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as db, db.begin():
        assert gateway_reads(db, SITE) == frozenset()  # no status yet: nothing new is sent
        db.add(
            GatewayStatusRecord(
                site_id=SITE,
                state=GatewayState.ONLINE,
                last_seen_at=T0,
                last_seq=1,
                reads=[READS_SETPOINT_TRANSACTION_ID, "setpoint.newer_field"],
            )
        )
    with sessions() as db:
        assert gateway_reads(db, SITE) == {READS_SETPOINT_TRANSACTION_ID, "setpoint.newer_field"}
    engine.dispose()
