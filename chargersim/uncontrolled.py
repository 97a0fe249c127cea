"""Uncontrolled charging of simulated vehicles: each draws all it can from plug-in to departure.

This is what a :class:`~chargersim.stations.SimulatedCharger` does with no charging profile installed
(the EVSE offers its maximum; :meth:`~chargersim.vehicles.Vehicle.power_for` takes what the vehicle
accepts), stepped on the same tick without a network: the yardstick fleetgrid's controlled run is
compared with. Vehicles are changed in place, so their final state of charge is judged the same way.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from chargersim.vehicles import Vehicle


@dataclass(frozen=True)
class PluggedVehicle:
    vehicle: Vehicle
    evse_max_kw: float
    """The EVSE's maximum charging power [kW]."""


def charge_on_plug_in(
    plugged: Sequence[PluggedVehicle], start: dt.datetime, end: dt.datetime, tick_s: float
) -> tuple[list[float], list[float]]:
    """Step every vehicle from ``start`` to ``end`` by ``tick_s``; the site's import and export
    energy [kWh] of each tick (vehicles netted within a tick, as one site meter does). Plain Python:
    ``chargersim`` runs on the gateway install, which has no numpy."""
    if tick_s <= 0:
        raise ValueError(f"tick_s must be > 0 s, got {tick_s}")
    ticks = math.ceil((end - start).total_seconds() / tick_s)
    net_kwh = [0.0] * ticks
    done = [False] * len(plugged)
    for n in range(ticks):
        now = start + dt.timedelta(seconds=n * tick_s)
        seconds = min(tick_s, (end - now).total_seconds())
        for k, item in enumerate(plugged):
            vehicle = item.vehicle
            if done[k] or now < vehicle.arrival:
                continue
            if vehicle.departure is not None and now >= vehicle.departure:
                done[k] = True
                continue
            power_kw = vehicle.power_for(item.evse_max_kw)
            if power_kw <= 0:
                done[k] = vehicle.acceptance_kw() <= 0
                continue
            vehicle.advance(power_kw, seconds)
            net_kwh[n] += power_kw * seconds / 3600
    return [max(e, 0.0) for e in net_kwh], [max(-e, 0.0) for e in net_kwh]
