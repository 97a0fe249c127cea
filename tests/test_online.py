"""Rolling-horizon scheduling: sessions known only from their arrival."""

from __future__ import annotations

import dataclasses

import pytest

from optimizer import Scenario, SolverOptions, build_problem, optimize
from optimizer.online import rolling_horizon
from optimizer.scenario import ChargeTaper
from optimizer.verification import check_schedule
from workbench.synthetic import generate_depot_day

EXACT = SolverOptions(mip_gap=1e-9, time_limit=60)


@pytest.fixture(scope="module")
def depot_day() -> Scenario:
    return generate_depot_day(12, seed=11)


def test_online_schedule_is_valid_and_meets_targets(depot_day: Scenario) -> None:
    problem = build_problem(depot_day)
    calls: list[tuple[int, int]] = []
    result = rolling_horizon(problem, EXACT, progress=lambda done, total: calls.append((done, total)))
    assert check_schedule(depot_day, result) == []
    assert all(o.reason == "met" for o in result.evaluation.vehicles)
    assert result.policy == "milp-online"
    assert calls and calls[-1] == (problem.n_steps, problem.n_steps)
    arrivals = {v.first_step for v in problem.vehicles}
    assert f"{len(arrivals)} re-plans" in result.message


def test_hindsight_is_never_worse_than_online(depot_day: Scenario) -> None:
    problem = build_problem(depot_day)
    offline = optimize(problem, EXACT)
    online = rolling_horizon(problem, EXACT)
    assert offline.objective <= online.evaluation.objective + 1e-6
    assert offline.peak_import_kw <= online.peak_import_kw + 1e-6


def test_online_equals_offline_when_everyone_is_there_from_the_start(depot_day: Scenario) -> None:
    problem = build_problem(depot_day)
    everyone = dataclasses.replace(
        problem, vehicles=[dataclasses.replace(v, first_step=0) for v in problem.vehicles]
    )
    offline = optimize(everyone, EXACT)
    online = rolling_horizon(everyone, EXACT, urgency_weight=0.0)
    assert "1 re-plans" in online.message
    assert online.evaluation.objective == pytest.approx(offline.objective, rel=1e-6, abs=1e-6)


def test_realised_peak_is_carried_into_later_plans(depot_day: Scenario) -> None:
    problem = build_problem(depot_day)
    result = rolling_horizon(problem, EXACT)
    charge = problem.demand_charges[0]
    # Billed once, on the realised peak's increase over the peak already reached this month.
    expected = charge.rate_per_kw * max(0.0, result.peak_import_kw - charge.peak_already_kw)
    assert result.costs["demand_charge"] == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_a_short_lookahead_leaves_tapered_vehicles_enough_time(depot_day: Scenario) -> None:
    """A sub-horizon that ends before a vehicle leaves must leave only what the vehicle can still take
    afterwards, at its tapered acceptance, not at full power."""
    taper = ChargeTaper(start_soc=0.5, end_fraction=0.05)
    vehicles = [
        v.model_copy(update={"charge_taper": taper, "target_energy_kwh": v.capacity_kwh})
        for v in depot_day.vehicles
    ]
    tapered = depot_day.model_copy(update={"vehicles": vehicles, "dr_events": [], "v2g_dispatches": []})
    problem = build_problem(tapered)
    result = rolling_horizon(problem, EXACT, lookahead_steps=8)
    assert check_schedule(tapered, result) == []
    reachable = optimize(problem, EXACT).evaluation
    realised = {o.id: o.unmet_kwh for o in result.evaluation.vehicles}
    for outcome in reachable.vehicles:
        assert realised[outcome.id] <= outcome.unmet_kwh + 1e-3, outcome.id
