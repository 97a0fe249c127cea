"""``fleetgrid demo``: a whole depot day end to end with a progress bar and a closing table."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aggregator.runtime.demo import DemoOptions, DemoProgress, DemoReport, run_day
from site_gateway.config import MqttBrokerSection

console = Console()


def run_end_to_end(options: DemoOptions) -> DemoReport:
    columns = (
        TextColumn("[bold]{task.fields[clock]}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("day", total=1.0, clock="--:--", status="starting")

        def show(progress: DemoProgress, done: float) -> None:
            status = (
                f"{progress.plugged:2d} plugged  {progress.site_import_kw:6.1f} kW  "
                f"{progress.plans:3d} plans  {'DR event posted' if progress.events_posted else ''}"
            )
            bar.update(task, completed=done, clock=progress.now.strftime("%H:%M"), status=status)

        report = asyncio.run(run_day(options, show))
        bar.update(task, completed=1.0)
    table = Table(title="The depot day: fleetgrid against uncontrolled charging")
    table.add_column("")
    table.add_column("fleetgrid", justify="right")
    table.add_column("uncontrolled / requested", justify="right")
    for row in report.rows:
        table.add_row(*row)
    console.print(table)
    if report.payouts:
        payouts = Table(title="Drivers' payouts from the day's DR event")
        payouts.add_column("driver")
        payouts.add_column("payout", justify="right")
        for driver, amount in report.payouts:
            payouts.add_row(driver, amount)
        console.print(payouts)
    for line in report.settlement:
        console.print(line)
    for note in report.notes:
        console.print(f"[dim]{note}[/]")
    return report


def demo_options(
    vehicles: int, seed: int, minutes: float, broker_url: str | None, workdir: Path
) -> DemoOptions:
    logging.getLogger("aggregator").setLevel(logging.ERROR)
    logging.getLogger("site_gateway").setLevel(logging.ERROR)
    if broker_url is not None:
        try:
            MqttBrokerSection(url=broker_url)
        except ValidationError as error:
            console.print(f"[bold red]error:[/] --broker-url: {error.errors()[0]['msg']}")
            raise typer.Exit(code=2) from error
    if minutes <= 0 or vehicles < 1:
        console.print("[bold red]error:[/] --minutes must be > 0 and --vehicles at least 1")
        raise typer.Exit(code=2)
    return DemoOptions(vehicles=vehicles, seed=seed, minutes=minutes, broker_url=broker_url, workdir=workdir)


def demo_command(
    vehicles: int = typer.Option(24, help="Vehicles in the generated depot day"),
    seed: int = typer.Option(7, help="Random seed of the depot day"),
    minutes: float = typer.Option(1.0, help="Real minutes the simulated day takes"),
    broker_url: str | None = typer.Option(
        None, "--broker-url", help="mqtt://host:port of a broker (default: one inside this process)"
    ),
    out: Path = typer.Option(Path("out/demo"), help="Working directory (database, outbox, schedules)"),
    offline: bool = typer.Option(
        False, "--offline", help="Only schedule a generated day and compare the MILP with the baselines"
    ),
) -> None:
    """Run a whole depot day end to end (broker, aggregator, gateway, simulated chargers)."""
    if offline:
        from aggregator.cli.scheduling import run_demo

        run_demo(vehicles=vehicles, seed=seed, out=out)
        return
    run_end_to_end(demo_options(vehicles, seed, minutes, broker_url, out))
