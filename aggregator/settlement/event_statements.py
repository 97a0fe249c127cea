"""One settled dispatch event's statement: where every minor unit of it went, and why.

An :class:`EventStatement` shows, in integer minor units of the program's currency:

- what the program owes for the event: ``gross``, less a ``threshold_reduction`` and the ``penalty``;
- the ``platform_fee``;
- each driver's ``share`` and ``wear`` compensation, or the reason they earned nothing;
- the ``residual``: the part of the pot no driver can be credited with (delivery no vehicle of known
  state accounts for, or a pot nobody contributed to), booked to the platform, with its reason;
- the ``platform_loss``: a negative net pot the platform bears (the drivers do not share losses);
- ``unallocated``: what lands on no named account, which is ``0`` (a booking that leaves anything
  unallocated is refused, :class:`~aggregator.settlement.bookings.Booking`); it is computed, not assumed;
- what was measured: each site's baseline as declared when the event was notified, and each vehicle's
  delivery, or why it has none (:func:`aggregator.settlement.event_settlement.measured`).

:func:`event_statement` reads it from the ledger (the entries the event's settlement runs booked, net
of reversals, so it shows the latest version) and the latest run's inputs; :func:`statement_of` makes
it from a settlement just computed (:class:`~aggregator.settlement.event_settlement.EventSettlement`),
as the demo and ``fleetgrid settle`` print it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db.models import (
    LedgerAccount,
    LedgerAccountKind,
    LedgerEntry,
    LedgerTransaction,
    SettlementRun,
    User,
)
from aggregator.settlement.bookings import PLATFORM_LOSS_MEMO, RESIDUAL_MEMO, EventBooking
from aggregator.settlement.event_settlement import EventSettlement
from aggregator.settlement.ledger import PLATFORM, driver_owner
from aggregator.settlement.runs import latest_run
from aggregator.settlement.statements import StatementError, format_amount


@dataclass(frozen=True)
class DriverLine:
    """What one driver got from the event [minor units]; ``reason`` when it was nothing."""

    driver_id: int
    email: str | None
    share_minor: int
    wear_minor: int
    reason: str | None = None

    @property
    def total_minor(self) -> int:
        return self.share_minor + self.wear_minor


@dataclass(frozen=True)
class VehicleLine:
    """One charging session's delivery [kWh], or why it counts for nothing (``excluded``)."""

    session_id: int
    driver_id: int
    delivered_kwh: float
    excluded: str | None = None


@dataclass(frozen=True)
class EventStatement:
    """Where an event's money went (module doc)."""

    event_ref: str
    program_id: str
    currency: str
    occurred_at: dt.datetime
    gross_minor: int
    threshold_reduction_minor: int
    penalty_minor: int
    platform_fee_minor: int
    drivers: tuple[DriverLine, ...]
    residual_minor: int
    residual_reason: str
    platform_loss_minor: int
    wear_funded_by_platform: bool = False
    run_version: int | None = None
    measured: Mapping[str, Any] | None = None
    """What was measured (:attr:`aggregator.settlement.bookings.EventBooking.performance`)."""
    vehicle_rows: tuple[Mapping[str, Any], ...] = ()
    """Each session's delivery (:attr:`aggregator.settlement.bookings.EventBooking.vehicles`)."""

    @property
    def to_drivers_minor(self) -> int:
        """The drivers' shares and wear compensation."""
        return sum(line.total_minor for line in self.drivers)

    @property
    def unallocated_minor(self) -> int:
        """What the event left for drivers that lands on no named account (``0``)."""
        left = (
            self.gross_minor - self.threshold_reduction_minor - self.penalty_minor - self.platform_fee_minor
        )
        paid = sum(line.share_minor for line in self.drivers) + self.residual_minor - self.platform_loss_minor
        if not self.wear_funded_by_platform:
            paid += sum(line.wear_minor for line in self.drivers)
        return left - paid

    @property
    def vehicles(self) -> tuple[VehicleLine, ...]:
        """Each session's delivery or why it counts for nothing."""
        return tuple(
            VehicleLine(
                int(row["session_id"]),
                int(row["driver_id"]),
                float(row["delivered_kwh"]),
                row.get("excluded"),
            )
            for row in self.vehicle_rows
            if isinstance(row, Mapping)
        )

    def money(self, minor: int) -> str:
        return format_amount(minor, self.currency)

    def summary(self) -> str:
        """One line: gross, penalty, platform fee, to drivers, residual, platform loss, unallocated."""
        parts = [
            f"gross {self.money(self.gross_minor)}",
            f"penalty {self.money(self.penalty_minor)}",
            f"platform fee {self.money(self.platform_fee_minor)}",
            f"to drivers {self.money(self.to_drivers_minor)}",
        ]
        if self.threshold_reduction_minor:
            parts.insert(1, f"threshold reduction {self.money(self.threshold_reduction_minor)}")
        if self.residual_minor:
            parts.append(f"residual {self.money(self.residual_minor)} ({self.residual_reason})")
        if self.platform_loss_minor:
            parts.append(f"platform loss {self.money(self.platform_loss_minor)}")
        parts.append(f"unallocated {self.money(self.unallocated_minor)}")
        return ", ".join(parts)

    def lines(self) -> list[str]:
        """The statement as text, one line each: the summary, each driver, each vehicle excluded."""
        text = [self.summary()]
        for line in self.drivers:
            who = line.email or f"user {line.driver_id}"
            row = f"{who}: share {self.money(line.share_minor)}"
            if line.wear_minor:
                row += f", wear compensation {self.money(line.wear_minor)}"
            if line.reason:
                row += f" ({line.reason})"
            text.append(row)
        text.extend(
            f"session {vehicle.session_id}: excluded: {vehicle.excluded}"
            for vehicle in self.vehicles
            if vehicle.excluded
        )
        return text


