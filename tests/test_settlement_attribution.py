"""Vehicle attribution: hand-computed deliveries against per-vehicle baselines that add up to the
site's, exclusions kept with their reason, and a remainder that closes the balance by construction."""

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
    combine,
)

START = pd.Timestamp("2024-07-01T17:00:00Z")


def series(*values: float) -> pd.Series:
    return pd.Series(
        [float(v) for v in values], index=pd.date_range(START, periods=len(values), freq="15min")
    )


def test_deliveries_are_baseline_minus_metered_and_the_remainder_is_the_rest() -> None:
    # ev-a: baseline 11 kW, charged 3: 8 kW x 0.5 h = 4 kWh. ev-b: 0, discharged 10 kW: 5 kWh. ev-c:
    # 7, charged 11 (overrode nothing, just hurt): -2 kWh. The site's baseline is 25 kW (the vehicles'
    # 18 and 7 kW of base load) and it imported 9 kW (the vehicles' 4 and 5 of base load): it
    # delivered 16 kW x 0.5 h = 8 kWh, of which 7 by the vehicles and 1 by the base load, 2 kW under
    # its share of the baseline.
    result = attribute(
        series(25, 25),
        series(9, 9),
        {"ev-a": series(11, 11), "ev-b": series(0, 0), "ev-c": series(7, 7)},
        {"ev-a": series(3, 3), "ev-b": series(-10, -10), "ev-c": series(11, 11)},
    )
    assert result.vehicles["ev-a"].delivered_kwh == pytest.approx(4.0)
    assert result.vehicles["ev-b"].delivered_kwh == pytest.approx(5.0)
    assert result.vehicles["ev-c"].delivered_kwh == pytest.approx(-2.0)
    assert result.vehicles_delivered_kwh == pytest.approx(7.0)
    assert result.site_delivered_kwh == pytest.approx(8.0)
    assert result.unattributed_kwh == pytest.approx(1.0)
    assert allocate(1000, result.weights()) == {"ev-a": 444, "ev-b": 556, "ev-c": 0}


def test_an_override_keeps_its_delivery_for_the_record_but_weighs_nothing() -> None:
    override = Exclusion(ExclusionReason.OVERRIDE, "driver pressed 'charge now' at 17:05")
    result = attribute(
        series(22),
        series(-2),
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


def test_a_vehicle_of_unknown_state_has_no_delivery_and_its_part_is_unattributed() -> None:
    # ev-u's SoC was assumed when the event was planned: it has no baseline of its own. Whatever it
    # did is in the remainder: the site's 30 kW baseline less ev-a's 11, against the 12 kW the site
    # drew besides ev-a (base load 7 and ev-u's 5): 7 kW x 0.25 h.
    unknown = Exclusion(ExclusionReason.UNKNOWN_STATE, "session 9: SoC unknown")
    result = attribute(
        series(30), series(15), {"ev-a": series(11)}, {"ev-a": series(3)}, unknown={"ev-u": unknown}
    )
    assert result.vehicles["ev-u"].delivered_kwh == 0.0
    assert result.vehicles["ev-u"].weight_kwh == 0.0
    assert result.vehicles["ev-u"].missing_intervals == 1
    assert result.vehicles["ev-u"].exclusion == unknown
    assert result.vehicles["ev-a"].delivered_kwh == pytest.approx(2.0)
    assert result.unattributed_kwh == pytest.approx(1.75)
    assert result.site_delivered_kwh == pytest.approx(3.75)


def test_missing_intervals_are_left_out_and_counted_and_their_part_stays_in_the_remainder() -> None:
    result = attribute(
        series(10, 10, 10), series(2, 3, 6), {"ev": series(10, 10, 10)}, {"ev": series(2, math.nan, 6)}
    )
    assert result.vehicles["ev"].missing_intervals == 1
    assert result.vehicles["ev"].delivered_kwh == pytest.approx((8 + 4) * 0.25)
    assert result.unattributed_kwh == pytest.approx(7 * 0.25)
    # An interval the site has no baseline for counts for nobody.
    unmeasured = attribute(series(math.nan, 10), series(2, 2), {"ev": series(10, 10)}, {"ev": series(2, 2)})
    assert unmeasured.vehicles["ev"].delivered_kwh == pytest.approx(2.0)
    assert unmeasured.vehicles["ev"].missing_intervals == 1
    assert unmeasured.site_delivered_kwh == pytest.approx(2.0)


def test_a_vehicle_with_only_a_baseline_is_named() -> None:
    with pytest.raises(AttributionError, match="ev-x"):
        attribute(series(1), series(1), {"ev-x": series(1)}, {})


def test_mismatched_intervals_name_the_vehicle() -> None:
    with pytest.raises(AttributionError, match="'ev-1'"):
        attribute(series(1, 1), series(1, 1), {"ev-1": series(1, 1)}, {"ev-1": series(1)})


def test_exclusion_of_a_vehicle_without_data_is_refused() -> None:
    with pytest.raises(AttributionError, match="ev-9"):
        attribute(
            series(1),
            series(1),
            {"ev-1": series(1)},
            {"ev-1": series(1)},
            exclusions={"ev-9": Exclusion(ExclusionReason.CONSENT_WITHDRAWN)},
        )


def test_sites_combine_into_one_attribution() -> None:
    one = attribute(series(10), series(2), {1: series(10)}, {1: series(4)})
    two = attribute(series(8), series(8), {2: series(3)}, {2: series(1)})
    both = combine([one, two])
    assert set(both.vehicles) == {1, 2}
    assert both.site_delivered_kwh == pytest.approx(2.0)
    assert both.vehicles_delivered_kwh + both.unattributed_kwh == pytest.approx(both.site_delivered_kwh)
    with pytest.raises(AttributionError, match="two sites"):
        combine([one, one])


finite = st.floats(-22, 22, allow_nan=False)
maybe = st.one_of(finite, st.just(math.nan))


@given(
    st.lists(st.tuples(maybe, maybe), min_size=4, max_size=4),
    st.dictionaries(
        st.text(min_size=1, max_size=4),
        st.lists(st.tuples(maybe, maybe), min_size=4, max_size=4),
        max_size=6,
    ),
)
def test_the_vehicles_and_the_remainder_add_up_to_the_sites_delivery(
    site: list[tuple[float, float]], fleet: dict[str, list[tuple[float, float]]]
) -> None:
    baseline = {key: series(*(b for b, _ in rows)) for key, rows in fleet.items()}
    metered = {key: series(*(m for _, m in rows)) for key, rows in fleet.items()}
    site_baseline, site_measured = series(*(b for b, _ in site)), series(*(m for _, m in site))
    result = attribute(site_baseline, site_measured, baseline, metered)
    measured = (site_baseline - site_measured).dropna()
    assert result.site_delivered_kwh == pytest.approx(float(measured.sum()) * 0.25, abs=1e-9)
    total = sum(contribution.delivered_kwh for contribution in result.vehicles.values())
    assert total + result.unattributed_kwh == pytest.approx(result.site_delivered_kwh, abs=1e-9)
