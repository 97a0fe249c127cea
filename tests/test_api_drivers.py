"""The drivers' API on SQLite and PostgreSQL: vehicles, V2G consent, sessions, overrides, energy.

Every route is in the authorization matrix (drivers only), and every route that names a vehicle or a
session answers 404 to another driver.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from api_world import CALLERS, DRIVER, ApiClient, Caller, Endpoint, TestClient, World, check_endpoint, unique
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db.models import (
    Charger,
    ChargingSession,
    Role,
    ScheduleStatus,
    ScheduleVersion,
    SessionOverride,
    V2gConsent,
    Vehicle,
    utcnow,
)

T0 = dt.datetime(2026, 6, 1, 8, 0, tzinfo=dt.UTC)
"""Long before the tests run: sessions in the past, open or stopped."""


def hours(n: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=n)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat()


def parse(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    assert moment.utcoffset() == dt.timedelta(0), f"{text} is not UTC with an offset"
    return moment


def vehicle_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Leaf",
        "battery_kwh": 62.0,
        "max_charge_kw": 11.0,
        "max_discharge_kw": 10.0,
        "v2g_capable": True,
        "departure_time": "07:30",
        "target_soc_percent": 80,
    }
    return {**body, **changes}


@pytest.fixture
def fleet(world: World, session: Session) -> World:
    """``world`` with, in ``extra``: the driver's V2G vehicle (with consent in force) and a plain one,
    the other driver's vehicle, a charger at each site, the driver's open session at ``site`` and
    stopped one at ``other_site``, and the other driver's open session."""
    driver, other = world.users[Role.DRIVER], world.others[Role.DRIVER]
    v2g = Vehicle(
        owner_id=driver.id,
        name="Leaf",
        battery_kwh=62,
        max_charge_kw=11,
        max_discharge_kw=10,
        v2g_capable=True,
        id_token="RFID-LEAF",
        departure_time="07:30",
    )
    plain = Vehicle(owner_id=driver.id, name="Zoe", battery_kwh=52, max_charge_kw=22, max_discharge_kw=0)
    others = Vehicle(
        owner_id=other.id,
        name="Ioniq",
        battery_kwh=77,
        max_charge_kw=11,
        max_discharge_kw=11,
        v2g_capable=True,
    )
    charger = Charger(site_id=world.site.id, charge_point_id="cp-1", evse_id=1, max_kw=22, bidirectional=True)
    other_charger = Charger(site_id=world.other_site.id, charge_point_id="cp-9", evse_id=1, max_kw=11)
    session.add_all([v2g, plain, others, charger, other_charger])
    session.flush()
    session.add(V2gConsent(vehicle_id=v2g.id, min_reserve_kwh=20, given_at=hours(-24), withdrawn_at=None))
    session.add(V2gConsent(vehicle_id=others.id, min_reserve_kwh=30, given_at=hours(-24), withdrawn_at=None))
    open_session = ChargingSession(
        site_id=world.site.id,
        charger_id=charger.id,
        evse_id=1,
        transaction_id="tx-1",
        vehicle_id=v2g.id,
        id_token="RFID-LEAF",
        started_at=hours(0),
        energy_kwh=12.5,
        energy_request_kwh=30.0,
        soc_at_start_percent=35.0,
    )
    stopped = ChargingSession(
        site_id=world.other_site.id,
        charger_id=other_charger.id,
        evse_id=1,
        transaction_id="tx-2",
        vehicle_id=plain.id,
        started_at=hours(-48),
        stopped_at=hours(-40),
        energy_kwh=20.0,
    )
    others_session = ChargingSession(
        site_id=world.site.id,
        charger_id=charger.id,
        evse_id=1,
        transaction_id="tx-3",
        vehicle_id=others.id,
        started_at=hours(1),
        energy_kwh=7.0,
    )
    session.add_all([open_session, stopped, others_session])
    session.commit()
    world.extra.update(
        vehicle=v2g.id,
        plain=plain.id,
        others_vehicle=others.id,
        charger=charger.id,
        open_session=open_session.id,
        stopped_session=stopped.id,
        others_session=others_session.id,
    )
    return world


def driver_headers(world: World) -> dict[str, str]:
    return world.headers(Role.DRIVER)


def future(days: float = 1) -> dt.datetime:
    return utcnow() + dt.timedelta(days=days)


def field_of(response: Any) -> list[Any]:
    """The ``loc`` of a 422's (first) error."""
    assert response.status_code == 422, response.text
    return list(response.json()["detail"][0]["loc"])


