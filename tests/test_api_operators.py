"""The grid operators' API on SQLite and PostgreSQL: programs, dispatch events kept as versions,
ownership, replan requests, and delivered performance from telemetry and plans, checked by hand."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_world import (
    CALLERS,
    GRID_OPERATOR,
    ApiClient,
    Caller,
    Endpoint,
    TestClient,
    World,
    check_endpoint,
    check_prefix_covered,
)
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.api.deps import current_time
from aggregator.db.models import (
    DispatchEvent,
    EventSiteBaseline,
    Program,
    ProgramKind,
    ProgramSite,
    Role,
    ScheduleStatus,
    ScheduleVersion,
    TelemetryRecord,
)
from market_adapters.dispatch import SignalKind, SignalStatus

QUARTER = dt.timedelta(minutes=15)


def next_quarter(hours: int = 1) -> dt.datetime:
    """A quarter-hour boundary ``hours`` ahead (events must not start in the past)."""
    now = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    return now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0)


T = next_quarter()


def iso(moment: dt.datetime) -> str:
    return moment.isoformat()


@pytest.fixture
def programs(world: World, session: Session) -> World:
    """Programs of the grid operator (``dr-main`` with both sites, ``v2g-main`` with ``depot-1``), one
    of the other operator (``other-dr``, ``depot-1``), and an event on ``dr-main``."""
    operator, other = world.users[Role.GRID_OPERATOR], world.others[Role.GRID_OPERATOR]
    session.add_all(
        [
            Program(id="dr-main", name="DR", kind=ProgramKind.DR, owner_id=operator.id, currency="EUR"),
            Program(id="v2g-main", name="V2G", kind=ProgramKind.V2G, owner_id=operator.id),
            Program(id="other-dr", name="Other DR", kind=ProgramKind.DR, owner_id=other.id),
        ]
    )
    session.flush()
    session.add_all(
        [
            ProgramSite(program_id="dr-main", site_id="depot-1"),
            ProgramSite(program_id="dr-main", site_id="depot-2"),
            ProgramSite(program_id="v2g-main", site_id="depot-1"),
            ProgramSite(program_id="other-dr", site_id="depot-1"),
        ]
    )
    event = DispatchEvent(
        program_id="dr-main",
        source="api",
        external_event_id=str(uuid.uuid4()),
        kind=SignalKind.DR_REDUCTION,
        status=SignalStatus.PENDING,
        price_per_kwh=None,
        penalty_per_kwh=None,
        created_by_id=operator.id,
        window_start=T,
        window_end=T + 2 * QUARTER,
        intervals=[{"start": iso(T), "end": iso(T + 2 * QUARTER), "value": 30.0}],
        currency="EUR",
        target_sites=["depot-1"],
        received_at=dt.datetime.now(dt.UTC),
    )
    session.add(event)
    session.commit()
    world.extra["event"] = event.id
    return world


@pytest.fixture
def clock(client: TestClient) -> Iterator[list[dt.datetime]]:
    """Set ``clock[0]`` to move the API's clock; the real clock is back after the test."""
    app = client.app
    assert isinstance(app, FastAPI)
    moment = [dt.datetime.now(dt.UTC)]
    app.dependency_overrides[current_time] = lambda: moment[0]
    yield moment
    app.dependency_overrides.pop(current_time)


def event_body(**changes: Any) -> dict[str, Any]:
    return {
        "kind": "dr_reduction",
        "start": iso(T),
        "end": iso(T + 3 * QUARTER),
        "requested_kw": 20,
        "price_per_kwh": 0.25,
        "penalty_per_kwh": 0.1,
        **changes,
    }


def post_event(client: TestClient, world: World, program: str = "dr-main", **changes: Any) -> Any:
    return client.post(
        f"/operator/programs/{program}/events",
        headers=world.headers(Role.GRID_OPERATOR),
        json=event_body(**changes),
    )


def snapshot(session: Session) -> dict[int, tuple[Any, ...]]:
    """Every event row as stored, to show that none is ever updated."""
    session.expire_all()
    return {
        row.id: (
            row.modification,
            row.status,
            row.window_start,
            row.window_end,
            row.intervals,
            row.price_per_kwh,
            row.target_sites,
            row.updated_at,
        )
        for row in session.scalars(select(DispatchEvent))
    }


