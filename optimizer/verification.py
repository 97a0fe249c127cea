"""Check a schedule against its scenario, independently of the code that made and priced it.

:func:`check_schedule` reads only the pydantic :class:`~optimizer.scenario.Scenario` and the result's
public tables (``schedule``, ``site``, ``summary()``). It finds plugged steps with datetime maths, rebuilds
battery energies, site flows, commitment delivery and every money term itself, checks each step's charge
against the vehicle's CC-CV acceptance at the step's end (written in state of charge, as the simulated
vehicle does it), and reports each broken rule as a :class:`Violation`. It shares no code with
:mod:`optimizer.problem` or :mod:`optimizer.evaluation`, so a mistake there shows up here instead of
being repeated (the role of PyPSA's ``test/test_lopf_basic_constraints.py``).

A step ``k`` covers ``[start + k * step, start + (k + 1) * step)``; a vehicle is plugged in during a step
only if the step lies fully inside ``[arrival, departure)``.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from optimizer.results import ScheduleResult
from optimizer.scenario import DemandCharge, DrEvent, Scenario, TimeWindow, VehicleSession

DEFAULT_TOLERANCE = 1e-6
"""Relative tolerance, applied as ``tol * max(1, |value|)`` in the value's own unit."""

Checks = dict[str, tuple[Any, str]]
"""Rule -> (where it is broken: one bool per row, why it matters)."""


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``rule`` is named like the model's constraint, ``subject`` the object at fault."""

    rule: str
    subject: str
    step: int | None
    message: str

    def __str__(self) -> str:
        where = "" if self.step is None else f" at step {self.step}"
        return f"{self.rule}: {self.subject}{where}: {self.message}"


def describe(violations: Iterable[Violation]) -> str:
    """One line per violation, for assertion messages and logs."""
    return "\n".join(str(v) for v in violations) or "no violations"


def plugged_steps(scenario: Scenario, vehicle: VehicleSession) -> list[int]:
    """Steps of the horizon lying fully inside the vehicle's ``[arrival, departure)``."""
    start, step = scenario.start, scenario.step
    return [
        k
        for k in range(scenario.n_steps)
        if start + k * step >= vehicle.arrival and start + (k + 1) * step <= vehicle.departure
    ]


def check_schedule(
    scenario: Scenario, result: ScheduleResult, tol: float = DEFAULT_TOLERANCE
) -> list[Violation]:
    """Every rule ``result`` breaks for ``scenario``; an empty list means the schedule checks out."""
    checker = _Checker(scenario, tol)
    summary = result.summary()
    checker.vehicles(result.schedule, summary["vehicles"])
    checker.site(result.site)
    checker.costs(summary)
    return checker.violations


