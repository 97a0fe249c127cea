"""Rule-based policies on the same inputs as the MILP, for comparison and as a safe fallback.

All three charge only (no V2G), stop once a vehicle reaches its terminal target, never offer a vehicle
more than it can take for the whole step under its charge taper (``ev_charge_taper`` of
:mod:`optimizer.model`) and never exceed the site import limit given the inflexible load. They step
through time like a real controller would, seeing only the vehicles plugged in at that step:

- ``uncontrolled``: every vehicle at full power from arrival; at the site limit all are scaled down
  by the same factor (a dumb load-balancing panel);
- ``edf``: earliest deadline first; the headroom goes to the vehicle leaving soonest, then the next;
- ``round-robin``: the headroom is shared equally (water-filling), capped at each vehicle's limit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from optimizer.problem import Problem

Allocation = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]
"""(wanted kW, max kW, deadline step, headroom kW) of the vehicles plugged in -> allocated kW."""


def _uncontrolled(wanted: np.ndarray, _max: np.ndarray, _deadline: np.ndarray, headroom: float) -> np.ndarray:
    total = wanted.sum()
    return wanted if total <= headroom else wanted * (headroom / total)


def _edf(wanted: np.ndarray, _max: np.ndarray, deadline: np.ndarray, headroom: float) -> np.ndarray:
    allocated = np.zeros_like(wanted)
    for j in np.argsort(deadline, kind="stable"):
        allocated[j] = min(wanted[j], headroom)
        headroom -= allocated[j]
        if headroom <= 0:
            break
    return allocated


def _round_robin(wanted: np.ndarray, _max: np.ndarray, _deadline: np.ndarray, headroom: float) -> np.ndarray:
    allocated = np.zeros_like(wanted)
    active = wanted > 0
    while active.any() and headroom > 1e-12:
        share = headroom / active.sum()
        give = np.where(active, np.minimum(wanted - allocated, share), 0.0)
        allocated += give
        headroom -= give.sum()
        active &= allocated < wanted - 1e-12
    return allocated


POLICIES: dict[str, Allocation] = {
    "uncontrolled": _uncontrolled,
    "edf": _edf,
    "round-robin": _round_robin,
}


def run_policy(problem: Problem, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Charge and discharge power (vehicle × step) of a baseline ``policy``."""
    try:
        allocate = POLICIES[policy]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown policy {policy!r}; choose milp or one of {known}") from None
    vehicles = problem.vehicles
    n_v, n_t = len(vehicles), problem.n_steps
    charge = np.zeros((n_v, n_t))
    if not n_v:
        return charge, np.zeros((n_v, n_t))
    dt = problem.step_hours
    energy = np.array([v.energy_initial_kwh for v in vehicles])
    target = np.array([min(v.terminal_energy_kwh, v.capacity_kwh) for v in vehicles])
    efficiency = np.array([v.charge_efficiency for v in vehicles])
    max_kw = np.array([v.max_charge_kw for v in vehicles])
    # the taper's line P f + k (C - E), over (1 + k η Δt); no taper: P f = inf and k = 0
    full_kw = np.array([v.taper_full_kw for v in vehicles])
    slope = np.array([v.taper_slope_kw_per_kwh for v in vehicles])
    capacity = np.array([v.capacity_kwh for v in vehicles])
    coefficient = np.array([v.taper_charge_coefficient(problem.step_hours) for v in vehicles])
    first = np.array([v.first_step for v in vehicles])
    end = np.array([v.end_step for v in vehicles])
    headroom = np.maximum(problem.import_limit_kw - problem.net_base_kw, 0.0)
    for t in range(n_t):
        plugged = np.flatnonzero((first <= t) & (t < end))
        if not len(plugged):
            continue
        need_kw = np.maximum(target[plugged] - energy[plugged], 0.0) / (efficiency[plugged] * dt)
        line_kw = full_kw[plugged] + slope[plugged] * (capacity[plugged] - energy[plugged])
        taper_kw = np.maximum(line_kw / coefficient[plugged], 0.0)
        wanted = np.minimum(np.minimum(need_kw, max_kw[plugged]), taper_kw)
        allocated = allocate(wanted, max_kw[plugged], end[plugged], float(headroom[t]))
        allocated = np.clip(allocated, 0.0, wanted)
        charge[plugged, t] = allocated
        energy[plugged] += efficiency[plugged] * allocated * dt
    return charge, np.zeros((n_v, n_t))
