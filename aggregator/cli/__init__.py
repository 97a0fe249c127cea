"""The ``fleetgrid`` command line: one console script, one subcommand per job.

- ``fleetgrid schedule SCENARIO --out DIR [--policy P] [--compare]``: plan a scenario file;
- ``fleetgrid schedule --acn FILE --tariff FILE --out DIR [--online]``: plan real ACN-Data sessions;
- ``fleetgrid scenario generate|schema``: make a depot day, print the scenario file schema;
- ``fleetgrid demo``: a whole depot day end to end (``--offline``: the MILP against the baselines);
- ``fleetgrid sim-chargers --gateway ws://... --count N --protocol 1.6|2.0.1|2.1``: simulated chargers;
- ``fleetgrid gateway --config site.toml``: the depot's site gateway;
- ``fleetgrid aggregator --config central.toml``: the central service (API, ingestion, control loop);
- ``fleetgrid prices import FILE``: day-ahead prices (CSV, ENTSO-E XML) normalised to per-kWh steps;
- ``fleetgrid tariff bill --tariff FILE --meter CSV``: a line-item bill of metered load under a tariff;
- ``fleetgrid admin ...``: bootstrap the central database (accounts, sites, chargers, programs, keys).
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from aggregator.cli.admin import app as admin_app
from aggregator.cli.demo import demo_command
from aggregator.cli.gateway import gateway
from aggregator.cli.prices import app as prices_app
from aggregator.cli.scenarios import app as scenario_app
from aggregator.cli.scheduling import run_schedule
from aggregator.cli.service import aggregator
from aggregator.cli.settle import settle
from aggregator.cli.simulate import sim_chargers
from aggregator.cli.tariff import app as tariff_app

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="fleetgrid: smart charging, demand response and V2G for EV fleets and depots.",
)
app.add_typer(scenario_app, name="scenario")
app.add_typer(prices_app, name="prices")
app.add_typer(tariff_app, name="tariff")
app.add_typer(admin_app, name="admin")
app.command("sim-chargers")(sim_chargers)
app.command("gateway")(gateway)
app.command("aggregator")(aggregator)
app.command("settle")(settle)


@app.command()
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
    )


app.command("demo")(demo_command)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
