"""Time-of-use tariffs in the acnportal JSON format, priced on our step grid.

The format (acnportal ``signals/tariffs/tariff_schedules/*.json``): a ``name``, an ``effective`` date,
a ``link`` to the tariff sheet and a ``schedule`` of day-type blocks. Each block applies from
``effective_start`` to ``effective_end`` inclusive (``MM-DD``, or ``M-DD``; a block whose end comes
before its start wraps the year end, e.g. ``10-01``..``05-31``) on the days of ``dow_mask``
(``WEEKDAYS``, ``WEEKENDS`` or ``ALL``). ``times`` are the hours of the day where a price starts (the
first must be 0; fractions such as 8.5 allowed), ``tariffs`` the energy price of each period
[$/kWh], ``demand_charge`` the rate on the month's highest demand [$/kW].

As in acnportal, exactly one block must apply on any day priced: none or several is a
:class:`TariffLookupError` at lookup time (not when reading, so a file that is only ambiguous in
some season still prices the others). A step's price is the price at the step's start, in the local
time of the index.

Split in the pvlib ``iotools`` style: :func:`fetch_tou_tariff` (any URL), :func:`read_tou_tariff` (a file),
:func:`parse_tou_tariff` (a decoded document). Outside field names map to ours in :data:`BLOCK_FIELD_MAP`.
"""

from __future__ import annotations

import datetime as dt
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from market_adapters.errors import AdapterError, AdapterFormatError
from market_adapters.json_documents import loads_json
from market_adapters.rates import ChargePlan, DemandComponent, RatePeriod, Tier, to_decimal
from optimizer.scenario import DemandCharge, Tariff

ACNPORTAL_TARIFFS_URL = (
    "https://raw.githubusercontent.com/zach401/acnportal/master/acnportal/signals/tariffs/tariff_schedules/"
)
"""Folder of acnportal's tariff files, e.g. ``ACNPORTAL_TARIFFS_URL + "sce_tou_ev_4_march_2019.json"``."""

BLOCK_FIELD_MAP: dict[str, str] = {
    "id": "id",
    "effective_start": "first_day",
    "effective_end": "last_day",
    "dow_mask": "days",
    "times": "start_hours",
    "tariffs": "prices_per_kwh",
    "demand_charge": "demand_charge_per_kw",
}
"""acnportal schedule-block field -> :class:`TariffBlock` field."""
TARIFF_FIELD_MAP: dict[str, str] = {
    "name": "name",
    "effective": "effective",
    "link": "link",
    "comment": "comment",
    "schedule": "blocks",
}
"""acnportal tariff field -> :class:`TouTariff` field."""

_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class TariffLookupError(AdapterError, ValueError):
    """No block, or more than one, applies on a day that was asked for; or a rate varies unexpectedly."""


class DemandChargeVariesError(TariffLookupError):
    """The demand charge rate changes within the horizon; ``periods`` lists (first step, block id, rate)."""

    def __init__(self, message: str, periods: list[tuple[pd.Timestamp, str, float]]) -> None:
        self.periods = periods
        super().__init__(message)


def _month_day(value: Any) -> tuple[int, int]:
    if isinstance(value, tuple | list) and len(value) == 2:
        month, day = (int(v) for v in value)
    elif (
        isinstance(value, str)
        and value.count("-") == 1
        and all(p.strip().isdigit() for p in value.split("-"))
    ):
        month, day = (int(p) for p in value.split("-"))
    else:
        raise ValueError(f"must be a month-day like '05-31', got {value!r}")
    if not (1 <= month <= 12 and 1 <= day <= _DAYS_IN_MONTH[month - 1]):
        raise ValueError(f"{value!r} is not a day of the year")
    return month, day


MonthDay = Annotated[tuple[int, int], BeforeValidator(_month_day)]
"""(month, day), read from ``MM-DD``."""


