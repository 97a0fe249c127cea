"""Each vehicle's baseline for a dispatch event is frozen when the event is first planned with it.

On SQLite and PostgreSQL. The loop tests use the in-memory publisher and hand-driven clock of
``tests/test_control.py`` on a depot whose time-of-use tariff is cheap (0.10) from 12:00 to 14:00
UTC and dear (0.40) otherwise: without an event a vehicle charges in the cheap hours. A DR event
asks for 11 kW less import over those two hours, so the plan pre-charges before 12:00 instead; once
it has, the counterfactual solved afresh no longer charges in the window, but the frozen baseline
still does.

The measurement tests store hand-made schedule versions (step 15 min, event 17:00-18:00):

- ``v0`` (16:00): made before the event was known; session ``s1`` at 9 kW;
- ``v1`` (16:15, lists the event's first row): ``s1`` at 11 kW for 2 h: ``s1`` is frozen here;
- ``v2`` (16:45, lists the event's second row): ``s1`` pre-charged (0 kW), ``s2`` arrived at 6 kW for
  the next hour only; base load 1 kW (import 7 kW): ``s2`` is frozen here;
- ``v3`` (17:20): both at 0 kW, import 1 kW.

In force at the intervals 17:00, 17:15, 17:30, 17:45: ``v2``, ``v2``, ``v3``, ``v3``. Fresh expected
import 7, 7, 1, 1 kW; with the frozen baselines 1 + 11 + 6 = 18 kW, except at 17:45, which ``s2``'s
frozen hour does not cover: 1 + 11 + 0 (fresh) = 12 kW.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from test_control import FakeClock, RecordingPublisher, control, run, versions

from aggregator.control.inputs import PlanningSettings, vehicle_key
from aggregator.db.models import (
    Charger,
    ChargingSession,
    DispatchEvent,
    EvseTelemetryRecord,
    Program,
    ProgramKind,
    ProgramSite,
    Role,
    ScheduleStatus,
    ScheduleVersion,
    Site,
    TelemetryRecord,
    User,
    Vehicle,
)
from aggregator.ingestion.metering import interval_index
from aggregator.programs.dispatch_events import EventNotFoundError
from aggregator.programs.event_baselines import frozen_base_load, frozen_baselines
from aggregator.settlement.attribution import ExclusionReason
from aggregator.settlement.event_inputs import settlement_inputs
from aggregator.settlement.event_measurement import counterfactual_site_kw, plugged_sessions
from market_adapters.dispatch import SignalKind, SignalStatus
from market_adapters.tariffs import parse_tou_tariff

SITE = "depot-1"
T0 = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.UTC)
STEP = dt.timedelta(minutes=15)
WINDOW_START, WINDOW_END = T0 + dt.timedelta(hours=2), T0 + dt.timedelta(hours=4)
TOU = parse_tou_tariff(
    {
        "name": "cheap-noon",
        "schedule": [
            {
                "id": "all",
                "effective_start": "01-01",
                "effective_end": "12-31",
                "dow_mask": "ALL",
                "times": [0, 12, 14],
                "tariffs": [0.4, 0.1, 0.4],
                "demand_charge": 0,
            }
        ],
    }
)
PLANNING = PlanningSettings(horizon=dt.timedelta(hours=8), tariffs={"tou": TOU})
GRID_KWH = 18.0 / 0.92
"""What a vehicle at 50 % of 60 kWh draws to reach 80 % [kWh, grid side]."""


class Depot:
    """The module docstring's depot, enrolled in program ``dso``, with one driver and an operator."""

    def __init__(self, db: Session) -> None:
        self.db = db
        self.driver = User(email="ada@example.com", password_hash="x", role=Role.DRIVER)
        operator = User(email="dso@example.com", password_hash="x", role=Role.GRID_OPERATOR)
        db.add_all([self.driver, operator])
        db.add(Site(id=SITE, name=SITE, import_limit_kw=50.0, export_limit_kw=0.0, tariff_ref="tou"))
        db.flush()
        db.add(Program(id="dso", name="DSO", kind=ProgramKind.DR, owner_id=operator.id))
        db.flush()
        db.add(ProgramSite(program_id="dso", site_id=SITE))
        self.seq = 0
        db.commit()

    def arrive(self, n: int, at: dt.datetime, soc_percent: float | None = 50.0) -> int:
        """Vehicle ``n`` plugs into ``cp-n`` at ``at`` with 30 of 60 kWh (``soc_percent`` reported at
        arrival; ``None``: its charger reports none), 80 % wanted by 16:00."""
        charger = Charger(site_id=SITE, charge_point_id=f"cp-{n}", evse_id=1, max_kw=11.0)
        vehicle = Vehicle(
            owner_id=self.driver.id,
            name=f"van {n}",
            battery_kwh=60.0,
            max_charge_kw=11.0,
            max_discharge_kw=0.0,
        )
        self.db.add_all([charger, vehicle])
        self.db.flush()
        charging = ChargingSession(
            site_id=SITE,
            charger_id=charger.id,
            evse_id=1,
            transaction_id=f"tx-{n}",
            vehicle_id=vehicle.id,
            started_at=at,
            departure_at=T0 + dt.timedelta(hours=6),
            soc_at_start_percent=soc_percent,
        )
        self.db.add(charging)
        self.db.commit()
        return charging.id

    def event(self) -> DispatchEvent:
        """11 kW less import from 12:00 to 14:00, 0.50 paid per kWh, 5.00 charged per kWh short."""
        row = DispatchEvent(
            program_id="dso",
            source="api",
            external_event_id="e-1",
            kind=SignalKind.DR_REDUCTION,
            status=SignalStatus.ACTIVE,
            price_per_kwh=0.5,
            penalty_per_kwh=5.0,
            window_start=WINDOW_START,
            window_end=WINDOW_END,
            intervals=[{"start": WINDOW_START.isoformat(), "end": WINDOW_END.isoformat(), "value": 11.0}],
            received_at=T0,
        )
        self.db.add(row)
        self.db.commit()
        return row

    def soc(self, at: dt.datetime, percent: dict[int, float]) -> None:
        """A telemetry message at ``at``: vehicle ``n`` (on ``cp-n``) at ``percent[n]``; no base load."""
        self.seq += 1
        self.db.add(
            TelemetryRecord(
                site_id=SITE,
                seq=self.seq,
                sent_at=at,
                received_at=at,
                site_import_kw=0.0,
                base_load_kw=0.0,
                evses=[
                    EvseTelemetryRecord(charger_id=f"cp-{n}", evse_id=1, power_kw=11.0, soc_percent=soc)
                    for n, soc in percent.items()
                ],
            )
        )
        self.db.commit()


