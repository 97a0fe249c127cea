"""``make demo``'s day, shortened: every part runs together on a machine with no services (in-process
broker, SQLite) and the day ends with a report and a settled, balanced event."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from aggregator.db.models import ChargingSession, ScheduleVersion, SetpointCommandRecord
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.runtime.demo import DemoOptions, DemoProgress, run_day
from aggregator.settlement.ledger import trial_balance


def test_a_short_depot_day_runs_end_to_end(tmp_path: Path) -> None:
    seen: list[float] = []

    def progress(state: DemoProgress, done: float) -> None:
        seen.append(done)

    options = DemoOptions(vehicles=10, seed=7, minutes=0.3, workdir=tmp_path)
    report = asyncio.run(run_day(options, progress))

    labels = [row[0] for row in report.rows]
    assert labels == [
        "energy + demand cost",
        "peak import (15 min)",
        "V2G energy exported",
        "charging targets met",
        "energy stored / wanted",
        "DR delivered / requested",
    ]
    assert seen == sorted(seen) and seen[-1] > 0.9

    engine = make_engine(f"sqlite:///{tmp_path / 'demo.sqlite'}")
    try:
        with make_sessionmaker(engine)() as session:
            sessions = session.scalar(select(func.count()).select_from(ChargingSession))
            versions = session.scalar(select(func.count()).select_from(ScheduleVersion))
            commands = session.scalar(select(func.count()).select_from(SetpointCommandRecord))
            assert sessions and sessions >= 5, "vehicles arrived, plugged in and were recorded"
            assert versions and versions > 10, "the control loop planned through the day"
            assert commands and commands > 0, "and published setpoints"
            assert set(trial_balance(session).values()) <= {0}, "the settled event left the ledger balanced"
    finally:
        engine.dispose()
    [settlement] = report.settlement
    assert settlement.startswith("settlement booked: gross ")
    for line in ("penalty", "platform fee", "to drivers", "unallocated 0.00 USD"):
        assert line in settlement
