"""MQTT ingestion: the centre's subscriber that stores what the site gateways report.

::

    settings = IngestionSettings(host="broker.example", port=8883, username="centre", password=secret)
    async with Ingestion(settings, make_sessionmaker(engine), replans=replans, mirror=mirror) as ingestion:
        ...                                       # runs until the block exits
        ingestion.stats[TopicKind.TELEMETRY].stored

Before the first gateway publishes, create the ingestion's sessions on the broker once
(:func:`create_sessions`; ``fleetgrid admin --config central.toml create-broker-sessions``): from then
on the broker queues every site message for the centre, whether the centre runs or not.

How it behaves:

- Store before acknowledge. Each QoS 1 message is acknowledged (PUBACK) only once the batch holding it
  has committed: paho's manual acknowledgement (``manual_ack_set(True)``; aiomqtt 2.5 does not expose
  it), acknowledged in the order the messages arrived on their connection, as MQTT asks. A centre
  killed at any point loses nothing: what it had not stored it had not acknowledged, and the broker
  sends it again on the next connection (the copies already stored are counted as duplicates). A
  message the database could not take because it was unreachable is not acknowledged either: the
  connection is ended and the broker sends it again after the reconnect (``retried`` in the
  counters). One that breaks the contract or that the database refuses for good is acknowledged and
  counted (``rejected``, ``failed``), as sending it again would fail again and hold back the rest.
- The unacknowledged window of one connection is bounded by the broker: it sends a session at most
  ``max_inflight_messages`` unacknowledged QoS 1 messages (Mosquitto's default 20;
  ``examples/mosquitto/mosquitto.conf`` sets 1,000) and keeps the rest in the session's queue (up to
  ``max_queued_messages``, beyond which it drops them: the sequence gaps below show it). Past
  ``max_unacked`` (a broker set to no limit) a connection takes no more (those are not acknowledged)
  and logs an error naming that setting; once what it took is stored and acknowledged it reconnects,
  and the broker sends the rest again.
- One persistent MQTT session (MQTT 3.1.1, fixed client id, ``clean_session=False``, QoS 1), subscribed
  to every site's ``telemetry``, ``session``, ``status`` and ``ack`` topics
  (:func:`wire.contract.subscription`), so messages sent while the centre is away wait in the
  broker. A lost connection is retried for ever with jittered exponential backoff.
- With ``telemetry_consumers`` above 1, telemetry comes instead through that many further persistent
  sessions (client ids ``{client_id}-telemetry-{k}``) sharing one MQTT shared subscription
  (``$share/{share_group}/fleetgrid/v1/site/+/telemetry``): the broker hands each telemetry message to
  one of them, so more QoS 1 messages are in flight at once (the broker's ``max_inflight_messages`` is
  per connection). Session events, statuses and acks stay on the first session, so they still apply in
  the order each site sent them; telemetry from one site may then be stored out of order (each copy
  still once per ``(site_id, seq)``).
- Each message is counted and queued, undecoded, as paho hands it over (aiomqtt's incoming queue is
  replaced by one that hands it on: no task and no await per message), then decoded and stored in
  batches by one writer task: :class:`~aggregator.ingestion.batches.BatchWriter`, whose docstring
  says how batches are formed, when several are stored at once, how much may wait, and what happens
  when one fails. Nothing that one message does stops the loop: a bad message or a database error is
  logged, counted in :attr:`Ingestion.stats`, and dropped.
- :class:`Telemetry` is stored once per ``(site_id, seq)``; a redelivery (in an earlier batch or the
  same one) is counted as a duplicate.
- :class:`GatewayStatus` upserts the site's ``gateway_status`` row, ``reads`` included (the newer
  setpoint fields its gateway reads, which the control loop sends only to such a gateway). A status
  whose ``seq`` is not above the recorded one is stale and changes nothing, so a late redelivery
  cannot overwrite a newer state. The one exception is the gateway's last will (``offline`` with no
  ``since``): its ``seq`` is taken when its connection opens, before the statuses it follows, so it is
  applied in arrival order (see :mod:`site_gateway.uplink`).
- :class:`SessionEvent` builds ``charging_sessions``, keyed by charger and transaction id:
  ``started`` inserts the row, ``ev_charging_needs`` sets departure and energy request on the
  transaction's row (or the charger's open session when no transaction id is given), ``stopped`` sets
  ``stopped_at`` and the total energy (creating the row if ``started`` never came), ``authorized``
  with a transaction id sets the token of a card tapped after plug-in (re-plan ``token:<evse>``).
  Repeats change nothing and are counted as duplicates; other kinds (plugged in, suspended, ...) are
  counted as ignored for now. When a session's id token becomes known, the vehicle with that
  ``Vehicle.id_token`` is set as its ``vehicle_id``. The first stored telemetry that reports a state of
  charge for an open session's EVSE (sent at or after its start) sets ``soc_at_start_percent``: the
  writer keeps the open sessions still waiting for one in memory (loaded once at start), so telemetry
  costs no query for it.
- :class:`CommandAck` updates the ``setpoint_commands`` row of its ``command_id``: status, ``acked_at``
  (the gateway's ``sent_at``), the per-EVSE outcomes and the error as ``ack_detail``. An ack without
  an id, for an unknown command or for another site's command is rejected; a second ack for a command
  changes nothing (a duplicate).
- With ``replans``, a change the plan depends on asks the control loop for a re-plan of the site
  (:meth:`ReplanRequests.request`, after commit): a session started (``arrival:<charger>/<evse>``), new
  charging needs (``needs:<charger>/<evse>``), a session stopped (``departure:<charger>/<evse>``), and
  a gateway going ``online`` after ``offline`` or no status at all (``gateway_online``).
- With ``mirror``, every committed batch's new telemetry is offered to it
  (:class:`~aggregator.ingestion.telemetry_mirror.TelemetryMirror`, whose ``offer`` never blocks).
- Every accepted message also moves the site's ``gateway_status.last_seen_at`` forward (never back, as
  batches stored at once may commit out of arrival order).
- Sequence gaps: the numbers of a site's messages that never arrived are logged (a line per gap) and
  counted in :attr:`IngestionStats.gaps` (:mod:`aggregator.ingestion.gaps` says how they are told
  from the numbers the contract leaves out), so an outage longer than the broker can hold is never
  silent. ``gap_reorder_window`` allows for telemetry out of order across shared consumers.
- Leaving the ``async with`` block stops taking messages (those arriving then are not acknowledged and
  come again), stores what was taken, sends its acknowledgements and disconnects.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import random as _random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy.orm import Session

from aggregator.control.replanning import ReplanRequests
from aggregator.db.models import utcnow
from aggregator.ingestion.batches import (
    INGESTED_KINDS,
    BatchWriter,
    Counters,
    IngestionStats,
    TelemetrySink,
)
from aggregator.ingestion.gaps import Gap, SequenceGaps
from wire import mqtt
from wire.contract import QOS, TopicKind, subscription
from wire.mqtt import BrokerSettings
from wire.reconnect import keep_connected

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestionSettings(BrokerSettings):
    """The broker (:class:`~wire.mqtt.BrokerSettings`: host, port, login, TLS, keepalive, timeout,
    backoff), the ingestion's MQTT sessions and its batches."""

    client_id: str = "fleetgrid-centre-ingestion"
    """Must be stable: the broker keeps the session (and queues QoS 1 messages) under this id."""
    batch_max_messages: int = 500
    """Most messages stored in one transaction."""
    batch_linger_s: float = 0.0
    """How long [s] the writer waits for a batch to fill once a message is queued; 0 stores what has
    arrived at once (under load, batches still grow: they are what arrived during the last write)."""
    max_pending: int = 5_000
    """Messages queued for the writer beyond which further ones wait in the MQTT client's queue."""
    telemetry_consumers: int = 1
    """Sessions sharing the telemetry subscription; 1 takes telemetry on the one main session."""
    telemetry_writers: int = 2
    """Telemetry-only batches stored at once, each in its own transaction and connection (PostgreSQL;
    SQLite stores one batch at a time)."""
    share_group: str = "fleetgrid-centre"
    """Name of the shared subscription's group (``$share/{share_group}/...``) when
    ``telemetry_consumers`` is above 1; stable, as the client ids are."""
    max_unacked: int = 10_000
    """Messages one connection may hold unacknowledged (taken, or stored behind one not yet stored)
    before it is ended; the broker's ``max_inflight_messages`` keeps the window below it."""
    gap_reorder_window: int = 0
    """How far [seq numbers] a site's ordered messages must be past a missing number before it is
    reported (:class:`~aggregator.ingestion.gaps.SequenceGaps`); 0 with one telemetry session, which
    gets each site's messages in order."""