# ----------------------------------------------------------------------------------------- programs


def test_an_operator_sees_their_own_programs(client: TestClient, programs: World) -> None:
    mine = client.get("/operator/programs", headers=programs.headers(Role.GRID_OPERATOR)).json()
    assert [(p["id"], p["kind"], p["site_ids"]) for p in mine] == [
        ("dr-main", "dr", ["depot-1", "depot-2"]),
        ("v2g-main", "v2g", ["depot-1"]),
    ]
    theirs = client.get("/operator/programs", headers=programs.headers(Role.GRID_OPERATOR, other=True)).json()
    assert [p["id"] for p in theirs] == ["other-dr"]


# ------------------------------------------------------------------------------------ posting events


def test_posting_an_event_stores_version_zero_and_asks_for_replans(
    api: ApiClient, programs: World, session: Session
) -> None:
    api.replans.take()
    posted = post_event(api.http, programs, start=iso(T.astimezone(dt.timezone(dt.timedelta(hours=-5)))))
    assert posted.status_code == 201, posted.text
    event = posted.json()
    assert event["start"] == T.isoformat().replace("+00:00", "Z")
    assert (event["kind"], event["status"], event["modification"], event["requested_kw"]) == (
        "dr_reduction",
        "pending",
        0,
        20.0,
    )
    assert event["target_sites"] == ["depot-1", "depot-2"]  # empty: all enrolled sites
    assert (event["price_per_kwh"], event["penalty_per_kwh"], event["currency"]) == (0.25, 0.1, "EUR")
    assert event["id"] == event["version_id"]
    assert event["created_by_id"] == programs.users[Role.GRID_OPERATOR].id

    row = session.get(DispatchEvent, event["id"])
    assert row is not None
    assert (row.source, row.modification, row.status, row.program_id) == (
        "api",
        0,
        SignalStatus.PENDING,
        "dr-main",
    )
    assert uuid.UUID(row.external_event_id)
    assert (row.window_start, row.window_end) == (T, T + 3 * QUARTER)
    assert row.created_by_id == programs.users[Role.GRID_OPERATOR].id
    assert api.replans.take() == {site: [f"event:{event['id']}"] for site in ("depot-1", "depot-2")}


def test_an_event_for_some_sites_with_varying_kw(api: ApiClient, programs: World) -> None:
    api.replans.take()
    intervals = [
        {"start": iso(T), "end": iso(T + QUARTER), "value": 10},
        {"start": iso(T + QUARTER), "end": iso(T + 3 * QUARTER), "value": 25},
    ]
    posted = post_event(
        api.http, programs, requested_kw=None, intervals=intervals, target_sites=["depot-2", "depot-2"]
    )
    assert posted.status_code == 201, posted.text
    assert posted.json()["requested_kw"] is None
    assert [interval["value"] for interval in posted.json()["intervals"]] == [10, 25]
    assert posted.json()["target_sites"] == ["depot-2"]
    assert api.replans.take() == {"depot-2": [f"event:{posted.json()['id']}"]}


