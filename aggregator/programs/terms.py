"""What a program pays for an event, line by line, in integer minor units of its currency.

:class:`PaymentTerms` validates ``Program.payment_terms``. Rates are :class:`~decimal.Decimal` in
major units (``EUR/kWh``, ``EUR/(kW·h)``, ``EUR/event``, ``EUR/(kW·month)``); amounts come out in
minor units (cents; yen have none: :data:`CURRENCY_EXPONENTS`).

:func:`event_revenue` computes, for one event:

- gross lines: ``energy`` = ``per_kwh_delivered * max(delivered_kwh, 0)`` (the credited delivery of
  :class:`~aggregator.settlement.performance.EventPerformance`, capped at the commitment);
  ``availability`` = ``per_kw_availability_hour * available_kw * event_hours``; ``event`` =
  ``per_event``;
- ``threshold_reduction``: when the performance factor is below ``performance_threshold``, the gross
  is reduced to ``below_threshold_payment_share`` of itself (``0`` = forfeited), shown as its own
  line;
- ``penalty`` = ``penalty_per_kwh_short * shortfall_kwh``;
- ``platform_fee`` = ``platform_fee_percent`` % of ``gross - threshold_reduction - penalty`` when
  that is positive, else ``0`` (no fee on a loss);
- ``wear_compensation`` = ``wear_compensation_per_kwh_discharged * discharged_kwh``: paid to the
  vehicles that discharged, in proportion to their discharged energy, out of the drivers' share
  (or, with ``wear_funded_by_platform``, as the platform's expense on top);
- ``net_pot`` = what is left for the drivers to share pro rata to contribution
  (:func:`aggregator.settlement.allocation.allocate`); it can be negative when penalties and wear
  exceed what the event earned.

A negative net pot is the aggregator's loss, not the drivers': the aggregator committed to the grid
operator, the drivers did not. So by default (``drivers_share_losses`` false) the drivers' pot is
``max(net_pot, 0)`` and the rest, ``platform_loss = max(-net_pot, 0)``, is borne by the platform;
drivers still get their wear compensation. With ``drivers_share_losses`` the whole negative pot is
allocated to the drivers, who then owe it (:attr:`EventRevenue.drivers_pot_minor`,
:attr:`EventRevenue.platform_loss_minor`).

Rounding: every line is computed exactly in Decimal and rounded once to minor units with
``ROUND_HALF_EVEN`` (banker's rounding: no drift up or down over many lines); the net pot is then
derived from the rounded lines, so ``gross - threshold_reduction - penalty - platform_fee
- wear_compensation == net_pot`` holds exactly in minor units (without the wear term when the
platform funds it).

Capacity payments are monthly, not per event: :func:`capacity_revenue`.

A program either has terms that pay (:attr:`PaymentTerms.pays`) or is declared unpaid
(``Program.unpaid``), never neither: :func:`program_payment_terms` is the rule the admin API and
``fleetgrid admin create-program`` apply. An event's terms are its program's with the event's own
rates (:func:`event_payment_terms`): settlement pays by them and the planner counts them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from aggregator.db.models import DispatchEvent, Program

CURRENCY_EXPONENTS: dict[str, int] = {
    "AUD": 2,
    "BHD": 3,
    "CAD": 2,
    "CHF": 2,
    "CNY": 2,
    "DKK": 2,
    "EUR": 2,
    "GBP": 2,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "NOK": 2,
    "NZD": 2,
    "PLN": 2,
    "SEK": 2,
    "USD": 2,
}
"""Minor-unit exponent per ISO 4217 currency (2: cents; 0: no minor unit; 3: fils)."""

ROUNDING = ROUND_HALF_EVEN

Rate = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class EventPerformanceLike(Protocol):
    """What :func:`event_revenue` reads of a performance (``EventPerformance`` fits)."""

    @property
    def delivered_kwh(self) -> float: ...

    @property
    def shortfall_kwh(self) -> float: ...

    @property
    def performance_factor(self) -> float: ...


class TermsError(ValueError):
    """Inputs to a revenue calculation that cannot be priced; the message names the field."""


def minor_units(amount: Decimal, currency: str) -> int:
    """``amount`` [major units of ``currency``] as an integer of minor units, rounded half-even."""
    exponent = _exponent(currency)
    return _round_minor(amount.scaleb(exponent))


def _round_minor(amount_minor: Decimal) -> int:
    return int(amount_minor.to_integral_value(rounding=ROUNDING))


def _exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise TermsError(
            f"currency {currency!r} has no known minor-unit exponent; known: {', '.join(CURRENCY_EXPONENTS)}"
        ) from None


class PaymentTerms(BaseModel):
    """How a program pays for its events and capacity (``Program.payment_terms``); rates in major units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field(min_length=3, max_length=3, description="ISO 4217 code, e.g. 'EUR'")
    per_kwh_delivered: Rate = Field(Decimal(0), description="[currency/kWh] of credited delivery")
    per_kw_availability_hour: Rate = Field(
        Decimal(0), description="[currency/(kW·h)] for kW held available during the event"
    )
    per_event: Rate = Field(Decimal(0), description="[currency] per event taken part in")
    capacity_per_kw_month: Rate = Field(Decimal(0), description="[currency/(kW·month)] of enrolled capacity")
    penalty_per_kwh_short: Rate = Field(Decimal(0), description="[currency/kWh] of shortfall")
    performance_threshold: Decimal | None = Field(
        None, ge=0, le=1, description="Performance factor below which the gross is reduced"
    )
    below_threshold_payment_share: Decimal = Field(
        Decimal(0), ge=0, le=1, description="Share of the gross kept below the threshold (0 = forfeit)"
    )
    platform_fee_percent: Decimal = Field(Decimal(0), ge=0, le=100, description="[%] of the net earned")
    wear_compensation_per_kwh_discharged: Rate = Field(
        Decimal(0), description="[currency/kWh] paid to drivers for energy discharged from their batteries"
    )
    wear_funded_by_platform: bool = Field(
        False, description="Wear compensation is the platform's expense, not taken from the drivers' pot"
    )
    drivers_share_losses: bool = Field(
        False,
        description="A negative net pot (penalties and wear above what the event earned) is allocated to "
        "the drivers, who then owe it; by default it is the platform's loss and drivers get no share",
    )

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        code = value.upper()
        if code not in CURRENCY_EXPONENTS:
            raise ValueError(f"unknown currency {value!r}; known: {', '.join(CURRENCY_EXPONENTS)}")
        return code

    @model_validator(mode="after")
    def _share_needs_threshold(self) -> PaymentTerms:
        if self.below_threshold_payment_share and self.performance_threshold is None:
            raise ValueError("below_threshold_payment_share is set but performance_threshold is not")
        return self

    @property
    def exponent(self) -> int:
        """Minor-unit exponent of :attr:`currency`."""
        return CURRENCY_EXPONENTS[self.currency]

    @property
    def pays(self) -> bool:
        """Whether the terms pay anything: per kWh delivered, per kW·h available, per event or per
        kW·month of capacity."""
        return any(getattr(self, name) for name in PAID_RATES)


