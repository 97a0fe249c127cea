"""The admin API on SQLite and PostgreSQL: sites, chargers, accounts, API keys and programs, with the
authorization matrix of every admin route."""

from __future__ import annotations

import pytest
from api_world import (
    ADMIN,
    CALLERS,
    GATEWAY_KEY,
    PASSWORD,
    SETTINGS,
    ApiClient,
    Caller,
    Endpoint,
    TestClient,
    World,
    check_endpoint,
    check_prefix_covered,
    unique,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.api.security import create_access_token
from aggregator.db.models import ApiKey, Charger, Program, ProgramKind, ProgramSite, Role


@pytest.fixture
def admin_world(world: World, session: Session) -> World:
    """The shared world plus a charger on ``site``, a program of the grid operator with ``site``
    enrolled, and the API key's id."""
    charger = Charger(site_id=world.site.id, charge_point_id="cp-1", evse_id=1, max_kw=22.0)
    program = Program(
        id="dr-winter", name="Winter DR", kind=ProgramKind.DR, owner_id=world.users[Role.GRID_OPERATOR].id
    )
    session.add_all([charger, program])
    session.flush()
    session.add(ProgramSite(program_id=program.id, site_id=world.site.id))
    session.commit()
    key = session.scalars(select(ApiKey)).one()
    world.extra.update(charger=charger.id, program=program.id, api_key=key.id)
    return world


def program_body(world: World, **changes: object) -> dict[str, object]:
    return {
        "id": f"prog-{next(unique)}",
        "name": "Summer V2G",
        "kind": "v2g",
        "owner_id": world.users[Role.GRID_OPERATOR].id,
        "currency": "EUR",
        "payment_terms": {"per_kwh_delivered": 0.3},
        "measurement": {"baseline": "counterfactual"},
        **changes,
    }


def login(client: TestClient, email: str) -> int:
    return client.post("/auth/token", data={"username": email, "password": PASSWORD}).status_code


# --------------------------------------------------------------------------------------------- sites


def test_get_and_patch_a_site(api: ApiClient, admin_world: World) -> None:
    admin = admin_world.headers(Role.ADMIN)
    api.replans.take()
    got = api.http.get("/admin/sites/depot-1", headers=admin)
    assert got.status_code == 200, got.text
    assert got.json()["import_limit_kw"] == 250.0
    assert got.json()["created_at"].endswith("Z") or got.json()["created_at"].endswith("+00:00")

    body = {
        "import_limit_kw": 180,
        "tariff_ref": "tou-2026.json",
        "timezone": "Europe/Berlin",
        "name": "North",
    }
    patched = api.http.patch("/admin/sites/depot-1", headers=admin, json=body)
    assert patched.status_code == 200, patched.text
    assert {name: patched.json()[name] for name in body} == {**body, "import_limit_kw": 180.0}
    assert patched.json()["export_limit_kw"] == 100.0  # left out, kept
    assert "depot-1" in api.replans.take()

    cleared = api.http.patch("/admin/sites/depot-1", headers=admin, json={"tariff_ref": None})
    assert cleared.json()["tariff_ref"] is None
    assert api.http.get("/admin/sites/depot-1", headers=admin).json()["name"] == "North"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": None}, "name"),
        ({"import_limit_kw": -1}, "import_limit_kw"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"id": "renamed"}, "id"),
    ],
)
def test_site_patch_is_validated(
    client: TestClient, admin_world: World, body: dict[str, object], field: str
) -> None:
    refused = client.patch("/admin/sites/depot-1", headers=admin_world.headers(Role.ADMIN), json=body)
    assert refused.status_code == 422
    assert field in refused.text


def test_unknown_site_is_404(client: TestClient, admin_world: World) -> None:
    admin = admin_world.headers(Role.ADMIN)
    assert client.get("/admin/sites/nowhere", headers=admin).status_code == 404
    assert client.patch("/admin/sites/nowhere", headers=admin, json={"name": "x"}).status_code == 404
    assert client.get("/admin/sites/nowhere/chargers", headers=admin).status_code == 404


# ----------------------------------------------------------------------------------------- chargers