def test_an_event_may_start_a_few_seconds_ago(client: TestClient, programs: World) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    assert post_event(client, programs, start=iso(start)).status_code == 201
    late = post_event(client, programs, start=iso(start - dt.timedelta(minutes=2)))
    assert late.status_code == 422
    assert "start" in late.json()["detail"]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"end": iso(T)}, "not after start"),
        ({"start": T.replace(tzinfo=None).isoformat()}, "timezone"),
        ({"requested_kw": 0}, "requested_kw"),
        ({"requested_kw": None}, "either requested_kw or intervals"),
        ({"intervals": [{"start": iso(T), "end": iso(T + 3 * QUARTER), "value": 5}]}, "not both"),
        (
            {
                "requested_kw": None,
                "intervals": [
                    {"start": iso(T), "end": iso(T + QUARTER), "value": 5},
                    {"start": iso(T + 2 * QUARTER), "end": iso(T + 3 * QUARTER), "value": 5},
                ],
            },
            "intervals[1] starts at",
        ),
        (
            {"requested_kw": None, "intervals": [{"start": iso(T), "end": iso(T + QUARTER), "value": 5}]},
            "intervals end",
        ),
        ({"price_per_kwh": -0.1}, "price_per_kwh"),
        ({"kind": "price"}, "kind"),
        ({"target_sites": ["depot-9"]}, "site 'depot-9' is not enrolled in program 'dr-main'"),
        ({"kind": "v2g_export"}, "a v2g_export event needs a v2g program"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_event_input_is_validated(
    client: TestClient, programs: World, changes: dict[str, Any], needle: str
) -> None:
    refused = post_event(client, programs, **changes)
    assert refused.status_code == 422
    assert needle in refused.text


def test_event_kinds_match_program_kinds(client: TestClient, programs: World) -> None:
    assert post_event(client, programs, "v2g-main", kind="v2g_export").status_code == 201
    for kind in ("dr_reduction", "dr_cap"):
        refused = post_event(client, programs, "v2g-main", kind=kind)
        assert refused.status_code == 422
        assert f"a {kind} event needs a dr program" in refused.json()["detail"]
    assert post_event(client, programs, "dr-main", kind="dr_cap").status_code == 201
    not_enrolled = post_event(client, programs, "v2g-main", kind="v2g_export", target_sites=["depot-2"])
    assert not_enrolled.status_code == 422
    assert "'depot-2' is not enrolled in program 'v2g-main'" in not_enrolled.json()["detail"]


# ------------------------------------------------------------------------------------------ ownership


def test_another_operators_programs_and_events_answer_404(client: TestClient, programs: World) -> None:
    other = programs.headers(Role.GRID_OPERATOR, other=True)
    event = programs.extra["event"]
    assert (
        client.post("/operator/programs/dr-main/events", headers=other, json=event_body()).status_code == 404
    )
    assert client.get(f"/operator/events/{event}", headers=other).status_code == 404
    assert (
        client.patch(f"/operator/events/{event}", headers=other, json={"requested_kw": 5}).status_code == 404
    )
    assert client.post(f"/operator/events/{event}/cancel", headers=other).status_code == 404
    assert client.get(f"/operator/events/{event}/performance", headers=other).status_code == 404
    assert client.get("/operator/events", headers=other).json()["total"] == 0
    # and the other operator's program is as unknown to ours
    mine = programs.headers(Role.GRID_OPERATOR)
    assert (
        client.post("/operator/programs/other-dr/events", headers=mine, json=event_body()).status_code == 404
    )
    assert (
        client.post("/operator/programs/nothing/events", headers=mine, json=event_body()).status_code == 404
    )
    assert client.get("/operator/events/999999", headers=mine).status_code == 404


# ------------------------------------------------------------------------------------ listing events


def test_events_are_listed_latest_version_first_filtered(client: TestClient, programs: World) -> None:
    operator = programs.headers(Role.GRID_OPERATOR)
    later = post_event(client, programs, start=iso(T + 4 * QUARTER), end=iso(T + 6 * QUARTER)).json()
    v2g = post_event(client, programs, "v2g-main", kind="v2g_export").json()
    changed = client.patch(f"/operator/events/{later['id']}", headers=operator, json={"requested_kw": 7})
    assert changed.status_code == 200, changed.text
    assert client.post(f"/operator/events/{v2g['id']}/cancel", headers=operator).status_code == 200

    everything = client.get("/operator/events", headers=operator).json()
    assert everything["total"] == 3  # three events, five versions
    assert [(e["id"], e["modification"]) for e in everything["items"]] == [
        (programs.extra["event"], 0),
        (v2g["id"], 1),
        (later["id"], 1),
    ]
    assert everything["items"][2]["requested_kw"] == 7.0

    def ids(**params: Any) -> list[int]:
        page = client.get("/operator/events", headers=operator, params=params)
        assert page.status_code == 200, page.text
        return [event["id"] for event in page.json()["items"]]

    assert ids(program_id="v2g-main") == [v2g["id"]]
    assert ids(status="cancelled") == [v2g["id"]]
    assert ids(status="pending", program_id="dr-main") == [programs.extra["event"], later["id"]]
    # overlapping [start, end): the event from T + 1 h ends at T + 1.5 h
    assert ids(start=iso(T + 3 * QUARTER)) == [later["id"]]
    assert ids(end=iso(T + 4 * QUARTER)) == [programs.extra["event"], v2g["id"]]
    assert ids(start=iso(T + 6 * QUARTER)) == []
    assert ids(limit=1, offset=1) == [v2g["id"]]
    naive = client.get(
        "/operator/events", headers=operator, params={"start": T.replace(tzinfo=None).isoformat()}
    )
    assert naive.status_code == 422


# ------------------------------------------------------------------------------- changing events


def test_a_change_appends_a_version_and_never_updates_a_row(
    api: ApiClient, programs: World, session: Session
) -> None:
    operator = programs.headers(Role.GRID_OPERATOR)
    event = programs.extra["event"]
    before = snapshot(session)
    api.replans.take()

    moved = api.http.patch(
        f"/operator/events/{event}",
        headers=operator,
        json={"start": iso(T + QUARTER), "end": iso(T + 4 * QUARTER), "price_per_kwh": 0.5},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["id"] == event
    assert moved.json()["modification"] == 1
    assert moved.json()["requested_kw"] == 30.0  # one value over the window: kept over the new window
    assert moved.json()["intervals"] == [
        {
            "start": iso(T + QUARTER).replace("+00:00", "Z"),
            "end": iso(T + 4 * QUARTER).replace("+00:00", "Z"),
            "value": 30.0,
        }
    ]
    assert moved.json()["price_per_kwh"] == 0.5
    assert api.replans.take() == {"depot-1": [f"event:{event}"]}

    cancelled = api.http.post(f"/operator/events/{event}/cancel", headers=operator)
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["modification"]) == ("cancelled", 2)
    assert cancelled.json()["start"] == moved.json()["start"]
    assert api.replans.take() == {"depot-1": [f"event:{event}"]}

    after = snapshot(session)
    assert {row: after[row] for row in before} == before  # the first version is as it was stored
    assert len(after) == len(before) + 2
    rows = session.scalars(select(DispatchEvent).order_by(DispatchEvent.modification)).all()
    assert len({row.external_event_id for row in rows}) == 1
    assert [row.modification for row in rows] == [0, 1, 2]

    detail = api.http.get(f"/operator/events/{event}", headers=operator).json()
    assert (detail["id"], detail["status"], detail["modification"]) == (event, "cancelled", 2)
    assert [(v["modification"], v["status"], v["price_per_kwh"]) for v in detail["versions"]] == [
        (0, "pending", None),
        (1, "pending", 0.5),
        (2, "cancelled", 0.5),
    ]
    assert [v["version_id"] for v in detail["versions"]] == [row.id for row in rows]
    # a later version's row id is not an event id
    assert api.http.get(f"/operator/events/{rows[1].id}", headers=operator).status_code == 404

    for attempt in (
        api.http.patch(f"/operator/events/{event}", headers=operator, json={"requested_kw": 5}),
        api.http.post(f"/operator/events/{event}/cancel", headers=operator),
    ):
        assert attempt.status_code == 409
        assert "cancelled" in attempt.json()["detail"]
    assert len(snapshot(session)) == len(after)


def test_an_ended_event_cannot_be_changed(
    client: TestClient, programs: World, clock: list[dt.datetime], session: Session
) -> None:
    operator = programs.headers(Role.GRID_OPERATOR)
    event = programs.extra["event"]
    clock[0] = T + 2 * QUARTER  # the event's end
    changed = client.patch(f"/operator/events/{event}", headers=operator, json={"requested_kw": 5})
    assert changed.status_code == 409
    assert "ended" in changed.json()["detail"]
    assert client.post(f"/operator/events/{event}/cancel", headers=operator).status_code == 409
    clock[0] = T + QUARTER  # running: it can still be changed, but not moved into the past
    assert (
        client.patch(f"/operator/events/{event}", headers=operator, json={"requested_kw": 5}).status_code
        == 200
    )
    back = client.patch(f"/operator/events/{event}", headers=operator, json={"start": iso(T - QUARTER)})
    assert back.status_code == 422
    assert len(session.scalars(select(DispatchEvent)).all()) == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "nothing to change"),
        ({"end": iso(T - QUARTER)}, "not after start"),
        ({"requested_kw": None}, "requested_kw cannot be null"),
        ({"requested_kw": -3}, "requested_kw"),
        ({"kind": "dr_cap"}, "kind"),
        (
            {"requested_kw": 5, "intervals": [{"start": iso(T), "end": iso(T + 2 * QUARTER), "value": 5}]},
            "not both",
        ),
    ],
)
def test_changes_are_validated(
    client: TestClient, programs: World, body: dict[str, Any], needle: str
) -> None:
    refused = client.patch(
        f"/operator/events/{programs.extra['event']}", headers=programs.headers(Role.GRID_OPERATOR), json=body
    )
    assert refused.status_code == 422
    assert needle in refused.text