class TariffBlock(BaseModel):
    """One seasonal day-type block of a time-of-use tariff."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    first_day: MonthDay = Field(description="First day the block applies (month, day), inclusive")
    last_day: MonthDay = Field(description="Last day the block applies (month, day), inclusive")
    days: Literal["WEEKDAYS", "WEEKENDS", "ALL"]
    start_hours: list[Annotated[float, Field(ge=0, lt=24, allow_inf_nan=False)]] = Field(
        min_length=1, description="Hours of the day where each price period starts, from 0, increasing"
    )
    prices_per_kwh: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        min_length=1, description="Energy price of each period [$/kWh]"
    )
    demand_charge_per_kw: float = Field(ge=0, allow_inf_nan=False, description="[$/kW] of the month's peak")

    @model_validator(mode="after")
    def _periods(self) -> TariffBlock:
        if self.start_hours[0] != 0:
            raise ValueError(f"start_hours must begin at hour 0, begins at {self.start_hours[0]}")
        if any(b <= a for a, b in zip(self.start_hours, self.start_hours[1:], strict=False)):
            raise ValueError(f"start_hours must increase, got {self.start_hours}")
        if len(self.prices_per_kwh) != len(self.start_hours):
            raise ValueError(
                f"prices_per_kwh has {len(self.prices_per_kwh)} prices "
                f"for {len(self.start_hours)} start_hours"
            )
        return self

    @property
    def wraps_year_end(self) -> bool:
        return self.last_day < self.first_day

    def applies_on(self, day: dt.date) -> bool:
        """Whether this block applies on ``day`` (season and day type)."""
        weekday = day.weekday() < 5
        if (self.days == "WEEKDAYS" and not weekday) or (self.days == "WEEKENDS" and weekday):
            return False
        month_day = (day.month, day.day)
        if self.wraps_year_end:
            return month_day >= self.first_day or month_day <= self.last_day
        return self.first_day <= month_day <= self.last_day

    def prices_at(self, seconds_of_day: np.ndarray) -> np.ndarray:
        """Price [$/kWh] of the periods holding each moment, given in seconds after local midnight."""
        starts = np.round(np.asarray(self.start_hours) * 3600)
        period = np.searchsorted(starts, seconds_of_day, side="right") - 1
        return np.asarray(self.prices_per_kwh, dtype=float)[period]


class TouTariff(BaseModel):
    """A time-of-use tariff: energy prices by season, day type and hour, and a demand charge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    effective: str = Field("", description="Date the tariff took effect, as the source writes it")
    link: str | None = None
    comment: str | None = None
    blocks: list[TariffBlock] = Field(min_length=1)

    def block_on(self, day: dt.date) -> TariffBlock:
        """The one block applying on ``day``; :class:`TariffLookupError` if none or several do."""
        found = [b for b in self.blocks if b.applies_on(day)]
        if len(found) != 1:
            what = "no block applies" if not found else f"blocks {[b.id for b in found]} all apply"
            raise TariffLookupError(f"tariff {self.name!r}: {what} on {day.isoformat()} ({day:%A})")
        return found[0]

    def import_prices(self, index: pd.DatetimeIndex) -> np.ndarray:
        """Energy price [$/kWh] at the start of every step of ``index``, read in the index's local time."""
        days = _local_days(index)
        seconds = np.asarray(index.hour * 3600 + index.minute * 60 + index.second, dtype=float)
        prices = np.empty(len(index))
        for day in np.unique(days):
            at = days == day
            prices[at] = self.block_on(pd.Timestamp(day).date()).prices_at(seconds[at])
        return prices

    def demand_charge_rates(self, index: pd.DatetimeIndex) -> np.ndarray:
        """Demand charge rate [$/kW] in force at every step of ``index``."""
        days = _local_days(index)
        rates = np.empty(len(index))
        for day in np.unique(days):
            rates[days == day] = self.block_on(pd.Timestamp(day).date()).demand_charge_per_kw
        return rates

    def demand_charge_rate(self, index: pd.DatetimeIndex) -> float:
        """The one demand charge rate [$/kW] over ``index``.

        Raises :class:`DemandChargeVariesError` (with every change as ``periods``) if it varies, e.g.
        across a season boundary: the optimizer bills one peak per horizon, so split such a horizon
        (or use :meth:`demand_charge_rates` per step).
        """
        rates = self.demand_charge_rates(index)
        if len(rates) == 0:
            raise ValueError("index is empty")
        if np.all(rates == rates[0]):
            return float(rates[0])
        changes = np.flatnonzero(np.r_[True, rates[1:] != rates[:-1]])
        periods = [(index[k], self.block_on(index[k].date()).id, float(rates[k])) for k in changes.tolist()]
        listed = ", ".join(f"{rate} from {start.isoformat()} ({block})" for start, block, rate in periods)
        raise DemandChargeVariesError(
            f"tariff {self.name!r}: the demand charge varies over the horizon: {listed}", periods
        )

    @property
    def demand_interval_minutes(self) -> int:
        """acnportal files do not say; US utilities bill 15-minute demand."""
        return 15

    def charge_plan(self, index: pd.DatetimeIndex) -> ChargePlan:
        """This tariff on the steps of ``index`` (see :class:`~market_adapters.rates.BillableTariff`).

        One energy period per block and price period (``Summer-Weekday 12:00-18:00``), untiered; one
        demand charge on every step (``demand``), or one per distinct rate if the rate changes
        within ``index`` (``demand (Summer-Weekday, Summer-Weekend)``). No fixed or minimum charge.
        """
        days = _local_days(index)
        seconds = np.asarray(index.hour * 3600 + index.minute * 60 + index.second, dtype=float)
        periods: dict[tuple[int, int], int] = {}
        labels: list[tuple[tuple[int, int], RatePeriod]] = []
        energy_period = np.full(len(index), -1, dtype=int)
        demand_rate = np.zeros(len(index))
        block_of_rate: dict[float, list[str]] = {}
        for day in np.unique(days):
            at = np.flatnonzero(days == day)
            block = self.block_on(pd.Timestamp(day).date())
            number = self.blocks.index(block)
            starts = np.round(np.asarray(block.start_hours) * 3600)
            position = np.searchsorted(starts, seconds[at], side="right") - 1
            for p in np.unique(position).tolist():
                key = (number, p)
                if key not in periods:
                    periods[key] = len(labels)
                    labels.append((key, _period(block, p)))
                energy_period[at[position == p]] = periods[key]
            demand_rate[at] = block.demand_charge_per_kw
            names = block_of_rate.setdefault(block.demand_charge_per_kw, [])
            if block.id not in names:
                names.append(block.id)
        # Periods in the file's order (block, then hour), whatever order the days came in.
        order = sorted(range(len(labels)), key=lambda k: labels[k][0])
        renumber = np.empty(len(labels) + 1, dtype=int)
        renumber[order] = np.arange(len(labels))
        renumber[-1] = -1
        demand = [
            DemandComponent(
                name="demand" if len(block_of_rate) == 1 else f"demand ({', '.join(blocks)})",
                kind="flat",
                period=RatePeriod(f"{rate} $/kW", (Tier(None, to_decimal(rate)),)),
                steps=demand_rate == rate,
            )
            for rate, blocks in block_of_rate.items()
            if rate > 0
        ]
        return ChargePlan(
            index=index,
            energy_period=renumber[energy_period],
            energy_periods=tuple(labels[k][1] for k in order),
            demand=tuple(demand),
        )

    def to_optimizer_tariff(
        self,
        index: pd.DatetimeIndex,
        demand_interval_minutes: int = 15,
        peak_already_kw: float = 0.0,
    ) -> Tariff:
        """The optimizer's :class:`~optimizer.Tariff` for the steps of ``index``.

        Import prices per step; no export price; one demand charge named after the tariff on every
        step (none if the rate is 0). ``peak_already_kw``: highest demand earlier in the billing month.
        Raises :class:`DemandChargeVariesError` if the rate changes within ``index``.
        """
        rate = self.demand_charge_rate(index)
        charges = []
        if rate > 0:
            charges.append(DemandCharge(name=self.name, rate_per_kw=rate, peak_already_kw=peak_already_kw))
        return Tariff(
            import_price_per_kwh=[float(p) for p in self.import_prices(index)],
            demand_charges=charges,
            demand_interval_minutes=demand_interval_minutes,
        )


