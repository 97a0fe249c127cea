"""Day-ahead prices from CSV files (ENTSO-E exports, the ev2gym/Ember style, plain ``time,price``).

Split in the pvlib ``iotools`` style: :func:`fetch_price_csv` downloads, :func:`read_price_csv`
reads a file, :func:`parse_price_csv` parses the text. Outside column names map to ours in one
table, :data:`VARIABLE_MAP` (extend it per call with :attr:`PriceCsvRules.columns`).

Dates are parsed only by formats the caller declares (:attr:`PriceCsvRules.date_formats`), never
guessed: a CSV mixing ISO-8601 rows with ``dd/mm/yyyy`` rows (as the ENTSO-E style file shipped in
the ev2gym package does) is refused at the first row that matches no declared format, or read
correctly when both formats are declared. A row matching two declared formats with different
results (``03/04/2023`` under ``%d/%m/%Y`` and ``%m/%d/%Y``) is refused too. pandas' own guessing
reads ``03/04/2023`` as March 4.

Local times become UTC once, here. Ambiguous local times (the repeated hour when clocks go back)
are resolved by the ``(CET)``/``(CEST)`` marks ENTSO-E writes in its ``MTU`` ranges or by the
declared rule ``ambiguous="infer"`` (in file order, the first occurrence is summer time);
otherwise, and for local times that do not exist (clocks jump forward), the row is refused.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import urllib.request
import zoneinfo
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from market_adapters.errors import AdapterFormatError
from market_adapters.price_series import MarketPrices, market_prices

TimeKind = Literal["time_utc", "mtu_utc", "time", "mtu_cet", "time_local"]

VARIABLE_MAP: dict[str, str] = {
    # ENTSO-E transparency platform exports
    "MTU (CET/CEST)": "mtu_cet",
    "MTU (UTC)": "mtu_utc",
    "Day-ahead Price [EUR/MWh]": "price",
    "Day-ahead Price (EUR/MWh)": "price",
    # Ember / ev2gym (ev2gym/data/Netherlands_day-ahead-2015-2024.csv)
    "Datetime (UTC)": "time_utc",
    "Datetime (Local)": "time_local",
    "Price (EUR/MWhe)": "price",
    # plain files
    "time": "time",
    "timestamp": "time",
    "datetime": "time",
    "price": "price",
}
"""Outside column name (matched without regard to case) -> ours: ``price`` or a time column kind.

Time kinds, in the order one is chosen when a file has several: ``time_utc`` (naive values are
UTC), ``mtu_utc`` (``start - end`` ranges in UTC), ``time`` (values with a UTC offset, or naive in
:attr:`PriceCsvRules.timezone`), ``mtu_cet`` (ranges in CET/CEST), ``time_local`` (naive, in
:attr:`PriceCsvRules.timezone`).
"""

TIME_PRIORITY: tuple[TimeKind, ...] = ("time_utc", "mtu_utc", "time", "mtu_cet", "time_local")
CET_ZONE = "Europe/Brussels"
"""Zone of ``MTU (CET/CEST)`` columns (every CET/CEST zone has had the same offsets since 1996)."""
ISO = "ISO8601"
MTU_DATE_FORMATS = ("%d.%m.%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M")
"""Day-first formats of ENTSO-E ``MTU`` ranges (old and new platform), used unless formats are declared."""

_UNIT_IN_TEXT = re.compile(r"(€|\$|£|[A-Z]{3})\s*/\s*([kMG]?Wh)e?\b", re.IGNORECASE)
_SYMBOLS = {"€": "EUR", "$": "USD", "£": "GBP"}
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")
_MARK = re.compile(r"\s*\((CET|CEST)\)\s*$")
_MARK_OFFSET = {"CET": pd.Timedelta(hours=1), "CEST": pd.Timedelta(hours=2)}


class PriceCsvRules(BaseModel):
    """What the caller declares about a price CSV: nothing about dates is guessed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    date_formats: tuple[str, ...] | None = Field(
        None,
        description="strptime formats or 'ISO8601'; a row must match exactly one (or several that "
        "agree). Default: ISO8601 for time columns, ENTSO-E's day-first formats for MTU ranges",
    )
    timezone: str | None = Field(None, description="IANA zone of naive local times (Europe/Amsterdam)")
    ambiguous: Literal["raise", "infer"] = Field(
        "raise", description="Unmarked repeated local hour: refuse, or first occurrence = summer time"
    )
    duplicates: Literal["raise", "drop_identical"] = Field(
        "raise", description="A repeated interval: refuse, or drop it when its price is the same"
    )
    unit: str | None = Field(None, description="Price unit like 'EUR/MWh' when the header carries none")
    columns: dict[str, str] = Field(default_factory=dict, description="Extra outside name -> ours")
    resolution_minutes: int | None = Field(
        None, gt=0, description="Interval length of point time columns; default: the commonest spacing"
    )
    sep: str = ","
    decimal: str = "."

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
                raise ValueError(f"must be an IANA time zone like Europe/Berlin, got {value!r}") from error
        return value

    @field_validator("columns")
    @classmethod
    def _ours(cls, value: dict[str, str]) -> dict[str, str]:
        known = {"price", *TIME_PRIORITY}
        for outside, ours in value.items():
            if ours not in known:
                raise ValueError(f"column {outside!r} maps to {ours!r}, expected one of {sorted(known)}")
        return value