# ------------------------------------------------------------------------------ authorization matrix


def _vehicle(world: World) -> dict[str, Any]:
    return {"vehicle_id": world.extra["vehicle"]}


def _open_session(world: World) -> dict[str, Any]:
    return {"session_id": world.extra["open_session"]}


ENDPOINTS = [
    Endpoint(
        "POST",
        "/driver/vehicles",
        DRIVER,
        201,
        lambda world: {"json": vehicle_body(id_token=f"RFID-{next(unique)}")},
    ),
    Endpoint("GET", "/driver/vehicles", DRIVER, 200),
    Endpoint("GET", "/driver/vehicles/{vehicle_id}", DRIVER, 200, path_params=_vehicle),
    Endpoint(
        "PATCH",
        "/driver/vehicles/{vehicle_id}",
        DRIVER,
        200,
        lambda world: {"json": {"target_soc_percent": 90}},
        _vehicle,
    ),
    Endpoint("GET", "/driver/vehicles/{vehicle_id}/consent", DRIVER, 200, path_params=_vehicle),
    Endpoint(
        "PUT",
        "/driver/vehicles/{vehicle_id}/consent",
        DRIVER,
        200,
        lambda world: {"json": {"min_reserve_kwh": 25}},
        _vehicle,
    ),
    Endpoint("DELETE", "/driver/vehicles/{vehicle_id}/consent", DRIVER, 200, path_params=_vehicle),
    Endpoint("GET", "/driver/sessions", DRIVER, 200),
    Endpoint("GET", "/driver/sessions/{session_id}", DRIVER, 200, path_params=_open_session),
    Endpoint(
        "POST",
        "/driver/sessions/{session_id}/override",
        DRIVER,
        201,
        lambda world: {"json": {"charge_now": True}},
        _open_session,
    ),
    Endpoint("GET", "/driver/sessions/{session_id}/overrides", DRIVER, 200, path_params=_open_session),
    Endpoint("GET", "/driver/energy", DRIVER, 200),
]


@pytest.mark.parametrize("caller", CALLERS, ids=lambda caller: caller.value if caller else "anonymous")
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda endpoint: f"{endpoint.method} {endpoint.path}")
def test_authorization_matrix(client: TestClient, fleet: World, endpoint: Endpoint, caller: Caller) -> None:
    check_endpoint(client, fleet, endpoint, caller)


# ----------------------------------------------------------------------------------------- ownership

OWNED = [endpoint for endpoint in ENDPOINTS if "{" in endpoint.path]


@pytest.mark.parametrize("endpoint", OWNED, ids=lambda endpoint: f"{endpoint.method} {endpoint.path}")
def test_another_drivers_resource_is_not_found(client: TestClient, fleet: World, endpoint: Endpoint) -> None:
    """The other driver calls each route with this driver's vehicle or session: 404, and no change."""
    other = fleet.headers(Role.DRIVER, other=True)
    before = client.get(f"/driver/vehicles/{fleet.extra['vehicle']}", headers=driver_headers(fleet)).json()
    response = client.request(endpoint.method, endpoint.url(fleet), headers=other, **endpoint.request(fleet))
    assert response.status_code == 404, response.text
    # The owner gets through the same call (so the 404 is about ownership, not the request).
    after = client.get(f"/driver/vehicles/{fleet.extra['vehicle']}", headers=driver_headers(fleet)).json()
    assert after == before
    own = client.request(
        endpoint.method, endpoint.url(fleet), headers=driver_headers(fleet), **endpoint.request(fleet)
    )
    assert own.status_code == endpoint.success, own.text


def test_lists_hold_only_the_callers_own(client: TestClient, fleet: World) -> None:
    headers = driver_headers(fleet)
    vehicles = client.get("/driver/vehicles", headers=headers).json()
    assert [vehicle["id"] for vehicle in vehicles["items"]] == [fleet.extra["vehicle"], fleet.extra["plain"]]
    sessions = client.get("/driver/sessions", headers=headers).json()
    assert {item["id"] for item in sessions["items"]} == {
        fleet.extra["open_session"],
        fleet.extra["stopped_session"],
    }
    theirs = client.get(
        "/driver/sessions", headers=headers, params={"vehicle_id": fleet.extra["others_vehicle"]}
    )
    assert theirs.status_code == 404
    energy = client.get("/driver/energy", headers=headers).json()
    assert [vehicle["vehicle_id"] for vehicle in energy["vehicles"]] == [
        fleet.extra["vehicle"],
        fleet.extra["plain"],
    ]


