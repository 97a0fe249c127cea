"""Driver statements and program invoices as documents: CSV and PDF.

The data come from :mod:`aggregator.settlement.statements` (:func:`~aggregator.settlement.statements.
driver_statement`, :func:`~aggregator.settlement.statements.program_invoice`); this module only writes
them. Amounts are written in major units with their currency's decimals
(:func:`~aggregator.settlement.statements.format_decimal`), energy in kWh with three decimals, times
ISO-8601 in UTC.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from aggregator.settlement.statements import (
    DriverStatement,
    ProgramInvoice,
    format_amount,
    format_decimal,
)

# ---------------------------------------------------------------------------------------------- CSV

STATEMENT_CSV_COLUMNS = (
    "item",
    "date",
    "event_ref",
    "event_id",
    "description",
    "kwh",
    "currency",
    "share",
    "wear_compensation",
    "adjustment",
    "amount",
    "zero_reason",
    "entry_ids",
)
"""One row per item: ``energy_charged`` and ``energy_discharged`` (``kwh``), each earning line
(``event``, ``period``, ``adjustment``: amounts in major units), and a ``total`` per currency."""


def _iso(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.UTC).isoformat() if moment is not None else ""


def _kwh(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else ""


def statement_csv(statement: DriverStatement) -> str:
    """The statement as CSV (:data:`STATEMENT_CSV_COLUMNS`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=STATEMENT_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    month_start = _iso(statement.month.start)
    writer.writerow({"item": "energy_charged", "date": month_start, "kwh": _kwh(statement.charged_kwh)})
    writer.writerow({"item": "energy_discharged", "date": month_start, "kwh": _kwh(statement.discharged_kwh)})
    for line in statement.lines:
        writer.writerow(
            {
                "item": line.kind,
                "date": _iso(line.occurred_at),
                "event_ref": line.event_ref or "",
                "event_id": line.event_id if line.event_id is not None else "",
                "description": line.description,
                "kwh": _kwh(line.event_discharged_kwh),
                "currency": line.currency,
                "share": format_decimal(line.share_minor, line.currency),
                "wear_compensation": format_decimal(line.wear_minor, line.currency),
                "adjustment": format_decimal(line.adjustment_minor, line.currency),
                "amount": format_decimal(line.total_minor, line.currency),
                "zero_reason": line.zero_reason or "",
                "entry_ids": " ".join(str(ident) for ident in line.entry_ids),
            }
        )
    for currency, total in statement.totals.items():
        writer.writerow(
            {
                "item": "total",
                "currency": currency,
                "wear_compensation": format_decimal(statement.wear_totals.get(currency, 0), currency),
                "amount": format_decimal(total, currency),
            }
        )
    return out.getvalue()


INVOICE_CSV_COLUMNS = (
    "item",
    "date",
    "event_ref",
    "event_id",
    "window_start",
    "window_end",
    "description",
    "currency",
    "gross",
    "threshold_reduction",
    "penalty",
    "receivable",
    "amount_due",
    "entry_ids",
)
"""One row per invoice line (amounts in major units) and a ``total`` row per currency."""


def invoice_csv(invoice: ProgramInvoice) -> str:
    """The invoice as CSV (:data:`INVOICE_CSV_COLUMNS`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=INVOICE_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()

    def money(value: int | None, currency: str) -> str:
        return format_decimal(value, currency) if value is not None else ""

    for line in invoice.lines:
        writer.writerow(
            {
                "item": line.kind,
                "date": _iso(line.occurred_at),
                "event_ref": line.event_ref or "",
                "event_id": line.event_id if line.event_id is not None else "",
                "window_start": _iso(line.window_start),
                "window_end": _iso(line.window_end),
                "description": line.description,
                "currency": line.currency,
                "gross": money(line.gross_minor, line.currency),
                "threshold_reduction": money(line.threshold_reduction_minor, line.currency),
                "penalty": format_decimal(line.penalties_minor, line.currency),
                "receivable": format_decimal(line.receivable_minor, line.currency),
                "amount_due": format_decimal(line.amount_due_minor, line.currency),
                "entry_ids": " ".join(str(ident) for ident in line.entry_ids),
            }
        )
    for currency, total in invoice.totals.items():
        writer.writerow(
            {"item": "total", "currency": currency, "amount_due": format_decimal(total, currency)}
        )
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- PDF


def _latin1(text: str) -> str:
    """``text`` in what fpdf2's core fonts can write (Latin-1); other characters become ``?``."""
    return text.encode("latin-1", "replace").decode("latin-1")


def _pdf(
    title: str,
    heading: Sequence[str],
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    totals: Sequence[str],
    *,
    compress: bool,
) -> bytes:
    pdf = FPDF(orientation="landscape", format="A4")
    pdf.set_compression(compress)
    pdf.set_title(_latin1(title))
    pdf.add_page()
    pdf.set_font("Helvetica", style="B", size=16)
    pdf.cell(0, 10, _latin1(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", size=10)
    for text in heading:
        pdf.cell(0, 6, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)
    pdf.set_font("Helvetica", size=8)
    with pdf.table(first_row_as_headings=True) as table:
        header = table.row()
        for name in columns:
            header.cell(_latin1(name))
        for values in rows:
            row = table.row()
            for value in values:
                row.cell(_latin1(value))
    pdf.ln(4)
    pdf.set_font("Helvetica", style="B", size=12)
    for text in totals:
        pdf.cell(0, 8, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())


def statement_total_texts(statement: DriverStatement) -> list[str]:
    """The statement's total lines as the PDF writes them: ``"Total: 12.34 EUR"``."""
    if not statement.totals:
        return ["Total: nothing earned"]
    return [f"Total: {format_amount(total, currency)}" for currency, total in statement.totals.items()]


def statement_pdf(statement: DriverStatement, *, compress: bool = True) -> bytes:
    """The statement as a PDF: title, period, driver, energy, a table of earning lines, totals."""
    rows = [
        [
            line.occurred_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M"),
            line.event_ref or line.description,
            _kwh(line.event_discharged_kwh),
            format_amount(line.share_minor, line.currency),
            format_amount(line.wear_minor, line.currency),
            format_amount(line.adjustment_minor, line.currency),
            format_amount(line.total_minor, line.currency),
            line.zero_reason or "",
        ]
        for line in statement.lines
    ]
    heading = [
        f"Period: {statement.month} ({statement.month.start:%Y-%m-%d} to "
        f"{statement.month.end:%Y-%m-%d}, UTC)",
        f"Driver: {statement.driver_email} (user {statement.driver_id})",
        f"Charging sessions: {statement.sessions}; energy charged: {statement.charged_kwh:.3f} kWh; "
        f"discharged for grid services: {statement.discharged_kwh:.3f} kWh",
    ]
    heading += [
        f"Wear compensation: {format_amount(wear, currency)}"
        for currency, wear in statement.wear_totals.items()
    ]
    columns = ["Date (UTC)", "Event", "Discharged kWh", "Share", "Wear", "Adjustment", "Amount", "Note"]
    title = f"fleetgrid statement {statement.month}"
    return _pdf(title, heading, columns, rows, statement_total_texts(statement), compress=compress)


def invoice_total_texts(invoice: ProgramInvoice) -> list[str]:
    """The invoice's total lines as the PDF writes them: ``"Total due: 12.34 EUR"``."""
    if not invoice.totals:
        return ["Total due: nothing"]
    return [f"Total due: {format_amount(total, currency)}" for currency, total in invoice.totals.items()]


def invoice_pdf(invoice: ProgramInvoice, *, compress: bool = True) -> bytes:
    """The invoice as a PDF: title, period, program, a table of events, totals."""

    def money(value: int | None, currency: str) -> str:
        return format_amount(value, currency) if value is not None else ""

    rows = [
        [
            line.occurred_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M"),
            line.event_ref or line.description,
            money(line.gross_minor, line.currency),
            money(line.threshold_reduction_minor, line.currency),
            format_amount(line.penalties_minor, line.currency),
            format_amount(line.amount_due_minor, line.currency),
        ]
        for line in invoice.lines
    ]
    heading = [
        f"Period: {invoice.month} ({invoice.month.start:%Y-%m-%d} to {invoice.month.end:%Y-%m-%d}, UTC)",
        f"Program: {invoice.program_name} ({invoice.program_id})",
    ]
    columns = ["Date (UTC)", "Event", "Gross", "Threshold reduction", "Penalty", "Amount due"]
    title = f"fleetgrid invoice {invoice.program_id} {invoice.month}"
    return _pdf(title, heading, columns, rows, invoice_total_texts(invoice), compress=compress)
