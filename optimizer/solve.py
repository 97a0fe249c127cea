"""Solve the scheduling model with HiGHS and turn the outcome into a :class:`ScheduleResult`.

Three ways to hand the Pyomo model to HiGHS are supported; ``bench/interfaces.py`` measures them
(figures in BENCHMARKS.md) and the fastest, ``appsi``, is the default:

- ``appsi``: ``pyomo.contrib.appsi.solvers.Highs``, the persistent interface on highspy;
- ``contrib``: ``pyomo.contrib.solver`` ``highs``, the newer solver interface on highspy;
- ``file``: write an MPS file with Pyomo and read it into highspy (the classic shell-out route).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pyomo.environ as pyo
from pyomo.common.gc_manager import PauseGC

from optimizer.errors import SolverUnavailableError
from optimizer.evaluation import evaluate
from optimizer.model import build_model
from optimizer.policies import POLICIES, run_policy
from optimizer.problem import Problem, build_problem
from optimizer.results import ScheduleResult, SolveStatus
from optimizer.scenario import Scenario

log = logging.getLogger(__name__)

Interface = Literal["appsi", "contrib", "file"]


@dataclass
class SolverOptions:
    time_limit: float = 60.0
    """Wall-clock limit of the solve [s]; on time-out the best feasible schedule is returned."""
    mip_gap: float = 0.005
    """Relative MIP gap at which the solver stops (0.005 = 0.5 %)."""
    interface: Interface = "appsi"
    threads: int | None = None
    verbose: bool = False


def highs_settings(options: SolverOptions) -> dict[str, bool | int | float]:
    """HiGHS options every interface passes on, so that all three solve exactly the same way.

    ``mip_heuristic_run_zi_round``: in the LP relaxation the exclusivity binaries ``is_charging`` are
    fractional wherever a vehicle charges or discharges below its limit, yet free to move between
    ``charge / P_c`` and ``1 - discharge / P_d``. ZI rounding (off by default in HiGHS 1.16) shifts them
    to 0 or 1 at no cost and finds an incumbent at the root. On the MILP with all its binaries (see
    :func:`_solve_exclusivity_relaxed_first` for when that is solved) HiGHS then takes 0.4 s instead of
    2.5 s for 200 V2G vehicles and 4 s instead of 30 s for 1,000.
    """
    settings: dict[str, bool | int | float] = {
        "time_limit": float(options.time_limit),
        "mip_rel_gap": float(options.mip_gap),
        "mip_heuristic_run_zi_round": True,
        # HiGHS prints its log only when asked: pyomo's interfaces no longer capture the process's
        # output around a solve (see keep_process_streams), so the log must be off at the source.
        "output_flag": bool(options.verbose),
    }
    if options.threads:
        settings["threads"] = int(options.threads)
    return settings


@dataclass
class SolverOutcome:
    has_solution: bool
    optimal: bool
    objective: float | None
    bound: float | None
    message: str


def schedule(
    scenario: Scenario | Problem,
    policy: str = "milp",
    *,
    time_limit: float = 60.0,
    mip_gap: float = 0.005,
    interface: Interface = "appsi",
) -> ScheduleResult:
    """Schedule ``scenario`` with ``policy`` (``milp`` or one of the baselines).

    Raises :class:`~optimizer.errors.ScenarioError` for impossible inputs before anything is built.
    """
    problem = scenario if isinstance(scenario, Problem) else build_problem(scenario)
    if policy == "milp":
        return optimize(problem, SolverOptions(time_limit=time_limit, mip_gap=mip_gap, interface=interface))
    return baseline(problem, policy)


def baseline(problem: Problem, policy: str) -> ScheduleResult:
    started = time.perf_counter()
    charge, discharge = run_policy(problem, policy)
    seconds = time.perf_counter() - started
    evaluation = evaluate(problem, charge, discharge)
    return ScheduleResult(
        policy=policy,
        status=SolveStatus.HEURISTIC,
        problem=problem,
        charge_kw=charge,
        discharge_kw=discharge,
        evaluation=evaluation,
        objective=evaluation.objective,
        solve_seconds=seconds,
        message=f"baseline policy {policy!r}",
    )


def optimize(problem: Problem, options: SolverOptions | None = None) -> ScheduleResult:
    """Build and solve the MILP; never return an empty schedule.

    With no feasible schedule from the solver (time-out before the first incumbent, solver error),
    the earliest-deadline-first policy is returned, marked :attr:`SolveStatus.HEURISTIC`. So it is when
    the time limit stops the solver with an incumbent that is worse than that policy's schedule (early
    incumbents can be); its ``gap`` is then measured against the solver's bound.
    """
    options = options or SolverOptions()
    started = time.perf_counter()
    model = build_model(problem)
    build_seconds = time.perf_counter() - started

    outcome, solve_seconds = solve_model(model, options, problem.name)

    if not outcome.has_solution:
        fallback = fallback_result(
            problem, f"{outcome.message}; earliest-deadline-first schedule returned instead"
        )
        fallback.build_seconds, fallback.solve_seconds = build_seconds, solve_seconds
        log.warning("no feasible MILP schedule for %s: %s", problem.name, fallback.message)
        return fallback

    charge, discharge = vehicle_powers(model, problem)
    evaluation = evaluate(problem, charge, discharge)
    objective = outcome.objective if outcome.objective is not None else pyo.value(model.total_cost)
    if not outcome.optimal:
        fallback = fallback_result(problem, "")
        if fallback.objective < evaluation.objective - 1e-9 * max(1.0, abs(evaluation.objective)):
            fallback.message = (
                f"{outcome.message} with an incumbent of {objective:.6g}; the earliest-deadline-first "
                f"schedule ({fallback.objective:.6g}) is better and returned instead"
            )
            fallback.bound, fallback.gap = outcome.bound, relative_gap(fallback.objective, outcome.bound)
            fallback.build_seconds, fallback.solve_seconds = build_seconds, solve_seconds
            log.warning("poor MILP incumbent for %s: %s", problem.name, fallback.message)
            return fallback
    gap = relative_gap(objective, outcome.bound)
    return ScheduleResult(
        policy="milp",
        status=SolveStatus.OPTIMAL if outcome.optimal else SolveStatus.FEASIBLE,
        problem=problem,
        charge_kw=charge,
        discharge_kw=discharge,
        evaluation=evaluation,
        objective=float(objective),
        bound=outcome.bound,
        gap=gap,
        build_seconds=build_seconds,
        solve_seconds=solve_seconds,
        message=outcome.message,
        model_costs={name: float(pyo.value(term)) for name, term in model.cost_terms.items()},
    )


def solve_model(model: pyo.ConcreteModel, options: SolverOptions, name: str) -> tuple[SolverOutcome, float]:
    """Solve a built model (exclusivity relaxed first); the outcome and the seconds it took. A solver
    failure other than a missing solver becomes an outcome without a solution, logged with ``name``."""
    started = time.perf_counter()
    try:
        # Handing the model over and loading the solution touch every variable and constraint: no
        # garbage collection meanwhile (see build_model).
        with PauseGC():
            outcome = _solve_exclusivity_relaxed_first(model, options)
    except SolverUnavailableError:
        raise
    except Exception as exc:  # the solver failing must not leave a site without a schedule
        log.exception("HiGHS failed on %s", name)
        outcome = SolverOutcome(False, False, None, None, f"solver error: {exc}")
    return outcome, time.perf_counter() - started


def _solve_exclusivity_relaxed_first(model: pyo.ConcreteModel, options: SolverOptions) -> SolverOutcome:
    """Solve with ``is_charging`` relaxed to [0, 1]; put the binaries back only if that was not enough.

    The relaxation's optimum is a lower bound of the MILP's. Where its schedule never charges and
    discharges a vehicle in the same step, ``is_charging = 1`` where it charges and ``0`` where it
    discharges satisfies ``ev_charge_when_charging`` and ``ev_discharge_when_not_charging`` at the
    same objective (``is_charging`` costs nothing): the rounded schedule is feasible for the MILP, and
    the relaxation's bound and gap hold for it. Charging and discharging at once only pays where
    energy is worth burning (negative prices), and cycling loses energy and wears the battery
    otherwise, so the relaxation almost always suffices. It leaves HiGHS only the few binaries of the
    site and of the DR and V2G commitments to branch on: on a day whose demand charge is billed from
    zero, 200 vehicles (half V2G) reach a 0.5 % gap in about 15 s instead of 3.8 % after 30 s. Where
    the relaxed schedule does charge and discharge at once, the MILP is solved with the binaries, in
    the time that is left.
    """
    solve = _SOLVERS[options.interface]
    # The model, or every site's block of a portfolio model (optimizer.portfolio), with V2G vehicles.
    sites = [block for block in model.block_data_objects() if block.component("is_charging") is not None]
    exclusive = [var for block in sites for var in block.is_charging.values()]
    if not exclusive:
        return solve(model, options)
    started = time.perf_counter()
    for var in exclusive:
        var.domain = pyo.UnitInterval
    try:
        outcome = solve(model, options)
    finally:
        for var in exclusive:
            var.domain = pyo.Binary
    if not outcome.has_solution or all(_round_exclusivity(block) for block in sites):
        return outcome
    left = max(0.0, options.time_limit - (time.perf_counter() - started))
    log.info("%s charges and discharges at once without the binaries: solving the MILP", model.name)
    return solve(model, replace(options, time_limit=left))


def _round_exclusivity(site: pyo.Block, tolerance_kw: float = 1e-6) -> bool:
    """Set ``is_charging`` to 0 or 1 from the loaded powers; False if a vehicle charges and discharges."""
    charge, discharge = site.charge_kw, site.discharge_kw
    rounded = []
    for index, var in site.is_charging.items():
        charging = (charge[index].value or 0.0) > tolerance_kw
        discharging = (discharge[index].value or 0.0) > tolerance_kw
        if charging and discharging:
            return False
        rounded.append((var, 1.0 if charging else 0.0 if discharging else float(round(var.value or 0.0))))
    for var, value in rounded:
        var.set_value(value)
    return True


def fallback_result(problem: Problem, message: str) -> ScheduleResult:
    """The earliest-deadline-first schedule, reported as what ``policy="milp"`` returned."""
    fallback = baseline(problem, "edf")
    fallback.policy, fallback.message = "milp", message
    return fallback


def relative_gap(objective: float, bound: float | None) -> float | None:
    if bound is None or not math.isfinite(bound):
        return None
    return abs(objective - bound) / max(abs(objective), 1e-9) if abs(objective - bound) > 1e-9 else 0.0


def vehicle_powers(site: pyo.Block, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Charge and discharge [kW], vehicle × step, from the model (or portfolio block) of ``problem``."""
    shape = (len(problem.vehicles), problem.n_steps)
    charge, discharge = np.zeros(shape), np.zeros(shape)
    for (i, t), var in site.charge_kw.items():
        charge[i, t] = var.value or 0.0
    for (i, t), var in site.discharge_kw.items():
        discharge[i, t] = var.value or 0.0
    # Clean solver round-off so the returned schedule respects its bounds exactly.
    limits_c = np.array([v.max_charge_kw for v in problem.vehicles])[:, None] if shape[0] else 0.0
    limits_d = np.array([v.max_discharge_kw for v in problem.vehicles])[:, None] if shape[0] else 0.0
    return np.clip(charge, 0.0, limits_c), np.clip(discharge, 0.0, limits_d)


