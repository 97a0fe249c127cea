"""FastAPI dependencies: the database session, the authenticated caller, role checks.

A caller authenticates with either a bearer access token (people, from ``POST /auth/token``) or an
``X-API-Key`` header (machines). Missing or invalid credentials are 401; a valid caller of the wrong
role is 403.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aggregator.api.config import Settings
from aggregator.api.security import InvalidTokenError, decode_access_token, hash_api_key
from aggregator.control.replanning import ReplanRequests
from aggregator.db.models import ApiKey, Role, User

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, from the app's sessionmaker; rolled back if not committed."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session:
        yield session


def current_time(request: Request) -> dt.datetime:
    """Now, aware UTC, on the app's clock (``create_app(clock=...)``: the system's by default, virtual
    in ``fleetgrid simulate``); tests may also move it with ``app.dependency_overrides``."""
    clock: Callable[[], dt.datetime] = request.app.state.clock
    return clock()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
Now = Annotated[dt.datetime, Depends(current_time)]


@dataclass(frozen=True)
class Caller:
    """Who is calling: the account, and the API key used (``None`` for an access token)."""

    user: User
    api_key: ApiKey | None = None

    @property
    def role(self) -> Role:
        return self.user.role


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def get_caller(
    session: SessionDep,
    settings: SettingsDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
    key: Annotated[str | None, Depends(api_key_scheme)],
) -> Caller:
    caller = _authenticate(session, settings, token, key)
    # End the authentication's read transaction, so its connection goes back to the pool while the
    # request waits for a worker thread (the loaded account stays usable: expire_on_commit=False).
    session.commit()
    return caller


def _authenticate(session: Session, settings: Settings, token: str | None, key: str | None) -> Caller:
    if token is not None and key is not None:
        raise _unauthorized("send either a bearer token or an X-API-Key, not both")
    if token is not None:
        try:
            claims = decode_access_token(token, settings)
        except InvalidTokenError as error:
            raise _unauthorized("invalid or expired access token") from error
        user = session.get(User, claims.sub)
        if user is None or user.role is not claims.role:
            raise _unauthorized("the token's account no longer exists or its role changed; log in again")
        if not user.is_active:
            raise _unauthorized("this account is deactivated")
        return Caller(user)
    if key is not None:
        api_key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key)))
        if api_key is None or api_key.revoked:
            raise _unauthorized("invalid or revoked API key")
        owner = session.get(User, api_key.owner_id)
        if owner is None or not owner.is_active:
            raise _unauthorized("invalid or revoked API key")
        return Caller(owner, api_key)
    raise _unauthorized("not authenticated")


CurrentCaller = Annotated[Caller, Depends(get_caller)]


def get_current_user(caller: CurrentCaller) -> User:
    return caller.user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_roles(*roles: Role) -> Callable[[Caller], Caller]:
    """A dependency that passes callers of one of ``roles`` and refuses the others with 403."""
    allowed = frozenset(roles)
    names = ", ".join(sorted(role.value for role in allowed))

    def check_role(caller: CurrentCaller) -> Caller:
        if caller.role not in allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"this needs the role {names}")
        return caller

    return check_role


AdminCaller = Annotated[Caller, Depends(require_roles(Role.ADMIN))]


def get_replans(request: Request) -> ReplanRequests:
    replans: ReplanRequests = request.app.state.replans
    return replans


ReplanDep = Annotated[ReplanRequests, Depends(get_replans)]
"""The control loop's inbox: ``replans.request(site_id, reason)`` after a change that needs a new plan."""
