"""The gateway's configuration file (``site.toml``): one depot, its grid connection, chargers and uplink.

Example::

    accept_unknown_tokens = true      # unknown RFID cards and eMAIDs may still charge (a top-level key,
                                      # so before the first table)

    [site]
    id = "depot-north"
    import_limit_kw = 150
    export_limit_kw = 50

    [ocpp]
    host = "0.0.0.0"
    port = 9000
    allow_unknown = false             # refuse charge points not listed below
    # tls_cert = "/etc/fleetgrid/gateway.pem"   # OCPP security profile 2
    # tls_key  = "/etc/fleetgrid/gateway.key"

    [mqtt]
    url = "mqtt://127.0.0.1:1883"     # mqtts:// for TLS
    username = "depot-north"
    password_env = "FLEETGRID_MQTT_PASSWORD"   # read the secret from the environment
    outbox = "/var/lib/fleetgrid/outbox.sqlite"

    [metrics]                         # Prometheus /metrics, /healthz, /readyz; off without this table
    host = "127.0.0.1"                # the default: scraped from this machine (a local agent or tunnel)
    port = 9464                       # never the OCPP port

    [control]
    schedule_stale_after_s = 900      # no fresh setpoints for this long: local fallback
    default_limit_kw = 7.4            # TxDefaultProfile sent at boot; the gateway lowers it so that
                                      # all listed chargers at it stay within import_limit_kw

    [[chargers]]
    id = "CP-01"
    password_env = "FLEETGRID_CP01_PASSWORD"   # HTTP basic auth (security profile 1); omit for none
    max_charge_kw = 11
    max_discharge_kw = 11             # only used on OCPP 2.1 or a 2.0.1 charger marked below; on 2.1
                                      # a vehicle that reports its needs must have negotiated BPT
    limit_unit = "W"                  # "A" for current limits (W x V x phases); a charger that says
                                      # it takes only the other unit gets that one
    phases = 3
    discharge_on_201 = false

    [[tokens]]                        # local authorization list (the centre will push it later)
    id_token = "04A2B3C4D5"
    driver_id = "driver-17"
    vehicle_id = "van-17"

Secrets never sit in the file: ``password_env`` names an environment variable.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import ssl
import tomllib
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from wire.mqtt import BrokerUrl, tls_context


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def secret_from_env(env: str | None, what: str, error: type[ConfigError] = ConfigError) -> str | None:
    """The secret in environment variable ``env`` (``None`` when no variable is named); ``error``
    naming ``what`` when the variable is not set."""
    if env is None:
        return None
    value = os.environ.get(env)
    if value is None:
        raise error(f"{what}: the environment variable {env} is not set")
    return value


class SiteSection(_Section):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    import_limit_kw: float = Field(ge=0)
    export_limit_kw: float = Field(0.0, ge=0)


class OcppSection(_Section):
    host: str = "0.0.0.0"
    port: int = Field(9000, ge=0, le=65535)
    allow_unknown: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    heartbeat_interval_s: int = Field(300, gt=0)
    response_timeout_s: float = Field(
        10.0, gt=0, description="How long a call waits for a charger's answer [s on the gateway's clock]"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> OcppSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class MqttBrokerSection(_Section):
    """Where an MQTT broker is and how to log in; the secret comes from the environment. The URL is
    read as every MQTT client of ours reads it (:class:`wire.mqtt.BrokerUrl`)."""

    config_error: ClassVar[type[ConfigError]] = ConfigError

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_env: str | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        BrokerUrl.parse(url)
        return url

    @property
    def host(self) -> str:
        return BrokerUrl.parse(self.url).host

    @property
    def port(self) -> int:
        return BrokerUrl.parse(self.url).port

    @property
    def tls(self) -> bool:
        return BrokerUrl.parse(self.url).tls

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context of an ``mqtts://`` broker (the system's CA certificates); ``None`` for ``mqtt://``."""
        return tls_context(self.tls)

    def password(self) -> str | None:
        return secret_from_env(self.password_env, "mqtt.password_env", self.config_error)


