"""The scenario converted once into arrays on the step grid: what every policy and the model read.

Units are converted here and nowhere else: datetimes become step indices, series become arrays of
``n_steps`` floats, per-vehicle limits become the tighter of vehicle and EVSE.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from optimizer.consistency import check_scenario
from optimizer.demand import DemandChargeSpec, demand_intervals
from optimizer.scenario import ChargeTaper, DrEvent, Scenario

FloatArray = np.ndarray


@dataclass(frozen=True)
class VehicleSpec:
    """One session on the step grid. The vehicle is plugged in during steps ``first_step .. end_step - 1``."""

    id: str
    evse_id: str
    first_step: int
    end_step: int
    capacity_kwh: float
    energy_initial_kwh: float
    target_energy_kwh: float
    """The driver's target at departure."""
    terminal_energy_kwh: float
    """What must be in the battery at ``end_step`` so that the target stays reachable (equals the target
    when the vehicle leaves inside the horizon)."""
    min_energy_kwh: float
    charge_efficiency: float
    discharge_efficiency: float
    max_charge_kw: float
    max_discharge_kw: float
    """0 unless the vehicle, its EVSE and its driver's consent all allow V2G."""
    leaves_in_horizon: bool
    taper_start_soc: float | None = None
    """State of charge [0..1) above which the charge acceptance tapers (CC-CV); None: no taper."""
    taper_end_fraction: float = 1.0
    """Fraction of ``taper_max_kw`` the vehicle still accepts with a full battery."""
    taper_max_kw: float = 0.0
    """The vehicle's own maximum charge power [kW], before the EVSE limits it: the taper's 100 %."""

    @property
    def steps(self) -> range:
        return range(self.first_step, self.end_step)

    @property
    def has_taper(self) -> bool:
        return self.taper_start_soc is not None

    @property
    def taper_slope_kw_per_kwh(self) -> float:
        """``k = P (1 - f) / (C (1 - s))``: acceptance lost [kW] per kWh stored in the taper zone."""
        if self.taper_start_soc is None:
            return 0.0
        return (
            self.taper_max_kw
            * (1 - self.taper_end_fraction)
            / (self.capacity_kwh * (1 - self.taper_start_soc))
        )

    @property
    def taper_full_kw(self) -> float:
        """``P f``: what the vehicle accepts [kW] with a full battery (infinite without a taper)."""
        return self.taper_max_kw * self.taper_end_fraction if self.has_taper else math.inf

    def acceptance_kw(self, energy_kwh: float) -> float:
        """The most the vehicle draws [kW, grid side] at battery energy ``energy_kwh``:
        ``min(max_charge_kw, P f + k (C - E))``, the CC-CV line of
        :class:`~optimizer.scenario.ChargeTaper`."""
        if not self.has_taper:
            return self.max_charge_kw
        line = self.taper_full_kw + self.taper_slope_kw_per_kwh * (self.capacity_kwh - energy_kwh)
        return min(self.max_charge_kw, line)

    def taper_charge_coefficient(self, step_hours: float) -> float:
        """``1 + k η Δt``: the charge's coefficient in ``ev_charge_taper`` (:meth:`followable_charge_kw`)."""
        return 1.0 + self.taper_slope_kw_per_kwh * self.charge_efficiency * step_hours

    def followable_charge_kw(self, energy_kwh: float, step_hours: float) -> float:
        """The highest constant power [kW] the vehicle takes for a whole step that starts at ``energy_kwh``.

        The acceptance falls while the battery fills, so a constant power ``c`` can be held through the
        step only if the acceptance at the step's end allows it: ``c <= P f + k (C - E - η Δt c)``, i.e.
        ``(1 + k η Δt) c <= P f + k (C - E)`` (``ev_charge_taper`` of :mod:`optimizer.model`).
        """
        if not self.has_taper:
            return self.max_charge_kw
        line = self.taper_full_kw + self.taper_slope_kw_per_kwh * (self.capacity_kwh - energy_kwh)
        return max(0.0, min(self.max_charge_kw, line / self.taper_charge_coefficient(step_hours)))

    def reachable_energy_kwh(self, energy_kwh: float, n_steps: int, step_hours: float) -> float:
        """Battery energy [kWh] after ``n_steps`` steps at the most the vehicle takes, from ``energy_kwh``."""
        for _ in range(n_steps):
            step_kwh = self.charge_efficiency * step_hours * self.followable_charge_kw(energy_kwh, step_hours)
            energy_kwh = min(self.capacity_kwh, energy_kwh + step_kwh)
        return energy_kwh

    def taper_steps(self, step_hours: float) -> range:
        """Plugged steps where ``ev_charge_taper`` can bind (a suffix of :attr:`steps`).

        Elsewhere the variable bounds imply it: even at ``max_charge_kw`` from arrival, the energy at the
        step's start stays low enough that ``(1 + k η Δt) max_charge_kw + k E <= P f + k C``.
        """
        if not self.has_taper or self.max_charge_kw <= 0:
            return range(self.end_step, self.end_step)
        k, coefficient = self.taper_slope_kw_per_kwh, self.taper_charge_coefficient(step_hours)
        rhs = self.taper_full_kw + k * self.capacity_kwh
        per_step_kwh = self.charge_efficiency * step_hours * self.max_charge_kw
        for t in self.steps:
            highest_kwh = min(
                self.capacity_kwh, self.energy_initial_kwh + (t - self.first_step) * per_step_kwh
            )
            if coefficient * self.max_charge_kw + k * highest_kwh > rhs:
                return range(t, self.end_step)
        return range(self.end_step, self.end_step)

    @property
    def can_discharge(self) -> bool:
        return self.max_discharge_kw > 0 and self.end_step > self.first_step

    @property
    def energy_floor_kwh(self) -> float:
        """Lowest energy allowed while plugged in: the V2G reserve, or the arrival energy if lower."""
        return min(self.min_energy_kwh, self.energy_initial_kwh)


