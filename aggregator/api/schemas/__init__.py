"""What the API accepts and returns: one family of pydantic models per resource.

``<Resource>Create`` is a request body, ``<Resource>Public`` what a response shows (never a password
hash or key hash), :class:`Page` a slice of a list. This module holds what every router shares
(pages, accounts, tokens); each router's own resources have a module here (``admin``, ``operators``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from aggregator.db.models import Role

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
