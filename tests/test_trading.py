"""The traders' portfolio figures computed outside the API (aggregator/control/trading.py), by hand.

The routes that serve them are tested end to end in tests/test_api_traders.py.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from aggregator.control.trading import HOUR, portfolio_flexibility

START = dt.datetime(2031, 3, 2, 16, tzinfo=dt.UTC)


def hourly(up: list[float], down: list[float], index: pd.DatetimeIndex) -> pd.DataFrame:
    return pd.DataFrame({"up_kw": up, "down_kw": down}, index=index)


def test_portfolio_flexibility_sums_the_sites_with_a_figure_hour_by_hour() -> None:
    index = pd.date_range(START, periods=3, freq="h")
    nan = np.nan
    depot = hourly([10.0, 20.0, nan], [5.0, 0.0, nan], index)  # its plan ends after two hours
    yard = hourly([7.5, nan, nan], [2.5, nan, nan], index)  # one hour only
    hours = portfolio_flexibility([depot, yard], index)
    assert [(h.start, h.end) for h in hours] == [(t, t + HOUR) for t in index]
    assert [(h.up_kw, h.down_kw, h.sites) for h in hours] == [
        (17.5, 7.5, 2),
        (20.0, 0.0, 1),
        (None, None, 0),  # no site knows the hour: unknown, not zero
    ]


def test_portfolio_flexibility_without_sites_knows_nothing() -> None:
    index = pd.date_range(START, periods=2, freq="h")
    hours = portfolio_flexibility([], index)
    assert [(h.up_kw, h.down_kw, h.sites) for h in hours] == [(None, None, 0), (None, None, 0)]