@dataclass(frozen=True)
class DrEventSpec:
    id: str
    steps: np.ndarray
    target_import_kw: np.ndarray
    """Site import must stay at or below this during each event step."""
    committed_kw: np.ndarray
    """Reduction committed per event step (baseline minus target; 0 where there is no baseline)."""
    payment_per_kwh: float
    penalty_per_kwh: float
    net_delivery: bool = False
    """A step above the baseline delivers negative energy (:attr:`optimizer.scenario.DrEvent.delivery`)."""


@dataclass(frozen=True)
class DispatchSpec:
    id: str
    steps: np.ndarray
    export_kw: float
    price_per_kwh: float
    penalty_per_kwh: float


@dataclass(frozen=True)
class Problem:
    name: str
    currency: str
    index: pd.DatetimeIndex
    """Start of every step, timezone-aware."""
    step_hours: float
    import_limit_kw: float
    export_limit_kw: float
    base_load_kw: FloatArray
    generation_kw: FloatArray
    import_price: FloatArray
    export_price: FloatArray
    demand_charges: list[DemandChargeSpec]
    vehicles: list[VehicleSpec]
    dr_events: list[DrEventSpec]
    dispatches: list[DispatchSpec]
    wear_cost_per_kwh: float
    unmet_penalty_per_kwh: float
    site_id: str = "site"
    evse_ids: list[str] = field(default_factory=list)
    charging_urgency_weight: float = 0.0
    """Weight [currency/kWh per step] of the least-laxity-first tie-breaker (see
    :func:`optimizer.model.add_charging_urgency`); 0 offline, set by the rolling horizon."""

    @property
    def n_steps(self) -> int:
        return len(self.index)

    @property
    def net_base_kw(self) -> FloatArray:
        """Inflexible site import before any vehicle: base load minus generation [kW]."""
        return self.base_load_kw - self.generation_kw

    @property
    def has_v2g(self) -> bool:
        return any(v.can_discharge for v in self.vehicles)


