"""Payment terms: validation, hand-computed revenue lines, rounding and the line identity."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import hypothesis.strategies as st
import pandas as pd
import pytest
from hypothesis import given
from pydantic import ValidationError

from aggregator.programs.terms import (
    EventRevenue,
    LineKind,
    PaymentTerms,
    TermsError,
    capacity_revenue,
    event_revenue,
    minor_units,
    program_payment_terms,
)
from aggregator.settlement.performance import event_performance
from market_adapters.dispatch import SignalKind


@dataclass(frozen=True)
class Performance:
    delivered_kwh: float
    shortfall_kwh: float
    performance_factor: float


@pytest.mark.parametrize(
    ("terms", "pays"),
    [
        ({"per_kwh_delivered": "0.30"}, True),
        ({"per_kw_availability_hour": 1}, True),
        ({"per_event": 5}, True),
        ({"capacity_per_kw_month": 2}, True),
        ({"penalty_per_kwh_short": 1, "platform_fee_percent": 10}, False),
    ],
)
def test_terms_pay_when_a_rate_pays(terms: dict[str, object], pays: bool) -> None:
    assert PaymentTerms.model_validate({"currency": "EUR", **terms}).pays is pays


def test_a_program_pays_or_is_declared_unpaid() -> None:
    terms = program_payment_terms({"per_kwh_delivered": "0.30"}, "EUR")
    assert terms is not None and (terms.currency, terms.per_kwh_delivered) == ("EUR", Decimal("0.30"))
    assert program_payment_terms({}, "EUR", unpaid=True) is None
    with pytest.raises(TermsError, match="needs payment terms"):
        program_payment_terms({}, "EUR")
    with pytest.raises(TermsError, match="declared unpaid has no payment terms, got per_event"):
        program_payment_terms({"per_event": 1}, "EUR", unpaid=True)
    with pytest.raises(TermsError, match="the terms pay nothing"):
        program_payment_terms({"penalty_per_kwh_short": 1}, "EUR")
    with pytest.raises(TermsError, match="currency: the terms pay in USD, the program is in EUR"):
        program_payment_terms({"currency": "USD", "per_event": 1}, "EUR")
    with pytest.raises(TermsError, match="per_kwh_delivered: Input should be greater than or equal to 0"):
        program_payment_terms({"per_kwh_delivered": -1}, "EUR")


def test_terms_validate_from_the_program_json() -> None:
    terms = PaymentTerms.model_validate(
        {"currency": "eur", "per_kwh_delivered": "0.30", "platform_fee_percent": 15}
    )
    assert terms.currency == "EUR"
    assert terms.exponent == 2
    assert terms.per_kwh_delivered == Decimal("0.30")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"currency": "XXX"}, "currency"),
        ({"currency": "EUR", "per_kwh_delivered": -1}, "per_kwh_delivered"),
        ({"currency": "EUR", "platform_fee_percent": 101}, "platform_fee_percent"),
        ({"currency": "EUR", "performance_threshold": 1.5}, "performance_threshold"),
        ({"currency": "EUR", "per_kwh": 1}, "per_kwh"),
    ],
)
def test_bad_terms_name_the_field(payload: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        PaymentTerms.model_validate(payload)


def test_share_without_threshold_is_refused() -> None:
    with pytest.raises(ValidationError, match="performance_threshold"):
        PaymentTerms(currency="EUR", below_threshold_payment_share=Decimal("0.5"))


def test_minor_units_follow_the_currency_exponent_and_round_half_even() -> None:
    assert minor_units(Decimal("1.005"), "EUR") == 100  # half to even: 100.5 -> 100
    assert minor_units(Decimal("1.015"), "EUR") == 102  # 101.5 -> 102
    assert minor_units(Decimal("1234.5"), "JPY") == 1234
    assert minor_units(Decimal("1235.5"), "JPY") == 1236
    assert minor_units(Decimal("1.0005"), "KWD") == 1000
    with pytest.raises(TermsError, match="'ABC'"):
        minor_units(Decimal(1), "ABC")


def test_full_event_lines_hand_computed() -> None:
    terms = PaymentTerms(
        currency="EUR",
        per_kwh_delivered=Decimal("0.30"),
        per_kw_availability_hour=Decimal("0.05"),
        per_event=Decimal("2.00"),
        penalty_per_kwh_short=Decimal("0.10"),
        platform_fee_percent=Decimal(15),
        wear_compensation_per_kwh_discharged=Decimal("0.02"),
    )
    # 40 kWh delivered of 50: energy 12.00, availability 0.05 x 50 kW x 2 h = 5.00, event 2.00 -> 19.00;
    # penalty 10 kWh x 0.10 = 1.00; fee 15 % of 18.00 = 2.70; wear 30 kWh x 0.02 = 0.60; pot 14.70.
    revenue = event_revenue(
        terms, Performance(40.0, 10.0, 0.8), available_kw=50, discharged_kwh=30, event_hours=2
    )
    assert revenue.amount(LineKind.ENERGY) == 1200
    assert revenue.amount(LineKind.AVAILABILITY) == 500
    assert revenue.amount(LineKind.EVENT) == 200
    assert revenue.gross_minor == 1900
    assert revenue.amount(LineKind.PENALTY) == 100
    assert revenue.amount(LineKind.PLATFORM_FEE) == 270
    assert revenue.amount(LineKind.WEAR_COMPENSATION) == 60
    assert revenue.net_pot_minor == 1470
    assert revenue.drivers_total_minor == 1530
    energy = next(line for line in revenue.lines if line.kind is LineKind.ENERGY)
    assert (energy.quantity, energy.unit, energy.rate) == (Decimal("40.0"), "kWh", Decimal("0.30"))


def test_reads_a_measured_event_performance() -> None:
    index = pd.date_range("2024-07-01T17:00Z", periods=4, freq="15min")
    performance = event_performance(
        SignalKind.DR_REDUCTION,
        pd.Series(20.0, index=index),
        pd.Series(100.0, index=index),
        pd.Series([80.0, 80.0, 90.0, 90.0], index=index),
    )
    terms = PaymentTerms(
        currency="EUR", per_kwh_delivered=Decimal("0.40"), penalty_per_kwh_short=Decimal("0.20")
    )
    revenue = event_revenue(terms, performance, available_kw=20, discharged_kwh=0, event_hours=1)
    # Delivered (20 + 20 + 10 + 10) x 0.25 = 15 kWh of 20: 6.00 EUR, shortfall 5 kWh: 1.00 EUR.
    assert revenue.amount(LineKind.ENERGY) == 600
    assert revenue.amount(LineKind.PENALTY) == 100
    assert revenue.net_pot_minor == 500


def test_wear_funded_by_the_platform_stays_out_of_the_pot() -> None:
    terms = PaymentTerms(
        currency="EUR",
        per_event=Decimal(10),
        wear_compensation_per_kwh_discharged=Decimal("0.05"),
        wear_funded_by_platform=True,
    )
    revenue = event_revenue(
        terms, Performance(0.0, 0.0, 1.0), available_kw=0, discharged_kwh=40, event_hours=1
    )
    assert revenue.amount(LineKind.WEAR_COMPENSATION) == 200
    assert revenue.net_pot_minor == 1000


def test_yen_has_no_minor_unit() -> None:
    terms = PaymentTerms(currency="JPY", per_kwh_delivered=Decimal("25.5"))
    revenue = event_revenue(
        terms, Performance(3.0, 0.0, 1.0), available_kw=0, discharged_kwh=0, event_hours=1
    )
    assert revenue.exponent == 0
    assert revenue.net_pot_minor == 76  # 76.5 -> 76 (half to even)


def test_missing_the_threshold_forfeits_the_gross_but_not_the_penalty() -> None:
    terms = PaymentTerms(
        currency="USD",
        per_kwh_delivered=Decimal("1"),
        per_event=Decimal("5"),
        penalty_per_kwh_short=Decimal("0.5"),
        performance_threshold=Decimal("0.5"),
        platform_fee_percent=Decimal(10),
    )
    revenue = event_revenue(
        terms, Performance(4.0, 16.0, 0.2), available_kw=0, discharged_kwh=0, event_hours=1
    )
    assert revenue.threshold_missed
    assert revenue.gross_minor == 900
    assert revenue.amount(LineKind.THRESHOLD_REDUCTION) == 900
    assert revenue.amount(LineKind.PENALTY) == 800
    assert revenue.amount(LineKind.PLATFORM_FEE) == 0  # no fee on a loss
    assert revenue.net_pot_minor == -800


def test_drivers_share_losses_is_off_unless_the_program_says_so() -> None:
    assert PaymentTerms.model_validate({"currency": "EUR"}).drivers_share_losses is False
    assert PaymentTerms.model_validate({"currency": "EUR", "drivers_share_losses": True}).drivers_share_losses
    with pytest.raises(ValidationError, match="drivers_share_losses"):
        PaymentTerms.model_validate({"currency": "EUR", "drivers_share_losses": "sometimes"})


@pytest.mark.parametrize(("share_losses", "drivers_pot", "platform_loss"), [(False, 0, 800), (True, -800, 0)])
def test_a_penalty_above_the_payment_is_the_platforms_loss_unless_drivers_share_losses(
    share_losses: bool, drivers_pot: int, platform_loss: int
) -> None:
    # 4 kWh x 1 + 5 = 9.00 USD gross, forfeited below the threshold; penalty 16 kWh x 0.5 = 8.00 USD;
    # net pot -8.00: by default the platform's loss, with drivers_share_losses the drivers'.
    terms = PaymentTerms(
        currency="USD",
        per_kwh_delivered=Decimal("1"),
        per_event=Decimal("5"),
        penalty_per_kwh_short=Decimal("0.5"),
        performance_threshold=Decimal("0.5"),
        drivers_share_losses=share_losses,
    )
    revenue = event_revenue(
        terms, Performance(4.0, 16.0, 0.2), available_kw=0, discharged_kwh=0, event_hours=1
    )
    assert revenue.net_pot_minor == -800
    assert revenue.drivers_total_minor == -800
    assert revenue.drivers_pot_minor == drivers_pot
    assert revenue.platform_loss_minor == platform_loss


@pytest.mark.parametrize(("share_losses", "drivers_pot", "platform_loss"), [(False, 0, 500), (True, -500, 0)])
def test_wear_above_the_event_earnings_is_the_platforms_loss_unless_drivers_share_losses(
    share_losses: bool, drivers_pot: int, platform_loss: int
) -> None:
    # 10.00 EUR per event, no penalty; wear 300 kWh x 0.05 = 15.00: the drivers' total is 10.00, the
    # net pot after wear -5.00.
    terms = PaymentTerms(
        currency="EUR",
        per_event=Decimal(10),
        wear_compensation_per_kwh_discharged=Decimal("0.05"),
        drivers_share_losses=share_losses,
    )
    revenue = event_revenue(
        terms, Performance(0.0, 0.0, 1.0), available_kw=0, discharged_kwh=300, event_hours=1
    )
    assert revenue.drivers_total_minor == 1000
    assert revenue.amount(LineKind.WEAR_COMPENSATION) == 1500
    assert revenue.net_pot_minor == -500
    assert revenue.drivers_pot_minor == drivers_pot
    assert revenue.platform_loss_minor == platform_loss


def test_a_positive_pot_is_the_drivers_whatever_the_loss_terms() -> None:
    for share_losses in (False, True):
        terms = PaymentTerms(
            currency="EUR", per_kwh_delivered=Decimal("1"), drivers_share_losses=share_losses
        )
        revenue = event_revenue(
            terms, Performance(7.0, 0.0, 1.0), available_kw=0, discharged_kwh=0, event_hours=1
        )
        assert (revenue.drivers_pot_minor, revenue.platform_loss_minor) == (700, 0)


def test_below_threshold_share_reduces_instead_of_forfeiting() -> None:
    terms = PaymentTerms(
        currency="EUR",
        per_kwh_delivered=Decimal("1"),
        performance_threshold=Decimal("0.75"),
        below_threshold_payment_share=Decimal("0.5"),
    )
    revenue = event_revenue(
        terms, Performance(7.0, 3.0, 0.7), available_kw=0, discharged_kwh=0, event_hours=1
    )
    assert revenue.amount(LineKind.THRESHOLD_REDUCTION) == 350
    assert revenue.net_pot_minor == 350
    met = event_revenue(terms, Performance(8.0, 2.0, 0.8), available_kw=0, discharged_kwh=0, event_hours=1)
    assert not met.threshold_missed
    assert met.net_pot_minor == 800


def test_negative_delivery_earns_nothing_rather_than_charging() -> None:
    terms = PaymentTerms(currency="EUR", per_kwh_delivered=Decimal("1"))
    revenue = event_revenue(
        terms, Performance(-5.0, 10.0, 0.0), available_kw=0, discharged_kwh=0, event_hours=1
    )
    assert revenue.gross_minor == 0


def test_capacity_revenue_is_monthly_less_the_fee() -> None:
    terms = PaymentTerms(
        currency="EUR", capacity_per_kw_month=Decimal("3.50"), platform_fee_percent=Decimal(20)
    )
    revenue = capacity_revenue(terms, 100)
    assert revenue.gross_minor == 35000
    assert revenue.amount(LineKind.PLATFORM_FEE) == 7000
    assert revenue.net_pot_minor == 28000


@pytest.mark.parametrize("name", ["available_kw", "discharged_kwh", "event_hours"])
def test_negative_quantities_name_the_argument(name: str) -> None:
    terms = PaymentTerms(currency="EUR")
    quantities = {"available_kw": 1.0, "discharged_kwh": 1.0, "event_hours": 1.0} | {name: -1.0}
    with pytest.raises(TermsError, match=name):
        event_revenue(terms, Performance(1.0, 0.0, 1.0), **quantities)


rates = st.decimals(0, 10, places=4, allow_nan=False, allow_infinity=False)


@given(
    rates,
    rates,
    rates,
    rates,
    st.decimals(0, 100, places=2, allow_nan=False, allow_infinity=False),
    rates,
    st.floats(-10, 1000, allow_nan=False),
    st.floats(0, 1000, allow_nan=False),
    st.floats(0, 1, allow_nan=False),
    st.floats(0, 500, allow_nan=False),
    st.floats(0, 500, allow_nan=False),
    st.sampled_from(["EUR", "JPY", "KWD"]),
    st.booleans(),
)
def test_lines_always_reconcile_to_the_net_pot(
    per_kwh: Decimal,
    availability: Decimal,
    per_event: Decimal,
    penalty: Decimal,
    fee: Decimal,
    wear: Decimal,
    delivered: float,
    shortfall: float,
    factor: float,
    available: float,
    discharged: float,
    currency: str,
    share_losses: bool,
) -> None:
    terms = PaymentTerms(
        currency=currency,
        per_kwh_delivered=per_kwh,
        per_kw_availability_hour=availability,
        per_event=per_event,
        penalty_per_kwh_short=penalty,
        platform_fee_percent=fee,
        wear_compensation_per_kwh_discharged=wear,
        performance_threshold=Decimal("0.5"),
        drivers_share_losses=share_losses,
    )
    revenue: EventRevenue = event_revenue(
        terms,
        Performance(delivered, shortfall, factor),
        available_kw=available,
        discharged_kwh=discharged,
        event_hours=1.5,
    )
    deductions = sum(line.amount_minor for line in revenue.lines if line.is_deduction)
    assert revenue.gross_minor - deductions == revenue.net_pot_minor
    assert all(line.amount_minor >= 0 for line in revenue.lines)
    assert revenue.amount(LineKind.PLATFORM_FEE) <= max(revenue.gross_minor, 0)
    # What the drivers get and what the platform bears always make up the net pot; drivers who do
    # not share losses never owe anything, and the platform bears nothing for drivers who do.
    assert revenue.drivers_pot_minor - revenue.platform_loss_minor == revenue.net_pot_minor
    assert revenue.platform_loss_minor >= 0
    if share_losses:
        assert revenue.platform_loss_minor == 0
    else:
        assert revenue.drivers_pot_minor >= 0
