"""Several sites scheduled in one model, so that an event naming them all is split by the optimisation.

A grid operator's event may name several sites: "reduce the portfolio's import by 300 kW from 17:00 to
19:00" or "export 200 kW from the vehicles". :func:`solve_portfolio` builds each site's model
(:func:`optimizer.model.add_site`, the same families as a single site) on its own block ``site[<id>]`` of
one Pyomo model and adds every :class:`PortfolioEvent` as a soft commitment over the sum of its sites.

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

An event is measured on the sum of its sites, as a grid operator measures a portfolio: a site above its
baseline offsets another below it. The split reported per site and step (:class:`EventSplit`) is each
site's own contribution, signed: its import below its baseline, or its vehicles' net export.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyomo.environ as pyo
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pyomo.common.gc_manager import PauseGC

from optimizer.errors import ScenarioError
from optimizer.evaluation import evaluate
from optimizer.model import add_site, add_soft_export, site_cost
from optimizer.problem import DispatchSpec, Problem, build_problem, default_unmet_penalty
from optimizer.results import ScheduleResult, SolveStatus
from optimizer.scenario import AwareDatetime, NonNegative, Scenario, Series
from optimizer.solve import (
    SolverOptions,
    fallback_result,
    relative_gap,
    solve_model,
    vehicle_powers,
)

log = logging.getLogger(__name__)

EventKind = Literal["reduction", "v2g_export"]

PORTFOLIO_TERMS: dict[str, int] = {
    "portfolio_dr_penalty": +1,
    "portfolio_dr_payment": -1,
    "portfolio_v2g_penalty": +1,
    "portfolio_v2g_payment": -1,
}
"""The portfolio's own objective terms with their signs (the sites' terms are in ``COST_TERMS``)."""


class PortfolioEvent(BaseModel):
    """A grid operator's event met by the sum of several sites.

    ``reduction``: keep the sites' joint import ``requested_kw`` below their joint baseline, the sum of
    ``baseline_kw``: per site the import it would have without the event (the caller's counterfactual
    plan of that site), one number or one per event step. ``v2g_export``: a net export of
    ``requested_kw`` from the sites' vehicles (their discharge minus their charge). Delivery is paid up
    to the request; every kWh short of it is charged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    kind: EventKind
    start: AwareDatetime
    end: AwareDatetime
    requested_kw: NonNegative = Field(description="Requested joint reduction or net vehicle export [kW]")
    payment_per_kwh: NonNegative = Field(0.0, description="Paid per kWh delivered [currency/kWh]")
    penalty_per_kwh: NonNegative = Field(0.0, description="Charged per kWh short [currency/kWh]")
    site_ids: list[str] = Field(min_length=1, description="The sites that meet the event together")
    baseline_kw: dict[str, Series] = Field(
        default_factory=dict,
        description="Reductions: per site, its import without the event [kW], one number or one per step",
    )

    @model_validator(mode="after")
    def _sites_and_baselines(self) -> PortfolioEvent:
        where = f"portfolio event {self.id!r}"
        repeated = sorted({s for s in self.site_ids if self.site_ids.count(s) > 1})
        if repeated:
            raise ValueError(f"{where}: site_ids names {repeated} more than once")
        if self.kind == "v2g_export" and self.baseline_kw:
            raise ValueError(f"{where}: baseline_kw is only for reduction events, not {self.kind}")
        missing = [s for s in self.site_ids if s not in self.baseline_kw]
        if self.kind == "reduction" and missing:
            raise ValueError(f"{where}: baseline_kw has no baseline for sites {missing}")
        unknown = sorted(set(self.baseline_kw) - set(self.site_ids))
        if unknown:
            raise ValueError(f"{where}: baseline_kw names sites {unknown} that are not in site_ids")
        for site, values in self.baseline_kw.items():
            for position, value in enumerate(values if isinstance(values, list) else [values]):
                if value < 0:
                    raise ValueError(
                        f"{where}: baseline_kw[{site!r}] is negative ({value}) at position {position}"
                    )
        return self


@dataclass(frozen=True)
class PortfolioEventSpec:
    """A :class:`PortfolioEvent` on the step grid."""

    id: str
    kind: EventKind
    steps: np.ndarray
    """Horizon steps of the event."""
    requested_kw: float
    payment_per_kwh: float
    penalty_per_kwh: float
    sites: list[int]
    """Positions of the event's sites among the portfolio's scenarios."""
    baseline_kw: np.ndarray
    """Site (in ``sites`` order) × event step [kW]; all zeros for a V2G export."""


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
) -> PortfolioResult:
    """Schedule every site of ``scenarios`` jointly, meeting ``events`` with their sum.

    ``charging_urgency_weight`` is every site's :attr:`~optimizer.problem.Problem.charging_urgency_weight`
    (the rolling horizon's tie-breaker [currency/kWh per step]; 0 offline).

    Raises :class:`~optimizer.errors.ScenarioError` for impossible inputs before anything is built.
    Never returns an empty schedule: without a feasible solution from the solver (time-out before the
    first incumbent, solver error), or with an incumbent worse than it, every site gets its
    earliest-deadline-first schedule, marked :attr:`SolveStatus.HEURISTIC`.
    """
    options = options or SolverOptions()
    problems, specs = build_portfolio(scenarios, events)
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


