"""What a dispatch event delivered against what was committed: measurement & verification per interval.

All series are indexed by the aware UTC start of each interval (15 minutes by default, as
:mod:`aggregator.ingestion.metering` produces them) and share one index. Power is in kW, energy in kWh; an
interval of power ``p`` [kW] and length ``step`` holds ``p * step_hours`` [kWh].

Delivered power per interval, by the signal's kind (see :class:`market_adapters.dispatch.SignalKind`;
each kind's rule is its entry in :data:`aggregator.programs.kinds.KINDS`):

- ``dr_reduction``: the import reduction below the baseline, ``baseline_kw - measured_kw``;
  ``committed_kw`` is the committed reduction [kW].
- ``v2g_export``: the export below the baseline, again ``baseline_kw - measured_kw``, where the
  measured import is negative while the site exports (a site that would have imported 5 kW and
  exports 10 kW delivered 15 kW); ``committed_kw`` is the committed export [kW] relative to the
  baseline.
- ``dr_cap``: ``committed_kw`` is the *cap* on site import [kW]. The commitment is turned into a
  reduction, ``max(baseline_kw - cap_kw, 0)`` (nothing is owed in an interval whose baseline is
  already under the cap), and delivery is ``baseline_kw - measured_kw`` as for ``dr_reduction``;
  the credited delivery below is therefore ``min(committed reduction, baseline_kw - measured_kw)``:
  staying under the cap meets the commitment, going further earns nothing more.

For every kind the raw delivery is kept in :attr:`EventPerformance.delivered_kw`; the delivery
*credited* towards the commitment is capped per interval at that interval's commitment
(``credited_kw = min(delivered_kw, committed_kw)``), so over-delivery in one interval does not make
up for under-delivery in another. Negative delivery (import above the baseline) is credited as it
is and nets against the other intervals. Then::

    committed_kwh      = sum(committed_kw) * step_hours
    delivered_kwh      = sum(credited_kw) * step_hours            (may be negative)
    performance_factor = clip(delivered_kwh / committed_kwh, 0, 1)
    shortfall_kwh      = committed_kwh * (1 - performance_factor)

Missing data: an interval whose measured or baseline power is ``NaN`` (no meter readings, or no
baseline) is left out of every total and counted in ``missing_intervals``: performance is judged
over the intervals that have data. When no interval has data at all, the factor is ``0`` (nothing
can be verified); when intervals have data but nothing was committed in them (e.g. a cap that the
baseline never reached), the factor is ``1``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aggregator.programs.kinds import rules_for
from market_adapters.dispatch import SignalKind

DEFAULT_STEP = dt.timedelta(minutes=15)


class PerformanceError(ValueError):
    """Inputs that cannot be measured as given; the message names the series and the problem."""


@dataclass(frozen=True)
class EventPerformance:
    """One event's delivery at one site (or portfolio), per interval and in total.

    Per-interval series [kW], on the event's interval index:

    - ``committed_kw``: the commitment as a reduction below the baseline (for ``dr_cap``,
      ``max(baseline - cap, 0)``; the cap itself is in ``cap_kw``);
    - ``baseline_kw``, ``measured_kw``: as given (measured = site net import, negative exporting);
    - ``delivered_kw``: raw delivery ``baseline_kw - measured_kw`` (``NaN`` where data is missing);
    - ``credited_kw``: ``min(delivered_kw, committed_kw)``, what counts towards the commitment.

    Totals (over intervals with data only): ``committed_kwh``, ``delivered_kwh`` (credited),
    ``raw_delivered_kwh`` (uncapped), ``shortfall_kwh``, ``performance_factor`` in ``[0, 1]``,
    ``missing_intervals`` (intervals left out for missing measurement or baseline).
    """

    kind: SignalKind
    committed_kw: pd.Series
    baseline_kw: pd.Series
    measured_kw: pd.Series
    delivered_kw: pd.Series
    credited_kw: pd.Series
    cap_kw: pd.Series | None
    committed_kwh: float
    delivered_kwh: float
    raw_delivered_kwh: float
    shortfall_kwh: float
    performance_factor: float
    missing_intervals: int
    step: dt.timedelta = DEFAULT_STEP

    @property
    def intervals(self) -> int:
        """Number of intervals in the event window (with or without data)."""
        return len(self.committed_kw)

    @property
    def measured_intervals(self) -> int:
        """Intervals that had both measured and baseline data."""
        return self.intervals - self.missing_intervals

    @property
    def coverage(self) -> float:
        """Share of the event's intervals with data, in ``[0, 1]`` (``0`` for an empty window)."""
        return self.measured_intervals / self.intervals if self.intervals else 0.0


