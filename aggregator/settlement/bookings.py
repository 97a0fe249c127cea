"""What a settlement run books: an event's or a program's period's amounts, as ledger postings.

A booking (:class:`EventBooking`, :class:`PeriodBooking`) holds integer minor-unit amounts from the
calculations of :mod:`aggregator.settlement`, checked when it is made; :mod:`aggregator.settlement.runs`
books it once per version of its scope, identified by the hash of :func:`canonical_inputs`.

The booking (:func:`booking_postings`), all amounts in minor units of the program's currency, laid
out as :func:`aggregator.programs.terms.event_revenue` computes them (wear compensation is paid to
the drivers who discharged, out of what the event earned for drivers):

=====================================  ================  =================================
account                                debit (+)         credit (−)
=====================================  ================  =================================
program receivable (``program:<id>``)  gross             threshold reduction
penalties (``program:<id>``)                             penalty
platform revenue (``platform``)        platform loss     platform fee, residual (memo
                                                         ``residual: <reason>``)
driver payable (``user:<id>``)                           share (a negative share debits),
                                                         wear compensation
=====================================  ================  =================================

The program owes the receivable's balance less the penalties' (a contra account). Every minor unit
the event leaves for drivers lands on a named account: the drivers' shares and wear compensation; the
*residual*, the part of the pot allocated to delivery no driver can be credited with (or the whole pot
when nobody contributed), to platform revenue with its reason in the memo; and the *platform loss*, a
negative net pot the platform bears because the drivers do not share it
(:attr:`aggregator.programs.terms.PaymentTerms.drivers_share_losses`), which debits platform revenue.
The booking balances because ``gross − threshold reduction − penalty − platform fee = Σ shares + Σ
wear + residual − platform loss`` (checked, :class:`BookingError` otherwise), so nothing is left
unallocated (:attr:`Booking.unallocated_minor` is ``0`` by construction). With
``wear_funded_by_platform`` the wear compensation is our expense on top instead (debit wear
compensation expense, ``platform``) and left out of that sum.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aggregator.db.models import SettlementRunKind
from aggregator.settlement.ledger import (
    PLATFORM,
    AccountKey,
    LedgerAccountKind,
    LedgerError,
    Posting,
    driver_owner,
    program_owner,
)

BOOKING_FORMAT = 2
"""Part of every canonical input: raise it when :func:`booking_postings` books differently, so that
every scope's next run books anew."""


