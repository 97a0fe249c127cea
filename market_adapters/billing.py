"""Bills and optimizer tariffs from any tariff (acnportal or URDB), through :class:`BillableTariff`.

- :func:`bill` prices a metered series into a line-item :class:`Bill`: energy by period and tier, demand
  charges by window (flat and time-of-use, ratchet applied), fixed charges, and the minimum charge
  when the bill would otherwise be below it.
- :func:`optimizer_tariff` gives the optimizer's :class:`~optimizer.Tariff` on a step grid: per-step
  import prices and one :class:`~optimizer.DemandCharge` per demand charge with its time-of-day windows.
- :func:`demand_peaks_so_far` reads the peak already reached in this billing period from metered data,
  for the optimizer's ``peak_already_kw``.

Metering as utilities bill it: a reading is the average power [kW] from its timestamp to the next
(the last lasts one spacing); readings are regular, at least a minute apart, on whole minutes. Power is
spread over minutes, then averaged over demand intervals aligned to the local clock (:00, :15, :30,
:45 for 15 minutes), so a one-minute spike counts a fifteenth. Import (positive kW) is billed; export is
reported but not credited. A :class:`Bill` is one billing period: $/month charges once, $/day charges
once per local day touched, $/year charges a twelfth.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from market_adapters.errors import AdapterError
from market_adapters.meter import MeterDataError, demand_averages, meter_minutes
from market_adapters.rates import ZERO, BillableTariff, ChargePlan, DemandComponent
from market_adapters.tariffs import read_tou_tariff
from market_adapters.urdb import read_urdb_tariff
from optimizer.scenario import DemandCharge, Tariff, TimeWindow

_QUANTITY = Decimal("0.000001")
LineKind = Literal["energy", "demand", "fixed", "minimum", "export"]


class DemandWindowsVaryError(AdapterError, ValueError):
    """A demand charge's time-of-day windows differ between days of one kind within the horizon."""


class BillLine(BaseModel):
    """One line of a bill: ``quantity`` [``unit``] × ``rate`` = ``amount`` (exact, not rounded)."""

    model_config = ConfigDict(frozen=True)

    kind: LineKind
    label: str
    quantity: Decimal
    unit: str
    rate: Decimal
    amount: Decimal
    note: str = ""


class Bill(BaseModel):
    """A line-item bill for one billing period of one meter."""

    model_config = ConfigDict(frozen=True)

    tariff: str
    start: dt.datetime
    end: dt.datetime = Field(description="End of the metered period (exclusive)")
    lines: list[BillLine]

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), ZERO)

    def subtotal(self, kind: str) -> Decimal:
        return sum((line.amount for line in self.lines if line.kind == kind), ZERO)

    @property
    def total_cents(self) -> int:
        return cents(self.total)


def cents(amount: Decimal) -> int:
    """``amount`` [$] in whole cents, half a cent rounded up (``1357.125`` -> ``135713``)."""
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


# ── peaks so far ─────────────────────────────────────────────────────────────────────────────────────


