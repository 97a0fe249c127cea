"""What the aggregator's own plans expected without a dispatch event, frozen when the event was first
planned: each vehicle's baseline, and the site's import besides its vehicles.

The *first plans* of event E at a site are its :class:`~aggregator.db.models.ScheduleVersion` rows, in
the order they were made, that

- list E in ``inputs["events"]`` (any version row of E: rows are mapped to the event's public id
  through :mod:`aggregator.programs.dispatch_events`), and
- have a counterfactual (the plan without the events; a version whose counterfactual solve was
  refused is skipped, and so, with a warning, is one whose stored counterfactual cannot be read:
  :func:`aggregator.control.schedules.read_counterfactual`).

**A vehicle's baseline** (:class:`FrozenBaseline`, :func:`frozen_baselines`) is its ``power_kw`` in
the counterfactual of the earliest first plan that planned its charging session (``inputs["sessions"]``
names it) knowing its state (below), else of the earliest that planned it at all: a session that
first appears after E was planned (a late arrival) is frozen at the first version that has it, or, if
that version assumed its state (its charger had not reported a SoC yet), at the first that knew it.
Later plans re-solve the counterfactual from the current state, and once a plan has pre-charged a
vehicle before E, that fresh counterfactual no longer charges in E's window: the frozen one still does,
so neither the optimiser's DR baseline (:mod:`aggregator.control.groups`) nor the measurement
(:mod:`aggregator.settlement.event_measurement`) loses what pre-charging delivered.

A baseline is only as good as what the plan knew. A plan that *assumed* a vehicle's state of charge,
departure, target or battery (``inputs["assumed"]``, :class:`Assumed`: "no SoC reported; assumed
20 %") planned a vehicle that may not exist: a van that is in fact 90 % full and leaving within 4 h
carries kilowatts of *phantom* baseline. A vehicle no first plan knew keeps the baseline of the first
that planned it, with what was assumed (:attr:`FrozenBaseline.assumed`), and it is not
:attr:`~FrozenBaseline.known`: measurement gives that vehicle no baseline of its own and says why
(:attr:`FrozenBaseline.unknown_reason`), never defaults.

**The site's base load** (:class:`FrozenBaseLoad`, :func:`frozen_base_load`): per interval, what the
earliest first plan whose horizon covers it expected the site to import besides its vehicles (the
counterfactual's ``site_import_kw`` minus every planned vehicle's power): the part of the
``counterfactual`` site baseline that belongs to no vehicle (:mod:`aggregator.settlement.site_baselines`).

A frozen series is absolute in time (its version's ``horizon_start`` and step); read on another grid
(:meth:`FrozenBaseline.mean_kw`) a span it does not cover is ``NaN``. Only versions whose horizon
starts before E's window ends and at most :data:`LOOKBACK` before it starts are read: no plan horizon
is longer.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.control.schedules import (
    ScheduleDataError,
    StoredPlan,
    planned_sessions,
    read_counterfactual,
)
from aggregator.db.models import ScheduleVersion
from aggregator.programs.dispatch_events import event_chain

log = logging.getLogger(__name__)

LOOKBACK = dt.timedelta(days=7)
"""How long before an event's window a version's horizon may start and still list the event."""


class Assumed(enum.StrEnum):
    """What a plan assumed about a charging session instead of knowing it (``inputs["assumed"]``, written by
    :mod:`aggregator.control.session_inputs`)."""

    VEHICLE = "vehicle"
    """No known vehicle: battery and powers are defaults."""
    SOC = "soc"
    """No state of charge reported: the energy in the battery is a default arrival SoC plus what was
    metered."""
    TARGET = "target"
    """No target known: a default SoC."""
    DEPARTURE = "departure"
    """No departure known (a default dwell), or the one known has passed (an assumed overstay)."""


def assumed_inputs(assumed: object) -> dict[str, tuple[Assumed, ...]]:
    """``inputs["assumed"]`` as scenario vehicle id → what the plan assumed for it (values that are
    not an :class:`Assumed` are left out; anything but an object, as versions made before it was
    recorded have, is nothing assumed)."""
    if not isinstance(assumed, Mapping):
        return {}
    known = {member.value: member for member in Assumed}
    found: dict[str, tuple[Assumed, ...]] = {}
    for key, values in assumed.items():
        if isinstance(values, list):
            members = tuple(known[value] for value in values if isinstance(value, str) and value in known)
            if members:
                found[str(key)] = members
    return found


ASSUMED_WORDS = {
    Assumed.VEHICLE: "vehicle",
    Assumed.SOC: "SoC",
    Assumed.TARGET: "target",
    Assumed.DEPARTURE: "departure",
}


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
    assumed: tuple[Assumed, ...] = ()
    """What version ``version_id`` assumed about the vehicle instead of knowing it (empty: known)."""

    @property
    def known(self) -> bool:
        """Whether the plan it was frozen at knew the vehicle's state (nothing :attr:`assumed`)."""
        return not self.assumed

    @property
    def unknown_reason(self) -> str | None:
        """Why it is no baseline (``None`` when :attr:`known`), for statements."""
        if self.known:
            return None
        words = " and ".join(ASSUMED_WORDS[what] for what in self.assumed)
        return (
            f"session {self.session_id}: {words} unknown when event {self.event_id} was first planned "
            f"with it (schedule version {self.version_id} assumed defaults); no baseline of its own"
        )

    def mean_kw(self, start: dt.datetime, end: dt.datetime) -> float:
        """Time-weighted mean power [kW] over ``[start, end)``; ``NaN`` where not covered."""
        return plan_mean(self.power_kw, self.horizon_start, self.step, start, end)

    def on_grid(self, start: dt.datetime, step: dt.timedelta, n_steps: int) -> list[float]:
        """Mean power [kW] per step of the grid ``start + k * step`` (``NaN`` where not covered)."""
        return [self.mean_kw(start + k * step, start + (k + 1) * step) for k in range(n_steps)]