PAID_RATES = ("per_kwh_delivered", "per_kw_availability_hour", "per_event", "capacity_per_kw_month")
"""The :class:`PaymentTerms` fields that pay the program's participants."""


def program_payment_terms(
    payment_terms: Mapping[str, Any], currency: str, *, unpaid: bool = False
) -> PaymentTerms | None:
    """A program's ``payment_terms`` validated (their currency by default the program's
    ``currency``), or ``None`` for a program declared ``unpaid``.

    Raises :class:`TermsError`, naming the field: for terms that do not validate, that pay nothing
    (:data:`PAID_RATES` all 0) or are in another currency than the program's; for a program declared
    unpaid that has terms; and for one that has none and is not declared unpaid.
    """
    if unpaid:
        if payment_terms:
            raise TermsError(
                f"a program declared unpaid has no payment terms, got {', '.join(map(str, payment_terms))}"
            )
        return None
    if not payment_terms:
        raise TermsError(
            "a program needs payment terms (e.g. per_kwh_delivered), or to be declared unpaid; "
            "an event of a program without terms is planned as unpaid"
        )
    try:
        terms = PaymentTerms.model_validate({"currency": currency, **payment_terms})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise TermsError(problems) from error
    if terms.currency != currency.upper():
        raise TermsError(f"currency: the terms pay in {terms.currency}, the program is in {currency}")
    if not terms.pays:
        raise TermsError(
            f"the terms pay nothing ({', '.join(f'{name} = 0' for name in PAID_RATES)}); give a rate, "
            "or declare the program unpaid"
        )
    return terms


