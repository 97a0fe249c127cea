"""Which vehicle delivered what during an event, reconciled with the site's measured delivery.

A vehicle's delivery over the event window is its counterfactual power (what the optimiser planned
for it without the event, ``ScheduleVersion.counterfactual``) minus its metered power, per interval,
summed and turned into energy::

    delivered_kwh(v) = sum_t (counterfactual_kw(v, t) - metered_kw(v, t)) * step_hours

Power is positive while charging and negative while discharging, so a vehicle that charged less
than planned, or discharged, helped (positive); one that charged more than planned hurt (negative).
Intervals where either series is ``NaN`` are left out and counted per vehicle.

The sum over vehicles need not equal the site's delivered energy (the site baseline is not the sum
of the vehicles' plans, and other loads move): the difference, ``site_delivered_kwh - sum``, is
reported as :attr:`Attribution.unattributed_kwh` and never spread over the vehicles.

A vehicle whose driver withdrew consent or overrode the event for the session (an
:class:`Exclusion`) keeps its measured delivery for the record, but its allocation weight is ``0``
and the reason is kept, so statements can say why.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import pandas as pd

K = TypeVar("K", bound=Hashable)

DEFAULT_STEP = dt.timedelta(minutes=15)


class AttributionError(ValueError):
    """Vehicle inputs that do not line up; the message names the vehicle."""


class ExclusionReason(enum.StrEnum):
    CONSENT_WITHDRAWN = "consent_withdrawn"
    OVERRIDE = "override"


@dataclass(frozen=True)
class Exclusion:
    """Why a vehicle's contribution does not count for allocation (``detail``: free text for statements)."""

    reason: ExclusionReason
    detail: str = ""


@dataclass(frozen=True)
class VehicleContribution:
    """One vehicle's delivery [kWh] and the weight it carries into allocation [kWh].

    ``weight_kwh`` is ``delivered_kwh`` unless the vehicle is excluded (then ``0``); allocation gives
    nothing to a non-positive weight.
    """

    delivered_kwh: float
    weight_kwh: float
    missing_intervals: int
    exclusion: Exclusion | None = None


@dataclass(frozen=True)
class Attribution(Generic[K]):
    """Per-vehicle contributions and how far their sum is from the site's delivery [kWh]."""

    vehicles: dict[K, VehicleContribution]
    site_delivered_kwh: float

    @property
    def vehicles_delivered_kwh(self) -> float:
        """Sum of every vehicle's measured delivery, excluded vehicles included."""
        return sum(contribution.delivered_kwh for contribution in self.vehicles.values())

    @property
    def unattributed_kwh(self) -> float:
        """``site_delivered_kwh - vehicles_delivered_kwh``: delivery no vehicle accounts for (or, negative,
        vehicle delivery the site meter did not see)."""
        return self.site_delivered_kwh - self.vehicles_delivered_kwh

    def weights(self) -> dict[K, float]:
        """Allocation weights [kWh], for :func:`aggregator.settlement.allocation.allocate`."""
        return {key: contribution.weight_kwh for key, contribution in self.vehicles.items()}


def attribute(
    site_delivered_kwh: float,
    counterfactual_kw: Mapping[K, pd.Series],
    metered_kw: Mapping[K, pd.Series],
    *,
    exclusions: Mapping[K, Exclusion] | None = None,
    step: dt.timedelta = DEFAULT_STEP,
) -> Attribution[K]:
    """Each vehicle's delivery over the event window (module doc).

    ``counterfactual_kw`` and ``metered_kw`` map the same vehicles to power series [kW] on the
    event's interval index (aware UTC interval starts); ``exclusions`` names the vehicles whose
    contribution does not count, with the reason.
    """
    exclusions = exclusions or {}
    planned_only = set(counterfactual_kw) - set(metered_kw)
    metered_only = set(metered_kw) - set(counterfactual_kw)
    if planned_only or metered_only:
        raise AttributionError(
            f"vehicles must have both a counterfactual and metered power: counterfactual only "
            f"{sorted(map(str, planned_only))}, metered only {sorted(map(str, metered_only))}"
        )
    unknown = set(exclusions) - set(counterfactual_kw)
    if unknown:
        raise AttributionError(f"exclusions name vehicles without data: {sorted(map(str, unknown))}")
    hours = step.total_seconds() / 3600
    vehicles: dict[K, VehicleContribution] = {}
    for key, planned in counterfactual_kw.items():
        metered = metered_kw[key]
        if not planned.index.equals(metered.index):
            raise AttributionError(
                f"vehicle {key!r}: counterfactual covers {len(planned)} intervals and metered "
                f"{len(metered)}; both must be on the event's interval index"
            )
        if isinstance(planned.index, pd.DatetimeIndex) and planned.index.tz is None:
            raise AttributionError(f"vehicle {key!r}: interval starts are naive; they must be aware (UTC)")
        delivered = planned.astype(float) - metered.astype(float)
        present = delivered.notna()
        energy = float(delivered[present].sum()) * hours
        exclusion = exclusions.get(key)
        vehicles[key] = VehicleContribution(
            delivered_kwh=energy,
            weight_kwh=0.0 if exclusion is not None else energy,
            missing_intervals=int((~present).sum()),
            exclusion=exclusion,
        )
    return Attribution(vehicles=vehicles, site_delivered_kwh=float(site_delivered_kwh))
