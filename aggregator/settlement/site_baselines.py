"""An event's baseline at a site, by the method declared when the event was notified.

The declaration (:mod:`aggregator.programs.baseline_declarations`) fixes the method, every parameter,
the site's time zone and the days a day-matching method leaves out. :func:`declared_site_baseline`
applies it:

- a meter method (``x_of_y``, ``same_day``, ``meter_before_after``): :func:`recompute` on the site's
  metered import over the span the method reads (:func:`metering_span`). :func:`recompute` reads
  nothing but the declaration and the meter: it is what a grid operator runs on their own meter data
  to check the baseline, and what settlement and the operators' API run on ours;
- ``counterfactual``: the aggregator's own plan without the event, declared as such, fixed at the
  event's first plans and made of its vehicles' baselines and the rest of the site's import
  (:func:`aggregator.settlement.event_measurement.counterfactual_site_kw`). It cannot be recomputed
  from a meter; the versions it was fixed at are named (:attr:`SiteBaseline.plan_versions`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from sqlalchemy.orm import Session

from aggregator.ingestion.metering import DEFAULT_STEP, site_import_intervals
from aggregator.programs.baseline_declarations import SiteBaselineDeclaration
from aggregator.programs.event_baselines import frozen_base_load
from aggregator.programs.measurement import (
    BaselineMethod,
    CounterfactualConfig,
    MeterBeforeConfig,
    SameDayConfig,
    XofYConfig,
)
from aggregator.settlement.baselines import Baseline, BaselineError, EventWindow, site_baseline
from aggregator.settlement.event_measurement import SessionSeries, counterfactual_site_kw


@dataclass(frozen=True)
class SiteBaseline:
    """One site's baseline of an event, with the declaration it was made by."""

    declaration: SiteBaselineDeclaration
    baseline: Baseline
    plan_versions: tuple[int, ...] = ()
    """For ``counterfactual``: the schedule versions its base load was fixed at."""


def metering_span(
    method: XofYConfig | SameDayConfig | MeterBeforeConfig,
    start: dt.datetime,
    end: dt.datetime,
    step: dt.timedelta = DEFAULT_STEP,
) -> tuple[dt.datetime, dt.datetime]:
    """The metered span ``[first, last)`` a meter method reads for an event ``[start, end)``, aligned
    to ``step``."""
    if isinstance(method, XofYConfig):
        first = start - dt.timedelta(days=method.lookback_days + 2)
        last = end
    elif isinstance(method, SameDayConfig):
        first = start - dt.timedelta(hours=method.skip_before + method.hours_before)
        last = end + dt.timedelta(hours=method.skip_after + method.hours_after)
    else:
        first = start - (method.intervals_before + method.gap_intervals) * step
        last = end
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return epoch + ((first - epoch) // step) * step, last


def recompute(
    declaration: SiteBaselineDeclaration,
    metered_kw: pd.Series,
    start: dt.datetime,
    end: dt.datetime,
    step: dt.timedelta = DEFAULT_STEP,
) -> Baseline:
    """The baseline of the event ``[start, end)`` by a meter method's ``declaration``, from the site's
    metered import ``metered_kw`` [kW per interval, aware UTC starts] covering :func:`metering_span`.

    Raises pydantic's ``ValidationError`` for parameters that do not validate and
    :class:`~aggregator.settlement.baselines.BaselineError` for the ``counterfactual`` method (no meter
    computation) or meter data the method cannot use.
    """
    method: BaselineMethod = declaration.config()
    if isinstance(method, CounterfactualConfig):
        raise BaselineError(
            f"event {declaration.event_id} at {declaration.site_id}: the counterfactual method is the "
            "aggregator's plan, not a computation on the meter"
        )
    return site_baseline(
        method,
        metered_kw,
        EventWindow(str(declaration.event_id), start, end),
        event_days=declaration.excluded_days,
        tz=declaration.timezone,
        step=step,
    )


def declared_site_baseline(
    session: Session,
    declaration: SiteBaselineDeclaration,
    start: dt.datetime,
    end: dt.datetime,
    index: pd.DatetimeIndex,
    sessions: Sequence[SessionSeries],
    step: dt.timedelta = DEFAULT_STEP,
) -> SiteBaseline:
    """The site's baseline of the event ``[start, end)`` (intervals ``index``) by ``declaration``
    (module doc); ``sessions`` are the site's plugged-in sessions (for ``counterfactual``). Raises as
    :func:`recompute` does."""
    method = declaration.config()
    if isinstance(method, CounterfactualConfig):
        base_load = frozen_base_load(session, declaration.site_id, declaration.event_id, start, end)
        series = counterfactual_site_kw(base_load, sessions, index, end, step)
        return SiteBaseline(declaration, Baseline("counterfactual", series, series), base_load.version_ids)
    first, last = metering_span(method, start, end, step)
    metered = site_import_intervals(session, declaration.site_id, first, last, step).mean_kw
    return SiteBaseline(declaration, recompute(declaration, metered, start, end, step))


__all__ = ["SiteBaseline", "declared_site_baseline", "metering_span", "recompute"]
