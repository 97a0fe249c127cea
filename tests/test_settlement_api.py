"""The settlement API on SQLite and PostgreSQL: earnings, statements (JSON, CSV, PDF), invoices, the
ledger for admins, and disputes; every route in the authorization matrix, and another owner's
statement line, invoice or dispute answers 404."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest
from api_world import (
    ADMIN,
    CALLERS,
    DRIVER,
    GRID_OPERATOR,
    Caller,
    Endpoint,
    TestClient,
    World,
    check_endpoint,
)
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from aggregator.db.models import (
    LedgerAccount,
    LedgerAccountKind,
    LedgerEntry,
    Program,
    ProgramKind,
    Role,
)
from aggregator.db.session import make_sessionmaker
from aggregator.settlement.disputes import open_dispute
from aggregator.settlement.ledger import driver_owner, program_owner, transaction_imbalances, trial_balance
from aggregator.settlement.runs import EventBooking, settle_event

JULY = "2026-07"
E1 = dt.datetime(2026, 7, 10, 18, tzinfo=dt.UTC)
E2 = dt.datetime(2026, 7, 20, 18, tzinfo=dt.UTC)
PARTIES = DRIVER | GRID_OPERATOR
READERS = PARTIES | ADMIN


def entry_of(session: Session, kind: LedgerAccountKind, owner_ref: str, index: int = 0) -> int:
    """The ``index``-th ledger entry on the account."""
    found = session.scalars(
        select(LedgerEntry.id)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .where(LedgerAccount.kind == kind, LedgerAccount.owner_ref == owner_ref)
        .order_by(LedgerEntry.id)
    ).all()
    return found[index]


@pytest.fixture
def booked(world: World, session: Session, engine: Engine) -> World:
    """``world`` with the grid operator's program ``flex`` (EUR) and the other operator's ``other``;
    event ``api/e1`` settled twice (the driver 60.00 then 73.00 EUR + 10.00 wear; the other driver
    25.00), ``api/e2`` once (the driver excluded), and a dispute each by the driver and the operator.
    ``extra`` holds the entries and disputes by who may see them."""
    operator, other_operator = world.users[Role.GRID_OPERATOR], world.others[Role.GRID_OPERATOR]
    driver, other_driver = world.users[Role.DRIVER], world.others[Role.DRIVER]
    session.add_all(
        [
            Program(id="flex", name="Flex", kind=ProgramKind.V2G, owner_id=operator.id, currency="EUR"),
            Program(
                id="other", name="Other", kind=ProgramKind.V2G, owner_id=other_operator.id, currency="EUR"
            ),
        ]
    )
    session.commit()
    sessions = make_sessionmaker(engine)

    def book(ref: str, at: dt.datetime, program: str = "flex", **amounts: Any) -> None:
        booking = EventBooking(program_id=program, currency="EUR", event_ref=ref, occurred_at=at, **amounts)
        assert settle_event(sessions, ref, booking).booked

    book(
        "api/e1",
        E1,
        gross_minor=10000,
        platform_fee_minor=1000,
        driver_shares_minor={driver.id: 6000, other_driver.id: 3000},
    )
    book(
        "api/e1",
        E1,
        gross_minor=12000,
        platform_fee_minor=1200,
        driver_shares_minor={driver.id: 7300, other_driver.id: 2500},
        wear_minor_by_driver={driver.id: 1000},
    )
    book(
        "api/e2",
        E2,
        gross_minor=5000,
        penalty_minor=1000,
        platform_fee_minor=500,
        driver_shares_minor={other_driver.id: 3500},
        zero_reasons={driver.id: "no V2G override"},
    )
    book("api/x9", E2, program="other", gross_minor=700, driver_shares_minor={other_driver.id: 700})
    entries = {
        Role.DRIVER: entry_of(session, LedgerAccountKind.DRIVER_PAYABLE, driver_owner(driver.id)),
        Role.GRID_OPERATOR: entry_of(session, LedgerAccountKind.PROGRAM_RECEIVABLE, program_owner("flex")),
        "other_driver": entry_of(session, LedgerAccountKind.DRIVER_PAYABLE, driver_owner(other_driver.id)),
        "other_program": entry_of(session, LedgerAccountKind.PROGRAM_RECEIVABLE, program_owner("other")),
    }
    undisputed = {
        Role.DRIVER: entry_of(session, LedgerAccountKind.DRIVER_PAYABLE, driver_owner(driver.id), 1),
        Role.GRID_OPERATOR: entry_of(session, LedgerAccountKind.PROGRAM_RECEIVABLE, program_owner("flex"), 1),
    }
    now = dt.datetime.now(dt.UTC)
    by_driver = open_dispute(session, driver, entries[Role.DRIVER], "my share is short", now=now)
    by_operator = open_dispute(session, operator, entries[Role.GRID_OPERATOR], "gross too high", now=now)
    session.commit()
    world.extra |= {
        "entries": entries,
        "undisputed": undisputed,
        "disputes": {Role.DRIVER: by_driver.id, Role.ADMIN: by_driver.id, Role.GRID_OPERATOR: by_operator.id},
    }
    return world


def for_caller(world: World, name: str) -> Any:
    """``world.extra[name]`` for the caller of the current matrix check (the driver's, for others)."""
    values = world.extra[name]
    return values.get(world.extra.get("caller"), values[Role.DRIVER])


def headers(world: World, role: Role, *, other: bool = False) -> dict[str, str]:
    return world.headers(role, other=other)


# ------------------------------------------------------------------------------------------ matrix

ENDPOINTS = [
    Endpoint("GET", "/driver/earnings", DRIVER, 200),
    Endpoint("GET", "/driver/statements/{month}", DRIVER, 200, path_params=lambda world: {"month": JULY}),
    Endpoint(
        "GET",
        "/operator/programs/{program_id}/invoice/{month}",
        GRID_OPERATOR,
        200,
        path_params=lambda world: {"program_id": "flex", "month": JULY},
    ),
    Endpoint(
        "POST",
        "/disputes",
        PARTIES,
        201,
        lambda world: {"json": {"ledger_entry_id": for_caller(world, "undisputed"), "reason": "wrong"}},
    ),
    Endpoint("GET", "/disputes", READERS, 200),
    Endpoint(
        "GET",
        "/disputes/{dispute_id}",
        READERS,
        200,
        path_params=lambda world: {"dispute_id": for_caller(world, "disputes")},
    ),
    Endpoint(
        "POST",
        "/disputes/{dispute_id}/comments",
        READERS,
        201,
        lambda world: {"json": {"note": "more detail"}},
        lambda world: {"dispute_id": for_caller(world, "disputes")},
    ),
    Endpoint("GET", "/admin/settlement/runs", ADMIN, 200),
    Endpoint("GET", "/admin/ledger/accounts", ADMIN, 200),
    Endpoint("GET", "/admin/ledger/transactions", ADMIN, 200),
    Endpoint("GET", "/admin/disputes", ADMIN, 200),
    Endpoint(
        "POST",
        "/admin/disputes/{dispute_id}/resolve",
        ADMIN,
        200,
        lambda world: {"json": {"outcome": "rejected", "note": "the data is complete"}},
        lambda world: {"dispute_id": world.extra["disputes"][Role.DRIVER]},
    ),
]


@pytest.mark.parametrize("caller", CALLERS, ids=lambda caller: caller.value if caller else "anonymous")
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda endpoint: f"{endpoint.method} {endpoint.path}")
def test_authorization_matrix(client: TestClient, booked: World, endpoint: Endpoint, caller: Caller) -> None:
    booked.extra["caller"] = caller
    check_endpoint(client, booked, endpoint, caller)


