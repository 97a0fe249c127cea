"""Tiny models whose optimum is worked out by hand (in the spirit of PyPSA's ``test_lopf_storage.py``).

Every scenario has four hourly steps from midnight UTC (Δt = 1 h, so kW and kWh per step are the same
number; one test uses half-hour steps at UTC+05:30 on purpose) and two vehicles, ``ev-a`` and ``ev-b``,
each on its own EVSE. Each test writes out its optimum in comments; the solver must reproduce the
objective and every cost term to 1e-6, and the independent checker must find nothing wrong.
"""

from __future__ import annotations

from typing import Any

import pyomo.environ as pyo
import pytest

from optimizer import Scenario, ScheduleResult, SolveStatus, build_problem, schedule
from optimizer.model import build_model
from optimizer.verification import check_schedule, describe

START = "2024-01-01T00:00:00+00:00"
ZERO_TERMS = dict.fromkeys(
    (
        "energy_cost",
        "export_revenue",
        "demand_charge",
        "battery_wear",
        "dr_penalty",
        "dr_payment",
        "v2g_penalty",
        "v2g_payment",
        "unmet_energy_penalty",
    ),
    0.0,
)


def at(clock: str, offset: str = "+00:00") -> str:
    return f"2024-01-01T{clock}:00{offset}"


def vehicle(
    ident: str, arrival: str, departure: str, offset: str = "+00:00", **fields: Any
) -> dict[str, Any]:
    """Vehicle ``ev-<ident>`` on its own EVSE ``evse-<ident>``; by default an empty 60 kWh battery, η = 1."""
    return {
        "id": f"ev-{ident}",
        "evse_id": f"evse-{ident}",
        "arrival": at(arrival, offset),
        "departure": at(departure, offset),
        "capacity_kwh": 60.0,
        "energy_at_arrival_kwh": 0.0,
        "charge_efficiency": 1.0,
        "discharge_efficiency": 1.0,
        **fields,
    }


def scenario(
    vehicles: list[dict[str, Any]], evses: dict[str, float] | None = None, **fields: Any
) -> Scenario:
    """Four hourly steps; ``evses`` maps a vehicle's ident ("a") to its EVSE's discharge limit (default 0)."""
    evses = evses or {}
    data: dict[str, Any] = {
        "name": "tiny",
        "start": START,
        "step_minutes": 60,
        "n_steps": 4,
        "site": {"id": "depot", "import_limit_kw": 100.0},
        "tariff": {"import_price_per_kwh": 0.20},
        "evses": [
            {
                "id": v["evse_id"],
                "max_charge_kw": 50.0,
                "max_discharge_kw": evses.get(v["evse_id"].removeprefix("evse-"), 0.0),
            }
            for v in vehicles
        ],
        "vehicles": vehicles,
        **fields,
    }
    return Scenario.model_validate(data)


def solve(s: Scenario) -> ScheduleResult:
    result = schedule(s, "milp", mip_gap=1e-9)
    assert result.status is SolveStatus.OPTIMAL, result.message
    violations = check_schedule(s, result)
    assert not violations, describe(violations)
    return result


def assert_costs(result: ScheduleResult, objective: float, **terms: float) -> None:
    expected = {**ZERO_TERMS, **terms}
    assert result.objective == pytest.approx(objective, abs=1e-6)
    assert result.costs == pytest.approx(expected, abs=1e-6)
    # The model only holds the families the scenario needs (no DR term without a DR event).
    assert set(terms) <= set(result.model_costs) <= set(expected)
    assert result.model_costs == pytest.approx({k: expected[k] for k in result.model_costs}, abs=1e-6)


def power(result: ScheduleResult, ident: str, column: str = "charge_kw") -> list[float]:
    """Vehicle ``ev-<ident>``'s power in each of the four steps (0 where it is not plugged in)."""
    rows = result.schedule[result.schedule["vehicle_id"] == f"ev-{ident}"]
    by_hour = dict(zip(rows["start"].dt.hour, rows[column], strict=True))
    return [by_hour.get(hour, 0.0) for hour in range(4)]