# ------------------------------------------------------------------------------------------ vehicles


def test_vehicle_flow(client: TestClient, world: World) -> None:
    headers = driver_headers(world)
    created = client.post("/driver/vehicles", headers=headers, json=vehicle_body(id_token="RFID-1"))
    assert created.status_code == 201, created.text
    vehicle = created.json()
    assert vehicle["id_token"] == "RFID-1"
    assert (vehicle["battery_kwh"], vehicle["departure_time"], vehicle["target_soc_percent"]) == (
        62,
        "07:30",
        80,
    )
    parse(vehicle["created_at"])

    read = client.get(f"/driver/vehicles/{vehicle['id']}", headers=headers)
    assert read.json() == vehicle

    changed = client.patch(
        f"/driver/vehicles/{vehicle['id']}",
        headers=headers,
        json={"departure_time": "06:45", "target_soc_percent": 95, "id_token": None},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json() == {
        **vehicle,
        "departure_time": "06:45",
        "target_soc_percent": 95,
        "id_token": None,
    }
    assert client.get(f"/driver/vehicles/{vehicle['id']}", headers=headers).json() == changed.json()

    plain = client.post(
        "/driver/vehicles",
        headers=headers,
        json={"name": "Zoe", "battery_kwh": 52, "max_charge_kw": 22},
    )
    assert plain.status_code == 201, plain.text
    assert plain.json()["max_discharge_kw"] == 0
    assert plain.json()["v2g_capable"] is False
    assert plain.json()["departure_time"] is None
    assert plain.json()["target_soc_percent"] == 80


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"battery_kwh": 0}, "battery_kwh"),
        ({"battery_kwh": -5}, "battery_kwh"),
        ({"max_charge_kw": -1}, "max_charge_kw"),
        ({"max_discharge_kw": -1}, "max_discharge_kw"),
        ({"v2g_capable": False}, "max_discharge_kw"),  # 10 kW discharge on a vehicle that cannot
        ({"departure_time": "25:00"}, "departure_time"),
        ({"departure_time": "7:30"}, "departure_time"),
        ({"target_soc_percent": 101}, "target_soc_percent"),
        ({"target_soc_percent": -1}, "target_soc_percent"),
        ({"id_token": ""}, "id_token"),
        ({"id_token": "x" * 65}, "id_token"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_vehicle_input_is_validated(
    client: TestClient, world: World, session: Session, changes: dict[str, Any], field: str
) -> None:
    response = client.post("/driver/vehicles", headers=driver_headers(world), json=vehicle_body(**changes))
    assert field_of(response) == ["body", field]
    assert session.scalars(select(Vehicle)).all() == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": None}, "name"),
        ({"battery_kwh": None}, "battery_kwh"),
        ({"target_soc_percent": None}, "target_soc_percent"),
        ({"max_discharge_kw": 5}, "max_discharge_kw"),  # the plain vehicle is not v2g_capable
        ({"departure_time": "12:60"}, "departure_time"),
        ({"owner_id": 1}, "owner_id"),
    ],
)
def test_vehicle_update_is_validated(
    client: TestClient, fleet: World, session: Session, changes: dict[str, Any], field: str
) -> None:
    url = f"/driver/vehicles/{fleet.extra['plain']}"
    before = client.get(url, headers=driver_headers(fleet)).json()
    assert field_of(client.patch(url, headers=driver_headers(fleet), json=changes)) == ["body", field]
    assert client.get(url, headers=driver_headers(fleet)).json() == before


def test_vehicle_update_may_not_contradict_the_consent_in_force(client: TestClient, fleet: World) -> None:
    url = f"/driver/vehicles/{fleet.extra['vehicle']}"
    headers = driver_headers(fleet)
    # The consent keeps 20 kWh: the battery cannot be smaller, nor the vehicle stop being V2G capable.
    assert field_of(client.patch(url, headers=headers, json={"battery_kwh": 19})) == ["body", "battery_kwh"]
    stop_v2g = client.patch(url, headers=headers, json={"v2g_capable": False, "max_discharge_kw": 0})
    assert field_of(stop_v2g) == ["body", "v2g_capable"]
    assert client.patch(url, headers=headers, json={"battery_kwh": 20}).status_code == 200

    assert client.delete(f"{url}/consent", headers=headers).status_code == 200
    stopped = client.patch(url, headers=headers, json={"v2g_capable": False, "max_discharge_kw": 0})
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["v2g_capable"], stopped.json()["max_discharge_kw"]) == (False, 0)


