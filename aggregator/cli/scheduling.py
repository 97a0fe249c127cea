"""What ``fleetgrid schedule`` and ``fleetgrid demo`` do, separate from argument parsing."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from aggregator.cli.tables import comparison_table, result_table
from optimizer import (
    POLICIES,
    Problem,
    ScenarioError,
    ScheduleResult,
    SolverOptions,
    baseline,
    build_problem,
    optimize,
)
from optimizer.online import rolling_horizon
from optimizer.scenario import Scenario
from workbench.reports import write_result
from workbench.scenario_files import ScenarioFileError, read_scenario
from workbench.synthetic import generate_depot_day

console = Console()


def fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


@contextmanager
def spinner(text: str) -> Iterator[None]:
    with Progress(
        SpinnerColumn(), TextColumn(text), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        bar.add_task(text, total=None)
        yield


def acn_start(value: str, timezone: str) -> dt.datetime:
    """``--start``: a local date (``2019-03-01``, midnight) or date and time in ``timezone``; one
    with a UTC offset is that moment."""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"--start {value!r} is not a local date like 2019-03-01 (or 2019-03-01T06:00)") from None
    zone = zoneinfo.ZoneInfo(timezone)
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment.astimezone(zone)


def acn_scenario(acn: Path, tariff: Path, start: str | None = None) -> Scenario:
    """Real ACN-Data sessions under a real tariff, on the data's steps (5 min unless the file's
    acnportal name says otherwise), whole local days. Step 0 comes from the file's acnportal name
    or ``start`` (``--start``); with neither, the command fails and says so."""
    from market_adapters.acn import (
        ACN_FILE_NAME_EXAMPLE,
        ACN_STEP_MINUTES,
        ACN_TIMEZONE,
        AcnStartUnknownError,
        acn_file_name,
        read_acn_sessions,
        scenario_from_acn,
    )
    from market_adapters.tariffs import read_tou_tariff

    try:
        sessions = read_acn_sessions(acn, start=None if start is None else acn_start(start, ACN_TIMEZONE))
    except AcnStartUnknownError:
        raise fail(
            f"--acn {acn}: the file does not record when it starts, and its name is not acnportal's "
            f"(like {ACN_FILE_NAME_EXAMPLE}, which carries the start); give --start YYYY-MM-DD, "
            f"the local date of its first step in {ACN_TIMEZONE}"
        ) from None
    if not sessions:
        raise fail(f"{acn}: no sessions")
    named = acn_file_name(acn.name)
    step_minutes = named.step_minutes if named is not None else ACN_STEP_MINUTES
    zone = zoneinfo.ZoneInfo(ACN_TIMEZONE)
    first = min(s.arrival for s in sessions).astimezone(zone)
    last = max(s.departure for s in sessions).astimezone(zone)
    begin = first.replace(hour=0, minute=0, second=0, microsecond=0)
    end = (last + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return scenario_from_acn(
        sessions, read_tou_tariff(tariff), start=begin, end=end, step_minutes=step_minutes
    )


def load_problem(
    scenario: Path | None, acn: Path | None, tariff: Path | None, start: str | None = None
) -> Problem:
    try:
        if acn is not None:
            if tariff is None:
                raise fail("--acn needs --tariff (an acnportal tariff JSON)")
            return build_problem(acn_scenario(acn, tariff, start))
        if start is not None:
            raise fail("--start is the first step of an --acn file; a scenario file carries its own start")
        if scenario is None:
            raise fail("give a SCENARIO file, or --acn FILE --tariff FILE")
        return build_problem(read_scenario(scenario))
    except (ScenarioError, ScenarioFileError, ValidationError, OSError, ValueError) as exc:
        raise fail(str(exc)) from exc


def solve_one(problem: Problem, policy: str, options: SolverOptions) -> ScheduleResult:
    if policy == "milp":
        with spinner(f"solving {problem.name} with HiGHS ({len(problem.vehicles)} vehicles)"):
            return optimize(problem, options)
    if policy not in POLICIES:
        raise fail(f"unknown policy {policy!r}; choose milp, {', '.join(POLICIES)}")
    return baseline(problem, policy)


def solve_online(problem: Problem, options: SolverOptions) -> ScheduleResult:
    with Progress(
        TextColumn("rolling horizon"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("online", total=problem.n_steps)
        return rolling_horizon(
            problem, options, progress=lambda done, total: bar.update(task, completed=done)
        )


def run_schedule(
    *,
    scenario: Path | None,
    out: Path | None,
    policy: str,
    time_limit: float,
    gap: float,
    compare: bool,
    acn: Path | None,
    tariff: Path | None,
    online: bool,
    plot: bool,
    start: str | None = None,
) -> None:
    problem = load_problem(scenario, acn, tariff, start)
    options = SolverOptions(time_limit=time_limit, mip_gap=gap)
    result = solve_online(problem, options) if online else solve_one(problem, policy, options)
    console.print(result_table(result))
    if compare:
        others = [baseline(problem, name) for name in POLICIES]
        console.print(comparison_table([result, *others]))
    if out is not None:
        paths = write_result(result, out, plot=plot)
        console.print(f"wrote {', '.join(str(p) for p in paths)}")


def run_demo(*, vehicles: int, seed: int, out: Path) -> None:
    scenario = generate_depot_day(vehicles, seed, v2g_share=0.5, dr_event=True)
    problem = build_problem(scenario)
    console.print(
        f"[bold]{scenario.name}[/]: {len(scenario.vehicles)} vehicles "
        f"({sum(v.v2g_consent for v in scenario.vehicles)} with V2G consent), "
        f"{len(scenario.dr_events)} DR event(s), {len(scenario.v2g_dispatches)} V2G dispatch(es), "
        f"import limit {scenario.site.import_limit_kw:.0f} kW"
    )
    result = solve_one(problem, "milp", SolverOptions(time_limit=60))
    console.print(comparison_table([result, *(baseline(problem, name) for name in POLICIES)]))
    paths = write_result(result, out)
    console.print(f"MILP schedule written to {out}/ ({', '.join(p.name for p in paths)})")


def schedule(
    scenario: Path | None = typer.Argument(
        None, help="Scenario file (JSON or YAML); see `fleetgrid scenario schema`"
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for schedule.csv, site.csv, summary.json, schedule.png"
    ),
    policy: str = typer.Option("milp", help="milp, uncontrolled, edf or round-robin"),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Solver time limit [s]"),
    gap: float = typer.Option(0.005, "--gap", help="Relative MIP gap (0.005 = 0.5 %)"),
    compare: bool = typer.Option(False, "--compare", help="Print the MILP against the three baselines"),
    acn: Path | None = typer.Option(
        None, "--acn", help="ACN-Data sessions (acnportal event-queue JSON, .gz ok)"
    ),
    tariff: Path | None = typer.Option(None, "--tariff", help="acnportal tariff JSON (with --acn)"),
    start: str | None = typer.Option(
        None,
        "--start",
        help="With --acn: the local date (America/Los_Angeles) of the file's first step, e.g. "
        "2019-03-01; needed unless the file has an acnportal name "
        "(site_YYYYMMDDTHHMMSS_YYYYMMDDTHHMMSS_5m_208V_6.6kW.json.gz)",
    ),
    online: bool = typer.Option(
        False, "--online", help="With --acn: rolling horizon, sessions known on arrival"
    ),
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip schedule.png"),
) -> None:
    """Schedule one site and write the schedule, site totals, a summary and a plot."""
    run_schedule(
        scenario=scenario,
        out=out,
        policy=policy,
        time_limit=time_limit,
        gap=gap,
        compare=compare,
        acn=acn,
        tariff=tariff,
        online=online,
        plot=not no_plot,
        start=start,
    )