# ----------------------------------------------------------------------------- earnings, statements


def test_earnings_per_event_with_totals_and_paging(client: TestClient, booked: World) -> None:
    driver = headers(booked, Role.DRIVER)
    everything = client.get("/driver/earnings", headers=driver)
    assert everything.status_code == 200, everything.text
    body = everything.json()
    assert body["total"] == 2
    assert [(item["event_ref"], item["total"]["text"], item["zero_reason"]) for item in body["items"]] == [
        ("api/e2", "0.00 EUR", "no V2G override"),
        ("api/e1", "83.00 EUR", None),
    ]
    assert body["totals"] == [{"amount_minor": 8300, "currency": "EUR", "text": "83.00 EUR"}]
    assert dt.datetime.fromisoformat(body["items"][1]["occurred_at"]) == E1

    second = client.get("/driver/earnings", headers=driver, params={"offset": 1, "limit": 1}).json()
    assert [item["event_ref"] for item in second["items"]] == ["api/e1"]
    assert second["total"] == 2

    ranged = client.get(
        "/driver/earnings",
        headers=driver,
        params={"start": "2026-07-15T00:00:00+02:00", "end": "2026-08-01T00:00:00Z"},
    ).json()
    assert [item["event_ref"] for item in ranged["items"]] == ["api/e2"]
    assert ranged["totals"] == [{"amount_minor": 0, "currency": "EUR", "text": "0.00 EUR"}]
    naive = client.get("/driver/earnings", headers=driver, params={"start": "2026-07-15T00:00:00"})
    assert naive.status_code == 422

    other = client.get("/driver/earnings", headers=headers(booked, Role.DRIVER, other=True)).json()
    assert other["totals"][0]["text"] == f"{(2500 + 3500 + 700) / 100:.2f} EUR"


