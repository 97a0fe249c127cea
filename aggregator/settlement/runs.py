"""Settlement runs: book what an event (or a program's period) earned, once, and correct it by versions.

A run takes a computed booking (:class:`EventBooking`, :class:`PeriodBooking`: integer minor-unit
amounts from the calculations of :mod:`aggregator.settlement`) and books it in the ledger
(:mod:`aggregator.settlement.ledger`). Runs are idempotent and versioned per *scope* (an event, or a
program's period):

- the booking is canonicalised (:func:`canonical_inputs`) and hashed; if the scope's latest version
  has the same hash, nothing is stored and that version is returned (:attr:`RunStatus.UNCHANGED`);
- otherwise the run is the scope's next version: it reverses every transaction the previous version
  booked and books its own, so the ledger holds exactly what a fresh run of the new inputs would book,
  and the history keeps both versions (:attr:`RunStatus.BOOKED`);
- a run is one database transaction: a failure half-way stores nothing of it;
- ``UNIQUE (scope, version)`` decides between two runs of a scope started at once: the second insert
  of the version fails (on PostgreSQL it waits for the first to commit), and the loser stores nothing
  and reports :attr:`RunStatus.UNCHANGED` (the winner booked the same inputs) or
  :attr:`RunStatus.CONCURRENT` (the winner booked other inputs; run again to supersede it);
- a dry run computes the booking and what it would reverse, and stores nothing.

The booking (:func:`booking_postings`), all amounts in minor units of the program's currency, laid
out as :func:`aggregator.programs.terms.event_revenue` computes them (wear compensation is paid to
the drivers who discharged, out of what the event earned for drivers):

=====================================  ================  =================================
account                                debit (+)         credit (−)
=====================================  ================  =================================
program receivable (``program:<id>``)  gross             threshold reduction
penalties (``program:<id>``)                             penalty
platform revenue (``platform``)        a loss the        platform fee, unallocated pot
                                       drivers do not
                                       share
driver payable (``user:<id>``)                           share (a negative share debits),
                                                         wear compensation
=====================================  ================  =================================

The program owes the receivable's balance less the penalties' (a contra account). A negative
unallocated pot debits platform revenue: an event's loss the platform bears because the drivers do not
share it (:attr:`aggregator.programs.terms.PaymentTerms.drivers_share_losses`), or a negative pot
nobody contributed to. The booking balances because ``gross − threshold reduction − penalty −
platform fee = Σ shares + Σ wear + unallocated`` (checked, :class:`BookingError` otherwise). With
``wear_funded_by_platform`` the wear compensation is our expense on top instead (debit wear
compensation expense, ``platform``) and left out of that sum.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.db.models import (
    LedgerEntry,
    LedgerTransaction,
    SettlementRun,
    SettlementRunKind,
)
from aggregator.settlement.ledger import (
    PLATFORM,
    AccountKey,
    LedgerAccountKind,
    LedgerError,
    Posting,
    driver_owner,
    entries_net,
    post_transaction,
    program_owner,
    reverse_transaction,
)

BOOKING_FORMAT = 1
"""Part of every canonical input: raise it when :func:`booking_postings` books differently, so that
every scope's next run books anew."""

SessionFactory = Callable[[], Session]


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
    drivers who discharged, ``unallocated_minor`` a pot nobody could be allocated or a loss the
    drivers do not share (booked to platform revenue; negative for a loss), ``zero_reasons`` why a
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
    unallocated_minor: int = 0
    zero_reasons: Mapping[int, str] = field(default_factory=dict)
    wear_funded_by_platform: bool = False

    def __post_init__(self) -> None:
        if not self.program_id:
            raise BookingError("program_id", "is empty")
        try:
            AccountKey(LedgerAccountKind.PROGRAM_RECEIVABLE, program_owner(self.program_id), self.currency)
        except LedgerError as error:
            raise BookingError("program_id/currency", str(error)) from error
        for name in ("gross_minor", "threshold_reduction_minor", "penalty_minor", "platform_fee_minor"):
            _check_amount(name, getattr(self, name), non_negative=True)
        _check_amount("unallocated_minor", self.unallocated_minor, non_negative=False)
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
        for_drivers = (
            self.gross_minor - self.threshold_reduction_minor - self.penalty_minor - self.platform_fee_minor
        )
        paid = sum(self.driver_shares_minor.values()) + self.unallocated_minor
        if not self.wear_funded_by_platform:
            paid += sum(self.wear_minor_by_driver.values())
        if paid != for_drivers:
            wear = "" if self.wear_funded_by_platform else " + wear"
            raise BookingError(
                "driver_shares_minor",
                f"shares{wear} + unallocated sum to {paid} but gross − threshold reduction − penalty − "
                f"platform fee = {self.gross_minor} − {self.threshold_reduction_minor} − "
                f"{self.penalty_minor} − {self.platform_fee_minor} = {for_drivers} "
                f"({self.currency} minor units)",
            )

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
    post(LedgerAccountKind.PLATFORM_REVENUE, PLATFORM, -booking.unallocated_minor, "unallocated pot")
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
        "unallocated_minor": booking.unallocated_minor,
        "wear_funded_by_platform": booking.wear_funded_by_platform,
        "drivers": booking.drivers(),
    }
    if isinstance(booking, EventBooking):
        canonical |= {
            "kind": SettlementRunKind.EVENT.value,
            "event_ref": booking.event_ref,
            "occurred_at": booking.occurred_at.astimezone(dt.UTC).isoformat(),
        }
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


