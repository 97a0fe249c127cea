"""The ``fleetgrid`` command line: one console script, one subcommand per job."""

from __future__ import annotations

import typer

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="fleetgrid: grid services and V2G for EV fleets"
)


def main() -> None:
    app()
