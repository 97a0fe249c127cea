"""The traders' API on SQLite and PostgreSQL: schedules (JSON and CSV), planned against actual import,
flexibility and KPIs on a tiny hand-computed case, what-if re-optimisation that stores nothing, and the
authorization matrix of every ``/trader`` route."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from api_world import CALLERS, TRADER, Caller, Endpoint, TestClient, World, check_endpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aggregator.control import schedules
from aggregator.db.models import (
    EvseTelemetryRecord,
    Role,
    ScheduleStatus,
    ScheduleVersion,
    TelemetryRecord,
)
from optimizer import Evse, Scenario, ScheduleResult, Site, Tariff, VehicleSession, schedule

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 2, tzinfo=UTC)


def at(hours: float) -> dt.datetime:
    return DAY + dt.timedelta(hours=hours)


def q(quarters: int) -> dt.datetime:
    """``quarters`` quarter hours after midnight of the test day."""
    return DAY + quarters * dt.timedelta(minutes=15)


# ------------------------------------------------------------------------------- the tiny case
#
# Depot-1, 15-minute steps from 00:00. Vehicle A on bidirectional EVSE e1 (11 kW both ways; the
# vehicle discharges at most 10 kW, V2G consent) plugged 00:00-02:00; vehicle B on e2 (7 kW, the
# vehicle 7.4 kW) plugged 00:30-01:30. Import limit 20 kW, export limit 5 kW, no base load.
#
# v1, created 00:00, 8 steps:  A [4, 4, 4, 4, -2, -2, 0, 0]  B [0, 0, 7, 7, 7, 7, 0, 0]
#                              site [4, 4, 11, 11, 5, 5, 0, 0], import price 0.2, export 0.1
# v2, created 00:40, horizon 00:45-01:45 (4 steps): A [1, -1, 3, 4]  B [0, 3, 0, 0]
#                              site [1, 2, 3, 4], import price 0.3


def tiny_scenario(start: dt.datetime, n_steps: int, import_price: float) -> Scenario:
    return Scenario(
        name="tiny",
        start=start,
        step_minutes=15,
        n_steps=n_steps,
        currency="EUR",
        site=Site(id="depot-1", import_limit_kw=20.0, export_limit_kw=5.0),
        tariff=Tariff(import_price_per_kwh=import_price, export_price_per_kwh=0.1),
        evses=[Evse(id="e1", max_charge_kw=11.0, max_discharge_kw=11.0), Evse(id="e2", max_charge_kw=7.0)],
        vehicles=[
            VehicleSession(
                id="A",
                evse_id="e1",
                arrival=at(0),
                departure=at(2),
                capacity_kwh=60.0,
                energy_at_arrival_kwh=30.0,
                target_energy_kwh=40.0,
                min_energy_kwh=20.0,
                max_charge_kw=11.0,
                max_discharge_kw=10.0,
                v2g_consent=True,
            ),
            VehicleSession(
                id="B",
                evse_id="e2",
                arrival=at(0.5),
                departure=at(1.5),
                capacity_kwh=40.0,
                energy_at_arrival_kwh=10.0,
                target_energy_kwh=20.0,
                max_charge_kw=7.4,
            ),
        ],
    )


def hand_version(
    session: Session,
    *,
    created_at: dt.datetime,
    scenario: Scenario,
    powers: dict[str, list[float]],
    status: ScheduleStatus,
    unmet: dict[str, float],
    site_id: str = "depot-1",
) -> ScheduleVersion:
    site_import = [sum(values) for values in zip(*powers.values(), strict=True)]
    evse = {v.id: v.evse_id for v in scenario.vehicles}
    version = ScheduleVersion(
        site_id=site_id,
        created_at=created_at,
        horizon_start=scenario.start,
        step_seconds=scenario.step_minutes * 60,
        trigger="cadence",
        inputs={"scenario": scenario.model_dump(mode="json"), "sessions": {}, "events": []},
        result_summary={
            "status": status.value,
            "objective": 1.0,
            "total_cost": 1.0,
            "currency": scenario.currency,
            "peak_import_kw": max(site_import),
            "vehicles": {
                vid: {"delivered_kwh": 0.0, "unmet_kwh": kwh, "reason": "x"} for vid, kwh in unmet.items()
            },
        },
        status=status,
        plan={
            "site_import_kw": site_import,
            "vehicles": {vid: {"power_kw": power, "evse_id": evse[vid]} for vid, power in powers.items()},
        },
    )
    session.add(version)
    session.commit()
    return version


@pytest.fixture
def tiny(session: Session, world: World) -> World:
    v1 = hand_version(
        session,
        created_at=at(0),
        scenario=tiny_scenario(at(0), 8, 0.2),
        powers={"A": [4, 4, 4, 4, -2, -2, 0, 0], "B": [0, 0, 7, 7, 7, 7, 0, 0]},
        status=ScheduleStatus.OPTIMAL,
        unmet={"A": 2.0, "B": 1.0},
    )
    v2 = hand_version(
        session,
        created_at=q(2) + dt.timedelta(minutes=10),
        scenario=tiny_scenario(q(3), 4, 0.3),
        powers={"A": [1, -1, 3, 4], "B": [0, 3, 0, 0]},
        status=ScheduleStatus.FEASIBLE,
        unmet={"A": 0.5},
    )
    # Telemetry: interval 00:00 mean 4 (3 and 5), 00:45 -> 2, 01:15 -> 6, 02:00 -> 1.
    readings: list[tuple[dt.datetime, float, float | None]] = [
        (q(0) + dt.timedelta(seconds=10), 3.0, 4.0),
        (q(0) + dt.timedelta(minutes=5), 5.0, 4.0),
    ]
    readings += [(q(3) + dt.timedelta(minutes=5), 2.0, None), (q(5) + dt.timedelta(minutes=5), 6.0, -2.0)]
    readings += [(q(8) + dt.timedelta(minutes=5), 1.0, None)]
    for seq, (sent_at, import_kw, evse_kw) in enumerate(readings):
        record = TelemetryRecord(
            site_id="depot-1",
            seq=seq,
            sent_at=sent_at,
            received_at=sent_at,
            site_import_kw=import_kw,
            base_load_kw=None,
        )
        if evse_kw is not None:
            record.evses.append(
                EvseTelemetryRecord(
                    charger_id="cp-1", evse_id=1, power_kw=evse_kw, energy_kwh=None, soc_percent=None
                )
            )
        session.add(record)
    session.commit()
    world.extra.update(v1=v1.id, v2=v2.id)
    return world


# --------------------------------------------------------------------------- solved versions


def small_scenario(site_id: str, start: dt.datetime) -> Scenario:
    """Three vehicles over 24 quarter hours, a price step at 03:00; the optimizer's input."""
    prices = [0.40] * 12 + [0.10] * 12
    return Scenario(
        name=f"{site_id}-small",
        start=start,
        step_minutes=15,
        n_steps=24,
        currency="EUR",
        site=Site(id=site_id, import_limit_kw=30.0, export_limit_kw=10.0, base_load_kw=2.0),
        tariff=Tariff(import_price_per_kwh=prices, export_price_per_kwh=0.05),
        evses=[
            Evse(id=f"e{k}", max_charge_kw=11.0, max_discharge_kw=11.0 if k == 0 else 0.0) for k in range(3)
        ],
        vehicles=[
            VehicleSession(
                id=f"ev-{k}",
                evse_id=f"e{k}",
                arrival=start + dt.timedelta(minutes=15 * k),
                departure=start + dt.timedelta(hours=6),
                capacity_kwh=50.0,
                energy_at_arrival_kwh=20.0,
                target_energy_kwh=35.0,
                min_energy_kwh=15.0,
                max_charge_kw=11.0,
                max_discharge_kw=11.0 if k == 0 else 0.0,
                v2g_consent=k == 0,
            )
            for k in range(3)
        ],
    )


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value), parse_constant=lambda name: None)


