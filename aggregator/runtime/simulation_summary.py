"""What ``fleetgrid simulate`` measures and writes: the site meter at the physical boundary, the
bill and targets of a day (:func:`outcome`) and ``summary.json``'s models (:class:`Summary`)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
from pydantic import BaseModel, ConfigDict

from aggregator.settlement.event_statements import EventStatement
from chargersim.stations import SimulatedCharger
from chargersim.vehicles import Vehicle
from optimizer.evaluation import bill_site
from optimizer.problem import Problem
from wire.clock import SimClock

STEP = dt.timedelta(minutes=15)
TARGET_TOLERANCE_SOC = 0.01
"""A target is met when the state of charge at departure is within this of it."""


class _Summary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Outcome(_Summary):
    """What charging cost and delivered, measured at the meter and at the vehicles."""

    cost_total: float
    """Energy cost plus demand charge less export revenue [currency]."""
    energy_cost: float
    demand_charge: float
    export_revenue: float
    billed_demand_kw: float
    """The highest demand interval's average import [kW], as the tariff bills it."""
    targets_met: int
    targets_total: int
    energy_stored_kwh: float
    """Energy the vehicles gained [kWh, battery side]."""
    energy_wanted_kwh: float
    """Energy the vehicles needed to reach their targets [kWh, battery side]."""


class DrEventOutcome(_Summary):
    """One DR event: what the grid operator asked for (30 % of uncontrolled charging's import over the
    window), what the site's plan could hold at notification, and what was delivered."""

    event_id: int
    offered_kw: float
    """What the site's plan could hold in every step of the window at notification (the portfolio
    flexibility an OpenADR VEN opts in with)."""
    requested_kw: float
    planned_kwh: float
    """What the site's last plan before the event's start promised to deliver: the controller is
    measured against its own promise as well as against the request."""
    requested_kwh: float
    delivered_kwh: float
    """Delivered against the declared baseline, capped per interval at what was requested."""
    performance_factor: float
    baseline: str
    """The declared site baseline's method name."""
    missing_intervals: int


class SettlementOutcome(_Summary):
    """The event's settlement [minor units of ``currency``]: every unit on a named account."""

    currency: str
    gross: int
    penalty: int
    platform_fee: int
    to_drivers: int
    residual: int
    platform_loss: int
    unallocated: int


class VehicleOutcome(_Summary):
    """One vehicle's day: how it was connected, when it came and went, and its state of charge at
    departure under fleetgrid and uncontrolled charging (0..1)."""

    id: str
    protocol: str
    arrival: dt.datetime
    departure: dt.datetime
    announced_departure: dt.datetime
    told_app: bool
    target_soc: float
    soc: float
    uncontrolled_soc: float
    met: bool
    uncontrolled_met: bool


class Summary(Outcome):
    """``summary.json``: fleetgrid's outcome, uncontrolled charging's, the DR events and settlement."""

    version: str
    seed: int
    vehicles: int
    start: dt.datetime
    end: dt.datetime
    currency: str
    uncontrolled: Outcome
    dr_events: list[DrEventOutcome]
    v2g_exported_kwh: float
    settlement: SettlementOutcome | None
    plans: int
    """Plans the control loop made."""
    vehicle_days: list[VehicleOutcome]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


# ------------------------------------------------------------------------------------- metering


class SiteMeter:
    """The site's meter at the physical boundary: the stations' registers, sampled every ``tick_s``
    on the clock's grid, netted across EVSEs within a tick, per tick [kWh]."""

    def __init__(self, stations: list[SimulatedCharger], clock: SimClock, tick_s: float) -> None:
        self.stations = stations
        self.clock = clock
        self.tick_s = tick_s
        self.start = clock.now()
        self.import_kwh: list[float] = []
        self.export_kwh: list[float] = []
        self._last = self._net_wh()

    def _net_wh(self) -> float:
        now = self.clock.now()
        total = 0.0
        for station in self.stations:
            imported, exported = station.registers_at(now)
            total += imported - exported
        return total

    async def run(self) -> None:
        while True:
            due = self.start + dt.timedelta(seconds=self.tick_s * (len(self.import_kwh) + 1))
            await self.clock.sleep((due - self.clock.now()).total_seconds())
            net = self._net_wh()
            step_kwh = (net - self._last) / 1000
            self._last = net
            self.import_kwh.append(max(step_kwh, 0.0))
            self.export_kwh.append(max(-step_kwh, 0.0))


def outcome(
    problem: Problem,
    start: dt.datetime,
    tick_s: float,
    import_kwh: np.ndarray,
    export_kwh: np.ndarray,
    vehicles: list[Vehicle],
    arrival_kwh: list[float],
) -> Outcome:
    """Bill per-tick energies on the problem's steps and judge the vehicles' targets."""
    steps = len(problem.index)
    step_import, step_export = np.zeros(steps), np.zeros(steps)
    offset_s = (start - problem.index[0].to_pydatetime()).total_seconds()
    for n in range(len(import_kwh)):
        step = int((offset_s + n * tick_s) // STEP.total_seconds())
        if 0 <= step < steps:
            step_import[step] += import_kwh[n]
            step_export[step] += export_kwh[n]
    hours = problem.step_hours
    bill = bill_site(problem, step_import / hours, step_export / hours)
    met = stored = wanted = 0.0
    for vehicle, initial in zip(vehicles, arrival_kwh, strict=True):
        target = min(vehicle.target_soc, 1.0)
        met += vehicle.soc >= target - TARGET_TOLERANCE_SOC
        stored += vehicle.soc * vehicle.capacity_kwh - initial
        wanted += max(0.0, target * vehicle.capacity_kwh - initial)
    return Outcome(
        cost_total=round(bill.total, 4),
        energy_cost=round(bill.energy_cost, 4),
        demand_charge=round(bill.demand_charge, 4),
        export_revenue=round(bill.export_revenue, 4),
        billed_demand_kw=round(max(bill.demand_peaks_kw, default=0.0), 4),
        targets_met=int(met),
        targets_total=len(vehicles),
        energy_stored_kwh=round(stored, 4),
        energy_wanted_kwh=round(wanted, 4),
    )


def settlement_outcome(statement: EventStatement) -> SettlementOutcome:
    return SettlementOutcome(
        currency=statement.currency,
        gross=statement.gross_minor,
        penalty=statement.penalty_minor,
        platform_fee=statement.platform_fee_minor,
        to_drivers=statement.to_drivers_minor,
        residual=statement.residual_minor,
        platform_loss=statement.platform_loss_minor,
        unallocated=statement.unallocated_minor,
    )