def fetch_price_csv(url: str, rules: PriceCsvRules | None = None, *, timeout: float = 60.0) -> MarketPrices:
    """Download a price CSV from ``url`` and parse it."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        payload = response.read()
    return parse_price_csv(_decode(payload, url), rules, source=url)


def read_price_csv(path: str | Path, rules: PriceCsvRules | None = None) -> MarketPrices:
    """Read a price CSV from disk (UTF-8, a byte-order mark is fine)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"price CSV not found: {path}")
    return parse_price_csv(_decode(path.read_bytes(), str(path)), rules, source=str(path))


def parse_price_csv(text: str, rules: PriceCsvRules | None = None, *, source: str = "<data>") -> MarketPrices:
    """Parse CSV text into :class:`MarketPrices`: the whole file, or an :class:`AdapterFormatError`
    naming the line, the column and the value at fault."""
    rules = rules or PriceCsvRules()
    table = _table(text, rules, source)
    lines: list[int] = table.pop("__line__").tolist()
    names = _mapped_columns(list(table.columns), rules)
    price_column = _price_column(names, list(table.columns), source)
    kind, time_column = _time_column(names, list(table.columns), source)
    currency, energy_unit = _unit(price_column, rules, source)
    prices = _numbers(table[price_column], price_column, rules.decimal, lines, source)
    values = table[time_column].str.strip()
    where = _Where(source, time_column, lines)

    if kind in ("mtu_utc", "mtu_cet"):
        starts, ends = _range_intervals(values, kind, rules, where)
    else:
        starts, ends = _point_starts(values, kind, rules, where), None

    positions = [f"line {line}" for line in lines]
    keep = _unique_rows(starts, ends, prices, positions, rules.duplicates, where)
    starts, prices = starts[keep].reset_index(drop=True), prices[keep]
    positions = [p for p, k in zip(positions, keep, strict=True) if k]
    if ends is None:
        ends = starts + _resolution(starts, rules.resolution_minutes, where)
    else:
        ends = ends[keep].reset_index(drop=True)
    return market_prices(
        starts, ends, prices, positions, currency=currency, energy_unit=energy_unit, source=source
    )


class _Where:
    """The column being read, its file lines and the source: everything an error message names."""

    def __init__(self, source: str, column: str, lines: list[int]) -> None:
        self.source, self.column, self.lines = source, column, lines

    def error(self, k: int, problem: str) -> AdapterFormatError:
        return AdapterFormatError(self.source, f"line {self.lines[k]}", self.column, problem)


def _range_intervals(
    values: pd.Series, kind: TimeKind, rules: PriceCsvRules, where: _Where
) -> tuple[pd.Series, pd.Series]:
    """UTC starts and ends of ``start - end`` range texts (``MTU`` columns)."""
    start_text, end_text, start_mark, end_mark = _split_ranges(values, where)
    formats = rules.date_formats or MTU_DATE_FORMATS
    start_wall = _parse_times(start_text, formats, where, naive_only=True)
    end_wall = _parse_times(end_text, formats, where, naive_only=True)
    if kind == "mtu_utc":
        return start_wall.dt.tz_localize("UTC"), end_wall.dt.tz_localize("UTC")
    zone = zoneinfo.ZoneInfo(CET_ZONE)
    starts = _starts_to_utc(start_wall, start_mark, zone, rules.ambiguous, start_text, where)
    return starts, _ends_to_utc(end_wall, end_mark, starts, zone, end_text, where)


