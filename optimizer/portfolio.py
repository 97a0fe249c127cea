"""Several sites scheduled in one model, so that an event naming them all is split by the optimisation.

A grid operator's event may name several sites: "reduce the portfolio's import by 300 kW from 17:00 to
19:00" or "export 200 kW from the vehicles". :func:`solve_portfolio` builds each site's model
(:func:`optimizer.model.add_site`, the same families as a single site) on its own block ``site[<id>]`` of
one Pyomo model and adds every :class:`PortfolioEvent` as a soft commitment over the sum of its sites.

The work is split as for a single site: :mod:`optimizer.portfolio_problem` checks the inputs and puts
the events on the step grid; :mod:`optimizer.portfolio_model` builds the joint model (its notation and
objective are written at its top); this module solves it, falls back to earliest-deadline-first
schedules, and prices the events from the returned schedules (:func:`evaluate_event`).

An event is measured on the sum of its sites, as a grid operator measures a portfolio: a site above its
baseline offsets another below it. The split reported per site and step (:class:`EventSplit`) is each
site's own contribution, signed: its import below its baseline, or its vehicles' net export.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyomo.environ as pyo

from optimizer.evaluation import evaluate
from optimizer.model import site_cost
from optimizer.online import with_metered_demand
from optimizer.portfolio_model import PORTFOLIO_TERMS, build_portfolio_model
from optimizer.portfolio_problem import (
    EventKind,
    PortfolioEvent,
    PortfolioEventSpec,
    build_portfolio,
    check_portfolio,
)
from optimizer.problem import Problem
from optimizer.results import ScheduleResult, SolveStatus
from optimizer.scenario import Scenario
from optimizer.solve import SolverOptions, fallback_result, relative_gap, solve_model, vehicle_powers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventSplit:
    """How the sites met one event, per event step [kW] (the split came out of the optimisation)."""

    id: str
    kind: EventKind
    index: pd.DatetimeIndex
    """Start of each event step."""
    step_hours: float
    requested_kw: float
    site_kw: dict[str, np.ndarray]
    """The split: per site its import below its baseline (reduction) or its vehicles' net export (V2G),
    signed: a site above its baseline, or charging, contributes a negative amount."""
    total_kw: np.ndarray
    """Sum of ``site_kw`` over the sites."""
    delivered_kw: np.ndarray
    """Credited delivery: ``clip(total_kw, 0, requested_kw)``."""
    shortfall_kw: np.ndarray
    """Charged shortfall: ``requested_kw - total_kw`` (reduction; import above the joint baseline adds
    to it, as for a site's DR event), ``requested_kw - delivered_kw`` (V2G); never negative."""
    payment: float
    """[currency]"""
    penalty: float
    """[currency]"""

    @property
    def delivered_kwh(self) -> float:
        return float(self.delivered_kw.sum() * self.step_hours)

    @property
    def shortfall_kwh(self) -> float:
        return float(self.shortfall_kw.sum() * self.step_hours)

    @property
    def table(self) -> pd.DataFrame:
        """One row per event step: one column per site (the split), total, delivered and shortfall [kW]."""
        columns = {f"{site}_kw": kw for site, kw in self.site_kw.items()}
        columns |= {"total_kw": self.total_kw, "delivered_kw": self.delivered_kw}
        return pd.DataFrame({"start": self.index, **columns, "shortfall_kw": self.shortfall_kw})


@dataclass
class PortfolioResult:
    """The joint schedule: one :class:`ScheduleResult` per site, usable as a single site's, and the split."""

    status: SolveStatus
    objective: float
    """What was minimised [currency]: every site's objective plus the events' penalties minus payments."""
    sites: dict[str, ScheduleResult]
    """Per site id, in the scenarios' order. Each one's objective and costs are the site's own."""
    events: dict[str, EventSplit]
    bound: float | None = None
    gap: float | None = None
    build_seconds: float = 0.0
    solve_seconds: float = 0.0
    message: str = ""
    model_costs: dict[str, float] = field(default_factory=dict)
    """The portfolio terms (:data:`PORTFOLIO_TERMS`) as the solver valued them (empty for heuristics)."""

    @property
    def is_ok(self) -> bool:
        return self.status.is_ok

    @property
    def is_heuristic(self) -> bool:
        return self.status is SolveStatus.HEURISTIC

    @property
    def costs(self) -> dict[str, float]:
        """The portfolio terms priced from the returned schedules."""
        return _event_costs(self.events.values())

    @property
    def total_cost(self) -> float:
        """Money paid minus money earned by all sites and events (no unmet-energy penalty)."""
        own = sum(PORTFOLIO_TERMS[name] * value for name, value in self.costs.items())
        return sum(site.total_cost for site in self.sites.values()) + own

    @property
    def evaluated_objective(self) -> float:
        """The objective of the returned schedules priced independently of the solver."""
        own = sum(PORTFOLIO_TERMS[name] * value for name, value in self.costs.items())
        return sum(site.evaluation.objective for site in self.sites.values()) + own


def solve_portfolio(
    scenarios: Sequence[Scenario],
    events: Sequence[PortfolioEvent] = (),
    options: SolverOptions | None = None,
    *,
    charging_urgency_weight: float = 0.0,
    metered_kw: Mapping[str, pd.Series] | None = None,
) -> PortfolioResult:
    """Schedule every site of ``scenarios`` jointly, meeting ``events`` with their sum.

    ``charging_urgency_weight`` is every site's :attr:`~optimizer.problem.Problem.charging_urgency_weight`
    (the rolling horizon's tie-breaker [currency/kWh per step]; 0 offline). ``metered_kw``: site id →
    its metered import this billing period, read as a plan starting now reads it
    (:func:`optimizer.online.with_metered_demand`).

    Raises :class:`~optimizer.errors.ScenarioError` for impossible inputs before anything is built.
    Never returns an empty schedule: without a feasible solution from the solver (time-out before the
    first incumbent, solver error), or with an incumbent worse than it, every site gets its
    earliest-deadline-first schedule, marked :attr:`SolveStatus.HEURISTIC`.
    """
    options = options or SolverOptions()
    problems, specs = build_portfolio(scenarios, events)
    metered_kw = metered_kw or {}
    problems = [
        with_metered_demand(p, metered_kw[p.site_id]) if p.site_id in metered_kw else p for p in problems
    ]
    if charging_urgency_weight:
        problems = [replace(p, charging_urgency_weight=charging_urgency_weight) for p in problems]
    started = time.perf_counter()
    model = build_portfolio_model(problems, specs)
    build_seconds = time.perf_counter() - started

    outcome, solve_seconds = solve_model(model, options, f"a portfolio of {len(problems)} sites")

    if not outcome.has_solution:
        message = f"{outcome.message}; earliest-deadline-first schedules returned instead"
        log.warning("no feasible portfolio schedule: %s", message)
        fallback = _fallback_portfolio(problems, specs, message)
        fallback.build_seconds, fallback.solve_seconds = build_seconds, solve_seconds
        return fallback

    status = SolveStatus.OPTIMAL if outcome.optimal else SolveStatus.FEASIBLE
    sites = {
        p.site_id: _site_result(
            model.site[p.site_id], p, status, outcome.message, build_seconds, solve_seconds
        )
        for p in problems
    }
    objective = outcome.objective if outcome.objective is not None else pyo.value(model.total_cost)
    result = PortfolioResult(
        status=status,
        objective=float(objective),
        sites=sites,
        events=_splits(specs, problems, sites),
        bound=outcome.bound,
        gap=relative_gap(objective, outcome.bound),
        build_seconds=build_seconds,
        solve_seconds=solve_seconds,
        message=outcome.message,
        model_costs={name: float(pyo.value(term)) for name, term in model.cost_terms.items()},
    )
    if not outcome.optimal:
        fallback = _fallback_portfolio(problems, specs, "")
        evaluated = result.evaluated_objective
        if fallback.objective < evaluated - 1e-9 * max(1.0, abs(evaluated)):
            message = (
                f"{outcome.message} with an incumbent of {objective:.6g}; the earliest-deadline-first "
                f"schedules ({fallback.objective:.6g}) are better and returned instead"
            )
            log.warning("poor portfolio incumbent: %s", message)
            for site in fallback.sites.values():
                site.message = message
            fallback.message, fallback.bound = message, outcome.bound
            fallback.gap = relative_gap(fallback.objective, outcome.bound)
            fallback.build_seconds, fallback.solve_seconds = build_seconds, solve_seconds
            return fallback
    return result


def evaluate_event(
    event: PortfolioEventSpec, problems: Sequence[Problem], sites: Sequence[ScheduleResult]
) -> EventSplit:
    """Price ``event`` from the sites' returned schedules alone (``sites`` in the problems' order)."""
    contributions = {}
    for row, p in enumerate(event.sites):
        result = sites[p]
        if event.kind == "reduction":
            kw = event.baseline_kw[row] - result.evaluation.import_kw[event.steps]
        else:
            kw = (result.discharge_kw.sum(axis=0) - result.charge_kw.sum(axis=0))[event.steps]
        contributions[problems[p].site_id] = np.asarray(kw, dtype=float)
    total = np.sum(list(contributions.values()), axis=0) if contributions else np.zeros(len(event.steps))
    requested = event.requested_kw
    delivered = np.clip(total, 0.0, requested)
    shortfall = np.maximum(requested - total, 0.0) if event.kind == "reduction" else requested - delivered
    hours = problems[0].step_hours
    return EventSplit(
        id=event.id,
        kind=event.kind,
        index=problems[0].index[event.steps],
        step_hours=hours,
        requested_kw=requested,
        site_kw=contributions,
        total_kw=total,
        delivered_kw=delivered,
        shortfall_kw=shortfall,
        payment=float(event.payment_per_kwh * delivered.sum() * hours),
        penalty=float(event.penalty_per_kwh * shortfall.sum() * hours),
    )


def _splits(
    specs: Sequence[PortfolioEventSpec], problems: Sequence[Problem], sites: dict[str, ScheduleResult]
) -> dict[str, EventSplit]:
    ordered = [sites[p.site_id] for p in problems]
    return {spec.id: evaluate_event(spec, problems, ordered) for spec in specs}


def _event_costs(splits: Any) -> dict[str, float]:
    costs = dict.fromkeys(PORTFOLIO_TERMS, 0.0)
    for split in splits:
        kind = "dr" if split.kind == "reduction" else "v2g"
        costs[f"portfolio_{kind}_payment"] += split.payment
        costs[f"portfolio_{kind}_penalty"] += split.penalty
    return costs


def _site_result(
    block: pyo.Block,
    problem: Problem,
    status: SolveStatus,
    message: str,
    build_seconds: float,
    solve_seconds: float,
) -> ScheduleResult:
    """One site's schedule from its block, shaped exactly as :func:`optimizer.solve.optimize` returns it.

    The bound and gap belong to the portfolio (see :class:`PortfolioResult`); a site has none of its own.
    """
    charge, discharge = vehicle_powers(block, problem)
    return ScheduleResult(
        policy="milp",
        status=status,
        problem=problem,
        charge_kw=charge,
        discharge_kw=discharge,
        evaluation=evaluate(problem, charge, discharge),
        objective=float(pyo.value(site_cost(block))),
        build_seconds=build_seconds,
        solve_seconds=solve_seconds,
        message=f"solved jointly with the portfolio: {message}",
        model_costs={name: float(pyo.value(term)) for name, term in block.cost_terms.items()},
    )


def _fallback_portfolio(
    problems: Sequence[Problem], specs: Sequence[PortfolioEventSpec], message: str
) -> PortfolioResult:
    """Every site's earliest-deadline-first schedule, the events priced on it."""
    sites = {p.site_id: fallback_result(p, message) for p in problems}
    splits = _splits(specs, problems, sites)
    own = _event_costs(splits.values())
    objective = sum(site.objective for site in sites.values())
    objective += sum(PORTFOLIO_TERMS[name] * value for name, value in own.items())
    return PortfolioResult(
        status=SolveStatus.HEURISTIC, objective=objective, sites=sites, events=splits, message=message
    )


__all__ = [
    "PORTFOLIO_TERMS",
    "EventKind",
    "EventSplit",
    "PortfolioEvent",
    "PortfolioEventSpec",
    "PortfolioResult",
    "build_portfolio",
    "build_portfolio_model",
    "check_portfolio",
    "evaluate_event",
    "solve_portfolio",
]
