"""Metered power: read a meter CSV, spread readings over minutes, average demand over clock intervals.

Meter CSV (:func:`read_meter_csv`): a header line, then one reading per line: an ISO-8601 timestamp
with its UTC offset (``2019-08-14T12:00:00-07:00``) and what was metered from that timestamp to the
next, import positive. Readings are evenly spaced, at least a minute apart, on whole minutes. Read
as they are:

- a meter file ``timestamp,kW`` (average power per interval) or ``timestamp,kWh`` (energy per
  interval);
- our own ``site.csv`` (``fleetgrid schedule --out DIR``): time ``start``, power ``import_kw``;
- any CSV whose time and power columns are named (``time_column``, ``power_column``).

Columns found without being named are in :data:`TIME_COLUMNS` and :data:`POWER_COLUMNS`. The unit is
declared, never guessed: ``unit`` (:class:`MeterUnit`), or the power column's name when it states
the unit unambiguously (:func:`stated_unit`: ``kW``, ``import_kw``, ``energy_kwh``); a name stating
another unit than the one declared is refused. kWh per interval are turned into kW over the interval
(to the next reading; the last one lasts as long as the one before).

A reading is the average power from its timestamp to the next (the last lasts one spacing);
:func:`meter_minutes` spreads it over minutes and :func:`demand_averages` averages those over demand
intervals aligned to the local clock, as utilities bill demand.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import itertools
import math
import re
import zoneinfo
from pathlib import Path

import numpy as np
import pandas as pd

from market_adapters.errors import AdapterError, AdapterFormatError


class MeterUnit(enum.StrEnum):
    """What a meter CSV's power column holds for each interval (from a reading to the next)."""

    KW = "kW"
    """Average power over the interval [kW]."""
    KWH = "kWh"
    """Energy over the interval [kWh]."""


TIME_COLUMNS: tuple[str, ...] = ("timestamp", "start")
"""Time columns found by name (case-insensitive) when none is named: a meter file's ``timestamp``,
our ``site.csv``'s ``start``."""
POWER_COLUMNS: tuple[str, ...] = ("kw", "kwh", "import_kw")
"""Power columns found by name (case-insensitive) when none is named: a meter file's ``kW`` or
``kWh``, our ``site.csv``'s ``import_kw`` (grid import, export not netted)."""
UNIT_WORDS: dict[str, str] = {"kw": "kW", "kwh": "kWh", "w": "W", "wh": "Wh", "mw": "MW", "mwh": "MWh"}
"""Words of a column name that state a unit (:func:`stated_unit`); only kW and kWh are read."""


class MeterDataError(AdapterError, ValueError):
    """A metered series that cannot be billed; the message names the position and timestamp."""


def stated_unit(column: str) -> str | None:
    """The unit a column name states: its one unit word (:data:`UNIT_WORDS`, words split at anything
    but letters, case-insensitive), ``None`` when it states none or more than one.

    ``import_kw`` and ``kW`` state kW, ``energy (kWh)`` kWh, ``power_w`` W; ``power`` and
    ``kw_or_kwh`` state none.
    """
    units = {UNIT_WORDS[word] for word in re.findall(r"[a-z]+", column.lower()) if word in UNIT_WORDS}
    return units.pop() if len(units) == 1 else None


