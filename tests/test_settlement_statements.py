"""Driver statements and program invoices on SQLite and PostgreSQL: numbers computed by hand from a
small world (sessions, telemetry, two settled events, one of them re-settled, a hand adjustment),
CSV parsed back, PDF sanity."""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from aggregator.db.models import (
    Charger,
    ChargingSession,
    DispatchEvent,
    EvseTelemetryRecord,
    Program,
    ProgramKind,
    Role,
    Site,
    TelemetryRecord,
    User,
    Vehicle,
)
from aggregator.db.session import make_sessionmaker
from aggregator.programs.terms import CURRENCY_EXPONENTS
from aggregator.settlement.ledger import (
    PLATFORM,
    AccountKey,
    LedgerAccountKind,
    Posting,
    driver_owner,
    post_transaction,
)
from aggregator.settlement.runs import EventBooking, event_ref_for, settle_event
from aggregator.settlement.statement_documents import (
    INVOICE_CSV_COLUMNS,
    STATEMENT_CSV_COLUMNS,
    invoice_csv,
    invoice_pdf,
    statement_csv,
    statement_pdf,
)
from aggregator.settlement.statements import (
    Month,
    StatementError,
    driver_earnings,
    driver_statement,
    format_amount,
    format_decimal,
    program_invoice,
)
from market_adapters.dispatch import SignalKind, SignalStatus

JULY = Month(2026, 7)


def at(day: int, hour: int, minute: int = 0, month: int = 7) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


# ------------------------------------------------------------------------------------------- money


def test_amounts_are_written_with_the_currency_decimals() -> None:
    assert format_amount(1234, "EUR") == "12.34 EUR"
    assert format_amount(-5, "USD") == "-0.05 USD"
    assert format_amount(1234, "JPY") == "1234 JPY"
    assert format_amount(1234, "BHD") == "1.234 BHD"
    assert format_amount(0, "EUR") == "0.00 EUR"
    with pytest.raises(StatementError, match="currency: 'XXX'"):
        format_amount(1, "XXX")


@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from(sorted(CURRENCY_EXPONENTS)))
def test_formatted_amounts_read_back_to_the_minor_units(amount: int, currency: str) -> None:
    written = format_decimal(amount, currency)
    assert Decimal(written).scaleb(CURRENCY_EXPONENTS[currency]) == amount
    decimals = written.partition(".")[2]
    assert len(decimals) == CURRENCY_EXPONENTS[currency]


def test_months_parse_and_span_the_calendar_month() -> None:
    assert Month.parse("2026-12").end == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert (JULY.start, JULY.end) == (at(1, 0), at(1, 0, month=8))
    assert str(JULY) == "2026-07"
    for bad in ("2026-13", "2026-7", "July", "2026-00"):
        with pytest.raises(StatementError, match="month"):
            Month.parse(bad)


# ------------------------------------------------------------------------------------------- world


@dataclass
class Fleet:
    driver: User
    other: User
    operator: User
    program: Program
    event_ids: dict[str, int]


def reading(
    session: Session, site: str, seq: int, sent_at: dt.datetime, evses: dict[tuple[str, int], float]
) -> None:
    record = TelemetryRecord(site_id=site, seq=seq, sent_at=sent_at, received_at=sent_at, site_import_kw=0.0)
    record.evses = [
        EvseTelemetryRecord(charger_id=charger, evse_id=evse, power_kw=power)
        for (charger, evse), power in evses.items()
    ]
    session.add(record)


def event(session: Session, program: Program, name: str, start: dt.datetime) -> DispatchEvent:
    row = DispatchEvent(
        program_id=program.id,
        source="api",
        external_event_id=name,
        kind=SignalKind.V2G_EXPORT,
        status=SignalStatus.COMPLETED,
        window_start=start,
        window_end=start + dt.timedelta(hours=1),
        intervals=[],
        received_at=start - dt.timedelta(days=1),
    )
    session.add(row)
    return row


