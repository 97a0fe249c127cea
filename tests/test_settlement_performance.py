"""Event performance: hand-computed deliveries per signal kind, missing data, and the factor's range."""

from __future__ import annotations

import datetime as dt
import math

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from hypothesis import given

from aggregator.settlement.performance import EventPerformance, PerformanceError, event_performance
from market_adapters.dispatch import SignalKind

START = pd.Timestamp("2024-07-01T17:00:00Z")


def series(*values: float) -> pd.Series:
    return pd.Series(
        [float(v) for v in values], index=pd.date_range(START, periods=len(values), freq="15min")
    )


def test_dr_reduction_full_delivery() -> None:
    # Baseline 100 kW, committed 20 kW reduction, measured 80 kW: 20 kW x 1 h = 20 kWh.
    perf = event_performance(
        SignalKind.DR_REDUCTION, series(20, 20, 20, 20), series(100, 100, 100, 100), series(80, 80, 80, 80)
    )
    assert perf.committed_kwh == pytest.approx(20.0)
    assert perf.delivered_kwh == pytest.approx(20.0)
    assert perf.shortfall_kwh == pytest.approx(0.0)
    assert perf.performance_factor == pytest.approx(1.0)
    assert perf.missing_intervals == 0


def test_over_delivery_is_capped_per_interval_but_kept_raw() -> None:
    # Intervals deliver 30, 10 against 20, 20: credited 20 + 10 = 30 kW x 0.25 h = 7.5 kWh of 10 kWh.
    perf = event_performance(SignalKind.DR_REDUCTION, series(20, 20), series(100, 100), series(70, 90))
    assert list(perf.delivered_kw) == [30.0, 10.0]
    assert list(perf.credited_kw) == [20.0, 10.0]
    assert perf.raw_delivered_kwh == pytest.approx(10.0)
    assert perf.delivered_kwh == pytest.approx(7.5)
    assert perf.committed_kwh == pytest.approx(10.0)
    assert perf.performance_factor == pytest.approx(0.75)
    assert perf.shortfall_kwh == pytest.approx(2.5)


def test_v2g_export_counts_export_below_baseline() -> None:
    # Would have charged at 5 kW, exported 10 kW (import -10): delivered 15 kW against 20 committed.
    perf = event_performance(SignalKind.V2G_EXPORT, series(20, 20), series(5, 5), series(-10, -10))
    assert list(perf.delivered_kw) == [15.0, 15.0]
    assert perf.delivered_kwh == pytest.approx(7.5)
    assert perf.performance_factor == pytest.approx(0.75)


def test_dr_cap_commitment_is_baseline_minus_cap() -> None:
    # Cap 60 kW. Baselines 100, 50, 90: committed reductions 40, 0, 30.
    # Measured 55, 50, 70: raw deliveries 45, 0, 20; credited 40, 0, 20 = 60 of 70 kW-intervals.
    perf = event_performance(SignalKind.DR_CAP, series(60, 60, 60), series(100, 50, 90), series(55, 50, 70))
    assert list(perf.committed_kw) == [40.0, 0.0, 30.0]
    assert perf.cap_kw is not None and list(perf.cap_kw) == [60.0, 60.0, 60.0]
    assert list(perf.credited_kw) == [40.0, 0.0, 20.0]
    assert perf.committed_kwh == pytest.approx(70 * 0.25)
    assert perf.delivered_kwh == pytest.approx(60 * 0.25)
    assert perf.performance_factor == pytest.approx(60 / 70)


def test_dr_cap_under_the_cap_all_along_is_full_performance() -> None:
    perf = event_performance(SignalKind.DR_CAP, series(60, 60), series(50, 40), series(50, 45))
    assert perf.committed_kwh == 0.0
    assert perf.performance_factor == 1.0
    assert perf.shortfall_kwh == 0.0


