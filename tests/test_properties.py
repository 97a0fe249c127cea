"""Property tests: random small scenarios, every policy, checked by the independent schedule checker.

The strategies build valid scenarios of 2-6 vehicles over 8-24 steps of 15, 30 or 60 minutes, starting
on the hour in one of several UTC offsets (some not whole hours), with arrivals and departures anywhere
(off the step grid, before or after the horizon), V2G consent and a CC-CV charge taper on some vehicles
(so the checker's ``ev_charge_taper`` judges every policy's schedule), random prices, and
optionally a demand charge with an earlier peak, a DR event and a V2G dispatch. Examples are
derandomized so a run is repeatable; numbers are whole cents and tenths to keep them readable.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer import POLICIES, Problem, Scenario, ScheduleResult, evaluate, schedule
from optimizer.verification import Violation, check_schedule, describe

POLICY_NAMES = ("milp", *POLICIES)
OFFSETS = (
    dt.timedelta(0),
    dt.timedelta(hours=-8),
    dt.timedelta(hours=5, minutes=30),
    dt.timedelta(hours=9.5),
)
DST_DAYS = {
    "Europe/Berlin": (dt.date(2024, 3, 31), dt.date(2024, 10, 27)),
    "America/Los_Angeles": (dt.date(2024, 3, 10), dt.date(2024, 11, 3)),
}
TIGHT_GAP = 1e-9
"""Solve to optimality: inside a MIP gap a binary such as ``dr_is_delivering`` may undervalue the
schedule returned, and a target may be missed by a few Wh, so both properties hold only at the optimum."""
QUICK = settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def tenths(low: int, high: int) -> st.SearchStrategy[float]:
    """Numbers from ``low`` to ``high`` in steps of 0.1."""
    return st.integers(low * 10, high * 10).map(lambda x: x / 10)


def cents(low: int, high: int) -> st.SearchStrategy[float]:
    """Prices from ``low`` to ``high`` cents, as currency units."""
    return st.integers(low, high).map(lambda x: x / 100)


def accepted_kw(vehicle: dict[str, Any], evse: dict[str, Any], energy_kwh: float, hours: float) -> float:
    """The most a vehicle takes through a step from ``energy_kwh``: its and its EVSE's limit and, with a
    taper, the acceptance at the step's end, ``c <= P (f + (1 - f) (C - E - η Δt c) / (C (1 - s)))``."""
    power = min(vehicle["max_charge_kw"], evse["max_charge_kw"])
    taper = vehicle["charge_taper"]
    if taper is None:
        return power
    full, capacity = vehicle["max_charge_kw"], vehicle["capacity_kwh"]
    slope = full * (1 - taper["end_fraction"]) / (capacity * (1 - taper["start_soc"]))
    line = full * taper["end_fraction"] + slope * (capacity - energy_kwh)
    return min(power, line / (1 + slope * vehicle["charge_efficiency"] * hours))