@pytest.fixture
def fleet(session: Session, sessions: sessionmaker[Session]) -> Fleet:
    """Driver ``driver`` charges three times around July and discharges in event ``e1``; ``other``
    discharges at the next EVSE. Event ``e1`` is settled twice (late data), ``e2`` once with the
    driver excluded, ``e3`` (August) once; a hand adjustment credits the driver 2.50 EUR in July."""
    driver = User(email="ada@example.org", password_hash="x", role=Role.DRIVER)
    other = User(email="bob@example.org", password_hash="x", role=Role.DRIVER)
    operator = User(email="grid@example.org", password_hash="x", role=Role.GRID_OPERATOR)
    site = Site(id="depot-1", name="Depot 1", import_limit_kw=100, export_limit_kw=50)
    session.add_all([driver, other, operator, site])
    session.flush()
    program = Program(
        id="flex-west", name="Flex West", kind=ProgramKind.V2G, owner_id=operator.id, currency="EUR"
    )
    charger = Charger(site_id=site.id, charge_point_id="cp-1", evse_id=1, max_kw=11, bidirectional=True)
    charger_2 = Charger(site_id=site.id, charge_point_id="cp-1", evse_id=2, max_kw=11, bidirectional=True)
    mine = Vehicle(owner_id=driver.id, name="Leaf", battery_kwh=62, max_charge_kw=11, max_discharge_kw=10)
    theirs = Vehicle(owner_id=other.id, name="Ioniq", battery_kwh=77, max_charge_kw=11, max_discharge_kw=11)
    session.add_all([program, charger, charger_2, mine, theirs])
    session.flush()

    def plug(vehicle: Vehicle, on: Charger, start: dt.datetime, stop: dt.datetime, kwh: float) -> None:
        session.add(
            ChargingSession(
                site_id=site.id,
                charger_id=on.id,
                evse_id=on.evse_id,
                vehicle_id=vehicle.id,
                started_at=start,
                stopped_at=stop,
                energy_kwh=kwh,
            )
        )

    plug(mine, charger, at(10, 17), at(11, 7), 20.5)
    plug(mine, charger, at(20, 18), at(20, 21), 9.25)
    plug(mine, charger, at(30, 20, month=6), at(1, 6), 8.0)  # started in June: not July's charging
    plug(theirs, charger_2, at(10, 17), at(11, 7), 30.0)
    # e1, 18:00-19:00 on the 10th: -10 kW for 30 min, +5 kW for 15 min, -4 kW for 15 min = 6 kWh.
    readings = [(at(10, 18), -10.0), (at(10, 18, 15), -10.0), (at(10, 18, 30), 5.0), (at(10, 18, 45), -4.0)]
    for seq, (sent_at, power) in enumerate(readings):
        reading(session, site.id, seq, sent_at, {("cp-1", 1): power, ("cp-1", 2): -20.0})
    # June's session discharged 2 kW over midnight: 15 min in June, 15 min (held) in July = 0.5 kWh.
    reading(session, site.id, 10, at(30, 23, 45, month=6), {("cp-1", 1): -2.0})
    reading(session, site.id, 11, at(1, 0), {("cp-1", 1): -2.0})
    # A reading 3 hours after the last: held 15 minutes at most, so 8 kW x 0.25 h = 2 kWh.
    reading(session, site.id, 12, at(10, 22), {("cp-1", 1): -8.0})
    events = {
        name: event(session, program, name, start)
        for name, start in [("e1", at(10, 18)), ("e2", at(20, 19)), ("e3", at(3, 18, month=8))]
    }
    session.commit()
    ids = {name: row.id for name, row in events.items()}

    def book(name: str, **amounts: object) -> None:
        booking = EventBooking(
            program_id=program.id,
            currency="EUR",
            event_ref=event_ref_for("api", name),
            occurred_at=events[name].window_start,
            **amounts,  # type: ignore[arg-type]
        )
        assert settle_event(sessions, booking.event_ref, booking).booked

    first, second = driver.id, other.id
    book(
        "e1",
        gross_minor=10000,
        platform_fee_minor=1000,
        driver_shares_minor={first: 6000, second: 2000},
        wear_minor_by_driver={first: 1000},
    )
    book(
        "e1",
        gross_minor=12000,
        platform_fee_minor=1200,
        driver_shares_minor={first: 7300, second: 2500},
        wear_minor_by_driver={first: 1000},
    )
    book(
        "e2",
        gross_minor=5000,
        penalty_minor=1000,
        platform_fee_minor=500,
        driver_shares_minor={second: 3500},
        zero_reasons={first: "no V2G override"},
    )
    book("e3", gross_minor=4000, platform_fee_minor=400, driver_shares_minor={first: 3600})
    with sessions() as booking_session, booking_session.begin():
        post_transaction(
            booking_session,
            [
                Posting(AccountKey(LedgerAccountKind.PLATFORM_REVENUE, PLATFORM, "EUR"), 250, "goodwill"),
                Posting(
                    AccountKey(LedgerAccountKind.DRIVER_PAYABLE, driver_owner(first), "EUR"), -250, "goodwill"
                ),
            ],
            description="goodwill for a late statement",
            occurred_at=at(25, 12),
        )
    return Fleet(driver, other, operator, program, ids)


# -------------------------------------------------------------------------------------- statements


