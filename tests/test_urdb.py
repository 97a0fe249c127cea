"""OpenEI URDB rates: what is read, and every malformed rate refused whole with field and position."""

from __future__ import annotations

import copy
import http.server
import json
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from market_adapters.errors import AdapterFormatError
from market_adapters.urdb import FIELD_MAP, UrdbTariff, fetch_urdb_tariff, parse_urdb_tariff, read_urdb_tariff

URDB = Path(__file__).resolve().parent / "data" / "urdb"
LA = "America/Los_Angeles"


def item(name: str = "pge_e19_secondary.json") -> dict[str, Any]:
    return copy.deepcopy(json.loads((URDB / name).read_text())["items"][0])


def test_every_fixture_reads() -> None:
    for path in sorted(URDB.glob("*.json")):
        assert isinstance(read_urdb_tariff(path), UrdbTariff)


def test_what_is_read() -> None:
    e19 = read_urdb_tariff(URDB / "pge_e19_secondary.json")
    assert e19.name.startswith("E-19") and e19.label == "fleetgrid-test-pge-e19-s"
    assert len(e19.energy_periods) == 5 and len(e19.tou_demand_periods) == 3
    assert e19.energy_weekday_schedule is not None and e19.energy_weekday_schedule[6][12] == 2
    assert (e19.fixed_charge, e19.fixed_charge_unit, e19.demand_interval_minutes) == (4.59959, "day", 15)
    e1 = read_urdb_tariff(URDB / "pge_e1_tiered.json")
    tiers = e1.energy_periods[0]
    assert [(t.max, t.rate) for t in tiers] == [
        (350, Decimal("0.22376")),  # rate 0.2 + adj 0.02376, exact
        (1400, Decimal("0.28159")),
        (None, Decimal("0.49")),
    ]
    assert (e1.minimum_charge, e1.minimum_charge_unit) == (0.32854, "day")
    assert set(FIELD_MAP.values()) <= set(UrdbTariff.model_fields)


def test_charge_plan_on_local_time() -> None:
    e19 = read_urdb_tariff(URDB / "pge_e19_secondary.json")
    index = pd.date_range("2019-08-17 11:00", periods=3, freq="1D", tz=LA)  # Sat, Sun, Mon
    plan = e19.charge_plan(pd.DatetimeIndex([*index, pd.Timestamp("2019-08-19 12:00", tz=LA)]))
    assert plan.energy_period.tolist() == [0, 0, 1, 2]
    assert plan.import_prices().tolist() == [0.08, 0.08, 0.11, 0.15]
    with pytest.raises(TypeError, match="tz-aware"):
        e19.charge_plan(index.tz_localize(None))


