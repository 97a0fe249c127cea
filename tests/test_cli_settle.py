"""``fleetgrid settle``: an event or a month into the ledger from the command line, on SQLite and PostgreSQL.

The world and its hand-computed figures are those of ``tests/test_event_settlement.py``: 900 cents for
the drivers, A 5.21 EUR, B 3.79 EUR, C nothing because of a charge-now override.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from test_event_settlement import START, add_reading, build_world
from typer.testing import CliRunner

from aggregator.cli import app
from aggregator.db.models import LedgerTransaction, SettlementRun

runner = CliRunner()


def settle(url: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["settle", "--database-url", url, *args])
    return result.exit_code, result.output


def stored(session: Session) -> tuple[int, int]:
    runs = session.scalar(select(func.count()).select_from(SettlementRun)) or 0
    transactions = session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0
    return runs, transactions


def test_an_event_is_booked_then_unchanged_then_adjusted(database_url: str, session: Session) -> None:
    world = build_world(session, intervals_metered=3)
    a, c = world.drivers["a"], world.drivers["c"]

    code, output = settle(database_url, "--event", str(world.event_id))
    assert code == 0, output
    assert "performance: 15.000 of 15.000 kWh committed, factor 1.000, 1 of 4 intervals" in output
    assert "15.000 kWh at 0.50: 7.50" in output
    assert "10 % of 7.50: -0.75" in output
    assert "availability" not in output  # the program pays no availability
    assert f"user {a} <a1@drivers.example>: share 3.91" in output
    assert f"user {c} <c1@drivers.example>: share 0.00 (nothing earned: override" in output
    assert "booked:" in output
    assert stored(session) == (1, 1)

    code, output = settle(database_url, "--event", str(world.event_id))
    assert code == 0, output
    assert "unchanged:" in output
    assert stored(session) == (1, 1)

    add_reading(session, world.site_id, 3, START, {"a": 0.0, "b": 3.0, "c": 5.5})
    session.commit()
    code, output = settle(database_url, "--event", str(world.event_id))
    assert code == 0, output
    assert f"user {a} <a1@drivers.example>: share 5.21" in output
    assert "adjusted:" in output and "version 2" in output
    assert stored(session) == (2, 3)


def test_a_dry_run_prints_and_stores_nothing(database_url: str, session: Session) -> None:
    world = build_world(session)
    code, output = settle(database_url, "--event", str(world.event_id), "--dry-run")
    assert code == 0, output
    assert f"user {world.drivers['b']} <b1@drivers.example>: share 3.79" in output
    assert "dry run:" in output
    assert stored(session) == (0, 0)


def test_a_month_settles_its_events(database_url: str, session: Session) -> None:
    world = build_world(session)
    code, output = settle(database_url, "--period", "2024-06")
    assert code == 0, output
    assert f"event {world.event_id} (api/evt-1" in output and "booked:" in output
    code, output = settle(database_url, "--period", "2024-07")
    assert code == 0, output
    assert "2024-07: no ended events to settle" in output


def test_problems_are_named_and_exit_2(database_url: str, session: Session) -> None:
    future = dt.datetime.now(dt.UTC).replace(microsecond=0, second=0, minute=0) + dt.timedelta(days=2)
    unended = build_world(session, start=future, tag="2")
    unmetered = build_world(session, intervals_metered=0, tag="3")
    cases = [
        (["--event", "999999"], "event 999999: no such dispatch event"),
        (["--event", str(unended.event_id)], f"event {unended.event_id}: ends at"),
        (["--event", str(unmetered.event_id)], f"event {unmetered.event_id}: no telemetry from depot-3"),
        (
            ["--period", "2024-06"],
            f"1 event(s) of 2024-06 not settled: event {unmetered.event_id}: no telemetry",
        ),
        (["--period", "2024-13"], "period '2024-13' is not a month as YYYY-MM"),
        (["--event", "1", "--period", "2024-06"], "give --event ID or --period YYYY-MM"),
        ([], "give --event ID or --period YYYY-MM"),
    ]
    for args, message in cases:
        code, output = settle(database_url, *args)
        assert code == 2, (args, output)
        assert f"error: {message}" in output, (args, output)
    assert stored(session) == (0, 0)
