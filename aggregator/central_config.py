"""The central service's configuration file (``central.toml``), read by ``fleetgrid aggregator`` and
``fleetgrid admin``.

::

    [database]
    url = "sqlite:///fleetgrid.sqlite"      # postgresql+psycopg://user@host/db in production

    [api]
    host = "127.0.0.1"
    port = 8000

    [mqtt]
    url = "embedded"                        # an in-process broker; or mqtt://host:1883, mqtts://host:8883
    username = "centre"
    password_env = "FLEETGRID_MQTT_PASSWORD"

    [control]                               # see aggregator.control.ControlSettings
    cadence_minutes = 15

    [influxdb]                              # optional telemetry mirror
    url = "http://127.0.0.1:8086"
    org = "fleetgrid"
    bucket = "telemetry"
    token_env = "FLEETGRID_INFLUXDB_TOKEN"

Secrets are never in the file: each ``*_env`` names the environment variable that holds one, and the API's
signing secret and environment come from ``FLEETGRID_SECRET_KEY`` / ``FLEETGRID_ENVIRONMENT``
(:class:`aggregator.api.config.Settings`). Every section is optional; unknown keys are refused with the
file and key named.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aggregator.db.session import DEFAULT_URL

EMBEDDED = "embedded"


class CentralConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret(variable: str | None, what: str) -> str | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise CentralConfigError(f"{what}: the environment variable {variable} is not set")
    return value


class DatabaseSection(_Section):
    url: str = DEFAULT_URL


class ApiSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)


class MqttSection(_Section):
    url: str = EMBEDDED
    username: str | None = None
    password_env: str | None = None
    client_id: str = "fleetgrid-centre"

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if url != EMBEDDED and urlsplit(url).scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"must be {EMBEDDED!r} or look like mqtt://host:1883, got {url!r}")
        return url

    @property
    def embedded(self) -> bool:
        return self.url == EMBEDDED

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    def password(self) -> str | None:
        return _secret(self.password_env, "[mqtt] password_env")


class InfluxSection(_Section):
    url: str
    org: str
    bucket: str
    token_env: str

    def token(self) -> str:
        token = _secret(self.token_env, "[influxdb] token_env")
        assert token is not None
        return token


class CentralConfig(_Section):
    database: DatabaseSection = DatabaseSection()
    api: ApiSection = ApiSection()
    mqtt: MqttSection = MqttSection()
    control: dict[str, Any] = Field(default_factory=dict)
    """Passed to :class:`aggregator.control.ControlSettings`, which validates it."""
    influxdb: InfluxSection | None = None

    @classmethod
    def load(cls, path: Path) -> CentralConfig:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise CentralConfigError(f"{path}: cannot read ({error.strerror})") from error
        except tomllib.TOMLDecodeError as error:
            raise CentralConfigError(f"{path}: not valid TOML ({error})") from error
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()
            )
            raise CentralConfigError(f"{path}: {problems}") from error
