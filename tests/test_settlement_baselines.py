"""Site baselines, hand-computed from each method's published definition: day matching with holidays,
prior events and missing data, day-of adjustments (capped and not), same-day, meter-before, DST."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from aggregator.settlement.baselines import (
    CAISO_10_IN_10,
    NYISO_AVERAGE_DAY,
    PJM_HIGH_4_OF_5,
    PJM_SAME_DAY_3_2,
    BaselineError,
    CounterfactualConfig,
    DayOfAdjustment,
    EventWindow,
    MeterBeforeConfig,
    SameDayConfig,
    XofYConfig,
    baseline_method,
    site_baseline,
)
from aggregator.settlement.performance import event_performance
from market_adapters.dispatch import SignalKind

TZ = "America/New_York"
ZONE = ZoneInfo(TZ)


def metered(first: dt.date, last: dt.date, load: Callable[[pd.Timestamp], float]) -> pd.Series:
    """Import [kW] per 15-min interval from local midnight of ``first`` to the end of ``last``."""
    start = pd.Timestamp(dt.datetime.combine(first, dt.time(), ZONE)).tz_convert("UTC")
    end = pd.Timestamp(dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), ZONE)).tz_convert("UTC")
    index = pd.date_range(start, end, freq="15min", inclusive="left")
    local = index.tz_convert(ZONE)
    return pd.Series([load(moment) for moment in local], index=index, dtype=float)


def window(day: dt.date, start: dt.time, end: dt.time, event_id: str = "evt-1") -> EventWindow:
    return EventWindow(event_id, dt.datetime.combine(day, start, ZONE), dt.datetime.combine(day, end, ZONE))


EVENT_DAY = dt.date(2024, 7, 17)  # a Wednesday
JULY_4 = dt.date(2024, 7, 4)  # a Thursday holiday
EVENT = window(EVENT_DAY, dt.time(14), dt.time(16))


def day_of_month(moment: pd.Timestamp) -> float:
    """Each day's load is flat at its day of the month [kW] (the event day: 20 kW before the event)."""
    return 20.0 if moment.date() == EVENT_DAY else float(moment.day)


JULY = metered(dt.date(2024, 6, 1), EVENT_DAY, day_of_month)


def test_ten_in_ten_skips_weekends_and_the_holiday() -> None:
    # Weekdays back from the 16th: 16 15 12 11 10 9 8 5 (4 = holiday) 3 2 -> mean 91 / 10.
    result = site_baseline(XofYConfig(x=10, y=10), JULY, EVENT, holidays={JULY_4}, tz=TZ)
    assert result.baseline_kw.tolist() == pytest.approx([9.1] * 8)
    assert [day.day for day in result.days_used] == [2, 3, 5, 8, 9, 10, 11, 12, 15, 16]
    assert result.skipped_days == {JULY_4: "holiday"}
    assert result.adjustment is None
    assert result.baseline_kw.index[0] == pd.Timestamp("2024-07-17T18:00:00Z")


def test_without_the_holiday_calendar_july_4_counts() -> None:
    result = site_baseline(XofYConfig(x=10, y=10), JULY, EVENT, tz=TZ)
    assert result.baseline_kw.iloc[0] == pytest.approx(9.3)  # 2 is replaced by 4


def test_prior_event_days_and_days_with_missing_data_are_replaced_by_older_days() -> None:
    # The 10th was an event day and the 12th misses one interval inside the event window:
    # 16 15 11 9 8 5 3 2 1, then June 28 (a Friday) -> 98 / 10.
    gappy = JULY.copy()
    gappy.loc["2024-07-12T18:30:00Z"] = math.nan
    result = site_baseline(
        XofYConfig(x=10, y=10), gappy, EVENT, holidays={JULY_4}, event_days={dt.date(2024, 7, 10)}, tz=TZ
    )
    assert result.baseline_kw.iloc[0] == pytest.approx(9.8)
    assert dt.date(2024, 6, 28) in result.days_used
    assert result.skipped_days[dt.date(2024, 7, 10)] == "event day"
    assert result.skipped_days[dt.date(2024, 7, 12)].startswith("missing data in 1 of 8")