# ---------------------------------------------------------------------------------------------- runs


class RunStatus(enum.StrEnum):
    BOOKED = "booked"
    """A new version of the scope was stored and booked."""
    UNCHANGED = "unchanged"
    """Already settled with these inputs (the scope's latest version); nothing stored."""
    CONCURRENT = "concurrent"
    """Another run of the scope stored the same version first, with other inputs; nothing stored."""
    DRY_RUN = "dry_run"
    """Computed only: what a run would book; nothing stored."""


class RunStage(enum.StrEnum):
    """Where a run is, for a ``hook`` (tests use it to line up concurrent runs or fail one half-way)."""

    PLANNED = "planned"
    """The latest version was read and the inputs differ; nothing written yet."""
    RECORDED = "recorded"
    """The run's row was inserted (its version claimed)."""
    ENTRY = "entry"
    """A ledger entry (of a reversal or of the booking) was inserted."""


RunHook = Callable[[RunStage], None]


@dataclass(frozen=True)
class RunOutcome:
    """What a settlement run did.

    ``version`` and ``run_id`` are the version booked (``BOOKED``), the existing one (``UNCHANGED``),
    the one that won (``CONCURRENT``), or the one a dry run would book (``run_id`` ``None``).
    ``postings`` are the full booking of the inputs; ``reversed_transaction_ids`` the previous
    version's transactions this run reversed (would reverse); ``transaction_ids`` the transactions it
    created, reversals first.
    """

    status: RunStatus
    scope: str
    version: int
    run_id: int | None
    inputs_hash: str
    postings: tuple[Posting, ...]
    reversed_transaction_ids: tuple[int, ...] = ()
    transaction_ids: tuple[int, ...] = ()
    message: str = ""

    @property
    def booked(self) -> bool:
        return self.status is RunStatus.BOOKED


class _VersionTakenError(Exception):
    """The run's ``(scope, version)`` was inserted by another run first."""


def settle_event(
    session_factory: SessionFactory,
    event_ref: str,
    booking_inputs: EventBooking,
    *,
    dry_run: bool = False,
    hook: RunHook | None = None,
) -> RunOutcome:
    """Settle one event (see the module docstring); ``event_ref`` must be the booking's."""
    if booking_inputs.event_ref != event_ref:
        raise BookingError(
            "event_ref", f"the booking is for event {booking_inputs.event_ref!r}, not {event_ref!r}"
        )
    return _settle(session_factory, booking_inputs, dry_run=dry_run, hook=hook)


def settle_period(
    session_factory: SessionFactory,
    booking_inputs: PeriodBooking,
    *,
    dry_run: bool = False,
    hook: RunHook | None = None,
) -> RunOutcome:
    """Settle a program's period (see the module docstring); the scope is the program and period."""
    return _settle(session_factory, booking_inputs, dry_run=dry_run, hook=hook)