@pytest.fixture(scope="module")
def solved() -> tuple[Scenario, ScheduleResult]:
    scenario = small_scenario("depot-1", DAY)
    return scenario, schedule(scenario, time_limit=20)


def store_solved(
    session: Session,
    scenario: Scenario,
    result: ScheduleResult,
    created_at: dt.datetime,
    site_id: str = "depot-1",
) -> ScheduleVersion:
    version = ScheduleVersion(
        site_id=site_id,
        created_at=created_at,
        horizon_start=scenario.start,
        step_seconds=scenario.step_minutes * 60,
        trigger="cadence",
        inputs={
            "scenario": scenario.model_dump(mode="json"),
            "sessions": {"ev-0": 101, "ev-1": 102},
            "events": [],
        },
        result_summary=_json_safe(result.summary()),
        status=ScheduleStatus(result.status.value),
        plan=schedules.plan_json(result),
    )
    session.add(version)
    session.commit()
    return version


@pytest.fixture
def stored(session: Session, world: World, solved: tuple[Scenario, ScheduleResult]) -> World:
    scenario, result = solved
    older = store_solved(session, scenario, result, at(-1))
    latest = store_solved(session, scenario, result, at(-0.5))
    world.extra.update(older=older.id, latest=latest.id)
    return world


def trader(world: World) -> dict[str, str]:
    return world.headers(Role.TRADER)


