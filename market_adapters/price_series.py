"""Market prices as parsed intervals, and their one conversion into our per-kWh step series.

Every price adapter (:mod:`market_adapters.price_csv`, :mod:`market_adapters.entsoe_xml`) returns a
:class:`MarketPrices`: the prices as published, one row per interval ``[start, end)`` in UTC, in the
source's currency per the source's energy unit (EUR/MWh for ENTSO-E), each row carrying the
position it came from (``line 27``, ``TimeSeries 1 / Period 1 / Point 5``) for error messages.
A :class:`MarketPrices` is only ever built whole: its intervals are sorted, positive and
contiguous (no gap, no overlap), or construction raises naming the two positions at fault.

:func:`normalise_prices` then converts units once, at this boundary: the price per kWh in the
configured currency (a rate table supplied by the caller; unknown units or currencies are errors),
on a UTC index at the schedule's step. Resampling is time-weighted: a step inside one interval
takes that interval's price (forward fill for finer steps); a step spanning several takes their
mean (coarser steps). :func:`horizon_prices` cuts such a series to an optimizer horizon.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np
import pandas as pd

from market_adapters.errors import AdapterError, AdapterFormatError

KWH_PER_UNIT: dict[str, float] = {"WH": 0.001, "KWH": 1.0, "MWH": 1_000.0, "GWH": 1_000_000.0}
"""Energy unit a price is quoted per (upper case, as ENTSO-E writes ``MWH``) -> kWh in one unit."""

PRICE_NAME = "price_per_kwh"
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class PriceUnitError(AdapterError, ValueError):
    """A price unit or currency we cannot convert (unknown energy unit, no exchange rate)."""


class PriceCoverageError(AdapterError, ValueError):
    """The prices do not cover the horizon the optimizer asks for."""


@dataclass(frozen=True)
class MarketPrices:
    """Prices as published: one row per interval, in ``currency`` per ``energy_unit``.

    ``frame`` has columns ``start`` and ``end`` (tz-aware UTC), ``price`` (float, as published)
    and ``position`` (where the row came from, for messages), sorted by ``start``.
    """

    frame: pd.DataFrame
    currency: str
    energy_unit: str
    source: str = "<data>"

    def __post_init__(self) -> None:
        check_timeline(self.frame, self.source)

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self.frame["start"].iloc[0])

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(self.frame["end"].iloc[-1])


def market_prices(
    starts: Sequence[pd.Timestamp] | pd.Series,
    ends: Sequence[pd.Timestamp] | pd.Series,
    prices: Sequence[float] | pd.Series | np.ndarray,
    positions: Sequence[str],
    *,
    currency: str,
    energy_unit: str,
    source: str,
) -> MarketPrices:
    """Build a checked :class:`MarketPrices` from parallel sequences (any order; sorted here)."""
    frame = pd.DataFrame(
        {
            "start": pd.to_datetime(pd.Series(list(starts)), utc=True),
            "end": pd.to_datetime(pd.Series(list(ends)), utc=True),
            "price": np.asarray(prices, dtype=float),
            "position": list(positions),
        }
    )
    frame = frame.sort_values("start", kind="stable").reset_index(drop=True)
    return MarketPrices(frame, currency=currency, energy_unit=energy_unit.upper(), source=source)


def check_timeline(frame: pd.DataFrame, source: str) -> None:
    """Raise :class:`AdapterFormatError` unless the intervals are non-empty, positive, finite,
    sorted and contiguous (each starts where the previous ends)."""
    if frame.empty:
        raise AdapterFormatError(source, "document", "", "holds no prices")
    positions = frame["position"].tolist()
    bad = ~np.isfinite(frame["price"].to_numpy())
    if bad.any():
        k = int(np.argmax(bad))
        raise AdapterFormatError(source, positions[k], "price", f"is {frame['price'].iloc[k]}, not a number")
    starts, ends = frame["start"], frame["end"]
    empty = (ends <= starts).to_numpy()
    if empty.any():
        k = int(np.argmax(empty))
        raise AdapterFormatError(
            source, positions[k], "", f"interval {_iso(starts.iloc[k])}..{_iso(ends.iloc[k])} is not positive"
        )
    if len(frame) < 2:
        return
    previous_end = ends.iloc[:-1].to_numpy()
    next_start = starts.iloc[1:].to_numpy()
    broken = next_start != previous_end
    if broken.any():
        k = int(np.argmax(broken))
        kind = "overlaps" if next_start[k] < previous_end[k] else "leaves a gap after"
        raise AdapterFormatError(
            source,
            positions[k + 1],
            "",
            f"interval starting {_iso(starts.iloc[k + 1])} {kind} {positions[k]} "
            f"(ending {_iso(ends.iloc[k])})",
        )


def per_kwh_factor(
    currency: str, energy_unit: str, *, to_currency: str, rates: Mapping[str, float] | None = None
) -> float:
    """Multiplier from ``currency``/``energy_unit`` to ``to_currency``/kWh.

    ``rates`` maps a source currency to units of ``to_currency`` per one unit of it
    (``{"DKK": 0.134}`` when converting to EUR). Same currency needs no rate.
    """
    for label, code in (("currency", currency), ("target currency", to_currency)):
        if not _CURRENCY.match(code):
            raise PriceUnitError(f"{label} {code!r} is not an ISO 4217 code like 'EUR'")
    unit = energy_unit.upper()
    if unit not in KWH_PER_UNIT:
        raise PriceUnitError(
            f"unknown energy unit {energy_unit!r} (known: {', '.join(sorted(KWH_PER_UNIT))})"
        )
    if currency == to_currency:
        rate = 1.0
    else:
        given = (rates or {}).get(currency)
        if given is None:
            known = ", ".join(sorted(rates or {})) or "none"
            raise PriceUnitError(
                f"no exchange rate from {currency} to {to_currency} (rates given for: {known})"
            )
        if not (math.isfinite(given) and given > 0):
            raise PriceUnitError(f"exchange rate {currency}->{to_currency} is {given}, not a positive number")
        rate = float(given)
    return rate / KWH_PER_UNIT[unit]


def normalise_prices(
    prices: MarketPrices,
    *,
    currency: str = "EUR",
    step_minutes: int = 15,
    rates: Mapping[str, float] | None = None,
) -> pd.Series:
    """Price per kWh in ``currency`` on a UTC index of ``step_minutes`` steps [currency/kWh].

    The index starts at the first interval's start and runs to the last interval's end, which
    must be a whole number of steps apart. Each step's price is the time-weighted mean of the
    intervals it overlaps. ``attrs`` carries ``currency``, ``step_minutes`` and ``source``.
    """
    factor = per_kwh_factor(prices.currency, prices.energy_unit, to_currency=currency, rates=rates)
    step = _step(step_minutes)
    frame = prices.frame
    span = prices.end - prices.start
    if span % step:
        raise PriceCoverageError(
            f"{prices.source}: the prices cover {_iso(prices.start)}..{_iso(prices.end)}, not a whole "
            f"number of {step_minutes}-minute steps"
        )
    n_steps = int(span // step)
    values = _interval_means(frame, prices.start, step, n_steps, prices.source) * factor
    index = pd.date_range(prices.start, periods=n_steps, freq=step, name="start")
    series = pd.Series(values, index=index, name=PRICE_NAME)
    series.attrs.update(currency=currency, step_minutes=step_minutes, source=prices.source)
    return series


def horizon_prices(
    prices: pd.Series, *, start: dt.datetime | pd.Timestamp, n_steps: int, step_minutes: int
) -> list[float]:
    """``import_price_per_kwh`` for :class:`optimizer.Tariff`: one price per horizon step.

    ``prices`` is a series from :func:`normalise_prices` (any step; it is re-averaged onto the
    horizon's steps). Raises :class:`PriceCoverageError` naming the first step not covered.
    """
    begin = pd.Timestamp(start)
    if begin.tzinfo is None:
        raise ValueError(f"start must be timezone-aware, got {start}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    step = _step(step_minutes)
    frame = series_intervals(prices)
    source = str(prices.attrs.get("source", "prices"))
    return [float(v) for v in _interval_means(frame, begin.tz_convert("UTC"), step, n_steps, source)]


def series_intervals(prices: pd.Series) -> pd.DataFrame:
    """The intervals of a regular price series (its step from ``attrs`` or the index spacing)."""
    if not isinstance(prices.index, pd.DatetimeIndex) or prices.index.tz is None:
        raise ValueError("prices must have a tz-aware DatetimeIndex (see normalise_prices)")
    if prices.empty:
        raise PriceCoverageError("the price series is empty")
    minutes = prices.attrs.get("step_minutes")
    if minutes is None:
        if len(prices) < 2:
            raise ValueError("a one-value price series needs attrs['step_minutes']")
        minutes = (prices.index[1] - prices.index[0]) / pd.Timedelta(minutes=1)
    starts = prices.index.tz_convert("UTC")
    frame = pd.DataFrame(
        {
            "start": starts,
            "end": starts + _step(float(minutes)),
            "price": prices.to_numpy(dtype=float),
            "position": [f"step {k}" for k in range(len(prices))],
        }
    ).reset_index(drop=True)
    check_timeline(frame, str(prices.attrs.get("source", "prices")))
    return frame


def _interval_means(
    frame: pd.DataFrame, grid_start: pd.Timestamp, step: pd.Timedelta, n_steps: int, source: str
) -> np.ndarray:
    """Time-weighted mean price of each step ``grid_start + k * step`` over contiguous intervals.

    Works on a fine grid (the greatest common divisor of the interval lengths, the step and the
    grid's offset from the data), where every interval is a whole number of cells.
    """
    first, last = pd.Timestamp(frame["start"].iloc[0]), pd.Timestamp(frame["end"].iloc[-1])
    grid_end = grid_start + n_steps * step
    if grid_start < first or grid_end > last:
        uncovered = grid_start if grid_start < first else max(grid_start, last)
        k = int((uncovered - grid_start) // step)
        raise PriceCoverageError(
            f"{source}: prices cover {_iso(first)}..{_iso(last)}, but the horizon "
            f"{_iso(grid_start)}..{_iso(grid_end)} needs step {k} ({_iso(grid_start + k * step)})"
        )
    frame = frame[(frame["end"] > grid_start) & (frame["start"] < grid_end)]  # only what the grid needs
    first = pd.Timestamp(frame["start"].iloc[0])
    lengths = (frame["end"] - frame["start"]).dt.total_seconds().round().astype("int64").to_numpy()
    offset = int((grid_start - first) // pd.Timedelta(seconds=1))
    cell = reduce(math.gcd, [*np.unique(lengths).tolist(), int(step // pd.Timedelta(seconds=1)), offset])
    cells = np.repeat(frame["price"].to_numpy(dtype=float), lengths // cell)
    per_step = int(step // pd.Timedelta(seconds=1)) // cell
    begin = offset // cell
    window = cells[begin : begin + n_steps * per_step]
    return window.reshape(n_steps, per_step).mean(axis=1)


def _step(minutes: float) -> pd.Timedelta:
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"step_minutes must be positive, got {minutes}")
    step = pd.Timedelta(minutes=minutes)
    if step % pd.Timedelta(seconds=1):
        raise ValueError(f"step_minutes must be a whole number of seconds, got {minutes}")
    return step


def _iso(moment: pd.Timestamp | np.datetime64) -> str:
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.tz_convert("UTC").strftime("%Y-%m-%dT%H:%MZ")
