"""ACN-Data event queues: the shared Caltech March 2019 file, DST, malformed files, scenarios, and
where step 0 comes from (an acnportal file name or the caller, never a default)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
from acn_queue import event_queue, write_queue

from market_adapters.acn import (
    AcnSession,
    AcnStartUnknownError,
    acn_file_name,
    fetch_acn_sessions,
    parse_acn_sessions,
    read_acn_sessions,
    scenario_from_acn,
    station_overlaps,
)
from market_adapters.errors import AdapterFormatError
from market_adapters.tariffs import read_tou_tariff
from optimizer import build_problem

LA = zoneinfo.ZoneInfo("America/Los_Angeles")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CALTECH = SHARED / "acn" / "caltech_201903.json.gz"
TOU_EV_4 = SHARED / "tariffs" / "sce_tou_ev_4_march_2019.json"
START = dt.datetime(2019, 3, 1, tzinfo=LA)
"""Step 0 of the shared file and of the queues written here, given explicitly: their names do not say."""
needs_shared = pytest.mark.skipif(
    not CALTECH.is_file(), reason=f"shared ACN data not found at {CALTECH} (a sibling of the repository)"
)


@pytest.fixture(scope="module")
def caltech() -> list[AcnSession]:
    if not CALTECH.is_file():
        pytest.skip(f"shared ACN data not found at {CALTECH}")
    return read_acn_sessions(CALTECH, start=START)


@needs_shared
def test_reads_the_954_caltech_sessions(caltech: list[AcnSession]) -> None:
    assert len(caltech) == 954
    assert len({s.session_id for s in caltech}) == 954
    assert len({s.station_id for s in caltech}) == 47
    assert all(s.max_power_kw == 6.6 for s in caltech)


@needs_shared
def test_first_session_matches_the_file(caltech: list[AcnSession]) -> None:
    # By hand from the file: EV 139636366584704, _arrival 76, _departure 92, 4.216 kWh, CA-315.
    first = caltech[0]
    assert first.session_id == "2_39_89_25_2019-03-01 14:24:58.323646"
    assert first.station_id == "CA-315"
    assert (first.arrival_step, first.departure_step) == (76, 92)
    assert first.arrival == dt.datetime(2019, 3, 1, 6, 20, tzinfo=LA)  # 76 * 5 min after midnight
    assert first.departure == dt.datetime(2019, 3, 1, 7, 40, tzinfo=LA)
    assert first.arrival.utcoffset() == dt.timedelta(hours=-8)
    assert first.requested_energy_kwh == 4.216
    assert first.max_power_kw == 6.6


@needs_shared
def test_dst_change_is_absolute_time(caltech: list[AcnSession]) -> None:
    # Each session id ends with its plug-in time in UTC; the arrival step is that time to 5 minutes,
    # before and after the 2019-03-10 DST change (local clock hours would be an hour off after it).
    for s in caltech:
        plugged = dt.datetime.fromisoformat(s.session_id.rsplit("_", 1)[1]).replace(tzinfo=dt.UTC)
        assert dt.timedelta(minutes=-5) < s.arrival - plugged <= dt.timedelta(seconds=1), s.session_id
    after = [s for s in caltech if s.arrival >= dt.datetime(2019, 3, 10, 3, tzinfo=LA)]
    assert after and all(s.arrival.utcoffset() == dt.timedelta(hours=-7) for s in after)


def test_steps_around_the_dst_change(tmp_path: Path) -> None:
    # 2019-03-10 02:00 PST is step 9 * 288 + 24 = 2616; the clock jumps from 01:55 PST to 03:00 PDT.
    path = write_queue(tmp_path / "q.json", event_queue([{"arrival": 2615, "departure": 2617}]))
    (session,) = read_acn_sessions(path, start=START)
    assert session.arrival.isoformat() == "2019-03-10T01:55:00-08:00"
    assert session.departure.isoformat() == "2019-03-10T03:05:00-07:00"
    assert session.departure - session.arrival == dt.timedelta(minutes=10)


def test_gzipped_plain_dict_and_url_read_the_same(tmp_path: Path) -> None:
    document = event_queue(
        [{"arrival": 100, "departure": 130, "energy": 3.5}, {"arrival": 90, "departure": 95}]
    )
    plain = read_acn_sessions(write_queue(tmp_path / "q.json", document), start=START)
    gzipped = write_queue(tmp_path / "q.json.gz", document, gzipped=True)
    assert read_acn_sessions(gzipped, start=START) == plain
    assert parse_acn_sessions(document, start=START) == plain
    assert parse_acn_sessions(json.dumps(json.dumps(document)), start=START) == plain
    assert fetch_acn_sessions(gzipped.as_uri(), start=START) == plain
    assert [s.arrival_step for s in plain] == [90, 100]  # sorted by arrival


# ── step 0: from an acnportal file name, else given ─────────────────────────────────────────────────

NOVEMBER = "caltech_20191101T000000_20191201T000000_5m_208V_6.6kW.json.gz"
"""An acnportal file name: Caltech, November 2019 (local time), 5-minute steps, 208 V, 6.6 kW."""


def test_an_acnportal_name_carries_the_start(tmp_path: Path) -> None:
    named = acn_file_name(NOVEMBER)
    assert named is not None
    assert (named.site, named.step_minutes, named.voltage_v, named.max_battery_kw) == ("caltech", 5, 208, 6.6)
    assert named.start.isoformat() == "2019-11-01T00:00:00-07:00"  # PDT until 3 November
    assert named.end.isoformat() == "2019-12-01T00:00:00-08:00"
    document = event_queue([{"arrival": 96, "departure": 120}])
    path = write_queue(tmp_path / NOVEMBER, document, gzipped=True)
    (session,) = read_acn_sessions(path)
    assert session.arrival.isoformat() == "2019-11-01T08:00:00-07:00"  # 96 × 5 min, not March
    assert fetch_acn_sessions(path.as_uri()) == [session]
    assert read_acn_sessions(path, start=dt.datetime(2019, 11, 1, tzinfo=LA)) == [session]


def test_the_name_also_carries_the_step(tmp_path: Path) -> None:
    path = write_queue(
        tmp_path / "jpl_20200106T060000_20200107T060000_15m_208V_6.6kW.json",
        event_queue([{"arrival": 2, "departure": 4}]),
    )
    (session,) = read_acn_sessions(path)
    assert session.arrival.isoformat() == "2020-01-06T06:30:00-08:00"
    with pytest.raises(AdapterFormatError, match="says steps are 15 min, but 5 min was given"):
        read_acn_sessions(path, step_minutes=5)


def test_without_a_name_or_a_start_nothing_is_assumed(tmp_path: Path) -> None:
    path = write_queue(tmp_path / "caltech_201911.json", event_queue([{}]))
    with pytest.raises(AcnStartUnknownError, match="does not record when its step 0 is") as caught:
        read_acn_sessions(path)
    assert str(path) in str(caught.value)
    assert "caltech_20190301T000000_20190401T000000_5m_208V_6.6kW.json.gz" in str(caught.value)
    with pytest.raises(AcnStartUnknownError):
        fetch_acn_sessions(path.as_uri())
    with pytest.raises(TypeError, match="start"):
        parse_acn_sessions(event_queue([{}]))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("caltech_20191341T000000_20191201T000000_5m_208V_6.6kW.json", "start '20191341T000000', not a date"),
        ("caltech_20191201T000000_20191101T000000_5m_208V_6.6kW.json", "end 20191101T000000 not after"),
        ("caltech_20191101T000000_20191201T000000_0m_208V_6.6kW.json", "period of 0 minutes"),
    ],
)
def test_a_bad_acnportal_name_is_refused(tmp_path: Path, name: str, message: str) -> None:
    path = write_queue(tmp_path / name, event_queue([{}]))
    with pytest.raises(AdapterFormatError, match=message):
        read_acn_sessions(path)


def test_a_start_that_contradicts_the_name_is_refused(tmp_path: Path) -> None:
    path = write_queue(tmp_path / NOVEMBER, event_queue([{}]))
    with pytest.raises(AdapterFormatError, match="says step 0 is 2019-11-01T00:00:00-07:00, but the start"):
        read_acn_sessions(path, start=START)


def test_other_start_and_step(tmp_path: Path) -> None:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    (session,) = parse_acn_sessions(
        event_queue([{"arrival": 2, "departure": 4}]), start=start, step_minutes=15
    )
    assert session.arrival == dt.datetime(2020, 1, 1, 0, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("change", "obj", "field"),
    [
        ({"drop": ["_arrival"]}, "EV object 'ev0'", "_arrival"),
        ({"set": {"_requested_energy": "lots"}}, "EV object 'ev0'", "_requested_energy"),
        ({"set": {"_requested_energy": -1.0}}, "EV object 'ev0'", "_requested_energy"),
        ({"set": {"_arrival": 3.5}}, "EV object 'ev0'", "_arrival"),
        ({"set": {"_station_id": 7}}, "EV object 'ev0'", "_station_id"),
        ({"arrival": 10, "departure": 10}, "EV object 'ev0'", "_departure"),
        ({"set": {"_battery": "nowhere"}}, "EV object 'ev0' '_battery'", ""),
    ],
)
def test_malformed_sessions_name_object_and_field(
    tmp_path: Path, change: dict[str, Any], obj: str, field: str
) -> None:
    path = write_queue(tmp_path / "bad.json", event_queue([change]))
    with pytest.raises(AdapterFormatError) as caught:
        read_acn_sessions(path, start=START)
    assert caught.value.obj == obj
    assert caught.value.field == field
    assert str(path) in str(caught.value)


def test_malformed_documents(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ACN event-queue file not found"):
        read_acn_sessions(tmp_path / "missing.json.gz")
    (tmp_path / "text.json").write_text('{"id": "q", "context_dict": ')
    with pytest.raises(AdapterFormatError, match=r"not JSON: .* line 1 column 29"):
        read_acn_sessions(tmp_path / "text.json", start=START)
    (tmp_path / "broken.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    with pytest.raises(AdapterFormatError, match="not valid gzip"):
        read_acn_sessions(tmp_path / "broken.gz", start=START)
    with pytest.raises(AdapterFormatError, match="'context_dict' is missing"):
        parse_acn_sessions({"id": "q"}, start=START)
    document = event_queue([{}])
    document["context_dict"]["b0"]["attributes"].pop("_max_power")
    with pytest.raises(AdapterFormatError, match="Battery object 'b0': field '_max_power' is missing"):
        parse_acn_sessions(document, start=START)
    document = event_queue([{}])
    document["context_dict"]["q"]["attributes"]["_queue"].append([5, "p-missing"])
    with pytest.raises(AdapterFormatError, match="refers to object 'p-missing'"):
        parse_acn_sessions(document, start=START)
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_acn_sessions(event_queue([{}]), start=dt.datetime(2019, 3, 1))


@needs_shared
def test_no_station_is_booked_twice_in_the_caltech_month(caltech: list[AcnSession]) -> None:
    assert station_overlaps(caltech) == []


@needs_shared
def test_a_caltech_day_is_a_valid_scenario(caltech: list[AcnSession]) -> None:
    tariff = read_tou_tariff(TOU_EV_4)
    start, end = dt.datetime(2019, 3, 5, tzinfo=LA), dt.datetime(2019, 3, 6, tzinfo=LA)
    scenario = scenario_from_acn(caltech, tariff, start=start, end=end)
    problem = build_problem(scenario)
    inside = [s for s in caltech if s.arrival < end and s.departure > start]
    assert len(scenario.vehicles) == len(inside) > 20
    assert scenario.n_steps == 288 and scenario.timezone == "America/Los_Angeles"
    assert {e.id for e in scenario.evses} == {s.station_id for s in inside}
    assert scenario.site.import_limit_kw == pytest.approx(6.6 * len(scenario.evses))
    assert problem.import_price[10 * 12] == 0.07492 and problem.import_price[13 * 12] == 0.0869
    assert scenario.tariff.demand_charges[0].rate_per_kw == 15.51
    v = scenario.vehicles[0]
    assert v.capacity_kwh == v.target_energy_kwh and v.energy_at_arrival_kwh == 0
    assert v.charge_efficiency == 1.0 and not v.v2g_consent


@needs_shared
def test_the_dst_day_has_23_hours(caltech: list[AcnSession]) -> None:
    tariff = read_tou_tariff(TOU_EV_4)
    day = scenario_from_acn(
        caltech, tariff, start=dt.datetime(2019, 3, 10, tzinfo=LA), end=dt.datetime(2019, 3, 11, tzinfo=LA)
    )
    assert day.n_steps == 23 * 12
    problem = build_problem(day)
    assert problem.index[-1] == dt.datetime(2019, 3, 10, 23, 55, tzinfo=LA)


def test_overlapping_sessions_get_a_virtual_evse(caplog: pytest.LogCaptureFixture) -> None:
    sessions = parse_acn_sessions(
        event_queue(
            [
                {"session_id": "a", "arrival": 0, "departure": 24},
                {"session_id": "b", "arrival": 12, "departure": 36},  # overlaps a
                {"session_id": "c", "arrival": 24, "departure": 48},  # starts as a leaves, overlaps b
                {"session_id": "d", "arrival": 30, "departure": 40, "station_id": "CA-2"},
            ]
        ),
        start=START,
    )
    assert [(a.session_id, b.session_id) for a, b in station_overlaps(sessions)] == [("a", "b"), ("b", "c")]
    tariff = read_tou_tariff(TOU_EV_4) if TOU_EV_4.is_file() else None
    if tariff is None:
        pytest.skip(f"shared tariff not found at {TOU_EV_4}")
    with caplog.at_level(logging.WARNING, logger="market_adapters.acn"):
        scenario = scenario_from_acn(sessions, tariff, start=START, end=START + dt.timedelta(hours=6))
    assert "2 pairs of ACN sessions overlap" in caplog.text
    evse_of = {v.id: v.evse_id for v in scenario.vehicles}
    assert evse_of == {"a": "CA-1", "b": "CA-1#2", "c": "CA-1", "d": "CA-2"}
    build_problem(scenario)  # no EVSE is booked twice


def test_horizon_must_be_whole_steps() -> None:
    sessions = parse_acn_sessions(event_queue([{}]), start=START)
    tariff = read_tou_tariff(TOU_EV_4) if TOU_EV_4.is_file() else None
    if tariff is None:
        pytest.skip(f"shared tariff not found at {TOU_EV_4}")
    with pytest.raises(ValueError, match="whole number of 5-minute steps"):
        scenario_from_acn(sessions, tariff, start=START, end=START + dt.timedelta(minutes=7))