def test_x_of_y_keeps_the_highest_days() -> None:
    # NYISO-style 5 of 10 (no adjustment): the 10 are 16 15 12 11 10 9 8 5 3 2, the 5 highest 16..10.
    result = site_baseline(XofYConfig(x=5, y=10), JULY, EVENT, holidays={JULY_4}, tz=TZ)
    assert result.baseline_kw.iloc[0] == pytest.approx((16 + 15 + 12 + 11 + 10) / 5)
    assert len(result.eligible_days) == 10
    assert [day.day for day in result.days_used] == [10, 11, 12, 15, 16]


def test_pjm_high_4_of_5_with_symmetric_additive_adjustment() -> None:
    # 5 most recent weekdays 16 15 12 11 10 -> highest 4: mean 13.5 kW. Adjustment window 10:00-13:00
    # local: event day 20 kW against 13.5 -> +6.5 kW, uncapped -> 20 kW.
    result = site_baseline(PJM_HIGH_4_OF_5, JULY, EVENT, holidays={JULY_4}, tz=TZ)
    assert result.unadjusted_kw.iloc[0] == pytest.approx(13.5)
    assert result.adjustment is not None
    assert result.adjustment.window_start == dt.datetime(2024, 7, 17, 14, tzinfo=dt.UTC)  # 10:00 EDT
    assert result.adjustment.window_end == dt.datetime(2024, 7, 17, 17, tzinfo=dt.UTC)  # 13:00 EDT
    assert result.adjustment.raw == pytest.approx(6.5)
    assert not result.adjustment.capped
    assert result.baseline_kw.tolist() == pytest.approx([20.0] * 8)


def test_additive_cap_binds_asymmetrically() -> None:
    config = XofYConfig(
        x=4,
        y=5,
        adjustment=DayOfAdjustment(kind="additive", window_hours=3, gap_hours=1, cap_up=2, cap_down=5),
    )
    result = site_baseline(config, JULY, EVENT, holidays={JULY_4}, tz=TZ)
    assert result.adjustment is not None and result.adjustment.capped
    assert result.adjustment.applied == 2.0
    assert result.baseline_kw.iloc[0] == pytest.approx(15.5)


def test_caiso_multiplicative_adjustment_is_capped_at_twenty_percent() -> None:
    # 10-in-10 baseline 9.1 kW; event day 20 kW in the window -> ratio 2.198, capped at 1.2 -> 10.92 kW.
    result = site_baseline(CAISO_10_IN_10, JULY, EVENT, holidays={JULY_4}, tz=TZ)
    assert result.adjustment is not None
    assert result.adjustment.raw == pytest.approx(20 / 9.1)
    assert result.adjustment.applied == pytest.approx(1.2)
    assert result.baseline_kw.iloc[0] == pytest.approx(9.1 * 1.2)


def test_multiplicative_adjustment_inside_the_cap_scales_exactly() -> None:
    # NYISO 5 of 10: 16 15 12 11 10 -> 12.8 kW; the event day's 11.52 kW before the event -> 0.9, in the cap.
    def load(moment: pd.Timestamp) -> float:
        return 11.52 if moment.date() == EVENT_DAY else float(moment.day)

    series = metered(dt.date(2024, 6, 1), EVENT_DAY, load)
    result = site_baseline(NYISO_AVERAGE_DAY, series, EVENT, holidays={JULY_4}, tz=TZ)
    assert result.adjustment is not None and not result.adjustment.capped
    assert result.adjustment.applied == pytest.approx(0.9)
    assert result.baseline_kw.iloc[0] == pytest.approx(11.52)


def test_missing_adjustment_data_is_an_error_naming_the_event() -> None:
    gappy = JULY.copy()
    gappy[(gappy.index >= "2024-07-17T14:00Z") & (gappy.index < "2024-07-17T17:00Z")] = math.nan
    with pytest.raises(BaselineError, match="evt-1: no metered data in the adjustment window"):
        site_baseline(PJM_HIGH_4_OF_5, gappy, EVENT, holidays={JULY_4}, tz=TZ)