def build_problem(scenario: Scenario) -> Problem:
    """Check ``scenario`` (raising :class:`ScenarioError`) and convert it to arrays on the step grid."""
    check_scenario(scenario)
    n = scenario.n_steps
    zone = zoneinfo.ZoneInfo(scenario.timezone) if scenario.timezone else scenario.start.tzinfo
    index = pd.date_range(scenario.start, periods=n, freq=scenario.step).tz_convert(zone)
    step_hours = scenario.step_minutes / 60
    tariff = scenario.tariff

    evses = {evse.id: evse for evse in scenario.evses}
    vehicles = []
    for v in scenario.vehicles:
        evse = evses[v.evse_id]
        first = max(0, math.ceil((v.arrival - scenario.start) / scenario.step))
        departure_step = math.floor((v.departure - scenario.start) / scenario.step)
        end = min(n, max(first, departure_step))
        max_charge = min(v.max_charge_kw, evse.max_charge_kw)
        max_discharge = min(v.max_discharge_kw, evse.max_discharge_kw) if v.v2g_consent else 0.0
        steps_after = max(0, departure_step - n)
        taper = v.charge_taper
        spec = VehicleSpec(
            id=v.id,
            evse_id=v.evse_id,
            first_step=first,
            end_step=end,
            capacity_kwh=v.capacity_kwh,
            energy_initial_kwh=v.energy_at_arrival_kwh,
            target_energy_kwh=v.target_energy_kwh,
            terminal_energy_kwh=v.target_energy_kwh,
            min_energy_kwh=v.min_energy_kwh,
            charge_efficiency=v.charge_efficiency,
            discharge_efficiency=v.discharge_efficiency,
            max_charge_kw=max_charge,
            max_discharge_kw=max_discharge,
            leaves_in_horizon=departure_step <= n,
            taper_start_soc=taper.start_soc if taper is not None else None,
            taper_end_fraction=taper.end_fraction if taper is not None else 1.0,
            taper_max_kw=v.max_charge_kw,
        )
        terminal = energy_needed_before(spec, v.target_energy_kwh, steps_after, step_hours)
        vehicles.append(replace(spec, terminal_energy_kwh=terminal))

    problem = Problem(
        name=scenario.name,
        currency=scenario.currency,
        index=index,
        step_hours=step_hours,
        import_limit_kw=scenario.site.import_limit_kw,
        export_limit_kw=scenario.site.export_limit_kw,
        base_load_kw=_series(scenario.site.base_load_kw, n),
        generation_kw=_series(scenario.site.generation_kw, n),
        import_price=_series(tariff.import_price_per_kwh, n),
        export_price=_series(tariff.export_price_per_kwh, n),
        demand_charges=[
            DemandChargeSpec(
                name=charge.name,
                rate_per_kw=charge.rate_per_kw,
                peak_already_kw=charge.peak_already_kw,
                intervals=demand_intervals(index, tariff.demand_interval_minutes, charge.windows),
                interval_minutes=tariff.demand_interval_minutes,
                windows=list(charge.windows),
            )
            for charge in tariff.demand_charges
        ],
        vehicles=vehicles,
        dr_events=[_dr_event(scenario, event) for event in scenario.dr_events],
        dispatches=[
            DispatchSpec(
                id=d.id,
                steps=_window_steps(scenario, d.start, d.end),
                export_kw=d.export_kw,
                price_per_kwh=d.price_per_kwh,
                penalty_per_kwh=d.penalty_per_kwh,
            )
            for d in scenario.v2g_dispatches
        ],
        wear_cost_per_kwh=scenario.battery_wear_cost_per_kwh,
        unmet_penalty_per_kwh=0.0,
        site_id=scenario.site.id,
        evse_ids=[evse.id for evse in scenario.evses],
    )
    penalty = scenario.unmet_energy_penalty_per_kwh
    if penalty is None:
        penalty = default_unmet_penalty(problem)
    object.__setattr__(problem, "unmet_penalty_per_kwh", penalty)
    return problem


def steps_to_reach(
    *,
    capacity_kwh: float,
    energy_kwh: float,
    target_kwh: float,
    max_charge_kw: float,
    charge_efficiency: float,
    taper: ChargeTaper | None,
    step_hours: float,
    limit: int,
) -> int:
    """Steps at the most a vehicle takes (taper included) until its battery holds ``target_kwh``; at
    most ``limit`` (also when the target is out of reach)."""
    vehicle = VehicleSpec(
        id="",
        evse_id="",
        first_step=0,
        end_step=limit,
        capacity_kwh=capacity_kwh,
        energy_initial_kwh=energy_kwh,
        target_energy_kwh=target_kwh,
        terminal_energy_kwh=target_kwh,
        min_energy_kwh=0.0,
        charge_efficiency=charge_efficiency,
        discharge_efficiency=1.0,
        max_charge_kw=max_charge_kw,
        max_discharge_kw=0.0,
        leaves_in_horizon=True,
        taper_start_soc=taper.start_soc if taper is not None else None,
        taper_end_fraction=taper.end_fraction if taper is not None else 1.0,
        taper_max_kw=max_charge_kw,
    )
    for steps in range(limit):
        if energy_kwh >= target_kwh - 1e-6:
            return steps
        energy_kwh = vehicle.reachable_energy_kwh(energy_kwh, 1, step_hours)
    return limit