def test_chargers_of_a_site(api: ApiClient, admin_world: World, session: Session) -> None:
    admin = admin_world.headers(Role.ADMIN)
    api.replans.take()
    body = {"charge_point_id": "cp-1", "evse_id": 2, "max_kw": 11, "bidirectional": True}
    created = api.http.post("/admin/sites/depot-1/chargers", headers=admin, json=body)
    assert created.status_code == 201, created.text
    assert created.json() == {**body, "max_kw": 11.0, "id": created.json()["id"], "site_id": "depot-1"}
    assert "depot-1" in api.replans.take()

    duplicate = api.http.post("/admin/sites/depot-1/chargers", headers=admin, json=body)
    assert duplicate.status_code == 409
    assert "cp-1" in duplicate.json()["detail"]
    # the same EVSE at another site is another charger
    assert api.http.post("/admin/sites/depot-2/chargers", headers=admin, json=body).status_code == 201

    api.replans.take()
    page = api.http.get(
        "/admin/sites/depot-1/chargers", headers=admin, params={"limit": 1, "offset": 1}
    ).json()
    assert page["total"] == 2
    assert [item["evse_id"] for item in page["items"]] == [2]

    patched = api.http.patch(f"/admin/chargers/{created.json()['id']}", headers=admin, json={"max_kw": 7.4})
    assert patched.status_code == 200, patched.text
    assert patched.json()["max_kw"] == 7.4
    assert patched.json()["bidirectional"] is True
    assert api.replans.take() == {"depot-1": [f"charger:{created.json()['id']} changed"]}
    stored = session.get(Charger, created.json()["id"])
    session.refresh(stored)
    assert stored is not None and stored.max_kw == 7.4


def test_charger_input_is_validated(client: TestClient, admin_world: World) -> None:
    admin = admin_world.headers(Role.ADMIN)
    base = {"charge_point_id": "cp-9", "evse_id": 1, "max_kw": 22}
    for bad in ({"max_kw": -1}, {"evse_id": 0}, {"charge_point_id": "has space"}):
        assert (
            client.post("/admin/sites/depot-1/chargers", headers=admin, json={**base, **bad}).status_code
            == 422
        )
    assert client.post("/admin/sites/nowhere/chargers", headers=admin, json=base).status_code == 404
    assert client.patch("/admin/chargers/999999", headers=admin, json={"max_kw": 1}).status_code == 404
    charger = admin_world.extra["charger"]
    refused = client.patch(f"/admin/chargers/{charger}", headers=admin, json={"max_kw": None})
    assert refused.status_code == 422
    assert "max_kw" in refused.text


# -------------------------------------------------------------------------------------------- users


def test_users_filtered_by_role(client: TestClient, admin_world: World) -> None:
    admin = admin_world.headers(Role.ADMIN)
    everyone = client.get("/admin/users", headers=admin).json()
    assert everyone["total"] == 2 * len(Role)
    operators = client.get("/admin/users", headers=admin, params={"role": "grid_operator"}).json()
    assert sorted(user["email"] for user in operators["items"]) == [
        "grid_operator@example.org",
        "other-grid_operator@example.org",
    ]
    assert all(user["is_active"] for user in operators["items"])
    assert "password" not in str(everyone)
    assert client.get("/admin/users", headers=admin, params={"role": "pilot"}).status_code == 422


def test_a_deactivated_account_cannot_log_in_nor_use_its_tokens_and_keys(
    client: TestClient, admin_world: World
) -> None:
    admin = admin_world.headers(Role.ADMIN)
    trader, gateway = admin_world.users[Role.TRADER], admin_world.users[Role.GATEWAY]
    token = {"Authorization": f"Bearer {create_access_token(trader.id, trader.role, SETTINGS)}"}
    assert client.get("/users/me", headers=token).status_code == 200

    for user in (trader, gateway):
        off = client.patch(f"/admin/users/{user.id}", headers=admin, json={"is_active": False})
        assert off.status_code == 200, off.text
        assert off.json()["is_active"] is False
    assert login(client, "trader@example.org") == 401
    assert client.get("/users/me", headers=token).status_code == 401
    assert client.get("/users/me", headers={"X-API-Key": GATEWAY_KEY}).status_code == 401
    inactive = client.get("/admin/users", headers=admin, params={"is_active": False}).json()
    assert sorted(user["id"] for user in inactive["items"]) == sorted([trader.id, gateway.id])

    for user in (trader, gateway):
        assert (
            client.patch(f"/admin/users/{user.id}", headers=admin, json={"is_active": True}).status_code
            == 200
        )
    assert login(client, "trader@example.org") == 200
    assert client.get("/users/me", headers=token).status_code == 200
    assert client.get("/users/me", headers={"X-API-Key": GATEWAY_KEY}).status_code == 200


