"""``fleetgrid simulate`` of generated depot days, seeds 1-10, through the real loop in virtual time.

Prints, per seed and in total, what issue 11's goals measure: DR delivered against requested (the
declared baseline), targets met against uncontrolled charging's under the same yardstick, cost and
billed demand against uncontrolled, unallocated settlement money, and whether a second run of the same
seed gave a byte-identical ``summary.json`` (``--repeat``).

    .venv/bin/python bench/simulate_days.py [--seeds 1-10] [--vehicles 20] [--repeat] [--out out/bench-sim]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from aggregator.runtime.simulation import SimulationOptions, simulate


def seeds_of(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-10")
    parser.add_argument("--vehicles", type=int, default=20)
    parser.add_argument("--repeat", action="store_true", help="run each seed twice and compare")
    parser.add_argument("--out", type=Path, default=Path("out/bench-sim"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    header = (
        f"{'seed':>4} {'veh':>4} {'cost':>9} {'uncontr.':>9} {'peak kW':>8} {'uncontr.':>8} "
        f"{'targets':>8} {'uncontr.':>8} {'DR req':>7} {'planned':>7} {'DR del':>7} {'DR %':>5} "
        f"{'offer kW':>8} {'unalloc':>7} {'same':>5} {'real s':>7}"
    )
    print(header)
    totals = {"dr_ok": 0, "targets_ok": 0, "cheaper": 0, "runs": 0}
    for seed in seeds_of(args.seeds):
        started = time.perf_counter()
        options = SimulationOptions(vehicles=args.vehicles, seed=seed, workdir=args.out / f"seed-{seed}")
        s = simulate(options).summary
        seconds = time.perf_counter() - started
        same = "-"
        if args.repeat:
            again = SimulationOptions(
                vehicles=args.vehicles, seed=seed, workdir=args.out / f"seed-{seed}-again"
            )
            simulate(again)
            first = (options.workdir / "summary.json").read_bytes()
            same = "yes" if first == (again.workdir / "summary.json").read_bytes() else "NO"
        u = s.uncontrolled
        event = s.dr_events[0] if s.dr_events else None
        share = event.delivered_kwh / event.requested_kwh if event and event.requested_kwh else float("nan")
        unallocated = s.settlement.unallocated if s.settlement else 0
        print(
            f"{seed:>4} {s.targets_total:>4} {s.cost_total:>9.2f} {u.cost_total:>9.2f} "
            f"{s.billed_demand_kw:>8.1f} {u.billed_demand_kw:>8.1f} {s.targets_met:>8} {u.targets_met:>8} "
            f"{event.requested_kwh if event else 0:>7.1f} {event.planned_kwh if event else 0:>7.1f} "
            f"{event.delivered_kwh if event else 0:>7.1f} "
            f"{100 * share:>5.0f} {event.offered_kw if event else 0:>8.1f} {unallocated:>7} {same:>5} "
            f"{seconds:>7.1f}",
            flush=True,
        )
        totals["runs"] += 1
        totals["dr_ok"] += share >= 0.95
        totals["targets_ok"] += s.targets_met >= u.targets_met
        totals["cheaper"] += s.cost_total <= u.cost_total
    runs = totals["runs"]
    print(
        f"DR >= 95 % of requested: {totals['dr_ok']}/{runs}; targets >= uncontrolled: "
        f"{totals['targets_ok']}/{runs}; cost <= uncontrolled: {totals['cheaper']}/{runs}"
    )


if __name__ == "__main__":
    main()
