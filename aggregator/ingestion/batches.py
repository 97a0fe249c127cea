"""Ingestion's batches: the queue between the MQTT sessions and the database, decoded and stored.

:class:`BatchWriter` owns the queue of arrived messages and the one writer task that stores them;
:class:`~aggregator.ingestion.pipeline.Ingestion` (the MQTT side) hands it each message as it arrives.
What storing a message does is :mod:`aggregator.ingestion.store`; the rules for each kind of message
are in :mod:`aggregator.ingestion.pipeline`'s docstring, and the settings named below are
:class:`~aggregator.ingestion.pipeline.IngestionSettings`'.

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
  that carries the state of charge an open session waits for (see
  :mod:`aggregator.ingestion.pipeline`), so the first such reading
  in arrival order is the one kept. On SQLite, which takes one writing transaction at a time, one
  batch is stored at a time whatever ``telemetry_writers`` says, and the writer is free once it has
  committed.
- Each message from the broker comes with a :class:`Receipt`, settled once the writer is done with
  it: ``stored`` once the transaction holding it has committed (or it was rejected, see below), and
  only then may the MQTT side acknowledge it (:mod:`aggregator.ingestion.pipeline`: store before
  acknowledge). A message the database could not take because it could not be reached
  (:func:`unreachable`: a lost connection, a locked SQLite file, a pool time-out) is settled *not*
  stored and counted as ``retried``: it is not acknowledged, and the broker sends it again. Such a
  batch is not retried message by message (the database is away, not refusing one of them).
- Nothing that one message does stops the loop: a payload that breaks the contract, a message for a
  site not in ``sites``, a session event for a charger the centre does not know, an ack for a command
  the site was not sent, or a database error that is not :func:`unreachable` is logged (naming the
  topic, and the field for a contract error), counted in :attr:`IngestionStats`, acknowledged and
  dropped (sending it again would fail again and hold every later message back). If a batch's
  transaction fails so, the batch is stored again message by message, each in its own transaction,
  so that only the message the database refuses is lost (a batch of one is not tried twice).
  ``received`` moves as a message arrives, ``rejected`` for a contract breach once the writer has
  decoded it, and the other counters only once a transaction has committed, so they are exact.
- Each valid message's ``seq`` is observed in arrival order by
  :class:`~aggregator.ingestion.gaps.SequenceGaps` (:attr:`IngestionStats.gaps`), which starts from
  the highest numbers stored per site and reports every number that never arrived.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from aggregator.control.replanning import ReplanRequests
from aggregator.db.models import utcnow
from aggregator.ingestion.gaps import SequenceGaps
from aggregator.ingestion.store import (
    AwaitingSoc,
    BatchResult,
    EvseKey,
    Received,
    RejectedMessage,
    independent,
    load_awaiting_soc,
    load_last_seqs,
    store_batch,
)
from wire.contract import ContractError, Payload, Telemetry, TopicKind, decode_message, parse_topic

log = logging.getLogger("aggregator.ingestion.pipeline")  # one logger for all of ingestion, as in store

INGESTED_KINDS: tuple[TopicKind, ...] = (
    TopicKind.TELEMETRY,
    TopicKind.SESSION,
    TopicKind.STATUS,
    TopicKind.ACK,
)


ORDERED_KINDS = frozenset({TopicKind.TELEMETRY, TopicKind.SESSION, TopicKind.ACK})
"""Kinds that leave the gateway's outbox in ``seq`` order (statuses bypass it), see
:mod:`aggregator.ingestion.gaps`."""


class Receipt(Protocol):
    """What the MQTT side hands over with a message: told once whether the message is stored."""

    def settle(self, stored: bool) -> None:
        """``stored``: committed (or rejected for good), so it may be acknowledged; otherwise it must
        not be, so that the broker sends it again."""
        ...


class TelemetrySink(Protocol):
    """What ingestion hands each committed batch's new telemetry to; must return at once."""

    def offer(self, messages: Sequence[Telemetry]) -> None: ...


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
    contract: int = field(default=0, compare=False)
    """Of :attr:`rejected`, those that broke the contract (the rest named something unknown); a
    breakdown for the metrics, left out of comparisons."""
    failed: int = 0
    """The database refused it (or a handler failed on it); the message is lost."""
    retried: int = 0
    """The database could not be reached: not acknowledged, so the broker sends it again."""


@dataclass
class IngestionStats:
    kinds: dict[TopicKind, Counters] = field(default_factory=lambda: {k: Counters() for k in INGESTED_KINDS})
    unrouted: Counters = field(default_factory=Counters)
    """Messages whose topic could not be parsed (so their kind is unknown)."""
    batches: int = 0
    """Transactions that committed a batch (a fallback's one-message transactions included)."""
    fallbacks: int = 0
    """Batches whose transaction failed and that were stored again message by message."""
    gaps: SequenceGaps = field(default_factory=SequenceGaps)
    """Sequence numbers that never arrived, per site (:mod:`aggregator.ingestion.gaps`)."""
    on_batch: Callable[[float], None] | None = field(default=None, repr=False)
    """Told, for each committed batch, the seconds from its first message's arrival to the commit (the
    writer's clock): a metrics histogram."""

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
    receipt: Receipt | None = None
    """``None`` for a message that no broker waits on (:meth:`BatchWriter.handle_batch`)."""


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


