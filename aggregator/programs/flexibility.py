"""What a site's plan can still promise over a window: power held in every step of it, within the
energy its vehicles can move out of the window and still reach their targets.

Power headroom alone (:func:`aggregator.control.schedules.flexibility_frame`) says how far the import
could drop in each step; it would promise a vehicle's whole charging power for a two-hour event even
if the vehicle then leaves short of its target. A reduction moves energy out of the window, and each
vehicle must take it back before it leaves (or never needed it). :func:`held_kw` finds the largest
figure ``X`` that holds in every window step ``k`` by solving a small linear programme over the
plan's steps (all [kW] per step of ``Δt`` hours, per vehicle ``i``):

- in the window, each vehicle pauses ``p[i,k] ≤`` its planned charging and, with V2G, discharges
  ``q[i,k] ≤`` its remaining discharge power, and the site's drop meets the kind's need:
  ``Σ_i p + q ≥ need[k] + X``, at most the site's power headroom ``down_kw[k]`` (export limit);
- outside it (future steps only, the current one for what is left of it) each vehicle catches up
  ``c[i,j] ≤`` its charge acceptance at the planned energy minus its plan, and the site's extra import
  stays within its import limit: ``Σ_i c[i,j] ≤ site_room_kw[j]``;
- every vehicle's energy balances: ``Δt Σ_k (p + q / (η_c η_d)) ≤ spare_kwh[i] + Δt Σ_j c[i,j]``,
  where ``spare_kwh`` is the grid energy its plan draws beyond its target (departure) or beyond what
  it needs by the horizon's end, and a kWh discharged costs ``1 / (η_c η_d)`` kWh to put back;
- what a vehicle discharges stays above its V2G reserve: ``Δt Σ_k q / η_d ≤ reserve_kwh[i]``.

The energy balance counts totals, not their order (a vehicle catching up before the window would fill
its battery earlier than planned; its capacity is not checked), and the catch-up is bounded by the
acceptance at the planned energy, which a vehicle below its plan exceeds and one above it may not
reach: a close estimate, not a guarantee. Without energy data (:attr:`PlannedSteps.energy` ``None``)
the figure is the power headroom's: ``X = min_k (down_kw[k] - need[k])``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import highspy
import numpy as np
import pandas as pd

from aggregator.control.schedules import StoredPlan, flexibility_frame
from optimizer.problem import Problem, build_problem
from optimizer.scenario import Scenario

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnergyRoom:
    """How much energy each vehicle of a plan can move out of a window (module docstring)."""

    step_hours: float
    pause_kw: np.ndarray
    """Vehicle × window step: the planned charging it could pause [kW]."""
    discharge_kw: np.ndarray
    """Vehicle × window step: the discharge it could add [kW, grid side] (0 without V2G)."""
    catch_up_kw: np.ndarray
    """Vehicle × other future step: the charging it could add [kW] (scaled by what is left of the step)."""
    site_room_kw: np.ndarray
    """Other future step: the site's import headroom [kW] (scaled likewise)."""
    spare_kwh: np.ndarray
    """Per vehicle: grid energy [kWh] its plan draws beyond what its target needs."""
    reserve_kwh: np.ndarray
    """Per vehicle: battery energy [kWh] above its V2G reserve at the window's start."""
    charge_efficiency: np.ndarray
    discharge_efficiency: np.ndarray


@dataclass(frozen=True)
class PlannedSteps:
    """One site's latest plan over the steps of a window, per step [kW], and the energy its vehicles
    can move out of it."""

    import_kw: np.ndarray
    """The planned site import."""
    down_kw: np.ndarray
    """How far the site's import can drop below the plan
    (:func:`aggregator.control.schedules.flexibility_frame`)."""
    vehicles_kw: np.ndarray
    """The vehicles' planned net power (positive charging)."""
    energy: EnergyRoom | None = None
    """``None``: power headroom only."""