FrozenBaselines = dict[int, dict[int, FrozenBaseline]]
"""Event public id → charging session id → its frozen baseline."""


@dataclass(frozen=True)
class PlanPart:
    """One first plan's per-step series [kW]: ``kw[k]`` over ``[horizon_start + k * step, ... + step)``."""

    version_id: int
    horizon_start: dt.datetime
    step: dt.timedelta
    kw: tuple[float, ...]

    def mean_kw(self, start: dt.datetime, end: dt.datetime) -> float:
        return plan_mean(self.kw, self.horizon_start, self.step, start, end)


@dataclass(frozen=True)
class FrozenBaseLoad:
    """What the first plans of event ``event_id`` expected ``site_id`` to import besides its vehicles
    [kW]; :meth:`mean_kw` reads the earliest of ``parts`` that covers a span."""

    event_id: int
    site_id: str
    parts: tuple[PlanPart, ...]
    """Oldest first."""

    @property
    def version_ids(self) -> tuple[int, ...]:
        return tuple(part.version_id for part in self.parts)

    def mean_kw(self, start: dt.datetime, end: dt.datetime) -> float:
        """Mean import besides the vehicles [kW] over ``[start, end)`` by the earliest plan that covers
        it; ``NaN`` if none does."""
        for part in self.parts:
            value = part.mean_kw(start, end)
            if math.isfinite(value):
                return value
        return math.nan


def frozen_baselines(
    session: Session,
    site_id: str,
    event_ids: Iterable[int],
    session_ids: Collection[int] | None = None,
) -> FrozenBaselines:
    """The frozen baselines (module docstring) at ``site_id`` of the events ``event_ids`` (public
    ids), for every charging session a first plan planned, or only ``session_ids``. A session no first
    plan knew the state of has the baseline of the first that planned it, not
    :attr:`~FrozenBaseline.known`.

    Raises :class:`~aggregator.programs.dispatch_events.EventNotFoundError` for an id that is not an event's
    public id. An event with no version listing it yet has no entry.
    """
    found: FrozenBaselines = {}
    for event_id in sorted(set(event_ids)):
        frozen: dict[int, FrozenBaseline] = {}
        for plan in _first_plans(session, site_id, event_id):
            waiting = {
                key: value
                for key, value in plan.sessions.items()
                if (value not in frozen or (not frozen[value].known and not plan.assumed.get(key)))
                and (session_ids is None or value in session_ids)
            }
            counterfactual = plan.counterfactual() if waiting else None
            if counterfactual is None:
                continue
            for key, charging_session_id in waiting.items():
                vehicle = counterfactual.vehicle(key)
                if vehicle is not None:
                    frozen[charging_session_id] = FrozenBaseline(
                        event_id,
                        charging_session_id,
                        plan.version_id,
                        counterfactual.horizon_start,
                        counterfactual.step,
                        tuple(float(kw) for kw in vehicle.power_kw),
                        plan.assumed.get(key, ()),
                    )
        if frozen:
            found[event_id] = frozen
    return found


