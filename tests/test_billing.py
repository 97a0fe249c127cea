"""Bills and optimizer tariffs from acnportal and URDB tariffs: hand-checked to the cent."""

from __future__ import annotations

import copy
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tariff_data import SCE_TOU_EV_4

from market_adapters.billing import (
    DemandWindowsVaryError,
    bill,
    cents,
    demand_peaks_so_far,
    optimizer_tariff,
)
from market_adapters.errors import AdapterFormatError
from market_adapters.meter import MeterDataError, MeterUnit, read_meter_csv, stated_unit
from market_adapters.tariffs import parse_tou_tariff, read_tou_tariff
from market_adapters.urdb import parse_urdb_tariff, read_urdb_tariff
from optimizer.scenario import TimeWindow

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tariffs"
URDB = Path(__file__).resolve().parent / "data" / "urdb"
LA = "America/Los_Angeles"


def acn_sce():
    return parse_tou_tariff(SCE_TOU_EV_4)


def test_written_out_tariff_matches_the_shared_file() -> None:
    path = SHARED / "sce_tou_ev_4_march_2019.json"
    if not path.is_file():
        pytest.skip(f"shared tariff not found at {path} (a sibling of the repository)")
    assert read_tou_tariff(path) == acn_sce()


def urdb_item(name: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads((URDB / name).read_text())["items"][0])


def day(date: str, kw: float = 50.0, freq: str = "15min") -> pd.Series:
    index = pd.date_range(date, periods=2, freq="D", tz=LA)
    index = pd.date_range(index[0], index[1], freq=freq, inclusive="left")
    return pd.Series(kw, index=index)


def peak_day() -> pd.Series:
    meter = day("2019-08-14")
    meter[meter.index.hour == 12] += 150.0
    return meter


def shifted_day() -> pd.Series:
    meter = day("2019-08-14")
    meter[meter.index.hour < 4] += 37.5
    return meter


# ── the hand-check of issue 5 ─────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("tariff", ["acnportal", "urdb"])
def test_hand_check_sce_tou_ev_4(tariff: str) -> None:
    sce = acn_sce() if tariff == "acnportal" else read_urdb_tariff(URDB / "sce_tou_ev_4.json")
    peak = bill(sce, peak_day())
    # 450 kWh × 0.05623 + 450 × 0.0925 + (300 + 150) × 0.26668
    assert peak.subtotal("energy") == Decimal("186.9345")
    assert cents(peak.subtotal("energy")) == 18693
    [demand] = [line for line in peak.lines if line.kind == "demand"]
    assert (demand.quantity, demand.rate, demand.amount) == (200, Decimal("15.51"), Decimal("3102.00"))
    assert cents(demand.amount) == 310200
    assert peak.total_cents == 18693 + 310200

    moved = bill(sce, shifted_day())
    assert moved.subtotal("energy") == Decimal("155.367")  # 150 kWh moved to 0.05623
    assert cents(moved.subtotal("energy")) == 15537
    assert moved.subtotal("demand") == Decimal("1357.125")  # 87.5 kW × 15.51
    assert cents(moved.subtotal("demand")) == 135713
    assert moved.total == Decimal("1512.492")


def test_energy_lines_by_period() -> None:
    lines = {line.label: line for line in bill(acn_sce(), peak_day()).lines if line.kind == "energy"}
    assert lines["Summer-Weekday 12:00-18:00"].quantity == 450
    assert lines["Summer-Weekday 00:00-08:00"].quantity == 400
    assert sum(line.quantity for line in lines.values()) == 50 * 24 + 150


# ── tiers, TOU demand, fixed and minimum charges ────────────────────────────────────────────────────


