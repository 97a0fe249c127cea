"""Disputes on SQLite and PostgreSQL: who may open and see them, the lifecycle (opened, comments,
resolved once), adjustments that keep the ledger balanced, and an append-only history."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aggregator.db.models import (
    Dispute,
    DisputeEvent,
    DisputeEventKind,
    ImmutableRowError,
    LedgerAccount,
    LedgerEntry,
    Program,
    ProgramKind,
    Role,
    User,
)
from aggregator.db.session import make_sessionmaker
from aggregator.settlement.disputes import (
    Adjustment,
    DisputeConflictError,
    DisputeError,
    DisputeNotFoundError,
    DisputeStatus,
    add_comment,
    get_visible,
    history,
    open_dispute,
    resolve,
    statuses,
    visible_disputes,
    with_status,
)
from aggregator.settlement.ledger import (
    PLATFORM,
    AccountKey,
    LedgerAccountKind,
    account_balance,
    balances,
    driver_owner,
    program_owner,
    transaction_imbalances,
    trial_balance,
)
from aggregator.settlement.runs import EventBooking, settle_event

NOW = dt.datetime(2026, 8, 3, 9, 0, tzinfo=dt.UTC)
Kind = LedgerAccountKind


@pytest.fixture(scope="module")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@dataclass
class Parties:
    driver: User
    other_driver: User
    operator: User
    other_operator: User
    admin: User
    programs: dict[str, Program]

    def entry(
        self, session: Session, kind: LedgerAccountKind, owner_ref: str, currency: str = "EUR"
    ) -> LedgerEntry:
        """The first entry on the account."""
        return session.scalars(
            select(LedgerEntry)
            .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
            .where(
                LedgerAccount.kind == kind,
                LedgerAccount.owner_ref == owner_ref,
                LedgerAccount.currency == currency,
            )
            .order_by(LedgerEntry.id)
        ).first()  # type: ignore[return-value]


@pytest.fixture
def parties(session: Session, sessions: sessionmaker[Session]) -> Parties:
    """Two drivers share event ``e1`` of program ``flex`` (EUR) and ``e2`` of ``yen`` (JPY)."""
    users = {
        name: User(email=f"{name}@example.org", password_hash="x", role=role)
        for name, role in [
            ("driver", Role.DRIVER),
            ("other_driver", Role.DRIVER),
            ("operator", Role.GRID_OPERATOR),
            ("other_operator", Role.GRID_OPERATOR),
            ("admin", Role.ADMIN),
        ]
    }
    session.add_all(users.values())
    session.flush()
    programs = {
        "flex": Program(
            id="flex", name="Flex", kind=ProgramKind.V2G, owner_id=users["operator"].id, currency="EUR"
        ),
        "yen": Program(
            id="yen", name="Yen", kind=ProgramKind.V2G, owner_id=users["operator"].id, currency="JPY"
        ),
    }
    session.add_all(programs.values())
    session.commit()
    first, second = users["driver"].id, users["other_driver"].id
    for program, currency, ref in (("flex", "EUR", "api/e1"), ("yen", "JPY", "api/e2")):
        booking = EventBooking(
            program_id=program,
            currency=currency,
            event_ref=ref,
            occurred_at=dt.datetime(2026, 7, 10, 18, tzinfo=dt.UTC),
            gross_minor=10000,
            penalty_minor=500,
            platform_fee_minor=1000,
            driver_shares_minor={first: 6000, second: 2500},
        )
        assert settle_event(sessions, ref, booking).booked
    return Parties(**users, programs=programs)


def sound(session: Session) -> None:
    assert transaction_imbalances(session) == []
    assert set(trial_balance(session).values()) <= {0}


# ----------------------------------------------------------------------------------------- lifecycle


def test_a_driver_dispute_adjusted_against_the_program(session: Session, parties: Parties) -> None:
    payable = AccountKey(Kind.DRIVER_PAYABLE, driver_owner(parties.driver.id), "EUR")
    receivable = AccountKey(Kind.PROGRAM_RECEIVABLE, program_owner("flex"), "EUR")
    before = (account_balance(session, payable), account_balance(session, receivable))
    entry = parties.entry(session, Kind.DRIVER_PAYABLE, payable.owner_ref)

    dispute = open_dispute(session, parties.driver, entry.id, "  my car discharged 8 kWh, not 6 ", now=NOW)
    assert (dispute.reason, dispute.account_owner_ref) == (
        "my car discharged 8 kWh, not 6",
        payable.owner_ref,
    )
    with pytest.raises(DisputeConflictError, match="already disputed"):
        open_dispute(session, parties.driver, entry.id, "again", now=NOW)
    add_comment(session, parties.driver, dispute.id, "telemetry attached", now=NOW)
    add_comment(session, parties.admin, dispute.id, "checking with the operator", now=NOW)
    event = resolve(
        session,
        parties.admin,
        dispute.id,
        "the gateway lost 15 minutes of readings",
        adjustment=Adjustment(500, Kind.PROGRAM_RECEIVABLE),
        now=NOW,
    )
    session.commit()

    assert [step.kind for step in history(session, dispute.id)] == [
        DisputeEventKind.OPENED,
        DisputeEventKind.COMMENT,
        DisputeEventKind.COMMENT,
        DisputeEventKind.ADJUSTED,
    ]
    assert statuses(session, [dispute.id]) == {dispute.id: DisputeStatus.ADJUSTED}
    assert event.adjustment_transaction_id is not None
    # The driver is owed 5.00 EUR more (a credit), the program owes 5.00 EUR more (a debit).
    assert account_balance(session, payable) == before[0] - 500
    assert account_balance(session, receivable) == before[1] + 500
    sound(session)

    with pytest.raises(DisputeConflictError, match="resolved already"):
        resolve(session, parties.admin, dispute.id, "again", adjustment=None, now=NOW)
    with pytest.raises(DisputeConflictError, match="was resolved"):
        add_comment(session, parties.driver, dispute.id, "thanks", now=NOW)
    # Resolved, the entry can be disputed again.
    assert open_dispute(session, parties.driver, entry.id, "still short", now=NOW).id != dispute.id


def test_an_operator_dispute_rejected_books_nothing(session: Session, parties: Parties) -> None:
    entry = parties.entry(session, Kind.PROGRAM_RECEIVABLE, program_owner("flex"))
    dispute = open_dispute(session, parties.operator, entry.id, "we measured less delivery", now=NOW)
    session.commit()
    transactions = len(session.scalars(select(LedgerEntry.transaction_id).distinct()).all())
    with pytest.raises(DisputeError, match="note: is empty"):
        resolve(session, parties.admin, dispute.id, "  ", adjustment=None, now=NOW)
    with pytest.raises(DisputeError, match="counter_account"):
        resolve(
            session,
            parties.admin,
            dispute.id,
            "x",
            adjustment=Adjustment(1, Kind.PROGRAM_RECEIVABLE),
            now=NOW,
        )
    with pytest.raises(DisputeError, match="amount_minor"):
        resolve(
            session, parties.admin, dispute.id, "x", adjustment=Adjustment(0, Kind.PLATFORM_REVENUE), now=NOW
        )
    resolve(session, parties.admin, dispute.id, "the meter data is complete", adjustment=None, now=NOW)
    session.commit()
    assert statuses(session, [dispute.id]) == {dispute.id: DisputeStatus.REJECTED}
    assert len(session.scalars(select(LedgerEntry.transaction_id).distinct()).all()) == transactions
    assert session.scalars(with_status(select(Dispute), DisputeStatus.REJECTED)).all() == [dispute]
    assert session.scalars(with_status(select(Dispute), DisputeStatus.OPEN)).all() == []
    with pytest.raises(DisputeError, match="role"):
        resolve(session, parties.operator, dispute.id, "mine", adjustment=None, now=NOW)


def test_an_operator_adjustment_credits_the_receivable_against_platform_revenue(
    session: Session, parties: Parties
) -> None:
    entry = parties.entry(session, Kind.PENALTIES, program_owner("yen"), "JPY")
    dispute = open_dispute(session, parties.operator, entry.id, "penalty too small", now=NOW)
    penalties = AccountKey(Kind.PENALTIES, program_owner("yen"), "JPY")
    revenue = AccountKey(Kind.PLATFORM_REVENUE, PLATFORM, "JPY")
    before = (account_balance(session, penalties), account_balance(session, revenue))
    resolve(
        session,
        parties.admin,
        dispute.id,
        "agreed",
        adjustment=Adjustment(70, Kind.PLATFORM_REVENUE),
        now=NOW,
    )
    session.commit()
    assert account_balance(session, penalties) == before[0] - 70
    assert account_balance(session, revenue) == before[1] + 70
    sound(session)


# ---------------------------------------------------------------------------------------- who sees


def test_only_the_parties_and_admins_see_a_dispute(session: Session, parties: Parties) -> None:
    mine = parties.entry(session, Kind.DRIVER_PAYABLE, driver_owner(parties.driver.id))
    theirs = parties.entry(session, Kind.DRIVER_PAYABLE, driver_owner(parties.other_driver.id))
    receivable = parties.entry(session, Kind.PROGRAM_RECEIVABLE, program_owner("flex"))
    for user, entry in [
        (parties.driver, theirs),
        (parties.driver, receivable),
        (parties.other_operator, receivable),
        (parties.operator, mine),
    ]:
        with pytest.raises(DisputeNotFoundError, match="ledger_entry_id"):
            open_dispute(session, user, entry.id, "not mine", now=NOW)
    with pytest.raises(DisputeNotFoundError):
        open_dispute(session, parties.driver, 10**9, "nothing", now=NOW)
    with pytest.raises(DisputeError, match="role"):
        open_dispute(session, parties.admin, mine.id, "admins do not open disputes", now=NOW)

    driver_dispute = open_dispute(session, parties.driver, mine.id, "short", now=NOW)
    operator_dispute = open_dispute(session, parties.operator, receivable.id, "too much", now=NOW)
    session.commit()

    def seen(user: User) -> set[int]:
        return set(session.scalars(visible_disputes(session, user).with_only_columns(Dispute.id)))

    assert seen(parties.driver) == {driver_dispute.id}
    assert seen(parties.other_driver) == set()
    assert seen(parties.operator) == {operator_dispute.id}
    assert seen(parties.other_operator) == set()
    assert seen(parties.admin) == {driver_dispute.id, operator_dispute.id}
    for user in (parties.other_driver, parties.operator, parties.other_operator):
        with pytest.raises(DisputeNotFoundError, match="dispute_id"):
            get_visible(session, user, driver_dispute.id)
        with pytest.raises(DisputeNotFoundError):
            add_comment(session, user, driver_dispute.id, "me too", now=NOW)
    assert get_visible(session, parties.admin, driver_dispute.id) is driver_dispute


# --------------------------------------------------------------------------------- append-only


def test_history_is_append_only(session: Session, engine: Engine, parties: Parties) -> None:
    entry = parties.entry(session, Kind.DRIVER_PAYABLE, driver_owner(parties.driver.id))
    dispute = open_dispute(session, parties.driver, entry.id, "short", now=NOW)
    session.commit()
    dispute.reason = "changed my mind"
    with pytest.raises(ImmutableRowError, match="disputes row"):
        session.flush()
    session.rollback()
    with engine.connect() as connection, pytest.raises(DBAPIError, match=r"history|append-only"):
        connection.execute(update(Dispute).where(Dispute.id == dispute.id).values(reason="rewritten"))
    # A second resolution of one dispute is refused by the database, whoever writes it.
    resolve(session, parties.admin, dispute.id, "no", adjustment=None, now=NOW)
    session.commit()
    with engine.connect() as connection, pytest.raises(IntegrityError):
        values = {
            "dispute_id": dispute.id,
            "kind": "rejected",
            "author_id": parties.admin.id,
            "note": "twice",
            "created_at": NOW,
            "resolves_id": dispute.id,
        }
        connection.execute(insert(DisputeEvent).values(values))
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection, pytest.raises(DBAPIError, match="append-only"):
            connection.execute(text("DELETE FROM dispute_events"))


# ------------------------------------------------------------------------------------- invariant

resolutions = st.lists(
    st.tuples(
        st.sampled_from(["driver", "other_driver", "operator"]),
        st.sampled_from(["EUR", "JPY"]),
        st.one_of(
            st.none(),
            st.tuples(
                st.integers(min_value=1, max_value=10**7),
                st.sampled_from(
                    [
                        Kind.PLATFORM_REVENUE,
                        Kind.PROGRAM_RECEIVABLE,
                        Kind.WEAR_COMPENSATION_EXPENSE,
                        Kind.PENALTIES,
                    ]
                ),
            ),
        ),
    ),
    max_size=6,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=resolutions)
def test_the_ledger_balances_after_any_resolutions(
    session: Session, parties: Parties, steps: list[tuple[str, str, tuple[int, LedgerAccountKind] | None]]
) -> None:
    program = {"EUR": "flex", "JPY": "yen"}
    expected = balances(session)

    def move(key: AccountKey, amount: int) -> None:
        expected[key] = expected.get(key, 0) + amount

    for who, currency, decision in steps:
        user: User = getattr(parties, who)
        if user.role is Role.DRIVER:
            kind, owner = Kind.DRIVER_PAYABLE, driver_owner(user.id)
        else:
            kind, owner = Kind.PROGRAM_RECEIVABLE, program_owner(program[currency])
        key = AccountKey(kind, owner, currency)
        move(key, 0)
        dispute = open_dispute(
            session, user, parties.entry(session, kind, owner, currency).id, "why", now=NOW
        )
        adjustment = Adjustment(*decision) if decision is not None else None
        try:
            resolve(session, parties.admin, dispute.id, "decided", adjustment=adjustment, now=NOW)
        except DisputeError as error:
            assert error.field == "counter_account"
            resolve(session, parties.admin, dispute.id, "decided", adjustment=None, now=NOW)
        else:
            if adjustment is not None:
                counter_owner = (
                    program_owner(program[currency])
                    if adjustment.counter is Kind.PROGRAM_RECEIVABLE
                    else PLATFORM
                )
                move(key, -adjustment.amount_minor)
                move(AccountKey(adjustment.counter, counter_owner, currency), adjustment.amount_minor)
        session.commit()
        sound(session)
    assert balances(session) == expected
