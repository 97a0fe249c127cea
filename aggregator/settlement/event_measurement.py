"""What a dispatch event asked of each interval, and what the plan in force expected without it.

Both are read per interval of the event's window (15 minutes by default, the index of
:func:`aggregator.ingestion.metering.interval_index`):

- :func:`committed_kw`: the event's kW per interval, the time-weighted mean of its signal intervals;
- :func:`site_committed_kw`: each of the event's sites' share of that kW. The control loop plans the
  sites of an event together and records each site's share per plan step in its version's
  ``inputs["event_shares"]`` (:mod:`aggregator.control.groups`). At each interval, when the
  versions in force of *all* the event's sites record a share for it, the event's kW is split in
  proportion to those shares (so the sites' commitments always add up to the event's, even when the
  event changed after the plans); otherwise (versions made before this was recorded, or before the
  event was known, a site without a plan) each site gets an equal share;
- :func:`expected_import_kw`: the site's import [kW] without the event, from the counterfactual of the
  :class:`~aggregator.db.models.ScheduleVersion` *in force* at each interval (the site's latest
  version created before the interval starts), with each of that version's sessions' power replaced
  by the session's baseline frozen when the event was first planned with it
  (:mod:`aggregator.programs.event_baselines`), where one covers the interval: a plan that pre-charged a
  vehicle before the event re-solves a counterfactual that no longer charges in the window, the
  frozen one still does;
- :func:`vehicle_counterfactual_kw`: one charging session's power [kW] (positive charging) without
  the event: its frozen baseline where one covers the interval, else its power in the counterfactual
  of the version in force, found through the version's ``inputs["sessions"]`` (scenario vehicle id
  → ``charging_sessions.id``).

A plan value is the time-weighted mean of the plan's steps over the interval (cut at the window's
end); ``NaN`` where the version in force has no counterfactual, does not cover the whole interval,
does not plan the session, or where no version was made before the interval. Counterfactuals are
read with :func:`aggregator.control.schedules.read_counterfactual`: one that cannot be read raises
its :class:`~aggregator.control.schedules.ScheduleDataError` (version and field) rather than
measuring against a guess.

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

from aggregator.control.schedules import StoredPlan, planned_sessions, read_counterfactual
from aggregator.db.models import ScheduleVersion
from aggregator.programs.event_baselines import FrozenBaseline, frozen_baselines, plan_mean


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


def expected_import_kw(
    session: Session,
    site_id: str,
    event_id: int,
    index: pd.DatetimeIndex,
    end: dt.datetime,
    step: dt.timedelta,
) -> pd.Series:
    """The site's expected import without dispatch event ``event_id`` (public id) [kW] per interval of
    ``index`` (module doc): the counterfactual site import of the version in force at each interval,
    each of its sessions' counterfactual power replaced by the frozen one where there is one."""
    frozen = frozen_baselines(session, site_id, [event_id]).get(event_id, {})

    def site_import(version: _Version, start: dt.datetime, stop: dt.datetime) -> float:
        counterfactual = version.counterfactual
        if counterfactual is None:
            return math.nan
        value = _mean(version, counterfactual.site_import_kw, start, stop)
        for key, charging_session_id in version.sessions.items():
            baseline = frozen.get(charging_session_id)
            vehicle = counterfactual.vehicle(key)
            if baseline is None or vehicle is None:
                continue
            fresh = _mean(version, vehicle.power_kw, start, stop)
            kept = baseline.mean_kw(start, stop)
            if math.isfinite(fresh) and math.isfinite(kept):
                value += kept - fresh
        return value

    return _in_force_series(session, site_id, index, end, step, site_import)


def vehicle_counterfactual_kw(
    session: Session,
    site_id: str,
    event_id: int,
    charging_session_id: int,
    index: pd.DatetimeIndex,
    end: dt.datetime,
    step: dt.timedelta,
) -> pd.Series:
    """Charging session ``charging_session_id``'s power without dispatch event ``event_id`` (public
    id) [kW, positive charging] per interval of ``index`` (module doc): its frozen baseline where one
    covers the interval, else its vehicle's power in the counterfactual of the version in force;
    ``NaN`` where the version in force does not plan the session."""
    frozen: FrozenBaseline | None = (
        frozen_baselines(session, site_id, [event_id], [charging_session_id])
        .get(event_id, {})
        .get(charging_session_id)
    )

    def vehicle_power(version: _Version, start: dt.datetime, stop: dt.datetime) -> float:
        keys = [key for key, value in version.sessions.items() if value == charging_session_id]
        if not keys:
            return math.nan
        kept = frozen.mean_kw(start, stop) if frozen is not None else math.nan
        if math.isfinite(kept):
            return kept
        counterfactual = version.counterfactual
        vehicle = counterfactual.vehicle(keys[0]) if counterfactual is not None else None
        return _mean(version, vehicle.power_kw if vehicle is not None else None, start, stop)

    return _in_force_series(session, site_id, index, end, step, vehicle_power)


@dataclass
class _Version:
    """A schedule version as measurement reads it; its counterfactual is parsed when first needed."""

    id: int
    site_id: str
    created_at: dt.datetime
    horizon_start: dt.datetime
    step_seconds: int
    inputs: Mapping[str, Any]
    """``schedule_versions.inputs`` (JSON)."""
    stored_counterfactual: object
    """``schedule_versions.counterfactual`` as stored (JSON or ``None``)."""

    @cached_property
    def sessions(self) -> dict[str, int]:
        """Scenario vehicle id → ``charging_sessions.id``."""
        return planned_sessions(self.inputs.get("sessions"))

    @cached_property
    def counterfactual(self) -> StoredPlan | None:
        """The plan without the events, if the version has one; :class:`ScheduleDataError` if it
        cannot be read."""
        return read_counterfactual(
            self.id,
            self.site_id,
            self.horizon_start,
            self.step_seconds,
            self.stored_counterfactual,
            self.inputs.get("sessions"),
        )


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
        ScheduleVersion.counterfactual,
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
        _Version(
            row.id,
            site_id,
            row.created_at,
            row.horizon_start,
            row.step_seconds,
            row.inputs or {},
            row.counterfactual,
        )
        for row in [*earlier, *during]
    ]


__all__ = [
    "IntervalLike",
    "committed_kw",
    "expected_import_kw",
    "plan_mean",
    "site_committed_kw",
    "vehicle_counterfactual_kw",
]