class _Checker:
    """Walks the tables once, keeping fleet and site flows per step [kW] for the money terms."""

    def __init__(self, scenario: Scenario, tol: float) -> None:
        self.scenario = scenario
        self.tol = tol
        self.n = scenario.n_steps
        self.hours = scenario.step_minutes / 60
        self.violations: list[Violation] = []
        self.charge_kw, self.discharge_kw = np.zeros(self.n), np.zeros(self.n)
        self.import_kw, self.export_kw = np.zeros(self.n), np.zeros(self.n)

    def fail(self, rule: str, subject: str, message: str) -> None:
        self.violations.append(Violation(rule, subject, None, message))

    def slack(self, value: Any) -> Any:
        return self.tol * np.maximum(1.0, np.abs(value))

    def close(self, a: Any, b: Any) -> Any:
        return np.abs(a - b) <= self.slack(np.maximum(np.abs(a), np.abs(b)))

    def outside(self, value: Any, low: Any, high: Any) -> Any:
        return (value < low - self.slack(low)) | (value > high + self.slack(high))

    def series(self, value: float | list[float]) -> np.ndarray:
        return np.asarray(value, dtype=float) if isinstance(value, list) else np.full(self.n, float(value))

    def flag(self, subject: str, steps: np.ndarray, checks: Checks, state: dict[str, np.ndarray]) -> None:
        """Record a violation for every row where a rule is broken, quoting the row's values."""
        for rule, (broken, why) in checks.items():
            for j in np.flatnonzero(np.broadcast_to(broken, steps.shape)):
                values = ", ".join(f"{name}={column[j]:.6g}" for name, column in state.items())
                self.violations.append(Violation(rule, subject, int(steps[j]), f"{values}: {why}"))

    def step_of(self, stamp: Any) -> int | None:
        """The step starting at ``stamp``, or None if ``stamp`` is not on the horizon's step grid."""
        k, rest = divmod(pd.Timestamp(stamp) - pd.Timestamp(self.scenario.start), self.scenario.step)
        return int(k) if not rest and 0 <= k < self.n else None

    def vehicles(self, schedule: pd.DataFrame, outcomes: dict[str, dict[str, Any]]) -> None:
        for unknown in sorted(set(schedule["vehicle_id"]) - {v.id for v in self.scenario.vehicles}):
            self.fail("schedule_rows", f"vehicle {unknown!r}", "is scheduled but not in the scenario")
        for v in self.scenario.vehicles:
            rows = schedule[schedule["vehicle_id"] == v.id]
            steps = [self.step_of(stamp) for stamp in rows["start"]]
            on_grid = [k for k in steps if k is not None]
            plugged, subject = plugged_steps(self.scenario, v), f"vehicle {v.id!r}"
            if len(on_grid) < len(steps) or sorted(on_grid) != plugged:  # one row per plugged step
                self.fail("schedule_rows", subject, f"has rows at steps {steps}, is plugged in at {plugged}")
            rows = rows.loc[[k is not None for k in steps]].assign(step=on_grid).sort_values("step")
            self.vehicle(v, rows, plugged)
            final = float(rows["energy_kwh"].iloc[-1]) if len(rows) else v.energy_at_arrival_kwh
            gap = max(0.0, v.target_energy_kwh - final)
            unmet = outcomes.get(v.id, {}).get("unmet_kwh", np.nan)
            leaves_inside = v.departure < self.scenario.end + self.scenario.step  # no full step after it
            if not self.close(unmet, gap) and (leaves_inside or self.outside(unmet, 0.0, gap)):
                self.fail("ev_departure_target", subject, f"reports unmet_kwh={unmet}, expected {gap}")

    def vehicle(self, v: VehicleSession, rows: pd.DataFrame, plugged: list[int]) -> None:
        """Plug-in, power limits, V2G consent, energy balance and bounds of one vehicle, step by step."""
        evse = next(e for e in self.scenario.evses if e.id == v.evse_id)
        max_charge = min(v.max_charge_kw, evse.max_charge_kw)
        may_discharge = v.v2g_consent and evse.max_discharge_kw > 0
        max_discharge = min(v.max_discharge_kw, evse.max_discharge_kw) if may_discharge else 0.0
        floor = min(v.min_energy_kwh, v.energy_at_arrival_kwh)
        steps = rows["step"].to_numpy(int)
        charge, discharge = rows["charge_kw"].to_numpy(float), rows["discharge_kw"].to_numpy(float)
        energy = rows["energy_kwh"].to_numpy(float)
        before = np.concatenate([[v.energy_at_arrival_kwh], energy[:-1]])
        expected = before + self.hours * (v.charge_efficiency * charge - discharge / v.discharge_efficiency)
        why_not = "" if may_discharge else ": no V2G consent or no bidirectional EVSE"
        limits = f"limit {max_discharge} kW{why_not}", f"range {floor}..{v.capacity_kwh} kWh"
        powered = np.maximum(charge, discharge) > self.tol
        accepted = self.acceptance_kw(v, before + self.hours * v.charge_efficiency * charge)
        checks: Checks = {
            "ev_plugged_in": (~np.isin(steps, plugged) & powered, "power while not plugged in"),
            "ev_charge_limit": (self.outside(charge, 0.0, max_charge), f"limit {max_charge} kW"),
            "ev_discharge_limit": (self.outside(discharge, 0.0, max_discharge), limits[0]),
            "ev_charge_discharge_exclusive": (np.minimum(charge, discharge) > self.tol, "both at once"),
            "ev_energy_balance": (~self.close(energy, expected), "energy does not follow from the powers"),
            "ev_energy_bounds": (self.outside(energy, floor, v.capacity_kwh), limits[1]),
            "ev_charge_taper": (
                self.outside(charge, 0.0, accepted),
                "more than the vehicle accepts at the step's end under its charge taper",
            ),
        }
        state = {"charge_kw": charge, "discharge_kw": discharge, "energy_kwh": energy, "expected": expected}
        state["accepted_kw"] = accepted
        self.flag(f"vehicle {v.id!r}", steps, checks, state)
        np.add.at(self.charge_kw, steps, charge)
        np.add.at(self.discharge_kw, steps, discharge)

    @staticmethod
    def acceptance_kw(v: VehicleSession, energy_kwh: np.ndarray) -> np.ndarray:
        """The vehicle's own charge acceptance [kW] at battery energy ``energy_kwh``, CC-CV as the
        simulated vehicle does it: full power up to ``start_soc``, then linearly down to ``end_fraction``
        at 100 %. A constant power can be held through a step only up to the acceptance at its end."""
        taper = v.charge_taper
        if taper is None:
            return np.full(np.shape(energy_kwh), np.inf)
        soc = energy_kwh / v.capacity_kwh
        left = (1.0 - soc) / (1.0 - taper.start_soc)
        tapered = v.max_charge_kw * (taper.end_fraction + (1.0 - taper.end_fraction) * left)
        return np.where(soc <= taper.start_soc, v.max_charge_kw, tapered)

    def site(self, site: pd.DataFrame) -> None:
        """Limits and power balance of the grid connection (curtailment may absorb up to the generation)."""
        s, subject = self.scenario.site, f"site {self.scenario.site.id!r}"
        if [self.step_of(stamp) for stamp in site["start"]] != list(range(self.n)):
            self.fail("site_power_balance", subject, "the site table does not hold every step exactly once")
            return
        self.import_kw, self.export_kw = site["import_kw"].to_numpy(float), site["export_kw"].to_numpy(float)
        ev_in, ev_out = site["ev_charge_kw"].to_numpy(float), site["ev_discharge_kw"].to_numpy(float)
        generation = self.series(s.generation_kw)
        net = self.series(s.base_load_kw) - generation + self.charge_kw - self.discharge_kw
        curtailed = self.import_kw - self.export_kw - net
        both_ways = np.minimum(self.import_kw, self.export_kw) > self.tol
        ev_mismatch = ~(self.close(ev_in, self.charge_kw) & self.close(ev_out, self.discharge_kw))
        checks: Checks = {
            "site_import_limit": (self.outside(self.import_kw, 0.0, s.import_limit_kw), "outside the limit"),
            "site_export_limit": (self.outside(self.export_kw, 0.0, s.export_limit_kw), "outside the limit"),
            "site_power_balance": (
                self.outside(curtailed, 0.0, generation) | both_ways,
                "import - export must be base - generation + EVs + curtailment (0..generation), one way",
            ),
            "site_ev_power": (ev_mismatch, "EV power in the site table is not the plugged vehicles' sum"),
        }
        state = {"import_kw": self.import_kw, "export_kw": self.export_kw, "net_kw": net}
        state |= {"generation_kw": generation, "ev_charge_kw": ev_in, "scheduled_kw": self.charge_kw}
        self.flag(subject, np.arange(self.n), checks, state)

    def costs(self, summary: dict[str, Any]) -> None:
        """Recompute every money term and every commitment's delivery; compare with the summary."""
        tariff, h = self.scenario.tariff, self.hours
        costs = dict.fromkeys(("dr_payment", "dr_penalty", "v2g_payment", "v2g_penalty"), 0.0)
        costs["energy_cost"] = float(self.series(tariff.import_price_per_kwh) @ self.import_kw) * h
        costs["export_revenue"] = float(self.series(tariff.export_price_per_kwh) @ self.export_kw) * h
        costs["demand_charge"] = sum(self.demand_charge(charge) for charge in tariff.demand_charges)
        costs["battery_wear"] = self.scenario.battery_wear_cost_per_kwh * float(self.discharge_kw.sum()) * h
        for event in self.scenario.dr_events:
            delivered, shortfall = self.dr_event(event)
            costs["dr_payment"] += event.payment_per_kwh * delivered
            costs["dr_penalty"] += event.penalty_per_kwh * shortfall
            reported = summary["dr_events"].get(event.id, {})
            self.delivery("dr_event_delivery", f"DR event {event.id!r}", reported, delivered, shortfall)
        for dispatch in self.scenario.v2g_dispatches:
            steps = self.window(dispatch.start, dispatch.end)
            net_export = self.discharge_kw[steps] - self.charge_kw[steps]
            delivered = float(np.clip(net_export, 0.0, dispatch.export_kw).sum()) * h
            shortfall = dispatch.export_kw * len(steps) * h - delivered
            costs["v2g_payment"] += dispatch.price_per_kwh * delivered
            costs["v2g_penalty"] += dispatch.penalty_per_kwh * shortfall
            reported, subject = (
                summary["v2g_dispatches"].get(dispatch.id, {}),
                f"V2G dispatch {dispatch.id!r}",
            )
            self.delivery("v2g_dispatch_delivery", subject, reported, delivered, shortfall)
        for name, expected in costs.items():
            got = summary["cost"].get(name, np.nan)
            if not self.close(got, expected):
                self.fail("reported_cost", f"cost {name!r}", f"reported {got}, recomputed {expected}")

    def dr_event(self, event: DrEvent) -> tuple[float, float]:
        """Delivered kWh (below baseline, up to the commitment; negative above it where the event nets)
        and shortfall kWh (above the target)."""
        flows = self.import_kw[self.window(event.start, event.end)]
        baseline = None if event.baseline_kw is None else np.broadcast_to(event.baseline_kw, flows.shape)
        if event.cap_kw is not None:
            target = np.full(flows.shape, event.cap_kw)
        else:
            assert baseline is not None and event.reduction_kw is not None
            target = np.maximum(baseline - event.reduction_kw, 0.0)
        if baseline is None:
            delivered = 0.0
        else:
            steps = np.minimum(baseline - flows, np.maximum(baseline - target, 0.0))
            if event.delivery == "clipped":  # a step above the baseline delivers nothing
                steps = np.maximum(steps, 0.0)
            delivered = float(steps.sum())
        return delivered * self.hours, float(np.maximum(flows - target, 0.0).sum()) * self.hours

    def delivery(self, rule: str, subject: str, reported: dict[str, float], kwh: float, short: float) -> None:
        got = reported.get("delivered_kwh", np.nan), reported.get("shortfall_kwh", np.nan)
        if not (self.close(got[0], kwh) and self.close(got[1], short)):
            self.fail(rule, subject, f"reports delivered/short {got} kWh, recomputed {kwh}/{short}")

    def window(self, start: dt.datetime, end: dt.datetime) -> np.ndarray:
        origin, step = self.scenario.start, self.scenario.step
        return np.arange((start - origin) // step, (end - origin) // step)

    def demand_charge(self, charge: DemandCharge) -> float:
        """``rate * (peak - peak_already)``: only the increase over the period's earlier peak costs."""
        averages = [float(self.import_kw[steps].mean()) for steps in self.demand_intervals(charge.windows)]
        return charge.rate_per_kw * (max([charge.peak_already_kw, *averages]) - charge.peak_already_kw)

    def demand_intervals(self, windows: list[TimeWindow]) -> list[list[int]]:
        """Steps in ``windows``, grouped by the billing interval of the local clock each starts in."""
        scenario = self.scenario
        zone = zoneinfo.ZoneInfo(scenario.timezone) if scenario.timezone else scenario.start.tzinfo
        interval = dt.timedelta(minutes=scenario.tariff.demand_interval_minutes)
        groups: list[list[int]] = []
        previous: object = None
        for k in range(self.n):
            local = (scenario.start + k * scenario.step).astimezone(zone)
            if windows and not any(_in_window(local, w) for w in windows):
                continue
            wall_clock = local.replace(tzinfo=None) - dt.datetime(1970, 1, 1)
            key = k if scenario.step >= interval else wall_clock // interval
            if key != previous:
                groups.append([])
            groups[-1].append(k)
            previous = key
        return groups


def _in_window(local: dt.datetime, window: TimeWindow) -> bool:
    weekday = local.weekday() < 5
    if window.days != "all" and weekday != (window.days == "weekdays"):
        return False
    clock = local.time()
    if window.start <= window.end:
        return window.start <= clock < window.end
    return clock >= window.start or clock < window.end
