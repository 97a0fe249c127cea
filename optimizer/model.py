"""The scheduling model in Pyomo, built as an outline of one ``add_*`` per family.

Notation (all per step ``t`` of length ``Δt`` hours, per vehicle ``v`` while plugged in):

- ``charge_kw[v,t]``, ``discharge_kw[v,t]`` — grid-side power [kW];
- ``energy_kwh[v,t]`` — battery energy at the end of step ``t`` [kWh];
- ``ev_energy_balance``: ``energy[v,t] = energy[v,t-1] + Δt (η_c charge - discharge / η_d)``;
- ``ev_charge_taper`` (vehicles with a :class:`~optimizer.scenario.ChargeTaper`): above the taper's
  state of charge ``s`` the vehicle accepts ``a(E) = P f + k (C - E)`` [kW], ``k = P (1 - f) / (C (1 - s))``
  (``P`` the vehicle's own maximum, ``f`` the fraction left at full, ``C`` the capacity). A step's power
  is constant, and the acceptance falls as the battery fills, so the vehicle can hold it through the
  step only if ``charge[v,t] <= a(energy at the step's end)``. With ``energy[v,t] = energy[v,t-1] + Δt η_c
  charge`` on a charging step that is ``(1 + k η_c Δt) charge[v,t] + k energy[v,t-1] <= P f + k C``, one
  row per plugged step where the bounds do not already imply it, written on the energy at the step's
  start. Discretisation: exact for a constant-power step, conservative against the vehicle, which
  could take more by tapering within the step (with ``x = k η_c Δt``, the step stores ``x / ((1 + x)
  (1 - e^-x))`` of what following ``a(E)`` continuously would, about ``1 - x / 2``: 0.92 for 11 kW on
  60 kWh in 15 min). Evaluating ``a`` at the step's start instead would err the other way, by about
  ``1 + x / 2``, planning energy the vehicle does not take;
- ``ev_charge_discharge_exclusive``: one binary ``is_charging[v,t]`` only for vehicles that may discharge,
  so a fleet without V2G stays a pure LP (unless export pays at least import, prices are negative or a
  paid DR event needs the binaries below);
- ``site_power_balance``: ``import - export = base - generation + curtailment + Σ charge - Σ discharge``
  (curtailment only of the surplus above the export limit; binaries enforce it at negative prices),
  with ``site_import_kw <= import limit`` and ``site_export_kw <= export limit`` as variable bounds;
- ``demand_peak_definition``: ``demand_peak_kw[d] >=`` the average import of every billed interval in the
  charge's windows and ``>=`` the peak already reached this period; only the increase costs money. An
  interval already open at the horizon's start averages its metered energy ``E`` over ``h`` hours with
  its remaining steps: ``(E + Δt Σ import) / (h + n Δt)`` (:mod:`optimizer.demand`);
- ``dr_event_shortfall``: ``dr_shortfall_kw >= import - target``; ``dr_delivered_kw <= baseline - import``
  where paid, lifted by a binary ``dr_is_delivering`` where import may exceed the baseline (delivery is
  ``clip(baseline - import, 0, committed)``, which is not concave); an event with ``delivery="net"``
  delivers ``min(committed, baseline - import)``, negative above the baseline as a settlement that nets
  the window measures it, and needs no binary;
- ``v2g_dispatch_delivery``: ``v2g_delivered_kw <= Σ discharge - Σ charge`` where paid, lifted by a binary
  ``v2g_is_delivering`` where vehicles may charge (delivery is ``clip(net export, 0, request)``);
- ``ev_departure_target``: ``departure_shortfall_kwh[v] >= terminal target - energy at the last step``,
  soft, with :func:`optimizer.problem.default_unmet_penalty` per kWh.

Objective [currency]: ``energy_cost - export_revenue + demand_charge + battery_wear + dr_penalty
- dr_payment + v2g_penalty - v2g_payment + unmet_energy_penalty``; each term is a named
:class:`pyomo.environ.Expression` so results report exactly what the solver optimised.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import pyomo.environ as pyo
from pyomo.common.gc_manager import PauseGC
from pyomo.core.expr.numeric_expr import LinearExpression, MonomialTermExpression

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
    """Build the scheduling model of ``problem``: one site's families and its cost as the objective."""
    m = pyo.ConcreteModel(name=problem.name)
    # Pyomo allocates several objects per variable and constraint; Python's cyclic garbage collector
    # would walk them all again and again while they are being made (it tripled the build time).
    with PauseGC():
        add_site(m, problem)
        add_objective(m, problem)
    return m


