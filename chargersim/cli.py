"""``fleetgrid sim-chargers --gateway ws://... --count N --protocol 1.6|2.0.1|2.1``: simulated charging
stations against a site gateway (or any CSMS).

Like the gateway it runs on the base install (``pip install 'fleetgrid[gateway]'``), so nothing imported
here may need the central extra; the simulator is imported inside the command so ``--help`` stays quick.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def sim_chargers(
    gateway: Annotated[
        str, typer.Option("--gateway", help="Gateway websocket URL, e.g. ws://localhost:9000/ocpp")
    ],
    count: Annotated[
        int, typer.Option("--count", min=1, help="Number of simulated stations (one EVSE each)")
    ] = 1,
    protocol: Annotated[str, typer.Option("--protocol", help="OCPP version: 1.6, 2.0.1 or 2.1")] = "1.6",
    speed: Annotated[
        float, typer.Option("--speed", min=0.001, help="Simulated seconds per real second")
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the vehicles")] = 0,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Station ids are PREFIX-000, PREFIX-001, ...")
    ] = "sim",
    arrival_spread: Annotated[
        float,
        typer.Option("--arrival-spread", min=0.0, help="Vehicles arrive within this many simulated minutes"),
    ] = 0.0,
    meter_interval: Annotated[
        float, typer.Option("--meter-interval", min=1.0, help="Simulated seconds")
    ] = 60.0,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration", min=0.0, help="Stop after this many simulated minutes (default: until Ctrl-C)"
        ),
    ] = None,
) -> None:
    """Run COUNT simulated charging stations with vehicles against GATEWAY."""
    from chargersim.clock import SimClock
    from chargersim.fleet import ChargerFleet
    from chargersim.stations import PROTOCOLS

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