def test_statement_json_csv_pdf(client: TestClient, booked: World) -> None:
    driver = headers(booked, Role.DRIVER)
    statement = client.get(f"/driver/statements/{JULY}", headers=driver)
    assert statement.status_code == 200, statement.text
    body = statement.json()
    assert (body["month"], body["sessions"], body["charged_kwh"]) == (JULY, 0, 0.0)
    assert [line["total"]["amount_minor"] for line in body["lines"]] == [8300, 0]
    assert body["lines"][0]["wear_minor"] == 1000
    assert body["lines"][0]["entry_ids"][0] == booked.extra["entries"][Role.DRIVER]
    assert body["totals"] == [{"amount_minor": 8300, "currency": "EUR", "text": "83.00 EUR"}]

    as_csv = client.get(f"/driver/statements/{JULY}", headers=driver, params={"format": "csv"})
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [(row["item"], row["amount"]) for row in rows[2:]] == [
        ("event", "83.00"),
        ("event", "0.00"),
        ("total", "83.00"),
    ]
    as_pdf = client.get(f"/driver/statements/{JULY}", headers=driver, params={"format": "pdf"})
    assert as_pdf.headers["content-type"] == "application/pdf"
    assert as_pdf.content.startswith(b"%PDF")

    august = client.get("/driver/statements/2026-08", headers=driver).json()
    assert (august["lines"], august["totals"]) == ([], [])
    bad = client.get("/driver/statements/2026-13", headers=driver)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["path", "month"]
    assert (
        client.get(f"/driver/statements/{JULY}", headers=driver, params={"format": "xls"}).status_code == 422
    )


def test_another_drivers_lines_are_not_in_a_statement(client: TestClient, booked: World) -> None:
    other = client.get(f"/driver/statements/{JULY}", headers=headers(booked, Role.DRIVER, other=True)).json()
    mine = booked.extra["entries"][Role.DRIVER]
    assert all(mine not in line["entry_ids"] for line in other["lines"])
    assert [line["total"]["amount_minor"] for line in other["lines"]] == [2500, 3500, 700]