def energy_needed_before(v: VehicleSpec, target_kwh: float, n_steps: int, step_hours: float) -> float:
    """The least energy [kWh] from which ``target_kwh`` is reachable in ``n_steps`` more steps (>= 0).

    Without a taper that is ``target - n η Δt P``. With one, each step maps ``E`` to ``min(E + η Δt P,
    g(E))`` with ``g(E) = (E + η Δt P f + k η Δt C) / (1 + k η Δt)``
    (:meth:`VehicleSpec.followable_charge_kw`); both are increasing, so a step back from ``y`` is
    ``max(y - η Δt P, (1 + k η Δt) y - η Δt P f - k η Δt C)``.
    """
    gain = v.charge_efficiency * step_hours
    energy = target_kwh
    for _ in range(n_steps):
        if energy <= 0:
            break
        back = energy - gain * v.max_charge_kw
        if v.has_taper:
            x = v.taper_slope_kw_per_kwh * gain
            back = max(back, (1 + x) * energy - gain * v.taper_full_kw - x * v.capacity_kwh)
        if back >= energy:  # no power, or a taper to 0 % that never fills the last kWh
            break
        energy = back
    return max(0.0, energy)


def default_unmet_penalty(problem: Problem) -> float:
    """Penalty per kWh left below a departure target, high enough that meeting targets always wins.

    One kWh drawn in a single step raises that step's power by ``1 / step_hours`` kW, so the most a
    kWh can save elsewhere in the objective is bounded by the dearest energy price plus every demand
    rate and commitment penalty scaled by ``1 / step_hours``, plus the wear and export value of
    cycling it. Ten times that bound (and at least 100 per kWh) keeps the target term dominant while
    staying numerically well inside HiGHS's tolerances.
    """
    per_kw = sum(c.rate_per_kw for c in problem.demand_charges)
    per_kw += sum(e.penalty_per_kwh + e.payment_per_kwh for e in problem.dr_events) * problem.step_hours
    per_kw += sum(d.penalty_per_kwh + d.price_per_kwh for d in problem.dispatches) * problem.step_hours
    prices = np.concatenate([problem.import_price, problem.export_price, [0.0]])
    bound = float(np.abs(prices).max()) + per_kw / problem.step_hours + problem.wear_cost_per_kwh
    return max(100.0, 10.0 * bound)


def _series(value: float | list[float], n: int) -> FloatArray:
    return np.asarray(value, dtype=float) if isinstance(value, list) else np.full(n, float(value))


def _window_steps(scenario: Scenario, start: dt.datetime, end: dt.datetime) -> np.ndarray:
    first = (start - scenario.start) // scenario.step
    last = (end - scenario.start) // scenario.step
    return np.arange(first, last)


def _dr_event(scenario: Scenario, event: DrEvent) -> DrEventSpec:
    steps = _window_steps(scenario, event.start, event.end)
    baseline = None
    if event.baseline_kw is not None:
        baseline = np.broadcast_to(np.asarray(event.baseline_kw, dtype=float), steps.shape).copy()
    if event.cap_kw is not None:
        target = np.full(steps.shape, event.cap_kw)
    else:  # reduction below baseline; the DrEvent model guarantees both are given
        assert baseline is not None and event.reduction_kw is not None
        target = np.maximum(baseline - event.reduction_kw, 0.0)
    committed = np.maximum(baseline - target, 0.0) if baseline is not None else np.zeros(steps.shape)
    return DrEventSpec(
        id=event.id,
        steps=steps,
        target_import_kw=target,
        committed_kw=committed,
        payment_per_kwh=event.payment_per_kwh,
        penalty_per_kwh=event.penalty_per_kwh,
        net_delivery=event.delivery == "net",
    )
