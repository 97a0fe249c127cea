"""Demand charges on the step grid, and the demand a site has already reached this billing period.

A demand charge bills the period's highest average import over a *billed interval*: the
``interval_minutes`` (15 for SCE) aligned to the local clock (:00, :15, :30, :45), counting only the
steps inside the charge's time-of-day windows. :func:`demand_intervals` groups a horizon's steps
into those intervals.

A plan made part-way through a billing period starts with two facts from the meter
(:func:`demand_so_far`):

- the peak already reached: the highest average of the intervals that are over. Only an increase
  over it costs money (``peak_already_kw``);
- the interval still open at the plan's start: the energy drawn in it so far is a constant in its
  average, ``(open_interval_kwh + Δt Σ import[t]) / (open_interval_hours + n Δt)`` over its ``n``
  remaining steps. Dropping it would let a plan that starts at :10 draw the interval's whole
  allowance again in the five minutes left, on top of what :00-:10 drew.

:meth:`DemandChargeSpec.interval_averages_kw` is that average; the model's ``demand_peak_definition``
and the evaluation's bill both read it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from optimizer.scenario import TimeWindow


@dataclass(frozen=True)
class DemandChargeSpec:
    """One demand charge on a horizon's steps: ``rate_per_kw`` on the increase of the period's peak
    average import [kW] over ``peak_already_kw``."""

    name: str
    rate_per_kw: float
    """[currency/kW]"""
    peak_already_kw: float
    """Highest billed demand [kW] already reached this billing period, before the horizon."""
    intervals: list[np.ndarray]
    """Step indices of each billed demand interval inside this charge's windows."""
    interval_minutes: int = 15
    """Length of a billed interval [min], aligned to the local clock."""
    windows: list[TimeWindow] = field(default_factory=list)
    """Time-of-day windows whose steps count; empty: every step."""
    open_interval_kwh: float = 0.0
    """Import [kWh] metered before the horizon in the billed interval that is still open at its start
    (the first of ``intervals``, which then holds only that interval's remaining steps)."""
    open_interval_hours: float = 0.0
    """How long [h] that open interval has been metered before the horizon; 0: no interval is open."""

    def interval_averages_kw(self, import_kw: np.ndarray, step_hours: float) -> np.ndarray:
        """Billed average import [kW] of every interval; the open one counts its metered part."""
        averages = np.array([float(import_kw[steps].mean()) for steps in self.intervals])
        if self.open_interval_hours > 0 and len(self.intervals):
            steps = self.intervals[0]
            drawn_kwh = self.open_interval_kwh + step_hours * float(import_kw[steps].sum())
            averages[0] = drawn_kwh / (self.open_interval_hours + step_hours * len(steps))
        return averages


@dataclass(frozen=True)
class DemandSoFar:
    """What the meter says about one demand charge at a moment ``now`` of its billing period."""

    peak_kw: float
    """Highest average import [kW] of the billed intervals that ended by ``now`` (0 if none)."""
    open_interval_kwh: float = 0.0
    """Import [kWh] metered before ``now`` in the billed interval that is open at ``now``."""
    open_interval_hours: float = 0.0
    """Metered duration [h] of that interval before ``now``; 0 if ``now`` starts an interval."""

    @property
    def open_average_kw(self) -> float:
        """Average import [kW] of the open interval so far (0 if none)."""
        return self.open_interval_kwh / self.open_interval_hours if self.open_interval_hours > 0 else 0.0


def in_windows(index: pd.DatetimeIndex, windows: list[TimeWindow]) -> np.ndarray:
    """Whether each local time of ``index`` falls in one of ``windows`` (all True without windows)."""
    if not windows:
        return np.ones(len(index), dtype=bool)
    parts = (index.hour, index.minute, index.second, index.microsecond)
    hour, minute, second, microsecond = (np.asarray(part, dtype=np.int64) for part in parts)
    clock = ((hour * 60 + minute) * 60 + second) * 1_000_000 + microsecond  # int32 parts would overflow
    weekday = np.asarray(index.day_of_week < 5)
    inside = np.zeros(len(index), dtype=bool)
    for window in windows:
        start, end = _microseconds(window.start), _microseconds(window.end)
        on_day = weekday == (window.days == "weekdays") if window.days != "all" else True
        in_time = (start <= clock) & (clock < end) if start <= end else (clock >= start) | (clock < end)
        inside |= on_day & in_time
    return inside


