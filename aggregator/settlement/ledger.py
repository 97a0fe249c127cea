"""The settlement ledger: immutable double-entry bookkeeping in integer minor units.

An account is ``(kind, owner_ref, currency)``: a program's receivable and penalties (owner
``program:<id>``), our platform revenue and wear compensation expense (owner ``platform``), a driver's
payable (owner ``user:<id>``); every minor unit a settlement books lands on one of them, nothing is
left unallocated (a residual no driver can be credited with is platform revenue, its reason in the
posting's memo: :mod:`aggregator.settlement.bookings`). A transaction is a set of postings that sums
to zero in each currency; amounts are integers in the currency's minor unit (cents), positive for a
debit and negative for a credit. So an account's balance is debit-positive: a receivable's balance
is what is owed to us, a payable's or revenue's balance is negative.

Nothing booked is ever changed or deleted (the models refuse it, and so does PostgreSQL, see migration
0003): a correction is :func:`reverse_transaction`, a new transaction with every entry negated.

Where the balance is enforced: :func:`post_transaction` checks it before inserting anything; on
PostgreSQL a deferred constraint trigger checks it again at commit, so an unbalanced transaction
cannot be committed even by code that bypasses this module. SQLite has no deferred triggers: there
this module is the only check.

Functions here take a :class:`~sqlalchemy.orm.Session` and only ``flush``; the caller owns the
database transaction (a settlement run books all of its ledger transactions in one).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from aggregator.db.models import LedgerAccount, LedgerAccountKind, LedgerEntry, LedgerTransaction, utcnow

__all__ = [
    "PLATFORM",
    "AccountKey",
    "AlreadyReversedError",
    "LedgerAccountKind",
    "LedgerError",
    "Posting",
    "UnbalancedTransactionError",
    "account_balance",
    "balances",
    "check_balanced",
    "driver_owner",
    "entries_net",
    "get_or_create_account",
    "net_postings",
    "owner_balances",
    "post_transaction",
    "program_owner",
    "reverse_transaction",
    "transaction_imbalances",
    "trial_balance",
]

PLATFORM = "platform"
"""The owner ref of our own accounts (platform revenue, wear compensation expense)."""

CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}$")

TimeBasis = Literal["occurred", "booked"]
"""Which time a range selects transactions by: when what they book happened, or when they were booked."""


class LedgerError(ValueError):
    """A posting or transaction the ledger refuses; the message names the offending field or object."""


class UnbalancedTransactionError(LedgerError):
    """A transaction's postings do not sum to zero in one of its currencies."""

    def __init__(self, currency: str, total_minor: int, description: str) -> None:
        self.currency = currency
        self.total_minor = total_minor
        super().__init__(
            f"transaction {description!r} does not balance: its {currency} postings sum to "
            f"{total_minor} (minor units), not 0"
        )


class AlreadyReversedError(LedgerError):
    """A transaction that was already reversed (a transaction is reversed at most once)."""


def program_owner(program_id: str) -> str:
    """The owner ref of a program's accounts."""
    return f"program:{program_id}"


def driver_owner(user_id: int) -> str:
    """The owner ref of a driver's (a user's) accounts."""
    return f"user:{user_id}"


@dataclass(frozen=True, order=True)
class AccountKey:
    """Which account: its kind, whose it is (``program:<id>``, ``user:<id>``, ``platform``), its currency."""

    kind: LedgerAccountKind
    owner_ref: str
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.kind, LedgerAccountKind):
            raise LedgerError(f"account kind {self.kind!r} is not a LedgerAccountKind")
        if not self.owner_ref or len(self.owner_ref) > 100:
            raise LedgerError(f"account owner_ref {self.owner_ref!r} must be 1 to 100 characters")
        if not CURRENCY_PATTERN.match(self.currency):
            raise LedgerError(
                f"account {self.kind.value}/{self.owner_ref}: currency {self.currency!r} is not ISO 4217"
            )

    def __str__(self) -> str:
        return f"{self.kind.value}/{self.owner_ref}/{self.currency}"


@dataclass(frozen=True)
class Posting:
    """One line to book: ``amount_minor`` on ``account`` (positive debit, negative credit, never 0)."""

    account: AccountKey
    amount_minor: int
    memo: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise LedgerError(
                f"posting on {self.account}: amount_minor {self.amount_minor!r} is not an integer "
                "(amounts are integer minor units)"
            )
        if self.amount_minor == 0:
            raise LedgerError(f"posting on {self.account}: amount_minor is 0 (leave the line out)")
        if len(self.memo) > 300:
            raise LedgerError(f"posting on {self.account}: memo longer than 300 characters")


