"""Settlement runs: one booking per inputs, versioned corrections, no partial or double bookings.

Runs on SQLite and PostgreSQL (the race between two runs only on PostgreSQL). Tests do not empty the
tables afterwards (the ledger refuses deletes); each one settles events and drivers of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from aggregator.db.models import LedgerEntry, LedgerTransaction, SettlementRun
from aggregator.db.session import make_sessionmaker
from aggregator.settlement.ledger import (
    PLATFORM,
    AccountKey,
    LedgerAccountKind,
    account_balance,
    driver_owner,
    net_postings,
    program_owner,
    transaction_imbalances,
    trial_balance,
)
from aggregator.settlement.runs import (
    BookingError,
    EventBooking,
    PeriodBooking,
    RunStage,
    RunStatus,
    booking_postings,
    canonical_inputs,
    event_ref_for,
    inputs_hash,
    latest_run,
    run_history,
    scope_balances,
    settle_event,
    settle_period,
)

T0 = dt.datetime(2026, 7, 1, 17, 0, tzinfo=dt.UTC)
Kind = LedgerAccountKind


@pytest.fixture(scope="module")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def fresh_driver() -> int:
    return uuid.uuid4().int % 2_000_000_000


def booking(event_ref: str, program: str, drivers: tuple[int, int], **changes: Any) -> EventBooking:
    """10000 gross − 500 penalty − 950 fee = 8550 for drivers: 300 wear to the first, the 8250 pot
    shared 5000 / 3250."""
    first, second = drivers
    values: dict[str, Any] = {
        "event_ref": event_ref,
        "occurred_at": T0,
        "program_id": program,
        "currency": "EUR",
        "gross_minor": 10_000,
        "penalty_minor": 500,
        "platform_fee_minor": 950,
        "driver_shares_minor": {first: 5000, second: 3250},
        "wear_minor_by_driver": {first: 300},
    }
    return EventBooking(**(values | changes))


@pytest.fixture
def world() -> tuple[str, str, tuple[int, int]]:
    """A new event ref, program and two drivers."""
    return unique("api/event"), unique("dr"), (fresh_driver(), fresh_driver())


def payable(driver: int) -> AccountKey:
    return AccountKey(Kind.DRIVER_PAYABLE, driver_owner(driver), "EUR")


def receivable(program: str) -> AccountKey:
    return AccountKey(Kind.PROGRAM_RECEIVABLE, program_owner(program), "EUR")


def stored_of(sessions: sessionmaker[Session], scope: str) -> tuple[int, int, int]:
    """How many runs, transactions and entries the scope has stored."""
    with sessions() as session:
        runs = select(SettlementRun.id).where(SettlementRun.scope == scope)
        transactions = select(LedgerTransaction.id).where(LedgerTransaction.run_id.in_(runs))
        return (
            session.scalar(select(func.count()).select_from(runs.subquery())) or 0,
            session.scalar(select(func.count()).select_from(transactions.subquery())) or 0,
            session.scalar(
                select(func.count())
                .select_from(LedgerEntry)
                .where(LedgerEntry.transaction_id.in_(transactions))
            )
            or 0,
        )


def ledger_of(sessions: sessionmaker[Session], scope: str) -> dict[AccountKey, int]:
    with sessions() as session:
        return scope_balances(session, scope)


# ----------------------------------------------------------------------------------------- booking


def test_an_event_booking_posts_gross_penalty_fee_and_each_drivers_share_and_wear() -> None:
    postings = booking_postings(booking("api/e", "dr-1", (1, 2), threshold_reduction_minor=0))
    assert [(p.account.kind, p.account.owner_ref, p.amount_minor, p.memo) for p in postings] == [
        (Kind.PROGRAM_RECEIVABLE, "program:dr-1", 10_000, "gross"),
        (Kind.PENALTIES, "program:dr-1", -500, "penalty"),
        (Kind.PLATFORM_REVENUE, PLATFORM, -950, "platform fee"),
        (Kind.DRIVER_PAYABLE, "user:1", -5000, "share"),
        (Kind.DRIVER_PAYABLE, "user:1", -300, "wear compensation"),
        (Kind.DRIVER_PAYABLE, "user:2", -3250, "share"),
    ]
    assert sum(p.amount_minor for p in postings) == 0


def test_a_threshold_reduction_a_loss_shared_by_drivers_a_residual_and_a_platform_loss() -> None:
    # 1000 gross, 400 of it forfeited below threshold, 900 penalty: the drivers share −300.
    loss = booking(
        "api/e",
        "dr-1",
        (1, 2),
        gross_minor=1000,
        threshold_reduction_minor=400,
        penalty_minor=900,
        platform_fee_minor=0,
        driver_shares_minor={1: -200, 2: -100},
        wear_minor_by_driver={},
    )
    assert net_postings(booking_postings(loss)) == {
        receivable("dr-1"): 600,
        AccountKey(Kind.PENALTIES, "program:dr-1", "EUR"): -900,
        payable(1): 200,
        payable(2): 100,
    }
    nobody = booking(
        "api/e",
        "dr-1",
        (1, 2),
        driver_shares_minor={},
        wear_minor_by_driver={},
        residual_minor=8550,
        residual_reason="nobody contributed",
    )
    assert net_postings(booking_postings(nobody))[AccountKey(Kind.PLATFORM_REVENUE, PLATFORM, "EUR")] == -9500
    assert ("residual: nobody contributed", -8550) in [
        (p.memo, p.amount_minor) for p in booking_postings(nobody)
    ]
    assert nobody.unallocated_minor == 0
    with pytest.raises(BookingError, match="residual_reason: is empty but the residual is 8550"):
        dataclasses.replace(nobody, residual_reason="")
    # 1000 gross and 1300 penalty: the platform bears the 300 the drivers do not share.
    borne = booking(
        "api/e",
        "dr-1",
        (1, 2),
        gross_minor=1000,
        penalty_minor=1300,
        platform_fee_minor=0,
        driver_shares_minor={},
        wear_minor_by_driver={},
        platform_loss_minor=300,
    )
    assert net_postings(booking_postings(borne))[AccountKey(Kind.PLATFORM_REVENUE, PLATFORM, "EUR")] == 300
    assert (borne.unallocated_minor, borne.to_drivers_minor) == (0, 0)


def test_wear_funded_by_the_platform_is_its_expense_on_top_of_the_shares() -> None:
    funded = booking(
        "api/e",
        "dr-1",
        (1, 2),
        wear_funded_by_platform=True,
        driver_shares_minor={1: 5300, 2: 3250},
        wear_minor_by_driver={1: 300, 2: 100},
    )
    net = net_postings(booking_postings(funded))
    assert net[AccountKey(Kind.WEAR_COMPENSATION_EXPENSE, PLATFORM, "EUR")] == 400
    assert (net[payable(1)], net[payable(2)]) == (-5600, -3350)
    assert sum(net.values()) == 0
    with pytest.raises(BookingError, match="shares \\+ residual − platform loss sum to 8250"):
        booking("api/e", "dr-1", (1, 2), wear_funded_by_platform=True)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"gross_minor": 10_001}, "driver_shares_minor", "sum to 8550 but .* = 8551 \\(EUR minor units\\)"),
        ({"penalty_minor": -1}, "penalty_minor", "-1 is negative"),
        ({"platform_fee_minor": 9.5}, "platform_fee_minor", "9.5 is not an integer"),
        ({"wear_minor_by_driver": {"bob": 300}}, "wear_minor_by_driver", "driver key 'bob' is not a user id"),
        ({"zero_reasons": {1: "no V2G"}}, "zero_reasons[1]", "driver 1 has a share of 5000, not 0"),
        ({"currency": "euro"}, "program_id/currency", "'euro' is not ISO 4217"),
        ({"occurred_at": T0.replace(tzinfo=None)}, "occurred_at", "has no UTC offset"),
        ({"event_ref": ""}, "event_ref", "must be 1 to 290 characters"),
    ],
)
def test_a_malformed_booking_names_its_field(changes: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(BookingError, match=message) as caught:
        dataclasses.replace(booking("api/e", "dr-1", (1, 2)), **changes)
    assert caught.value.field == field


def test_canonical_inputs_do_not_depend_on_how_the_booking_was_built() -> None:
    one = booking("api/e", "dr-1", (1, 2))
    reordered = booking("api/e", "dr-1", (1, 2), driver_shares_minor={2: 3250, 1: 5000, 3: 0})
    assert inputs_hash(canonical_inputs(one)) == inputs_hash(canonical_inputs(reordered))
    in_paris = booking("api/e", "dr-1", (1, 2), occurred_at=T0.astimezone(dt.timezone(dt.timedelta(hours=2))))
    assert inputs_hash(canonical_inputs(one)) == inputs_hash(canonical_inputs(in_paris))
    with_reason = booking(
        "api/e", "dr-1", (1, 2), driver_shares_minor={1: 5000, 2: 3250, 3: 0}, zero_reasons={3: "no V2G"}
    )
    assert inputs_hash(canonical_inputs(one)) != inputs_hash(canonical_inputs(with_reason))
    assert canonical_inputs(with_reason)["drivers"][-1] == {
        "driver_id": 3,
        "share_minor": 0,
        "wear_minor": 0,
        "reason": "no V2G",
    }


def test_event_refs_name_an_event_across_its_modifications() -> None:
    assert event_ref_for("openadr3", "evt-17") == "openadr3/evt-17"


# -------------------------------------------------------------------------------------------- runs


def test_a_first_run_books_the_event(sessions: sessionmaker[Session], world: Any) -> None:
    event_ref, program, drivers = world
    inputs = booking(event_ref, program, drivers)

    outcome = settle_event(sessions, event_ref, inputs)

    assert outcome.status is RunStatus.BOOKED and outcome.booked
    assert (outcome.scope, outcome.version) == (f"event:{event_ref}", 1)
    assert len(outcome.transaction_ids) == 1 and outcome.reversed_transaction_ids == ()
    assert ledger_of(sessions, outcome.scope) == net_postings(booking_postings(inputs))
    with sessions() as session:
        assert account_balance(session, payable(drivers[0])) == -5300
        run = latest_run(session, outcome.scope)
        assert run is not None and run.id == outcome.run_id
        assert run.inputs == canonical_inputs(inputs)
        assert run.inputs_hash == outcome.inputs_hash == inputs_hash(canonical_inputs(inputs))


def test_re_running_with_the_same_inputs_books_nothing(sessions: sessionmaker[Session], world: Any) -> None:
    event_ref, program, drivers = world
    first = settle_event(sessions, event_ref, booking(event_ref, program, drivers))
    stored = stored_of(sessions, first.scope)

    again = settle_event(sessions, event_ref, booking(event_ref, program, drivers))

    assert again.status is RunStatus.UNCHANGED and not again.booked
    assert (again.run_id, again.version) == (first.run_id, 1)
    assert "already settled" in again.message
    assert stored_of(sessions, first.scope) == stored == (1, 1, 6)


def test_changed_inputs_book_a_new_version_that_reverses_the_old(
    sessions: sessionmaker[Session], world: Any
) -> None:
    event_ref, program, drivers = world
    v1 = settle_event(sessions, event_ref, booking(event_ref, program, drivers))
    # Late meter data: less was delivered; the second driver's share shrinks.
    late = booking(
        event_ref,
        program,
        drivers,
        gross_minor=9000,
        platform_fee_minor=850,
        driver_shares_minor={drivers[0]: 5000, drivers[1]: 2350},
    )

    v2 = settle_event(sessions, event_ref, late)

    assert (v2.status, v2.version) == (RunStatus.BOOKED, 2)
    assert v2.reversed_transaction_ids == v1.transaction_ids
    assert len(v2.transaction_ids) == 2  # the reversal, then the new booking
    assert ledger_of(sessions, v2.scope) == net_postings(booking_postings(late))
    # ... which is what a fresh run of the new inputs books:
    fresh_ref = unique("api/fresh")
    fresh = settle_event(sessions, fresh_ref, dataclasses.replace(late, event_ref=fresh_ref))
    assert ledger_of(sessions, fresh.scope) == ledger_of(sessions, v2.scope)
    with sessions() as session:
        history = run_history(session, v2.scope)
        assert [(run.version, run.supersedes_id) for run in history] == [(1, None), (2, v1.run_id)]
        assert session.get(LedgerTransaction, v1.transaction_ids[0]) is not None
        assert account_balance(session, payable(drivers[1])) == -2 * 2350
        assert transaction_imbalances(session) == []


def test_going_back_to_earlier_inputs_is_a_version_of_its_own(
    sessions: sessionmaker[Session], world: Any
) -> None:
    event_ref, program, drivers = world
    original = booking(event_ref, program, drivers)
    corrected = booking(
        event_ref, program, drivers, penalty_minor=0, driver_shares_minor={drivers[0]: 5500, drivers[1]: 3250}
    )
    versions = [
        settle_event(sessions, event_ref, inputs).version for inputs in (original, corrected, original)
    ]
    assert versions == [1, 2, 3]
    assert settle_event(sessions, event_ref, original).status is RunStatus.UNCHANGED
    assert ledger_of(sessions, f"event:{event_ref}") == net_postings(booking_postings(original))


def test_a_zero_booking_is_a_version_that_books_nothing(sessions: sessionmaker[Session], world: Any) -> None:
    event_ref, program, drivers = world
    settle_event(sessions, event_ref, booking(event_ref, program, drivers))
    nothing = booking(
        event_ref,
        program,
        drivers,
        gross_minor=0,
        penalty_minor=0,
        platform_fee_minor=0,
        driver_shares_minor={},
        wear_minor_by_driver={},
        zero_reasons={drivers[0]: "event cancelled"},
    )
    outcome = settle_event(sessions, event_ref, nothing)
    assert (outcome.status, outcome.version, len(outcome.transaction_ids)) == (RunStatus.BOOKED, 2, 1)
    assert ledger_of(sessions, outcome.scope) == {}


def test_a_run_for_another_event_is_refused(sessions: sessionmaker[Session], world: Any) -> None:
    event_ref, program, drivers = world
    with pytest.raises(BookingError, match="the booking is for event 'api/other', not"):
        settle_event(sessions, event_ref, booking("api/other", program, drivers))


def test_a_dry_run_returns_the_booking_and_stores_nothing(
    sessions: sessionmaker[Session], world: Any
) -> None:
    event_ref, program, drivers = world
    inputs = booking(event_ref, program, drivers)
    scope = f"event:{event_ref}"

    dry = settle_event(sessions, event_ref, inputs, dry_run=True)
    assert (dry.status, dry.version, dry.run_id) == (RunStatus.DRY_RUN, 1, None)
    assert net_postings(dry.postings) == net_postings(booking_postings(inputs))
    assert stored_of(sessions, scope) == (0, 0, 0)

    booked = settle_event(sessions, event_ref, inputs)
    changed = booking(
        event_ref, program, drivers, penalty_minor=0, driver_shares_minor={drivers[0]: 5500, drivers[1]: 3250}
    )
    dry = settle_event(sessions, event_ref, changed, dry_run=True)
    assert (dry.status, dry.version, dry.reversed_transaction_ids) == (
        RunStatus.DRY_RUN,
        2,
        booked.transaction_ids,
    )
    assert settle_event(sessions, event_ref, inputs, dry_run=True).status is RunStatus.UNCHANGED
    assert stored_of(sessions, scope) == (1, 1, 6)


class Crash(RuntimeError):
    pass


def crash_at_entry(number: int) -> Any:
    entries = itertools.count(1)

    def hook(stage: RunStage) -> None:
        if stage is RunStage.ENTRY and next(entries) == number:
            raise Crash(f"power cut after entry {number}")

    return hook


def test_a_crash_half_way_through_a_run_stores_nothing_of_it(
    sessions: sessionmaker[Session], world: Any
) -> None:
    event_ref, program, drivers = world
    inputs = booking(event_ref, program, drivers)
    scope = f"event:{event_ref}"
    with sessions() as session:
        entries_before = session.scalar(select(func.count()).select_from(LedgerEntry))

    with pytest.raises(Crash):
        settle_event(sessions, event_ref, inputs, hook=crash_at_entry(2))

    assert stored_of(sessions, scope) == (0, 0, 0)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == entries_before
        assert account_balance(session, payable(drivers[0])) == 0
    assert settle_event(sessions, event_ref, inputs).status is RunStatus.BOOKED
    assert ledger_of(sessions, scope) == net_postings(booking_postings(inputs))


def test_a_crash_while_correcting_leaves_the_previous_version_standing(
    sessions: sessionmaker[Session], world: Any
) -> None:
    event_ref, program, drivers = world
    v1_inputs = booking(event_ref, program, drivers)
    settle_event(sessions, event_ref, v1_inputs)
    v2_inputs = booking(
        event_ref, program, drivers, penalty_minor=0, driver_shares_minor={drivers[0]: 5500, drivers[1]: 3250}
    )

    with pytest.raises(Crash):  # entry 3 of 5 of the reversal
        settle_event(sessions, event_ref, v2_inputs, hook=crash_at_entry(3))

    scope = f"event:{event_ref}"
    assert stored_of(sessions, scope) == (1, 1, 6)
    assert ledger_of(sessions, scope) == net_postings(booking_postings(v1_inputs))
    outcome = settle_event(sessions, event_ref, v2_inputs)
    assert (outcome.status, outcome.version) == (RunStatus.BOOKED, 2)
    assert ledger_of(sessions, scope) == net_postings(booking_postings(v2_inputs))


def test_a_period_is_settled_once_per_inputs(sessions: sessionmaker[Session], world: Any) -> None:
    _, program, drivers = world
    july = PeriodBooking(
        program_id=program,
        currency="EUR",
        period_start=dt.datetime(2026, 7, 1, tzinfo=dt.UTC),
        period_end=dt.datetime(2026, 8, 1, tzinfo=dt.UTC),
        gross_minor=20_000,
        platform_fee_minor=2000,
        driver_shares_minor={drivers[0]: 9000, drivers[1]: 9000},
    )
    first = settle_period(sessions, july)
    assert first.scope == f"period:{program}:2026-07-01T00:00:00+00:00/2026-08-01T00:00:00+00:00"
    assert settle_period(sessions, july).status is RunStatus.UNCHANGED
    with sessions() as session:
        transaction = session.get(LedgerTransaction, first.transaction_ids[0])
        assert transaction is not None and transaction.occurred_at == july.period_start
    with pytest.raises(BookingError, match="period_end: 2026-07-01T00:00:00\\+00:00 is not after"):
        dataclasses.replace(july, period_end=july.period_start)


# ---------------------------------------------------------------------------- concurrent runs (PG)


def race(sessions: sessionmaker[Session], event_ref: str, inputs: list[EventBooking]) -> list[Any]:
    """Both runs read the scope's latest version before either stores its own, then both store."""
    both_planned = threading.Barrier(2, timeout=60)

    def hook(stage: RunStage) -> None:
        if stage is RunStage.PLANNED:
            both_planned.wait()

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(settle_event, sessions, event_ref, each, hook=hook) for each in inputs]
        return [future.result() for future in futures]