def test_price_arbitrage_charges_in_the_cheap_steps() -> None:
    # prices [0.10, 0.30, 0.20, 0.40] per kWh.
    # ev-a: plugged 00:00-04:00 (steps 0..3), 10 kW, η=0.9, needs 18 kWh stored = 20 kWh from the grid:
    #       the two cheapest steps at full power: 10 kWh at 0.10 + 10 kWh at 0.20 = 3.00.
    # ev-b: arrives 00:30, leaves 03:30, so only steps 1 and 2 lie fully inside its stay; 7 kW, η=0.8,
    #       needs 8 kWh stored = 10 kWh grid: 7 kWh at 0.20 (step 2) + 3 kWh at 0.30 (step 1) = 2.30.
    #       (Were the half-plugged step 0 usable, b would buy there at 0.10 and the total would drop.)
    # import [10, 3, 17, 0] kW; energy_cost = 1.00 + 0.90 + 3.40 = 5.30 = objective.
    s = scenario(
        [
            vehicle("a", "00:00", "04:00", max_charge_kw=10, charge_efficiency=0.9, target_energy_kwh=18),
            vehicle("b", "00:30", "03:30", max_charge_kw=7, charge_efficiency=0.8, target_energy_kwh=8),
        ],
        tariff={"import_price_per_kwh": [0.10, 0.30, 0.20, 0.40]},
    )
    result = solve(s)
    assert power(result, "a") == pytest.approx([10, 0, 10, 0], abs=1e-6)
    assert power(result, "b") == pytest.approx([0, 3, 7, 0], abs=1e-6)
    assert result.site["import_kw"].tolist() == pytest.approx([10, 3, 17, 0], abs=1e-6)
    assert_costs(result, 5.30, energy_cost=5.30)


def test_demand_charge_only_bills_the_increase_over_the_earlier_peak() -> None:
    # base load 2 kW; 10 kW already reached this billing period; 5 per kW of increase; hourly
    # intervals; prices [0.10, 0.10, 0.30, 0.30].
    # ev-a: steps 0..1 only, needs 16 kWh; ev-b: steps 0..3, needs 20 kWh (both up to 10 kW, η=1).
    # Below the old 10 kW peak each step has 8 kW free: 32 kWh, but 36 kWh are needed. Raising the
    # peak to P gives 4 (P - 2) kWh, so P = 11: 5 * (11 - 10) = 5.00 demand charge (not 5 * 11 = 55).
    # Buying more in the cheap steps instead would save 0.20 per kWh but cost 5 / 2 per kWh of peak.
    # import [11, 11, 11, 11]; energy_cost = 0.10 * 22 + 0.30 * 22 = 8.80; objective = 13.80.
    s = scenario(
        [
            vehicle("a", "00:00", "02:00", max_charge_kw=10, target_energy_kwh=16),
            vehicle("b", "00:00", "04:00", max_charge_kw=10, target_energy_kwh=20),
        ],
        site={"id": "depot", "import_limit_kw": 100.0, "base_load_kw": 2.0},
        tariff={
            "import_price_per_kwh": [0.10, 0.10, 0.30, 0.30],
            "demand_interval_minutes": 60,
            "demand_charges": [{"rate_per_kw": 5.0, "peak_already_kw": 10.0}],
        },
    )
    result = solve(s)
    assert result.site["import_kw"].tolist() == pytest.approx([11, 11, 11, 11], abs=1e-6)
    assert_costs(result, 13.80, energy_cost=8.80, demand_charge=5.00)


def test_demand_charge_fills_up_to_the_earlier_peak_for_free() -> None:
    # Same site, but ev-a needs 10 kWh and ev-b 14 kWh. On price alone all 24 kWh would go to the
    # cheap steps 0..1 (import 14 kW). Up to the old 10 kW peak the cheap steps take 8 + 8 = 16 kWh
    # for free (a 10, b 6); each further kWh there would add 0.10 + 5 / 2 against 0.30 in steps
    # 2..3, so b buys its last 8 kWh at 0.30 and the peak stays at 10 kW: demand charge 0.
    # energy_cost = 0.10 * (2 * 10) + 0.30 * (2 * 2 + 8) = 2.00 + 3.60 = 5.60 = objective.
    s = scenario(
        [
            vehicle("a", "00:00", "02:00", max_charge_kw=10, target_energy_kwh=10),
            vehicle("b", "00:00", "04:00", max_charge_kw=10, target_energy_kwh=14),
        ],
        site={"id": "depot", "import_limit_kw": 100.0, "base_load_kw": 2.0},
        tariff={
            "import_price_per_kwh": [0.10, 0.10, 0.30, 0.30],
            "demand_interval_minutes": 60,
            "demand_charges": [{"rate_per_kw": 5.0, "peak_already_kw": 10.0}],
        },
    )
    result = solve(s)
    imports = result.site["import_kw"].tolist()
    assert imports[:2] == pytest.approx([10, 10], abs=1e-6)
    assert max(imports) == pytest.approx(10.0, abs=1e-6)
    assert_costs(result, 5.60, energy_cost=5.60)


