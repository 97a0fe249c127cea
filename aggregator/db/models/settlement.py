"""Settlement's books: runs, the double-entry ledger, and disputes; all append-only.

Updating or deleting a row of these tables raises :class:`~aggregator.db.models.base.ImmutableRowError`
(a correction is a reversing transaction, a new run, or a dispute event).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.orm import Mapped, Mapper, mapped_column, relationship

from aggregator.db.models.base import Base, BigId, ImmutableRowError, utcnow
from aggregator.db.types import value_enum

# ---------------------------------------------------------------------------------------- settlement


class LedgerAccountKind(enum.StrEnum):
    """What a ledger account records; its owner ref says whose (see :mod:`aggregator.settlement.ledger`)."""

    PROGRAM_RECEIVABLE = "program_receivable"
    """What a program (its grid operator) owes us; owner ``program:<id>``."""
    PENALTIES = "penalties"
    """Penalties a program withholds for under-delivery; owner ``program:<id>``."""
    PLATFORM_REVENUE = "platform_revenue"
    """Our fee; owner ``platform``."""
    WEAR_COMPENSATION_EXPENSE = "wear_compensation_expense"
    """Battery wear we compensate drivers for; owner ``platform``."""
    DRIVER_PAYABLE = "driver_payable"
    """What we owe a driver; owner ``user:<id>``."""


class SettlementRunKind(enum.StrEnum):
    EVENT = "event"
    PERIOD = "period"


class SettlementRun(Base):
    """One version of the settlement of a scope (an event, or a program's period); append-only.

    ``inputs`` is the canonical form of what was booked and ``inputs_hash`` its SHA-256, so a re-run
    with the same inputs is recognised. A run with changed inputs is the scope's next ``version``; it
    reverses the previous version's transactions and books its own. ``UNIQUE (scope, version)`` is
    what stops two concurrent runs of a scope from both booking.
    """

    __tablename__ = "settlement_runs"
    __table_args__ = (
        UniqueConstraint("scope", "version"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(300))
    """What is settled: ``event:<event ref>`` or ``period:<program id>:<start>/<end>``."""
    kind: Mapped[SettlementRunKind] = mapped_column(value_enum(SettlementRunKind, "settlement_run_kind"))
    version: Mapped[int]
    inputs_hash: Mapped[str] = mapped_column(String(64))
    """Hex SHA-256 of the canonical JSON of ``inputs``."""
    inputs: Mapped[dict[str, Any]]
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("settlement_runs.id"))
    """The scope's previous version, ``None`` for version 1."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LedgerAccount(Base):
    """An account of the double-entry ledger: ``(kind, owner_ref, currency)`` is unique."""

    __tablename__ = "ledger_accounts"
    __table_args__ = (UniqueConstraint("kind", "owner_ref", "currency"), Index(None, "owner_ref"))

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[LedgerAccountKind] = mapped_column(value_enum(LedgerAccountKind, "ledger_account_kind"))
    owner_ref: Mapped[str] = mapped_column(String(100))
    """``program:<id>``, ``user:<id>`` or ``platform``."""
    currency: Mapped[str] = mapped_column(String(3))
    """ISO 4217 code; every entry on the account is in it."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LedgerTransaction(Base):
    """A balanced set of entries, booked at once; append-only.

    Its entries sum to zero in each currency: checked before insert by
    :func:`aggregator.settlement.ledger.post_transaction` and, on PostgreSQL, at commit by a deferred
    constraint trigger (migration 0003). A correction is a new transaction with ``reverses_id`` set
    (``UNIQUE``, so a transaction is reversed at most once), never an update.
    """

    __tablename__ = "ledger_transactions"
    __table_args__ = (UniqueConstraint("reverses_id"), Index(None, "occurred_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("settlement_runs.id"), index=True)
    """The settlement run that booked it; ``None`` for a transaction booked by hand."""
    description: Mapped[str] = mapped_column(String(500))
    occurred_at: Mapped[dt.datetime]
    """When what it books happened (an event's start, a period's start); balances over a time range
    select by it. A reversal keeps the reversed transaction's ``occurred_at``."""
    booked_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reverses_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("ledger_transactions.id"))

    entries: Mapped[list[LedgerEntry]] = relationship(
        back_populates="transaction", order_by="LedgerEntry.id", lazy="selectin"
    )


