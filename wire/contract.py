"""The wire contract between a site gateway and the centre: MQTT topics and payload models.

This is the one module both sides import (the gateway to publish, the aggregator to subscribe), so a
change here is a change of the protocol: bump :data:`SCHEMA_VERSION` for anything a v1 reader cannot
parse.

Topics, all under ``fleetgrid/v1/site/{site_id}/``:

============  =========  ======  ==========================================================
suffix        direction  retain  payload
============  =========  ======  ==========================================================
telemetry     site→centre  no    :class:`Telemetry`
session       site→centre  no    :class:`SessionEvent`
status        site→centre  yes   :class:`GatewayStatus` (also the gateway's last will)
ack           site→centre  no    :class:`CommandAck`
setpoint      centre→site  no    :class:`SetpointCommand`
============  =========  ======  ==========================================================

All messages are QoS 1 (at least once). Every site→centre payload carries ``seq``, taken from one
per-site counter that the gateway persists with its outbox: strictly increasing across topics and
restarts, so the centre drops redeliveries by ``(site_id, seq)``. It is not gap-free (a last will
reserves a number that is only used if the connection dies). ``sent_at`` is when the gateway produced
the message, which after an outage can be long before the broker saw it.

Payloads are UTF-8 JSON objects; every model forbids unknown fields, and :func:`decode` turns any
problem into a :class:`ContractError` that names the offending field.

Additions within schema version 1 are optional fields left out of the JSON when unset, so a reader
from before one still parses every message that does not use it; one that is set makes such a reader
refuse the whole message. The centre is upgraded before its gateways, so:

- a site→centre addition (:attr:`EvseTelemetry.limit`, :attr:`GatewayStatus.reads`) may be sent once
  the centres that read it are deployed;
- a centre→site addition (:attr:`EvseSetpoint.transaction_id`) is sent only to a gateway known to
  read it: one whose latest :class:`GatewayStatus` names it in :attr:`~GatewayStatus.reads`
  (:data:`READS_SETPOINT_TRANSACTION_ID`). A gateway from before the field refuses a command carrying
  it and falls back to its local rules.
"""

from __future__ import annotations

import enum
import itertools
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, Strict, ValidationError
from pydantic import model_validator as _model_validator

SCHEMA_VERSION: Final = 1
TOPIC_ROOT = "fleetgrid/v1/site"
QOS = 1
"""QoS of every fleetgrid message: at least once, de-duplicated by ``seq`` / ``command_id``."""

SITE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
"""Also the site's MQTT username, so the broker ACL pattern ``%u`` maps a login to its topics."""
CHARGER_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_SITE_ID = re.compile(SITE_ID_PATTERN)


def evse_key(charger_id: str, evse_id: int) -> str:
    """One EVSE's key on both sides, ``"{charger_id}/{evse_id}"``: the gateway's EVSE table and the
    centre's scenario EVSE id."""
    return f"{charger_id}/{evse_id}"


class ContractError(ValueError):
    """A payload or topic that does not follow the contract.

    ``field`` is the dotted path of the first offending field (``"evses.0.power_kw"``; ``""`` for the
    payload as a whole), ``problem`` says what is wrong with it.
    """

    def __init__(self, field: str, problem: str, *, model: str = "") -> None:
        self.field = field
        self.problem = problem
        self.model = model
        where = f"{model}." if model and field else model
        super().__init__(f"{where}{field}: {problem}" if (where or field) else problem)


# --------------------------------------------------------------------------------------------- topics


class TopicKind(enum.StrEnum):
    TELEMETRY = "telemetry"
    SESSION = "session"
    STATUS = "status"
    ACK = "ack"
    SETPOINT = "setpoint"


@dataclass(frozen=True)
class ParsedTopic:
    site_id: str
    kind: TopicKind


def _check_site_id(site_id: str) -> str:
    if not _SITE_ID.fullmatch(site_id):
        raise ContractError("site_id", f"must match {SITE_ID_PATTERN}, got {site_id!r}")
    return site_id


def topic(site_id: str, kind: TopicKind) -> str:
    """The topic for one site and kind: ``fleetgrid/v1/site/{site_id}/{kind}``."""
    return f"{TOPIC_ROOT}/{_check_site_id(site_id)}/{TopicKind(kind).value}"