def test_an_admin_cannot_lock_themselves_out(
    client: TestClient, admin_world: World, session: Session
) -> None:
    me = admin_world.users[Role.ADMIN]
    admin = admin_world.headers(Role.ADMIN)
    assert client.patch(f"/admin/users/{me.id}", headers=admin, json={"is_active": False}).status_code == 409
    assert client.patch("/admin/users/999999", headers=admin, json={"is_active": False}).status_code == 404
    assert client.patch(f"/admin/users/{me.id}", headers=admin, json={"role": "driver"}).status_code == 422
    session.refresh(me)
    assert me.is_active


# ----------------------------------------------------------------------------------------- API keys


def test_api_keys_are_named_listed_and_revoked(
    client: TestClient, admin_world: World, session: Session
) -> None:
    admin = admin_world.headers(Role.ADMIN)
    gateway = admin_world.users[Role.GATEWAY]
    issued = client.post(
        "/admin/api-keys",
        headers=admin,
        json={"owner_id": gateway.id, "site_id": "depot-1", "name": "depot-1 spare gateway"},
    )
    assert issued.status_code == 201, issued.text
    assert issued.json()["name"] == "depot-1 spare gateway"
    key = issued.json()["key"]

    listed = client.get("/admin/api-keys", headers=admin).json()
    assert listed["total"] == 2
    assert [item["name"] for item in listed["items"]] == [None, "depot-1 spare gateway"]
    assert key not in str(listed)
    assert "key_hash" not in str(listed)
    assert "key" not in listed["items"][0]

    revoked = client.post(f"/admin/api-keys/{issued.json()['id']}/revoke", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked"] is True
    assert client.get("/users/me", headers={"X-API-Key": key}).status_code == 401
    assert (
        client.get("/users/me", headers={"X-API-Key": GATEWAY_KEY}).status_code == 200
    )  # the other still works
    only_revoked = client.get("/admin/api-keys", headers=admin, params={"revoked": True}).json()
    assert [item["id"] for item in only_revoked["items"]] == [issued.json()["id"]]
    by_owner = client.get(
        "/admin/api-keys", headers=admin, params={"owner_id": admin_world.users[Role.TRADER].id}
    )
    assert by_owner.json()["total"] == 0
    assert client.post("/admin/api-keys/999999/revoke", headers=admin).status_code == 404


# ----------------------------------------------------------------------------------------- programs


def test_programs_are_created_read_and_changed(
    client: TestClient, admin_world: World, session: Session
) -> None:
    admin = admin_world.headers(Role.ADMIN)
    body = program_body(admin_world)
    created = client.post("/admin/programs", headers=admin, json=body)
    assert created.status_code == 201, created.text
    assert {name: created.json()[name] for name in body} == body  # terms stored as given
    assert created.json()["site_ids"] == []
    assert client.post("/admin/programs", headers=admin, json=body).status_code == 409

    got = client.get(f"/admin/programs/{body['id']}", headers=admin)
    assert got.json() == created.json()
    listed = client.get("/admin/programs", headers=admin).json()
    assert [program["id"] for program in listed["items"]] == sorted(["dr-winter", str(body["id"])])
    assert listed["items"][0]["site_ids"] == ["depot-1"]

    other = admin_world.others[Role.GRID_OPERATOR].id
    patched = client.patch(
        f"/admin/programs/{body['id']}",
        headers=admin,
        json={"owner_id": other, "payment_terms": {"per_kwh_delivered": 0.4}, "name": "Summer V2G 2"},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["owner_id"], patched.json()["payment_terms"], patched.json()["kind"]) == (
        other,
        {"per_kwh_delivered": 0.4},
        "v2g",
    )
    by_owner = client.get("/admin/programs", headers=admin, params={"owner_id": other}).json()
    assert [program["id"] for program in by_owner["items"]] == [body["id"]]
    stored = session.get(Program, body["id"])
    assert stored is not None
    session.refresh(stored)
    assert stored.payment_terms == {"per_kwh_delivered": 0.4}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "capacity"}, "kind"),
        ({"id": "Has Space"}, "id"),
        ({"currency": "euro"}, "currency"),
        ({"owner_id": 999999}, "owner_id"),
        ({"payment_terms": [1, 2]}, "payment_terms"),
        ({"payment_terms": {}}, "a program needs payment terms"),
        ({"payment_terms": {"per_kwh": 0.3}}, "per_kwh: Extra inputs are not permitted"),
        ({"payment_terms": {"per_kwh_delivered": -1}}, "per_kwh_delivered: Input should be greater than"),
        ({"payment_terms": {"penalty_per_kwh_short": 1}}, "the terms pay nothing"),
        (
            {"payment_terms": {"currency": "USD", "per_event": 5}},
            "the terms pay in USD, the program is in EUR",
        ),
        ({"unpaid": True}, "a program declared unpaid has no payment terms, got per_kwh_delivered"),
    ],
)
def test_program_input_is_validated(
    client: TestClient, admin_world: World, changes: dict[str, object], field: str
) -> None:
    refused = client.post(
        "/admin/programs", headers=admin_world.headers(Role.ADMIN), json=program_body(admin_world, **changes)
    )
    assert refused.status_code == 422
    assert field in refused.text