def test_demand_intervals_follow_the_local_clock() -> None:
    # Half-hour steps from 00:00 at UTC+05:30, hourly billing intervals, 10 per kW, no earlier peak.
    # base load [0, 4, 4, 0] kW; ev-a needs 2 kWh (4 kW max, so Σ charge = 4 kW-steps of 0.5 h).
    # Local hours group steps (0, 1) and (2, 3): both averages reach (8 + 4) / 4 = 3 kW at best, so
    # demand_charge = 10 * 3 = 30.00 (grouping by UTC hours, (0), (1, 2), (3), would bill 40.00).
    # energy_cost = 0.20 * (8 + 4) * 0.5 = 1.20; objective = 31.20.
    s = scenario(
        [
            vehicle("a", "00:00", "02:00", "+05:30", max_charge_kw=4, target_energy_kwh=2),
            vehicle("b", "00:00", "02:00", "+05:30", max_charge_kw=4, target_energy_kwh=0),
        ],
        start="2024-01-01T00:00:00+05:30",
        step_minutes=30,
        site={"id": "depot", "import_limit_kw": 100.0, "base_load_kw": [0.0, 4.0, 4.0, 0.0]},
        tariff={
            "import_price_per_kwh": 0.20,
            "demand_interval_minutes": 60,
            "demand_charges": [{"rate_per_kw": 10.0}],
        },
    )
    result = solve(s)
    assert_costs(result, 31.20, energy_cost=1.20, demand_charge=30.00)


def test_dr_event_delivery_payment_and_penalty() -> None:
    # flat 0.20; base load 3 kW; DR event 01:00-03:00 (steps 1, 2): baseline 15 kW, reduction 10 kW,
    # so target 5 kW and 10 kW committed per step; paid 0.50 per kWh delivered, 2.00 per kWh short.
    # ev-a: steps 0..3, 10 kW, needs 20 kWh: charges 10 + 10 in steps 0 and 3, outside the event.
    # ev-b: plugged only 01:00-03:00, needs 6 kWh: import 3 + b_k in each event step. 12 kWh must flow
    #       against a 10 kWh target: 2 kWh short in any split with b_k >= 2 (b_k = 3, 3 here).
    # delivered = Σ (15 - import) = (15 - 6) * 2 = 18 kWh -> dr_payment 9.00; shortfall 2 kWh ->
    # dr_penalty 4.00; energy_cost = 0.20 * (4 * 3 + 20 + 6) = 7.60; objective = 7.60 + 4.00 - 9.00.
    s = scenario(
        [
            vehicle("a", "00:00", "04:00", max_charge_kw=10, target_energy_kwh=20),
            vehicle("b", "01:00", "03:00", max_charge_kw=7, target_energy_kwh=6),
        ],
        site={"id": "depot", "import_limit_kw": 100.0, "base_load_kw": 3.0},
        dr_events=[
            {
                "id": "dr-1",
                "start": at("01:00"),
                "end": at("03:00"),
                "baseline_kw": 15.0,
                "reduction_kw": 10.0,
                "payment_per_kwh": 0.50,
                "penalty_per_kwh": 2.00,
            }
        ],
    )
    result = solve(s)
    assert power(result, "a") == pytest.approx([10, 0, 0, 10], abs=1e-6)
    assert result.summary()["dr_events"]["dr-1"] == pytest.approx(
        {"delivered_kwh": 18.0, "shortfall_kwh": 2.0}, abs=1e-6
    )
    assert_costs(result, 2.60, energy_cost=7.60, dr_payment=9.00, dr_penalty=4.00)


