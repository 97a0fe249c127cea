"""Allocation of a pot in minor units: hand-computed splits and the invariants of largest remainder."""

from __future__ import annotations

import math
from decimal import Decimal

import hypothesis.strategies as st
import pytest
from hypothesis import assume, given

from aggregator.settlement.allocation import AllocationError, allocate
from aggregator.settlement.event_settlement import NOBODY_REASON, PotSplit, split_pot


def test_equal_thirds_go_to_the_lowest_key_first() -> None:
    assert allocate(10000, {1: 1, 2: 1, 3: 1}) == {1: 3334, 2: 3333, 3: 3333}
    assert allocate(10000, {3: 1.0, 2: 1.0, 1: 1.0}) == {1: 3334, 2: 3333, 3: 3333}


def test_largest_remainder_wins_the_leftover_units() -> None:
    # 100 by 1 : 2 : 4 -> quotas 14.29, 28.57, 57.14 -> floors 14, 28, 57 (99), one left to 28.57.
    assert allocate(100, {"a": 1, "b": 2, "c": 4}) == {"a": 14, "b": 29, "c": 57}


def test_zero_and_negative_contributions_get_nothing() -> None:
    assert allocate(1000, {"a": 3, "b": 0, "c": -5, "d": 1}) == {"a": 750, "b": 0, "c": 0, "d": 250}


def test_decimal_contributions_are_exact() -> None:
    assert allocate(3, {"x": Decimal("0.1"), "y": Decimal("0.2")}) == {"x": 1, "y": 2}


def test_negative_pot_mirrors_the_positive_one() -> None:
    assert allocate(-10000, {1: 1, 2: 1, 3: 1}) == {1: -3334, 2: -3333, 3: -3333}


def test_zero_pot_is_all_zero_even_without_contributors() -> None:
    assert allocate(0, {"a": 0.0, "b": -1.0}) == {"a": 0, "b": 0}


def test_pot_with_no_positive_contribution_is_refused() -> None:
    with pytest.raises(AllocationError, match="none of the 2 participants"):
        allocate(500, {"a": 0.0, "b": -1.0})


def test_non_finite_contribution_names_the_participant() -> None:
    with pytest.raises(AllocationError, match="'ev-7'"):
        allocate(500, {"ev-1": 1.0, "ev-7": math.nan})


def test_fractional_pot_is_refused() -> None:
    with pytest.raises(AllocationError, match="integer"):
        allocate(10.5, {"a": 1.0})  # type: ignore[arg-type]


contributions = st.dictionaries(
    st.integers(0, 30),
    st.one_of(
        st.floats(-100, 1e6, allow_nan=False, allow_infinity=False),
        st.decimals(-100, 1e6, allow_nan=False, allow_infinity=False, places=3),
    ),
    min_size=1,
    max_size=12,
)
pots = st.integers(-(10**12), 10**12)


@given(pots, contributions)
def test_parts_sum_exactly_to_the_pot(pot: int, shares: dict[int, float | Decimal]) -> None:
    assume(any(value > 0 for value in shares.values()) or pot == 0)
    result = allocate(pot, shares)
    assert set(result) == set(shares)
    assert sum(result.values()) == pot
    for key, value in shares.items():
        if value <= 0:
            assert result[key] == 0


@given(pots, contributions)
def test_more_contribution_never_gets_less(pot: int, shares: dict[int, float | Decimal]) -> None:
    assume(any(value > 0 for value in shares.values()))
    result = allocate(abs(pot), shares)
    for a, ca in shares.items():
        for b, cb in shares.items():
            if ca > cb:
                assert result[a] >= result[b]
            if ca == cb:
                assert abs(result[a] - result[b]) <= 1


@given(st.integers(0, 10**9), contributions, st.data())
def test_raising_ones_contribution_never_lowers_its_share(
    pot: int, shares: dict[int, float | Decimal], data: st.DataObject
) -> None:
    assume(any(value > 0 for value in shares.values()))
    key = data.draw(st.sampled_from(sorted(shares)))
    extra = data.draw(st.floats(0, 1e6, allow_nan=False))
    raised = dict(shares)
    before = shares[key]
    raised[key] = before + Decimal(repr(extra)) if isinstance(before, Decimal) else before + extra
    assert allocate(pot, raised)[key] >= allocate(pot, shares)[key]


# ------------------------------------------------------------- the event's pot: drivers and residual

contributions = st.floats(-20, 40, allow_nan=False).map(lambda kwh: round(kwh, 3))


def test_the_unattributed_remainder_takes_its_share_as_the_residual_with_its_reason() -> None:
    # 900 over drivers 1 (11 kWh) and 2 (9 kWh), and a remainder of 5 kWh no driver accounts for:
    # 11 : 9 : 5 = 396 : 324 : 180. Driver 3 made things worse (-2 kWh) and gets nothing.
    split = split_pot(900, {1: 11.0, 2: 9.0, 3: -2.0}, 5.0, "5 kWh of base load")
    assert split.shares == {1: 396, 2: 324, 3: 0}
    assert (split.residual_minor, split.residual_reason) == (180, "5 kWh of base load")


def test_a_pot_nobody_contributed_to_is_all_residual_and_says_so() -> None:
    split = split_pot(750, {1: 0.0, 2: -3.0}, -1.0, "unused")
    assert split.shares == {1: 0, 2: 0}
    assert (split.residual_minor, split.residual_reason) == (750, NOBODY_REASON)
    # A rounding-sized remainder is not delivery: the drivers share everything.
    assert split_pot(100, {1: 1.0}, 1e-9, "rounding") == PotSplit({1: 100}, 0, "")


@given(
    pot=st.integers(-100_000, 100_000),
    drivers=st.dictionaries(st.integers(1, 30), contributions, max_size=8),
    unattributed=contributions,
    negative=st.dictionaries(st.integers(31, 40), st.floats(-50, 0, allow_nan=False), max_size=3),
)
def test_the_pot_lands_on_drivers_and_the_residual_exactly_and_a_negative_contribution_changes_nothing(
    pot: int, drivers: dict[int, float], unattributed: float, negative: dict[int, float]
) -> None:
    split = split_pot(pot, drivers, unattributed, "remainder")
    assert sum(split.shares.values()) + split.residual_minor == pot  # nothing left unallocated
    assert set(split.shares) == set(drivers)
    for driver, weight in drivers.items():
        if weight <= 0:
            assert split.shares[driver] == 0
        elif pot > 0:
            assert split.shares[driver] >= 0
    if split.residual_minor:
        assert split.residual_reason in ("remainder", NOBODY_REASON)
    # Drivers who made things worse get nothing, and everyone else's share is what it was.
    worse = split_pot(pot, {**drivers, **negative}, unattributed, "remainder")
    assert worse.shares == {**split.shares, **dict.fromkeys(negative, 0)}
    assert worse.residual_minor == split.residual_minor
