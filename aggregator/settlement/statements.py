"""Driver monthly statements and program invoices: their data, read from the ledger.

The CSV and PDF documents are written by :mod:`aggregator.settlement.statement_documents`.

A **driver statement** for a calendar month (UTC) lists:

- the energy the driver's vehicles charged [kWh]: the sum of ``energy_kwh`` of their charging sessions
  that started in the month (as ``/driver/energy`` counts it);
- the energy they discharged for grid services [kWh]: the negative EVSE power of the telemetry of their
  sessions, integrated by :func:`discharged_kwh`;
- one earning line per settled event (or period, or hand-booked transaction such as a dispute's
  adjustment) whose ledger transactions *occurred* in the month: the share and the wear compensation
  credited to the driver's payable account (net of every reversal, so a re-settled event shows its
  latest figures), the energy discharged during the event's window, and the reason the settlement run
  recorded when the driver earned nothing;
- totals per currency.

A **program invoice** for a grid operator lists, per settled event of the program in the month, what
the settlement run's stored inputs say (gross, threshold reduction, penalty, and the performance when
the inputs carry it) and what was booked: the program receivable's entries net of the penalties
withheld, which is the amount due.

Amounts are integer minor units of their currency; :func:`format_amount` writes them with the
currency's number of decimals (:data:`~aggregator.programs.terms.CURRENCY_EXPONENTS`). Ledger
credits to a driver's payable are negative; a statement shows them as positive earnings.

Every line carries the ids of the ledger entries behind it: a dispute names one of them
(:mod:`aggregator.settlement.disputes`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from aggregator.db.models import (
    Charger,
    ChargingSession,
    DispatchEvent,
    EvseTelemetryRecord,
    LedgerAccount,
    LedgerAccountKind,
    LedgerEntry,
    LedgerTransaction,
    Program,
    SettlementRun,
    TelemetryRecord,
    User,
    Vehicle,
)
from aggregator.programs.terms import CURRENCY_EXPONENTS
from aggregator.settlement.ledger import driver_owner, program_owner
from aggregator.settlement.runs import latest_run

MONTH_PATTERN = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")

MAX_HOLD = dt.timedelta(minutes=15)
"""How long an EVSE reading stands for the power until the next one, at most: a gateway that stopped
reporting does not keep discharging on paper."""

SHARE_MEMO = "share"
WEAR_MEMO = "wear compensation"
"""The memos :func:`aggregator.settlement.runs.booking_postings` gives a driver's entries."""

LineKind = Literal["event", "period", "adjustment"]


class StatementError(ValueError):
    """A statement or invoice that cannot be made as asked; the message names the field at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


# ------------------------------------------------------------------------------------- months, money


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month in UTC, ``[start, end)``."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """``YYYY-MM``; :class:`StatementError` naming ``month`` otherwise."""
        found = MONTH_PATTERN.match(text)
        if found is None:
            raise StatementError("month", f"{text!r} is not a month as YYYY-MM (e.g. 2026-07)")
        return cls(int(found.group(1)), int(found.group(2)))

    @property
    def start(self) -> dt.datetime:
        return dt.datetime(self.year, self.month, 1, tzinfo=dt.UTC)

    @property
    def end(self) -> dt.datetime:
        if self.month == 12:
            return dt.datetime(self.year + 1, 1, 1, tzinfo=dt.UTC)
        return dt.datetime(self.year, self.month + 1, 1, tzinfo=dt.UTC)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def currency_exponent(currency: str) -> int:
    """Decimals of ``currency``'s minor unit; :class:`StatementError` for a currency we cannot format."""
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise StatementError(
            "currency",
            f"{currency!r} has no known minor-unit exponent; known: {', '.join(CURRENCY_EXPONENTS)}",
        ) from None


def format_decimal(amount_minor: int, currency: str) -> str:
    """``amount_minor`` as a decimal number of major units: 1234 EUR cents → ``"12.34"``, 1234 JPY →
    ``"1234"``, -5 USD cents → ``"-0.05"``."""
    exponent = currency_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    digits = str(abs(amount_minor))
    if exponent == 0:
        return f"{sign}{digits}"
    digits = digits.rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"


