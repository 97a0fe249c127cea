"""From a site's plan to the :class:`~wire.contract.SetpointCommand` its gateway follows, and
how commands reach the broker.

:func:`setpoint_command` turns a stored plan (:class:`~aggregator.control.schedules.StoredPlan`)
into one command: one :class:`~wire.contract.EvseSetpoint` per planned EVSE, carrying the planned
power of every step from the horizon start until ``valid_until`` as a schedule of periods (equal
neighbouring steps merged). EVSEs without a planned vehicle are not named, so the gateway keeps its
own limits there.

A setpoint belongs to a session and ends with it. Each names the transaction of the charging session
its vehicle stands for (:func:`open_transactions`, read when the command is made), and the gateway
refuses it on any other transaction. A planned vehicle whose session has stopped since its inputs were
read gets no setpoint: sent, it would be for whatever car runs on that EVSE now (or next).

The transaction id is a field added within schema version 1, which a gateway from before it refuses
with the whole command. So a setpoint names its transaction only when the site's gateway said in its
latest status that it reads the field (:func:`gateway_reads`,
:data:`~wire.contract.READS_SETPOINT_TRANSACTION_ID`); to any other gateway the command goes without
it, and the gateway binds each setpoint to the transaction it runs when the command arrives. Stopped
sessions get no setpoint either way.

:class:`SetpointPublisher` is what the control loop needs; :class:`MqttSetpointPublisher` is the real
one (aiomqtt, QoS 1, the contract's topic, reconnecting with jittered exponential backoff).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import random as _random
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import aiomqtt
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.control.schedules import StoredPlan
from aggregator.db.models import ChargingSession, GatewayStatusRecord
from wire import mqtt
from wire.contract import (
    QOS,
    READS_SETPOINT_TRANSACTION_ID,
    EvseSetpoint,
    SetpointCommand,
    SetpointPeriod,
    encode,
    setpoint_topic,
)
from wire.mqtt import BrokerSettings
from wire.reconnect import keep_connected

log = logging.getLogger(__name__)


def open_transactions(session: Session, session_ids: Iterable[int]) -> dict[int, str | None]:
    """Charging session id -> its charger's transaction id (``None`` until the charger starts one),
    for those of ``session_ids`` still open (not stopped)."""
    wanted = sorted(set(session_ids))
    if not wanted:
        return {}
    rows = session.execute(
        select(ChargingSession.id, ChargingSession.transaction_id).where(
            ChargingSession.id.in_(wanted), ChargingSession.stopped_at.is_(None)
        )
    )
    return {session_id: transaction_id for session_id, transaction_id in rows}


def gateway_reads(session: Session, site_id: str) -> frozenset[str]:
    """The centre→site fields added within schema version 1 that ``site_id``'s gateway reads, as its
    latest stored status names them (:attr:`wire.contract.GatewayStatus.reads`); empty for a site
    whose gateway has sent no status, or one from before it named any."""
    reads = session.scalar(select(GatewayStatusRecord.reads).where(GatewayStatusRecord.site_id == site_id))
    return frozenset(name for name in reads or () if isinstance(name, str))


def setpoint_command(
    plan: StoredPlan,
    evses: Mapping[str, tuple[str, int]],
    *,
    now: dt.datetime,
    validity: dt.timedelta,
    transactions: Mapping[int, str | None] | None = None,
    reads: Collection[str] = (),
) -> SetpointCommand | None:
    """The command for ``plan`` (its site's) issued at ``now``, valid for ``validity``; ``None`` if no
    EVSE is planned.

    ``evses`` maps the plan's EVSE ids to (charge point id, EVSE id). Power is grid side [kW],
    positive charging, negative discharging; a period starts at its step's start (the first may lie
    before ``now``: the gateway applies the period in force).

    ``transactions`` maps charging session id to its transaction id, for the sessions still open
    (:func:`open_transactions`). A vehicle of the plan whose session is not in it has stopped and gets
    no setpoint; one whose session is open names its transaction (none while the session has no
    transaction id yet: the gateway binds it to the transaction it runs). ``None`` (a plan that knows
    no sessions, made by hand) sends every setpoint naming no transaction.

    ``reads``: the fields the site's gateway reads (:func:`gateway_reads`). Without
    :data:`~wire.contract.READS_SETPOINT_TRANSACTION_ID` in it no setpoint names its transaction (a
    gateway from before that field would refuse the command); stopped sessions get none all the same.
    """
    names_transactions = READS_SETPOINT_TRANSACTION_ID in reads
    valid_until = now + validity
    setpoints: dict[tuple[str, int], EvseSetpoint] = {}
    for vehicle in sorted(plan.vehicles, key=lambda vehicle: vehicle.id):
        address = evses.get(vehicle.evse_id)
        if address is None:
            log.warning(
                "plan of %s: vehicle %s on unknown EVSE %r", plan.site_id, vehicle.id, vehicle.evse_id
            )
            continue
        transaction_id = None
        if transactions is not None and vehicle.session_id is not None:
            if vehicle.session_id not in transactions:
                log.info(
                    "plan of %s: vehicle %s not sent to EVSE %s, its session %d has stopped",
                    plan.site_id,
                    vehicle.id,
                    vehicle.evse_id,
                    vehicle.session_id,
                )
                continue
            transaction_id = transactions[vehicle.session_id] if names_transactions else None
        periods: list[SetpointPeriod] = []
        for k, power in enumerate(vehicle.power_kw):
            start = plan.horizon_start + k * plan.step
            if start >= valid_until:
                break
            if start + plan.step <= now:
                continue
            power = round(float(power), 3)
            if periods and periods[-1].power_kw == power:
                continue
            periods.append(SetpointPeriod(start=start, power_kw=power))
        if not periods:
            continue
        charger_id, evse_id = address
        setpoints[address] = EvseSetpoint(
            charger_id=charger_id, evse_id=evse_id, schedule=tuple(periods), transaction_id=transaction_id
        )
    if not setpoints:
        return None
    return SetpointCommand(
        site_id=plan.site_id,
        command_id=uuid.uuid4().hex,
        issued_at=now,
        valid_until=valid_until,
        setpoints=tuple(setpoints[key] for key in sorted(setpoints)),
    )


class SetpointPublisher(Protocol):
    """Hands a command to the site's gateway (or queues it to be)."""

    async def publish(self, command: SetpointCommand) -> None: ...