def _period(block: TariffBlock, position: int) -> RatePeriod:
    start = block.start_hours[position]
    end = block.start_hours[position + 1] if position + 1 < len(block.start_hours) else 24.0
    label = f"{block.id} {_clock(start)}-{_clock(end)}"
    return RatePeriod(label, (Tier(None, to_decimal(block.prices_per_kwh[position])),))


def _clock(hours: float) -> str:
    minutes = round(hours * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def fetch_tou_tariff(url: str, *, timeout: float = 30.0) -> TouTariff:
    """Download an acnportal tariff file from ``url`` (any ``urllib`` URL) and parse it."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        payload = response.read()
    return parse_tou_tariff(loads_json(payload, url), source=url)


def read_tou_tariff(path: str | Path) -> TouTariff:
    """Read an acnportal tariff JSON file.

    Raises :class:`FileNotFoundError` for a missing file and
    :class:`~market_adapters.errors.AdapterFormatError` naming the block and field of a malformed one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tariff file not found: {path}")
    return parse_tou_tariff(loads_json(path.read_bytes(), str(path)), source=str(path))


def parse_tou_tariff(data: Mapping[str, Any], *, source: str = "<data>") -> TouTariff:
    """Turn a decoded acnportal tariff document into a :class:`TouTariff`."""
    if not isinstance(data, Mapping):
        raise AdapterFormatError(source, "document", "", f"is a {type(data).__name__}, expected an object")
    unknown = sorted(set(data) - set(TARIFF_FIELD_MAP))
    if unknown:
        raise AdapterFormatError(
            source, "tariff", unknown[0], "is not a field of the acnportal tariff format"
        )
    schedule = data.get("schedule")
    if not isinstance(schedule, list) or not schedule:
        raise AdapterFormatError(source, "tariff", "schedule", f"must be a non-empty list, got {schedule!r}")
    blocks = [_block(raw, position, source) for position, raw in enumerate(schedule)]
    fields = {TARIFF_FIELD_MAP[k]: v for k, v in data.items() if k != "schedule"}
    try:
        return TouTariff(**fields, blocks=blocks)
    except ValidationError as error:
        first = error.errors()[0]
        ours = str(first["loc"][0]) if first["loc"] else ""
        outside = {v: k for k, v in TARIFF_FIELD_MAP.items()}.get(ours, ours)
        raise AdapterFormatError(source, "tariff", outside, first["msg"]) from error


def _block(raw: Any, position: int, source: str) -> TariffBlock:
    ident = raw.get("id") if isinstance(raw, Mapping) else None
    obj = f"schedule block {position}" + (f" ({ident!r})" if ident is not None else "")
    if not isinstance(raw, Mapping):
        raise AdapterFormatError(source, obj, "", f"is {raw!r}, expected an object")
    missing = [name for name in BLOCK_FIELD_MAP if name not in raw]
    if missing:
        raise AdapterFormatError(source, obj, missing[0], "is missing")
    unknown = sorted(set(raw) - set(BLOCK_FIELD_MAP))
    if unknown:
        raise AdapterFormatError(source, obj, unknown[0], "is not a field of an acnportal schedule block")
    try:
        return TariffBlock(**{BLOCK_FIELD_MAP[k]: v for k, v in raw.items()})
    except ValidationError as error:
        first = error.errors()[0]
        ours = str(first["loc"][0]) if first["loc"] else _field_named_in(first["msg"])
        outside = {v: k for k, v in BLOCK_FIELD_MAP.items()}.get(ours, ours)
        message = first["msg"].removeprefix("Value error, ")
        for our_name, outside_name in ((v, k) for k, v in BLOCK_FIELD_MAP.items()):
            message = message.replace(our_name, outside_name)
        raise AdapterFormatError(source, obj, outside, message) from error


def _field_named_in(message: str) -> str:
    """The block field a model-level error message is about (its first field name)."""
    positions = {name: message.find(name) for name in BLOCK_FIELD_MAP.values() if name in message}
    return min(positions, key=lambda name: positions[name]) if positions else ""


def _local_days(index: pd.DatetimeIndex) -> np.ndarray:
    """Local calendar day of every step (the index's own wall clock), as datetime64[D]."""
    if len(index) and not isinstance(index, pd.DatetimeIndex):
        raise TypeError(f"index must be a pandas DatetimeIndex, got {type(index).__name__}")
    return np.asarray(
        index.tz_localize(None).normalize() if index.tz is not None else index.normalize()
    ).astype("datetime64[D]")