def format_amount(amount_minor: int, currency: str) -> str:
    """``amount_minor`` with its currency: ``"12.34 EUR"``."""
    return f"{format_decimal(amount_minor, currency)} {currency}"


# ------------------------------------------------------------------------------------------- energy


def discharged_kwh(
    session: Session, charging_sessions: Iterable[ChargingSession], start: dt.datetime, end: dt.datetime
) -> float:
    """Energy [kWh] discharged from the vehicles of ``charging_sessions`` within ``[start, end)``.

    Each session's EVSE readings (telemetry key: its charger's charge point id and its EVSE id) taken
    within both the session and ``[start, end)`` are held until the next reading, the end of that
    window, or :data:`MAX_HOLD`, whichever comes first; only negative power (discharging) counts.
    """
    total = 0.0
    for charging in charging_sessions:
        begin = max(start, charging.started_at)
        finish = min(end, charging.stopped_at) if charging.stopped_at is not None else end
        if finish <= begin:
            continue
        charger = session.get(Charger, charging.charger_id)
        if charger is None:  # pragma: no cover (a foreign key)
            continue
        readings = session.execute(
            select(TelemetryRecord.sent_at, EvseTelemetryRecord.power_kw)
            .join(EvseTelemetryRecord, EvseTelemetryRecord.telemetry_id == TelemetryRecord.id)
            .where(
                TelemetryRecord.site_id == charging.site_id,
                EvseTelemetryRecord.charger_id == charger.charge_point_id,
                EvseTelemetryRecord.evse_id == charging.evse_id,
                TelemetryRecord.sent_at >= begin,
                TelemetryRecord.sent_at < finish,
            )
            .order_by(TelemetryRecord.sent_at)
        ).all()
        for index, (sent_at, power_kw) in enumerate(readings):
            until = readings[index + 1][0] if index + 1 < len(readings) else finish
            held = min(until, sent_at + MAX_HOLD) - sent_at
            if power_kw < 0:
                total += -power_kw * held.total_seconds() / 3600
    return total


def _driver_sessions(driver_id: int) -> Select[ChargingSession]:
    return (
        select(ChargingSession)
        .join(Vehicle, Vehicle.id == ChargingSession.vehicle_id)
        .where(Vehicle.owner_id == driver_id)
    )


def _overlapping(
    session: Session, driver_id: int, start: dt.datetime, end: dt.datetime
) -> list[ChargingSession]:
    query = _driver_sessions(driver_id).where(ChargingSession.started_at < end)
    query = query.where((ChargingSession.stopped_at.is_(None)) | (ChargingSession.stopped_at > start))
    return list(session.scalars(query.order_by(ChargingSession.id)))


# ------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class EventWindow:
    """The dispatch event a run's scope names: its public id (first version's row) and latest window."""

    id: int
    start: dt.datetime
    end: dt.datetime


def event_ref_of(scope: str) -> str | None:
    """The event ref of an ``event:<ref>`` run scope; ``None`` for other scopes."""
    return scope.removeprefix("event:") if scope.startswith("event:") else None


def find_event(session: Session, event_ref: str) -> EventWindow | None:
    """The event whose ``source/external_event_id`` is ``event_ref``, if it is stored."""
    versions = session.scalars(
        select(DispatchEvent)
        .where(DispatchEvent.source + "/" + DispatchEvent.external_event_id == event_ref)
        .order_by(DispatchEvent.modification)
    ).all()
    if not versions:
        return None
    latest = versions[-1]
    return EventWindow(min(version.id for version in versions), latest.window_start, latest.window_end)


# ------------------------------------------------------------------------------ ledger, by scope


@dataclass
class _Group:
    """The entries of one scope (a run's scope, or one hand-booked transaction) in one currency."""

    key: str
    currency: str
    occurred_at: dt.datetime
    description: str
    kind: LineKind
    scope: str | None
    by_memo: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_kind: dict[LedgerAccountKind, int] = field(default_factory=lambda: defaultdict(int))
    entry_ids: list[int] = field(default_factory=list)


