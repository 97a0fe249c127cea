"""Synthetic depot days: deterministic, valid, and distributed like the ACN fit they embed."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import numpy as np
import pytest

from optimizer import Scenario, build_problem, schedule
from workbench.synthetic import (
    ARRIVAL_GROUPS,
    DEFAULT_TIMEZONE,
    TOU_EV_4_DEMAND_CHARGE_PER_KW,
    draw_sessions,
    generate_depot_day,
    tou_ev_4_price,
)

LA = zoneinfo.ZoneInfo("America/Los_Angeles")


def _local_hour(moment: dt.datetime) -> float:
    local = moment.astimezone(LA)
    return local.hour + local.minute / 60


def test_same_seed_same_day_and_other_seed_other_day() -> None:
    first = generate_depot_day(12, 7, v2g_share=0.5, dr_event=True)
    assert generate_depot_day(12, 7, v2g_share=0.5, dr_event=True) == first
    assert generate_depot_day(12, 8, v2g_share=0.5, dr_event=True) != first
    from_rng = generate_depot_day(12, 7, v2g_share=0.5, dr_event=True, rng=np.random.default_rng(7))
    assert from_rng == first


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n", "v2g_share", "dr_event"), [(0, 0.0, False), (1, 1.0, True), (25, 0.3, True)])
def test_days_pass_the_optimizer_checks(seed: int, n: int, v2g_share: float, dr_event: bool) -> None:
    scenario = generate_depot_day(n, seed, v2g_share=v2g_share, dr_event=dr_event)
    problem = build_problem(scenario)
    assert problem.n_steps == 96 and len(problem.vehicles) == n
    assert scenario.timezone == DEFAULT_TIMEZONE and scenario.currency == "USD"
    for v in scenario.vehicles:
        assert scenario.start <= v.arrival < v.departure <= scenario.end
        assert 0.1 * v.capacity_kwh - 1e-9 <= v.energy_at_arrival_kwh < v.target_energy_kwh <= v.capacity_kwh
        assert 40 <= v.capacity_kwh <= 100
        assert 0.9 <= v.charge_efficiency <= 0.95 and 0.9 <= v.discharge_efficiency <= 0.95
    base_peak = max(scenario.site.base_load_kw)  # type: ignore[arg-type]
    sum_evse_kw = sum(e.max_charge_kw for e in scenario.evses)
    assert scenario.site.import_limit_kw >= base_peak
    if n:
        assert scenario.site.import_limit_kw < base_peak + sum_evse_kw


def test_targets_are_reachable_and_the_import_limit_binds_charging_on_arrival() -> None:
    scenario = generate_depot_day(20, 3)
    result = schedule(scenario)
    assert result.is_ok
    assert result.targets_met == 20
    assert result.peak_import_kw <= scenario.site.import_limit_kw + 1e-6
    # Charging every vehicle at its full power on arrival would break the limit.
    problem = build_problem(scenario)
    asap = problem.base_load_kw.copy()
    for v in problem.vehicles:
        steps = int(np.ceil((v.target_energy_kwh - v.energy_initial_kwh) / (v.max_charge_kw * 0.25)))
        asap[v.first_step : v.first_step + steps] += v.max_charge_kw
    assert asap.max() > scenario.site.import_limit_kw


def test_raw_draws_follow_the_fitted_parameters() -> None:
    draws = draw_sessions(40_000, np.random.default_rng(0))
    for k, group in enumerate(ARRIVAL_GROUPS):
        mask = draws.group == k
        assert mask.mean() == pytest.approx(group.weight, abs=0.01)
        assert draws.arrival_h[mask].mean() == pytest.approx(group.arrival_mean_h, abs=0.08)
        assert draws.arrival_h[mask].std() == pytest.approx(group.arrival_sd_h, rel=0.05)
        assert np.log(draws.dwell_h[mask]).mean() == pytest.approx(group.dwell_h.mu, abs=0.05)
        assert np.log(draws.dwell_h[mask]).std() == pytest.approx(group.dwell_h.sigma, rel=0.05)
        assert np.log(draws.energy_kwh[mask]).mean() == pytest.approx(group.energy_kwh.mu, abs=0.05)
        assert np.log(draws.energy_kwh[mask]).std() == pytest.approx(group.energy_kwh.sigma, rel=0.05)


def test_generated_days_keep_the_fitted_shape() -> None:
    days = [generate_depot_day(50, seed) for seed in range(40)]
    vehicles = [v for day in days for v in day.vehicles]
    arrival = np.array([_local_hour(v.arrival) for v in vehicles])
    dwell = np.array([(v.departure - v.arrival).total_seconds() / 3600 for v in vehicles])
    need = np.array([v.target_energy_kwh - v.energy_at_arrival_kwh for v in vehicles])

    mixture_mean = sum(g.weight * g.arrival_mean_h for g in ARRIVAL_GROUPS)
    assert arrival.mean() == pytest.approx(mixture_mean, abs=0.35)  # + rounding up to the 15-min grid
    morning = ARRIVAL_GROUPS[0]
    in_morning_peak = (arrival >= 8.0) & (arrival < 9.75)
    assert in_morning_peak.mean() > morning.weight * 0.8  # the commuter peak is there

    raw = draw_sessions(len(vehicles), np.random.default_rng(1))
    # Clipping to the day and snapping to the grid move medians a little, not a lot.
    assert np.median(dwell) == pytest.approx(np.median(raw.dwell_h), rel=0.15)
    assert np.median(need) == pytest.approx(np.median(raw.energy_kwh), rel=0.15)
    assert need.max() <= 100


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_v2g_share_is_respected(share: float) -> None:
    scenario = generate_depot_day(20, 11, v2g_share=share)
    evses = {e.id: e for e in scenario.evses}
    v2g = [v for v in scenario.vehicles if v.v2g_consent]
    assert len(v2g) == round(share * 20)
    for v in scenario.vehicles:
        evse = evses[v.evse_id]
        if v.v2g_consent:
            assert evse.max_discharge_kw == evse.max_charge_kw > 0
            assert v.max_discharge_kw > 0 and 0 < v.min_energy_kwh < v.capacity_kwh
        else:
            assert evse.max_discharge_kw == 0 and v.max_discharge_kw == 0 and v.min_energy_kwh == 0
        assert 7.2 <= evse.max_charge_kw <= 11
    assert (scenario.site.export_limit_kw > 0) == bool(v2g)


def test_dr_event_adds_an_afternoon_event_and_a_v2g_dispatch() -> None:
    plain = generate_depot_day(15, 2, v2g_share=0.4)
    assert plain.dr_events == [] and plain.v2g_dispatches == []

    scenario = generate_depot_day(15, 2, v2g_share=0.4, dr_event=True)
    (event,) = scenario.dr_events
    assert event.end - event.start == dt.timedelta(hours=2)
    assert _local_hour(event.start) >= 14 and _local_hour(event.end) <= 18
    assert isinstance(event.baseline_kw, list) and len(event.baseline_kw) == 8
    assert event.reduction_kw is not None and 0 < event.reduction_kw < min(event.baseline_kw)
    (dispatch,) = scenario.v2g_dispatches
    assert dispatch.export_kw > 0 and dispatch.end - dispatch.start == dt.timedelta(hours=1)
    build_problem(scenario)

    without_v2g = generate_depot_day(15, 2, dr_event=True)
    assert len(without_v2g.dr_events) == 1 and without_v2g.v2g_dispatches == []


def test_prices_are_sce_tou_ev_4_and_the_demand_charge_applies() -> None:
    scenario = generate_depot_day(5, 0)  # Tuesday 2019-03-05, winter weekday
    prices = scenario.tariff.import_price_per_kwh
    assert isinstance(prices, list)
    assert prices[0] == 0.06087 and prices[10 * 4] == 0.07492 and prices[13 * 4] == 0.0869
    assert prices[23 * 4] == 0.06087
    assert scenario.tariff.demand_charges[0].rate_per_kw == TOU_EV_4_DEMAND_CHARGE_PER_KW
    assert tou_ev_4_price(dt.datetime(2019, 3, 9, 13, tzinfo=LA)) == 0.06087  # Saturday
    assert tou_ev_4_price(dt.datetime(2019, 7, 2, 12, tzinfo=LA)) == 0.26668  # summer weekday


def test_a_dst_day_and_other_grids_are_valid() -> None:
    dst_day = dt.datetime(2019, 3, 10, tzinfo=LA)  # 23 hours long
    scenario = generate_depot_day(10, 4, start=dst_day, n_steps=92, dr_event=True, v2g_share=0.5)
    build_problem(scenario)
    (event,) = scenario.dr_events
    assert _local_hour(event.start) >= 14
    assert scenario.end.astimezone(LA) == dt.datetime(2019, 3, 11, tzinfo=LA)

    five_minute = generate_depot_day(8, 4, step_minutes=5, n_steps=288, dr_event=True)
    assert isinstance(build_problem(five_minute), object)
    naive = generate_depot_day(3, 4, start=dt.datetime(2019, 3, 6))
    assert naive.start == dt.datetime(2019, 3, 6, tzinfo=LA)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="v2g_share"):
        generate_depot_day(3, 0, v2g_share=1.5)
    with pytest.raises(ValueError, match="n_vehicles"):
        generate_depot_day(-1, 0)
    with pytest.raises(ValueError, match="dr_event"):
        generate_depot_day(3, 0, n_steps=40, dr_event=True)  # the horizon ends at 10:00


def test_scenario_is_the_optimizer_type() -> None:
    assert isinstance(generate_depot_day(2, 0), Scenario)
