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
- A message is counted as received and queued, undecoded, as paho hands it over (aiomqtt's incoming
  queue is replaced by one that appends to ours: no task and no await per message). One writer task
  takes the queue in batches, in arrival order: whatever has arrived when it is free (see below), up
  to ``batch_max_messages`` (after waiting up to ``batch_linger_s`` for more, when set). Each batch is
  decoded with :func:`wire.contract.decode_message` and then stored in one database
  transaction, both in worker threads (so the event loop only receives). Under load a batch is what
  arrived while the previous ones were stored, so batches grow with the load and an idle centre
  stores each message at once. Within a batch, messages are applied in arrival order; runs of
  telemetry go in as one bulk insert
  (:func:`~aggregator.db.telemetry.insert_telemetry_many`). When more than ``max_pending`` messages
  wait, further messages wait in the MQTT client's own queue (paho still reads them) until the writer
  has made room. The storing itself is :mod:`aggregator.ingestion.store`.
- Batches of telemetry alone are independent of each other, so on PostgreSQL up to
  ``telemetry_writers`` of them are stored at once, each in its own transaction on its own
  connection, and the writer is free to take the next batch while fewer than that are being stored:
  the database's work on one batch overlaps the decoding and storing of the next. (Their rows go in
  sorted and their ``last_seen_at`` updates take the sites' rows in one order, so they cannot
  deadlock.) Every other batch is a barrier: it waits until the batches before it have committed,
  and the batches after it wait until it has, so session events, statuses and acks, and the
  telemetry around them, are applied exactly as one writer would apply them. So is a telemetry batch
  that carries the state of charge an open session waits for (see below), so the first such reading
  in arrival order is the one kept. On SQLite, which takes one writing transaction at a time, one
  batch is stored at a time whatever ``telemetry_writers`` says, and the writer is free once it has
  committed.
- Nothing that one message does stops the loop: a payload that breaks the contract, a message for a
  site not in ``sites``, a session event for a charger the centre does not know, an ack for a command
  the site was not sent, or a database error is logged (naming the topic, and the field for a contract
  error), counted in :attr:`Ingestion.stats`, and dropped. If a batch's transaction fails, the batch is
  stored again message by message, each in its own transaction, so that only the message the database
  refuses is lost (a batch of one is not tried twice). ``received`` moves as a message arrives,
  ``rejected`` for a contract breach once the writer has decoded it, and the other counters only once
  a transaction has committed, so they are exact.
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
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

import aiomqtt
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from aggregator.control.replanning import ReplanRequests
from aggregator.db.models import utcnow
from aggregator.ingestion.store import (
    AwaitingSoc,
    BatchResult,
    EvseKey,
    Received,
    RejectedMessage,
    independent,
    load_awaiting_soc,
    store_batch,
)
from wire.contract import (
    QOS,
    ContractError,
    Payload,
    Telemetry,
    TopicKind,
    decode_message,
    parse_topic,
    subscription,
)
from wire.reconnect import Backoff, keep_connected

log = logging.getLogger(__name__)

INGESTED_KINDS: tuple[TopicKind, ...] = (
    TopicKind.TELEMETRY,
    TopicKind.SESSION,
    TopicKind.STATUS,
    TopicKind.ACK,
)


@dataclass(frozen=True)
class IngestionSettings:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str = "fleetgrid-centre-ingestion"
    """Must be stable: the broker keeps the session (and queues QoS 1 messages) under this id."""
    keepalive_s: int = 30
    timeout_s: float = 10.0
    """Limit on every wait for the broker: CONNACK, SUBACK."""
    backoff: Backoff = field(default_factory=Backoff)
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


class TelemetrySink(Protocol):
    """What ingestion hands each committed batch's new telemetry to; must return at once."""

    def offer(self, messages: Sequence[Telemetry]) -> None: ...


# ------------------------------------------------------------------------------------------- counters


@dataclass
class Counters:
    received: int = 0
    stored: int = 0
    """Changed the database (a new row or a newer state)."""
    duplicates: int = 0
    """Already stored, or superseded by a newer message (a stale status)."""
    ignored: int = 0
    """Valid but nothing to store yet (session events other than started / needs / stopped)."""
    rejected: int = 0
    """Broke the contract, or named a site, charger or command the centre does not know."""
    failed: int = 0
    """The database refused or failed; the message is lost."""


@dataclass
class IngestionStats:
    kinds: dict[TopicKind, Counters] = field(default_factory=lambda: {k: Counters() for k in INGESTED_KINDS})
    unrouted: Counters = field(default_factory=Counters)
    """Messages whose topic could not be parsed (so their kind is unknown)."""
    batches: int = 0
    """Transactions that committed a batch (a fallback's one-message transactions included)."""
    fallbacks: int = 0
    """Batches whose transaction failed and that were stored again message by message."""

    def __getitem__(self, kind: TopicKind) -> Counters:
        return self.kinds[kind]

    def counters(self, kind: TopicKind | None) -> Counters:
        return self.unrouted if kind is None else self.kinds.setdefault(kind, Counters())


