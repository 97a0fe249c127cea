"""Settle a dispatch event from the database: price what it delivered, share it, and book it once.

1. :func:`~aggregator.settlement.event_inputs.settlement_inputs` gathers the event's measurement and
   its vehicles' contributions from the database (see :mod:`aggregator.settlement.event_inputs`).
2. :func:`event_booking` (pure) prices the performance with
   :func:`~aggregator.programs.terms.event_revenue` and turns it into an
   :class:`~aggregator.settlement.bookings.EventBooking`, in integer minor units, with every minor unit on a
   named account (:func:`split_pot`): the net pot is allocated with
   :func:`~aggregator.settlement.allocation.allocate` over the positive contributions: each driver's
   (the sum of the positive contributions of their sessions: a session that hurt does not reduce its
   driver's other sessions, its effect is already in the pot) and the unattributed remainder's
   (delivery no vehicle of known state accounts for,
   :attr:`~aggregator.settlement.attribution.Attribution.unattributed_kwh`), whose share is the
   *residual*, booked to the platform with its reason (:func:`residual_reason`). Drivers who get
   nothing are listed with the reason; the wear compensation line is split among the drivers by their
   discharged energy the same way. A pot that nobody contributed to is all residual. A negative net pot
   (penalties, or wear, above what the event earned) is the platform's loss unless the terms say
   ``drivers_share_losses``: it is booked as the platform loss (a debit to platform revenue), no driver
   gets a share, and each driver's reason says why (:data:`LOSS_REASON`, :data:`WEAR_LOSS_REASON`).
   The run's inputs keep what was measured (:func:`measured`, :func:`vehicle_lines`): each site's
   baseline as declared, each vehicle's delivery or why it does not count.
3. :func:`settle_dispatch_event` books it through :func:`aggregator.settlement.runs.settle_event`: a
   re-run with unchanged data stores nothing; late meter data books a new version that reverses the
   previous one.

A cancelled event settles to nothing (an all-zero booking, which reverses anything booked for it
before): :class:`~aggregator.programs.terms.PaymentTerms` have no cancellation payment.
:func:`settle_period_events` settles every ended (or cancelled) event that started in a calendar month
(UTC), one run per event. Capacity payments (``capacity_per_kw_month``) are not booked here: which
drivers a month's capacity payment belongs to is not defined yet.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from aggregator.db.models import DispatchEvent
from aggregator.programs.dispatch_events import latest_versions
from aggregator.programs.kinds import MEASURED_KINDS
from aggregator.programs.terms import EventRevenue, LineKind, PaymentTerms, event_revenue
from aggregator.settlement.allocation import AllocationError, allocate
from aggregator.settlement.attribution import Exclusion, ExclusionReason
from aggregator.settlement.bookings import EventBooking
from aggregator.settlement.event_inputs import (
    EventNotEndedError,
    EventSettlementInputs,
    NoTelemetryError,
    SettlementInputError,
    UnknownEventError,
    settlement_inputs,
)
from aggregator.settlement.runs import RunOutcome, SessionFactory, settle_event
from market_adapters.dispatch import SignalStatus

__all__ = [
    "LOSS_REASON",
    "NOBODY_REASON",
    "WEAR_LOSS_REASON",
    "EventNotEndedError",
    "EventSettlement",
    "EventSettlementInputs",
    "NoTelemetryError",
    "PeriodSettlement",
    "PotSplit",
    "SettlementInputError",
    "UnknownEventError",
    "event_booking",
    "event_revenue_of",
    "events_in_period",
    "measured",
    "period_bounds",
    "settle_dispatch_event",
    "settle_event_from_db",
    "settle_period_events",
    "settlement_inputs",
    "split_pot",
    "vehicle_lines",
]

PERIOD_PATTERN = re.compile(r"^(\d{4})-(\d{2})$")

LOSS_REASON = "the event's penalties exceeded its payments"
"""Why drivers earned nothing from an event whose penalties exceeded what it earned (a platform loss)."""
WEAR_LOSS_REASON = "the event's wear compensation exceeded what it earned for drivers"
"""Why drivers got no share of an event whose wear compensation exceeded what it left for drivers
(they are still paid the wear; the platform bears the rest)."""


# ------------------------------------------------------------------------------------------- booking


def event_revenue_of(inputs: EventSettlementInputs, terms: PaymentTerms | None = None) -> EventRevenue | None:
    """The event's revenue lines under ``terms`` (default :attr:`EventSettlementInputs.terms`);
    ``None`` for a cancelled event."""
    if inputs.performance is None:
        return None
    return event_revenue(
        terms or inputs.terms,
        inputs.performance,
        available_kw=inputs.available_kw,
        discharged_kwh=sum(inputs.discharged_kwh_by_driver().values()),
        event_hours=inputs.event_hours,
    )


def event_booking(inputs: EventSettlementInputs, terms: PaymentTerms | None = None) -> EventBooking:
    """What the event books (module doc, step 2): integer minor units of the terms' currency, balancing,
    with nothing unallocated.

    ``terms`` default to :attr:`EventSettlementInputs.terms`.
    """
    terms = terms or inputs.terms
    base: dict[str, Any] = {
        "program_id": inputs.program_id,
        "currency": terms.currency,
        "event_ref": inputs.event_ref,
        "occurred_at": inputs.window_start,
        "wear_funded_by_platform": terms.wear_funded_by_platform,
    }
    revenue = event_revenue_of(inputs, terms)
    if revenue is None or inputs.attribution is None:
        return EventBooking(**base, gross_minor=0)
    attribution = inputs.attribution
    weights: dict[int, float] = defaultdict(float)
    reasons: dict[int, list[str]] = defaultdict(list)
    for vehicle in inputs.vehicles:
        contribution = attribution.vehicles[vehicle.session_id]
        driver = vehicle.driver_id
        weights[driver] += max(contribution.weight_kwh, 0.0)
        if contribution.exclusion is not None:
            exclusion = contribution.exclusion
            reasons[driver].append(f"{exclusion.reason.value} ({exclusion.detail})")
        elif contribution.missing_intervals == len(vehicle.metered_kw):
            reasons[driver].append(f"session {vehicle.session_id}: no metered and planned power to compare")
        elif contribution.delivered_kwh <= 0:
            reasons[driver].append(
                f"session {vehicle.session_id}: delivered {contribution.delivered_kwh:.3f} kWh "
                "against its baseline"
            )
    split = split_pot(
        revenue.drivers_pot_minor,
        dict(weights),
        attribution.unattributed_kwh,
        residual_reason(inputs),
    )
    wear_total = revenue.amount(LineKind.WEAR_COMPENSATION)
    wear = allocate(wear_total, inputs.discharged_kwh_by_driver()) if wear_total else {}
    if revenue.platform_loss_minor:
        loss = LOSS_REASON if revenue.drivers_total_minor < 0 else WEAR_LOSS_REASON
        for driver in split.shares:
            reasons[driver].insert(0, loss)
    pot = revenue.drivers_pot_minor
    zero_reasons = {
        driver: "; ".join(reasons[driver])
        or ("the event left nothing to share" if pot == 0 else "no contribution")
        for driver, share in split.shares.items()
        if share == 0
    }
    return EventBooking(
        **base,
        gross_minor=revenue.gross_minor,
        threshold_reduction_minor=revenue.amount(LineKind.THRESHOLD_REDUCTION),
        penalty_minor=revenue.amount(LineKind.PENALTY),
        platform_fee_minor=revenue.amount(LineKind.PLATFORM_FEE),
        driver_shares_minor={driver: share for driver, share in split.shares.items() if share},
        wear_minor_by_driver={driver: amount for driver, amount in wear.items() if amount},
        residual_minor=split.residual_minor,
        residual_reason=split.residual_reason,
        platform_loss_minor=revenue.platform_loss_minor,
        zero_reasons=zero_reasons,
        performance=measured(inputs),
        vehicles=vehicle_lines(inputs),
    )


@dataclass(frozen=True)
class PotSplit:
    """A pot split among drivers and the residual [minor units]: ``Σ shares + residual == pot``."""

    shares: dict[int, int]
    """Per driver (every driver given, ``0`` for one that gets nothing)."""
    residual_minor: int
    residual_reason: str


RESIDUAL = "residual"
"""The residual's key among the participants (after every driver's in a tie: see :func:`split_pot`)."""


def split_pot(
    pot_minor: int, driver_weights: Mapping[int, float], unattributed_kwh: float, reason: str
) -> PotSplit:
    """Allocate ``pot_minor`` over the positive contributions [kWh] (largest remainder,
    :func:`~aggregator.settlement.allocation.allocate`): each driver's weight, and the unattributed
    remainder as one more participant, the residual, whose share is booked with ``reason``. A
    non-positive contribution gets nothing and changes nobody else's share. When nobody contributed,
    the whole pot is the residual, saying so. Every minor unit lands on a driver or the residual."""
    participants: dict[tuple[int, str, int], float] = {
        (0, "driver", driver): weight for driver, weight in driver_weights.items()
    }
    if unattributed_kwh > UNATTRIBUTED_TOLERANCE_KWH:
        participants[(1, RESIDUAL, 0)] = unattributed_kwh
    try:
        allocated = allocate(pot_minor, participants)
    except AllocationError:
        return PotSplit(dict.fromkeys(driver_weights, 0), pot_minor, NOBODY_REASON)
    residual = allocated.get((1, RESIDUAL, 0), 0)
    shares = {key[2]: share for key, share in allocated.items() if key[1] == "driver"}
    return PotSplit(shares, residual, reason if residual else "")


UNATTRIBUTED_TOLERANCE_KWH = 1e-6
"""An unattributed remainder this small [kWh] is rounding, not delivery: it takes no share."""

NOBODY_REASON = "nobody contributed: no vehicle and no other load of the site delivered anything"
"""Why a whole pot is the residual."""


def residual_reason(inputs: EventSettlementInputs) -> str:
    """Why the unattributed remainder's share is nobody's: how much it is, and what it holds."""
    attribution = inputs.attribution
    if attribution is None:
        return ""
    unknown = sorted(
        vehicle.session_id
        for vehicle in inputs.vehicles
        if vehicle.exclusion is not None and vehicle.exclusion.reason is ExclusionReason.UNKNOWN_STATE
    )
    parts = ["the site's other loads"]
    if unknown:
        listed = ", ".join(map(str, unknown[:8])) + (", ..." if len(unknown) > 8 else "")
        parts.append(f"vehicles without a baseline of their own (sessions {listed})")
    if any("no known vehicle" in note for note in inputs.notes):
        parts.append("sessions without a known vehicle")
    return (
        f"{attribution.unattributed_kwh:.3f} of the {attribution.site_delivered_kwh:.3f} kWh the site "
        f"delivered is attributed to no driver: {', '.join(parts)}"
    )


def measured(inputs: EventSettlementInputs) -> dict[str, Any] | None:
    """What was measured at the event level, as JSON data for the run's inputs
    (:attr:`~aggregator.settlement.bookings.EventBooking.performance`): the totals, each site's baseline
    as declared, and the unattributed remainder; energies in kWh, rounded to the watt-hour."""
    performance, attribution = inputs.performance, inputs.attribution
    if performance is None or attribution is None:
        return None
    return {
        "committed_kwh": _kwh(performance.committed_kwh),
        "delivered_kwh": _kwh(performance.delivered_kwh),
        "shortfall_kwh": _kwh(performance.shortfall_kwh),
        "performance_factor": round(performance.performance_factor, 6),
        "site_delivered_kwh": _kwh(attribution.site_delivered_kwh),
        "unattributed_kwh": _kwh(attribution.unattributed_kwh),
        "baselines": [
            {"site_id": site.site_id, **site.declaration.public(), "plan_versions": list(site.plan_versions)}
            for site in inputs.sites
        ],
    }


def vehicle_lines(inputs: EventSettlementInputs) -> tuple[dict[str, Any], ...]:
    """Each charging session's delivery [kWh], or why it does not count, as JSON data for the run's
    inputs (:attr:`~aggregator.settlement.bookings.EventBooking.vehicles`)."""
    attribution = inputs.attribution
    if attribution is None:
        return ()
    return tuple(
        {
            "session_id": vehicle.session_id,
            "driver_id": vehicle.driver_id,
            "delivered_kwh": _kwh(attribution.vehicles[vehicle.session_id].delivered_kwh),
            "excluded": _excluded(attribution.vehicles[vehicle.session_id].exclusion),
        }
        for vehicle in inputs.vehicles
    )


def _kwh(value: float) -> float:
    return round(float(value), 3) + 0.0  # + 0.0: no "-0.0"


def _excluded(exclusion: Exclusion | None) -> str | None:
    return None if exclusion is None else f"{exclusion.reason.value} ({exclusion.detail})"


# ---------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class EventSettlement:
    """One event's settlement: what it was made from, its revenue lines, its booking, what the run did."""

    inputs: EventSettlementInputs
    revenue: EventRevenue | None
    booking: EventBooking
    outcome: RunOutcome