def window(version: ScheduleVersion, series: list[Any]) -> np.ndarray:
    """The event window's part of a version's per-step ``series``."""
    first = (WINDOW_START - version.horizon_start) // STEP
    last = (WINDOW_END - version.horizon_start) // STEP
    return np.asarray(series[first:last], dtype=float)


def baseline(version: ScheduleVersion, event: DispatchEvent) -> np.ndarray:
    return window(version, version.inputs["event_baselines"][str(event.id)])


def dr_baseline(version: ScheduleVersion) -> np.ndarray:
    """The baseline the optimiser was given: the scenario's DR event (one interval)."""
    (event,) = version.inputs["scenario"]["dr_events"]
    return np.asarray(event["baseline_kw"], dtype=float)


def vehicle_cf(version: ScheduleVersion, session_id: int) -> np.ndarray:
    assert version.counterfactual is not None
    return window(version, version.counterfactual["vehicles"][vehicle_key(session_id)]["power_kw"])


# ------------------------------------------------------------------------------------------ planning


def test_a_precharged_vehicle_keeps_the_baseline_of_the_first_plan(engine: Engine, session: Session) -> None:
    depot = Depot(session)
    charging = depot.arrive(1, T0 - dt.timedelta(hours=1))
    event = depot.event()
    clock = FakeClock(T0)
    loop = control(engine, clock, RecordingPublisher(), planning=PLANNING)

    run(lambda: loop.plan_site(SITE, "event"))
    # 11:00: the first hour's pre-charging is in the battery (4 x 2.75 kWh x 0.92 on top of 30 kWh).
    clock.advance(dt.timedelta(hours=1))
    depot.soc(clock.now, {1: (30.0 + 11.0 * 0.92) / 60 * 100})
    run(lambda: loop.plan_site(SITE, "cadence"))
    # 12:00: the target is reached before the event: the fresh counterfactual charges nothing.
    clock.advance(dt.timedelta(hours=1))
    depot.soc(clock.now, {1: 80.0})
    run(lambda: loop.plan_site(SITE, "cadence"))

    first, second, third = versions(session)
    assert first.counterfactual is not None
    # Without the event the vehicle charges in the cheap window: 7 steps at 11 kW and the rest.
    frozen = window(first, first.counterfactual["site_import_kw"])
    assert frozen == pytest.approx([11.0] * 7 + [GRID_KWH * 4 - 77.0], abs=1e-3)
    assert baseline(first, event) == pytest.approx(frozen, abs=1e-6)
    assert dr_baseline(first) == pytest.approx(frozen, abs=1e-6)
    # With it, everything is charged before noon, at the dear price, and nothing in the window.
    assert window(first, first.plan["site_import_kw"]) == pytest.approx([0.0] * 8, abs=1e-6)

    for later in (second, third):
        assert later.counterfactual is not None and later.inputs["events"] == [event.id]
        fresh = window(later, later.counterfactual["site_import_kw"])
        assert fresh.sum() < frozen.sum() - 10.0  # the flaw the frozen baseline mends
        assert baseline(later, event) == pytest.approx(frozen, abs=1e-6)
        assert dr_baseline(later) == pytest.approx(frozen, abs=1e-6)
        assert window(later, later.plan["site_import_kw"]) == pytest.approx([0.0] * 8, abs=1e-6)
        assert f"{vehicle_key(charging)}'s baseline is frozen at schedule version {first.id}" in " ".join(
            later.inputs["notes"]
        )
    assert third.counterfactual is not None
    assert window(third, third.counterfactual["site_import_kw"]) == pytest.approx([0.0] * 8, abs=1e-6)
    # The 11:00 plan still had 8.6 kWh to charge: before noon, not in the window.
    planned = np.asarray(second.plan["vehicles"][vehicle_key(charging)]["power_kw"])
    assert planned[:4].sum() * 0.25 == pytest.approx(GRID_KWH - 11.0, abs=1e-3)


