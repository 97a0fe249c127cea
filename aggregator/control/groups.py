"""Solve the sites of one plan: each alone, or together when a dispatch event applies to several.

A grid operator's event for several sites (its ``target_sites``, or every site enrolled in its
program) asks its kW of the sites together. The control loop plans such sites as one **group**
(:func:`portfolio_group`): the site being planned and every site that shares an applicable event
with it, then every site sharing one with those, and so on, at most ``max_sites`` sites (the first
found, breadth first; the cap keeps one model small enough to solve within a control cycle).

:func:`solve_portfolio_group` (the control loop's :data:`SolveGroup`) solves a group:

1. each site's counterfactual: the site alone without any event (as for a single site); its import,
   with each vehicle's part replaced by the vehicle's baseline frozen when the event was first
   planned with it (:meth:`~aggregator.control.inputs.PlanInputs.event_baselines_kw`,
   :mod:`aggregator.programs.event_baselines`), is the site's baseline for the event, stored as
   ``inputs["event_baselines"]`` (public event id → kW per step) of its schedule version;
2. the events shared by at least two sites of the group, of a kind the joint model splits
   (:attr:`~aggregator.programs.kinds.KindRules.portfolio_kind`: ``dr_reduction`` and ``v2g_export``), become
   :class:`~optimizer.portfolio.PortfolioEvent` s (one per event interval, baseline per site its
   counterfactual import) and :func:`~optimizer.portfolio.solve_portfolio` plans all sites in one
   model, so the optimisation decides who delivers. Events of one site stay in that site's own model
   (:meth:`~aggregator.control.inputs.PlanInputs.scenario_with_events`), as when it is planned alone;
3. every site gets its :class:`SiteSolution` with its share of each shared event
   (:attr:`SiteSolution.event_shares`, stored as ``inputs["event_shares"]`` of its schedule
   version): the kW it is committed per horizon step (:func:`commitment_shares`).

What is not split by the optimisation, each site is asked an equal share of (the event's kW divided
by its number of sites), which is also what settlement measures a site against when its plan has no
share (:func:`aggregator.settlement.event_measurement.site_committed_kw`):

- ``dr_cap`` events (the joint model has no joint cap): each site is capped at its equal share;
- an event whose other sites are outside the group (the cap) or were refused by the optimizer: the
  sites of the group that remain share ``kW × (their number / the event's sites)``.

Fallbacks: a site the optimizer refuses gets no schedule (the loop falls back for it) and the others
are planned without it; a joint model the optimizer refuses is solved site by site at equal shares;
a joint solve without a schedule returns every site's earliest-deadline-first plan (``heuristic``,
which the loop replaces by the previous plan shifted, where there is one), with no shares recorded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from aggregator.control.dispatch_windows import EventWindow, site_event_windows
from aggregator.control.inputs import PlanInputs
from aggregator.programs.kinds import rules_for
from optimizer.errors import ScenarioError
from optimizer.portfolio import PortfolioEvent, PortfolioResult, solve_portfolio
from optimizer.results import ScheduleResult, SolveStatus
from optimizer.scenario import Scenario
from optimizer.solve import SolverOptions, optimize

log = logging.getLogger(__name__)

MAX_GROUP_SITES = 16
"""Default cap on the sites planned in one joint model."""

# ------------------------------------------------------------------------------------ one solution


@dataclass
class SiteSolution:
    """What the solver made of one site's inputs."""

    inputs: PlanInputs
    scenario: Scenario
    """What was solved: the inputs' scenario with the site's own dispatch events (and baselines)."""
    result: ScheduleResult | None
    """``None`` when the optimizer refused the inputs (see ``error``)."""
    counterfactual: ScheduleResult | None = None
    """The site solved without its dispatch events, when it has any."""
    error: str | None = None
    event_shares: dict[int, list[float]] = field(default_factory=dict)
    """Dispatch event public id → this site's committed share [kW] per horizon step (0 outside the
    event), for the events it shares with other sites; empty when planned alone or without a split."""
    portfolio: dict[str, Any] | None = None
    """The joint model it was solved in: ``{"site_ids": [...], "events": [PortfolioEvent JSON]}``."""
    event_baselines: dict[int, list[float]] = field(default_factory=dict)
    """Dispatch event public id → the site's baseline import [kW] per horizon step the events were
    planned against (:meth:`~aggregator.control.inputs.PlanInputs.event_baselines_kw`)."""

    @property
    def solver_failed(self) -> bool:
        """No schedule from the solver: refused inputs, or its fallback heuristic."""
        return self.result is None or self.result.status is SolveStatus.HEURISTIC