def test_id_token_is_unique(client: TestClient, fleet: World) -> None:
    headers = driver_headers(fleet)
    taken = client.post("/driver/vehicles", headers=headers, json=vehicle_body(id_token="RFID-LEAF"))
    assert taken.status_code == 409
    assert "RFID-LEAF" in taken.json()["detail"]
    # Another driver cannot take it either, and cannot move it onto their vehicle.
    other = fleet.headers(Role.DRIVER, other=True)
    assert (
        client.post("/driver/vehicles", headers=other, json=vehicle_body(id_token="RFID-LEAF")).status_code
        == 409
    )
    moved = client.patch(
        f"/driver/vehicles/{fleet.extra['others_vehicle']}", headers=other, json={"id_token": "RFID-LEAF"}
    )
    assert moved.status_code == 409
    assert "RFID-LEAF" in moved.json()["detail"]
    assert (
        client.get(f"/driver/vehicles/{fleet.extra['others_vehicle']}", headers=other).json()["id_token"]
        is None
    )
    # Sending a vehicle's own token again is no conflict.
    url = f"/driver/vehicles/{fleet.extra['vehicle']}"
    assert (
        client.patch(url, headers=headers, json={"id_token": "RFID-LEAF", "name": "Leaf 2"}).status_code
        == 200
    )


def test_vehicles_are_paginated(client: TestClient, world: World) -> None:
    headers = driver_headers(world)
    ids = [
        client.post("/driver/vehicles", headers=headers, json=vehicle_body(name=f"Car {n}")).json()["id"]
        for n in range(5)
    ]
    page = client.get("/driver/vehicles", headers=headers, params={"offset": 1, "limit": 3}).json()
    assert (page["total"], page["offset"], page["limit"]) == (5, 1, 3)
    assert [vehicle["id"] for vehicle in page["items"]] == ids[1:4]
    assert client.get("/driver/vehicles", headers=headers, params={"limit": 0}).status_code == 422
    assert client.get("/driver/vehicles", headers=headers, params={"offset": -1}).status_code == 422


# ------------------------------------------------------------------------------------------ consent


def stored_consents(session: Session) -> list[dict[str, Any]]:
    """The consent table as the database holds it, read afresh."""
    session.expire_all()
    rows = session.execute(select(V2gConsent.__table__).order_by(V2gConsent.id)).mappings()
    return [dict(row) for row in rows]


def test_consent_flow_appends_and_asks_for_replans(
    client: TestClient, api: ApiClient, fleet: World, session: Session
) -> None:
    headers = driver_headers(fleet)
    vehicle = fleet.extra["vehicle"]
    url = f"/driver/vehicles/{vehicle}/consent"
    api.replans.take()

    initial = client.get(url, headers=headers).json()
    assert initial["current"]["min_reserve_kwh"] == 20
    assert len(initial["history"]) == 1

    rows = stored_consents(session)
    changed = client.put(url, headers=headers, json={"min_reserve_kwh": 25})
    assert changed.status_code == 200, changed.text
    assert changed.json()["current"]["min_reserve_kwh"] == 25
    assert changed.json()["current"]["supersedes_id"] == initial["current"]["id"]
    # The vehicle is plugged in at ``site`` only (its stopped sessions do not count).
    assert api.replans.take() == {fleet.site.id: [f"consent:vehicle {vehicle}"]}
    assert stored_consents(session)[: len(rows)] == rows

    rows = stored_consents(session)
    withdrawn = client.delete(url, headers=headers)
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["current"] is None
    assert api.replans.take() == {fleet.site.id: [f"consent:vehicle {vehicle}"]}
    assert stored_consents(session)[: len(rows)] == rows

    again = client.delete(url, headers=headers)
    assert again.status_code == 409
    assert f"vehicle {vehicle}" in again.json()["detail"]
    assert api.replans.take() == {}

    history = client.get(url, headers=headers).json()["history"]
    assert [(state["min_reserve_kwh"], state["active"]) for state in history] == [
        (20, True),
        (25, True),
        (25, False),
    ]
    assert [state["id"] for state in history] == sorted(state["id"] for state in history)
    assert history[2]["given_at"] == history[1]["given_at"]
    assert parse(history[2]["withdrawn_at"]) >= parse(history[2]["given_at"])
    assert [row["vehicle_id"] for row in stored_consents(session)].count(vehicle) == 3


