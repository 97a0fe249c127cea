"""``fleetgrid aggregator --config central.toml``: the central service (API, ingestion, control loop).

Log lines go to stderr as text, or as JSON lines with ``--log-format json`` (:mod:`wire.logs`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from aggregator.api.config import InsecureSettingsError, Settings
from aggregator.runtime.config import CentralConfig, CentralConfigError
from wire import logs

console = Console()


def aggregator(
    config: Path = typer.Option(Path("examples/central.toml"), "--config", help="central.toml"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level"),
    log_format: str = typer.Option(
        "text",
        "--log-format",
        envvar=logs.LOG_FORMAT_ENV,
        help="text (for a terminal) or json (one JSON object per line, for a log collector)",
    ),
) -> None:
    """Run the central service: API (docs at /docs), MQTT ingestion and the control loop."""
    from aggregator.runtime.service import AggregatorService

    try:
        chosen = logs.log_format(log_format)
    except logs.LogSettingsError as error:
        raise typer.BadParameter(str(error), param_hint=f"--log-format (or {logs.LOG_FORMAT_ENV})") from error
    logs.configure_logging(chosen, logging.INFO if verbose else logging.WARNING)
    try:
        central = CentralConfig.load(config)
        central.control_settings()  # the file's every mistake now, in one line, not at the loop's start
        settings = Settings.from_env()
    except (CentralConfigError, InsecureSettingsError, ValidationError, ValueError) as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(code=2) from error

    async def run() -> None:
        async with AggregatorService(central, settings) as service:
            console.print(
                f"fleetgrid aggregator: API on http://{central.api.host}:{service.api_port}/docs,"
                f" MQTT {'in-process broker' if central.mqtt.embedded else central.mqtt.url},"
                f" database {central.database.url}"
            )
            await service.wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        console.print("stopped")