def test_a_late_arrival_is_frozen_at_the_first_plan_that_has_it(engine: Engine, session: Session) -> None:
    depot = Depot(session)
    early = depot.arrive(1, T0 - dt.timedelta(hours=1))
    event = depot.event()
    clock = FakeClock(T0)
    loop = control(engine, clock, RecordingPublisher(), planning=PLANNING)
    run(lambda: loop.plan_site(SITE, "event"))

    clock.advance(dt.timedelta(hours=1))  # 11:00: vehicle 2 has just arrived
    late = depot.arrive(2, clock.now - dt.timedelta(minutes=10))
    depot.soc(clock.now, {1: (30.0 + 11.0 * 0.92) / 60 * 100, 2: 50.0})
    run(lambda: loop.plan_site(SITE, "arrival"))
    clock.advance(dt.timedelta(minutes=30))  # 11:30: vehicle 2 has charged for half an hour
    depot.soc(clock.now, {1: (30.0 + 16.5 * 0.92) / 60 * 100, 2: (30.0 + 5.5 * 0.92) / 60 * 100})
    run(lambda: loop.plan_site(SITE, "cadence"))

    first, second, third = versions(session)
    assert vehicle_key(late) not in first.inputs["sessions"]
    frozen_early, frozen_late = vehicle_cf(first, early), vehicle_cf(second, late)
    assert frozen_late.sum() * 0.25 == pytest.approx(GRID_KWH, abs=1e-3)  # all of it in the window
    # The arrival's plan: vehicle 1 frozen at the first version, vehicle 2 as its own counterfactual.
    assert baseline(second, event) == pytest.approx(frozen_early + frozen_late, abs=1e-6)
    # The next plan freezes vehicle 2 at the arrival's version, though its fresh power has dropped.
    assert vehicle_cf(third, late).sum() < frozen_late.sum() - 1.0
    assert baseline(third, event) == pytest.approx(frozen_early + frozen_late, abs=1e-6)
    assert dr_baseline(third) == pytest.approx(frozen_early + frozen_late, abs=1e-6)
    found = frozen_baselines(session, SITE, [event.id])
    assert {s: b.version_id for s, b in found[event.id].items()} == {early: first.id, late: second.id}


