"""Credentials: argon2 password hashes, signed JWT access tokens for people, API keys for machines."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

import jwt
from pwdlib import PasswordHash
from pydantic import BaseModel, ValidationError

from aggregator.api.config import Settings
from aggregator.db.models import Role

ALGORITHM = "HS256"
API_KEY_PREFIX = "fgk_"

_passwords = PasswordHash.recommended()  # argon2id
_DUMMY_HASH = _passwords.hash(secrets.token_urlsafe(16))


class InvalidTokenError(Exception):
    """An access token that is malformed, forged, expired or carries unexpected claims."""


class TokenClaims(BaseModel):
    sub: int
    """The user's id."""
    role: Role
    exp: dt.datetime
    iat: dt.datetime


# ----------------------------------------------------------------------------------------- passwords


def hash_password(password: str) -> str:
    return _passwords.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """Whether ``password`` matches; with ``password_hash`` ``None`` (no such user) it still spends the
    time of a verification, so response times do not tell which accounts exist."""
    if password_hash is None:
        _passwords.verify(password, _DUMMY_HASH)
        return False
    return _passwords.verify(password, password_hash)


# ------------------------------------------------------------------------------------- access tokens


def create_access_token(
    user_id: int, role: Role, settings: Settings, *, now: dt.datetime | None = None
) -> str:
    issued = now or dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(user_id),
        "role": role.value,
        "iat": issued,
        "exp": issued + dt.timedelta(minutes=settings.access_token_minutes),
    }
    return jwt.encode(claims, settings.secret_key.get_secret_value(), algorithm=ALGORITHM)


def decode_access_token(token: str, settings: Settings) -> TokenClaims:
    """The claims of a valid, unexpired token signed with our secret; :class:`InvalidTokenError` otherwise."""
    try:
        payload = jwt.decode(
            token,
            settings.secret_key.get_secret_value(),
            algorithms=[ALGORITHM],
            options={"require": ["sub", "role", "exp", "iat"]},
        )
        return TokenClaims.model_validate(payload)
    except (jwt.PyJWTError, ValidationError) as error:
        raise InvalidTokenError(str(error)) from error


# ------------------------------------------------------------------------------------------ API keys


def new_api_key() -> str:
    """A fresh random key (256 bits). Show it once; store only :func:`hash_api_key` of it."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 of the key, hex. A fast hash is enough for a 256-bit random key (nothing to brute-force)
    and, unlike argon2, it is deterministic, so a key is found by its hash with one indexed lookup."""
    return hashlib.sha256(key.encode()).hexdigest()
