"""Metered power: read a meter CSV, spread readings over minutes, average demand over clock intervals.

Meter CSV (:func:`read_meter_csv`): a header line ``timestamp,kW`` (names mapped in
:data:`METER_COLUMNS`), then one reading per line: an ISO-8601 timestamp with its UTC offset
(``2019-08-14T12:00:00-07:00``) and the average power [kW] from that timestamp to the next, import
positive. Readings are evenly spaced, at least a minute apart, on whole minutes.

A reading is the average power from its timestamp to the next (the last lasts one spacing);
:func:`meter_minutes` spreads it over minutes and :func:`demand_averages` averages those over demand
intervals aligned to the local clock, as utilities bill demand.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import zoneinfo
from pathlib import Path

import numpy as np
import pandas as pd

from market_adapters.errors import AdapterError, AdapterFormatError

METER_COLUMNS: dict[str, str] = {"timestamp": "timestamp", "kw": "kw"}
"""Meter CSV column (case-insensitive) -> ours."""


class MeterDataError(AdapterError, ValueError):
    """A metered series that cannot be billed; the message names the position and timestamp."""


def read_meter_csv(path: str | Path, *, timezone: str | None = None) -> pd.Series:
    """A meter CSV as a Series of kW on a tz-aware index.

    The index is in ``timezone`` (IANA) if given; else in the file's UTC offset, which must then be the
    same on every line (a file crossing a daylight-saving change needs ``timezone``).
    Raises :class:`~market_adapters.errors.AdapterFormatError` naming the line and column at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"meter CSV not found: {path}")
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise AdapterFormatError(source, "file", "", f"is not UTF-8 text: {error}") from error
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise AdapterFormatError(source, "file", "", "is empty")
    header = [name.strip().lower() for name in rows[0]]
    if sorted(header) != sorted(METER_COLUMNS):
        raise AdapterFormatError(source, "line 1", "", f"must be the header 'timestamp,kW', got {rows[0]}")
    columns = {METER_COLUMNS[name]: k for k, name in enumerate(header)}
    stamps: list[dt.datetime] = []
    values: list[float] = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"line {number}"
        if len(row) != len(header):
            raise AdapterFormatError(source, where, "", f"has {len(row)} columns, expected {len(header)}")
        raw_time, raw_kw = row[columns["timestamp"]].strip(), row[columns["kw"]].strip()
        try:
            stamp = dt.datetime.fromisoformat(raw_time)
        except ValueError as error:
            raise AdapterFormatError(source, where, "timestamp", f"{raw_time!r} is not ISO-8601") from error
        if stamp.utcoffset() is None:
            raise AdapterFormatError(
                source, where, "timestamp", f"{raw_time!r} has no UTC offset (write e.g. -07:00)"
            )
        try:
            value = float(raw_kw)
        except ValueError as error:
            raise AdapterFormatError(source, where, "kW", f"{raw_kw!r} is not a number") from error
        if not math.isfinite(value):
            raise AdapterFormatError(source, where, "kW", f"{raw_kw!r} is not a finite number")
        stamps.append(stamp)
        values.append(value)
    if not stamps:
        raise AdapterFormatError(source, "file", "", "has no readings")
    utc = pd.DatetimeIndex([s.astimezone(dt.UTC) for s in stamps]).as_unit("ns")
    if timezone is not None:
        index = utc.tz_convert(_zone(timezone))
    else:
        offsets = sorted({s.utcoffset() for s in stamps}, key=str)
        if len(offsets) > 1:
            first = next(k for k, s in enumerate(stamps) if s.utcoffset() != stamps[0].utcoffset())
            raise AdapterFormatError(
                source,
                f"line {first + 2}",
                "timestamp",
                f"changes the UTC offset ({stamps[0].isoformat()} then {stamps[first].isoformat()}); "
                "give the time zone (e.g. America/Los_Angeles) to bill across a daylight-saving change",
            )
        index = utc.tz_convert(stamps[0].tzinfo)
    return pd.Series(values, index=index, name="kW")


def meter_minutes(meter_kw: pd.Series, timezone: str | None = None) -> pd.Series:
    """The metered series as average kW per minute, in local time (``timezone`` or the series' own)."""
    if not isinstance(meter_kw, pd.Series) or not isinstance(meter_kw.index, pd.DatetimeIndex):
        raise MeterDataError("metered data must be a pandas Series of kW with a DatetimeIndex")
    index = meter_kw.index
    if index.tz is None:
        raise MeterDataError("metered timestamps must carry a UTC offset or time zone")
    if len(meter_kw) < 2:
        raise MeterDataError(
            f"metered data needs at least two readings to know their spacing, got {len(meter_kw)}"
        )
    values = pd.to_numeric(meter_kw, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        k = int(bad[0])
        raise MeterDataError(
            f"reading {k} ({index[k].isoformat()}) is {meter_kw.iloc[k]}, not a number of kW"
        )
    off_minute = np.flatnonzero((index.second != 0) | (index.microsecond != 0) | (index.nanosecond != 0))
    if len(off_minute):
        k = int(off_minute[0])
        raise MeterDataError(f"reading {k} ({index[k].isoformat()}) is not on a whole minute")
    utc = index.tz_convert("UTC")
    gaps = np.diff(_minutes_since_epoch(utc.tz_localize(None)))
    spacing = int(gaps[0])
    if spacing < 1:
        raise MeterDataError(f"readings 0 and 1 ({index[0].isoformat()}) are not at least a minute apart")
    odd = np.flatnonzero(gaps != spacing)
    if len(odd):
        k = int(odd[0]) + 1
        what = (
            "repeats or goes back"
            if gaps[k - 1] <= 0
            else f"comes {int(gaps[k - 1])} min after the one before"
        )
        raise MeterDataError(
            f"reading {k} ({index[k].isoformat()}) {what}; readings must be evenly spaced ({spacing} min "
            "apart from the first two), with no gap or overlap"
        )
    zone = _zone(timezone, index)
    minutes = pd.date_range(utc[0], periods=len(values) * spacing, freq="1min").tz_convert(zone)
    return pd.Series(np.repeat(values, spacing), index=minutes, name="kW")


def _zone(timezone: str | None, index: pd.DatetimeIndex | None = None) -> dt.tzinfo:
    if timezone is not None:
        try:
            return zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
            raise MeterDataError(f"unknown time zone {timezone!r} (expected an IANA name)") from error
    assert index is not None and index.tz is not None
    return index.tz


def demand_averages(minutes_kw: pd.Series, interval_minutes: int) -> pd.Series:
    """Average import [kW] over each demand interval aligned to the local clock, labelled by its start.

    An interval cut by the series' edge is averaged over the minutes it has. Intervals are keyed by wall
    clock and UTC offset, so the repeated hour of a fall-back day gives its own intervals.
    """
    index = minutes_kw.index
    assert isinstance(index, pd.DatetimeIndex)
    wall = _minutes_since_epoch(index.tz_localize(None))
    offset = wall - _minutes_since_epoch(index.tz_convert("UTC").tz_localize(None))
    key = wall // interval_minutes
    starts = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]) | (offset[1:] != offset[:-1])])
    imported = np.clip(minutes_kw.to_numpy(dtype=float), 0.0, None)
    sums = np.add.reduceat(imported, starts)
    counts = np.diff(np.r_[starts, len(imported)])
    labels = index[starts] - pd.to_timedelta(wall[starts] % interval_minutes, unit="min")
    return pd.Series(sums / counts, index=labels, name="kW")


def _minutes_since_epoch(naive: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray((naive - pd.Timestamp(0)) // pd.Timedelta(minutes=1), dtype=np.int64)
