"""The value of splitting a portfolio event by joint optimisation rather than by a fixed rule.

Several synthetic depot days (``workbench.synthetic.generate_depot_day``, 96 x 15 min, half of the
vehicles V2G, a demand charge; one seed per site, so the sites differ in fleet and flexibility) share
one grid operator's event: reduce their joint import by a share of their joint baseline from 16:00 to
18:00 local time, paid and penalised per kWh. The baseline of each site is its own plan without the
event (solved first, the counterfactual). Three ways to meet the event are compared, each priced on the
joint measurement of the event (:func:`optimizer.portfolio.evaluate_event`):

- ``joint``: :func:`optimizer.portfolio.solve_portfolio`, one model; the split comes out of it;
- ``pro-rata``: each site solved alone with a DR event asking for its share of the request in
  proportion to its baseline energy in the window (the fixed rule);
- ``ignore``: each site's counterfactual plan, delivering nothing on purpose.

Cost is money (energy, demand, wear, export, event payment and penalty; no unmet-energy penalty, whose
kWh are shown apart). Prints build and solve seconds, delivered and short kWh, costs, and the split.

    python bench/portfolio.py [--sites 5] [--vehicles 60] [--share 0.3] [--time-limit 120] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from dataclasses import dataclass

import numpy as np
from report import machine, make_console, percent, print_tables, seconds

from optimizer import DrEvent, Scenario, ScheduleResult, SolverOptions, build_problem, optimize
from optimizer.portfolio import EventSplit, PortfolioEvent, build_portfolio, evaluate_event, solve_portfolio
from workbench.synthetic import generate_depot_day

EVENT_HOURS = (16, 18)
"""Local start and end hour of the event."""
PAYMENT_PER_KWH = 1.0
PENALTY_PER_KWH = 0.5


@dataclass
class Run:
    strategy: str
    build_seconds: float
    solve_seconds: float
    status: str
    gap: float | None
    sites: list[ScheduleResult]
    split: EventSplit

    @property
    def site_cost(self) -> float:
        """The sites' money without any site-level DR terms (the pro-rata rule's own events are not real)."""
        return sum(r.total_cost - r.costs["dr_penalty"] + r.costs["dr_payment"] for r in self.sites)

    @property
    def total_cost(self) -> float:
        return self.site_cost + self.split.penalty - self.split.payment

    @property
    def unmet_kwh(self) -> float:
        return sum(o.unmet_kwh for r in self.sites for o in r.evaluation.vehicles)

    def row(self) -> list[str]:
        return [
            self.strategy,
            seconds(self.build_seconds),
            seconds(self.solve_seconds),
            self.status,
            percent(self.gap),
            f"{self.split.delivered_kwh:,.1f}",
            f"{self.split.shortfall_kwh:,.1f}",
            f"{self.site_cost:,.2f}",
            f"{self.split.payment:,.2f}",
            f"{self.split.penalty:,.2f}",
            f"{self.total_cost:,.2f}",
            f"{self.unmet_kwh:,.2f}",
        ]


def depot_days(sites: int, vehicles: int, seed: int) -> list[Scenario]:
    days = []
    for number in range(sites):
        day = generate_depot_day(vehicles, seed + number, v2g_share=0.5)
        ident = f"depot-{number}"
        days.append(day.model_copy(update={"name": ident, "site": day.site.model_copy(update={"id": ident})}))
    return days


def event_window(day: Scenario) -> tuple[dt.datetime, dt.datetime]:
    """The event hours on the day's first date, at its start's UTC offset."""
    return tuple(day.start.replace(hour=hour, minute=0) for hour in EVENT_HOURS)  # type: ignore[return-value]


def separately(days: list[Scenario], options: SolverOptions) -> list[ScheduleResult]:
    return [optimize(build_problem(day), options) for day in days]


def timed_separately(
    strategy: str, days: list[Scenario], event: PortfolioEvent, options: SolverOptions
) -> Run:
    results = separately(days, options)
    problems, specs = build_portfolio(days, [event])
    split = evaluate_event(specs[0], problems, results)
    status = ",".join(sorted({r.status.value for r in results}))
    gaps = [r.gap for r in results if r.gap is not None]
    return Run(
        strategy,
        sum(r.build_seconds for r in results),
        sum(r.solve_seconds for r in results),
        status,
        max(gaps) if gaps else None,
        results,
        split,
    )


def pro_rata(days: list[Scenario], event: PortfolioEvent) -> list[Scenario]:
    """Each site gets a DR event for its share of the request, in proportion to its baseline energy."""
    energy = {site: float(np.sum(event.baseline_kw[site])) for site in event.site_ids}
    joint = sum(energy.values())
    ruled = []
    for day in days:
        share = event.requested_kw * energy[day.site.id] / joint if joint else 0.0
        dr = DrEvent(
            id=f"{event.id}-share",
            start=event.start,
            end=event.end,
            baseline_kw=event.baseline_kw[day.site.id],
            reduction_kw=round(share, 3),
            payment_per_kwh=event.payment_per_kwh,
            penalty_per_kwh=event.penalty_per_kwh,
        )
        ruled.append(day.model_copy(update={"dr_events": [*day.dr_events, dr]}))
    return ruled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--vehicles", type=int, default=60, help="vehicles per site")
    parser.add_argument("--share", type=float, default=0.3, help="request as a share of the joint baseline")
    parser.add_argument("--time-limit", type=float, default=120.0, help="HiGHS time limit per solve [s]")
    parser.add_argument("--mip-gap", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = make_console()
    console.print(f"machine: {machine()}")
    options = SolverOptions(time_limit=args.time_limit, mip_gap=args.mip_gap)

    days = depot_days(args.sites, args.vehicles, args.seed)
    start, end = event_window(days[0])
    first = (start - days[0].start) // days[0].step
    last = (end - days[0].start) // days[0].step
    started = time.perf_counter()
    counterfactual = separately(days, options)
    console.print(f"counterfactual plans: {time.perf_counter() - started:.2f} s for {len(days)} sites")
    baselines = {
        day.site.id: [round(float(x), 3) for x in plan.evaluation.import_kw[first:last]]
        for day, plan in zip(days, counterfactual, strict=True)
    }
    joint_baseline = float(np.mean(np.sum(list(baselines.values()), axis=0)))
    event = PortfolioEvent(
        id="evening",
        kind="reduction",
        start=start,
        end=end,
        requested_kw=round(args.share * joint_baseline, 1),
        payment_per_kwh=PAYMENT_PER_KWH,
        penalty_per_kwh=PENALTY_PER_KWH,
        site_ids=[day.site.id for day in days],
        baseline_kw=baselines,
    )
    console.print(
        f"event {start.isoformat()}..{end.isoformat()}: {event.requested_kw} kW below a joint baseline of "
        f"{joint_baseline:.1f} kW on average"
    )

    result = solve_portfolio(days, [event], options)
    joint = Run(
        "joint",
        result.build_seconds,
        result.solve_seconds,
        result.status.value,
        result.gap,
        list(result.sites.values()),
        result.events[event.id],
    )
    ruled = timed_separately("pro-rata", pro_rata(days, event), event, options)
    ignore = timed_separately("ignore", days, event, options)

    header = ["strategy", "build s", "solve s", "status", "gap", "delivered kWh", "short kWh"]
    header += ["site cost", "payment", "penalty", "total cost", "unmet kWh"]
    title = (
        f"{args.sites} depots x {args.vehicles} vehicles, 96 x 15 min, 50 % V2G; event {EVENT_HOURS[0]}-"
        f"{EVENT_HOURS[1]} h, {event.requested_kw} kW ({args.share:.0%} of the joint baseline), "
        f"{PAYMENT_PER_KWH}/kWh paid, {PENALTY_PER_KWH}/kWh penalty (seed {args.seed})"
    )
    print_tables(console, title, header, [run.row() for run in (joint, ruled, ignore)])

    hours = days[0].step_minutes / 60
    split_rows = []
    for day in days:
        site = day.site.id
        split_rows.append(
            [
                site,
                f"{float(np.sum(baselines[site])) * hours:,.1f}",
                f"{float(joint.split.site_kw[site].sum()) * hours:,.1f}",
                f"{float(ruled.split.site_kw[site].sum()) * hours:,.1f}",
            ]
        )
    split_rows.append(
        [
            "total",
            f"{float(np.sum(list(baselines.values()))) * hours:,.1f}",
            f"{float(joint.split.total_kw.sum()) * hours:,.1f}",
            f"{float(ruled.split.total_kw.sum()) * hours:,.1f}",
        ]
    )
    header = ["site", "baseline kWh in event", "joint split kWh", "pro-rata split kWh"]
    print_tables(
        console, "Split of the event among the sites (reduction below each baseline)", header, split_rows
    )


if __name__ == "__main__":
    main()