class MqttSection(MqttBrokerSection):
    outbox: Path = Path("fleetgrid-outbox.sqlite")
    keepalive_s: int = Field(30, gt=0)


class MetricsSection(_Section):
    """Where the gateway serves ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``
    (:mod:`site_gateway.metrics`). Bound to the loopback by default: an operator who wants it
    scraped from elsewhere names the address."""

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535, description="0 picks a free port (tests)")


class ControlSection(_Section):
    schedule_stale_after_s: float = Field(900.0, gt=0)
    charger_response_s: float = Field(
        5.0,
        ge=0,
        description="How long to wait for lowered chargers to show it before raising others [s on the "
        "gateway's clock]",
    )
    default_limit_kw: float = Field(7.4, ge=0)
    telemetry_interval_s: float = Field(10.0, gt=0)


class ChargerSection(_Section):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    password_env: str | None = None
    max_charge_kw: float = Field(22.0, ge=0)
    max_discharge_kw: float = Field(0.0, ge=0)
    limit_unit: Literal["W", "A"] = "W"
    phases: int = Field(3, ge=1, le=3)
    voltage_v: float = Field(230.0, gt=0)
    discharge_on_201: bool = False

    def password(self) -> str | None:
        return secret_from_env(self.password_env, f"chargers[{self.id}].password_env")


class TokenSection(_Section):
    """A locally known idToken (RFID uid or ISO 15118 eMAID) and whom it belongs to."""

    id_token: str = Field(min_length=1, max_length=64)
    driver_id: str | None = None
    vehicle_id: str | None = None


class GatewayConfig(_Section):
    site: SiteSection
    ocpp: OcppSection = OcppSection()
    mqtt: MqttSection = MqttSection()
    control: ControlSection = ControlSection()
    metrics: MetricsSection | None = None
    """The metrics and health listener; ``None`` (no ``[metrics]`` table): not served."""
    chargers: list[ChargerSection] = Field(default_factory=list)
    tokens: list[TokenSection] = Field(default_factory=list)
    """Local authorization list: tokens mapped to enrolled drivers and vehicles."""
    accept_unknown_tokens: bool = True
    """Let drivers with tokens not in ``tokens`` charge (their sessions carry no driver id)."""

    @model_validator(mode="after")
    def _unique_ids(self) -> GatewayConfig:
        for what, ids in (
            ("charger", [c.id for c in self.chargers]),
            ("token", [t.id_token for t in self.tokens]),
        ):
            seen: set[str] = set()
            for ident in ids:
                if ident in seen:
                    raise ValueError(f"{what} {ident!r} is listed twice")
                seen.add(ident)
        return self

    @model_validator(mode="after")
    def _metrics_port(self) -> GatewayConfig:
        metrics = self.metrics
        if metrics is not None and metrics.port != 0 and metrics.port == self.ocpp.port:
            raise ValueError(
                f"metrics.port {metrics.port} is the OCPP port: the chargers' listener is not the metrics one"
            )
        return self

    def charger(self, charge_point_id: str) -> ChargerSection | None:
        return next((c for c in self.chargers if c.id == charge_point_id), None)


M = TypeVar("M", bound=BaseModel)


