"""What a dispatch event asked of each interval, and what each vehicle and the site would have drawn
without it.

Everything is read per interval of the event's window (15 minutes by default, the index of
:func:`aggregator.ingestion.metering.interval_index`):

- :func:`committed_kw`: the event's kW per interval, the time-weighted mean of its signal intervals;
- :func:`site_committed_kw`: each of the event's sites' share of that kW. The control loop plans the
  sites of an event together and records each site's share per plan step in its version's
  ``inputs["event_shares"]`` (:mod:`aggregator.control.groups`). At each interval, when the
  versions *in force* (each site's latest version created before the interval starts) of *all* the
  event's sites record a share for it, the event's kW is split in proportion to those shares (so the
  sites' commitments always add up to the event's, even when the event changed after the plans);
  otherwise (versions made before this was recorded, or before the event was known, a site without a
  plan) each site gets an equal share;
- :func:`plugged_sessions`: every charging session plugged in at a site during the event, as a
  :class:`SessionSeries`: where it was plugged in, its EVSE's metered power, and its baseline frozen
  at the event's first plans (:mod:`aggregator.programs.event_baselines`), both as means over whole
  intervals (a van plugged in for half of one counts half its power there, as the site meter sees
  it). A session has a baseline of its own only if the plan it was frozen at *knew* its state
  (:attr:`SessionSeries.known`); one whose SoC, departure, target or vehicle was assumed, or that no
  plan of the event planned, has none, and :attr:`SessionSeries.unknown_reason` says why: it is never
  given defaults;
- :func:`counterfactual_site_kw`: the site's baseline when the program measures by its
  ``counterfactual`` (:mod:`aggregator.settlement.site_baselines`), fixed by the event's first plans
  and made of parts: what they expected the site to import besides its vehicles
  (:func:`~aggregator.programs.event_baselines.frozen_base_load`), plus, per session plugged in, its
  own baseline where it has one, else its metered power (a vehicle of unknown state is neutral:
  neither credited nor charged), and nothing while it is not plugged in. So the per-vehicle baselines
  add up to the site's by construction, and a plan made later, after pre-charging, moves neither.

A plan value is the time-weighted mean of the plan's steps over the interval (cut at the window's
end); ``NaN`` where no plan covers the whole interval.

The grid operators' API (:mod:`aggregator.api.routes.operators`) and settlement
(:mod:`aggregator.settlement.event_settlement`) both measure with these, so an operator's view of an
event and what it is paid agree.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db.models import (
    Charger,
    ChargingSession,
    EvseTelemetryRecord,
    ScheduleVersion,
    TelemetryRecord,
)
from aggregator.ingestion.metering import DEFAULT_STEP
from aggregator.programs.event_baselines import FrozenBaseline, FrozenBaseLoad, frozen_baselines, plan_mean


class IntervalLike(Protocol):
    """A signal interval: ``value`` [kW] over ``[start, end)`` (aware)."""

    @property
    def start(self) -> dt.datetime: ...

    @property
    def end(self) -> dt.datetime: ...

    @property
    def value(self) -> float: ...


def committed_kw(
    intervals: Sequence[IntervalLike], index: pd.DatetimeIndex, end: dt.datetime, step: dt.timedelta
) -> pd.Series:
    """The event's kW per interval of ``index``: the time-weighted mean of its intervals over each
    ``[t, t + step)`` (cut at the window's ``end``); ``0`` where no interval covers it."""
    values = []
    for t in index:
        slot_start, slot_end = t.to_pydatetime(), min(t.to_pydatetime() + step, end)
        weighted, covered = 0.0, 0.0
        for interval in intervals:
            overlap = (min(slot_end, interval.end) - max(slot_start, interval.start)).total_seconds()
            if overlap > 0:
                weighted += interval.value * overlap
                covered += overlap
        values.append(weighted / covered if covered else 0.0)
    return pd.Series(values, index=index, dtype=float)


def site_committed_kw(
    session: Session,
    event_id: int,
    site_ids: Sequence[str],
    committed: pd.Series,
    end: dt.datetime,
    step: dt.timedelta,
) -> dict[str, pd.Series]:
    """Per site of the event (public id ``event_id``), its share [kW] of ``committed`` (the event's kW
    per interval, :func:`committed_kw`) per interval: in proportion to the shares the versions in
    force recorded, else equal (module doc). The shares sum to ``committed`` in every interval."""
    if not site_ids:
        return {}
    index = pd.DatetimeIndex(committed.index)
    key = str(event_id)

    def share(version: _Version) -> list[Any] | None:
        shares = version.inputs.get("event_shares")
        series = shares.get(key) if isinstance(shares, dict) else None
        return series if isinstance(series, list) else None

    def planned_share(version: _Version, start: dt.datetime, stop: dt.datetime) -> float:
        return _mean(version, share(version), start, stop)

    planned = pd.DataFrame(
        {
            site_id: _in_force_series(session, site_id, index, end, step, planned_share)
            for site_id in site_ids
        },
        index=index,
        dtype=float,
    )
    total = planned.sum(axis=1, skipna=False)
    usable = planned.notna().all(axis=1) & (planned >= 0).all(axis=1) & (total > 1e-9)
    equal = committed.astype(float) / len(site_ids)
    return {
        site_id: (committed.astype(float) * planned[site_id] / total.where(usable, 1.0)).where(usable, equal)
        for site_id in site_ids
    }


@dataclass(frozen=True)
class SessionSeries:
    """One charging session plugged in at a site during an event, on the event's intervals [kW,
    positive charging] (module doc)."""

    session_id: int
    site_id: str
    vehicle_id: int | None
    evse: tuple[str, int]
    """(charge point id, EVSE id): the telemetry key."""
    plugged: pd.Series
    """Per interval: whether the session overlaps it."""
    metered_kw: pd.Series
    """The EVSE's metered mean power over each interval it was plugged in (its readings while plugged
    in, times the share of the interval it was); ``NaN`` elsewhere or without readings."""
    frozen: FrozenBaseline | None
    """Its baseline frozen at the event's first plans; ``None``: never planned with the event."""
    event_id: int
    end: dt.datetime
    """The event window's end: the last interval is cut there."""
    started_at: dt.datetime
    stopped_at: dt.datetime | None
    step: dt.timedelta = DEFAULT_STEP

    @cached_property
    def baseline_kw(self) -> pd.Series:
        """Its own baseline where it is :attr:`known` and plugged in, else ``NaN``: the frozen power's
        mean over the part of each interval it was plugged in, times that part's share of the
        interval, as :attr:`metered_kw` is (``NaN`` where the frozen plan does not cover that part)."""
        index = pd.DatetimeIndex(self.plugged.index)
        if self.frozen is None or not self.frozen.known:
            return pd.Series(math.nan, index=index, dtype=float)
        until = self.end if self.stopped_at is None else min(self.stopped_at, self.end)
        values = []
        for t in index:
            slot_start = t.to_pydatetime()
            slot_end = min(slot_start + self.step, self.end)
            first, last = max(slot_start, self.started_at), min(slot_end, until)
            if last <= first:
                values.append(math.nan)
                continue
            share = (last - first) / (slot_end - slot_start)
            values.append(self.frozen.mean_kw(first, last) * share)
        return pd.Series(values, index=index, dtype=float).where(self.plugged)

    @property
    def known(self) -> bool:
        """Whether it has a baseline of its own (frozen at a plan that knew its state)."""
        return self.frozen is not None and self.frozen.known

    @property
    def unknown_reason(self) -> str | None:
        """Why it has no baseline of its own (``None`` when :attr:`known`)."""
        if self.frozen is None:
            return (
                f"session {self.session_id}: never planned with event {self.event_id}; no baseline of its own"
            )
        return self.frozen.unknown_reason

    def site_part_kw(self) -> pd.Series:
        """What it adds to a ``counterfactual`` site baseline per interval: its :attr:`baseline_kw`
        where it has one, else its metered power (neutral: neither credited nor charged); ``0`` where it
        is not plugged in."""
        part = self.baseline_kw.where(self.baseline_kw.notna(), self.metered_kw)
        return part.where(self.plugged, 0.0)


def plugged_sessions(
    session: Session,
    site_id: str,
    event_id: int,
    index: pd.DatetimeIndex,
    end: dt.datetime,
    step: dt.timedelta,
) -> list[SessionSeries]:
    """The charging sessions plugged in at ``site_id`` during the intervals ``index`` (cut at ``end``)
    of event ``event_id`` (public id), by session id: each with its EVSE's metered power and the
    baseline frozen for it (:func:`aggregator.programs.event_baselines.frozen_baselines`)."""
    start = index[0].to_pydatetime()
    plugged = session.scalars(
        select(ChargingSession)
        .where(ChargingSession.site_id == site_id)
        .where(ChargingSession.started_at < end)
        .where((ChargingSession.stopped_at.is_(None)) | (ChargingSession.stopped_at > start))
        .order_by(ChargingSession.id)
    ).all()
    if not plugged:
        return []
    readings = _evse_readings(session, site_id, start, end)
    frozen = frozen_baselines(session, site_id, [event_id]).get(event_id, {})
    found = []
    for charging in plugged:
        charger = session.get(Charger, charging.charger_id)
        if charger is None:  # pragma: no cover (a foreign key)
            continue
        key = (charger.charge_point_id, charger.evse_id)
        overlaps = _overlaps(index, step, end, charging.started_at, charging.stopped_at)
        metered = _session_mean_kw(
            readings.get(key), index, end, step, charging.started_at, charging.stopped_at
        )
        found.append(
            SessionSeries(
                session_id=charging.id,
                site_id=site_id,
                vehicle_id=charging.vehicle_id,
                evse=key,
                plugged=overlaps,
                metered_kw=metered.where(overlaps),
                frozen=frozen.get(charging.id),
                event_id=event_id,
                end=end,
                started_at=charging.started_at,
                stopped_at=charging.stopped_at,
                step=step,
            )
        )
    return found


def counterfactual_site_kw(
    base_load: FrozenBaseLoad,
    sessions: Sequence[SessionSeries],
    index: pd.DatetimeIndex,
    end: dt.datetime,
    step: dt.timedelta,
) -> pd.Series:
    """The ``counterfactual`` site baseline per interval [kW] (module doc): what the event's first plans
    expected the site to import besides its vehicles, plus each plugged-in session's
    :meth:`~SessionSeries.site_part_kw`; ``NaN`` where either is unknown."""
    total = pd.Series(
        [base_load.mean_kw(t.to_pydatetime(), min(t.to_pydatetime() + step, end)) for t in index],
        index=index,
        dtype=float,
    )
    for series in sessions:
        total = total + series.site_part_kw()
    return total


def _evse_readings(
    session: Session, site_id: str, start: dt.datetime, end: dt.datetime
) -> dict[tuple[str, int], pd.Series]:
    """Every EVSE reading of ``site_id`` in ``[start, end)``: power [kW] by ``sent_at``, per EVSE."""
    rows = session.execute(
        select(
            EvseTelemetryRecord.charger_id,
            EvseTelemetryRecord.evse_id,
            TelemetryRecord.sent_at,
            EvseTelemetryRecord.power_kw,
        )
        .join(TelemetryRecord, TelemetryRecord.id == EvseTelemetryRecord.telemetry_id)
        .where(TelemetryRecord.site_id == site_id)
        .where(TelemetryRecord.sent_at >= start, TelemetryRecord.sent_at < end)
        .order_by(TelemetryRecord.sent_at)
    ).all()
    grouped: dict[tuple[str, int], tuple[list[dt.datetime], list[float]]] = {}
    for charger_id, evse_id, sent_at, power_kw in rows:
        times, values = grouped.setdefault((charger_id, evse_id), ([], []))
        times.append(sent_at)
        values.append(power_kw)
    return {
        key: pd.Series(values, index=pd.DatetimeIndex(pd.to_datetime(times, utc=True)), dtype=float)
        for key, (times, values) in grouped.items()
    }


def _session_mean_kw(
    readings: pd.Series | None,
    index: pd.DatetimeIndex,
    end: dt.datetime,
    step: dt.timedelta,
    started_at: dt.datetime,
    stopped_at: dt.datetime | None,
) -> pd.Series:
    """A session's mean power [kW] over each whole interval, as the site meter's mean is: the mean of
    its EVSE's readings while it was plugged in, times the share of the interval it was plugged in
    (a van that leaves half-way through drew nothing for the other half). ``NaN`` where no reading
    falls in the part of the interval it was plugged in."""
    if readings is None:
        return pd.Series(np.nan, index=index, dtype=float)
    until = end if stopped_at is None else min(stopped_at, end)
    inside = readings[(readings.index >= started_at) & (readings.index < until)]
    slots = ((pd.DatetimeIndex(inside.index) - index[0]) // pd.Timedelta(step)).to_numpy()
    means = inside.groupby(slots).mean().reindex(range(len(index))).to_numpy(dtype=float)
    shares = []
    for t in index:
        slot_start = t.to_pydatetime()
        slot_end = min(slot_start + step, end)
        plugged = (min(slot_end, until) - max(slot_start, started_at)).total_seconds()
        shares.append(max(plugged, 0.0) / (slot_end - slot_start).total_seconds())
    return pd.Series(means * np.asarray(shares), index=index, dtype=float)


def _overlaps(
    index: pd.DatetimeIndex,
    step: dt.timedelta,
    end: dt.datetime,
    started_at: dt.datetime,
    stopped_at: dt.datetime | None,
) -> pd.Series:
    """Per interval: does ``[started_at, stopped_at)`` overlap it."""
    flags = []
    for t in index:
        slot_start = t.to_pydatetime()
        slot_end = min(slot_start + step, end)
        flags.append(started_at < slot_end and (stopped_at is None or stopped_at > slot_start))
    return pd.Series(flags, index=index, dtype=bool)


@dataclass(frozen=True)
class _Version:
    """A schedule version as the committed shares read it."""

    id: int
    created_at: dt.datetime
    horizon_start: dt.datetime
    step_seconds: int
    inputs: Mapping[str, Any]
    """``schedule_versions.inputs`` (JSON)."""


def _mean(
    version: _Version,
    series: Sequence[float | None] | np.ndarray | None,
    start: dt.datetime,
    stop: dt.datetime,
) -> float:
    """The mean of one of ``version``'s per-step series over ``[start, stop)`` (``NaN`` if none)."""
    return plan_mean(series, version.horizon_start, dt.timedelta(seconds=version.step_seconds), start, stop)


def _in_force_series(
    session: Session,
    site_id: str,
    index: pd.DatetimeIndex,
    end: dt.datetime,
    step: dt.timedelta,
    value: Callable[[_Version, dt.datetime, dt.datetime], float],
) -> pd.Series:
    """Per interval ``[t, t + step)`` of ``index`` (cut at ``end``): ``value(version in force, start,
    end)`` (or ``NaN`` where no version was made before the interval)."""
    versions = _versions_in_force(session, site_id, index)
    values = []
    for t in index:
        slot_start = t.to_pydatetime()
        made_before = [version for version in versions if version.created_at < slot_start]
        if not made_before:
            values.append(math.nan)
            continue
        values.append(value(made_before[-1], slot_start, min(slot_start + step, end)))
    return pd.Series(values, index=index, dtype=float)


def _versions_in_force(session: Session, site_id: str, index: pd.DatetimeIndex) -> list[_Version]:
    """The site's versions that are in force at some interval of ``index``, oldest first: the last one
    made before the first interval, and every one made before the last interval starts."""
    columns = (
        ScheduleVersion.id,
        ScheduleVersion.created_at,
        ScheduleVersion.horizon_start,
        ScheduleVersion.step_seconds,
        ScheduleVersion.inputs,
    )
    first, last = index[0].to_pydatetime(), index[-1].to_pydatetime()
    earlier = session.execute(
        select(*columns)
        .where(ScheduleVersion.site_id == site_id, ScheduleVersion.created_at < first)
        .order_by(ScheduleVersion.created_at.desc(), ScheduleVersion.id.desc())
        .limit(1)
    ).all()
    during = session.execute(
        select(*columns)
        .where(ScheduleVersion.site_id == site_id)
        .where(ScheduleVersion.created_at >= first, ScheduleVersion.created_at < last)
        .order_by(ScheduleVersion.created_at, ScheduleVersion.id)
    ).all()
    return [
        _Version(row.id, row.created_at, row.horizon_start, row.step_seconds, row.inputs or {})
        for row in [*earlier, *during]
    ]


__all__ = [
    "IntervalLike",
    "SessionSeries",
    "committed_kw",
    "counterfactual_site_kw",
    "plan_mean",
    "plugged_sessions",
    "site_committed_kw",
]
