"""The settlement ledger: balanced, immutable, reversible, and its balances by account, owner and time.

Runs on SQLite and PostgreSQL. Tests do not empty the tables afterwards (the ledger refuses deletes);
each one books to accounts of its own owners instead.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aggregator.db.models import (
    Base,
    ImmutableRowError,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    SettlementRun,
    SettlementRunKind,
)
from aggregator.db.session import make_sessionmaker
from aggregator.settlement.ledger import (
    PLATFORM,
    AccountKey,
    AlreadyReversedError,
    LedgerAccountKind,
    LedgerError,
    Posting,
    UnbalancedTransactionError,
    account_balance,
    balances,
    check_balanced,
    driver_owner,
    get_or_create_account,
    owner_balances,
    post_transaction,
    program_owner,
    reverse_transaction,
    transaction_imbalances,
    trial_balance,
)

T0 = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)
Kind = LedgerAccountKind


@pytest.fixture(scope="module")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as session:
        yield session
        session.rollback()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def receivable(program: str, currency: str = "EUR") -> AccountKey:
    return AccountKey(Kind.PROGRAM_RECEIVABLE, program_owner(program), currency)


def payable(driver: int, currency: str = "EUR") -> AccountKey:
    return AccountKey(Kind.DRIVER_PAYABLE, driver_owner(driver), currency)


def fresh_driver() -> int:
    return uuid.uuid4().int % 2_000_000_000


def event_postings(program: str, driver: int, amount: int, currency: str = "EUR") -> list[Posting]:
    return [
        Posting(receivable(program, currency), amount, "gross"),
        Posting(payable(driver, currency), -amount),
    ]


def count(session: Session, model: type[Base]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


# --------------------------------------------------------------------------------------- balancing


def test_a_balanced_transaction_is_stored_with_its_entries(session: Session) -> None:
    program, driver = unique("dr"), fresh_driver()
    fee = AccountKey(Kind.PLATFORM_REVENUE, PLATFORM, "EUR")
    transaction = post_transaction(
        session,
        [
            Posting(receivable(program), 1000, "gross"),
            Posting(fee, -100, "fee"),
            Posting(payable(driver), -900, "share"),
        ],
        description="event 1",
        occurred_at=T0,
    )
    session.commit()
    session.expire_all()

    stored = session.get(LedgerTransaction, transaction.id)
    assert stored is not None
    assert [(e.account.kind, e.amount_minor, e.memo) for e in stored.entries] == [
        (Kind.PROGRAM_RECEIVABLE, 1000, "gross"),
        (Kind.PLATFORM_REVENUE, -100, "fee"),
        (Kind.DRIVER_PAYABLE, -900, "share"),
    ]
    assert stored.occurred_at == T0
    assert account_balance(session, receivable(program)) == 1000
    assert account_balance(session, payable(driver)) == -900


def test_an_unbalanced_transaction_is_refused_before_anything_is_stored(session: Session) -> None:
    program, driver = unique("dr"), fresh_driver()
    before = count(session, LedgerEntry), count(session, LedgerTransaction)
    with pytest.raises(UnbalancedTransactionError, match=r"EUR postings sum to 1 \(minor units\)") as caught:
        post_transaction(
            session,
            [Posting(receivable(program), 1000), Posting(payable(driver), -999)],
            description="off by one",
            occurred_at=T0,
        )
    assert (caught.value.currency, caught.value.total_minor) == ("EUR", 1)
    session.rollback()
    assert (count(session, LedgerEntry), count(session, LedgerTransaction)) == before


def test_each_currency_balances_on_its_own() -> None:
    mixed = [Posting(receivable("p", "EUR"), 100), Posting(payable(1, "USD"), -100)]
    with pytest.raises(UnbalancedTransactionError, match="EUR postings sum to 100"):
        check_balanced(mixed, "mixed")
    both = [*mixed, Posting(payable(1, "EUR"), -100), Posting(receivable("p", "USD"), 100)]
    check_balanced(both, "both")  # no error


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Posting(receivable("p"), 0), "amount_minor is 0"),
        (lambda: Posting(receivable("p"), 1.5), "is not an integer"),  # type: ignore[arg-type]
        (lambda: Posting(receivable("p"), True), "is not an integer"),
        (lambda: AccountKey(Kind.DRIVER_PAYABLE, "user:1", "euro"), "'euro' is not ISO 4217"),
        (lambda: AccountKey(Kind.DRIVER_PAYABLE, "", "EUR"), "owner_ref '' must be"),
        (lambda: check_balanced([Posting(receivable("p"), 5)], "lonely"), "has 1 posting"),
    ],
)
def test_malformed_postings_are_refused_with_the_field_named(make: object, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        make()  # type: ignore[operator]


@given(
    st.lists(
        st.tuples(st.sampled_from(["EUR", "USD"]), st.integers(-10_000, 10_000).filter(bool)),
        min_size=2,
        max_size=8,
    )
)
def test_check_balanced_accepts_exactly_the_postings_that_sum_to_zero_per_currency(
    lines: list[tuple[str, int]],
) -> None:
    postings = [Posting(payable(i, currency), amount) for i, (currency, amount) in enumerate(lines)]
    totals: dict[str, int] = defaultdict(int)
    for currency, amount in lines:
        totals[currency] += amount
    if all(total == 0 for total in totals.values()):
        check_balanced(postings)
    else:
        with pytest.raises(UnbalancedTransactionError):
            check_balanced(postings)


def test_the_database_refuses_to_commit_an_unbalanced_transaction(engine: Engine) -> None:
    """Inserted behind the ledger's back: PostgreSQL's deferred constraint trigger refuses it at commit."""
    if not is_postgres(engine):
        pytest.skip("SQLite has no deferred triggers: there only post_transaction checks the balance")
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        account = get_or_create_account(session, payable(fresh_driver()))
        session.commit()
        account_id = account.id
    with engine.connect() as connection:
        before = connection.scalar(select(func.count()).select_from(LedgerTransaction))
        transaction_id = connection.execute(
            insert(LedgerTransaction)
            .values(description="sneaky", occurred_at=T0, booked_at=T0)
            .returning(LedgerTransaction.id)
        ).scalar_one()
        connection.execute(
            insert(LedgerEntry).values(
                transaction_id=transaction_id, account_id=account_id, amount_minor=7, memo=""
            )
        )
        with pytest.raises(IntegrityError, match=f"ledger transaction {transaction_id} does not balance"):
            connection.commit()
        connection.rollback()
        assert connection.scalar(select(func.count()).select_from(LedgerTransaction)) == before

        connection.execute(
            insert(LedgerTransaction).values(description="empty", occurred_at=T0, booked_at=T0)
        )
        with pytest.raises(IntegrityError, match="has no entries"):
            connection.commit()


# ------------------------------------------------------------------------------------ immutability


@pytest.fixture
def booked(sessions: sessionmaker[Session]) -> int:
    """A committed transaction with a run (every ledger table has a row); its id."""
    with sessions() as session:
        run = SettlementRun(
            scope=unique("event:test"),
            kind=SettlementRunKind.EVENT,
            version=1,
            inputs_hash="0" * 64,
            inputs={},
        )
        session.add(run)
        session.flush()
        transaction = post_transaction(
            session,
            event_postings(unique("dr"), fresh_driver(), 500),
            description="x",
            occurred_at=T0,
            run_id=run.id,
        )
        session.commit()
        return transaction.id


def _rows(session: Session, transaction_id: int) -> dict[type[Base], Any]:
    transaction = session.get(LedgerTransaction, transaction_id)
    assert transaction is not None and transaction.run_id is not None
    entry = transaction.entries[0]
    return {
        LedgerTransaction: transaction,
        LedgerEntry: entry,
        LedgerAccount: entry.account,
        SettlementRun: session.get(SettlementRun, transaction.run_id),
    }


CHANGES = {
    LedgerTransaction: ("description", "rewritten"),
    LedgerEntry: ("amount_minor", 1),
    LedgerAccount: ("currency", "USD"),
    SettlementRun: ("inputs_hash", "f" * 64),
}


@pytest.mark.parametrize("model", list(CHANGES), ids=lambda model: model.__tablename__)
def test_the_orm_refuses_to_update_or_delete_ledger_rows(
    sessions: sessionmaker[Session], booked: int, model: type[Base]
) -> None:
    attribute, value = CHANGES[model]
    with sessions() as session:
        row = _rows(session, booked)[model]
        setattr(row, attribute, value)
        with pytest.raises(
            ImmutableRowError,
            match=rf"{model.__tablename__} row \d+ is settlement history and cannot be changed",
        ):
            session.flush()
    with sessions() as session:
        session.delete(_rows(session, booked)[model])
        with pytest.raises(ImmutableRowError, match="book a reversing transaction"):
            session.flush()
    with sessions() as session:
        assert getattr(_rows(session, booked)[model], attribute) != value


@pytest.mark.parametrize("model", list(CHANGES), ids=lambda model: model.__tablename__)
def test_the_database_refuses_to_update_ledger_rows(engine: Engine, booked: int, model: type[Base]) -> None:
    attribute, value = CHANGES[model]
    with make_sessionmaker(engine)() as session:
        row_id = _rows(session, booked)[model].id
    column = getattr(model, attribute)
    with engine.connect() as connection, pytest.raises(DBAPIError, match="settlement history"):
        connection.execute(update(model).where(model.id == row_id).values({column: value}))  # type: ignore[attr-defined]


def test_postgres_refuses_deletes_unless_a_purge_is_declared(engine: Engine, booked: int) -> None:
    if not is_postgres(engine):
        pytest.skip("SQLite has no session settings for a purge switch; there the ORM refuses deletes")
    where = LedgerEntry.transaction_id == booked
    with engine.connect() as connection:
        with pytest.raises(DBAPIError, match=r"DELETE of ledger_entries row \d+ refused"):
            connection.execute(delete(LedgerEntry).where(where))
        connection.rollback()
        connection.execute(text("SET LOCAL fleetgrid.ledger_purge = 'on'"))
        assert connection.execute(delete(LedgerEntry).where(where)).rowcount == 2
        connection.rollback()  # the purge switch works; keep the rows
        assert connection.scalar(select(func.count()).select_from(LedgerEntry).where(where)) == 2


# ---------------------------------------------------------------------------------------- reversal


def test_a_reversal_negates_every_entry_and_keeps_the_time_it_corrects(session: Session) -> None:
    program, driver = unique("dr"), fresh_driver()
    original = post_transaction(
        session, event_postings(program, driver, 1234), description="e", occurred_at=T0
    )
    session.commit()

    reversal = reverse_transaction(session, original.id)
    session.commit()

    assert reversal.reverses_id == original.id
    assert reversal.occurred_at == T0
    assert [e.amount_minor for e in reversal.entries] == [-1234, 1234]
    assert account_balance(session, receivable(program)) == 0
    assert account_balance(session, payable(driver)) == 0
    assert session.get(LedgerTransaction, original.id) is not None  # history kept


def test_a_transaction_is_reversed_at_most_once(session: Session) -> None:
    original = post_transaction(
        session, event_postings(unique("dr"), fresh_driver(), 10), description="e", occurred_at=T0
    )
    reverse_transaction(session, original.id)
    session.commit()
    with pytest.raises(AlreadyReversedError, match=f"transaction {original.id} was already reversed"):
        reverse_transaction(session, original.id)
    session.rollback()
    # Behind the check's back, UNIQUE (reverses_id) refuses it too.
    with pytest.raises(IntegrityError):
        post_transaction(
            session,
            event_postings(unique("dr"), fresh_driver(), 10),
            description="second reversal",
            occurred_at=T0,
            reverses_id=original.id,
        )
    session.rollback()


def test_reversing_a_missing_transaction_names_it(session: Session) -> None:
    with pytest.raises(LedgerError, match="ledger transaction 987654321 does not exist"):
        reverse_transaction(session, 987_654_321)


# ---------------------------------------------------------------------------------------- balances


def test_balances_by_account_owner_and_time_range(session: Session) -> None:
    program, first, second = unique("dr"), fresh_driver(), fresh_driver()
    hour = dt.timedelta(hours=1)
    post_transaction(session, event_postings(program, first, 100), description="a", occurred_at=T0)
    post_transaction(session, event_postings(program, second, 20), description="b", occurred_at=T0 + hour)
    post_transaction(session, event_postings(program, first, 3), description="c", occurred_at=T0 + 2 * hour)
    usd = post_transaction(session, event_postings(program, first, 7, "USD"), description="d", occurred_at=T0)
    session.commit()

    assert account_balance(session, receivable(program)) == 123
    assert account_balance(session, payable(first)) == -103
    assert account_balance(session, payable(first), start=T0 + hour) == -3
    assert account_balance(session, payable(first), end=T0 + hour) == -100
    assert account_balance(session, receivable(program), start=T0 + hour, end=T0 + 2 * hour) == 20
    assert account_balance(session, payable(fresh_driver())) == 0
    assert owner_balances(session, program_owner(program)) == {
        receivable(program): 123,
        receivable(program, "USD"): 7,
    }
    assert balances(session, owner_ref=program_owner(program), currency="USD") == {
        receivable(program, "USD"): 7
    }
    assert balances(session, owner_ref=driver_owner(first), kind=Kind.DRIVER_PAYABLE, currency="EUR") == {
        payable(first): -103
    }
    # By booking time: everything was booked just now, nothing before the posting.
    assert (
        owner_balances(session, driver_owner(first), end=usd.booked_at - dt.timedelta(days=1), basis="booked")
        == {}
    )
    assert owner_balances(
        session, driver_owner(first), start=usd.booked_at - dt.timedelta(days=1), basis="booked"
    ) == {
        payable(first): -103,
        payable(first, "USD"): -7,
    }


def test_a_naive_range_is_refused(session: Session) -> None:
    with pytest.raises(LedgerError, match="start 2026-07-01T12:00:00 has no UTC offset"):
        balances(session, start=T0.replace(tzinfo=None))


def test_an_account_is_created_once(session: Session) -> None:
    key = payable(fresh_driver(), "JPY")
    first = get_or_create_account(session, key)
    session.commit()
    assert get_or_create_account(session, key).id == first.id
    assert (
        session.scalar(
            select(func.count()).select_from(LedgerAccount).where(LedgerAccount.owner_ref == key.owner_ref)
        )
        == 1
    )


def test_the_whole_ledger_balances(session: Session) -> None:
    """After everything the tests of this module booked (run last in the module)."""
    post_transaction(
        session, event_postings(unique("dr"), fresh_driver(), 42), description="z", occurred_at=T0
    )
    session.commit()
    assert set(trial_balance(session).values()) == {0}
    assert transaction_imbalances(session) == []