@dataclass(slots=True)
class Arrived:
    """A message as the broker handed it over, waiting for the writer; ``kind`` is ``None`` when its
    topic is not a fleetgrid site topic."""

    topic: str
    kind: TopicKind | None
    payload: object
    received_at: dt.datetime


@dataclass(slots=True)
class Undecodable:
    """A message that broke the contract (its payload, or its topic when ``kind`` is ``None``)."""

    topic: str
    kind: TopicKind | None
    error: ContractError


@dataclass
class Decoded:
    """One batch decoded in a worker thread: each message (or its contract error), and whether the
    valid ones may be stored while other batches are (see
    :func:`~aggregator.ingestion.store.independent`)."""

    messages: list[Received | Undecodable]
    independent: bool

    @property
    def valid(self) -> list[Received]:
        return [m for m in self.messages if isinstance(m, Received)]


def decode_arrived(arrived: Arrived) -> Received | Undecodable:
    """Decode one message for the writer; contract errors are returned, not raised."""
    payload = arrived.payload
    try:
        if not isinstance(payload, bytes | bytearray | str):
            raise ContractError("", f"payload is {type(payload).__name__}, not JSON text")
        _, message = decode_message(arrived.topic, payload)
    except ContractError as err:
        return Undecodable(arrived.topic, arrived.kind, err)
    assert arrived.kind is not None  # decode_message parsed the topic
    return Received(arrived.topic, arrived.kind, message, arrived.received_at)


def _kind_of(topic_name: str) -> TopicKind | None:
    try:
        return parse_topic(topic_name).kind
    except ContractError:
        return None


