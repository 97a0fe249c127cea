"""Day-ahead prices: declared date formats (the ev2gym mixed-format trap), ENTSO-E XML, per-kWh
conversion, resampling, 23- and 25-hour days, optimizer horizons, the CLI. Fixtures are written here."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aggregator.cli.prices import app as prices_app
from market_adapters.errors import AdapterFormatError
from market_adapters.prices import (
    MarketPrices,
    PriceCoverageError,
    PriceCsvRules,
    PriceUnitError,
    horizon_prices,
    normalise_prices,
    parse_entsoe_prices,
    parse_price_csv,
    per_kwh_factor,
    read_price_csv,
    read_prices,
)
from optimizer.scenario import Tariff

BERLIN = "Europe/Berlin"
NS_70 = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:0"
NS_73 = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3"
UTC = dt.UTC

# --- CSV: the ev2gym / Ember mixed-format trap ------------------------------------------------------

# As in ev2gym/data/Netherlands_day-ahead-2015-2024.csv: ISO rows, then rows in dd/mm/yyyy that
# repeat some hours (same prices) and carry on. Line numbers: header is line 1.
EV2GYM_MIX = """\
Country,ISO3 Code,Datetime (UTC),Datetime (Local),Price (EUR/MWhe)
Netherlands,NLD,2023-04-02 21:00:00,2023-04-02 23:00:00,95.5
Netherlands,NLD,2023-04-02 22:00:00,2023-04-03 00:00:00,100.0
Netherlands,NLD,2023-04-02 23:00:00,2023-04-03 01:00:00,110.0
Netherlands,NLD,02/04/2023 22:00,03/04/2023 00:00,100.0
Netherlands,NLD,02/04/2023 23:00,03/04/2023 01:00,110.0
Netherlands,NLD,03/04/2023 00:00,03/04/2023 02:00,120.0
Netherlands,NLD,03/04/2023 01:00,03/04/2023 03:00,130.0
"""
MIXED_RULES = PriceCsvRules(date_formats=("ISO8601", "%d/%m/%Y %H:%M"), duplicates="drop_identical")


def test_naive_pandas_parse_swaps_day_and_month_in_the_ev2gym_mix() -> None:
    frame = pd.read_csv(io.StringIO(EV2GYM_MIX))
    naive = pd.DatetimeIndex(frame["Datetime (UTC)"])  # what ev2gym's loader does
    assert naive[5] == pd.Timestamp("2023-03-04 00:00")  # 03/04/2023 read as March 4, silently
    assert naive[3] == pd.Timestamp("2023-02-04 22:00")
    assert not naive.is_monotonic_increasing


def test_undeclared_second_format_is_refused_with_line_and_value() -> None:
    with pytest.raises(AdapterFormatError) as caught:
        parse_price_csv(EV2GYM_MIX, source="nl.csv")
    message = str(caught.value)
    assert message.startswith("nl.csv: line 5: field 'Datetime (UTC)'")
    assert "'02/04/2023 22:00'" in message and "ISO8601" in message


def test_declared_formats_read_the_mix_right() -> None:
    prices = parse_price_csv(EV2GYM_MIX, MIXED_RULES)
    assert prices.currency == "EUR" and prices.energy_unit == "MWH"
    assert list(prices.frame["start"]) == list(
        pd.date_range("2023-04-02 21:00", periods=5, freq="h", tz="UTC")
    )
    assert prices.frame["price"].tolist() == [95.5, 100.0, 110.0, 120.0, 130.0]
    assert prices.frame["position"].tolist() == ["line 2", "line 3", "line 4", "line 7", "line 8"]


def test_repeated_rows_are_refused_unless_declared_and_identical() -> None:
    rules = PriceCsvRules(date_formats=("ISO8601", "%d/%m/%Y %H:%M"))
    with pytest.raises(
        AdapterFormatError, match=r"line 5: .*repeats the interval starting 2023-04-02T22:00Z"
    ):
        parse_price_csv(EV2GYM_MIX, rules)
    changed = EV2GYM_MIX.replace("02/04/2023 23:00,03/04/2023 01:00,110.0", "02/04/2023 23:00,x,111.0")
    with pytest.raises(AdapterFormatError, match=r"line 6: .*price 111.0 where line 4 has 110.0"):
        parse_price_csv(changed, MIXED_RULES)


def test_a_row_two_declared_formats_read_differently_is_refused() -> None:
    rules = PriceCsvRules(date_formats=("ISO8601", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M"))
    with pytest.raises(
        AdapterFormatError, match=r"line 5: .*2023-02-04 22:00 by '%m/%d/%Y %H:%M'.*2023-04-02"
    ):
        parse_price_csv(EV2GYM_MIX, rules)


def test_single_declared_day_first_format() -> None:
    text = "time,price\n31/12/2023 23:00,50\n01/01/2024 00:00,60\n"
    rules = PriceCsvRules(date_formats=("%d/%m/%Y %H:%M",), timezone="UTC", unit="EUR/MWh")
    prices = parse_price_csv(text, rules)
    assert prices.start == pd.Timestamp("2023-12-31 23:00", tz="UTC")
    assert prices.end == pd.Timestamp("2024-01-01 01:00", tz="UTC")


def test_unit_and_time_zone_must_be_declared_when_the_file_does_not_say() -> None:
    text = "time,price\n2023-01-01 00:00,50\n2023-01-01 01:00,60\n"
    with pytest.raises(AdapterFormatError, match=r"field 'price' carries no price unit"):
        parse_price_csv(text, PriceCsvRules(timezone="UTC"))
    with pytest.raises(AdapterFormatError, match=r"line 2: field 'time' .*declare its time zone"):
        parse_price_csv(text, PriceCsvRules(unit="EUR/MWh"))
    with pytest.raises(AdapterFormatError, match=r"says EUR/MWH, but unit 'EUR/kWh' was declared"):
        parse_price_csv(EV2GYM_MIX, MIXED_RULES.model_copy(update={"unit": "EUR/kWh"}))


def test_iso_times_with_offsets_need_no_zone_and_may_not_mix_with_naive_ones() -> None:
    text = "timestamp,price\n2023-07-01T00:00+02:00,50\n2023-07-01T01:00+02:00,60\n"
    prices = parse_price_csv(text, PriceCsvRules(unit="EUR/MWh"))
    assert prices.start == pd.Timestamp("2023-06-30 22:00", tz="UTC")
    mixed = text + "2023-07-01 02:00,70\n"
    with pytest.raises(AdapterFormatError, match=r"line 4: .*lacks a UTC offset, unlike line 2"):
        parse_price_csv(mixed, PriceCsvRules(unit="EUR/MWh"))


ENTSOE_HEADER = "Datetime (UTC),Day-ahead Price [EUR/MWh]"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b\n1,2\n", r"header: has no price column among \['a', 'b'\]"),
        ("when,price\n2023-01-01,1\n", r"has no time column among \['when', 'price'\]"),
        ("Datetime (UTC),price,Price\n2023-01-01,1,2\n", r"several price columns"),
        ("Datetime (UTC),price\n", r"has no rows of prices"),
        (f"{ENTSOE_HEADER}\n2023-01-01 00:00,1\n2023-01-01 01:00,n/e\n", r"line 3: .*'n/e'"),
        (
            f"{ENTSOE_HEADER}\n2023-01-01 00:00,1\n2023-01-01 02:00,2\n2023-01-01 03:00,3\n",
            r"line 3: interval starting 2023-01-01T02:00Z leaves a gap after line 2",
        ),
    ],
)
def test_bad_csv_is_refused_whole(text: str, match: str) -> None:
    with pytest.raises(AdapterFormatError, match=match):
        parse_price_csv(text)


def test_extra_column_names_map_through_the_rules() -> None:
    text = "Start date;Germany/Luxembourg [€/MWh]\n2023-01-01 00:00;1,5\n2023-01-01 01:00;2,5\n"
    rules = PriceCsvRules(
        columns={"Start date": "time_local", "Germany/Luxembourg [€/MWh]": "price"},
        timezone=BERLIN,
        sep=";",
        decimal=",",
    )
    prices = parse_price_csv(text, rules)
    assert prices.currency == "EUR"
    assert prices.frame["price"].tolist() == [1.5, 2.5]
    assert prices.start == pd.Timestamp("2022-12-31 23:00", tz="UTC")


# --- CSV in local time across daylight-saving changes ---------------------------------------------


def _mtu_csv(day: str, *, marks: bool, end_style: str = "wall") -> str:
    """An ENTSO-E ``MTU (CET/CEST)`` export of one Berlin day, hourly, price = UTC hour index."""
    start = pd.Timestamp(day, tz=BERLIN)
    # from local midnight to local midnight in absolute hours: 23 or 25 on a DST day
    starts = pd.date_range(start, start + pd.DateOffset(days=1), freq="h", inclusive="left")
    rows = ["MTU (CET/CEST),Day-ahead Price [EUR/MWh],Currency,BZN|DE-LU"]
    for k, begin in enumerate(starts):
        end = begin + pd.Timedelta(hours=1)
        texts = []
        for moment in (begin, end):
            text = f"{moment:%d.%m.%Y %H:%M}"
            ambiguous = moment.hour == 2 and moment.month == 10 and moment.day == 29
            if marks and ambiguous:
                text += " (CEST)" if moment.utcoffset() == dt.timedelta(hours=2) else " (CET)"
            texts.append(text)
        rows.append(f"{texts[0]} - {texts[1]},{10.0 * k:.2f},EUR,")
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize(("day", "hours"), [("2023-03-26", 23), ("2023-10-29", 25)])
def test_mtu_csv_with_cet_cest_marks_gives_92_or_100_quarter_hours(day: str, hours: int) -> None:
    prices = parse_price_csv(_mtu_csv(day, marks=True))
    assert len(prices.frame) == hours
    series = normalise_prices(prices, currency="EUR", step_minutes=15)
    assert len(series) == 4 * hours
    assert series.index[0] == pd.Timestamp(day, tz=BERLIN).tz_convert("UTC")
    assert str(series.index.tz) == "UTC"
    # quarter-hour k lies in UTC hour k // 4, whose price is 10 EUR/MWh per hour index
    assert np.allclose(series.to_numpy(), [0.01 * (k // 4) for k in range(4 * hours)])


def test_autumn_repeated_hour_is_read_from_its_marks() -> None:
    prices = parse_price_csv(_mtu_csv("2023-10-29", marks=True))
    repeated = prices.frame.iloc[2:4]
    assert list(repeated["start"]) == [
        pd.Timestamp("2023-10-29 00:00", tz="UTC"),
        pd.Timestamp("2023-10-29 01:00", tz="UTC"),
    ]
    assert repeated["price"].tolist() == [20.0, 30.0]


def test_unmarked_repeated_hour_is_refused_or_inferred_by_declared_rule() -> None:
    text = _mtu_csv("2023-10-29", marks=False)
    with pytest.raises(
        AdapterFormatError, match=r"line 4: .*'29.10.2023 02:00'.*occurs twice in Europe/Brussels"
    ):
        parse_price_csv(text)
    series = normalise_prices(parse_price_csv(text, PriceCsvRules(ambiguous="infer")), step_minutes=15)
    assert len(series) == 100
    assert np.allclose(series.to_numpy(), [0.01 * (k // 4) for k in range(100)])


def test_spring_end_at_the_missing_hour_is_the_moment_of_the_jump() -> None:
    # some exports write the 01:00 interval as "01:00 - 02:00", an end that does not exist
    text = _mtu_csv("2023-03-26", marks=False).replace(
        "26.03.2023 01:00 - 26.03.2023 03:00", "26.03.2023 01:00 - 26.03.2023 02:00"
    )
    assert "01:00 - 26.03.2023 02:00" in text
    assert len(normalise_prices(parse_price_csv(text), step_minutes=15)) == 92


def test_nonexistent_local_start_is_refused_with_its_line() -> None:
    text = _mtu_csv("2023-03-26", marks=False).replace(
        "26.03.2023 03:00 - 26.03.2023 04:00", "26.03.2023 02:00 - 26.03.2023 04:00"
    )
    with pytest.raises(
        AdapterFormatError, match=r"line 4: .*'26.03.2023 02:00', a local time that does not exist"
    ):
        parse_price_csv(text)


def test_contradicting_mark_is_refused() -> None:
    text = _mtu_csv("2023-10-29", marks=True).replace("29.10.2023 05:00 - ", "29.10.2023 05:00 (CEST) - ")
    with pytest.raises(
        AdapterFormatError, match=r"line 8: .*marked \(CEST\), which is not the offset in force"
    ):
        parse_price_csv(text)


@pytest.mark.parametrize(("day", "quarters"), [("2023-03-26", 92), ("2023-10-29", 100)])
def test_local_datetime_column_across_dst(day: str, quarters: int) -> None:
    start = pd.Timestamp(day, tz=BERLIN)
    utc = pd.date_range(start, start + pd.DateOffset(days=1), freq="15min", inclusive="left").tz_convert(
        "UTC"
    )
    local = utc.tz_convert(BERLIN).strftime("%Y-%m-%d %H:%M")
    text = "Datetime (Local),price\n" + "".join(f"{t},{k}\n" for k, t in enumerate(local))
    rules = PriceCsvRules(timezone=BERLIN, ambiguous="infer", unit="EUR/kWh")
    series = normalise_prices(parse_price_csv(text, rules), step_minutes=15)
    assert len(series) == quarters
    assert series.tolist() == list(range(quarters))
    assert (series.index == utc).all()


# --- ENTSO-E XML --------------------------------------------------------------------------------------


def entsoe_xml(
    periods: list[tuple[str, str, str, dict[int, float]]],
    *,
    ns: str = NS_73,
    curve: str | None = "A03",
    currency: str = "EUR",
    unit: str = "MWH",
    series: int = 1,
) -> str:
    """A Publication_MarketDocument with ``series`` TimeSeries splitting ``periods`` between them."""

    def period(start: str, end: str, resolution: str, points: dict[int, float]) -> str:
        body = "".join(
            f"<Point><position>{p}</position><price.amount>{v}</price.amount></Point>"
            for p, v in points.items()
        )
        return (
            f"<Period><timeInterval><start>{start}</start><end>{end}</end></timeInterval>"
            f"<resolution>{resolution}</resolution>{body}</Period>"
        )

    chunks = [periods[k::series] for k in range(series)]
    blocks = "".join(
        "<TimeSeries><mRID>1</mRID><businessType>A62</businessType>"
        f"<currency_Unit.name>{currency}</currency_Unit.name>"
        f"<price_Measure_Unit.name>{unit}</price_Measure_Unit.name>"
        + (f"<curveType>{curve}</curveType>" if curve else "")
        + "".join(period(*p) for p in chunk)
        + "</TimeSeries>"
        for chunk in chunks
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Publication_MarketDocument xmlns="{ns}">'
        f"<mRID>abc</mRID><type>A44</type>{blocks}</Publication_MarketDocument>"
    )


def hourly(n: int) -> dict[int, float]:
    return {p: 10.0 * (p - 1) for p in range(1, n + 1)}


@pytest.mark.parametrize(
    ("start", "end", "hours"),
    [
        ("2023-03-25T23:00Z", "2023-03-26T22:00Z", 23),
        ("2023-10-28T22:00Z", "2023-10-29T23:00Z", 25),
    ],
)
@pytest.mark.parametrize("ns", [NS_70, NS_73])
def test_entsoe_dst_days_give_92_or_100_quarter_hours(start: str, end: str, hours: int, ns: str) -> None:
    prices = parse_entsoe_prices(entsoe_xml([(start, end, "PT60M", hourly(hours))], ns=ns, curve="A01"))
    series = normalise_prices(prices, currency="EUR", step_minutes=15)
    assert len(series) == 4 * hours
    assert series.index[0] == pd.Timestamp(start)
    assert np.allclose(series.to_numpy(), [0.01 * (k // 4) for k in range(4 * hours)])


def test_a03_missing_positions_repeat_the_previous_price_to_the_period_end() -> None:
    doc = entsoe_xml([("2024-01-01T23:00Z", "2024-01-02T01:00Z", "PT15M", {1: 50.0, 3: 70.0, 6: 20.0})])
    prices = parse_entsoe_prices(doc)
    assert prices.frame["price"].tolist() == [50.0, 50.0, 70.0, 70.0, 70.0, 20.0, 20.0, 20.0]
    assert prices.frame["position"].iloc[1].endswith("Point[1] (repeated at position 2)")


def test_a01_missing_position_is_refused_with_the_element_path() -> None:
    doc = entsoe_xml([("2024-01-01T23:00Z", "2024-01-02T00:00Z", "PT15M", {1: 5, 2: 6, 4: 8})], curve=None)
    with pytest.raises(AdapterFormatError) as caught:
        parse_entsoe_prices(doc, source="da.xml")
    assert str(caught.value) == (
        "da.xml: Publication_MarketDocument/TimeSeries[1]/Period[1]: field 'Point' with position 3 is "
        "missing (curveType A01 lists every one)"
    )


def test_pt30m_resampled_coarser_takes_the_mean_and_finer_forward_fills() -> None:
    doc = entsoe_xml(
        [("2024-01-01T23:00Z", "2024-01-02T01:00Z", "PT30M", {1: 10.0, 2: 30.0, 3: 50.0, 4: 70.0})]
    )
    prices = parse_entsoe_prices(doc)
    assert normalise_prices(prices, step_minutes=60).tolist() == pytest.approx([0.02, 0.06])
    assert normalise_prices(prices, step_minutes=15).tolist() == pytest.approx(
        [0.01, 0.01, 0.03, 0.03, 0.05, 0.05, 0.07, 0.07]
    )


def test_several_time_series_join_into_one_timeline() -> None:
    days = [
        ("2024-01-01T23:00Z", "2024-01-02T23:00Z", "PT60M", hourly(24)),
        ("2024-01-02T23:00Z", "2024-01-03T23:00Z", "PT60M", hourly(24)),
    ]
    prices = parse_entsoe_prices(entsoe_xml(days, series=2))
    assert len(prices.frame) == 48
    overlapping = [days[0], ("2024-01-02T22:00Z", "2024-01-02T23:00Z", "PT60M", {1: 1.0})]
    overlap = r"TimeSeries\[2\]/Period\[1\]/Point\[1\]: interval starting 2024-01-02T22:00Z overlaps "
    with pytest.raises(AdapterFormatError, match=overlap):
        parse_entsoe_prices(entsoe_xml(overlapping, series=2))


GOOD_PERIOD = [("2024-01-01T23:00Z", "2024-01-02T00:00Z", "PT60M", {1: 1.0})]


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("<Publication_MarketDocument><TimeSeries>", r"document: is not well-formed XML: .* at line 1"),
        (
            entsoe_xml(GOOD_PERIOD, ns="urn:example:other"),
            r"MarketDocument: field 'xmlns' is 'urn:example:other'",
        ),
        (
            entsoe_xml(GOOD_PERIOD).replace("<price.amount>1.0</price.amount>", ""),
            r"^<data>: Publication_MarketDocument/TimeSeries\[1\]/Period\[1\]/Point\[1\]: "
            r"field 'price.amount' is missing$",
        ),
        (
            entsoe_xml(GOOD_PERIOD).replace("1.0</price", "x</price"),
            r"Point\[1\]: field 'price.amount' is 'x'",
        ),
        (
            entsoe_xml(GOOD_PERIOD).replace("PT60M", "PT7M"),
            r"Period\[1\]: field 'resolution' PT7M does not divide 2024-01-01T23:00Z\.\.2024-01-02T00:00Z",
        ),
        (entsoe_xml(GOOD_PERIOD).replace("PT60M", "1 hour"), r"field 'resolution' is '1 hour'"),
        (
            entsoe_xml(GOOD_PERIOD).replace("<start>2024-01-01T23:00Z</start>", ""),
            r"Period\[1\]: field 'timeInterval/start' is missing",
        ),
        (
            entsoe_xml(GOOD_PERIOD).replace("<position>1</position>", "<position>2</position>"),
            r"Point\[1\]: field 'position' is '2', expected 1..1",
        ),
        (
            entsoe_xml(GOOD_PERIOD).replace("<currency_Unit.name>EUR</currency_Unit.name>", ""),
            r"TimeSeries\[1\]: field 'currency_Unit.name' is missing",
        ),
        (entsoe_xml(GOOD_PERIOD, curve="A05"), r"field 'curveType' is 'A05'"),
        (entsoe_xml([]), r"TimeSeries\[1\]: field 'Period' is missing"),
        (
            f'<Publication_MarketDocument xmlns="{NS_73}"><mRID>x</mRID></Publication_MarketDocument>',
            r"field 'TimeSeries' is missing",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY a "aaaa">]><Publication_MarketDocument/>',
            r"declares a DTD or entities",
        ),
        (
            '<Acknowledgement_MarketDocument xmlns="urn:example:ack"><Reason><code>999</code>'
            "<text>No matching data found</text></Reason></Acknowledgement_MarketDocument>",
            r"is an acknowledgement, not prices: No matching data found",
        ),
    ],
)
def test_bad_xml_is_refused_naming_the_element(doc: str, match: str) -> None:
    with pytest.raises(AdapterFormatError, match=match):
        parse_entsoe_prices(doc)


# --- conversion, resampling, horizons -----------------------------------------------------------------


def test_per_kwh_factor_units_and_currencies() -> None:
    assert per_kwh_factor("EUR", "MWH", to_currency="EUR") == pytest.approx(0.001)
    assert per_kwh_factor("EUR", "kWh", to_currency="EUR") == 1.0
    assert per_kwh_factor("DKK", "MWH", to_currency="EUR", rates={"DKK": 0.134}) == pytest.approx(0.000134)
    with pytest.raises(PriceUnitError, match="no exchange rate from DKK to EUR"):
        per_kwh_factor("DKK", "MWH", to_currency="EUR")
    with pytest.raises(PriceUnitError, match="unknown energy unit 'MW'"):
        per_kwh_factor("EUR", "MW", to_currency="EUR")
    with pytest.raises(PriceUnitError, match="'euro' is not an ISO 4217 code"):
        per_kwh_factor("euro", "MWH", to_currency="EUR")
    with pytest.raises(PriceUnitError, match=r"is -1\.0, not a positive number"):
        per_kwh_factor("GBP", "MWH", to_currency="EUR", rates={"GBP": -1.0})


def test_normalise_converts_currency_and_refuses_a_partial_last_step() -> None:
    doc = entsoe_xml(
        [("2024-01-01T23:00Z", "2024-01-02T01:00Z", "PT60M", {1: 1000.0, 2: 2000.0})], currency="DKK"
    )
    prices = parse_entsoe_prices(doc)
    series = normalise_prices(prices, currency="EUR", step_minutes=60, rates={"DKK": 0.134})
    assert series.tolist() == pytest.approx([0.134, 0.268])
    assert series.attrs["currency"] == "EUR" and series.name == "price_per_kwh"
    with pytest.raises(PriceCoverageError, match="not a whole number of 45-minute steps"):
        normalise_prices(prices, currency="DKK", step_minutes=45)


def test_horizon_prices_feed_the_optimizer_tariff() -> None:
    prices = parse_entsoe_prices(
        entsoe_xml([("2024-01-01T23:00Z", "2024-01-02T23:00Z", "PT60M", hourly(24))])
    )
    series = normalise_prices(prices, step_minutes=60)
    start = dt.datetime(2024, 1, 2, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))  # 00:30 UTC
    steps = horizon_prices(series, start=start, n_steps=4, step_minutes=15)
    assert steps == pytest.approx([0.01, 0.01, 0.02, 0.02])
    tariff = Tariff(import_price_per_kwh=horizon_prices(series, start=start, n_steps=2, step_minutes=60))
    assert tariff.import_price_per_kwh == pytest.approx([0.015, 0.025])


def test_horizon_beyond_the_prices_is_refused_naming_the_step() -> None:
    prices = parse_entsoe_prices(
        entsoe_xml([("2024-01-01T23:00Z", "2024-01-02T23:00Z", "PT60M", hourly(24))])
    )
    series = normalise_prices(prices, step_minutes=15)
    start = dt.datetime(2024, 1, 2, 22, 0, tzinfo=UTC)
    with pytest.raises(PriceCoverageError, match=r"needs step 4 \(2024-01-02T23:00Z\)"):
        horizon_prices(series, start=start, n_steps=8, step_minutes=15)
    with pytest.raises(PriceCoverageError, match=r"needs step 0 \(2024-01-01T22:00Z\)"):
        horizon_prices(series, start=dt.datetime(2024, 1, 1, 22, tzinfo=UTC), n_steps=1, step_minutes=60)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.sampled_from([15, 30, 60]), min_size=1, max_size=12),
    values=st.lists(st.floats(-500, 3000, allow_nan=False), min_size=12, max_size=12),
    step=st.sampled_from([5, 15]),
)
def test_resampling_keeps_the_time_weighted_mean(lengths: list[int], values: list[float], step: int) -> None:
    start = pd.Timestamp("2024-01-01", tz="UTC")
    edges = start + pd.to_timedelta(np.cumsum([0, *lengths]), unit="min")
    prices = MarketPrices(
        pd.DataFrame(
            {
                "start": edges[:-1],
                "end": edges[1:],
                "price": values[: len(lengths)],
                "position": [f"row {k}" for k in range(len(lengths))],
            }
        ),
        currency="EUR",
        energy_unit="MWH",
    )
    series = normalise_prices(prices, step_minutes=step)
    weighted = np.dot(lengths, values[: len(lengths)]) / sum(lengths) / 1000
    assert len(series) == sum(lengths) // step
    assert series.mean() == pytest.approx(weighted, rel=1e-9, abs=1e-12)


# --- files and the CLI --------------------------------------------------------------------------------


def test_read_prices_picks_the_format_from_the_suffix(tmp_path: Path) -> None:
    xml = tmp_path / "da.xml"
    xml.write_text(entsoe_xml(GOOD_PERIOD))
    csv = tmp_path / "nl.csv"
    csv.write_text("\ufeff" + EV2GYM_MIX)  # byte-order mark as Excel writes it
    assert len(read_prices(xml).frame) == 1
    assert len(read_prices(csv, rules=MIXED_RULES).frame) == 5
    with pytest.raises(FileNotFoundError):
        read_price_csv(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="do not apply to ENTSO-E XML"):
        read_prices(xml, rules=MIXED_RULES)


def _flat(output: str) -> str:
    return " ".join(output.split())


def _cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(prices_app, name="prices")
    return root


def test_cli_imports_a_dst_day_and_writes_the_series(tmp_path: Path) -> None:
    source = tmp_path / "de.csv"
    source.write_text(_mtu_csv("2023-10-29", marks=True))
    out = tmp_path / "out" / "prices.csv"
    result = CliRunner().invoke(_cli(), ["prices", "import", str(source), "--step", "15", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "100 × 15 min" in result.output
    assert "2023-10-28 22:00 .. 2023-10-29 23:00" in result.output
    assert "0.24000" in result.output  # max: 240 EUR/MWh
    written = pd.read_csv(out)
    assert list(written.columns) == ["start_utc", "price_eur_per_kwh"]
    assert len(written) == 100 and written["start_utc"].iloc[0] == "2023-10-28T22:00:00+00:00"


def test_cli_declared_formats_and_rates(tmp_path: Path) -> None:
    source = tmp_path / "nl.csv"
    source.write_text(EV2GYM_MIX)
    args = ["prices", "import", str(source), "--currency", "DKK", "--rate", "EUR=7.45", "--step", "60"]
    refused = CliRunner().invoke(_cli(), args)
    assert refused.exit_code == 2
    assert "line 5: field 'Datetime (UTC)' is '02/04/2023 22:00', which matches none" in _flat(refused.output)
    declared = [
        *args,
        "--date-format",
        "ISO8601",
        "--date-format",
        "%d/%m/%Y %H:%M",
        "--duplicates",
        "drop-identical",
    ]
    result = CliRunner().invoke(_cli(), declared)
    assert result.exit_code == 0, result.output
    assert "5 × 60 min" in result.output and "0.96850" in result.output  # 130 EUR/MWh x 7.45


def test_cli_reports_bad_xml(tmp_path: Path) -> None:
    source = tmp_path / "bad.xml"
    source.write_text(entsoe_xml(GOOD_PERIOD).replace("1.0</price", "x</price"))
    result = CliRunner().invoke(_cli(), ["prices", "import", str(source)])
    assert result.exit_code == 2
    assert "price.amount" in result.output
