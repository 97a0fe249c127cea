"""A simulated electric vehicle at a charger: battery, state of charge, taper and losses.

Power is at the grid side [kW] (what the EVSE meters), positive charging. The battery gains
``power × efficiency`` while charging and loses ``|power| / efficiency`` while discharging. Above
``taper_soc`` the vehicle accepts less and less, linearly down to ``min_taper_fraction`` of its maximum
at 100 %, as a constant-current/constant-voltage charge does.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass


@dataclass
class Vehicle:
    capacity_kwh: float
    soc: float
    """State of charge, 0..1."""
    max_charge_kw: float
    arrival: dt.datetime
    departure: dt.datetime | None = None
    target_soc: float = 1.0
    max_discharge_kw: float = 0.0
    min_soc: float = 0.2
    """Below this the vehicle refuses to discharge (the driver's reserve)."""
    efficiency: float = 0.92
    taper_soc: float = 0.8
    min_taper_fraction: float = 0.05
    announced_departure: dt.datetime | None = None
    """The departure the EV tells the charger (ISO 15118), when it differs from when the driver in fact
    leaves (``departure``): drivers leave early and late."""

    def acceptance_kw(self) -> float:
        """The most the vehicle draws now [kW], tapered above ``taper_soc``; 0 at the target."""
        if self.soc >= min(self.target_soc, 1.0):
            return 0.0
        if self.soc <= self.taper_soc:
            return self.max_charge_kw
        left = (1.0 - self.soc) / (1.0 - self.taper_soc)
        fraction = self.min_taper_fraction + (1.0 - self.min_taper_fraction) * left
        return self.max_charge_kw * fraction

    def discharge_capacity_kw(self) -> float:
        return self.max_discharge_kw if self.soc > self.min_soc else 0.0

    def power_for(self, offered_kw: float) -> float:
        """What the vehicle draws [kW] when the EVSE offers ``offered_kw`` (negative asks for discharge)."""
        return min(max(offered_kw, -self.discharge_capacity_kw()), self.acceptance_kw())

    def advance(self, power_kw: float, seconds: float) -> None:
        """Move the battery on by ``seconds`` at a grid-side ``power_kw``."""
        hours = seconds / 3600
        stored = power_kw * self.efficiency if power_kw >= 0 else power_kw / self.efficiency
        self.soc = min(1.0, max(0.0, self.soc + stored * hours / self.capacity_kwh))

    @property
    def energy_needed_kwh(self) -> float:
        """Grid-side energy still needed to reach ``target_soc``."""
        return max(0.0, self.target_soc - self.soc) * self.capacity_kwh / self.efficiency


def random_vehicle(rng: random.Random, arrival: dt.datetime) -> Vehicle:
    """A plausible depot van or car: 40-100 kWh, arriving at 15-60 %, staying 6-12 h."""
    return Vehicle(
        capacity_kwh=rng.choice([40.0, 60.0, 75.0, 100.0]),
        soc=rng.uniform(0.15, 0.6),
        max_charge_kw=rng.choice([7.4, 11.0, 22.0]),
        arrival=arrival,
        departure=arrival + dt.timedelta(hours=rng.uniform(6, 12)),
        target_soc=rng.choice([0.8, 0.9, 1.0]),
        max_discharge_kw=rng.choice([0.0, 0.0, 7.4, 11.0]),
    )
