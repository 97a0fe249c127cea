"""``fleetgrid scenario ...``: make scenario files and show their schema."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from optimizer.scenario import Scenario
from workbench.scenario_files import write_scenario
from workbench.synthetic import generate_depot_day

app = typer.Typer(no_args_is_help=True, help="Generate scenario files and print their schema.")
console = Console()


@app.command()
def generate(
    vehicles: int = typer.Option(..., "--vehicles", min=1, help="Number of vehicles (one EVSE each)"),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same day"),
    v2g_share: float = typer.Option(
        0.0, "--v2g-share", min=0.0, max=1.0, help="Share of vehicles with V2G consent"
    ),
    dr_event: bool = typer.Option(False, "--dr-event", help="Add an afternoon DR event (and a V2G dispatch)"),
    out: Path = typer.Option(..., "--out", help="Scenario file to write (.json, .yaml or .yml)"),
) -> None:
    """Write a realistic depot day (distributions fitted to ACN-Data; see workbench/synthetic.py)."""
    scenario = generate_depot_day(vehicles, seed, v2g_share=v2g_share, dr_event=dr_event)
    write_scenario(scenario, out)
    console.print(
        f"wrote {out}: {len(scenario.vehicles)} vehicles, {len(scenario.dr_events)} DR event(s), "
        f"{len(scenario.v2g_dispatches)} V2G dispatch(es)"
    )


@app.command()
def schema() -> None:
    """Print the JSON schema of scenario files (units in every field name or description)."""
    print(json.dumps(Scenario.model_json_schema(), indent=2))
