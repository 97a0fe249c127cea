"""A connected charging station, as the central system sees it: what the 1.6, 2.0.1 and 2.1 handlers share.

:class:`Station` extends the ocpp library's ``ChargePoint`` with:

- a reply to every CALL: unrouted actions get NotImplemented (or NotSupported for actions the version does
  not define) on every version - the library stays silent on 2.1 - and frames that are not valid OCPP-J get
  a CallError (FormatViolation, FormationViolation on 1.6) with message id "-1" when none can be read;
- calls to the charger from inside a handler are deferred until the handler's response has been sent, and
  run as named tasks in the connection's TaskGroup (awaiting a call inside ``@on`` deadlocks; the library's
  ``@after`` hooks are fire-and-forget);
- :meth:`request`: a call that raises :class:`ChargerCallError` / :class:`ChargePointUnavailable` instead of
  hiding CallErrors;
- events to the sink, sessions in the shared register, token authorization;
- what the charger can do (:mod:`site_gateway.ocpp.capabilities`): its charging-rate units, read after
  every boot before the boot profiles go out (or before the first profile of a connection that did not
  boot), kept per charge point across reconnections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from ocpp.charge_point import ChargePoint
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import NotSupportedError, OCPPError
from ocpp.messages import CallError, MessageType, unpack
from ocpp.v16 import call as call16
from ocpp.v16.enums import Action as Action16
from ocpp.v21 import call as call21
from ocpp.v21.enums import Action as Action21
from ocpp.v201 import call as call201
from ocpp.v201.enums import Action as Action201
from websockets.exceptions import ConnectionClosed

from site_gateway.clock import SYSTEM_CLOCK, Clock, within
from site_gateway.config import ChargerSection
from site_gateway.ocpp.capabilities import (
    RATE_UNIT_COMPONENT,
    RATE_UNIT_KEY_16,
    RATE_UNIT_VARIABLE,
    ChargerCapabilities,
    declared_discharge,
    parse_rate_units,
    rate_unit,
)
from site_gateway.ocpp.events import EventSink, OcppEvent, SessionStarted, TokenIdentity, TokenLookup
from site_gateway.ocpp.profiles import OcppVersion, ProfilePlan, station_max_profile, tx_default_profile
from site_gateway.ocpp.sessions import Session, SessionRegister

logger = logging.getLogger(__name__)

_KNOWN_ACTIONS: dict[OcppVersion, frozenset[str]] = {
    OcppVersion.V16: frozenset(a.value for a in Action16),
    OcppVersion.V201: frozenset(a.value for a in Action201),
    OcppVersion.V21: frozenset(a.value for a in Action21),
}
# OCPP 1.6 spells two error codes its own way (errata 5.1, 5.2).
_ERROR_CODES_16 = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
}


class OcppGatewayError(Exception):
    """Base of the OCPP server's errors; ``code`` is the OCPP CallError code that fits."""

    code: str = "InternalError"

    def __init__(self, message: str, *, charge_point_id: str, code: str | None = None) -> None:
        super().__init__(message)
        self.charge_point_id = charge_point_id
        if code is not None:
            self.code = code


class ChargePointUnavailable(OcppGatewayError):
    """Not connected, the connection dropped, or no answer within the response timeout."""

    code = "GenericError"


class ChargerCallError(OcppGatewayError):
    """The charger answered a call with a CallError; ``code`` is its error code."""