def kind_of(topic_name: str) -> TopicKind | None:
    try:
        return parse_topic(topic_name).kind
    except ContractError:
        return None


class BatchWriter:
    """The queue of arrived messages and the task that stores them in batches (see the module notes).

    :meth:`accept` counts and queues a message as the broker hands it over; :meth:`run` (a task, from
    :meth:`open` until :meth:`close`) decodes and stores the queue in batches of up to
    ``max_messages``, up to ``writers`` telemetry-only batches at once on PostgreSQL; beyond
    ``max_pending`` queued messages :attr:`full` tells the MQTT side to hold further ones back until
    :meth:`wait_for_room` returns. Counts go to ``stats``.
    """

    def __init__(
        self,
        sessions: Callable[[], Session],
        stats: IngestionStats,
        *,
        max_messages: int,
        linger_s: float,
        max_pending: int,
        writers: int,
        replans: ReplanRequests | None = None,
        mirror: TelemetrySink | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self.stats = stats
        self._max_messages = max_messages
        self._linger_s = linger_s
        self._max_pending = max_pending
        self._writers = writers
        self._replans = replans
        self._mirror = mirror
        self._clock = clock
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
        self._seqs_loaded = False

    @property
    def pending(self) -> int:
        """Messages waiting for the writer."""
        return len(self._pending)

    @property
    def full(self) -> bool:
        """``max_pending`` messages wait: hold further ones back until :meth:`wait_for_room`."""
        return len(self._pending) >= self._max_pending

    async def wait_for_room(self) -> None:
        """Return once fewer than ``max_pending`` messages wait."""
        while self.full:
            self._room.clear()
            await self._room.wait()

    def open(self) -> None:
        """Let :meth:`run` wait for messages (again) rather than end when the queue is empty."""
        self._closing = False

    def close(self) -> None:
        """Have :meth:`run` store what is queued, then end."""
        self._closing = True
        self._arrived.set()

    def accept(self, topic_name: str, payload: object, receipt: Receipt | None = None) -> None:
        """Count one message as received and queue it for the writer; ``receipt`` is settled once the
        writer is done with it."""
        kind = kind_of(topic_name)
        self.stats.counters(kind).received += 1
        if not self._pending:
            self._pending_since = _loop_time()
        self._pending.append(Arrived(topic_name, kind, payload, self._clock(), receipt))
        self._arrived.set()

    async def handle_batch(self, messages: Iterable[tuple[str, object]]) -> None:
        """Count ``(topic, payload)`` pairs as received, then decode and store them as one batch, as the
        writer would, and return once it (and any batch still being stored) has committed; never raises
        for a bad message or a database error."""
        batch = []
        for topic_name, payload in messages:
            kind = kind_of(topic_name)
            self.stats.counters(kind).received += 1
            batch.append(Arrived(topic_name, kind, payload, self._clock()))
        if batch:
            await self._write(batch)
            await self._settle()

    async def run(self) -> None:
        """The writer task: store what is queued, in batches, until :meth:`close` and the queue is empty."""
        limit, linger = self._max_messages, self._linger_s
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                wait = self._pending_since + linger - _loop_time()
                if wait > 0 and len(self._pending) < limit and not self._closing:
                    await asyncio.sleep(min(wait, linger))
                    continue
                if self._concurrent_stores is not None and len(self._storing) >= self._concurrent_stores:
                    # every writer busy: let the batch grow until one is free (fewer, larger commits)
                    await asyncio.wait(list(self._storing), return_when=asyncio.FIRST_COMPLETED)
                    continue
                batch, self._pending = self._pending[:limit], self._pending[limit:]
                self._pending_since = _loop_time()
                if len(self._pending) < self._max_pending // 2:
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
            self._count_undecodable(decoded.messages, batch)
            valid = decoded.valid
            if not valid:
                return
            receipts = [
                a.receipt for a, m in zip(batch, decoded.messages, strict=True) if isinstance(m, Received)
            ]
            await self._observe_seqs(valid)
            if decoded.independent and self._concurrent_stores is not None:
                while len(self._storing) >= self._concurrent_stores:  # handle_batch does not wait above
                    await asyncio.wait(list(self._storing), return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(self._store_batch(valid, receipts), name="ingestion-store")
                self._storing.add(task)
                task.add_done_callback(self._storing.discard)
            else:
                await self._settle()
                await self._store_batch(valid, receipts)

    async def _observe_seqs(self, valid: list[Received]) -> None:
        """Hand the batch's numbers, in arrival order, to :attr:`IngestionStats.gaps`; the first time,
        after loading the highest numbers stored (if the database cannot be reached, this batch's
        numbers wait for the broker to send it again, as its messages will be)."""
        gaps = self.stats.gaps
        if not self._seqs_loaded:
            try:
                gaps.start_from(await asyncio.to_thread(self._load_last_seqs))
            except Exception as err:
                log.warning("ingestion: could not read the last stored seq per site (%s)", err)
                return
            self._seqs_loaded = True
        gaps.observe_all(
            ((r.message.site_id, _seq(r.message), r.kind in ORDERED_KINDS) for r in valid), self._clock()
        )

    def _load_last_seqs(self) -> dict[str, int]:
        with self._sessions() as session:
            return load_last_seqs(session)

    async def _settle(self) -> None:
        """Wait until every batch being stored has committed (or failed) and been counted."""
        while self._storing:
            await asyncio.wait(list(self._storing))

    def _decode(self, batch: list[Arrived]) -> Decoded:
        """Decode ``batch`` (in a worker thread)."""
        messages = [decode_arrived(a) for a in batch]
        valid = [m for m in messages if isinstance(m, Received)]
        return Decoded(messages, independent(valid, self._awaiting_soc))

    async def _store_batch(self, valid: list[Received], receipts: list[Receipt | None]) -> None:
        """Store ``valid`` in one transaction, or message by message if that fails (unless the database
        is :func:`unreachable`); count; act on it; settle each message's receipt. Never raises."""
        try:
            result = await asyncio.to_thread(self._store, valid)
        except Exception as err:
            if len(valid) == 1 or unreachable(err):
                if len(valid) > 1:
                    log.warning(
                        "ingestion: the database is unreachable for a batch of %d: %s", len(valid), err
                    )
                for received, receipt in zip(valid, receipts, strict=True):
                    self._count_failure(received, receipt, err)
                return
            self.stats.fallbacks += 1
            log.warning(
                "ingestion: a batch of %d messages failed (%s); storing them one by one", len(valid), err
            )
            for received, receipt in zip(valid, receipts, strict=True):
                try:
                    one = await asyncio.to_thread(self._store, [received])
                except Exception as one_err:
                    self._count_failure(received, receipt, one_err)
                else:
                    self._committed([received], one, [receipt])
            return
        self._committed(valid, result, receipts)

    def _count_undecodable(self, messages: list[Received | Undecodable], batch: list[Arrived]) -> None:
        for message, arrived in zip(messages, batch, strict=True):
            if isinstance(message, Undecodable):
                self.stats.counters(message.kind).rejected += 1
                self.stats.counters(message.kind).contract += 1
                log.warning(
                    "ingestion: rejected %s: field %r: %s", message.topic, message.error.field, message.error
                )
                if arrived.receipt is not None:  # sending it again would not mend it
                    arrived.receipt.settle(True)

    def _count_failure(self, received: Received, receipt: Receipt | None, err: Exception) -> None:
        seq = _seq(received.message)
        if receipt is not None and unreachable(err):
            self.stats.counters(received.kind).retried += 1
            log.warning(
                "ingestion: database unreachable for %s seq %d (%s); not acknowledged, the broker sends it"
                " again",
                received.topic,
                seq,
                err,
            )
            receipt.settle(False)
            return
        self.stats.counters(received.kind).failed += 1
        if receipt is not None:
            receipt.settle(True)  # lost: refused for good, and sending it again would hold back the rest
        if isinstance(err, SQLAlchemyError):
            log.error("ingestion: database error on %s seq %d: %s", received.topic, seq, err)
        else:  # a bug in one handler must not end ingestion for every site
            log.error("ingestion: failed on %s seq %d", received.topic, seq, exc_info=err)

    def _committed(self, batch: list[Received], result: BatchResult, receipts: list[Receipt | None]) -> None:
        for receipt in receipts:
            if receipt is not None:
                receipt.settle(True)
        self.stats.batches += 1
        if self.stats.on_batch is not None and batch:
            self.stats.on_batch((self._clock() - batch[0].received_at).total_seconds())
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
                self._concurrent_stores = self._writers if postgres else 1
            return store_batch(session, batch, self._awaiting_soc, self._known_sites)


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the database could not be reached (so the message may be stored if sent
    again), rather than that it refused the message."""
    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return True
    return isinstance(err, OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError)


def _seq(message: Payload) -> int:
    return getattr(message, "seq", 0)


def _loop_time() -> float:
    """The running event loop's time [s]: the linger is a duration on the loop that sleeps it (virtual
    on a :class:`~wire.virtual_time.VirtualTimeEventLoop`), not on the system's clock."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # accept() from outside a loop (tests of the queue alone)
        return time.monotonic()