def frozen_base_load(
    session: Session, site_id: str, event_id: int, start: dt.datetime, end: dt.datetime
) -> FrozenBaseLoad:
    """The site's import besides its vehicles without event ``event_id`` (public id), from its first
    plans (module docstring), reading plans until ``[start, end)`` is covered. No first plan: no parts
    (every span ``NaN``)."""
    parts: list[PlanPart] = []
    for plan in _first_plans(session, site_id, event_id):
        counterfactual = plan.counterfactual()
        if counterfactual is None:
            continue
        other = np.array(counterfactual.site_import_kw, dtype=float)
        for vehicle in counterfactual.vehicles:
            power = np.full(len(other), np.nan)
            values = np.asarray(vehicle.power_kw, dtype=float)[: len(other)]
            power[: len(values)] = values
            other = other - power
        part = PlanPart(
            plan.version_id, counterfactual.horizon_start, counterfactual.step, tuple(float(v) for v in other)
        )
        parts.append(part)
        if _covered(parts, start, end, counterfactual.step):
            break
    return FrozenBaseLoad(event_id, site_id, tuple(parts))


def _covered(parts: Sequence[PlanPart], start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> bool:
    moment = start
    while moment < end:
        stop = min(moment + step, end)
        if not any(math.isfinite(part.mean_kw(moment, stop)) for part in parts):
            return False
        moment = stop
    return True


@dataclass(frozen=True)
class _FirstPlan:
    """A version that lists the event; its counterfactual is read when asked for."""

    version_id: int
    site_id: str
    event_id: int
    horizon_start: dt.datetime
    step_seconds: int
    sessions: dict[str, int]
    assumed: dict[str, tuple[Assumed, ...]]
    session: Session

    def counterfactual(self) -> StoredPlan | None:
        """The version's counterfactual; ``None`` when it has none or it cannot be read (logged)."""
        stored = self.session.scalar(
            select(ScheduleVersion.counterfactual).where(ScheduleVersion.id == self.version_id)
        )
        try:
            return read_counterfactual(
                self.version_id, self.site_id, self.horizon_start, self.step_seconds, stored
            )
        except ScheduleDataError as error:
            log.warning(
                "dispatch event %d: no baseline frozen at an unreadable version: %s", self.event_id, error
            )
            return None


def _first_plans(session: Session, site_id: str, event_id: int) -> Iterator[_FirstPlan]:
    """The versions of the site that list the event, in the order they were made (the first plans
    are those of them with a counterfactual: :meth:`_FirstPlan.counterfactual`)."""
    chain = event_chain(session, event_id)
    rows = {version.id for version in chain.versions}
    window_start = min(version.window_start for version in chain.versions)
    window_end = max(version.window_end for version in chain.versions)
    listed = session.execute(
        select(
            ScheduleVersion.id,
            ScheduleVersion.horizon_start,
            ScheduleVersion.step_seconds,
            ScheduleVersion.inputs["events"],
            ScheduleVersion.inputs["sessions"],
            ScheduleVersion.inputs["assumed"],
        )
        .where(ScheduleVersion.site_id == site_id)
        .where(ScheduleVersion.horizon_start < window_end)
        .where(ScheduleVersion.horizon_start >= window_start - LOOKBACK)
        .order_by(ScheduleVersion.created_at, ScheduleVersion.id)
    ).all()
    for version_id, horizon_start, step_seconds, events, planned, assumed in listed:
        if not isinstance(events, list) or rows.isdisjoint(e for e in events if isinstance(e, int)):
            continue
        yield _FirstPlan(
            version_id,
            site_id,
            event_id,
            horizon_start,
            step_seconds,
            planned_sessions(planned),
            assumed_inputs(assumed),
            session,
        )


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


__all__ = [
    "LOOKBACK",
    "Assumed",
    "FrozenBaseLoad",
    "FrozenBaseline",
    "FrozenBaselines",
    "PlanPart",
    "assumed_inputs",
    "frozen_base_load",
    "frozen_baselines",
    "plan_mean",
]