def versions_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ScheduleVersion)) or 0


# ------------------------------------------------------------------------------------- versions


def test_versions_list_newest_first_with_summary(client: TestClient, stored: World) -> None:
    page = client.get("/trader/schedules", headers=trader(stored))
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["total"] == 2
    assert [item["id"] for item in body["items"]] == [stored.extra["latest"], stored.extra["older"]]
    item = body["items"][0]
    assert item["status"] == "optimal" and item["trigger"] == "cadence" and item["currency"] == "EUR"
    assert item["total_cost"] == pytest.approx(body["items"][1]["total_cost"])
    assert dt.datetime.fromisoformat(item["created_at"]) == at(-0.5)
    assert "plan" not in item and "inputs" not in item


def test_versions_list_filters_and_pages(client: TestClient, stored: World) -> None:
    headers = trader(stored)
    window = {"start": at(-0.75).isoformat(), "end": at(0).isoformat()}
    assert [
        i["id"] for i in client.get("/trader/schedules", headers=headers, params=window).json()["items"]
    ] == [stored.extra["latest"]]
    second = client.get("/trader/schedules", headers=headers, params={"offset": 1, "limit": 1}).json()
    assert [i["id"] for i in second["items"]] == [stored.extra["older"]] and second["total"] == 2
    assert (
        client.get("/trader/schedules", headers=headers, params={"site_id": "depot-2"}).json()["total"] == 0
    )
    assert client.get("/trader/schedules", headers=headers, params={"site_id": "nowhere"}).status_code == 404
    naive = client.get("/trader/schedules", headers=headers, params={"start": "2026-03-02T00:00:00"})
    assert naive.status_code == 422


def test_one_version_in_full_shows_its_inputs(
    client: TestClient, stored: World, solved: tuple[Scenario, ScheduleResult]
) -> None:
    scenario, result = solved
    got = client.get(f"/trader/schedules/{stored.extra['latest']}", headers=trader(stored))
    assert got.status_code == 200, got.text
    body = got.json()
    assert Scenario.model_validate(body["inputs"]["scenario"]) == scenario
    assert body["inputs"]["sessions"] == {"ev-0": 101, "ev-1": 102}
    assert body["n_steps"] == 24
    assert dt.datetime.fromisoformat(body["horizon_end"]) == at(6)
    assert body["plan"] == schedules.plan_json(result)
    assert body["result_summary"]["total_cost"] == pytest.approx(result.total_cost)
    assert client.get("/trader/schedules/999999", headers=trader(stored)).status_code == 404


# ------------------------------------------------------------------------------------ schedules


def test_site_schedule_json_is_the_latest_plan(
    client: TestClient, stored: World, solved: tuple[Scenario, ScheduleResult]
) -> None:
    _, result = solved
    got = client.get("/trader/sites/depot-1/schedule", headers=trader(stored))
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["version_id"] == stored.extra["latest"]
    assert body["step_seconds"] == 900 and len(body["steps"]) == 24
    assert {v["id"]: v["session_id"] for v in body["vehicles"]} == {"ev-0": 101, "ev-1": 102, "ev-2": None}
    first, last = body["steps"][0], body["steps"][-1]
    assert first["start"].endswith("Z") or first["start"].endswith("+00:00")
    assert dt.datetime.fromisoformat(first["start"]) == DAY
    assert dt.datetime.fromisoformat(last["end"]) == at(6)
    expected_site = result.evaluation.import_kw - result.evaluation.export_kw
    assert [s["site_import_kw"] for s in body["steps"]] == pytest.approx(list(expected_site))
    power = result.charge_kw - result.discharge_kw
    assert [s["vehicles_kw"]["ev-1"] for s in body["steps"]] == pytest.approx(list(power[1]))
    # the plan balances: site import = base load + the vehicles (no export curtailed here)
    for step in body["steps"]:
        assert step["site_import_kw"] == pytest.approx(2.0 + sum(step["vehicles_kw"].values()), abs=1e-6)


