"""A site's baseline for an event is declared when the event is notified, and a grid operator can
recompute it from the meter and the declaration alone; on SQLite and PostgreSQL.

The world: depot ``depot-1`` (New York time) in program ``nyiso-like``, measured "2 of 3" days with an
additive day-of adjustment over the hour before the event. The event: Wednesday 2024-06-05, 13:00-14:00
local. The meter, flat each day: Tuesday 20 kW, Monday 50 kW (an event day: left out), Friday 30 kW,
Thursday 25 kW, Wednesday before 29 May 40 kW (beyond the 3 days). So the baseline is the mean of
Friday and Thursday, 27.5 kW, adjusted by the event day's 33.5 kW in the hour before: +6 kW, 33.5 kW.
During the event the depot imports 20 kW: 13.5 kW delivered.
"""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db.models import (
    DispatchEvent,
    EventSiteBaseline,
    ImmutableRowError,
    Program,
    ProgramKind,
    ProgramSite,
    Role,
    Site,
    TelemetryRecord,
    User,
)
from aggregator.ingestion.metering import site_import_intervals
from aggregator.programs.baseline_declarations import declare_site_baselines, site_declaration
from aggregator.programs.measurement import baseline_method
from aggregator.settlement.baselines import EventWindow, site_baseline
from aggregator.settlement.event_inputs import settlement_inputs
from aggregator.settlement.site_baselines import metering_span, recompute
from market_adapters.dispatch import SignalKind, SignalStatus

ZONE = ZoneInfo("America/New_York")
START = dt.datetime(2024, 6, 5, 13, tzinfo=ZONE).astimezone(dt.UTC)
END = START + dt.timedelta(hours=1)
STEP = dt.timedelta(minutes=15)
MEASUREMENT = {
    "method": "x_of_y",
    "x": 2,
    "y": 3,
    "lookback_days": 7,
    "adjustment": {"kind": "additive", "window_hours": 1},
}
DAILY_KW = {
    dt.date(2024, 5, 29): 40.0,
    dt.date(2024, 5, 30): 25.0,
    dt.date(2024, 5, 31): 30.0,
    dt.date(2024, 6, 1): 5.0,  # weekend: another day type
    dt.date(2024, 6, 2): 5.0,
    dt.date(2024, 6, 3): 50.0,  # an event day
    dt.date(2024, 6, 4): 20.0,
}


def meter_kw(moment: dt.datetime) -> float:
    """The depot's import [kW] at ``moment`` (module docstring)."""
    local = moment.astimezone(ZONE)
    if local.date() == START.astimezone(ZONE).date():
        return 20.0 if START <= moment < END else 33.5
    return DAILY_KW.get(local.date(), math.nan)  # no meter data before 29 May


def world(session: Session) -> int:
    """The module docstring's world, the event notified (declared) at 09:00 local; its public id."""
    operator = User(email="iso@grid.example", password_hash="x", role=Role.GRID_OPERATOR)
    session.add(operator)
    session.add(Site(id="depot-1", name="Depot", import_limit_kw=100, export_limit_kw=0, timezone=str(ZONE)))
    session.flush()
    program = Program(
        id="nyiso-like",
        name="Day matching",
        kind=ProgramKind.DR,
        owner_id=operator.id,
        currency="USD",
        payment_terms={"per_kwh_delivered": "1.00"},
        measurement=dict(MEASUREMENT),
    )
    session.add(program)
    session.flush()
    session.add(ProgramSite(program_id=program.id, site_id="depot-1"))
    monday = dt.datetime(2024, 6, 3, 13, tzinfo=ZONE).astimezone(dt.UTC)
    first = dt.datetime(2024, 5, 29, tzinfo=ZONE).astimezone(dt.UTC)
    session.add_all([_event("earlier", monday, monday), _event("e-1", START, START - dt.timedelta(hours=4))])
    moment, seq = first, 0
    while moment < END:
        session.add(
            TelemetryRecord(
                site_id="depot-1",
                seq=seq,
                sent_at=moment + dt.timedelta(minutes=1),
                received_at=moment + dt.timedelta(minutes=1),
                site_import_kw=meter_kw(moment),
                base_load_kw=None,
            )
        )
        moment, seq = moment + STEP, seq + 1
    session.flush()
    event_id = session.scalars(select(DispatchEvent.id).where(DispatchEvent.external_event_id == "e-1")).one()
    assert len(declare_site_baselines(session, event_id)) == 1  # notified
    session.commit()
    return event_id


