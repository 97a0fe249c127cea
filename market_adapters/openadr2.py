"""OpenADR 2.0b VEN: registers with a grid operator's VTN (through openleadr) and speaks our seam.

Incoming events become :class:`~market_adapters.dispatch.GridSignal` objects handed to a
:class:`~market_adapters.dispatch.SignalSink`; each event is answered optIn or optOut from what the
:class:`~market_adapters.dispatch.FlexibilityOracle` says the portfolio can deliver; the VTN's report
requests are answered with a TELEMETRY_USAGE report (real power, kW) of what the oracle metered.

The work is split as the adapters' convention asks:

- fetch: openleadr's ``OpenADRClient`` does the HTTP and XML (registration, ``oadrPoll``, replies);
- read: :func:`read_event` turns openleadr's event dict into plain values, with outside names mapped
  to ours through the tables below (:data:`SIGNAL_MAP`, :data:`EVENT_STATUS_MAP`, :data:`SCALE_TO_KW`);
- parse: :func:`parse_event` builds the validated ``GridSignal`` from those values and the settings.

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

import asyncio
import datetime as dt
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from market_adapters.dispatch import (
    FlexibilityOracle,
    GridSignal,
    SignalInterval,
    SignalKind,
    SignalSink,
    SignalStatus,
)
from market_adapters.errors import AdapterError, AdapterFormatError

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

REPORT_MEASUREMENT = "power_real"  # openleadr's MEASUREMENTS.POWER_REAL: powerReal, W …
REPORT_SCALE = "k"  # … scaled to kW

# --------------------------------------------------------------------------------------------------
# Settings and errors
# --------------------------------------------------------------------------------------------------


class Openadr2Error(AdapterError):
    """The VEN could not do what it was asked to (registration refused, VTN unreachable)."""


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
        kind = SignalKind.DR_REDUCTION
        kw = [levels[int(v)] for v in values]
    elif raw.signal == "load_delta":
        if any(v > 0 for v in values):
            raise AdapterFormatError(
                source,
                "eiEventSignal LOAD_DISPATCH/delta",
                "signalPayload",
                f"positive delta {max(values)} asks for more load, which we do not offer",
            )
        kind = SignalKind.DR_REDUCTION
        kw = [-v * raw.to_kw for v in values]
    elif raw.signal == "load_setpoint":
        if all(v >= 0 for v in values):
            kind = SignalKind.DR_CAP
            kw = [v * raw.to_kw for v in values]
        elif all(v <= 0 for v in values):
            kind = SignalKind.V2G_EXPORT
            kw = [-v * raw.to_kw for v in values]
        else:
            raise AdapterFormatError(
                source,
                "eiEventSignal LOAD_DISPATCH/setpoint",
                "signalPayload",
                "setpoint crosses zero (import and export in one event)",
            )
    else:
        kind = SignalKind.PRICE
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

    - dr_reduction, v2g_export: ``available_kw`` ≥ the largest requested kW;
    - dr_cap: the oracle answers the lowest import cap it can hold, so ``available_kw`` ≤ the
      smallest requested cap;
    - price: always optIn (informative, no commitment).
    """
    if signal.kind is SignalKind.PRICE:
        return "optIn", "price signal, no commitment"
    available = await oracle.available_kw(signal.kind, signal.start, signal.end)
    if signal.kind is SignalKind.DR_CAP:
        asked = min(i.value for i in signal.intervals)
        ok = available <= asked
        why = f"lowest holdable cap {available:g} kW vs cap {asked:g} kW"
    else:
        asked = max(i.value for i in signal.intervals)
        ok = available >= asked
        why = f"available {available:g} kW vs requested {asked:g} kW"
    return ("optIn" if ok else "optOut"), why