SolveGroup = Callable[[Sequence[PlanInputs], SolverOptions, float], list[SiteSolution]]
"""Solve a group of sites together: (inputs per site, solver options, urgency weight) → one solution
per site, in order."""


def solve_site(inputs: PlanInputs, options: SolverOptions, urgency_weight: float) -> SiteSolution:
    """Solve one site: the counterfactual first if dispatch events apply, then the plan with them
    (every event asked in full of this site)."""
    return _solve_alone(inputs, inputs.events, options, urgency_weight)


def solve_sites_independently(
    group: Sequence[PlanInputs], options: SolverOptions, urgency_weight: float
) -> list[SiteSolution]:
    """Each site alone (a dispatch event shared by sites is asked in full of each)."""
    return [solve_site(inputs, options, urgency_weight) for inputs in group]


def _solve(
    inputs: PlanInputs, scenario: Scenario, options: SolverOptions, urgency_weight: float
) -> ScheduleResult:
    """``scenario`` (``inputs``' own or with events) with the site's demand so far
    (:meth:`~aggregator.control.inputs.PlanInputs.problem`) and the tie-breaker, solved."""
    problem = dataclasses.replace(inputs.problem(scenario), charging_urgency_weight=urgency_weight)
    return optimize(problem, options)


def _solve_alone(
    inputs: PlanInputs,
    events: Sequence[EventWindow],
    options: SolverOptions,
    urgency_weight: float,
    counterfactual: ScheduleResult | None = None,
) -> SiteSolution:
    """``inputs`` with ``events`` in the site's own model; the counterfactual solved unless given."""
    scenario = inputs.scenario
    baselines: dict[int, list[float]] = {}
    try:
        if inputs.events and counterfactual is None:
            counterfactual = _solve(inputs, inputs.scenario, options, urgency_weight)
        if events and counterfactual is not None:
            baselines = event_baselines(inputs, counterfactual)
            scenario = inputs.scenario_with_events(
                counterfactual.evaluation.import_kw.tolist(), events, baselines
            )
        result = _solve(inputs, scenario, options, urgency_weight)
        return SiteSolution(inputs, scenario, result, counterfactual, event_baselines=baselines)
    except ScenarioError as error:
        log.error("site %s: the optimizer refused the inputs: %s", inputs.site_id, error)
        return SiteSolution(
            inputs, scenario, None, counterfactual, error=str(error), event_baselines=baselines
        )


def event_baselines(inputs: PlanInputs, counterfactual: ScheduleResult) -> dict[int, list[float]]:
    """The site's baseline per event (public id → kW per step) from its fresh ``counterfactual``, with
    each vehicle's frozen power in place of its fresh power
    (:meth:`~aggregator.control.inputs.PlanInputs.event_baselines_kw`)."""
    power = counterfactual.charge_kw - counterfactual.discharge_kw
    vehicles = {vehicle.id: power[i].tolist() for i, vehicle in enumerate(counterfactual.problem.vehicles)}
    return inputs.event_baselines_kw(counterfactual.evaluation.import_kw.tolist(), vehicles)


# ------------------------------------------------------------------------------------------ groups


def portfolio_group(
    session: Session,
    site_id: str,
    start: dt.datetime,
    end: dt.datetime,
    step: dt.timedelta,
    max_sites: int = MAX_GROUP_SITES,
) -> list[str]:
    """``site_id`` and the sites that share an applicable dispatch event with it, transitively, breadth
    first, at most ``max_sites`` (``site_id`` first). Windows as :func:`site_event_windows` finds them
    on the horizon ``start``..``end`` (``start`` on the ``step`` grid)."""
    if max_sites < 1:
        raise ValueError(f"max_sites must be at least 1, got {max_sites}")
    group, queue = [site_id], [site_id]
    while queue:
        current = queue.pop(0)
        for window in site_event_windows(session, current, start, end, step):
            for other in window.site_ids:
                if other in group:
                    continue
                if len(group) >= max_sites:
                    log.warning(
                        "dispatch event %d: site %s left out of the group planned with %s (at most %d "
                        "sites); it is asked its equal share",
                        window.public_id,
                        other,
                        site_id,
                        max_sites,
                    )
                    continue
                group.append(other)
                queue.append(other)
    return group