def test_site_schedule_csv_parses_back(client: TestClient, stored: World) -> None:
    headers = trader(stored)
    as_json = client.get("/trader/sites/depot-1/schedule", headers=headers).json()
    for response in (
        client.get("/trader/sites/depot-1/schedule", headers=headers, params={"format": "csv"}),
        client.get("/trader/sites/depot-1/schedule", headers={**headers, "Accept": "text/csv"}),
    ):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert list(rows[0]) == ["start", "end", "site_import_kw", "ev-0_kw", "ev-1_kw", "ev-2_kw"]
        assert len(rows) == 24
        assert [dt.datetime.fromisoformat(r["start"]) for r in rows] == [
            dt.datetime.fromisoformat(s["start"]) for s in as_json["steps"]
        ]
        assert rows[0]["start"].endswith("+00:00")
        assert [float(r["site_import_kw"]) for r in rows] == pytest.approx(
            [s["site_import_kw"] for s in as_json["steps"]], rel=1e-5, abs=1e-9
        )
        assert [float(r["ev-0_kw"]) for r in rows] == pytest.approx(
            [s["vehicles_kw"]["ev-0"] for s in as_json["steps"]], rel=1e-5, abs=1e-9
        )
    bad = client.get("/trader/sites/depot-1/schedule", headers=headers, params={"format": "xml"})
    assert bad.status_code == 422


def test_a_new_version_replaces_the_rendered_plan(
    client: TestClient, session: Session, stored: World
) -> None:
    """The rendered current plan is kept per version: a newer version is served at once."""
    headers = trader(stored)
    assert (
        client.get("/trader/sites/depot-1/schedule", headers=headers).json()["version_id"]
        == stored.extra["latest"]
    )
    newer = hand_version(
        session,
        created_at=at(-0.25),
        scenario=tiny_scenario(at(0), 8, 0.2),
        powers={"A": [1.0] * 8, "B": [0.0] * 8},
        status=ScheduleStatus.HEURISTIC,
        unmet={},
    )
    body = client.get("/trader/sites/depot-1/schedule", headers=headers).json()
    assert body["version_id"] == newer.id and body["status"] == "heuristic"
    assert [s["site_import_kw"] for s in body["steps"]] == [1.0] * 8
    rows = list(
        csv.DictReader(
            io.StringIO(
                client.get("/trader/sites/depot-1/schedule", headers=headers, params={"format": "csv"}).text
            )
        )
    )
    assert [float(r["A_kw"]) for r in rows] == [1.0] * 8


def test_site_schedule_not_found(client: TestClient, stored: World) -> None:
    no_version = client.get("/trader/sites/depot-2/schedule", headers=trader(stored))
    assert no_version.status_code == 404 and "no schedule version" in no_version.json()["detail"]
    unknown = client.get("/trader/sites/nowhere/schedule", headers=trader(stored))
    assert unknown.status_code == 404 and "nowhere" in unknown.json()["detail"]


def test_portfolio_sums_the_latest_plans_on_15_minutes(
    client: TestClient, session: Session, stored: World, solved: tuple[Scenario, ScheduleResult]
) -> None:
    """depot-2 plans hourly from 01:00 (three hours); the sum is on the quarter-hour grid."""
    version = ScheduleVersion(
        site_id="depot-2",
        created_at=at(0),
        horizon_start=at(1),
        step_seconds=3600,
        inputs={},
        result_summary={},
        status=ScheduleStatus.HEURISTIC,
        plan={"site_import_kw": [10.0, 20.0, 30.0], "vehicles": {}},
    )
    session.add(version)
    session.commit()
    _, result = solved
    depot_1 = result.evaluation.import_kw - result.evaluation.export_kw
    body = client.get("/trader/portfolio/schedule", headers=trader(stored)).json()
    assert body["step_seconds"] == 900
    assert {s["site_id"]: s["version_id"] for s in body["sites"]} == {
        "depot-1": stored.extra["latest"],
        "depot-2": version.id,
    }
    steps = {dt.datetime.fromisoformat(s["start"]): s for s in body["steps"]}
    assert len(steps) == 24  # 00:00-06:00 (depot-2's 01:00-04:00 lies inside)
    assert steps[DAY]["sites_kw"] == {"depot-1": pytest.approx(depot_1[0]), "depot-2": None}
    assert steps[DAY]["import_kw"] == pytest.approx(depot_1[0])
    k = 4 * 2 + 1  # 02:15, inside depot-2's second hour
    assert steps[q(k)]["sites_kw"]["depot-2"] == 20.0
    assert steps[q(k)]["import_kw"] == pytest.approx(depot_1[k] + 20.0)

    rows = list(
        csv.DictReader(
            io.StringIO(
                client.get(
                    "/trader/portfolio/schedule", headers=trader(stored), params={"format": "csv"}
                ).text
            )
        )
    )
    assert list(rows[0]) == ["start", "end", "import_kw", "depot-1_kw", "depot-2_kw"]
    assert rows[0]["depot-2_kw"] == ""
    assert float(rows[k]["import_kw"]) == pytest.approx(depot_1[k] + 20.0, rel=1e-5)


