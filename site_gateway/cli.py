"""``fleetgrid gateway --config site.toml``: run a depot's site gateway until interrupted.

It runs on the base install (``pip install 'fleetgrid[gateway]'``: pydantic, ocpp, websockets,
aiomqtt, typer, rich), so nothing imported here, at the top or inside the command, may need the central
extra. The OCPP and MQTT modules are imported inside the command, so ``--help`` stays quick.
Log lines go to stderr as text, or as JSON lines with ``--log-format json`` (:mod:`wire.logs`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from wire import logs

console = Console()


def gateway(
    config: Annotated[
        Path, typer.Option("--config", help="The site's site.toml (see site_gateway/config.py)")
    ],
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar=logs.LOG_FORMAT_ENV,
            help="text (for a terminal) or json (one JSON object per line, for a log collector)",
        ),
    ] = "text",
) -> None:
    """Run the site gateway: OCPP server for the chargers, local safety control, MQTT uplink."""
    from site_gateway.config import ConfigError, load_config
    from site_gateway.gateway import Gateway

    try:
        chosen = logs.log_format(log_format)
    except logs.LogSettingsError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--log-format (or {logs.LOG_FORMAT_ENV})") from exc
    try:
        logs.configure_logging(chosen, log_level)
    except logs.LogSettingsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from exc
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