def add_site(m: pyo.Block, problem: Problem) -> None:
    """Every family of one site's model on ``m``; the outline reads as the model's structure.

    ``m`` is the model itself (:func:`build_model`) or one site's block of a portfolio model
    (:mod:`optimizer.portfolio`). The site's cost terms end up in ``m.cost_terms`` (see :func:`site_cost`).
    """
    m.cost_terms = {}
    add_index_sets(m, problem)
    add_ev_power(m, problem)
    add_ev_charge_discharge_exclusive(m, problem)
    add_ev_energy_balance(m, problem)
    add_ev_charge_taper(m, problem)
    add_ev_departure_target(m, problem)
    add_site_power_balance(m, problem)
    add_demand_charges(m, problem)
    add_dr_events(m, problem)
    add_v2g_dispatches(m, problem)
    add_charging_urgency(m, problem)


def add_index_sets(m: pyo.ConcreteModel, problem: Problem) -> None:
    """``plugged`` holds (vehicle position, step) pairs; ``v2g_plugged`` the subset that may discharge."""
    plugged = [(i, t) for i, v in enumerate(problem.vehicles) for t in v.steps]
    m.steps = pyo.RangeSet(0, problem.n_steps - 1)
    m.plugged = pyo.Set(initialize=plugged, dimen=2, ordered=True)
    m.v2g_plugged = pyo.Set(
        initialize=[(i, t) for i, t in plugged if problem.vehicles[i].can_discharge], dimen=2, ordered=True
    )
    # Per step, the vehicles plugged in (and those that may discharge) as plain lists: rules look them up
    # instead of testing membership in a Pyomo set, which costs microseconds per test.
    at_step: dict[int, list[int]] = defaultdict(list)
    v2g_at_step: dict[int, list[int]] = defaultdict(list)
    for i, t in plugged:
        at_step[t].append(i)
        if problem.vehicles[i].can_discharge:
            v2g_at_step[t].append(i)
    m.vehicles_at_step = at_step
    m.v2g_vehicles_at_step = v2g_at_step


def add_ev_power(m: pyo.ConcreteModel, problem: Problem) -> None:
    vehicles = problem.vehicles
    m.charge_kw = pyo.Var(
        m.plugged, domain=pyo.NonNegativeReals, bounds=lambda _, i, t: (0.0, vehicles[i].max_charge_kw)
    )
    m.discharge_kw = pyo.Var(
        m.v2g_plugged, domain=pyo.NonNegativeReals, bounds=lambda _, i, t: (0.0, vehicles[i].max_discharge_kw)
    )


def add_ev_charge_discharge_exclusive(m: pyo.ConcreteModel, problem: Problem) -> None:
    """No simultaneous charge and discharge; binaries only where a vehicle can discharge.

    ``charge - P_c is_charging <= 0`` and ``discharge + P_d is_charging <= P_d``. The solver relaxes
    ``is_charging`` first and needs it binary only where burning energy pays
    (:func:`optimizer.solve._solve_exclusivity_relaxed_first`).
    """
    if not len(m.v2g_plugged):
        return
    vehicles = problem.vehicles
    m.is_charging = pyo.Var(m.v2g_plugged, domain=pyo.Binary)
    charge, discharge, is_charging = m.charge_kw, m.discharge_kw, m.is_charging
    m.ev_charge_when_charging = pyo.Constraint(
        m.v2g_plugged,
        rule=lambda m, i, t: (
            _linear([(1.0, charge[i, t]), (-vehicles[i].max_charge_kw, is_charging[i, t])]) <= 0.0
        ),
    )
    m.ev_discharge_when_not_charging = pyo.Constraint(
        m.v2g_plugged,
        rule=lambda m, i, t: (
            _linear([(1.0, discharge[i, t]), (vehicles[i].max_discharge_kw, is_charging[i, t])])
            <= vehicles[i].max_discharge_kw
        ),
    )