# -------------------------------------------------------------------------- planned vs actual


def test_planned_vs_actual_by_hand(client: TestClient, tiny: World) -> None:
    got = client.get(
        "/trader/sites/depot-1/planned-vs-actual",
        headers=trader(tiny),
        params={"start": q(0).isoformat(), "end": q(9).isoformat()},
    )
    assert got.status_code == 200, got.text
    body = got.json()
    v1, v2 = tiny.extra["v1"], tiny.extra["v2"]
    rows = [
        (i["version_id"], i["planned_import_kw"], i["measured_import_kw"], i["samples"])
        for i in body["intervals"]
    ]
    assert rows == [
        (v1, 4.0, 4.0, 2),
        (v1, 4.0, None, 0),
        (v1, 11.0, None, 0),  # v2 was made at 00:40, after this interval began
        (v2, 1.0, 2.0, 1),
        (v2, 2.0, None, 0),
        (v2, 3.0, 6.0, 1),
        (v2, 4.0, None, 0),
        (v1, 0.0, None, 0),  # v2's horizon ends at 01:45: v1 is in force again
        (None, None, 1.0, 1),
    ]
    assert [i["deviation_kw"] for i in body["intervals"]] == [
        0.0,
        None,
        None,
        1.0,
        None,
        3.0,
        None,
        None,
        None,
    ]
    assert body["totals"] == {
        "intervals": 9,
        "intervals_compared": 3,
        "planned_energy_kwh": pytest.approx(29 * 0.25),
        "measured_energy_kwh": pytest.approx(13 * 0.25),
        "mean_absolute_deviation_kw": pytest.approx(4 / 3),
    }


def test_planned_vs_actual_validation(client: TestClient, tiny: World) -> None:
    url, headers = "/trader/sites/depot-1/planned-vs-actual", trader(tiny)
    for params, field in (
        ({"start": "2026-03-02T00:00:00", "end": q(4).isoformat()}, "start"),
        ({"start": q(0).isoformat()}, "end"),
        ({"start": (q(0) + dt.timedelta(minutes=5)).isoformat(), "end": q(4).isoformat()}, "start"),
        ({"start": q(4).isoformat(), "end": q(0).isoformat()}, "end"),
        ({"start": q(0).isoformat(), "end": (q(0) + dt.timedelta(days=40)).isoformat()}, "end"),
    ):
        refused = client.get(url, headers=headers, params=params)
        assert refused.status_code == 422, params
        assert any(error["loc"][-1] == field for error in refused.json()["detail"]), refused.text
    window = {"start": q(0).isoformat(), "end": q(4).isoformat()}
    assert (
        client.get("/trader/sites/nowhere/planned-vs-actual", headers=headers, params=window).status_code
        == 404
    )
    # a site without plans or telemetry: every interval unknown
    empty = client.get("/trader/sites/depot-2/planned-vs-actual", headers=headers, params=window).json()
    assert {i["planned_import_kw"] for i in empty["intervals"]} == {None}
    assert empty["totals"]["mean_absolute_deviation_kw"] is None


# -------------------------------------------------------------------------------- flexibility