def telemetry_topic(site_id: str) -> str:
    return topic(site_id, TopicKind.TELEMETRY)


def session_topic(site_id: str) -> str:
    return topic(site_id, TopicKind.SESSION)


def status_topic(site_id: str) -> str:
    """Retained: the broker hands the latest status (or the last will) to every new subscriber."""
    return topic(site_id, TopicKind.STATUS)


def ack_topic(site_id: str) -> str:
    return topic(site_id, TopicKind.ACK)


def setpoint_topic(site_id: str) -> str:
    return topic(site_id, TopicKind.SETPOINT)


def subscription(kind: TopicKind | None = None) -> str:
    """The centre's wildcard: one kind from every site (``.../+/telemetry``) or everything (``.../#``)."""
    return f"{TOPIC_ROOT}/#" if kind is None else f"{TOPIC_ROOT}/+/{TopicKind(kind).value}"


def parse_topic(name: str) -> ParsedTopic:
    """Split a concrete topic received on a wildcard subscription into site and kind."""
    prefix = TOPIC_ROOT + "/"
    if not name.startswith(prefix):
        raise ContractError("topic", f"{name!r} is not under {prefix}")
    parts = name[len(prefix) :].split("/")
    if len(parts) != 2:
        raise ContractError("topic", f"{name!r} is not {prefix}{{site_id}}/{{kind}}")
    site_id, kind = parts
    _check_site_id(site_id)
    try:
        return ParsedTopic(site_id, TopicKind(kind))
    except ValueError:
        known = ", ".join(k.value for k in TopicKind)
        raise ContractError("topic", f"unknown kind {kind!r} in {name!r} (known: {known})") from None