def test_consent_for_a_vehicle_not_plugged_in_asks_for_no_replan(
    client: TestClient, api: ApiClient, fleet: World, session: Session
) -> None:
    headers = driver_headers(fleet)
    created = client.post("/driver/vehicles", headers=headers, json=vehicle_body()).json()
    api.replans.take()
    given = client.put(
        f"/driver/vehicles/{created['id']}/consent", headers=headers, json={"min_reserve_kwh": 0}
    )
    assert given.status_code == 200, given.text
    assert given.json()["history"] == [given.json()["current"]]
    assert api.replans.take() == {}


def test_consent_input_is_validated(client: TestClient, fleet: World, session: Session) -> None:
    headers = driver_headers(fleet)
    rows = stored_consents(session)
    plain = client.put(
        f"/driver/vehicles/{fleet.extra['plain']}/consent", headers=headers, json={"min_reserve_kwh": 10}
    )
    assert field_of(plain) == ["path", "vehicle_id"]
    assert "not v2g_capable" in plain.json()["detail"][0]["msg"]
    url = f"/driver/vehicles/{fleet.extra['vehicle']}/consent"
    too_much = client.put(url, headers=headers, json={"min_reserve_kwh": 62.5})
    assert field_of(too_much) == ["body", "min_reserve_kwh"]
    assert "battery_kwh 62" in too_much.json()["detail"][0]["msg"]
    assert field_of(client.put(url, headers=headers, json={"min_reserve_kwh": -1})) == [
        "body",
        "min_reserve_kwh",
    ]
    assert field_of(client.put(url, headers=headers, json={})) == ["body", "min_reserve_kwh"]
    assert client.put(url, headers=headers, json={"min_reserve_kwh": 62}).status_code == 200
    assert len(stored_consents(session)) == len(rows) + 1
    assert (
        client.delete(f"/driver/vehicles/{fleet.extra['plain']}/consent", headers=headers).status_code == 409
    )


consent_actions = st.lists(
    st.one_of(st.none(), st.floats(min_value=0, max_value=62, allow_nan=False)), min_size=1, max_size=6
)
"""A driver's consent actions: a reserve [kWh] to give, or ``None`` to withdraw."""


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=consent_actions)
def test_consent_history_only_grows(
    client: TestClient, world: World, session: Session, actions: list[float | None]
) -> None:
    """Whatever the driver does, every stored row stays as it was and the history ends in the state
    the last successful action left."""
    headers = driver_headers(world)
    vehicle = client.post("/driver/vehicles", headers=headers, json=vehicle_body()).json()["id"]
    url = f"/driver/vehicles/{vehicle}/consent"
    in_force: float | None = None
    for action in actions:
        rows = stored_consents(session)
        if action is None:
            response = client.delete(url, headers=headers)
            assert response.status_code == (409 if in_force is None else 200)
            in_force = None
        else:
            response = client.put(url, headers=headers, json={"min_reserve_kwh": action})
            assert response.status_code == 200
            in_force = action
        assert stored_consents(session)[: len(rows)] == rows
        state = client.get(url, headers=headers).json()
        assert (state["current"] or {}).get("min_reserve_kwh") == in_force


# ----------------------------------------------------------------------------------------- sessions


def add_sessions(
    session: Session, fleet: World, starts: list[dt.datetime], vehicle: str = "plain"
) -> list[int]:
    rows = [
        ChargingSession(
            site_id=fleet.site.id,
            charger_id=fleet.extra["charger"],
            evse_id=1,
            transaction_id=f"tx-{next(unique)}",
            vehicle_id=fleet.extra[vehicle],
            started_at=start,
            stopped_at=start + dt.timedelta(hours=2),
            energy_kwh=5.0,
        )
        for start in starts
    ]
    session.add_all(rows)
    session.commit()
    return [row.id for row in rows]


