"""The idle reserve: room the gateway keeps for vehicles that may plug in at idle chargers, how it is
sized and when it moves.

- why: a vehicle that plugs in at an idle charger draws what the charger's TxDefaultProfile allows
  until the gateway hears of it and sends a TxProfile of its own, so the site must have that room;
- size: at its first boot a charger gets the gateway's ``default_limit_kw``, the full reserve of an
  EVSE (:attr:`IdleReserve.full_kw`): the configured default, lowered so that every listed charger at
  it stays within the import limit; at a later boot, the limit it is counted at (a reclaimed reserve
  stays reclaimed). The reserve held is, per connected charger, its idle EVSEs (one when
  none is known yet) times the TxDefaultProfile limit it holds (:meth:`IdleReserve.held_kw`);
- reclaimed: every control step works out what the plugged vehicles would get with no reserve held;
  the room they leave is shared evenly among the idle EVSEs, at most the full reserve each, in
  :data:`RESERVE_STEP_KW` steps (:meth:`IdleReserve.shares`). An idle charger whose share falls gets
  the lower TxDefaultProfile *first*, before any vehicle is raised (reclaiming is a reduction:
  :meth:`IdleReserve.lower`); one whose share rises gets it back with the increases
  (:meth:`IdleReserve.raise_to`). So demand from plugged vehicles reclaims the reserve, and it comes
  back when they need less;
- handed back on plug-in: a vehicle that plugs in and is not planned by the centre yet gets the full
  reserve at once (:func:`~site_gateway.safety.allocate`, ``arrival_reserve_kw``), taken from the
  planned vehicles in the same control step, reductions first: it has power within one control step
  plus ``charger_response_s``, and until then draws no more than its charger's TxDefaultProfile,
  which the reserve counted;
- boots: a charger that boots gets the boot TxDefaultProfile again, the full reserve; a limit sent
  while it booted may arrive before the boot's, so it counts the higher of the two;
- kept on disk: the limit each charger holds is :mod:`site_gateway.installed`'s record, written
  before a limit goes out (the higher of the old and the new until the charger answers), so a
  restarted gateway counts what the chargers hold, not what it remembers. A charger never given one
  counts the full reserve (the boot default every listed charger is sized for);
- first connection: a charger that connects to this process gets the limit it is counted at again
  (at most the full reserve) before anything is raised, so what it holds is what is counted even if
  an earlier process was killed mid-push.
"""

from __future__ import annotations

import asyncio
import logging
import math

from site_gateway.evses import CHANGE_THRESHOLD_KW, EvseView
from site_gateway.installed import InstalledLimits
from site_gateway.ocpp.server import OcppServer

log = logging.getLogger(__name__)

RESERVE_STEP_KW = 0.1
"""An idle charger's share of the reserve is rounded down to this [kW]."""


