"""Storing what ingestion received: one batch of decoded site messages applied in one transaction.

:func:`store_batch` is the writer's work for one batch (in a worker thread, inside the caller's
transaction): it checks the sites, then applies the messages in arrival order, telemetry runs as one
bulk insert (:func:`~aggregator.db.telemetry.insert_telemetry_many`), statuses, session events and
acks one by one, and moves each site's ``gateway_status.last_seen_at`` forward once (never back; on
PostgreSQL in one statement that takes the sites' rows in the order of their ids, so that telemetry
batches stored at once cannot deadlock). What each message did comes back as a :class:`BatchResult`,
for :mod:`aggregator.ingestion.pipeline` to count and act on after the commit. :func:`independent` says which
batches may be stored alongside others. The rules for each kind of message are in
:mod:`aggregator.ingestion.pipeline`'s docstring.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from aggregator.db.models import (
    Base,
    Charger,
    ChargingSession,
    CommandStatus,
    GatewayStatusRecord,
    SetpointCommandRecord,
    Site,
    TelemetryRecord,
    Vehicle,
)
from aggregator.db.telemetry import insert_telemetry_many
from wire.contract import (
    CommandAck,
    GatewayState,
    GatewayStatus,
    Payload,
    SessionEvent,
    SessionEventKind,
    Telemetry,
    TopicKind,
)

log = logging.getLogger("aggregator.ingestion.pipeline")

ACK_DETAIL_MAX = 500
"""Length of ``setpoint_commands.ack_detail``; a longer error is cut to it."""


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
    """A decoded message waiting to be stored."""

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


def store_batch(
    session: Session,
    batch: list[Received],
    awaiting_soc: dict[EvseKey, AwaitingSoc],
    known_sites: set[str],
) -> BatchResult:
    """Apply ``batch`` in arrival order inside ``session``'s transaction (the caller commits).

    ``awaiting_soc`` (the open sessions waiting for a state of charge, see :func:`load_awaiting_soc`)
    is not changed: the result carries the new map. ``known_sites`` caches the ids found in
    ``sites``; the batch's other site ids are looked up and added to it.
    """
    unknown = {r.message.site_id for r in batch} - known_sites
    if unknown:
        known_sites.update(session.scalars(select(Site.id).where(Site.id.in_(unknown))))
    return BatchWriter(session, awaiting_soc).apply(batch, known_sites)


class BatchWriter:
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
        connection = self.session.connection()
        if connection.dialect.name == "postgresql":
            sites = sorted(self.last_seen)
            at = [self.last_seen[site_id] for site_id in sites]
            connection.exec_driver_sql(_PG_LAST_SEEN, {"site_id": sites, "at": at})
            return
        table = Base.metadata.tables[GatewayStatusRecord.__tablename__]
        connection.execute(
            update(table)
            .where(table.c.site_id == bindparam("b_site"), table.c.last_seen_at < bindparam("b_at"))
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
                    reads=list(status.reads),
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
        row.reads = list(status.reads)  # what the gateway running now reads, the last will's included
        row.last_seq = max(last_seq, status.seq)
        return Outcome.STORED

    # ------------------------------------------------------------------------------------- sessions

    def _session_event(self, event: SessionEvent) -> Outcome:
        if event.kind not in (
            SessionEventKind.STARTED,
            SessionEventKind.EV_CHARGING_NEEDS,
            SessionEventKind.STOPPED,
        ) and not (event.kind is SessionEventKind.AUTHORIZED and event.transaction_id and event.id_token):
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
        if event.kind is SessionEventKind.AUTHORIZED:  # a token presented after the session started
            if row is None:
                raise RejectedMessage(f"token for {evse} without a session ({event.transaction_id!r})")
            if not _update(row, {"id_token": event.id_token}):
                return Outcome.DUPLICATE
            if row.vehicle_id is None:
                row.vehicle_id = session.scalar(select(Vehicle.id).where(Vehicle.id_token == row.id_token))
            self._replan(event.site_id, f"token:{evse}")
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


_PG_LAST_SEEN = """\
UPDATE gateway_status SET last_seen_at = GREATEST(gateway_status.last_seen_at, seen.at)
FROM (
    SELECT g.site_id, v.at
    FROM gateway_status AS g JOIN unnest(%(site_id)b::varchar[], %(at)b::timestamptz[]) AS v(site_id, at)
        ON v.site_id = g.site_id
    ORDER BY g.site_id
    FOR UPDATE OF g
) AS seen
WHERE gateway_status.site_id = seen.site_id"""
"""``last_seen_at`` of many sites (PostgreSQL): the rows are locked in ``site_id`` order (``ORDER BY``
then ``FOR UPDATE``), so two transactions moving the same sites wait for each other, never in a
cycle; a time older than the one stored changes nothing."""


def _unknown_site(site_id: str) -> RejectedMessage:
    return RejectedMessage(f"unknown site {site_id!r} (no row in sites)")


def independent(batch: Sequence[Received], awaiting_soc: dict[EvseKey, AwaitingSoc] | None) -> bool:
    """Whether ``batch`` may be stored alongside other batches: it is telemetry alone and none of it
    reports the state of charge that an open session in ``awaiting_soc`` waits for (``None``: not
    loaded yet, so no)."""
    if awaiting_soc is None:
        return False
    for received in batch:
        message = received.message
        if not isinstance(message, Telemetry):
            return False
        if awaiting_soc:
            for evse in message.evses:
                if evse.soc_percent is None:
                    continue
                waiting = awaiting_soc.get((message.site_id, evse.charger_id, evse.evse_id))
                if waiting is not None and message.sent_at >= waiting.started_at:
                    return False
    return True


def load_awaiting_soc(session: Session) -> dict[EvseKey, AwaitingSoc]:
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


def load_last_seqs(session: Session) -> dict[str, int]:
    """The highest ``seq`` stored per site: of its telemetry (one index lookup per site, on
    ``UNIQUE (site_id, seq)``) or of its last status, whichever is higher; sites with neither are left
    out."""
    last_telemetry = (
        select(func.max(TelemetryRecord.seq)).where(TelemetryRecord.site_id == Site.id).scalar_subquery()
    )
    rows = session.execute(
        select(Site.id, last_telemetry, GatewayStatusRecord.last_seq).outerjoin(
            GatewayStatusRecord, GatewayStatusRecord.site_id == Site.id
        )
    )
    last: dict[str, int] = {}
    for site_id, telemetry_seq, status_seq in rows:
        seqs = [s for s in (telemetry_seq, status_seq) if s is not None]
        if seqs:
            last[site_id] = int(max(seqs))
    return last


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
