"""Local safety control at the depot: the site connection limits hold whatever the centre asks.

Pure and clocked from outside: :func:`allocate` maps what is known now (limits, base load, the
centre's setpoints, each EVSE's measured draw and session) to the power each EVSE may use;
:class:`SafetyController` adds the memory of the current mode and reports mode changes as events.

Guarantees, with ``H = import limit - base`` and ``E = export limit + base`` [kW]:

- the charging powers sum to at most ``max(H, 0)`` and the discharging powers to at least
  ``-max(E, 0)``; no credit is taken for a vehicle's opposite flow (a discharging car may stop any
  moment), so ``base + Σ power`` stays within ``[-export limit, import limit]`` whenever the base load
  alone does;
- NORMAL mode (at least one fresh setpoint): each EVSE gets its setpoint clipped to its session's
  limits; when the charging setpoints exceed ``H`` they are scaled down by one common factor, except
  that a vehicle drawing less than its share (measured + ``ramp_margin_kw``) is held there and the
  room it leaves goes to the others, never beyond their setpoints. Plugged-in vehicles the centre has
  not planned yet share what is left, earliest departure first;
- FALLBACK mode (no fresh setpoint: the centre is unreachable or its schedule ran out): no
  discharge, earliest-deadline-first charging within ``H``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

EPS_KW = 1e-9


class Mode(StrEnum):
    NORMAL = "normal"
    """Following the centre's setpoints, within the site limits."""
    FALLBACK = "fallback"
    """No fresh schedule: charge only, earliest departure first, within the site limits."""


@dataclass(frozen=True)
class SiteLimits:
    import_limit_kw: float
    export_limit_kw: float = 0.0


@dataclass(frozen=True)
class Setpoint:
    """The centre's signed power for one EVSE [kW] (negative: discharge).

    Valid in ``[valid_from, valid_until)``."""

    evse_id: str
    power_kw: float
    valid_from: dt.datetime
    valid_until: dt.datetime

    def is_fresh(self, now: dt.datetime) -> bool:
        return self.valid_from <= now < self.valid_until


@dataclass(frozen=True)
class Session:
    """What the gateway knows of the vehicle plugged into an EVSE."""

    departure: dt.datetime | None
    energy_needed_kwh: float
    max_charge_kw: float
    max_discharge_kw: float = 0.0


@dataclass(frozen=True)
class EvseState:
    evse_id: str
    session: Session | None = None
    """None when nothing is plugged in."""
    measured_kw: float | None = None
    """The EVSE's latest metered power (signed), None if not yet known."""


@dataclass(frozen=True)
class ModeChange:
    """An event for the log and the centre: the gateway entered ``mode`` at ``since`` because ``reason``."""

    mode: Mode
    since: dt.datetime
    reason: str


@dataclass(frozen=True)
class Allocation:
    mode: Mode
    reason: str
    power_kw: dict[str, float]
    """EVSE id -> allowed signed power [kW]; every EVSE given appears."""

    @property
    def total_kw(self) -> float:
        return sum(self.power_kw.values())


def allocate(
    now: dt.datetime,
    limits: SiteLimits,
    base_load_kw: float,
    evses: Iterable[EvseState],
    setpoints: Mapping[str, Setpoint],
    *,
    ramp_margin_kw: float = 1.0,
) -> Allocation:
    """The power each EVSE may use now (see the module docstring for the rules)."""
    evses = list(evses)
    import_room = max(limits.import_limit_kw - base_load_kw, 0.0)
    export_room = max(limits.export_limit_kw + base_load_kw, 0.0)
    fresh = {k: s for k, s in setpoints.items() if s.is_fresh(now)}
    power = {e.evse_id: 0.0 for e in evses}
    plugged = [e for e in evses if e.session is not None]

    if not fresh:
        reason = _stale_reason(now, setpoints)
        wanted = {e.evse_id: _wanted_kw(e) for e in plugged}
        power.update(_edf(plugged, wanted, import_room, ramp_margin_kw))
        return Allocation(Mode.FALLBACK, reason, power)

    planned = [e for e in plugged if e.evse_id in fresh]
    unplanned = [e for e in plugged if e.evse_id not in fresh]
    desired = {e.evse_id: _clip_to_session(fresh[e.evse_id].power_kw, e) for e in planned}
    charging = [e for e in planned if desired[e.evse_id] > 0]
    discharging = [e for e in planned if desired[e.evse_id] < 0]

    caps = {e.evse_id: _measured_cap(e, desired[e.evse_id], ramp_margin_kw) for e in charging}
    power.update(_scale(desired, caps, [e.evse_id for e in charging], import_room))
    neg = {e.evse_id: -desired[e.evse_id] for e in discharging}
    power.update({k: -v for k, v in _scale(neg, neg, list(neg), export_room).items()})

    left = import_room - sum(power[e.evse_id] for e in charging)
    if unplanned and left > EPS_KW:
        wanted = {e.evse_id: _wanted_kw(e) for e in unplanned}
        power.update(_edf(unplanned, wanted, left, ramp_margin_kw))
    return Allocation(Mode.NORMAL, f"following {len(fresh)} fresh setpoint(s)", power)