def commitment_shares(contributions: Mapping[str, np.ndarray], requested_kw: float) -> dict[str, np.ndarray]:
    """Split ``requested_kw`` among sites per step in proportion to what each contributes in the plan
    (``contributions``: site → kW per step, signed as :class:`~optimizer.portfolio.EventSplit`; a
    negative contribution counts as none). Where no site contributes, equal shares. The shares are
    never negative and sum to ``requested_kw`` in every step."""
    if not contributions:
        return {}
    sites = list(contributions)
    positive = np.clip(np.array([np.asarray(contributions[s], dtype=float) for s in sites]), 0.0, None)
    total = positive.sum(axis=0)
    equal = np.full_like(positive, 1.0 / len(sites))
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(total > 1e-9, positive / np.where(total > 1e-9, total, 1.0), equal)
    return {site: requested_kw * fraction[row] for row, site in enumerate(sites)}


def solve_portfolio_group(
    group: Sequence[PlanInputs], options: SolverOptions, urgency_weight: float
) -> list[SiteSolution]:
    """Solve ``group`` (inputs on one horizon), the events its sites share split by one joint model
    (module docstring); one solution per site, in order."""
    if not any(window.shared for inputs in group for window in inputs.events):
        return solve_sites_independently(group, options, urgency_weight)

    counterfactuals: dict[str, ScheduleResult] = {}
    refused: dict[str, SiteSolution] = {}
    for inputs in group:
        try:
            counterfactuals[inputs.site_id] = _solve(inputs, inputs.scenario, options, urgency_weight)
        except ScenarioError as error:
            log.error("site %s: the optimizer refused the inputs: %s", inputs.site_id, error)
            refused[inputs.site_id] = SiteSolution(inputs, inputs.scenario, None, error=str(error))
    planned = [inputs for inputs in group if inputs.site_id not in refused]
    joint, own = _assign(planned)
    solutions = dict(refused)
    if joint:
        solutions |= _solve_jointly(planned, joint, own, counterfactuals, options, urgency_weight)
    else:
        for inputs in planned:
            solutions[inputs.site_id] = _solve_alone(
                inputs, own[inputs.site_id], options, urgency_weight, counterfactuals[inputs.site_id]
            )
            solutions[inputs.site_id].event_shares = _equal_shares(inputs, own[inputs.site_id])
    return [solutions[inputs.site_id] for inputs in group]


def _assign(planned: Sequence[PlanInputs]) -> tuple[list[EventWindow], dict[str, list[EventWindow]]]:
    """The windows for the joint model (their ``site_ids`` cut to the planned sites, their kW to
    those sites' part), and per site the windows of its own model (shared ones at equal shares)."""
    members = {inputs.site_id for inputs in planned}
    joint: dict[str, EventWindow] = {}
    own: dict[str, list[EventWindow]] = {}
    for inputs in planned:
        mine = own.setdefault(inputs.site_id, [])
        for window in inputs.events:
            if not window.shared:
                mine.append(window)
                continue
            present = tuple(site for site in window.site_ids if site in members)
            if rules_for(window.kind).portfolio_kind is not None and len(present) > 1:
                part = window.value_kw * len(present) / len(window.site_ids)
                joint.setdefault(
                    window.scenario_id, dataclasses.replace(window, value_kw=part, site_ids=present)
                )
            else:
                mine.append(_equal_share(window))
    return list(joint.values()), own


def _own_alone(inputs: PlanInputs) -> list[EventWindow]:
    """Every window of ``inputs`` in its own model, shared ones at equal shares."""
    return [_equal_share(window) if window.shared else window for window in inputs.events]


def _equal_share(window: EventWindow) -> EventWindow:
    return dataclasses.replace(window, value_kw=window.value_kw / len(window.site_ids))


def _equal_shares(inputs: PlanInputs, windows: Iterable[EventWindow]) -> dict[int, list[float]]:
    """Per shared event among ``windows`` (already at equal shares), its kW per horizon step."""
    shares: dict[int, list[float]] = {}
    for window in windows:
        if window.shared:
            series = shares.setdefault(window.public_id, [0.0] * inputs.scenario.n_steps)
            _fill(series, inputs, window, np.full(_steps(inputs, window), window.value_kw))
    return shares


def _steps(inputs: PlanInputs, window: EventWindow) -> int:
    return (window.end - window.start) // inputs.scenario.step


def _fill(series: list[float], inputs: PlanInputs, window: EventWindow, values: np.ndarray) -> None:
    first = (window.start - inputs.scenario.start) // inputs.scenario.step
    for k, value in enumerate(values):
        series[first + k] += float(value)


