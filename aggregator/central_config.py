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

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aggregator.db.session import DEFAULT_URL
from site_gateway.config import ConfigError, MqttBrokerSection, read_toml, secret_from_env

EMBEDDED = "embedded"


class CentralConfigError(ConfigError):
    """A configuration file that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSection(_Section):
    url: str = DEFAULT_URL


class ApiSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)


class MqttSection(MqttBrokerSection):
    config_error: ClassVar[type[ConfigError]] = CentralConfigError

    url: str = EMBEDDED
    client_id: str = "fleetgrid-centre"

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if url == EMBEDDED:
            return url
        return MqttBrokerSection._scheme(url)

    @property
    def embedded(self) -> bool:
        return self.url == EMBEDDED


class InfluxSection(_Section):
    url: str
    org: str
    bucket: str
    token_env: str

    def token(self) -> str:
        token = secret_from_env(self.token_env, "[influxdb] token_env", CentralConfigError)
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
        return read_toml(path, cls, CentralConfigError)
