"""Billed demand already reached, from a meter, and the interval still open when a plan starts.

Hand-computed cases: five-minute readings billed on 15-minute averages aligned to the local clock,
the metered part of the open interval carried into the plan's first interval, and a plan that must
leave room for what that interval has already drawn.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

import numpy as np
import pandas as pd
import pytest

from optimizer import Scenario, SolverOptions, build_problem, optimize
from optimizer.demand import demand_intervals, demand_so_far, in_windows
from optimizer.evaluation import bill_site
from optimizer.online import rolling_horizon, with_metered_demand
from optimizer.scenario import TimeWindow

PACIFIC = zoneinfo.ZoneInfo("America/Los_Angeles")
MIDNIGHT = pd.Timestamp("2019-03-04 00:00", tz=PACIFIC)


def readings(values: list[float], start: pd.Timestamp = MIDNIGHT, minutes: int = 5) -> pd.Series:
    index = pd.date_range(start, periods=len(values), freq=f"{minutes}min")
    return pd.Series(values, index=index, dtype=float)


def test_completed_intervals_give_the_peak_and_the_open_one_its_energy_so_far() -> None:
    # :00-:15 averages 10 kW, :15-:30 20 kW; at 00:40 the :30 interval is open with 30 kW for five
    # minutes and 0 kW for five: 2.5 kWh over 10 minutes. The reading at 00:40 is not yet metered.
    meter = readings([10, 10, 10, 20, 20, 20, 30, 0, 99])
    so_far = demand_so_far(meter, MIDNIGHT + pd.Timedelta(minutes=40), interval_minutes=15)
    assert so_far.peak_kw == pytest.approx(20.0)
    assert so_far.open_interval_kwh == pytest.approx(2.5)
    assert so_far.open_interval_hours == pytest.approx(10 / 60)
    assert so_far.open_average_kw == pytest.approx(15.0)

    # Two minutes into the 00:35 reading only those two minutes are metered.
    inside = demand_so_far(meter, MIDNIGHT + pd.Timedelta(minutes=37), interval_minutes=15)
    assert (inside.open_interval_kwh, inside.open_interval_hours) == pytest.approx((2.5, 7 / 60))

    # On an interval boundary nothing is open.
    boundary = demand_so_far(meter, MIDNIGHT + pd.Timedelta(minutes=30), interval_minutes=15)
    assert (boundary.peak_kw, boundary.open_interval_hours) == (pytest.approx(20.0), 0.0)


def test_intervals_follow_the_local_clock_and_the_windows() -> None:
    # Half-hourly readings from local midnight at UTC+05:30, hourly billing: local hours group
    # (00:00, 00:30) -> 3 kW and leave 01:00 open (6 kW for half an hour). UTC hours would group
    # (00:00) and (00:30, 01:00) instead.
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    start = pd.Timestamp("2024-01-01 00:00", tz=india)
    meter = readings([2, 4, 6], start=start, minutes=30)
    now = start + pd.Timedelta(minutes=90)
    so_far = demand_so_far(meter, now, interval_minutes=60)
    assert (so_far.peak_kw, so_far.open_interval_kwh, so_far.open_interval_hours) == pytest.approx(
        (3.0, 3.0, 0.5)
    )
    # A window of 00:30-01:00 bills only the 00:30 reading; 01:00 is outside, so nothing is open.
    window = [TimeWindow(start=dt.time(0, 30), end=dt.time(1, 0))]
    windowed = demand_so_far(meter, now, interval_minutes=60, windows=window)
    assert (windowed.peak_kw, windowed.open_interval_hours) == (pytest.approx(4.0), 0.0)
    # The grid's intervals group the same way.
    index = pd.date_range(start, periods=4, freq="30min")
    assert [g.tolist() for g in demand_intervals(index, 60, [])] == [[0, 1], [2, 3]]
    assert [g.tolist() for g in demand_intervals(index, 60, window)] == [[1]]


def test_windows_hold_every_time_of_their_days_across_a_dst_week() -> None:
    # Against the definition, time by time: start inclusive, end exclusive, wrapping past midnight;
    # 5-minute times over the week of the 2019-03-10 DST change (late-evening times once overflowed).
    windows = [
        TimeWindow(start=dt.time(16, 0), end=dt.time(21, 0), days="weekdays"),
        TimeWindow(start=dt.time(22, 30), end=dt.time(6, 15), days="weekends"),
        TimeWindow(start=dt.time(23, 55), end=dt.time.max),
    ]
    index = pd.date_range("2019-03-07", "2019-03-14", freq="5min", tz=PACIFIC)

    def defined(stamp: pd.Timestamp, w: TimeWindow) -> bool:
        if w.days != "all" and (stamp.weekday() < 5) != (w.days == "weekdays"):
            return False
        clock = stamp.time()
        return w.start <= clock < w.end if w.start <= w.end else clock >= w.start or clock < w.end

    expected = [any(defined(stamp, w) for w in windows) for stamp in index]
    assert in_windows(index, windows).tolist() == expected
    # 16-21 h on five weekdays: 5 * 60; Saturday 22:30-06:15: 18 + 75, Sunday 75 - 12 (02:00-03:00 is
    # skipped); 23:55 on the five weekdays (the weekend ones are in 22:30-06:15 already).
    assert sum(expected) == 5 * 60 + (18 + 75) + (18 + 63) + 5


def test_meter_must_be_time_stamped_with_a_zone() -> None:
    naive = pd.Series([1.0], index=pd.DatetimeIndex([dt.datetime(2019, 3, 4)]))
    with pytest.raises(ValueError, match="tz-aware"):
        demand_so_far(naive, MIDNIGHT, interval_minutes=15)
    with pytest.raises(ValueError, match="UTC offset"):
        demand_so_far(readings([1.0]), dt.datetime(2019, 3, 4, 1), interval_minutes=15)


def plan_from_ten_past(windows: list[dict[str, str]] | None = None) -> Scenario:
    """A plan starting at 00:10 (the :00 interval is open): four 5-minute steps, 15-minute billing at
    10/kW in ``windows`` (default: all day), 0.10/kWh, and one vehicle needing 1 kWh by 00:30 at up to
    24 kW."""
    return Scenario.model_validate(
        {
            "name": "ten-past",
            "start": "2019-03-04T00:10:00-08:00",
            "step_minutes": 5,
            "n_steps": 4,
            "timezone": "America/Los_Angeles",
            "site": {"id": "depot", "import_limit_kw": 100.0},
            "tariff": {
                "import_price_per_kwh": 0.10,
                "demand_interval_minutes": 15,
                "demand_charges": [{"rate_per_kw": 10.0, "windows": windows or []}],
            },
            "evses": [{"id": "evse-a", "max_charge_kw": 24.0}],
            "vehicles": [
                {
                    "id": "ev-a",
                    "evse_id": "evse-a",
                    "arrival": "2019-03-04T00:10:00-08:00",
                    "departure": "2019-03-04T00:30:00-08:00",
                    "capacity_kwh": 10.0,
                    "max_charge_kw": 24.0,
                    "energy_at_arrival_kwh": 0.0,
                    "target_energy_kwh": 1.0,
                    "charge_efficiency": 1.0,
                    "discharge_efficiency": 1.0,
                }
            ],
        }
    )


def test_metered_demand_sets_the_peak_so_far_and_the_open_interval() -> None:
    # Previous day 23:45-24:00 at 9 kW (a completed interval), then 00:00 and 00:05 at 6 kW: 1 kWh over
    # 10 minutes of the :00 interval, which the plan's first step (00:10) finishes.
    problem = build_problem(plan_from_ten_past())
    meter = readings([9, 9, 9, 6, 6], start=MIDNIGHT - pd.Timedelta(minutes=15))
    (charge,) = with_metered_demand(problem, meter).demand_charges
    assert charge.peak_already_kw == pytest.approx(9.0)
    assert (charge.open_interval_kwh, charge.open_interval_hours) == pytest.approx((1.0, 10 / 60))
    assert [steps.tolist() for steps in charge.intervals] == [[0], [1, 2, 3]]
    # The bill of the open interval counts the metered part: (1 kWh + 12 kW x 5 min) / 15 min = 8 kW.
    bill = bill_site(with_metered_demand(problem, meter), np.array([12.0, 0, 0, 0]), np.zeros(4))
    assert bill.demand_peaks_kw == pytest.approx([9.0])
    high = bill_site(with_metered_demand(problem, meter), np.array([30.0, 0, 0, 0]), np.zeros(4))
    assert high.demand_peaks_kw == pytest.approx([(1.0 + 30 / 12) / 0.25])


def test_an_open_interval_the_plan_cannot_add_to_is_billed_on_what_it_has() -> None:
    # Demand counts only 00:00-00:10: the plan (from 00:10) has no billed step, so the :00 interval's
    # 6 kW so far is final and joins the peak; 23:45-24:00 lies outside the window. A meter stamped
    # in UTC reads the same on the site's clock.
    problem = build_problem(plan_from_ten_past(windows=[{"start": "00:00", "end": "00:10"}]))
    meter = readings([9, 9, 9, 6, 6], start=MIDNIGHT - pd.Timedelta(minutes=15))
    (charge,) = with_metered_demand(problem, meter.tz_convert("UTC")).demand_charges
    assert charge.intervals == []
    assert (charge.peak_already_kw, charge.open_interval_hours) == (pytest.approx(6.0), 0.0)


def test_plan_leaves_room_for_what_the_open_interval_has_drawn() -> None:
    # Metered 1 kWh in 00:00-00:10 (6 kW). With x0 the vehicle's power at 00:10 and x1..x3 after, the
    # :00 interval averages (1 + x0 / 12) / 0.25 = 4 + x0 / 3 kW and the :15 one (x1 + x2 + x3) / 3 =
    # (12 - x0) / 3 = 4 - x0 / 3 kW (1 kWh = Σx / 12). The peak max(4 + x0/3, 4 - x0/3) is least at
    # x0 = 0: 4 kW, so demand_charge = 10 * 4 = 40.00, energy_cost = 0.10 * 1 = 0.10, objective 40.10.
    # Ignoring the metered part, the plan would draw x0 = 3 kW and the meter bill (1 + 0.25) / 0.25 = 5 kW.
    problem = with_metered_demand(build_problem(plan_from_ten_past()), readings([6, 6]))
    result = optimize(problem, SolverOptions(mip_gap=1e-9))
    import_kw = result.evaluation.import_kw
    assert (import_kw[0], import_kw[1:].sum()) == pytest.approx((0.0, 12.0), abs=1e-6)
    assert result.evaluation.demand_peaks_kw == pytest.approx([4.0])
    assert result.costs["demand_charge"] == pytest.approx(40.0)
    assert result.objective == pytest.approx(40.10)
    assert result.model_costs["demand_charge"] == pytest.approx(40.0)


def test_the_rolling_horizon_refuses_to_start_inside_a_metered_interval() -> None:
    problem = with_metered_demand(build_problem(plan_from_ten_past()), readings([6, 6]))
    with pytest.raises(ValueError, match="starts with no demand interval open, but 10 min"):
        rolling_horizon(problem)
