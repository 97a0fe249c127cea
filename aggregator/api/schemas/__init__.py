"""What the API accepts and returns: one family of pydantic models per resource.

``<Resource>Create`` is a request body, ``<Resource>Public`` what a response shows (never a password
hash or key hash), :class:`Page` a slice of a list.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from aggregator.db.models import Role
from site_gateway.contract import SITE_ID_PATTERN

MAX_PAGE_LIMIT = 100
DEFAULT_PAGE_LIMIT = 50

Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]
Password = Annotated[str, Field(min_length=8, max_length=128)]


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    """How many there are in all, not just on this page."""
    offset: int
    limit: int


# -------------------------------------------------------------------------------------------- users


class UserSignup(BaseModel):
    """A driver signing themselves up."""

    email: Email
    password: Password


class UserCreate(UserSignup):
    """An admin creating an account of any role (grid operators, traders, gateways, admins)."""

    role: Role


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    role: Role
    created_at: dt.datetime


class TokenPublic(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    """Seconds until the token expires."""


# -------------------------------------------------------------------------------------------- sites


def _known_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown IANA time zone {name!r}") from error
    return name


class SiteCreate(BaseModel):
    id: Annotated[str, Field(pattern=SITE_ID_PATTERN)]
    """The site's slug; also its gateway's MQTT username and topic segment."""
    name: Annotated[str, Field(min_length=1, max_length=200)]
    import_limit_kw: Annotated[float, Field(ge=0)]
    export_limit_kw: Annotated[float, Field(ge=0)]
    tariff_ref: Annotated[str | None, Field(max_length=200)] = None
    timezone: Annotated[str, AfterValidator(_known_timezone)] = "UTC"


class SitePublic(SiteCreate):
    model_config = ConfigDict(from_attributes=True)

    created_at: dt.datetime


# ----------------------------------------------------------------------------------------- API keys


class ApiKeyCreate(BaseModel):
    owner_id: int
    """The account the key acts as; a key bound to a site must belong to a ``gateway`` account."""
    site_id: str | None = None


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    owner_id: int
    site_id: str | None
    revoked: bool
    created_at: dt.datetime


class ApiKeyCreated(ApiKeyPublic):
    key: str
    """The key itself, shown in this response only; the server keeps a hash."""
