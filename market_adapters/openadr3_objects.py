"""OpenADR 3 (3.0.1) objects and their parsing into :class:`GridSignal`, for :mod:`market_adapters.openadr3`.

The VTN is a REST resource server (``/programs``, ``/events``, ``/reports``, ``/subscriptions``,
``/vens``); a VEN authenticates with the OAuth2 client-credentials grant at the token URL (discovered at
``/auth/server`` -> ``tokenURL`` where the VTN offers it, else ``auth/token`` as the 3.0.1 API declares).

Split like the other adapters: :class:`OpenAdr3Client` fetches (and posts reports), :func:`parse_event`
and :func:`parse_program` parse one outside object. The outside models below keep the specification's
own field names, so an error names the field as the VTN sent it (``intervals[1].payloads[0].values``).
The outside payload types map to our signal kinds in one table, :data:`PAYLOAD_MAP`:

=============================== ============== =====================================================
OpenADR 3 payload type          our kind        value [unit]
=============================== ============== =====================================================
IMPORT_CAPACITY_LIMIT           dr_cap          the cap on site import [kW]
IMPORT_CAPACITY_SUBSCRIPTION    dr_cap          the subscribed import capacity, used as a cap [kW]
DISPATCH_SETPOINT               dr_cap          a setpoint >= 0 caps import at the setpoint [kW];
                                v2g_export      a setpoint <= 0 asks for ``-setpoint`` of export [kW]
EXPORT_CAPACITY_SUBSCRIPTION    v2g_export      the subscribed export capacity [kW]
EXPORT_CAPACITY_RESERVATION     v2g_export      the reserved export capacity [kW]
SIMPLE                          dr_reduction    level 0..3 -> kW per ``simple_levels_kw`` [kW]
PRICE                           price           [currency/kWh]; currency from the event's or the
                                                program's payloadDescriptors
=============================== ============== =====================================================

Power values are converted from the descriptor's ``units`` (``W``, ``KW``, ``MW``; ``KW`` when absent),
prices from ``KWH``/``MWH``. ``EXPORT_CAPACITY_LIMIT`` is deliberately *not* mapped: it limits export,
and none of our kinds can say "at most"; reading it as an export request could make vehicles discharge
when the operator wants less export. Other payload types (GHG, CURVE, ...) are ignored with a log line.

A deleted event becomes the same signal with status ``cancelled``; a changed event (its
``modificationDateTime`` or content) a new signal with a higher ``modification``. Reports are ``USAGE``
payloads of the enrolled sites' metered power, asked from
:class:`~market_adapters.dispatch.FlexibilityOracle`,
with a payload descriptor saying ``units: KW``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from market_adapters.dispatch import (
    GridSignal,
    Moment,
    SignalInterval,
    SignalKind,
    SignalStatus,
)
from market_adapters.errors import AdapterFormatError

logger = logging.getLogger(__name__)

Rule = Literal["power", "setpoint", "simple", "price"]
_M = TypeVar("_M", bound=BaseModel)

PAYLOAD_MAP: dict[str, tuple[SignalKind, Rule]] = {
    "IMPORT_CAPACITY_LIMIT": (SignalKind.DR_CAP, "power"),
    "IMPORT_CAPACITY_SUBSCRIPTION": (SignalKind.DR_CAP, "power"),
    "DISPATCH_SETPOINT": (SignalKind.DR_CAP, "setpoint"),  # EXPORT_KIND when the setpoint is negative
    "EXPORT_CAPACITY_SUBSCRIPTION": (SignalKind.V2G_EXPORT, "power"),
    "EXPORT_CAPACITY_RESERVATION": (SignalKind.V2G_EXPORT, "power"),
    "SIMPLE": (SignalKind.DR_REDUCTION, "simple"),
    "PRICE": (SignalKind.PRICE, "price"),
}
"""OpenADR 3 payload type -> (our signal kind, how the value converts). The one outside->ours table."""
EXPORT_KIND = SignalKind.V2G_EXPORT
"""A setpoint below zero asks for net export: this kind, values negated."""

POWER_UNITS_TO_KW = {"W": 1e-3, "KW": 1.0, "MW": 1e3}
ENERGY_UNITS_TO_KWH = {"WH": 1e-3, "KWH": 1.0, "MWH": 1e3}
TARGET_RESOURCE = "RESOURCE_NAME"
REPORT_PAYLOAD = "USAGE"
_DURATION = re.compile(
    r"^P(?!$)(?:(\d+)W)?(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


# --- outside objects (the specification's names) ---------------------------------------------------------


class _Outside(BaseModel):
    model_config = ConfigDict(extra="allow")


class IntervalPeriod(_Outside):
    start: Moment | None = None  # required by the schema on its own, optional on an interval's override
    duration: str | None = None
    randomizeStart: str | None = None


class ValuesMap(_Outside):
    type: str = Field(min_length=1, max_length=128)
    values: list[Any]


class PayloadDescriptor(_Outside):
    payloadType: str = Field(min_length=1)
    units: str | None = None
    currency: str | None = None


class ReportDescriptor(_Outside):
    payloadType: str = Field(min_length=1)


class Interval(_Outside):
    id: int
    intervalPeriod: IntervalPeriod | None = None
    payloads: list[ValuesMap]


class Program(_Outside):
    id: str = Field(min_length=1)
    programName: str = Field(min_length=1, max_length=128)
    intervalPeriod: IntervalPeriod | None = None
    payloadDescriptors: list[PayloadDescriptor] | None = None
    targets: list[ValuesMap] | None = None


class Event(_Outside):
    id: str = Field(min_length=1)
    programID: str = Field(min_length=1)
    eventName: str | None = None
    createdDateTime: Moment | None = None
    modificationDateTime: Moment | None = None
    intervalPeriod: IntervalPeriod | None = None
    intervals: list[Interval] = Field(min_length=1)
    targets: list[ValuesMap] | None = None
    payloadDescriptors: list[PayloadDescriptor] | None = None
    reportDescriptors: list[ReportDescriptor] | None = None


class Notification(_Outside):
    objectType: str
    operation: Literal["GET", "POST", "PUT", "DELETE"]
    object: dict[str, Any]


# --- settings --------------------------------------------------------------------------------------------


class OpenAdr3Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vtn_url: str = Field(min_length=1, description="Base URL of the VTN API, e.g. https://vtn/openadr3/3.0.1")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scope: str | None = None
    token_url: str | None = Field(None, description="None: discover at /auth/server, else auth/token")
    client_name: str = Field(min_length=1, max_length=128, description="Our VEN name in reports")
    programs: tuple[str, ...] = Field((), description="programName or id to follow; empty = all")
    program_map: dict[str, str] = Field({}, description="VTN programName -> our program id")
    site_map: dict[str, str] = Field({}, description="VTN RESOURCE_NAME target -> our site id")
    simple_levels_kw: dict[int, float] = Field({}, description="SIMPLE level -> import reduction [kW]")
    report_resource_name: str = "AGGREGATED_REPORT"
    poll_interval_s: float = Field(30.0, gt=0)
    request_timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_base_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    token_refresh_margin_s: float = Field(30.0, ge=0)


# --- parsing ---------------------------------------------------------------------------------------------


def _field_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validate_outside(model: type[_M], obj: Any, source: str, what: str) -> _M:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        object_id = obj.get("id") if isinstance(obj, dict) else None
        name = f"{what} {object_id!r}" if object_id else what
        raise AdapterFormatError(source, name, _field_path(first["loc"]), first["msg"]) from exc


def parse_duration(
    text: str, *, source: str = "<data>", obj: str = "", field: str = "duration"
) -> dt.timedelta:
    """An ISO 8601 duration of weeks, days, hours, minutes and seconds (no calendar years or months)."""
    match = _DURATION.match(text)
    if match is None:
        raise AdapterFormatError(
            source, obj, field, f"{text!r} is not an ISO 8601 duration we accept (PnWnDTnHnMnS)"
        )
    weeks, days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return dt.timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_program(obj: Any, *, source: str = "<data>") -> Program:
    return validate_outside(Program, obj, source, "program")


def _descriptor(event: Event, program: Program | None, payload_type: str) -> PayloadDescriptor | None:
    for descriptors in (event.payloadDescriptors, program.payloadDescriptors if program else None):
        for descriptor in descriptors or ():
            if descriptor.payloadType == payload_type:
                return descriptor
    return None


def parse_event(
    obj: Any,
    *,
    program: Program | None,
    settings: OpenAdr3Settings,
    source: str,
    received_at: dt.datetime,
    modification: int | None = None,
) -> GridSignal | None:
    """One OpenADR 3 event as a :class:`GridSignal`, or None when it carries no payload type we map.

    ``modification`` defaults to the event's ``modificationDateTime`` in epoch milliseconds.
    """
    event = validate_outside(Event, obj, source, "event")
    what = f"event {event.id!r}"
    payload_type = next(
        (p.type for interval in event.intervals for p in interval.payloads if p.type in PAYLOAD_MAP), None
    )
    if payload_type is None:
        types = sorted({p.type for interval in event.intervals for p in interval.payloads})
        logger.info("%s: %s carries no payload type we map (%s); ignored", source, what, ", ".join(types))
        return None
    kind, rule = PAYLOAD_MAP[payload_type]
    descriptor = _descriptor(event, program, payload_type)

    spans = _interval_spans(event, source, what)
    raw: list[float] = []
    for i, interval in enumerate(event.intervals):
        j = next((j for j, p in enumerate(interval.payloads) if p.type == payload_type), None)
        if j is None:
            raise AdapterFormatError(
                source, what, f"intervals[{i}].payloads", f"has no {payload_type} payload"
            )
        values = interval.payloads[j].values
        field = f"intervals[{i}].payloads[{j}].values"
        if not values or isinstance(values[0], bool) or not isinstance(values[0], int | float):
            raise AdapterFormatError(source, what, field, f"needs a number first, got {values!r}")
        raw.append(float(values[0]))

    currency: str | None = None
    if rule in ("power", "setpoint"):
        units = (descriptor.units if descriptor and descriptor.units else "KW").upper()
        if units not in POWER_UNITS_TO_KW:
            raise AdapterFormatError(
                source, what, "payloadDescriptors.units", f"unknown power unit {units!r}"
            )
        values_kw = [v * POWER_UNITS_TO_KW[units] for v in raw]
        if rule == "setpoint" and any(v < 0 for v in values_kw):
            if any(v > 0 for v in values_kw):
                raise AdapterFormatError(
                    source, what, "intervals", f"{payload_type} changes sign within the event; split it"
                )
            kind, values_kw = EXPORT_KIND, [-v for v in values_kw]
    elif rule == "simple":
        values_kw = []
        for i, level in enumerate(raw):
            if level not in settings.simple_levels_kw:
                raise AdapterFormatError(
                    source,
                    what,
                    f"intervals[{i}].payloads",
                    f"SIMPLE level {level:g} has no kW in simple_levels_kw",
                )
            values_kw.append(settings.simple_levels_kw[int(level)])
    else:
        if descriptor is None or not descriptor.currency:
            raise AdapterFormatError(
                source, what, "payloadDescriptors.currency", "PRICE needs a currency in the event or program"
            )
        currency = descriptor.currency.upper()
        units = (descriptor.units or "KWH").upper()
        if units not in ENERGY_UNITS_TO_KWH:
            raise AdapterFormatError(
                source, what, "payloadDescriptors.units", f"unknown energy unit {units!r}"
            )
        values_kw = [v / ENERGY_UNITS_TO_KWH[units] for v in raw]

    if modification is None:
        stamp = event.modificationDateTime or event.createdDateTime
        modification = int(stamp.timestamp() * 1000) if stamp else 0
    end = spans[-1][1]
    status = (
        SignalStatus.COMPLETED
        if received_at >= end
        else SignalStatus.ACTIVE
        if received_at >= spans[0][0]
        else SignalStatus.PENDING
    )
    try:
        return GridSignal(
            source=source,
            event_id=event.id,
            modification=modification,
            program_id=settings.program_map.get(program.programName) if program else None,
            kind=kind,
            status=status,
            intervals=tuple(
                SignalInterval(start=s, end=e, value=v) for (s, e), v in zip(spans, values_kw, strict=True)
            ),
            currency=currency,
            target_sites=_target_sites(event, settings, source, what),
            received_at=received_at,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise AdapterFormatError(source, what, _field_path(first["loc"]), first["msg"]) from exc


def _interval_spans(event: Event, source: str, what: str) -> list[tuple[dt.datetime, dt.datetime]]:
    """Each interval's [start, end): its own intervalPeriod over the event's, back to back by default."""
    default = event.intervalPeriod or IntervalPeriod()
    cursor = default.start
    spans = []
    for i, interval in enumerate(event.intervals):
        own = interval.intervalPeriod or IntervalPeriod()
        start = own.start or cursor
        if start is None:
            raise AdapterFormatError(
                source, what, f"intervals[{i}].intervalPeriod.start", "no start here or in the event"
            )
        text = own.duration or default.duration
        field = f"intervals[{i}].intervalPeriod.duration" if own.duration else "intervalPeriod.duration"
        if text is None:
            raise AdapterFormatError(source, what, field, "no duration here or in the event")
        length = parse_duration(text, source=source, obj=what, field=field)
        if length <= dt.timedelta(0):
            raise AdapterFormatError(source, what, field, f"{text} is open-ended; we need a finite interval")
        spans.append((start, start + length))
        cursor = start + length
    return spans


def _target_sites(event: Event, settings: OpenAdr3Settings, source: str, what: str) -> tuple[str, ...]:
    sites = []
    for target in event.targets or ():
        if target.type != TARGET_RESOURCE:
            continue
        for name in target.values:
            if str(name) in settings.site_map:
                sites.append(settings.site_map[str(name)])
            else:
                logger.warning("%s: %s targets resource %r, which no site maps to", source, what, name)
    return tuple(sites)