def test_too_few_eligible_days_names_the_event_and_the_count() -> None:
    short = JULY[JULY.index >= "2024-07-08T04:00Z"]
    with pytest.raises(
        BaselineError,
        match=r"evt-1 on 2024-07-17: 7 eligible week days .* 10 needed; skipped: 1 holiday, 24 no data",
    ):
        site_baseline(XofYConfig(x=10, y=10), short, EVENT, holidays={JULY_4}, tz=TZ)


def test_min_days_accepts_fewer_and_uses_what_was_found() -> None:
    short = JULY[JULY.index >= "2024-07-08T04:00Z"]  # weekdays 8 9 10 11 12 15 16
    result = site_baseline(XofYConfig(x=10, y=10, min_days=5), short, EVENT, tz=TZ)
    assert len(result.days_used) == 7
    assert result.baseline_kw.iloc[0] == pytest.approx((8 + 9 + 10 + 11 + 12 + 15 + 16) / 7)


def test_weekend_event_matches_weekend_days_and_holidays() -> None:
    # Saturday the 13th: weekend/holiday days before it are 7 6 4(holiday, excluded from matching) 30 29...
    saturday = window(dt.date(2024, 7, 13), dt.time(14), dt.time(16))
    result = site_baseline(XofYConfig(x=3, y=3), JULY, saturday, holidays={JULY_4}, tz=TZ)
    assert [day.isoformat() for day in result.days_used] == ["2024-06-30", "2024-07-06", "2024-07-07"]


def test_dst_spring_forward_day_has_no_2am_and_is_skipped() -> None:
    # Sunday 17 March 2024, 02:00-03:00 local; Sunday 10 March has no 02:00 (clocks jump to 03:00).
    def load(moment: pd.Timestamp) -> float:
        return float(moment.day)

    series = metered(dt.date(2024, 2, 20), dt.date(2024, 3, 17), load)
    event = window(dt.date(2024, 3, 17), dt.time(2), dt.time(3))
    result = site_baseline(XofYConfig(x=2, y=2), series, event, tz=TZ)
    assert [day.day for day in result.days_used] == [9, 16]
    assert result.skipped_days[dt.date(2024, 3, 10)] == "no data"
    assert result.baseline_kw.iloc[0] == pytest.approx(12.5)


def test_dst_matching_is_by_local_clock_time() -> None:
    # Monday 11 March (EDT, UTC-4) 14:00-16:00 against weekdays in EST (UTC-5): load = local hour,
    # so the baseline is 14 then 15 kW. Matching by UTC would have given 13 and 14.
    series = metered(dt.date(2024, 2, 20), dt.date(2024, 3, 11), lambda moment: float(moment.hour))
    event = window(dt.date(2024, 3, 11), dt.time(14), dt.time(16))
    result = site_baseline(XofYConfig(x=5, y=5), series, event, tz=TZ)
    assert result.baseline_kw.tolist() == [14.0] * 4 + [15.0] * 4
    assert result.baseline_kw.index[0] == pd.Timestamp("2024-03-11T18:00Z")


def test_dst_fall_back_matches_the_first_of_the_repeated_hour() -> None:
    # Sunday 10 November, 01:00-02:00 local. On Sunday 3 November 01:00-02:00 happens twice: 05:00 UTC
    # (EDT, first, 7 kW) and 06:00 UTC (EST, second, 99 kW). Other days: 1 kW.
    def load(moment: pd.Timestamp) -> float:
        if moment.date() == dt.date(2024, 11, 3) and moment.hour == 1:
            return 7.0 if moment.utcoffset() == dt.timedelta(hours=-4) else 99.0
        return 1.0

    series = metered(dt.date(2024, 10, 20), dt.date(2024, 11, 10), load)
    event = window(dt.date(2024, 11, 10), dt.time(1), dt.time(2))
    result = site_baseline(XofYConfig(x=2, y=2), series, event, tz=TZ)
    assert [day.day for day in result.days_used] == [3, 9]
    assert result.baseline_kw.tolist() == [4.0] * 4