@pytest.mark.parametrize("same_inputs", [True, False], ids=["same inputs", "different inputs"])
def test_two_runs_at_once_book_once(
    engine: Engine, sessions: sessionmaker[Session], world: Any, same_inputs: bool
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers with a file lock; the race is PostgreSQL's to lose")
    event_ref, program, drivers = world
    one = booking(event_ref, program, drivers)
    other = (
        one
        if same_inputs
        else booking(
            event_ref,
            program,
            drivers,
            penalty_minor=0,
            driver_shares_minor={drivers[0]: 5500, drivers[1]: 3250},
        )
    )

    outcomes = race(sessions, event_ref, [one, other])

    statuses = sorted(outcome.status for outcome in outcomes)
    loser_status = RunStatus.UNCHANGED if same_inputs else RunStatus.CONCURRENT
    assert statuses == sorted([RunStatus.BOOKED, loser_status])
    winner = next(outcome for outcome in outcomes if outcome.booked)
    loser = next(outcome for outcome in outcomes if not outcome.booked)
    assert (loser.run_id, loser.version) == (winner.run_id, 1)
    assert ("already settled" if same_inputs else "concurrent run") in loser.message
    scope = f"event:{event_ref}"
    won_with_one = winner.inputs_hash == inputs_hash(canonical_inputs(one))
    assert stored_of(sessions, scope) == (1, 1, 6 if won_with_one else 5)
    assert ledger_of(sessions, scope) == net_postings(winner.postings)
    if not same_inputs:  # the loser runs again and supersedes the winner
        retried = settle_event(sessions, event_ref, other if won_with_one else one)
        assert (retried.status, retried.version) == (RunStatus.BOOKED, 2)


# ------------------------------------------------------------------------------------------ property


driver_ids = itertools.count(1_000_000_000)


def fingerprint(inputs: EventBooking) -> str:
    return inputs_hash(canonical_inputs(inputs))


@st.composite
def bookings(draw: st.DrawFn, event_ref: str, program: str, drivers: tuple[int, ...]) -> EventBooking:
    amounts = st.integers(0, 50_000)
    shares = {driver: draw(st.integers(-5_000, 50_000)) for driver in drivers if draw(st.booleans())}
    wear = {driver: draw(st.integers(0, 2_000)) for driver in drivers if draw(st.booleans())}
    penalty, fee, residual = draw(amounts), draw(amounts), draw(st.integers(-1000, 1000))
    loss, reduction = draw(st.integers(0, 1000)), draw(amounts)
    gross = sum(shares.values()) + sum(wear.values()) + residual - loss + penalty + fee + reduction
    if gross < 0:  # drivers share a loss: a penalty larger than what the event earned
        penalty, gross = penalty - gross, 0
    return EventBooking(
        event_ref=event_ref,
        occurred_at=T0,
        program_id=program,
        currency=draw(st.sampled_from(["EUR", "USD"])),
        gross_minor=gross,
        threshold_reduction_minor=reduction,
        penalty_minor=penalty,
        platform_fee_minor=fee,
        driver_shares_minor=shares,
        wear_minor_by_driver=wear,
        residual_minor=residual,
        residual_reason="delivery no driver can be credited with" if residual else "",
        platform_loss_minor=loss,
        zero_reasons={driver: "not plugged in" for driver in drivers if driver not in shares},
    )


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_after_any_runs_the_ledger_balances_and_drivers_hold_the_latest_allocations(
    sessions: sessionmaker[Session], data: st.DataObject
) -> None:
    program = unique("dr")
    drivers = tuple(next(driver_ids) for _ in range(3))
    events = [unique("api/prop") for _ in range(2)]
    latest: dict[str, EventBooking] = {}
    for _ in range(data.draw(st.integers(1, 6), label="runs")):
        event_ref = data.draw(st.sampled_from(events), label="event")
        action = data.draw(st.sampled_from(["new", "again", "dry"]), label="action")
        inputs = latest.get(event_ref) if action == "again" else None
        if inputs is None:
            inputs = data.draw(bookings(event_ref, program, drivers), label="booking")
        outcome = settle_event(sessions, event_ref, inputs, dry_run=action == "dry")
        if action == "dry":
            assert outcome.status in (RunStatus.DRY_RUN, RunStatus.UNCHANGED)
            continue
        same = event_ref in latest and fingerprint(inputs) == fingerprint(latest[event_ref])
        assert outcome.status is (RunStatus.UNCHANGED if same else RunStatus.BOOKED)
        latest[event_ref] = inputs

    with sessions() as session:
        assert transaction_imbalances(session) == []
        assert set(trial_balance(session).values()) <= {0}
        owed: dict[AccountKey, int] = defaultdict(int)
        for inputs in latest.values():
            for driver in drivers:
                key = AccountKey(Kind.DRIVER_PAYABLE, driver_owner(driver), inputs.currency)
                owed[key] -= inputs.driver_shares_minor.get(driver, 0) + inputs.wear_minor_by_driver.get(
                    driver, 0
                )
        for key, amount in owed.items():
            assert account_balance(session, key) == amount
        for event_ref in events:
            expected = net_postings(booking_postings(latest[event_ref])) if event_ref in latest else {}
            assert scope_balances(session, f"event:{event_ref}") == expected