def test_dr_event_with_base_load_above_the_baseline_still_schedules() -> None:
    # As above, but the base load jumps to 18 kW in step 1, above the 15 kW baseline: nothing can be
    # delivered in step 1 (delivery is never negative) and the model must not turn infeasible.
    # ev-b's 6 kWh: the first 2 kWh in step 2 keep import at the 5 kW target (free); every further kWh
    # costs 2.00 penalty in step 1 but 2.00 + 0.50 lost payment in step 2, so b = [4, 2].
    # step 1: import 22 -> delivered 0, short 17; step 2: import 5 -> delivered 10, short 0.
    # dr_payment = 0.50 * 10 = 5.00; dr_penalty = 2.00 * 17 = 34.00;
    # energy_cost = 0.20 * (3 + 18 + 3 + 3 + 20 + 6) = 10.60; objective = 10.60 + 34.00 - 5.00 = 39.60.
    s = scenario(
        [
            vehicle("a", "00:00", "04:00", max_charge_kw=10, target_energy_kwh=20),
            vehicle("b", "01:00", "03:00", max_charge_kw=7, target_energy_kwh=6),
        ],
        site={"id": "depot", "import_limit_kw": 100.0, "base_load_kw": [3.0, 18.0, 3.0, 3.0]},
        dr_events=[
            {
                "id": "dr-1",
                "start": at("01:00"),
                "end": at("03:00"),
                "baseline_kw": 15.0,
                "reduction_kw": 10.0,
                "payment_per_kwh": 0.50,
                "penalty_per_kwh": 2.00,
            }
        ],
    )
    result = solve(s)
    assert power(result, "b") == pytest.approx([0, 4, 2, 0], abs=1e-6)
    assert result.summary()["dr_events"]["dr-1"] == pytest.approx(
        {"delivered_kwh": 10.0, "shortfall_kwh": 17.0}, abs=1e-6
    )
    assert_costs(result, 39.60, energy_cost=10.60, dr_payment=5.00, dr_penalty=34.00)


def test_a_net_dr_event_counts_import_above_the_baseline_as_negative_delivery() -> None:
    # The scenario above with delivery="net", as settlement measures it: step 1 delivers
    # 15 - (18 + b1) < 0 and step 2 min(10, 15 - (3 + b2)). With b1 + b2 = 6 the net delivery is
    # -3 - b1 + min(10, 12 - b2): 3 kWh for any b2 >= 2 (moving ev-b's energy between the event's steps
    # earns nothing), less below. dr_payment = 0.50 * 3 = 1.50; shortfall 13 + b1 + max(0, b2 - 2) =
    # 17 kWh -> dr_penalty 34.00; energy_cost 10.60; objective = 10.60 + 34.00 - 1.50 = 43.10.
    # (The clipped event above reports 10 kWh delivered for the same import.)
    s = scenario(
        [
            vehicle("a", "00:00", "04:00", max_charge_kw=10, target_energy_kwh=20),
            vehicle("b", "01:00", "03:00", max_charge_kw=7, target_energy_kwh=6),
        ],
        site={"id": "depot", "import_limit_kw": 100.0, "base_load_kw": [3.0, 18.0, 3.0, 3.0]},
        dr_events=[
            {
                "id": "dr-1",
                "start": at("01:00"),
                "end": at("03:00"),
                "baseline_kw": 15.0,
                "reduction_kw": 10.0,
                "payment_per_kwh": 0.50,
                "penalty_per_kwh": 2.00,
                "delivery": "net",
            }
        ],
    )
    result = solve(s)
    b = power(result, "b")
    assert sum(b) == pytest.approx(6.0, abs=1e-6) and b[2] >= 2.0 - 1e-6
    assert result.summary()["dr_events"]["dr-1"] == pytest.approx(
        {"delivered_kwh": 3.0, "shortfall_kwh": 17.0}, abs=1e-6
    )
    assert_costs(result, 43.10, energy_cost=10.60, dr_payment=1.50, dr_penalty=34.00)