@dataclass
class _Connection:
    """One MQTT session of the ingestion: its client id and subscriptions."""

    client_id: str
    topics: list[str]
    overflowing: bool = False
    """Messages wait in the client's queue (ours was full); until it is empty, new ones go there too."""


@dataclass(eq=False)
class _Unacked:
    """One QoS 1 message handed to the writer and not acknowledged yet (the writer's receipt)."""

    window: _AckWindow
    mid: int
    settled: bool = False

    def settle(self, stored: bool) -> None:
        self.window.settled(self, stored)


@dataclass(eq=False)
class _AckWindow:
    """The QoS 1 messages one connection has handed to the writer and not yet acknowledged, in arrival
    order. Acknowledgements go out in that order, once each message is stored. A message that could
    not be stored ends the window at once: nothing more is acknowledged on the connection, which is
    then ended so that the broker sends every unacknowledged message again. A window at ``limit``
    takes no more (they come again) and ends once what it took is acknowledged."""

    client_id: str
    limit: int
    ack: Callable[[int], object] = lambda mid: None
    """Sends the PUBACK of message ``mid`` on this connection (paho's ``ack(mid, 1)``)."""
    waiting: collections.deque[_Unacked] = field(default_factory=collections.deque)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    full: bool = False
    """Reached ``limit``: takes nothing more, ends once what it took is acknowledged."""

    def take(self, mid: int) -> _Unacked | None:
        """A receipt for message ``mid``; ``None`` when the window has ended or is full: the message
        must not be handed on (it is not acknowledged, and comes again on the next connection)."""
        if self.ended.is_set() or self.full:
            return None
        if len(self.waiting) >= self.limit:
            self.full = True
            self.reason = (
                f"{len(self.waiting)} messages unacknowledged, the most max_unacked allows: set the"
                " broker's max_inflight_messages below it (see examples/mosquitto/mosquitto.conf)"
            )
            log.error("ingestion %s: %s; reconnecting once they are stored", self.client_id, self.reason)
            return None
        unacked = _Unacked(self, mid)
        self.waiting.append(unacked)
        return unacked

    def settled(self, unacked: _Unacked, stored: bool) -> None:
        if self.ended.is_set():
            return
        if not stored:
            self.end(f"message {unacked.mid} could not be stored; the broker sends it again")
            return
        unacked.settled = True
        while self.waiting and self.waiting[0].settled:
            self.ack(self.waiting.popleft().mid)
        if self.full and not self.waiting:
            self.end(self.reason)

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()


