"""Price any schedule from its powers alone, independently of how it was made.

Given per-vehicle grid-side charge and discharge power, :func:`evaluate` rebuilds battery energies,
site import and export, billed demand peaks, commitment delivery and every cost term, with the same
names as the objective in :mod:`optimizer.model`. Baseline policies report through it, and the tests
use it to check that the optimizer's reported costs are the costs of the schedule it returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimizer.problem import Problem

TOLERANCE_KWH = 1e-3
TOLERANCE_KW = 1e-6


@dataclass(frozen=True)
class VehicleOutcome:
    id: str
    requested_kwh: float
    """Energy the driver asked for: terminal target minus energy at arrival (0 if already there)."""
    delivered_kwh: float
    """Net energy added to the battery over the horizon (kWh stored, after charge losses)."""
    unmet_kwh: float
    reason: str


@dataclass(frozen=True)
class Evaluation:
    energy_kwh: np.ndarray
    """Battery energy at the end of each step (vehicle × step); NaN where not plugged in."""
    import_kw: np.ndarray
    export_kw: np.ndarray
    curtailment_kw: np.ndarray
    demand_peaks_kw: list[float]
    dr_delivered_kwh: list[float]
    dr_shortfall_kwh: list[float]
    v2g_delivered_kwh: list[float]
    v2g_shortfall_kwh: list[float]
    costs: dict[str, float]
    vehicles: list[VehicleOutcome]
    taper_excess_kw: np.ndarray
    """Charge above what the vehicle can hold through the step under its charge taper (vehicle × step)
    [kW], ``charge - followable``; 0 where it follows, for vehicles without a taper and outside the session.
    The schedule asks more of a vehicle than it takes wherever this is positive (``ev_charge_taper``)."""

    @property
    def total_cost(self) -> float:
        """Money paid minus money earned; the unmet-energy penalty is not money and is left out."""
        from optimizer.model import COST_TERMS

        return sum(
            sign * self.costs[name] for name, sign in COST_TERMS.items() if name != "unmet_energy_penalty"
        )

    @property
    def objective(self) -> float:
        from optimizer.model import COST_TERMS

        return sum(sign * self.costs[name] for name, sign in COST_TERMS.items())

    @property
    def follows_taper(self) -> bool:
        """Every vehicle can draw its planned power through every step (within :data:`TOLERANCE_KW`)."""
        return not (self.taper_excess_kw > TOLERANCE_KW).any()

    @property
    def peak_import_kw(self) -> float:
        return float(self.import_kw.max()) if len(self.import_kw) else 0.0


def battery_energy(problem: Problem, charge_kw: np.ndarray, discharge_kw: np.ndarray) -> np.ndarray:
    """Energy at the end of every plugged step from the powers (NaN outside the session)."""
    energy = np.full(charge_kw.shape, np.nan)
    dt = problem.step_hours
    for i, v in enumerate(problem.vehicles):
        s = slice(v.first_step, v.end_step)
        gained = dt * (v.charge_efficiency * charge_kw[i, s] - discharge_kw[i, s] / v.discharge_efficiency)
        energy[i, s] = v.energy_initial_kwh + np.cumsum(gained)
    return energy


def taper_excess(problem: Problem, charge_kw: np.ndarray, energy_kwh: np.ndarray) -> np.ndarray:
    """How far each step's charge [kW] exceeds what the vehicle can hold through the step under its
    charge taper, from the energy at the step's start (0 where it does not; vehicle × step)."""
    excess = np.zeros(charge_kw.shape)
    dt = problem.step_hours
    for i, v in enumerate(problem.vehicles):
        if not v.has_taper or v.end_step <= v.first_step:
            continue
        before = np.concatenate([[v.energy_initial_kwh], energy_kwh[i, v.first_step : v.end_step - 1]])
        line_kw = v.taper_full_kw + v.taper_slope_kw_per_kwh * (v.capacity_kwh - before)
        followable = line_kw / v.taper_charge_coefficient(dt)
        excess[i, v.steps] = np.maximum(charge_kw[i, v.steps] - followable, 0.0)
    return excess


def final_energy(problem: Problem, energy_kwh: np.ndarray) -> np.ndarray:
    return np.array(
        [
            energy_kwh[i, v.end_step - 1] if v.end_step > v.first_step else v.energy_initial_kwh
            for i, v in enumerate(problem.vehicles)
        ]
    )


def unmet_reason(problem: Problem, index: int, unmet_kwh: float) -> str:
    """Why a vehicle ends below its target: ``met``, or the cause a driver can act on."""
    v = problem.vehicles[index]
    if unmet_kwh <= TOLERANCE_KWH:
        return "met"
    reachable = v.reachable_energy_kwh(v.energy_initial_kwh, len(v.steps), problem.step_hours)
    if reachable + TOLERANCE_KWH < v.terminal_energy_kwh:
        return "not enough time at the vehicle's maximum charge power"
    return "site capacity or schedule priority"


