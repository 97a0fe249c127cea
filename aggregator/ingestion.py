"""MQTT ingestion: the centre's subscriber that stores what the site gateways report.

::

    settings = IngestionSettings(host="broker.example", port=8883, username="centre", password=secret)
    async with Ingestion(settings, make_sessionmaker(engine), replans=replans, mirror=mirror) as ingestion:
        ...                                       # runs until the block exits
        ingestion.stats[TopicKind.TELEMETRY].stored

How it behaves:

- One persistent MQTT session (MQTT 3.1.1, fixed client id, ``clean_session=False``, QoS 1), subscribed
  to every site's ``telemetry``, ``session``, ``status`` and ``ack`` topics
  (:func:`site_gateway.contract.subscription`), so messages sent while the centre is away wait in the
  broker. A lost connection is retried for ever with jittered exponential backoff.
- Each message is decoded with :func:`site_gateway.contract.decode_message` as it arrives, on the event
  loop, and queued. One writer task stores the queue in batches, each in one database transaction in a
  worker thread (so the event loop is never blocked): whatever has arrived when the writer is free, up to
  ``batch_max_messages`` (after waiting up to ``batch_linger_s`` for more, when set). Under load a batch
  is what arrived while the previous one was written, so batches grow with the load and an idle centre
  stores each message at once. Within a batch, messages are applied in arrival order; runs of
  telemetry go in as one bulk insert (:func:`~aggregator.db.telemetry.insert_telemetry_many`). When
  more than ``max_pending`` decoded messages wait, the receive loop waits for the writer.
- Nothing that one message does stops the loop: a payload that breaks the contract, a message for a
  site not in ``sites``, a session event for a charger the centre does not know, an ack for a command
  the site was not sent, or a database error is logged (naming the topic, and the field for a contract
  error), counted in :attr:`Ingestion.stats`, and dropped. If a batch's transaction fails, the batch is
  stored again message by message, each in its own transaction, so that only the message the database
  refuses is lost (a batch of one is not tried twice). Counters move only once a transaction has
  committed, so they are exact.
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
  (:class:`~aggregator.telemetry_mirror.TelemetryMirror`, whose ``offer`` never blocks).
- Every accepted message also moves the site's ``gateway_status.last_seen_at``.

Caveat: aiomqtt (paho) acknowledges a QoS 1 message when it arrives, not when we have stored it, so a
crash between the two loses that message (and so does leaving the ``async with`` block by an error;
a normal exit stores what is queued first).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import itertools
import logging
import random as _random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

import aiomqtt
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from aggregator.db.models import (
    Base,
    Charger,
    ChargingSession,
    CommandStatus,
    GatewayStatusRecord,
    SetpointCommandRecord,
    Site,
    Vehicle,
    utcnow,
)
from aggregator.db.telemetry import insert_telemetry_many
from aggregator.replanning import ReplanRequests
from site_gateway.contract import (
    QOS,
    CommandAck,
    ContractError,
    GatewayState,
    GatewayStatus,
    Payload,
    SessionEvent,
    SessionEventKind,
    Telemetry,
    TopicKind,
    decode_message,
    parse_topic,
    subscription,
)
from site_gateway.reconnect import Backoff, keep_connected

log = logging.getLogger(__name__)

INGESTED_KINDS: tuple[TopicKind, ...] = (
    TopicKind.TELEMETRY,
    TopicKind.SESSION,
    TopicKind.STATUS,
    TopicKind.ACK,
)
ACK_DETAIL_MAX = 500
"""Length of ``setpoint_commands.ack_detail``; a longer error is cut to it."""


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
    """Decoded messages queued for the writer beyond which the receive loop waits."""


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


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicates"
    IGNORED = "ignored"


class RejectedMessage(Exception):
    """A valid payload the centre cannot take (an unknown site or charger); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(slots=True)
class Received:
    """A decoded message waiting for the writer."""

    topic: str
    kind: TopicKind
    message: Payload
    received_at: dt.datetime


EvseKey = tuple[str, str, int]
"""``(site_id, charge point id, evse id)``, as telemetry names an EVSE."""


@dataclass(frozen=True, slots=True)
class AwaitingSoc:
    """An open charging session whose state of charge at start is not known yet."""

    session_id: int
    started_at: dt.datetime