class BookingError(ValueError):
    """A booking that cannot be booked as given; the message names the field (and driver) at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


# ------------------------------------------------------------------------------------------ bookings


@dataclass(frozen=True, kw_only=True)
class Booking:
    """What one settlement books for one program, in integer minor units of ``currency``.

    The program-level amounts are :class:`~aggregator.programs.terms.EventRevenue`'s lines (all
    >= 0). ``driver_shares_minor`` is the allocation of the drivers' net pot by driver (user id;
    negative when drivers share a loss), ``wear_minor_by_driver`` the wear compensation (>= 0) of the
    drivers who discharged, ``residual_minor`` the part of the pot no driver can be credited with
    (booked to platform revenue; negative when it shares a loss) and ``residual_reason`` why,
    ``platform_loss_minor`` (>= 0) a negative net pot the platform bears, ``zero_reasons`` why a
    driver with a zero share earned nothing (``"no V2G override"``), kept with the run's inputs for
    statements.
    """

    program_id: str
    currency: str
    gross_minor: int
    threshold_reduction_minor: int = 0
    penalty_minor: int = 0
    platform_fee_minor: int = 0
    driver_shares_minor: Mapping[int, int] = field(default_factory=dict)
    wear_minor_by_driver: Mapping[int, int] = field(default_factory=dict)
    residual_minor: int = 0
    residual_reason: str = ""
    platform_loss_minor: int = 0
    zero_reasons: Mapping[int, str] = field(default_factory=dict)
    wear_funded_by_platform: bool = False

    def __post_init__(self) -> None:
        if not self.program_id:
            raise BookingError("program_id", "is empty")
        try:
            AccountKey(LedgerAccountKind.PROGRAM_RECEIVABLE, program_owner(self.program_id), self.currency)
        except LedgerError as error:
            raise BookingError("program_id/currency", str(error)) from error
        for name in (
            "gross_minor",
            "threshold_reduction_minor",
            "penalty_minor",
            "platform_fee_minor",
            "platform_loss_minor",
        ):
            _check_amount(name, getattr(self, name), non_negative=True)
        _check_amount("residual_minor", self.residual_minor, non_negative=False)
        if self.residual_minor and not self.residual_reason:
            raise BookingError("residual_reason", f"is empty but the residual is {self.residual_minor}")
        for name, non_negative in (("driver_shares_minor", False), ("wear_minor_by_driver", True)):
            for driver, amount in getattr(self, name).items():
                _check_driver(name, driver)
                _check_amount(f"{name}[{driver}]", amount, non_negative=non_negative)
        for driver, reason in self.zero_reasons.items():
            _check_driver("zero_reasons", driver)
            if self.driver_shares_minor.get(driver, 0) != 0:
                raise BookingError(
                    f"zero_reasons[{driver}]",
                    f"driver {driver} has a share of {self.driver_shares_minor[driver]}, not 0",
                )
            if not reason:
                raise BookingError(f"zero_reasons[{driver}]", "is empty")
        left = self.unallocated_minor
        if left:
            wear = "" if self.wear_funded_by_platform else " + wear"
            raise BookingError(
                "driver_shares_minor",
                f"shares{wear} + residual − platform loss sum to {self.for_drivers_minor - left}"
                f" but gross − threshold reduction − penalty − platform fee = {self.gross_minor} − "
                f"{self.threshold_reduction_minor} − {self.penalty_minor} − {self.platform_fee_minor} = "
                f"{self.for_drivers_minor} ({self.currency} minor units)",
            )

    @property
    def for_drivers_minor(self) -> int:
        """What the event leaves for drivers: ``gross − threshold reduction − penalty − platform fee``."""
        return (
            self.gross_minor - self.threshold_reduction_minor - self.penalty_minor - self.platform_fee_minor
        )

    @property
    def to_drivers_minor(self) -> int:
        """What the drivers are credited: their shares and their wear compensation."""
        return sum(self.driver_shares_minor.values()) + sum(self.wear_minor_by_driver.values())

    @property
    def unallocated_minor(self) -> int:
        """What lands on no named account: ``for_drivers − (Σ shares + Σ wear + residual − platform
        loss)`` (wear left out when the platform funds it). ``0`` for every booking that exists: a
        booking that leaves anything unallocated is refused."""
        paid = sum(self.driver_shares_minor.values()) + self.residual_minor - self.platform_loss_minor
        if not self.wear_funded_by_platform:
            paid += sum(self.wear_minor_by_driver.values())
        return self.for_drivers_minor - paid

    def drivers(self) -> list[dict[str, Any]]:
        """One line per driver with a share, wear or a reason, by driver id."""
        ids = sorted(set(self.driver_shares_minor) | set(self.wear_minor_by_driver) | set(self.zero_reasons))
        lines = []
        for driver in ids:
            share = self.driver_shares_minor.get(driver, 0)
            wear = self.wear_minor_by_driver.get(driver, 0)
            reason = self.zero_reasons.get(driver)
            if share or wear or reason:
                lines.append(
                    {"driver_id": driver, "share_minor": share, "wear_minor": wear, "reason": reason}
                )
        return lines


def _check_amount(name: str, value: object, *, non_negative: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BookingError(name, f"{value!r} is not an integer (amounts are integer minor units)")
    if non_negative and value < 0:
        raise BookingError(name, f"{value} is negative")


def _check_driver(name: str, driver: object) -> None:
    if isinstance(driver, bool) or not isinstance(driver, int):
        raise BookingError(name, f"driver key {driver!r} is not a user id")


def _utc(name: str, value: dt.datetime) -> dt.datetime:
    if value.utcoffset() is None:
        raise BookingError(name, f"{value.isoformat()} has no UTC offset")
    return value.astimezone(dt.UTC)


@dataclass(frozen=True, kw_only=True)
class EventBooking(Booking):
    """The booking of one dispatch event; ``event_ref`` names the event across its modifications
    (:func:`event_ref_for`), ``occurred_at`` is when it happened (its window start)."""

    event_ref: str
    occurred_at: dt.datetime
    performance: Mapping[str, Any] | None = None
    """What was measured, as JSON data kept with the run's inputs for statements and the program's
    invoice: the totals, each site's baseline as declared, and the unattributed remainder
    (:func:`aggregator.settlement.event_settlement.measured`)."""
    vehicles: tuple[Mapping[str, Any], ...] = ()
    """Each charging session's delivery, or why it does not count, as JSON data kept with the run's
    inputs for the event's statement (not the program's invoice: it names drivers)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.event_ref or len(self.event_ref) > 290:
            raise BookingError("event_ref", f"{self.event_ref!r} must be 1 to 290 characters")
        _utc("occurred_at", self.occurred_at)

    @property
    def scope(self) -> str:
        return f"event:{self.event_ref}"


@dataclass(frozen=True, kw_only=True)
class PeriodBooking(Booking):
    """The booking of a program's period ``[period_start, period_end)`` (capacity payments and the
    like); its transactions occur at ``period_start``."""

    period_start: dt.datetime
    period_end: dt.datetime

    def __post_init__(self) -> None:
        super().__post_init__()
        if _utc("period_end", self.period_end) <= _utc("period_start", self.period_start):
            raise BookingError(
                "period_end",
                f"{self.period_end.isoformat()} is not after period_start {self.period_start.isoformat()}",
            )

    @property
    def occurred_at(self) -> dt.datetime:
        return self.period_start

    @property
    def scope(self) -> str:
        start = self.period_start.astimezone(dt.UTC).isoformat()
        end = self.period_end.astimezone(dt.UTC).isoformat()
        return f"period:{self.program_id}:{start}/{end}"


