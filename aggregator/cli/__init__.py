"""The ``fleetgrid`` command line: one console script, one subcommand per job.

- ``fleetgrid schedule SCENARIO --out DIR [--policy P] [--compare]``: plan a scenario file;
- ``fleetgrid schedule --acn FILE --tariff FILE --out DIR [--online]``: plan real ACN-Data sessions;
- ``fleetgrid scenario generate|schema``: make a depot day, print the scenario file schema;
- ``fleetgrid simulate --seed N --out DIR``: a depot day through the real loop in virtual time;
- ``fleetgrid demo``: ``simulate``'s preset with a progress bar (``--offline``: the MILP against the
  baselines);
- ``fleetgrid sim-chargers --gateway ws://... --count N --protocol 1.6|2.0.1|2.1``: simulated chargers;
- ``fleetgrid gateway --config site.toml``: the depot's site gateway;
- ``fleetgrid aggregator --config central.toml``: the central service (API, ingestion, control loop);
- ``fleetgrid prices import FILE``: day-ahead prices (CSV, ENTSO-E XML) normalised to per-kWh steps;
- ``fleetgrid tariff bill --tariff FILE --meter CSV``: a line-item bill of metered load under a tariff;
- ``fleetgrid admin ...``: bootstrap the central database (accounts, sites, chargers, programs, keys);
- ``fleetgrid settle --event ID | --period YYYY-MM``: settle dispatch events into the ledger.

Subcommands are imported lazily: :data:`SUBCOMMANDS` names each one, its one-line help and where it
lives, so ``fleetgrid --help`` imports none of them and ``fleetgrid gateway`` imports only the gateway
(start-up figures: ``bench/cli_startup.py``). This module itself imports only typer, so it also runs on
the gateway-only install; a central subcommand there ends with a one-line error that names the missing
package and the extra to install.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    from typer._click import Command, Context  # typer's own copy of click

# The packages of this distribution: a missing module among them is a bug, not a missing extra.
OWN_PACKAGES = frozenset(
    {"aggregator", "optimizer", "market_adapters", "site_gateway", "wire", "chargersim", "workbench"}
)


@dataclass(frozen=True)
class Subcommand:
    """One ``fleetgrid`` subcommand, described without importing the module that implements it."""

    target: str
    """``module:attribute``: a ``typer.Typer`` app (a group) or a command function."""
    help: str
    """The one line ``fleetgrid --help`` shows; tests/test_cli.py checks it against the command's own."""
    extra: Literal["gateway", "central"]
    """The install the subcommand needs: ``gateway`` (the base dependencies) or ``central``."""


SUBCOMMANDS: dict[str, Subcommand] = {
    "gateway": Subcommand(
        "site_gateway.cli:gateway",
        "Run the site gateway: OCPP server for the chargers, local safety control, MQTT uplink.",
        "gateway",
    ),
    "sim-chargers": Subcommand(
        "chargersim.cli:sim_chargers",
        "Run COUNT simulated charging stations with vehicles against GATEWAY.",
        "gateway",
    ),
    "schedule": Subcommand(
        "aggregator.cli.scheduling:schedule",
        "Schedule one site and write the schedule, site totals, a summary and a plot.",
        "central",
    ),
    "scenario": Subcommand(
        "aggregator.cli.scenarios:app", "Generate scenario files and print their schema.", "central"
    ),
    "demo": Subcommand(
        "aggregator.cli.simulate:demo_command",
        "Run a whole depot day end to end (broker, aggregator, gateway, simulated chargers).",
        "central",
    ),
    "simulate": Subcommand(
        "aggregator.cli.simulate:simulate_command",
        "Replay a depot day through the real loop in virtual time; write summary.json.",
        "central",
    ),
    "aggregator": Subcommand(
        "aggregator.cli.service:aggregator",
        "Run the central service: API (docs at /docs), MQTT ingestion and the control loop.",
        "central",
    ),
    "admin": Subcommand(
        "aggregator.cli.admin:app", "Bootstrap users, sites, chargers, programs and API keys.", "central"
    ),
    "settle": Subcommand(
        "aggregator.cli.settle:settle",
        "Settle one dispatch event, or every event of a month, into the ledger (idempotent).",
        "central",
    ),
    "prices": Subcommand(
        "aggregator.cli.prices:app", "Day-ahead market prices (CSV, ENTSO-E XML).", "central"
    ),
    "tariff": Subcommand("aggregator.cli.tariff:app", "Price metered data with a utility tariff.", "central"),
}

# `fleetgrid --help` lists the subcommands in two panels, by the install they need.
HELP_PANELS = {
    "gateway": "Site gateway (any install)",
    "central": "Central (pip install 'fleetgrid\\[central]')",  # rich markup: \[ is a literal bracket
}


def load_command(name: str, subcommand: Subcommand) -> Command:
    """Import ``subcommand.target`` and turn it into the command that runs it."""
    module_name, _, attribute = subcommand.target.partition(":")
    target: Any = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, typer.Typer):  # a group even with one command, as `add_typer` makes it
        return typer.main.get_group(target)
    single = typer.Typer(add_completion=False)
    single.command(name)(target)
    return typer.main.get_command(single)


class _Unloaded(TyperCommand):
    """A subcommand's name and help, standing in for it in ``fleetgrid --help`` until it is run."""

    def __init__(self, name: str, subcommand: Subcommand) -> None:
        super().__init__(
            name,
            help=subcommand.help,
            short_help=subcommand.help,
            rich_help_panel=HELP_PANELS[subcommand.extra],
        )
        self.subcommand = subcommand


class LazyGroup(TyperGroup):
    """The ``fleetgrid`` group: knows every subcommand from :data:`SUBCOMMANDS`, imports one to run it.

    A subcommand whose module (or anything it imports while running) needs a package that is not
    installed ends with a one-line error naming the package and the extra that provides it.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, subcommand in SUBCOMMANDS.items():
            self.commands.setdefault(name, _Unloaded(name, subcommand))

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, _Unloaded) and name is not None:
            try:
                command = load_command(name, command.subcommand)
            except ModuleNotFoundError as error:
                exit_if_not_installed(name, error)
                raise
            self.commands[name] = command
        return name, command, rest

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as error:  # imported inside a command while it runs
            if ctx.invoked_subcommand is not None:
                exit_if_not_installed(ctx.invoked_subcommand, error)
            raise


def exit_if_not_installed(name: str, error: ModuleNotFoundError) -> None:
    """Print the one-line error and exit (status 1) when subcommand ``name`` needs a package that is
    not installed; return (to re-raise ``error``) when the missing module is one of ours: a bug."""
    package = (error.name or "").partition(".")[0]
    subcommand = SUBCOMMANDS.get(name)
    if not package or package in OWN_PACKAGES or subcommand is None:
        return
    from rich.console import Console

    Console(stderr=True).print(
        f"[bold red]error:[/] `fleetgrid {name}` needs the Python package {package!r}, which is not"
        f" installed; install it with: pip install 'fleetgrid\\[{subcommand.extra}]'",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(code=1) from error


app = typer.Typer(
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    help="fleetgrid: smart charging, demand response and V2G for EV fleets and depots.",
)


@app.callback()
def _fleetgrid() -> None:
    # A callback makes typer build a group (LazyGroup) even though no command is registered here.
    pass


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
