"""Day-ahead prices from ENTSO-E transparency platform XML (``Publication_MarketDocument``).

Split in the pvlib ``iotools`` style: :func:`fetch_entsoe_prices` downloads a document (any
``urllib`` URL, e.g. a web API query with its security token), :func:`read_entsoe_prices` reads one
from disk, :func:`parse_entsoe_prices` parses the bytes.

The format (IEC 62325-451-3, namespaces ``...publicationdocument:7:0`` and ``7:3``): one or more
``TimeSeries``, each with ``currency_Unit.name`` (EUR), ``price_Measure_Unit.name`` (MWH) and a
``curveType``, holding ``Period`` elements with a ``timeInterval`` (``start``/``end`` in UTC), a
``resolution`` (``PT15M``, ``PT30M``, ``PT60M``) and ``Point`` elements (``position`` from 1,
``price.amount``). Curve type ``A01`` (the default) lists every position; ``A03`` omits positions
whose price equals the previous one, up to the end of the period.

Parsed with the standard library's ``xml.etree``: it fetches no external entities, and expat >= 2.4.1
(Python bundles 2.5+) refuses entity-expansion bombs. A pre-pass refuses any DTD outright, which
price documents never carry, so no ``defusedxml`` dependency is needed. Errors name the element path,
like ``Publication_MarketDocument/TimeSeries[2]/Period[1]/Point[5]``.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.request
import xml.etree.ElementTree as ET
import xml.parsers.expat
from pathlib import Path

import pandas as pd

from market_adapters.errors import AdapterFormatError
from market_adapters.price_series import MarketPrices, market_prices

NAMESPACES = (
    "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:0",
    "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3",
)
ROOT = "Publication_MarketDocument"

VARIABLE_MAP: dict[str, str] = {
    "currency_Unit.name": "currency",
    "price_Measure_Unit.name": "energy_unit",
    "curveType": "curve_type",
    "timeInterval/start": "start",
    "timeInterval/end": "end",
    "resolution": "resolution",
    "position": "position",
    "price.amount": "price",
}
"""ENTSO-E element (path below its TimeSeries, Period or Point) -> ours."""
_OUTSIDE = {ours: outside for outside, ours in VARIABLE_MAP.items()}

CURVE_TYPES = {"A01": "sequential fixed size block", "A03": "variable sized block"}
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?$")


class _DtdFound(Exception):
    pass


def fetch_entsoe_prices(url: str, *, timeout: float = 60.0) -> MarketPrices:
    """Download a ``Publication_MarketDocument`` from ``url`` and parse it."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        payload = response.read()
    return parse_entsoe_prices(payload, source=url.split("securityToken=")[0])


def read_entsoe_prices(path: str | Path) -> MarketPrices:
    """Read a ``Publication_MarketDocument`` XML file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ENTSO-E XML file not found: {path}")
    return parse_entsoe_prices(path.read_bytes(), source=str(path))


def parse_entsoe_prices(data: bytes | str, *, source: str = "<data>") -> MarketPrices:
    """Every price of every ``TimeSeries``, or an :class:`AdapterFormatError` naming the element."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    root = _parse(payload, source)
    ns = _namespace(root, source)
    series = root.findall(f"{{{ns}}}TimeSeries")
    if not series:
        raise AdapterFormatError(source, ROOT, "TimeSeries", "is missing: the document holds no prices")

    starts: list[pd.Timestamp] = []
    ends: list[pd.Timestamp] = []
    prices: list[float] = []
    positions: list[str] = []
    units: tuple[str, str] | None = None
    for i, element in enumerate(series, start=1):
        where = f"{ROOT}/TimeSeries[{i}]"
        currency = _text(element, ns, "currency", where, source)
        unit = _text(element, ns, "energy_unit", where, source)
        if units is not None and (currency, unit) != units:
            raise AdapterFormatError(
                source,
                where,
                "currency_Unit.name",
                f"is {currency}/{unit}, but TimeSeries[1] is {units[0]}/{units[1]}: one document, one unit",
            )
        units = (currency, unit)
        curve = _text(element, ns, "curve_type", where, source, default="A01")
        if curve not in CURVE_TYPES:
            raise AdapterFormatError(
                source, where, "curveType", f"is {curve!r}, expected one of {sorted(CURVE_TYPES)}"
            )
        periods = element.findall(f"{{{ns}}}Period")
        if not periods:
            raise AdapterFormatError(source, where, "Period", "is missing")
        for j, period in enumerate(periods, start=1):
            for start, end, price, position in _period(period, ns, curve, f"{where}/Period[{j}]", source):
                starts.append(start)
                ends.append(end)
                prices.append(price)
                positions.append(position)
    assert units is not None
    return market_prices(
        starts, ends, prices, positions, currency=units[0], energy_unit=units[1], source=source
    )


