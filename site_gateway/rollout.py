"""How an allocation reaches the chargers without the site passing its limits on the way, counted at
the meter: every EVSE at what it may draw (:mod:`site_gateway.installed`), not at what the gateway
believes it draws.

- exposure (:func:`exposure`): an EVSE the gateway cannot steer now counts at what it may draw, taken
  from the room like base load: a charger not connected (whatever it was running on, until its
  TxProfile expires), a vehicle at a connected charger the gateway has not heard of yet (a TxProfile
  of an earlier process, say), every listed charger never heard of at all (at the full reserve it
  is sized for). So after a restart every known charger, listed or recorded, counts at its last
  installed limit until it reports otherwise: a new profile confirmed, its transaction's end;
- waves (:class:`Rollout`): reductions first, then increases, so that while chargers move from the
  old allocation to the new one the site stays within its limits; when no order can pass them, all
  at once. A reduction the charger did not take (not connected, refused, no answer) keeps counting
  at its old limit until that expires: the increases that follow are clipped to what then fits,
  shared by one factor above what each already holds, and the rest waits for a later step. Export
  gets the same care: a longer discharge is an increase;
- validity: a TxProfile at or above its charger's TxDefaultProfile is valid for
  ``schedule_stale_after_s`` (V), one below it for ``4 V``; each is renewed half-way through while the
  same power is still wanted. So if the gateway is lost every EVSE draws at most what it was counted
  at: one held above its default falls back to it after at most V, one held below (a vehicle planned
  low, a discharge) keeps its profile until every one above has expired, then falls back to its
  default too; once all have expired every charger runs on its TxDefaultProfile, at most the full
  reserve, which every listed charger together fits within the import limit (single-EVSE chargers;
  a site load that grows meanwhile is not the gateway's to bound).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from site_gateway.clock import Clock, wait_event
from site_gateway.evses import CHANGE_THRESHOLD_KW, EvseView, profile_cap
from site_gateway.installed import InstalledLimits
from site_gateway.ocpp.profiles import OutcomeStatus, ProfileOutcome
from site_gateway.ocpp.server import OcppServer
from site_gateway.safety import SiteLimits
from wire.contract import AckStatus, EvseOutcome, evse_key

log = logging.getLogger(__name__)

EPS_KW = 1e-6
BELOW_DEFAULT_VALIDITY = 4
"""A TxProfile below its charger's default is valid this many times ``schedule_stale_after_s``."""


@dataclass(frozen=True)
class Exposure:
    """What the EVSEs the gateway cannot steer now may draw and give back [kW, ≥ 0]."""

    import_kw: float = 0.0
    export_kw: float = 0.0
    held: dict[str, tuple[float, float]] = field(default_factory=dict)
    """EVSE key -> (import, export) it counts at, for the EVSEs with a known or recorded session."""
    online: frozenset[str] = frozenset()
    """The chargers connected when it was worked out: their sessions are steered."""


def exposure(
    now: dt.datetime,
    *,
    chargers: Iterable[str],
    connected: Collection[str],
    evses: Mapping[str, EvseView],
    installed: InstalledLimits,
    default_kw: Callable[[str], float],
) -> Exposure:
    """The EVSEs of every known charger (``chargers``: the listed ones; and every one recorded, seen
    or connected) that no allocation steers: all of a charger not connected, and at a connected
    one those without a session the gateway knows, beyond the TxDefaultProfile the idle reserve
    already counts for them (:meth:`~site_gateway.reserve.IdleReserve.held_kw`)."""
    known = set(chargers) | installed.chargers() | {v.charger_id for v in evses.values()} | set(connected)
    total_import = total_export = 0.0
    held: dict[str, tuple[float, float]] = {}
    for cp in sorted(known):
        viewed = {v.evse_id for v in evses.values() if v.charger_id == cp}
        recorded = installed.evse_ids(cp)
        ids = sorted(viewed | recorded) or [1]
        default = default_kw(cp)
        online = cp in connected
        reserve_counted = set(viewed) if viewed else {ids[0]}  # as the idle reserve counts EVSEs
        for evse_id in ids:
            key = evse_key(cp, evse_id)
            view = evses.get(key)
            busy = view is not None and view.transaction_id is not None
            if online and busy:
                continue  # steered by the allocation
            imp, exp = installed.bound(cp, evse_id, now, default)
            if online and evse_id in reserve_counted:
                imp = max(imp - default, 0.0)
            total_import += imp
            total_export += exp
            if busy or evse_id in recorded:
                held[key] = (imp, exp)
    return Exposure(total_import, total_export, held, frozenset(connected))