def parse_time(text: str | None) -> datetime | None:
    """An OCPP date-time as an aware datetime; None when missing or unreadable."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


CallObserver = Callable[[str, str, float, str | None], None]
"""(action, direction ``to_charger`` / ``from_charger``, seconds on the context's clock, error code or
``None``) of every call answered, failed or timed out; it must be quick (it runs on the call's path)."""


@dataclass(slots=True)
class StationContext:
    """What every connection shares with the server."""

    sessions: SessionRegister
    sink: EventSink
    token_lookup: TokenLookup
    accept_unknown_tokens: bool = False
    heartbeat_interval_s: int = 300
    default_limit_kw: float = 7.4
    send_station_max: bool = False
    clock: Clock = SYSTEM_CLOCK
    """Timestamps of events and answers, and the response timeout of calls to chargers."""
    capabilities: dict[str, ChargerCapabilities] = field(default_factory=dict)
    """Charge point id -> what it said it can do (read again after each boot)."""
    on_call: CallObserver | None = None
    """Told of every call both ways (the gateway's metrics); ``None``: nobody is."""
    boot_limit_kw: Callable[[str], float] | None = None
    """The TxDefaultProfile limit a charger gets at boot, by charge point id (``None``: every charger
    ``default_limit_kw``). The gateway gives each what it counts it at, so a reboot never raises a
    charger above the budget the other chargers' allocation left it."""


@dataclass(slots=True)
class MeterSample:
    energy_wh: float | None = None
    """Energy.Active.Import.Register [Wh]."""
    export_energy_wh: float | None = None
    """Energy.Active.Export.Register [Wh], from chargers that can discharge."""
    power_w: float | None = None
    soc_pct: float | None = None
    measured_at: datetime | None = None


_POWER_IMPORT = "Power.Active.Import"
_POWER_EXPORT = "Power.Active.Export"
_ENERGY_IMPORT = "Energy.Active.Import.Register"
_ENERGY_EXPORT = "Energy.Active.Export.Register"
_MULTIPLIER_UNITS = {"kWh": 1000.0, "kW": 1000.0, "Wh": 1.0, "W": 1.0}


def read_meter_values(meter_values: Iterable[dict[str, Any]]) -> MeterSample:
    """Latest total (phase-less) import and export registers, net power and SoC from 1.6 or 2.x
    meterValue lists."""
    sample = MeterSample()
    import_w: float | None = None
    export_w: float | None = None
    for meter_value in meter_values:
        sample.measured_at = parse_time(meter_value.get("timestamp")) or sample.measured_at
        for sampled in meter_value.get("sampled_value") or []:
            if sampled.get("phase"):
                continue
            unit_of_measure = sampled.get("unit_of_measure") or {}  # 2.x
            unit = sampled.get("unit") or unit_of_measure.get("unit")
            scale = _MULTIPLIER_UNITS.get(unit or "", 1.0) * 10.0 ** int(unit_of_measure.get("multiplier", 0))
            try:
                value = float(sampled["value"]) * scale
            except (KeyError, TypeError, ValueError):
                logger.warning("unreadable sampled value %r", sampled)
                continue
            measurand = sampled.get("measurand", _ENERGY_IMPORT)
            if measurand == _ENERGY_IMPORT:
                sample.energy_wh = value
            elif measurand == _ENERGY_EXPORT:
                sample.export_energy_wh = value
            elif measurand == _POWER_IMPORT:
                import_w = value
            elif measurand == _POWER_EXPORT:
                export_w = value
            elif measurand == "SoC":
                sample.soc_pct = float(sampled["value"])
    if import_w is not None or export_w is not None:
        sample.power_w = (import_w or 0.0) - (export_w or 0.0)
    return sample


def _message_id(raw: str | bytes) -> str:
    """The unique id of a frame that failed to unpack, or "-1" when it cannot be read."""
    try:
        frame = json.loads(raw)
    except (ValueError, TypeError):
        return "-1"
    if isinstance(frame, list) and len(frame) > 1 and isinstance(frame[1], str):
        return frame[1]
    return "-1"


class Station(ChargePoint):
    """Common central-system side of one charger connection; subclasses add the version's ``@on`` handlers."""

    version: ClassVar[OcppVersion]

    def __init__(
        self,
        charge_point_id: str,
        connection: Any,
        *,
        charger: ChargerSection,
        context: StationContext,
        response_timeout_s: float = 10.0,
    ) -> None:
        # The library's own timeout runs on the event loop's time; ours (in request) on the clock.
        super().__init__(charge_point_id, connection, response_timeout=math.inf)
        self.response_timeout_s = response_timeout_s
        """How long a call waits for the charger's answer [s on the context's clock]."""
        self.charger = charger
        self.context = context
        self.booted = asyncio.Event()
        self.boot_profiles_sent = asyncio.Event()
        """Set once the boot profiles have been answered (or failed): a default limit sent later is
        not overwritten by them."""
        self.boot_profiles: list[tuple[ProfilePlan, str]] = []  # (plan, charger status or error code)
        self._capabilities_read = asyncio.Lock()
        self._deferred: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._task_group: asyncio.TaskGroup | None = None

    # -- life of the connection -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve this connection until the charger hangs up; deferred calls are cancelled with it."""
        try:
            async with asyncio.TaskGroup() as task_group:
                self._task_group = task_group
                await self.start()
        except* ConnectionClosed:
            logger.info("%s: connection closed", self.id)
        finally:
            self._task_group = None

    async def close(self, reason: str) -> None:
        """Close the websocket ("going away"); never raises, so it can run as a background task."""
        try:
            await self._connection.close(code=1001, reason=reason)
        except Exception:
            logger.exception("%s: closing the connection failed", self.id)

    def defer(self, name: str, call: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``call`` once the response to the CALL being handled has been sent."""
        self._deferred.append((name, call))

    async def _guarded(self, name: str, call: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await call()
        except (OcppGatewayError, OCPPError) as exc:
            logger.warning("%s: %s failed: %s", self.id, name, exc)
        except Exception:
            logger.exception("%s: %s failed", self.id, name)

    # -- routing ------------------------------------------------------------------------------------------

    def _error_code(self, error: OCPPError) -> str:
        code = str(error.code)
        return _ERROR_CODES_16.get(code, code) if self.version is OcppVersion.V16 else code

    async def _send_error(self, unique_id: str, error: OCPPError) -> None:
        details = {"cause": str((error.details or {}).get("cause", ""))}
        frame = CallError(unique_id, self._error_code(error), error.description, details)
        await self._send(frame.to_json())

    async def route_message(self, raw_msg: str | bytes) -> None:
        try:
            msg = unpack(raw_msg)
        except OCPPError as error:
            logger.warning("%s: malformed frame %.200r: %s", self.id, raw_msg, error)
            await self._send_error(_message_id(raw_msg), error)
            return
        if msg.message_type_id != MessageType.Call:
            self._response_queue.put_nowait(msg)
            return
        self._deferred.clear()
        started = self.context.clock.monotonic()
        try:
            await self._handle_call(msg)
        except OCPPError as error:
            logger.warning("%s: %s refused: %s", self.id, msg.action, error)
            self._deferred.clear()
            self._observe(msg.action, "from_charger", started, self._error_code(error))
            await self._send_error(msg.unique_id, error)
            return
        self._observe(msg.action, "from_charger", started, None)
        deferred, self._deferred = self._deferred, []
        for name, call in deferred:
            if self._task_group is None:  # not running under run(): nothing to own the task
                logger.warning("%s: %s dropped, connection not running", self.id, name)
                continue
            self._task_group.create_task(self._guarded(name, call), name=f"ocpp-{self.id}-{name}")

    async def _handle_call(self, msg: Any) -> Any:
        if "_on_action" not in self.route_map.get(msg.action, {}):
            cause = {"cause": f"No handler for {msg.action} registered."}
            if msg.action in _KNOWN_ACTIONS[self.version]:
                raise OcppNotImplemented(details=cause)
            raise NotSupportedError(details={"cause": f"{msg.action} is not an {self.version} action."})
        return await super()._handle_call(msg)

    # -- calls to the charger -----------------------------------------------------------------------------

    async def request(self, payload: Any) -> Any:
        """Send a call; CallErrors, timeouts (``response_timeout_s`` on the context's clock) and closed
        connections raise :class:`OcppGatewayError`."""
        action = type(payload).__name__
        started = self.context.clock.monotonic()
        try:
            answer = await within(
                self.call(payload, suppress=False), self.response_timeout_s, self.context.clock
            )
        except OCPPError as exc:
            message = f"{self.id}: {action} answered {exc.code}: {exc.description}"
            self._observe(action, "to_charger", started, self._error_code(exc))
            raise ChargerCallError(message, charge_point_id=self.id, code=self._error_code(exc)) from exc
        except TimeoutError as exc:
            message = f"{self.id}: no answer to {action} within {self.response_timeout_s} s"
            self._observe(action, "to_charger", started, "Timeout")
            raise ChargePointUnavailable(message, charge_point_id=self.id) from exc
        except ConnectionClosed as exc:
            self._observe(action, "to_charger", started, "ConnectionClosed")
            raise ChargePointUnavailable(f"{self.id}: connection lost", charge_point_id=self.id) from exc
        self._observe(action, "to_charger", started, None)
        return answer

    def _observe(self, action: str, direction: str, started: float, error: str | None) -> None:
        """Tell :attr:`StationContext.on_call` of a call that took from ``started`` until now."""
        if (observer := self.context.on_call) is not None:
            observer(action, direction, self.context.clock.monotonic() - started, error)

    # -- what the charger can do --------------------------------------------------------------------------

    @property
    def capabilities(self) -> ChargerCapabilities:
        """What the charger said it can do (nothing known yet: the configuration's defaults)."""
        return self.context.capabilities.get(self.id, ChargerCapabilities())

    @property
    def rate_unit(self) -> str:
        """The unit its profiles go in (:func:`~site_gateway.ocpp.capabilities.rate_unit`)."""
        return rate_unit(self.charger, self.capabilities)

    def composite_unsupported(self) -> None:
        """It answered GetCompositeSchedule with NotSupported/NotImplemented: never ask again."""
        if self.capabilities.composite_schedule:
            logger.info("%s cannot report composite schedules: verifying its profiles by meter", self.id)
        self.context.capabilities[self.id] = replace(self.capabilities, composite_schedule=False)

    async def ensure_capabilities(self, *, again: bool = False) -> ChargerCapabilities:
        """Ask the charger for its charging-rate units unless known (``again``: after a boot). A
        charger that cannot say (CallError, no answer) is taken to accept the configured unit."""
        async with self._capabilities_read:
            if not again and self.id in self.context.capabilities:
                return self.context.capabilities[self.id]
            try:
                units = await self._read_rate_units()
            except OcppGatewayError as exc:
                logger.info("%s: rate units not readable (%s)", self.id, exc)
                units = None
            known = ChargerCapabilities() if again else self.capabilities  # a boot may be new firmware
            self.context.capabilities[self.id] = replace(known, rate_units=units)
            logger.info("%s: rate units %s, profiles in %s", self.id, units or "not said", self.rate_unit)
            return self.context.capabilities[self.id]

    async def _read_rate_units(self) -> tuple[str, ...] | None:
        if self.version is OcppVersion.V16:
            answer = await self.request(call16.GetConfiguration(key=[RATE_UNIT_KEY_16]))
            for entry in answer.configuration_key or []:
                if entry.get("key") == RATE_UNIT_KEY_16:
                    return parse_rate_units(entry.get("value"))
            return None
        call: Any = call201 if self.version is OcppVersion.V201 else call21
        wanted = {"component": {"name": RATE_UNIT_COMPONENT}, "variable": {"name": RATE_UNIT_VARIABLE}}
        answer = await self.request(call.GetVariables(get_variable_data=[wanted]))
        for result in answer.get_variable_result or []:
            if result.get("attribute_status") == "Accepted":
                return parse_rate_units(result.get("attribute_value"))
        return None

    # -- boot ---------------------------------------------------------------------------------------------

    def boot_limit_kw(self) -> float:
        """This charger's boot TxDefaultProfile limit [kW] (:attr:`StationContext.boot_limit_kw`)."""
        by_charger = self.context.boot_limit_kw
        return self.context.default_limit_kw if by_charger is None else by_charger(self.id)

    async def send_boot_profiles(self) -> None:
        """Safe stack-level-0 TxDefaultProfile (and optionally the station-wide maximum) after boot, in
        the unit the charger takes (asked first)."""
        try:
            await self.ensure_capabilities(again=True)
            unit = self.rate_unit
            plans = [tx_default_profile(self.version, self.charger, limit_kw=self.boot_limit_kw(), unit=unit)]
            if self.context.send_station_max:
                plans.append(
                    station_max_profile(
                        self.version,
                        self.charger,
                        limit_kw=self.charger.max_charge_kw,
                        now=self.context.clock.now(),
                        unit=unit,
                    )
                )
            for plan in plans:
                try:
                    result = await self.request(plan.request)
                    status = str(result.status)
                except ChargerCallError as exc:
                    status = exc.code
                if status != "Accepted":
                    logger.warning("%s: %s refused at boot: %s", self.id, plan.purpose, status)
                self.boot_profiles.append((plan, status))
        finally:
            self.boot_profiles_sent.set()

    # -- shared handler helpers ---------------------------------------------------------------------------

    async def emit(self, event: OcppEvent) -> None:
        try:
            await self.context.sink(event)
        except Exception:
            logger.exception("%s: event sink failed on %s", self.id, event.kind)

    async def authorize(self, id_token: str | None) -> tuple[str, TokenIdentity | None]:
        """(OCPP authorization status, identity) for a token."""
        if id_token is None:
            return "Accepted", None
        identity = await self.context.token_lookup(id_token)
        if identity is not None:
            return "Accepted", identity
        return ("Accepted" if self.context.accept_unknown_tokens else "Invalid"), None

    def on_booted(self) -> None:
        """Mark the station booted and schedule the boot profiles once the response is out."""
        self.booted.set()
        self.defer("boot-profiles", self.send_boot_profiles)

    def new_session(
        self,
        *,
        evse_id: int,
        transaction_id: str,
        started_at: datetime,
        id_token: str | None = None,
        identity: TokenIdentity | None = None,
        meter_start_wh: float | None = None,
    ) -> Session:
        return self.context.sessions.add(
            Session(
                charge_point_id=self.id,
                evse_id=evse_id,
                transaction_id=transaction_id,
                started_at=started_at,
                id_token=id_token,
                driver_id=identity.driver_id if identity else None,
                vehicle_id=identity.vehicle_id if identity else None,
                meter_start_wh=meter_start_wh,
                discharge=declared_discharge(self.version, self.charger),
            )
        )

    def update_session(self, session: Session, sample: MeterSample) -> None:
        if sample.energy_wh is not None:
            session.energy_wh = sample.energy_wh
        if sample.power_w is not None:
            session.power_w = sample.power_w
        if sample.soc_pct is not None:
            session.soc_pct = sample.soc_pct

    def started_event(self, session: Session, *, resumed: bool) -> SessionStarted:
        return SessionStarted(
            charge_point_id=self.id,
            received_at=self.context.clock.now(),
            evse_id=session.evse_id,
            transaction_id=session.transaction_id,
            started_at=session.started_at,
            id_token=session.id_token,
            driver_id=session.driver_id,
            vehicle_id=session.vehicle_id,
            meter_start_wh=session.meter_start_wh,
            resumed=resumed,
            discharge=session.discharge,
        )