def event_payment_terms(program: Program, event: DispatchEvent) -> PaymentTerms:
    """``program``'s payment terms (currency by default the program's), with ``event``'s own rates
    [currency/kWh] in place of the program's when it carries them: what settlement pays and charges,
    and so what the planner counts.

    Raises :class:`ValueError` naming the program for terms that do not validate, or event rates in
    another currency than the program's.
    """
    try:
        terms = PaymentTerms.model_validate({"currency": program.currency, **program.payment_terms})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ValueError(f"program {program.id!r} payment_terms: {problems}") from error
    overrides: dict[str, Decimal] = {}
    if event.price_per_kwh is not None:
        overrides["per_kwh_delivered"] = Decimal(str(event.price_per_kwh))
    if event.penalty_per_kwh is not None:
        overrides["penalty_per_kwh_short"] = Decimal(str(event.penalty_per_kwh))
    if overrides and event.currency is not None and event.currency.upper() != terms.currency:
        raise ValueError(
            f"event rates are in {event.currency} but program {program.id!r} pays in {terms.currency}"
        )
    return terms.model_copy(update=overrides) if overrides else terms


class LineKind(enum.StrEnum):
    ENERGY = "energy"
    AVAILABILITY = "availability"
    EVENT = "event"
    CAPACITY = "capacity"
    THRESHOLD_REDUCTION = "threshold_reduction"
    PENALTY = "penalty"
    PLATFORM_FEE = "platform_fee"
    WEAR_COMPENSATION = "wear_compensation"


GROSS_KINDS = frozenset({LineKind.ENERGY, LineKind.AVAILABILITY, LineKind.EVENT, LineKind.CAPACITY})
DEDUCTION_KINDS = frozenset(
    {LineKind.THRESHOLD_REDUCTION, LineKind.PENALTY, LineKind.PLATFORM_FEE, LineKind.WEAR_COMPENSATION}
)


@dataclass(frozen=True)
class RevenueLine:
    """One bookable line: ``amount_minor`` >= 0 is a gross earning or a deduction, by ``kind``.

    ``quantity`` and ``rate`` are what the amount was computed from (e.g. 12.5 kWh at 0.30
    EUR/kWh), for statements; ``rate`` is ``None`` for lines derived from other lines.
    """

    kind: LineKind
    amount_minor: int
    quantity: Decimal
    unit: str
    rate: Decimal | None

    @property
    def is_deduction(self) -> bool:
        return self.kind in DEDUCTION_KINDS


@dataclass(frozen=True)
class EventRevenue:
    """An event's (or a month's capacity) revenue lines in minor units of ``currency``."""

    currency: str
    exponent: int
    lines: tuple[RevenueLine, ...]
    performance_factor: float
    threshold_missed: bool
    wear_funded_by_platform: bool = False
    drivers_share_losses: bool = False

    def amount(self, kind: LineKind) -> int:
        """The amount of the line of ``kind`` [minor units], ``0`` when there is none."""
        return sum(line.amount_minor for line in self.lines if line.kind is kind)

    @property
    def gross_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines if line.kind in GROSS_KINDS)

    @property
    def drivers_total_minor(self) -> int:
        """What the event leaves for drivers: ``gross - threshold_reduction - penalty - platform_fee``
        (wear compensation plus the net pot, unless the platform funds the wear)."""
        return self.gross_minor - sum(
            self.amount(kind)
            for kind in (LineKind.THRESHOLD_REDUCTION, LineKind.PENALTY, LineKind.PLATFORM_FEE)
        )

    @property
    def net_pot_minor(self) -> int:
        """The drivers' pot to allocate pro rata to contribution (may be negative)."""
        if self.wear_funded_by_platform:
            return self.drivers_total_minor
        return self.drivers_total_minor - self.amount(LineKind.WEAR_COMPENSATION)

    @property
    def drivers_pot_minor(self) -> int:
        """What is allocated to the drivers: the net pot, or ``0`` for a negative one they do not share
        (``drivers_share_losses`` false)."""
        pot = self.net_pot_minor
        return pot if pot >= 0 or self.drivers_share_losses else 0

    @property
    def platform_loss_minor(self) -> int:
        """The part of a negative net pot the platform bears (>= 0): ``-net_pot`` unless the drivers
        share losses, else ``0``. ``drivers_pot - platform_loss == net_pot`` always."""
        return self.drivers_pot_minor - self.net_pot_minor


def _quantity(name: str, value: float | Decimal) -> Decimal:
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise TermsError(f"{name} is {value}; it must be a finite number")
    return number


def _non_negative(name: str, value: float | Decimal) -> Decimal:
    number = _quantity(name, value)
    if number < 0:
        raise TermsError(f"{name} is {value}; it must be >= 0")
    return number


