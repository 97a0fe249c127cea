"""``fleetgrid simulate``: a depot day through the real loop in virtual time, measured at the meter.

The whole-day runs are short (a few vehicles); ``bench/simulate_days.py`` runs seeds 1-10 at full size.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from aggregator.db.models import ChargingSession, ScheduleVersion, SessionOverride, SetpointCommandRecord
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.runtime import depot_world as world
from aggregator.runtime.simulation import (
    SimulationOptions,
    SimulationProgress,
    behaviours,
    requested_reduction_kw,
    simulate,
)
from aggregator.settlement.ledger import trial_balance
from chargersim.uncontrolled import PluggedVehicle, charge_on_plug_in
from chargersim.vehicles import Vehicle

T0 = dt.datetime(2026, 6, 9, 8, tzinfo=dt.UTC)


def test_uncontrolled_charging_draws_all_it_can_from_plug_in_to_departure() -> None:
    """Hand-computed: 11 kW into a 50 kWh battery at 92 % for 1 h from 20 % (no taper below 80 %),
    plugged at 08:30, gone at 09:30; a second vehicle already full draws nothing."""
    charging = Vehicle(50, 0.2, 11.0, T0 + dt.timedelta(minutes=30), T0 + dt.timedelta(minutes=90), 1.0)
    full = Vehicle(50, 0.9, 11.0, T0, T0 + dt.timedelta(hours=2), target_soc=0.8)
    imported, exported = charge_on_plug_in(
        [PluggedVehicle(charging, 22.0), PluggedVehicle(full, 11.0)], T0, T0 + dt.timedelta(hours=2), 60
    )
    assert sum(imported) == pytest.approx(11.0)
    assert np.flatnonzero(imported).tolist() == list(range(30, 90))
    assert sum(exported) == 0.0
    assert charging.soc == pytest.approx(0.2 + 11 * 0.92 / 50)
    assert full.soc == 0.9


def test_behaviours_follow_the_seed_and_the_shares() -> None:
    scenario, _, end = world.depot_day(20, 3, 0.35, dt.date(2026, 6, 9))
    options = SimulationOptions(vehicles=20, seed=3)
    first, again = behaviours(scenario, options, end), behaviours(scenario, options, end)
    assert first == again
    v2g = {v.id for v in scenario.vehicles if v.max_discharge_kw > 0}
    assert {k for k, b in first.items() if b.protocol == "2.1"} == v2g
    plain = len(scenario.vehicles) - len(v2g)
    assert sum(b.protocol == "1.6" for b in first.values()) == round(0.25 * plain)
    by_id = {v.id: v for v in scenario.vehicles}
    late = [k for k, b in first.items() if b.departure > by_id[k].departure]
    early = [k for k, b in first.items() if b.departure < by_id[k].departure]
    assert len(early) == 1 and first[early[0]].tells_app
    assert len(late) >= 1 and all(first[k].departure <= end - dt.timedelta(minutes=15) for k in late)
    assert all(b.tells_app for b in first.values() if b.protocol == "1.6")


def test_the_operator_asks_for_30_percent_of_uncontrolled_import_in_the_window() -> None:
    scenario, start, end = world.depot_day(20, 3, 0.35, dt.date(2026, 6, 9))
    event = scenario.dr_events[0]
    tick_s = 60.0
    ticks = int((end - start).total_seconds() // tick_s)
    import_kwh = np.zeros(ticks)
    first = int((event.start - start).total_seconds() // tick_s)
    last = int((event.end - start).total_seconds() // tick_s)
    import_kwh[first:last] = 40.0 * tick_s / 3600  # 40 kW throughout the window
    assert requested_reduction_kw(scenario, start, tick_s, import_kwh) == pytest.approx(12.0)
    assert requested_reduction_kw(scenario, start, tick_s, np.zeros(ticks)) == 5.0


def test_options_refuse_what_cannot_be_simulated() -> None:
    with pytest.raises(ValueError, match="vehicles must be at least 1"):
        SimulationOptions(vehicles=0)
    with pytest.raises(ValueError, match="late_share must be within"):
        SimulationOptions(late_share=1.5)


def test_a_depot_day_runs_through_the_real_loop_and_the_same_seed_gives_the_same_summary(
    tmp_path: Path,
) -> None:
    seen: list[float] = []

    def progress(state: SimulationProgress, done: float) -> None:
        seen.append(done)

    runs = []
    for name in ("first", "second"):
        options = SimulationOptions(vehicles=6, seed=4, workdir=tmp_path / name)
        runs.append(simulate(options, progress))
    first, second = ((tmp_path / name / "summary.json").read_text() for name in ("first", "second"))
    assert first == second, "the same seed gives a byte-identical summary.json"
    assert seen == sorted(seen[: len(seen) // 2]) + sorted(seen[len(seen) // 2 :])

    summary = json.loads(first)
    for key in ("cost_total", "energy_cost", "demand_charge", "billed_demand_kw", "targets_met",
                "targets_total", "uncontrolled", "dr_events", "v2g_exported_kwh", "settlement",
                "seed", "version"):  # fmt: skip
        assert key in summary, key
    assert summary["seed"] == 4 and summary["targets_total"] == summary["uncontrolled"]["targets_total"]
    assert summary["targets_total"] >= 3
    [event] = summary["dr_events"]
    assert event["baseline"] == "counterfactual" and event["requested_kwh"] > 0
    assert summary["settlement"]["unallocated"] == 0
    # the cost is billed from what the chargers metered: the real loop charged the vehicles
    assert summary["energy_stored_kwh"] > 0.5 * summary["energy_wanted_kwh"] > 0
    assert summary["cost_total"] == pytest.approx(
        summary["energy_cost"] + summary["demand_charge"] - summary["export_revenue"], abs=1e-3
    )

    engine = make_engine(f"sqlite:///{tmp_path / 'first' / 'simulation.sqlite'}")
    try:
        with make_sessionmaker(engine)() as session:
            stored = session.scalar(select(func.count()).select_from(ChargingSession))
            versions = session.scalar(select(func.count()).select_from(ScheduleVersion))
            commands = session.scalar(select(func.count()).select_from(SetpointCommandRecord))
            overrides = session.scalar(select(func.count()).select_from(SessionOverride))
            assert stored == summary["targets_total"], "every vehicle plugged in and was recorded"
            assert versions and versions > 10, "the control loop planned through the day"
            assert commands and commands > 0, "and published setpoints"
            assert overrides and overrides >= 1, "drivers gave departures in the app"
            assert set(trial_balance(session).values()) <= {0}, "the settled event left the ledger balanced"
    finally:
        engine.dispose()
