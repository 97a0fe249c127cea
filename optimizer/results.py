"""Typed outcome of a scheduling run (in the spirit of linopy's ``constants.py``).

A :class:`ScheduleResult` always holds a usable schedule: the solver's, or a heuristic one marked as
such. Tables are pandas: ``schedule`` (vehicle × plugged step), ``site`` (per step) and ``vehicles``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from optimizer.evaluation import Evaluation
from optimizer.problem import Problem


class SolveStatus(enum.StrEnum):
    OPTIMAL = "optimal"
    """Solved to within the requested MIP gap."""
    FEASIBLE = "feasible"
    """Stopped by the time limit with a feasible schedule; ``gap`` says how far from optimal it may be."""
    HEURISTIC = "heuristic"
    """Made by a rule (a baseline policy, or the fallback when the solver found no schedule)."""

    @property
    def is_ok(self) -> bool:
        """The solver's own schedule (optimal, or feasible within its gap)."""
        return self in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE)


@dataclass
class ScheduleResult:
    policy: str
    status: SolveStatus
    problem: Problem
    charge_kw: np.ndarray
    """Grid-side charge power, vehicle × step [kW]."""
    discharge_kw: np.ndarray
    """Grid-side discharge power, vehicle × step [kW]."""
    evaluation: Evaluation
    objective: float
    bound: float | None = None
    gap: float | None = None
    build_seconds: float = 0.0
    solve_seconds: float = 0.0
    message: str = ""
    model_costs: dict[str, float] = field(default_factory=dict)
    """Cost terms as the solver valued them (empty for heuristics); equal to ``costs`` at the optimum.
    Inside a MIP gap a DR or V2G delivery binary may value a delivery below what the schedule earns."""

    @property
    def is_ok(self) -> bool:
        return self.status.is_ok

    @property
    def is_heuristic(self) -> bool:
        return self.status is SolveStatus.HEURISTIC

    @property
    def costs(self) -> dict[str, float]:
        return self.evaluation.costs

    @property
    def total_cost(self) -> float:
        return self.evaluation.total_cost

    @property
    def peak_import_kw(self) -> float:
        return self.evaluation.peak_import_kw

    @property
    def energy_requested_kwh(self) -> float:
        return sum(o.requested_kwh for o in self.evaluation.vehicles)

    @property
    def energy_delivered_kwh(self) -> float:
        """Energy delivered towards targets, never counting more than was requested per vehicle."""
        return sum(min(max(o.delivered_kwh, 0.0), o.requested_kwh) for o in self.evaluation.vehicles)

    @property
    def targets_met(self) -> int:
        return sum(o.reason == "met" for o in self.evaluation.vehicles)

    @property
    def schedule(self) -> pd.DataFrame:
        """One row per vehicle and plugged step: vehicle_id, start, charge_kw, discharge_kw, energy_kwh."""
        rows_i, rows_t = [], []
        for i, v in enumerate(self.problem.vehicles):
            rows_t.append(np.arange(v.first_step, v.end_step))
            rows_i.append(np.full(v.end_step - v.first_step, i))
        i_idx = np.concatenate(rows_i) if rows_i else np.array([], dtype=int)
        t_idx = np.concatenate(rows_t) if rows_t else np.array([], dtype=int)
        ids = np.array([v.id for v in self.problem.vehicles], dtype=object)
        return pd.DataFrame(
            {
                "vehicle_id": ids[i_idx] if len(ids) else np.array([], dtype=object),
                "start": self.problem.index[t_idx],
                "charge_kw": self.charge_kw[i_idx, t_idx],
                "discharge_kw": self.discharge_kw[i_idx, t_idx],
                "energy_kwh": self.evaluation.energy_kwh[i_idx, t_idx],
            }
        )

    @property
    def site(self) -> pd.DataFrame:
        p = self.problem
        return pd.DataFrame(
            {
                "start": p.index,
                "import_kw": self.evaluation.import_kw,
                "export_kw": self.evaluation.export_kw,
                "base_kw": p.base_load_kw,
                "generation_kw": p.generation_kw,
                "ev_charge_kw": self.charge_kw.sum(axis=0),
                "ev_discharge_kw": self.discharge_kw.sum(axis=0),
                "import_price": p.import_price,
                "export_price": p.export_price,
            }
        )

    @property
    def vehicles(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "vehicle_id": o.id,
                    "requested_kwh": o.requested_kwh,
                    "delivered_kwh": o.delivered_kwh,
                    "unmet_kwh": o.unmet_kwh,
                    "reason": o.reason,
                }
                for o in self.evaluation.vehicles
            ],
            columns=["vehicle_id", "requested_kwh", "delivered_kwh", "unmet_kwh", "reason"],
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: status, solver figures, energy, costs by term, per-vehicle outcome."""
        return {
            "policy": self.policy,
            "status": self.status.value,
            "message": self.message,
            "objective": self.objective,
            "bound": self.bound,
            "gap": self.gap,
            "build_seconds": self.build_seconds,
            "solve_seconds": self.solve_seconds,
            "currency": self.problem.currency,
            "peak_import_kw": self.peak_import_kw,
            "billed_demand_kw": {
                charge.name: peak
                for charge, peak in zip(
                    self.problem.demand_charges, self.evaluation.demand_peaks_kw, strict=True
                )
            },
            "energy_requested_kwh": self.energy_requested_kwh,
            "energy_delivered_kwh": self.energy_delivered_kwh,
            "targets_met": self.targets_met,
            "vehicle_count": len(self.problem.vehicles),
            "total_cost": self.total_cost,
            "cost": dict(self.costs),
            "dr_events": {
                e.id: {"delivered_kwh": d, "shortfall_kwh": s}
                for e, d, s in zip(
                    self.problem.dr_events,
                    self.evaluation.dr_delivered_kwh,
                    self.evaluation.dr_shortfall_kwh,
                    strict=True,
                )
            },
            "v2g_dispatches": {
                d.id: {"delivered_kwh": x, "shortfall_kwh": s}
                for d, x, s in zip(
                    self.problem.dispatches,
                    self.evaluation.v2g_delivered_kwh,
                    self.evaluation.v2g_shortfall_kwh,
                    strict=True,
                )
            },
            "vehicles": {
                o.id: {"delivered_kwh": o.delivered_kwh, "unmet_kwh": o.unmet_kwh, "reason": o.reason}
                for o in self.evaluation.vehicles
            },
        }