def _linear(terms: Iterable[tuple[float, Any]]) -> LinearExpression:
    """``Σ coefficient · variable`` as one flat :class:`LinearExpression`.

    Every constraint of a family indexed by vehicle and step is written as such a sum of variables
    against a constant: it is the cheapest expression for Pyomo to build and for the solver interfaces
    to read (no nested sums to walk, no variables on both sides to subtract).
    """
    return LinearExpression([MonomialTermExpression(term) for term in terms])


def add_ev_energy_balance(m: pyo.ConcreteModel, problem: Problem) -> None:
    """``energy[t] - energy[t-1] - Δt η_c charge[t] + Δt / η_d discharge[t] = 0``; at the first plugged
    step the energy at arrival stands on the right-hand side instead of ``energy[t-1]``."""
    vehicles = problem.vehicles
    dt = problem.step_hours
    m.energy_kwh = pyo.Var(
        m.plugged,
        domain=pyo.NonNegativeReals,
        bounds=lambda _, i, t: (vehicles[i].energy_floor_kwh, vehicles[i].capacity_kwh),
    )
    energy, charge, discharge = m.energy_kwh, m.charge_kw, m.discharge_kw

    def balance(m: pyo.ConcreteModel, i: int, t: int) -> object:
        v = vehicles[i]
        terms = [(1.0, energy[i, t]), (-dt * v.charge_efficiency, charge[i, t])]
        if v.can_discharge:
            terms.append((dt / v.discharge_efficiency, discharge[i, t]))
        if t == v.first_step:
            return _linear(terms) == v.energy_initial_kwh
        terms.append((-1.0, energy[i, t - 1]))
        return _linear(terms) == 0.0

    m.ev_energy_balance = pyo.Constraint(m.plugged, rule=balance)


def add_ev_charge_taper(m: pyo.ConcreteModel, problem: Problem) -> None:
    """``(1 + k η Δt) charge[t] + k energy[t-1] <= P f + k C``: a constant power the vehicle can hold
    through the step under its CC-CV taper (the energy at arrival stands in for ``energy[t-1]`` at the
    first plugged step). Only at the steps :meth:`~optimizer.problem.VehicleSpec.taper_steps` keeps."""
    vehicles = problem.vehicles
    dt = problem.step_hours
    index = [(i, t) for i, v in enumerate(vehicles) for t in v.taper_steps(dt)]
    if not index:
        return
    m.taper_plugged = pyo.Set(initialize=index, dimen=2, ordered=True)
    energy, charge = m.energy_kwh, m.charge_kw

    def taper(m: pyo.ConcreteModel, i: int, t: int) -> object:
        v = vehicles[i]
        k = v.taper_slope_kw_per_kwh
        terms = [(v.taper_charge_coefficient(dt), charge[i, t])]
        rhs = v.taper_full_kw + k * v.capacity_kwh
        if t == v.first_step:
            return _linear(terms) <= rhs - k * v.energy_initial_kwh
        terms.append((k, energy[i, t - 1]))
        return _linear(terms) <= rhs

    m.ev_charge_taper = pyo.Constraint(m.taper_plugged, rule=taper)