def test_sessions_are_paginated_and_filtered(client: TestClient, fleet: World, session: Session) -> None:
    headers = driver_headers(fleet)
    added = add_sessions(session, fleet, [hours(24 * n) for n in range(1, 6)])
    everything = client.get("/driver/sessions", headers=headers).json()
    assert everything["total"] == 7
    # Newest first.
    assert [item["id"] for item in everything["items"][:5]] == added[::-1]
    starts = [parse(item["started_at"]) for item in everything["items"]]
    assert starts == sorted(starts, reverse=True)

    page = client.get("/driver/sessions", headers=headers, params={"offset": 1, "limit": 2}).json()
    assert (page["total"], [item["id"] for item in page["items"]]) == (7, [added[3], added[2]])

    window = {"start": iso(hours(24)), "end": "2026-06-04T10:00:00+02:00"}  # [day 1, day 3) in UTC
    ranged = client.get("/driver/sessions", headers=headers, params=window).json()
    assert [item["id"] for item in ranged["items"]] == [added[1], added[0]]

    mine = client.get(
        "/driver/sessions", headers=headers, params={"vehicle_id": fleet.extra["vehicle"]}
    ).json()
    assert [item["id"] for item in mine["items"]] == [fleet.extra["open_session"]]


NAIVE_AND_REVERSED = [
    {"start": "2026-06-01T08:00:00"},
    {"end": "2026-06-01T08:00:00"},
    {"start": "2026-06-02T00:00:00Z", "end": "2026-06-01T00:00:00Z"},
    {"start": "yesterday"},
]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        *(("sessions", params) for params in [*NAIVE_AND_REVERSED, {"limit": 101}]),
        *(("overrides", params) for params in [*NAIVE_AND_REVERSED, {"limit": 101}]),
        *(("energy", params) for params in NAIVE_AND_REVERSED),
    ],
)
def test_naive_and_reversed_ranges_are_refused(
    client: TestClient, fleet: World, path: str, params: dict[str, str]
) -> None:
    url = {
        "sessions": "/driver/sessions",
        "overrides": f"/driver/sessions/{fleet.extra['open_session']}/overrides",
        "energy": "/driver/energy",
    }[path]
    assert client.get(url, headers=driver_headers(fleet), params=params).status_code == 422
    assert client.get(url, headers=driver_headers(fleet)).status_code == 200


def test_session_detail(client: TestClient, fleet: World, session: Session) -> None:
    headers = driver_headers(fleet)
    url = f"/driver/sessions/{fleet.extra['open_session']}"
    detail = client.get(url, headers=headers).json()
    assert detail["energy_kwh"] == 12.5
    assert (detail["energy_request_kwh"], detail["soc_at_start_percent"]) == (30, 35)
    assert detail["vehicle_id"] == fleet.extra["vehicle"]
    assert detail["stopped_at"] is None
    # No reported departure: the vehicle's default 07:30 at the (UTC) site, next after the 08:00 start.
    assert parse(detail["departure_at"]) == dt.datetime(2026, 6, 2, 7, 30, tzinfo=dt.UTC)
    assert detail["departure_source"] == "vehicle_default"
    assert detail["target_soc_percent"] == 80
    assert detail["override"] is None
    assert detail["planned"] is None

    departure = future()
    posted = client.post(
        f"{url}/override", headers=headers, json={"departure_at": iso(departure), "target_soc_percent": 90}
    )
    assert posted.status_code == 201, posted.text
    detail = client.get(url, headers=headers).json()
    assert detail["override"] == posted.json()
    assert (parse(detail["departure_at"]), detail["departure_source"]) == (departure, "override")
    assert detail["target_soc_percent"] == 90

    client.post(f"{url}/override", headers=headers, json={"no_v2g": True})
    detail = client.get(url, headers=headers).json()
    assert detail["override"]["no_v2g"] is True
    # The latest override sets no departure or target: the vehicle's defaults apply again.
    assert (detail["departure_source"], detail["target_soc_percent"]) == ("vehicle_default", 80)


def test_departure_default_is_local_time_at_the_site(
    client: TestClient, fleet: World, session: Session
) -> None:
    fleet.site.timezone = "Europe/Berlin"  # 07:30 CEST is 05:30 UTC
    session.commit()
    detail = client.get(
        f"/driver/sessions/{fleet.extra['open_session']}", headers=driver_headers(fleet)
    ).json()
    assert parse(detail["departure_at"]) == dt.datetime(2026, 6, 2, 5, 30, tzinfo=dt.UTC)

    charging = session.get(ChargingSession, fleet.extra["open_session"])
    assert charging is not None
    charging.departure_at = hours(9)
    session.commit()
    detail = client.get(
        f"/driver/sessions/{fleet.extra['open_session']}", headers=driver_headers(fleet)
    ).json()
    assert (parse(detail["departure_at"]), detail["departure_source"]) == (hours(9), "session")


