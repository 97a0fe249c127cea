"""OpenEI Utility Rate Database (URDB) rates: the ``items`` objects of the utility_rates API (v3, v7).

What is imported (outside name -> ours in :data:`FIELD_MAP`):

- ``energyratestructure``: a list of periods, each a list of tiers ``{"rate", "adj", "max", "unit"}``
  [$/kWh]; ``adj`` is added to ``rate``; ``max`` is the tier's cumulative upper bound [kWh] in the
  billing period and the last tier has none; ``unit`` must be ``kWh``. Tiers count each period's
  consumption separately (URDB keeps one tier list per period).
- ``energyweekdayschedule`` / ``energyweekendschedule``: 12 months × 24 hours of period indices from 0
  (local clock; month 0 is January, hour 0 is 00:00-01:00).
- ``demandratestructure`` with ``demandweekdayschedule`` / ``demandweekendschedule``: time-of-use demand
  charges [$/kW] on the billing period's highest demand in each period; ``demandrateunit`` must be kW.
- ``flatdemandstructure`` with ``flatdemandmonths`` (a period index per month): the demand charge on
  the highest demand at any hour; ``flatdemandunit`` must be kW.
- ``demandwindow``: the demand averaging interval [min], default 15.
- ``fixedchargefirstmeter`` (v7; v3 ``fixedmonthlycharge``) with ``fixedchargeunits`` ($/month, $/day
  or $/year); ``mincharge`` (v3 ``minmonthlycharge``) with ``minchargeunits``.
- ratchets: ``demandratchetpercentage`` (12 fractions, one per billing month, of the trailing 11
  months' highest demand), ``lookbackpercent`` (a fraction) with ``lookbackrange`` (previous months) or
  ``lookbackmonths`` (12 flags: the calendar months whose peaks count). URDB writes 80 % as 0.8.

Fields that change a bill but are not modelled (:data:`UNSUPPORTED_FIELDS`, e.g. coincident demand)
are refused when they hold a charge: a rate is imported whole or not at all. Descriptive fields
(``utility``, ``sector``, ``description``, ...) are ignored. Exports are not credited (``sell``).

Split in the pvlib ``iotools`` style: :func:`fetch_urdb_tariff`, :func:`read_urdb_tariff`,
:func:`parse_urdb_tariff`. Errors are :class:`~market_adapters.errors.AdapterFormatError` naming the
rate, the URDB field with its position (``energyweekdayschedule[6][14]``) and the problem.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from market_adapters.errors import AdapterFormatError
from market_adapters.json_documents import loads_json
from market_adapters.rates import ChargePlan, DemandComponent, Ratchet, RatePeriod, Tier, to_decimal

URDB_API_URL = "https://api.openei.org/utility_rates"

FIELD_MAP: dict[str, str] = {
    "label": "label",
    "name": "name",
    "utility": "utility",
    "uri": "uri",
    "startdate": "start_date",
    "energyratestructure": "energy_periods",
    "energyweekdayschedule": "energy_weekday_schedule",
    "energyweekendschedule": "energy_weekend_schedule",
    "demandratestructure": "tou_demand_periods",
    "demandweekdayschedule": "tou_demand_weekday_schedule",
    "demandweekendschedule": "tou_demand_weekend_schedule",
    "demandrateunit": "tou_demand_unit",
    "flatdemandstructure": "flat_demand_periods",
    "flatdemandmonths": "flat_demand_months",
    "flatdemandunit": "flat_demand_unit",
    "demandwindow": "demand_interval_minutes",
    "fixedchargefirstmeter": "fixed_charge",
    "fixedmonthlycharge": "fixed_charge",  # v3, $/month
    "fixedchargeunits": "fixed_charge_unit",
    "mincharge": "minimum_charge",
    "minmonthlycharge": "minimum_charge",  # v3, $/month
    "minchargeunits": "minimum_charge_unit",
    "demandratchetpercentage": "ratchet_fraction_by_month",
    "lookbackpercent": "lookback_fraction",
    "lookbackrange": "lookback_range_months",
    "lookbackmonths": "lookback_months",
}
"""URDB field -> :class:`UrdbTariff` field."""

UNSUPPORTED_FIELDS: dict[str, str] = {
    "coincidentratestructure": "coincident demand charges are not supported",
    "coincidentrateschedule": "coincident demand charges are not supported",
    "demandreactivepowercharge": "reactive power charges are not supported",
    "fueladjustmentsmonthly": "monthly fuel adjustments are not supported",
    "annualmincharge": "annual minimum charges are not supported",
}
"""URDB fields that change a bill and are refused when they hold a charge."""

CHARGE_UNITS = {"$/month": "month", "$/day": "day", "$/year": "year"}
"""URDB ``fixedchargeunits`` / ``minchargeunits`` -> what one charge pays for."""

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")  # fmt: skip

Schedule = tuple[tuple[int, ...], ...]


class UrdbTier(BaseModel):
    """One tier: ``rate`` [$/kWh or $/kW] adjustments included, ``max`` its cumulative upper bound."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max: float | None = Field(None, gt=0)
    rate: Decimal = Field(description="rate + adj, exact as written")


