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
does not plan the session, or where no version was made before the interval.

The grid operators' API (:mod:`aggregator.api.routes.operators`) and settlement
(:mod:`aggregator.settlement.event_settlement`) both measure with these, so an operator's view of an
event and what it is paid agree.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pandas as pd
from sqlalchemy import Row, select
from sqlalchemy.orm import Session

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

    def share(version: Row[Any]) -> list[Any] | None:
        shares = (version.inputs or {}).get("event_shares")
        series = shares.get(key) if isinstance(shares, dict) else None
        return series if isinstance(series, list) else None

    def planned_share(version: Row[Any], start: dt.datetime, stop: dt.datetime) -> float:
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
    ``index`` (module doc): the ``counterfactual["site_import_kw"]`` of the version in force at each
    interval, each of its sessions' counterfactual power replaced by the frozen one where there is
    one."""
    frozen = frozen_baselines(session, site_id, [event_id]).get(event_id, {})

    def site_import(version: Row[Any], start: dt.datetime, stop: dt.datetime) -> float:
        counterfactual = version.counterfactual if isinstance(version.counterfactual, dict) else {}
        value = _mean(version, counterfactual.get("site_import_kw"), start, stop)
        vehicles = counterfactual.get("vehicles")
        for key, charging_session_id in _sessions(version).items():
            baseline = frozen.get(charging_session_id)
            if baseline is None or not isinstance(vehicles, dict):
                continue
            fresh = _mean(version, _power(vehicles.get(key)), start, stop)
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
    covers the interval, else its vehicle's ``power_kw`` in the counterfactual of the version in force;
    ``NaN`` where the version in force does not plan the session."""
    frozen: FrozenBaseline | None = (
        frozen_baselines(session, site_id, [event_id], [charging_session_id])
        .get(event_id, {})
        .get(charging_session_id)
    )

    def vehicle_power(version: Row[Any], start: dt.datetime, stop: dt.datetime) -> float:
        keys = [key for key, value in _sessions(version).items() if value == charging_session_id]
        if not keys:
            return math.nan
        kept = frozen.mean_kw(start, stop) if frozen is not None else math.nan
        if math.isfinite(kept):
            return kept
        vehicles = (version.counterfactual if isinstance(version.counterfactual, dict) else {}).get(
            "vehicles"
        )
        return _mean(
            version, _power(vehicles.get(keys[0]) if isinstance(vehicles, dict) else None), start, stop
        )

    return _in_force_series(session, site_id, index, end, step, vehicle_power)


def _sessions(version: Row[Any]) -> dict[str, Any]:
    sessions = (version.inputs or {}).get("sessions")
    return sessions if isinstance(sessions, dict) else {}


def _power(planned: Any) -> list[Any] | None:
    series = planned.get("power_kw") if isinstance(planned, dict) else None
    return series if isinstance(series, list) else None


def _mean(version: Row[Any], series: Any, start: dt.datetime, stop: dt.datetime) -> float:
    """The mean of one of ``version``'s per-step series over ``[start, stop)`` (``NaN`` if not one)."""
    return plan_mean(
        series if isinstance(series, list) else None,
        version.horizon_start,
        dt.timedelta(seconds=version.step_seconds),
        start,
        stop,
    )


def _in_force_series(
    session: Session,
    site_id: str,
    index: pd.DatetimeIndex,
    end: dt.datetime,
    step: dt.timedelta,
    value: Callable[[Row[Any], dt.datetime, dt.datetime], float],
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


def _versions_in_force(session: Session, site_id: str, index: pd.DatetimeIndex) -> list[Row[Any]]:
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
    return [*earlier, *during]


__all__ = [
    "IntervalLike",
    "committed_kw",
    "expected_import_kw",
    "plan_mean",
    "site_committed_kw",
    "vehicle_counterfactual_kw",
]