def test_v3_names_and_api_answers(tmp_path: Path) -> None:
    old = item("pge_e1_tiered.json")
    old["minmonthlycharge"] = old.pop("mincharge")
    del old["minchargeunits"]
    old["fixedmonthlycharge"] = 10.0
    del old["fixedchargefirstmeter"], old["fixedchargeunits"]
    rate = parse_urdb_tariff(old)
    assert (rate.minimum_charge_unit, rate.fixed_charge, rate.fixed_charge_unit) == ("month", 10.0, "month")
    answer = {"items": [item(), item("pge_e1_tiered.json")]}
    with pytest.raises(AdapterFormatError, match=r"holds 2 rates .*pass label="):
        parse_urdb_tariff(answer)
    assert parse_urdb_tariff(answer, label="fleetgrid-test-pge-e1").name.startswith("E-1")
    with pytest.raises(AdapterFormatError, match="no rate with label 'nope'"):
        parse_urdb_tariff(answer, label="nope")
    body = json.dumps(answer).encode()
    asked: list[str] = []

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/utility_rates"
        rate = fetch_urdb_tariff("fleetgrid-test-pge-e1", "key", url=url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert rate.label == "fleetgrid-test-pge-e1"
    assert "getpage=fleetgrid-test-pge-e1" in asked[0] and "detail=full" in asked[0]


def test_files_that_are_not_rates(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_urdb_tariff(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"items": [')
    with pytest.raises(AdapterFormatError, match="is not JSON"):
        read_urdb_tariff(bad)
    with pytest.raises(AdapterFormatError, match="expected an object"):
        parse_urdb_tariff([])  # type: ignore[arg-type]


def _set(path: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is _DELETE:
            del target[int(last) if isinstance(target, list) else last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return change


_DELETE = object()
_HOURS = [0] * 24


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            _set("energyweekdayschedule/11", _DELETE),
            "energyweekdayschedule",
            "must have 12 months (January to December) of 24 hours, got 11 months",
        ),
        (
            _set("energyweekendschedule/3/23", _DELETE),
            "energyweekendschedule[3]",
            "(April) must have 24 hours, got 23 hours",
        ),
        (
            _set("energyweekdayschedule/6/14", 5),
            "energyweekdayschedule[6][14]",
            "(July 14:00) is period 5, but energyratestructure has 5 (0 to 4)",
        ),
        (_set("energyweekdayschedule/0/0", -1), "energyweekdayschedule[0][0]", "is period -1"),
        (
            _set("energyweekdayschedule/0/0", 1.5),
            "energyweekdayschedule[0][0]",
            "must be a period index, got 1.5",
        ),
        (
            _set("demandweekendschedule/7/3", 3),
            "demandweekendschedule[7][3]",
            "(August 03:00) is period 3, but demandratestructure has 3",
        ),
        (
            _set("demandweekdayschedule", _DELETE),
            "demandweekdayschedule",
            "is missing, but demandratestructure is given",
        ),
        (
            _set("energyratestructure", _DELETE),
            "energyratestructure",
            "is missing, but energyweekdayschedule refers to its periods",
        ),
        (_set("flatdemandmonths/11", _DELETE), "flatdemandmonths", "each of the 12 months, got 11 months"),
        (
            _set("flatdemandmonths/2", 1),
            "flatdemandmonths[2]",
            "(March) is period 1, but flatdemandstructure has 1",
        ),
        (
            _set("energyratestructure/2/0/max", 500),
            "energyratestructure[2][0].max",
            "is 500 on the last tier, so use above 500 kWh would not be priced",
        ),
        (
            _set(
                "flatdemandstructure/0",
                [{"max": 100, "rate": 5}, {"max": 200, "rate": 3}, {"max": 900, "rate": 1}],
            ),
            "flatdemandstructure[0][2].max",
            "last tier must have no max",
        ),
        (
            _set("energyratestructure/1", [{"rate": 0.1}, {"rate": 0.2}]),
            "energyratestructure[1][0].max",
            "is missing on tier 0 of 2",
        ),
        (
            _set(
                "energyratestructure/1", [{"max": 500, "rate": 0.1}, {"max": 400, "rate": 0.2}, {"rate": 0.3}]
            ),
            "energyratestructure[1][1].max",
            "must be a number above 500 kWh, got 400",
        ),
        (
            _set("energyratestructure/0/0/unit", "kWh daily"),
            "energyratestructure[0][0].unit",
            "is 'kWh daily'; only 'kWh' is supported",
        ),
        (_set("energyratestructure/0/0/rate", "cheap"), "energyratestructure[0][0].rate", "must be a number"),
        (_set("energyratestructure/0/0", {"unit": "kWh"}), "energyratestructure[0][0].rate", "is missing"),
        (
            _set("energyratestructure/0/0/colour", "red"),
            "energyratestructure[0][0].colour",
            "is not a field of a URDB tier",
        ),
        (_set("energyratestructure/4", []), "energyratestructure[4]", "must be a non-empty list of tiers"),
        (_set("demandrateunit", "kVA"), "demandrateunit", "is 'kVA'; only 'kW' is supported"),
        (_set("flatdemandunit", "hp"), "flatdemandunit", "is 'hp'; only 'kW' is supported"),
        (_set("demandratestructure/2/0/unit", "kVA"), "demandratestructure[2][0].unit", "only 'kW'"),
        (_set("fixedchargeunits", "$/kWh"), "fixedchargeunits", "is '$/kWh'; expected one of"),
        (lambda d: d.update(mincharge=5, minchargeunits="$/week"), "minchargeunits", "is '$/week'"),
        (_set("fixedchargefirstmeter", -3), "fixedchargefirstmeter", "must be a number >= 0"),
        (_set("demandwindow", 7), "demandwindow", "whole minutes dividing a day"),
        (
            _set("coincidentratestructure", [[{"rate": 3.2}]]),
            "coincidentratestructure",
            "coincident demand charges are not supported",
        ),
        (_set("demandreactivepowercharge", 0.5), "demandreactivepowercharge", "holds a charge"),
        (_set("demandratchetpercentage", [0.8] * 11), "demandratchetpercentage", "12 months, got 11 values"),
        (
            _set("demandratchetpercentage", [0.8] * 3 + [80] + [0.8] * 8),
            "demandratchetpercentage[3]",
            "(April) must be a fraction from 0 to 1",
        ),
        (_set("lookbackpercent", 0.8), "lookbackpercent", "neither lookbackrange nor lookbackmonths"),
        (_set("lookbackpercent", 80), "lookbackpercent", "must be a fraction from 0 to 1"),
        (_set("name", ""), "name", "must be a non-empty string"),
    ],
)
def test_malformed_rates_name_the_field_and_position(change: Any, field: str, words: str) -> None:
    data = item()
    change(data)
    with pytest.raises(AdapterFormatError) as caught:
        parse_urdb_tariff(data, source="e19.json")
    error = caught.value
    assert (error.source, error.obj, error.field) == ("e19.json", "rate 'fleetgrid-test-pge-e19-s'", field)
    assert words in error.problem


def test_lookback_needs_one_kind_of_months() -> None:
    both = item() | {"lookbackpercent": 0.8, "lookbackrange": 11, "lookbackmonths": [1] + [0] * 11}
    with pytest.raises(AdapterFormatError, match="'lookbackmonths' flags months but lookbackrange"):
        parse_urdb_tariff(both)
    bad_flag = item() | {"lookbackpercent": 0.8, "lookbackmonths": [2] + [0] * 11}
    with pytest.raises(AdapterFormatError, match=r"'lookbackmonths\[0\]' \(January\) must be true/false"):
        parse_urdb_tariff(bad_flag)
    fine = parse_urdb_tariff(
        item() | {"lookbackpercent": 0.8, "lookbackrange": 11, "lookbackmonths": [0] * 12}
    )
    assert fine.ratchet is not None and fine.ratchet.lookback_range_months == 11


def test_empty_unsupported_fields_and_descriptions_are_fine() -> None:
    data = item() | {
        "coincidentratestructure": [[{"rate": 0}]],
        "description": "words",
        "sector": "Commercial",
    }
    assert parse_urdb_tariff(data).ratchet is None