class UrdbTariff(BaseModel):
    """A URDB rate, checked whole (every schedule 12 × 24 and in range, every tier list complete)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = ""
    name: str = Field(min_length=1)
    utility: str = ""
    uri: str = ""
    start_date: int | None = Field(None, description="Effective date, seconds since 1970 (URDB startdate)")
    energy_periods: tuple[tuple[UrdbTier, ...], ...] = ()
    energy_weekday_schedule: Schedule | None = None
    energy_weekend_schedule: Schedule | None = None
    tou_demand_periods: tuple[tuple[UrdbTier, ...], ...] = ()
    tou_demand_weekday_schedule: Schedule | None = None
    tou_demand_weekend_schedule: Schedule | None = None
    tou_demand_unit: Literal["kW"] = "kW"
    flat_demand_periods: tuple[tuple[UrdbTier, ...], ...] = ()
    flat_demand_months: tuple[int, ...] | None = None
    flat_demand_unit: Literal["kW"] = "kW"
    demand_interval_minutes: int = Field(15, gt=0)
    fixed_charge: float = Field(0.0, ge=0)
    fixed_charge_unit: Literal["month", "day", "year"] = "month"
    minimum_charge: float = Field(0.0, ge=0)
    minimum_charge_unit: Literal["month", "day", "year"] = "month"
    ratchet_fraction_by_month: tuple[float, ...] | None = None
    lookback_fraction: float = Field(0.0, ge=0, le=1)
    lookback_range_months: int = Field(0, ge=0, le=12)
    lookback_months: tuple[bool, ...] | None = None

    @property
    def ratchet(self) -> Ratchet | None:
        monthly = self.ratchet_fraction_by_month
        if monthly is not None and not any(monthly):
            monthly = None
        if monthly is None and self.lookback_fraction == 0:
            return None
        return Ratchet(monthly, self.lookback_fraction, self.lookback_range_months, self.lookback_months)

    def charge_plan(self, index: pd.DatetimeIndex) -> ChargePlan:
        """This rate on the steps of ``index`` (tz-aware, local time of the utility).

        Energy periods are ``energy period P``; demand charges ``TOU demand period P`` and
        ``flat demand period P`` (``flat demand`` if there is one flat period). The ratchet floors the
        flat demand charges, or the TOU ones if the rate has no flat demand charge.
        """
        if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
            raise TypeError("index must be a tz-aware pandas DatetimeIndex in the rate's local time")
        month = np.asarray(index.month - 1)
        hour = np.asarray(index.hour)
        weekend = np.asarray(index.day_of_week >= 5)

        def lookup(weekday: Schedule | None, weekend_: Schedule | None) -> np.ndarray:
            if weekday is None or weekend_ is None:
                return np.full(len(index), -1, dtype=int)
            return np.where(weekend, np.asarray(weekend_)[month, hour], np.asarray(weekday)[month, hour])

        energy = lookup(self.energy_weekday_schedule, self.energy_weekend_schedule)
        energy_periods = tuple(
            RatePeriod(f"energy period {p}", _tiers(tiers)) for p, tiers in enumerate(self.energy_periods)
        )
        tou = lookup(self.tou_demand_weekday_schedule, self.tou_demand_weekend_schedule)
        flat = (
            np.asarray(self.flat_demand_months)[month]
            if self.flat_demand_months is not None
            else np.full(len(index), -1, dtype=int)
        )
        ratcheted_kind = "flat" if self.flat_demand_periods else "tou"
        demand: list[DemandComponent] = []
        for kind, periods, of_step in (
            ("flat", self.flat_demand_periods, flat),
            ("tou", self.tou_demand_periods, tou),
        ):
            for p, tiers in enumerate(periods):
                if kind == "flat":
                    name = "flat demand" if len(periods) == 1 else f"flat demand period {p}"
                else:
                    name = f"TOU demand period {p}"
                demand.append(
                    DemandComponent(
                        name=name,
                        kind="flat" if kind == "flat" else "tou",
                        period=RatePeriod(name, _tiers(tiers)),
                        steps=of_step == p,
                        ratcheted=self.ratchet is not None and kind == ratcheted_kind,
                    )
                )
        fixed_month, fixed_day = _per_month_and_day(self.fixed_charge, self.fixed_charge_unit)
        minimum_month, minimum_day = _per_month_and_day(self.minimum_charge, self.minimum_charge_unit)
        return ChargePlan(
            index=index,
            energy_period=energy,
            energy_periods=energy_periods,
            demand=tuple(demand),
            fixed_per_month=fixed_month,
            fixed_per_day=fixed_day,
            minimum_per_month=minimum_month,
            minimum_per_day=minimum_day,
            ratchet=self.ratchet,
        )


def _per_month_and_day(amount: float, unit: str) -> tuple[Decimal, Decimal]:
    value = to_decimal(amount)
    if unit == "day":
        return Decimal(0), value
    return (value / 12 if unit == "year" else value), Decimal(0)


def _tiers(tiers: tuple[UrdbTier, ...]) -> tuple[Tier, ...]:
    return tuple(Tier(t.max, t.rate) for t in tiers)


def fetch_urdb_tariff(
    label: str, api_key: str, *, url: str = URDB_API_URL, version: int = 7, timeout: float = 30.0
) -> UrdbTariff:
    """Download rate ``label`` from the OpenEI utility_rates API (``detail=full``) and parse it."""
    query = urllib.parse.urlencode(
        {"version": version, "format": "json", "detail": "full", "getpage": label, "api_key": api_key}
    )
    with urllib.request.urlopen(f"{url}?{query}", timeout=timeout) as response:
        payload = response.read()
    return parse_urdb_tariff(loads_json(payload, url), label=label, source=f"{url} ({label})")


def read_urdb_tariff(path: str | Path, *, label: str | None = None) -> UrdbTariff:
    """Read a URDB rate from a JSON file: one rate object, or an API answer ``{"items": [...]}``.

    With several items, ``label`` picks one. Raises :class:`FileNotFoundError` for a missing file and
    :class:`~market_adapters.errors.AdapterFormatError` for a malformed one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"URDB rate file not found: {path}")
    return parse_urdb_tariff(loads_json(path.read_bytes(), str(path)), label=label, source=str(path))