def _check_series(name: str, series: pd.Series) -> None:
    index = series.index
    if not isinstance(index, pd.DatetimeIndex):
        raise PerformanceError(f"{name} must be indexed by interval start times, not {type(index).__name__}")
    if index.tz is None:
        raise PerformanceError(f"{name} is indexed by naive times; interval starts must be aware (UTC)")
    if not index.is_unique or not index.is_monotonic_increasing:
        raise PerformanceError(f"{name} index must be unique and increasing")


def event_performance(
    kind: SignalKind,
    committed_kw: pd.Series,
    baseline_kw: pd.Series,
    measured_kw: pd.Series,
    *,
    step: dt.timedelta = DEFAULT_STEP,
) -> EventPerformance:
    """Measure one event: per-interval delivery against the commitment and the totals (module doc).

    ``committed_kw`` is the committed reduction or export [kW] per interval, or for ``dr_cap`` the cap
    on import [kW]; ``baseline_kw`` the expected import without the event [kW]; ``measured_kw`` the
    metered net import [kW] (``NaN`` = missing). The three series must share one aware index.
    """
    rules = rules_for(kind)
    if not rules.commits:
        raise PerformanceError(f"signal kind {kind.value!r} carries no commitment to measure")
    if step <= dt.timedelta(0):
        raise PerformanceError(f"step {step} must be positive")
    for name, series in (
        ("committed_kw", committed_kw),
        ("baseline_kw", baseline_kw),
        ("measured_kw", measured_kw),
    ):
        _check_series(name, series)
    for name, series in (("baseline_kw", baseline_kw), ("measured_kw", measured_kw)):
        if not series.index.equals(committed_kw.index):
            raise PerformanceError(
                f"{name} covers {len(series)} intervals from {_first(series)}, committed_kw covers "
                f"{len(committed_kw)} from {_first(committed_kw)}: the indexes must be equal"
            )
    committed_in = committed_kw.astype(float)
    if committed_in.isna().any():
        at = committed_in.index[committed_in.isna()][0]
        raise PerformanceError(f"committed_kw is missing at {at.isoformat()}; a commitment must be known")
    if (committed_in < 0).any():
        at = committed_in.index[committed_in < 0][0]
        raise PerformanceError(
            f"committed_kw is negative ({committed_in[at]} kW) at {at.isoformat()}; "
            "commitments are reductions, exports or caps >= 0"
        )
    baseline = baseline_kw.astype(float)
    measured = measured_kw.astype(float)

    committed, cap = rules.committed_reduction(committed_in, baseline)  # a cap becomes a reduction

    delivered = baseline - measured
    has_data = delivered.notna()
    credited = delivered.where(delivered < committed, committed).where(has_data)
    hours = step.total_seconds() / 3600
    committed_kwh = float(committed[has_data].sum()) * hours
    delivered_kwh = float(credited[has_data].sum()) * hours
    raw_delivered_kwh = float(delivered[has_data].sum()) * hours
    missing = int((~has_data).sum())

    if not has_data.any():
        factor = 0.0
    elif committed_kwh <= 0:
        factor = 1.0
    else:
        factor = float(np.clip(delivered_kwh / committed_kwh, 0.0, 1.0))

    return EventPerformance(
        kind=kind,
        committed_kw=committed,
        baseline_kw=baseline,
        measured_kw=measured,
        delivered_kw=delivered,
        credited_kw=credited,
        cap_kw=cap,
        committed_kwh=committed_kwh,
        delivered_kwh=delivered_kwh,
        raw_delivered_kwh=raw_delivered_kwh,
        shortfall_kwh=committed_kwh * (1.0 - factor),
        performance_factor=factor,
        missing_intervals=missing,
        step=step,
    )


def _first(series: pd.Series) -> str:
    return series.index[0].isoformat() if len(series) else "nowhere (empty)"
