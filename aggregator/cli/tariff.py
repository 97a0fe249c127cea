"""``fleetgrid tariff bill --tariff FILE --meter CSV``: price metered data into a line-item bill.

The tariff file is acnportal tariff JSON or an OpenEI URDB rate (an API answer or one rate object).
The meter CSV has a header and one reading per line: an ISO-8601 timestamp with its UTC offset and
what was metered from that timestamp to the next, import positive, evenly spaced at least a minute
apart, e.g.::

    timestamp,kW
    2019-08-14T00:00:00-07:00,50
    2019-08-14T00:15:00-07:00,50

It reads such files (``timestamp,kW`` or ``timestamp,kWh``), the ``site.csv`` of ``fleetgrid
schedule --out DIR`` (``start``, ``import_kw``), and any CSV whose columns ``--time-column`` and
``--power-column`` name. The unit, kW (average power per interval) or kWh (energy per interval), is
``--unit`` or what the power column's name states (``kW``, ``import_kw``, ``kWh``); never guessed
(:func:`market_adapters.meter.read_meter_csv`).

A file crossing a daylight-saving change needs ``--timezone`` (the utility's IANA zone).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from market_adapters.billing import Bill, bill, read_tariff
from market_adapters.errors import AdapterError
from market_adapters.meter import MeterUnit, read_meter_csv

app = typer.Typer(no_args_is_help=True, help="Price metered data with a utility tariff.")
console = Console()


@app.command("bill")
def bill_command(
    tariff: Path = typer.Option(..., "--tariff", help="acnportal tariff JSON or OpenEI URDB rate JSON"),
    meter: Path = typer.Option(
        ...,
        "--meter",
        help="Meter CSV: timestamp,kW or timestamp,kWh (ISO-8601 with offset), or a schedule's site.csv",
    ),
    time_column: str | None = typer.Option(
        None, "--time-column", help="The time column (default: timestamp or start)"
    ),
    power_column: str | None = typer.Option(
        None, "--power-column", help="The power or energy column (default: kW, kWh or import_kw)"
    ),
    unit: MeterUnit | None = typer.Option(
        None,
        "--unit",
        case_sensitive=False,
        help="kW (average power per interval) or kWh (energy per interval); "
        "default: what the power column's name states",
    ),
    timezone: str | None = typer.Option(
        None, "--timezone", help="Utility's IANA zone (default: the CSV's offset, which must not change)"
    ),
    label: str | None = typer.Option(None, "--label", help="URDB rate label, if the file holds several"),
    previous_peak: list[str] = typer.Option(
        [], "--previous-peak", help="Billed demand of an earlier month for ratchets, e.g. 2019-07=310"
    ),
) -> None:
    """Print the bill of one billing period: energy, demand, fixed and minimum charges, total."""
    try:
        peaks = _previous_peaks(previous_peak)
        billable = read_tariff(tariff, label=label)
        metered = read_meter_csv(
            meter, timezone=timezone, time_column=time_column, power_column=power_column, unit=unit
        )
        result = bill(billable, metered, timezone=timezone, previous_peaks_kw=peaks)
    except (AdapterError, OSError, ValueError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(code=2) from error
    console.print(bill_table(result))


def _previous_peaks(values: list[str]) -> dict[str, float]:
    peaks = {}
    for value in values:
        month, _, kw = value.partition("=")
        try:
            peaks[month.strip()] = float(kw)
        except ValueError as error:
            raise ValueError(f"--previous-peak {value!r}: expected MONTH=KW like 2019-07=310") from error
    return peaks


def bill_table(result: Bill) -> Table:
    """The bill's lines and total as a rich table (amounts in $, rounded to the cent for display)."""
    title = (
        f"{result.tariff}: {result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M} ({result.start:%z})"
    )
    table = Table(title=escape(title))
    for name, justify in (("charge", "left"), ("quantity", "right"), ("rate [$]", "right"),
                          ("amount [$]", "right"), ("note", "left")):  # fmt: skip
        table.add_column(escape(name), justify=justify)  # type: ignore[arg-type]
    for line in result.lines:
        table.add_row(
            escape(f"{line.kind}: {line.label}"),
            f"{line.quantity:,f} {line.unit}",
            f"{line.rate:f}",
            _money(line.amount),
            escape(line.note),
        )
    table.add_row("total", "", "", _money(result.total), "", style="bold")
    return table


def _money(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"