def test_moving_a_varying_event_needs_new_intervals(client: TestClient, programs: World) -> None:
    operator = programs.headers(Role.GRID_OPERATOR)
    intervals = [
        {"start": iso(T), "end": iso(T + QUARTER), "value": 10},
        {"start": iso(T + QUARTER), "end": iso(T + 3 * QUARTER), "value": 25},
    ]
    event = post_event(client, programs, requested_kw=None, intervals=intervals).json()["id"]
    refused = client.patch(f"/operator/events/{event}", headers=operator, json={"end": iso(T + 4 * QUARTER)})
    assert refused.status_code == 422
    assert "intervals" in refused.json()["detail"]
    priced = client.patch(f"/operator/events/{event}", headers=operator, json={"penalty_per_kwh": 0.3})
    assert priced.status_code == 200, priced.text
    assert [i["value"] for i in priced.json()["intervals"]] == [10, 25]
    flat = client.patch(
        f"/operator/events/{event}", headers=operator, json={"end": iso(T + 4 * QUARTER), "requested_kw": 12}
    )
    assert flat.status_code == 200, flat.text
    assert (flat.json()["requested_kw"], flat.json()["modification"], flat.json()["penalty_per_kwh"]) == (
        12,
        2,
        0.3,
    )


# ------------------------------------------------------------------------------------- performance


