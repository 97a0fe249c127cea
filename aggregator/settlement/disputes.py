"""Disputes: a driver or grid operator objects to a line of their statement or invoice; an admin
resolves it with an adjusting ledger transaction or a rejection.

A dispute names one ledger entry of the disputing party's own account: a driver's payable
(``user:<id>``) for a driver, the program receivable or penalties (``program:<id>``) of one of their
programs for a grid operator. Its history is :class:`~aggregator.db.models.DisputeEvent` rows, never
changed: ``opened`` (with the reason), ``comment`` (by a party or an admin), and one resolution,
``adjusted`` or ``rejected``. The database's ``UNIQUE (resolves_id)`` keeps a dispute from being
resolved twice, even by two admins at once.

An adjustment is decided in the disputing party's favour: a balanced transaction
(:func:`aggregator.settlement.ledger.post_transaction`) that credits the disputed account by the
amount (we owe the driver more; the program owes less, or is granted a larger penalty withheld) and
debits a counter account (:data:`COUNTER_ACCOUNTS`): platform revenue (we absorb it), wear
compensation expense, or, for a driver, the receivable of the program the disputed line came from
(the program owes more). It occurs when it is booked, so it shows on the statement of that month.

Who sees a dispute: admins, its opener, and the party whose line it is (the driver, or the grid
operator who owns the program); anyone else is told it does not exist (:class:`DisputeNotFoundError`).

Functions take a :class:`~sqlalchemy.orm.Session` and only ``flush``; the caller commits (and rolls
back after a :class:`DisputeConflictError`).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, false, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.db.models import (
    Dispute,
    DisputeEvent,
    DisputeEventKind,
    LedgerAccountKind,
    LedgerEntry,
    LedgerTransaction,
    Program,
    Role,
    SettlementRun,
    User,
)
from aggregator.settlement.ledger import (
    PLATFORM,
    AccountKey,
    Posting,
    driver_owner,
    post_transaction,
    program_owner,
)

MAX_TEXT = 2000

S = TypeVar("S", bound=Select[Any])

DRIVER_DISPUTABLE = frozenset({LedgerAccountKind.DRIVER_PAYABLE})
OPERATOR_DISPUTABLE = frozenset({LedgerAccountKind.PROGRAM_RECEIVABLE, LedgerAccountKind.PENALTIES})

COUNTER_ACCOUNTS: dict[LedgerAccountKind, frozenset[LedgerAccountKind]] = {
    LedgerAccountKind.DRIVER_PAYABLE: frozenset(
        {
            LedgerAccountKind.PLATFORM_REVENUE,
            LedgerAccountKind.WEAR_COMPENSATION_EXPENSE,
            LedgerAccountKind.PROGRAM_RECEIVABLE,
        }
    ),
    LedgerAccountKind.PROGRAM_RECEIVABLE: frozenset({LedgerAccountKind.PLATFORM_REVENUE}),
    LedgerAccountKind.PENALTIES: frozenset({LedgerAccountKind.PLATFORM_REVENUE}),
}
"""The accounts an adjustment may debit, by the kind of the disputed account."""


class DisputeStatus(enum.StrEnum):
    OPEN = "open"
    ADJUSTED = "adjusted"
    REJECTED = "rejected"


class DisputeError(ValueError):
    """A dispute action that cannot be done as asked; ``field`` names the offending input."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


class DisputeNotFoundError(DisputeError):
    """The dispute (or ledger entry) does not exist, or is not the caller's to see."""


class DisputeConflictError(DisputeError):
    """The dispute is resolved already (or the entry is already under an open dispute)."""


def _text(field_name: str, value: str) -> str:
    text = value.strip()
    if not text:
        raise DisputeError(field_name, "is empty")
    if len(text) > MAX_TEXT:
        raise DisputeError(field_name, f"is {len(text)} characters long; at most {MAX_TEXT}")
    return text


def _utc(now: dt.datetime) -> dt.datetime:
    if now.utcoffset() is None:
        raise DisputeError("now", f"{now.isoformat()} has no UTC offset")
    return now.astimezone(dt.UTC)


# --------------------------------------------------------------------------------------- visibility


def owned_program_refs(session: Session, user: User) -> list[str]:
    """The owner refs (``program:<id>``) of the programs ``user`` runs."""
    ids = session.scalars(select(Program.id).where(Program.owner_id == user.id).order_by(Program.id))
    return [program_owner(program_id) for program_id in ids]


def _visible_clause(session: Session, user: User) -> ColumnElement[bool] | None:
    """What restricts the disputes ``user`` may see; ``None`` for all (admins)."""
    if user.role is Role.ADMIN:
        return None
    if user.role is Role.DRIVER:
        refs = [driver_owner(user.id)]
    elif user.role is Role.GRID_OPERATOR:
        refs = owned_program_refs(session, user)
    else:
        return false()
    return or_(Dispute.opened_by_id == user.id, Dispute.account_owner_ref.in_(refs))


