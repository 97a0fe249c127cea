"""What every API test module shares: settings, a client, a seeded world, and the authorization matrix.

A test module declares ``ENDPOINTS`` (a list of :class:`Endpoint`) and runs them with
:func:`check_endpoint` for every caller in :data:`CALLERS`; ``test_api_auth`` checks that the
``ENDPOINTS`` of all ``test_api_*`` and ``test_settlement_api*`` modules together cover every route of
the OpenAPI document. Ownership is checked per module: another owner's resource answers 404, so that
a caller cannot even learn that it exists.
"""

from __future__ import annotations

import importlib
import itertools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from aggregator.api.app import create_app
from aggregator.api.config import Settings
from aggregator.api.security import create_access_token, hash_api_key, hash_password
from aggregator.control.replanning import ReplanRequests
from aggregator.db.models import ApiKey, Role, Site, User
from aggregator.db.session import make_sessionmaker

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 in its TestClient; httpx is what we depend on, and still works.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

SECRET = "test-secret-" + "x" * 40
SETTINGS = Settings(secret_key=SecretStr(SECRET), access_token_minutes=15)
PASSWORD = "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)  # argon2 is slow on purpose: hash once for every seeded account
GATEWAY_KEY = "fgk_test-gateway-key"
unique = itertools.count()


@dataclass
class ApiClient:
    """The test client, and the replan requests the app made (the control loop's inbox)."""

    http: TestClient
    replans: ReplanRequests


@pytest.fixture(scope="module")
def api(engine: Engine) -> Iterator[ApiClient]:
    replans = ReplanRequests()
    with TestClient(create_app(SETTINGS, make_sessionmaker(engine), replans=replans)) as http:
        yield ApiClient(http, replans)


@pytest.fixture(scope="module")
def client(api: ApiClient) -> TestClient:
    return api.http


@dataclass
class World:
    """One account per role and a second driver and grid operator (for ownership), two sites, and the
    gateway's API key (bound to ``site``)."""

    users: dict[Role, User]
    others: dict[Role, User]
    site: Site
    other_site: Site
    extra: dict[str, Any] = field(default_factory=dict)
    """What a module's own fixture adds (vehicles, programs, events, ...)."""

    def headers(self, caller: Role | None, *, other: bool = False) -> dict[str, str]:
        """Credentials of ``caller`` (``other``: the second account of that role); none for anonymous."""
        if caller is None:
            return {}
        if caller is Role.GATEWAY and not other:
            return {"X-API-Key": GATEWAY_KEY}
        user = (self.others if other else self.users)[caller]
        return {"Authorization": f"Bearer {create_access_token(user.id, user.role, SETTINGS)}"}


@pytest.fixture
def world(session: Session) -> World:
    users = {
        role: User(email=f"{role.value}@example.org", password_hash=PASSWORD_HASH, role=role) for role in Role
    }
    others = {
        role: User(email=f"other-{role.value}@example.org", password_hash=PASSWORD_HASH, role=role)
        for role in Role
    }
    site = Site(id="depot-1", name="Depot 1", import_limit_kw=250.0, export_limit_kw=100.0)
    other_site = Site(id="depot-2", name="Depot 2", import_limit_kw=150.0, export_limit_kw=0.0)
    session.add_all([*users.values(), *others.values(), site, other_site])
    session.flush()
    session.add(ApiKey(key_hash=hash_api_key(GATEWAY_KEY), owner_id=users[Role.GATEWAY].id, site_id=site.id))
    session.commit()
    return World(users, others, site, other_site)


# ------------------------------------------------------------------------------ authorization matrix

Caller = Role | None  # None: anonymous
CALLERS: list[Caller] = [*Role, None]
EVERYONE = frozenset(CALLERS)
SIGNED_IN = frozenset(Role)
ADMIN = frozenset({Role.ADMIN})
DRIVER = frozenset({Role.DRIVER})
GRID_OPERATOR = frozenset({Role.GRID_OPERATOR})
TRADER = frozenset({Role.TRADER})


@dataclass(frozen=True)
class Endpoint:
    """One route, who may call it, and what a successful call answers.

    ``request`` builds the keyword arguments of ``TestClient.request`` from the world (``json``,
    ``params``, ``data``); ``path`` may hold ``{placeholders}`` that ``path_params`` fills from it.
    """

    method: str
    path: str
    allowed: frozenset[Caller]
    success: int
    request: Callable[[World], dict[str, Any]] = lambda world: {}
    path_params: Callable[[World], dict[str, Any]] = lambda world: {}

    def url(self, world: World) -> str:
        return self.path.format(**self.path_params(world))


def check_endpoint(client: TestClient, world: World, endpoint: Endpoint, caller: Caller) -> None:
    """Call ``endpoint`` as ``caller``: the allowed get ``success``, anonymous 401, the others 403."""
    response = client.request(
        endpoint.method, endpoint.url(world), headers=world.headers(caller), **endpoint.request(world)
    )
    refused = 401 if caller is None else 403
    expected = endpoint.success if caller in endpoint.allowed else refused
    assert response.status_code == expected, f"{caller}: {response.text}"


def all_endpoints() -> list[Endpoint]:
    """The ``ENDPOINTS`` of every API test module."""
    here = Path(__file__).parent
    names = sorted(
        path.stem for pattern in ("test_api_*.py", "test_settlement_api*.py") for path in here.glob(pattern)
    )
    return [
        endpoint for name in names for endpoint in getattr(importlib.import_module(name), "ENDPOINTS", [])
    ]


def openapi_routes(client: TestClient, prefix: str = "") -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every route in the app's OpenAPI document whose path starts with ``prefix``."""
    paths = client.get("/openapi.json").json()["paths"]
    return {
        (method.upper(), path)
        for path, operations in paths.items()
        for method in operations
        if path.startswith(prefix)
    }


def check_prefix_covered(client: TestClient, prefix: str, endpoints: list[Endpoint]) -> None:
    """Every ``prefix`` route has a row in ``endpoints``, except those another module's matrix covers,
    and every row of ``endpoints`` is a route."""
    mine = {(endpoint.method, endpoint.path) for endpoint in endpoints}
    elsewhere = {(endpoint.method, endpoint.path) for endpoint in all_endpoints()} - mine
    assert openapi_routes(client, prefix) - elsewhere == mine
