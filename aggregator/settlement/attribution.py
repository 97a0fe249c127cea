"""Which vehicle delivered what during an event, against per-vehicle baselines that add up to the site's.

Per interval ``t`` of the event at one site, with the site's baseline ``B(t)`` (by the method declared
at notification, :mod:`aggregator.settlement.site_baselines`) and its metered import ``M(t)`` [kW],
and for each vehicle ``v`` *of known state* its own baseline ``b_v(t)`` (frozen at the event's first
plans, :mod:`aggregator.settlement.event_measurement`) and its EVSE's metered power ``m_v(t)``::

    d_v(t) = b_v(t) - m_v(t)                    what vehicle v delivered
    u(t)   = (B(t) - M(t)) - sum_v d_v(t)        the unattributed remainder

so ``u(t) = (B(t) - sum_v b_v(t)) - (M(t) - sum_v m_v(t))``: the site's baseline less the vehicles'
baselines, against what the site drew besides those vehicles. Power is positive while charging and
negative while discharging: a vehicle that charged less than its baseline, or discharged, helped.

Only intervals where the site has both ``B`` and ``M`` count (the site's delivery is judged on those);
there, a vehicle whose ``b_v`` or ``m_v`` is missing is left out (counted in its
``missing_intervals``) and its part stays in the remainder. So, by construction::

    sum_v delivered_kwh(v) + unattributed_kwh == site_delivered_kwh   (the site's raw delivery)

The remainder holds the site's other loads (base load), the vehicles without a baseline of their own
(:attr:`ExclusionReason.UNKNOWN_STATE`: their SoC, departure, target or vehicle was assumed when the
event was planned, or no plan of the event planned them; they are listed with the reason and never
given a default), sessions without a known vehicle, and the difference between the site meter and
the EVSE meters. Settlement allocates its positive part like a participant, to an explicit residual
with its reason (:mod:`aggregator.settlement.event_settlement`).

A vehicle whose driver withdrew consent or overrode the event for the session (an :class:`Exclusion`)
keeps its measured delivery for the record, but its allocation weight is ``0`` and the reason is
kept, so statements can say why. Several sites' attributions are summed with :func:`combine`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Hashable, Mapping, Sequence
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
    UNKNOWN_STATE = "state_unknown"
    """No baseline of its own: its state was assumed when the event was planned (or never planned)."""


@dataclass(frozen=True)
class Exclusion:
    """Why a vehicle's contribution does not count for allocation (``detail``: free text for statements)."""

    reason: ExclusionReason
    detail: str = ""


@dataclass(frozen=True)
class VehicleContribution:
    """One vehicle's delivery [kWh] and the weight it carries into allocation [kWh].

    ``weight_kwh`` is ``delivered_kwh`` unless the vehicle is excluded (then ``0``); allocation gives
    nothing to a non-positive weight. A vehicle of unknown state has no delivery of its own: ``0``,
    with every interval missing.
    """

    delivered_kwh: float
    weight_kwh: float
    missing_intervals: int
    exclusion: Exclusion | None = None


@dataclass(frozen=True)
class Attribution(Generic[K]):
    """Per-vehicle contributions, the site's delivery and the remainder no vehicle accounts for [kWh]."""

    vehicles: dict[K, VehicleContribution]
    site_delivered_kwh: float
    """The site's raw delivery: ``sum (B - M) * step_hours`` over the intervals with both."""
    unattributed_kwh: float
    """``site_delivered_kwh - vehicles_delivered_kwh``, built interval by interval (module doc)."""

    @property
    def vehicles_delivered_kwh(self) -> float:
        """Sum of every vehicle's measured delivery, excluded vehicles included."""
        return sum(contribution.delivered_kwh for contribution in self.vehicles.values())

    def weights(self) -> dict[K, float]:
        """Allocation weights [kWh], for :func:`aggregator.settlement.allocation.allocate`."""
        return {key: contribution.weight_kwh for key, contribution in self.vehicles.items()}