def event_revenue(
    terms: PaymentTerms,
    performance: EventPerformanceLike,
    *,
    available_kw: float | Decimal,
    discharged_kwh: float | Decimal,
    event_hours: float | Decimal,
) -> EventRevenue:
    """Revenue lines of one event under ``terms`` (module doc); quantities in kW, kWh and hours.

    ``performance`` is an :class:`~aggregator.settlement.performance.EventPerformance` (only its
    ``delivered_kwh``, ``shortfall_kwh`` and ``performance_factor`` are read).
    """
    currency = terms.currency
    available = _non_negative("available_kw", available_kw)
    discharged = _non_negative("discharged_kwh", discharged_kwh)
    hours = _non_negative("event_hours", event_hours)
    delivered = max(_quantity("performance.delivered_kwh", performance.delivered_kwh), Decimal(0))
    shortfall = _non_negative("performance.shortfall_kwh", performance.shortfall_kwh)
    factor = float(performance.performance_factor)
    if not 0.0 <= factor <= 1.0:
        raise TermsError(f"performance.performance_factor is {factor}; it must be in [0, 1]")

    lines: list[RevenueLine] = []

    def add(kind: LineKind, quantity: Decimal, unit: str, rate: Decimal | None, amount: Decimal) -> int:
        minor = minor_units(amount, currency)
        if minor or quantity:
            lines.append(RevenueLine(kind, minor, quantity, unit, rate))
        return minor

    gross = add(
        LineKind.ENERGY, delivered, "kWh", terms.per_kwh_delivered, terms.per_kwh_delivered * delivered
    )
    gross += add(
        LineKind.AVAILABILITY,
        available * hours,
        "kW·h",
        terms.per_kw_availability_hour,
        terms.per_kw_availability_hour * available * hours,
    )
    if terms.per_event:
        gross += add(LineKind.EVENT, Decimal(1), "event", terms.per_event, terms.per_event)

    threshold_missed = terms.performance_threshold is not None and Decimal(str(factor)) < (
        terms.performance_threshold
    )
    reduction = 0
    if threshold_missed and gross:
        kept = _round_minor(Decimal(gross) * terms.below_threshold_payment_share)
        reduction = gross - kept
        lines.append(
            RevenueLine(
                LineKind.THRESHOLD_REDUCTION,
                reduction,
                Decimal(1) - terms.below_threshold_payment_share,
                "share of gross",
                None,
            )
        )
    penalty = add(
        LineKind.PENALTY,
        shortfall,
        "kWh",
        terms.penalty_per_kwh_short,
        terms.penalty_per_kwh_short * shortfall,
    )
    earned = gross - reduction - penalty
    if earned > 0 and terms.platform_fee_percent:
        fee = _round_minor(Decimal(earned) * terms.platform_fee_percent / 100)
        lines.append(
            RevenueLine(
                LineKind.PLATFORM_FEE, fee, Decimal(earned), "minor units", terms.platform_fee_percent
            )
        )
    add(
        LineKind.WEAR_COMPENSATION,
        discharged,
        "kWh",
        terms.wear_compensation_per_kwh_discharged,
        terms.wear_compensation_per_kwh_discharged * discharged,
    )
    return EventRevenue(
        currency,
        terms.exponent,
        tuple(lines),
        factor,
        threshold_missed,
        terms.wear_funded_by_platform,
        terms.drivers_share_losses,
    )


def capacity_revenue(
    terms: PaymentTerms, capacity_kw: float | Decimal, *, months: float | Decimal = 1
) -> EventRevenue:
    """Capacity payment for ``capacity_kw`` [kW] enrolled for ``months``, less the platform fee."""
    capacity = _non_negative("capacity_kw", capacity_kw)
    span = _non_negative("months", months)
    currency = terms.currency
    gross = minor_units(terms.capacity_per_kw_month * capacity * span, currency)
    lines = [RevenueLine(LineKind.CAPACITY, gross, capacity * span, "kW·month", terms.capacity_per_kw_month)]
    if gross > 0 and terms.platform_fee_percent:
        fee = _round_minor(Decimal(gross) * terms.platform_fee_percent / 100)
        lines.append(
            RevenueLine(LineKind.PLATFORM_FEE, fee, Decimal(gross), "minor units", terms.platform_fee_percent)
        )
    return EventRevenue(
        currency, terms.exponent, tuple(lines), 1.0, False, drivers_share_losses=terms.drivers_share_losses
    )
