"""``fleetgrid sim-chargers``: simulated charging stations against a site gateway (or any CSMS)."""

from __future__ import annotations

import asyncio
import datetime as dt

import typer
from rich.console import Console

from site_gateway.simulator import PROTOCOLS, ChargerFleet, SimClock

console = Console()


def sim_chargers(
    gateway: str = typer.Option(
        ..., "--gateway", help="Gateway websocket URL, e.g. ws://localhost:9000/ocpp"
    ),
    count: int = typer.Option(1, "--count", min=1, help="Number of simulated stations (one EVSE each)"),
    protocol: str = typer.Option("1.6", "--protocol", help="OCPP version: 1.6, 2.0.1 or 2.1"),
    speed: float = typer.Option(1.0, "--speed", min=0.001, help="Simulated seconds per real second"),
    seed: int = typer.Option(0, "--seed", help="Random seed of the vehicles"),
    prefix: str = typer.Option("sim", "--prefix", help="Station ids are PREFIX-000, PREFIX-001, ..."),
    arrival_spread: float = typer.Option(
        0.0, "--arrival-spread", min=0.0, help="Vehicles arrive within this many simulated minutes"
    ),
    meter_interval: float = typer.Option(60.0, "--meter-interval", min=1.0, help="Simulated seconds"),
    duration: float | None = typer.Option(
        None, "--duration", min=0.0, help="Stop after this many simulated minutes (default: until Ctrl-C)"
    ),
) -> None:
    """Run COUNT simulated charging stations with vehicles against GATEWAY."""
    if protocol not in PROTOCOLS:
        console.print(
            f"[bold red]error:[/] --protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}"
        )
        raise typer.Exit(code=2)
    clock = SimClock(dt.datetime.now(dt.UTC), speed=speed)

    async def run() -> None:
        fleet = ChargerFleet(
            gateway,
            count,
            protocol,
            clock=clock,
            seed=seed,
            prefix=prefix,
            arrival_spread_s=arrival_spread * 60,
            meter_interval_s=meter_interval,
        )
        async with fleet:
            console.print(f"{count} OCPP {protocol} station(s) -> {gateway} at {speed:g}x")
            if duration is None:
                await asyncio.Event().wait()
            else:
                await clock.sleep(duration * 60)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        console.print("stopped")