def settle_event_from_db(
    sessions: SessionFactory, event_id: int, *, dry_run: bool = False, now: dt.datetime | None = None
) -> EventSettlement:
    """Gather, price and book event ``event_id`` (module doc); ``now`` defaults to the clock."""
    now = now or dt.datetime.now(dt.UTC)
    with sessions() as session:
        inputs = settlement_inputs(session, event_id, now=now)
    booking = event_booking(inputs)
    outcome = settle_event(sessions, booking.event_ref, booking, dry_run=dry_run)
    return EventSettlement(inputs, event_revenue_of(inputs), booking, outcome)


def settle_dispatch_event(
    sessions: SessionFactory, event_id: int, *, dry_run: bool = False, now: dt.datetime | None = None
) -> RunOutcome:
    """Settle event ``event_id``; what :func:`~aggregator.settlement.runs.settle_event` did."""
    return settle_event_from_db(sessions, event_id, dry_run=dry_run, now=now).outcome


def period_bounds(period: str) -> tuple[dt.datetime, dt.datetime]:
    """``"YYYY-MM"`` as ``[first of the month, first of the next)`` in UTC."""
    match = PERIOD_PATTERN.match(period)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"period {period!r} is not a month as YYYY-MM")
    year, month = int(match.group(1)), int(match.group(2))
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def events_in_period(session: Session, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> list[int]:
    """Public ids of the events whose latest version starts in ``[start, end)``, has a program, commits
    something, and has ended by ``now`` or was cancelled; by start."""
    query = latest_versions()
    rows = session.execute(
        query.where(DispatchEvent.window_start >= start, DispatchEvent.window_start < end)
        .where(DispatchEvent.program_id.is_not(None))
        .order_by(DispatchEvent.window_start, query.selected_columns.event_id)
    ).all()
    return [
        int(event_id)
        for event_id, row in rows
        if row.status is SignalStatus.CANCELLED or (row.kind in MEASURED_KINDS and row.window_end <= now)
    ]


@dataclass(frozen=True)
class PeriodSettlement:
    """What settling a month did: one settlement per event, and the events that could not be settled."""

    start: dt.datetime
    end: dt.datetime
    settled: tuple[EventSettlement, ...]
    failed: tuple[SettlementInputError, ...]


def settle_period_events(
    sessions: SessionFactory, period: str, *, dry_run: bool = False, now: dt.datetime | None = None
) -> PeriodSettlement:
    """Settle every ended or cancelled event that started in ``period`` (``"YYYY-MM"``, UTC), one run
    each: unchanged events store nothing, changed ones book a new version. An event that cannot be
    settled (no telemetry, a bad baseline) is reported in ``failed`` and does not stop the others."""
    now = now or dt.datetime.now(dt.UTC)
    start, end = period_bounds(period)
    with sessions() as session:
        event_ids = events_in_period(session, start, end, now)
    settled, failed = [], []
    for event_id in event_ids:
        try:
            settled.append(settle_event_from_db(sessions, event_id, dry_run=dry_run, now=now))
        except SettlementInputError as error:
            failed.append(error)
    return PeriodSettlement(start, end, tuple(settled), tuple(failed))