def test_an_unpaid_program_is_declared_and_shown(client: TestClient, admin_world: World) -> None:
    admin = admin_world.headers(Role.ADMIN)
    body = program_body(admin_world, payment_terms={}, unpaid=True)
    created = client.post("/admin/programs", headers=admin, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["unpaid"] is True and created.json()["payment_terms"] == {}
    assert client.get(f"/admin/programs/{body['id']}", headers=admin).json()["unpaid"] is True
    paid = client.post("/admin/programs", headers=admin, json=program_body(admin_world)).json()
    assert paid["unpaid"] is False

    url = f"/admin/programs/{body['id']}"
    terms_only = client.patch(url, headers=admin, json={"payment_terms": {"per_kwh_delivered": 0.2}})
    assert terms_only.status_code == 422 and "declared unpaid has no payment terms" in terms_only.text
    now_paid = client.patch(
        url, headers=admin, json={"unpaid": False, "payment_terms": {"per_kwh_delivered": 0.2}}
    )
    assert now_paid.status_code == 200, now_paid.text
    assert (now_paid.json()["unpaid"], now_paid.json()["payment_terms"]) == (
        False,
        {"per_kwh_delivered": 0.2},
    )
    emptied = client.patch(url, headers=admin, json={"payment_terms": {}})
    assert emptied.status_code == 422 and "needs payment terms" in emptied.text


@pytest.mark.parametrize("role", [Role.DRIVER, Role.TRADER, Role.ADMIN])
def test_a_program_belongs_to_a_grid_operator(client: TestClient, admin_world: World, role: Role) -> None:
    admin = admin_world.headers(Role.ADMIN)
    owner = admin_world.users[role].id
    refused = client.post("/admin/programs", headers=admin, json=program_body(admin_world, owner_id=owner))
    assert refused.status_code == 422
    assert f"owner_id: user {owner} is {role.value}" in refused.json()["detail"]
    patch = client.patch("/admin/programs/dr-winter", headers=admin, json={"owner_id": owner})
    assert patch.status_code == 422


def test_sites_are_enrolled_and_withdrawn(client: TestClient, admin_world: World, session: Session) -> None:
    admin = admin_world.headers(Role.ADMIN)
    for _ in range(2):  # enrolling twice is the same as once
        enrolled = client.put("/admin/programs/dr-winter/sites/depot-2", headers=admin)
        assert enrolled.status_code == 200, enrolled.text
        assert enrolled.json()["site_ids"] == ["depot-1", "depot-2"]
    assert client.put("/admin/programs/dr-winter/sites/nowhere", headers=admin).status_code == 404
    assert client.put("/admin/programs/nothing/sites/depot-2", headers=admin).status_code == 404

    assert client.delete("/admin/programs/dr-winter/sites/depot-1", headers=admin).status_code == 204
    assert client.delete("/admin/programs/dr-winter/sites/depot-1", headers=admin).status_code == 404
    assert client.get("/admin/programs/dr-winter", headers=admin).json()["site_ids"] == ["depot-2"]
    enrolments = session.scalars(
        select(ProgramSite.site_id).where(ProgramSite.program_id == "dr-winter")
    ).all()
    assert list(enrolments) == ["depot-2"]
    assert client.get("/admin/programs/nothing", headers=admin).status_code == 404
    assert client.patch("/admin/programs/nothing", headers=admin, json={"name": "x"}).status_code == 404


# ------------------------------------------------------------------------------ authorization matrix


def _email() -> str:
    return f"new-{next(unique)}@example.org"


ENDPOINTS = [
    Endpoint("GET", "/admin/status", ADMIN, 200),
    Endpoint("GET", "/admin/sites", ADMIN, 200),
    Endpoint(
        "POST",
        "/admin/sites",
        ADMIN,
        201,
        lambda world: {
            "json": {"id": f"s{next(unique)}", "name": "S", "import_limit_kw": 1, "export_limit_kw": 0}
        },
    ),
    Endpoint(
        "GET", "/admin/sites/{site_id}", ADMIN, 200, path_params=lambda world: {"site_id": world.site.id}
    ),
    Endpoint(
        "PATCH",
        "/admin/sites/{site_id}",
        ADMIN,
        200,
        lambda world: {"json": {"import_limit_kw": 200}},
        lambda world: {"site_id": world.site.id},
    ),
    Endpoint(
        "POST",
        "/admin/sites/{site_id}/chargers",
        ADMIN,
        201,
        lambda world: {"json": {"charge_point_id": "cp-2", "evse_id": next(unique) + 1, "max_kw": 22}},
        lambda world: {"site_id": world.site.id},
    ),
    Endpoint(
        "GET",
        "/admin/sites/{site_id}/chargers",
        ADMIN,
        200,
        path_params=lambda world: {"site_id": world.site.id},
    ),
    Endpoint(
        "PATCH",
        "/admin/chargers/{charger_id}",
        ADMIN,
        200,
        lambda world: {"json": {"max_kw": 11}},
        lambda world: {"charger_id": world.extra["charger"]},
    ),
    Endpoint(
        "POST",
        "/admin/users",
        ADMIN,
        201,
        lambda world: {"json": {"email": _email(), "password": PASSWORD, "role": "grid_operator"}},
    ),
    Endpoint("GET", "/admin/users", ADMIN, 200),
    Endpoint(
        "PATCH",
        "/admin/users/{user_id}",
        ADMIN,
        200,
        lambda world: {"json": {"is_active": False}},
        lambda world: {"user_id": world.others[Role.TRADER].id},
    ),
    Endpoint(
        "POST",
        "/admin/api-keys",
        ADMIN,
        201,
        lambda world: {"json": {"owner_id": world.users[Role.GATEWAY].id, "site_id": world.site.id}},
    ),
    Endpoint("GET", "/admin/api-keys", ADMIN, 200),
    Endpoint(
        "POST",
        "/admin/api-keys/{key_id}/revoke",
        ADMIN,
        200,
        path_params=lambda world: {"key_id": world.extra["api_key"]},
    ),
    Endpoint("POST", "/admin/programs", ADMIN, 201, lambda world: {"json": program_body(world)}),
    Endpoint("GET", "/admin/programs", ADMIN, 200),
    Endpoint(
        "GET",
        "/admin/programs/{program_id}",
        ADMIN,
        200,
        path_params=lambda world: {"program_id": "dr-winter"},
    ),
    Endpoint(
        "PATCH",
        "/admin/programs/{program_id}",
        ADMIN,
        200,
        lambda world: {"json": {"name": "Winter DR 2"}},
        lambda world: {"program_id": "dr-winter"},
    ),
    Endpoint(
        "PUT",
        "/admin/programs/{program_id}/sites/{site_id}",
        ADMIN,
        200,
        path_params=lambda world: {"program_id": "dr-winter", "site_id": world.other_site.id},
    ),
    Endpoint(
        "DELETE",
        "/admin/programs/{program_id}/sites/{site_id}",
        ADMIN,
        204,
        path_params=lambda world: {"program_id": "dr-winter", "site_id": world.site.id},
    ),
]


@pytest.mark.parametrize("caller", CALLERS, ids=lambda caller: caller.value if caller else "anonymous")
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda endpoint: f"{endpoint.method} {endpoint.path}")
def test_authorization_matrix(
    client: TestClient, admin_world: World, endpoint: Endpoint, caller: Caller
) -> None:
    check_endpoint(client, admin_world, endpoint, caller)


def test_every_admin_route_has_a_matrix_row(client: TestClient) -> None:
    # Settlement's /admin routes are in test_settlement_api's matrix; test_api_auth checks the union.
    check_prefix_covered(client, "/admin", ENDPOINTS)
