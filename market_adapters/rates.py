"""The common shape of a tariff laid on a time grid: what each step pays, whatever the file format.

Every tariff format (acnportal :class:`~market_adapters.tariffs.TouTariff`, OpenEI URDB
:class:`~market_adapters.urdb.UrdbTariff`) implements :class:`BillableTariff`: given a tz-aware
:class:`pandas.DatetimeIndex` in the tariff's local time, :meth:`~BillableTariff.charge_plan` says which
energy period each step is in, which demand charges each step counts towards, and the fixed and
minimum charges and demand ratchet. The bill calculator and the optimizer bridge
(:mod:`market_adapters.billing`) read only this shape.

Money is :class:`~decimal.Decimal` (rates as the source writes them, so a hand-checked bill is exact to
the cent); quantities (kWh, kW) are floats until they are priced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol

import numpy as np
import pandas as pd

ZERO = Decimal(0)


@dataclass(frozen=True)
class Tier:
    """One tier of a rate: applies to the quantity up to ``upto`` (cumulative, in the billing period)."""

    upto: float | None
    """Upper bound of the tier [kWh or kW], counted from zero; ``None``: unbounded (the last tier)."""
    rate: Decimal
    """[$/kWh] or [$/kW], adjustments included."""


@dataclass(frozen=True)
class RatePeriod:
    """A time-of-use period with its tiers (one tier for an untiered rate)."""

    label: str
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        if not self.tiers or self.tiers[-1].upto is not None:
            raise ValueError(f"rate period {self.label!r}: the last tier must be unbounded")

    @property
    def is_free(self) -> bool:
        return all(t.rate == 0 for t in self.tiers)

    def rate_at(self, quantity: float) -> Decimal:
        """Marginal rate once ``quantity`` [kWh or kW] has been reached in the billing period."""
        for tier in self.tiers:
            if tier.upto is None or quantity < tier.upto:
                return tier.rate
        return self.tiers[-1].rate  # pragma: no cover - the last tier is unbounded

    def split(self, quantity: float) -> list[tuple[int, float]]:
        """``quantity`` cut into the tiers it fills: (tier position, amount in that tier)."""
        parts: list[tuple[int, float]] = []
        below = 0.0
        for position, tier in enumerate(self.tiers):
            top = quantity if tier.upto is None else min(quantity, tier.upto)
            if top > below:
                parts.append((position, top - below))
            if tier.upto is None or quantity <= tier.upto:
                break
            below = tier.upto
        return parts or [(0, 0.0)]


@dataclass(frozen=True)
class DemandComponent:
    """One demand charge: the highest demand over the steps it counts, priced by its tiers."""

    name: str
    kind: Literal["flat", "tou"]
    period: RatePeriod
    steps: np.ndarray
    """Boolean per step of the grid: the step counts towards this charge."""
    ratcheted: bool = False
    """The demand ratchet (:class:`Ratchet`) sets a floor under this charge's billed demand."""


@dataclass(frozen=True)
class Ratchet:
    """A floor under billed demand from earlier months' peaks (fractions, 0.8 = 80 %).

    - ``monthly_fraction`` (URDB ``demandratchetpercentage``): per billing month, the fraction of the
      highest peak of the trailing 11 months;
    - ``lookback_fraction`` with ``lookback_range_months`` (the previous N months) or with
      ``lookback_months`` (the calendar months flagged, within the previous 12 months).

    The floor is the largest of these products.
    """

    monthly_fraction: tuple[float, ...] | None = None
    lookback_fraction: float = 0.0
    lookback_range_months: int = 0
    lookback_months: tuple[bool, ...] | None = None

    def floor_kw(
        self, billing_month: pd.Period, previous_peaks_kw: Mapping[pd.Period, float]
    ) -> tuple[float, str]:
        """Ratchet floor [kW] for ``billing_month`` and a note saying where it comes from."""
        best, note = 0.0, ""
        for month, peak in sorted(previous_peaks_kw.items()):
            back = (billing_month - month).n
            if not 1 <= back <= 12:
                continue
            candidates = []
            if self.monthly_fraction is not None and back <= 11:
                candidates.append(self.monthly_fraction[billing_month.month - 1])
            in_range = 0 < back <= self.lookback_range_months
            flagged = self.lookback_months is not None and self.lookback_months[month.month - 1]
            if self.lookback_fraction > 0 and (in_range or flagged):
                candidates.append(self.lookback_fraction)
            for fraction in candidates:
                if fraction * peak > best:
                    best, note = fraction * peak, f"ratchet: {fraction:.0%} of {peak:g} kW in {month}"
        return best, note


@dataclass(frozen=True)
class ChargePlan:
    """A tariff on the steps of one grid (see :meth:`BillableTariff.charge_plan`)."""

    index: pd.DatetimeIndex
    energy_period: np.ndarray
    """Position in :attr:`energy_periods` of each step; -1 where no energy charge applies."""
    energy_periods: tuple[RatePeriod, ...]
    demand: tuple[DemandComponent, ...] = ()
    fixed_per_month: Decimal = ZERO
    fixed_per_day: Decimal = ZERO
    minimum_per_month: Decimal = ZERO
    minimum_per_day: Decimal = ZERO
    ratchet: Ratchet | None = None
    notes: tuple[str, ...] = field(default=())

    def import_prices(self) -> np.ndarray:
        """First-tier energy price [$/kWh] of every step (0 where no energy charge applies)."""
        first = np.array([float(p.tiers[0].rate) for p in self.energy_periods] + [0.0])
        return first[np.where(self.energy_period >= 0, self.energy_period, len(self.energy_periods))]


class BillableTariff(Protocol):
    """A tariff the bill calculator and the optimizer bridge can price."""

    @property
    def name(self) -> str: ...

    @property
    def demand_interval_minutes(self) -> int:
        """Averaging interval of billed demand [min], aligned to the clock."""
        ...

    def charge_plan(self, index: pd.DatetimeIndex) -> ChargePlan:
        """The tariff on the steps of ``index`` (tz-aware, in the tariff's local time)."""
        ...


def to_decimal(value: float) -> Decimal:
    """A rate as written in the source (``15.51`` stays ``Decimal('15.51')``)."""
    return Decimal(repr(float(value)))