def test_v2g_dispatch_discharges_the_consenting_vehicle() -> None:
    # flat 0.20 import, 0 export (limit 20 kW); wear 0.05 per kWh discharged. V2G dispatch 02:00-03:00
    # (step 2) asks for 12 kW, pays 0.60 per kWh delivered and 1.00 per kWh short.
    # ev-a consents, EVSE and car both 10 kW each way, η=0.8 both ways, 30 kWh on arrival, target 30,
    #       reserve 10. It discharges its 10 kW maximum in step 2: delivered 10 kWh, 2 kWh short.
    #       Each kWh delivered takes 1/0.8 kWh from the battery, which takes 1/0.8² kWh from the grid:
    #       10 kWh out costs 15.625 kWh bought back (0.3125 per kWh + 0.05 wear < 1.60 earned/avoided).
    # ev-b has a bidirectional EVSE but no consent: it may not cover the 2 kWh gap, and it charges its
    #       4 kWh (η=0.8: 5 kWh from the grid) outside step 2, where charging would cut delivery.
    # energy_cost = 0.20 * (15.625 + 5) = 4.125; battery_wear = 0.50; v2g_payment = 6.00;
    # v2g_penalty = 2.00; objective = 4.125 + 0.50 + 2.00 - 6.00 = 0.625.
    s = scenario(
        [
            vehicle(
                "a",
                "00:00",
                "04:00",
                energy_at_arrival_kwh=30,
                target_energy_kwh=30,
                min_energy_kwh=10,
                charge_efficiency=0.8,
                discharge_efficiency=0.8,
                max_charge_kw=10,
                max_discharge_kw=10,
                v2g_consent=True,
            ),
            vehicle(
                "b",
                "00:00",
                "04:00",
                target_energy_kwh=4,
                charge_efficiency=0.8,
                max_charge_kw=5,
                max_discharge_kw=10,
                v2g_consent=False,
            ),
        ],
        evses={"a": 10.0, "b": 10.0},
        site={"id": "depot", "import_limit_kw": 100.0, "export_limit_kw": 20.0},
        battery_wear_cost_per_kwh=0.05,
        v2g_dispatches=[
            {
                "id": "v2g-1",
                "start": at("02:00"),
                "end": at("03:00"),
                "export_kw": 12.0,
                "price_per_kwh": 0.60,
                "penalty_per_kwh": 1.00,
            }
        ],
    )
    result = solve(s)
    assert power(result, "a", "discharge_kw") == pytest.approx([0, 0, 10, 0], abs=1e-6)
    assert power(result, "b", "discharge_kw") == pytest.approx([0, 0, 0, 0], abs=1e-6)
    assert power(result, "b")[2] == pytest.approx(0.0, abs=1e-6)
    assert result.site["export_kw"].tolist() == pytest.approx([0, 0, 10, 0], abs=1e-6)
    assert result.summary()["v2g_dispatches"]["v2g-1"] == pytest.approx(
        {"delivered_kwh": 10.0, "shortfall_kwh": 2.0}, abs=1e-6
    )
    assert_costs(result, 0.625, energy_cost=4.125, battery_wear=0.50, v2g_payment=6.00, v2g_penalty=2.00)


def test_v2g_dispatch_window_does_not_forbid_charging() -> None:
    # A V2G dispatch over the whole horizon asks for 5 kW (0.60 paid, 1.00 penalty per kWh) but no
    # vehicle may discharge: nothing is delivered and the full 5 kW * 4 h = 20 kWh are short. Charging
    # inside the window only forgoes delivery that could not happen anyway, so both vehicles still
    # reach their targets: a 10 kWh, b 4 kWh.
    # energy_cost = 0.20 * 14 = 2.80; v2g_penalty = 1.00 * 20 = 20.00; objective = 22.80.
    s = scenario(
        [
            vehicle("a", "00:00", "04:00", max_charge_kw=10, target_energy_kwh=10),
            vehicle("b", "00:00", "02:00", max_charge_kw=7, target_energy_kwh=4),
        ],
        v2g_dispatches=[
            {
                "id": "v2g-1",
                "start": at("00:00"),
                "end": at("04:00"),
                "export_kw": 5.0,
                "price_per_kwh": 0.60,
                "penalty_per_kwh": 1.00,
            }
        ],
    )
    result = solve(s)
    assert result.vehicles["unmet_kwh"].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert result.summary()["v2g_dispatches"]["v2g-1"] == pytest.approx(
        {"delivered_kwh": 0.0, "shortfall_kwh": 20.0}, abs=1e-6
    )
    assert_costs(result, 22.80, energy_cost=2.80, v2g_penalty=20.00)


