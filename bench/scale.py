"""How solve time grows with the fleet: the Pyomo model against the same model built directly in HiGHS.

One synthetic depot day per size (``workbench.synthetic.generate_depot_day``): 96 steps of 15 min, half
of the vehicles V2G-capable with consent, one DR event (with it a V2G export dispatch) and a demand
charge. Each is scheduled twice with the same HiGHS settings:

- ``pyomo``: :func:`optimizer.optimize` (build the Pyomo model, hand it to HiGHS through appsi, solve);
- ``highspy``: ``bench/highspy_direct.py``, the same variables, rows and objective from numpy arrays.

Build is the model construction from the :class:`optimizer.Problem`; solve is everything after it
(for Pyomo the hand-over to HiGHS included). Targets: 200 vehicles to <= 0.5 % gap in <= 5 s and 1,000
in <= 30 s, build plus solve. On the smallest size the two objectives must agree within the gap, and
the two models must have the same numbers of columns, rows and binaries.

    python bench/scale.py [--sizes 50 200 1000] [--time-limit 60] [--seed 0] [--repeat 1]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyomo.environ as pyo
from highspy_direct import solve_direct
from report import machine, make_console, percent, print_tables, seconds
from rich.console import Console

from optimizer import Problem, SolverOptions, build_problem, optimize
from optimizer.model import build_model
from workbench.synthetic import generate_depot_day

TARGET_SECONDS = {200: 5.0, 1000: 30.0}
TARGET_GAP = 0.005


@dataclass
class Run:
    size: int
    builder: str
    build_seconds: float
    solve_seconds: float
    objective: float
    gap: float | None
    status: str

    @property
    def total_seconds(self) -> float:
        return self.build_seconds + self.solve_seconds

    def target(self) -> str:
        limit = TARGET_SECONDS.get(self.size)
        if limit is None:
            return "-"
        met = self.total_seconds <= limit and self.gap is not None and self.gap <= TARGET_GAP + 1e-12
        return f"{'met' if met else 'MISSED'} (<= {limit:g} s)"

    def row(self) -> list[str]:
        objective = "n/a" if math.isnan(self.objective) else f"{self.objective:,.3f}"
        return [
            str(self.size),
            self.builder,
            seconds(self.build_seconds),
            seconds(self.solve_seconds),
            seconds(self.total_seconds),
            percent(self.gap),
            objective,
            self.status,
            self.target(),
        ]


def depot_problem(size: int, seed: int, fresh_period: bool) -> Problem:
    """The benchmark day; ``fresh_period``: the first day of a billing period (no peak reached yet)."""
    scenario = generate_depot_day(size, seed, v2g_share=0.5, dr_event=True)
    if fresh_period:
        charges = [c.model_copy(update={"peak_already_kw": 0.0}) for c in scenario.tariff.demand_charges]
        tariff = scenario.tariff.model_copy(update={"demand_charges": charges})
        scenario = scenario.model_copy(update={"tariff": tariff})
    return build_problem(scenario)


def run_pyomo(size: int, options: SolverOptions, seed: int, fresh_period: bool) -> Run:
    problem = depot_problem(size, seed, fresh_period)
    result = optimize(problem, options)
    return Run(
        size,
        "pyomo",
        result.build_seconds,
        result.solve_seconds,
        result.objective,
        result.gap,
        result.status.value,
    )


def run_direct(size: int, options: SolverOptions, seed: int, fresh_period: bool) -> Run:
    problem = depot_problem(size, seed, fresh_period)
    result = solve_direct(problem, options)
    return Run(
        size,
        "highspy",
        result.build_seconds,
        result.solve_seconds,
        result.objective,
        result.gap,
        result.status.lower(),
    )


def best_of(repeat: int, make: Callable[[int, SolverOptions, int, bool], Run], *args: Any) -> Run:
    return min((make(*args) for _ in range(repeat)), key=lambda run: run.total_seconds)


def check_same_model(
    size: int, seed: int, fresh_period: bool, options: SolverOptions, console: Console
) -> bool:
    """Same objective within the gap, same counts of columns, rows and binaries."""
    problem = depot_problem(size, seed, fresh_period)
    model = build_model(problem)
    pyomo_counts = (
        model.nvariables(),
        model.nconstraints(),
        sum(1 for v in model.component_data_objects(pyo.Var) if v.is_binary()),
    )
    pyomo_result = optimize(problem, options)
    direct = solve_direct(problem, options)
    direct_counts = (direct.n_columns, direct.n_rows, direct.n_binaries)
    difference = abs(pyomo_result.objective - direct.objective)
    allowed = options.mip_gap * max(abs(pyomo_result.objective), abs(direct.objective)) + 1e-6
    same = difference <= allowed and pyomo_counts == direct_counts
    console.print(
        f"[{'green' if same else 'red'}]{size} vehicles: objectives {pyomo_result.objective:.6f} (pyomo) and "
        f"{direct.objective:.6f} (highspy) differ by {difference:.2e} (allowed {allowed:.2e}); "
        f"columns, rows, binaries {pyomo_counts} and {direct_counts}; the highspy schedule priced by "
        f"optimizer.evaluate: {direct.evaluated_objective:.6f}[/]"
    )
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--time-limit", type=float, default=60.0, help="HiGHS time limit per solve [s]")
    parser.add_argument("--mip-gap", type=float, default=TARGET_GAP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the fastest is shown")
    parser.add_argument(
        "--fresh-period",
        action="store_true",
        help="first day of the billing period: the demand charge applies from 0 kW (the harder case)",
    )
    args = parser.parse_args()
    console = make_console()
    console.print(f"machine: {machine()}")
    options = SolverOptions(time_limit=args.time_limit, mip_gap=args.mip_gap)

    same = check_same_model(min(args.sizes), args.seed, args.fresh_period, options, console)
    runs = []
    for size in args.sizes:
        for make in (run_pyomo, run_direct):
            run = best_of(args.repeat, make, size, options, args.seed, args.fresh_period)
            console.print(f"  {size:>5} vehicles, {run.builder:<7}: {run.total_seconds:6.2f} s, {run.status}")
            runs.append(run)

    header = ["vehicles", "model", "build s", "solve s", "total s", "gap", "objective", "status", "target"]
    period = "first day of the billing period" if args.fresh_period else "mid billing period"
    title = f"Depot day, 96 x 15 min, 50 % V2G, DR event, demand charge, {period} (seed {args.seed})"
    print_tables(console, title, header, [run.row() for run in runs])
    if not same:
        raise SystemExit("the Pyomo and highspy models disagree: see above")


if __name__ == "__main__":
    main()