def _point_starts(values: pd.Series, kind: TimeKind, rules: PriceCsvRules, where: _Where) -> pd.Series:
    """UTC interval starts of a column of single times."""
    parsed = _parse_times(values, rules.date_formats or (ISO,), where)
    if parsed.dt.tz is not None:
        return parsed.dt.tz_convert("UTC")
    if kind == "time_utc":
        return parsed.dt.tz_localize("UTC")
    if rules.timezone is None:
        raise where.error(
            0,
            f"is {values.iloc[0]!r}, a local time without UTC offset: declare its time zone "
            "(timezone='Europe/Amsterdam')",
        )
    no_marks = pd.Series([None] * len(parsed), dtype=object)
    zone = zoneinfo.ZoneInfo(rules.timezone)
    return _starts_to_utc(parsed, no_marks, zone, rules.ambiguous, values, where)


def _table(text: str, rules: PriceCsvRules, source: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(
            io.StringIO(text), sep=rules.sep, dtype=str, keep_default_na=False, skip_blank_lines=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise AdapterFormatError(source, "file", "", f"is not CSV: {error}") from error
    table = table.fillna("")
    table.columns = [str(c).strip() for c in table.columns]
    table["__line__"] = np.arange(len(table)) + 2  # line 1 is the header
    blank = (table.drop(columns="__line__").apply(lambda c: c.str.strip()) == "").all(axis=1)
    table = table[~blank].reset_index(drop=True)
    if table.empty:
        raise AdapterFormatError(source, "file", "", "has no rows of prices")
    return table


def _mapped_columns(columns: list[str], rules: PriceCsvRules) -> dict[str, list[str]]:
    lookup = {outside.lower(): ours for outside, ours in {**VARIABLE_MAP, **rules.columns}.items()}
    mapped: dict[str, list[str]] = {}
    for column in columns:
        ours = lookup.get(column.lower())
        if ours is not None:
            mapped.setdefault(ours, []).append(column)
    return mapped


def _price_column(names: dict[str, list[str]], columns: list[str], source: str) -> str:
    found = names.get("price", [])
    if len(found) != 1:
        problem = f"has several price columns {found}" if found else f"has no price column among {columns}"
        raise AdapterFormatError(
            source, "header", "", f"{problem}: map exactly one with columns={{name: 'price'}}"
        )
    return found[0]


def _time_column(names: dict[str, list[str]], columns: list[str], source: str) -> tuple[TimeKind, str]:
    for kind in TIME_PRIORITY:
        found = names.get(kind, [])
        if len(found) > 1:
            raise AdapterFormatError(source, "header", "", f"has several {kind} columns {found}")
        if found:
            return kind, found[0]
    raise AdapterFormatError(
        source,
        "header",
        "",
        f"has no time column among {columns}: map one with columns={{name: kind}}, kind one of "
        f"{list(TIME_PRIORITY)}",
    )


def _unit(column: str, rules: PriceCsvRules, source: str) -> tuple[str, str]:
    """(currency, energy unit) from the price column's header, or else the declared unit."""
    header = _unit_in(column)
    declared = _unit_in(rules.unit) if rules.unit else None
    if rules.unit and declared is None:
        raise AdapterFormatError(source, "rules", "unit", f"is {rules.unit!r}, expected like 'EUR/MWh'")
    if header and declared and header != declared:
        raise AdapterFormatError(
            source, "header", column, f"says {'/'.join(header)}, but unit {rules.unit!r} was declared"
        )
    unit = header or declared
    if unit is None:
        raise AdapterFormatError(
            source, "header", column, "carries no price unit: declare one (unit='EUR/MWh')"
        )
    return unit


def _unit_in(text: str | None) -> tuple[str, str] | None:
    match = _UNIT_IN_TEXT.search(text or "")
    if match is None:
        return None
    currency = _SYMBOLS.get(match.group(1), match.group(1).upper())
    return currency, match.group(2).upper()


def _numbers(values: pd.Series, column: str, decimal: str, lines: list[int], source: str) -> np.ndarray:
    text = values.str.strip()
    if decimal != ".":
        text = text.str.replace(decimal, ".", regex=False)
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(numbers)
    if bad.any():
        k = int(np.argmax(bad))
        raise _Where(source, column, lines).error(k, f"is {values.iloc[k]!r}, not a number")
    return numbers


def _split_ranges(values: pd.Series, where: _Where) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """``start - end`` texts -> start text, end text, and their ``(CET)``/``(CEST)`` marks."""
    parts = values.str.extract(r"^(.*?\S)\s+-\s+(\S.*)$")
    bad = parts[0].isna().to_numpy()
    if bad.any():
        k = int(np.argmax(bad))
        raise where.error(k, f"is {values.iloc[k]!r}, expected a range 'start - end'")
    texts, marks = [], []
    for side in (parts[0], parts[1]):
        marks.append(side.str.extract(_MARK.pattern)[0].astype(object).where(lambda m: m.notna(), None))
        texts.append(side.str.replace(_MARK.pattern, "", regex=True).str.strip())
    return texts[0], texts[1], marks[0], marks[1]


def _parse_times(
    values: pd.Series, formats: tuple[str, ...], where: _Where, *, naive_only: bool = False
) -> pd.Series:
    """Each value by the declared formats: exactly one must match (or several that agree).

    Returns naive wall times, or UTC times when every value carries a UTC offset.
    """
    n = len(values)
    offset = values.str.contains(_OFFSET.pattern, regex=True).to_numpy(dtype=bool)
    results: list[tuple[str, np.ndarray, np.ndarray]] = []
    for fmt in formats:
        times = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
        if fmt == ISO:
            aware = offset
            if (~offset).any():
                times[~offset] = _to_datetime(values[~offset], fmt, utc=False)
            if offset.any():
                times[offset] = _to_datetime(values[offset], fmt, utc=True)
        else:
            aware = np.full(n, "%z" in fmt or "%Z" in fmt)
            times[:] = _to_datetime(values, fmt, utc=bool(aware.any()))
        results.append((fmt, times, aware))

    matched = np.array([~np.isnat(times) for _, times, _ in results])
    unmatched = ~matched.any(axis=0)
    if unmatched.any():
        k = int(np.argmax(unmatched))
        raise where.error(
            k, f"is {values.iloc[k]!r}, which matches none of the declared date formats {list(formats)}"
        )
    choice = np.argmax(matched, axis=0)
    chosen = np.choose(choice, [times for _, times, _ in results])
    chosen_aware = np.choose(choice, [aware for _, _, aware in results])
    for fmt, times, aware in results:
        conflict = ~np.isnat(times) & ((times != chosen) | (aware != chosen_aware))
        if conflict.any():
            k = int(np.argmax(conflict))
            first = formats[int(choice[k])]
            raise where.error(
                k,
                f"is {values.iloc[k]!r}, read as {pd.Timestamp(chosen[k]):%Y-%m-%d %H:%M} by {first!r} "
                f"but as {pd.Timestamp(times[k]):%Y-%m-%d %H:%M} by {fmt!r}: declare only one of them",
            )
    if chosen_aware.any():
        differs = chosen_aware != chosen_aware[0]
        if naive_only or differs.any():
            k = int(np.argmax(chosen_aware)) if naive_only else int(np.argmax(differs))
            problem = (
                "carries a UTC offset; this column's zone is given by its header"
                if naive_only
                else f"{'has' if chosen_aware[k] else 'lacks'} a UTC offset, unlike line {where.lines[0]}"
            )
            raise where.error(k, f"is {values.iloc[k]!r}, which {problem}")
        return pd.Series(pd.DatetimeIndex(chosen).tz_localize("UTC"))
    return pd.Series(pd.DatetimeIndex(chosen))


def _to_datetime(values: pd.Series, fmt: str, *, utc: bool) -> np.ndarray:
    parsed = pd.to_datetime(values, format=fmt, errors="coerce", utc=utc)
    if utc:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.to_numpy(dtype="datetime64[ns]")


def _starts_to_utc(
    walls: pd.Series,
    marks: pd.Series,
    zone: zoneinfo.ZoneInfo,
    rule: Literal["raise", "infer"],
    texts: pd.Series,
    where: _Where,
) -> pd.Series:
    """Local interval starts -> UTC: marks first, then the zone; ambiguous ones by ``rule``."""
    result, unresolved = _localize(walls, marks, zone, texts, where)
    seen: Counter[dt.datetime] = Counter()
    for k in unresolved:
        wall = pd.Timestamp(walls.iloc[k]).to_pydatetime()
        early, late = _candidates(wall, zone)
        if early is None:
            raise where.error(
                k,
                f"is {texts.iloc[k]!r}, a local time that does not exist in {zone.key} "
                "(clocks jump forward over it)",
            )
        if rule == "raise":
            raise where.error(
                k,
                f"is {texts.iloc[k]!r}, a local time that occurs twice in {zone.key} (clocks go back): "
                "mark it (CEST)/(CET) or declare ambiguous='infer'",
            )
        seen[wall] += 1
        if seen[wall] > 2:
            raise where.error(k, f"is {texts.iloc[k]!r}, which occurs a third time on its day")
        result.iloc[k] = pd.Timestamp(early if seen[wall] == 1 else late)
    return result


def _ends_to_utc(
    walls: pd.Series,
    marks: pd.Series,
    starts: pd.Series,
    zone: zoneinfo.ZoneInfo,
    texts: pd.Series,
    where: _Where,
) -> pd.Series:
    """Local interval ends -> UTC. An unmarked ambiguous end is the earliest instant after its
    start; one that does not exist (``02:00`` when clocks jump to 03:00) is the moment of the jump."""
    result, unresolved = _localize(walls, marks, zone, texts, where)
    for k in unresolved:
        wall = pd.Timestamp(walls.iloc[k])
        early, late = _candidates(wall.to_pydatetime(), zone)
        if early is None:
            result.iloc[k] = wall.tz_localize(zone, nonexistent="shift_forward").tz_convert("UTC")
        else:
            result.iloc[k] = pd.Timestamp(early if early > starts.iloc[k] else late)
    return result


def _localize(
    walls: pd.Series, marks: pd.Series, zone: zoneinfo.ZoneInfo, texts: pd.Series, where: _Where
) -> tuple[pd.Series, list[int]]:
    """UTC times of the rows whose local time is marked or unique; positions of the rest."""
    result = walls.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    result = result.astype("datetime64[ns, UTC]")
    marked = marks.notna().to_numpy(dtype=bool)
    if marked.any():
        offsets = pd.to_timedelta(marks[marked].map(_MARK_OFFSET))
        utc = (walls[marked] - offsets).dt.tz_localize("UTC")
        wrong = (utc.dt.tz_convert(zone).dt.tz_localize(None) != walls[marked]).to_numpy()
        if wrong.any():
            k = int(np.flatnonzero(marked)[np.argmax(wrong)])
            raise where.error(k, f"is marked ({marks.iloc[k]}), which is not the offset in force then")
        result[marked] = utc
    return result, np.flatnonzero(result.isna().to_numpy() & ~marked).tolist()


def _candidates(wall: dt.datetime, zone: zoneinfo.ZoneInfo) -> tuple[dt.datetime | None, dt.datetime]:
    """The two UTC readings of an unresolved local time (earlier first); ``None`` first if it does
    not exist."""
    early, late = (wall.replace(tzinfo=zone, fold=fold).astimezone(dt.UTC) for fold in (0, 1))
    if early.astimezone(zone).replace(tzinfo=None) != wall:
        return None, late
    return min(early, late), max(early, late)


def _unique_rows(
    starts: pd.Series,
    ends: pd.Series | None,
    prices: np.ndarray,
    positions: list[str],
    rule: Literal["raise", "drop_identical"],
    where: _Where,
) -> np.ndarray:
    """Rows to keep: a repeated interval is refused, or dropped when declared and identical."""
    repeated = starts.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return ~repeated
    codes, _ = pd.factorize(starts)
    first = pd.Series(np.arange(len(starts))).groupby(codes).transform("min").to_numpy()
    for k in np.flatnonzero(repeated):
        j = int(first[k])
        same = prices[k] == prices[j] and (ends is None or ends.iloc[k] == ends.iloc[j])
        if rule == "raise" or not same:
            detail = "" if same else f" with price {prices[k]} where {positions[j]} has {prices[j]}"
            hint = "" if not same else " (declare duplicates='drop_identical' to drop identical repeats)"
            stamp = pd.Timestamp(starts.iloc[k]).strftime("%Y-%m-%dT%H:%MZ")
            raise where.error(
                int(k), f"repeats the interval starting {stamp} of {positions[j]}{detail}{hint}"
            )
    return ~repeated


def _resolution(starts: pd.Series, declared: int | None, where: _Where) -> pd.Timedelta:
    """Interval length of point time columns: declared, or the commonest spacing of the times."""
    if declared is not None:
        return pd.Timedelta(minutes=declared)
    spacing = starts.sort_values().diff().dropna()
    spacing = spacing[spacing > pd.Timedelta(0)]
    if spacing.empty:
        raise where.error(0, "is the only time: declare resolution_minutes")
    return pd.Timedelta(spacing.mode().iloc[0])


def _decode(payload: bytes, source: str) -> str:
    try:
        return payload.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise AdapterFormatError(source, "file", "", f"is not UTF-8 text: {error}") from error
