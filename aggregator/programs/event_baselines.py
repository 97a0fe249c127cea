"""Each vehicle's baseline for a dispatch event, frozen when the event was first planned with it.

A charging session's counterfactual for event E (what the vehicle would have drawn without E) is
the optimiser's plan for that vehicle without E, **recorded when E was planned**: its ``power_kw`` in
the ``counterfactual`` of the *earliest* :class:`~aggregator.db.models.ScheduleVersion` of its site
that

- lists E in ``inputs["events"]`` (any version row of E: rows are mapped to the event's public id
  through :mod:`aggregator.programs.dispatch_events`),
- planned the session (``inputs["sessions"]`` names it), and
- has a counterfactual for it (a version whose counterfactual solve was refused is skipped, and so,
  with a warning, is one whose stored counterfactual cannot be read:
  :func:`aggregator.control.schedules.read_counterfactual`).

A session that first appears after E was planned (a late arrival) is frozen at the first version
that has both. Later plans re-solve the counterfactual from the current state, and once a plan has
pre-charged a vehicle before E, that fresh counterfactual no longer charges in E's window: the frozen
one still does, so neither the optimiser's DR baseline (:mod:`aggregator.control.groups`) nor
the measurement (:mod:`aggregator.settlement.event_measurement`) loses what pre-charging delivered.

A frozen baseline is an absolute-time series (the freezing version's ``horizon_start`` and step);
read on another grid (:meth:`FrozenBaseline.mean_kw`) a span it does not cover is ``NaN``, and the
callers then use the fresh counterfactual for that span. Only versions whose horizon starts before
E's window ends and at most :data:`LOOKBACK` before it starts are read: no plan horizon is longer.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.control.schedules import ScheduleDataError, planned_sessions, read_counterfactual
from aggregator.db.models import ScheduleVersion
from aggregator.programs.dispatch_events import event_chain

log = logging.getLogger(__name__)

LOOKBACK = dt.timedelta(days=7)
"""How long before an event's window a version's horizon may start and still list the event."""


@dataclass(frozen=True)
class FrozenBaseline:
    """One charging session's power without event ``event_id`` [kW, positive charging], as planned by
    schedule version ``version_id``: ``power_kw[k]`` over ``[horizon_start + k * step, ... + step)``."""

    event_id: int
    """The event's public id."""
    session_id: int
    """``charging_sessions.id``."""
    version_id: int
    """The schedule version it was frozen at."""
    horizon_start: dt.datetime
    step: dt.timedelta
    power_kw: tuple[float, ...]
    """``NaN`` where the counterfactual stored no value."""

    def mean_kw(self, start: dt.datetime, end: dt.datetime) -> float:
        """Time-weighted mean power [kW] over ``[start, end)``; ``NaN`` where not covered."""
        return plan_mean(self.power_kw, self.horizon_start, self.step, start, end)

    def on_grid(self, start: dt.datetime, step: dt.timedelta, n_steps: int) -> list[float]:
        """Mean power [kW] per step of the grid ``start + k * step`` (``NaN`` where not covered)."""
        return [self.mean_kw(start + k * step, start + (k + 1) * step) for k in range(n_steps)]


FrozenBaselines = dict[int, dict[int, FrozenBaseline]]
"""Event public id → charging session id → its frozen baseline."""


def frozen_baselines(
    session: Session,
    site_id: str,
    event_ids: Iterable[int],
    session_ids: Collection[int] | None = None,
) -> FrozenBaselines:
    """The frozen baselines (module docstring) at ``site_id`` of the events ``event_ids`` (public
    ids), for every charging session a version planned with them, or only ``session_ids``.

    Raises :class:`~aggregator.programs.dispatch_events.EventNotFoundError` for an id that is not an event's
    public id. An event with no version listing it yet has no entry.
    """
    found: FrozenBaselines = {}
    for event_id in sorted(set(event_ids)):
        chain = event_chain(session, event_id)
        rows = {version.id for version in chain.versions}
        window_start = min(version.window_start for version in chain.versions)
        window_end = max(version.window_end for version in chain.versions)
        frozen = _frozen_for_event(session, site_id, event_id, rows, window_start, window_end, session_ids)
        if frozen:
            found[event_id] = frozen
    return found


def _frozen_for_event(
    session: Session,
    site_id: str,
    event_id: int,
    rows: set[int],
    window_start: dt.datetime,
    window_end: dt.datetime,
    session_ids: Collection[int] | None,
) -> dict[int, FrozenBaseline]:
    listed = session.execute(
        select(
            ScheduleVersion.id,
            ScheduleVersion.horizon_start,
            ScheduleVersion.step_seconds,
            ScheduleVersion.inputs["events"],
            ScheduleVersion.inputs["sessions"],
        )
        .where(ScheduleVersion.site_id == site_id)
        .where(ScheduleVersion.horizon_start < window_end)
        .where(ScheduleVersion.horizon_start >= window_start - LOOKBACK)
        .order_by(ScheduleVersion.created_at, ScheduleVersion.id)
    ).all()
    frozen: dict[int, FrozenBaseline] = {}
    for version_id, horizon_start, step_seconds, events, planned in listed:
        if not isinstance(events, list) or rows.isdisjoint(e for e in events if isinstance(e, int)):
            continue
        waiting = {
            key: value
            for key, value in planned_sessions(planned).items()
            if value not in frozen and (session_ids is None or value in session_ids)
        }
        if not waiting:
            continue
        try:
            counterfactual = read_counterfactual(
                version_id,
                site_id,
                horizon_start,
                step_seconds,
                session.scalar(
                    select(ScheduleVersion.counterfactual).where(ScheduleVersion.id == version_id)
                ),
            )
        except ScheduleDataError as error:
            log.warning("dispatch event %d: no baseline frozen at an unreadable version: %s", event_id, error)
            continue
        if counterfactual is None:
            continue
        for key, charging_session_id in waiting.items():
            vehicle = counterfactual.vehicle(key)
            if vehicle is not None:
                frozen[charging_session_id] = FrozenBaseline(
                    event_id,
                    charging_session_id,
                    version_id,
                    horizon_start,
                    dt.timedelta(seconds=step_seconds),
                    tuple(float(kw) for kw in vehicle.power_kw),
                )
    return frozen


def plan_mean(
    series: Sequence[float | None] | np.ndarray | None,
    horizon_start: dt.datetime,
    plan_step: dt.timedelta,
    start: dt.datetime,
    end: dt.datetime,
) -> float:
    """Time-weighted mean of a plan's per-step ``series`` [kW] over ``[start, end)``; ``NaN`` if the
    series is missing or does not cover the whole span."""
    if series is None or start < horizon_start:
        return math.nan
    first = int((start - horizon_start) // plan_step)
    last = math.ceil((end - horizon_start) / plan_step)
    if last > len(series):
        return math.nan
    weighted = 0.0
    for k in range(first, last):
        value = series[k]
        if value is None or math.isnan(value):
            return math.nan
        step_start = horizon_start + k * plan_step
        overlap = (min(end, step_start + plan_step) - max(start, step_start)).total_seconds()
        weighted += float(value) * overlap
    return weighted / (end - start).total_seconds()


__all__ = ["LOOKBACK", "FrozenBaseline", "FrozenBaselines", "frozen_baselines", "plan_mean"]
