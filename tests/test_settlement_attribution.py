"""Vehicle attribution: hand-computed deliveries, exclusions kept with their reason, reconciliation."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pandas as pd
import pytest
from hypothesis import given

from aggregator.settlement.allocation import allocate
from aggregator.settlement.attribution import (
    AttributionError,
    Exclusion,
    ExclusionReason,
    attribute,
)

START = pd.Timestamp("2024-07-01T17:00:00Z")


def series(*values: float) -> pd.Series:
    return pd.Series(
        [float(v) for v in values], index=pd.date_range(START, periods=len(values), freq="15min")
    )


def test_deliveries_are_plan_minus_metered_and_the_gap_is_reported() -> None:
    # ev-a planned 11 kW, charged 3: 8 kW x 0.5 h = 4 kWh. ev-b planned 0, discharged 10 kW: 5 kWh.
    # ev-c planned 7, charged 11 (overrode nothing, just hurt): -2 kWh. Site measured 8 kWh.
    result = attribute(
        8.0,
        {"ev-a": series(11, 11), "ev-b": series(0, 0), "ev-c": series(7, 7)},
        {"ev-a": series(3, 3), "ev-b": series(-10, -10), "ev-c": series(11, 11)},
    )
    assert result.vehicles["ev-a"].delivered_kwh == pytest.approx(4.0)
    assert result.vehicles["ev-b"].delivered_kwh == pytest.approx(5.0)
    assert result.vehicles["ev-c"].delivered_kwh == pytest.approx(-2.0)
    assert result.vehicles_delivered_kwh == pytest.approx(7.0)
    assert result.unattributed_kwh == pytest.approx(1.0)
    assert allocate(1000, result.weights()) == {"ev-a": 444, "ev-b": 556, "ev-c": 0}


def test_an_override_keeps_its_delivery_for_the_record_but_weighs_nothing() -> None:
    override = Exclusion(ExclusionReason.OVERRIDE, "driver pressed 'charge now' at 17:05")
    result = attribute(
        6.0,
        {"ev-a": series(11), "ev-b": series(11)},
        {"ev-a": series(3), "ev-b": series(-5)},
        exclusions={"ev-b": override},
    )
    b = result.vehicles["ev-b"]
    assert b.delivered_kwh == pytest.approx(4.0)
    assert b.weight_kwh == 0.0
    assert b.exclusion == override
    assert result.weights() == {"ev-a": pytest.approx(2.0), "ev-b": 0.0}
    assert result.unattributed_kwh == pytest.approx(0.0)


def test_missing_intervals_are_left_out_and_counted() -> None:
    result = attribute(0.0, {"ev": series(10, 10, 10)}, {"ev": series(2, math.nan, 6)})
    assert result.vehicles["ev"].missing_intervals == 1
    assert result.vehicles["ev"].delivered_kwh == pytest.approx((8 + 4) * 0.25)


def test_a_vehicle_with_only_a_plan_is_named() -> None:
    with pytest.raises(AttributionError, match="ev-x"):
        attribute(0.0, {"ev-x": series(1)}, {})


def test_mismatched_intervals_name_the_vehicle() -> None:
    with pytest.raises(AttributionError, match="'ev-1'"):
        attribute(0.0, {"ev-1": series(1, 1)}, {"ev-1": series(1)})


def test_exclusion_of_an_unknown_vehicle_is_refused() -> None:
    with pytest.raises(AttributionError, match="ev-9"):
        attribute(
            0.0,
            {"ev-1": series(1)},
            {"ev-1": series(1)},
            exclusions={"ev-9": Exclusion(ExclusionReason.CONSENT_WITHDRAWN)},
        )


@given(
    st.floats(-100, 100, allow_nan=False),
    st.dictionaries(
        st.text(min_size=1, max_size=4),
        st.lists(st.tuples(st.floats(-22, 22), st.floats(-22, 22)), min_size=3, max_size=3),
        max_size=6,
    ),
)
def test_the_reported_gap_closes_the_balance(
    site_kwh: float, fleet: dict[str, list[tuple[float, float]]]
) -> None:
    planned = {key: series(*(p for p, _ in rows)) for key, rows in fleet.items()}
    metered = {key: series(*(m for _, m in rows)) for key, rows in fleet.items()}
    result = attribute(site_kwh, planned, metered)
    total = sum(contribution.delivered_kwh for contribution in result.vehicles.values())
    assert total + result.unattributed_kwh == pytest.approx(site_kwh, abs=1e-9)