def test_pjm_same_day_three_plus_two() -> None:
    # Event 14:00-16:00; before: 10:00-13:00 at 6 kW (12 intervals); after: 17:00-19:00 at 3 kW (8).
    # Pooled mean: (12 * 6 + 8 * 3) / 20 = 4.8 kW. The skipped hours (13-14, 16-17) hold 100 kW.
    def load(moment: pd.Timestamp) -> float:
        if 10 <= moment.hour < 13:
            return 6.0
        if 17 <= moment.hour < 19:
            return 3.0
        return 100.0

    series = metered(EVENT_DAY, EVENT_DAY, load)
    result = site_baseline(PJM_SAME_DAY_3_2, series, EVENT, tz=TZ)
    assert result.baseline_kw.tolist() == pytest.approx([4.8] * 8)


def test_same_day_without_after_data_is_an_error() -> None:
    series = JULY[JULY.index < "2024-07-17T20:00Z"]
    with pytest.raises(BaselineError, match="evt-1: no metered data in the 2 h window after"):
        site_baseline(SameDayConfig(), series, EVENT, tz=TZ)


def test_meter_before_holds_the_last_reading_flat() -> None:
    series = JULY.copy()
    series.loc["2024-07-17T17:45Z"] = 7.5  # 13:45-14:00 local
    result = site_baseline(MeterBeforeConfig(), series, EVENT, tz=TZ)
    assert result.baseline_kw.tolist() == [7.5] * 8
    two = site_baseline(MeterBeforeConfig(intervals_before=2), series, EVENT, tz=TZ)
    assert two.baseline_kw.iloc[0] == pytest.approx((20 + 7.5) / 2)


def test_counterfactual_is_read_on_the_event_intervals() -> None:
    plan = pd.Series([30.0] * 6, index=pd.date_range("2024-07-17T18:00Z", periods=6, freq="15min"))
    result = site_baseline(CounterfactualConfig(), JULY, EVENT, counterfactual=plan, tz=TZ)
    assert result.baseline_kw.iloc[:6].tolist() == [30.0] * 6
    assert np.isnan(result.baseline_kw.iloc[6:]).all()
    with pytest.raises(BaselineError, match="needs the plan"):
        site_baseline(CounterfactualConfig(), JULY, EVENT, tz=TZ)


def test_measurement_json_validates_into_the_union() -> None:
    parsed = baseline_method(
        {"method": "x_of_y", "x": 4, "y": 5, "adjustment": {"kind": "additive", "window_hours": 3}}
    )
    assert isinstance(parsed, XofYConfig) and parsed.adjustment is not None
    assert isinstance(baseline_method({"method": "meter_before_after"}), MeterBeforeConfig)
    assert baseline_method(CAISO_10_IN_10.model_dump()) == CAISO_10_IN_10
    with pytest.raises(ValidationError, match="x_of_y"):
        baseline_method({"method": "regression"})
    with pytest.raises(ValidationError, match=r"x \(6\) cannot exceed y \(5\)"):
        baseline_method({"method": "x_of_y", "x": 6, "y": 5})


def test_naive_event_window_is_refused() -> None:
    with pytest.raises(BaselineError, match="evt-9: start"):
        EventWindow("evt-9", dt.datetime(2024, 7, 17, 14), dt.datetime(2024, 7, 17, 16, tzinfo=dt.UTC))


def test_baseline_feeds_performance() -> None:
    # PJM high 4 of 5 gives 20 kW; the site drew 12 kW during the event against a 5 kW commitment.
    series = JULY.copy()
    during = (series.index >= "2024-07-17T18:00Z") & (series.index < "2024-07-17T20:00Z")
    series[during] = 12.0
    baseline = site_baseline(PJM_HIGH_4_OF_5, series, EVENT, holidays={JULY_4}, tz=TZ)
    committed = pd.Series(5.0, index=baseline.baseline_kw.index)
    perf = event_performance(
        SignalKind.DR_REDUCTION, committed, baseline.baseline_kw, series.reindex(committed.index)
    )
    assert perf.raw_delivered_kwh == pytest.approx(8 * 2)
    assert perf.performance_factor == 1.0