def test_invoice_of_own_program_only(client: TestClient, booked: World) -> None:
    operator = headers(booked, Role.GRID_OPERATOR)
    invoice = client.get(f"/operator/programs/flex/invoice/{JULY}", headers=operator)
    assert invoice.status_code == 200, invoice.text
    body = invoice.json()
    assert [
        (line["event_ref"], line["run_version"], line["amount_due"]["amount_minor"]) for line in body["lines"]
    ] == [
        ("api/e1", 2, 12000),
        ("api/e2", 1, 4000),
    ]
    assert body["lines"][1]["penalties_minor"] == 1000
    assert body["totals"][0]["text"] == "160.00 EUR"
    as_csv = client.get(f"/operator/programs/flex/invoice/{JULY}", headers=operator, params={"format": "csv"})
    assert list(csv.DictReader(io.StringIO(as_csv.text)))[-1]["amount_due"] == "160.00"
    as_pdf = client.get(f"/operator/programs/flex/invoice/{JULY}", headers=operator, params={"format": "pdf"})
    assert as_pdf.content.startswith(b"%PDF")
    for program in ("other", "missing"):
        response = client.get(f"/operator/programs/{program}/invoice/{JULY}", headers=operator)
        assert response.status_code == 404, program
    other_operator = headers(booked, Role.GRID_OPERATOR, other=True)
    assert client.get(f"/operator/programs/flex/invoice/{JULY}", headers=other_operator).status_code == 404


# ---------------------------------------------------------------------------------------- disputes


def test_dispute_lifecycle_with_an_adjustment(client: TestClient, booked: World, session: Session) -> None:
    driver, admin = headers(booked, Role.DRIVER), headers(booked, Role.ADMIN)
    dispute_id = booked.extra["disputes"][Role.DRIVER]
    comment = client.post(f"/disputes/{dispute_id}/comments", headers=driver, json={"note": "see telemetry"})
    assert comment.status_code == 201, comment.text
    incomplete = client.post(
        f"/admin/disputes/{dispute_id}/resolve", headers=admin, json={"outcome": "adjusted", "note": "ok"}
    )
    assert incomplete.status_code == 422
    wrong_counter = client.post(
        f"/admin/disputes/{dispute_id}/resolve",
        headers=admin,
        json={"outcome": "adjusted", "note": "ok", "amount_minor": 500, "counter_account": "penalties"},
    )
    assert wrong_counter.status_code == 422
    assert wrong_counter.json()["detail"][0]["loc"] == ["body", "counter_account"]
    resolved = client.post(
        f"/admin/disputes/{dispute_id}/resolve",
        headers=admin,
        json={
            "outcome": "adjusted",
            "note": "lost readings",
            "amount_minor": 500,
            "counter_account": "program_receivable",
        },
    )
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    assert body["status"] == "adjusted"
    assert [step["kind"] for step in body["history"]] == ["opened", "comment", "adjusted"]
    transaction_id = body["history"][-1]["adjustment_transaction_id"]

    again = client.post(
        f"/admin/disputes/{dispute_id}/resolve", headers=admin, json={"outcome": "rejected", "note": "x"}
    )
    assert again.status_code == 409
    assert (
        client.post(f"/disputes/{dispute_id}/comments", headers=driver, json={"note": "thanks"}).status_code
        == 409
    )

    seen = client.get(f"/disputes/{dispute_id}", headers=driver).json()
    assert seen["status"] == "adjusted"
    transactions = client.get("/admin/ledger/transactions", headers=admin, params={"limit": 1}).json()
    newest = transactions["items"][0]
    assert newest["id"] == transaction_id
    assert sorted((entry["kind"], entry["amount_minor"]) for entry in newest["entries"]) == [
        ("driver_payable", -500),
        ("program_receivable", 500),
    ]
    earnings = client.get("/driver/earnings", headers=driver).json()
    assert earnings["items"][0]["kind"] == "adjustment"
    assert earnings["items"][0]["total"]["amount_minor"] == 500
    assert earnings["totals"][0]["amount_minor"] == 8800
    assert transaction_imbalances(session) == []
    assert set(trial_balance(session).values()) == {0}