def _grouped_entries(
    session: Session,
    owner_ref: str,
    kinds: Sequence[LedgerAccountKind],
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> list[_Group]:
    """The entries on ``owner_ref``'s accounts of ``kinds`` whose transactions occurred in the range,
    grouped by the run scope that booked them (each hand-booked transaction a group of its own)."""
    query = (
        select(LedgerEntry, LedgerAccount, LedgerTransaction, SettlementRun)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .outerjoin(SettlementRun, SettlementRun.id == LedgerTransaction.run_id)
        .where(LedgerAccount.owner_ref == owner_ref, LedgerAccount.kind.in_(list(kinds)))
        .order_by(LedgerTransaction.occurred_at, LedgerEntry.id)
    )
    if start is not None:
        query = query.where(LedgerTransaction.occurred_at >= start)
    if end is not None:
        query = query.where(LedgerTransaction.occurred_at < end)
    groups: dict[tuple[str, str], _Group] = {}
    for entry, account, transaction, run in session.execute(query):
        if run is not None:
            key, scope = run.scope, run.scope
            kind: LineKind = "event" if scope.startswith("event:") else "period"
            description = scope
        else:
            key, scope, kind = f"transaction:{transaction.id}", None, "adjustment"
            description = transaction.description
        group = groups.get((key, account.currency))
        if group is None:
            group = _Group(key, account.currency, transaction.occurred_at, description, kind, scope)
            groups[(key, account.currency)] = group
        group.by_memo[entry.memo] += entry.amount_minor
        group.by_kind[account.kind] += entry.amount_minor
        group.entry_ids.append(entry.id)
    return list(groups.values())


def _scopes_with_transactions(
    session: Session, start: dt.datetime | None, end: dt.datetime | None
) -> list[str]:
    query = (
        select(SettlementRun.scope)
        .join(LedgerTransaction, LedgerTransaction.run_id == SettlementRun.id)
        .distinct()
        .order_by(SettlementRun.scope)
    )
    if start is not None:
        query = query.where(LedgerTransaction.occurred_at >= start)
    if end is not None:
        query = query.where(LedgerTransaction.occurred_at < end)
    return list(session.scalars(query))


def _parse_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.astimezone(dt.UTC) if moment.utcoffset() is not None else None


# ---------------------------------------------------------------------------------- driver earnings


@dataclass(frozen=True)
class EarningLine:
    """What one settled event (period, adjustment) credited a driver, in minor units of ``currency``
    (positive: owed to the driver)."""

    kind: LineKind
    description: str
    occurred_at: dt.datetime
    currency: str
    share_minor: int
    wear_minor: int
    adjustment_minor: int
    """Any other credit: a dispute's adjustment, or an entry with another memo."""
    scope: str | None = None
    event_ref: str | None = None
    event_id: int | None = None
    event_discharged_kwh: float | None = None
    """Energy [kWh] the driver's vehicles discharged during the event's window (``None``: no event)."""
    zero_reason: str | None = None
    """Why the settlement run gave the driver nothing (``"no V2G override"``)."""
    entry_ids: tuple[int, ...] = ()

    @property
    def total_minor(self) -> int:
        return self.share_minor + self.wear_minor + self.adjustment_minor


def driver_earnings(
    session: Session, driver_id: int, start: dt.datetime | None = None, end: dt.datetime | None = None
) -> list[EarningLine]:
    """The driver's earning lines whose transactions occurred in ``[start, end)``, oldest first."""
    lines: dict[tuple[str, str], EarningLine] = {}
    owner = driver_owner(driver_id)
    for group in _grouped_entries(session, owner, [LedgerAccountKind.DRIVER_PAYABLE], start, end):
        share = -group.by_memo.get(SHARE_MEMO, 0)
        wear = -group.by_memo.get(WEAR_MEMO, 0)
        other = -sum(amount for memo, amount in group.by_memo.items() if memo not in (SHARE_MEMO, WEAR_MEMO))
        lines[(group.key, group.currency)] = EarningLine(
            kind=group.kind,
            description=group.description,
            occurred_at=group.occurred_at,
            currency=group.currency,
            share_minor=share,
            wear_minor=wear,
            adjustment_minor=other,
            scope=group.scope,
            entry_ids=tuple(group.entry_ids),
        )
    for scope in _scopes_with_transactions(session, start, end):
        if not scope.startswith("event:"):
            continue
        run = latest_run(session, scope)
        if run is None:  # pragma: no cover (the scope was read from a run)
            continue
        for driver in run.inputs.get("drivers", []):
            if driver.get("driver_id") != driver_id or not driver.get("reason"):
                continue
            currency = str(run.inputs.get("currency", ""))
            existing = lines.get((scope, currency))
            if existing is not None:
                lines[(scope, currency)] = _replace(existing, zero_reason=str(driver["reason"]))
            else:
                occurred = _parse_time(run.inputs.get("occurred_at")) or run.created_at
                lines[(scope, currency)] = EarningLine(
                    kind="event",
                    description=scope,
                    occurred_at=occurred,
                    currency=currency,
                    share_minor=0,
                    wear_minor=0,
                    adjustment_minor=0,
                    scope=scope,
                    zero_reason=str(driver["reason"]),
                )
    return [_with_event(session, driver_id, line) for line in sorted(lines.values(), key=_line_order)]


def _line_order(line: EarningLine) -> tuple[dt.datetime, str, str]:
    return (line.occurred_at, line.description, line.currency)


def _replace(line: EarningLine, **changes: Any) -> EarningLine:
    return dataclasses.replace(line, **changes)


def _with_event(session: Session, driver_id: int, line: EarningLine) -> EarningLine:
    if line.scope is None:
        return line
    event_ref = event_ref_of(line.scope)
    if event_ref is None:
        return line
    window = find_event(session, event_ref)
    if window is None:
        return _replace(line, event_ref=event_ref)
    sessions = _overlapping(session, driver_id, window.start, window.end)
    return _replace(
        line,
        event_ref=event_ref,
        event_id=window.id,
        event_discharged_kwh=discharged_kwh(session, sessions, window.start, window.end),
    )


def totals_by_currency(amounts: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Sum of ``(currency, amount_minor)`` pairs per currency, by currency code."""
    totals: dict[str, int] = defaultdict(int)
    for currency, amount in amounts:
        totals[currency] += amount
    return dict(sorted(totals.items()))


# -------------------------------------------------------------------------------- driver statement


@dataclass(frozen=True)
class DriverStatement:
    """A driver's month: energy, earning lines and totals (see the module docstring)."""

    driver_id: int
    driver_email: str
    month: Month
    sessions: int
    charged_kwh: float
    discharged_kwh: float
    lines: tuple[EarningLine, ...]

    @property
    def totals(self) -> dict[str, int]:
        """Earnings [minor units] per currency."""
        return totals_by_currency((line.currency, line.total_minor) for line in self.lines)

    @property
    def wear_totals(self) -> dict[str, int]:
        """Wear compensation [minor units] per currency."""
        return totals_by_currency((line.currency, line.wear_minor) for line in self.lines)


def driver_statement(session: Session, driver_id: int, month: Month) -> DriverStatement:
    """The statement of driver ``driver_id`` (a user id) for ``month``."""
    driver = session.get(User, driver_id)
    if driver is None:
        raise StatementError("driver_id", f"there is no user {driver_id}")
    started = list(
        session.scalars(
            _driver_sessions(driver_id)
            .where(ChargingSession.started_at >= month.start, ChargingSession.started_at < month.end)
            .order_by(ChargingSession.id)
        )
    )
    overlapping = _overlapping(session, driver_id, month.start, month.end)
    return DriverStatement(
        driver_id=driver_id,
        driver_email=driver.email,
        month=month,
        sessions=len(started),
        charged_kwh=sum(charging.energy_kwh or 0.0 for charging in started),
        discharged_kwh=discharged_kwh(session, overlapping, month.start, month.end),
        lines=tuple(driver_earnings(session, driver_id, month.start, month.end)),
    )


# --------------------------------------------------------------------------------- program invoice


@dataclass(frozen=True)
class InvoiceLine:
    """One settled event (period, adjustment) of a program: the run's inputs and what was booked.

    ``receivable_minor`` is the net of the program receivable's entries, ``penalties_minor`` the
    penalties withheld (positive), ``amount_due_minor`` their difference: what the program pays.
    """

    kind: LineKind
    description: str
    occurred_at: dt.datetime
    currency: str
    receivable_minor: int
    penalties_minor: int
    scope: str | None = None
    event_ref: str | None = None
    event_id: int | None = None
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    run_version: int | None = None
    gross_minor: int | None = None
    threshold_reduction_minor: int | None = None
    penalty_minor: int | None = None
    """The penalty the latest run's inputs computed (the booked one is ``penalties_minor``)."""
    drivers_paid: int | None = None
    """How many drivers the latest run credited."""
    performance: dict[str, Any] | None = None
    """The delivery figures the run's inputs carry under ``performance``, if any."""
    entry_ids: tuple[int, ...] = ()

    @property
    def amount_due_minor(self) -> int:
        return self.receivable_minor - self.penalties_minor


@dataclass(frozen=True)
class ProgramInvoice:
    """What a program owes for a month, event by event."""

    program_id: str
    program_name: str
    operator_id: int
    month: Month
    lines: tuple[InvoiceLine, ...]

    @property
    def totals(self) -> dict[str, int]:
        """Amount due [minor units] per currency."""
        return totals_by_currency((line.currency, line.amount_due_minor) for line in self.lines)


def program_invoice(session: Session, program_id: str, month: Month) -> ProgramInvoice:
    """The invoice of program ``program_id`` for ``month``."""
    program = session.get(Program, program_id)
    if program is None:
        raise StatementError("program_id", f"there is no program {program_id!r}")
    kinds = [LedgerAccountKind.PROGRAM_RECEIVABLE, LedgerAccountKind.PENALTIES]
    lines = []
    for group in _grouped_entries(session, program_owner(program_id), kinds, month.start, month.end):
        line = InvoiceLine(
            kind=group.kind,
            description=group.description,
            occurred_at=group.occurred_at,
            currency=group.currency,
            receivable_minor=group.by_kind.get(LedgerAccountKind.PROGRAM_RECEIVABLE, 0),
            penalties_minor=-group.by_kind.get(LedgerAccountKind.PENALTIES, 0),
            scope=group.scope,
            entry_ids=tuple(group.entry_ids),
        )
        lines.append(_with_run(session, line))
    lines.sort(key=lambda line: (line.occurred_at, line.description, line.currency))
    return ProgramInvoice(program.id, program.name, program.owner_id, month, tuple(lines))


def _with_run(session: Session, line: InvoiceLine) -> InvoiceLine:
    if line.scope is None:
        return line
    run = latest_run(session, line.scope)
    if run is None:  # pragma: no cover (the scope was read from a run)
        return line
    inputs = run.inputs

    def minor(name: str) -> int | None:
        value = inputs.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    drivers = inputs.get("drivers", [])
    performance = inputs.get("performance")
    changes: dict[str, Any] = {
        "run_version": run.version,
        "gross_minor": minor("gross_minor"),
        "threshold_reduction_minor": minor("threshold_reduction_minor"),
        "penalty_minor": minor("penalty_minor"),
        "drivers_paid": sum(1 for driver in drivers if driver.get("share_minor") or driver.get("wear_minor")),
        "performance": performance if isinstance(performance, dict) else None,
    }
    event_ref = event_ref_of(line.scope)
    if event_ref is not None:
        changes["event_ref"] = event_ref
        window = find_event(session, event_ref)
        if window is not None:
            changes |= {"event_id": window.id, "window_start": window.start, "window_end": window.end}
    return dataclasses.replace(line, **changes)
