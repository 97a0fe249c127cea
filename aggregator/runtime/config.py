"""The central service's configuration file (``central.toml``), read by ``fleetgrid aggregator`` and
``fleetgrid admin``.

::

    [database]
    url = "sqlite:///fleetgrid.sqlite"      # postgresql+psycopg://user@host/db in production

    [api]
    host = "127.0.0.1"
    port = 8000

    [metrics]                               # optional: Prometheus /metrics, /healthz, /readyz
    host = "127.0.0.1"                      # its own listener, not the API's port
    port = 9464

    [mqtt]
    url = "embedded"                        # an in-process broker; or mqtt://host:1883, mqtts://host:8883
    username = "centre"
    password_env = "FLEETGRID_MQTT_PASSWORD"

    [control]                               # aggregator.control.loop.ControlSettings
    cadence_minutes = 15                    # a duration's key names its unit (CONTROL_DURATIONS)
    solver_time_limit_s = 10
    setpoint_validity_minutes = 60

    [control.planning]                      # aggregator.control.inputs.PlanningSettings
    horizon_hours = 24
    step_minutes = 15

    [influxdb]                              # optional telemetry mirror
    url = "http://127.0.0.1:8086"
    org = "fleetgrid"
    bucket = "telemetry"
    token_env = "FLEETGRID_INFLUXDB_TOKEN"

    [[openadr]]                             # optional, repeatable: one VEN per grid operator's VTN
    kind = "3"                              # OpenADR 3 (REST, OAuth2); or "2.0b" (see below)
    vtn_url = "https://vtn.example.com/openadr3/3.0.1"
    ven_name = "fleetgrid"                  # the clientName in our reports
    client_id = "fleetgrid-ven"
    client_secret_env = "FLEETGRID_OPENADR_SECRET"
    program_map = { "DR-EVENING" = "evening-dr" }   # VTN programName -> our program id
    site_map = { "depot-a" = "depot-1" }             # VTN RESOURCE_NAME target -> our site id
    simple_levels_kw = { 1 = 50, 2 = 100, 3 = 200 }  # SIMPLE level -> import reduction [kW]

    [[openadr]]
    kind = "2.0b"                           # OpenADR 2.0b through openleadr
    vtn_url = "https://vtn.example.com/OpenADR2/Simple/2.0b"
    ven_name = "fleetgrid"
    cert_path = "/etc/fleetgrid/ven.pem"    # or insecure_test_mode = true, never in production
    key_path = "/etc/fleetgrid/ven.key"
    ca_path = "/etc/fleetgrid/vtn-ca.pem"
    vtn_fingerprint = "AB:CD:..."
    program_map = { "http://vtn.example.com/programs/peak" = "evening-dr" }  # market context -> ours
    currency = "USD"                        # of ELECTRICITY_PRICE signals

Secrets are never in the file: each ``*_env`` names the environment variable that holds one, and the API's
signing secret and environment come from ``FLEETGRID_SECRET_KEY`` / ``FLEETGRID_ENVIRONMENT``
(:class:`aggregator.api.config.Settings`). Every section is optional. A mistake is one line naming the
file, the key and what is wrong; an unknown key gets the keys its table allows. ``[control]`` is checked
by :meth:`CentralConfig.control_settings` (``fleetgrid aggregator`` calls it before it starts), so that
the commands that only need the database do not load the control loop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from aggregator.db.session import DEFAULT_URL
from site_gateway.config import (
    ConfigError,
    MqttBrokerSection,
    config_problems,
    read_toml,
    secret_from_env,
    unknown_key,
)

if TYPE_CHECKING:  # imported where used: `fleetgrid admin` reads this file and needs neither
    from aggregator.control.loop import ControlSettings
    from market_adapters.openadr2 import Openadr2Settings
    from market_adapters.openadr3_objects import OpenAdr3Settings

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


class MetricsSection(_Section):
    """The Prometheus listener (:mod:`aggregator.runtime.metrics`): ``/metrics``, ``/healthz`` and
    ``/readyz`` on their own port. Off unless the section is present."""

    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    """0: a free port (tests)."""
    event_cache_s: float = Field(5.0, gt=0, le=300)
    """How long [s] the live dispatch-event and settlement figures, read from the database, are reused
    between scrapes."""


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


def _adapter_problems(error: ValidationError) -> PydanticCustomError:
    """The adapter's own refusal of its settings, as this section's error (without pydantic's prefix)."""
    problems = "; ".join(
        ": ".join(
            part
            for part in (".".join(str(p) for p in e["loc"]), e["msg"].removeprefix("Value error, "))
            if part
        )
        for e in error.errors()
    )
    return PydanticCustomError("adapter_settings", "{problems}", {"problems": problems})


class _OpenadrSection(_Section):
    """What both OpenADR versions share. ``program_map`` and ``site_map`` map the VTN's names to ours."""

    vtn_url: str = Field(min_length=1)
    ven_name: str = Field(min_length=1, max_length=128)
    program_map: dict[str, str] = Field(default_factory=dict)
    """VTN program (2.0b: market context; 3: programName) -> our program id."""
    site_map: dict[str, str] = Field(default_factory=dict)
    """VTN target resource -> our site id."""
    simple_levels_kw: dict[int, float] = Field(default_factory=dict)
    """SIMPLE level -> import reduction [kW]."""

    @model_validator(mode="after")
    def _adapter_accepts(self) -> _OpenadrSection:
        try:
            self._settings(secret="not-checked-here")
        except ValidationError as error:
            raise _adapter_problems(error) from error
        return self

    def _settings(self, secret: str | None) -> Openadr2Settings | OpenAdr3Settings:
        raise NotImplementedError

    def adapter_settings(self, where: str) -> Openadr2Settings | OpenAdr3Settings:
        """The adapter's settings, with secrets read from the environment (``where`` names the section)."""
        raise NotImplementedError


class Openadr2Section(_OpenadrSection):
    """An OpenADR 2.0b VEN (:class:`market_adapters.openadr2.Openadr2Settings`)."""

    kind: Literal["2.0b"]
    ven_id: str | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    key_passphrase_env: str | None = None
    ca_path: Path | None = None
    vtn_fingerprint: str | None = None
    insecure_test_mode: bool = False
    currency: str = Field("EUR", min_length=3, max_length=3)
    """Of the VTN's ELECTRICITY_PRICE signals [per kWh]."""
    poll_interval_s: float | None = Field(None, gt=0)
    """Overrides the VTN's requested poll frequency [s]."""
    request_timeout_s: float = Field(20.0, gt=0)

    def _settings(self, secret: str | None) -> Openadr2Settings:
        from market_adapters.openadr2 import Openadr2Settings, ProgramMapping

        return Openadr2Settings(
            vtn_url=self.vtn_url,
            ven_name=self.ven_name,
            ven_id=self.ven_id,
            cert_path=self.cert_path,
            key_path=self.key_path,
            key_passphrase=secret,
            ca_path=self.ca_path,
            vtn_fingerprint=self.vtn_fingerprint,
            insecure_test_mode=self.insecure_test_mode,
            programs={
                context: ProgramMapping(
                    program_id=program_id, simple_levels_kw=self.simple_levels_kw, currency=self.currency
                )
                for context, program_id in self.program_map.items()
            },
            sites=self.site_map,
            poll_interval=None
            if self.poll_interval_s is None
            else dt.timedelta(seconds=self.poll_interval_s),
            request_timeout=dt.timedelta(seconds=self.request_timeout_s),
        )

    def adapter_settings(self, where: str) -> Openadr2Settings:
        secret = secret_from_env(self.key_passphrase_env, f"{where} key_passphrase_env", CentralConfigError)
        return self._settings(secret)


class Openadr3Section(_OpenadrSection):
    """An OpenADR 3 client (:class:`market_adapters.openadr3.OpenAdr3Settings`); ``ven_name`` is its
    ``clientName``."""

    kind: Literal["3"]
    client_id: str = Field(min_length=1)
    client_secret_env: str = Field(min_length=1)
    scope: str | None = None
    token_url: str | None = None
    programs: tuple[str, ...] = ()
    """programName or id of the VTN programs to follow; empty = all."""
    poll_interval_s: float = Field(30.0, gt=0)
    request_timeout_s: float = Field(10.0, gt=0)

    def _settings(self, secret: str | None) -> OpenAdr3Settings:
        from market_adapters.openadr3_objects import OpenAdr3Settings

        return OpenAdr3Settings(
            vtn_url=self.vtn_url,
            client_id=self.client_id,
            client_secret=secret or "",
            scope=self.scope,
            token_url=self.token_url,
            client_name=self.ven_name,
            programs=self.programs,
            program_map=self.program_map,
            site_map=self.site_map,
            simple_levels_kw=self.simple_levels_kw,
            poll_interval_s=self.poll_interval_s,
            request_timeout_s=self.request_timeout_s,
        )

    def adapter_settings(self, where: str) -> OpenAdr3Settings:
        secret = secret_from_env(self.client_secret_env, f"{where} client_secret_env", CentralConfigError)
        return self._settings(secret)


OpenadrSection = Annotated[Openadr2Section | Openadr3Section, Field(discriminator="kind")]


MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)

