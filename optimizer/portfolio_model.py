"""The joint model of several sites: every site's own model, plus the events met by their sum.

:func:`build_portfolio_model` builds each site's model (:func:`optimizer.model.add_site`, the same
families as a single site) on its own block ``site[<id>]`` of one Pyomo model and adds every
:class:`~optimizer.portfolio_problem.PortfolioEventSpec` as a soft commitment over the sum of its sites.

Notation per event ``e`` and event step ``k`` (horizon step ``t``, length ``Δt`` hours), over the sites
``s`` the event names, with ``R`` the requested power [kW]:

- reduction: joint baseline ``B = Σ_s baseline_kw[s,k]``, joint import ``I = Σ_s site_import_kw[s,t]``;
  ``portfolio_dr_shortfall``: ``portfolio_dr_shortfall_kw >= I - (B - R)``;
  ``portfolio_dr_delivery``: ``portfolio_dr_delivered_kw <= B - I`` where paid, lifted by a binary
  ``portfolio_dr_is_delivering`` where the sites' import limits allow ``I > B`` (delivery is
  ``clip(B - I, 0, R)``, which is not concave; as for :class:`~optimizer.scenario.DrEvent`);
- V2G export: ``portfolio_v2g_delivery``: ``portfolio_v2g_delivered_kw <= Σ_s (Σ discharge - Σ charge)``
  where paid or penalised, lifted by a binary ``portfolio_v2g_is_delivering`` where vehicles may charge
  (delivery ``clip(net export, 0, R)``, shortfall ``R - delivery``; as for
  :class:`~optimizer.scenario.V2gDispatch`).

Objective [currency]: ``Σ_s site_cost(s) + portfolio_dr_penalty - portfolio_dr_payment
+ portfolio_v2g_penalty - portfolio_v2g_payment`` (:func:`optimizer.model.site_cost`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyomo.environ as pyo
from pyomo.common.gc_manager import PauseGC

from optimizer.model import add_site, add_soft_export, site_cost
from optimizer.portfolio_problem import PortfolioEventSpec
from optimizer.problem import Problem

PORTFOLIO_TERMS: dict[str, int] = {
    "portfolio_dr_penalty": +1,
    "portfolio_dr_payment": -1,
    "portfolio_v2g_penalty": +1,
    "portfolio_v2g_payment": -1,
}
"""The portfolio's own objective terms with their signs (the sites' terms are in ``COST_TERMS``)."""


def build_portfolio_model(
    problems: Sequence[Problem], events: Sequence[PortfolioEventSpec]
) -> pyo.ConcreteModel:
    """One model of every site and every event; the outline reads as the model's structure."""
    m = pyo.ConcreteModel(name="portfolio")
    m.cost_terms = {}
    with PauseGC():  # see optimizer.model.build_model
        add_sites(m, problems)
        add_portfolio_reductions(m, problems, events)
        add_portfolio_exports(m, problems, events)
        add_portfolio_objective(m)
    return m


def add_sites(m: pyo.ConcreteModel, problems: Sequence[Problem]) -> None:
    """Each site's whole model (:func:`optimizer.model.add_site`) on the block ``site[<site id>]``."""
    m.site_ids = pyo.Set(initialize=[p.site_id for p in problems], ordered=True)
    m.site = pyo.Block(m.site_ids)
    for problem in problems:
        add_site(m.site[problem.site_id], problem)


