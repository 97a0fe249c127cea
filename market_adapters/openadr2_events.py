"""OpenADR 2.0b events as our :class:`~market_adapters.dispatch.GridSignal`, for the VEN.

The VEN (:mod:`market_adapters.openadr2`) talks to the VTN; this module holds what it translates with:
its settings (which VTN programs and resources are ours), the outside names mapped to ours in one place
(:data:`SIGNAL_MAP`, :data:`SIGNAL_KINDS`, :data:`EVENT_STATUS_MAP`, :data:`SCALE_TO_KW`), and the steps

- read: :func:`read_event` turns openleadr's event dict into plain values;
- parse: :func:`parse_event` builds the validated ``GridSignal`` from those values and the settings;
- decide: :func:`decide` answers optIn or optOut from what the portfolio can deliver.

Sign rule for LOAD_DISPATCH (OpenADR's own convention: values are load, positive = consumption):

- ``delta`` is a change of load: every interval ≤ 0 → ``dr_reduction`` of ``-delta`` kW. A positive
  delta asks for *more* load, which we do not offer: the event is refused (optOut) with a log line.
- ``setpoint`` is a load level: every interval ≥ 0 → ``dr_cap`` of ``setpoint`` kW (a cap on import);
  every interval ≤ 0 with one < 0 → ``v2g_export`` of ``-setpoint`` kW (negative load = net export).
  A setpoint that crosses zero inside one event is refused.

Values carry the unit of the signal's ``itemBase`` (``powerReal`` W with an SI scale); a signal
without one is read as kW. SIMPLE levels go through the program's ``simple_levels_kw`` table (level 0
is normal operation, 0 kW). ELECTRICITY_PRICE (type ``price``) is a price signal in the program's
currency per kWh; it is always opted in (no commitment).

An event with several signals gives one signal of ours (the seam keys on the event id): the first
of LOAD_DISPATCH, SIMPLE, ELECTRICITY_PRICE it carries; the others are logged and ignored.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from market_adapters.dispatch import (
    COMMITMENTS,
    Commitment,
    FlexibilityOracle,
    GridSignal,
    SignalInterval,
    SignalKind,
    SignalStatus,
)
from market_adapters.errors import AdapterFormatError

logger = logging.getLogger(__name__)

OptType = Literal["optIn", "optOut"]

# --------------------------------------------------------------------------------------------------
# Outside names → ours, in one place
# --------------------------------------------------------------------------------------------------

SIGNAL_MAP: dict[tuple[str, str], str] = {
    # (OpenADR signalName, signalType) → how we read it (see the module docstring for the rules);
    # when an event carries several, read_event prefers LOAD_DISPATCH, then SIMPLE, then price
    ("SIMPLE", "level"): "simple_level",
    ("simple", "level"): "simple_level",
    ("LOAD_DISPATCH", "delta"): "load_delta",
    ("LOAD_DISPATCH", "setpoint"): "load_setpoint",
    ("ELECTRICITY_PRICE", "price"): "price",
}

SIGNAL_KINDS: dict[str, SignalKind] = {
    # our reading (a SIGNAL_MAP value) → our kind; a load setpoint at or below zero is EXPORT_KIND
    "simple_level": SignalKind.DR_REDUCTION,
    "load_delta": SignalKind.DR_REDUCTION,
    "load_setpoint": SignalKind.DR_CAP,
    "price": SignalKind.PRICE,
}
EXPORT_KIND = SignalKind.V2G_EXPORT
"""A load setpoint at or below zero (negative load) asks for net export: this kind, values negated."""

EVENT_STATUS_MAP: dict[str, SignalStatus] = {
    "none": SignalStatus.PENDING,
    "far": SignalStatus.PENDING,
    "near": SignalStatus.PENDING,
    "active": SignalStatus.ACTIVE,
    "completed": SignalStatus.COMPLETED,
    "cancelled": SignalStatus.CANCELLED,
}

SCALE_TO_KW: dict[str, float] = {
    # itemBase powerReal is in W with an SI scale; factor from (value × scale) to kW
    "none": 1e-3,
    "k": 1.0,
    "M": 1e3,
    "G": 1e6,
}


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


class ProgramMapping(BaseModel):
    """One VTN program (market context) as one of ours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    program_id: str = Field(min_length=1)
    simple_levels_kw: dict[int, float] = Field(
        default_factory=dict, description="SIMPLE level (1, 2, 3) → import reduction [kW]; level 0 is 0 kW"
    )
    currency: str = Field("EUR", min_length=3, max_length=3, description="Of ELECTRICITY_PRICE [per kWh]")

    @model_validator(mode="after")
    def _levels(self) -> ProgramMapping:
        for level, kw in self.simple_levels_kw.items():
            if level not in (1, 2, 3) or kw < 0:
                raise ValueError(f"simple_levels_kw: level {level} → {kw} kW (levels 1..3, kW ≥ 0)")
        return self


