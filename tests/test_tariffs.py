"""acnportal time-of-use tariffs: real SCE/PG&E prices on our step grid, wrapping seasons, bad files."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tariff_data import SCE_TOU_EV_4

from market_adapters.errors import AdapterFormatError
from market_adapters.tariffs import (
    DemandChargeVariesError,
    TariffLookupError,
    TouTariff,
    fetch_tou_tariff,
    parse_tou_tariff,
    read_tou_tariff,
)

TARIFFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tariffs"
LA = "America/Los_Angeles"


@pytest.fixture
def sce() -> TouTariff:
    return parse_tou_tariff(SCE_TOU_EV_4)


def prices_at(tariff: TouTariff, *stamps: str) -> list[float]:
    return tariff.import_prices(pd.DatetimeIndex(list(stamps)).tz_localize(LA)).tolist()


def test_the_shared_file_is_the_embedded_copy() -> None:
    path = TARIFFS / "sce_tou_ev_4_march_2019.json"
    if not path.is_file():
        pytest.skip(f"shared tariffs not found at {TARIFFS}")
    assert read_tou_tariff(path) == parse_tou_tariff(SCE_TOU_EV_4)


def test_every_shared_tariff_reads() -> None:
    paths = sorted(TARIFFS.glob("*.json"))
    if not paths:
        pytest.skip(f"shared tariffs not found at {TARIFFS}")
    names = {read_tou_tariff(p).name for p in paths}
    assert {"SCE TOU-EV-4", "SCE TOU-EV-8", "PGE A-10 TOU"} <= names


def test_sce_tou_ev_4_prices(sce: TouTariff) -> None:
    # Tuesday 2019-03-05 is a winter weekday, Saturday 2019-03-09 a weekend, Tuesday 2019-07-02 summer.
    assert prices_at(sce, "2019-03-05 10:00", "2019-03-05 13:00", "2019-03-09 13:00", "2019-07-02 12:00") == [
        0.07492,
        0.0869,
        0.06087,
        0.26668,
    ]
    assert prices_at(sce, "2019-03-05 07:59", "2019-03-05 08:00", "2019-03-05 22:59", "2019-03-05 23:00") == [
        0.06087,
        0.07492,
        0.07492,
        0.06087,
    ]


def test_seasons_wrap_the_year_end(sce: TouTariff) -> None:
    # 2019-12-31 and 2020-01-01 are a Tuesday and a Wednesday: winter on both sides of the wrap.
    assert prices_at(sce, "2019-12-31 13:00", "2020-01-01 13:00") == [0.0869, 0.0869]
    # Last winter day and first summer day (Friday 2019-05-31, Monday 2019-06-03 ... and back).
    assert prices_at(sce, "2019-05-31 13:00", "2019-06-03 13:00") == [0.0869, 0.26668]
    assert prices_at(sce, "2019-09-30 13:00", "2019-10-01 13:00") == [0.26668, 0.0869]
    assert sce.block_on(dt.date(2019, 12, 31)).wraps_year_end


def test_a_step_grid_uses_local_time_across_dst(sce: TouTariff) -> None:
    # 15:00 UTC is 07:00 PST on Friday 2019-03-08 but 08:00 PDT on Monday 2019-03-11.
    index = pd.DatetimeIndex(["2019-03-08 15:00", "2019-03-11 15:00"], tz="UTC").tz_convert(LA)
    assert sce.import_prices(index).tolist() == [0.06087, 0.07492]
    day = pd.date_range("2019-03-05", periods=96, freq="15min", tz=LA)
    prices = sce.import_prices(day)
    assert prices.shape == (96,)
    assert np.unique(prices).tolist() == [0.06087, 0.07492, 0.0869]
    naive = pd.date_range("2019-03-05", periods=96, freq="15min")
    assert sce.import_prices(naive).tolist() == prices.tolist()


def test_fractional_hours() -> None:
    path = TARIFFS / "pge_a10_tou_aug_2019.json"
    if not path.is_file():
        pytest.skip(f"shared tariffs not found at {TARIFFS}")
    pge = read_tou_tariff(path)
    # Monday 2019-08-05: part-peak starts at 8.5 h, peak at 12 h, off-peak again at 21.5 h.
    assert prices_at(pge, "2019-08-05 08:15", "2019-08-05 08:30", "2019-08-05 21:29", "2019-08-05 21:30") == [
        0.14903,
        0.1771,
        0.1771,
        0.14903,
    ]
    # Its two winter blocks both say dow_mask ALL: no single block applies, as acnportal would say.
    with pytest.raises(TariffLookupError, match=r"\['Winter-Weekday', 'Winter-Weekend'\] all apply"):
        prices_at(pge, "2019-12-02 12:00")


def test_demand_charge(sce: TouTariff) -> None:
    day = pd.date_range("2019-03-05", periods=288, freq="5min", tz=LA)
    assert sce.demand_charge_rate(day) == 15.51
    tariff = sce.to_optimizer_tariff(day, demand_interval_minutes=15, peak_already_kw=12.0)
    assert len(tariff.import_price_per_kwh) == 288  # type: ignore[arg-type]
    (charge,) = tariff.demand_charges
    assert (charge.rate_per_kw, charge.peak_already_kw, charge.windows) == (15.51, 12.0, [])
    assert tariff.demand_interval_minutes == 15


def test_a_demand_charge_that_changes_is_refused() -> None:
    data = copy.deepcopy(SCE_TOU_EV_4)
    for block in data["schedule"][:2]:
        block["demand_charge"] = 20.0  # summer
    tariff = parse_tou_tariff(data)
    across = pd.date_range("2019-05-31", "2019-06-01 23:00", freq="h", tz=LA)
    with pytest.raises(DemandChargeVariesError) as caught:
        tariff.demand_charge_rate(across)
    assert [(p[1], p[2]) for p in caught.value.periods] == [
        ("Winter-Weekday", 15.51),
        ("Summer-Weekend", 20.0),
    ]
    assert tariff.demand_charge_rates(across)[[0, -1]].tolist() == [15.51, 20.0]
    with pytest.raises(DemandChargeVariesError):
        tariff.to_optimizer_tariff(across)


def test_no_demand_charge_means_no_optimizer_demand_charge() -> None:
    data = copy.deepcopy(SCE_TOU_EV_4)
    for block in data["schedule"]:
        block["demand_charge"] = 0
    day = pd.date_range("2019-03-05", periods=24, freq="h", tz=LA)
    assert parse_tou_tariff(data).to_optimizer_tariff(day).demand_charges == []


def test_a_day_without_a_block() -> None:
    data = copy.deepcopy(SCE_TOU_EV_4)
    data["schedule"] = data["schedule"][:2]  # summer only
    with pytest.raises(TariffLookupError, match=r"no block applies on 2019-03-05 \(Tuesday\)"):
        prices_at(parse_tou_tariff(data), "2019-03-05 12:00")


def broken(block: int = 2, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(SCE_TOU_EV_4)
    for name, value in changes.items():
        if value is None:
            data["schedule"][block].pop(name)
        else:
            data["schedule"][block][name] = value
    return data


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (broken(times=[8, 12, 18, 23, 23.5]), "times", "begin at hour 0"),
        (broken(times=[0, 12, 8, 18, 23]), "times", "must increase"),
        (broken(tariffs=[0.06087, 0.07492]), "tariffs", "2 prices for 5 times"),
        (broken(tariffs=[0.06, 0.07, "cheap", 0.07, 0.06]), "tariffs", "valid number"),
        (broken(dow_mask="WEEKDAY"), "dow_mask", "'WEEKDAYS', 'WEEKENDS' or 'ALL'"),
        (broken(effective_start="13-01"), "effective_start", "not a day of the year"),
        (broken(effective_end="May 31"), "effective_end", "month-day like '05-31'"),
        (broken(demand_charge=None), "demand_charge", "missing"),
        (broken(demand_charge=-1), "demand_charge", "greater than or equal to 0"),
        (broken(voltage=208), "voltage", "not a field"),
    ],
)
def test_malformed_blocks_name_the_block_and_field(data: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(AdapterFormatError) as caught:
        parse_tou_tariff(data)
    assert caught.value.obj == "schedule block 2 ('Winter-Weekday')"
    assert caught.value.field == field
    assert words in str(caught.value)


def test_malformed_documents(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tariff file not found"):
        read_tou_tariff(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"name": "x",\n "schedule": [}')
    with pytest.raises(AdapterFormatError, match=r"not JSON: .* line 2 column 15"):
        read_tou_tariff(tmp_path / "bad.json")
    with pytest.raises(AdapterFormatError, match="'schedule' must be a non-empty list"):
        parse_tou_tariff({"name": "x", "schedule": []})
    with pytest.raises(AdapterFormatError, match="tariff: field 'name'"):
        parse_tou_tariff({**SCE_TOU_EV_4, "name": ""})


def test_fetch_reads_any_url(tmp_path: Path) -> None:
    path = tmp_path / "sce.json"
    path.write_text(json.dumps(SCE_TOU_EV_4))
    assert fetch_tou_tariff(path.as_uri()) == parse_tou_tariff(SCE_TOU_EV_4)