def _microseconds(clock: dt.time) -> int:
    return ((clock.hour * 60 + clock.minute) * 60 + clock.second) * 1_000_000 + clock.microsecond


def interval_keys(index: pd.DatetimeIndex, interval_minutes: int) -> np.ndarray:
    """The billed interval of each time of ``index``: whole ``interval_minutes`` since the epoch on the
    local wall clock (also where the zone's offset is not whole hours)."""
    wall_clock = index.tz_localize(None)
    minutes = ((wall_clock - pd.Timestamp(0)) // pd.Timedelta(minutes=1)).to_numpy(np.int64)
    return minutes // interval_minutes


def demand_intervals(
    index: pd.DatetimeIndex, interval_minutes: int, windows: list[TimeWindow]
) -> list[np.ndarray]:
    """Group the steps of ``index`` inside ``windows`` into clock-aligned billing intervals.

    With steps at least as long as the interval every step is its own interval; otherwise the steps
    of each interval aligned to the local clock (e.g. :00, :15, :30, :45) are averaged. An interval cut
    by the horizon's edge is averaged over the steps it has.
    """
    positions = np.flatnonzero(in_windows(index, windows))
    step_minutes = (index[1] - index[0]).total_seconds() / 60 if len(index) > 1 else interval_minutes
    if step_minutes >= interval_minutes:
        return [np.array([p]) for p in positions]
    keys = interval_keys(index, interval_minutes)[positions]
    splits = np.flatnonzero(np.diff(keys)) + 1
    return [group for group in np.split(positions, splits) if len(group)]


def demand_so_far(
    meter_kw: pd.Series,
    now: dt.datetime | pd.Timestamp,
    *,
    interval_minutes: int,
    windows: list[TimeWindow] | None = None,
) -> DemandSoFar:
    """The billed demand reached before ``now`` and the open interval's metered part, from a meter.

    ``meter_kw``: site import [kW] since the billing period began, indexed by tz-aware reading start;
    intervals and windows are read on the wall clock of that index's zone (the tariff's). A reading is
    the average power until the next (the last until ``now`` or one spacing, whichever is sooner) and
    counts in the billed interval its start falls in, so readings at a spacing that divides
    ``interval_minutes``, on the clock, bill exactly as the utility does.
    Readings at or after ``now`` are ignored. Negative readings (export) count as 0.
    """
    now = pd.Timestamp(now)
    if now.tzinfo is None:
        raise ValueError(f"now must carry a UTC offset or time zone, got {now}")
    index = meter_kw.index
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise ValueError("meter_kw must be indexed by tz-aware timestamps (reading starts)")
    if not index.is_monotonic_increasing:
        raise ValueError("meter_kw readings must be in time order")
    before = index < now
    index, kw = index[before], np.clip(meter_kw.to_numpy(dtype=float)[before], 0.0, None)
    if not len(index):
        return DemandSoFar(0.0)
    starts = (index - index[0]).total_seconds().to_numpy() / 3600
    spacing = float(np.median(np.diff(starts))) if len(starts) > 1 else interval_minutes / 60
    ends = np.append(starts[1:], starts[-1] + spacing)
    hours = np.minimum(ends, (now - index[0]).total_seconds() / 3600) - starts

    inside = in_windows(index, windows or [])
    keys = interval_keys(index, interval_minutes)[inside]
    energy, hours = (kw * hours)[inside], hours[inside]
    if not len(keys):
        return DemandSoFar(0.0)
    splits = np.flatnonzero(np.diff(keys)) + 1
    first = np.concatenate([[0], splits])
    interval_kwh = np.add.reduceat(energy, first)
    interval_hours = np.add.reduceat(hours, first)
    (now_key,) = interval_keys(pd.DatetimeIndex([now.tz_convert(index.tz)]), interval_minutes)
    is_open = keys[first[-1]] == now_key
    closed = slice(0, len(first) - 1) if is_open else slice(0, len(first))
    averages = interval_kwh[closed] / np.maximum(interval_hours[closed], 1e-12)
    peak = float(averages.max()) if len(averages) else 0.0
    if not is_open:
        return DemandSoFar(peak)
    return DemandSoFar(peak, float(interval_kwh[-1]), float(interval_hours[-1]))