class Openadr2Settings(BaseModel):
    """Configuration of the VEN. Either certificates (production) or an explicit insecure test mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vtn_url: str = Field(min_length=1, description="e.g. https://vtn.example.com/OpenADR2/Simple/2.0b")
    ven_name: str = Field(min_length=1)
    ven_id: str | None = Field(None, description="When the VTN assigned one before; else it assigns")
    cert_path: Path | None = None
    key_path: Path | None = None
    key_passphrase: str | None = None
    ca_path: Path | None = None
    vtn_fingerprint: str | None = Field(None, description="Of the VTN's signing certificate")
    insecure_test_mode: bool = Field(
        False, description="No TLS client certificate, unsigned messages, VTN signatures not checked"
    )
    programs: dict[str, ProgramMapping] = Field(
        default_factory=dict, description="VTN market context → our program"
    )
    sites: dict[str, str] = Field(
        default_factory=dict, description="VTN target resource id (or ven id) → our site id"
    )
    poll_interval: dt.timedelta | None = Field(
        None, description="Overrides the VTN's requested poll frequency when set"
    )
    request_timeout: dt.timedelta = dt.timedelta(seconds=20)
    report_resource_id: str = "fleetgrid-portfolio"
    report_min_sampling: dt.timedelta = dt.timedelta(seconds=10)
    report_max_sampling: dt.timedelta = dt.timedelta(hours=1)

    @model_validator(mode="after")
    def _security(self) -> Openadr2Settings:
        if not self.insecure_test_mode:
            missing = [
                name
                for name in ("cert_path", "key_path", "ca_path", "vtn_fingerprint")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"{', '.join(missing)} required unless insecure_test_mode is set explicitly")
        if self.poll_interval is not None and self.poll_interval <= dt.timedelta(0):
            raise ValueError("poll_interval must be positive")
        if not dt.timedelta(0) < self.report_min_sampling <= self.report_max_sampling:
            raise ValueError("need 0 < report_min_sampling ≤ report_max_sampling")
        return self

    @property
    def source(self) -> str:
        host = self.vtn_url.split("://", 1)[-1].split("/", 1)[0]
        return f"openadr2b:{host}"


# --------------------------------------------------------------------------------------------------
# read: openleadr's event dict → plain values
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawEvent:
    event_id: str
    modification: int
    status: str
    market_context: str
    signal: str  # our reading, a SIGNAL_MAP value
    intervals: list[tuple[dt.datetime, dt.datetime, float]]  # start, end, value in the signal's unit
    to_kw: float  # factor for power signals
    currency: str | None
    target_ids: list[str]  # resource ids (or ven ids when no resource is named)
    ignored_signals: list[str]


def read_event(event: Mapping[str, Any], ven_id: str | None) -> RawEvent:
    """Pick the signal we understand and its intervals out of an openleadr event dict."""
    descriptor = event["event_descriptor"]
    event_id = str(descriptor["event_id"])
    source = f"event {event_id!r}"
    signals = event.get("event_signals") or []
    if isinstance(signals, Mapping):
        signals = signals.get("event_signals", [])
    by_reading = {
        SIGNAL_MAP[(s.get("signal_name"), s.get("signal_type"))]: s
        for s in reversed(signals)
        if (s.get("signal_name"), s.get("signal_type")) in SIGNAL_MAP
    }
    preference = ["load_delta", "load_setpoint", "simple_level", "price"]
    chosen = next((r for r in preference if r in by_reading), None)
    if chosen is None:
        names = [f"{s.get('signal_name')}/{s.get('signal_type')}" for s in signals]
        raise AdapterFormatError(source, "eiEventSignals", "signalName", f"no supported signal in {names}")
    signal = by_reading[chosen]
    ignored = [f"{s.get('signal_name')}/{s.get('signal_type')}" for s in signals if s is not signal]

    period = event.get("active_period") or {}
    period_start = period.get("dtstart")
    intervals: list[tuple[dt.datetime, dt.datetime, float]] = []
    cursor = period_start
    for position, interval in enumerate(signal.get("intervals") or []):
        start = interval.get("dtstart") or cursor
        duration = interval.get("duration")
        if start is None or duration is None:
            raise AdapterFormatError(source, f"interval {position}", "duration", "missing start or duration")
        value = interval.get("signal_payload")
        if not isinstance(value, int | float):
            raise AdapterFormatError(
                source, f"interval {position}", "signalPayload", f"not a number: {value!r}"
            )
        intervals.append((start, start + duration, float(value)))
        cursor = start + duration
    if not intervals:
        raise AdapterFormatError(source, "eiEventSignal", "intervals", "no intervals")

    measurement = signal.get("measurement") or {}
    to_kw = 1.0
    currency = None
    if chosen in ("load_delta", "load_setpoint") and measurement:
        scale = measurement.get("scale") or "none"
        if measurement.get("unit") != "W" or scale not in SCALE_TO_KW:
            raise AdapterFormatError(
                source, "itemBase", "itemUnits", f"unit {measurement.get('unit')!r} scale {scale!r}"
            )
        to_kw = SCALE_TO_KW[scale]
    if chosen == "price" and measurement:
        unit = str(measurement.get("unit") or "")
        currency = unit.upper() if len(unit) == 3 and unit.isalpha() else None

    target_ids: list[str] = []
    for target in event.get("targets") or []:
        if target.get("resource_id"):
            target_ids.append(str(target["resource_id"]))
    if not target_ids:
        target_ids = [
            str(t["ven_id"]) for t in event.get("targets") or [] if t.get("ven_id") and t["ven_id"] != ven_id
        ]

    return RawEvent(
        event_id=event_id,
        modification=int(descriptor.get("modification_number") or 0),
        status=str(descriptor.get("event_status") or "none"),
        market_context=str(descriptor.get("market_context") or ""),
        signal=chosen,
        intervals=intervals,
        to_kw=to_kw,
        currency=currency,
        target_ids=target_ids,
        ignored_signals=ignored,
    )


# --------------------------------------------------------------------------------------------------
# parse: plain values → GridSignal
# --------------------------------------------------------------------------------------------------


def parse_event(raw: RawEvent, settings: Openadr2Settings, received_at: dt.datetime) -> GridSignal:
    """Build our signal from a read event; an event we cannot honour is an AdapterFormatError."""
    source = f"event {raw.event_id!r}"
    program = settings.programs.get(raw.market_context)
    values = [value for _, _, value in raw.intervals]
    currency = None
    kind = SIGNAL_KINDS[raw.signal]
    if raw.signal == "simple_level":
        if program is None:
            raise AdapterFormatError(
                source,
                "eiEventDescriptor",
                "marketContext",
                f"{raw.market_context!r} is not a mapped program",
            )
        levels = {0: 0.0, **program.simple_levels_kw}
        unknown = sorted({int(v) for v in values if int(v) != v or int(v) not in levels})
        if unknown:
            raise AdapterFormatError(
                source,
                "eiEventSignal SIMPLE",
                "signalPayload",
                f"level(s) {unknown} not in program {program.program_id!r} (has {sorted(levels)})",
            )
        kw = [levels[int(v)] for v in values]
    elif raw.signal == "load_delta":
        if any(v > 0 for v in values):
            raise AdapterFormatError(
                source,
                "eiEventSignal LOAD_DISPATCH/delta",
                "signalPayload",
                f"positive delta {max(values)} asks for more load, which we do not offer",
            )
        kw = [-v * raw.to_kw for v in values]
    elif raw.signal == "load_setpoint":
        if all(v >= 0 for v in values):
            kw = [v * raw.to_kw for v in values]
        elif all(v <= 0 for v in values):
            kind = EXPORT_KIND
            kw = [-v * raw.to_kw for v in values]
        else:
            raise AdapterFormatError(
                source,
                "eiEventSignal LOAD_DISPATCH/setpoint",
                "signalPayload",
                "setpoint crosses zero (import and export in one event)",
            )
    else:
        kw = values
        currency = raw.currency or (program.currency if program else None)
        if currency is None:
            raise AdapterFormatError(source, "itemBase", "itemUnits", "no currency and no mapped program")

    targets: list[str] = []
    for target_id in raw.target_ids:
        site = settings.sites.get(target_id)
        if site is None:
            logger.warning("%s: target %r is not mapped to a site; ignored", source, target_id)
        elif site not in targets:
            targets.append(site)
    if raw.target_ids and not targets:
        raise AdapterFormatError(source, "eiTarget", "resourceID", f"none of {raw.target_ids} is our site")

    status = EVENT_STATUS_MAP.get(raw.status)
    if status is None:
        raise AdapterFormatError(source, "eiEventDescriptor", "eventStatus", f"unknown {raw.status!r}")
    try:
        return GridSignal(
            source=settings.source,
            event_id=raw.event_id,
            modification=raw.modification,
            program_id=program.program_id if program else None,
            kind=kind,
            status=status,
            intervals=tuple(
                SignalInterval(start=start, end=end, value=value)
                for (start, end, _), value in zip(raw.intervals, kw, strict=True)
            ),
            currency=currency,
            target_sites=tuple(targets),
            received_at=received_at,
        )
    except ValidationError as err:
        raise AdapterFormatError(source, "eiEvent", "", f"not a valid signal: {err}") from err


async def decide(signal: GridSignal, oracle: FlexibilityOracle) -> tuple[OptType, str]:
    """optIn when the portfolio can deliver the signal throughout its window; returns (opt, why).

    By the kind's commitment (:data:`~market_adapters.dispatch.COMMITMENTS`):

    - dr_reduction, v2g_export: ``available_kw`` ≥ the largest requested kW;
    - dr_cap: the oracle answers the lowest import cap it can hold, so ``available_kw`` ≤ the
      smallest requested cap;
    - price: always optIn (informative, no commitment).
    """
    commitment = COMMITMENTS[signal.kind]
    if commitment is Commitment.NONE:
        return "optIn", f"{signal.kind.value} signal, no commitment"
    available = await oracle.available_kw(signal.kind, signal.start, signal.end)
    if commitment is Commitment.AT_MOST:
        asked = min(i.value for i in signal.intervals)
        ok = available <= asked
        why = f"lowest holdable cap {available:g} kW vs cap {asked:g} kW"
    else:
        asked = max(i.value for i in signal.intervals)
        ok = available >= asked
        why = f"available {available:g} kW vs requested {asked:g} kW"
    return ("optIn" if ok else "optOut"), why