def check_balanced(postings: Sequence[Posting], description: str = "") -> None:
    """Raise :class:`UnbalancedTransactionError` unless ``postings`` sum to zero in each currency;
    :class:`LedgerError` if there are fewer than two."""
    if len(postings) < 2:
        raise LedgerError(f"transaction {description!r} has {len(postings)} posting(s); it needs at least 2")
    totals: dict[str, int] = defaultdict(int)
    for posting in postings:
        totals[posting.account.currency] += posting.amount_minor
    for currency, total in sorted(totals.items()):
        if total != 0:
            raise UnbalancedTransactionError(currency, total, description)


def get_or_create_account(session: Session, key: AccountKey) -> LedgerAccount:
    """The account ``key``, created if it does not exist yet.

    Safe against a concurrent creator: ``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL waits for the
    other transaction, then does nothing if it created the account) and the row is read afterwards.
    """
    found = _find_account(session, key)
    if found is not None:
        return found
    dialect = session.get_bind().dialect.name
    values = {"kind": key.kind, "owner_ref": key.owner_ref, "currency": key.currency, "created_at": utcnow()}
    unique = ["kind", "owner_ref", "currency"]
    if dialect == "postgresql":
        session.execute(
            postgresql.insert(LedgerAccount).values(values).on_conflict_do_nothing(index_elements=unique)
        )
    elif dialect == "sqlite":
        session.execute(
            sqlite.insert(LedgerAccount).values(values).on_conflict_do_nothing(index_elements=unique)
        )
    else:
        raise LedgerError(f"the ledger supports PostgreSQL and SQLite, not {dialect}")
    found = _find_account(session, key)
    if found is None:  # pragma: no cover (the insert or the conflicting row guarantees it)
        raise LedgerError(f"account {key} could not be created")
    return found


def _find_account(session: Session, key: AccountKey) -> LedgerAccount | None:
    return session.scalars(
        select(LedgerAccount).where(
            LedgerAccount.kind == key.kind,
            LedgerAccount.owner_ref == key.owner_ref,
            LedgerAccount.currency == key.currency,
        )
    ).one_or_none()


def _key(account: LedgerAccount) -> AccountKey:
    return AccountKey(account.kind, account.owner_ref, account.currency)


def post_transaction(
    session: Session,
    postings: Sequence[Posting],
    *,
    description: str,
    occurred_at: dt.datetime,
    run_id: int | None = None,
    reverses_id: int | None = None,
    on_entry: Callable[[LedgerEntry], None] | None = None,
) -> LedgerTransaction:
    """Book ``postings`` as one transaction (flushed, not committed) after checking that they balance.

    ``occurred_at`` (aware) is when what they book happened; ``on_entry`` is called after each entry is
    flushed (a hook for tests that fail a booking half-way).
    """
    if occurred_at.utcoffset() is None:
        raise LedgerError(
            f"transaction {description!r}: occurred_at {occurred_at.isoformat()} has no UTC offset"
        )
    if len(description) > 500:
        raise LedgerError(f"transaction {description[:40]!r}...: description longer than 500 characters")
    check_balanced(postings, description)
    transaction = LedgerTransaction(
        description=description, occurred_at=occurred_at, run_id=run_id, reverses_id=reverses_id
    )
    session.add(transaction)
    session.flush()
    for posting in postings:
        entry = LedgerEntry(
            transaction=transaction,
            account=get_or_create_account(session, posting.account),
            amount_minor=posting.amount_minor,
            memo=posting.memo,
        )
        session.add(entry)
        session.flush()
        if on_entry is not None:
            on_entry(entry)
    return transaction


def reverse_transaction(
    session: Session,
    transaction_id: int,
    *,
    run_id: int | None = None,
    description: str | None = None,
    on_entry: Callable[[LedgerEntry], None] | None = None,
) -> LedgerTransaction:
    """Book the exact opposite of transaction ``transaction_id`` (same accounts and ``occurred_at``).

    Raises :class:`AlreadyReversedError` if it was reversed before (the database's
    ``UNIQUE (reverses_id)`` refuses a concurrent second reversal too).
    """
    original = session.get(LedgerTransaction, transaction_id)
    if original is None:
        raise LedgerError(f"ledger transaction {transaction_id} does not exist")
    earlier = session.scalars(
        select(LedgerTransaction.id).where(LedgerTransaction.reverses_id == transaction_id)
    ).first()
    if earlier is not None:
        raise AlreadyReversedError(f"ledger transaction {transaction_id} was already reversed by {earlier}")
    postings = [Posting(_key(entry.account), -entry.amount_minor, entry.memo) for entry in original.entries]
    return post_transaction(
        session,
        postings,
        description=description or f"reversal of {original.id}: {original.description}"[:500],
        occurred_at=original.occurred_at,
        run_id=run_id,
        reverses_id=original.id,
        on_entry=on_entry,
    )