def _stale_reason(now: dt.datetime, setpoints: Mapping[str, Setpoint]) -> str:
    if not setpoints:
        return "no schedule from the centre"
    last = max(s.valid_until for s in setpoints.values())
    if last <= now:
        return f"schedule ran out at {last.isoformat()}"
    first = min(s.valid_from for s in setpoints.values())
    return f"schedule not valid before {first.isoformat()}"


def _clip_to_session(power_kw: float, evse: EvseState) -> float:
    session = evse.session
    assert session is not None
    high = session.max_charge_kw if session.energy_needed_kwh > 0 else 0.0
    return min(max(power_kw, -session.max_discharge_kw), high)


def _wanted_kw(evse: EvseState) -> float:
    session = evse.session
    assert session is not None
    return session.max_charge_kw if session.energy_needed_kwh > 0 else 0.0


def _measured_cap(evse: EvseState, wanted_kw: float, margin_kw: float) -> float:
    """What a charging vehicle can use now: its measured draw plus a ramp margin, at most ``wanted_kw``."""
    if evse.measured_kw is None:
        return wanted_kw
    return min(wanted_kw, max(evse.measured_kw, 0.0) + margin_kw)


def _scale(
    desired: Mapping[str, float], caps: Mapping[str, float], ids: list[str], room: float
) -> dict[str, float]:
    """Scale ``desired`` (≥ 0) down by one factor so the sum fits ``room``; a vehicle whose ``cap`` is
    below its scaled share keeps only its cap and the rest of the room goes to the others."""
    if sum(desired[i] for i in ids) <= room:
        return {i: desired[i] for i in ids}
    # water-filling on the factor: vehicles saturate at cap_i / desired_i, in increasing order
    order = sorted((i for i in ids if desired[i] > 0), key=lambda i: caps[i] / desired[i])
    out = {i: 0.0 for i in ids}
    remaining_room, remaining_desire = room, sum(desired[i] for i in order)
    factor = 0.0
    for n, i in enumerate(order):
        saturation = caps[i] / desired[i]
        factor = remaining_room / remaining_desire if remaining_desire > 0 else 0.0
        if saturation <= factor:
            out[i] = caps[i]
            remaining_room -= caps[i]
            remaining_desire -= desired[i]
            continue
        for j in order[n:]:
            out[j] = min(factor * desired[j], caps[j])
        break
    return out


def _edf(
    evses: list[EvseState], wanted: Mapping[str, float], room: float, margin_kw: float
) -> dict[str, float]:
    """Earliest departure first: each vehicle in turn takes what it can use from what is left.

    When all the wants fit, everyone gets theirs; otherwise a vehicle drawing less than it wants is
    held at its measured draw plus ``margin_kw`` so the next one gets the rest.
    """
    if sum(wanted.values()) <= room:
        return dict(wanted)
    out: dict[str, float] = {}
    order = sorted(evses, key=lambda e: _departure_key(e.session))
    for e in order:
        give = min(_measured_cap(e, wanted[e.evse_id], margin_kw), max(room, 0.0))
        out[e.evse_id] = give
        room -= give
    return out


def _departure_key(session: Session | None) -> float:
    if session is None or session.departure is None:
        return math.inf
    return session.departure.timestamp()


@dataclass
class SafetyController:
    """:func:`allocate` with a memory: the current mode, since when and why, and its changes as events.

    ``clock`` gives "now" (inject a simulated clock to run faster than real time).
    """

    limits: SiteLimits
    clock: Callable[[], dt.datetime]
    ramp_margin_kw: float = 1.0
    mode: Mode | None = None
    since: dt.datetime | None = None
    reason: str = ""
    events: list[ModeChange] = field(default_factory=list)
    """Every mode change so far (the caller may drain it)."""

    def step(
        self, base_load_kw: float, evses: Iterable[EvseState], setpoints: Mapping[str, Setpoint]
    ) -> tuple[Allocation, ModeChange | None]:
        """Allocate now; returns the allocation and the mode change it caused, if any."""
        now = self.clock()
        allocation = allocate(
            now, self.limits, base_load_kw, evses, setpoints, ramp_margin_kw=self.ramp_margin_kw
        )
        change = None
        if allocation.mode is not self.mode:
            reason = allocation.reason
            if allocation.mode is Mode.NORMAL and self.since is not None:
                reason = f"fresh schedule received after {now - self.since} in fallback"
            change = ModeChange(allocation.mode, now, reason)
            self.mode, self.since, self.reason = allocation.mode, now, reason
            self.events.append(change)
        return allocation, change
