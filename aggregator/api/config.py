"""API settings from ``FLEETGRID_*`` environment variables, refusing insecure secrets outside development.

=====================================  ===========================================================
``FLEETGRID_ENVIRONMENT``              ``development`` (default), ``staging`` or ``production``
``FLEETGRID_SECRET_KEY``               signs access tokens; required outside development
``FLEETGRID_DATABASE_URL``             SQLAlchemy URL (default: :data:`aggregator.db.session.DEFAULT_URL`)
``FLEETGRID_ACCESS_TOKEN_MINUTES``     lifetime of an access token (default 60)
=====================================  ===========================================================
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from aggregator.db.session import DEFAULT_URL

log = logging.getLogger(__name__)

ENV_PREFIX = "FLEETGRID_"
DEVELOPMENT_SECRET_KEY = "fleetgrid-development-secret-do-not-deploy"
"""The secret used when none is set; accepted only in development (it is public, in this file)."""
MIN_SECRET_LENGTH = 32
"""Bytes of secret for HS256 (RFC 7518 §3.2 asks for a key at least as long as the hash)."""


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"


class InsecureSettingsError(ValueError):
    """A setting that would be unsafe in the configured environment (e.g. the default secret)."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    environment: Environment = Environment.DEVELOPMENT
    secret_key: SecretStr = SecretStr(DEVELOPMENT_SECRET_KEY)
    database_url: str = DEFAULT_URL
    access_token_minutes: int = Field(default=60, gt=0, le=7 * 24 * 60)

    @model_validator(mode="after")
    def _refuse_insecure_secret(self) -> Settings:
        secret = self.secret_key.get_secret_value()
        if self.environment is Environment.DEVELOPMENT:
            if secret == DEVELOPMENT_SECRET_KEY:
                log.warning("using the development secret key; set %sSECRET_KEY before deploying", ENV_PREFIX)
            return self
        if not secret or secret == DEVELOPMENT_SECRET_KEY:
            message = (
                f"{ENV_PREFIX}SECRET_KEY must be set to a secret of your own in {self.environment.value}"
                " (the default is public); generate one with:"
                " python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
            raise InsecureSettingsError(message)
        if len(secret.encode()) < MIN_SECRET_LENGTH:
            message = (
                f"{ENV_PREFIX}SECRET_KEY is {len(secret.encode())} bytes; {self.environment.value}"
                f" needs at least {MIN_SECRET_LENGTH}"
            )
            raise InsecureSettingsError(message)
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``FLEETGRID_<FIELD>`` variables of ``environ`` (default :data:`os.environ`)."""
        environ = os.environ if environ is None else environ
        values = {
            name: environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in environ
        }
        return cls.model_validate(values)