def visible_disputes(session: Session, user: User) -> Select[Dispute]:
    """The disputes ``user`` may see (unordered)."""
    query = select(Dispute)
    clause = _visible_clause(session, user)
    return query if clause is None else query.where(clause)


def get_visible(session: Session, user: User, dispute_id: int) -> Dispute:
    """Dispute ``dispute_id`` if ``user`` may see it; :class:`DisputeNotFoundError` otherwise."""
    dispute = session.scalar(visible_disputes(session, user).where(Dispute.id == dispute_id))
    if dispute is None:
        raise DisputeNotFoundError("dispute_id", f"you have no dispute {dispute_id}")
    return dispute


def history(session: Session, dispute_id: int) -> list[DisputeEvent]:
    """The dispute's events, oldest first."""
    return list(
        session.scalars(
            select(DisputeEvent).where(DisputeEvent.dispute_id == dispute_id).order_by(DisputeEvent.id)
        )
    )


def resolution(session: Session, dispute_id: int) -> DisputeEvent | None:
    """The dispute's resolution event, ``None`` while it is open."""
    return session.scalar(select(DisputeEvent).where(DisputeEvent.resolves_id == dispute_id))


def statuses(session: Session, dispute_ids: list[int]) -> dict[int, DisputeStatus]:
    """The status of each dispute of ``dispute_ids``."""
    found = dict.fromkeys(dispute_ids, DisputeStatus.OPEN)
    if dispute_ids:
        rows = session.execute(
            select(DisputeEvent.resolves_id, DisputeEvent.kind).where(
                DisputeEvent.resolves_id.in_(dispute_ids)
            )
        )
        for dispute_id, kind in rows:
            if dispute_id is not None:
                found[dispute_id] = DisputeStatus(kind.value)
    return found


def with_status(query: S, status: DisputeStatus) -> S:
    """``query`` keeping the disputes in ``status``."""
    resolved = select(DisputeEvent.resolves_id).where(DisputeEvent.resolves_id.is_not(None))
    if status is DisputeStatus.OPEN:
        return query.where(Dispute.id.not_in(resolved))
    return query.where(Dispute.id.in_(resolved.where(DisputeEvent.kind == DisputeEventKind(status.value))))


# ------------------------------------------------------------------------------------------ actions


def _disputable_entry(session: Session, user: User, ledger_entry_id: int) -> LedgerEntry:
    entry = session.get(LedgerEntry, ledger_entry_id)
    missing = DisputeNotFoundError("ledger_entry_id", f"you have no ledger entry {ledger_entry_id}")
    if entry is None:
        raise missing
    account = entry.account
    if user.role is Role.DRIVER:
        if account.kind not in DRIVER_DISPUTABLE or account.owner_ref != driver_owner(user.id):
            raise missing
    elif user.role is Role.GRID_OPERATOR:
        if account.kind not in OPERATOR_DISPUTABLE or account.owner_ref not in owned_program_refs(
            session, user
        ):
            raise missing
    else:
        raise DisputeError(
            "role", f"a {user.role.value} cannot open a dispute; drivers and grid operators can"
        )
    return entry


def open_dispute(
    session: Session, user: User, ledger_entry_id: int, reason: str, *, now: dt.datetime
) -> Dispute:
    """Open a dispute of ``user`` (a driver or grid operator) on one entry of their own account."""
    text = _text("reason", reason)
    entry = _disputable_entry(session, user, ledger_entry_id)
    open_already = with_status(
        select(Dispute.id).where(Dispute.ledger_entry_id == ledger_entry_id), DisputeStatus.OPEN
    )
    earlier = session.scalar(open_already.limit(1))
    if earlier is not None:
        raise DisputeConflictError(
            "ledger_entry_id", f"ledger entry {ledger_entry_id} is already disputed (dispute {earlier}, open)"
        )
    moment = _utc(now)
    dispute = Dispute(
        ledger_entry_id=entry.id,
        account_owner_ref=entry.account.owner_ref,
        opened_by_id=user.id,
        reason=text,
        opened_at=moment,
    )
    session.add(dispute)
    session.flush()
    session.add(
        DisputeEvent(
            dispute_id=dispute.id,
            kind=DisputeEventKind.OPENED,
            author_id=user.id,
            note=text,
            created_at=moment,
        )
    )
    session.flush()
    return dispute


def add_comment(
    session: Session, user: User, dispute_id: int, note: str, *, now: dt.datetime
) -> DisputeEvent:
    """Append a comment of ``user`` (a party or an admin) to an open dispute."""
    text = _text("note", note)
    dispute = get_visible(session, user, dispute_id)
    done = resolution(session, dispute.id)
    if done is not None:
        raise DisputeConflictError("dispute_id", f"dispute {dispute_id} was resolved ({done.kind.value})")
    comment = DisputeEvent(
        dispute_id=dispute.id,
        kind=DisputeEventKind.COMMENT,
        author_id=user.id,
        note=text,
        created_at=_utc(now),
    )
    session.add(comment)
    session.flush()
    return comment