def _solve_jointly(
    planned: Sequence[PlanInputs],
    joint: Sequence[EventWindow],
    own: Mapping[str, list[EventWindow]],
    counterfactuals: Mapping[str, ScheduleResult],
    options: SolverOptions,
    urgency_weight: float,
) -> dict[str, SiteSolution]:
    imports = {
        inputs.site_id: counterfactuals[inputs.site_id].evaluation.import_kw.tolist() for inputs in planned
    }
    baselines = {
        inputs.site_id: event_baselines(inputs, counterfactuals[inputs.site_id]) for inputs in planned
    }
    scenarios = {
        inputs.site_id: inputs.scenario_with_events(
            imports[inputs.site_id], own[inputs.site_id], baselines[inputs.site_id]
        )
        for inputs in planned
    }
    first = planned[0].scenario
    events = [_portfolio_event(window, first, imports, baselines) for window in joint]
    try:
        result = solve_portfolio(
            list(scenarios.values()),
            events,
            options,
            charging_urgency_weight=urgency_weight,
            metered_kw={i.site_id: i.meter_kw for i in planned if i.meter_kw is not None},
        )
    except ScenarioError as error:
        log.error(
            "the joint model of sites %s was refused (%s); each site planned alone", list(scenarios), error
        )
        solutions = {}
        for inputs in planned:
            windows = _own_alone(inputs)
            solution = _solve_alone(inputs, windows, options, urgency_weight, counterfactuals[inputs.site_id])
            solution.event_shares = _equal_shares(inputs, windows)
            solutions[inputs.site_id] = solution
        return solutions

    portfolio = {"site_ids": list(scenarios), "events": [event.model_dump(mode="json") for event in events]}
    shares = _joint_shares(planned, joint, result) if result.is_ok else {}
    solutions = {}
    for inputs in planned:
        site = inputs.site_id
        mine = _equal_shares(inputs, own[site]) if result.is_ok else {}
        for public_id, series in shares.get(site, {}).items():
            mine[public_id] = [
                a + b for a, b in zip(mine.get(public_id, [0.0] * len(series)), series, strict=True)
            ]
        solutions[site] = SiteSolution(
            inputs,
            scenarios[site],
            result.sites[site],
            counterfactuals[site],
            event_shares=mine,
            portfolio=portfolio | {"status": result.status.value, "message": result.message},
            event_baselines=baselines[site],
        )
    return solutions


def _portfolio_event(
    window: EventWindow,
    first: Scenario,
    imports: Mapping[str, list[float]],
    event_baselines: Mapping[str, Mapping[int, list[float]]],
) -> PortfolioEvent:
    """The joint model's event for ``window``; a reduction's baseline per site is the site's baseline
    for the event (``event_baselines``: site → public id → kW per step), else its ``imports``."""
    rules = rules_for(window.kind)
    kind = rules.portfolio_kind
    if kind is None:  # _assign keeps such windows in the sites' own models
        raise ValueError(f"{window.scenario_id}: the joint model does not split {window.kind.value} events")
    start = (window.start - first.start) // first.step
    stop = (window.end - first.start) // first.step
    baselines = {
        site: event_baselines.get(site, {}).get(window.public_id, imports[site]) for site in window.site_ids
    }
    return PortfolioEvent(
        id=window.scenario_id,
        kind=kind,
        start=window.start,
        end=window.end,
        requested_kw=window.value_kw,
        payment_per_kwh=window.price_per_kwh,
        penalty_per_kwh=window.penalty_per_kwh,
        site_ids=list(window.site_ids),
        baseline_kw=(
            {site: [max(0.0, v) for v in baselines[site][start:stop]] for site in window.site_ids}
            if rules.plan_baseline
            else {}
        ),
    )


def _joint_shares(
    planned: Sequence[PlanInputs], joint: Sequence[EventWindow], result: PortfolioResult
) -> dict[str, dict[int, list[float]]]:
    """Site → public id → committed kW per horizon step, from the joint model's split."""
    by_site = {inputs.site_id: inputs for inputs in planned}
    shares: dict[str, dict[int, list[float]]] = {}
    for window in joint:
        split = result.events[window.scenario_id]
        for site, kw in commitment_shares(split.site_kw, window.value_kw).items():
            inputs = by_site[site]
            series = shares.setdefault(site, {}).setdefault(window.public_id, [0.0] * inputs.scenario.n_steps)
            _fill(series, inputs, window, kw)
    return shares


__all__ = [
    "MAX_GROUP_SITES",
    "SiteSolution",
    "SolveGroup",
    "commitment_shares",
    "event_baselines",
    "portfolio_group",
    "solve_portfolio_group",
    "solve_site",
    "solve_sites_independently",
]