@dataclass
class BatchResult:
    """What one committed transaction did, for the counters and the side effects after commit."""

    outcomes: list[Outcome | RejectedMessage]
    replans: list[tuple[str, str]]
    stored_telemetry: list[Telemetry]
    awaiting_soc: dict[EvseKey, AwaitingSoc]


# ------------------------------------------------------------------------------------------- service


class Ingestion:
    """Async context manager owning the MQTT connection and the task that stores messages."""

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
        self.settings = settings
        self._sessions = sessions
        self._replans = replans
        self._mirror = mirror
        self._clock = clock
        self._random = random
        self._sleep = sleep
        self.stats = IngestionStats()
        self.subscribed = asyncio.Event()
        """Set while connected and subscribed."""
        self.connects = 0
        self._known_sites: set[str] = set()
        self._awaiting_soc: dict[EvseKey, AwaitingSoc] | None = None
        """Open sessions without a state of charge at start; ``None`` until loaded by the first write."""
        self._pending: list[Received] = []
        self._pending_since = 0.0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._write_lock = asyncio.Lock()
        self._closing = False
        self._tasks: asyncio.TaskGroup | None = None
        self._connection: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._closing = False
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._writer = self._tasks.create_task(self._write_batches(), name="ingestion-writer")
        self._connection = self._tasks.create_task(self._run(), name="ingestion-connection")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tasks is not None and self._connection is not None
        self._connection.cancel()
        await asyncio.wait([self._connection])
        self._closing = True  # the writer stores what is queued, then ends
        self._arrived.set()
        try:
            await self._tasks.__aexit__(exc_type, exc, tb)
        finally:
            self._tasks = None
            self.subscribed.clear()

    @property
    def running(self) -> bool:
        return self._connection is not None and not self._connection.done()

    @property
    def pending(self) -> int:
        """Decoded messages waiting for the writer."""
        return len(self._pending)

    async def wait_subscribed(self, timeout: float) -> None:
        await asyncio.wait_for(self.subscribed.wait(), timeout)

    # ------------------------------------------------------------------------------------- connection

    async def _run(self) -> None:
        await keep_connected(
            self._session,
            who="ingestion",
            host=self.settings.host,
            port=self.settings.port,
            backoff=self.settings.backoff,
            random=self._random,
            sleep=self._sleep,
            on_lost=self.subscribed.clear,
        )

    async def _session(self, connected: Callable[[], None]) -> None:
        async with self._client() as client:
            connected()
            await self._consume(client)

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            keepalive=s.keepalive_s,
            timeout=s.timeout_s,
        )

    async def _consume(self, client: aiomqtt.Client) -> None:
        self.connects += 1
        for kind in INGESTED_KINDS:
            await client.subscribe(subscription(kind), qos=QOS, timeout=self.settings.timeout_s)
        log.info(
            "ingestion: connected to %s:%s as %s", self.settings.host, self.settings.port, client.identifier
        )
        self.subscribed.set()
        async for message in client.messages:
            received = self._decode(message.topic.value, message.payload)
            if received is None:
                continue
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(received)
            self._arrived.set()
            if len(self._pending) >= self.settings.max_pending:
                self._room.clear()
                await self._room.wait()

    # --------------------------------------------------------------------------------------- messages

    def _decode(self, topic_name: str, payload: object) -> Received | None:
        """Count one message as received and decode it; ``None`` (counted, logged) if it breaks
        the contract."""
        try:
            kind: TopicKind | None = parse_topic(topic_name).kind
        except ContractError:
            kind = None
        counters = self.stats.counters(kind)
        counters.received += 1
        try:
            if not isinstance(payload, bytes | bytearray | str):
                raise ContractError("", f"payload is {type(payload).__name__}, not JSON text")
            _, message = decode_message(topic_name, payload)
        except ContractError as err:
            counters.rejected += 1
            log.warning("ingestion: rejected %s: field %r: %s", topic_name, err.field, err)
            return None
        assert kind is not None  # decode_message parsed the topic
        return Received(topic_name, kind, message, self._clock())

    async def handle(self, topic_name: str, payload: object) -> None:
        """Decode, store and count one message; never raises for a bad message or a database error."""
        await self.handle_batch([(topic_name, payload)])

    async def handle_batch(self, messages: Iterable[tuple[str, object]]) -> None:
        """Decode ``(topic, payload)`` pairs and store the valid ones as one batch, as the writer would;
        never raises for a bad message or a database error."""
        batch = [r for topic_name, payload in messages if (r := self._decode(topic_name, payload))]
        if batch:
            await self._write(batch)

    async def _write_batches(self) -> None:
        limit, linger = self.settings.batch_max_messages, self.settings.batch_linger_s
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
            batch, self._pending = self._pending[:limit], self._pending[limit:]
            self._pending_since = time.monotonic()
            if len(self._pending) < self.settings.max_pending // 2:
                self._room.set()
            await self._write(batch)

    async def _write(self, batch: list[Received]) -> None:
        """Store ``batch`` in one transaction, or message by message if that fails; count; act on it."""
        async with self._write_lock:
            try:
                results = [(batch, await asyncio.to_thread(self._store_batch, batch))]
            except Exception as err:
                if len(batch) == 1:
                    self._count_failure(batch[0], err)
                    return
                self.stats.fallbacks += 1
                log.warning(
                    "ingestion: a batch of %d messages failed (%s); storing them one by one",
                    len(batch),
                    err,
                )
                results = []
                for received in batch:
                    try:
                        results.append(([received], await asyncio.to_thread(self._store_batch, [received])))
                    except Exception as one_err:
                        self._count_failure(received, one_err)
            for items, result in results:
                self._committed(items, result)

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

    def _store_batch(self, batch: list[Received]) -> BatchResult:
        """One batch, one transaction (committed here, rolled back on any error); in a worker thread."""
        with self._sessions() as session, session.begin():
            if self._awaiting_soc is None:
                self._awaiting_soc = _load_awaiting_soc(session)
            writer = _BatchWriter(session, self._awaiting_soc)
            self._check_sites(session, {r.message.site_id for r in batch})
            return writer.apply(batch, self._known_sites)

    def _check_sites(self, session: Session, site_ids: set[str]) -> None:
        unknown = site_ids - self._known_sites
        if unknown:
            self._known_sites.update(session.scalars(select(Site.id).where(Site.id.in_(unknown))))


