"""Scheduling maths for one site: inputs, the Pyomo/HiGHS model, baseline policies, results.

Pure computation: no files, sockets or clocks beyond its inputs and outputs.

>>> from optimizer import Scenario, schedule
>>> result = schedule(Scenario.model_validate(data))        # doctest: +SKIP
>>> result.status, result.total_cost, result.schedule.head()  # doctest: +SKIP
"""

from optimizer.errors import OptimizerError, ScenarioError, SolverUnavailableError
from optimizer.evaluation import Evaluation, evaluate
from optimizer.problem import Problem, build_problem
from optimizer.results import ScheduleResult, SolveStatus
from optimizer.scenario import (
    ChargeTaper,
    DemandCharge,
    DrEvent,
    Evse,
    Scenario,
    Site,
    Tariff,
    TimeWindow,
    V2gDispatch,
    VehicleSession,
)
from optimizer.solve import POLICIES, SolverOptions, baseline, optimize, schedule

__all__ = [
    "POLICIES",
    "ChargeTaper",
    "DemandCharge",
    "DrEvent",
    "Evaluation",
    "Evse",
    "OptimizerError",
    "Problem",
    "Scenario",
    "ScenarioError",
    "ScheduleResult",
    "Site",
    "SolveStatus",
    "SolverOptions",
    "SolverUnavailableError",
    "Tariff",
    "TimeWindow",
    "V2gDispatch",
    "VehicleSession",
    "baseline",
    "build_problem",
    "evaluate",
    "optimize",
    "schedule",
]