def unsteered_outcomes(
    fixed: Exposure, evses: Mapping[str, EvseView], steered: Collection[str]
) -> dict[str, EvseOutcome]:
    """Sessions whose charger is not connected: not applied, and counted at what they may draw."""
    outcomes = {}
    for key, (import_kw, export_kw) in fixed.held.items():
        view = evses.get(key)
        if view is None or view.transaction_id is None or key in steered:
            continue
        exported = f" (export {export_kw:.2f} kW)" if export_kw > 0 else ""
        outcomes[key] = EvseOutcome(
            charger_id=view.charger_id,
            evse_id=view.evse_id,
            status=AckStatus.REJECTED,
            detail=f"charger not connected: counted at its installed limit, {import_kw:.2f} kW{exported}",
        )
    return outcomes


@dataclass(frozen=True)
class Push:
    """One TxProfile sent: the EVSE, the signed power sent [kW] and what became of it."""

    view: EvseView
    power_kw: float
    outcome: ProfileOutcome


class Rollout:
    """Sends an allocation's changes in waves within the site's limits (module docstring)."""

    def __init__(
        self,
        *,
        ocpp: OcppServer,
        installed: InstalledLimits,
        default_kw: Callable[[str], float],
        limits: SiteLimits,
        validity_s: float,
        charger_response_s: float,
        metered: asyncio.Event,
        clock: Clock,
        site_id: str,
    ) -> None:
        """``default_kw``: a charger's TxDefaultProfile limit; ``metered``: set on every meter reading."""
        self._ocpp = ocpp
        self._installed = installed
        self._default_kw = default_kw
        self._limits = limits
        self._validity_s = validity_s
        self._charger_response_s = charger_response_s
        self._metered = metered
        self._clock = clock
        self._site_id = site_id

    def validity(self, view: EvseView, power_kw: float) -> dt.timedelta:
        """How long a TxProfile of ``power_kw`` for ``view`` is valid (module docstring)."""
        below = power_kw < self._default_kw(view.charger_id) - CHANGE_THRESHOLD_KW
        return dt.timedelta(seconds=self._validity_s * (BELOW_DEFAULT_VALIDITY if below else 1))

    def bound(self, view: EvseView, now: dt.datetime) -> tuple[float, float]:
        """(import, export) [kW]: what the EVSE may draw and give back now."""
        default = self._default_kw(view.charger_id)
        return self._installed.bound(view.charger_id, view.evse_id, now, default)

    async def apply(
        self,
        allowed: Mapping[str, float],
        steered: Mapping[str, EvseView],
        now: dt.datetime,
        *,
        base_kw: float,
        fixed: Exposure,
        reserve_kw: float,
    ) -> tuple[list[Push], dict[str, float]]:
        """Send the ``steered`` EVSEs whose ``allowed`` power [kW] changed their new limits, in waves
        within the site's limits. Returns the pushes and, for the increases clipped to what fits,
        the power each was given instead [kW]."""
        bounds = {key: self.bound(view, now) for key, view in steered.items()}
        changed = {
            key: power
            for key, power in allowed.items()
            if key in steered and steered[key].needs_limit(power, now)
        }
        import_room = self._limits.import_limit_kw - base_kw - fixed.import_kw - reserve_kw
        export_room = self._limits.export_limit_kw + base_kw - fixed.export_kw
        transient_import = sum(max(b[0], changed.get(k, 0.0)) for k, b in bounds.items())
        transient_export = sum(max(b[1], -changed.get(k, 0.0)) for k, b in bounds.items())
        if transient_import <= import_room + EPS_KW and transient_export <= export_room + EPS_KW:
            return await self._push_all(steered, changed, now), {}  # no order can pass the limits
        lower = {
            k: p
            for k, p in changed.items()
            if max(p, 0.0) <= bounds[k][0] + EPS_KW and -p <= bounds[k][1] + EPS_KW
        }
        pushes = await self._push_all(steered, lower, now)
        await self._reductions_taken_effect([p for p in pushes if p.outcome.is_ok], since=now)
        # What each EVSE may draw now that the reductions are answered: one not taken counts as before.
        after = {key: self.bound(view, now) for key, view in steered.items()}
        higher = {k: p for k, p in changed.items() if k not in lower}
        clipped = _clip(higher, after, import_room, export_room)
        sending = {k: p for k, p in clipped.items() if steered[k].needs_limit(p, now)}
        pushes += await self._push_all(steered, sending, now)
        granted = {k: p for k, p in clipped.items() if abs(p - higher[k]) > EPS_KW}
        if granted:
            log.warning(
                "gateway %s: %d increase(s) held back: reductions not taken count at their old limits",
                self._site_id,
                len(granted),
            )
        return pushes, granted

    async def _push_all(
        self, steered: Mapping[str, EvseView], powers: Mapping[str, float], now: dt.datetime
    ) -> list[Push]:
        """All at once: each push is two round trips, and one after the other a command for 50
        chargers waited for 100 of them."""
        if not powers:
            return []
        async with asyncio.TaskGroup() as group:
            tasks = [
                (
                    steered[key],
                    power,
                    group.create_task(self._push(steered[key], power, now), name=f"gateway-setpoint[{key}]"),
                )
                for key, power in powers.items()
            ]
        return [Push(view, power, task.result()) for view, power, task in tasks]

    async def _push(self, view: EvseView, power_kw: float, now: dt.datetime) -> ProfileOutcome:
        """Record, send, settle (:mod:`site_gateway.installed`)."""
        cp, evse_id, transaction_id = view.charger_id, view.evse_id, view.transaction_id
        assert transaction_id is not None
        validity = self.validity(view, power_kw)
        valid_until = now + validity
        before = self._installed.sending_tx(cp, evse_id, transaction_id, power_kw, valid_until)
        outcome = await self._ocpp.apply_setpoint(
            cp, evse_id, power_kw, valid_until, transaction_id=transaction_id
        )
        if outcome.is_ok:
            self._installed.tx_settled(
                cp,
                evse_id,
                transaction_id,
                power_kw=_held_kw(power_kw, outcome),
                valid_until=valid_until,
                before=before,
            )
            view.allowed_kw, view.renew_at = power_kw, now + validity / 2
        elif outcome.status is OutcomeStatus.REJECTED or outcome.sent_kw is None:  # kept what it had
            self._installed.tx_settled(
                cp, evse_id, transaction_id, power_kw=None, valid_until=valid_until, before=before
            )
        view.profile_cap = profile_cap(power_kw, outcome)
        return outcome

    async def _reductions_taken_effect(self, lowered: list[Push], since: dt.datetime) -> None:
        """Wait until the lowered chargers' meters show their new limits, at most
        ``charger_response_s`` on the gateway's clock: a charger applies a profile it accepted with
        some delay. After that an accepted reduction is trusted; one not accepted never is."""
        if not lowered:
            return
        deadline = self._clock.now() + dt.timedelta(seconds=self._charger_response_s)
        while True:
            self._metered.clear()
            if all(
                p.view.power_at is not None
                and p.view.power_at >= since
                and p.view.power_kw is not None
                and min(p.power_kw, 0.0) - CHANGE_THRESHOLD_KW
                <= p.view.power_kw
                <= max(p.power_kw, 0.0) + CHANGE_THRESHOLD_KW
                for p in lowered
            ):  # a reading taken after the reductions went out shows each of them
                return
            left_s = (deadline - self._clock.now()).total_seconds()
            if left_s <= 0:
                break
            await wait_event(self._metered, left_s, self._clock)
        log.info(
            "gateway %s: accepted reductions not yet metered after %.1f s; trusting the chargers",
            self._site_id,
            self._charger_response_s,
        )


