"""The scheduling model in Pyomo, built as an outline of one ``add_*`` per family.

Notation (all per step ``t`` of length ``Δt`` hours, per vehicle ``v`` while plugged in):

- ``charge_kw[v,t]``, ``discharge_kw[v,t]`` — grid-side power [kW];
- ``energy_kwh[v,t]`` — battery energy at the end of step ``t`` [kWh];
- ``ev_energy_balance``: ``energy[v,t] = energy[v,t-1] + Δt (η_c charge - discharge / η_d)``;
- ``ev_charge_discharge_exclusive``: one binary ``is_charging[v,t]`` only for vehicles that may discharge,
  so a fleet without V2G stays a pure LP;
- ``site_power_balance``: ``import - export = base - generation + curtailment + Σ charge - Σ discharge``,
  with ``site_import_kw <= import limit`` and ``site_export_kw <= export limit`` as variable bounds;
- ``demand_peak_definition``: ``demand_peak_kw[d] >=`` the average import of every billed interval in the
  charge's windows and ``>=`` the peak already reached this period; only the increase costs money;
- ``dr_event_shortfall``: ``dr_shortfall_kw >= import - target``; ``dr_delivered_kw <= baseline - import``;
- ``v2g_dispatch_delivery``: ``v2g_delivered_kw <= Σ discharge - Σ charge``;
- ``ev_departure_target``: ``departure_shortfall_kwh[v] >= terminal target - energy at the last step``,
  soft, with :func:`optimizer.problem.default_unmet_penalty` per kWh.

Objective [currency]: ``energy_cost - export_revenue + demand_charge + battery_wear + dr_penalty
- dr_payment + v2g_penalty - v2g_payment + unmet_energy_penalty``; each term is a named
:class:`pyomo.environ.Expression` so results report exactly what the solver optimised.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyomo.environ as pyo

from optimizer.problem import Problem

COST_TERMS: dict[str, int] = {
    "energy_cost": +1,
    "export_revenue": -1,
    "demand_charge": +1,
    "battery_wear": +1,
    "dr_penalty": +1,
    "dr_payment": -1,
    "v2g_penalty": +1,
    "v2g_payment": -1,
    "unmet_energy_penalty": +1,
}
"""Every term of the objective with its sign. Reported costs use the same names."""


def build_model(problem: Problem) -> pyo.ConcreteModel:
    """Build the scheduling model of ``problem``; the outline reads as the model's structure."""
    m = pyo.ConcreteModel(name=problem.name)
    m.cost_terms = {}
    add_index_sets(m, problem)
    add_ev_power(m, problem)
    add_ev_charge_discharge_exclusive(m, problem)
    add_ev_energy_balance(m, problem)
    add_ev_departure_target(m, problem)
    add_site_power_balance(m, problem)
    add_demand_charges(m, problem)
    add_dr_events(m, problem)
    add_v2g_dispatches(m, problem)
    add_objective(m, problem)
    return m


def add_index_sets(m: pyo.ConcreteModel, problem: Problem) -> None:
    """``plugged`` holds (vehicle position, step) pairs; ``v2g_plugged`` the subset that may discharge."""
    plugged = [(i, t) for i, v in enumerate(problem.vehicles) for t in v.steps]
    m.steps = pyo.RangeSet(0, problem.n_steps - 1)
    m.plugged = pyo.Set(initialize=plugged, dimen=2, ordered=True)
    m.v2g_plugged = pyo.Set(
        initialize=[(i, t) for i, t in plugged if problem.vehicles[i].can_discharge], dimen=2, ordered=True
    )
    at_step: dict[int, list[int]] = defaultdict(list)
    for i, t in plugged:
        at_step[t].append(i)
    m.vehicles_at_step = at_step