def test_negative_price_is_earned_by_vehicles_not_by_curtailing_generation() -> None:
    # 5 kW base load met by 5 kW of on-site generation; import price [-0.10, 0.20, 0.20, 0.20].
    # In step 0 the grid pays for every kWh, so both vehicles charge flat out (a 10 kW, b 7 kW, more
    # than b's zero target: stored energy is not penalised) and import 17 kW: energy_cost = -1.70.
    # The site does not curtail its own generation to import 5 kW more (fleetgrid does not dispatch
    # generation; it is curtailed only above the export limit), so the solver may not count the extra
    # 0.50 either: objective = energy_cost = -1.70, the same as the evaluation of the schedule.
    s = scenario(
        [
            vehicle("a", "00:00", "04:00", max_charge_kw=10, target_energy_kwh=10),
            vehicle("b", "00:00", "04:00", max_charge_kw=7, target_energy_kwh=0),
        ],
        site={"id": "depot", "import_limit_kw": 100.0, "base_load_kw": 5.0, "generation_kw": 5.0},
        tariff={"import_price_per_kwh": [-0.10, 0.20, 0.20, 0.20]},
    )
    result = solve(s)
    assert power(result, "a") == pytest.approx([10, 0, 0, 0], abs=1e-6)
    assert power(result, "b") == pytest.approx([7, 0, 0, 0], abs=1e-6)
    assert result.site["import_kw"].tolist() == pytest.approx([17, 0, 0, 0], abs=1e-6)
    assert_costs(result, -1.70, energy_cost=-1.70)


def test_unreachable_target_gets_a_schedule_with_unmet_energy_and_a_reason() -> None:
    # ev-a: 7 kW for two hours (η=1) from 0 kWh can store 14 kWh, but wants 50: it charges 7 + 7 and
    # leaves 36 kWh short. ev-b reaches its 10 kWh. Penalty 100 per unmet kWh (set explicitly):
    # energy_cost = 0.20 * (14 + 10) = 4.80; unmet_energy_penalty = 3600; objective = 3604.80.
    s = scenario(
        [
            vehicle("a", "00:00", "02:00", max_charge_kw=7, target_energy_kwh=50),
            vehicle("b", "00:00", "04:00", max_charge_kw=7, target_energy_kwh=10),
        ],
        unmet_energy_penalty_per_kwh=100.0,
    )
    result = solve(s)
    outcome = result.vehicles.set_index("vehicle_id")
    assert outcome.loc["ev-a", "unmet_kwh"] == pytest.approx(36.0, abs=1e-6)
    assert outcome.loc["ev-a", "reason"] == "not enough time at the vehicle's maximum charge power"
    assert outcome.loc["ev-b", "unmet_kwh"] == pytest.approx(0.0, abs=1e-6)
    assert outcome.loc["ev-b", "reason"] == "met"
    assert power(result, "a") == pytest.approx([7, 7, 0, 0], abs=1e-6)
    assert result.total_cost == pytest.approx(4.80, abs=1e-6)
    assert_costs(result, 3604.80, energy_cost=4.80, unmet_energy_penalty=3600.0)


def test_fleet_without_v2g_builds_a_pure_lp() -> None:
    # ev-a consents but its EVSE is unidirectional; ev-b has a bidirectional EVSE but no consent:
    # no vehicle may discharge, so the model has no is_charging binaries and no binary at all.
    s = scenario(
        [
            vehicle(
                "a",
                "00:00",
                "04:00",
                max_charge_kw=7,
                max_discharge_kw=7,
                v2g_consent=True,
                target_energy_kwh=5,
            ),
            vehicle("b", "00:00", "04:00", max_charge_kw=7, max_discharge_kw=7, target_energy_kwh=10),
        ],
        evses={"b": 7.0},
    )
    model = build_model(build_problem(s))
    assert model.find_component("is_charging") is None
    assert len(model.v2g_plugged) == 0
    variables = list(model.component_data_objects(pyo.Var))
    assert variables and all(var.is_continuous() for var in variables)