def test_a_vehicle_of_unknown_soc_gets_no_phantom_baseline(engine: Engine, session: Session) -> None:
    """Van 2 is on a charger that never reports SoC: the first plan with the event assumes it arrived at
    20 % and, without the event, charges it 11 kW through the cheap window. In fact it is full and
    draws nothing. Its baseline was frozen at a plan that assumed its SoC: it gets none of its own and
    is listed as excluded with the reason; the site's counterfactual baseline counts it at what it drew
    (0 kW), so neither it nor the site is credited its phantom 11 kW. Van 1 (50 % reported) keeps its
    baseline, and the vehicles and the remainder add up to the site's delivery."""
    depot = Depot(session)
    known = depot.arrive(1, T0 - dt.timedelta(hours=1))
    unknown = depot.arrive(2, T0 - dt.timedelta(hours=1), soc_percent=None)
    event = depot.event()
    loop = control(engine, FakeClock(T0), RecordingPublisher(), planning=PLANNING)
    run(lambda: loop.plan_site(SITE, "event"))
    [first] = versions(session)
    assert first.inputs["assumed"] == {vehicle_key(unknown): ["soc"]}
    assert f"{vehicle_key(unknown)}: no SoC reported; assumed 20.0 % at arrival" in first.inputs["notes"]
    phantom = vehicle_cf(first, unknown)
    assert phantom.sum() * 0.25 > 10.0  # what a default baseline would have credited it

    frozen = frozen_baselines(session, SITE, [event.id])[event.id]
    assert frozen[known].known and not frozen[unknown].known
    for k in range(8):  # in the window both vans draw nothing: van 1 was charged ahead, van 2 is full
        evse_reading(session, WINDOW_START + k * STEP + dt.timedelta(minutes=5), 0.0, {1: 0.0, 2: 0.0})
    session.commit()
    inputs = settlement_inputs(session, event.id, now=WINDOW_END + dt.timedelta(hours=1))
    assert inputs.attribution is not None and inputs.performance is not None

    van2 = inputs.attribution.vehicles[unknown]
    assert (van2.delivered_kwh, van2.weight_kwh) == (0.0, 0.0)
    assert van2.exclusion is not None and van2.exclusion.reason is ExclusionReason.UNKNOWN_STATE
    assert van2.exclusion.detail == (
        f"session {unknown}: SoC unknown when event {event.id} was first planned with it (schedule "
        f"version {first.id} assumed defaults); no baseline of its own"
    )
    [vehicle] = [v for v in inputs.vehicles if v.session_id == unknown]
    assert vehicle.counterfactual_kw.isna().all()
    [site] = inputs.sites
    # The site's baseline: van 1's frozen power (no base load planned), van 2 at what it drew.
    assert list(site.baseline.baseline_kw) == pytest.approx(list(vehicle_cf(first, known)), abs=1e-6)
    van1 = inputs.attribution.vehicles[known]
    assert van1.exclusion is None and van1.delivered_kwh == pytest.approx(vehicle_cf(first, known).sum() / 4)
    assert inputs.attribution.site_delivered_kwh == pytest.approx(van1.delivered_kwh)
    assert inputs.attribution.unattributed_kwh == pytest.approx(0.0, abs=1e-9)


