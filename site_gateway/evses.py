"""What the gateway knows of each EVSE: its session, its meter, the limits it runs on and its cap.

Energy is counted net: what an EVSE delivered to its vehicle is the import register's rise minus the
export register's since the transaction started, so a vehicle that gave energy back is owed it before
its request is met. A vehicle's energy request (ISO 15118) is what it needs from when it asked.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from site_gateway.ocpp.profiles import OutcomeStatus, ProfileOutcome
from site_gateway.safety import Cap, EvseState, Session
from wire.contract import LimitReason, evse_key

CHANGE_THRESHOLD_KW = 0.1
"""A new allowed power is sent to a charger only when it moves by more than this."""
DEFAULT_DWELL = dt.timedelta(hours=8)
"""Assumed stay of a vehicle that never said when it leaves (for earliest-deadline-first only)."""

ROUND_TRIP_EFFICIENCY = 0.8
"""What a vehicle gets back of the energy it discharged, when the gateway counts a V2G session's
energy against its request: a kWh exported is put back with ``1 / 0.8`` kWh from the grid. Lower than
a typical charger-battery round trip (0.85) on purpose: too little leaves the vehicle short of its
target, too much is stopped by the vehicle itself at its target."""


@dataclass
class EvseView:
    """What the gateway knows of one EVSE (charger id, EVSE id)."""

    charger_id: str
    evse_id: int
    transaction_id: str | None = None
    started_at: dt.datetime | None = None
    meter_start_wh: float | None = None
    """The import register when the transaction started [Wh]."""
    energy_wh: float | None = None
    """The import register's latest reading [Wh]."""
    export_start_wh: float | None = None
    """The export register's first reading in the transaction [Wh] (chargers that can discharge)."""
    export_wh: float | None = None
    """The export register's latest reading [Wh]."""
    power_kw: float | None = None
    soc_percent: float | None = None
    departure: dt.datetime | None = None
    energy_request_kwh: float | None = None
    """What the vehicle asked for [kWh], counted from when it asked."""
    delivered_at_request_kwh: float = 0.0
    """``delivered_kwh`` when the vehicle asked (an ISO 15118 request is what it needs from then on)."""
    max_charge_kw: float = 0.0
    max_discharge_kw: float = 0.0
    allowed_kw: float | None = None
    """The last power limit sent to the charger."""
    renew_at: dt.datetime | None = None
    """When the TxProfile carrying ``allowed_kw`` is sent again: half-way through its validity, so a
    charger never falls back to its boot default while the same power stays wanted."""
    default_limit_kw: float = 0.0
    """The TxDefaultProfile limit the charger holds (the boot default, or the idle reserve's share)."""
    power_at: dt.datetime | None = None
    """When the gateway received the latest ``power_kw`` (its own clock)."""
    cap: Cap | None = None
    """The cap the latest control step applied, reported with the EVSE's telemetry."""
    profile_cap: Cap | None = None
    """What the charger made of the latest profile, when less than was sent (clamped, rounded, or a
    composite schedule below it)."""

    def needs_limit(self, power_kw: float, now: dt.datetime) -> bool:
        """Whether ``power_kw`` must go to the charger: a transaction runs and the limit it has
        differs by more than :data:`CHANGE_THRESHOLD_KW`, or it has none from us yet, or the profile
        that carries it is due for renewal."""
        if self.transaction_id is None:
            return False
        if self.allowed_kw is None or (self.renew_at is not None and now >= self.renew_at):
            return True
        return abs(self.allowed_kw - power_kw) > CHANGE_THRESHOLD_KW

    @property
    def exported_kwh(self) -> float:
        """Energy the vehicle gave back since the transaction started [kWh] (0 when not metered)."""
        if self.export_wh is None or self.export_start_wh is None:
            return 0.0
        return (self.export_wh - self.export_start_wh) / 1000

    def export_losses_kwh(self) -> float:
        """Grid energy beyond the exported energy it takes to put it back in the battery [kWh]: each
        kWh discharged costs ``1 / ROUND_TRIP_EFFICIENCY`` kWh to restore."""
        return self.exported_kwh * (1 / ROUND_TRIP_EFFICIENCY - 1)

    @property
    def delivered_kwh(self) -> float | None:
        """Net energy into the vehicle since the transaction started [kWh]: the import register's
        rise minus the export register's."""
        if self.energy_wh is None or self.meter_start_wh is None:
            return None
        return (self.energy_wh - self.meter_start_wh) / 1000 - self.exported_kwh

    def reported_cap(self) -> Cap | None:
        """The lower of the control step's cap and the charger's own."""
        caps = [c for c in (self.cap, self.profile_cap) if c is not None]
        return min(caps, key=lambda c: c.limit_kw) if caps else None

    def current_limit_kw(self) -> float:
        """The limit the charger runs on now: the last one sent, else the boot default (or its draw)."""
        if self.allowed_kw is not None:
            return self.allowed_kw
        return max(self.power_kw or 0.0, self.default_limit_kw)

    def safety_state(self) -> EvseState:
        if self.transaction_id is None:
            return EvseState(evse_key(self.charger_id, self.evse_id), measured_kw=self.power_kw)
        needed = float("inf") if self.energy_request_kwh is None else self.energy_request_kwh
        if self.energy_request_kwh is not None and self.delivered_kwh is not None:
            since_request = self.delivered_kwh - self.delivered_at_request_kwh  # net
            # a kWh given back costs more than a kWh to put back: count the export's losses
            needed = max(self.energy_request_kwh - since_request + self.export_losses_kwh(), 0.0)
        departure = self.departure
        if departure is None and self.started_at is not None:
            departure = self.started_at + DEFAULT_DWELL
        session = Session(departure, needed, self.max_charge_kw, self.max_discharge_kw)
        return EvseState(evse_key(self.charger_id, self.evse_id), session=session, measured_kw=self.power_kw)


def profile_cap(power_kw: float, outcome: ProfileOutcome) -> Cap | None:
    """What the charger made of a profile for ``power_kw``, when it holds the EVSE nearer to 0 (an
    OCPP 1.6 charger cannot discharge, a rounded current, a composite schedule below it)."""
    if outcome.status not in (OutcomeStatus.ACCEPTED, OutcomeStatus.UNVERIFIED):
        return None
    got = outcome.effective_kw if outcome.effective_kw is not None else outcome.sent_kw
    if got is None or power_kw == 0:
        return None
    sign = 1.0 if power_kw > 0 else -1.0
    if sign * got < sign * power_kw - CHANGE_THRESHOLD_KW:
        return Cap(max(sign * got, 0.0), LimitReason.CHARGER_MAX, discharge=power_kw < 0)
    return None