def _event(external: str, start: dt.datetime, received: dt.datetime) -> DispatchEvent:
    return DispatchEvent(
        program_id="nyiso-like",
        source="api",
        external_event_id=external,
        modification=0,
        kind=SignalKind.DR_REDUCTION,
        status=SignalStatus.ACTIVE,
        window_start=start,
        window_end=start + dt.timedelta(hours=1),
        intervals=[
            {"start": start.isoformat(), "end": (start + dt.timedelta(hours=1)).isoformat(), "value": 10}
        ],
        target_sites=["depot-1"],
        received_at=received,
    )


def test_the_declaration_holds_the_method_every_parameter_and_what_else_it_reads(session: Session) -> None:
    event_id = world(session)
    [row] = session.scalars(select(EventSiteBaseline)).all()
    assert (row.event_id, row.site_id, row.method, row.timezone) == (event_id, "depot-1", "x_of_y", str(ZONE))
    assert row.parameters == {
        "method": "x_of_y",
        "x": 2,
        "y": 3,
        "lookback_days": 7,
        "min_days": None,
        "adjustment": {
            "kind": "additive",
            "window_hours": 1.0,
            "gap_hours": 0.0,
            "cap_up": None,
            "cap_down": None,
        },
    }
    assert row.excluded_days == ["2024-06-03"]
    assert row.declared_at == START - dt.timedelta(hours=4)
    assert declare_site_baselines(session, event_id) == []  # declared once
    row.method = "same_day"
    with pytest.raises(ImmutableRowError, match="declared at notification"):
        session.flush()
    session.rollback()


def test_a_later_change_of_the_programs_measurement_does_not_move_a_notified_event(session: Session) -> None:
    event_id = world(session)
    program = session.get(Program, "nyiso-like")
    assert program is not None
    program.measurement = {"method": "same_day"}
    session.commit()
    inputs = settlement_inputs(session, event_id, now=END + dt.timedelta(hours=1))
    assert inputs.baseline_method == "x_of_y"
    [site] = inputs.sites
    assert site.declaration.stored and site.declaration.method == "x_of_y"
    assert site.baseline.days_used == (dt.date(2024, 5, 30), dt.date(2024, 5, 31))
    assert list(site.baseline.baseline_kw) == pytest.approx([33.5] * 4)
    assert inputs.performance is not None
    assert inputs.performance.raw_delivered_kwh == pytest.approx(13.5)
    assert not any("no baseline was declared" in note for note in inputs.notes)


def test_a_grid_operator_recomputes_the_baseline_from_the_meter_and_the_declaration(session: Session) -> None:
    event_id = world(session)
    inputs = settlement_inputs(session, event_id, now=END + dt.timedelta(hours=1))
    [site] = inputs.sites

    # The operator's side: their own meter series and the declaration as stored, nothing of ours.
    [row] = session.scalars(select(EventSiteBaseline).where(EventSiteBaseline.event_id == event_id)).all()
    method = baseline_method(row.parameters)
    assert method.method == "x_of_y"
    first, last = metering_span(method, START, END)
    index = pd.date_range(first, last, freq=STEP, inclusive="left")
    their_meter = pd.Series([meter_kw(t.to_pydatetime()) for t in index], index=index, dtype=float)
    theirs = site_baseline(
        method,
        their_meter,
        EventWindow(str(event_id), START, END),
        event_days={dt.date.fromisoformat(day) for day in row.excluded_days},
        tz=row.timezone,
    )
    pd.testing.assert_series_equal(theirs.baseline_kw, site.baseline.baseline_kw, check_names=False)
    assert theirs.days_used == site.baseline.days_used

    # And ours, from the stored meter data: the same function settlement measures with.
    declaration = site_declaration(session, event_id, "depot-1")
    assert declaration is not None
    ours = recompute(declaration, site_import_intervals(session, "depot-1", first, last).mean_kw, START, END)
    pd.testing.assert_series_equal(ours.baseline_kw, site.baseline.baseline_kw)