def test_a_vehicle_is_frozen_at_the_first_plan_that_knew_its_state(engine: Engine, session: Session) -> None:
    """Its charger reports the SoC only after the event's first plan, which assumed it: the baseline is
    frozen at the next plan, the first that knew it, and is known."""
    depot = Depot(session)
    charging = depot.arrive(1, T0 - dt.timedelta(minutes=5), soc_percent=None)
    event = depot.event()
    clock = FakeClock(T0)
    loop = control(engine, clock, RecordingPublisher(), planning=PLANNING)
    run(lambda: loop.plan_site(SITE, "event"))
    clock.advance(dt.timedelta(minutes=15))
    depot.soc(clock.now, {1: 50.0})
    run(lambda: loop.plan_site(SITE, "cadence"))
    first, second = versions(session)
    assert (first.inputs["assumed"], second.inputs["assumed"]) == ({vehicle_key(charging): ["soc"]}, {})
    frozen = frozen_baselines(session, SITE, [event.id])[event.id][charging]
    assert (frozen.version_id, frozen.known, frozen.unknown_reason) == (second.id, True, None)


def test_a_site_without_events_is_planned_as_before(engine: Engine, session: Session) -> None:
    depot = Depot(session)
    depot.arrive(1, T0 - dt.timedelta(hours=1))
    clock = FakeClock(T0)
    loop = control(engine, clock, RecordingPublisher(), planning=PLANNING)
    run(lambda: loop.plan_site(SITE, "cadence"))
    clock.advance(dt.timedelta(hours=1))
    run(lambda: loop.plan_site(SITE, "cadence"))

    for version in versions(session):
        assert version.status is ScheduleStatus.OPTIMAL and version.counterfactual is None
        assert "event_baselines" not in version.inputs and version.inputs["events"] == []
        assert version.inputs["scenario"]["dr_events"] == []
        assert not any("frozen" in note for note in version.inputs["notes"])


# --------------------------------------------------------------------------------------- measurement

MEASURED = dt.datetime(2024, 6, 3, 17, tzinfo=dt.UTC)


def add_version(
    db: Session,
    made: dt.datetime,
    events: list[int],
    import_kw: float,
    vehicles: dict[int, float],
    steps: int = 8,
    vehicle_steps: dict[int, int] | None = None,
) -> ScheduleVersion:
    """A version made (and starting) at ``made`` whose counterfactual is flat: ``import_kw`` and each
    session's kW, for ``steps`` steps (``vehicle_steps`` for a session's own length)."""
    lengths = vehicle_steps or {}
    version = ScheduleVersion(
        site_id=SITE,
        created_at=made,
        horizon_start=made,
        step_seconds=900,
        trigger="test",
        inputs={"scenario": {}, "sessions": {vehicle_key(s): s for s in vehicles}, "events": events},
        result_summary={},
        status=ScheduleStatus.OPTIMAL,
        plan={"site_import_kw": [0.0] * steps, "vehicles": {}},
        counterfactual={
            "site_import_kw": [import_kw] * steps,
            "vehicles": {
                vehicle_key(s): {"power_kw": [kw] * lengths.get(s, steps), "evse_id": f"cp-{s}/1"}
                for s, kw in vehicles.items()
            },
        },
    )
    db.add(version)
    db.flush()
    return version