@st.composite
def vehicle_and_evse(
    draw: st.DrawFn, index: int, start: dt.datetime, step: int, n: int, generous: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    horizon = step * n
    arrival = draw(st.integers(-step, horizon - step))
    latest = horizon if generous else horizon + 2 * step
    departure = draw(st.integers(max(arrival, 0) + 1, latest))
    capacity = draw(st.integers(20, 80))
    evse = {
        "id": f"evse-{index}",
        "max_charge_kw": draw(tenths(3, 22)),
        "max_discharge_kw": draw(st.sampled_from([0.0, 0.0, 7.0, 11.0])),
    }
    vehicle: dict[str, Any] = {
        "id": f"ev-{index}",
        "evse_id": evse["id"],
        "arrival": start + dt.timedelta(minutes=arrival),
        "departure": start + dt.timedelta(minutes=departure),
        "capacity_kwh": float(capacity),
        "energy_at_arrival_kwh": draw(tenths(0, capacity)),
        "min_energy_kwh": draw(tenths(0, capacity // 2)),
        "charge_efficiency": draw(cents(80, 100)),
        "discharge_efficiency": draw(cents(80, 100)),
        "max_charge_kw": draw(tenths(3, 22)),
        "max_discharge_kw": draw(tenths(0, 15)),
        "v2g_consent": draw(st.booleans()),
        "charge_taper": draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries({"start_soc": cents(0, 95), "end_fraction": cents(0, 100)}),
            )
        ),
    }
    if generous:  # a target the vehicle reaches at full power (as its taper allows) within its stay
        plugged = sum(k * step >= arrival and (k + 1) * step <= departure for k in range(n))
        reachable = vehicle["energy_at_arrival_kwh"]
        for _ in range(plugged):
            reachable += (
                accepted_kw(vehicle, evse, reachable, step / 60) * vehicle["charge_efficiency"] * step / 60
            )
            reachable = min(capacity, reachable)
        share = draw(st.integers(0, 100)) / 100
        vehicle["target_energy_kwh"] = vehicle["energy_at_arrival_kwh"] + share * (
            reachable - vehicle["energy_at_arrival_kwh"]
        )
    else:
        vehicle["target_energy_kwh"] = draw(tenths(0, capacity))
    return vehicle, evse


@st.composite
def window(draw: st.DrawFn, start: dt.datetime, step: int, n: int) -> tuple[dt.datetime, dt.datetime]:
    first = draw(st.integers(0, n - 1))
    last = draw(st.integers(first + 1, min(n, first + 6)))
    return start + dt.timedelta(minutes=first * step), start + dt.timedelta(minutes=last * step)


@st.composite
def starts(draw: st.DrawFn) -> tuple[dt.datetime, str | None]:
    """A start on the hour: at a fixed offset (some not whole hours), or in an IANA zone on a
    daylight-saving day, when local time-of-day windows and clock-aligned intervals get interesting."""
    hour = draw(st.integers(0, 23))
    zone_name = draw(st.sampled_from([None, None, "Europe/Berlin", "America/Los_Angeles"]))
    if zone_name is None:
        return dt.datetime(2024, 3, 4, hour, tzinfo=dt.timezone(draw(st.sampled_from(OFFSETS)))), None
    day = draw(st.sampled_from(DST_DAYS[zone_name]))
    return dt.datetime(2024, day.month, day.day, hour, tzinfo=zoneinfo.ZoneInfo(zone_name)), zone_name


@st.composite
def demand_charges(draw: st.DrawFn) -> list[dict[str, Any]]:
    windows = [
        [],
        [{"start": "08:00", "end": "20:00", "days": "weekdays"}],
        [{"start": "22:00", "end": "06:00"}],
    ]
    return [
        {
            "name": f"demand-{i}",
            "rate_per_kw": draw(tenths(0, 15)),
            "peak_already_kw": draw(tenths(0, 40)),
            "windows": draw(st.sampled_from(windows)),
        }
        for i in range(draw(st.integers(0, 2)))
    ]


@st.composite
def dr_event(draw: st.DrawFn, start: dt.datetime, step: int, n: int) -> dict[str, Any]:
    event_start, event_end = draw(window(start, step, n))
    event: dict[str, Any] = {"id": "dr-1", "start": event_start, "end": event_end}
    event["penalty_per_kwh"] = draw(cents(0, 200))
    kind = draw(st.sampled_from(["reduction", "cap", "cap-with-baseline"]))
    if kind != "cap":
        event["baseline_kw"] = draw(tenths(0, 60))
        event["payment_per_kwh"] = draw(cents(0, 100))
    if kind == "reduction":
        event["reduction_kw"] = draw(tenths(0, 30))
    else:
        event["cap_kw"] = draw(tenths(0, 40))
    return event


@st.composite
def scenarios(draw: st.DrawFn, generous: bool = False) -> Scenario:
    step = draw(st.sampled_from([15, 30, 60]))
    n = draw(st.integers(8, 24))
    start, zone_name = draw(starts())
    origin = start.astimezone(dt.UTC)  # minutes after a ZoneInfo datetime would count wall-clock time
    pairs = [draw(vehicle_and_evse(i, origin, step, n, generous)) for i in range(draw(st.integers(2, 6)))]
    base = draw(st.lists(tenths(0, 20), min_size=n, max_size=n))
    generation = draw(st.one_of(st.just([0.0] * n), st.lists(tenths(0, 15), min_size=n, max_size=n)))
    if generous:
        import_limit = max(base) + sum(min(v["max_charge_kw"], e["max_charge_kw"]) for v, e in pairs)
    else:
        import_limit = max(0.0, *(b - g for b, g in zip(base, generation, strict=True)))
    data: dict[str, Any] = {
        "name": "random",
        "start": start,
        "timezone": zone_name,
        "step_minutes": step,
        "n_steps": n,
        "site": {
            "id": "depot",
            "import_limit_kw": import_limit + draw(tenths(0, 40)),
            "export_limit_kw": draw(tenths(0, 30)),
            "base_load_kw": base,
            "generation_kw": generation,
        },
        "tariff": {
            "import_price_per_kwh": draw(st.lists(cents(-10, 50), min_size=n, max_size=n)),
            "export_price_per_kwh": draw(
                st.one_of(st.just(0.0), st.lists(cents(-5, 30), min_size=n, max_size=n))
            ),
            "demand_interval_minutes": draw(st.sampled_from([15, 30, 60])),
            "demand_charges": draw(demand_charges()),
        },
        "evses": [evse for _, evse in pairs],
        "vehicles": [vehicle for vehicle, _ in pairs],
        "battery_wear_cost_per_kwh": draw(cents(0, 10)),
        "dr_events": [draw(dr_event(origin, step, n))] if draw(st.booleans()) else [],
    }
    if draw(st.booleans()):
        dispatch_start, dispatch_end = draw(window(origin, step, n))
        data["v2g_dispatches"] = [
            {
                "id": "v2g-1",
                "start": dispatch_start,
                "end": dispatch_end,
                "export_kw": draw(tenths(0, 30)),
                "price_per_kwh": draw(cents(0, 100)),
                "penalty_per_kwh": draw(cents(0, 100)),
            }
        ]
    return Scenario.model_validate(data)


@QUICK
@given(scenarios())
def test_every_policy_passes_the_checker(scenario: Scenario) -> None:
    for policy in POLICY_NAMES:
        result = schedule(scenario, policy, mip_gap=TIGHT_GAP)
        violations = check_schedule(scenario, result)
        assert not violations, f"{policy}:\n{describe(violations)}"
        if policy == "milp":
            assert result.is_ok, result.message
            assert result.model_costs == pytest.approx(
                {name: result.costs[name] for name in result.model_costs}, rel=1e-6, abs=1e-5
            )


@QUICK
@given(scenarios(generous=True))
def test_generously_feasible_scenarios_meet_every_target(scenario: Scenario) -> None:
    for policy in POLICY_NAMES:
        result = schedule(scenario, policy, mip_gap=TIGHT_GAP)
        assert not check_schedule(scenario, result)
        unmet = result.vehicles.set_index("vehicle_id")["unmet_kwh"]
        assert (unmet <= 1e-4).all(), f"{policy}: {unmet.to_dict()}"


# The checker can fail: a schedule corrupted after solving must be caught, by the right rule.

CORRUPTIBLE = Scenario.model_validate(
    {
        "name": "corruptible",
        "start": "2024-01-01T00:00:00+00:00",
        "step_minutes": 60,
        "n_steps": 4,
        "site": {"id": "depot", "import_limit_kw": 30.0, "export_limit_kw": 10.0, "base_load_kw": 2.0},
        "tariff": {
            "import_price_per_kwh": [0.10, 0.30, 0.20, 0.40],
            "demand_charges": [{"rate_per_kw": 5.0, "peak_already_kw": 8.0}],
        },
        "evses": [
            {"id": "evse-a", "max_charge_kw": 10.0, "max_discharge_kw": 10.0},
            {"id": "evse-b", "max_charge_kw": 7.0, "max_discharge_kw": 7.0},
        ],
        "vehicles": [
            {
                "id": "ev-a",
                "evse_id": "evse-a",
                "arrival": "2024-01-01T00:00:00+00:00",
                "departure": "2024-01-01T04:00:00+00:00",
                "capacity_kwh": 40.0,
                "energy_at_arrival_kwh": 20.0,
                "target_energy_kwh": 25.0,
                "min_energy_kwh": 10.0,
                "max_charge_kw": 10.0,
                "max_discharge_kw": 10.0,
                "v2g_consent": True,
            },
            {
                "id": "ev-b",
                "evse_id": "evse-b",
                "arrival": "2024-01-01T00:30:00+00:00",
                "departure": "2024-01-01T03:30:00+00:00",
                "capacity_kwh": 30.0,
                "energy_at_arrival_kwh": 5.0,
                "target_energy_kwh": 12.0,
                "max_charge_kw": 7.0,
                "max_discharge_kw": 7.0,
                "v2g_consent": False,
            },
        ],
        "dr_events": [
            {
                "id": "dr-1",
                "start": "2024-01-01T02:00:00+00:00",
                "end": "2024-01-01T03:00:00+00:00",
                "baseline_kw": 15.0,
                "reduction_kw": 5.0,
                "payment_per_kwh": 0.5,
                "penalty_per_kwh": 1.0,
            }
        ],
        "v2g_dispatches": [
            {
                "id": "v2g-1",
                "start": "2024-01-01T03:00:00+00:00",
                "end": "2024-01-01T04:00:00+00:00",
                "export_kw": 5.0,
                "price_per_kwh": 0.5,
            }
        ],
        "battery_wear_cost_per_kwh": 0.02,
    }
)
A, B = 0, 1  # vehicle rows; ev-b is plugged in during steps 1 and 2 only


@pytest.fixture(scope="module")
def solved() -> ScheduleResult:
    result = schedule(CORRUPTIBLE, "milp")
    assert result.is_ok and not check_schedule(CORRUPTIBLE, result)
    return result


def repowered(
    result: ScheduleResult,
    at: tuple[int, int],
    charge: float = 0.0,
    discharge: float = 0.0,
    problem: Problem | None = None,
) -> ScheduleResult:
    """``result`` with one vehicle-step's powers replaced and everything re-evaluated consistently."""
    problem = problem or result.problem
    charge_kw, discharge_kw = result.charge_kw.copy(), result.discharge_kw.copy()
    charge_kw[at], discharge_kw[at] = charge, discharge
    evaluation = evaluate(problem, charge_kw, discharge_kw)
    return replace(
        result, problem=problem, charge_kw=charge_kw, discharge_kw=discharge_kw, evaluation=evaluation
    )


def early_arrival(problem: Problem) -> Problem:
    """As if ev-b's 00:30 arrival had been rounded down: plugged in from step 0."""
    vehicles = [replace(v, first_step=0) if v.id == "ev-b" else v for v in problem.vehicles]
    return replace(problem, vehicles=vehicles)


def recosted(result: ScheduleResult, **costs: float) -> ScheduleResult:
    return replace(result, evaluation=replace(result.evaluation, costs={**result.costs, **costs}))


def rules(violations: list[Violation]) -> set[tuple[str, str, int | None]]:
    return {(v.rule, v.subject, v.step) for v in violations}


def stale(result: ScheduleResult, at: tuple[int, int], charge: float) -> ScheduleResult:
    """``result`` with one vehicle-step's charge replaced, its energies and site table left stale."""
    charge_kw = result.charge_kw.copy()
    charge_kw[at] = charge
    return replace(result, charge_kw=charge_kw)


def misreported_dr(result: ScheduleResult) -> ScheduleResult:
    delivered = [kwh + 1.0 for kwh in result.evaluation.dr_delivered_kwh]
    return replace(result, evaluation=replace(result.evaluation, dr_delivered_kwh=delivered))


Corruption = Callable[[ScheduleResult], ScheduleResult]


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        pytest.param(
            lambda r: repowered(r, (B, 0), charge=7.0, problem=early_arrival(r.problem)),
            ("ev_plugged_in", "vehicle 'ev-b'", 0),
            id="charge-before-arrival",
        ),
        pytest.param(
            lambda r: repowered(r, (B, 1), charge=9.0),
            ("ev_charge_limit", "vehicle 'ev-b'", 1),
            id="charge-above-limit",
        ),
        pytest.param(
            lambda r: repowered(r, (B, 2), discharge=3.0),
            ("ev_discharge_limit", "vehicle 'ev-b'", 2),
            id="discharge-without-consent",
        ),
        pytest.param(
            lambda r: repowered(r, (A, 1), charge=2.0, discharge=2.0),
            ("ev_charge_discharge_exclusive", "vehicle 'ev-a'", 1),
            id="charge-and-discharge-at-once",
        ),
        pytest.param(
            lambda r: repowered(repowered(r, (A, 0), discharge=10.0), (A, 1), discharge=10.0),
            ("ev_energy_bounds", "vehicle 'ev-a'", 1),
            id="discharge-below-reserve",
        ),
        pytest.param(
            lambda r: stale(r, (A, 3), r.charge_kw[A, 3] + 1.0),
            ("ev_energy_balance", "vehicle 'ev-a'", 3),
            id="energy-not-from-powers",
        ),
        pytest.param(
            lambda r: stale(r, (B, 3), 1.0),
            ("site_ev_power", "site 'depot'", 3),
            id="power-outside-the-schedule-table",
        ),
        pytest.param(
            lambda r: recosted(r, energy_cost=r.costs["energy_cost"] + 0.01),
            ("reported_cost", "cost 'energy_cost'", None),
            id="energy-cost-inflated",
        ),
        pytest.param(
            lambda r: recosted(r, demand_charge=5.0 * max(r.evaluation.demand_peaks_kw)),
            ("reported_cost", "cost 'demand_charge'", None),
            id="demand-charge-on-the-whole-peak",
        ),
        pytest.param(
            lambda r: recosted(r, battery_wear=0.0),
            ("reported_cost", "cost 'battery_wear'", None),
            id="wear-not-counted",
        ),
        pytest.param(misreported_dr, ("dr_event_delivery", "DR event 'dr-1'", None), id="dr-misreported"),
    ],
)
def test_the_checker_catches_a_corrupted_schedule(
    solved: ScheduleResult, corrupt: Corruption, expected: tuple[str, str, int | None]
) -> None:
    violations = check_schedule(CORRUPTIBLE, corrupt(solved))
    assert expected in rules(violations), describe(violations)


def test_the_checker_catches_import_above_the_site_limit(solved: ScheduleResult) -> None:
    # Both vehicles flat out in step 1 plus the base load stay under 30 kW; a tighter copy of the
    # scenario (import limit 15 kW) must flag step 1 and nothing about the vehicles.
    result = repowered(repowered(solved, (A, 1), charge=10.0), (B, 1), charge=7.0)
    tight = CORRUPTIBLE.model_copy(
        update={"site": CORRUPTIBLE.site.model_copy(update={"import_limit_kw": 15.0})}
    )
    found = rules(check_schedule(tight, result))
    assert ("site_import_limit", "site 'depot'", 1) in found
    assert not {rule for rule, subject, _ in found if subject.startswith("vehicle")}