# ------------------------------------------------------------------------------------------- payloads


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, Strict(), AfterValidator(_utc)]
"""A timezone-aware timestamp, normalised to UTC (naive timestamps are refused)."""
SiteId = Annotated[str, Field(pattern=SITE_ID_PATTERN)]
ChargerId = Annotated[str, Field(pattern=CHARGER_ID_PATTERN)]
EvseId = Annotated[int, Strict(), Field(ge=0, le=1000)]
"""OCPP 2.x EVSE id (1.6: connector id); 0 means the charging station as a whole."""
CommandId = Annotated[str, Field(min_length=1, max_length=64)]
Kw = Annotated[float, Strict(), Field(ge=-10_000, le=10_000)]
Kwh = Annotated[float, Strict(), Field(ge=-10_000, le=10_000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # Numbers and timestamps are strict (no "12" for 12, no epoch seconds for a timestamp); lists may
    # be given for tuples and strings for enums.


class SiteMessage(_Model):
    """Fields every site→centre message carries."""

    schema_version: Literal[1] = SCHEMA_VERSION
    site_id: SiteId
    seq: Annotated[int, Strict()] = Field(ge=1)
    """Per-site sequence number assigned by the outbox; strictly increasing, survives restarts."""
    sent_at: UtcDatetime
    """When the gateway produced the message (not when the broker got it)."""


class LimitReason(enum.StrEnum):
    """Why the gateway lets an EVSE have no more than its :class:`EvseLimit`."""

    SITE_LIMIT = "site_limit"
    """The site's import (or export) limit, after the site's other load, leaves no more."""
    RESERVE = "reserve"
    """Room kept for vehicles at other chargers: an idle charger's reserve that could not be lowered,
    or the reserve handed back to a vehicle that just plugged in and is not planned yet (the vehicle
    itself runs on that reserve until the centre plans it)."""
    FALLBACK = "fallback"
    """No fresh schedule: the gateway's own earliest-deadline-first rules."""
    CHARGER_MAX = "charger_max"
    """The most the EVSE, its charger or the vehicle can take or give (also a charger that can not
    discharge, or one whose composite schedule is lower than the profile sent)."""
    ENERGY_REQUEST_MET = "energy_request_met"
    """The vehicle has had the (net) energy it asked for."""
    VEHICLE_NOT_BIDIRECTIONAL = "vehicle_not_bidirectional"
    """A discharge cap of 0: the vehicle did not negotiate bidirectional power transfer (ISO 15118-20
    BPT) for its session, so the session may not discharge at all. Added within schema version 1: a
    reader from before it refuses the whole message, so a gateway sends it only to a centre that binds
    setpoints to sessions (names a ``transaction_id``, added in the same change), and
    :attr:`CHARGER_MAX` to any other (:meth:`for_reader`)."""

    def for_reader(self, *, binds_sessions: bool) -> LimitReason:
        """This reason as a reader can parse it. ``binds_sessions``: the reader (the centre) names
        transactions in its setpoints (:attr:`EvseSetpoint.transaction_id`), so it knows every reason
        here; a centre that does not is told :attr:`CHARGER_MAX` for a reason added with or after
        that field (what it was told for the same cap before)."""
        if binds_sessions or self not in _ADDED_WITH_SESSION_BINDING:
            return self
        return LimitReason.CHARGER_MAX


_ADDED_WITH_SESSION_BINDING = frozenset({LimitReason.VEHICLE_NOT_BIDIRECTIONAL})
"""Limit reasons a centre that does not bind setpoints to sessions cannot parse."""


class EvseLimit(_Model):
    """A cap the gateway applies to an EVSE: no more than ``power_kw`` of charging (of discharging, with
    ``discharge``), for ``reason``."""

    power_kw: Annotated[float, Strict()] = Field(ge=0, le=10_000)
    reason: LimitReason
    discharge: Annotated[bool, Strict()] = False
    """The cap bounds discharging (V2G); else charging."""


class EvseTelemetry(_Model):
    charger_id: ChargerId
    evse_id: EvseId
    power_kw: Kw
    """Grid-side power at the EVSE [kW]: positive charging, negative discharging (V2G)."""
    energy_kwh: Kwh | None = None
    """Net energy into the EV since the transaction started [kWh]: the import register's rise minus
    the export register's; negative after net discharge."""
    soc_percent: Annotated[float, Strict()] | None = Field(None, ge=0, le=100)
    """State of charge [%] when the EV reports it (OCPP 2.x, ISO 15118), else ``None``."""
    limit: EvseLimit | None = Field(None, exclude_if=lambda limit: limit is None)
    """The cap the gateway applies now, when one meets what was asked of the EVSE (the centre's
    setpoint; without one, what the vehicle takes); ``None`` when only the setpoint limits it. Added
    within schema version 1, so left out of the JSON when ``None``: a centre that predates it still
    reads readings without a cap."""


class Telemetry(SiteMessage):
    evses: tuple[EvseTelemetry, ...] = ()
    site_import_kw: Kw
    """Net import at the grid connection [kW]; negative when the site exports."""
    base_load_kw: Kw | None = None
    """Site load other than the chargers [kW], when metered or estimated."""

    @_model_validator(mode="after")
    def _unique_evses(self) -> Telemetry:
        _refuse_duplicate_evses([(e.charger_id, e.evse_id) for e in self.evses], "evses")
        return self


class SessionEventKind(enum.StrEnum):
    PLUGGED_IN = "plugged_in"
    AUTHORIZED = "authorized"
    STARTED = "started"
    EV_CHARGING_NEEDS = "ev_charging_needs"
    """The EV sent its needs (ISO 15118 via OCPP 2.x NotifyEVChargingNeeds) or the driver entered them."""
    SUSPENDED = "suspended"
    STOPPED = "stopped"
    UNPLUGGED = "unplugged"


_NEEDS_TRANSACTION = {SessionEventKind.STARTED, SessionEventKind.STOPPED}


class SessionEvent(SiteMessage):
    kind: SessionEventKind
    charger_id: ChargerId
    evse_id: EvseId
    transaction_id: str | None = Field(None, min_length=1, max_length=64)
    id_token: str | None = Field(None, min_length=1, max_length=64)
    """The driver's or vehicle's token (RFID, eMAID) as the charger reported it."""
    departure_time: UtcDatetime | None = None
    energy_request_kwh: Annotated[float, Strict()] | None = Field(None, ge=0, le=1000)
    """Energy the EV or driver asked for [kWh]."""
    energy_kwh: Kwh | None = None
    """Net energy into the EV in this transaction so far [kWh] (on ``stopped``: the total)."""
    reason: str | None = Field(None, max_length=200)
    """Why, when the protocol says (OCPP stoppedReason, ...)."""

    @_model_validator(mode="after")
    def _transaction(self) -> SessionEvent:
        if self.kind in _NEEDS_TRANSACTION and self.transaction_id is None:
            raise ValueError(f"transaction_id is required when kind is {self.kind.value!r}")
        return self


class GatewayState(enum.StrEnum):
    ONLINE = "online"
    """Connected and following the centre's setpoints."""
    FALLBACK = "fallback"
    """Connected or not, running on local rules (setpoints stale or missing); ``reason`` says why."""
    OFFLINE = "offline"
    """The gateway's last will: the broker lost it."""


READS_SETPOINT_TRANSACTION_ID: Final = "setpoint.transaction_id"
"""In :attr:`GatewayStatus.reads`: the gateway reads :attr:`EvseSetpoint.transaction_id`."""
ReadsName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", max_length=64)]
"""A field a gateway reads, as ``{message}.{field}`` (``"setpoint.transaction_id"``)."""


class GatewayStatus(SiteMessage):
    state: GatewayState
    reason: str | None = Field(None, max_length=200)
    since: UtcDatetime | None = None
    """When the gateway entered ``state`` (``None``: unknown, as in the last will)."""
    reads: tuple[ReadsName, ...] = Field((), max_length=64, exclude_if=lambda reads: not reads)
    """The centre→site fields added within schema version 1 that this gateway reads
    (:data:`READS_SETPOINT_TRANSACTION_ID`). The centre sends such a field to a site only while its
    gateway's latest status names it, and sends the message without it otherwise (see the module
    docstring). A reader ignores names it does not know, so a gateway may name fields of a newer
    centre. Added within schema version 1 itself, so left out of the JSON when empty: a gateway that
    reads none of them sends the status it sent before."""


class SetpointPeriod(_Model):
    start: UtcDatetime
    power_kw: Kw
    """Positive charge, negative discharge [kW], from ``start`` until the next period or ``valid_until``."""


class EvseSetpoint(_Model):
    """Either one ``power_kw`` for the whole validity, or a ``schedule`` of periods; not both."""

    charger_id: ChargerId
    evse_id: EvseId
    power_kw: Kw | None = None
    schedule: tuple[SetpointPeriod, ...] | None = Field(None, min_length=1, max_length=1024)
    transaction_id: str | None = Field(
        None, min_length=1, max_length=64, exclude_if=lambda transaction_id: transaction_id is None
    )
    """The session (OCPP transaction) the setpoint is for. A setpoint belongs to one session and ends
    with it: the gateway refuses one naming a transaction the EVSE is not running, and binds one that
    names none to the transaction running when it arrives. Added within schema version 1, so left out
    of the JSON when ``None``: a gateway that predates it still reads commands without it."""

    @_model_validator(mode="after")
    def _one_form(self) -> EvseSetpoint:
        if (self.power_kw is None) == (self.schedule is None):
            raise ValueError("give exactly one of power_kw and schedule")
        if self.schedule is not None:
            starts = [p.start for p in self.schedule]
            for i, (a, b) in enumerate(itertools.pairwise(starts), start=1):
                if b <= a:
                    raise ValueError(f"schedule[{i}].start {b.isoformat()} is not after the one before")
        return self


class SetpointCommand(_Model):
    """Centre→site: what each EVSE should do between ``issued_at`` and ``valid_until``.

    ``command_id`` identifies the command (the gateway ignores repeats and answers with a
    :class:`CommandAck` carrying the same id); EVSEs not listed keep their current limits.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    site_id: SiteId
    command_id: CommandId
    issued_at: UtcDatetime
    valid_until: UtcDatetime
    setpoints: tuple[EvseSetpoint, ...] = Field(min_length=1)

    @_model_validator(mode="after")
    def _consistent(self) -> SetpointCommand:
        if self.valid_until <= self.issued_at:
            raise ValueError("valid_until must be after issued_at")
        _refuse_duplicate_evses([(s.charger_id, s.evse_id) for s in self.setpoints], "setpoints")
        return self


class AckStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    """Well-formed but not applied (expired, another site's, a charger refused the profile, ...)."""
    ERROR = "error"
    """Malformed, or the gateway failed while applying it."""


class EvseOutcome(_Model):
    charger_id: ChargerId
    evse_id: EvseId
    status: AckStatus
    detail: str | None = Field(None, max_length=500)
    """The charger's answer when not accepted (OCPP SetChargingProfile status and reason)."""


class CommandAck(SiteMessage):
    command_id: CommandId | None
    """``None`` only when the command was too malformed to carry a readable id."""
    status: AckStatus
    evses: tuple[EvseOutcome, ...] = ()
    error: str | None = Field(None, max_length=2000)

    @_model_validator(mode="after")
    def _explained(self) -> CommandAck:
        if self.status is not AckStatus.ACCEPTED and not self.error:
            raise ValueError(f"error must say why when status is {self.status.value!r}")
        return self


def _refuse_duplicate_evses(keys: list[tuple[str, int]], field: str) -> None:
    seen: set[tuple[str, int]] = set()
    for i, key in enumerate(keys):
        if key in seen:
            raise ValueError(f"{field}[{i}] repeats charger {key[0]!r} evse {key[1]}")
        seen.add(key)


Payload = Telemetry | SessionEvent | GatewayStatus | CommandAck | SetpointCommand
M = TypeVar("M", bound=_Model)

MODEL_FOR_KIND: dict[TopicKind, type[Payload]] = {
    TopicKind.TELEMETRY: Telemetry,
    TopicKind.SESSION: SessionEvent,
    TopicKind.STATUS: GatewayStatus,
    TopicKind.ACK: CommandAck,
    TopicKind.SETPOINT: SetpointCommand,
}
KIND_FOR_MODEL: dict[type[BaseModel], TopicKind] = {m: k for k, m in MODEL_FOR_KIND.items()}
RETAINED: frozenset[TopicKind] = frozenset({TopicKind.STATUS})


def topic_for(message: Payload) -> str:
    """The topic a message belongs on (its kind, its ``site_id``)."""
    return topic(message.site_id, KIND_FOR_MODEL[type(message)])


# ------------------------------------------------------------------------------------ encode / decode


def encode(message: _Model) -> bytes:
    """Compact UTF-8 JSON, every field present (``null`` when unset) but those added within a schema
    version, which are left out when unset (:attr:`EvseTelemetry.limit`); timestamps ISO 8601 UTC
    (``Z``)."""
    return message.model_dump_json().encode()


def decode(model: type[M], data: bytes | bytearray | str) -> M:
    """Parse and validate one payload, or raise :class:`ContractError` naming the first bad field."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise _contract_error(model, exc) from exc


def _contract_error(model: type[_Model], exc: ValidationError) -> ContractError:
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in first["loc"])
    problem = first["msg"]
    if first["type"] == "literal_error" and loc == "schema_version":
        problem = f"{problem} (this reader speaks schema_version {SCHEMA_VERSION})"
    more = exc.error_count() - 1
    if more:
        problem += f" (and {more} more error{'s' if more > 1 else ''})"
    return ContractError(loc, problem, model=model.__name__)


def build(model: type[M], **fields: Any) -> M:
    """Construct a payload in code, with the same :class:`ContractError` as :func:`decode` on a bad field."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise _contract_error(model, exc) from exc


def decode_message(topic_name: str, data: bytes | bytearray | str) -> tuple[ParsedTopic, Payload]:
    """The centre's entry point: parse the topic, decode the payload its kind calls for, and check the
    payload's ``site_id`` is the topic's (the broker ACL vouches for the topic, not for the body)."""
    parsed = parse_topic(topic_name)
    message = decode(MODEL_FOR_KIND[parsed.kind], data)
    if message.site_id != parsed.site_id:
        raise ContractError(
            "site_id",
            f"payload says {message.site_id!r} but it came on {parsed.site_id!r}'s topic",
            model=type(message).__name__,
        )
    return parsed, message


def command_id_of(data: bytes | bytearray | str) -> str | None:
    """Best effort: the ``command_id`` of a command that failed validation, to address the error ack."""
    try:
        raw: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(raw, dict):
        value = raw.get("command_id")
        if isinstance(value, str) and 1 <= len(value) <= 64:
            return value
    return None