def held_kw(steps: PlannedSteps, need_kw: np.ndarray) -> float:
    """The largest ``X`` [kW] such that the site's import can drop ``need_kw[k] + X`` below its plan in
    every window step ``k`` (module docstring); ``-inf`` for a window without steps."""
    need_kw = np.asarray(need_kw, dtype=float)
    if not len(need_kw):
        return -np.inf
    power_only = float((steps.down_kw - need_kw).min())
    room = steps.energy
    if room is None or not room.pause_kw.size:
        return power_only
    figure = _solve(room, np.asarray(steps.down_kw, dtype=float), need_kw)
    if figure is None:
        log.error("flexibility: the energy programme has no optimum; power headroom used")
        return power_only
    return min(figure, power_only)


def _solve(room: EnergyRoom, down_kw: np.ndarray, need_kw: np.ndarray) -> float | None:
    n_vehicles, n_window = room.pause_kw.shape
    n_other = room.catch_up_kw.shape[1]
    dt_h = room.step_hours
    # columns: X, then p[i,k], q[i,k] (vehicle-major), then c[i,j]
    p0, q0 = 1, 1 + n_vehicles * n_window
    c0 = q0 + n_vehicles * n_window
    lower = np.zeros(c0 + n_vehicles * n_other)
    upper = np.concatenate(
        [[0.0], room.pause_kw.ravel(), room.discharge_kw.ravel(), room.catch_up_kw.ravel()]
    )
    lower[0], upper[0] = -highspy.kHighsInf, highspy.kHighsInf
    upper = np.maximum(upper, 0.0)
    rows: list[tuple[list[int], list[float], float, float]] = []
    for k in range(n_window):
        cols = [p0 + i * n_window + k for i in range(n_vehicles)] + [
            q0 + i * n_window + k for i in range(n_vehicles)
        ]
        rows.append(([0, *cols], [-1.0] + [1.0] * len(cols), float(need_kw[k]), highspy.kHighsInf))
        rows.append((cols, [1.0] * len(cols), -highspy.kHighsInf, max(float(down_kw[k]), 0.0)))
    for j in range(n_other):
        cols = [c0 + i * n_other + j for i in range(n_vehicles)]
        rows.append((cols, [1.0] * n_vehicles, -highspy.kHighsInf, max(float(room.site_room_kw[j]), 0.0)))
    for i in range(n_vehicles):
        back = 1.0 / (room.charge_efficiency[i] * room.discharge_efficiency[i])
        pauses = [p0 + i * n_window + k for k in range(n_window)]
        discharges = [q0 + i * n_window + k for k in range(n_window)]
        catch_ups = [c0 + i * n_other + j for j in range(n_other)]
        rows.append(
            (
                pauses + discharges + catch_ups,
                [dt_h] * n_window + [dt_h * back] * n_window + [-dt_h] * n_other,
                -highspy.kHighsInf,
                max(float(room.spare_kwh[i]), 0.0),
            )
        )
        rows.append(
            (
                discharges,
                [dt_h / room.discharge_efficiency[i]] * n_window,
                -highspy.kHighsInf,
                max(float(room.reserve_kwh[i]), 0.0),
            )
        )

    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    cost = np.zeros(len(lower))
    cost[0] = -1.0  # maximise X
    highs.addVars(len(lower), lower, upper)
    highs.changeColsCost(len(cost), np.arange(len(cost), dtype=np.int32), cost)
    starts: list[int] = []
    indices: list[int] = []
    values: list[float] = []
    for cols, coefficients, _, _ in rows:
        starts.append(len(indices))
        indices.extend(cols)
        values.extend(coefficients)
    highs.addRows(
        len(rows),
        np.array([row[2] for row in rows]),
        np.array([row[3] for row in rows]),
        len(indices),
        np.array(starts, dtype=np.int32),
        np.array(indices, dtype=np.int32),
        np.array(values, dtype=float),
    )
    highs.run()
    if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    return float(highs.getSolution().col_value[0])


# ------------------------------------------------------------------------------------ from a plan