def _seq(message: Payload) -> int:
    return getattr(message, "seq", 0)


# ------------------------------------------------------------------------------------------ storing


class _BatchWriter:
    """Applies one batch's messages in arrival order inside the caller's transaction."""

    def __init__(self, session: Session, awaiting_soc: dict[EvseKey, AwaitingSoc]) -> None:
        self.session = session
        self.result = BatchResult([], [], [], dict(awaiting_soc))
        self.last_seen: dict[str, dt.datetime] = {}

    def apply(self, batch: list[Received], known_sites: set[str]) -> BatchResult:
        outcomes = self.result.outcomes
        for is_telemetry, run in itertools.groupby(batch, lambda r: isinstance(r.message, Telemetry)):
            if is_telemetry:
                outcomes += self._telemetry(list(run), known_sites)
            else:
                outcomes += [self._one(received, known_sites) for received in run]
        self._move_last_seen()
        return self.result

    def _one(self, received: Received, known_sites: set[str]) -> Outcome | RejectedMessage:
        message = received.message
        try:
            if message.site_id not in known_sites:
                raise _unknown_site(message.site_id)
            match message:
                case GatewayStatus():
                    outcome = self._status(message, received.received_at)
                case SessionEvent():
                    outcome = self._session_event(message)
                case CommandAck():
                    outcome = self._ack(message)
                case _:
                    raise RejectedMessage(f"{type(message).__name__} is not a site→centre message")
        except RejectedMessage as err:
            return err
        self._seen(message.site_id, received.received_at)
        return outcome

    def _seen(self, site_id: str, at: dt.datetime) -> None:
        seen = self.last_seen.get(site_id)
        if seen is None or at > seen:
            self.last_seen[site_id] = at

    def _move_last_seen(self) -> None:
        if not self.last_seen:
            return
        self.session.flush()
        table = Base.metadata.tables[GatewayStatusRecord.__tablename__]
        self.session.connection().execute(
            update(table)
            .where(table.c.site_id == bindparam("b_site"))
            .values(last_seen_at=bindparam("b_at")),
            [{"b_site": site_id, "b_at": at} for site_id, at in self.last_seen.items()],
        )

    def _replan(self, site_id: str, reason: str) -> None:
        self.result.replans.append((site_id, reason))

    # ------------------------------------------------------------------------------------ telemetry

    def _telemetry(self, items: list[Received], known_sites: set[str]) -> list[Outcome | RejectedMessage]:
        known = [r for r in items if r.message.site_id in known_sites]
        messages = [r.message for r in known if isinstance(r.message, Telemetry)]
        self.session.flush()
        stored = iter(
            insert_telemetry_many(self.session, messages, received_at=[r.received_at for r in known])
        )
        outcomes: list[Outcome | RejectedMessage] = []
        new: list[Telemetry] = []
        for received in items:
            message = received.message
            if message.site_id not in known_sites:
                outcomes.append(_unknown_site(message.site_id))
                continue
            self._seen(message.site_id, received.received_at)
            if next(stored):
                assert isinstance(message, Telemetry)
                new.append(message)
                outcomes.append(Outcome.STORED)
            else:
                outcomes.append(Outcome.DUPLICATE)
        self.result.stored_telemetry += new
        if self.result.awaiting_soc:
            self._soc_at_start(new)
        return outcomes

    def _soc_at_start(self, messages: list[Telemetry]) -> None:
        awaiting = self.result.awaiting_soc
        found: list[dict[str, object]] = []
        for message in messages:
            for evse in message.evses:
                if evse.soc_percent is None:
                    continue
                key = (message.site_id, evse.charger_id, evse.evse_id)
                waiting = awaiting.get(key)
                if waiting is not None and message.sent_at >= waiting.started_at:
                    found.append({"b_id": waiting.session_id, "b_soc": evse.soc_percent})
                    del awaiting[key]
        if found:
            table = Base.metadata.tables[ChargingSession.__tablename__]
            self.session.connection().execute(
                update(table)
                .where(table.c.id == bindparam("b_id"), table.c.soc_at_start_percent.is_(None))
                .values(soc_at_start_percent=bindparam("b_soc")),
                found,
            )

    # --------------------------------------------------------------------------------------- status

    def _status(self, status: GatewayStatus, received_at: dt.datetime) -> Outcome:
        row = self.session.get(GatewayStatusRecord, status.site_id, with_for_update=True)
        if row is None:
            self.session.add(
                GatewayStatusRecord(
                    site_id=status.site_id,
                    state=status.state,
                    reason=status.reason,
                    since=status.since,
                    last_seen_at=received_at,
                    last_seq=status.seq,
                )
            )
            self.session.flush()
            if status.state is GatewayState.ONLINE:
                self._replan(status.site_id, "gateway_online")
            return Outcome.STORED
        last_seq = row.last_seq or 0
        if status.seq == last_seq or (status.seq < last_seq and not _is_last_will(status)):
            return Outcome.DUPLICATE
        if status.state is GatewayState.ONLINE and row.state is GatewayState.OFFLINE:
            self._replan(status.site_id, "gateway_online")
        row.state, row.reason, row.since = status.state, status.reason, status.since
        row.last_seq = max(last_seq, status.seq)
        return Outcome.STORED

    # ------------------------------------------------------------------------------------- sessions

    def _session_event(self, event: SessionEvent) -> Outcome:
        if event.kind not in (
            SessionEventKind.STARTED,
            SessionEventKind.EV_CHARGING_NEEDS,
            SessionEventKind.STOPPED,
        ):
            log.debug(
                "ingestion: site %s: %s on %s/%d (not stored)",
                event.site_id,
                event.kind.value,
                event.charger_id,
                event.evse_id,
            )
            return Outcome.IGNORED
        session = self.session
        charger = session.scalars(
            select(Charger).where(
                Charger.site_id == event.site_id,
                Charger.charge_point_id == event.charger_id,
                Charger.evse_id == event.evse_id,
            )
        ).one_or_none()
        if charger is None:
            raise RejectedMessage(
                f"unknown charger {event.charger_id!r} evse {event.evse_id} at site {event.site_id!r}"
            )
        evse = f"{event.charger_id}/{event.evse_id}"
        row = _find_session(session, charger, event.transaction_id)
        if event.kind is SessionEventKind.EV_CHARGING_NEEDS:
            if row is None:
                raise RejectedMessage(
                    f"charging needs for {event.charger_id!r} evse {event.evse_id} without a session"
                    f" (transaction {event.transaction_id!r})"
                )
            needs: dict[str, object] = {
                "departure_at": event.departure_time,
                "energy_request_kwh": event.energy_request_kwh,
            }
            if not _update(row, {k: v for k, v in needs.items() if v is not None}):
                return Outcome.DUPLICATE
            self._replan(event.site_id, f"needs:{evse}")
            return Outcome.STORED
        created = row is None
        if row is None:
            row = ChargingSession(
                site_id=event.site_id,
                charger_id=charger.id,
                evse_id=event.evse_id,
                transaction_id=event.transaction_id,
                started_at=event.sent_at,
            )
            session.add(row)
        changes: dict[str, object] = {"id_token": event.id_token, "energy_kwh": event.energy_kwh}
        if event.kind is SessionEventKind.STARTED:
            changes["started_at"] = min(row.started_at, event.sent_at)
            if row.energy_kwh is not None:  # a late start does not undo the energy a later event reported
                changes.pop("energy_kwh")
        else:
            changes["stopped_at"] = event.sent_at
        changed = _update(row, {k: v for k, v in changes.items() if v is not None})
        if (created or "id_token" in changed) and row.id_token is not None and row.vehicle_id is None:
            row.vehicle_id = session.scalar(select(Vehicle.id).where(Vehicle.id_token == row.id_token))
        if not (created or changed):
            return Outcome.DUPLICATE
        session.flush()
        key = (event.site_id, event.charger_id, event.evse_id)
        awaiting = self.result.awaiting_soc
        if event.kind is SessionEventKind.STARTED:
            self._replan(event.site_id, f"arrival:{evse}")
            if row.stopped_at is None and row.soc_at_start_percent is None:
                awaiting[key] = AwaitingSoc(row.id, row.started_at)
        else:
            self._replan(event.site_id, f"departure:{evse}")
            if key in awaiting and awaiting[key].session_id == row.id:
                del awaiting[key]
        return Outcome.STORED

    # ----------------------------------------------------------------------------------------- acks

    def _ack(self, ack: CommandAck) -> Outcome:
        if ack.command_id is None:
            raise RejectedMessage(f"{ack.status.value} ack without a command_id: {ack.error}")
        row = self.session.get(SetpointCommandRecord, ack.command_id, with_for_update=True)
        if row is None:
            raise RejectedMessage(f"ack for command {ack.command_id!r}, which the centre never sent")
        if row.site_id != ack.site_id:
            raise RejectedMessage(f"ack for command {ack.command_id!r}, which was sent to another site")
        if row.acked_at is not None:
            return Outcome.DUPLICATE
        row.status = CommandStatus(ack.status.value)
        row.acked_at = ack.sent_at
        row.ack_outcomes = [outcome.model_dump(mode="json") for outcome in ack.evses]
        row.ack_detail = None if ack.error is None else ack.error[:ACK_DETAIL_MAX]
        return Outcome.STORED