# ------------------------------------------------------------------------------------------- service


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
        self._sessions = sessions
        self._replans = replans
        self._mirror = mirror
        self._clock = clock
        self._random = random
        self._sleep = sleep
        self.stats = IngestionStats()
        self.subscribed = asyncio.Event()
        """Set while every connection is connected and subscribed."""
        self.connects = 0
        self._connections = _connections(settings)
        self._subscribed: set[str] = set()
        self._known_sites: set[str] = set()
        self._awaiting_soc: dict[EvseKey, AwaitingSoc] | None = None
        """Open sessions without a state of charge at start; ``None`` until loaded by the first write."""
        self._pending: list[Arrived] = []
        self._pending_since = 0.0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._write_lock = asyncio.Lock()
        self._concurrent_stores: int | None = None
        """How many batches the database takes at once; ``None`` until the first store has seen it."""
        self._storing: set[asyncio.Task[None]] = set()
        """Independent batches being stored."""
        self._closing = False
        self._tasks: asyncio.TaskGroup | None = None
        self._receivers: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._closing = False
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._writer = self._tasks.create_task(self._write_batches(), name="ingestion-writer")
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
        self._closing = True  # the writer stores what is queued, then ends
        self._arrived.set()
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
        return len(self._pending)

    async def wait_subscribed(self, timeout: float) -> None:
        await asyncio.wait_for(self.subscribed.wait(), timeout)

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
        s = self.settings
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=connection.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            keepalive=s.keepalive_s,
            timeout=s.timeout_s,
            queue_type=self._inbox(connection),
        )

    def _inbox(self, connection: _Connection) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's incoming queue for ``connection``: it hands each message straight to
        :meth:`_accept` as paho delivers it, and keeps it (for :meth:`_consume`) only while ours is full
        or earlier messages still wait there."""
        ingestion = self

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                if connection.overflowing or len(ingestion._pending) >= ingestion.settings.max_pending:
                    connection.overflowing = True
                    super().put_nowait(item)
                else:
                    ingestion._accept(item.topic.value, item.payload)

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
        # Only messages that found our queue full come through the client's queue; this loop also
        # ends the session (with MqttError) when the connection is lost.
        async for message in client.messages:
            self._accept(message.topic.value, message.payload)
            if not len(client.messages):
                connection.overflowing = False
            while len(self._pending) >= self.settings.max_pending:
                self._room.clear()
                await self._room.wait()

    # --------------------------------------------------------------------------------------- messages

    def _accept(self, topic_name: str, payload: object) -> None:
        """Count one message as received and queue it for the writer."""
        kind = _kind_of(topic_name)
        self.stats.counters(kind).received += 1
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(Arrived(topic_name, kind, payload, self._clock()))
        self._arrived.set()

    async def handle(self, topic_name: str, payload: object) -> None:
        """Decode, store and count one message; never raises for a bad message or a database error."""
        await self.handle_batch([(topic_name, payload)])

    async def handle_batch(self, messages: Iterable[tuple[str, object]]) -> None:
        """Count ``(topic, payload)`` pairs as received, then decode and store them as one batch, as the
        writer would, and return once it (and any batch still being stored) has committed; never raises
        for a bad message or a database error."""
        batch = []
        for topic_name, payload in messages:
            kind = _kind_of(topic_name)
            self.stats.counters(kind).received += 1
            batch.append(Arrived(topic_name, kind, payload, self._clock()))
        if batch:
            await self._write(batch)
            await self._settle()

    async def _write_batches(self) -> None:
        limit, linger = self.settings.batch_max_messages, self.settings.batch_linger_s
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                wait = self._pending_since + linger - time.monotonic()
                if wait > 0 and len(self._pending) < limit and not self._closing:
                    await asyncio.sleep(min(wait, linger))
                    continue
                if self._concurrent_stores is not None and len(self._storing) >= self._concurrent_stores:
                    # every writer busy: let the batch grow until one is free (fewer, larger commits)
                    await asyncio.wait(list(self._storing), return_when=asyncio.FIRST_COMPLETED)
                    continue
                batch, self._pending = self._pending[:limit], self._pending[limit:]
                self._pending_since = time.monotonic()
                if len(self._pending) < self.settings.max_pending // 2:
                    self._room.set()
                await self._write(batch)
        finally:  # what is being stored is counted, even when the writer is cancelled
            await self._settle()

    async def _write(self, batch: list[Arrived]) -> None:
        """Decode ``batch``, then store it (see :meth:`_store_batch`): alongside the batches being
        stored when it is independent of them, else once they have committed and before the next
        batch. Returns once the batch is stored or, when independent, once its store has started."""
        async with self._write_lock:
            decoded = await asyncio.to_thread(self._decode, batch)
            self._count_undecodable(decoded.messages)
            valid = decoded.valid
            if not valid:
                return
            if decoded.independent and self._concurrent_stores is not None:
                while len(self._storing) >= self._concurrent_stores:  # handle_batch does not wait above
                    await asyncio.wait(list(self._storing), return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(self._store_batch(valid), name="ingestion-store")
                self._storing.add(task)
                task.add_done_callback(self._storing.discard)
            else:
                await self._settle()
                await self._store_batch(valid)

    async def _settle(self) -> None:
        """Wait until every batch being stored has committed (or failed) and been counted."""
        while self._storing:
            await asyncio.wait(list(self._storing))

    def _decode(self, batch: list[Arrived]) -> Decoded:
        """Decode ``batch`` (in a worker thread)."""
        messages = [decode_arrived(a) for a in batch]
        valid = [m for m in messages if isinstance(m, Received)]
        return Decoded(messages, independent(valid, self._awaiting_soc))

    async def _store_batch(self, valid: list[Received]) -> None:
        """Store ``valid`` in one transaction, or message by message if that fails; count; act on it.
        Never raises."""
        try:
            result = await asyncio.to_thread(self._store, valid)
        except Exception as err:
            if len(valid) == 1:
                self._count_failure(valid[0], err)
                return
            self.stats.fallbacks += 1
            log.warning(
                "ingestion: a batch of %d messages failed (%s); storing them one by one", len(valid), err
            )
            for received in valid:
                try:
                    self._committed([received], await asyncio.to_thread(self._store, [received]))
                except Exception as one_err:
                    self._count_failure(received, one_err)
            return
        self._committed(valid, result)

    def _count_undecodable(self, messages: list[Received | Undecodable]) -> None:
        for message in messages:
            if isinstance(message, Undecodable):
                self.stats.counters(message.kind).rejected += 1
                log.warning(
                    "ingestion: rejected %s: field %r: %s", message.topic, message.error.field, message.error
                )

    def _count_failure(self, received: Received, err: Exception) -> None:
        self.stats.counters(received.kind).failed += 1
        seq = _seq(received.message)
        if isinstance(err, SQLAlchemyError):
            log.error("ingestion: database error on %s seq %d: %s", received.topic, seq, err)
        else:  # a bug in one handler must not end ingestion for every site
            log.error("ingestion: failed on %s seq %d", received.topic, seq, exc_info=err)

    def _committed(self, batch: list[Received], result: BatchResult) -> None:
        self.stats.batches += 1
        self._awaiting_soc = result.awaiting_soc
        for received, outcome in zip(batch, result.outcomes, strict=True):
            counters = self.stats.counters(received.kind)
            if isinstance(outcome, RejectedMessage):
                counters.rejected += 1
                log.warning(
                    "ingestion: rejected %s seq %d: %s", received.topic, _seq(received.message), outcome
                )
            else:
                setattr(counters, outcome.value, getattr(counters, outcome.value) + 1)
        if self._replans is not None:
            for site_id, reason in result.replans:
                self._replans.request(site_id, reason)
        if self._mirror is not None and result.stored_telemetry:
            self._mirror.offer(result.stored_telemetry)

    def _store(self, batch: list[Received]) -> BatchResult:
        """One batch, one transaction (committed here, rolled back on any error); in a worker thread.
        The first store (never alongside another) loads the open sessions awaiting a state of charge
        and learns how many batches the database can take at once."""
        with self._sessions() as session, session.begin():
            if self._awaiting_soc is None:
                self._awaiting_soc = load_awaiting_soc(session)
            if self._concurrent_stores is None:
                postgres = session.get_bind().dialect.name == "postgresql"
                self._concurrent_stores = self.settings.telemetry_writers if postgres else 1
            return store_batch(session, batch, self._awaiting_soc, self._known_sites)


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


def _seq(message: Payload) -> int:
    return getattr(message, "seq", 0)
