"""Site baselines: the import a site would have drawn during an event had there been no event.

Input is the site's metered import [kW] at 15-minute resolution: a pandas Series indexed by the aware
UTC start of each interval, ``NaN`` where data is missing (:mod:`aggregator.ingestion.metering`). Every method
returns a :class:`Baseline` on the event's own interval index, with what it was made from (the days
used, the adjustment applied) for statements. The method and its parameters are data: the
:data:`BaselineMethod` union validates ``Program.measurement`` (:mod:`aggregator.programs.measurement`,
re-exported here), and an event is measured by the one declared when it was notified
(:mod:`aggregator.settlement.site_baselines`).

Methods
-------

``x_of_y`` (day matching, :class:`XofYConfig`)
    Eligible days are the local calendar days (in the site's time zone) before the event day, at most
    ``lookback_days`` back, of the event day's type (weekday, or weekend; a holiday event day counts
    as a weekend day), that are not holidays, not prior event days, and have complete metered data
    over the profile window (the event window plus the adjustment window, at the same local clock
    times). The ``y`` most recent eligible days are kept; of those, the ``x`` with the highest
    consumption over the event window (ties: the more recent day). The baseline per interval is the
    mean of those days' metered import at the same local clock time. Fewer than ``min_days`` eligible
    days is an error naming the event and the count; between ``min_days`` and ``y``, the top
    ``min(x, found)`` of what was found are used.

    DST: matching is by local clock time. On a day where the clocks go forward, the skipped local
    times do not exist and that day has no data there (so it is not eligible if the window covers the
    gap); on a day where they go back, the repeated local hour is matched to its *first* occurrence.
    An event interval inside a repeated hour on the event day itself is matched, like its twin, to
    that clock time on the chosen days.

Day-of adjustment (:class:`DayOfAdjustment`, optional on ``x_of_y``)
    Over the adjustment window, the ``window_hours`` ending ``gap_hours`` before the event start, the
    event day's metered import is compared with the unadjusted baseline at the same times (means over
    the window):

    - ``multiplicative``: ``factor = actual / baseline``, clipped to ``[1 - cap_down, 1 + cap_up]``
      (fractions, e.g. ``0.2`` = ±20 %), and the baseline is multiplied by it. A zero baseline mean
      gives factor ``1`` when the actual is zero too, else the upper cap.
    - ``additive``: ``offset = actual - baseline`` [kW], clipped to ``[-cap_down, cap_up]`` kW, and
      added to the baseline.

    A cap of ``None`` is no cap on that side. Missing meter data in the window is left out; none at
    all is an error (the baseline cannot be adjusted as the program says).

``same_day`` (:class:`SameDayConfig`)
    A flat baseline: the mean of the metered intervals in a window before the event (``hours_before``
    ending ``skip_before`` hours before the start) and a window after it (``hours_after`` starting
    ``skip_after`` hours after the end), pooled (every interval weighs the same, as PJM's "3 + 2"
    averages its five hours).

``meter_before_after`` (:class:`MeterBeforeConfig`)
    For V2G export and storage: the mean of the last ``intervals_before`` metered intervals ending
    ``gap_intervals`` intervals before the event start, held flat across the event.

``counterfactual`` (:class:`CounterfactualConfig`)
    The optimiser's plan for the site without the event (``ScheduleVersion.counterfactual``),
    supplied by the caller and read on the event's intervals; intervals it does not cover are ``NaN``
    (missing for :func:`~aggregator.settlement.performance.event_performance`).

Presets (parameters as commonly published; check the program's current manual before relying on one):

- :data:`CAISO_10_IN_10`: the CAISO day-matching "10 in 10" baseline for non-residential customers
  (average of the 10 most recent similar non-event days), with a multiplicative day-of adjustment
  capped at ±20 % (CAISO Business Practice Manual for Demand Response / Metering, "Customer Load
  Baseline").
- :data:`NYISO_AVERAGE_DAY`: NYISO's weekday Average Day CBL, the 5 highest of the 10 most recent
  eligible weekdays ("5 of 10"), with a weather-sensitive multiplicative adjustment from the 2 hours
  beginning 4 hours before the event, capped at ±20 % (NYISO Emergency Demand Response Program
  Manual / SCR manual, "Customer Baseline Load").
- :data:`PJM_HIGH_4_OF_5`: PJM's economic weekday CBL, the highest 4 of the 5 most recent eligible
  weekdays within 45 days, with a symmetric additive adjustment from the 3 hours ending 1 hour before
  the event (PJM Manual 11, "Energy & Ancillary Services Market Operations", Customer Baseline Load).
- :data:`PJM_SAME_DAY_3_2`: PJM's "Same Day (3 + 2)" CBL: 3 hours before the event after skipping
  one hour, and 2 hours after it after skipping one hour (PJM Manual 11).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from aggregator.programs.measurement import (
    BASELINE_METHOD,
    CAISO_10_IN_10,
    NYISO_AVERAGE_DAY,
    PJM_HIGH_4_OF_5,
    PJM_SAME_DAY_3_2,
    BaselineMethod,
    CounterfactualConfig,
    DayOfAdjustment,
    MeterBeforeConfig,
    SameDayConfig,
    XofYConfig,
    baseline_method,
)

DEFAULT_STEP = dt.timedelta(minutes=15)


class BaselineError(ValueError):
    """A baseline that cannot be made as configured; the message names the event and what is missing."""


# --- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventWindow:
    """The event being measured: its id (for messages) and ``[start, end)`` (aware)."""

    event_id: str
    start: dt.datetime
    end: dt.datetime

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if value.utcoffset() is None:
                raise BaselineError(f"event {self.event_id}: {name} {value.isoformat()} has no UTC offset")
        if self.end <= self.start:
            raise BaselineError(
                f"event {self.event_id}: end {self.end.isoformat()} is not after "
                f"start {self.start.isoformat()}"
            )


@dataclass(frozen=True)
class Adjustment:
    """The day-of adjustment applied: kind, window, the means compared [kW], raw and applied values."""

    kind: Literal["multiplicative", "additive"]
    window_start: dt.datetime
    window_end: dt.datetime
    actual_mean_kw: float
    baseline_mean_kw: float
    raw: float
    applied: float

    @property
    def capped(self) -> bool:
        return self.raw != self.applied


@dataclass(frozen=True)
class Baseline:
    """A site's baseline [kW] on the event's intervals, and what it was made from."""

    method: str
    baseline_kw: pd.Series
    unadjusted_kw: pd.Series
    days_used: tuple[dt.date, ...] = ()
    eligible_days: tuple[dt.date, ...] = ()
    skipped_days: Mapping[dt.date, str] = field(default_factory=dict)
    adjustment: Adjustment | None = None


# --- the one entry point ----------------------------------------------------------------------------


def site_baseline(
    method: BaselineMethod,
    metered: pd.Series,
    event_window: EventWindow,
    *,
    holidays: Collection[dt.date] = frozenset(),
    event_days: Collection[dt.date] = frozenset(),
    counterfactual: pd.Series | None = None,
    tz: str | ZoneInfo = "UTC",
    step: dt.timedelta = DEFAULT_STEP,
) -> Baseline:
    """The baseline of one event at one site by ``method`` (module doc).

    ``metered`` is the site's import [kW] covering at least the look-back and the windows the method
    reads; ``holidays`` and ``event_days`` are local dates; ``tz`` is the site's IANA time zone.
    """
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    index = _event_index(event_window, step)
    if isinstance(method, CounterfactualConfig):
        if counterfactual is None:
            raise BaselineError(f"event {event_window.event_id}: the counterfactual method needs the plan")
        _check_metered(counterfactual, "counterfactual")
        series = counterfactual.astype(float).reindex(index)
        return Baseline("counterfactual", series, series)
    _check_metered(metered, "metered")
    metered = metered.astype(float)
    if isinstance(method, XofYConfig):
        return _x_of_y(method, metered, event_window, index, set(holidays), set(event_days), zone, step)
    if isinstance(method, SameDayConfig):
        return _same_day(method, metered, event_window, index)
    return _meter_before(method, metered, event_window, index, step)


def _event_index(window: EventWindow, step: dt.timedelta) -> pd.DatetimeIndex:
    start = pd.Timestamp(window.start).tz_convert("UTC")
    end = pd.Timestamp(window.end).tz_convert("UTC")
    if (start - start.normalize()) % step or (end - start) % step:
        raise BaselineError(f"event {window.event_id}: window is not aligned to {step} intervals")
    return pd.date_range(start, end, freq=step, inclusive="left")


def _check_metered(series: pd.Series, name: str) -> None:
    if not isinstance(series.index, pd.DatetimeIndex) or series.index.tz is None:
        raise BaselineError(f"{name} must be indexed by aware interval start times")


def _window(metered: pd.Series, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    return metered[(metered.index >= start) & (metered.index < end)]


# --- x of y -----------------------------------------------------------------------------------------


def _is_weekend(day: dt.date, holidays: set[dt.date]) -> bool:
    return day.weekday() >= 5 or day in holidays


def _clock_table(metered: pd.Series, zone: ZoneInfo) -> pd.Series:
    """``metered`` keyed by (local date, local clock time); a repeated (fall-back) hour keeps its first."""
    local = pd.DatetimeIndex(metered.index).tz_convert(zone)
    keyed = pd.Series(
        metered.to_numpy(), index=pd.MultiIndex.from_arrays([local.date, local.time], names=["date", "time"])
    )
    return keyed[~keyed.index.duplicated(keep="first")]


def _x_of_y(
    config: XofYConfig,
    metered: pd.Series,
    window: EventWindow,
    index: pd.DatetimeIndex,
    holidays: set[dt.date],
    event_days: set[dt.date],
    zone: ZoneInfo,
    step: dt.timedelta,
) -> Baseline:
    event_day = index[0].tz_convert(zone).date()
    adjust_index = pd.DatetimeIndex([], tz="UTC")
    adjust_end = index[0] - pd.Timedelta(hours=config.adjustment.gap_hours if config.adjustment else 0)
    adjust_start = adjust_end - pd.Timedelta(hours=config.adjustment.window_hours if config.adjustment else 0)
    if config.adjustment is not None:
        adjust_index = pd.date_range(adjust_start.ceil(step), adjust_end, freq=step, inclusive="left")
        if adjust_index.empty:
            raise BaselineError(
                f"event {window.event_id}: the {config.adjustment.window_hours} h adjustment window "
                f"holds no whole {step} interval"
            )
    profile = pd.DatetimeIndex(index.append(adjust_index))
    local_profile = profile.tz_convert(zone)
    offsets = np.array([(moment.date() - event_day).days for moment in local_profile])
    times = [moment.time() for moment in local_profile]
    table = _clock_table(metered, zone)

    def profile_on(day: dt.date) -> np.ndarray:
        keys = list(zip([day + dt.timedelta(days=int(o)) for o in offsets], times, strict=True))
        return table.reindex(pd.MultiIndex.from_tuples(keys)).to_numpy(dtype=float)

    weekend = _is_weekend(event_day, holidays)
    eligible: list[dt.date] = []
    profiles: dict[dt.date, np.ndarray] = {}
    skipped: dict[dt.date, str] = {}
    for back in range(1, config.lookback_days + 1):
        if len(eligible) == config.y:
            break
        day = event_day - dt.timedelta(days=back)
        if day in holidays:
            skipped[day] = "holiday"
        elif _is_weekend(day, holidays) != weekend:
            continue  # another day type: not a candidate, not worth listing
        elif day in event_days:
            skipped[day] = "event day"
        else:
            values = profile_on(day)
            gaps = int(np.isnan(values).sum())
            if gaps == len(values):
                skipped[day] = "no data"
            elif gaps:
                skipped[day] = f"missing data in {gaps} of {len(values)} intervals"
            else:
                eligible.append(day)
                profiles[day] = values
    if len(eligible) < config.required_days:
        raise BaselineError(
            f"event {window.event_id} on {event_day.isoformat()}: {len(eligible)} eligible "
            f"{'weekend/holiday' if weekend else 'week'} days found in the {config.lookback_days} days "
            f"before, {config.required_days} needed" + (f"; skipped: {_describe(skipped)}" if skipped else "")
        )
    n_event = len(index)
    # Highest event-window consumption first; ties go to the more recent day (earlier in `eligible`).
    ranked = sorted(eligible, key=lambda day: -float(profiles[day][:n_event].sum()))
    chosen = ranked[: min(config.x, len(eligible))]
    mean = np.mean([profiles[day] for day in chosen], axis=0)
    unadjusted = pd.Series(mean[:n_event], index=index)
    adjustment = None
    baseline = unadjusted
    if config.adjustment is not None:
        adjustment = _adjust(
            config.adjustment, metered, window, adjust_index, mean[n_event:], adjust_start, adjust_end
        )
        if adjustment.kind == "multiplicative":
            baseline = unadjusted * adjustment.applied
        else:
            baseline = unadjusted + adjustment.applied
    return Baseline(
        method=f"x_of_y:{config.x}/{config.y}",
        baseline_kw=baseline,
        unadjusted_kw=unadjusted,
        days_used=tuple(sorted(chosen)),
        eligible_days=tuple(sorted(eligible)),
        skipped_days=dict(sorted(skipped.items())),
        adjustment=adjustment,
    )


def _describe(skipped: dict[dt.date, str]) -> str:
    """Skipped days by reason, e.g. ``1 holiday, 2 event day, 20 no data``."""
    reasons = ["holiday", "event day", "no data", "missing data"]
    counts = {reason: sum(1 for text in skipped.values() if text.startswith(reason)) for reason in reasons}
    return ", ".join(f"{count} {reason}" for reason, count in counts.items() if count)


def _clip(value: float, low: float | None, high: float | None) -> float:
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    return value


def _adjust(
    config: DayOfAdjustment,
    metered: pd.Series,
    window: EventWindow,
    adjust_index: pd.DatetimeIndex,
    baseline_values: np.ndarray,
    window_start: pd.Timestamp,
    window_end: pd.Timestamp,
) -> Adjustment:
    actual = metered.reindex(adjust_index).to_numpy(dtype=float)
    present = ~np.isnan(actual)
    if not present.any():
        raise BaselineError(
            f"event {window.event_id}: no metered data in the adjustment window "
            f"{window_start.isoformat()} to {window_end.isoformat()}"
        )
    actual_mean = float(actual[present].mean())
    baseline_mean = float(baseline_values[present].mean())
    if config.kind == "multiplicative":
        if baseline_mean == 0:
            raw = 1.0 if actual_mean == 0 else float("inf")
        else:
            raw = actual_mean / baseline_mean
        low = None if config.cap_down is None else 1 - config.cap_down
        high = None if config.cap_up is None else 1 + config.cap_up
        applied = _clip(raw, low, high)
        if not np.isfinite(applied):
            raise BaselineError(
                f"event {window.event_id}: the baseline is 0 kW over the adjustment window and "
                "multiplicative adjustment has no upper cap"
            )
    else:
        raw = actual_mean - baseline_mean
        applied = _clip(raw, None if config.cap_down is None else -config.cap_down, config.cap_up)
    return Adjustment(
        kind=config.kind,
        window_start=window_start.to_pydatetime(),
        window_end=window_end.to_pydatetime(),
        actual_mean_kw=actual_mean,
        baseline_mean_kw=baseline_mean,
        raw=raw,
        applied=applied,
    )


# --- same day and meter before ----------------------------------------------------------------------


def _same_day(
    config: SameDayConfig, metered: pd.Series, window: EventWindow, index: pd.DatetimeIndex
) -> Baseline:
    start = pd.Timestamp(window.start).tz_convert("UTC")
    end = pd.Timestamp(window.end).tz_convert("UTC")
    before_end = start - pd.Timedelta(hours=config.skip_before)
    before = _window(metered, before_end - pd.Timedelta(hours=config.hours_before), before_end)
    after_start = end + pd.Timedelta(hours=config.skip_after)
    after = _window(metered, after_start, after_start + pd.Timedelta(hours=config.hours_after))
    for name, hours, values in (
        ("before", config.hours_before, before),
        ("after", config.hours_after, after),
    ):
        if hours and values.notna().sum() == 0:
            raise BaselineError(
                f"event {window.event_id}: no metered data in the {hours:g} h window {name} the event"
            )
    pooled = pd.concat([before, after]).dropna()
    level = float(pooled.mean())
    series = pd.Series(level, index=index, dtype=float)
    return Baseline("same_day", series, series)


def _meter_before(
    config: MeterBeforeConfig,
    metered: pd.Series,
    window: EventWindow,
    index: pd.DatetimeIndex,
    step: dt.timedelta,
) -> Baseline:
    end = index[0] - config.gap_intervals * pd.Timedelta(step)
    reading = metered.reindex(
        pd.date_range(end - config.intervals_before * pd.Timedelta(step), end, freq=step, inclusive="left")
    )
    if reading.isna().all():
        raise BaselineError(
            f"event {window.event_id}: no metered data in the {config.intervals_before} interval(s) "
            f"before {end.isoformat()}"
        )
    series = pd.Series(float(reading.mean()), index=index, dtype=float)
    return Baseline("meter_before_after", series, series)


__all__ = [
    "BASELINE_METHOD",
    "CAISO_10_IN_10",
    "DEFAULT_STEP",
    "NYISO_AVERAGE_DAY",
    "PJM_HIGH_4_OF_5",
    "PJM_SAME_DAY_3_2",
    "Adjustment",
    "Baseline",
    "BaselineError",
    "BaselineMethod",
    "CounterfactualConfig",
    "DayOfAdjustment",
    "EventWindow",
    "MeterBeforeConfig",
    "SameDayConfig",
    "XofYConfig",
    "baseline_method",
    "site_baseline",
]