@contextlib.contextmanager
def _streams_left_alone(*_args: object, **_kwargs: object) -> Iterator[None]:
    yield None


def keep_process_streams() -> None:
    """Stop pyomo's HiGHS interfaces from taking over the process's output while they solve.

    Both wrap every solve in ``pyomo.common.tee.capture_output(..., capture_fd=True)``, which swaps
    ``sys.stdout``/``sys.stderr`` and redirects file descriptors 1 and 2 for the whole process until
    the solve ends. A service solves in worker threads: every other thread's prints and log lines
    then go into that capture, and a print that races its end hits a closed file ("ValueError: I/O
    operation on closed file"; measured: 46,218 of 46,520 prints failed while a thread solved, and
    ``fleetgrid aggregator`` died at start-up). HiGHS's own output is switched by its ``output_flag``
    option (:func:`highs_settings`), so nothing is lost by not capturing it.
    """
    for name in ("pyomo.contrib.appsi.solvers.highs", "pyomo.contrib.solver.solvers.highs"):
        with contextlib.suppress(ImportError):
            setattr(importlib.import_module(name), "capture_output", _streams_left_alone)  # noqa: B010


def _solve_appsi(model: pyo.ConcreteModel, options: SolverOptions) -> SolverOutcome:
    from pyomo.contrib.appsi.base import TerminationCondition
    from pyomo.contrib.appsi.solvers import Highs

    keep_process_streams()

    # only_child_vars: take every variable from the model in one pass instead of collecting each
    # constraint's variables again (the model holds all its variables, so nothing is missed).
    solver = Highs(only_child_vars=True)
    if not solver.available():
        raise SolverUnavailableError("highspy is not installed: pip install highspy")
    solver.config.time_limit = options.time_limit
    solver.config.mip_gap = options.mip_gap
    solver.config.load_solution = False
    solver.config.stream_solver = options.verbose
    solver.highs_options = highs_settings(options)
    results = solver.solve(model)
    condition = results.termination_condition
    has_solution = results.best_feasible_objective is not None and math.isfinite(
        results.best_feasible_objective
    )
    if has_solution:
        results.solution_loader.load_vars()
    return SolverOutcome(
        has_solution=has_solution,
        optimal=condition == TerminationCondition.optimal,
        objective=results.best_feasible_objective if has_solution else None,
        bound=results.best_objective_bound,
        message=f"HiGHS (appsi): {condition.name}",
    )