def add_ev_power(m: pyo.ConcreteModel, problem: Problem) -> None:
    vehicles = problem.vehicles
    m.charge_kw = pyo.Var(
        m.plugged, domain=pyo.NonNegativeReals, bounds=lambda _, i, t: (0.0, vehicles[i].max_charge_kw)
    )
    m.discharge_kw = pyo.Var(
        m.v2g_plugged, domain=pyo.NonNegativeReals, bounds=lambda _, i, t: (0.0, vehicles[i].max_discharge_kw)
    )


def add_ev_charge_discharge_exclusive(m: pyo.ConcreteModel, problem: Problem) -> None:
    """No simultaneous charge and discharge; binaries only where a vehicle can discharge."""
    if not len(m.v2g_plugged):
        return
    vehicles = problem.vehicles
    m.is_charging = pyo.Var(m.v2g_plugged, domain=pyo.Binary)
    m.ev_charge_when_charging = pyo.Constraint(
        m.v2g_plugged,
        rule=lambda m, i, t: m.charge_kw[i, t] <= vehicles[i].max_charge_kw * m.is_charging[i, t],
    )
    m.ev_discharge_when_not_charging = pyo.Constraint(
        m.v2g_plugged,
        rule=lambda m, i, t: m.discharge_kw[i, t] <= vehicles[i].max_discharge_kw * (1 - m.is_charging[i, t]),
    )


def _discharge(m: pyo.ConcreteModel, i: int, t: int) -> Any:
    return m.discharge_kw[i, t] if (i, t) in m.v2g_plugged else 0.0


def add_ev_energy_balance(m: pyo.ConcreteModel, problem: Problem) -> None:
    vehicles = problem.vehicles
    dt = problem.step_hours
    m.energy_kwh = pyo.Var(
        m.plugged,
        domain=pyo.NonNegativeReals,
        bounds=lambda _, i, t: (vehicles[i].energy_floor_kwh, vehicles[i].capacity_kwh),
    )

    def balance(m: pyo.ConcreteModel, i: int, t: int) -> object:
        v = vehicles[i]
        before = v.energy_initial_kwh if t == v.first_step else m.energy_kwh[i, t - 1]
        gained = v.charge_efficiency * m.charge_kw[i, t] - _discharge(m, i, t) / v.discharge_efficiency
        return m.energy_kwh[i, t] == before + dt * gained

    m.ev_energy_balance = pyo.Constraint(m.plugged, rule=balance)


def add_ev_departure_target(m: pyo.ConcreteModel, problem: Problem) -> None:
    """Soft departure (or horizon-end) target; vehicles with no plugged step pay their gap as a constant."""
    vehicles = problem.vehicles
    m.vehicle_ids = pyo.RangeSet(0, len(vehicles) - 1) if vehicles else pyo.Set(initialize=[])
    m.departure_shortfall_kwh = pyo.Var(m.vehicle_ids, domain=pyo.NonNegativeReals)

    def target(m: pyo.ConcreteModel, i: int) -> object:
        v = vehicles[i]
        final = m.energy_kwh[i, v.end_step - 1] if v.end_step > v.first_step else v.energy_initial_kwh
        return m.departure_shortfall_kwh[i] >= v.terminal_energy_kwh - final

    m.ev_departure_target = pyo.Constraint(m.vehicle_ids, rule=target)
    m.unmet_energy_penalty = pyo.Expression(
        expr=problem.unmet_penalty_per_kwh * pyo.quicksum(m.departure_shortfall_kwh[i] for i in m.vehicle_ids)
    )
    m.cost_terms["unmet_energy_penalty"] = m.unmet_energy_penalty


