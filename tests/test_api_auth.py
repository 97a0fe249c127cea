"""The API's foundation on SQLite and PostgreSQL: sign-up and login, tokens and API keys, and an
authorization matrix of every endpoint against every role."""

from __future__ import annotations

import datetime as dt
from typing import Any

import jwt
import pytest
from api_world import (
    CALLERS,
    EVERYONE,
    GATEWAY_KEY,
    PASSWORD,
    SECRET,
    SETTINGS,
    SIGNED_IN,
    Caller,
    Endpoint,
    TestClient,
    World,
    all_endpoints,
    check_endpoint,
    openapi_routes,
    unique,
)
from pydantic import SecretStr, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.api.config import DEVELOPMENT_SECRET_KEY, Environment, InsecureSettingsError, Settings
from aggregator.api.schemas import MAX_PAGE_LIMIT
from aggregator.api.security import create_access_token, hash_api_key
from aggregator.db.models import ApiKey, Role, User


def login(client: TestClient, email: str, password: str) -> Any:
    return client.post("/auth/token", data={"username": email, "password": password})


# ------------------------------------------------------------------------------ people and tokens


def test_signup_login_and_me(client: TestClient, session: Session) -> None:
    signed_up = client.post("/auth/signup", json={"email": " Ada@Example.org ", "password": PASSWORD})
    assert signed_up.status_code == 201, signed_up.text
    assert signed_up.json()["email"] == "ada@example.org"
    assert signed_up.json()["role"] == "driver"
    assert "password" not in signed_up.text

    stored = session.scalars(select(User).where(User.email == "ada@example.org")).one()
    assert stored.password_hash.startswith("$argon2id$")

    token = login(client, "ada@example.org", PASSWORD)
    assert token.status_code == 200, token.text
    assert token.json()["token_type"] == "bearer"
    assert token.json()["expires_in"] == 15 * 60

    me = client.get("/users/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    assert me.status_code == 200, me.text
    assert me.json() == signed_up.json()


def test_signup_twice_is_a_conflict(client: TestClient, world: World) -> None:
    again = client.post("/auth/signup", json={"email": "driver@example.org", "password": PASSWORD})
    assert again.status_code == 409


def test_signup_refuses_a_short_password(client: TestClient, session: Session) -> None:
    assert (
        client.post("/auth/signup", json={"email": "b@example.org", "password": "short"}).status_code == 422
    )


@pytest.mark.parametrize(
    ("email", "password"),
    [("driver@example.org", "wrong password"), ("nobody@example.org", PASSWORD)],
    ids=["wrong-password", "unknown-user"],
)
def test_login_refused(client: TestClient, world: World, email: str, password: str) -> None:
    refused = login(client, email, password)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert "access_token" not in refused.json()


def _me_with(client: TestClient, token: str) -> int:
    return client.get("/users/me", headers={"Authorization": f"Bearer {token}"}).status_code


def test_expired_token_is_refused(client: TestClient, world: World) -> None:
    driver = world.users[Role.DRIVER]
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=16)
    assert _me_with(client, create_access_token(driver.id, driver.role, SETTINGS, now=issued)) == 401
    fresh = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=14)
    assert _me_with(client, create_access_token(driver.id, driver.role, SETTINGS, now=fresh)) == 200


def test_forged_tokens_are_refused(client: TestClient, world: World) -> None:
    driver = world.users[Role.DRIVER]
    other_secret = Settings(secret_key=SecretStr("another-secret-" + "y" * 40))
    assert _me_with(client, create_access_token(driver.id, driver.role, other_secret)) == 401

    claims = jwt.decode(
        create_access_token(driver.id, driver.role, SETTINGS), options={"verify_signature": False}
    )
    admin_claims = {**claims, "role": "admin"}
    assert _me_with(client, jwt.encode(admin_claims, "guessed-secret-" + "z" * 40, algorithm="HS256")) == 401
    unsigned = jwt.encode(admin_claims, "", algorithm="none")
    assert _me_with(client, unsigned) == 401
    assert _me_with(client, "not-a-jwt") == 401


def test_token_of_a_changed_role_is_refused(client: TestClient, world: World, session: Session) -> None:
    trader = world.users[Role.TRADER]
    token = create_access_token(trader.id, trader.role, SETTINGS)
    trader.role = Role.DRIVER
    session.commit()
    assert _me_with(client, token) == 401


# ----------------------------------------------------------------------------------------- API keys


def test_api_key_authenticates_its_owner(client: TestClient, world: World) -> None:
    me = client.get("/users/me", headers={"X-API-Key": GATEWAY_KEY})
    assert me.status_code == 200, me.text
    assert me.json()["role"] == "gateway"


def test_unknown_and_revoked_api_keys_are_refused(client: TestClient, world: World, session: Session) -> None:
    assert client.get("/users/me", headers={"X-API-Key": "fgk_guessed"}).status_code == 401
    key = session.scalars(select(ApiKey)).one()
    key.revoked = True
    session.commit()
    assert client.get("/users/me", headers={"X-API-Key": GATEWAY_KEY}).status_code == 401


