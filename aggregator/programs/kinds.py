"""Program kinds: what each kind of grid signal means to the aggregator, one entry per kind.

A :class:`~market_adapters.dispatch.SignalKind` is what a grid operator asks; what it commits the
portfolio to is the seam's table :data:`market_adapters.dispatch.COMMITMENTS`. Everything else the
aggregator does differently by kind is a field of that kind's :class:`KindRules` in :data:`KINDS`:

- **optimizer input** (:meth:`KindRules.optimizer_input`): one interval of an event on the horizon's
  step grid becomes a :class:`~optimizer.scenario.DrEvent` (a reduction below the baseline, or a cap
  on import) or a :class:`~optimizer.scenario.V2gDispatch` (an export) of the site's model;
  :attr:`KindRules.plan_baseline` says whether it is planned against the site's counterfactual import
  (then frozen per vehicle once planned, :mod:`aggregator.programs.event_baselines`), and
  :attr:`KindRules.portfolio_kind` its kind in the joint model of several sites
  (:class:`~optimizer.portfolio.PortfolioEvent`), when that model splits it among them;
- **flexibility** (:meth:`KindRules.site_flexibility_kw`, :meth:`KindRules.portfolio_kw`): what one
  site's latest plan can promise of it, held in every step of the window within the energy its
  vehicles can move out of it and still reach their targets (:func:`aggregator.programs.flexibility.held_kw`:
  a reduction below the plan, an export beyond the vehicles' planned power, a cap above the import
  it brings down), and how the sites' figures add up to the portfolio's answer to an adapter
  (:class:`~aggregator.control.grid_signals.PortfolioFlexibility`);
- **measurement** (:meth:`KindRules.committed_reduction`): how the commitment becomes a reduction
  below the baseline, per interval (:func:`aggregator.settlement.performance.event_performance`); the
  baseline itself is the program's measurement method, the same for every kind;
- **payment**: every kind that commits (:attr:`KindRules.commits`) is settled by its program's
  :class:`~aggregator.programs.terms.PaymentTerms` on its measured delivery; the planner counts
  ``per_kwh_delivered`` only where a baseline measures delivery (a cap planned without one is planned
  unpaid). :attr:`KindRules.v2g_consent`: delivery relies on discharging, so a vehicle whose driver
  withdrew V2G consent, or asked ``no_v2g``, is excluded from the event's attribution;
- **API**: the program kind an operator may post it on (:attr:`KindRules.program_kind`; none: not
  posted) and the unit of its interval values (:attr:`KindRules.unit`).

A new kind (a capacity product, frequency regulation) is a new :class:`SignalKind` member, its line
in ``COMMITMENTS`` and one :class:`KindRules` here; no other module branches on a kind
(``tests/test_program_kinds.py`` checks both).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from aggregator.db.models import ProgramKind
from aggregator.programs.flexibility import PlannedSteps, held_kw
from market_adapters.dispatch import COMMITMENTS, Commitment, SignalKind
from optimizer.scenario import DrEvent, V2gDispatch

if TYPE_CHECKING:
    from optimizer.portfolio import EventKind as PortfolioEventKind

OptimizerEvent = DrEvent | V2gDispatch
"""What one interval of an event becomes in a site's model."""


class PlannedWindow(Protocol):
    """One interval of an event on the horizon's step grid (as
    :class:`~aggregator.control.dispatch_windows.EventWindow` is)."""

    @property
    def scenario_id(self) -> str: ...
    @property
    def start(self) -> dt.datetime: ...
    @property
    def end(self) -> dt.datetime: ...
    @property
    def value_kw(self) -> float:
        """Reduction, cap or export [kW], by the kind."""
        ...

    @property
    def price_per_kwh(self) -> float: ...
    @property
    def penalty_per_kwh(self) -> float: ...


# ------------------------------------------------------------------------------- the rules per kind


