"""The charge taper (CC-CV): plans a vehicle can follow, checked against the simulated vehicle.

``ev_charge_taper`` limits a step's constant power to what the vehicle accepts at the step's end. The
simulated vehicle of :mod:`chargersim.vehicles` (full power up to ``taper_soc``, then linearly
less) is stepped through planned powers in 10-second slices and must store what the plan says; a plan
made without the taper must not pass that test. The independent checker flags a step asking for more,
the planner gives every session its settings' taper, and ``bench/highspy_direct.py`` (the same model
built straight into HiGHS) agrees with the Pyomo model when tapers bind.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyomo.environ as pyo
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from aggregator.control.inputs import DEFAULT_CHARGE_TAPER, PlanningSettings, site_plan_inputs
from aggregator.db.models import Charger, ChargingSession, Role, Site, User, Vehicle
from chargersim.vehicles import Vehicle as SimulatedVehicle
from optimizer import Scenario, ScheduleResult, SolverOptions, build_problem, evaluate, optimize, schedule
from optimizer.model import build_model
from optimizer.scenario import ChargeTaper
from optimizer.verification import check_schedule, describe
from workbench.synthetic import generate_depot_day

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
STEP = dt.timedelta(minutes=15)
TAPER = {"start_soc": 0.8, "end_fraction": 0.05}
SLICE_SECONDS = 10.0


def depot(taper: dict[str, float] | None = TAPER) -> Scenario:
    """Four hours of 15-minute steps, dearest first: the cheapest charging is late, in the taper zone.

    ev-a (60 kWh, 11 kW) and ev-b (40 kWh, 22 kW on an 11 kW EVSE, so its taper is a fraction of 22 kW)
    want a full battery; ev-c may discharge and is asked to export in the first hour.
    """
    prices = [0.40] * 4 + [0.30] * 4 + [0.20] * 4 + [0.10] * 4
    evses = [
        {"id": "evse-a", "max_charge_kw": 11.0},
        {"id": "evse-b", "max_charge_kw": 11.0},
        {"id": "evse-c", "max_charge_kw": 11.0, "max_discharge_kw": 11.0},
    ]
    vehicles: list[dict[str, Any]] = [
        {"id": "ev-a", "capacity_kwh": 60.0, "energy_at_arrival_kwh": 42.0, "max_charge_kw": 11.0},
        {"id": "ev-b", "capacity_kwh": 40.0, "energy_at_arrival_kwh": 28.0, "max_charge_kw": 22.0},
        {
            "id": "ev-c",
            "capacity_kwh": 50.0,
            "energy_at_arrival_kwh": 40.0,
            "min_energy_kwh": 30.0,
            "max_charge_kw": 11.0,
            "max_discharge_kw": 11.0,
            "v2g_consent": True,
        },
    ]
    for v in vehicles:
        v |= {
            "evse_id": v["id"].replace("ev", "evse"),
            "arrival": START,
            "departure": START + 16 * STEP,
            "target_energy_kwh": v["capacity_kwh"] * 0.97,
            "charge_efficiency": 0.92,
            "discharge_efficiency": 0.92,
            "charge_taper": taper,
        }
    return Scenario.model_validate(
        {
            "name": "taper depot",
            "start": START,
            "n_steps": 16,
            "site": {"id": "depot", "import_limit_kw": 60.0, "export_limit_kw": 20.0},
            "tariff": {"import_price_per_kwh": prices, "export_price_per_kwh": 0.05},
            "evses": evses,
            "vehicles": vehicles,
            "v2g_dispatches": [
                {
                    "id": "v2g-1",
                    "start": START,
                    "end": START + 4 * STEP,
                    "export_kw": 5.0,
                    "price_per_kwh": 0.5,
                }
            ],
            "unmet_energy_penalty_per_kwh": 10.0,
        }
    )


def simulated_energy(scenario: Scenario, result: ScheduleResult, vehicle_id: str) -> np.ndarray:
    """Battery energy [kWh] at each plugged step's end of the simulated vehicle offered the plan's power.

    The EVSE offers the planned charge (or asks for the planned discharge) for the whole step; the
    vehicle draws what it accepts, re-evaluated every 10 seconds.
    """
    session = next(v for v in scenario.vehicles if v.id == vehicle_id)
    taper = session.charge_taper
    assert taper is not None
    vehicle = SimulatedVehicle(
        capacity_kwh=session.capacity_kwh,
        soc=session.energy_at_arrival_kwh / session.capacity_kwh,
        max_charge_kw=session.max_charge_kw,
        arrival=session.arrival,
        target_soc=1.0,
        max_discharge_kw=session.max_discharge_kw,
        min_soc=session.min_energy_kwh / session.capacity_kwh,
        efficiency=session.charge_efficiency,
        taper_soc=taper.start_soc,
        min_taper_fraction=taper.end_fraction,
    )
    rows = result.schedule[result.schedule["vehicle_id"] == vehicle_id]
    energies = []
    for charge, discharge in zip(rows["charge_kw"], rows["discharge_kw"], strict=True):
        offered = charge - discharge
        for _ in range(round(scenario.step_minutes * 60 / SLICE_SECONDS)):
            vehicle.advance(vehicle.power_for(offered), SLICE_SECONDS)
        energies.append(vehicle.soc * vehicle.capacity_kwh)
    return np.array(energies)


def planned_energy(result: ScheduleResult, vehicle_id: str) -> np.ndarray:
    return result.schedule[result.schedule["vehicle_id"] == vehicle_id]["energy_kwh"].to_numpy()


@pytest.fixture(scope="module")
def tapered() -> tuple[Scenario, ScheduleResult]:
    scenario = depot()
    result = schedule(scenario, "milp", mip_gap=1e-9)
    assert result.is_ok, result.message
    return scenario, result


def test_the_plan_charges_in_the_taper_zone_and_the_taper_binds(
    tapered: tuple[Scenario, ScheduleResult],
) -> None:
    scenario, result = tapered
    model = build_model(result.problem)
    assert len(model.ev_charge_taper) > 0
    # Below the taper's 80 % the plan would charge at 11 kW; in the zone it is held below that.
    for v in scenario.vehicles:
        rows = result.schedule[result.schedule["vehicle_id"] == v.id]
        start_soc = np.concatenate([[v.energy_at_arrival_kwh], rows["energy_kwh"].to_numpy()[:-1]])
        start_soc /= v.capacity_kwh
        tapered_steps = (start_soc > 0.8) & (rows["charge_kw"].to_numpy() > 1e-6)
        assert tapered_steps.any(), v.id
        assert (rows["charge_kw"].to_numpy()[tapered_steps] < 11.0 - 1e-3).all(), v.id
    assert not check_schedule(scenario, result), describe(check_schedule(scenario, result))
    assert result.evaluation.follows_taper


@pytest.mark.parametrize("policy", ["milp", "edf", "uncontrolled", "round-robin"])
def test_the_simulated_vehicle_follows_the_plan(
    tapered: tuple[Scenario, ScheduleResult], policy: str
) -> None:
    scenario = tapered[0]
    result = tapered[1] if policy == "milp" else schedule(scenario, policy)
    assert not check_schedule(scenario, result), describe(check_schedule(scenario, result))
    for v in scenario.vehicles:
        simulated, planned = simulated_energy(scenario, result, v.id), planned_energy(result, v.id)
        assert simulated == pytest.approx(planned, abs=1e-3), f"{policy} {v.id}"


def test_a_plan_made_without_the_taper_is_not_followed() -> None:
    # The same depot planned as if the vehicles charged at full power to 100 %: the simulated
    # vehicles (which do taper) store less than that plan says, and the checker of the tapered
    # scenario flags the steps asking too much.
    blind = schedule(depot(taper=None), "milp", mip_gap=1e-9)
    shortfall = {
        v.id: planned_energy(blind, v.id)[-1] - simulated_energy(depot(), blind, v.id)[-1]
        for v in depot().vehicles
    }
    assert max(shortfall.values()) > 0.5, shortfall
    assert "ev_charge_taper" in {v.rule for v in check_schedule(depot(), blind)}
    assert not evaluate(build_problem(depot()), blind.charge_kw, blind.discharge_kw).follows_taper


def test_the_checker_and_the_evaluation_catch_power_above_the_taper(
    tapered: tuple[Scenario, ScheduleResult],
) -> None:
    scenario, result = tapered
    problem = result.problem
    i = next(i for i, v in enumerate(problem.vehicles) if v.id == "ev-a")
    energy = result.evaluation.energy_kwh[i]
    # the first step starting above 80 % where ev-a charges: ask 1 kW more (still within its 11 kW)
    t = next(t for t in range(1, problem.n_steps) if energy[t - 1] > 48.0 and result.charge_kw[i, t] > 0)
    charge = result.charge_kw.copy()
    charge[i, t] = min(result.charge_kw[i, t] + 1.0, 11.0)
    evaluation = evaluate(problem, charge, result.discharge_kw)
    assert evaluation.taper_excess_kw[i, t] > 0.5 and not evaluation.follows_taper
    assert np.count_nonzero(evaluation.taper_excess_kw > 1e-6) >= 1
    corrupted = replace(result, charge_kw=charge, evaluation=evaluation)
    found = {(v.rule, v.subject, v.step) for v in check_schedule(scenario, corrupted)}
    assert ("ev_charge_taper", "vehicle 'ev-a'", t) in found


def follow_taper(scenario: Scenario, energy_kwh: float, n_steps: int) -> float:
    """Energy [kWh] after ``n_steps`` steps of the most the scenario's one vehicle takes through each
    step, from the scenario's own numbers: its and its EVSE's limit, the taper's line at the step's end."""
    (v,), (evse,) = scenario.vehicles, scenario.evses
    hours = scenario.step_minutes / 60
    for _ in range(n_steps):
        power = min(v.max_charge_kw, evse.max_charge_kw)
        if v.charge_taper is not None:
            start, end = v.charge_taper.start_soc, v.charge_taper.end_fraction
            slope = v.max_charge_kw * (1 - end) / (v.capacity_kwh * (1 - start))
            line = v.max_charge_kw * end + slope * (v.capacity_kwh - energy_kwh)
            power = min(power, line / (1 + slope * v.charge_efficiency * hours))
        energy_kwh = min(v.capacity_kwh, energy_kwh + power * v.charge_efficiency * hours)
    return energy_kwh


def tenths(low: int, high: int) -> st.SearchStrategy[float]:
    return st.integers(low * 10, high * 10).map(lambda x: x / 10)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    capacity=st.integers(20, 100),
    vehicle_kw=tenths(3, 50),
    evse_kw=tenths(3, 22),
    efficiency=st.integers(80, 100),
    taper=st.one_of(
        st.none(),
        st.builds(
            ChargeTaper,
            start_soc=st.integers(0, 95).map(lambda x: x / 100),
            end_fraction=st.integers(0, 100).map(lambda x: x / 100),
        ),
    ),
    target_share=st.integers(0, 100),
    steps_after=st.integers(1, 40),
)
def test_a_vehicle_leaving_after_the_horizon_gets_the_least_terminal_energy_that_reaches_its_target(
    capacity: int,
    vehicle_kw: float,
    evse_kw: float,
    efficiency: int,
    taper: ChargeTaper | None,
    target_share: int,
    steps_after: int,
) -> None:
    # Past the horizon's two 15-minute steps the vehicle stays ``steps_after`` more: the horizon must
    # leave it the least energy from which charging as fast as it can (tapered) still reaches the target.
    target = capacity * target_share / 100
    scenario = Scenario.model_validate(
        {
            "start": START,
            "n_steps": 2,
            "site": {"id": "depot", "import_limit_kw": 50.0},
            "tariff": {"import_price_per_kwh": 0.2},
            "evses": [{"id": "evse", "max_charge_kw": evse_kw}],
            "vehicles": [
                {
                    "id": "ev",
                    "evse_id": "evse",
                    "arrival": START,
                    "departure": START + (2 + steps_after) * STEP,
                    "capacity_kwh": float(capacity),
                    "energy_at_arrival_kwh": 0.0,
                    "target_energy_kwh": target,
                    "charge_efficiency": efficiency / 100,
                    "max_charge_kw": vehicle_kw,
                    "charge_taper": taper,
                }
            ],
        }
    )
    (v,) = build_problem(scenario).vehicles
    assert 0.0 <= v.terminal_energy_kwh <= target
    assert follow_taper(scenario, v.terminal_energy_kwh, steps_after) >= target - 1e-6
    if v.terminal_energy_kwh > 1e-3:  # and no less would do
        assert follow_taper(scenario, v.terminal_energy_kwh - 1e-3, steps_after) < target


@pytest.mark.parametrize("taper", [DEFAULT_CHARGE_TAPER, ChargeTaper(start_soc=0.6, end_fraction=0.2), None])
def test_the_planner_gives_every_session_its_settings_taper(
    session: Session, taper: ChargeTaper | None
) -> None:
    now = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.UTC)
    driver = User(email="ada@example.com", password_hash="x", role=Role.DRIVER)
    site = Site(id="depot-1", name="Depot 1", import_limit_kw=100.0, export_limit_kw=0.0, timezone="UTC")
    charger = Charger(site_id="depot-1", charge_point_id="cp-1", evse_id=1, max_kw=11.0)
    session.add_all([driver, site, charger])
    session.flush()
    van = Vehicle(
        owner_id=driver.id,
        name="van",
        battery_kwh=60.0,
        max_charge_kw=11.0,
        max_discharge_kw=0.0,
        target_soc_percent=100.0,
    )
    session.add(van)
    session.flush()
    started = now - dt.timedelta(hours=1)
    common = {"site_id": "depot-1", "charger_id": charger.id, "evse_id": 1, "started_at": started}
    session.add(
        ChargingSession(**common, transaction_id="tx-1", vehicle_id=van.id, soc_at_start_percent=70.0)
    )
    session.commit()

    inputs = site_plan_inputs(session, "depot-1", now, PlanningSettings(charge_taper=taper))
    (vehicle,) = inputs.scenario.vehicles
    assert vehicle.charge_taper == taper
    result = schedule(inputs.scenario, "milp")
    assert result.is_ok and not check_schedule(inputs.scenario, result)
    if taper is not None:  # the van (70 % now, 100 % wanted) can follow the plan
        planned = planned_energy(result, vehicle.id)
        assert planned[-1] == pytest.approx(60.0, abs=1e-3)
        assert simulated_energy(inputs.scenario, result, vehicle.id) == pytest.approx(planned, abs=1e-3)


def test_planning_settings_read_the_taper_from_a_configuration_table() -> None:
    from aggregator.control.loop import ControlSettings

    default = ControlSettings.from_mapping({})
    assert default.planning.charge_taper == ChargeTaper(start_soc=0.8, end_fraction=0.05)
    table = {"planning": {"charge_taper": {"start_soc": 0.7, "end_fraction": 0.1}}}
    assert ControlSettings.from_mapping(table).planning.charge_taper == ChargeTaper(
        start_soc=0.7, end_fraction=0.1
    )
    assert ControlSettings.from_mapping({"planning": {"charge_taper": None}}).planning.charge_taper is None
    with pytest.raises(ValueError, match=r"planning\.charge_taper\.start_soc"):
        ControlSettings.from_mapping({"planning": {"charge_taper": {"start_soc": 1.5, "end_fraction": 0.1}}})


def highspy_direct() -> ModuleType:
    """``bench/highspy_direct.py``, the model built straight into HiGHS (bench/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "highspy_direct.py"
    spec = importlib.util.spec_from_file_location("highspy_direct", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("highspy_direct", module)
    spec.loader.exec_module(module)
    return module


def test_the_direct_highs_model_mirrors_the_taper() -> None:
    # A synthetic depot day (V2G, DR event, demand charge) with every vehicle tapered: the same
    # columns, rows and binaries, and the same optimum, as the Pyomo model (what bench/scale.py checks).
    day = generate_depot_day(12, 3, v2g_share=0.5, dr_event=True)
    taper = ChargeTaper(start_soc=0.7, end_fraction=0.05)
    day = day.model_copy(
        update={"vehicles": [v.model_copy(update={"charge_taper": taper}) for v in day.vehicles]}
    )
    problem = build_problem(day)
    model = build_model(problem)
    assert len(model.ev_charge_taper) > 0
    options = SolverOptions(mip_gap=1e-9)
    pyomo_result = optimize(problem, options)
    direct = highspy_direct().solve_direct(problem, options)
    binaries = sum(1 for var in model.component_data_objects(pyo.Var) if var.is_binary())
    assert (direct.n_columns, direct.n_rows, direct.n_binaries) == (
        model.nvariables(),
        model.nconstraints(),
        binaries,
    )
    assert direct.objective == pytest.approx(pyomo_result.objective, rel=1e-6, abs=1e-6)
    assert math.isclose(direct.evaluated_objective, direct.objective, rel_tol=1e-6, abs_tol=1e-6)