def test_tiers_and_adjustments() -> None:
    e1 = read_urdb_tariff(URDB / "pge_e1_tiered.json")
    two = bill(e1, day("2019-08-14", kw=20.0))  # 480 kWh: 350 in tier 1, 130 in tier 2
    assert [(line.label, line.quantity, line.rate) for line in two.lines] == [
        ("energy period 0 tier 1", 350, Decimal("0.22376")),
        ("energy period 0 tier 2", 130, Decimal("0.28159")),
    ]
    assert two.total == Decimal("114.9227")
    three = bill(e1, day("2019-08-14", kw=70.0))  # 1680 kWh
    assert [line.quantity for line in three.lines] == [350, 1050, 280]
    assert three.total == Decimal("78.316") + Decimal("295.6695") + Decimal("137.2")


def test_minimum_charge_applies_only_if_higher() -> None:
    e1 = read_urdb_tariff(URDB / "pge_e1_tiered.json")
    small = bill(e1, day("2019-08-14", kw=0.01))  # 0.24 kWh = $0.0537024 < $0.32854/day
    assert small.lines[-1].kind == "minimum"
    assert small.total == Decimal("0.32854")
    meter = pd.concat([day("2019-08-14", kw=0.01), day("2019-08-15", kw=0.01)])
    assert bill(e1, meter).total == Decimal("0.65708")
    assert all(line.kind != "minimum" for line in bill(e1, day("2019-08-14", kw=1.0)).lines)


def test_tou_demand_windows_and_fixed_charge() -> None:
    e19 = read_urdb_tariff(URDB / "pge_e19_secondary.json")
    meter = day("2019-08-14", kw=100.0)  # a Wednesday in summer
    meter[(meter.index.hour == 13) & (meter.index.minute == 0)] += 200.0  # peak period
    meter[(meter.index.hour == 9) & (meter.index.minute < 30)] += 100.0  # part-peak
    result = bill(e19, meter)
    demand = {line.label: (line.quantity, line.amount) for line in result.lines if line.kind == "demand"}
    assert demand == {
        "flat demand": (300, Decimal("5796.00")),
        "TOU demand period 1": (200, Decimal("1080.0")),
        "TOU demand period 2": (300, Decimal("5895.00")),
    }
    assert result.subtotal("energy") == Decimal("88") + Decimal("82.5") + Decimal("97.5")
    assert result.subtotal("fixed") == Decimal("4.59959")
    assert result.total == Decimal("13043.59959")


def test_winter_tou_demand_is_free() -> None:
    e19 = read_urdb_tariff(URDB / "pge_e19_secondary.json")
    result = bill(e19, day("2019-12-11", kw=100.0))
    assert [line.label for line in result.lines if line.kind == "demand"] == ["flat demand"]


# ── ratchets ─────────────────────────────────────────────────────────────────────────────────────────


def test_lookback_ratchet_floors_the_flat_demand() -> None:
    item = urdb_item("sce_tou_ev_4.json") | {"lookbackpercent": 0.8, "lookbackrange": 11}
    sce = parse_urdb_tariff(item)
    [line] = [
        x for x in bill(sce, peak_day(), previous_peaks_kw={"2019-07": 300.0}).lines if x.kind == "demand"
    ]
    assert (line.quantity, line.amount) == (240, Decimal("3722.40"))
    assert "80% of 300 kW in 2019-07" in line.note
    # A lower floor, or a month outside the range, leaves the metered peak.
    assert bill(sce, peak_day(), previous_peaks_kw={"2019-07": 200.0}).subtotal("demand") == Decimal("3102")
    assert bill(sce, peak_day(), previous_peaks_kw={"2018-08": 900.0}).subtotal("demand") == Decimal("3102")
    assert bill(sce, peak_day()).subtotal("demand") == Decimal("3102")


def test_lookback_months_and_monthly_percentages() -> None:
    flags = [m == 6 for m in range(12)]  # only July's peak counts
    sce = parse_urdb_tariff(
        urdb_item("sce_tou_ev_4.json") | {"lookbackpercent": 0.8, "lookbackmonths": flags}
    )
    peaks = {"2019-07": 300.0, "2019-06": 400.0}
    assert bill(sce, peak_day(), previous_peaks_kw=peaks).subtotal("demand") == Decimal("240") * Decimal(
        "15.51"
    )
    monthly = parse_urdb_tariff(urdb_item("sce_tou_ev_4.json") | {"demandratchetpercentage": [0.5] * 12})
    assert bill(monthly, peak_day(), previous_peaks_kw={"2018-10": 500.0}).subtotal("demand") == Decimal(
        "250"
    ) * Decimal("15.51")
    # 12 months back is outside the trailing 11 months.
    assert bill(monthly, peak_day(), previous_peaks_kw={"2018-08": 500.0}).subtotal("demand") == Decimal(
        "3102"
    )


