"""Local safety control at the depot: the site connection limits hold whatever the centre asks.

Pure and clocked from outside: :func:`allocate` maps what is known now (limits, base load, the
centre's setpoints, each EVSE's measured draw and session) to the power each EVSE may use;
:class:`SafetyController` adds the memory of the current mode and reports mode changes as events.

Guarantees, with ``H = import limit - base - fixed import - idle reserve`` and
``E = export limit + base - fixed export`` [kW]:

- the charging powers sum to at most ``max(H, 0)`` and the discharging powers to at least
  ``-max(E, 0)``; no credit is taken for a vehicle's opposite flow (a discharging car may stop any
  moment), so ``base + idle reserve + fixed + Σ power`` stays within ``[-export limit, import limit]``
  whenever the base load alone does. The idle reserve is what vehicles plugging in at idle chargers
  may draw before the gateway hears of them (the gateway sizes it, :mod:`site_gateway.reserve`); the
  fixed import and export are what EVSEs the gateway cannot steer now may draw and give back (a
  charger not connected, a vehicle the gateway has not heard of yet: their installed limits,
  :mod:`site_gateway.installed`). Neither enlarges the export room: a vehicle that may draw need
  not, so only the metered base load counts for export;
- NORMAL mode (at least one fresh setpoint): plugged-in vehicles the centre has not planned yet (just
  arrived) first get back up to ``arrival_reserve_kw`` each, the reserve their idle charger kept for
  them, earliest departure first. Each planned EVSE gets its setpoint clipped to its session's limits;
  when the charging setpoints exceed what is left of ``H`` they are scaled down by one common factor,
  except that a vehicle drawing less than its share (measured + ``ramp_margin_kw``) is held there and
  the room it leaves goes to the others, never beyond their setpoints. The unplanned vehicles share
  what is then left, earliest departure first;
- FALLBACK mode (no fresh setpoint: the centre is unreachable or its schedule ran out): no
  discharge, earliest-deadline-first charging within ``H``.

Every cap that meets what was asked of an EVSE (the centre's setpoint, or in fallback and for
unplanned vehicles what the vehicle wants) comes back in :attr:`Allocation.caps` with its
:class:`~wire.contract.LimitReason`, for the centre's next plan: the lowest bound that binds or is
just met wins (the session's maximum is reported when the setpoint meets it, so a plan that learnt it
keeps it). A site-limit cap stays reported while the centre asks for at least it and the site is still
full, so a plan that took the cap in is not told the limit went away (see :func:`allocate`, ``held``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from wire.contract import LimitReason

EPS_KW = 1e-9
CAP_TOLERANCE_KW = 0.1
"""A cap is reported when it is within this of what was asked, or lower."""


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
class Cap:
    """The most power an EVSE may have now [kW, ≥ 0] in one direction, and why."""

    limit_kw: float
    reason: LimitReason
    discharge: bool = False
    """``limit_kw`` bounds discharging; else charging."""


@dataclass(frozen=True)
class Allocation:
    mode: Mode
    reason: str
    power_kw: dict[str, float]
    """EVSE id -> allowed signed power [kW]; every EVSE given appears."""
    caps: dict[str, Cap] = field(default_factory=dict)
    """EVSE id -> the cap that meets what was asked of it; EVSEs that nothing but their setpoint
    limits do not appear."""

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
    idle_reserve_kw: float = 0.0,
    arrival_reserve_kw: float = 0.0,
    held: Mapping[str, Cap] | None = None,
    fixed_import_kw: float = 0.0,
    fixed_export_kw: float = 0.0,
) -> Allocation:
    """The power each EVSE may use now (see the module docstring for the rules).

    ``idle_reserve_kw``: room kept for vehicles that may start at idle chargers [kW], taken from the
    import room like base load. ``arrival_reserve_kw``: what each plugged-in vehicle the centre has
    not planned yet gets before the planned ones (NORMAL mode) [kW]. ``held``: the caps reported at the
    previous step; a site-limit cap among them stays while the centre asks for at least it and the
    site's import (or export) room is used up. ``fixed_import_kw`` / ``fixed_export_kw``: what EVSEs
    not in ``evses`` may draw / give back [kW, ≥ 0], taken from the import / export room.
    """
    evses = list(evses)
    room_kw = max(limits.import_limit_kw - base_load_kw - max(fixed_import_kw, 0.0), 0.0)
    import_room = max(room_kw - max(idle_reserve_kw, 0.0), 0.0)
    export_room = max(limits.export_limit_kw + base_load_kw - max(fixed_export_kw, 0.0), 0.0)
    fresh = {k: s for k, s in setpoints.items() if s.is_fresh(now)}
    power = {e.evse_id: 0.0 for e in evses}
    plugged = [e for e in evses if e.session is not None]

    if not fresh:
        reason = _stale_reason(now, setpoints)
        wanted = {e.evse_id: _wanted_kw(e) for e in plugged}
        power.update(_edf(plugged, wanted, import_room, ramp_margin_kw))
        caps = _caps(
            plugged,
            {e.evse_id: _max_kw(e) for e in plugged},
            wanted,
            power,
            {e.evse_id: LimitReason.FALLBACK for e in plugged},
        )
        return Allocation(Mode.FALLBACK, reason, power, caps)

    planned = [e for e in plugged if e.evse_id in fresh]
    unplanned = [e for e in plugged if e.evse_id not in fresh]
    arrivals = {e.evse_id: min(_wanted_kw(e), max(arrival_reserve_kw, 0.0)) for e in unplanned}
    power.update(_edf(unplanned, arrivals, import_room, ramp_margin_kw))
    handed_back = sum(power[e.evse_id] for e in unplanned)

    desired = {e.evse_id: _clip_to_session(fresh[e.evse_id].power_kw, e) for e in planned}
    charging = [e.evse_id for e in planned if desired[e.evse_id] > 0]
    discharging = [e.evse_id for e in planned if desired[e.evse_id] < 0]
    by_id = {e.evse_id: e for e in planned}
    measured = {i: _measured_cap(by_id[i], desired[i], ramp_margin_kw) for i in charging}
    power.update(_scale(desired, measured, charging, import_room - handed_back))
    neg = {i: -desired[i] for i in discharging}
    power.update({k: -v for k, v in _scale(neg, neg, discharging, export_room).items()})

    left = import_room - handed_back - sum(power[i] for i in charging)
    if unplanned and left > EPS_KW:
        more = {e.evse_id: _wanted_kw(e) - power[e.evse_id] for e in unplanned}
        drawing_more = [_beyond(e, power[e.evse_id]) for e in unplanned]
        extra = _edf(drawing_more, more, left, ramp_margin_kw)
        for e in unplanned:
            power[e.evse_id] += extra[e.evse_id]

    # Why each EVSE gets no more than it does: a reserve (with neither the idle reserve nor the
    # arrivals' it would get more) or the site's limit; arrivals on exactly their reserve run on it.
    unreserved = _scale(desired, measured, charging, room_kw)
    short = {i: LimitReason.SITE_LIMIT for i in desired}
    short |= {i: LimitReason.RESERVE for i in charging if unreserved[i] > power[i] + CAP_TOLERANCE_KW}
    for e in unplanned:
        on_reserve = abs(power[e.evse_id] - arrivals[e.evse_id]) <= CAP_TOLERANCE_KW
        short[e.evse_id] = LimitReason.RESERVE if on_reserve else LimitReason.SITE_LIMIT
    asked = {i: fresh[i].power_kw for i in desired} | {e.evse_id: _max_kw(e) for e in unplanned}
    clipped = desired | {e.evse_id: _wanted_kw(e) for e in unplanned}
    caps = _caps(plugged, asked, clipped, power, short)
    # A site-limit cap the centre planned to (it asks for at least it) stays while the site is full:
    # the plan that took it in is not told the limit went away only because it now fits.
    import_full = sum(p for p in power.values() if p > 0) >= import_room - CAP_TOLERANCE_KW
    export_full = -sum(p for p in power.values() if p < 0) >= export_room - CAP_TOLERANCE_KW
    for i, before in (held or {}).items():
        if i in caps or i not in desired or before.reason is not LimitReason.SITE_LIMIT:
            continue
        discharge = asked[i] < 0
        full = export_full if discharge else import_full
        same_way = asked[i] != 0 and before.discharge is discharge
        if same_way and full and abs(asked[i]) >= before.limit_kw - CAP_TOLERANCE_KW:
            caps[i] = Cap(abs(power[i]), LimitReason.SITE_LIMIT, discharge)
    return Allocation(Mode.NORMAL, f"following {len(fresh)} fresh setpoint(s)", power, caps)


def _caps(
    evses: list[EvseState],
    asked: Mapping[str, float],
    clipped: Mapping[str, float],
    got: Mapping[str, float],
    short: Mapping[str, LimitReason],
) -> dict[str, Cap]:
    """Each EVSE's cap (:func:`_cap`), for those that have one."""
    caps = {}
    for e in evses:
        i = e.evse_id
        if (cap := _cap(e, asked[i], clipped[i], got[i], short[i])) is not None:
            caps[i] = cap
    return caps