@dataclass(frozen=True)
class SiteBill:
    """What a site's import and export per step cost under the problem's tariff [currency]."""

    energy_cost: float
    export_revenue: float
    demand_charge: float
    """Charged on the billed peak above ``peak_already_kw`` of each demand charge."""
    demand_peaks_kw: list[float]

    @property
    def total(self) -> float:
        return self.energy_cost - self.export_revenue + self.demand_charge


def bill_site(problem: Problem, import_kw: np.ndarray, export_kw: np.ndarray) -> SiteBill:
    """Price a site's import and export [kW per step], planned or metered."""
    peaks = []
    demand_charge = 0.0
    for charge in problem.demand_charges:
        averages = charge.interval_averages_kw(import_kw, problem.step_hours)
        peak = max([charge.peak_already_kw, *averages])
        peaks.append(float(peak))
        demand_charge += charge.rate_per_kw * (peak - charge.peak_already_kw)
    return SiteBill(
        energy_cost=float((problem.import_price * import_kw).sum() * problem.step_hours),
        export_revenue=float((problem.export_price * export_kw).sum() * problem.step_hours),
        demand_charge=float(demand_charge),
        demand_peaks_kw=peaks,
    )


def evaluate(problem: Problem, charge_kw: np.ndarray, discharge_kw: np.ndarray) -> Evaluation:
    """Rebuild energies, site flows, commitments and every cost term of a schedule."""
    dt = problem.step_hours
    energy = battery_energy(problem, charge_kw, discharge_kw)
    ev_net = charge_kw.sum(axis=0) - discharge_kw.sum(axis=0)
    net = problem.net_base_kw + ev_net
    import_kw = np.maximum(net, 0.0)
    surplus = np.maximum(-net, 0.0)
    export_kw = np.minimum(surplus, problem.export_limit_kw)
    curtailment = surplus - export_kw

    bill = bill_site(problem, import_kw, export_kw)

    dr_delivered, dr_short, dr_payment, dr_penalty = [], [], 0.0, 0.0
    for event in problem.dr_events:
        flows = import_kw[event.steps]
        shortfall = np.maximum(flows - event.target_import_kw, 0.0)
        baseline = event.target_import_kw + event.committed_kw
        delivered = np.minimum(baseline - flows, event.committed_kw)
        if not event.net_delivery:  # clipped: a step above the baseline delivers nothing
            delivered = np.maximum(delivered, 0.0)
        dr_delivered.append(float(delivered.sum() * dt))
        dr_short.append(float(shortfall.sum() * dt))
        dr_payment += event.payment_per_kwh * dr_delivered[-1]
        dr_penalty += event.penalty_per_kwh * dr_short[-1]

    v2g_delivered, v2g_short, v2g_payment, v2g_penalty = [], [], 0.0, 0.0
    for dispatch in problem.dispatches:
        delivered = np.clip(-ev_net[dispatch.steps], 0.0, dispatch.export_kw)
        v2g_delivered.append(float(delivered.sum() * dt))
        v2g_short.append(float((dispatch.export_kw - delivered).sum() * dt))
        v2g_payment += dispatch.price_per_kwh * v2g_delivered[-1]
        v2g_penalty += dispatch.penalty_per_kwh * v2g_short[-1]

    final = final_energy(problem, energy)
    vehicles = []
    for i, v in enumerate(problem.vehicles):
        unmet = max(0.0, v.terminal_energy_kwh - final[i])
        vehicles.append(
            VehicleOutcome(
                id=v.id,
                requested_kwh=max(0.0, v.terminal_energy_kwh - v.energy_initial_kwh),
                delivered_kwh=float(final[i] - v.energy_initial_kwh),
                unmet_kwh=float(unmet),
                reason=unmet_reason(problem, i, unmet),
            )
        )
    unmet_total = sum(o.unmet_kwh for o in vehicles)

    costs = {
        "energy_cost": bill.energy_cost,
        "export_revenue": bill.export_revenue,
        "demand_charge": bill.demand_charge,
        "battery_wear": float(problem.wear_cost_per_kwh * discharge_kw.sum() * dt),
        "dr_penalty": dr_penalty,
        "dr_payment": dr_payment,
        "v2g_penalty": v2g_penalty,
        "v2g_payment": v2g_payment,
        "unmet_energy_penalty": problem.unmet_penalty_per_kwh * unmet_total,
    }
    return Evaluation(
        energy_kwh=energy,
        import_kw=import_kw,
        export_kw=export_kw,
        curtailment_kw=curtailment,
        demand_peaks_kw=bill.demand_peaks_kw,
        dr_delivered_kwh=dr_delivered,
        dr_shortfall_kwh=dr_short,
        v2g_delivered_kwh=v2g_delivered,
        v2g_shortfall_kwh=v2g_short,
        costs=costs,
        vehicles=vehicles,
        taper_excess_kw=taper_excess(problem, charge_kw, energy),
    )
