"""A grid operator's event over several sites, split among them by one joint model.

The hand-computed cases use four hourly steps from midnight UTC (Δt = 1 h, so kW and kWh per step are
the same number), import limits of 100 kW and one vehicle per site (η = 1) unless said otherwise; each
test writes out its optimum in comments. The solver must reproduce the split, every site's schedule and
the objective to 1e-6, every site's schedule must pass the independent checker, and the portfolio terms
priced from the returned schedules must equal what the solver valued.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, get_args

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from optimizer import Scenario, ScenarioError, SolverOptions, SolveStatus, evaluate, schedule
from optimizer.portfolio import (
    PortfolioEvent,
    PortfolioResult,
    build_portfolio,
    evaluate_event,
    solve_portfolio,
)
from optimizer.solve import Interface
from optimizer.verification import check_schedule, describe
from workbench.synthetic import generate_depot_day

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
TIGHT = SolverOptions(mip_gap=1e-9)
"""Solve to optimality: inside a MIP gap a delivery binary may undervalue the returned schedule."""


def at(hour: int) -> dt.datetime:
    return START + dt.timedelta(hours=hour)


def site(
    ident: str,
    prices: list[float],
    *,
    max_kw: float = 0.0,
    need_kwh: float = 0.0,
    base_kw: float = 0.0,
    **fields: Any,
) -> Scenario:
    """Site ``ident`` with one vehicle ``ev-<ident>`` plugged in all four hours, empty, needing ``need_kwh``
    at up to ``max_kw`` (no vehicle if ``max_kw`` is 0)."""
    vehicles = []
    if max_kw:
        vehicles.append(
            {
                "id": f"ev-{ident}",
                "evse_id": f"evse-{ident}",
                "arrival": at(0),
                "departure": at(4),
                "capacity_kwh": 60.0,
                "energy_at_arrival_kwh": 0.0,
                "target_energy_kwh": need_kwh,
                "charge_efficiency": 1.0,
                "discharge_efficiency": 1.0,
                "max_charge_kw": max_kw,
            }
        )
    data: dict[str, Any] = {
        "name": f"site-{ident}",
        "start": START,
        "step_minutes": 60,
        "n_steps": 4,
        "site": {"id": ident, "import_limit_kw": 100.0, "base_load_kw": base_kw},
        "tariff": {"import_price_per_kwh": prices},
        "evses": [{"id": f"evse-{ident}", "max_charge_kw": 50.0}] if max_kw else [],
        "vehicles": vehicles,
        **fields,
    }
    return Scenario.model_validate(data)


def reduction(requested_kw: float, baselines: dict[str, Any], **fields: Any) -> PortfolioEvent:
    """Reduce the joint import by ``requested_kw`` in 02:00-03:00; 0.50 paid and 1.00 charged per kWh."""
    return PortfolioEvent.model_validate(
        {
            "id": "evening",
            "kind": "reduction",
            "start": at(2),
            "end": at(3),
            "requested_kw": requested_kw,
            "payment_per_kwh": 0.50,
            "penalty_per_kwh": 1.00,
            "site_ids": list(baselines),
            "baseline_kw": baselines,
            **fields,
        }
    )


def solve(scenarios: list[Scenario], events: list[PortfolioEvent], **options: Any) -> PortfolioResult:
    """Solve to optimality and check every site's schedule and the portfolio terms' pricing."""
    result = solve_portfolio(scenarios, events, SolverOptions(mip_gap=1e-9, **options))
    assert result.status is SolveStatus.OPTIMAL, result.message
    for scenario in scenarios:
        violations = check_schedule(scenario, result.sites[scenario.site.id])
        assert not violations, describe(violations)
    # The model holds only the families the events need; the others price at 0.
    # 1e-5: HiGHS holds constraints to 1e-7 (kW), and a price of a few per kWh over a few steps turns
    # that into a few 1e-6 of money (hypothesis found -12.995001 against -12.995).
    expected = {name: result.costs[name] for name in result.model_costs}
    assert result.model_costs == pytest.approx(expected, abs=1e-5)
    assert sum(abs(v) for k, v in result.costs.items() if k not in expected) == pytest.approx(0.0, abs=1e-5)
    assert result.objective == pytest.approx(result.evaluated_objective, abs=1e-5)
    return result


def charge(result: PortfolioResult, site_id: str) -> list[float]:
    return result.sites[site_id].charge_kw[0].tolist()


# Site "a" shifts its 15 kWh out of the cheap event hour at +0.10 per kWh (to 03:00, 0.20),
# site "b" its 10 kWh at +0.20 per kWh (to 00:00, 0.30). Each one's plan without the event charges
# everything at 02:00, 0.10: the baselines are 15 and 10 kW.
CHEAP_A = site("a", [0.30, 0.30, 0.10, 0.20], max_kw=15, need_kwh=15)
DEAR_B = site("b", [0.30, 0.35, 0.10, 0.40], max_kw=10, need_kwh=10)


def test_the_counterfactual_plans_charge_in_the_event_hour() -> None:
    for scenario, baseline in ((CHEAP_A, 15.0), (DEAR_B, 10.0)):
        alone = schedule(scenario, mip_gap=1e-9)
        assert alone.site["import_kw"].tolist() == pytest.approx([0, 0, baseline, 0], abs=1e-6)


@pytest.mark.parametrize(
    ("a", "b", "split", "plans", "costs"),
    [
        # a is cheaper: 20 kW = a's whole 15 (cost 1.50) + 5 of b's (1.00). Each kWh earns 0.50 and
        # avoids 1.00 of penalty, more than either shift costs; b shifting more earns nothing.
        # a: 15 at 0.20 = 3.00; b: 5 at 0.10 + 5 at 0.30 = 2.00; payment 0.50 * 20 = 10.00.
        (CHEAP_A, DEAR_B, (15.0, 5.0), ([0, 0, 0, 15], [5, 0, 5, 0]), (3.00, 2.00)),
        # b is cheaper now (+0.05 per kWh to 03:00, 0.15), a dearer (+0.20 to 00:00, 0.30): all of
        # b's 10 and 10 of a's. a: 10 at 0.30 + 5 at 0.10 = 3.50; b: 10 at 0.15 = 1.50.
        (
            site("a", [0.30, 0.35, 0.10, 0.40], max_kw=15, need_kwh=15),
            site("b", [0.30, 0.35, 0.10, 0.15], max_kw=10, need_kwh=10),
            (10.0, 10.0),
            ([10, 0, 5, 0], [0, 0, 0, 10]),
            (3.50, 1.50),
        ),
    ],
    ids=["a-cheaper", "b-cheaper"],
)
def test_the_split_follows_cost_and_capability(
    a: Scenario,
    b: Scenario,
    split: tuple[float, float],
    plans: tuple[list[float], list[float]],
    costs: tuple[float, float],
) -> None:
    result = solve([a, b], [reduction(20.0, {"a": 15.0, "b": 10.0})])
    event = result.events["evening"]
    assert event.site_kw["a"].tolist() == pytest.approx([split[0]], abs=1e-6)
    assert event.site_kw["b"].tolist() == pytest.approx([split[1]], abs=1e-6)
    assert event.total_kw.tolist() == pytest.approx([20.0], abs=1e-6)
    assert event.delivered_kwh == pytest.approx(20.0, abs=1e-6)
    assert event.shortfall_kwh == pytest.approx(0.0, abs=1e-6)
    table = event.table
    assert list(table.columns) == ["start", "a_kw", "b_kw", "total_kw", "delivered_kw", "shortfall_kw"]
    assert table["start"].tolist() == [at(2)]
    assert table[["a_kw", "b_kw"]].iloc[0].tolist() == pytest.approx(split, abs=1e-6)
    assert charge(result, "a") == pytest.approx(plans[0], abs=1e-6)
    assert charge(result, "b") == pytest.approx(plans[1], abs=1e-6)
    assert result.sites["a"].total_cost == pytest.approx(costs[0], abs=1e-6)
    assert result.sites["b"].total_cost == pytest.approx(costs[1], abs=1e-6)
    assert result.costs == pytest.approx(
        {"portfolio_dr_payment": 10.0, "portfolio_dr_penalty": 0.0, "portfolio_v2g_payment": 0.0}
        | {"portfolio_v2g_penalty": 0.0},
        abs=1e-6,
    )
    assert result.objective == pytest.approx(sum(costs) - 10.0, abs=1e-6)


def test_only_the_site_that_can_deliver_does() -> None:
    # b's vehicle needs 40 kWh at 10 kW: it charges at full power every hour and cannot move any of it.
    # a delivers all 10 kW: 5 kWh stay at 02:00 (0.10), 10 move to 03:00 (0.20): 2.50.
    # b: 10 * (0.30 + 0.35 + 0.10 + 0.40) = 11.50; payment 0.50 * 10 = 5.00; objective 9.00.
    stuck = site("b", [0.30, 0.35, 0.10, 0.40], max_kw=10, need_kwh=40)
    result = solve([CHEAP_A, stuck], [reduction(10.0, {"a": 15.0, "b": 10.0})])
    event = result.events["evening"]
    assert event.site_kw["a"].tolist() == pytest.approx([10.0], abs=1e-6)
    assert event.site_kw["b"].tolist() == pytest.approx([0.0], abs=1e-6)
    assert charge(result, "a") == pytest.approx([0, 0, 5, 10], abs=1e-6)
    assert charge(result, "b") == pytest.approx([10, 10, 10, 10], abs=1e-6)
    assert result.objective == pytest.approx(2.50 + 11.50 - 5.00, abs=1e-6)


def test_a_request_beyond_the_sites_is_met_as_far_as_it_pays_and_the_rest_is_penalised() -> None:
    # 40 kW requested, 25 kW of baseline to give up: both sites shift everything (each kWh is worth
    # 1.50 against shifting costs of 0.10 and 0.20), the missing 15 kWh cost 1.00 each.
    # a: 15 at 0.20 = 3.00; b: 10 at 0.30 = 3.00; payment 0.50 * 25 = 12.50; penalty 15.00.
    # objective = 3.00 + 3.00 - 12.50 + 15.00 = 8.50.
    result = solve([CHEAP_A, DEAR_B], [reduction(40.0, {"a": 15.0, "b": 10.0})])
    event = result.events["evening"]
    assert event.total_kw.tolist() == pytest.approx([25.0], abs=1e-6)
    assert event.delivered_kwh == pytest.approx(25.0, abs=1e-6)
    assert event.shortfall_kwh == pytest.approx(15.0, abs=1e-6)
    assert event.penalty == pytest.approx(15.0, abs=1e-6)
    assert result.costs["portfolio_dr_penalty"] == pytest.approx(15.0, abs=1e-6)
    assert result.objective == pytest.approx(8.50, abs=1e-6)


def v2g_site(ident: str, wear: float, discharge_kw: float) -> Scenario:
    """Site ``ident`` whose vehicle arrives with 30 kWh, needs nothing more and may discharge
    ``discharge_kw`` (export limit 50 kW, import at 0.20, export earns nothing: alone it stays idle)."""
    data = site(ident, [0.20] * 4, max_kw=10, battery_wear_cost_per_kwh=wear).model_dump()
    data["site"]["export_limit_kw"] = 50.0
    data["evses"][0]["max_discharge_kw"] = 50.0
    data["vehicles"][0] |= {
        "energy_at_arrival_kwh": 30.0,
        "max_discharge_kw": discharge_kw,
        "v2g_consent": True,
    }
    return Scenario.model_validate(data)


def export(site_ids: list[str]) -> PortfolioEvent:
    """20 kW of net vehicle export from 01:00 to 02:00; 0.30 paid and 0.50 charged per kWh."""
    return PortfolioEvent(
        id="export",
        kind="v2g_export",
        start=at(1),
        end=at(2),
        requested_kw=20.0,
        payment_per_kwh=0.30,
        penalty_per_kwh=0.50,
        site_ids=site_ids,
    )


def test_a_joint_v2g_export_is_split_by_battery_wear() -> None:
    # Each kWh exported is worth 0.30 + 0.50: a wears 0.05 per kWh and discharges its whole 15 kW,
    # b (0.10 per kWh) the other 5. wear a 0.75 + b 0.50 - payment 0.30 * 20 = -4.75.
    result = solve([v2g_site("a", 0.05, 15.0), v2g_site("b", 0.10, 10.0)], [export(["a", "b"])])
    event = result.events["export"]
    assert event.site_kw["a"].tolist() == pytest.approx([15.0], abs=1e-6)
    assert event.site_kw["b"].tolist() == pytest.approx([5.0], abs=1e-6)
    assert result.sites["b"].discharge_kw[0].tolist() == pytest.approx([0, 5, 0, 0], abs=1e-6)
    assert result.costs["portfolio_v2g_payment"] == pytest.approx(6.0, abs=1e-6)
    assert result.objective == pytest.approx(0.75 + 0.50 - 6.0, abs=1e-6)


@pytest.mark.parametrize(
    ("discharge_kw", "split", "objective"),
    [
        # a exports 15 kW against b's 10 kW of charging: 5 kW delivered (payment 1.50), 15 short
        # (penalty 7.50); b's 40 kWh at 0.20 = 8.00, a's wear 0.75: 8.00 + 0.75 - 1.50 + 7.50 = 14.75.
        (15.0, (15.0, -10.0), 14.75),
        # a's 5 kW cannot outweigh b's charging: nothing would be delivered, so a stays idle.
        # 8.00 + penalty 0.50 * 20 = 18.00.
        (5.0, (0.0, -10.0), 18.00),
    ],
)
def test_a_charging_site_counts_against_the_joint_export(
    discharge_kw: float, split: tuple[float, float], objective: float
) -> None:
    # b's vehicle needs 40 kWh at 10 kW: it charges at full power every hour, the event hour too.
    charging = site("b", [0.20] * 4, max_kw=10, need_kwh=40)
    result = solve([v2g_site("a", 0.05, discharge_kw), charging], [export(["a", "b"])])
    event = result.events["export"]
    assert [event.site_kw["a"][0], event.site_kw["b"][0]] == pytest.approx(split, abs=1e-6)
    assert event.delivered_kwh == pytest.approx(max(sum(split), 0.0), abs=1e-6)
    assert event.shortfall_kwh == pytest.approx(20.0 - max(sum(split), 0.0), abs=1e-6)
    assert charge(result, "b") == pytest.approx([10, 10, 10, 10], abs=1e-6)
    assert result.objective == pytest.approx(objective, abs=1e-6)


def test_departure_targets_still_win_over_a_dear_portfolio_event() -> None:
    # a's vehicle can charge only in the event hour (02:00-03:00, 10 kW, needs 10 kWh). Reducing
    # by 10 kW would avoid a penalty of 200 per kWh, more than the site's default unmet-energy
    # penalty of 100 per kWh, so that default is raised to 10 * (0.30 + 200 + 0.50) = 2008 and the
    # vehicle still charges: a pays 10 * 0.10 = 1.00 for energy and 200 * 10 = 2000 of penalty.
    late = site("a", [0.30, 0.30, 0.10, 0.20], max_kw=10, need_kwh=10).model_dump()
    late["vehicles"][0] |= {"arrival": at(2), "departure": at(3)}
    late_site = Scenario.model_validate(late)
    assert schedule(late_site).problem.unmet_penalty_per_kwh == pytest.approx(100.0)
    result = solve([late_site], [reduction(10.0, {"a": 10.0}, penalty_per_kwh=200.0)])
    assert result.sites["a"].problem.unmet_penalty_per_kwh == pytest.approx(2008.0)
    assert result.sites["a"].targets_met == 1
    assert result.events["evening"].shortfall_kwh == pytest.approx(10.0, abs=1e-6)
    assert result.objective == pytest.approx(1.00 + 2000.0, abs=1e-6)


@pytest.mark.parametrize("interface", get_args(Interface))
def test_every_solver_interface_finds_the_same_split(interface: Interface) -> None:
    result = solve([CHEAP_A, DEAR_B], [reduction(20.0, {"a": 15.0, "b": 10.0})], interface=interface)
    assert result.events["evening"].site_kw["a"].tolist() == pytest.approx([15.0], abs=1e-6)
    assert result.objective == pytest.approx(-5.00, abs=1e-6)


@pytest.mark.parametrize("seed", [3, 4])
def test_one_site_without_an_event_is_the_single_site_schedule(seed: int) -> None:
    """A depot day with V2G, its own DR event and V2G dispatch: the same MILP on a block."""
    day = generate_depot_day(12, seed=seed, v2g_share=0.5, dr_event=True)
    alone = schedule(day, mip_gap=1e-9)
    result = solve_portfolio([day], [], TIGHT)
    joint = result.sites[day.site.id]
    assert result.status is alone.status is joint.status is SolveStatus.OPTIMAL
    assert result.objective == pytest.approx(alone.objective, rel=1e-9)
    assert joint.objective == pytest.approx(alone.objective, rel=1e-9)
    np.testing.assert_allclose(joint.charge_kw, alone.charge_kw, atol=1e-6)
    np.testing.assert_allclose(joint.discharge_kw, alone.discharge_kw, atol=1e-6)
    assert joint.costs == pytest.approx(alone.costs, abs=1e-6)
    assert joint.model_costs == pytest.approx(alone.model_costs, abs=1e-6)
    assert joint.problem.unmet_penalty_per_kwh == alone.problem.unmet_penalty_per_kwh
    assert result.events == {} and result.model_costs == {}


def renamed(day: Scenario, ident: str) -> Scenario:
    return day.model_copy(update={"name": ident, "site": day.site.model_copy(update={"id": ident})})


def test_no_time_for_the_solver_still_gives_every_site_a_schedule() -> None:
    days = [
        renamed(generate_depot_day(12, seed=seed, v2g_share=0.5, dr_event=True), f"d{seed}")
        for seed in (3, 4)
    ]
    window = days[0].dr_events[0]
    steps = (window.end - window.start) // days[0].step
    event = PortfolioEvent(
        id="peak",
        kind="reduction",
        start=window.start,
        end=window.end,
        requested_kw=30.0,
        payment_per_kwh=1.0,
        penalty_per_kwh=0.5,
        site_ids=["d3", "d4"],
        baseline_kw={"d3": [40.0] * steps, "d4": 35.0},
    )
    result = solve_portfolio(days, [event], SolverOptions(time_limit=0.0))
    assert result.status in (SolveStatus.FEASIBLE, SolveStatus.HEURISTIC)
    if result.status is SolveStatus.HEURISTIC:
        assert "earliest-deadline-first" in result.message
    for day in days:
        site_result = result.sites[day.site.id]
        assert site_result.status is result.status
        assert site_result.energy_delivered_kwh > 0, "an empty schedule"
        violations = check_schedule(day, site_result)
        assert not violations, describe(violations)
    split = result.events["peak"]
    assert split.site_kw["d3"] + split.site_kw["d4"] == pytest.approx(split.total_kw)
    assert np.isfinite(result.objective)


# Inputs the portfolio refuses, each with the object and field that are wrong.


def test_sites_on_different_step_grids_are_refused_naming_the_scenario() -> None:
    other = site("b", [0.2] * 8, n_steps=8)
    with pytest.raises(ScenarioError, match=r"scenario 'site-b' \(site 'b'\): n_steps =8 differs from 4"):
        solve_portfolio([CHEAP_A, other], [])
    later = site("b", [0.2] * 4, start=at(1))
    with pytest.raises(ScenarioError, match=r"scenario 'site-b' \(site 'b'\): start =2024-01-01T01:00:00"):
        solve_portfolio([CHEAP_A, later], [])


def test_two_scenarios_of_one_site_are_refused() -> None:
    twin = CHEAP_A.model_copy(update={"name": "twin"})
    with pytest.raises(
        ScenarioError, match=r"scenario 'twin' \(site 'a'\): site.id is also the site of scenario 'site-a'"
    ):
        solve_portfolio([CHEAP_A, twin], [])


def test_an_empty_portfolio_is_refused() -> None:
    with pytest.raises(ScenarioError, match="portfolio: scenarios is empty"):
        solve_portfolio([], [])


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (reduction(10.0, {"a": 15.0, "x": 1.0}), "portfolio event 'evening': site_ids names site 'x'"),
        (reduction(10.0, {"a": 15.0}, end=at(5)), "portfolio event 'evening': end window .* not inside"),
        (
            reduction(10.0, {"a": 15.0}, start=at(2) + dt.timedelta(minutes=30)),
            "portfolio event 'evening': start 2024-01-01T02:30:00\\+00:00 is not on the 1:00:00 step grid",
        ),
        (
            reduction(10.0, {"a": [15.0, 15.0]}),
            r"baseline_kw\['a'\] has 2 values, expected one per event step",
        ),
    ],
    ids=["unknown-site", "outside-horizon", "off-grid", "baseline-length"],
)
def test_events_that_do_not_fit_are_refused_naming_the_event(event: PortfolioEvent, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        solve_portfolio([CHEAP_A, DEAR_B], [event])


def test_an_event_id_twice_is_refused() -> None:
    event = reduction(10.0, {"a": 15.0})
    with pytest.raises(ScenarioError, match="portfolio event 'evening': id appears twice"):
        solve_portfolio([CHEAP_A, DEAR_B], [event, event])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"baseline_kw": {"a": 15.0}}, r"baseline_kw has no baseline for sites \['b'\]"),
        ({"baseline_kw": {"a": 1.0, "b": 1.0, "c": 1.0}}, r"names sites \['c'\] that are not in site_ids"),
        ({"baseline_kw": {"a": 1.0, "b": -1.0}}, r"baseline_kw\['b'\] is negative \(-1.0\) at position 0"),
        ({"kind": "v2g_export"}, "baseline_kw is only for reduction events"),
        ({"site_ids": ["a", "a"], "baseline_kw": {"a": 1.0}}, r"site_ids names \['a'\] more than once"),
        ({"requested_kw": -1.0}, "requested_kw"),
        ({"start": dt.datetime(2024, 1, 1, 2)}, "must carry a UTC offset"),
    ],
)
def test_event_fields_are_validated_naming_the_event(fields: dict[str, Any], message: str) -> None:
    data = {
        "id": "evening",
        "kind": "reduction",
        "start": at(2),
        "end": at(3),
        "requested_kw": 10.0,
        "site_ids": ["a", "b"],
        "baseline_kw": {"a": 1.0, "b": 1.0},
    }
    with pytest.raises(ValidationError, match=message):
        PortfolioEvent.model_validate(data | fields)


# Property: random small portfolios.


def tenths(low: int, high: int) -> st.SearchStrategy[float]:
    return st.integers(low * 10, high * 10).map(lambda x: x / 10)


def cents(low: int, high: int) -> st.SearchStrategy[float]:
    return st.integers(low, high).map(lambda x: x / 100)


@st.composite
def random_site(draw: st.DrawFn, ident: str, n: int) -> Scenario:
    """A site of 1-3 vehicles over ``n`` hourly steps, some with V2G; plugged in on whole steps or not."""
    vehicles, evses = [], []
    for i in range(draw(st.integers(1, 3))):
        arrival = draw(st.integers(-30, (n - 1) * 60))
        departure = draw(st.integers(max(arrival, 0) + 30, n * 60 + 60))
        capacity = draw(st.integers(20, 60))
        energy = draw(tenths(0, capacity))
        evses.append(
            {
                "id": f"{ident}-evse-{i}",
                "max_charge_kw": draw(tenths(3, 22)),
                "max_discharge_kw": draw(st.sampled_from([0.0, 7.0, 11.0])),
            }
        )
        vehicles.append(
            {
                "id": f"{ident}-ev-{i}",
                "evse_id": f"{ident}-evse-{i}",
                "arrival": START + dt.timedelta(minutes=arrival),
                "departure": START + dt.timedelta(minutes=departure),
                "capacity_kwh": float(capacity),
                "energy_at_arrival_kwh": energy,
                "target_energy_kwh": draw(tenths(0, capacity)),
                "min_energy_kwh": draw(tenths(0, capacity // 2)),
                "charge_efficiency": draw(cents(85, 100)),
                "discharge_efficiency": draw(cents(85, 100)),
                "max_charge_kw": draw(tenths(3, 22)),
                "max_discharge_kw": draw(tenths(0, 11)),
                "v2g_consent": draw(st.booleans()),
            }
        )
    base = draw(st.lists(tenths(0, 15), min_size=n, max_size=n))
    data: dict[str, Any] = {
        "name": f"site-{ident}",
        "start": START,
        "step_minutes": 60,
        "n_steps": n,
        "site": {
            "id": ident,
            "import_limit_kw": max(base) + draw(tenths(5, 40)),
            "export_limit_kw": draw(tenths(0, 20)),
            "base_load_kw": base,
        },
        "tariff": {
            "import_price_per_kwh": draw(st.lists(cents(0, 50), min_size=n, max_size=n)),
            "export_price_per_kwh": draw(st.one_of(st.just(0.0), cents(0, 20))),
        },
        "evses": evses,
        "vehicles": vehicles,
        "battery_wear_cost_per_kwh": draw(cents(0, 10)),
    }
    return Scenario.model_validate(data)


@st.composite
def portfolios(draw: st.DrawFn) -> tuple[list[Scenario], list[PortfolioEvent]]:
    n = draw(st.integers(3, 6))
    ids = [f"s{i}" for i in range(draw(st.integers(1, 3)))]
    scenarios = [draw(random_site(ident, n)) for ident in ids]
    events = []
    for number in range(draw(st.integers(0, 2))):
        first = draw(st.integers(0, n - 1))
        last = draw(st.integers(first + 1, n))
        members = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=len(ids), unique=True))
        kind = draw(st.sampled_from(["reduction", "v2g_export"]))
        baselines = {}
        if kind == "reduction":
            baselines = {
                s: draw(
                    st.one_of(
                        tenths(0, 30), st.lists(tenths(0, 30), min_size=last - first, max_size=last - first)
                    )
                )
                for s in members
            }
        events.append(
            PortfolioEvent(
                id=f"event-{number}",
                kind=kind,
                start=at(first),
                end=at(last),
                requested_kw=draw(tenths(0, 40)),
                payment_per_kwh=draw(st.one_of(st.just(0.0), cents(1, 150))),
                penalty_per_kwh=draw(st.one_of(st.just(0.0), cents(1, 150))),
                site_ids=members,
                baseline_kw=baselines,
            )
        )
    return scenarios, events


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(portfolios())
def test_random_portfolios_check_out_and_the_split_sums_to_the_total(
    portfolio: tuple[list[Scenario], list[PortfolioEvent]],
) -> None:
    scenarios, events = portfolio
    result = solve(scenarios, events)  # every site checks out; solver and pricing agree
    # Each site planned alone is a feasible joint schedule too: the joint optimum is no worse.
    alone = [schedule(s, mip_gap=1e-9) for s in scenarios]
    problems, specs = build_portfolio(scenarios, events)
    separate = sum(
        evaluate(p, r.charge_kw, r.discharge_kw).objective for p, r in zip(problems, alone, strict=True)
    )
    for spec in specs:
        split = evaluate_event(spec, problems, alone)
        separate += split.penalty - split.payment
    assert result.objective <= separate + 1e-6 * max(1.0, abs(separate))
    for event in events:
        split = result.events[event.id]
        steps = [(moment - START) // dt.timedelta(hours=1) for moment in split.index]
        assert list(split.site_kw) == event.site_ids
        assert np.sum(list(split.site_kw.values()), axis=0) == pytest.approx(split.total_kw, abs=1e-9)
        assert split.delivered_kw == pytest.approx(np.clip(split.total_kw, 0.0, event.requested_kw), abs=1e-9)
        for ident, kw in split.site_kw.items():  # each share, rebuilt from the site's own table
            table = result.sites[ident].site.iloc[steps]
            if event.kind == "reduction":
                expected = np.broadcast_to(event.baseline_kw[ident], kw.shape) - table["import_kw"].to_numpy()
            else:
                expected = (table["ev_discharge_kw"] - table["ev_charge_kw"]).to_numpy()
            assert kw == pytest.approx(expected, abs=1e-6)
