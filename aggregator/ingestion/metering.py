"""Metered import from stored telemetry, at the resolution grid services are measured in.

Telemetry arrives every few seconds; delivery, baselines and plans are compared per interval (15
minutes by default). :func:`site_import_intervals` and :func:`evse_power_intervals` average the
readings that fall in each interval ``[t, t + step)`` by ``sent_at`` (when the gateway measured them,
not when they arrived), and report how many readings each interval holds, so that a caller can tell
a quiet interval from a missing one (``NaN`` mean, ``0`` samples).

:func:`site_import_aggregated` answers the same for long spans (a billing period, for the demand a plan
starts from) with the averaging done by the database, so a month of readings is never loaded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import BigInteger, ColumnElement, cast, extract, func, select
from sqlalchemy.orm import Session

from aggregator.db.models import EvseTelemetryRecord, TelemetryRecord

DEFAULT_STEP = dt.timedelta(minutes=15)


class MeteringError(ValueError):
    """A request for metered data that cannot be answered as asked (a naive or unaligned time)."""


@dataclass(frozen=True)
class IntervalMeans:
    """Mean power per interval and the readings behind each mean.

    ``mean_kw`` and ``samples`` share one index: the UTC start of each interval.
    """

    mean_kw: pd.Series
    samples: pd.Series
    step: dt.timedelta = DEFAULT_STEP

    @property
    def energy_kwh(self) -> pd.Series:
        """Energy per interval [kWh]: mean power times the interval length (``NaN`` where no data)."""
        return self.mean_kw * (self.step.total_seconds() / 3600)

    @property
    def complete(self) -> bool:
        """Every interval has at least one reading."""
        return bool((self.samples > 0).all())


def interval_index(
    start: dt.datetime, end: dt.datetime, step: dt.timedelta = DEFAULT_STEP
) -> pd.DatetimeIndex:
    """The UTC starts of the intervals ``[start, end)``; ``start`` and ``end`` must be aware."""
    for name, value in (("start", start), ("end", end)):
        if value.utcoffset() is None:
            raise MeteringError(f"{name} {value.isoformat()} has no UTC offset")
    if end <= start:
        raise MeteringError(f"end {end.isoformat()} is not after start {start.isoformat()}")
    return pd.date_range(start.astimezone(dt.UTC), end.astimezone(dt.UTC), freq=step, inclusive="left")


def _bucket(
    times: list[dt.datetime], values: list[float], index: pd.DatetimeIndex, step: dt.timedelta
) -> IntervalMeans:
    if not times:
        return IntervalMeans(
            pd.Series(np.nan, index=index, dtype=float), pd.Series(0, index=index, dtype=int), step
        )
    stamps = pd.DatetimeIndex(pd.to_datetime(times, utc=True))
    slots = ((stamps - index[0]) // pd.Timedelta(step)).to_numpy()
    frame = pd.DataFrame({"slot": slots, "value": values})
    grouped = frame.groupby("slot")["value"]
    means = grouped.mean().reindex(range(len(index)))
    counts = grouped.size().reindex(range(len(index)), fill_value=0)
    return IntervalMeans(
        pd.Series(means.to_numpy(dtype=float), index=index),
        pd.Series(counts.to_numpy(dtype=int), index=index),
        step,
    )


def site_import_intervals(
    session: Session, site_id: str, start: dt.datetime, end: dt.datetime, step: dt.timedelta = DEFAULT_STEP
) -> IntervalMeans:
    """Mean net import [kW] of ``site_id`` per interval of ``[start, end)`` (negative when exporting)."""
    index = interval_index(start, end, step)
    rows = session.execute(
        select(TelemetryRecord.sent_at, TelemetryRecord.site_import_kw)
        .where(TelemetryRecord.site_id == site_id)
        .where(TelemetryRecord.sent_at >= index[0].to_pydatetime())
        .where(TelemetryRecord.sent_at < end)
        .order_by(TelemetryRecord.sent_at)
    ).all()
    return _bucket([row[0] for row in rows], [row[1] for row in rows], index, step)


def evse_power_intervals(
    session: Session,
    site_id: str,
    start: dt.datetime,
    end: dt.datetime,
    step: dt.timedelta = DEFAULT_STEP,
) -> dict[tuple[str, int], IntervalMeans]:
    """Mean power [kW] per interval of each EVSE of ``site_id`` that reported in ``[start, end)``,
    keyed by ``(charge point id, evse id)``; positive charging, negative discharging."""
    index = interval_index(start, end, step)
    rows = session.execute(
        select(
            EvseTelemetryRecord.charger_id,
            EvseTelemetryRecord.evse_id,
            TelemetryRecord.sent_at,
            EvseTelemetryRecord.power_kw,
        )
        .join(TelemetryRecord, TelemetryRecord.id == EvseTelemetryRecord.telemetry_id)
        .where(TelemetryRecord.site_id == site_id)
        .where(TelemetryRecord.sent_at >= index[0].to_pydatetime())
        .where(TelemetryRecord.sent_at < end)
        .order_by(TelemetryRecord.sent_at)
    ).all()
    readings: dict[tuple[str, int], tuple[list[dt.datetime], list[float]]] = {}
    for charger_id, evse_id, sent_at, power_kw in rows:
        times, values = readings.setdefault((charger_id, evse_id), ([], []))
        times.append(sent_at)
        values.append(power_kw)
    return {key: _bucket(times, values, index, step) for key, (times, values) in readings.items()}


def site_import_aggregated(
    session: Session, site_id: str, start: dt.datetime, end: dt.datetime, step: dt.timedelta = DEFAULT_STEP
) -> IntervalMeans:
    """As :func:`site_import_intervals`, averaged by the database: for spans of many readings.

    A reading counts in the interval its whole second (``sent_at`` without its fraction) falls in;
    ``start`` and ``step`` must be whole seconds (:class:`MeteringError` otherwise). The interval
    holding ``end`` (an interval still open) averages the readings before ``end``.
    """
    if start.microsecond or step.microseconds or step <= dt.timedelta(0):
        raise MeteringError(
            f"start {start.isoformat()} and step {step} must be whole, positive seconds to be averaged "
            "by the database"
        )
    index = interval_index(start, end, step)
    origin = int(index[0].timestamp())
    slot = ((_epoch_seconds(session) - origin) // int(step.total_seconds())).label("slot")
    rows = session.execute(
        select(slot, func.avg(TelemetryRecord.site_import_kw), func.count())
        .where(TelemetryRecord.site_id == site_id)
        .where(TelemetryRecord.sent_at >= index[0].to_pydatetime())
        .where(TelemetryRecord.sent_at < end)
        .group_by(slot)
    ).all()
    means = np.full(len(index), np.nan)
    counts = np.zeros(len(index), dtype=int)
    for position, mean, count in rows:
        if 0 <= int(position) < len(index):
            means[int(position)], counts[int(position)] = float(mean), int(count)
    return IntervalMeans(pd.Series(means, index=index), pd.Series(counts, index=index), step)


def _epoch_seconds(session: Session) -> ColumnElement[int]:
    """``telemetry.sent_at`` as whole seconds since the Unix epoch, in the database's own SQL."""
    if session.get_bind().dialect.name == "sqlite":  # stored as UTC text (aggregator.db.types)
        whole = func.substr(TelemetryRecord.sent_at, 1, 19)  # strftime would round the fraction
        return cast(func.strftime("%s", whole), BigInteger)
    return cast(func.floor(extract("epoch", TelemetryRecord.sent_at)), BigInteger)
