"""``fleetgrid settle --event ID | --period YYYY-MM [--dry-run]``: settle dispatch events into the ledger.

For each event it prints the performance, the revenue lines, each driver's share (or why they earned
nothing), any residual (with its reason) or platform loss, what is unallocated (nothing), each site's
baseline as declared at notification, each vehicle's delivery (or why it does not count) and what the
run did: booked (version 1), adjusted (a later version reversing the previous
one), unchanged (already settled with these inputs), or, with ``--dry-run``, what it would book. The
database is the one of ``--config central.toml`` (its ``[database] url``), ``--database-url``, or
``FLEETGRID_DATABASE_URL``; it is migrated to the latest schema first. Problems (an unknown event, one
not ended yet, no telemetry) are printed as ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from decimal import Decimal
from pathlib import Path

import typer
from sqlalchemy.orm import Session, sessionmaker

from aggregator.db.migrate import upgrade
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.programs.terms import CURRENCY_EXPONENTS, LineKind
from aggregator.runtime.config import CentralConfig, CentralConfigError
from aggregator.settlement.event_settlement import (
    EventSettlement,
    SettlementInputError,
    period_bounds,
    settle_event_from_db,
    settle_period_events,
)
from aggregator.settlement.runs import BookingError, RunStatus


class _Failed(Exception):
    """A problem to print as ``error: ...``, exiting with status 2."""


def settle(
    event: int | None = typer.Option(None, "--event", help="The event's id (its first version's id)"),
    period: str | None = typer.Option(
        None, "--period", help="Every ended event that started in this month (YYYY-MM, UTC)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Compute and print; store nothing"),
    config: Path | None = typer.Option(None, "--config", help="central.toml (its [database] url)"),
    database_url: str | None = typer.Option(None, "--database-url", help="SQLAlchemy URL"),
) -> None:
    """Settle one dispatch event, or every event of a month, into the ledger (idempotent)."""
    try:
        if (event is None) == (period is None):
            raise _Failed("give --event ID or --period YYYY-MM (one of them)")
        url = _url(config, database_url)
        if period is not None:
            try:
                period_bounds(period)
            except ValueError as error:
                raise _Failed(str(error)) from error
        upgrade(url)
        engine = make_engine(url)
        try:
            sessions = make_sessionmaker(engine)
            if event is not None:
                _settle_one(sessions, event, dry_run)
            else:
                assert period is not None
                _settle_month(sessions, period, dry_run)
        finally:
            engine.dispose()
    except _Failed as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error


def _url(config: Path | None, database_url: str | None) -> str | None:
    if config is not None and database_url is not None:
        raise _Failed("give --config or --database-url, not both")
    if config is not None:
        try:
            return CentralConfig.load(config).database.url
        except CentralConfigError as error:
            raise _Failed(str(error)) from error
    return database_url or os.environ.get("FLEETGRID_DATABASE_URL")


def _settle_one(sessions: sessionmaker[Session], event_id: int, dry_run: bool) -> None:
    try:
        settled = settle_event_from_db(sessions, event_id, dry_run=dry_run)
    except (SettlementInputError, BookingError) as error:
        raise _Failed(str(error)) from error
    _print(settled)


def _settle_month(sessions: sessionmaker[Session], period: str, dry_run: bool) -> None:
    result = settle_period_events(sessions, period, dry_run=dry_run)
    if not result.settled and not result.failed:
        typer.echo(f"{period}: no ended events to settle")
    for settled in result.settled:
        _print(settled)
    if result.failed:
        problems = "; ".join(str(error) for error in result.failed)
        raise _Failed(f"{len(result.failed)} event(s) of {period} not settled: {problems}")


def _money(minor: int, currency: str) -> str:
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    return f"{Decimal(minor).scaleb(-exponent):.{exponent}f}"


def _print(settled: EventSettlement) -> None:
    inputs, booking, outcome, revenue = settled.inputs, settled.booking, settled.outcome, settled.revenue
    currency = booking.currency
    typer.echo(
        f"event {inputs.event_id} ({inputs.event_ref}, {inputs.kind.value}, program {inputs.program_id}, "
        f"{_iso(inputs.window_start)} to {_iso(inputs.window_end)})"
    )
    performance = inputs.performance
    if performance is None:
        typer.echo("  cancelled: nothing earned")
    else:
        typer.echo(
            f"  performance: {performance.delivered_kwh:.3f} of {performance.committed_kwh:.3f} kWh "
            f"committed, factor {performance.performance_factor:.3f}, "
            f"{performance.missing_intervals} of {performance.intervals} intervals without data "
            f"(baseline: {inputs.baseline_method})"
        )
    if revenue is not None:
        typer.echo(f"  revenue [{currency}]:")
        for line in revenue.lines:
            if not line.amount_minor and not line.rate:
                continue  # a rate the program does not pay
            if line.kind is LineKind.PLATFORM_FEE:
                basis = f"{line.rate} % of {_money(int(line.quantity), currency)}"
            else:
                basis = f"{line.quantity:.3f} {line.unit}" + (
                    f" at {line.rate}" if line.rate is not None else ""
                )
            sign = -1 if line.is_deduction else 1
            typer.echo(f"    {line.kind.value:<20} {basis}: {_money(sign * line.amount_minor, currency)}")
    typer.echo(f"  drivers [{currency}]:")
    lines = booking.drivers()
    if not lines:
        typer.echo("    none")
    for entry in lines:
        driver = entry["driver_id"]
        who = f"user {driver}" + (f" <{inputs.drivers[driver]}>" if driver in inputs.drivers else "")
        text = f"    {who}: share {_money(entry['share_minor'], currency)}"
        if entry["wear_minor"]:
            text += f", wear compensation {_money(entry['wear_minor'], currency)}"
        if entry["reason"]:
            text += f" (nothing earned: {entry['reason']})"
        typer.echo(text)
    if booking.residual_minor:
        residual = _money(booking.residual_minor, currency)
        typer.echo(f"  residual, to the platform: {residual} ({booking.residual_reason})")
    if booking.platform_loss_minor:
        loss = _money(booking.platform_loss_minor, currency)
        typer.echo(f"  platform loss (not passed on to drivers): {loss}")
    typer.echo(f"  unallocated: {_money(booking.unallocated_minor, currency)}")
    for site in inputs.sites:
        declared = site.declaration
        parameters = json.dumps(dict(declared.parameters), sort_keys=True)
        text = f"  baseline at {site.site_id}: {parameters}, declared {_iso(declared.declared_at)}"
        if site.plan_versions:
            text += f", fixed at schedule versions {list(site.plan_versions)}"
        typer.echo(text)
    if inputs.attribution is not None:
        for vehicle in inputs.vehicles:
            contribution = inputs.attribution.vehicles[vehicle.session_id]
            text = f"  session {vehicle.session_id} (user {vehicle.driver_id}): "
            text += f"{contribution.delivered_kwh:.3f} kWh"
            if contribution.exclusion is not None:
                exclusion = contribution.exclusion
                text += f", excluded: {exclusion.reason.value} ({exclusion.detail})"
            typer.echo(text)
        typer.echo(f"  unattributed: {inputs.attribution.unattributed_kwh:.3f} kWh")
    for note in inputs.notes:
        typer.echo(f"  note: {note}")
    typer.echo(f"  {_status(outcome.status, outcome.version)}: {outcome.message}")


def _status(status: RunStatus, version: int) -> str:
    if status is RunStatus.BOOKED:
        return "booked" if version == 1 else "adjusted"
    return {RunStatus.UNCHANGED: "unchanged", RunStatus.DRY_RUN: "dry run"}.get(status, status.value)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat()
