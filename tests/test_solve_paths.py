"""The ways a solve can end, through each of the three Pyomo -> HiGHS interfaces.

A time limit too short for HiGHS must still give a usable schedule: the best incumbent (``FEASIBLE``,
with its gap) or the earliest-deadline-first fallback (``HEURISTIC``), never an exception or an empty
schedule. The interfaces must agree on the optimum. Timings are for ``bench/``, not asserted here.
"""

from __future__ import annotations

import math
from typing import get_args

import pyomo.environ as pyo
import pytest

from optimizer import (
    Scenario,
    ScheduleResult,
    SolverOptions,
    SolveStatus,
    baseline,
    build_problem,
    optimize,
)
from optimizer.model import build_model
from optimizer.solve import Interface
from optimizer.verification import check_schedule, describe
from workbench.synthetic import generate_depot_day

INTERFACES = get_args(Interface)


@pytest.fixture(scope="module")
def v2g_day() -> Scenario:
    """A small depot day with V2G, a DR event and a V2G dispatch: a MILP."""
    return generate_depot_day(12, seed=3, v2g_share=0.5, dr_event=True)


@pytest.fixture(scope="module")
def harder_v2g_day() -> Scenario:
    """The same kind of day with the demand charge billed from zero: HiGHS has to branch."""
    day = generate_depot_day(40, seed=0, v2g_share=0.5, dr_event=True)
    charge = day.tariff.demand_charges[0].model_copy(update={"peak_already_kw": 0.0})
    return day.model_copy(update={"tariff": day.tariff.model_copy(update={"demand_charges": [charge]})})


def assert_usable(scenario: Scenario, result: ScheduleResult) -> None:
    """A schedule for every vehicle that checks out; a FEASIBLE one says how far from optimal it may be."""
    if result.status is SolveStatus.FEASIBLE:
        assert result.gap is not None and result.bound is not None
        assert result.bound <= result.objective + 1e-6
    if result.status is SolveStatus.HEURISTIC:
        assert "earliest-deadline-first" in result.message
    assert result.charge_kw.shape == (len(scenario.vehicles), scenario.n_steps)
    assert result.energy_delivered_kwh > 0, "an empty schedule"
    assert math.isfinite(result.objective)
    violations = check_schedule(scenario, result)
    assert not violations, describe(violations)


@pytest.mark.parametrize("interface", INTERFACES)
def test_no_time_for_the_solver_still_gives_a_schedule(v2g_day: Scenario, interface: Interface) -> None:
    result = optimize(build_problem(v2g_day), SolverOptions(time_limit=0.0, interface=interface))
    assert result.status in (SolveStatus.FEASIBLE, SolveStatus.HEURISTIC)
    assert_usable(v2g_day, result)


@pytest.mark.parametrize("time_limit", [1e-3, 0.05, 0.3])
def test_a_time_limit_during_the_search_gives_the_incumbent_or_the_fallback(
    harder_v2g_day: Scenario, time_limit: float
) -> None:
    problem = build_problem(harder_v2g_day)
    result = optimize(problem, SolverOptions(time_limit=time_limit, mip_gap=0.0))
    assert_usable(harder_v2g_day, result)
    # an early incumbent worse than the rule-based schedule is not returned
    rule = baseline(problem, "edf")
    assert result.objective <= rule.objective + 1e-6 * max(1.0, abs(rule.objective))


def test_the_three_interfaces_agree(v2g_day: Scenario) -> None:
    problem = build_problem(v2g_day)
    results = {
        interface: optimize(problem, SolverOptions(mip_gap=1e-9, interface=interface))
        for interface in INTERFACES
    }
    for interface, result in results.items():
        assert result.status is SolveStatus.OPTIMAL, f"{interface}: {result.message}"
        assert_usable(v2g_day, result)
    objectives = [r.objective for r in results.values()]
    assert max(objectives) - min(objectives) <= 1e-6 * max(1.0, *map(abs, objectives)), objectives
    for name in results["appsi"].model_costs:
        terms = [r.model_costs[name] for r in results.values()]
        assert max(terms) - min(terms) <= 1e-5 * max(1.0, *map(abs, terms)), (name, terms)


def test_a_fleet_without_v2g_is_a_pure_lp() -> None:
    model = build_model(build_problem(generate_depot_day(12, seed=3, v2g_share=0.0, dr_event=False)))
    assert not [v.name for v in model.component_data_objects(pyo.Var) if v.is_integer() or v.is_binary()]


def test_where_burning_energy_pays_the_binaries_still_forbid_it() -> None:
    # Two hourly steps at -0.10 per kWh imported (the site is paid to import), no export, no base load.
    # ev-a: 55 of 60 kWh at arrival, 10 kW both ways, η = 0.9 each way, V2G consent.
    # Without the binaries it would charge 10 and discharge 8.1 kW at once, storing nothing while
    # importing 1.9 kW more (and fill up on top of that): relaxed optimum about -0.71.
    # With them it may only charge, and only the 5 kWh that fit: 5 / 0.9 kWh at -0.10 = -0.5556.
    day = Scenario.model_validate(
        {
            "start": "2024-01-01T00:00:00+00:00",
            "step_minutes": 60,
            "n_steps": 2,
            "site": {"id": "depot", "import_limit_kw": 100.0},
            "tariff": {"import_price_per_kwh": -0.10},
            "evses": [{"id": "evse-a", "max_charge_kw": 10.0, "max_discharge_kw": 10.0}],
            "vehicles": [
                {
                    "id": "ev-a",
                    "evse_id": "evse-a",
                    "arrival": "2024-01-01T00:00:00+00:00",
                    "departure": "2024-01-01T02:00:00+00:00",
                    "capacity_kwh": 60.0,
                    "energy_at_arrival_kwh": 55.0,
                    "target_energy_kwh": 55.0,
                    "charge_efficiency": 0.9,
                    "discharge_efficiency": 0.9,
                    "max_charge_kw": 10.0,
                    "max_discharge_kw": 10.0,
                    "v2g_consent": True,
                }
            ],
        }
    )
    for interface in INTERFACES:
        result = optimize(build_problem(day), SolverOptions(mip_gap=1e-9, interface=interface))
        assert result.status is SolveStatus.OPTIMAL, f"{interface}: {result.message}"
        assert result.objective == pytest.approx(-0.10 * 5 / 0.9, abs=1e-6), interface
        assert (result.charge_kw * result.discharge_kw).max() <= 1e-9, interface
        assert not check_schedule(day, result)


@pytest.mark.parametrize("interface", ["appsi", "contrib"])
def test_a_solve_in_a_thread_leaves_the_process_streams_alone(
    v2g_day: Scenario, interface: Interface
) -> None:
    # the service solves in worker threads while its other threads print and log; pyomo's interfaces
    # used to swap sys.stdout/sys.stderr (and fds 1 and 2) for the whole process during every solve
    import sys
    import threading

    problem = build_problem(v2g_day)
    streams = (sys.stdout, sys.stderr)
    swapped: list[object] = []
    done = threading.Event()

    def solve() -> None:
        try:
            for _ in range(3):
                optimize(problem, SolverOptions(interface=interface))
        finally:
            done.set()

    worker = threading.Thread(target=solve)
    worker.start()
    while not done.is_set():
        if (sys.stdout, sys.stderr) != streams:
            swapped.append(sys.stdout)
    worker.join()
    assert not swapped, f"sys.stdout/sys.stderr replaced {len(swapped)} times while another thread solved"