CONTROL_DURATIONS: dict[str, tuple[str, dt.timedelta]] = {
    "cadence_minutes": ("cadence", MINUTE),
    "setpoint_validity_minutes": ("setpoint_validity", MINUTE),
    "horizon_hours": ("horizon", HOUR),
    "default_dwell_hours": ("default_dwell", HOUR),
    "overdue_stay_minutes": ("overdue_stay", MINUTE),
    "base_load_max_age_minutes": ("base_load_max_age", MINUTE),
}
"""``[control]`` and ``[control.planning]`` keys that are durations: the key names the unit, and sets the
:class:`~aggregator.control.loop.ControlSettings` / :class:`~aggregator.control.inputs.PlanningSettings` field
(a :class:`~datetime.timedelta`). Every other key is the settings field's own name."""


class CentralConfig(_Section):
    database: DatabaseSection = DatabaseSection()
    api: ApiSection = ApiSection()
    metrics: MetricsSection | None = None
    """The metrics listener; ``None``: no metrics are exposed."""
    mqtt: MqttSection = MqttSection()
    control: dict[str, Any] = Field(default_factory=dict)
    """The control loop's settings as written; :meth:`control_settings` validates them."""
    influxdb: InfluxSection | None = None
    openadr: list[OpenadrSection] = Field(default_factory=list)
    """One VEN per entry, started by the service (see :mod:`aggregator.control.grid_signals`)."""

    _source: Path | None = PrivateAttr(None)
    """The file this was read from, named in errors."""

    @classmethod
    def load(cls, path: Path) -> CentralConfig:
        config = read_toml(path, cls, CentralConfigError)
        config._source = Path(path)
        return config

    def control_settings(self) -> ControlSettings:
        """``[control]`` as the control loop's settings; :class:`CentralConfigError` naming the file, the
        key (``control.planning.horizon_hours``) and what is wrong, with the keys allowed for an
        unknown one."""
        from aggregator.control.loop import ControlSettings

        where = self._source or Path("central.toml")
        problems: list[str] = []
        values = _settings_values(self.control, ControlSettings, "control", problems)
        if not problems:
            try:
                return TypeAdapter(ControlSettings).validate_python(values)
            except ValidationError as error:
                problems.append(config_problems(error, ControlSettings, prefix="control"))
        raise CentralConfigError(f"{where}: {'; '.join(problems)}")


def _settings_values(
    table: Mapping[str, Any], settings: Any, where: str, problems: list[str]
) -> dict[str, Any]:
    """A ``[control]`` table (or its ``planning`` table) as values of the dataclass ``settings``: durations
    from :data:`CONTROL_DURATIONS` keys; unknown keys and bad durations appended to ``problems``."""
    file_keys = {setting: key for key, (setting, _) in CONTROL_DURATIONS.items()}
    allowed = [file_keys.get(field.name, field.name) for field in dataclasses.fields(settings)]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in allowed:
            problems.append(f"{where}.{key}: {unknown_key(key, allowed)}")
        elif key in CONTROL_DURATIONS:
            setting, unit = CONTROL_DURATIONS[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                problems.append(
                    f"{where}.{key}: must be a positive number of {key.rsplit('_', 1)[1]}, got {value!r}"
                )
            else:
                values[setting] = value * unit
        elif key == "planning" and isinstance(value, Mapping):
            from aggregator.control.inputs import PlanningSettings

            values[key] = _settings_values(value, PlanningSettings, f"{where}.planning", problems)
        else:
            values[key] = value
    return values