def add_plan(
    session: Session,
    site_id: str,
    created_at: dt.datetime,
    horizon_start: dt.datetime,
    step_seconds: int,
    counterfactual: list[float] | None,
    events: list[int] | None = None,
) -> None:
    """A schedule version; ``events`` are the event rows it was planned with (none: made before)."""
    session.add(
        ScheduleVersion(
            site_id=site_id,
            created_at=created_at,
            horizon_start=horizon_start,
            step_seconds=step_seconds,
            trigger="event",
            inputs={"events": events or []},
            result_summary={},
            status=ScheduleStatus.OPTIMAL,
            plan={"site_import_kw": [0.0] * 12},  # with the event: must not be used as the baseline
            counterfactual=None if counterfactual is None else {"site_import_kw": counterfactual},
        )
    )


def add_telemetry(session: Session, site_id: str, readings: list[tuple[float, float]]) -> None:
    for seq, (minutes, kw) in enumerate(readings):
        sent_at = T + dt.timedelta(minutes=minutes)
        session.add(
            TelemetryRecord(
                site_id=site_id,
                seq=seq,
                sent_at=sent_at,
                received_at=sent_at,
                site_import_kw=kw,
                base_load_kw=None,
            )
        )


def minutes(m: float) -> dt.datetime:
    return T + dt.timedelta(minutes=m)


