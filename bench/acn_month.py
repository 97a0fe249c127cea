"""The 954 Caltech ACN sessions of March 2019 under SCE TOU-EV-4, against published ACN-Sim results.

Whole month, 5-minute steps as in the data, no V2G, $15.51/kW on the month's highest 5-minute demand
(ACN-Sim bills the peak of its own 5-minute steps, so the demand interval is set to 5 minutes here to
compare like with like). Prints, for our offline LP, our online rolling horizon and uncontrolled
charging: peak kW, energy delivered %, energy cost and demand charge, next to the published figures.
Then the same month as SCE bills it, on 15-minute averages aligned to the clock: each run's billed
demand, costs, total against the offline optimum's, and wall-clock seconds.

    python bench/acn_month.py [--shared ../shared] [--no-online]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
import zoneinfo
from collections.abc import Callable
from pathlib import Path

import highspy
import pyomo
from rich.console import Console
from rich.table import Table

from market_adapters.acn import ACN_TIMEZONE, read_acn_sessions, scenario_from_acn
from market_adapters.tariffs import read_tou_tariff
from optimizer import Scenario, ScheduleResult, SolverOptions, baseline, build_problem, optimize
from optimizer.model import build_model
from optimizer.online import rolling_horizon

PUBLISHED = {
    # ACN-Sim notebook 2.1 (caltech-netlab/acnportal-experiments), quoted in shared/data/acn/README.md
    "offline optimum (published)": {"peak_kw": 33.365, "delivered_pct": 99.88, "total_usd": 1169.0},
    "online MPC (published)": {"peak_kw": 36.30},
    "uncontrolled (published)": {"peak_kw": 99.0, "delivered_pct": 99.884, "total_usd": 2187.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--no-online", action="store_true", help="skip the rolling-horizon run (~2-4 min)")
    parser.add_argument("--time-limit", type=float, default=600.0)
    args = parser.parse_args()
    console = Console(width=130)

    zone = zoneinfo.ZoneInfo(ACN_TIMEZONE)
    month_start = dt.datetime(2019, 3, 1, tzinfo=zone)  # step 0 of the file; its name does not say
    sessions = read_acn_sessions(args.shared / "data/acn/caltech_201903.json.gz", start=month_start)
    tariff = read_tou_tariff(args.shared / "data/tariffs/sce_tou_ev_4_march_2019.json")
    scenario = scenario_from_acn(
        sessions,
        tariff,
        start=month_start,
        end=dt.datetime(2019, 4, 1, tzinfo=zone),
        step_minutes=5,
        demand_interval_minutes=5,
        name="caltech-2019-03",
    )
    problem = build_problem(scenario)

    started = time.perf_counter()
    model = build_model(problem)
    build_seconds = time.perf_counter() - started
    n_vars = model.nvariables()
    n_binary = sum(1 for v in model.component_data_objects(pyomo.core.Var) if v.is_binary())
    console.print(
        f"{len(sessions)} sessions, {problem.n_steps} steps of 5 min; model: {n_vars:,} variables "
        f"({n_binary} binary: {'LP' if not n_binary else 'MILP'}), {model.nconstraints():,} constraints; "
        f"Pyomo build {build_seconds:.2f} s"
    )
    del model

    results: list[ScheduleResult] = [
        optimize(problem, SolverOptions(time_limit=args.time_limit, mip_gap=1e-6))
    ]
    if not args.no_online:
        with console.status("rolling horizon over the month..."):
            results.append(rolling_horizon(problem, SolverOptions(time_limit=60, mip_gap=1e-6)))
    results.append(baseline(problem, "uncontrolled"))

    table = Table(title="Caltech ACN, March 2019, SCE TOU-EV-4 ($15.51/kW)")
    for column in ("run", "peak kW", "delivered %", "energy $", "demand $", "total $", "build s", "solve s"):
        table.add_column(column, justify="right" if column != "run" else "left")
    rows = []
    for r in results:
        delivered = 100 * r.energy_delivered_kwh / r.energy_requested_kwh
        energy, demand = r.costs["energy_cost"], r.costs["demand_charge"]
        name = {"milp": "offline LP (ours)", "milp-online": "online MPC (ours)"}.get(
            r.policy, f"{r.policy} (ours)"
        )
        rows.append(
            {
                "run": name,
                "peak_kw": r.peak_import_kw,
                "delivered_pct": delivered,
                "total_usd": energy + demand,
            }
        )
        table.add_row(
            name,
            f"{r.peak_import_kw:.3f}",
            f"{delivered:.3f}",
            f"{energy:,.2f}",
            f"{demand:,.2f}",
            f"{energy + demand:,.2f}",
            f"{r.build_seconds:.2f}",
            f"{r.solve_seconds:.2f}",
        )
    for name, figures in PUBLISHED.items():
        table.add_row(
            name,
            f"{figures['peak_kw']:.3f}",
            f"{figures['delivered_pct']:.3f}" if "delivered_pct" in figures else "",
            "",
            "",
            f"{figures['total_usd']:,.0f}" if "total_usd" in figures else "",
            "",
            "",
        )
    console.print(table)
    offline = rows[0]
    optimum = PUBLISHED["offline optimum (published)"]
    console.print(
        f"offline LP against the published optimum: peak {offline['peak_kw'] / optimum['peak_kw'] - 1:+.2%}, "
        f"total cost {offline['total_usd'] / optimum['total_usd'] - 1:+.2%}"
    )
    if not args.no_online:
        online = rows[1]
        mpc = PUBLISHED["online MPC (published)"]["peak_kw"]
        console.print(
            f"online MPC peak against the published MPC: {online['peak_kw']:.2f} kW vs {mpc:.2f} kW"
        )
    billed = billed_as_sce_bills(scenario, online=not args.no_online, time_limit=args.time_limit)
    console.print(billed_table(billed))
    console.print(
        f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"Pyomo {pyomo.version.version}, highspy {highspy.Highs().version()}"
    )
    print(json.dumps(rows))
    print(json.dumps({"billed_15_min": billed}))


def billed_as_sce_bills(scenario: Scenario, *, online: bool, time_limit: float) -> list[dict[str, object]]:
    """Offline, online and uncontrolled on ``scenario`` with demand billed on 15-minute clock-aligned
    averages: billed kW, delivered %, energy, demand and total $, total against offline, wall seconds."""
    tariff = scenario.tariff.model_copy(update={"demand_interval_minutes": 15})
    problem = build_problem(scenario.model_copy(update={"tariff": tariff}))
    runs: list[tuple[str, Callable[[], ScheduleResult]]] = [
        ("offline LP", lambda: optimize(problem, SolverOptions(time_limit=time_limit, mip_gap=1e-6))),
        ("online MPC", lambda: rolling_horizon(problem, SolverOptions(time_limit=60, mip_gap=1e-6))),
        ("uncontrolled", lambda: baseline(problem, "uncontrolled")),
    ]
    rows: list[dict[str, object]] = []
    offline_total = None
    for name, run in runs:
        if name == "online MPC" and not online:
            continue
        started = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - started
        costs = result.costs
        total = costs["energy_cost"] + costs["demand_charge"]
        offline_total = offline_total or total
        rows.append(
            {
                "run": name,
                "billed_kw": max(result.evaluation.demand_peaks_kw, default=0.0),
                "delivered_pct": 100 * result.energy_delivered_kwh / result.energy_requested_kwh,
                "energy_usd": costs["energy_cost"],
                "demand_usd": costs["demand_charge"],
                "total_usd": total,
                "x_offline": total / offline_total,
                "seconds": seconds,
            }
        )
    return rows


def billed_table(rows: list[dict[str, object]]) -> Table:
    table = Table(title="The same month as SCE bills it: demand on 15-minute clock-aligned averages")
    columns = {
        "run": "{}",
        "billed kW": "{:.3f}",
        "delivered %": "{:.3f}",
        "energy $": "{:,.2f}",
        "demand $": "{:,.2f}",
        "total $": "{:,.2f}",
        "x offline": "{:.4f}",
        "wall s": "{:.1f}",
    }
    for column in columns:
        table.add_column(column, justify="right" if column != "run" else "left")
    for row in rows:
        table.add_row(
            *(form.format(value) for form, value in zip(columns.values(), row.values(), strict=True))
        )
    return table


if __name__ == "__main__":
    main()