def _held_kw(power_kw: float, outcome: ProfileOutcome) -> float:
    """The signed power the charger holds after accepting ``power_kw``: what was sent (clamped,
    rounded down), or the composite schedule's figure when that is further from zero."""
    held = outcome.sent_kw if outcome.sent_kw is not None else power_kw
    effective = outcome.effective_kw
    if effective is not None and abs(effective) > abs(held) and (effective >= 0) == (held >= 0):
        held = effective
    return held


def _clip(
    wanted: Mapping[str, float],
    bounds: Mapping[str, tuple[float, float]],
    import_room: float,
    export_room: float,
) -> dict[str, float]:
    """The increases ``wanted`` (signed [kW]) within the rooms, the other EVSEs counting at their
    ``bounds``: each keeps what it may draw already (at most what it wants) and the room above is
    shared by one factor in each direction."""
    out = dict(wanted)
    for sign, room, side in ((1.0, import_room, 0), (-1.0, export_room, 1)):
        ids = [k for k, p in wanted.items() if sign * p > 0]
        others = sum(b[side] for k, b in bounds.items() if k not in wanted)
        others += sum(bounds[k][side] for k in wanted if k not in ids)
        wants = {k: sign * wanted[k] for k in ids}
        floors = {k: min(bounds[k][side], wants[k]) for k in ids}
        left = room - others
        if sum(wants.values()) <= left + EPS_KW:
            continue
        extra = sum(wants[k] - floors[k] for k in ids)
        factor = min(max((left - sum(floors.values())) / extra, 0.0), 1.0) if extra > 0 else 0.0
        for k in ids:
            out[k] = sign * (floors[k] + factor * (wants[k] - floors[k]))
    return out