def test_performance_of_a_reduction_by_hand(client: TestClient, programs: World, session: Session) -> None:
    """20 kW asked of both sites for three quarters: 10 kW each.

    depot-1 expects [50, 60, 70], fixed by the first plan made with the event; the plans made during
    the window (a 5-minute plan expecting 80, 85, 90 for the last quarter, then 1000) move nothing.
    It measures [40, 55, -]: delivers [10, 5, -], 3.75 of 5 kWh. depot-2 expects [40, 40, -] (its
    first plan with the event ends early; an older plan made before the event is not one) and
    measures [30, 30, 10]: delivers [10, 10, -], 5 of 5 kWh. Together: expected [90, 100, -], measured
    [70, 85, -], delivered [20, 15, -], 8.75 of 10 kWh committed, factor 0.875.
    """
    event = post_event(client, programs).json()["id"]
    add_plan(session, "depot-1", minutes(-10), minutes(-15), 900, [999, 50, 60, 70], [event])
    add_plan(session, "depot-1", minutes(20), minutes(15), 300, [0, 0, 0, 80, 85, 90], [event])
    add_plan(session, "depot-1", minutes(31), minutes(30), 900, [1000], [event])
    add_plan(session, "depot-2", minutes(-5), minutes(0), 900, [40, 40], [event])
    add_plan(session, "depot-2", minutes(-20), minutes(0), 900, [1, 1, 1])  # before the event was known
    add_telemetry(session, "depot-1", [(1, 45), (7, 35), (16, 55), (45, 999)])
    add_telemetry(session, "depot-2", [(2, 30), (16, 28), (20, 32), (31, 10)])
    session.commit()

    answer = client.get(f"/operator/events/{event}/performance", headers=programs.headers(Role.GRID_OPERATOR))
    assert answer.status_code == 200, answer.text
    performance = answer.json()
    assert (performance["event_id"], performance["kind"], performance["step_seconds"]) == (
        event,
        "dr_reduction",
        900,
    )

    def column(intervals: list[dict[str, Any]], name: str) -> list[Any]:
        return [interval[name] for interval in intervals]

    one, two = performance["sites"]
    assert (one["site_id"], two["site_id"]) == ("depot-1", "depot-2")
    assert column(one["intervals"], "committed_kw") == [10, 10, 10]
    assert column(one["intervals"], "expected_kw") == pytest.approx([50, 60, 70])
    first_plan = session.scalars(
        select(ScheduleVersion.id).where(ScheduleVersion.site_id == "depot-1").order_by(ScheduleVersion.id)
    ).first()
    assert one["baseline"]["method"] == "counterfactual"
    assert one["baseline"]["declared_at_notification"] is True
    assert one["baseline"]["plan_versions"] == [first_plan]
    assert column(one["intervals"], "measured_kw")[:2] == [40, 55]
    assert column(one["intervals"], "measured_kw")[2] is None  # not yet metered: null, not 0
    assert column(one["intervals"], "delivered_kw")[:2] == pytest.approx([10, 5])
    assert (one["committed_kwh"], one["delivered_kwh"], one["shortfall_kwh"]) == pytest.approx(
        (5, 3.75, 1.25)
    )
    assert (one["performance_factor"], one["missing_intervals"]) == (pytest.approx(0.75), 1)

    assert column(two["intervals"], "expected_kw") == [40, 40, None]  # no counterfactual for the last
    assert column(two["intervals"], "measured_kw") == [30, 30, 10]
    assert column(two["intervals"], "delivered_kw") == [10, 10, None]
    assert (two["delivered_kwh"], two["performance_factor"], two["missing_intervals"]) == (5, 1, 1)

    whole = performance["intervals"]
    assert column(whole, "start") == [iso(minutes(m)).replace("+00:00", "Z") for m in (0, 15, 30)]
    assert column(whole, "committed_kw") == [20, 20, 20]
    assert column(whole, "expected_kw") == pytest.approx([90, 100, None])
    assert column(whole, "measured_kw") == [70, 85, None]
    assert column(whole, "delivered_kw") == [20, 15, None]
    assert (performance["committed_kwh"], performance["delivered_kwh"]) == pytest.approx((10, 8.75))
    assert (performance["performance_factor"], performance["shortfall_kwh"]) == pytest.approx((0.875, 1.25))
    assert performance["missing_intervals"] == 1


def test_performance_of_a_cap_by_hand(client: TestClient, programs: World, session: Session) -> None:
    """A 50 kW cap on depot-1 for two quarters. Expected [80, 40], so the cap asks for a reduction of
    [30, 0]; measured [55, 30]: over the cap in the first quarter, under in the second. Delivered
    [25, 10], credited [25, 0]: 6.25 of 7.5 kWh, factor 5/6."""
    event = post_event(
        client, programs, kind="dr_cap", requested_kw=50, end=iso(minutes(30)), target_sites=["depot-1"]
    ).json()["id"]
    add_plan(session, "depot-1", minutes(-1), minutes(0), 900, [80, 40], [event])
    add_telemetry(session, "depot-1", [(3, 50), (9, 60), (20, 30)])
    session.commit()

    performance = client.get(
        f"/operator/events/{event}/performance", headers=programs.headers(Role.GRID_OPERATOR)
    ).json()
    assert [site["site_id"] for site in performance["sites"]] == ["depot-1"]
    intervals = performance["intervals"]
    assert [i["cap_kw"] for i in intervals] == [50, 50]
    assert [i["committed_kw"] for i in intervals] == [30, 0]
    assert [i["measured_kw"] for i in intervals] == [55, 30]
    assert [i["delivered_kw"] for i in intervals] == [25, 10]
    assert [i["within_cap"] for i in intervals] == [False, True]
    assert (performance["committed_kwh"], performance["delivered_kwh"]) == pytest.approx((7.5, 6.25))
    assert performance["performance_factor"] == pytest.approx(5 / 6)
    assert performance["missing_intervals"] == 0