def add_site_power_balance(m: pyo.ConcreteModel, problem: Problem) -> None:
    dt = problem.step_hours
    m.site_import_kw = pyo.Var(m.steps, domain=pyo.NonNegativeReals, bounds=(0.0, problem.import_limit_kw))
    m.site_export_kw = pyo.Var(m.steps, domain=pyo.NonNegativeReals, bounds=(0.0, problem.export_limit_kw))
    generating = [t for t in range(problem.n_steps) if problem.generation_kw[t] > 0]
    m.generation_steps = pyo.Set(initialize=generating, ordered=True)
    m.curtailment_kw = pyo.Var(
        m.generation_steps, domain=pyo.NonNegativeReals, bounds=lambda _, t: (0.0, problem.generation_kw[t])
    )

    def balance(m: pyo.ConcreteModel, t: int) -> object:
        at = m.vehicles_at_step.get(t, ())
        ev = pyo.quicksum(m.charge_kw[i, t] for i in at) - pyo.quicksum(
            m.discharge_kw[i, t] for i in at if (i, t) in m.v2g_plugged
        )
        curtailed = m.curtailment_kw[t] if t in m.generation_steps else 0.0
        return m.site_import_kw[t] - m.site_export_kw[t] == float(problem.net_base_kw[t]) + curtailed + ev

    m.site_power_balance = pyo.Constraint(m.steps, rule=balance)

    # Exporting and importing at once only pays where export is worth more than import: forbid it there.
    arbitrage = [
        t
        for t in range(problem.n_steps)
        if problem.export_price[t] >= problem.import_price[t] and problem.export_limit_kw > 0
    ]
    if arbitrage:
        m.arbitrage_steps = pyo.Set(initialize=arbitrage, ordered=True)
        m.site_is_importing = pyo.Var(m.arbitrage_steps, domain=pyo.Binary)
        m.site_import_when_importing = pyo.Constraint(
            m.arbitrage_steps,
            rule=lambda m, t: m.site_import_kw[t] <= problem.import_limit_kw * m.site_is_importing[t],
        )
        m.site_export_when_exporting = pyo.Constraint(
            m.arbitrage_steps,
            rule=lambda m, t: m.site_export_kw[t] <= problem.export_limit_kw * (1 - m.site_is_importing[t]),
        )

    m.energy_cost = pyo.Expression(
        expr=pyo.quicksum(float(problem.import_price[t]) * dt * m.site_import_kw[t] for t in m.steps)
    )
    m.export_revenue = pyo.Expression(
        expr=pyo.quicksum(float(problem.export_price[t]) * dt * m.site_export_kw[t] for t in m.steps)
    )
    m.battery_wear = pyo.Expression(
        expr=problem.wear_cost_per_kwh * dt * pyo.quicksum(m.discharge_kw[i, t] for i, t in m.v2g_plugged)
    )
    m.cost_terms.update(
        energy_cost=m.energy_cost, export_revenue=m.export_revenue, battery_wear=m.battery_wear
    )


def add_demand_charges(m: pyo.ConcreteModel, problem: Problem) -> None:
    charges = problem.demand_charges
    if not charges:
        return
    m.demand_charge_ids = pyo.RangeSet(0, len(charges) - 1)
    m.demand_peak_kw = pyo.Var(
        m.demand_charge_ids,
        domain=pyo.NonNegativeReals,
        bounds=lambda _, d: (charges[d].peak_already_kw, None),
    )
    intervals = [(d, k) for d, charge in enumerate(charges) for k in range(len(charge.intervals))]
    m.demand_intervals = pyo.Set(initialize=intervals, dimen=2, ordered=True)

    def peak(m: pyo.ConcreteModel, d: int, k: int) -> object:
        steps = charges[d].intervals[k]
        average = pyo.quicksum(m.site_import_kw[int(t)] for t in steps) / len(steps)
        return m.demand_peak_kw[d] >= average

    m.demand_peak_definition = pyo.Constraint(m.demand_intervals, rule=peak)
    m.demand_charge = pyo.Expression(
        expr=pyo.quicksum(
            charges[d].rate_per_kw * (m.demand_peak_kw[d] - charges[d].peak_already_kw)
            for d in m.demand_charge_ids
        )
    )
    m.cost_terms["demand_charge"] = m.demand_charge