class IdleReserve:
    """The TxDefaultProfile limit each charger holds, and the moves of it (module docstring)."""

    def __init__(
        self,
        full_kw: float,
        ocpp: OcppServer,
        evses: dict[str, EvseView],
        site_id: str,
        installed: InstalledLimits,
    ) -> None:
        self.full_kw = full_kw
        """The full reserve of one EVSE: the boot TxDefaultProfile limit [kW]."""
        self._ocpp = ocpp
        self._evses = evses
        self._site_id = site_id
        self._installed = installed
        self._boots: dict[str, int] = {}
        """Charger id -> boots seen (a limit sent across a boot may be overwritten by the boot's)."""
        self._given: dict[str, object] = {}
        """Charger id -> the connection (station) that accepted a limit from this process."""

    @property
    def limits(self) -> dict[str, float]:
        """Charger id -> the TxDefaultProfile limit it may hold [kW], for those with a record."""
        return {
            cp: kw for cp in self._installed.chargers() if (kw := self._installed.default_kw(cp)) is not None
        }

    def limit_kw(self, charger_id: str) -> float:
        """The TxDefaultProfile limit ``charger_id`` may hold [kW] (the full reserve if never given one)."""
        held = self._installed.default_kw(charger_id)
        return self.full_kw if held is None else held

    def booted(self, charger_id: str) -> None:
        """``charger_id`` booted: it is getting the boot TxDefaultProfile at :meth:`limit_kw`, what it
        is counted at (the full reserve unless it was lowered), never more: a charger whose reserve
        went to the others does not take it back by rebooting."""
        self._boots[charger_id] = self._boots.get(charger_id, 0) + 1
        self._set(charger_id, self.limit_kw(charger_id))

    def idle_evses(self) -> dict[str, int]:
        """Connected charger id -> its EVSEs without a session (one when none is known yet)."""
        idle = {}
        for charger_id in self._ocpp.connected:
            views = [v for v in self._evses.values() if v.charger_id == charger_id]
            count = sum(v.transaction_id is None for v in views) if views else 1
            if count:
                idle[charger_id] = count
        return idle

    def shares(self, room_left_kw: float) -> dict[str, float]:
        """Idle charger id -> the TxDefaultProfile limit it should hold [kW]: ``room_left_kw``, what
        the plugged vehicles leave of the site when no reserve is held, shared evenly among the idle
        EVSEs, at most :attr:`full_kw` each, rounded down to :data:`RESERVE_STEP_KW`."""
        idle = self.idle_evses()
        if not idle:
            return {}
        share = min(self.full_kw, max(room_left_kw, 0.0) / sum(idle.values()))
        return dict.fromkeys(idle, math.floor(share / RESERVE_STEP_KW + 1e-9) * RESERVE_STEP_KW)

    def held_kw(self, shares: dict[str, float] | None = None) -> float:
        """Room kept for connected EVSEs without a session [kW]: a vehicle may start there at any
        moment, at its charger's TxDefaultProfile limit, before the gateway hears of it. With
        ``shares`` (limits being sent), each idle charger counts the higher of the one it holds and
        the one it is getting."""
        shares = shares or {}
        return sum(
            count * max(self.limit_kw(cp), shares.get(cp, 0.0)) for cp, count in self.idle_evses().items()
        )

    async def lower(self, shares: dict[str, float]) -> None:
        """Send the chargers whose share falls their lower limit, and a charger new to this process
        the limit it is counted at (at most the full reserve), before anything is raised."""
        limits = {cp: kw for cp, kw in shares.items() if kw < self.limit_kw(cp) - CHANGE_THRESHOLD_KW}
        for cp in self._ocpp.connected:
            station = self._ocpp.station(cp)
            if cp not in limits and station is not None and self._given.get(cp) is not station:
                limits[cp] = min(self.limit_kw(cp), self.full_kw, shares.get(cp, math.inf))
        await self._apply(limits)

    async def raise_to(self, shares: dict[str, float]) -> None:
        """Send the chargers whose share rises their higher limit (with the increases)."""
        await self._apply(
            {cp: kw for cp, kw in shares.items() if kw > self.limit_kw(cp) + CHANGE_THRESHOLD_KW}
        )

    def _set(self, charger_id: str, limit_kw: float) -> None:
        self._installed.default_installed(charger_id, limit_kw)
        for view in self._evses.values():
            if view.charger_id == charger_id:
                view.default_limit_kw = limit_kw

    async def _apply(self, limits: dict[str, float]) -> None:
        """Send chargers their new TxDefaultProfile limits [kW], all at once, each recorded first as
        the higher of its old and new limit. A charger that did not accept, or booted meanwhile (its
        boot default may come after ours), keeps counting that higher limit (it may hold either)."""
        if not limits:
            return
        boots = {cp: self._boots.get(cp, 0) for cp in limits}
        stations = {cp: self._ocpp.station(cp) for cp in limits}
        for cp, kw in limits.items():
            self._installed.sending_default(cp, kw, otherwise_kw=self.full_kw)
        async with asyncio.TaskGroup() as pushes:
            tasks = {
                cp: pushes.create_task(self._ocpp.apply_default_limit(cp, kw), name=f"gateway-default[{cp}]")
                for cp, kw in limits.items()
            }
        for cp, task in tasks.items():
            outcome = task.result()
            rebooted = self._boots.get(cp, 0) != boots[cp]
            if outcome.is_ok and outcome.sent_kw is not None and not rebooted:
                self._set(cp, outcome.sent_kw)
                self._given[cp] = stations[cp]
                continue
            log.warning(
                "gateway %s: idle reserve of %s not moved to %.1f kW: %s",
                self._site_id,
                cp,
                limits[cp],
                "it booted meanwhile" if rebooted else outcome.reason or outcome.charger_status,
            )
            self._set(cp, self.limit_kw(cp))  # the higher of the two, written before sending