@dataclass(frozen=True)
class MqttPublisherSettings(BrokerSettings):
    """The broker (:class:`~wire.mqtt.BrokerSettings`) and the publisher's client id."""

    client_id: str = "fleetgrid-centre-setpoints"


class MqttSetpointPublisher:
    """Publishes commands with QoS 1 on ``fleetgrid/v1/site/{site_id}/setpoint``.

    :meth:`publish` queues the command and returns at once; a task owning the connection sends the
    queue in order and takes a command off only after the broker's PUBACK. While the broker is away
    commands wait (in memory; each is also a ``setpoint_commands`` row), and a command whose
    ``valid_until`` has passed by the time it could be sent is dropped. The gateway's persistent MQTT
    session keeps QoS 1 commands for a gateway that is offline.
    """

    def __init__(
        self,
        settings: MqttPublisherSettings,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._random = random
        self._sleep = sleep
        self._queue: collections.deque[SetpointCommand] = collections.deque()
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()
        self.published = 0
        self.expired = 0
        self._tasks: asyncio.TaskGroup | None = None
        self._connection: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._connection = self._tasks.create_task(self._run(), name="setpoint-publisher-connection")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tasks is not None and self._connection is not None
        self._connection.cancel()
        try:
            await self._tasks.__aexit__(exc_type, exc, tb)
        finally:
            self._tasks = None
            self.connected.clear()

    async def publish(self, command: SetpointCommand) -> None:
        self._queue.append(command)
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        await keep_connected(
            self._session,
            who="setpoints",
            host=self.settings.host,
            port=self.settings.port,
            backoff=self.settings.backoff,
            random=self._random,
            sleep=self._sleep,
            on_lost=self.connected.clear,
        )

    async def _session(self, connected: Callable[[], None]) -> None:
        async with self._client() as client:
            connected()
            self.connected.set()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch(client), name="setpoint-publisher-watch")
                tasks.create_task(self._drain(client), name="setpoint-publisher-drain")

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        """Raise :class:`aiomqtt.MqttError` when the connection drops (an idle publisher would not see it)."""
        async for _ in client.messages:  # nothing is subscribed: this only ends with the connection
            pass
        raise aiomqtt.MqttError("connection closed")

    def _client(self) -> aiomqtt.Client:
        return mqtt.client(self.settings, self.settings.client_id)

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            command = self._queue[0]
            ids = {"site_id": command.site_id, "command_id": command.command_id}  # extra= of its log lines
            if command.valid_until <= self._clock():
                self._queue.popleft()
                self.expired += 1
                log.warning(
                    "setpoints: command %s for %s expired unsent",
                    command.command_id,
                    command.site_id,
                    extra=ids,
                )
                continue
            await client.publish(
                setpoint_topic(command.site_id), encode(command), qos=QOS, timeout=self.settings.timeout_s
            )
            self._queue.popleft()
            self.published += 1
            log.info("setpoints: command %s for %s published", command.command_id, command.site_id, extra=ids)


__all__ = [
    "MqttPublisherSettings",
    "MqttSetpointPublisher",
    "SetpointPublisher",
    "gateway_reads",
    "open_transactions",
    "setpoint_command",
]