def demand_peaks_so_far(
    tariff: BillableTariff,
    meter_kw: pd.Series,
    period_start: dt.datetime | pd.Timestamp,
    *,
    timezone: str | None = None,
    previous_peaks_kw: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Highest demand [kW] of each demand charge from ``period_start`` to the end of ``meter_kw``.

    Keys are the demand charges' names (as in :func:`optimizer_tariff` and the bill's lines); a
    ratcheted charge is floored by the ratchet from ``previous_peaks_kw`` (``{"2019-07": 310.0}``).
    Pass the result as ``peaks_already_kw`` to :func:`optimizer_tariff`.
    """
    minutes = meter_minutes(meter_kw, timezone)
    start = pd.Timestamp(period_start)
    if start.tzinfo is None:
        raise MeterDataError(f"period_start must carry a UTC offset or time zone, got {period_start}")
    minutes = minutes[minutes.index >= start]
    if minutes.empty:
        return {}
    averages = demand_averages(minutes, tariff.demand_interval_minutes)
    plan = tariff.charge_plan(pd.DatetimeIndex(averages.index))
    month = _billing_month(minutes)
    return {
        component.name: _billed_demand(component, averages, plan, month, previous_peaks_kw)[0]
        for component in plan.demand
    }


# ── bill ──────────────────────────────────────────────────────────────────────────────────────────────


def bill(
    tariff: BillableTariff,
    meter_kw: pd.Series,
    *,
    timezone: str | None = None,
    previous_peaks_kw: Mapping[str, float] | None = None,
) -> Bill:
    """Price a metered series [kW] into a line-item :class:`Bill` for one billing period.

    ``timezone`` (IANA) is the tariff's local time; by default the series' own zone.
    ``previous_peaks_kw``: the billed demand of earlier months, ``{"2019-07": 310.0}``, for ratchets.
    """
    minutes = meter_minutes(meter_kw, timezone)
    index = pd.DatetimeIndex(minutes.index)
    kw = minutes.to_numpy(dtype=float)
    plan = tariff.charge_plan(index)
    lines = _energy_lines(plan, np.clip(kw, 0.0, None))

    averages = demand_averages(minutes, tariff.demand_interval_minutes)
    demand_plan = tariff.charge_plan(pd.DatetimeIndex(averages.index))
    month = _billing_month(minutes)
    for component in demand_plan.demand:
        if component.period.is_free or not component.steps.any():
            continue
        billed, note = _billed_demand(component, averages, demand_plan, month, previous_peaks_kw)
        for tier, quantity in component.period.split(billed):
            label = (
                component.name if len(component.period.tiers) == 1 else f"{component.name} tier {tier + 1}"
            )
            lines.append(_line("demand", label, quantity, "kW", component.period.tiers[tier].rate, note))

    days = len(np.unique(np.asarray(index.tz_localize(None).normalize())))
    if plan.fixed_per_month:
        lines.append(BillLine(kind="fixed", label="fixed charge", quantity=Decimal(1), unit="month",
                              rate=plan.fixed_per_month, amount=plan.fixed_per_month))  # fmt: skip
    if plan.fixed_per_day:
        lines.append(BillLine(kind="fixed", label="fixed charge", quantity=Decimal(days), unit="day",
                              rate=plan.fixed_per_day, amount=plan.fixed_per_day * days))  # fmt: skip
    minimum = plan.minimum_per_month + plan.minimum_per_day * days
    charged = sum((line.amount for line in lines), ZERO)
    if minimum > charged:
        lines.append(
            BillLine(kind="minimum", label="minimum charge", quantity=Decimal(1), unit="bill",
                     rate=minimum - charged, amount=minimum - charged,
                     note=f"charges of {charged:.2f} topped up to the minimum of {minimum:.2f}")
        )  # fmt: skip
    exported = float(np.clip(-kw, 0.0, None).sum()) / 60
    if exported > 0:
        lines.append(_line("export", "export (not credited)", exported, "kWh", ZERO, ""))
    start = index[0].to_pydatetime()
    return Bill(tariff=tariff.name, start=start, end=start + dt.timedelta(minutes=len(index)), lines=lines)


def _energy_lines(plan: ChargePlan, import_kw: np.ndarray) -> list[BillLine]:
    lines = []
    kw_minutes = np.bincount(
        plan.energy_period[plan.energy_period >= 0],
        weights=import_kw[plan.energy_period >= 0],
        minlength=len(plan.energy_periods),
    )
    used = set(np.unique(plan.energy_period[plan.energy_period >= 0]).tolist())
    for p, period in enumerate(plan.energy_periods):
        if p not in used:
            continue
        for tier, quantity in period.split(float(kw_minutes[p]) / 60):
            label = period.label if len(period.tiers) == 1 else f"{period.label} tier {tier + 1}"
            lines.append(_line("energy", label, quantity, "kWh", period.tiers[tier].rate, ""))
    return lines


def _line(kind: LineKind, label: str, quantity: float, unit: str, rate: Decimal, note: str) -> BillLine:
    exact = Decimal(repr(quantity)).quantize(_QUANTITY, rounding=ROUND_HALF_UP).normalize()
    if exact.as_tuple().exponent > 0:  # type: ignore[operator]
        exact = exact.quantize(Decimal(1))
    return BillLine(
        kind=kind,
        label=label,
        quantity=exact,
        unit=unit,
        rate=rate,
        amount=exact * rate,
        note=note,
    )


def _billing_month(minutes: pd.Series) -> pd.Period:
    first = minutes.index[0]
    return pd.Period(year=first.year, month=first.month, freq="M")


def _billed_demand(
    component: DemandComponent,
    averages: pd.Series,
    plan: ChargePlan,
    month: pd.Period,
    previous_peaks_kw: Mapping[str, float] | None,
) -> tuple[float, str]:
    counted = averages[component.steps]
    peak, note = 0.0, ""
    if len(counted):
        at = counted.index[int(np.argmax(counted.to_numpy()))]
        peak = float(counted.max())
        note = f"peak at {at.strftime('%Y-%m-%d %H:%M')}"
    if component.ratcheted and plan.ratchet is not None and previous_peaks_kw:
        previous = {pd.Period(m, freq="M"): float(v) for m, v in previous_peaks_kw.items()}
        floor, why = plan.ratchet.floor_kw(month, previous)
        if floor > peak:
            return floor, f"{why} (metered peak {peak:g} kW)"
    return peak, note


# ── optimizer ─────────────────────────────────────────────────────────────────────────────────────────


def optimizer_tariff(
    tariff: BillableTariff,
    index: pd.DatetimeIndex,
    *,
    peaks_already_kw: Mapping[str, float] | None = None,
) -> Tariff:
    """The optimizer's :class:`~optimizer.Tariff` on the steps of ``index`` (tz-aware, local time).

    Import prices are the first tier's energy rate of each step. One :class:`~optimizer.DemandCharge`
    per demand charge that has steps in ``index`` and a non-zero rate, named as on the bill, with its
    time-of-day windows (none if it counts every step), the rate of the tier its peak has reached, and
    ``peak_already_kw`` from ``peaks_already_kw`` (see :func:`demand_peaks_so_far`).
    Raises :class:`DemandWindowsVaryError` if a charge's windows differ between days of one kind
    (e.g. across a season change): split the horizon there.
    """
    plan = tariff.charge_plan(index)
    peaks = peaks_already_kw or {}
    charges = []
    for component in plan.demand:
        if not component.steps.any():
            continue
        already = float(peaks.get(component.name, 0.0))
        rate = component.period.rate_at(already)
        if rate == 0:
            continue
        charges.append(
            DemandCharge(
                name=component.name,
                rate_per_kw=float(rate),
                peak_already_kw=already,
                windows=time_windows(index, component.steps, component.name),
            )
        )
    return Tariff(
        import_price_per_kwh=[float(p) for p in plan.import_prices()],
        demand_charges=charges,
        demand_interval_minutes=tariff.demand_interval_minutes,
    )


def time_windows(index: pd.DatetimeIndex, steps: np.ndarray, name: str = "") -> list[TimeWindow]:
    """Time-of-day windows (weekdays/weekends/all) holding exactly the ``steps`` of ``index``.

    Empty if every step counts. :class:`DemandWindowsVaryError` if a time of day is in on one day and
    out on another of the same kind.
    """
    if steps.all():
        return []
    step_minutes = int((index[1] - index[0]).total_seconds() // 60) if len(index) > 1 else 15
    clock = np.asarray(index.hour * 60 + index.minute)
    weekend = np.asarray(index.day_of_week >= 5)
    inside: dict[Literal["weekdays", "weekends"], set[int]] = {}
    kinds: tuple[tuple[Literal["weekdays", "weekends"], np.ndarray], ...] = (
        ("weekdays", ~weekend),
        ("weekends", weekend),
    )
    for kind, of_kind in kinds:
        ins, outs = set(clock[of_kind & steps].tolist()), set(clock[of_kind & ~steps].tolist())
        both = sorted(ins & outs)
        if both:
            raise DemandWindowsVaryError(
                f"demand charge {name!r}: {both[0] // 60:02d}:{both[0] % 60:02d} on {kind} counts on some "
                "days and not on others within the horizon (a season change?); split the horizon there"
            )
        inside[kind] = ins
    if inside["weekdays"] and inside["weekdays"] == inside["weekends"]:
        return _runs(sorted(inside["weekdays"]), step_minutes, "all")
    return [w for kind, ins in inside.items() for w in _runs(sorted(ins), step_minutes, kind)]


def _runs(minutes: list[int], step: int, days: Literal["all", "weekdays", "weekends"]) -> list[TimeWindow]:
    windows: list[TimeWindow] = []
    run_start = None
    for k, minute in enumerate(minutes):
        if run_start is None:
            run_start = minute
        if k + 1 == len(minutes) or minutes[k + 1] != minute + step:
            end = minute + step
            windows.append(
                TimeWindow(
                    start=dt.time(run_start // 60, run_start % 60),
                    end=dt.time.max if end >= 24 * 60 else dt.time(end // 60, end % 60),
                    days=days,
                )
            )
            run_start = None
    return windows


# ── tariff files ──────────────────────────────────────────────────────────────────────────────────────


def read_tariff(path: str | Path, *, label: str | None = None) -> BillableTariff:
    """Read a tariff file of either format: acnportal (has ``schedule``) or URDB (anything else)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tariff file not found: {path}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None  # let the format's reader name the problem
    if isinstance(data, dict) and "schedule" in data:
        return read_tou_tariff(path)
    return read_urdb_tariff(path, label=label)
