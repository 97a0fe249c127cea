"""What the settlement API accepts and returns: earnings, statements, invoices, the ledger, disputes.

Amounts are integer minor units of their currency (``*_minor``), next to a ``text`` written with the
currency's decimals (``"12.34 EUR"``). Times are ISO-8601 in UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aggregator.api.schemas import Page
from aggregator.db.models import DisputeEventKind, LedgerAccountKind, LedgerEntry, SettlementRunKind
from aggregator.settlement.disputes import MAX_TEXT, DisputeStatus
from aggregator.settlement.statements import (
    DriverStatement,
    EarningLine,
    InvoiceLine,
    LineKind,
    ProgramInvoice,
    format_amount,
)

DocumentFormat = Literal["json", "csv", "pdf"]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


class Money(BaseModel):
    amount_minor: int
    currency: str
    text: str
    """``amount_minor`` written with the currency's decimals: ``"12.34 EUR"``."""

    @classmethod
    def of(cls, amount_minor: int, currency: str) -> Money:
        return cls(amount_minor=amount_minor, currency=currency, text=format_amount(amount_minor, currency))


def money_list(totals: dict[str, int]) -> list[Money]:
    return [Money.of(amount, currency) for currency, amount in totals.items()]


# ------------------------------------------------------------------------------ earnings, statements


class EarningLinePublic(BaseModel):
    """What one settled event (period, adjustment) credited the driver; positive is owed to them."""

    kind: LineKind
    description: str
    occurred_at: dt.datetime
    currency: str
    share_minor: int
    wear_minor: int
    adjustment_minor: int
    total: Money
    event_ref: str | None
    event_id: int | None
    event_discharged_kwh: float | None
    """Energy [kWh] the driver's vehicles discharged during the event's window."""
    zero_reason: str | None
    entry_ids: list[int]
    """The ledger entries behind the line; a dispute names one of them."""

    @classmethod
    def of(cls, line: EarningLine) -> EarningLinePublic:
        return cls(
            kind=line.kind,
            description=line.description,
            occurred_at=line.occurred_at,
            currency=line.currency,
            share_minor=line.share_minor,
            wear_minor=line.wear_minor,
            adjustment_minor=line.adjustment_minor,
            total=Money.of(line.total_minor, line.currency),
            event_ref=line.event_ref,
            event_id=line.event_id,
            event_discharged_kwh=line.event_discharged_kwh,
            zero_reason=line.zero_reason,
            entry_ids=list(line.entry_ids),
        )


class EarningsPage(Page[EarningLinePublic]):
    totals: list[Money]
    """Earnings per currency over the whole range, not just this page."""


class StatementPublic(BaseModel):
    month: str
    start: dt.datetime
    end: dt.datetime
    driver_id: int
    driver_email: str
    sessions: int
    charged_kwh: float
    discharged_kwh: float
    """Energy [kWh] discharged for grid services in the month."""
    lines: list[EarningLinePublic]
    wear_compensation: list[Money]
    totals: list[Money]

    @classmethod
    def of(cls, statement: DriverStatement) -> StatementPublic:
        return cls(
            month=str(statement.month),
            start=statement.month.start,
            end=statement.month.end,
            driver_id=statement.driver_id,
            driver_email=statement.driver_email,
            sessions=statement.sessions,
            charged_kwh=statement.charged_kwh,
            discharged_kwh=statement.discharged_kwh,
            lines=[EarningLinePublic.of(line) for line in statement.lines],
            wear_compensation=money_list(statement.wear_totals),
            totals=money_list(statement.totals),
        )


class InvoiceLinePublic(BaseModel):
    kind: LineKind
    description: str
    occurred_at: dt.datetime
    currency: str
    event_ref: str | None
    event_id: int | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    run_version: int | None
    gross_minor: int | None
    threshold_reduction_minor: int | None
    penalty_minor: int | None
    drivers_paid: int | None
    performance: dict[str, Any] | None
    receivable_minor: int
    penalties_minor: int
    amount_due: Money
    entry_ids: list[int]

    @classmethod
    def of(cls, line: InvoiceLine) -> InvoiceLinePublic:
        return cls(
            kind=line.kind,
            description=line.description,
            occurred_at=line.occurred_at,
            currency=line.currency,
            event_ref=line.event_ref,
            event_id=line.event_id,
            window_start=line.window_start,
            window_end=line.window_end,
            run_version=line.run_version,
            gross_minor=line.gross_minor,
            threshold_reduction_minor=line.threshold_reduction_minor,
            penalty_minor=line.penalty_minor,
            drivers_paid=line.drivers_paid,
            performance=line.performance,
            receivable_minor=line.receivable_minor,
            penalties_minor=line.penalties_minor,
            amount_due=Money.of(line.amount_due_minor, line.currency),
            entry_ids=list(line.entry_ids),
        )