def build_portfolio(
    scenarios: Sequence[Scenario], events: Sequence[PortfolioEvent]
) -> tuple[list[Problem], list[PortfolioEventSpec]]:
    """Check the portfolio and convert it to one :class:`Problem` per site and the events on the step grid.

    A site's default unmet-energy penalty (:func:`optimizer.problem.default_unmet_penalty`) also covers
    the portfolio events it takes part in, so that meeting departure targets still always wins.
    """
    check_portfolio(scenarios, events)
    positions = {scenario.site.id: p for p, scenario in enumerate(scenarios)}
    specs = [_event_spec(scenarios[0], event, positions) for event in events]
    problems = []
    for p, scenario in enumerate(scenarios):
        problem = build_problem(scenario)
        mine = [e for e in specs if p in e.sites]
        if mine and scenario.unmet_energy_penalty_per_kwh is None:
            # Per kWh an event is worth its payment plus its penalty, as a V2G dispatch is.
            pseudo = [
                DispatchSpec(e.id, e.steps, e.requested_kw, e.payment_per_kwh, e.penalty_per_kwh)
                for e in mine
            ]
            penalty = default_unmet_penalty(replace(problem, dispatches=[*problem.dispatches, *pseudo]))
            problem = replace(problem, unmet_penalty_per_kwh=penalty)
        problems.append(problem)
    return problems, specs


def check_portfolio(scenarios: Sequence[Scenario], events: Sequence[PortfolioEvent]) -> None:
    """Raise :class:`ScenarioError` naming the scenario or event for the first impossible input found.

    Each scenario is checked on its own by :func:`optimizer.problem.build_problem`; here what needs
    several: a shared step grid, distinct sites, events on the grid and naming known sites.
    """
    if not scenarios:
        raise ScenarioError("portfolio", "scenarios", "is empty: give one scenario per site")
    first = scenarios[0]
    owner: dict[str, str] = {}
    for scenario in scenarios:
        obj = f"scenario {scenario.name!r} (site {scenario.site.id!r})"
        for name in ("start", "step_minutes", "n_steps"):
            mine, theirs = getattr(scenario, name), getattr(first, name)
            if mine != theirs:
                raise ScenarioError(
                    obj,
                    name,
                    f"={_show(mine)} differs from {_show(theirs)} of scenario {first.name!r}: the sites of "
                    "a portfolio share start, step_minutes and n_steps",
                )
        if scenario.site.id in owner:
            raise ScenarioError(obj, "site.id", f"is also the site of scenario {owner[scenario.site.id]!r}")
        owner[scenario.site.id] = scenario.name
    seen: set[str] = set()
    for event in events:
        obj = f"portfolio event {event.id!r}"
        if event.id in seen:
            raise ScenarioError(obj, "id", "appears twice")
        seen.add(event.id)
        if event.end <= event.start:
            raise ScenarioError(
                obj, "end", f"{event.end.isoformat()} is not after start {event.start.isoformat()}"
            )
        for name, moment in (("start", event.start), ("end", event.end)):
            if (moment - first.start) % first.step:
                raise ScenarioError(obj, name, f"{moment.isoformat()} is not on the {first.step} step grid")
        if event.start < first.start or event.end > first.end:
            raise ScenarioError(
                obj,
                "start" if event.start < first.start else "end",
                f"window {event.start.isoformat()}..{event.end.isoformat()} is not inside the horizon "
                f"{first.start.isoformat()}..{first.end.isoformat()}",
            )
        for site in event.site_ids:
            if site not in owner:
                raise ScenarioError(obj, "site_ids", f"names site {site!r}, which no scenario plans")
        steps = (event.end - event.start) // first.step
        for site, values in event.baseline_kw.items():
            if isinstance(values, list) and len(values) != steps:
                raise ScenarioError(
                    obj,
                    f"baseline_kw[{site!r}]",
                    f"has {len(values)} values, expected one per event step ({steps})",
                )


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


def _event_spec(first: Scenario, event: PortfolioEvent, positions: dict[str, int]) -> PortfolioEventSpec:
    steps = np.arange((event.start - first.start) // first.step, (event.end - first.start) // first.step)
    baseline = np.zeros((len(event.site_ids), len(steps)))
    for row, site in enumerate(event.site_ids):
        if site in event.baseline_kw:
            baseline[row] = np.broadcast_to(np.asarray(event.baseline_kw[site], dtype=float), steps.shape)
    return PortfolioEventSpec(
        id=event.id,
        kind=event.kind,
        steps=steps,
        requested_kw=event.requested_kw,
        payment_per_kwh=event.payment_per_kwh,
        penalty_per_kwh=event.penalty_per_kwh,
        sites=[positions[site] for site in event.site_ids],
        baseline_kw=baseline,
    )


def _show(value: object) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


__all__ = [
    "PORTFOLIO_TERMS",
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
