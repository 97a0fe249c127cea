"""MQTT ingestion: the centre's subscriber that stores what the site gateways report.

::

    settings = IngestionSettings(host="broker.example", port=8883, username="centre", password=secret)
    async with Ingestion(settings, make_sessionmaker(engine)) as ingestion:
        ...                                       # runs until the block exits
        ingestion.stats[TopicKind.TELEMETRY].stored

How it behaves:

- One persistent MQTT session (MQTT 3.1.1, fixed client id, ``clean_session=False``, QoS 1), subscribed
  to every site's ``telemetry``, ``session``, ``status`` and ``ack`` topics
  (:func:`site_gateway.contract.subscription`), so messages sent while the centre is away wait in the
  broker. A lost connection is retried for ever with jittered exponential backoff.
- Each message is decoded with :func:`site_gateway.contract.decode_message` and handled in its own
  database transaction, one at a time in arrival order (the database work runs in a worker thread so
  the event loop is never blocked). Nothing that one message does stops the loop: a payload that breaks
  the contract, a message for a site not in ``sites``, a session event for a charger the centre does not
  know, or a database error is logged (naming the topic, and the field for a contract error), counted in
  :attr:`Ingestion.stats`, and dropped.
- :class:`Telemetry` is stored once per ``(site_id, seq)`` (:func:`insert_telemetry_once`); a
  redelivery is counted as a duplicate.
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
  ignored for now.
- :class:`CommandAck` is logged and counted (the control loop will act on it).
- Every stored message also moves the site's ``gateway_status.last_seen_at``.

Caveat: aiomqtt (paho) acknowledges a QoS 1 message when it arrives, not when we have stored it, so a
crash between the two loses that message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import random as _random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aiomqtt
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from aggregator.db.models import (
    Charger,
    ChargingSession,
    GatewayStatusRecord,
    Site,
    utcnow,
)
from aggregator.db.telemetry import insert_telemetry_once
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
from site_gateway.uplink import Backoff

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
    """Broke the contract, or named a site or charger the centre does not know."""
    failed: int = 0
    """The database refused or failed; the message is lost."""


@dataclass
class IngestionStats:
    kinds: dict[TopicKind, Counters] = field(default_factory=lambda: {k: Counters() for k in INGESTED_KINDS})
    unrouted: Counters = field(default_factory=Counters)
    """Messages whose topic could not be parsed (so their kind is unknown)."""

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


# ------------------------------------------------------------------------------------------- service


class Ingestion:
    """Async context manager owning the MQTT connection and the task that stores messages."""

    def __init__(
        self,
        settings: IngestionSettings,
        sessions: Callable[[], Session],
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self._clock = clock
        self._random = random
        self._sleep = sleep
        self.stats = IngestionStats()
        self.subscribed = asyncio.Event()
        """Set while connected and subscribed."""
        self.connects = 0
        self._known_sites: set[str] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._connection: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._connection = self._tasks.create_task(self._run(), name="ingestion-connection")
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
            self.subscribed.clear()

    @property
    def running(self) -> bool:
        return self._connection is not None and not self._connection.done()

    async def wait_subscribed(self, timeout: float) -> None:
        await asyncio.wait_for(self.subscribed.wait(), timeout)

    # ------------------------------------------------------------------------------------- connection

    async def _run(self) -> None:
        attempt = 0
        while True:
            got_through = False
            try:
                async with self._client() as client:
                    got_through = True
                    await self._consume(client)
            except aiomqtt.MqttError as err:
                lost: BaseException = err
            finally:
                self.subscribed.clear()
            if got_through:
                attempt = 0
            delay = self.settings.backoff.delay(attempt, self._random)
            attempt += 1
            log.warning(
                "ingestion: MQTT connection to %s:%s lost or refused (%s); retry %d in %.1f s",
                self.settings.host,
                self.settings.port,
                lost,
                attempt,
                delay,
            )
            await self._sleep(delay)

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
            await self.handle(message.topic.value, message.payload)

    # --------------------------------------------------------------------------------------- messages

    async def handle(self, topic_name: str, payload: object) -> None:
        """Decode, store and count one message; never raises for a bad message or a database error."""
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
            return
        try:
            outcome = await asyncio.to_thread(self._store, message)
        except RejectedMessage as err:
            counters.rejected += 1
            log.warning("ingestion: rejected %s seq %d: %s", topic_name, _seq(message), err)
            return
        except SQLAlchemyError as err:
            counters.failed += 1
            log.error("ingestion: database error on %s seq %d: %s", topic_name, _seq(message), err)
            return
        except Exception:  # a bug in one handler must not end ingestion for every site
            counters.failed += 1
            log.exception("ingestion: failed on %s seq %d", topic_name, _seq(message))
            return
        setattr(counters, outcome.value, getattr(counters, outcome.value) + 1)

    def _store(self, message: Payload) -> Outcome:
        """One message, one transaction (committed here, rolled back on any error)."""
        now = self._clock()
        with self._sessions() as session, session.begin():
            self._check_site(session, message.site_id)
            match message:
                case Telemetry():
                    outcome = (
                        Outcome.STORED
                        if insert_telemetry_once(session, message, received_at=now)
                        else Outcome.DUPLICATE
                    )
                case GatewayStatus():
                    outcome = _record_status(session, message, now)
                case SessionEvent():
                    outcome = _apply_session_event(session, message)
                case CommandAck():
                    log.info(
                        "ingestion: site %s acked command %s: %s%s",
                        message.site_id,
                        message.command_id,
                        message.status.value,
                        f" ({message.error})" if message.error else "",
                    )
                    outcome = Outcome.STORED
                case _:
                    raise RejectedMessage(f"{type(message).__name__} is not a site→centre message")
            session.execute(
                update(GatewayStatusRecord)
                .where(GatewayStatusRecord.site_id == message.site_id)
                .values(last_seen_at=now)
            )
        return outcome

    def _check_site(self, session: Session, site_id: str) -> None:
        if site_id in self._known_sites:
            return
        if session.get(Site, site_id) is None:
            raise RejectedMessage(f"unknown site {site_id!r} (no row in sites)")
        self._known_sites.add(site_id)


def _seq(message: Payload) -> int:
    return getattr(message, "seq", 0)


# ------------------------------------------------------------------------------------------ storing


def _is_last_will(status: GatewayStatus) -> bool:
    return status.state is GatewayState.OFFLINE and status.since is None


def _record_status(session: Session, status: GatewayStatus, now: dt.datetime) -> Outcome:
    row = session.get(GatewayStatusRecord, status.site_id, with_for_update=True)
    if row is None:
        session.add(
            GatewayStatusRecord(
                site_id=status.site_id,
                state=status.state,
                reason=status.reason,
                since=status.since,
                last_seen_at=now,
                last_seq=status.seq,
            )
        )
        return Outcome.STORED
    last_seq = row.last_seq or 0
    if status.seq == last_seq or (status.seq < last_seq and not _is_last_will(status)):
        return Outcome.DUPLICATE
    row.state, row.reason, row.since = status.state, status.reason, status.since
    row.last_seq = max(last_seq, status.seq)
    return Outcome.STORED


def _apply_session_event(session: Session, event: SessionEvent) -> Outcome:
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
        return _update(row, {k: v for k, v in needs.items() if v is not None})
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
    outcome = _update(row, {k: v for k, v in changes.items() if v is not None})
    return Outcome.STORED if created else outcome


def _find_session(session: Session, charger: Charger, transaction_id: str | None) -> ChargingSession | None:
    query = select(ChargingSession).where(ChargingSession.charger_id == charger.id)
    if transaction_id is not None:
        return session.scalars(query.where(ChargingSession.transaction_id == transaction_id)).one_or_none()
    query = query.where(ChargingSession.stopped_at.is_(None)).order_by(ChargingSession.started_at.desc())
    return session.scalars(query.limit(1)).first()


def _update(row: ChargingSession, changes: dict[str, object]) -> Outcome:
    changed = {k: v for k, v in changes.items() if getattr(row, k) != v}
    for name, value in changed.items():
        setattr(row, name, value)
    return Outcome.STORED if changed else Outcome.DUPLICATE