def add_ev_departure_target(m: pyo.ConcreteModel, problem: Problem) -> None:
    """Soft departure (or horizon-end) target: ``shortfall + energy at the last step >= terminal target``;
    vehicles with no plugged step pay their gap as a constant (``shortfall >= target - arrival energy``)."""
    vehicles = problem.vehicles
    m.vehicle_ids = pyo.RangeSet(0, len(vehicles) - 1) if vehicles else pyo.Set(initialize=[])
    m.departure_shortfall_kwh = pyo.Var(m.vehicle_ids, domain=pyo.NonNegativeReals)
    shortfall, energy = m.departure_shortfall_kwh, m.energy_kwh

    def target(m: pyo.ConcreteModel, i: int) -> object:
        v = vehicles[i]
        if v.end_step > v.first_step:
            return _linear([(1.0, shortfall[i]), (1.0, energy[i, v.end_step - 1])]) >= v.terminal_energy_kwh
        return _linear([(1.0, shortfall[i])]) >= v.terminal_energy_kwh - v.energy_initial_kwh

    m.ev_departure_target = pyo.Constraint(m.vehicle_ids, rule=target)
    m.unmet_energy_penalty = pyo.Expression(
        expr=_linear((problem.unmet_penalty_per_kwh, x) for x in shortfall.values())
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

    site_import, site_export, curtailment = m.site_import_kw, m.site_export_kw, m.curtailment_kw
    charge, discharge = m.charge_kw, m.discharge_kw
    net_base = [float(x) for x in problem.net_base_kw]

    def balance(m: pyo.ConcreteModel, t: int) -> object:
        # import - export - curtailment - Σ charge + Σ discharge = base - generation
        terms = [(1.0, site_import[t]), (-1.0, site_export[t])]
        if problem.generation_kw[t] > 0:
            terms.append((-1.0, curtailment[t]))
        terms += [(-1.0, charge[i, t]) for i in m.vehicles_at_step.get(t, ())]
        terms += [(1.0, discharge[i, t]) for i in m.v2g_vehicles_at_step.get(t, ())]
        return _linear(terms) == net_base[t]

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

    # Generation is not dispatched: the site curtails only the surplus above the export limit. Curtailing
    # anything else pays only at negative prices (import instead of own generation, or avoid exporting),
    # so there a binary allows curtailment only while exporting at the limit and importing nothing.
    negative = [t for t in generating if min(problem.import_price[t], problem.export_price[t]) < 0]
    if negative:
        m.negative_price_steps = pyo.Set(initialize=negative, ordered=True)
        m.site_is_curtailing = pyo.Var(m.negative_price_steps, domain=pyo.Binary)
        m.site_curtail_when_curtailing = pyo.Constraint(
            m.negative_price_steps,
            rule=lambda m, t: m.curtailment_kw[t] <= problem.generation_kw[t] * m.site_is_curtailing[t],
        )
        m.site_export_at_limit_when_curtailing = pyo.Constraint(
            m.negative_price_steps,
            rule=lambda m, t: m.site_export_kw[t] >= problem.export_limit_kw * m.site_is_curtailing[t],
        )
        m.site_no_import_when_curtailing = pyo.Constraint(
            m.negative_price_steps,
            rule=lambda m, t: m.site_import_kw[t] <= problem.import_limit_kw * (1 - m.site_is_curtailing[t]),
        )

    m.energy_cost = pyo.Expression(
        expr=_linear((float(problem.import_price[t]) * dt, site_import[t]) for t in m.steps)
    )
    m.export_revenue = pyo.Expression(
        expr=_linear((float(problem.export_price[t]) * dt, site_export[t]) for t in m.steps)
    )
    m.battery_wear = pyo.Expression(
        expr=_linear((problem.wear_cost_per_kwh * dt, x) for x in discharge.values())
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

    dt = problem.step_hours

    def peak(m: pyo.ConcreteModel, d: int, k: int) -> object:
        # peak - Σ import / n >= 0; an interval open at the horizon's start also counts its metered
        # part: peak - Δt Σ import / (h + n Δt) >= E / (h + n Δt) (DemandChargeSpec.interval_averages_kw)
        charge, steps = charges[d], charges[d].intervals[k]
        hours, drawn_kwh = len(steps) * dt, 0.0
        if k == 0 and charge.open_interval_hours > 0:
            hours, drawn_kwh = hours + charge.open_interval_hours, charge.open_interval_kwh
        weight = dt / hours
        terms = [(1.0, m.demand_peak_kw[d]), *((-weight, m.site_import_kw[int(t)]) for t in steps)]
        return _linear(terms) >= drawn_kwh / hours

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

    def baseline(e: int, k: int) -> float:
        return float(events[e].target_import_kw[k] + events[e].committed_kw[k])

    def delivered_bounds(_: object, e: int, k: int) -> tuple[float, float]:
        committed = float(events[e].committed_kw[k])
        if events[e].net_delivery:  # as low as the baseline less the import limit
            return (min(0.0, baseline(e, k) - problem.import_limit_kw), committed)
        return (0.0, committed)

    m.dr_delivered_kw = pyo.Var(m.dr_event_steps, domain=pyo.Reals, bounds=delivered_bounds)

    def shortfall(m: pyo.ConcreteModel, e: int, k: int) -> object:
        t = int(events[e].steps[k])
        return m.dr_shortfall_kw[e, k] >= m.site_import_kw[t] - float(events[e].target_import_kw[k])

    # Delivery only matters where it is paid. Clipped: import above the baseline delivers nothing (it
    # is not negative delivery), so where import may exceed the baseline a binary switches the bound
    # off. Net: delivery is min(committed, baseline - import), concave, so the bound alone is exact.
    paid = [(e, k) for e, k in index if events[e].committed_kw[k] > 0 and events[e].payment_per_kwh > 0]
    m.dr_delivery_steps = pyo.Set(initialize=paid, dimen=2, ordered=True)
    m.dr_overload_steps = pyo.Set(
        initialize=[
            (e, k) for e, k in paid if problem.import_limit_kw > baseline(e, k) and not events[e].net_delivery
        ],
        dimen=2,
        ordered=True,
    )
    m.dr_is_delivering = pyo.Var(m.dr_overload_steps, domain=pyo.Binary)

    def delivered(m: pyo.ConcreteModel, e: int, k: int) -> object:
        room = baseline(e, k) - m.site_import_kw[int(events[e].steps[k])]
        if (e, k) in m.dr_overload_steps:
            room += (problem.import_limit_kw - baseline(e, k)) * (1 - m.dr_is_delivering[e, k])
        return m.dr_delivered_kw[e, k] <= room

    m.dr_event_shortfall = pyo.Constraint(m.dr_event_steps, rule=shortfall)
    m.dr_event_delivery = pyo.Constraint(m.dr_delivery_steps, rule=delivered)
    m.dr_delivery_when_delivering = pyo.Constraint(
        m.dr_overload_steps,
        rule=lambda m, e, k: m.dr_delivered_kw[e, k] <= events[e].committed_kw[k] * m.dr_is_delivering[e, k],
    )
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
    index = [(d, k) for d, dispatch in enumerate(dispatches) for k in range(len(dispatch.steps))]

    def room(d: int, k: int, limit: str) -> float:
        """Sum of the plugged vehicles' ``max_charge_kw`` or ``max_discharge_kw`` in the dispatch step."""
        at = m.vehicles_at_step.get(int(dispatches[d].steps[k]), ())
        return sum(getattr(problem.vehicles[i], limit) for i in at)

    def net_export(d: int, k: int) -> Any:
        t = int(dispatches[d].steps[k])
        at = m.vehicles_at_step.get(t, ())
        return pyo.quicksum(m.discharge_kw[i, t] for i in at if (i, t) in m.v2g_plugged) - pyo.quicksum(
            m.charge_kw[i, t] for i in at
        )

    penalty, payment = add_soft_export(
        m,
        "v2g",
        index,
        steps_name="v2g_dispatch_steps",
        delivery_name="v2g_dispatch_delivery",
        step_hours=problem.step_hours,
        requested_kw=lambda d: dispatches[d].export_kw,
        payment_per_kwh=lambda d: dispatches[d].price_per_kwh,
        penalty_per_kwh=lambda d: dispatches[d].penalty_per_kwh,
        room=room,
        net_export=net_export,
    )
    m.cost_terms.update(v2g_penalty=penalty, v2g_payment=payment)


def add_soft_export(
    m: pyo.Block,
    prefix: str,
    index: list[tuple[int, int]],
    *,
    steps_name: str,
    delivery_name: str,
    step_hours: float,
    requested_kw: Callable[[int], float],
    payment_per_kwh: Callable[[int], float],
    penalty_per_kwh: Callable[[int], float],
    room: Callable[[int, int, str], float],
    net_export: Callable[[int, int], Any],
) -> tuple[pyo.Expression, pyo.Expression]:
    """A soft request for net vehicle export over steps ``index`` of requests ``(r, k)``: delivery
    ``{prefix}_delivered_kw`` paid up to the request, the rest penalised; its (penalty, payment) [currency].

    Shared by a site's V2G dispatches and a portfolio's joint export; ``room(r, k, limit)`` is the plugged
    vehicles' summed ``max_charge_kw`` / ``max_discharge_kw`` and ``net_export(r, k)`` their discharge minus
    charge [kW] in that step.
    """
    steps = pyo.Set(initialize=index, dimen=2, ordered=True)
    m.add_component(steps_name, steps)
    # Where no plugged vehicle can discharge nothing can be delivered.
    delivered = pyo.Var(
        steps,
        domain=pyo.NonNegativeReals,
        bounds=lambda _, r, k: (0.0, requested_kw(r) if room(r, k, "max_discharge_kw") > 0 else 0.0),
    )
    m.add_component(f"{prefix}_delivered_kw", delivered)

    # Delivery only matters where it is paid or penalised. Net charging delivers nothing (it is not
    # negative delivery), so where vehicles may charge a binary switches the bound off.
    paid = [
        (r, k)
        for r, k in index
        if requested_kw(r) > 0
        and payment_per_kwh(r) + penalty_per_kwh(r) > 0
        and room(r, k, "max_discharge_kw") > 0
    ]
    delivery_steps = pyo.Set(initialize=paid, dimen=2, ordered=True)
    charging_steps = pyo.Set(
        initialize=[(r, k) for r, k in paid if room(r, k, "max_charge_kw") > 0], dimen=2, ordered=True
    )
    is_delivering = pyo.Var(charging_steps, domain=pyo.Binary)
    m.add_component(f"{prefix}_delivery_steps", delivery_steps)
    m.add_component(f"{prefix}_charging_steps", charging_steps)
    m.add_component(f"{prefix}_is_delivering", is_delivering)

    def delivery(_: pyo.Block, r: int, k: int) -> object:
        bound = net_export(r, k)
        if (r, k) in charging_steps:
            bound += room(r, k, "max_charge_kw") * (1 - is_delivering[r, k])
        return delivered[r, k] <= bound

    m.add_component(delivery_name, pyo.Constraint(delivery_steps, rule=delivery))
    m.add_component(
        f"{prefix}_delivery_when_delivering",
        pyo.Constraint(
            charging_steps, rule=lambda _, r, k: delivered[r, k] <= requested_kw(r) * is_delivering[r, k]
        ),
    )
    penalty = pyo.Expression(
        expr=step_hours
        * pyo.quicksum(penalty_per_kwh(r) * (requested_kw(r) - delivered[r, k]) for r, k in index)
    )
    payment = pyo.Expression(
        expr=step_hours * pyo.quicksum(payment_per_kwh(r) * delivered[r, k] for r, k in index)
    )
    m.add_component(f"{prefix}_penalty", penalty)
    m.add_component(f"{prefix}_payment", payment)
    return penalty, payment


def add_charging_urgency(m: pyo.ConcreteModel, problem: Problem) -> None:
    """A small preference for charging the least flexible vehicles first (not money; online use).

    ``charging_urgency = w Δt Σ t / (laxity_v + 1) · charge[v,t]``, with ``laxity_v`` the steps a
    vehicle could stay idle and still reach its target at full power. Among schedules of equal cost
    it charges early, least-laxity first, which leaves the most room for vehicles that have not
    arrived yet. Off (``w = 0``) unless :attr:`Problem.charging_urgency_weight` is set.
    """
    weight = problem.charging_urgency_weight
    if not weight or not len(m.plugged):
        return
    dt = problem.step_hours
    priority = []
    for v in problem.vehicles:
        need = max(v.terminal_energy_kwh - v.energy_initial_kwh, 0.0)
        full_power_steps = need / (v.max_charge_kw * v.charge_efficiency * dt) if v.max_charge_kw else 0.0
        priority.append(1.0 / max(v.end_step - v.first_step - full_power_steps + 1.0, 1.0))
    charge = m.charge_kw
    m.charging_urgency = pyo.Expression(
        expr=_linear((weight * dt * t * priority[i], charge[i, t]) for i, t in m.plugged)
    )


def site_cost(m: pyo.Block) -> Any:
    """The cost [currency] of the site built on ``m`` by :func:`add_site`: every term of ``m.cost_terms``
    with its sign in :data:`COST_TERMS`, plus the charging-urgency preference where there is one."""
    expr = pyo.quicksum(COST_TERMS[name] * term for name, term in m.cost_terms.items())
    if hasattr(m, "charging_urgency"):
        expr = expr + m.charging_urgency
    return expr


def add_objective(m: pyo.ConcreteModel, problem: Problem) -> None:
    m.total_cost = pyo.Objective(expr=site_cost(m), sense=pyo.minimize)