# ── 15-minute demand aligned to the clock ───────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("first_minute", "minutes", "billed_kw"),
    [
        (7, 1, 90.0),  # a 1-minute spike counts a fifteenth: 50 + 600 / 15
        (0, 15, 650.0),  # sustained over one whole interval
        (7, 15, 370.0),  # straddling :15, split 8 + 7 minutes: 50 + 600 × 8 / 15
    ],
)
def test_demand_is_a_clock_aligned_15_minute_average(
    first_minute: int, minutes: int, billed_kw: float
) -> None:
    meter = day("2019-08-14", freq="1min")
    start = pd.Timestamp("2019-08-14 12:00", tz=LA) + pd.Timedelta(minutes=first_minute)
    meter[(meter.index >= start) & (meter.index < start + pd.Timedelta(minutes=minutes))] += 600.0
    [line] = [x for x in bill(acn_sce(), meter).lines if x.kind == "demand"]
    assert float(line.quantity) == pytest.approx(billed_kw, abs=1e-6)


def test_hourly_readings_bill_like_15_minute_ones() -> None:
    hourly = bill(acn_sce(), peak_day().resample("1h").mean())
    assert hourly.lines == bill(acn_sce(), peak_day()).lines


# ── daylight-saving days ─────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("date", "hours"), [("2019-11-03", 25), ("2019-03-10", 23)])
def test_dst_days_bill_every_real_hour(date: str, hours: int) -> None:
    meter = day(date)  # both Sundays: winter weekend, 0.06087 all day
    assert len(meter) == hours * 4
    result = bill(acn_sce(), meter)
    assert result.subtotal("energy") == Decimal(50 * hours) * Decimal("0.06087")
    urdb = bill(read_urdb_tariff(URDB / "sce_tou_ev_4.json"), meter)
    assert urdb.subtotal("energy") == result.subtotal("energy")


def test_the_repeated_hour_has_its_own_intervals() -> None:
    meter = day("2019-11-03")
    first_one_am = np.flatnonzero(meter.index.hour == 1)[:1]  # 01:00-01:15 PDT, not PST
    meter.iloc[first_one_am] += 100.0
    [line] = [x for x in bill(acn_sce(), meter).lines if x.kind == "demand"]
    assert line.quantity == 150
    assert "2019-11-03 01:00" in line.note


def test_a_utc_series_is_billed_in_the_tariff_zone() -> None:
    utc = peak_day().tz_convert("UTC")
    assert bill(acn_sce(), utc, timezone=LA).lines == bill(acn_sce(), peak_day()).lines


# ── optimizer bridge ────────────────────────────────────────────────────────────────────────────────


def test_optimizer_tariff_windows_rates_and_peak_so_far() -> None:
    e19 = read_urdb_tariff(URDB / "pge_e19_secondary.json")
    metered = day("2019-08-14", kw=100.0)
    metered[metered.index.hour == 13] += 80.0
    peaks = demand_peaks_so_far(e19, metered, pd.Timestamp("2019-08-01", tz=LA))
    assert peaks == {"flat demand": 180.0, "TOU demand period 0": 100.0,
                     "TOU demand period 1": 100.0, "TOU demand period 2": 180.0}  # fmt: skip
    horizon = pd.date_range("2019-08-15", periods=96, freq="15min", tz=LA)
    tariff = optimizer_tariff(e19, horizon, peaks_already_kw=peaks)
    charges = {c.name: c for c in tariff.demand_charges}
    assert set(charges) == {"flat demand", "TOU demand period 1", "TOU demand period 2"}  # period 0 is free
    assert charges["flat demand"].windows == [] and charges["flat demand"].peak_already_kw == 180.0
    assert charges["TOU demand period 2"].windows == [
        TimeWindow(start=dt.time(12), end=dt.time(18), days="weekdays")
    ]
    assert charges["TOU demand period 1"].windows == [
        TimeWindow(start=dt.time(8), end=dt.time(12), days="weekdays"),
        TimeWindow(start=dt.time(18), end=dt.time(21), days="weekdays"),
    ]
    assert charges["TOU demand period 2"].rate_per_kw == 19.65
    assert tariff.import_price_per_kwh[12 * 4] == 0.15 and tariff.import_price_per_kwh[0] == 0.08