# --------------------------------------------------------------------------------------------------
# The VEN
# --------------------------------------------------------------------------------------------------


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Ven:
    """An OpenADR 2.0b VEN, alive inside ``async with``.

    On entry it registers (raising :class:`Openadr2Error` when the VTN refuses or does not answer),
    offers its TELEMETRY_USAGE report and syncs events; then a named task polls the VTN and another
    sends queued reports until exit.
    """

    def __init__(
        self,
        settings: Openadr2Settings,
        sink: SignalSink,
        oracle: FlexibilityOracle,
        *,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.settings = settings
        self._sink = sink
        self._oracle = oracle
        self._clock = clock
        self._client: Any = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._committed: dict[str, GridSignal] = {}  # event id → the version we opted in to

    @property
    def ven_id(self) -> str | None:
        return self._client.ven_id if self._client else None

    @property
    def registration_id(self) -> str | None:
        return self._client.registration_id if self._client else None

    # -- life ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        # openleadr (and its XML signing stack) is imported here, when a VEN starts, not with the
        # settings models: `fleetgrid admin --config central.toml` reads those and would wait ~0.5 s.
        with warnings.catch_warnings():
            # openleadr imports signxml, whose signer names cryptography's DSA key type in an
            # annotation; cryptography >= 51 deprecates DSA with a warning at that lookup. We never
            # sign with DSA.
            warnings.filterwarnings("ignore", message="DSA is deprecated", module="signxml")
            from openleadr import OpenADRClient, objects

        s = self.settings
        secure = not s.insecure_test_mode
        if not secure:
            logger.warning("OpenADR 2.0b VEN %r in insecure test mode (unsigned, unchecked)", s.ven_name)
        client = OpenADRClient(
            ven_name=s.ven_name,
            vtn_url=s.vtn_url,
            ven_id=s.ven_id,
            cert=str(s.cert_path) if secure and s.cert_path else None,
            key=str(s.key_path) if secure and s.key_path else None,
            passphrase=s.key_passphrase if secure else None,
            ca_file=str(s.ca_path) if secure and s.ca_path else None,
            vtn_fingerprint=s.vtn_fingerprint if secure else None,
            disable_signature=not secure,
            show_fingerprint=False,
        )
        client.loop = asyncio.get_running_loop()
        client.add_handler("on_event", self._on_event)
        client.add_handler("on_update_event", self._on_event)
        client.add_report(
            callback=self._report_values,
            resource_id=s.report_resource_id,
            measurement=REPORT_MEASUREMENT,
            unit="W",
            scale=REPORT_SCALE,
            data_collection_mode="full",
            report_duration=s.report_max_sampling,
            sampling_rate=objects.SamplingRate(
                min_period=s.report_min_sampling, max_period=s.report_max_sampling, on_change=False
            ),
        )
        self._client = client
        try:
            await self._register()
            group = asyncio.TaskGroup()
            await group.__aenter__()
            self._group = group
            client.scheduler.start()
            self._tasks = [
                group.create_task(self._poll_loop(), name=f"openadr2-poll:{s.ven_name}"),
                group.create_task(client._report_queue_worker(), name=f"openadr2-reports:{s.ven_name}"),
            ]
        except BaseException:
            await self._close_client()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        group, self._group = self._group, None
        try:
            if group is not None:
                for task in self._tasks:
                    task.cancel()
                self._tasks = []
                await group.__aexit__(exc_type, exc, tb)
        finally:
            await self._close_client()

    async def _close_client(self) -> None:
        client = self._client
        if client is None:
            return
        if client.scheduler.running:
            client.scheduler.shutdown(wait=False)
        if client.client_session is not None:
            await client.client_session.close()

    async def _request(self, what: str, call: Any) -> Any:
        try:
            async with asyncio.timeout(self.settings.request_timeout.total_seconds()):
                return await call
        except TimeoutError as err:
            raise Openadr2Error(
                f"{self.settings.source}: no answer to {what} within {self.settings.request_timeout}"
            ) from err

    async def _register(self) -> None:
        client = self._client
        answer = await self._request("oadrQueryRegistration", client.query_registration())
        payload = answer[1] if isinstance(answer, tuple) else {}
        request_id = (payload.get("response") or {}).get("request_id")
        await self._request(
            "oadrCreatePartyRegistration",
            client.create_party_registration(ven_id=client.ven_id, request_id=request_id),
        )
        if not client.registration_id:
            raise Openadr2Error(
                f"{self.settings.source}: VTN did not register VEN {self.settings.ven_name!r} "
                "(refused or unreachable; see the openleadr log)"
            )
        if self.settings.poll_interval is not None:
            client.poll_frequency = self.settings.poll_interval
        logger.info(
            "registered VEN %r as %s (registration %s), polling every %s",
            self.settings.ven_name,
            client.ven_id,
            client.registration_id,
            client.poll_frequency,
        )
        await self._request("oadrRegisterReport", client.register_reports(client.reports))
        await self._request("oadrRequestEvent", client.sync_events())

    async def _poll_loop(self) -> None:
        client = self._client
        while True:
            period = min(client.poll_frequency or dt.timedelta(seconds=10), dt.timedelta(hours=24))
            await asyncio.sleep(period.total_seconds())
            try:
                await self._request("oadrPoll", client._poll())
            except Openadr2Error as err:
                logger.warning("%s", err)
            except Exception:
                logger.exception("%s: poll failed; will poll again", self.settings.source)
            await client._event_cleanup()  # forget cancelled and completed events

    # -- events ----------------------------------------------------------------------------------

    async def _on_event(self, event: dict[str, Any]) -> OptType:
        """openleadr's on_event and on_update_event: decide, tell the sink, answer optIn or optOut.

        The sink hears of the events we commit to (optIn) and of their ends: a cancellation, a
        completion, or a modification we can no longer deliver (then the last committed version comes
        back with status cancelled, so the sites re-plan without it).
        """
        descriptor = event.get("event_descriptor") or {}
        event_id = str(descriptor.get("event_id"))
        modification = int(descriptor.get("modification_number") or 0)
        try:
            signal = parse_event(read_event(event, self.ven_id), self.settings, self._clock())
        except AdapterFormatError as err:
            logger.warning("optOut of event %s modification %d: %s", event_id, modification, err)
            await self._withdraw(event_id, modification)
            return "optOut"
        if signal.status in (SignalStatus.CANCELLED, SignalStatus.COMPLETED):
            committed = self._committed.pop(event_id, None) is not None
            logger.info("event %s %s (modification %d)", event_id, signal.status, modification)
            if committed:
                await self._deliver(signal)
            return "optIn" if committed else "optOut"
        opt, why = await decide(signal, self._oracle)
        logger.info(
            "%s event %s modification %d (%s, VTN status %s): %s",
            opt,
            event_id,
            modification,
            signal.kind,
            descriptor.get("event_status"),
            why,
        )
        if opt == "optOut":
            await self._withdraw(event_id, modification)
            return "optOut"
        if not await self._deliver(signal):
            await self._withdraw(event_id, modification)
            return "optOut"
        self._committed[event_id] = signal
        return "optIn"

    async def _withdraw(self, event_id: str, modification: int) -> None:
        previous = self._committed.pop(event_id, None)
        if previous is None:
            return
        logger.info("event %s modification %d: withdrawn from the plan", event_id, modification)
        await self._deliver(
            previous.model_copy(
                update={
                    "status": SignalStatus.CANCELLED,
                    "modification": modification,
                    "received_at": self._clock(),
                }
            )
        )

    async def _deliver(self, signal: GridSignal) -> bool:
        try:
            await self._sink(signal)
        except Exception:
            logger.exception(
                "sink failed on event %s modification %d (%s)",
                signal.event_id,
                signal.modification,
                signal.status,
            )
            return False
        return True

    # -- reports ---------------------------------------------------------------------------------

    async def _report_values(
        self, date_from: dt.datetime, date_to: dt.datetime, sampling_interval: dt.timedelta
    ) -> list[tuple[dt.datetime, float]]:
        """openleadr's 'full' report callback: what the oracle metered in the window [kW]."""
        values = await self._oracle.metered_kw(date_from, date_to)
        logger.debug("report %s–%s: %d values", date_from, date_to, len(values))
        return [(start, float(kw)) for start, kw in values]