def parse_urdb_tariff(
    data: Mapping[str, Any], *, label: str | None = None, source: str = "<data>"
) -> UrdbTariff:
    """Turn a decoded URDB rate (or API answer with ``items``) into a :class:`UrdbTariff`."""
    item = _pick_item(data, label, source)
    return UrdbTariff(**_checked_fields(item, source))


def _pick_item(data: Any, label: str | None, source: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise AdapterFormatError(source, "document", "", f"is a {type(data).__name__}, expected an object")
    if "items" not in data:
        return data
    items = data["items"]
    if not isinstance(items, list) or not items:
        raise AdapterFormatError(source, "API answer", "items", "must be a non-empty list of rates")
    if label is not None:
        found = [i for i in items if isinstance(i, Mapping) and i.get("label") == label]
        if not found:
            raise AdapterFormatError(source, "API answer", "items", f"has no rate with label {label!r}")
        return found[0]
    if len(items) > 1:
        labels = [i.get("label") for i in items if isinstance(i, Mapping)]
        raise AdapterFormatError(
            source, "API answer", "items", f"holds {len(items)} rates {labels}; pass label= to pick one"
        )
    if not isinstance(items[0], Mapping):
        raise AdapterFormatError(source, "API answer", "items[0]", "is not an object")
    return items[0]


# ── checks: every outside field read once, named with its position when it is wrong ───────────────


def _checked_fields(item: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our :class:`UrdbTariff` fields from a URDB item, or an error naming the first field at fault."""
    ident = item.get("label") or item.get("name")
    obj = f"rate {ident!r}" if ident else "rate"

    def fail(field: str, problem: str) -> AdapterFormatError:
        return AdapterFormatError(source, obj, field, problem)

    for field, reason in UNSUPPORTED_FIELDS.items():
        if _holds_charge(item.get(field)):
            raise fail(field, f"holds a charge: {reason}, so the rate is not imported")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail("name", f"must be a non-empty string, got {name!r}")
    ours: dict[str, Any] = {"name": name}
    for field in ("label", "utility", "uri"):
        if isinstance(item.get(field), str):
            ours[FIELD_MAP[field]] = item[field]
    if isinstance(item.get("startdate"), int):
        ours["start_date"] = item["startdate"]

    for structure, weekday, weekend, unit_field, unit in (
        ("energyratestructure", "energyweekdayschedule", "energyweekendschedule", None, "kWh"),
        ("demandratestructure", "demandweekdayschedule", "demandweekendschedule", "demandrateunit", "kW"),
    ):
        if unit_field is not None and item.get(unit_field, unit) != unit:
            raise fail(unit_field, f"is {item[unit_field]!r}; only {unit!r} is supported")
        if not item.get(structure):
            for schedule in (weekday, weekend):
                if item.get(schedule) and _holds_charge(item[schedule]):
                    raise fail(structure, f"is missing, but {schedule} refers to its periods")
            continue
        periods = _structure(item[structure], structure, unit, fail)
        ours[FIELD_MAP[structure]] = periods
        for schedule in (weekday, weekend):
            ours[FIELD_MAP[schedule]] = _schedule(item.get(schedule), schedule, structure, len(periods), fail)

    if item.get("flatdemandunit", "kW") != "kW":
        raise fail("flatdemandunit", f"is {item['flatdemandunit']!r}; only 'kW' is supported")
    if item.get("flatdemandstructure"):
        periods = _structure(item["flatdemandstructure"], "flatdemandstructure", "kW", fail)
        months = item.get("flatdemandmonths")
        if not isinstance(months, list) or len(months) != 12:
            got = f"{len(months)} months" if isinstance(months, list) else repr(months)
            raise fail("flatdemandmonths", f"must list a period for each of the 12 months, got {got}")
        ours["flat_demand_periods"] = periods
        ours["flat_demand_months"] = tuple(
            _period_index(
                v, f"flatdemandmonths[{m}]", f"({_MONTHS[m]})", "flatdemandstructure", len(periods), fail
            )
            for m, v in enumerate(months)
        )

    if "demandwindow" in item and item["demandwindow"] is not None:
        window = item["demandwindow"]
        if not _number(window) or window <= 0 or window != int(window) or 1440 % int(window):
            raise fail("demandwindow", f"must be whole minutes dividing a day (15, 30, 60), got {window!r}")
        ours["demand_interval_minutes"] = int(window)

    for amount_fields, unit_field in (
        (("fixedchargefirstmeter", "fixedmonthlycharge"), "fixedchargeunits"),
        (("mincharge", "minmonthlycharge"), "minchargeunits"),
    ):
        ours_amount, ours_unit = FIELD_MAP[amount_fields[0]], FIELD_MAP[unit_field]
        given = [f for f in amount_fields if item.get(f) is not None]
        for f in given:
            if not _number(item[f]) or item[f] < 0:
                raise fail(f, f"must be a number >= 0, got {item[f]!r}")
        if len(given) == 2 and item[given[0]] != item[given[1]]:
            raise fail(given[1], f"is {item[given[1]]} but {given[0]} is {item[given[0]]}")
        if not given:
            continue
        ours[ours_amount] = float(item[given[0]])
        unit_given = item.get(unit_field) if given[0] == amount_fields[0] else "$/month"
        if unit_given is None:
            unit_given = "$/month"
        if unit_given not in CHARGE_UNITS:
            raise fail(unit_field, f"is {unit_given!r}; expected one of {sorted(CHARGE_UNITS)}")
        ours[ours_unit] = CHARGE_UNITS[unit_given]

    ours.update(_ratchet_fields(item, fail))
    return ours


def _ratchet_fields(item: Mapping[str, Any], fail: Any) -> dict[str, Any]:
    ours: dict[str, Any] = {}
    monthly = item.get("demandratchetpercentage")
    if monthly is not None:
        if not isinstance(monthly, list) or len(monthly) != 12:
            got = f"{len(monthly)} values" if isinstance(monthly, list) else repr(monthly)
            raise fail(
                "demandratchetpercentage", f"must hold one fraction for each of the 12 months, got {got}"
            )
        for m, value in enumerate(monthly):
            if not _number(value) or not 0 <= value <= 1:
                raise fail(
                    f"demandratchetpercentage[{m}]",
                    f"({_MONTHS[m]}) must be a fraction from 0 to 1 (URDB writes 80 % as 0.8), got {value!r}",
                )
        ours["ratchet_fraction_by_month"] = tuple(float(v) for v in monthly)
    percent = item.get("lookbackpercent")
    if percent is None or percent == 0:
        return ours
    if not _number(percent) or not 0 < percent <= 1:
        raise fail("lookbackpercent", f"must be a fraction from 0 to 1 (0.8 for 80 %), got {percent!r}")
    span = item.get("lookbackrange") or 0
    if not _number(span) or span != int(span) or not 0 <= span <= 12:
        raise fail("lookbackrange", f"must be a whole number of months from 0 to 12, got {span!r}")
    flags = item.get("lookbackmonths")
    if flags is not None:
        if not isinstance(flags, list) or len(flags) != 12:
            got = f"{len(flags)} values" if isinstance(flags, list) else repr(flags)
            raise fail("lookbackmonths", f"must hold 12 flags (true/false or 1/0), got {got}")
        for m, flag in enumerate(flags):
            if flag not in (0, 1):  # True == 1, False == 0
                raise fail(f"lookbackmonths[{m}]", f"({_MONTHS[m]}) must be true/false or 1/0, got {flag!r}")
        if not any(flags):
            flags = None
    if span and flags:
        raise fail("lookbackmonths", "flags months but lookbackrange is also set; URDB allows only one")
    if not span and not flags:
        raise fail("lookbackpercent", "is set but neither lookbackrange nor lookbackmonths says which months")
    ours["lookback_fraction"] = float(percent)
    ours["lookback_range_months"] = int(span)
    ours["lookback_months"] = tuple(bool(f) for f in flags) if flags else None
    return ours


def _structure(value: Any, field: str, unit: str, fail: Any) -> tuple[tuple[dict[str, Any], ...], ...]:
    """Periods of tiers, each ``{"max", "rate"}`` with ``adj`` added; the last tier unbounded."""
    allowed = {"max", "rate", "adj", "unit", "sell"} if unit == "kWh" else {"max", "rate", "adj", "unit"}
    if not isinstance(value, list):
        raise fail(field, f"must be a list of periods, got {type(value).__name__}")
    periods = []
    for p, tiers in enumerate(value):
        if not isinstance(tiers, list) or not tiers:
            raise fail(f"{field}[{p}]", f"must be a non-empty list of tiers, got {tiers!r}")
        checked: list[dict[str, Any]] = []
        below = 0.0
        for t, tier in enumerate(tiers):
            where = f"{field}[{p}][{t}]"
            if not isinstance(tier, Mapping):
                raise fail(where, f"must be a tier object, got {tier!r}")
            unknown = sorted(set(tier) - allowed)
            if unknown:
                raise fail(f"{where}.{unknown[0]}", "is not a field of a URDB tier")
            if tier.get("unit", unit) != unit:
                raise fail(f"{where}.unit", f"is {tier['unit']!r}; only {unit!r} is supported")
            if "rate" not in tier and "adj" not in tier:
                raise fail(f"{where}.rate", "is missing")
            for key in ("rate", "adj"):
                if tier.get(key) is not None and not _number(tier[key]):
                    raise fail(f"{where}.{key}", f"must be a number, got {tier[key]!r}")
            top = tier.get("max")
            last = t == len(tiers) - 1
            if last and top is not None:
                raise fail(
                    f"{where}.max",
                    f"is {top} on the last tier, so use above {top} {unit} would not be priced; "
                    "the last tier must have no max",
                )
            if not last:
                if top is None:
                    raise fail(
                        f"{where}.max", f"is missing on tier {t} of {len(tiers)}; only the last is open"
                    )
                if not _number(top) or top <= below:
                    raise fail(f"{where}.max", f"must be a number above {below:g} {unit}, got {top!r}")
                below = float(top)
            rate = to_decimal(tier.get("rate") or 0.0) + to_decimal(tier.get("adj") or 0.0)
            checked.append({"max": None if last else below, "rate": rate})
        periods.append(tuple(checked))
    return tuple(periods)


def _schedule(value: Any, field: str, structure: str, n_periods: int, fail: Any) -> Schedule:
    """A 12 × 24 matrix of period indices in ``0 .. n_periods - 1``."""
    if value is None:
        raise fail(field, f"is missing, but {structure} is given")
    if not isinstance(value, list) or len(value) != 12:
        got = f"{len(value)} months" if isinstance(value, list) else repr(value)
        raise fail(field, f"must have 12 months (January to December) of 24 hours, got {got}")
    rows = []
    for m, row in enumerate(value):
        if not isinstance(row, list) or len(row) != 24:
            got = f"{len(row)} hours" if isinstance(row, list) else repr(row)
            raise fail(f"{field}[{m}]", f"({_MONTHS[m]}) must have 24 hours, got {got}")
        rows.append(
            tuple(
                _period_index(
                    v, f"{field}[{m}][{h}]", f"({_MONTHS[m]} {h:02d}:00)", structure, n_periods, fail
                )
                for h, v in enumerate(row)
            )
        )
    return tuple(rows)


def _period_index(value: Any, where: str, when: str, structure: str, n_periods: int, fail: Any) -> int:
    if not _number(value) or value != int(value):
        raise fail(where, f"{when} must be a period index, got {value!r}")
    if not 0 <= value < n_periods:
        raise fail(
            where, f"{when} is period {int(value)}, but {structure} has {n_periods} (0 to {n_periods - 1})"
        )
    return int(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))


def _holds_charge(value: Any) -> bool:
    """A field holds a charge if any number in it is not zero."""
    if isinstance(value, Mapping):
        return any(_holds_charge(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_charge(v) for v in value)
    return _number(value) and value != 0
