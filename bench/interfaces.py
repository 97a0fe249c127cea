"""Which way of handing the Pyomo model to HiGHS is fastest: appsi, pyomo.contrib.solver, or an MPS file.

The same synthetic depot days as ``bench/scale.py`` (96 steps of 15 min, half of the vehicles V2G, a DR
event and a demand charge) are scheduled by :func:`optimizer.optimize` once per interface of
:mod:`optimizer.solve`, all with the same HiGHS settings:

- ``appsi``: ``pyomo.contrib.appsi.solvers.Highs``, the persistent interface on highspy;
- ``contrib``: ``pyomo.contrib.solver`` ``highs``, the newer persistent interface on highspy;
- ``file``: Pyomo writes an MPS file, highspy reads and solves it.

Build is the Pyomo model (the same for all three); hand-over + solve is everything after it. The three
objectives must agree within the MIP gap, or the script fails.

    python bench/interfaces.py [--sizes 50 200] [--time-limit 60] [--seed 0] [--repeat 1]
"""

from __future__ import annotations

import argparse
from typing import get_args

from report import machine, make_console, percent, print_tables, seconds

from optimizer import ScheduleResult, SolverOptions, build_problem, optimize
from optimizer.solve import Interface
from workbench.synthetic import generate_depot_day

INTERFACES: tuple[Interface, ...] = get_args(Interface)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--time-limit", type=float, default=60.0, help="HiGHS time limit per solve [s]")
    parser.add_argument("--mip-gap", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per interface; the fastest is shown")
    args = parser.parse_args()
    console = make_console()
    console.print(f"machine: {machine()}")

    rows, disagreements = [], []
    for size in args.sizes:
        problem = build_problem(generate_depot_day(size, args.seed, v2g_share=0.5, dr_event=True))
        results: dict[str, ScheduleResult] = {}
        for interface in INTERFACES:
            options = SolverOptions(time_limit=args.time_limit, mip_gap=args.mip_gap, interface=interface)
            runs = [optimize(problem, options) for _ in range(args.repeat)]
            results[interface] = min(runs, key=lambda r: r.build_seconds + r.solve_seconds)
        fastest = min(results, key=lambda name: results[name].build_seconds + results[name].solve_seconds)
        objectives = [r.objective for r in results.values()]
        spread = max(objectives) - min(objectives)
        allowed = args.mip_gap * max(abs(x) for x in objectives) + 1e-6
        if spread > allowed:
            disagreements.append(f"{size} vehicles: objectives {objectives} differ by {spread:.3g}")
        for interface, result in results.items():
            rows.append(
                [
                    str(size),
                    interface + (" (fastest)" if interface == fastest else ""),
                    seconds(result.build_seconds),
                    seconds(result.solve_seconds),
                    seconds(result.build_seconds + result.solve_seconds),
                    f"{result.objective:,.6f}",
                    percent(result.gap),
                    result.status.value,
                ]
            )
        console.print(
            f"  {size:>5} vehicles: objectives differ by {spread:.2e} (allowed {allowed:.2e}); "
            f"fastest {fastest}"
        )

    header = ["vehicles", "interface", "build s", "hand-over + solve s", "total s", "objective", "gap"]
    header.append("status")
    title = f"Pyomo -> HiGHS interfaces, depot day with 50 % V2G, DR event, demand charge (seed {args.seed})"
    print_tables(console, title, header, rows)
    if disagreements:
        raise SystemExit("interfaces disagree: " + "; ".join(disagreements))


if __name__ == "__main__":
    main()
