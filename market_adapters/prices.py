"""Day-ahead market prices: read a CSV or ENTSO-E XML file into our per-kWh step series.

The pieces, each in its own module:

- :mod:`market_adapters.price_csv`: CSV files with declared date formats and DST rules;
- :mod:`market_adapters.entsoe_xml`: ENTSO-E ``Publication_MarketDocument`` XML;
- :mod:`market_adapters.price_series`: :class:`MarketPrices` (prices as published, checked whole),
  :func:`normalise_prices` (per kWh, configured currency, schedule step, UTC) and
  :func:`horizon_prices` (``import_price_per_kwh`` for an optimizer horizon).

Typical use::

    raw = read_prices("prices.csv", rules=PriceCsvRules(date_formats=("%d/%m/%Y %H:%M",)))
    series = normalise_prices(raw, currency="EUR", step_minutes=15)
    tariff = Tariff(import_price_per_kwh=horizon_prices(series, start=start, n_steps=96, step_minutes=15))
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from market_adapters.entsoe_xml import fetch_entsoe_prices, parse_entsoe_prices, read_entsoe_prices
from market_adapters.price_csv import PriceCsvRules, fetch_price_csv, parse_price_csv, read_price_csv
from market_adapters.price_series import (
    KWH_PER_UNIT,
    PRICE_NAME,
    MarketPrices,
    PriceCoverageError,
    PriceUnitError,
    horizon_prices,
    normalise_prices,
    per_kwh_factor,
)

PriceFormat = Literal["csv", "entsoe-xml"]

__all__ = [
    "KWH_PER_UNIT",
    "PRICE_NAME",
    "MarketPrices",
    "PriceCoverageError",
    "PriceCsvRules",
    "PriceFormat",
    "PriceUnitError",
    "fetch_entsoe_prices",
    "fetch_price_csv",
    "guess_format",
    "horizon_prices",
    "normalise_prices",
    "parse_entsoe_prices",
    "parse_price_csv",
    "per_kwh_factor",
    "read_entsoe_prices",
    "read_price_csv",
    "read_prices",
]


def guess_format(path: str | Path) -> PriceFormat:
    """``entsoe-xml`` for ``.xml`` files, ``csv`` otherwise (the file name only, never its content)."""
    return "entsoe-xml" if Path(path).suffix.lower() == ".xml" else "csv"


def read_prices(
    path: str | Path, *, format: PriceFormat | None = None, rules: PriceCsvRules | None = None
) -> MarketPrices:
    """Read a price file as published; ``format`` defaults to :func:`guess_format`.

    ``rules`` apply to CSV only (ENTSO-E XML declares its own times and units).
    """
    chosen = format or guess_format(path)
    if chosen == "entsoe-xml":
        if rules is not None and rules != PriceCsvRules():
            raise ValueError("CSV rules (date formats, time zone, unit...) do not apply to ENTSO-E XML")
        return read_entsoe_prices(path)
    if chosen == "csv":
        return read_price_csv(path, rules)
    raise ValueError(f"unknown price format {chosen!r}, expected 'csv' or 'entsoe-xml'")