def test_missing_intervals_are_excluded_and_counted() -> None:
    # Second interval has no meter data, third no baseline: judged over the first and fourth only.
    perf = event_performance(
        SignalKind.DR_REDUCTION,
        series(20, 20, 20, 20),
        series(100, 100, math.nan, 100),
        series(80, math.nan, 80, 90),
    )
    assert perf.missing_intervals == 2
    assert perf.measured_intervals == 2
    assert perf.coverage == 0.5
    assert perf.committed_kwh == pytest.approx(40 * 0.25)
    assert perf.delivered_kwh == pytest.approx(30 * 0.25)
    assert perf.performance_factor == pytest.approx(0.75)
    assert math.isnan(perf.credited_kw.iloc[1])


def test_no_data_at_all_is_zero_performance() -> None:
    perf = event_performance(
        SignalKind.DR_REDUCTION, series(20, 20), series(100, 100), series(math.nan, math.nan)
    )
    assert perf.missing_intervals == 2
    assert perf.performance_factor == 0.0
    assert perf.committed_kwh == 0.0


def test_import_above_baseline_nets_against_other_intervals_and_factor_floors_at_zero() -> None:
    perf = event_performance(SignalKind.DR_REDUCTION, series(20, 20), series(100, 100), series(90, 130))
    assert perf.delivered_kwh == pytest.approx((10 - 30) * 0.25)
    assert perf.performance_factor == 0.0
    assert perf.shortfall_kwh == pytest.approx(perf.committed_kwh)


def test_step_sets_the_energy_per_interval() -> None:
    hourly = pd.Series([20.0], index=pd.DatetimeIndex([START]))
    perf = event_performance(
        SignalKind.DR_REDUCTION, hourly, hourly + 80, hourly + 60, step=dt.timedelta(hours=1)
    )
    assert perf.committed_kwh == pytest.approx(20.0)


def test_price_signals_have_nothing_to_measure() -> None:
    with pytest.raises(PerformanceError, match="price"):
        event_performance(SignalKind.PRICE, series(1), series(1), series(1))


def test_mismatched_indexes_name_the_series() -> None:
    shifted = series(80, 80)
    shifted.index = shifted.index + pd.Timedelta(minutes=15)
    with pytest.raises(PerformanceError, match="measured_kw"):
        event_performance(SignalKind.DR_REDUCTION, series(20, 20), series(100, 100), shifted)


def test_naive_index_is_refused() -> None:
    naive = series(20).tz_localize(None)
    with pytest.raises(PerformanceError, match=r"committed_kw .*naive"):
        event_performance(SignalKind.DR_REDUCTION, naive, naive, naive)


def test_negative_commitment_is_refused_with_its_time() -> None:
    with pytest.raises(PerformanceError, match=r"negative .*2024-07-01T17:00"):
        event_performance(SignalKind.DR_REDUCTION, series(-1), series(100), series(90))


kw = st.floats(min_value=-500, max_value=500, allow_nan=False)
maybe_kw = st.one_of(kw, st.just(math.nan))


@given(
    st.sampled_from([SignalKind.DR_REDUCTION, SignalKind.DR_CAP, SignalKind.V2G_EXPORT]),
    st.lists(st.tuples(st.floats(0, 500), maybe_kw, maybe_kw), min_size=1, max_size=12),
)
def test_factor_is_in_unit_range_and_totals_are_consistent(
    kind: SignalKind, rows: list[tuple[float, float, float]]
) -> None:
    committed, baseline, measured = (series(*column) for column in zip(*rows, strict=True))
    perf: EventPerformance = event_performance(kind, committed, baseline, measured)
    assert 0.0 <= perf.performance_factor <= 1.0
    assert perf.shortfall_kwh >= -1e-9
    assert perf.shortfall_kwh <= perf.committed_kwh + 1e-9
    assert perf.missing_intervals == int(np.isnan(perf.delivered_kw).sum())
    credited = perf.credited_kw.dropna()
    assert (credited <= perf.committed_kw[credited.index] + 1e-9).all()
    assert perf.delivered_kwh <= perf.raw_delivered_kwh + 1e-9