def test_admin_issues_a_gateway_key_shown_once(client: TestClient, world: World, session: Session) -> None:
    admin = world.headers(Role.ADMIN)
    gateway = client.post(
        "/admin/users",
        headers=admin,
        json={"email": "gw-2@example.org", "password": PASSWORD, "role": "gateway"},
    )
    assert gateway.status_code == 201, gateway.text
    issued = client.post(
        "/admin/api-keys", headers=admin, json={"owner_id": gateway.json()["id"], "site_id": world.site.id}
    )
    assert issued.status_code == 201, issued.text
    key = issued.json()["key"]
    stored = session.get(ApiKey, issued.json()["id"])
    assert stored is not None
    assert stored.key_hash == hash_api_key(key) != key

    me = client.get("/users/me", headers={"X-API-Key": key})
    assert me.status_code == 200
    assert me.json()["email"] == "gw-2@example.org"


def test_a_site_key_must_belong_to_a_gateway(client: TestClient, world: World) -> None:
    body = {"owner_id": world.users[Role.TRADER].id, "site_id": world.site.id}
    assert client.post("/admin/api-keys", headers=world.headers(Role.ADMIN), json=body).status_code == 422
    body = {"owner_id": world.users[Role.GATEWAY].id, "site_id": "no-such-site"}
    assert client.post("/admin/api-keys", headers=world.headers(Role.ADMIN), json=body).status_code == 422


# --------------------------------------------------------------------------------------------- sites


def test_sites_are_paginated(client: TestClient, world: World) -> None:
    admin = world.headers(Role.ADMIN)
    for n in range(3, 6):
        body = {"id": f"depot-{n}", "name": f"Depot {n}", "import_limit_kw": 100, "export_limit_kw": 0}
        assert client.post("/admin/sites", headers=admin, json=body).status_code == 201
    page = client.get("/admin/sites", headers=admin, params={"offset": 1, "limit": 2}).json()
    assert page["total"] == 5
    assert [site["id"] for site in page["items"]] == ["depot-2", "depot-3"]
    assert (page["offset"], page["limit"]) == (1, 2)
    too_many = client.get("/admin/sites", headers=admin, params={"limit": MAX_PAGE_LIMIT + 1})
    assert too_many.status_code == 422


def test_site_input_is_validated(client: TestClient, world: World) -> None:
    admin = world.headers(Role.ADMIN)
    base = {"id": "depot-9", "name": "Depot 9", "import_limit_kw": 100, "export_limit_kw": 0}
    for bad in ({"id": "has space"}, {"import_limit_kw": -1}, {"timezone": "Mars/Olympus"}):
        assert client.post("/admin/sites", headers=admin, json={**base, **bad}).status_code == 422, bad
    assert client.post("/admin/sites", headers=admin, json={**base, "id": world.site.id}).status_code == 409


# ------------------------------------------------------------------------------ authorization matrix


def _email() -> str:
    return f"new-{next(unique)}@example.org"


ENDPOINTS = [
    Endpoint(
        "POST",
        "/auth/token",
        EVERYONE,
        200,
        lambda world: {"data": {"username": "driver@example.org", "password": PASSWORD}},
    ),
    Endpoint(
        "POST",
        "/auth/signup",
        EVERYONE,
        201,
        lambda world: {"json": {"email": _email(), "password": PASSWORD}},
    ),
    Endpoint("GET", "/users/me", SIGNED_IN, 200),
    Endpoint("GET", "/healthz", EVERYONE, 200),  # health: public, ok/fail per check only
    Endpoint("GET", "/readyz", EVERYONE, 200),
]


def test_the_matrix_covers_every_route(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    routes = openapi_routes(client)
    covered = {(endpoint.method, endpoint.path) for endpoint in all_endpoints()}
    assert routes - covered == set(), "routes without a row in an authorization matrix"
    assert covered - routes == set(), "matrix rows for routes that do not exist"


@pytest.mark.parametrize("caller", CALLERS, ids=lambda caller: caller.value if caller else "anonymous")
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda endpoint: f"{endpoint.method} {endpoint.path}")
def test_authorization_matrix(client: TestClient, world: World, endpoint: Endpoint, caller: Caller) -> None:
    check_endpoint(client, world, endpoint, caller)


# ---------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("environment", [Environment.STAGING, Environment.PRODUCTION])
@pytest.mark.parametrize("secret", [None, "", DEVELOPMENT_SECRET_KEY, "short-secret"])
def test_settings_refuse_weak_secrets_outside_development(
    environment: Environment, secret: str | None
) -> None:
    environ = {"FLEETGRID_ENVIRONMENT": environment.value}
    if secret is not None:
        environ["FLEETGRID_SECRET_KEY"] = secret
    with pytest.raises(ValidationError, match="FLEETGRID_SECRET_KEY") as raised:
        Settings.from_env(environ)
    assert isinstance(raised.value.errors()[0]["ctx"]["error"], InsecureSettingsError)


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "FLEETGRID_ENVIRONMENT": "production",
            "FLEETGRID_SECRET_KEY": SECRET,
            "FLEETGRID_DATABASE_URL": "postgresql://db/fleetgrid",
            "FLEETGRID_ACCESS_TOKEN_MINUTES": "5",
            "UNRELATED": "ignored",
        }
    )
    assert settings.environment is Environment.PRODUCTION
    assert settings.secret_key.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert (settings.database_url, settings.access_token_minutes) == ("postgresql://db/fleetgrid", 5)


def test_development_accepts_the_default_secret() -> None:
    assert Settings.from_env({}).secret_key.get_secret_value() == DEVELOPMENT_SECRET_KEY