def statement_of(settlement: EventSettlement) -> EventStatement:
    """The statement of a settlement just computed (what it books, whether or not it was stored)."""
    booking = settlement.booking
    return _from_booking(booking, settlement.inputs.drivers)


def _from_booking(booking: EventBooking, emails: Mapping[int, str]) -> EventStatement:
    drivers = tuple(
        DriverLine(
            line["driver_id"],
            emails.get(line["driver_id"]),
            line["share_minor"],
            line["wear_minor"],
            line["reason"],
        )
        for line in booking.drivers()
    )
    return EventStatement(
        event_ref=booking.event_ref,
        program_id=booking.program_id,
        currency=booking.currency,
        occurred_at=booking.occurred_at,
        gross_minor=booking.gross_minor,
        threshold_reduction_minor=booking.threshold_reduction_minor,
        penalty_minor=booking.penalty_minor,
        platform_fee_minor=booking.platform_fee_minor,
        drivers=drivers,
        residual_minor=booking.residual_minor,
        residual_reason=booking.residual_reason,
        platform_loss_minor=booking.platform_loss_minor,
        wear_funded_by_platform=booking.wear_funded_by_platform,
        measured=booking.performance,
        vehicle_rows=booking.vehicles,
    )


def event_statement(session: Session, event_ref: str) -> EventStatement:
    """The statement of the event ``event_ref`` (``source/external id``) as booked in the ledger
    (module doc); :class:`~aggregator.settlement.statements.StatementError` if it was never settled."""
    scope = f"event:{event_ref}"
    run = latest_run(session, scope)
    if run is None:
        raise StatementError("event_ref", f"event {event_ref!r} has not been settled")
    inputs = run.inputs
    currency = str(inputs.get("currency", ""))
    booked: dict[tuple[LedgerAccountKind, str, str], int] = defaultdict(int)
    rows = session.execute(
        select(LedgerAccount.kind, LedgerAccount.owner_ref, LedgerEntry.memo, LedgerEntry.amount_minor)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .join(SettlementRun, SettlementRun.id == LedgerTransaction.run_id)
        .where(SettlementRun.scope == scope, LedgerAccount.currency == currency)
    )
    for kind, owner, memo, minor in rows:
        booked[(kind, owner, memo)] += minor

    def amount(kind: LedgerAccountKind, owner: str, memo: str) -> int:
        return booked.get((kind, owner, memo), 0)

    program = f"program:{inputs.get('program_id', '')}"
    residual = -sum(
        total
        for (kind, owner, memo), total in booked.items()
        if kind is LedgerAccountKind.PLATFORM_REVENUE and owner == PLATFORM and memo.startswith(RESIDUAL_MEMO)
    )
    reasons = {line["driver_id"]: line.get("reason") for line in inputs.get("drivers", [])}
    driver_ids = sorted(
        {
            int(owner.removeprefix("user:"))
            for (kind, owner, _) in booked
            if kind is LedgerAccountKind.DRIVER_PAYABLE
        }
        | set(reasons)
    )
    emails = {
        int(user_id): email
        for user_id, email in session.execute(select(User.id, User.email).where(User.id.in_(driver_ids)))
    }
    drivers = tuple(
        DriverLine(
            driver,
            emails.get(driver),
            -amount(LedgerAccountKind.DRIVER_PAYABLE, driver_owner(driver), "share"),
            -amount(LedgerAccountKind.DRIVER_PAYABLE, driver_owner(driver), "wear compensation"),
            reasons.get(driver),
        )
        for driver in driver_ids
    )
    receivable = LedgerAccountKind.PROGRAM_RECEIVABLE
    performance = inputs.get("performance")
    return EventStatement(
        event_ref=event_ref,
        program_id=str(inputs.get("program_id", "")),
        currency=currency,
        occurred_at=dt.datetime.fromisoformat(str(inputs.get("occurred_at"))),
        gross_minor=amount(receivable, program, "gross"),
        threshold_reduction_minor=-amount(receivable, program, "threshold reduction"),
        penalty_minor=-amount(LedgerAccountKind.PENALTIES, program, "penalty"),
        platform_fee_minor=-amount(LedgerAccountKind.PLATFORM_REVENUE, PLATFORM, "platform fee"),
        drivers=drivers,
        residual_minor=residual,
        residual_reason=str(inputs.get("residual_reason", "")),
        platform_loss_minor=amount(LedgerAccountKind.PLATFORM_REVENUE, PLATFORM, PLATFORM_LOSS_MEMO),
        wear_funded_by_platform=bool(inputs.get("wear_funded_by_platform", False)),
        run_version=run.version,
        measured=performance if isinstance(performance, Mapping) else None,
        vehicle_rows=tuple(row for row in inputs.get("vehicles", []) if isinstance(row, Mapping)),
    )


__all__ = ["DriverLine", "EventStatement", "VehicleLine", "event_statement", "statement_of"]