def schedule(
    fleet: World, created: dt.datetime, sessions: dict[str, int], powers: dict[str, list[float]], **kw: Any
) -> ScheduleVersion:
    return ScheduleVersion(
        site_id=fleet.site.id,
        created_at=created,
        horizon_start=created,
        step_seconds=900,
        inputs={"scenario": {}, "sessions": sessions, "events": []},
        result_summary={},
        status=ScheduleStatus.OPTIMAL,
        plan={
            "site_import_kw": [0.0] * 4,
            "vehicles": {key: {"power_kw": power, "evse_id": "cp-1/1"} for key, power in powers.items()},
        },
        **kw,
    )


def test_planned_power_comes_from_the_latest_schedule(
    client: TestClient, fleet: World, session: Session
) -> None:
    url = f"/driver/sessions/{fleet.extra['open_session']}"
    mine, theirs = fleet.extra["open_session"], fleet.extra["others_session"]
    older = schedule(fleet, hours(0), {"ev-a": mine}, {"ev-a": [1.0, 1.0, 1.0, 1.0]})
    latest = schedule(
        fleet, hours(1), {"ev-b": theirs, "ev-c": mine}, {"ev-b": [5.0] * 4, "ev-c": [11.0, -10.0, 0.0, 2.5]}
    )
    what_if = schedule(fleet, hours(2), {"ev-a": mine}, {"ev-a": [0.0] * 4}, trigger="what_if")
    elsewhere = schedule(fleet, hours(3), {"ev-a": mine}, {"ev-a": [9.0] * 4})
    elsewhere.site_id = fleet.other_site.id
    session.add_all([older, latest, what_if, elsewhere])
    session.commit()

    planned = client.get(url, headers=driver_headers(fleet)).json()["planned"]
    assert planned["schedule_version_id"] == latest.id
    assert planned["power_kw"] == [11.0, -10.0, 0.0, 2.5]
    assert (planned["step_seconds"], planned["evse_id"], planned["status"]) == (900, "cp-1/1", "optimal")
    assert parse(planned["horizon_start"]) == hours(1)

    # A newer schedule that leaves the session out: nothing planned for it.
    session.add(schedule(fleet, hours(4), {"ev-b": theirs}, {"ev-b": [5.0] * 4}))
    session.commit()
    assert client.get(url, headers=driver_headers(fleet)).json()["planned"] is None


def test_a_latest_schedule_that_cannot_be_read_is_named(
    client: TestClient, fleet: World, session: Session
) -> None:
    broken = schedule(
        fleet, hours(1), {"ev-c": fleet.extra["open_session"]}, {"ev-c": [11.0, "fast", 0.0, 0.0]}
    )
    session.add(broken)
    session.commit()
    response = client.get(f"/driver/sessions/{fleet.extra['open_session']}", headers=driver_headers(fleet))
    assert response.status_code == 500
    assert response.json()["detail"] == (
        f"schedule version {broken.id}: plan.vehicles['ev-c'].power_kw[1] is not a number: 'fast'"
    )


# ---------------------------------------------------------------------------------------- overrides


def test_override_is_appended_and_asks_for_a_replan(
    client: TestClient, api: ApiClient, fleet: World, session: Session
) -> None:
    headers = driver_headers(fleet)
    session_id = fleet.extra["open_session"]
    url = f"/driver/sessions/{session_id}"
    api.replans.take()

    departure = future().astimezone(dt.timezone(dt.timedelta(hours=-5)))
    body = {"departure_at": iso(departure), "target_soc_percent": 85, "charge_now": True}
    first = client.post(f"{url}/override", headers=headers, json=body)
    assert first.status_code == 201, first.text
    assert api.replans.take() == {fleet.site.id: [f"override:session {session_id}"]}
    assert parse(first.json()["departure_at"]) == departure
    assert (first.json()["charge_now"], first.json()["no_v2g"], first.json()["target_soc_percent"]) == (
        True,
        False,
        85,
    )
    assert first.json()["created_by_id"] == fleet.users[Role.DRIVER].id

    second = client.post(f"{url}/override", headers=headers, json={"no_v2g": True})
    assert second.status_code == 201, second.text
    assert api.replans.take() == {fleet.site.id: [f"override:session {session_id}"]}

    listed = client.get(f"{url}/overrides", headers=headers).json()
    assert listed["total"] == 2
    assert listed["items"] == [first.json(), second.json()]
    page = client.get(f"{url}/overrides", headers=headers, params={"offset": 1, "limit": 1}).json()
    assert page["items"] == [second.json()]
    none_yet = client.get(f"{url}/overrides", headers=headers, params={"end": iso(hours(0))}).json()
    assert none_yet == {"items": [], "total": 0, "offset": 0, "limit": 50}
    stored = session.scalars(select(SessionOverride).order_by(SessionOverride.id)).all()
    assert [row.id for row in stored] == [first.json()["id"], second.json()["id"]]