def read_meter_csv(
    path: str | Path,
    *,
    timezone: str | None = None,
    time_column: str | None = None,
    power_column: str | None = None,
    unit: MeterUnit | str | None = None,
) -> pd.Series:
    """A meter CSV as a Series of average kW per interval on a tz-aware index (module doc).

    ``time_column`` and ``power_column`` name the columns (case-insensitive); by default the one of
    :data:`TIME_COLUMNS` and of :data:`POWER_COLUMNS` the header has. ``unit`` declares what the power
    column holds (``"kW"`` or ``"kWh"`` per interval); by default the unit its name states.

    The index is in ``timezone`` (IANA) if given; else in the file's UTC offset, which must then be the
    same on every line (a file crossing a daylight-saving change needs ``timezone``).
    Raises :class:`~market_adapters.errors.AdapterFormatError` naming the file, the line and the column
    at fault.
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
    header = [name.strip() for name in rows[0]]
    time_at = _column(source, header, time_column, TIME_COLUMNS, "time", "--time-column")
    power_at = _column(source, header, power_column, POWER_COLUMNS, "power", "--power-column")
    time_name, power_name = header[time_at], header[power_at]
    declared = _unit(source, power_name, unit)
    stamps: list[dt.datetime] = []
    values: list[float] = []
    lines: list[int] = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"line {number}"
        if len(row) != len(header):
            raise AdapterFormatError(source, where, "", f"has {len(row)} columns, expected {len(header)}")
        raw_time, raw_value = row[time_at].strip(), row[power_at].strip()
        try:
            stamp = dt.datetime.fromisoformat(raw_time)
        except ValueError as error:
            raise AdapterFormatError(source, where, time_name, f"{raw_time!r} is not ISO-8601") from error
        if stamp.utcoffset() is None:
            raise AdapterFormatError(
                source, where, time_name, f"{raw_time!r} has no UTC offset (write e.g. -07:00)"
            )
        try:
            value = float(raw_value)
        except ValueError as error:
            raise AdapterFormatError(source, where, power_name, f"{raw_value!r} is not a number") from error
        if not math.isfinite(value):
            raise AdapterFormatError(source, where, power_name, f"{raw_value!r} is not a finite number")
        stamps.append(stamp)
        values.append(value)
        lines.append(number)
    if not stamps:
        raise AdapterFormatError(source, "file", "", "has no readings")
    if declared is MeterUnit.KWH:
        values = _kwh_to_kw(source, time_name, stamps, values, lines)
    utc = pd.DatetimeIndex([s.astimezone(dt.UTC) for s in stamps]).as_unit("ns")
    if timezone is not None:
        index = utc.tz_convert(_zone(timezone))
    else:
        offsets = sorted({s.utcoffset() for s in stamps}, key=str)
        if len(offsets) > 1:
            first = next(k for k, s in enumerate(stamps) if s.utcoffset() != stamps[0].utcoffset())
            raise AdapterFormatError(
                source,
                f"line {lines[first]}",
                time_name,
                f"changes the UTC offset ({stamps[0].isoformat()} then {stamps[first].isoformat()}); "
                "give the time zone (e.g. America/Los_Angeles) to bill across a daylight-saving change",
            )
        index = utc.tz_convert(stamps[0].tzinfo)
    return pd.Series(values, index=index, name="kW")


def _column(
    source: str,
    header: list[str],
    named: str | None,
    known: tuple[str, ...],
    what: str,
    option: str,
) -> int:
    """Position of the ``what`` column: ``named``, else the one of ``known`` the header has."""
    lowered = [name.lower() for name in header]
    columns = ", ".join(repr(name) for name in header)
    if named is not None:
        matches = [k for k, name in enumerate(lowered) if name == named.strip().lower()]
        if not matches:
            raise AdapterFormatError(source, "line 1", "", f"has no column {named!r}; its columns: {columns}")
    else:
        matches = [k for k, name in enumerate(lowered) if name in known]
        if not matches:
            raise AdapterFormatError(
                source,
                "line 1",
                "",
                f"has no {what} column named {' or '.join(known)}; name it ({option}); "
                f"its columns: {columns}",
            )
        if len({lowered[k] for k in matches}) > 1:
            found = " and ".join(repr(header[k]) for k in matches)
            raise AdapterFormatError(
                source, "line 1", "", f"has {found}; name the {what} column to read ({option})"
            )
    if len(matches) > 1:
        raise AdapterFormatError(source, "line 1", header[matches[0]], f"appears {len(matches)} times")
    return matches[0]


def _unit(source: str, column: str, declared: MeterUnit | str | None) -> MeterUnit:
    """The unit of the power ``column``: ``declared``, else the one its name states; never a guess."""
    stated = stated_unit(column)
    if declared is not None:
        try:
            unit = MeterUnit(declared)
        except ValueError:
            raise AdapterFormatError(
                source, "", column, f"unit {declared!r} is not kW or kWh (per interval)"
            ) from None
        if stated is not None and stated != unit:
            raise AdapterFormatError(
                source, "line 1", column, f"says {stated}, but the unit declared is {unit.value}"
            )
        return unit
    if stated is None:
        raise AdapterFormatError(
            source,
            "line 1",
            column,
            "does not say whether it holds kW (average power per interval) or kWh (energy per "
            "interval); declare the unit (--unit kW or --unit kWh)",
        )
    if stated not in set(MeterUnit):
        raise AdapterFormatError(
            source, "line 1", column, f"is in {stated}; a meter CSV is read in kW or kWh per interval"
        )
    return MeterUnit(stated)


def _kwh_to_kw(
    source: str, column: str, stamps: list[dt.datetime], kwh: list[float], lines: list[int]
) -> list[float]:
    """Energy per interval [kWh] as average power over it [kW]; an interval runs to the next
    reading, the last one as long as the one before."""
    if len(stamps) < 2:
        raise AdapterFormatError(
            source, "file", "", "has one reading in kWh; the interval it covers needs a second reading"
        )
    hours = [(later - earlier).total_seconds() / 3600 for earlier, later in itertools.pairwise(stamps)]
    for k, span in enumerate(hours):
        if span <= 0:
            raise AdapterFormatError(
                source,
                f"line {lines[k + 1]}",
                column,
                f"{stamps[k + 1].isoformat()} is not after the reading before ({stamps[k].isoformat()})",
            )
    hours.append(hours[-1])
    return [energy / span for energy, span in zip(kwh, hours, strict=True)]


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