def test_optimizer_tariff_from_acnportal_matches_the_old_bridge() -> None:
    sce = acn_sce()
    horizon = pd.date_range("2019-08-14", periods=96, freq="15min", tz=LA)
    peaks = demand_peaks_so_far(sce, shifted_day(), horizon[0])
    assert peaks == {"demand": 87.5}
    ours, old = (
        optimizer_tariff(sce, horizon, peaks_already_kw=peaks),
        sce.to_optimizer_tariff(horizon, 15, 87.5),
    )
    assert ours.import_price_per_kwh == old.import_price_per_kwh
    [charge], [old_charge] = ours.demand_charges, old.demand_charges
    assert (charge.rate_per_kw, charge.peak_already_kw, charge.windows) == (15.51, 87.5, old_charge.windows)


def test_windows_that_change_within_the_horizon_are_refused() -> None:
    e19 = read_urdb_tariff(URDB / "pge_e19_secondary.json")
    horizon = pd.date_range(
        "2019-10-31", periods=2 * 96, freq="15min", tz=LA
    )  # Thursday, then Friday in winter
    with pytest.raises(DemandWindowsVaryError, match="'TOU demand period 1': 08:00 on weekdays"):
        optimizer_tariff(e19, horizon)


# ── bad metered data ────────────────────────────────────────────────────────────────────────────────


def test_bad_meter_series_are_named_by_position() -> None:
    sce, meter = acn_sce(), peak_day()
    with pytest.raises(MeterDataError, match=r"reading 40 \(2019-08-14T10:15:00-07:00\) comes 30 min after"):
        bill(sce, meter.drop(meter.index[40]))
    with pytest.raises(MeterDataError, match=r"reading 2 .* repeats or goes back"):
        bill(sce, pd.concat([meter.iloc[:2], meter.iloc[1:]]))
    broken = meter.copy()
    broken.iloc[5] = np.nan
    with pytest.raises(MeterDataError, match=r"reading 5 \(2019-08-14T01:15:00-07:00\) is nan"):
        bill(sce, broken)
    with pytest.raises(MeterDataError, match="UTC offset"):
        bill(sce, meter.tz_localize(None))
    with pytest.raises(MeterDataError, match="at least two readings"):
        bill(sce, meter.iloc[:1])
    with pytest.raises(MeterDataError, match="not on a whole minute"):
        bill(sce, meter.shift(30, freq="s"))
    with pytest.raises(MeterDataError, match="unknown time zone"):
        bill(sce, meter, timezone="Mars/Olympus")


def test_meter_csv(tmp_path: Path) -> None:
    path = tmp_path / "meter.csv"
    rows = [f"{t.isoformat()},{v}" for t, v in peak_day().items()]
    path.write_text("timestamp,kW\n" + "\n".join(rows) + "\n")
    meter = read_meter_csv(path)
    assert bill(acn_sce(), meter).total == Decimal("186.9345") + Decimal("3102")
    across = tmp_path / "dst.csv"
    stamps = pd.date_range("2019-11-03 00:00", periods=12, freq="15min", tz=LA)  # 01:00 PST is the 9th
    across.write_text("timestamp,kW\n" + "\n".join(f"{t.isoformat()},1" for t in stamps))
    with pytest.raises(AdapterFormatError, match="line 10: field 'timestamp' changes the UTC offset"):
        read_meter_csv(across)
    assert str(read_meter_csv(across, timezone=LA).index.tz) == LA