class Ingestion:
    """Async context manager owning the MQTT connections and the task that stores messages."""

    def __init__(
        self,
        settings: IngestionSettings,
        sessions: Callable[[], Session],
        *,
        replans: ReplanRequests | None = None,
        mirror: TelemetrySink | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if settings.batch_max_messages < 1 or settings.max_pending < settings.batch_max_messages:
            raise ValueError(
                f"batch_max_messages ({settings.batch_max_messages}) must be at least 1 and at most"
                f" max_pending ({settings.max_pending})"
            )
        if settings.telemetry_consumers < 1:
            raise ValueError(f"telemetry_consumers must be at least 1, got {settings.telemetry_consumers}")
        if settings.telemetry_writers < 1:
            raise ValueError(f"telemetry_writers must be at least 1, got {settings.telemetry_writers}")
        if settings.max_unacked < settings.batch_max_messages:
            raise ValueError(
                f"max_unacked ({settings.max_unacked}) must be at least batch_max_messages"
                f" ({settings.batch_max_messages})"
            )
        if settings.gap_reorder_window < 0:
            raise ValueError(f"gap_reorder_window must be at least 0, got {settings.gap_reorder_window}")
        self.settings = settings
        self._random = random
        self._sleep = sleep
        self.stats = IngestionStats(gaps=SequenceGaps(reorder_window=settings.gap_reorder_window))
        self._batches = BatchWriter(
            sessions,
            self.stats,
            max_messages=settings.batch_max_messages,
            linger_s=settings.batch_linger_s,
            max_pending=settings.max_pending,
            writers=settings.telemetry_writers,
            replans=replans,
            mirror=mirror,
            clock=clock,
        )
        self.subscribed = asyncio.Event()
        """Set while every connection is connected and subscribed."""
        self.connects = 0
        self.acked = 0
        """QoS 1 messages acknowledged to the broker (each after it was stored)."""
        self._draining = False
        self._connections = _connections(settings)
        self._subscribed: set[str] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._receivers: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._draining = False
        self._batches.open()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._writer = self._tasks.create_task(self._batches.run(), name="ingestion-writer")
        self._receivers = [
            self._tasks.create_task(self._run(connection), name=f"ingestion-{connection.client_id}")
            for connection in self._connections
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tasks is not None and self._writer is not None
        self._draining = True  # what arrives from now on is not taken, so not acknowledged: it comes again
        self._batches.close()  # the writer stores what is queued (its acknowledgements go out), then ends
        await asyncio.wait([self._writer])
        for receiver in self._receivers:
            receiver.cancel()  # a clean disconnect: the acknowledgements queued before it are sent first
        await asyncio.wait(self._receivers)
        try:
            await self._tasks.__aexit__(exc_type, exc, tb)
        finally:
            self._tasks = None
            self.subscribed.clear()

    @property
    def running(self) -> bool:
        return bool(self._receivers) and not any(r.done() for r in self._receivers)

    @property
    def pending(self) -> int:
        """Messages waiting for the writer."""
        return self._batches.pending

    @property
    def gaps(self) -> list[Gap]:
        """The last sequence gaps reported, oldest first (:attr:`IngestionStats.gaps` counts them all)."""
        return list(self.stats.gaps.recent)

    async def wait_subscribed(self, timeout: float) -> None:
        await asyncio.wait_for(self.subscribed.wait(), timeout)

    async def handle(self, topic_name: str, payload: object) -> None:
        """Decode, store and count one message; never raises for a bad message or a database error."""
        await self.handle_batch([(topic_name, payload)])

    async def handle_batch(self, messages: Iterable[tuple[str, object]]) -> None:
        """Count ``(topic, payload)`` pairs as received, then decode and store them as one batch, as the
        writer would, and return once it (and any batch still being stored) has committed; never raises
        for a bad message or a database error."""
        await self._batches.handle_batch(messages)

    # ------------------------------------------------------------------------------------ connections

    async def _run(self, connection: _Connection) -> None:
        def lost() -> None:
            self._subscribed.discard(connection.client_id)
            self.subscribed.clear()

        async def session(connected: Callable[[], None]) -> None:
            window = _AckWindow(connection.client_id, self.settings.max_unacked)
            client = self._client(connection, window)
            paho = client._client  # aiomqtt 2.5 has no manual acknowledgement of its own: paho's
            paho.manual_ack_set(True)

            def ack(mid: int) -> None:
                paho.ack(mid, QOS)  # queued on this connection; a closed one drops it (the broker resends)
                self.acked += 1

            window.ack = ack
            try:
                async with client:
                    connected()
                    await self._consume(client, connection, window)
            finally:
                window.end("connection closed")

        await keep_connected(
            session,
            who=f"ingestion {connection.client_id}",
            host=self.settings.host,
            port=self.settings.port,
            backoff=self.settings.backoff,
            random=self._random,
            sleep=self._sleep,
            on_lost=lost,
        )

    def _client(self, connection: _Connection, window: _AckWindow) -> aiomqtt.Client:
        return mqtt.client(
            self.settings,
            connection.client_id,
            clean_session=False,
            queue_type=self._inbox(connection, window),
        )

    def _take(self, message: aiomqtt.Message, window: _AckWindow) -> None:
        """Hand ``message`` to the writer with its receipt, unless the ingestion is stopping or the
        window has ended: then it is dropped unacknowledged, and the broker sends it again."""
        if self._draining:
            return
        if message.qos == 0:
            self._batches.accept(message.topic.value, message.payload)
            return
        receipt = window.take(message.mid)
        if receipt is not None:
            self._batches.accept(message.topic.value, message.payload, receipt)

    def _inbox(self, connection: _Connection, window: _AckWindow) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's incoming queue for ``connection``: it hands each message straight to the writer's
        queue (:meth:`_take`) as paho delivers it, and keeps it (for :meth:`_consume`) only while the
        writer's queue is full or earlier messages still wait here, so messages are taken, and so
        acknowledged, in the order they arrived."""
        batches, take = self._batches, self._take

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                if connection.overflowing or batches.full:
                    connection.overflowing = True
                    super().put_nowait(item)
                else:
                    take(item, window)

        return Inbox

    async def _consume(self, client: aiomqtt.Client, connection: _Connection, window: _AckWindow) -> None:
        self.connects += 1
        connection.overflowing = False
        for topic_filter in connection.topics:
            granted = await client.subscribe(topic_filter, qos=QOS, timeout=self.settings.timeout_s)
            if _refused(granted):
                log.error(
                    "ingestion %s: the broker refused the subscription to %s (ACL?)",
                    connection.client_id,
                    topic_filter,
                )
        log.info(
            "ingestion: connected to %s:%s as %s", self.settings.host, self.settings.port, client.identifier
        )
        self._subscribed.add(connection.client_id)
        if len(self._subscribed) == len(self._connections):
            self.subscribed.set()
        reader = asyncio.create_task(self._overflow(client, connection, window), name="ingestion-overflow")
        ended = asyncio.create_task(window.ended.wait(), name="ingestion-window")
        try:
            await asyncio.wait([reader, ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            ended.cancel()
            await asyncio.wait([reader, ended])
        if not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]  # the connection was lost (MqttError)
        raise aiomqtt.MqttError(f"ended by the ingestion: {window.reason}")

    async def _overflow(self, client: aiomqtt.Client, connection: _Connection, window: _AckWindow) -> None:
        """Take the messages that found the writer's queue full, in order; this loop also ends the
        session (with MqttError) when the connection is lost."""
        async for message in client.messages:
            self._take(message, window)
            if not len(client.messages):
                connection.overflowing = False
            await self._batches.wait_for_room()


async def create_sessions(settings: IngestionSettings) -> list[str]:
    """Create the ingestion's persistent sessions on the broker and subscribe them, then disconnect:
    from then on the broker queues for them (up to its ``max_queued_messages``) every message the
    gateways publish, whether or not the centre runs. Run it when provisioning the broker, before the
    first gateway publishes (``fleetgrid admin --config central.toml create-broker-sessions``);
    running it again changes nothing. Nothing is acknowledged, so messages
    already queued stay for the ingestion. Returns the client ids; a refused subscription (the ACL)
    raises :class:`PermissionError` naming the topic."""
    created = []
    for connection in _connections(settings):
        client = mqtt.client(settings, connection.client_id, clean_session=False)
        client._client.manual_ack_set(True)  # leave what is queued unacknowledged
        async with client:
            for topic_filter in connection.topics:
                granted = await client.subscribe(topic_filter, qos=QOS, timeout=settings.timeout_s)
                if _refused(granted):
                    raise PermissionError(
                        f"the broker at {settings.host}:{settings.port} refused {connection.client_id}"
                        f" the subscription to {topic_filter} (check its ACL)"
                    )
        created.append(connection.client_id)
    return created


def _refused(granted: tuple[int, ...] | list[ReasonCode]) -> bool:
    """Whether a SUBACK refused the subscription (0x80 in 3.1.1; a failure reason code in 5)."""
    return any(code.is_failure if isinstance(code, ReasonCode) else code >= 0x80 for code in granted)


def _connections(settings: IngestionSettings) -> list[_Connection]:
    """The main session (everything, or all but telemetry) and the telemetry consumers."""
    if settings.telemetry_consumers == 1:
        return [_Connection(settings.client_id, [subscription(k) for k in INGESTED_KINDS])]
    shared = f"$share/{settings.share_group}/{subscription(TopicKind.TELEMETRY)}"
    main = _Connection(
        settings.client_id, [subscription(k) for k in INGESTED_KINDS if k is not TopicKind.TELEMETRY]
    )
    return [main] + [
        _Connection(f"{settings.client_id}-telemetry-{k}", [shared])
        for k in range(settings.telemetry_consumers)
    ]


__all__ = [
    "Counters",
    "Gap",
    "Ingestion",
    "IngestionSettings",
    "IngestionStats",
    "TelemetrySink",
    "create_sessions",
]