def add_portfolio_reductions(
    m: pyo.ConcreteModel, problems: Sequence[Problem], events: Sequence[PortfolioEventSpec]
) -> None:
    """Soft joint import reduction below the joint baseline, paid up to the request (see module notes)."""
    index = [
        (e, k) for e, event in enumerate(events) if event.kind == "reduction" for k in range(len(event.steps))
    ]
    if not index:
        return
    dt = problems[0].step_hours

    def joint_import(e: int, k: int) -> Any:
        t = int(events[e].steps[k])
        return pyo.quicksum(m.site[problems[p].site_id].site_import_kw[t] for p in events[e].sites)

    def baseline(e: int, k: int) -> float:
        return float(events[e].baseline_kw[:, k].sum())

    def committed(e: int, k: int) -> float:
        """The most that can be delivered [kW]: the request, or all of the baseline (import >= 0)."""
        return min(events[e].requested_kw, max(baseline(e, k), 0.0))

    def headroom(e: int, k: int) -> float:
        """How far the sites' import limits allow the joint import above the joint baseline [kW]."""
        return sum(problems[p].import_limit_kw for p in events[e].sites) - baseline(e, k)

    m.portfolio_dr_steps = pyo.Set(initialize=index, dimen=2, ordered=True)
    m.portfolio_dr_shortfall_kw = pyo.Var(m.portfolio_dr_steps, domain=pyo.NonNegativeReals)
    m.portfolio_dr_delivered_kw = pyo.Var(
        m.portfolio_dr_steps, domain=pyo.NonNegativeReals, bounds=lambda _, e, k: (0.0, committed(e, k))
    )
    m.portfolio_dr_shortfall = pyo.Constraint(
        m.portfolio_dr_steps,
        rule=lambda m, e, k: (
            m.portfolio_dr_shortfall_kw[e, k]
            >= joint_import(e, k) - (baseline(e, k) - events[e].requested_kw)
        ),
    )

    # Delivery only matters where it is paid. Import above the baseline delivers nothing (it is not
    # negative delivery), so where the joint import may exceed the baseline a binary switches the bound off.
    paid = [(e, k) for e, k in index if committed(e, k) > 0 and events[e].payment_per_kwh > 0]
    m.portfolio_dr_delivery_steps = pyo.Set(initialize=paid, dimen=2, ordered=True)
    m.portfolio_dr_overload_steps = pyo.Set(
        initialize=[(e, k) for e, k in paid if headroom(e, k) > 0], dimen=2, ordered=True
    )
    m.portfolio_dr_is_delivering = pyo.Var(m.portfolio_dr_overload_steps, domain=pyo.Binary)

    def delivered(m: pyo.ConcreteModel, e: int, k: int) -> object:
        room = baseline(e, k) - joint_import(e, k)
        if (e, k) in m.portfolio_dr_overload_steps:
            room += headroom(e, k) * (1 - m.portfolio_dr_is_delivering[e, k])
        return m.portfolio_dr_delivered_kw[e, k] <= room

    m.portfolio_dr_delivery = pyo.Constraint(m.portfolio_dr_delivery_steps, rule=delivered)
    m.portfolio_dr_delivery_when_delivering = pyo.Constraint(
        m.portfolio_dr_overload_steps,
        rule=lambda m, e, k: (
            m.portfolio_dr_delivered_kw[e, k] <= committed(e, k) * m.portfolio_dr_is_delivering[e, k]
        ),
    )
    m.portfolio_dr_penalty = pyo.Expression(
        expr=dt
        * pyo.quicksum(events[e].penalty_per_kwh * m.portfolio_dr_shortfall_kw[e, k] for e, k in index)
    )
    m.portfolio_dr_payment = pyo.Expression(
        expr=dt
        * pyo.quicksum(events[e].payment_per_kwh * m.portfolio_dr_delivered_kw[e, k] for e, k in index)
    )
    m.cost_terms.update(
        portfolio_dr_penalty=m.portfolio_dr_penalty, portfolio_dr_payment=m.portfolio_dr_payment
    )


def add_portfolio_exports(
    m: pyo.ConcreteModel, problems: Sequence[Problem], events: Sequence[PortfolioEventSpec]
) -> None:
    """Soft joint net export of the sites' vehicles, paid up to the request (see module notes)."""
    index = [
        (e, k)
        for e, event in enumerate(events)
        if event.kind == "v2g_export"
        for k in range(len(event.steps))
    ]
    if not index:
        return
    dt = problems[0].step_hours

    def room(e: int, k: int, limit: str) -> float:
        """Sum of the plugged vehicles' ``max_charge_kw`` or ``max_discharge_kw`` over the event's sites."""
        t = int(events[e].steps[k])
        return sum(
            getattr(problems[p].vehicles[i], limit)
            for p in events[e].sites
            for i in m.site[problems[p].site_id].vehicles_at_step.get(t, ())
        )

    def net_export(e: int, k: int) -> Any:
        """Σ discharge - Σ charge of the vehicles plugged in at the event's sites [kW]."""
        t, terms = int(events[e].steps[k]), []
        for p in events[e].sites:
            site = m.site[problems[p].site_id]
            terms += [site.discharge_kw[i, t] for i in site.v2g_vehicles_at_step.get(t, ())]
            terms += [-site.charge_kw[i, t] for i in site.vehicles_at_step.get(t, ())]
        return pyo.quicksum(terms)

    penalty, payment = add_soft_export(
        m,
        "portfolio_v2g",
        index,
        steps_name="portfolio_v2g_steps",
        delivery_name="portfolio_v2g_delivery",
        step_hours=dt,
        requested_kw=lambda e: events[e].requested_kw,
        payment_per_kwh=lambda e: events[e].payment_per_kwh,
        penalty_per_kwh=lambda e: events[e].penalty_per_kwh,
        room=room,
        net_export=net_export,
    )
    m.cost_terms.update(portfolio_v2g_penalty=penalty, portfolio_v2g_payment=payment)


def add_portfolio_objective(m: pyo.ConcreteModel) -> None:
    sites = pyo.quicksum(site_cost(m.site[s]) for s in m.site_ids)
    own = pyo.quicksum(PORTFOLIO_TERMS[name] * term for name, term in m.cost_terms.items())
    m.total_cost = pyo.Objective(expr=sites + own, sense=pyo.minimize)