def _unknown_site(site_id: str) -> RejectedMessage:
    return RejectedMessage(f"unknown site {site_id!r} (no row in sites)")


def _load_awaiting_soc(session: Session) -> dict[EvseKey, AwaitingSoc]:
    """Open sessions with no state of charge at start yet, by the EVSE telemetry names."""
    rows = session.execute(
        select(
            ChargingSession.site_id,
            Charger.charge_point_id,
            ChargingSession.evse_id,
            ChargingSession.id,
            ChargingSession.started_at,
        )
        .join(Charger, Charger.id == ChargingSession.charger_id)
        .where(ChargingSession.stopped_at.is_(None), ChargingSession.soc_at_start_percent.is_(None))
        .order_by(ChargingSession.started_at)
    )
    return {(site_id, cp, evse): AwaitingSoc(id_, started) for site_id, cp, evse, id_, started in rows}


def _is_last_will(status: GatewayStatus) -> bool:
    return status.state is GatewayState.OFFLINE and status.since is None


def _find_session(session: Session, charger: Charger, transaction_id: str | None) -> ChargingSession | None:
    query = select(ChargingSession).where(ChargingSession.charger_id == charger.id)
    if transaction_id is not None:
        return session.scalars(query.where(ChargingSession.transaction_id == transaction_id)).one_or_none()
    query = query.where(ChargingSession.stopped_at.is_(None)).order_by(ChargingSession.started_at.desc())
    return session.scalars(query.limit(1)).first()


def _update(row: ChargingSession, changes: dict[str, object]) -> set[str]:
    """Set the attributes that differ; their names."""
    changed = {k: v for k, v in changes.items() if getattr(row, k) != v}
    for name, value in changed.items():
        setattr(row, name, value)
    return set(changed)