def test_disputes_belong_to_their_parties(client: TestClient, booked: World) -> None:
    driver, other_driver = headers(booked, Role.DRIVER), headers(booked, Role.DRIVER, other=True)
    operator, other_operator = (
        headers(booked, Role.GRID_OPERATOR),
        headers(booked, Role.GRID_OPERATOR, other=True),
    )
    entries, disputes = booked.extra["entries"], booked.extra["disputes"]
    # Another driver's line, another program's line, a line of the wrong kind: as if it did not exist.
    for caller, entry in [
        (driver, entries["other_driver"]),
        (driver, entries[Role.GRID_OPERATOR]),
        (operator, entries["other_program"]),
        (operator, entries[Role.DRIVER]),
    ]:
        response = client.post(
            "/disputes", headers=caller, json={"ledger_entry_id": entry, "reason": "mine?"}
        )
        assert response.status_code == 404, response.text
    twice = client.post(
        "/disputes", headers=driver, json={"ledger_entry_id": entries[Role.DRIVER], "reason": "again"}
    )
    assert twice.status_code == 409
    for caller, dispute_id in [
        (other_driver, disputes[Role.DRIVER]),
        (operator, disputes[Role.DRIVER]),
        (other_operator, disputes[Role.GRID_OPERATOR]),
        (driver, disputes[Role.GRID_OPERATOR]),
    ]:
        assert client.get(f"/disputes/{dispute_id}", headers=caller).status_code == 404
        comment = client.post(f"/disputes/{dispute_id}/comments", headers=caller, json={"note": "hi"})
        assert comment.status_code == 404
    assert client.get("/disputes", headers=other_driver).json()["total"] == 0
    assert [item["id"] for item in client.get("/disputes", headers=driver).json()["items"]] == [
        disputes[Role.DRIVER]
    ]
    assert [item["id"] for item in client.get("/disputes", headers=operator).json()["items"]] == [
        disputes[Role.GRID_OPERATOR]
    ]
    admin = headers(booked, Role.ADMIN)
    queue = client.get("/admin/disputes", headers=admin, params={"status": "open"}).json()
    assert queue["total"] == 2
    assert client.get("/admin/disputes", headers=admin, params={"status": "rejected"}).json()["total"] == 0
    assert (
        client.get("/admin/disputes", headers=admin, params={"end": "2026-01-01T00:00:00Z"}).json()["total"]
        == 0
    )


# ------------------------------------------------------------------------------------------ admins


def test_admin_ledger_views(client: TestClient, booked: World) -> None:
    admin = headers(booked, Role.ADMIN)
    runs = client.get("/admin/settlement/runs", headers=admin, params={"scope": "event:api/e1"}).json()
    assert [run["version"] for run in runs["items"]] == [2, 1]
    assert runs["items"][0]["inputs"]["gross_minor"] == 12000
    accounts = client.get(
        "/admin/ledger/accounts",
        headers=admin,
        params={"owner_ref": program_owner("flex"), "kind": "program_receivable"},
    ).json()
    assert [account["balance"]["text"] for account in accounts["items"]] == ["170.00 EUR"]
    july_20_on = client.get(
        "/admin/ledger/accounts",
        headers=admin,
        params={
            "owner_ref": program_owner("flex"),
            "kind": "program_receivable",
            "start": "2026-07-15T00:00:00Z",
        },
    ).json()
    assert july_20_on["items"][0]["balance"]["amount_minor"] == 5000
    transactions = client.get(
        "/admin/ledger/transactions", headers=admin, params={"end": "2026-07-15T00:00:00Z"}
    ).json()
    assert transactions["total"] == 3  # e1 v1, its reversal, e1 v2
    for transaction in transactions["items"]:
        assert sum(entry["amount_minor"] for entry in transaction["entries"]) == 0
    paged = client.get("/admin/ledger/transactions", headers=admin, params={"limit": 2, "offset": 4}).json()
    assert (paged["total"], len(paged["items"])) == (5, 1)
    assert (
        client.get(
            "/admin/ledger/transactions", headers=admin, params={"start": "2026-07-01T00:00"}
        ).status_code
        == 422
    )