def _cap(
    evse: EvseState, asked_kw: float, clipped_kw: float, got_kw: float, short: LimitReason
) -> Cap | None:
    """The cap that meets ``asked_kw`` (signed), in its direction: the lowest of the session's bounds
    and, when the EVSE got less than ``clipped_kw`` (``asked_kw`` within the session's bounds), what
    it got, for ``short``; only bounds that bind or are just met count. ``None`` when none does."""
    session = evse.session
    assert session is not None
    if asked_kw == 0:
        return None
    discharge = asked_kw < 0
    sign = -1.0 if discharge else 1.0
    asked, clipped, got = sign * asked_kw, sign * clipped_kw, max(sign * got_kw, 0.0)
    if discharge:
        bounds = [Cap(session.max_discharge_kw, LimitReason.CHARGER_MAX, discharge=True)]
    else:
        bounds = [Cap(session.max_charge_kw, LimitReason.CHARGER_MAX)]
        if session.energy_needed_kwh <= 0:
            bounds.append(Cap(0.0, LimitReason.ENERGY_REQUEST_MET))
    if got < clipped - CAP_TOLERANCE_KW:
        bounds.append(Cap(got, short, discharge))
    meeting = [b for b in bounds if b.limit_kw <= asked + CAP_TOLERANCE_KW]
    return min(meeting, key=lambda b: b.limit_kw) if meeting else None


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