def measured_world(db: Session) -> tuple[int, int, int, int]:
    """The module docstring's versions; (event id, another event's id, s1, s2)."""
    depot = Depot(db)
    s1, s2 = (
        depot.arrive(1, MEASURED - dt.timedelta(hours=2)),
        depot.arrive(2, MEASURED - dt.timedelta(minutes=20)),
    )
    rows = []
    for modification, external in ((0, "e-1"), (1, "e-1"), (0, "e-2")):
        row = DispatchEvent(
            program_id="dso",
            source="api",
            external_event_id=external,
            modification=modification,
            kind=SignalKind.DR_REDUCTION,
            status=SignalStatus.ACTIVE,
            window_start=MEASURED,
            window_end=MEASURED + dt.timedelta(hours=1),
            intervals=[],
            received_at=MEASURED - dt.timedelta(hours=2),
        )
        db.add(row)
        db.flush()
        rows.append(row.id)
    first, second, other = rows
    at = MEASURED.replace(hour=16)
    add_version(db, at, [], 9.0, {s1: 9.0})
    add_version(db, at + dt.timedelta(minutes=15), [first], 11.0, {s1: 11.0})
    add_version(db, at + dt.timedelta(minutes=45), [second], 7.0, {s1: 0.0, s2: 6.0}, vehicle_steps={s2: 4})
    add_version(db, at + dt.timedelta(minutes=80), [second], 1.0, {s1: 0.0, s2: 0.0})
    db.commit()
    return first, other, s1, s2


def evse_reading(db: Session, at: dt.datetime, site_kw: float, evse_kw: dict[int, float]) -> None:
    """One telemetry message at ``at``: the site's import and vehicle ``n``'s power on ``cp-n``."""
    seq = 1000 + int(at.timestamp()) % 100_000
    db.add(
        TelemetryRecord(
            site_id=SITE,
            seq=seq,
            sent_at=at,
            received_at=at,
            site_import_kw=site_kw,
            base_load_kw=None,
            evses=[
                EvseTelemetryRecord(charger_id=f"cp-{n}", evse_id=1, power_kw=kw) for n, kw in evse_kw.items()
            ],
        )
    )


def test_measurement_reads_each_sessions_frozen_baseline_and_the_first_plans_base_load(
    session: Session,
) -> None:
    """In the module docstring's world: s1 is frozen at 11 kW (``v1``), s2 at 6 kW for 16:45-17:45
    (``v2``), and the base load at ``v1``'s 11 - 11 = 0 kW: ``v2``'s 1 kW and ``v3``, made during the
    event, move nothing. s2 reads 2 kW at 17:50, where its frozen hour has ended: there it counts at
    what it drew (neutral). The site's baseline: 0 + 11 + 6 = 17 kW, then 0 + 11 + 2 = 13 kW."""
    event, other, s1, s2 = measured_world(session)
    _, v1, v2, _ = versions(session)
    end = MEASURED + dt.timedelta(hours=1)
    index = interval_index(MEASURED, end, STEP)
    evse_reading(session, MEASURED + dt.timedelta(minutes=50), 2.0, {1: 0.0, 2: 2.0})
    session.commit()

    found = frozen_baselines(session, SITE, [event, other])
    assert set(found) == {event}  # no version lists the other event
    assert found[event][s1].power_kw == (11.0,) * 8 and found[event][s2].power_kw == (6.0,) * 4
    assert (found[event][s1].version_id, found[event][s2].version_id) == (v1.id, v2.id)
    assert found[event][s1].known and found[event][s1].unknown_reason is None
    assert found[event][s1].mean_kw(MEASURED, end) == 11.0
    assert np.isnan(found[event][s2].mean_kw(MEASURED, end))  # its hour ends at 17:45

    base = frozen_base_load(session, SITE, event, MEASURED, end)
    assert base.version_ids == (v1.id,)
    assert base.mean_kw(MEASURED, end) == 0.0
    plugged = {
        series.session_id: series for series in plugged_sessions(session, SITE, event, index, end, STEP)
    }
    assert set(plugged) == {s1, s2}
    assert list(plugged[s1].baseline_kw) == [11.0] * 4
    assert list(plugged[s2].baseline_kw)[:3] == [6.0] * 3 and np.isnan(plugged[s2].baseline_kw.iloc[3])
    expected = counterfactual_site_kw(base, list(plugged.values()), index, end, STEP)
    assert list(expected) == pytest.approx([17.0, 17.0, 17.0, 13.0])

    # Another event at the site, never planned: no baseline of anyone's, and each session says so.
    never = plugged_sessions(session, SITE, other, index, end, STEP)
    assert [series.unknown_reason for series in never] == [
        f"session {s}: never planned with event {other}; no baseline of its own" for s in (s1, s2)
    ]
    assert frozen_base_load(session, SITE, other, MEASURED, end).parts == ()