class LedgerEntry(Base):
    """One line of a transaction: ``amount_minor`` in the account's currency's minor unit (cents),
    positive for a debit, negative for a credit; append-only."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount_minor <> 0", name="amount_minor_not_zero"),
        Index(None, "account_id", "transaction_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    transaction_id: Mapped[int] = mapped_column(BigId, ForeignKey("ledger_transactions.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    memo: Mapped[str] = mapped_column(String(300), default="")

    transaction: Mapped[LedgerTransaction] = relationship(back_populates="entries")
    account: Mapped[LedgerAccount] = relationship(lazy="joined")


def _refuse_ledger_update(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    # A row is flushed as "dirty" when only a collection of it changed (entries added to a new
    # transaction); only a changed column is an update.
    state = inspect(target)
    changed = [prop.key for prop in mapper.column_attrs if state.attrs[prop.key].history.has_changes()]
    if changed:
        raise ImmutableRowError(
            f"{target.__tablename__} row {target.id} is settlement history and cannot be changed "
            f"({', '.join(changed)}); book a reversing transaction (or a new settlement run) instead"
        )


def _refuse_ledger_delete(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    raise ImmutableRowError(
        f"{target.__tablename__} row {target.id} is settlement history and cannot be deleted; "
        "book a reversing transaction (or a new settlement run) instead"
    )


for _ledger_model in (SettlementRun, LedgerAccount, LedgerTransaction, LedgerEntry):
    event.listen(_ledger_model, "before_update", _refuse_ledger_update)
    event.listen(_ledger_model, "before_delete", _refuse_ledger_delete)


# ------------------------------------------------------------------------------------------ disputes


class DisputeEventKind(enum.StrEnum):
    """What happened to a dispute; the resolutions are :attr:`ADJUSTED` and :attr:`REJECTED`."""

    OPENED = "opened"
    COMMENT = "comment"
    ADJUSTED = "adjusted"
    """Resolved in the disputing party's favour with an adjusting ledger transaction."""
    REJECTED = "rejected"
    """Resolved without a change to the ledger, with a note saying why."""


class Dispute(Base):
    """A driver's or grid operator's objection to one ledger entry of their own account; append-only.

    ``account_owner_ref`` is the entry's account owner (``user:<id>``, ``program:<id>``): whose line
    it is. What happened since is :class:`DisputeEvent` rows (see :mod:`aggregator.settlement.disputes`).
    """

    __tablename__ = "disputes"
    __table_args__ = (Index(None, "account_owner_ref", "opened_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ledger_entry_id: Mapped[int] = mapped_column(BigId, ForeignKey("ledger_entries.id"), index=True)
    account_owner_ref: Mapped[str] = mapped_column(String(100))
    opened_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    reason: Mapped[str] = mapped_column(String(2000))
    opened_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DisputeEvent(Base):
    """One step of a dispute's history (opened, a comment, its resolution); append-only.

    A resolution sets ``resolves_id`` to its dispute (``UNIQUE``: a dispute is resolved at most once,
    even by two admins at the same moment); an adjustment names its ledger transaction.
    """

    __tablename__ = "dispute_events"
    __table_args__ = (
        UniqueConstraint("resolves_id"),
        UniqueConstraint("adjustment_transaction_id"),
        CheckConstraint("resolves_id IS NULL OR resolves_id = dispute_id", name="resolves_own_dispute"),
        Index(None, "dispute_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dispute_id: Mapped[int] = mapped_column(ForeignKey("disputes.id"))
    kind: Mapped[DisputeEventKind] = mapped_column(value_enum(DisputeEventKind, "dispute_event_kind"))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    note: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolves_id: Mapped[int | None] = mapped_column(ForeignKey("disputes.id"))
    """The dispute, on its resolution (``adjusted``/``rejected``); ``None`` on other events."""
    adjustment_transaction_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("ledger_transactions.id"))
    """The adjusting ledger transaction of an ``adjusted`` resolution."""


def _refuse_dispute_change(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    raise ImmutableRowError(
        f"{target.__tablename__} row {target.id} is a dispute's history and cannot be changed or "
        "deleted; append a dispute event instead"
    )


for _dispute_model in (Dispute, DisputeEvent):
    event.listen(_dispute_model, "before_update", _refuse_dispute_change)
    event.listen(_dispute_model, "before_delete", _refuse_dispute_change)