TAPER = {"start_soc": 0.5, "end_fraction": 0.2}
"""ev-a's CC-CV taper in the tests below: 16 kWh, 10 kW, so ``k = 10 (1 - 0.2) / (16 (1 - 0.5)) = 1`` kW per
kWh above 8 kWh and the vehicle accepts ``a(E) = 2 + (16 - E)`` [kW]. With η = 1 and Δt = 1 h a step's
power ``c`` from ``E`` must satisfy ``c <= a(E + c)``, i.e. ``c <= (18 - E) / 2`` (``ev_charge_taper``)."""


def test_charge_taper_moves_energy_into_the_dearer_step() -> None:
    # prices [-, -, 0.30, 0.10]; ev-a plugged 02:00-04:00 (steps 2, 3), 8 -> 14 kWh (6 kWh, η = 1).
    # Without the taper: all 6 kWh in the cheap step 3, cost 0.60 (checked below).
    # With it: step 3 from E = 8 + c2 takes at most (18 - 8 - c2) / 2 = 5 - c2 / 2, and c2 + c3 = 6
    # gives c2 >= 2: c = [2, 4], energies [10, 14]; at step 3's end a(14) = 4 = c3, the taper binds.
    # energy_cost = 0.30 * 2 + 0.10 * 4 = 1.00 = objective.
    fields: dict[str, Any] = {"capacity_kwh": 16.0, "energy_at_arrival_kwh": 8.0, "target_energy_kwh": 14.0}
    prices = {"import_price_per_kwh": [0.20, 0.20, 0.30, 0.10]}
    untapered = solve(scenario([vehicle("a", "02:00", "04:00", max_charge_kw=10, **fields)], tariff=prices))
    assert power(untapered, "a") == pytest.approx([0, 0, 0, 6], abs=1e-6)
    assert_costs(untapered, 0.60, energy_cost=0.60)

    tapered = scenario(
        [vehicle("a", "02:00", "04:00", max_charge_kw=10, charge_taper=TAPER, **fields)], tariff=prices
    )
    result = solve(tapered)
    assert power(result, "a") == pytest.approx([0, 0, 2, 4], abs=1e-6)
    assert result.schedule["energy_kwh"].tolist() == pytest.approx([10, 14], abs=1e-6)
    assert_costs(result, 1.00, energy_cost=1.00)
    assert result.evaluation.follows_taper
    # The untapered optimum asks 6 kW of a vehicle that takes (18 - 8) / 2 = 5 through the step.
    assert {v.rule for v in check_schedule(tapered, untapered)} == {"ev_charge_taper"}


def test_charge_taper_leaves_a_full_battery_out_of_reach() -> None:
    # ev-a wants a full 16 kWh from 8 in steps 2, 3: at most (18 - 8) / 2 = 5 kW, then (18 - 13) / 2 =
    # 2.5 kW: 15.5 kWh, 0.5 kWh short, however the site or prices look (10 kW for an hour would fill it).
    # energy_cost = 0.20 * 7.5 = 1.50; unmet_energy_penalty = 100 * 0.5 = 50; objective = 51.50.
    s = scenario(
        [
            vehicle(
                "a",
                "02:00",
                "04:00",
                max_charge_kw=10,
                capacity_kwh=16.0,
                energy_at_arrival_kwh=8.0,
                target_energy_kwh=16.0,
                charge_taper=TAPER,
            )
        ],
        unmet_energy_penalty_per_kwh=100.0,
    )
    result = solve(s)
    assert power(result, "a") == pytest.approx([0, 0, 5, 2.5], abs=1e-6)
    outcome = result.vehicles.set_index("vehicle_id")
    assert outcome.loc["ev-a", "unmet_kwh"] == pytest.approx(0.5, abs=1e-6)
    assert outcome.loc["ev-a", "reason"] == "not enough time at the vehicle's maximum charge power"
    assert_costs(result, 51.50, energy_cost=1.50, unmet_energy_penalty=50.0)
