"""``fleetgrid prices import FILE``: read day-ahead prices, normalise them, print a summary, write CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from market_adapters.errors import AdapterError
from market_adapters.prices import (
    PriceCsvRules,
    PriceFormat,
    guess_format,
    normalise_prices,
    read_prices,
)

app = typer.Typer(no_args_is_help=True, help="Day-ahead market prices (CSV, ENTSO-E XML).")
console = Console()


def fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code=2)


@app.callback()
def prices() -> None:
    """Day-ahead market prices (CSV, ENTSO-E XML)."""


@app.command("import")
def import_prices(
    file: Path = typer.Argument(..., help="Price file: CSV or ENTSO-E Publication_MarketDocument XML"),
    format: str | None = typer.Option(
        None, "--format", help="csv or entsoe-xml (default: entsoe-xml for .xml files, else csv)"
    ),
    date_format: list[str] | None = typer.Option(
        None,
        "--date-format",
        help="strptime format or ISO8601; repeat to declare a mixed file (each row must match one)",
    ),
    timezone: str | None = typer.Option(None, "--timezone", help="IANA zone of naive local times (CSV)"),
    ambiguous: str = typer.Option(
        "raise", "--ambiguous", help="raise, or infer: the first of a repeated local hour is summer time"
    ),
    duplicates: str = typer.Option(
        "raise", "--duplicates", help="raise, or drop-identical: drop repeated rows with the same price"
    ),
    unit: str | None = typer.Option(
        None, "--unit", help="Price unit like EUR/MWh when the CSV header has none"
    ),
    currency: str = typer.Option("EUR", "--currency", help="Currency of the output prices (ISO 4217)"),
    rate: list[str] | None = typer.Option(
        None, "--rate", help="Exchange rate CUR=RATE: units of --currency per one CUR (repeatable)"
    ),
    step: int = typer.Option(15, "--step", min=1, help="Step of the output series [min]"),
    out: Path | None = typer.Option(None, "--out", help="Write the normalised series to this CSV"),
) -> None:
    """Read a price file, convert to per-kWh at --step minutes (UTC), print a summary, write --out."""
    given = format or guess_format(file)
    if given not in ("csv", "entsoe-xml"):
        raise fail(f"--format is {given!r}, expected csv or entsoe-xml")
    chosen: PriceFormat = "csv" if given == "csv" else "entsoe-xml"
    try:
        rates = _rates(rate or [])
        rules = None
        if chosen == "csv":
            rules = PriceCsvRules(
                date_formats=tuple(date_format) if date_format else None,
                timezone=timezone,
                ambiguous=ambiguous,
                duplicates=duplicates.replace("-", "_"),
                unit=unit,
            )
        elif date_format or timezone or unit:
            raise fail("--date-format, --timezone and --unit apply to CSV only")
        raw = read_prices(file, format=chosen, rules=rules)
        series = normalise_prices(raw, currency=currency, step_minutes=step, rates=rates)
    except (AdapterError, ValidationError, OSError, ValueError) as error:
        raise fail(str(error)) from error

    console.print(summary_table(series, file, chosen))
    if out is not None:
        write_prices(series, out)
        console.print(f"wrote {out} ({len(series)} steps)")


def summary_table(series: pd.Series, file: Path, format: str) -> Table:
    """Span, steps and min/mean/max price per kWh of a normalised series."""
    currency = series.attrs.get("currency", "")
    step = int(series.attrs.get("step_minutes", 0))
    table = Table(title=escape(f"{file.name} ({format})"), show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    end = series.index[-1] + pd.Timedelta(minutes=step)
    table.add_row("span (UTC)", f"{series.index[0]:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}")
    table.add_row("steps", f"{len(series)} × {step} min")
    for name, value in (("min", series.min()), ("mean", series.mean()), ("max", series.max())):
        table.add_row(escape(f"{name} [{currency}/kWh]"), f"{value:.5f}")
    return table


def write_prices(series: pd.Series, out: Path) -> None:
    """``start_utc`` (ISO-8601) and ``price_<currency>_per_kwh`` columns."""
    currency = str(series.attrs.get("currency", "")).lower()
    index = pd.DatetimeIndex(series.index)
    frame = pd.DataFrame(
        {
            "start_utc": index.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            f"price_{currency}_per_kwh": series.to_numpy(),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)


def _rates(items: list[str]) -> dict[str, float]:
    rates = {}
    for item in items:
        code, _, value = item.partition("=")
        try:
            rates[code.strip().upper()] = float(value)
        except ValueError:
            raise fail(f"--rate {item!r}: expected CUR=RATE like DKK=0.134") from None
    return rates