def test_a_posted_event_declares_its_baseline_at_each_target_and_keeps_it(
    client: TestClient, programs: World, session: Session, clock: list[dt.datetime]
) -> None:
    """Posting declares how the event is measured at each target site, with the program's method as it
    is then; a later change of the program's measurement leaves the event as declared, and a version
    that moves the event declares nothing anew."""
    program = session.get(Program, "dr-main")
    assert program is not None
    program.measurement = {"method": "meter_before_after", "intervals_before": 4}
    session.commit()
    posted = clock[0]
    event = post_event(client, programs).json()["id"]
    program.measurement = {"method": "same_day"}
    session.commit()
    operator = programs.headers(Role.GRID_OPERATOR)
    assert (
        client.patch(f"/operator/events/{event}", headers=operator, json={"requested_kw": 7}).status_code
        == 200
    )
    session.expire_all()
    declared = session.scalars(
        select(EventSiteBaseline)
        .where(EventSiteBaseline.event_id == event)
        .order_by(EventSiteBaseline.site_id)
    ).all()
    assert [(row.site_id, row.method, row.declared_at) for row in declared] == [
        ("depot-1", "meter_before_after", posted),
        ("depot-2", "meter_before_after", posted),
    ]
    assert declared[0].parameters == {
        "method": "meter_before_after",
        "intervals_before": 4,
        "gap_intervals": 0,
    }
    performance = client.get(f"/operator/events/{event}/performance", headers=operator).json()
    baseline = performance["sites"][0]["baseline"]
    assert (baseline["method"], baseline["declared_at_notification"]) == ("meter_before_after", True)
    assert baseline["parameters"]["intervals_before"] == 4
    assert "no metered data" in baseline["problem"]  # nothing metered before the event yet: no baseline


def test_performance_before_any_data_is_all_null(client: TestClient, programs: World) -> None:
    event = programs.extra["event"]
    performance = client.get(
        f"/operator/events/{event}/performance", headers=programs.headers(Role.GRID_OPERATOR)
    ).json()
    intervals = performance["sites"][0]["intervals"]
    assert [i["committed_kw"] for i in intervals] == [30, 30]
    assert all(i["expected_kw"] is None and i["measured_kw"] is None for i in intervals)
    assert all(i["delivered_kw"] is None for i in intervals)
    assert (performance["missing_intervals"], performance["performance_factor"]) == (2, 0)


# ------------------------------------------------------------------------------ authorization matrix


def _event(world: World) -> dict[str, Any]:
    return {"event_id": world.extra["event"]}


ENDPOINTS = [
    Endpoint("GET", "/operator/programs", GRID_OPERATOR, 200),
    Endpoint(
        "POST",
        "/operator/programs/{program_id}/events",
        GRID_OPERATOR,
        201,
        lambda world: {"json": event_body()},
        lambda world: {"program_id": "dr-main"},
    ),
    Endpoint("GET", "/operator/events", GRID_OPERATOR, 200),
    Endpoint("GET", "/operator/events/{event_id}", GRID_OPERATOR, 200, path_params=_event),
    Endpoint(
        "PATCH",
        "/operator/events/{event_id}",
        GRID_OPERATOR,
        200,
        lambda world: {"json": {"requested_kw": 12}},
        _event,
    ),
    Endpoint("POST", "/operator/events/{event_id}/cancel", GRID_OPERATOR, 200, path_params=_event),
    Endpoint("GET", "/operator/events/{event_id}/performance", GRID_OPERATOR, 200, path_params=_event),
]


@pytest.mark.parametrize("caller", CALLERS, ids=lambda caller: caller.value if caller else "anonymous")
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda endpoint: f"{endpoint.method} {endpoint.path}")
def test_authorization_matrix(
    client: TestClient, programs: World, endpoint: Endpoint, caller: Caller
) -> None:
    check_endpoint(client, programs, endpoint, caller)


def test_every_operator_route_has_a_matrix_row(client: TestClient) -> None:
    # Settlement's /operator routes are in test_settlement_api's matrix; test_api_auth checks the union.
    check_prefix_covered(client, "/operator", ENDPOINTS)