def test_meter_csv_in_kwh_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "energy.csv"
    rows = [f"{t.isoformat()},{v * 0.25}" for t, v in peak_day().items()]  # 15 min: kWh = kW / 4
    path.write_text("timestamp,kWh\n" + "\n".join(rows) + "\n")
    meter = read_meter_csv(path)
    assert meter.to_numpy() == pytest.approx(peak_day().to_numpy())
    assert bill(acn_sce(), meter).total == Decimal("186.9345") + Decimal("3102")
    hourly = tmp_path / "hourly.csv"  # 100 kWh in an hour is 100 kW, in 15 minutes 400 kW
    hourly.write_text("Time,Energy\n2019-08-14T00:00:00-07:00,100\n2019-08-14T01:00:00-07:00,50\n")
    read = read_meter_csv(hourly, time_column="time", power_column="ENERGY", unit=MeterUnit.KWH)
    assert read.tolist() == [100.0, 50.0]
    assert read_meter_csv(hourly, time_column="Time", power_column="Energy", unit="kW").tolist() == [100, 50]


@pytest.mark.parametrize(
    ("column", "unit"),
    [
        ("kW", "kW"),
        ("import_kw", "kW"),
        ("kWh", "kWh"),
        ("energy (kWh)", "kWh"),
        ("power_w", "W"),
        ("power", None),
        ("kw_or_kwh", None),
        ("kwhs", None),
    ],
)
def test_a_column_name_states_a_unit_only_unambiguously(column: str, unit: str | None) -> None:
    assert stated_unit(column) == unit


def site_csv(tmp_path: Path) -> tuple[Path, pd.Series]:
    """``site.csv`` of a real tiny schedule (3 vehicles, 2019-03-05), and its import [kW]."""
    from optimizer import SolverOptions, build_problem, optimize
    from workbench.reports import write_result
    from workbench.synthetic import generate_depot_day

    problem = build_problem(generate_depot_day(3, 1))
    result = optimize(problem, SolverOptions(time_limit=30))
    assert result.status.is_ok, result.message
    write_result(result, tmp_path, plot=False)
    return tmp_path / "site.csv", pd.Series(result.evaluation.import_kw, index=problem.index)