def test_driver_statement_numbers(session: Session, fleet: Fleet) -> None:
    statement = driver_statement(session, fleet.driver.id, JULY)
    assert statement.sessions == 2
    assert statement.charged_kwh == pytest.approx(20.5 + 9.25)
    assert statement.discharged_kwh == pytest.approx(6.0 + 0.5 + 2.0)
    e1, e2, goodwill = statement.lines
    assert (e1.event_ref, e1.event_id, e1.kind) == ("api/e1", fleet.event_ids["e1"], "event")
    assert (e1.share_minor, e1.wear_minor, e1.adjustment_minor, e1.total_minor) == (7300, 1000, 0, 8300)
    assert e1.event_discharged_kwh == pytest.approx(6.0)
    assert e1.zero_reason is None
    assert len(e1.entry_ids) == 6  # v1 (share, wear), its reversal, v2
    assert (e2.event_ref, e2.total_minor, e2.zero_reason) == ("api/e2", 0, "no V2G override")
    assert e2.entry_ids == ()
    assert (goodwill.kind, goodwill.adjustment_minor, goodwill.description) == (
        "adjustment",
        250,
        "goodwill for a late statement",
    )
    assert statement.totals == {"EUR": 8550}
    assert statement.wear_totals == {"EUR": 1000}


def test_other_driver_and_other_month(session: Session, fleet: Fleet) -> None:
    other = driver_statement(session, fleet.other.id, JULY)
    assert other.charged_kwh == pytest.approx(30.0)
    assert other.discharged_kwh == pytest.approx(20.0 * 1.0)  # -20 kW, 4 readings held 15 min each
    assert [line.total_minor for line in other.lines] == [2500, 3500]
    august = driver_statement(session, fleet.driver.id, Month(2026, 8))
    assert [line.total_minor for line in august.lines] == [3600]
    assert august.sessions == 0
    assert [line.event_ref for line in driver_earnings(session, fleet.driver.id)] == [
        "api/e1",
        "api/e2",
        None,
        "api/e3",
    ]
    with pytest.raises(StatementError, match="driver_id"):
        driver_statement(session, 10**6, JULY)


def test_statement_csv_reads_back(session: Session, fleet: Fleet) -> None:
    rows = list(csv.DictReader(io.StringIO(statement_csv(driver_statement(session, fleet.driver.id, JULY)))))
    assert set(rows[0]) == set(STATEMENT_CSV_COLUMNS)
    assert [row["item"] for row in rows] == [
        "energy_charged",
        "energy_discharged",
        "event",
        "event",
        "adjustment",
        "total",
    ]
    assert Decimal(rows[0]["kwh"]) == Decimal("29.750")
    assert Decimal(rows[1]["kwh"]) == Decimal("8.500")
    e1 = rows[2]
    assert (e1["event_ref"], e1["share"], e1["wear_compensation"], e1["amount"]) == (
        "api/e1",
        "73.00",
        "10.00",
        "83.00",
    )
    assert rows[3]["zero_reason"] == "no V2G override"
    lines = [row for row in rows if row["item"] in ("event", "adjustment")]
    assert sum(Decimal(row["amount"]) for row in lines) == Decimal(rows[-1]["amount"]) == Decimal("85.50")
    assert rows[-1]["currency"] == "EUR"


def test_statement_pdf_shows_the_total(session: Session, fleet: Fleet) -> None:
    statement = driver_statement(session, fleet.driver.id, JULY)
    document = statement_pdf(statement, compress=False)
    assert document.startswith(b"%PDF")
    assert b"Total: 85.50 EUR" in document
    assert b"ada@example.org" in document
    assert b"2026-07" in document
    assert statement_pdf(statement).startswith(b"%PDF")


# ---------------------------------------------------------------------------------------- invoices


def test_program_invoice_numbers(session: Session, fleet: Fleet) -> None:
    invoice = program_invoice(session, fleet.program.id, JULY)
    e1, e2 = invoice.lines
    assert (e1.event_id, e1.run_version, e1.gross_minor, e1.receivable_minor, e1.penalties_minor) == (
        fleet.event_ids["e1"],
        2,
        12000,
        12000,
        0,
    )
    assert (e1.window_start, e1.window_end) == (at(10, 18), at(10, 19))
    assert e1.drivers_paid == 2
    assert (e2.gross_minor, e2.penalty_minor, e2.penalties_minor, e2.amount_due_minor) == (
        5000,
        1000,
        1000,
        4000,
    )
    assert e2.drivers_paid == 1
    assert invoice.totals == {"EUR": 16000}
    assert program_invoice(session, fleet.program.id, Month(2026, 6)).lines == ()
    with pytest.raises(StatementError, match="program_id"):
        program_invoice(session, "nope", JULY)


def test_invoice_csv_and_pdf(session: Session, fleet: Fleet) -> None:
    invoice = program_invoice(session, fleet.program.id, JULY)
    rows = list(csv.DictReader(io.StringIO(invoice_csv(invoice))))
    assert set(rows[0]) == set(INVOICE_CSV_COLUMNS)
    assert [(row["item"], row["event_ref"], row["amount_due"]) for row in rows] == [
        ("event", "api/e1", "120.00"),
        ("event", "api/e2", "40.00"),
        ("total", "", "160.00"),
    ]
    assert rows[1]["penalty"] == "10.00"
    document = invoice_pdf(invoice, compress=False)
    assert document.startswith(b"%PDF")
    assert b"Total due: 160.00 EUR" in document