def _max_kw(evse: EvseState) -> float:
    """The most the session's vehicle takes [kW]: what a vehicle nobody planned asks for."""
    assert evse.session is not None
    return evse.session.max_charge_kw


def _wanted_kw(evse: EvseState) -> float:
    session = evse.session
    assert session is not None
    return session.max_charge_kw if session.energy_needed_kwh > 0 else 0.0


def _beyond(evse: EvseState, given_kw: float) -> EvseState:
    """``evse`` as seen beyond the ``given_kw`` it already has: its draw above that."""
    if evse.measured_kw is None:
        return evse
    return dataclasses.replace(evse, measured_kw=max(evse.measured_kw - given_kw, 0.0))


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
    caps: dict[str, Cap] = field(default_factory=dict)
    """The caps of the latest step (held over to the next, see :func:`allocate`)."""

    def step(
        self,
        base_load_kw: float,
        evses: Iterable[EvseState],
        setpoints: Mapping[str, Setpoint],
        *,
        idle_reserve_kw: float = 0.0,
        arrival_reserve_kw: float = 0.0,
        fixed_import_kw: float = 0.0,
        fixed_export_kw: float = 0.0,
    ) -> tuple[Allocation, ModeChange | None]:
        """Allocate now; returns the allocation and the mode change it caused, if any."""
        now = self.clock()
        allocation = allocate(
            now,
            self.limits,
            base_load_kw,
            evses,
            setpoints,
            ramp_margin_kw=self.ramp_margin_kw,
            idle_reserve_kw=idle_reserve_kw,
            arrival_reserve_kw=arrival_reserve_kw,
            held=self.caps,
            fixed_import_kw=fixed_import_kw,
            fixed_export_kw=fixed_export_kw,
        )
        self.caps = allocation.caps
        change = None
        if allocation.mode is not self.mode:
            reason = allocation.reason
            if allocation.mode is Mode.NORMAL and self.since is not None:
                reason = f"fresh schedule received after {now - self.since} in fallback"
            change = ModeChange(allocation.mode, now, reason)
            self.mode, self.since, self.reason = allocation.mode, now, reason
            self.events.append(change)
        return allocation, change