class InvoicePublic(BaseModel):
    program_id: str
    program_name: str
    month: str
    start: dt.datetime
    end: dt.datetime
    lines: list[InvoiceLinePublic]
    totals: list[Money]

    @classmethod
    def of(cls, invoice: ProgramInvoice) -> InvoicePublic:
        return cls(
            program_id=invoice.program_id,
            program_name=invoice.program_name,
            month=str(invoice.month),
            start=invoice.month.start,
            end=invoice.month.end,
            lines=[InvoiceLinePublic.of(line) for line in invoice.lines],
            totals=money_list(invoice.totals),
        )


# ------------------------------------------------------------------------------------------- ledger


class SettlementRunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    scope: str
    kind: SettlementRunKind
    version: int
    inputs_hash: str
    inputs: dict[str, Any]
    supersedes_id: int | None
    created_at: dt.datetime


class LedgerAccountPublic(BaseModel):
    id: int
    kind: LedgerAccountKind
    owner_ref: str
    currency: str
    balance: Money
    """Debit-positive balance over the requested range (all time without one)."""
    created_at: dt.datetime


class LedgerEntryPublic(BaseModel):
    id: int
    transaction_id: int
    account_id: int
    kind: LedgerAccountKind
    owner_ref: str
    currency: str
    amount_minor: int
    """Positive a debit, negative a credit."""
    memo: str

    @classmethod
    def of(cls, entry: LedgerEntry) -> LedgerEntryPublic:
        return cls(
            id=entry.id,
            transaction_id=entry.transaction_id,
            account_id=entry.account_id,
            kind=entry.account.kind,
            owner_ref=entry.account.owner_ref,
            currency=entry.account.currency,
            amount_minor=entry.amount_minor,
            memo=entry.memo,
        )


class LedgerTransactionPublic(BaseModel):
    id: int
    run_id: int | None
    description: str
    occurred_at: dt.datetime
    booked_at: dt.datetime
    reverses_id: int | None
    entries: list[LedgerEntryPublic]


# ----------------------------------------------------------------------------------------- disputes


class DisputeCreate(BaseModel):
    """A dispute on one ledger entry of the caller's own account (a statement or invoice line's
    ``entry_ids``)."""

    model_config = ConfigDict(extra="forbid")

    ledger_entry_id: int
    reason: Text


class DisputeComment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Text


class DisputeResolve(BaseModel):
    """``adjusted``: book ``amount_minor`` (> 0) in the disputing party's favour against
    ``counter_account``; ``rejected``: change nothing. Both say why in ``note``."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["adjusted", "rejected"]
    note: Text
    amount_minor: Annotated[int, Field(gt=0)] | None = None
    counter_account: LedgerAccountKind | None = None

    @model_validator(mode="after")
    def _adjustment_fields(self) -> DisputeResolve:
        given = self.amount_minor is not None, self.counter_account is not None
        if self.outcome == "adjusted" and not all(given):
            raise ValueError("an adjusted outcome needs amount_minor and counter_account")
        if self.outcome == "rejected" and any(given):
            raise ValueError("a rejected outcome takes no amount_minor or counter_account")
        return self


class DisputeEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: DisputeEventKind
    author_id: int
    note: str
    created_at: dt.datetime
    adjustment_transaction_id: int | None


class DisputePublic(BaseModel):
    id: int
    status: DisputeStatus
    ledger_entry_id: int
    account_owner_ref: str
    """Whose line it is: ``user:<id>`` or ``program:<id>``."""
    opened_by_id: int
    reason: str
    opened_at: dt.datetime
    disputed: Money
    """The disputed entry's amount (debit-positive, as booked)."""


class DisputeDetail(DisputePublic):
    entry: LedgerEntryPublic
    history: list[DisputeEventPublic]