def test_a_session_that_leaves_mid_interval_counts_for_the_part_it_was_plugged_in(session: Session) -> None:
    """s1 leaves at 17:37:30, half-way through the third quarter, having drawn 6 kW (read every 5
    minutes; its charger reads 0 once it has left). There it counts half: 3 kW metered against half its
    frozen 11 kW, as the site meter, which averages the whole quarter, sees it; after it, nothing."""
    event, _, s1, _ = measured_world(session)
    charging = session.get(ChargingSession, s1)
    assert charging is not None
    charging.stopped_at = MEASURED + dt.timedelta(minutes=37, seconds=30)
    for minute in range(0, 60, 5):
        at = MEASURED + dt.timedelta(minutes=minute)
        evse_reading(session, at, 0.0, {1: 6.0 if at < charging.stopped_at else 0.0})
    session.commit()
    end = MEASURED + dt.timedelta(hours=1)
    index = interval_index(MEASURED, end, STEP)
    [series] = [s for s in plugged_sessions(session, SITE, event, index, end, STEP) if s.session_id == s1]
    assert list(series.metered_kw)[:3] == [6.0, 6.0, 3.0] and np.isnan(series.metered_kw.iloc[3])
    assert list(series.baseline_kw)[:3] == [11.0, 11.0, 5.5] and np.isnan(series.baseline_kw.iloc[3])
    assert list(series.site_part_kw()) == [11.0, 11.0, 5.5, 0.0]


def test_an_unreadable_counterfactual_freezes_nothing_and_the_next_first_plan_is_read(
    session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    event, _, s1, _ = measured_world(session)
    _, v1, v2, v3 = versions(session)
    v1.counterfactual = {
        "site_import_kw": [11.0] * 8,
        "vehicles": {vehicle_key(s1): {"power_kw": ["11"] * 8, "evse_id": "cp-1/1"}},
    }
    session.commit()

    # The version s1 would be frozen at is skipped, with a warning naming it: s1 is frozen at v2.
    with caplog.at_level(logging.WARNING, logger="aggregator.programs.event_baselines"):
        frozen = frozen_baselines(session, SITE, [event])[event][s1]
    assert (frozen.version_id, frozen.power_kw) == (v2.id, (0.0,) * 8)
    assert (
        f"schedule version {v1.id}: counterfactual.vehicles['{vehicle_key(s1)}'].power_kw[0] is not a number"
        in (caplog.text)
    )
    # The base load too: v2's 7 - 0 - 6 = 1 kW until its s2 hour ends at 17:45, then v3's 1 - 0 - 0.
    end = MEASURED + dt.timedelta(hours=1)
    base = frozen_base_load(session, SITE, event, MEASURED, end)
    assert base.version_ids == (v2.id, v3.id)
    assert [base.mean_kw(t, t + STEP) for t in (MEASURED, MEASURED + 3 * STEP)] == [1.0, 1.0]


def test_an_id_that_is_not_an_events_public_id_is_named(session: Session) -> None:
    event, _, _, _ = measured_world(session)
    with pytest.raises(EventNotFoundError, match=f"is a later version .* of event {event}"):
        frozen_base_load(session, SITE, event + 1, MEASURED, MEASURED + STEP)