def _solve_contrib(model: pyo.ConcreteModel, options: SolverOptions) -> SolverOutcome:
    from pyomo.contrib.solver.common.factory import SolverFactory
    from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition

    keep_process_streams()
    solver = SolverFactory("highs")
    if not solver.available():
        raise SolverUnavailableError("highspy is not installed: pip install highspy")
    results = solver.solve(
        model,
        time_limit=options.time_limit,
        rel_gap=options.mip_gap,
        threads=options.threads,
        tee=options.verbose,
        load_solutions=False,
        raise_exception_on_nonoptimal_result=False,
        solver_options=highs_settings(options),
    )
    has_solution = results.solution_status in (SolutionStatus.feasible, SolutionStatus.optimal)
    if has_solution:
        results.solution_loader.load_vars()
    condition = results.termination_condition
    return SolverOutcome(
        has_solution=has_solution,
        optimal=condition == TerminationCondition.convergenceCriteriaSatisfied,
        objective=results.incumbent_objective,
        bound=results.objective_bound,
        message=f"HiGHS (contrib): {condition.name}",
    )


def _solve_file(model: pyo.ConcreteModel, options: SolverOptions) -> SolverOutcome:
    import highspy

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.mps"
        _, symbol_map_id = model.write(str(path), format="mps", io_options={"symbolic_solver_labels": False})
        highs = highspy.Highs()
        highs.setOptionValue("output_flag", options.verbose)
        for name, value in highs_settings(options).items():
            highs.setOptionValue(name, value)
        highs.readModel(str(path))
        highs.run()
    status = highs.getModelStatus()
    info = highs.getInfo()
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    if has_solution:
        symbol_map = model.solutions.symbol_map[symbol_map_id]
        values = highs.getSolution().col_value
        lp = highs.getLp()
        for name, value in zip(lp.col_names_, values, strict=True):
            var = symbol_map.bySymbol.get(name)
            if var is not None:
                var.set_value(value, skip_validation=True)
    is_mip = info.mip_node_count >= 0
    bound = info.mip_dual_bound if is_mip else info.objective_function_value
    return SolverOutcome(
        has_solution=has_solution,
        optimal=status == highspy.HighsModelStatus.kOptimal,
        objective=None,
        bound=bound if math.isfinite(bound) else None,
        message=f"HiGHS (file): {highs.modelStatusToString(status)}",
    )


_SOLVERS = {"appsi": _solve_appsi, "contrib": _solve_contrib, "file": _solve_file}

__all__ = ["POLICIES", "Interface", "SolverOptions", "baseline", "optimize", "schedule"]