def read_toml(path: str | Path, model: type[M], error: type[ConfigError] = ConfigError) -> M:
    """Read ``path`` as TOML into ``model``; ``error`` naming the file, then each key that is wrong and
    what is wrong with it, on one line (see :func:`config_problems`)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{path}: cannot read: no such file") from exc
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: {config_problems(exc, model)}") from exc


def config_problems(error: ValidationError, model: Any, prefix: str = "") -> str:
    """``error``'s problems on one line, ``; ``-separated, in the file's terms: the key path as written
    in TOML (``chargers[0].max_charge_kw``; ``prefix`` before it), then an unknown key with the keys
    its table allows, a missing required key, or the value's problem with the value given.

    ``model`` is the type that was validated (a pydantic model or a dataclass): the allowed keys are
    read from its fields."""
    return "; ".join(_problem(e, model, prefix) for e in error.errors(include_url=False))


def _problem(error: ErrorDetails, model: Any, prefix: str) -> str:
    path, allowed = _where(model, error["loc"], prefix)
    if error["type"] == "extra_forbidden":
        what = unknown_key(str(error["loc"][-1]), allowed)
    elif error["type"] == "missing":
        what = "required key missing"
    else:
        what = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        if isinstance(given, str | int | float) and repr(given) not in what:
            shown = repr(given)
            what += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    text = f"{path}: {what}" if path else what
    return " ".join(text.splitlines())


def unknown_key(key: str, allowed: Sequence[str] | None) -> str:
    """What is wrong with ``key``: unknown, the closest allowed key if one is close, the allowed keys."""
    close = difflib.get_close_matches(key, allowed or [], n=1)
    what = "unknown key" + (f" (did you mean {close[0]}?)" if close else "")
    return what if allowed is None else f"{what}; allowed keys: {', '.join(allowed)}"


def _where(model: Any, loc: tuple[int | str, ...], prefix: str) -> tuple[str, list[str] | None]:
    """The key path of an error's ``loc`` as written in the file, and the keys that the table holding
    its last key allows (``None`` where the types do not say). Pydantic's tag of a tagged union's member
    (``openadr.0.3.client_id``) is not a key of the file and is left out."""
    path, annotation, table = prefix, model, model
    for part in loc:
        member = _tagged_member(annotation, part)
        if member is not None:
            annotation = table = member
            continue
        table = annotation
        path += f"[{part}]" if isinstance(part, int) else f"{'.' if path else ''}{part}"
        annotation = _child(annotation, part)
    return path, _keys(table)


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types a field of type ``annotation`` may hold (``Annotated`` and ``None`` taken off)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return tuple(m for arg in get_args(annotation) for m in _members(arg) if m is not type(None))
    return (annotation,)


def _fields(cls: Any) -> dict[str, Any] | None:
    """Field name -> type of a pydantic model or a dataclass; ``None`` for anything else."""
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: info.annotation for name, info in cls.model_fields.items()}
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        try:
            hints = get_type_hints(cls)
        except (NameError, TypeError):
            hints = {}
        return {f.name: hints.get(f.name) for f in dataclasses.fields(cls)}
    return None


def _keys(annotation: Any) -> list[str] | None:
    for member in _members(annotation):
        fields = _fields(member)
        if fields is not None:
            return list(fields)
    return None


def _child(annotation: Any, part: int | str) -> Any:
    """The type at key or index ``part`` of a value of type ``annotation`` (``None``: unknown)."""
    for member in _members(annotation):
        fields = _fields(member)
        if fields is not None:
            if part in fields:
                return fields[part]
            continue
        origin, args = get_origin(member), get_args(member)
        if isinstance(origin, type) and issubclass(origin, Mapping) and len(args) == 2:
            return args[1]
        if isinstance(origin, type) and issubclass(origin, Sequence) and args and isinstance(part, int):
            return args[0]
    return None


def _tagged_member(annotation: Any, part: int | str) -> Any:
    """The member of a union that pydantic's ``part`` of an error's location names (a tagged union's
    tag, or a plain union member's class name), else ``None``."""
    members = _members(annotation)
    if len(members) < 2 or not isinstance(part, str):
        return None
    for member in members:
        if part in (getattr(member, "__name__", None), str(member)):  # a plain union's member, by its type
            return member
        for field in (_fields(member) or {}).values():
            if get_origin(field) is Literal and part in get_args(field):
                return member
    return None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate ``site.toml``; errors name the file, the field and what is wrong."""
    return read_toml(path, GatewayConfig)
