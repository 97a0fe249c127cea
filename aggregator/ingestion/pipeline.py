"""MQTT ingestion: the centre's subscriber that stores what the site gateways report.

::

    settings = IngestionSettings(host="broker.example", port=8883, username="centre", password=secret)
    async with Ingestion(settings, make_sessionmaker(engine), replans=replans, mirror=mirror) as ingestion:
        ...                                       # runs until the block exits
        ingestion.stats[TopicKind.TELEMETRY].stored

How it behaves:

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
- :class:`GatewayStatus` upserts the site's ``gateway_status`` row. A status whose ``seq`` is not above
  the recorded one is stale and changes nothing, so a late redelivery cannot overwrite a newer state.
  The one exception is the gateway's last will (``offline`` with no ``since``): its ``seq`` is taken
  when its connection opens, before the statuses it follows, so it is applied in arrival order (see
  :mod:`site_gateway.uplink`).
- :class:`SessionEvent` builds ``charging_sessions``, keyed by charger and transaction id:
  ``started`` inserts the row, ``ev_charging_needs`` sets departure and energy request on the
  transaction's row (or the charger's open session when no transaction id is given), ``stopped`` sets
  ``stopped_at`` and the total energy (creating the row if ``started`` never came). Repeats change
  nothing and are counted as duplicates; other kinds (plugged in, authorised, ...) are counted as
  ignored for now. When a session's id token becomes known, the vehicle with that
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

Caveat: aiomqtt (paho) acknowledges a QoS 1 message when it arrives, not when we have stored it, so a
crash between the two loses that message (and so does leaving the ``async with`` block by an error;
a normal exit stores what is queued first).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random as _random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiomqtt
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


@dataclass
class _Connection:
    """One MQTT session of the ingestion: its client id and subscriptions."""

    client_id: str
    topics: list[str]
    overflowing: bool = False
    """Messages wait in the client's queue (ours was full); until it is empty, new ones go there too."""


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
        self.settings = settings
        self._random = random
        self._sleep = sleep
        self.stats = IngestionStats()
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
        self._connections = _connections(settings)
        self._subscribed: set[str] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._receivers: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
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
        assert self._tasks is not None
        for receiver in self._receivers:
            receiver.cancel()
        await asyncio.wait(self._receivers)
        self._batches.close()  # the writer stores what is queued, then ends
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
            async with self._client(connection) as client:
                connected()
                await self._consume(client, connection)

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

    def _client(self, connection: _Connection) -> aiomqtt.Client:
        return mqtt.client(
            self.settings, connection.client_id, clean_session=False, queue_type=self._inbox(connection)
        )

    def _inbox(self, connection: _Connection) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's incoming queue for ``connection``: it hands each message straight to the writer's
        queue (:meth:`BatchWriter.accept`) as paho delivers it, and keeps it (for :meth:`_consume`) only
        while the writer's queue is full or earlier messages still wait here."""
        batches = self._batches

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                if connection.overflowing or batches.full:
                    connection.overflowing = True
                    super().put_nowait(item)
                else:
                    batches.accept(item.topic.value, item.payload)

        return Inbox

    async def _consume(self, client: aiomqtt.Client, connection: _Connection) -> None:
        self.connects += 1
        connection.overflowing = False
        for topic_filter in connection.topics:
            await client.subscribe(topic_filter, qos=QOS, timeout=self.settings.timeout_s)
        log.info(
            "ingestion: connected to %s:%s as %s", self.settings.host, self.settings.port, client.identifier
        )
        self._subscribed.add(connection.client_id)
        if len(self._subscribed) == len(self._connections):
            self.subscribed.set()
        # Only messages that found the writer's queue full come through the client's queue; this loop
        # also ends the session (with MqttError) when the connection is lost.
        async for message in client.messages:
            self._batches.accept(message.topic.value, message.payload)
            if not len(client.messages):
                connection.overflowing = False
            await self._batches.wait_for_room()


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


__all__ = ["Counters", "Ingestion", "IngestionSettings", "IngestionStats", "TelemetrySink"]