def test_flexibility_by_hand(client: TestClient, tiny: World) -> None:
    """Against the latest plan (v2, 00:45-01:45), the hour 01:00-02:00 is not covered; against v1
    it would be. So the hand figures are for v1 alone, with v2 removed below."""
    headers = trader(tiny)
    got = client.get(
        "/trader/flexibility", headers=headers, params={"start": at(0).isoformat(), "end": at(3).isoformat()}
    )
    assert got.status_code == 200, got.text
    body = got.json()
    depot_1 = next(s for s in body["sites"] if s["site_id"] == "depot-1")
    assert depot_1["version_id"] == tiny.extra["v2"]
    # v2 covers 00:45-01:45: no whole hour
    assert [(h["up_kw"], h["down_kw"]) for h in depot_1["hours"]] == [(None, None)] * 3


def test_flexibility_of_v1_by_hand(client: TestClient, session: Session, tiny: World) -> None:
    """v1 per step (A: max charge 11, max discharge 10; B: 7 kW, plugged steps 2-5; limits 20 / -5):

    down = min(sum(p + dmax), site + 5) = min([14,14,21,21,15,15,10,10], [9,9,16,16,10,10,5,5])
    up   = min(sum(cmax - p), 20 - site) = min([7,7,7,7,13,13,11,11], [16,16,9,9,15,15,20,20])
    Hour 00-01: up 7, down 9; hour 01-02: up 11, down 5 (the smallest step of each hour).
    """
    version = session.get(ScheduleVersion, tiny.extra["v2"])
    session.delete(version)
    session.commit()
    steps = schedules.flexibility_frame(
        schedules.load_plan(session, tiny.extra["v1"]), tiny_scenario(at(0), 8, 0.2)
    )
    assert list(steps["down_kw"]) == [9, 9, 16, 16, 10, 10, 5, 5]
    assert list(steps["up_kw"]) == [7, 7, 7, 7, 13, 13, 11, 11]
    body = client.get(
        "/trader/flexibility",
        headers=trader(tiny),
        params={"start": at(0).isoformat(), "end": at(3).isoformat()},
    ).json()
    depot_1 = next(s for s in body["sites"] if s["site_id"] == "depot-1")
    depot_2 = next(s for s in body["sites"] if s["site_id"] == "depot-2")
    assert [(h["up_kw"], h["down_kw"]) for h in depot_1["hours"]] == [(7, 9), (11, 5), (None, None)]
    assert depot_2["version_id"] is None and {h["up_kw"] for h in depot_2["hours"]} == {None}
    assert [(h["up_kw"], h["down_kw"], h["sites"]) for h in body["portfolio"]] == [
        (7, 9, 1),
        (11, 5, 1),
        (None, None, 0),
    ]


def test_flexibility_needs_whole_hours(client: TestClient, tiny: World) -> None:
    refused = client.get(
        "/trader/flexibility",
        headers=trader(tiny),
        params={"start": q(1).isoformat(), "end": at(2).isoformat()},
    )
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["query", "start"]


# --------------------------------------------------------------------------------------- KPIs


def test_kpis_by_hand(client: TestClient, tiny: World) -> None:
    """Window 00:00-02:00. In force: v1 at 00:00, 00:15, 00:30, 01:45 (site 4, 4, 11, 0 at 0.2/kWh);
    v2 from 00:45 to 01:45 (site 1, 2, 3, 4 at 0.3/kWh)."""
    got = client.get(
        "/trader/kpis", headers=trader(tiny), params={"start": at(0).isoformat(), "end": at(2).isoformat()}
    )
    assert got.status_code == 200, got.text
    body = got.json()
    depot_1 = next(s for s in body["sites"] if s["site_id"] == "depot-1")
    assert depot_1 == {
        "site_id": "depot-1",
        "currency": "EUR",
        "energy_cost_planned": pytest.approx(19 * 0.25 * 0.2 + 10 * 0.25 * 0.3),
        "peak_import_kw_planned": 11.0,
        "peak_import_kw_measured": 6.0,
        # v1: 4 + 4 + 11 + 0 kW; v2: 1 + 3 + 3 + 4 kW of charging, one quarter hour each
        "energy_to_vehicles_kwh_planned": pytest.approx((19 + 11) * 0.25),
        "energy_to_vehicles_kwh_measured": pytest.approx(4 * 0.25),  # the -2 kW reading is discharge
        "v2g_export_kwh_planned": pytest.approx(1 * 0.25),  # v2's A at 01:00; v1's -2 kW are not in force
        "unmet_energy_kwh": pytest.approx(0.5 + 1.0),  # A from v2, B from v1
        "schedule_versions": 2,
        "statuses": {"optimal": 1, "feasible": 1},
        "share_optimal": 0.5,
    }
    depot_2 = next(s for s in body["sites"] if s["site_id"] == "depot-2")
    assert depot_2["energy_cost_planned"] is None and depot_2["schedule_versions"] == 0
    assert depot_2["share_optimal"] is None
    portfolio = body["portfolio"]
    assert portfolio["energy_cost_planned"] == pytest.approx(depot_1["energy_cost_planned"])
    assert portfolio["peak_import_kw_planned"] == 11.0 and portfolio["peak_import_kw_measured"] == 6.0
    assert portfolio["statuses"] == {"optimal": 1, "feasible": 1} and portfolio["schedule_versions"] == 2

    later = client.get(
        "/trader/kpis", headers=trader(tiny), params={"start": at(0.5).isoformat(), "end": at(2).isoformat()}
    )
    assert later.json()["portfolio"]["schedule_versions"] == 1  # v1 was made before 00:30