def _settle(
    session_factory: SessionFactory, booking: AnyBooking, *, dry_run: bool, hook: RunHook | None
) -> RunOutcome:
    scope = booking.scope
    canonical = canonical_inputs(booking)
    digest = inputs_hash(canonical)
    postings = tuple(booking_postings(booking))
    try:
        with session_factory() as session, session.begin():
            latest = latest_run(session, scope)
            if latest is not None and latest.inputs_hash == digest:
                return _unchanged(latest, postings)
            to_reverse = tuple(_booked_by(session, latest.id)) if latest is not None else ()
            version = latest.version + 1 if latest is not None else 1
            if dry_run:
                return RunOutcome(
                    RunStatus.DRY_RUN,
                    scope,
                    version,
                    None,
                    digest,
                    postings,
                    reversed_transaction_ids=to_reverse,
                    message=f"{scope}: would book version {version} (dry run, nothing stored)",
                )
            if hook is not None:
                hook(RunStage.PLANNED)
            run = SettlementRun(
                scope=scope,
                kind=SettlementRunKind(canonical["kind"]),
                version=version,
                inputs_hash=digest,
                inputs=canonical,
                supersedes_id=latest.id if latest is not None else None,
            )
            session.add(run)
            try:
                session.flush()
            except IntegrityError as error:
                raise _VersionTakenError from error
            if hook is not None:
                hook(RunStage.RECORDED)
            created = _book(session, run, postings, booking.occurred_at, to_reverse, hook)
            run_id = run.id
    except _VersionTakenError:
        return _lost_race(session_factory, scope, digest, postings)
    return RunOutcome(
        RunStatus.BOOKED,
        scope,
        version,
        run_id,
        digest,
        postings,
        reversed_transaction_ids=to_reverse,
        transaction_ids=created,
        message=f"{scope}: booked version {version}"
        + (f", reversing transactions {list(to_reverse)} of version {version - 1}" if to_reverse else ""),
    )


def _book(
    session: Session,
    run: SettlementRun,
    postings: tuple[Posting, ...],
    occurred_at: dt.datetime,
    to_reverse: tuple[int, ...],
    hook: RunHook | None,
) -> tuple[int, ...]:
    def on_entry(entry: LedgerEntry) -> None:
        if hook is not None:
            hook(RunStage.ENTRY)

    created: list[int] = []
    for transaction_id in to_reverse:
        reversal = reverse_transaction(
            session,
            transaction_id,
            run_id=run.id,
            description=f"{run.scope} v{run.version}: reversal of transaction {transaction_id} "
            f"(v{run.version - 1})",
            on_entry=on_entry,
        )
        created.append(reversal.id)
    if postings:
        transaction = post_transaction(
            session,
            postings,
            description=f"{run.scope} v{run.version}",
            occurred_at=occurred_at,
            run_id=run.id,
            on_entry=on_entry,
        )
        created.append(transaction.id)
    return tuple(created)


def _unchanged(run: SettlementRun, postings: tuple[Posting, ...]) -> RunOutcome:
    return RunOutcome(
        RunStatus.UNCHANGED,
        run.scope,
        run.version,
        run.id,
        run.inputs_hash,
        postings,
        message=f"{run.scope}: already settled with these inputs (version {run.version}); nothing booked",
    )


def _lost_race(
    session_factory: SessionFactory, scope: str, digest: str, postings: tuple[Posting, ...]
) -> RunOutcome:
    with session_factory() as session:
        winner = latest_run(session, scope)
        if winner is None:  # pragma: no cover (the conflicting row was committed before the error)
            raise RuntimeError(f"{scope}: the run's version was taken, but no run of the scope is stored")
        if winner.inputs_hash == digest:
            return _unchanged(winner, postings)
        return RunOutcome(
            RunStatus.CONCURRENT,
            scope,
            winner.version,
            winner.id,
            digest,
            postings,
            message=f"{scope}: a concurrent run booked version {winner.version} with other inputs first; "
            "nothing booked, run again to supersede it",
        )


# ------------------------------------------------------------------------------------------- reading


def latest_run(session: Session, scope: str) -> SettlementRun | None:
    """The scope's highest version, ``None`` if it was never settled."""
    return session.scalars(
        select(SettlementRun)
        .where(SettlementRun.scope == scope)
        .order_by(SettlementRun.version.desc())
        .limit(1)
    ).first()


def run_history(session: Session, scope: str) -> list[SettlementRun]:
    """Every version of the scope, oldest first."""
    return list(
        session.scalars(
            select(SettlementRun).where(SettlementRun.scope == scope).order_by(SettlementRun.version)
        )
    )


def _booked_by(session: Session, run_id: int) -> list[int]:
    """The transactions run ``run_id`` booked (not its reversals of an earlier version)."""
    return list(
        session.scalars(
            select(LedgerTransaction.id)
            .where(LedgerTransaction.run_id == run_id, LedgerTransaction.reverses_id.is_(None))
            .order_by(LedgerTransaction.id)
        )
    )


def scope_balances(session: Session, scope: str) -> dict[AccountKey, int]:
    """What all versions of the scope's runs net to per account (zero sums left out): after any
    sequence of runs, the booking of the latest version's inputs."""
    entries = session.scalars(
        select(LedgerEntry)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .join(SettlementRun, SettlementRun.id == LedgerTransaction.run_id)
        .where(SettlementRun.scope == scope)
    )
    return dict(entries_net(entries))
