"""``fleetgrid simulate`` and ``fleetgrid demo``: a depot day through the real loop in virtual time,
with a progress bar, a closing table and ``DIR/summary.json``."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aggregator.runtime.simulation import (
    SimulationOptions,
    SimulationProgress,
    SimulationResult,
    simulate,
)

console = Console()


def run_with_progress(options: SimulationOptions) -> SimulationResult:
    """Simulate with a progress bar, then print the day's table, payouts and settlement."""
    logging.getLogger("aggregator").setLevel(logging.ERROR)
    logging.getLogger("site_gateway").setLevel(logging.ERROR)
    columns = (
        TextColumn("[bold]{task.fields[clock]}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("day", total=1.0, clock="--:--", status="starting")

        def show(progress: SimulationProgress, done: float) -> None:
            status = (
                f"{progress.plugged:2d} plugged  {progress.site_import_kw:6.1f} kW  "
                f"{progress.plans:3d} plans  {'DR event posted' if progress.events_posted else ''}"
            )
            bar.update(task, completed=done, clock=progress.now.strftime("%H:%M"), status=status)

        result = simulate(options, show)
        bar.update(task, completed=1.0)
    print_result(result, options.workdir)
    return result


def print_result(result: SimulationResult, workdir: Path) -> None:
    s, u = result.summary, result.summary.uncontrolled
    cur = s.currency
    table = Table(title=f"The depot day (seed {s.seed}): fleetgrid against uncontrolled charging")
    table.add_column("")
    table.add_column("fleetgrid", justify="right")
    table.add_column("uncontrolled / requested", justify="right")
    table.add_row("energy + demand cost", f"{s.cost_total:,.2f} {cur}", f"{u.cost_total:,.2f} {cur}")
    table.add_row(
        "  of which demand charge", f"{s.demand_charge:,.2f} {cur}", f"{u.demand_charge:,.2f} {cur}"
    )
    table.add_row("billed demand (15 min)", f"{s.billed_demand_kw:.1f} kW", f"{u.billed_demand_kw:.1f} kW")
    table.add_row("V2G energy exported", f"{s.v2g_exported_kwh:.1f} kWh", "0.0 kWh")
    table.add_row(
        "charging targets met",
        f"{s.targets_met} of {s.targets_total}",
        f"{u.targets_met} of {u.targets_total}",
    )
    table.add_row(
        "energy stored / wanted",
        f"{s.energy_stored_kwh:.1f} / {s.energy_wanted_kwh:.1f} kWh",
        f"{u.energy_stored_kwh:.1f} / {u.energy_wanted_kwh:.1f} kWh",
    )
    for event in s.dr_events:
        table.add_row(
            f"DR delivered / requested ({event.baseline} baseline)",
            f"{event.delivered_kwh:.1f} kWh ({100 * event.performance_factor:.0f} %; "
            f"planned {event.planned_kwh:.1f})",
            f"{event.requested_kwh:.1f} kWh ({event.requested_kw:.1f} kW; "
            f"site offered {event.offered_kw:.1f} kW)",
        )
    console.print(table)
    statement = result.statement
    if statement is not None:
        payouts = Table(title="Drivers' payouts from the day's DR event")
        payouts.add_column("driver")
        payouts.add_column("payout", justify="right")
        for line in statement.drivers:
            amount = statement.money(line.total_minor)
            if line.reason and line.total_minor == 0:
                amount += f" ({line.reason})"
            payouts.add_row(line.email or f"user {line.driver_id}", amount)
        console.print(payouts)
        console.print(f"settlement: {statement.summary()}")
    for note in result.notes:
        console.print(f"[dim]{note}[/]")
    console.print(f"[dim]summary: {workdir / 'summary.json'}[/]")


def _options(
    vehicles: int, seed: int, v2g_share: float, solve_latency_s: float, out: Path
) -> SimulationOptions:
    try:
        return SimulationOptions(
            vehicles=vehicles, seed=seed, v2g_share=v2g_share, solve_latency_s=solve_latency_s, workdir=out
        )
    except ValueError as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=2) from error


def simulate_command(
    seed: int = typer.Option(1, help="Random seed of the day: vehicles, protocols, late leavers"),
    vehicles: int = typer.Option(20, min=1, help="Vehicles drawn for the generated depot day"),
    v2g_share: float = typer.Option(
        0.35, min=0.0, max=1.0, help="Share of V2G vehicles (bidirectional chargers, consent)"
    ),
    solve_latency_s: float = typer.Option(
        0.0, min=0.0, help="Virtual seconds each solve takes (0: time stands still while it solves)"
    ),
    out: Path = typer.Option(Path("out/simulate"), help="Working directory; summary.json is written here"),
) -> None:
    """Replay a depot day through the real loop in virtual time; write summary.json.

    The real loop: API, control loop, MQTT, gateway, simulated OCPP chargers, meter, settlement. The
    same seed gives the same summary.json."""
    run_with_progress(_options(vehicles, seed, v2g_share, solve_latency_s, out))


def demo_command(
    vehicles: int = typer.Option(20, min=1, help="Vehicles drawn for the generated depot day"),
    seed: int = typer.Option(7, help="Random seed of the depot day"),
    out: Path = typer.Option(Path("out/demo"), help="Working directory (database, outbox, summary.json)"),
    offline: bool = typer.Option(
        False, "--offline", help="Only schedule a generated day and compare the MILP with the baselines"
    ),
) -> None:
    """Run a whole depot day end to end (broker, aggregator, gateway, simulated chargers).

    ``fleetgrid simulate``'s preset, with a progress bar."""
    if offline:
        from aggregator.cli.scheduling import run_demo

        run_demo(vehicles=vehicles, seed=seed, out=out)
        return
    run_with_progress(_options(vehicles, seed, 0.35, 0.0, out))