# -------------------------------------------------------------------------------------- what-if


def test_what_if_resolves_and_stores_nothing(
    client: TestClient, session: Session, stored: World, solved: tuple[Scenario, ScheduleResult]
) -> None:
    _, result = solved
    before = versions_count(session)
    prices = [0.10] * 12 + [0.90] * 12  # the cheap hours become dear and the other way round
    got = client.post(
        "/trader/what-if", headers=trader(stored), json={"site_id": "depot-1", "import_price_per_kwh": prices}
    )
    assert got.status_code == 200, got.text
    body = got.json()
    assert versions_count(session) == before
    assert body["version_id"] == stored.extra["latest"]
    assert body["stored"]["total_cost"] == pytest.approx(result.total_cost, abs=1e-6)
    assert body["stored"]["site_import_kw"] == pytest.approx(
        list(result.evaluation.import_kw - result.evaluation.export_kw)
    )
    assert body["what_if"]["import_price_per_kwh"] == prices
    assert body["what_if"]["status"] == "optimal"
    # re-optimising at the new prices never costs more than keeping the stored plan at them
    assert body["what_if"]["total_cost"] <= body["stored_total_cost_at_new_prices"] + 1e-6
    stored_early = sum(s["stored_import_kw"] for s in body["steps"][:12])
    what_if_early = sum(s["what_if_import_kw"] for s in body["steps"][:12])
    assert what_if_early > stored_early + 1.0  # charging moved to the now cheap first three hours
    assert len(body["steps"]) == 24


def test_what_if_multiplier_and_offset(client: TestClient, session: Session, stored: World) -> None:
    headers = trader(stored)
    doubled = client.post(
        "/trader/what-if", headers=headers, json={"site_id": "depot-1", "price_multiplier": 2.0}
    ).json()
    assert doubled["what_if"]["import_price_per_kwh"] == pytest.approx([0.8] * 12 + [0.2] * 12)
    # same relative prices: the same plan, twice the import cost (export revenue unchanged)
    assert doubled["what_if"]["peak_import_kw"] == pytest.approx(
        doubled["stored"]["peak_import_kw"], abs=1e-4
    )
    offset = client.post(
        "/trader/what-if", headers=headers, json={"site_id": "depot-1", "price_offset_per_kwh": 0.05}
    ).json()
    assert offset["what_if"]["import_price_per_kwh"] == pytest.approx([0.45] * 12 + [0.15] * 12)
    assert versions_count(session) == 2


def test_what_if_refusals(client: TestClient, stored: World) -> None:
    headers = trader(stored)
    short = client.post(
        "/trader/what-if", headers=headers, json={"site_id": "depot-1", "import_price_per_kwh": [0.1] * 5}
    )
    assert short.status_code == 422
    assert short.json()["detail"][0]["loc"] == ["body", "import_price_per_kwh"]
    assert "24" in short.json()["detail"][0]["msg"]
    both = client.post(
        "/trader/what-if",
        headers=headers,
        json={"site_id": "depot-1", "price_multiplier": 2, "price_offset_per_kwh": 1},
    )
    assert both.status_code == 422 and "exactly one" in both.text
    nothing = client.post("/trader/what-if", headers=headers, json={"site_id": "depot-1"})
    assert nothing.status_code == 422
    not_finite = client.post(
        "/trader/what-if", headers=headers, content='{"site_id": "depot-1", "price_multiplier": NaN}'
    )
    assert not_finite.status_code == 422
    no_version = client.post(
        "/trader/what-if", headers=headers, json={"site_id": "depot-2", "price_multiplier": 2}
    )
    assert no_version.status_code == 404 and "has no schedule version" in no_version.json()["detail"]
    unknown = client.post(
        "/trader/what-if", headers=headers, json={"site_id": "nowhere", "price_multiplier": 2}
    )
    assert unknown.status_code == 404 and "nowhere" in unknown.json()["detail"]