@dataclass(frozen=True)
class Adjustment:
    """An adjustment in the disputing party's favour: ``amount_minor`` (> 0, in the disputed account's
    currency) credited to the disputed account and debited to ``counter``."""

    amount_minor: int
    counter: LedgerAccountKind


def _program_of(session: Session, entry: LedgerEntry) -> str | None:
    """The program whose event (period) booked ``entry``, from its run's inputs or its transaction."""
    transaction = session.get(LedgerTransaction, entry.transaction_id)
    if transaction is None:  # pragma: no cover (a foreign key)
        return None
    if transaction.run_id is not None:
        run = session.get(SettlementRun, transaction.run_id)
        program_id = run.inputs.get("program_id") if run is not None else None
        if isinstance(program_id, str) and program_id:
            return program_id
    for other in transaction.entries:
        if other.account.owner_ref.startswith("program:"):
            return other.account.owner_ref.removeprefix("program:")
    return None


def _adjusting_postings(
    session: Session, dispute: Dispute, entry: LedgerEntry, adjustment: Adjustment
) -> list[Posting]:
    if isinstance(adjustment.amount_minor, bool) or not isinstance(adjustment.amount_minor, int):
        raise DisputeError("amount_minor", f"{adjustment.amount_minor!r} is not an integer of minor units")
    if adjustment.amount_minor <= 0:
        raise DisputeError(
            "amount_minor",
            f"{adjustment.amount_minor} is not positive (an adjustment is in the party's favour)",
        )
    account = entry.account
    allowed = COUNTER_ACCOUNTS.get(account.kind, frozenset())
    if adjustment.counter not in allowed:
        names = ", ".join(sorted(kind.value for kind in allowed)) or "none"
        raise DisputeError(
            "counter_account",
            f"a dispute on a {account.kind.value} entry cannot be adjusted against "
            f"{adjustment.counter.value}; allowed: {names}",
        )
    if adjustment.counter is LedgerAccountKind.PROGRAM_RECEIVABLE:
        program_id = _program_of(session, entry)
        if program_id is None:
            raise DisputeError(
                "counter_account",
                f"ledger entry {entry.id} was not booked for a program; adjust against platform revenue",
            )
        counter_owner = program_owner(program_id)
    else:
        counter_owner = PLATFORM
    memo = f"dispute {dispute.id}"
    return [
        Posting(
            AccountKey(account.kind, account.owner_ref, account.currency), -adjustment.amount_minor, memo
        ),
        Posting(
            AccountKey(adjustment.counter, counter_owner, account.currency), adjustment.amount_minor, memo
        ),
    ]


def resolve(
    session: Session,
    admin: User,
    dispute_id: int,
    note: str,
    *,
    adjustment: Adjustment | None,
    now: dt.datetime,
) -> DisputeEvent:
    """Resolve an open dispute: with ``adjustment`` book it and record ``adjusted``, else ``rejected``.

    Both record ``note`` (why). :class:`DisputeConflictError` when the dispute was resolved already,
    also when another admin resolved it concurrently (the caller must then roll back).
    """
    if admin.role is not Role.ADMIN:
        raise DisputeError("role", f"only an admin resolves disputes, not a {admin.role.value}")
    text = _text("note", note)
    dispute = get_visible(session, admin, dispute_id)
    done = resolution(session, dispute.id)
    if done is not None:
        raise DisputeConflictError(
            "dispute_id", f"dispute {dispute_id} was resolved already ({done.kind.value})"
        )
    moment = _utc(now)
    transaction_id = None
    if adjustment is not None:
        entry = session.get(LedgerEntry, dispute.ledger_entry_id)
        assert entry is not None  # a foreign key
        postings = _adjusting_postings(session, dispute, entry, adjustment)
        transaction = post_transaction(
            session,
            postings,
            description=f"dispute {dispute.id}: adjustment of ledger entry {entry.id}",
            occurred_at=moment,
        )
        transaction_id = transaction.id
    event = DisputeEvent(
        dispute_id=dispute.id,
        kind=DisputeEventKind.ADJUSTED if adjustment is not None else DisputeEventKind.REJECTED,
        author_id=admin.id,
        note=text,
        created_at=moment,
        resolves_id=dispute.id,
        adjustment_transaction_id=transaction_id,
    )
    session.add(event)
    try:
        session.flush()
    except IntegrityError as error:
        raise DisputeConflictError(
            "dispute_id", f"dispute {dispute_id} was resolved by someone else at the same time"
        ) from error
    return event
