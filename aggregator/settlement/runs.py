"""Settlement runs: book what an event (or a program's period) earned, once, and correct it by versions.

A run takes a computed booking (:class:`EventBooking`, :class:`PeriodBooking`: integer minor-unit
amounts from the calculations of :mod:`aggregator.settlement`) and books it in the ledger
(:mod:`aggregator.settlement.ledger`). Runs are idempotent and versioned per *scope* (an event, or a
program's period):

- the booking is canonicalised (:func:`canonical_inputs`) and hashed; if the scope's latest version
  has the same hash, nothing is stored and that version is returned (:attr:`RunStatus.UNCHANGED`);
- otherwise the run is the scope's next version: it reverses every transaction the previous version
  booked and books its own, so the ledger holds exactly what a fresh run of the new inputs would book,
  and the history keeps both versions (:attr:`RunStatus.BOOKED`);
- a run is one database transaction: a failure half-way stores nothing of it;
- ``UNIQUE (scope, version)`` decides between two runs of a scope started at once: the second insert
  of the version fails (on PostgreSQL it waits for the first to commit), and the loser stores nothing
  and reports :attr:`RunStatus.UNCHANGED` (the winner booked the same inputs) or
  :attr:`RunStatus.CONCURRENT` (the winner booked other inputs; run again to supersede it);
- a dry run computes the booking and what it would reverse, and stores nothing.

What is booked, and how it becomes ledger postings and canonical inputs, is
:mod:`aggregator.settlement.bookings` (re-exported here).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.db.models import (
    LedgerEntry,
    LedgerTransaction,
    SettlementRun,
    SettlementRunKind,
)
from aggregator.settlement.bookings import (
    BOOKING_FORMAT,
    PLATFORM_LOSS_MEMO,
    RESIDUAL_MEMO,
    AnyBooking,
    Booking,
    BookingError,
    EventBooking,
    PeriodBooking,
    booking_postings,
    canonical_inputs,
    event_ref_for,
    inputs_hash,
    residual_memo,
)
from aggregator.settlement.ledger import (
    AccountKey,
    Posting,
    entries_net,
    post_transaction,
    reverse_transaction,
)

SessionFactory = Callable[[], Session]

# ---------------------------------------------------------------------------------------------- runs


class RunStatus(enum.StrEnum):
    BOOKED = "booked"
    """A new version of the scope was stored and booked."""
    UNCHANGED = "unchanged"
    """Already settled with these inputs (the scope's latest version); nothing stored."""
    CONCURRENT = "concurrent"
    """Another run of the scope stored the same version first, with other inputs; nothing stored."""
    DRY_RUN = "dry_run"
    """Computed only: what a run would book; nothing stored."""


class RunStage(enum.StrEnum):
    """Where a run is, for a ``hook`` (tests use it to line up concurrent runs or fail one half-way)."""

    PLANNED = "planned"
    """The latest version was read and the inputs differ; nothing written yet."""
    RECORDED = "recorded"
    """The run's row was inserted (its version claimed)."""
    ENTRY = "entry"
    """A ledger entry (of a reversal or of the booking) was inserted."""


RunHook = Callable[[RunStage], None]


@dataclass(frozen=True)
class RunOutcome:
    """What a settlement run did.

    ``version`` and ``run_id`` are the version booked (``BOOKED``), the existing one (``UNCHANGED``),
    the one that won (``CONCURRENT``), or the one a dry run would book (``run_id`` ``None``).
    ``postings`` are the full booking of the inputs; ``reversed_transaction_ids`` the previous
    version's transactions this run reversed (would reverse); ``transaction_ids`` the transactions it
    created, reversals first.
    """

    status: RunStatus
    scope: str
    version: int
    run_id: int | None
    inputs_hash: str
    postings: tuple[Posting, ...]
    reversed_transaction_ids: tuple[int, ...] = ()
    transaction_ids: tuple[int, ...] = ()
    message: str = ""

    @property
    def booked(self) -> bool:
        return self.status is RunStatus.BOOKED


class _VersionTakenError(Exception):
    """The run's ``(scope, version)`` was inserted by another run first."""


def settle_event(
    session_factory: SessionFactory,
    event_ref: str,
    booking_inputs: EventBooking,
    *,
    dry_run: bool = False,
    hook: RunHook | None = None,
) -> RunOutcome:
    """Settle one event (see the module docstring); ``event_ref`` must be the booking's."""
    if booking_inputs.event_ref != event_ref:
        raise BookingError(
            "event_ref", f"the booking is for event {booking_inputs.event_ref!r}, not {event_ref!r}"
        )
    return _settle(session_factory, booking_inputs, dry_run=dry_run, hook=hook)


def settle_period(
    session_factory: SessionFactory,
    booking_inputs: PeriodBooking,
    *,
    dry_run: bool = False,
    hook: RunHook | None = None,
) -> RunOutcome:
    """Settle a program's period (see the module docstring); the scope is the program and period."""
    return _settle(session_factory, booking_inputs, dry_run=dry_run, hook=hook)


def _settle(
    session_factory: SessionFactory, booking: AnyBooking, *, dry_run: bool, hook: RunHook | None
) -> RunOutcome:
    scope = booking.scope
    canonical = canonical_inputs(booking)
    digest = inputs_hash(canonical)
    postings = tuple(booking_postings(booking))
    try:
        with session_factory() as session, session.begin():
            latest = latest_run(session, scope)
            if latest is not None and latest.inputs_hash == digest:
                return _unchanged(latest, postings)
            to_reverse = tuple(_booked_by(session, latest.id)) if latest is not None else ()
            version = latest.version + 1 if latest is not None else 1
            if dry_run:
                return RunOutcome(
                    RunStatus.DRY_RUN,
                    scope,
                    version,
                    None,
                    digest,
                    postings,
                    reversed_transaction_ids=to_reverse,
                    message=f"{scope}: would book version {version} (dry run, nothing stored)",
                )
            if hook is not None:
                hook(RunStage.PLANNED)
            run = SettlementRun(
                scope=scope,
                kind=SettlementRunKind(canonical["kind"]),
                version=version,
                inputs_hash=digest,
                inputs=canonical,
                supersedes_id=latest.id if latest is not None else None,
            )
            session.add(run)
            try:
                session.flush()
            except IntegrityError as error:
                raise _VersionTakenError from error
            if hook is not None:
                hook(RunStage.RECORDED)
            created = _book(session, run, postings, booking.occurred_at, to_reverse, hook)
            run_id = run.id
    except _VersionTakenError:
        return _lost_race(session_factory, scope, digest, postings)
    return RunOutcome(
        RunStatus.BOOKED,
        scope,
        version,
        run_id,
        digest,
        postings,
        reversed_transaction_ids=to_reverse,
        transaction_ids=created,
        message=f"{scope}: booked version {version}"
        + (f", reversing transactions {list(to_reverse)} of version {version - 1}" if to_reverse else ""),
    )


def _book(
    session: Session,
    run: SettlementRun,
    postings: tuple[Posting, ...],
    occurred_at: dt.datetime,
    to_reverse: tuple[int, ...],
    hook: RunHook | None,
) -> tuple[int, ...]:
    def on_entry(entry: LedgerEntry) -> None:
        if hook is not None:
            hook(RunStage.ENTRY)

    created: list[int] = []
    for transaction_id in to_reverse:
        reversal = reverse_transaction(
            session,
            transaction_id,
            run_id=run.id,
            description=f"{run.scope} v{run.version}: reversal of transaction {transaction_id} "
            f"(v{run.version - 1})",
            on_entry=on_entry,
        )
        created.append(reversal.id)
    if postings:
        transaction = post_transaction(
            session,
            postings,
            description=f"{run.scope} v{run.version}",
            occurred_at=occurred_at,
            run_id=run.id,
            on_entry=on_entry,
        )
        created.append(transaction.id)
    return tuple(created)


def _unchanged(run: SettlementRun, postings: tuple[Posting, ...]) -> RunOutcome:
    return RunOutcome(
        RunStatus.UNCHANGED,
        run.scope,
        run.version,
        run.id,
        run.inputs_hash,
        postings,
        message=f"{run.scope}: already settled with these inputs (version {run.version}); nothing booked",
    )


def _lost_race(
    session_factory: SessionFactory, scope: str, digest: str, postings: tuple[Posting, ...]
) -> RunOutcome:
    with session_factory() as session:
        winner = latest_run(session, scope)
        if winner is None:  # pragma: no cover (the conflicting row was committed before the error)
            raise RuntimeError(f"{scope}: the run's version was taken, but no run of the scope is stored")
        if winner.inputs_hash == digest:
            return _unchanged(winner, postings)
        return RunOutcome(
            RunStatus.CONCURRENT,
            scope,
            winner.version,
            winner.id,
            digest,
            postings,
            message=f"{scope}: a concurrent run booked version {winner.version} with other inputs first; "
            "nothing booked, run again to supersede it",
        )


# ------------------------------------------------------------------------------------------- reading


def latest_run(session: Session, scope: str) -> SettlementRun | None:
    """The scope's highest version, ``None`` if it was never settled."""
    return session.scalars(
        select(SettlementRun)
        .where(SettlementRun.scope == scope)
        .order_by(SettlementRun.version.desc())
        .limit(1)
    ).first()


def run_history(session: Session, scope: str) -> list[SettlementRun]:
    """Every version of the scope, oldest first."""
    return list(
        session.scalars(
            select(SettlementRun).where(SettlementRun.scope == scope).order_by(SettlementRun.version)
        )
    )


def _booked_by(session: Session, run_id: int) -> list[int]:
    """The transactions run ``run_id`` booked (not its reversals of an earlier version)."""
    return list(
        session.scalars(
            select(LedgerTransaction.id)
            .where(LedgerTransaction.run_id == run_id, LedgerTransaction.reverses_id.is_(None))
            .order_by(LedgerTransaction.id)
        )
    )


def scope_balances(session: Session, scope: str) -> dict[AccountKey, int]:
    """What all versions of the scope's runs net to per account (zero sums left out): after any
    sequence of runs, the booking of the latest version's inputs."""
    entries = session.scalars(
        select(LedgerEntry)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .join(SettlementRun, SettlementRun.id == LedgerTransaction.run_id)
        .where(SettlementRun.scope == scope)
    )
    return dict(entries_net(entries))


__all__ = [
    "BOOKING_FORMAT",
    "PLATFORM_LOSS_MEMO",
    "RESIDUAL_MEMO",
    "AnyBooking",
    "Booking",
    "BookingError",
    "EventBooking",
    "PeriodBooking",
    "RunHook",
    "RunOutcome",
    "RunStage",
    "RunStatus",
    "SessionFactory",
    "booking_postings",
    "canonical_inputs",
    "event_ref_for",
    "inputs_hash",
    "latest_run",
    "residual_memo",
    "run_history",
    "scope_balances",
    "settle_event",
    "settle_period",
]
