"""A portfolio's inputs: the events several sites meet together, checked and put on the step grid.

:class:`PortfolioEvent` is what a caller gives (:func:`optimizer.portfolio.solve_portfolio`);
:func:`check_portfolio` refuses an impossible portfolio with an error naming the scenario or event and
the value, and :func:`build_portfolio` turns it into one :class:`~optimizer.problem.Problem` per site and
one :class:`PortfolioEventSpec` per event on the shared step grid, for
:mod:`optimizer.portfolio_model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from optimizer.errors import ScenarioError
from optimizer.problem import DispatchSpec, Problem, build_problem, default_unmet_penalty
from optimizer.scenario import AwareDatetime, NonNegative, Scenario, Series

EventKind = Literal["reduction", "v2g_export"]


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