def test_override_of_a_stopped_session_is_a_conflict(
    client: TestClient, api: ApiClient, fleet: World, session: Session
) -> None:
    api.replans.take()
    url = f"/driver/sessions/{fleet.extra['stopped_session']}/override"
    response = client.post(url, headers=driver_headers(fleet), json={"charge_now": True})
    assert response.status_code == 409
    assert "stopped" in response.json()["detail"]
    assert api.replans.take() == {}
    assert session.scalars(select(SessionOverride)).all() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, []),
        ({"charge_now": False, "no_v2g": False, "departure_at": None}, []),
        ({"departure_at": "2030-01-01T07:00:00"}, ["departure_at"]),  # naive
        ({"departure_at": "2026-06-01T07:00:00Z"}, ["departure_at"]),  # past, and before the start
        ({"departure_at": "tomorrow"}, ["departure_at"]),
        ({"target_soc_percent": 120}, ["target_soc_percent"]),
        ({"target_soc_percent": -1}, ["target_soc_percent"]),
        ({"charge_now": True, "colour": "red"}, ["colour"]),
    ],
)
def test_override_input_is_validated(
    client: TestClient, api: ApiClient, fleet: World, session: Session, body: dict[str, Any], field: list[str]
) -> None:
    api.replans.take()
    url = f"/driver/sessions/{fleet.extra['open_session']}/override"
    response = client.post(url, headers=driver_headers(fleet), json=body)
    assert field_of(response) == ["body", *field]
    if not field:
        assert "empty override" in response.json()["detail"][0]["msg"]
    assert api.replans.take() == {}
    assert session.scalars(select(SessionOverride)).all() == []


def test_override_departure_must_follow_the_start(client: TestClient, fleet: World, session: Session) -> None:
    """A session reported as starting tomorrow (a charger's clock ahead of ours): a departure in the
    future but before that start is refused for the start."""
    charging = session.get(ChargingSession, fleet.extra["open_session"])
    assert charging is not None
    charging.started_at = future(2)
    session.commit()
    url = f"/driver/sessions/{charging.id}/override"
    response = client.post(url, headers=driver_headers(fleet), json={"departure_at": iso(future(1))})
    assert field_of(response) == ["body", "departure_at"]
    assert "after the session started" in response.json()["detail"][0]["msg"]
    assert (
        client.post(url, headers=driver_headers(fleet), json={"departure_at": iso(future(3))}).status_code
        == 201
    )


# ------------------------------------------------------------------------------------------- energy


def test_energy_per_vehicle_and_in_total(client: TestClient, fleet: World, session: Session) -> None:
    headers = driver_headers(fleet)
    add_sessions(session, fleet, [hours(24), hours(48)])  # 5 kWh each, plain vehicle
    add_sessions(session, fleet, [hours(30)], vehicle="vehicle")
    no_reading = add_sessions(session, fleet, [hours(31)], vehicle="vehicle")
    row = session.get(ChargingSession, no_reading[0])
    assert row is not None
    row.energy_kwh = None
    session.commit()

    everything = client.get("/driver/energy", headers=headers).json()
    by_vehicle = {
        item["vehicle_id"]: (item["sessions"], item["charged_kwh"]) for item in everything["vehicles"]
    }
    assert by_vehicle == {fleet.extra["vehicle"]: (3, 17.5), fleet.extra["plain"]: (3, 30.0)}
    assert (everything["total_sessions"], everything["total_charged_kwh"]) == (6, 47.5)
    assert everything["start"] is None

    window = {"start": "2026-06-02T10:00:00+02:00", "end": iso(hours(48))}  # [day 1, day 2)
    ranged = client.get("/driver/energy", headers=headers, params=window).json()
    by_vehicle = {item["vehicle_id"]: (item["sessions"], item["charged_kwh"]) for item in ranged["vehicles"]}
    assert by_vehicle == {fleet.extra["vehicle"]: (2, 5.0), fleet.extra["plain"]: (1, 5.0)}
    assert (ranged["total_sessions"], ranged["total_charged_kwh"]) == (3, 10.0)
    assert parse(ranged["start"]) == hours(24)
    assert parse(ranged["end"]) == hours(48)