def planned_steps(
    plan: StoredPlan, scenario: Scenario, start: dt.datetime, end: dt.datetime, now: dt.datetime
) -> PlannedSteps:
    """``plan`` (made from ``scenario``) over the window ``[start, end)`` as seen at ``now``: its steps
    that overlap the window from ``now`` on, and the energy room of its vehicles around them."""
    problem = build_problem(scenario)
    frame = flexibility_frame(plan, scenario, problem)
    starts = plan.index
    begin = max(pd.Timestamp(start), pd.Timestamp(now))
    window = np.asarray((starts < pd.Timestamp(end)) & (starts + plan.step > begin))
    left = np.clip(((starts + plan.step) - pd.Timestamp(now)) / plan.step, 0.0, 1.0)
    other = ~window & (np.asarray(left) > 0)
    vehicles = np.array([vehicle.power_kw for vehicle in plan.vehicles]).reshape(-1, plan.n_steps)
    return PlannedSteps(
        import_kw=plan.site_import_kw[window],
        down_kw=frame["down_kw"].to_numpy(dtype=float)[window],
        vehicles_kw=vehicles.sum(axis=0)[window],
        energy=_energy_room(plan, problem, window, other, np.asarray(left, dtype=float)),
    )


def _energy_room(
    plan: StoredPlan, problem: Problem, window: np.ndarray, other: np.ndarray, left: np.ndarray
) -> EnergyRoom:
    n, dt_h = plan.n_steps, plan.step_hours
    rows: dict[str, list[np.ndarray | float]] = {
        name: [] for name in ("pause", "discharge", "catch_up", "spare", "reserve", "eta_c", "eta_d")
    }
    first_window = int(np.argmax(window)) if window.any() else 0
    for spec in problem.vehicles:
        planned = plan.vehicle(spec.id)
        power = planned.power_kw[:n] if planned is not None else np.zeros(n)
        plugged = np.zeros(n, dtype=bool)
        plugged[spec.first_step : min(spec.end_step, n)] = True
        energy = np.zeros(n + 1)
        energy[spec.first_step] = spec.energy_initial_kwh
        for k in range(spec.first_step, min(spec.end_step, n)):
            charged, discharged = max(power[k], 0.0), max(-power[k], 0.0)
            gained = spec.charge_efficiency * charged - discharged / spec.discharge_efficiency
            energy[k + 1] = energy[k] + dt_h * gained
        at_start = energy[:n]
        acceptance = np.array([spec.followable_charge_kw(e, dt_h) for e in at_start])
        end = min(spec.end_step, n)
        rows["pause"].append(np.where(plugged, np.maximum(power, 0.0), 0.0)[window])
        rows["discharge"].append(
            np.where(plugged, np.maximum(spec.max_discharge_kw - np.maximum(-power, 0.0), 0.0), 0.0)[window]
        )
        rows["catch_up"].append((np.where(plugged, np.maximum(acceptance - power, 0.0), 0.0) * left)[other])
        rows["spare"].append(max(energy[end] - spec.terminal_energy_kwh, 0.0) / spec.charge_efficiency)
        plugged_at = max(first_window, spec.first_step)
        rows["reserve"].append(max(energy[min(plugged_at, end)] - spec.min_energy_kwh, 0.0))
        rows["eta_c"].append(spec.charge_efficiency)
        rows["eta_d"].append(spec.discharge_efficiency)
    n_window, n_other = int(window.sum()), int(other.sum())

    def matrix(name: str, width: int) -> np.ndarray:
        return np.array(rows[name], dtype=float).reshape(len(problem.vehicles), width)

    site_room = np.maximum(problem.import_limit_kw - plan.site_import_kw, 0.0) * left
    return EnergyRoom(
        step_hours=dt_h,
        pause_kw=matrix("pause", n_window),
        discharge_kw=matrix("discharge", n_window),
        catch_up_kw=matrix("catch_up", n_other),
        site_room_kw=site_room[other],
        spare_kwh=np.array(rows["spare"], dtype=float),
        reserve_kwh=np.array(rows["reserve"], dtype=float),
        charge_efficiency=np.array(rows["eta_c"], dtype=float),
        discharge_efficiency=np.array(rows["eta_d"], dtype=float),
    )


__all__ = ["EnergyRoom", "PlannedSteps", "held_kw", "planned_steps"]