def add_dr_events(m: pyo.ConcreteModel, problem: Problem) -> None:
    events = problem.dr_events
    if not events:
        return
    dt = problem.step_hours
    index = [(e, k) for e, event in enumerate(events) for k in range(len(event.steps))]
    m.dr_event_steps = pyo.Set(initialize=index, dimen=2, ordered=True)
    m.dr_shortfall_kw = pyo.Var(m.dr_event_steps, domain=pyo.NonNegativeReals)
    m.dr_delivered_kw = pyo.Var(
        m.dr_event_steps, domain=pyo.NonNegativeReals, bounds=lambda _, e, k: (0.0, events[e].committed_kw[k])
    )

    def shortfall(m: pyo.ConcreteModel, e: int, k: int) -> object:
        t = int(events[e].steps[k])
        return m.dr_shortfall_kw[e, k] >= m.site_import_kw[t] - float(events[e].target_import_kw[k])

    def delivered(m: pyo.ConcreteModel, e: int, k: int) -> object:
        event = events[e]
        if event.committed_kw[k] <= 0:
            return pyo.Constraint.Skip
        baseline = float(event.target_import_kw[k] + event.committed_kw[k])
        return m.dr_delivered_kw[e, k] <= baseline - m.site_import_kw[int(event.steps[k])]

    m.dr_event_shortfall = pyo.Constraint(m.dr_event_steps, rule=shortfall)
    m.dr_event_delivery = pyo.Constraint(m.dr_event_steps, rule=delivered)
    m.dr_penalty = pyo.Expression(
        expr=dt
        * pyo.quicksum(events[e].penalty_per_kwh * m.dr_shortfall_kw[e, k] for e, k in m.dr_event_steps)
    )
    m.dr_payment = pyo.Expression(
        expr=dt
        * pyo.quicksum(events[e].payment_per_kwh * m.dr_delivered_kw[e, k] for e, k in m.dr_event_steps)
    )
    m.cost_terms.update(dr_penalty=m.dr_penalty, dr_payment=m.dr_payment)


def add_v2g_dispatches(m: pyo.ConcreteModel, problem: Problem) -> None:
    dispatches = problem.dispatches
    if not dispatches:
        return
    dt = problem.step_hours
    index = [(d, k) for d, dispatch in enumerate(dispatches) for k in range(len(dispatch.steps))]
    m.v2g_dispatch_steps = pyo.Set(initialize=index, dimen=2, ordered=True)
    m.v2g_delivered_kw = pyo.Var(
        m.v2g_dispatch_steps,
        domain=pyo.NonNegativeReals,
        bounds=lambda _, d, k: (0.0, dispatches[d].export_kw),
    )

    def delivery(m: pyo.ConcreteModel, d: int, k: int) -> object:
        t = int(dispatches[d].steps[k])
        at = m.vehicles_at_step.get(t, ())
        net_export = pyo.quicksum(m.discharge_kw[i, t] for i in at if (i, t) in m.v2g_plugged) - pyo.quicksum(
            m.charge_kw[i, t] for i in at
        )
        return m.v2g_delivered_kw[d, k] <= net_export

    m.v2g_dispatch_delivery = pyo.Constraint(m.v2g_dispatch_steps, rule=delivery)
    m.v2g_penalty = pyo.Expression(
        expr=dt
        * pyo.quicksum(
            dispatches[d].penalty_per_kwh * (dispatches[d].export_kw - m.v2g_delivered_kw[d, k])
            for d, k in m.v2g_dispatch_steps
        )
    )
    m.v2g_payment = pyo.Expression(
        expr=dt
        * pyo.quicksum(
            dispatches[d].price_per_kwh * m.v2g_delivered_kw[d, k] for d, k in m.v2g_dispatch_steps
        )
    )
    m.cost_terms.update(v2g_penalty=m.v2g_penalty, v2g_payment=m.v2g_payment)


def add_objective(m: pyo.ConcreteModel, problem: Problem) -> None:
    m.total_cost = pyo.Objective(
        expr=pyo.quicksum(COST_TERMS[name] * term for name, term in m.cost_terms.items()), sense=pyo.minimize
    )