def attribute(
    site_baseline_kw: pd.Series,
    site_measured_kw: pd.Series,
    baseline_kw: Mapping[K, pd.Series],
    metered_kw: Mapping[K, pd.Series],
    *,
    exclusions: Mapping[K, Exclusion] | None = None,
    unknown: Mapping[K, Exclusion] | None = None,
    step: dt.timedelta = DEFAULT_STEP,
) -> Attribution[K]:
    """Each vehicle's delivery over the event window at one site, and the remainder (module doc).

    ``site_baseline_kw`` and ``site_measured_kw`` are the site's series [kW] on the event's interval
    index (aware UTC interval starts); ``baseline_kw`` and ``metered_kw`` map the same vehicles (those
    with a baseline of their own) to series on that index; ``exclusions`` names those of them whose
    contribution does not count, with the reason; ``unknown`` lists the vehicles without a baseline of
    their own (``ExclusionReason.UNKNOWN_STATE``), kept with their reason and no delivery.
    """
    exclusions = exclusions or {}
    unknown = unknown or {}
    index = site_baseline_kw.index
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise AttributionError("the site's baseline must be indexed by aware (UTC) interval starts")
    if not site_measured_kw.index.equals(index):
        raise AttributionError(
            f"the site's measured import covers {len(site_measured_kw)} intervals and its baseline "
            f"{len(index)}; both must be on the event's interval index"
        )
    planned_only = set(baseline_kw) - set(metered_kw)
    metered_only = set(metered_kw) - set(baseline_kw)
    if planned_only or metered_only:
        raise AttributionError(
            f"vehicles must have both a baseline and metered power: baseline only "
            f"{sorted(map(str, planned_only))}, metered only {sorted(map(str, metered_only))}"
        )
    stray = set(exclusions) - set(baseline_kw)
    if stray:
        raise AttributionError(f"exclusions name vehicles without data: {sorted(map(str, stray))}")
    both = set(unknown) & set(baseline_kw)
    if both:
        raise AttributionError(f"vehicles of unknown state cannot have a baseline: {sorted(map(str, both))}")
    hours = step.total_seconds() / 3600
    site = site_baseline_kw.astype(float) - site_measured_kw.astype(float)
    measured = site.notna()
    vehicles: dict[K, VehicleContribution] = {}
    attributed = pd.Series(0.0, index=index)
    for key, planned in baseline_kw.items():
        metered = metered_kw[key]
        for name, series in (("baseline", planned), ("metered", metered)):
            if not series.index.equals(index):
                raise AttributionError(
                    f"vehicle {key!r}: {name} power covers {len(series)} intervals, the site's "
                    f"{len(index)}; both must be on the event's interval index"
                )
        delivered = planned.astype(float) - metered.astype(float)
        present = delivered.notna() & measured
        attributed = attributed + delivered.where(present, 0.0)
        energy = float(delivered[present].sum()) * hours
        exclusion = exclusions.get(key)
        vehicles[key] = VehicleContribution(
            delivered_kwh=energy,
            weight_kwh=0.0 if exclusion is not None else energy,
            missing_intervals=int((~present).sum()),
            exclusion=exclusion,
        )
    for key, exclusion in unknown.items():
        vehicles[key] = VehicleContribution(0.0, 0.0, len(index), exclusion)
    site_kwh = float(site[measured].sum()) * hours
    remainder = float((site[measured] - attributed[measured]).sum()) * hours
    return Attribution(vehicles=vehicles, site_delivered_kwh=site_kwh, unattributed_kwh=remainder)


def combine(attributions: Sequence[Attribution[K]]) -> Attribution[K]:
    """Several sites' attributions as one: their vehicles (each at one site) and summed energies."""
    vehicles: dict[K, VehicleContribution] = {}
    for attribution in attributions:
        twice = set(vehicles) & set(attribution.vehicles)
        if twice:
            raise AttributionError(f"vehicles attributed at two sites: {sorted(map(str, twice))}")
        vehicles.update(attribution.vehicles)
    return Attribution(
        vehicles=vehicles,
        site_delivered_kwh=sum(a.site_delivered_kwh for a in attributions),
        unattributed_kwh=sum(a.unattributed_kwh for a in attributions),
    )