@dataclass(frozen=True)
class KindRules:
    """Everything the aggregator does differently for one :class:`SignalKind` (module doc)."""

    kind: SignalKind
    unit: str
    """The unit of an interval's value."""
    program_kind: ProgramKind | None
    """The kind of program an operator may post an event of this kind on; ``None``: not posted."""
    plan_baseline: bool
    """Planned against the site's counterfactual import [kW per step], frozen per vehicle once planned."""
    to_optimizer: Callable[[PlannedWindow, list[float] | None], OptimizerEvent | None] | None
    """(window, its baseline per step or ``None``) → the site model's event, ``None`` when it cannot be
    planned without a baseline; ``None`` for a kind that is never planned."""
    portfolio_kind: PortfolioEventKind | None
    """The joint model's kind when several sites share an event; ``None``: split at equal shares."""
    flexibility_kw: Callable[[PlannedSteps], float] | None
    """What one site's plan can promise over a window [kW]; ``None``: needs none (0 kW)."""
    measure: Callable[[pd.Series, pd.Series], tuple[pd.Series, pd.Series | None]] | None
    """(committed, baseline) [kW per interval] → (the commitment as a reduction below the baseline,
    the cap when the commitment is one); ``None`` for a kind that commits nothing."""
    v2g_consent: bool
    """Delivery relies on discharging: V2G consent withdrawn, or ``no_v2g``, excludes a vehicle."""

    @property
    def commitment(self) -> Commitment:
        return COMMITMENTS[self.kind]

    @property
    def commits(self) -> bool:
        """Whether an event of this kind commits the portfolio, and so is measured and paid."""
        return self.commitment is not Commitment.NONE

    @property
    def planned(self) -> bool:
        """Whether sites plan for events of this kind."""
        return self.to_optimizer is not None

    def optimizer_input(
        self, window: PlannedWindow, baseline_kw: list[float] | None
    ) -> OptimizerEvent | None:
        """The site model's event for ``window`` (``baseline_kw`` per step of it, when known)."""
        return None if self.to_optimizer is None else self.to_optimizer(window, baseline_kw)

    def site_flexibility_kw(self, steps: PlannedSteps) -> float:
        """What a site's plan can promise over the window's ``steps`` [kW]."""
        return 0.0 if self.flexibility_kw is None else self.flexibility_kw(steps)

    def portfolio_kw(self, figures: Mapping[str, float | None]) -> float:
        """The portfolio's figure from the sites' (``None``: a site whose plan cannot tell) [kW]: their
        sum; for a cap, infinite when any site's import is unknown (or there is no site)."""
        known = [figure for figure in figures.values() if figure is not None]
        if self.commitment is Commitment.AT_MOST and (not figures or len(known) < len(figures)):
            return math.inf
        return float(sum(known))

    def committed_reduction(
        self, committed_kw: pd.Series, baseline_kw: pd.Series
    ) -> tuple[pd.Series, pd.Series | None]:
        """(the commitment as a reduction below ``baseline_kw``, the cap or ``None``) [kW]."""
        if self.measure is None:
            raise ValueError(f"signal kind {self.kind.value!r} carries no commitment to measure")
        return self.measure(committed_kw, baseline_kw)


# --- optimizer input


def _reduction_event(window: PlannedWindow, baseline_kw: list[float] | None) -> DrEvent | None:
    """A reduction below the baseline; without a baseline there is nothing to reduce below."""
    if baseline_kw is None:
        return None
    return DrEvent(
        id=window.scenario_id,
        start=window.start,
        end=window.end,
        baseline_kw=baseline_kw,
        reduction_kw=window.value_kw,
        payment_per_kwh=window.price_per_kwh,
        penalty_per_kwh=window.penalty_per_kwh,
        delivery="net",  # settlement nets the window's intervals: moving load within it earns nothing
    )


def _cap_event(window: PlannedWindow, baseline_kw: list[float] | None) -> DrEvent:
    """A cap on import; paid per kWh below the baseline only when there is one to measure against."""
    return DrEvent(
        id=window.scenario_id,
        start=window.start,
        end=window.end,
        baseline_kw=baseline_kw,
        cap_kw=window.value_kw,
        payment_per_kwh=window.price_per_kwh if baseline_kw is not None else 0.0,
        penalty_per_kwh=window.penalty_per_kwh,
        delivery="net",
    )


def _export_dispatch(window: PlannedWindow, baseline_kw: list[float] | None) -> V2gDispatch:
    """A net export from the site's vehicles (no baseline: the export itself is measured)."""
    return V2gDispatch(
        id=window.scenario_id,
        start=window.start,
        end=window.end,
        export_kw=window.value_kw,
        price_per_kwh=window.price_per_kwh,
        penalty_per_kwh=window.penalty_per_kwh,
    )