# ------------------------------------------------------------------------------------------ balances


def _range_clauses(
    start: dt.datetime | None, end: dt.datetime | None, basis: TimeBasis
) -> list[ColumnElement[bool]]:
    column = LedgerTransaction.occurred_at if basis == "occurred" else LedgerTransaction.booked_at
    clauses: list[ColumnElement[bool]] = []
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.utcoffset() is None:
            raise LedgerError(f"{name} {value.isoformat()} has no UTC offset")
    if start is not None:
        clauses.append(column >= start)
    if end is not None:
        clauses.append(column < end)
    return clauses


def balances(
    session: Session,
    *,
    owner_ref: str | None = None,
    kind: LedgerAccountKind | None = None,
    currency: str | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    basis: TimeBasis = "occurred",
) -> dict[AccountKey, int]:
    """Balance [minor units, debit-positive] of each account with entries, over ``[start, end)``.

    Accounts are filtered by ``owner_ref``, ``kind`` and ``currency`` when given; transactions by
    ``occurred_at`` (or ``booked_at`` with ``basis="booked"``) within the range. A reversal carries the
    reversed transaction's ``occurred_at``, so an ``occurred`` range shows the corrected figures.
    """
    query = (
        select(LedgerAccount, func.sum(LedgerEntry.amount_minor))
        .join(LedgerEntry, LedgerEntry.account_id == LedgerAccount.id)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .group_by(LedgerAccount.id)
    )
    if owner_ref is not None:
        query = query.where(LedgerAccount.owner_ref == owner_ref)
    if kind is not None:
        query = query.where(LedgerAccount.kind == kind)
    if currency is not None:
        query = query.where(LedgerAccount.currency == currency)
    query = query.where(*_range_clauses(start, end, basis))
    return {_key(account): int(total) for account, total in session.execute(query)}


def account_balance(
    session: Session,
    key: AccountKey,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    basis: TimeBasis = "occurred",
) -> int:
    """Balance of one account [minor units, debit-positive]; 0 for an account never booked to."""
    found = balances(
        session,
        owner_ref=key.owner_ref,
        kind=key.kind,
        currency=key.currency,
        start=start,
        end=end,
        basis=basis,
    )
    return found.get(key, 0)


def owner_balances(
    session: Session,
    owner_ref: str,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    basis: TimeBasis = "occurred",
) -> dict[AccountKey, int]:
    """Every account of one owner (``program:<id>``, ``user:<id>``, ``platform``) and its balance."""
    return balances(session, owner_ref=owner_ref, start=start, end=end, basis=basis)


def trial_balance(session: Session) -> dict[str, int]:
    """The sum of all entries per currency; every value is 0 in a sound ledger."""
    query = (
        select(LedgerAccount.currency, func.sum(LedgerEntry.amount_minor))
        .join(LedgerEntry, LedgerEntry.account_id == LedgerAccount.id)
        .group_by(LedgerAccount.currency)
    )
    return {currency: int(total) for currency, total in session.execute(query)}


def transaction_imbalances(session: Session) -> list[tuple[int, str, int]]:
    """``(transaction id, currency, sum)`` of every transaction that does not balance; empty when sound."""
    query = (
        select(LedgerEntry.transaction_id, LedgerAccount.currency, func.sum(LedgerEntry.amount_minor))
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .group_by(LedgerEntry.transaction_id, LedgerAccount.currency)
        .having(func.sum(LedgerEntry.amount_minor) != 0)
        .order_by(LedgerEntry.transaction_id)
    )
    return [(int(tx), currency, int(total)) for tx, currency, total in session.execute(query)]


def net_postings(postings: Iterable[Posting]) -> dict[AccountKey, int]:
    """What ``postings`` add to each account (zero sums left out)."""
    totals: dict[AccountKey, int] = defaultdict(int)
    for posting in postings:
        totals[posting.account] += posting.amount_minor
    return {key: total for key, total in totals.items() if total != 0}


def entries_net(entries: Iterable[LedgerEntry]) -> dict[AccountKey, int]:
    """What stored ``entries`` add to each account (zero sums left out)."""
    totals: dict[AccountKey, int] = defaultdict(int)
    for entry in entries:
        totals[_key(entry.account)] += entry.amount_minor
    return {key: total for key, total in totals.items() if total != 0}