# ------------------------------------------------------------------------------- ownership


def test_traders_share_the_portfolio(client: TestClient, stored: World) -> None:
    """Traders own no sites: every trader sees every site; what is not there answers 404 to all."""
    mine = client.get("/trader/sites/depot-1/schedule", headers=trader(stored))
    theirs = client.get("/trader/sites/depot-1/schedule", headers=stored.headers(Role.TRADER, other=True))
    assert theirs.status_code == 200 and theirs.json() == mine.json()
    for headers in (trader(stored), stored.headers(Role.TRADER, other=True)):
        assert client.get("/trader/schedules/424242", headers=headers).status_code == 404


# --------------------------------------------------------------------------------- the grid


@settings(max_examples=60, deadline=None)
@given(
    step_minutes=st.sampled_from([5, 10, 15, 20, 30, 45, 60, 120]),
    offset_steps=st.integers(0, 12),
    values=st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=30),
)
def test_on_grid_keeps_energy_and_means(step_minutes: int, offset_steps: int, values: list[float]) -> None:
    """Energy summed over a whole number of grid intervals is kept; a mean of a constant is that constant."""
    step = dt.timedelta(minutes=step_minutes)
    index = pd.date_range(DAY + offset_steps * step, periods=len(values), freq=step, tz=UTC)
    hours = step_minutes / 60
    frame = pd.DataFrame({"kw": values, "kwh": np.asarray(values) * hours, "one": 1.0}, index=index)
    gridded = schedules.on_grid(frame, step, {"kw": "mean", "kwh": "sum", "one": "mean"})
    assert ((pd.DatetimeIndex(gridded.index).minute % 15) == 0).all()
    assert np.allclose(gridded["one"], 1.0)
    assert np.allclose(gridded["kwh"], gridded["kw"] * 0.25)
    end = index[-1] + step
    covered = (gridded.index[0] >= index[0]) if len(gridded) else True
    assert covered and all(start + dt.timedelta(minutes=15) <= end for start in gridded.index)
    whole = pd.Timedelta(step * len(values)) % pd.Timedelta(minutes=15) == pd.Timedelta(0)
    if whole and (index[0].minute % 15 == 0):
        assert math.isclose(gridded["kwh"].sum(), sum(values) * hours, abs_tol=1e-6)


# ------------------------------------------------------------------------------ authorization


def _window(hours: float = 2) -> dict[str, Any]:
    return {"params": {"start": at(0).isoformat(), "end": at(hours).isoformat()}}


ENDPOINTS = [
    Endpoint("GET", "/trader/schedules", TRADER, 200),
    Endpoint(
        "GET",
        "/trader/schedules/{version_id}",
        TRADER,
        200,
        path_params=lambda w: {"version_id": w.extra["latest"]},
    ),
    Endpoint(
        "GET", "/trader/sites/{site_id}/schedule", TRADER, 200, path_params=lambda w: {"site_id": w.site.id}
    ),
    Endpoint("GET", "/trader/portfolio/schedule", TRADER, 200),
    Endpoint(
        "GET",
        "/trader/sites/{site_id}/planned-vs-actual",
        TRADER,
        200,
        lambda w: _window(),
        lambda w: {"site_id": w.site.id},
    ),
    Endpoint("GET", "/trader/flexibility", TRADER, 200, lambda w: _window()),
    Endpoint("GET", "/trader/kpis", TRADER, 200, lambda w: _window()),
    Endpoint(
        "POST",
        "/trader/what-if",
        TRADER,
        200,
        lambda w: {"json": {"site_id": w.site.id, "price_multiplier": 1.5, "time_limit_s": 10}},
    ),
]


@pytest.mark.parametrize("caller", CALLERS, ids=lambda caller: caller.value if caller else "anonymous")
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda endpoint: f"{endpoint.method} {endpoint.path}")
def test_authorization_matrix(client: TestClient, stored: World, endpoint: Endpoint, caller: Caller) -> None:
    check_endpoint(client, stored, endpoint, caller)
