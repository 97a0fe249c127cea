"""The edge's two commands: ``fleetgrid gateway`` and ``fleetgrid sim-chargers``.

- ``fleetgrid gateway --config site.toml``: run a depot's site gateway until interrupted;
- ``fleetgrid sim-chargers --gateway ws://... --count N --protocol 1.6|2.0.1|2.1``: simulated charging
  stations against a site gateway (or any CSMS).

They run on the base install (``pip install 'fleetgrid[gateway]'``: pydantic, ocpp, websockets,
aiomqtt, typer, rich), so nothing imported here, at the top or inside a command, may need the central
extra. The OCPP and MQTT modules are imported inside the commands, so ``--help`` stays quick.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def gateway(
    config: Annotated[
        Path, typer.Option("--config", help="The site's site.toml (see site_gateway/config.py)")
    ],
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Run the site gateway: OCPP server for the chargers, local safety control, MQTT uplink."""
    from site_gateway.config import ConfigError, load_config
    from site_gateway.gateway import Gateway

    logging.getLogger().setLevel(log_level.upper())
    if log_level.upper() != "DEBUG":  # the ocpp library logs every frame at INFO
        for chatty in ("ocpp", "websockets"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        settings = load_config(config)
        site = Gateway(settings)
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)  # one line, as written
        raise typer.Exit(code=2) from exc

    async def run() -> None:
        async with site:
            console.print(
                f"gateway {settings.site.id}: OCPP on {settings.ocpp.host}:{site.ocpp.port}, "
                f"MQTT {settings.mqtt.url}, import limit {settings.site.import_limit_kw:g} kW"
            )
            await site.closed()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        console.print("gateway stopped")


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
    from site_gateway.simulator import PROTOCOLS, ChargerFleet, SimClock

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