# --- flexibility


def _held_reduction_kw(steps: PlannedSteps) -> float:
    """How far the import can drop below the plan in every step (power only: the smallest
    ``down_kw``)."""
    return held_kw(steps, np.zeros_like(steps.import_kw))


def _held_export_kw(steps: PlannedSteps) -> float:
    """The net export the vehicles can hold in every step: a drop beyond their planned power (power
    only: ``down_kw`` minus their planned power), at least 0."""
    return max(held_kw(steps, steps.vehicles_kw), 0.0)


def _lowest_cap_kw(steps: PlannedSteps) -> float:
    """The lowest import cap held throughout: the drop that brings every step's planned import down
    to it (power only: the largest planned import minus ``down_kw``)."""
    return -held_kw(steps, steps.import_kw)


# --- measurement


def _below_baseline(committed_kw: pd.Series, baseline_kw: pd.Series) -> tuple[pd.Series, None]:
    """The commitment is already a reduction (or export) below the baseline."""
    return committed_kw, None


def _cap_as_reduction(committed_kw: pd.Series, baseline_kw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The commitment is a cap: it asks ``max(baseline - cap, 0)`` below the baseline."""
    return (baseline_kw - committed_kw).clip(lower=0.0), committed_kw


# ---------------------------------------------------------------------------------------- the table

KINDS: Mapping[SignalKind, KindRules] = MappingProxyType(
    {
        SignalKind.DR_REDUCTION: KindRules(
            kind=SignalKind.DR_REDUCTION,
            unit="kW",
            program_kind=ProgramKind.DR,
            plan_baseline=True,
            to_optimizer=_reduction_event,
            portfolio_kind="reduction",
            flexibility_kw=_held_reduction_kw,
            measure=_below_baseline,
            v2g_consent=False,
        ),
        SignalKind.DR_CAP: KindRules(
            kind=SignalKind.DR_CAP,
            unit="kW",
            program_kind=ProgramKind.DR,
            plan_baseline=True,
            to_optimizer=_cap_event,
            portfolio_kind=None,  # the joint model has no joint cap: each site is capped at its share
            flexibility_kw=_lowest_cap_kw,
            measure=_cap_as_reduction,
            v2g_consent=False,
        ),
        SignalKind.V2G_EXPORT: KindRules(
            kind=SignalKind.V2G_EXPORT,
            unit="kW",
            program_kind=ProgramKind.V2G,
            plan_baseline=False,
            to_optimizer=_export_dispatch,
            portfolio_kind="v2g_export",
            flexibility_kw=_held_export_kw,
            measure=_below_baseline,
            v2g_consent=True,
        ),
        SignalKind.PRICE: KindRules(
            kind=SignalKind.PRICE,
            unit="currency/kWh",
            program_kind=None,
            plan_baseline=False,
            to_optimizer=None,  # informative: stored, never planned, measured or paid
            portfolio_kind=None,
            flexibility_kw=None,
            measure=None,
            v2g_consent=False,
        ),
    }
)
"""Every :class:`SignalKind`'s rules (the one table; ``tests/test_program_kinds.py`` checks it is whole)."""


def rules_for(kind: SignalKind) -> KindRules:
    """The rules of ``kind``; a kind without an entry is a programming error, named here."""
    try:
        return KINDS[kind]
    except KeyError:
        raise LookupError(f"signal kind {kind!r} has no entry in aggregator.programs.kinds.KINDS") from None


MEASURED_KINDS = frozenset(kind for kind, rules in KINDS.items() if rules.commits)
"""Kinds that commit the portfolio: measured and paid (``price`` commits nothing)."""

PLANNED_KINDS = frozenset(kind for kind, rules in KINDS.items() if rules.planned)
"""Kinds the sites plan for."""

POSTED_KINDS: Mapping[SignalKind, ProgramKind] = MappingProxyType(
    {kind: rules.program_kind for kind, rules in KINDS.items() if rules.program_kind is not None}
)
"""Kinds an operator may post (operators' API), with the kind of program each is posted on."""


__all__ = [
    "KINDS",
    "MEASURED_KINDS",
    "PLANNED_KINDS",
    "POSTED_KINDS",
    "KindRules",
    "OptimizerEvent",
    "PlannedSteps",
    "PlannedWindow",
    "rules_for",
]