def _period(
    period: ET.Element, ns: str, curve: str, where: str, source: str
) -> list[tuple[pd.Timestamp, pd.Timestamp, float, str]]:
    """(start, end, price, element path) of every position of one ``Period``."""
    start = _time(period, ns, "start", where, source)
    end = _time(period, ns, "end", where, source)
    resolution_text = _text(period, ns, "resolution", where, source)
    resolution = _duration(resolution_text, where, source)
    span = f"{start:%Y-%m-%dT%H:%MZ}..{end:%Y-%m-%dT%H:%MZ}"
    if end <= start:
        raise AdapterFormatError(source, where, "timeInterval", f"{span} ends before it starts")
    if (end - start) % resolution:
        raise AdapterFormatError(source, where, "resolution", f"{resolution_text} does not divide {span}")
    n_positions = int((end - start) // resolution)
    points: dict[int, tuple[float, str]] = {}
    for k, point in enumerate(period.findall(f"{{{ns}}}Point"), start=1):
        at = f"{where}/Point[{k}]"
        text = _text(point, ns, "position", at, source)
        if not text.isdigit() or not 1 <= int(text) <= n_positions:
            raise AdapterFormatError(
                source,
                at,
                "position",
                f"is {text!r}, expected 1..{n_positions} ({resolution_text} steps of {span})",
            )
        position = int(text)
        if position in points:
            raise AdapterFormatError(source, at, "position", f"{position} repeats {points[position][1]}")
        amount = _text(point, ns, "price", at, source)
        try:
            price = float(amount)
        except ValueError:
            price = float("nan")
        if price != price or price in (float("inf"), float("-inf")):
            raise AdapterFormatError(source, at, "price.amount", f"is {amount!r}, not a number")
        points[position] = (price, at)
    if 1 not in points:
        raise AdapterFormatError(source, where, "Point", "with position 1 is missing")

    rows = []
    previous = points[1]
    for position in range(1, n_positions + 1):
        if position in points:
            previous = points[position]
            label = previous[1]
        elif curve == "A01":
            raise AdapterFormatError(
                source, where, "Point", f"with position {position} is missing (curveType A01 lists every one)"
            )
        else:
            label = f"{previous[1]} (repeated at position {position})"
        begin = start + (position - 1) * resolution
        rows.append((begin, begin + resolution, previous[0], label))
    return rows


def _parse(payload: bytes, source: str) -> ET.Element:
    """Check well-formedness and refuse DTDs with expat, then build the tree."""
    checker = xml.parsers.expat.ParserCreate()

    def refuse(*_: object) -> None:
        raise _DtdFound

    checker.StartDoctypeDeclHandler = refuse
    checker.EntityDeclHandler = refuse
    try:
        checker.Parse(payload, True)
    except _DtdFound as error:
        raise AdapterFormatError(
            source, "document", "", "declares a DTD or entities, which price documents never do"
        ) from error
    except xml.parsers.expat.ExpatError as error:
        raise AdapterFormatError(
            source,
            "document",
            "",
            f"is not well-formed XML: {xml.parsers.expat.ErrorString(error.code)} "
            f"at line {error.lineno} column {error.offset + 1}",
        ) from error
    return ET.fromstring(payload)


def _namespace(root: ET.Element, source: str) -> str:
    match = re.fullmatch(r"\{(.*)\}(.*)", root.tag)
    ns, name = (match.group(1), match.group(2)) if match else ("", root.tag)
    if name == "Acknowledgement_MarketDocument":
        reasons = [e.text or "" for e in root.iter() if e.tag.endswith("}text") or e.tag == "text"]
        raise AdapterFormatError(
            source, name, "", f"is an acknowledgement, not prices: {'; '.join(reasons) or 'no reason given'}"
        )
    if name != ROOT:
        raise AdapterFormatError(source, "document", "", f"has root element {name!r}, expected {ROOT!r}")
    if ns not in NAMESPACES:
        raise AdapterFormatError(
            source, ROOT, "xmlns", f"is {ns!r}, expected one of {', '.join(repr(n) for n in NAMESPACES)}"
        )
    return ns


def _text(
    parent: ET.Element, ns: str, ours: str, where: str, source: str, *, default: str | None = None
) -> str:
    outside = _OUTSIDE[ours]
    element = parent.find("/".join(f"{{{ns}}}{part}" for part in outside.split("/")))
    text = (element.text or "").strip() if element is not None else ""
    if not text:
        if default is not None:
            return default
        raise AdapterFormatError(source, where, outside, "is missing" if element is None else "is empty")
    return text


def _time(parent: ET.Element, ns: str, ours: str, where: str, source: str) -> pd.Timestamp:
    text = _text(parent, ns, ours, where, source)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as error:
        raise AdapterFormatError(
            source, where, _OUTSIDE[ours], f"is {text!r}, expected like 2023-03-25T23:00Z"
        ) from error
    if moment.utcoffset() is None:
        raise AdapterFormatError(source, where, _OUTSIDE[ours], f"is {text!r}, without a UTC offset")
    return pd.Timestamp(moment).tz_convert("UTC")


def _duration(text: str, where: str, source: str) -> pd.Timedelta:
    match = _DURATION.match(text)
    days, hours, minutes = (int(g) if g else 0 for g in (match.groups() if match else (None,) * 3))
    step = pd.Timedelta(days=days, hours=hours, minutes=minutes)
    if match is None or step <= pd.Timedelta(0):
        raise AdapterFormatError(source, where, "resolution", f"is {text!r}, expected like PT15M or PT60M")
    return step