AnyBooking = EventBooking | PeriodBooking


PLATFORM_LOSS_MEMO = "platform loss: the drivers do not share it"
RESIDUAL_MEMO = "residual: "
"""The memo of a residual's posting starts so; its reason follows."""


def residual_memo(booking: Booking) -> str:
    """The memo of ``booking``'s residual posting: :data:`RESIDUAL_MEMO` and the reason (cut to fit)."""
    return (RESIDUAL_MEMO + booking.residual_reason)[:300]


def event_ref_for(source: str, external_event_id: str) -> str:
    """The ref of an event across its modifications (``DispatchEvent.source``/``external_event_id``)."""
    return f"{source}/{external_event_id}"


def booking_postings(booking: Booking) -> list[Posting]:
    """The ledger postings of ``booking`` (see the module's table); zero amounts are left out."""
    currency = booking.currency
    program = program_owner(booking.program_id)
    postings: list[Posting] = []

    def post(kind: LedgerAccountKind, owner: str, amount: int, memo: str) -> None:
        if amount:
            postings.append(Posting(AccountKey(kind, owner, currency), amount, memo))

    post(LedgerAccountKind.PROGRAM_RECEIVABLE, program, booking.gross_minor, "gross")
    post(
        LedgerAccountKind.PROGRAM_RECEIVABLE,
        program,
        -booking.threshold_reduction_minor,
        "threshold reduction",
    )
    post(LedgerAccountKind.PENALTIES, program, -booking.penalty_minor, "penalty")
    post(LedgerAccountKind.PLATFORM_REVENUE, PLATFORM, -booking.platform_fee_minor, "platform fee")
    post(LedgerAccountKind.PLATFORM_REVENUE, PLATFORM, -booking.residual_minor, residual_memo(booking))
    post(LedgerAccountKind.PLATFORM_REVENUE, PLATFORM, booking.platform_loss_minor, PLATFORM_LOSS_MEMO)
    if booking.wear_funded_by_platform:
        wear_total = sum(booking.wear_minor_by_driver.values())
        post(LedgerAccountKind.WEAR_COMPENSATION_EXPENSE, PLATFORM, wear_total, "wear compensation")
    for line in booking.drivers():
        owner = driver_owner(line["driver_id"])
        post(LedgerAccountKind.DRIVER_PAYABLE, owner, -line["share_minor"], "share")
        post(LedgerAccountKind.DRIVER_PAYABLE, owner, -line["wear_minor"], "wear compensation")
    return postings


def canonical_inputs(booking: AnyBooking) -> dict[str, Any]:
    """``booking`` as plain JSON data, the same for equal bookings however their mappings were built."""
    canonical: dict[str, Any] = {
        "format": BOOKING_FORMAT,
        "program_id": booking.program_id,
        "currency": booking.currency,
        "gross_minor": booking.gross_minor,
        "penalty_minor": booking.penalty_minor,
        "threshold_reduction_minor": booking.threshold_reduction_minor,
        "platform_fee_minor": booking.platform_fee_minor,
        "residual_minor": booking.residual_minor,
        "residual_reason": booking.residual_reason,
        "platform_loss_minor": booking.platform_loss_minor,
        "wear_funded_by_platform": booking.wear_funded_by_platform,
        "drivers": booking.drivers(),
    }
    if isinstance(booking, EventBooking):
        canonical |= {
            "kind": SettlementRunKind.EVENT.value,
            "event_ref": booking.event_ref,
            "occurred_at": booking.occurred_at.astimezone(dt.UTC).isoformat(),
        }
        if booking.performance is not None:
            canonical["performance"] = json.loads(json.dumps(booking.performance, sort_keys=True))
        if booking.vehicles:
            canonical["vehicles"] = json.loads(json.dumps(list(booking.vehicles), sort_keys=True))
    else:
        canonical |= {
            "kind": SettlementRunKind.PERIOD.value,
            "period_start": booking.period_start.astimezone(dt.UTC).isoformat(),
            "period_end": booking.period_end.astimezone(dt.UTC).isoformat(),
        }
    return canonical


def inputs_hash(canonical: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON (sorted keys, no spaces) of ``canonical``."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = [
    "BOOKING_FORMAT",
    "PLATFORM_LOSS_MEMO",
    "RESIDUAL_MEMO",
    "AnyBooking",
    "Booking",
    "BookingError",
    "EventBooking",
    "PeriodBooking",
    "booking_postings",
    "canonical_inputs",
    "event_ref_for",
    "inputs_hash",
    "residual_memo",
]