def test_our_own_site_csv_is_billed_from_its_import(tmp_path: Path) -> None:
    path, import_kw = site_csv(tmp_path)
    assert import_kw.max() > 0
    meter = read_meter_csv(path, timezone=LA)
    assert (meter.index == import_kw.index).all()
    assert meter.to_numpy() == pytest.approx(import_kw.to_numpy(), rel=1e-5, abs=1e-9)  # "%.6g"
    assert abs(bill(acn_sce(), meter).total - bill(acn_sce(), import_kw).total) < Decimal("0.01")
    exported = read_meter_csv(path, power_column="export_kw", timezone=LA)
    assert exported.to_numpy() == pytest.approx(0.0)
    with pytest.raises(AdapterFormatError, match="field 'import_kw' says kW, but the unit declared is kWh"):
        read_meter_csv(path, unit="kWh")
    lines = path.read_text().splitlines()
    assert lines[0].split(",")[:2] == ["start", "import_kw"]
    cells = lines[4].split(",")
    lines[4] = ",".join([cells[0], "n/a", *cells[2:]])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AdapterFormatError) as caught:
        read_meter_csv(path)
    assert str(caught.value) == f"{path}: line 5: field 'import_kw' 'n/a' is not a number"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "time,kW\n",
            r"line 1: has no time column named timestamp or start; name it \(--time-column\); "
            "its columns: 'time', 'kW'",
        ),
        ("timestamp,power\n", "line 1: has no power column named kw or kwh or import_kw"),
        (
            "timestamp,kW,kWh\n",
            r"line 1: has 'kW' and 'kWh'; name the power column to read \(--power-column\)",
        ),
        ("timestamp,kW,KW\n", "line 1: field 'kW' appears 2 times"),
        (
            "timestamp,kWh\n2019-08-14T00:00:00-07:00,5\n",
            "has one reading in kWh; the interval it covers needs a second reading",
        ),
        (
            "timestamp,kWh\n2019-08-14T00:15:00-07:00,5\n2019-08-14T00:00:00-07:00,5\n",
            "line 3: field 'timestamp' 2019-08-14T00:00:00-07:00 is not after the reading before",
        ),
        (
            "timestamp,kW\n2019-08-14T00:00:00,5\n",
            "line 2: field 'timestamp' '2019-08-14T00:00:00' has no UTC",
        ),
        ("timestamp,kW\nyesterday,5\n", "line 2: field 'timestamp' 'yesterday' is not ISO-8601"),
        ("timestamp,kW\n2019-08-14T00:00:00-07:00,five\n", "line 2: field 'kW' 'five' is not a number"),
        ("timestamp,kW\n", "has no readings"),
    ],
)
def test_bad_meter_csv(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "meter.csv"
    path.write_text(text)
    with pytest.raises(AdapterFormatError, match=where):
        read_meter_csv(path)


# ── command line ────────────────────────────────────────────────────────────────────────────────────


def test_cli_prints_the_bill(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from aggregator.cli.tariff import app as tariff_app

    cli = typer.Typer()
    cli.add_typer(tariff_app, name="tariff")
    meter = tmp_path / "meter.csv"
    meter.write_text("timestamp,kW\n" + "\n".join(f"{t.isoformat()},{v}" for t, v in shifted_day().items()))
    runner = CliRunner()
    acnportal = tmp_path / "sce_tou_ev_4.json"
    acnportal.write_text(json.dumps(SCE_TOU_EV_4))
    args = ["tariff", "bill", "--tariff", str(acnportal), "--meter", str(meter)]
    result = runner.invoke(cli, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "1,357.13" in result.output and "1,512.49" in result.output  # 1357.125 rounds half up
    urdb = runner.invoke(
        cli,
        [*args[:3], str(URDB / "sce_tou_ev_4.json"), *args[4:], "--previous-peak", "2019-07=300"],
        env={"COLUMNS": "200"},
    )
    assert urdb.exit_code == 0 and "1,512.49" in urdb.output  # no ratchet in this rate
    meter.write_text("timestamp,kW\n2019-08-14T00:00:00,5\n")
    bad = runner.invoke(cli, args, env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "line 2: field 'timestamp'" in bad.output


def test_cli_bills_our_site_csv_and_named_columns(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from aggregator.cli.tariff import app as tariff_app

    cli = typer.Typer()
    cli.add_typer(tariff_app, name="tariff")
    runner = CliRunner()
    acnportal = tmp_path / "sce_tou_ev_4.json"
    acnportal.write_text(json.dumps(SCE_TOU_EV_4))
    path, _ = site_csv(tmp_path / "out")
    expected = bill(acn_sce(), read_meter_csv(path)).total
    args = ["tariff", "bill", "--tariff", str(acnportal), "--meter", str(path)]
    result = runner.invoke(cli, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"{cents(expected) / 100:,.2f}" in result.output

    custom = tmp_path / "logger.csv"  # a data logger's own names: 15-minute kWh
    custom.write_text(
        "Reading start,site,Demand\n"
        + "".join(f"{t.isoformat()},depot,{v / 4}\n" for t, v in shifted_day().items())
    )
    named = [*args[:5], str(custom), "--time-column", "reading start", "--power-column", "Demand"]
    unstated = runner.invoke(cli, named, env={"COLUMNS": "400"})
    assert unstated.exit_code == 2
    assert f"{custom}: line 1: field 'Demand' does not say whether it holds kW" in unstated.output
    assert "--unit kW or --unit kWh" in unstated.output
    billed = runner.invoke(cli, [*named, "--unit", "kwh"], env={"COLUMNS": "200"})
    assert billed.exit_code == 0, billed.output
    assert "1,512.49" in billed.output  # the same day as test_cli_prints_the_bill, in kWh
