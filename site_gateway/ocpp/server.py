"""The gateway's OCPP-J server: chargers connect to ``ws://HOST:PORT/{charge_point_id}``.

- Subprotocols ``ocpp2.1``, ``ocpp2.0.1``, ``ocpp1.6`` (preferred in that order); a connection with none
  in common is refused at the handshake (HTTP 400).
- Security profile 1: HTTP Basic auth per charge point (user = charge point id, password from the
  configuration, compared in constant time); profile 2: the same over TLS (pass an ``ssl`` context).
- Charge points not in the configuration are refused (HTTP 404) unless ``allow_unknown``.
- One :class:`~site_gateway.ocpp.station.Station` per connection, chosen by the negotiated version; a
  charger that reconnects replaces its old connection, and its sessions survive in the shared
  :class:`~site_gateway.ocpp.sessions.SessionRegister`.

Usage::

    async with OcppServer(config.ocpp, config.chargers, sink=forward) as server:
        outcome = await server.apply_setpoint("CP-01", 1, power_kw=-5.0, valid_until=until)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import math
import re
import ssl
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from http import HTTPStatus
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from site_gateway.clock import SYSTEM_CLOCK, Clock, wait_event
from site_gateway.config import ChargerSection, GatewayConfig, OcppSection
from site_gateway.ocpp.capabilities import COMPOSITE_UNSUPPORTED
from site_gateway.ocpp.events import EventSink, TokenLookup, discard_events, no_tokens
from site_gateway.ocpp.profiles import (
    OcppVersion,
    OutcomeStatus,
    ProfileError,
    ProfileOutcome,
    composite_agrees,
    composite_request,
    read_composite,
    tx_default_profile,
    tx_profile,
)
from site_gateway.ocpp.sessions import Session, SessionRegister
from site_gateway.ocpp.station import (
    CallObserver,
    ChargerCallError,
    OcppGatewayError,
    Station,
    StationContext,
)
from site_gateway.ocpp.v16 import StationV16
from site_gateway.ocpp.v21 import StationV21
from site_gateway.ocpp.v201 import StationV201

logger = logging.getLogger(__name__)

SUBPROTOCOLS = (OcppVersion.V21, OcppVersion.V201, OcppVersion.V16)
STATION_CLASSES: dict[OcppVersion, type[Station]] = {
    OcppVersion.V16: StationV16,
    OcppVersion.V201: StationV201,
    OcppVersion.V21: StationV21,
}
_CHARGE_POINT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,48}$")


def charge_point_id_from_path(path: str) -> str:
    """The last path segment, URL-decoded: ``/ocpp/CP-01`` -> ``CP-01``."""
    return unquote(urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1])


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS for security profile 2 from a PEM certificate chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class OcppServer:
    """Async context manager serving OCPP-J; knows the connected stations and their sessions."""

    def __init__(
        self,
        ocpp: OcppSection,
        chargers: Sequence[ChargerSection] = (),
        *,
        default_limit_kw: float = 7.4,
        sink: EventSink = discard_events,
        token_lookup: TokenLookup = no_tokens,
        accept_unknown_tokens: bool = False,
        send_station_max: bool = False,
        passwords: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        response_timeout_s: float = 10.0,
        close_timeout_s: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``passwords`` overrides the chargers' ``password_env`` lookup (charge point id -> password).
        ``response_timeout_s``: how long a call waits for a charger's answer, on ``clock`` (which also
        stamps events); ``close_timeout_s``: the websocket closing handshake (network time)."""
        self.settings = ocpp
        self._chargers = {charger.id: charger for charger in chargers}
        self._passwords = (
            dict(passwords)
            if passwords is not None
            else {c.id: pw for c in chargers if (pw := c.password()) is not None}
        )
        self._ssl = ssl_context
        self._response_timeout_s = response_timeout_s
        self._close_timeout_s = close_timeout_s
        self._clock = clock
        self.sessions = SessionRegister()
        self._context = StationContext(
            sessions=self.sessions,
            sink=sink,
            token_lookup=token_lookup,
            accept_unknown_tokens=accept_unknown_tokens,
            heartbeat_interval_s=ocpp.heartbeat_interval_s,
            default_limit_kw=default_limit_kw,
            send_station_max=send_station_max,
            clock=clock,
        )
        self._stations: dict[str, Station] = {}
        self._stack: AsyncExitStack | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._server: Server | None = None

    def set_boot_limit(self, limit_kw: Callable[[str], float]) -> None:
        """Give each charger ``limit_kw(charge point id)`` as its boot TxDefaultProfile limit."""
        self._context.boot_limit_kw = limit_kw

    def observe_calls(self, observer: CallObserver | None) -> None:
        """Tell ``observer`` of every call to and from every charger (:data:`~.station.CallObserver`)."""
        self._context.on_call = observer

    @property
    def listening(self) -> bool:
        """Whether the server accepts connections."""
        return self._server is not None and bool(self._server.sockets)

    @classmethod
    def from_config(cls, config: GatewayConfig, **kwargs: object) -> OcppServer:
        """Server for ``site.toml``: listener, chargers, default limit, response timeout and TLS from the
        file."""
        ssl_context = None
        if config.ocpp.tls_cert is not None and config.ocpp.tls_key is not None:
            ssl_context = server_ssl_context(str(config.ocpp.tls_cert), str(config.ocpp.tls_key))
        return cls(
            config.ocpp,
            config.chargers,
            default_limit_kw=config.control.default_limit_kw,
            ssl_context=ssl_context,
            response_timeout_s=config.ocpp.response_timeout_s,
            **kwargs,  # type: ignore[arg-type]
        )

    # -- life -----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            self._tasks = await stack.enter_async_context(asyncio.TaskGroup())
            self._server = await stack.enter_async_context(
                serve(
                    self._serve_connection,
                    self.settings.host,
                    self.settings.port,
                    subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
                    process_request=self._process_request,
                    ssl=self._ssl,
                    close_timeout=self._close_timeout_s,
                )
            )
            self._stack = stack.pop_all()
        logger.info("OCPP server listening on port %d", self.port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._server = None
        self._tasks = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("OcppServer is not running")
        return int(next(iter(self._server.sockets)).getsockname()[1])

    # -- handshake ------------------------------------------------------------------------------------------

    def charger(self, charge_point_id: str) -> ChargerSection | None:
        return self._chargers.get(charge_point_id)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = charge_point_id_from_path(request.path)
        if not _CHARGE_POINT_ID.fullmatch(cp_id):
            logger.warning("refused connection to %r: not a charge point id", request.path)
            return connection.respond(HTTPStatus.NOT_FOUND, "Not a charge point id.\n")
        if cp_id not in self._chargers and not self.settings.allow_unknown:
            logger.warning("refused unknown charge point %s", cp_id)
            return connection.respond(HTTPStatus.NOT_FOUND, "Unknown charge point.\n")
        password = self._passwords.get(cp_id)
        if password is None:
            return None
        credentials = _basic_credentials(request.headers.get("Authorization"))
        user, given = credentials if credentials is not None else ("", "")
        user_ok = hmac.compare_digest(user.encode(), cp_id.encode())
        password_ok = hmac.compare_digest(given.encode(), password.encode())
        if credentials is None or not (user_ok and password_ok):
            logger.warning("refused charge point %s: bad or missing credentials", cp_id)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "Invalid credentials.\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="fleetgrid", charset="UTF-8"'
            return response
        return None

    async def _serve_connection(self, connection: ServerConnection) -> None:
        cp_id = charge_point_id_from_path(connection.request.path if connection.request else "")
        version = OcppVersion(str(connection.subprotocol))  # the handshake refuses no subprotocol
        charger = self._chargers.get(cp_id) or ChargerSection(id=cp_id)
        station = STATION_CLASSES[version](
            cp_id,
            connection,
            charger=charger,
            context=self._context,
            response_timeout_s=self._response_timeout_s,
        )
        previous = self._stations.get(cp_id)
        self._stations[cp_id] = station
        if previous is not None and self._tasks is not None:
            logger.info("%s reconnected: closing its previous connection", cp_id)
            self._tasks.create_task(
                previous.close("replaced by a new connection"), name=f"ocpp-{cp_id}-replace"
            )
        logger.info("%s connected with %s", cp_id, version.value)
        try:
            await station.run()
        finally:
            if self._stations.get(cp_id) is station:
                del self._stations[cp_id]
            logger.info("%s disconnected", cp_id)

    # -- queries --------------------------------------------------------------------------------------------

    def station(self, charge_point_id: str) -> Station | None:
        """The current connection of a charge point, if connected."""
        return self._stations.get(charge_point_id)

    @property
    def connected(self) -> list[str]:
        return sorted(self._stations)

    def active_session(self, charge_point_id: str, evse_id: int) -> Session | None:
        return self.sessions.active(charge_point_id, evse_id)

    # -- smart charging -------------------------------------------------------------------------------------

    async def apply_default_limit(self, charge_point_id: str, limit_kw: float) -> ProfileOutcome:
        """Replace the station-wide TxDefaultProfile (EVSE 0): the most a transaction that starts
        there draws before it gets a TxProfile of its own [kW].

        After a boot it waits for the boot profiles first, so they cannot overwrite it. Never raises
        for a charger's answer (as :meth:`apply_setpoint`).
        """
        station = self._stations.get(charge_point_id)
        if station is None:
            return ProfileOutcome(
                charge_point_id, 0, OutcomeStatus.FAILED, limit_kw, reason="charge point not connected"
            )
        booting = station.booted.is_set() and not station.boot_profiles_sent.is_set()
        wait_s = 3 * self._response_timeout_s  # its rate units, the TxDefaultProfile, the station maximum
        if booting and not await wait_event(station.boot_profiles_sent, wait_s, self._clock):
            why = "the boot profiles are still unanswered"
            return ProfileOutcome(charge_point_id, 0, OutcomeStatus.FAILED, limit_kw, reason=why)
        await station.ensure_capabilities()
        try:
            plan = tx_default_profile(
                station.version, station.charger, limit_kw=limit_kw, unit=station.rate_unit
            )
        except ProfileError as exc:
            return ProfileOutcome(charge_point_id, 0, OutcomeStatus.FAILED, limit_kw, reason=str(exc))
        try:
            answer = await station.request(plan.request)
        except ChargerCallError as exc:
            return ProfileOutcome(
                charge_point_id, 0, OutcomeStatus.REJECTED, limit_kw, plan.power_kw, None, exc.code, str(exc)
            )
        except OcppGatewayError as exc:
            return ProfileOutcome(
                charge_point_id, 0, OutcomeStatus.FAILED, limit_kw, plan.power_kw, reason=str(exc)
            )
        status = OutcomeStatus.ACCEPTED if str(answer.status) == "Accepted" else OutcomeStatus.REJECTED
        logger.info("default limit %s %.3f kW: %s", charge_point_id, limit_kw, status.value)
        return ProfileOutcome(
            charge_point_id, 0, status, limit_kw, plan.power_kw, plan.power_kw, str(answer.status)
        )

    async def apply_setpoint(
        self,
        charge_point_id: str,
        evse_id: int,
        power_kw: float,
        valid_until: datetime,
        *,
        transaction_id: str | None = None,
    ) -> ProfileOutcome:
        """Send a TxProfile for the running transaction and read it back with GetCompositeSchedule.

        ``transaction_id``: the session the power was allocated to; when another one runs now (the
        vehicle left and the next plugged in while the step waited), nothing is sent: a setpoint
        ends with its session (the fault soak found a discharge reaching the next car).

        The profile goes in the unit the charger takes and discharges no more than the session may
        (:mod:`site_gateway.ocpp.capabilities`). A charger that cannot report a composite schedule
        (NotSupported / NotImplemented) has an accepted profile accepted, ``by_meter``, and is not asked
        again. Never raises for a charger's answer: offline, no transaction, rejection and timeouts come
        back as the outcome's status and reason, for reporting upstream.
        """

        def outcome(
            status: OutcomeStatus,
            *,
            sent_kw: float | None = None,
            effective_kw: float | None = None,
            charger_status: str | None = None,
            reason: str | None = None,
            by_meter: bool = False,
        ) -> ProfileOutcome:
            result = ProfileOutcome(
                charge_point_id,
                evse_id,
                status,
                power_kw,
                sent_kw,
                effective_kw,
                charger_status,
                reason,
                by_meter,
            )
            log = logger.info if result.is_ok else logger.warning
            log(
                "setpoint %s/%s %.3f kW: %s %s",
                charge_point_id,
                evse_id,
                power_kw,
                status.value,
                reason or "",
            )
            return result

        now = self._clock.now()
        if valid_until <= now:
            return outcome(OutcomeStatus.FAILED, reason=f"setpoint expired at {valid_until.isoformat()}")
        station = self._stations.get(charge_point_id)
        if station is None:
            return outcome(OutcomeStatus.FAILED, reason="charge point not connected")
        session = self.sessions.active(charge_point_id, evse_id)
        if session is None:
            return outcome(OutcomeStatus.FAILED, reason=f"no transaction running on EVSE {evse_id}")
        if transaction_id is not None and session.transaction_id != transaction_id:
            return outcome(
                OutcomeStatus.FAILED,
                reason=f"transaction {transaction_id} ended; {session.transaction_id} runs on EVSE {evse_id}",
            )
        await station.ensure_capabilities()
        try:
            plan = tx_profile(
                station.version,
                station.charger,
                evse_id=evse_id,
                transaction_id=session.transaction_id,
                power_kw=power_kw,
                valid_until=valid_until,
                now=now,
                unit=station.rate_unit,
                discharge=session.discharge,
            )
        except ProfileError as exc:
            return outcome(OutcomeStatus.FAILED, reason=str(exc))
        sent_kw = plan.power_kw
        try:
            answer = await station.request(plan.request)
        except ChargerCallError as exc:
            return outcome(OutcomeStatus.REJECTED, sent_kw=sent_kw, charger_status=exc.code, reason=str(exc))
        except OcppGatewayError as exc:
            return outcome(OutcomeStatus.FAILED, sent_kw=sent_kw, reason=str(exc))
        charger_status = str(answer.status)
        if charger_status != "Accepted":
            info = getattr(answer, "status_info", None)  # 2.x only
            reason = None
            if isinstance(info, dict):
                reason = " ".join(filter(None, [info.get("reason_code"), info.get("additional_info")]))
            return outcome(
                OutcomeStatus.REJECTED, sent_kw=sent_kw, charger_status=charger_status, reason=reason
            )

        by_meter = f"{charge_point_id} cannot report a composite schedule: verified by its meter values"
        if not station.capabilities.composite_schedule:
            return outcome(
                OutcomeStatus.ACCEPTED,
                sent_kw=sent_kw,
                charger_status=charger_status,
                reason=plan.clamp_reason or by_meter,
                by_meter=True,
            )
        duration_s = math.ceil((valid_until - now).total_seconds())
        try:
            composite = await station.request(
                composite_request(station.version, evse_id, duration_s, plan.unit)
            )
        except ChargerCallError as exc:
            if exc.code not in COMPOSITE_UNSUPPORTED:
                return outcome(
                    OutcomeStatus.UNVERIFIED, sent_kw=sent_kw, charger_status=charger_status, reason=str(exc)
                )
            station.composite_unsupported()
            return outcome(
                OutcomeStatus.ACCEPTED,
                sent_kw=sent_kw,
                charger_status=charger_status,
                reason=plan.clamp_reason or by_meter,
                by_meter=True,
            )
        except OcppGatewayError as exc:
            return outcome(
                OutcomeStatus.UNVERIFIED, sent_kw=sent_kw, charger_status=charger_status, reason=str(exc)
            )
        limit = read_composite(station.version, station.charger, composite)
        if str(composite.status) != "Accepted" or limit is None:
            why = f"GetCompositeSchedule answered {composite.status} without a schedule"
            return outcome(
                OutcomeStatus.UNVERIFIED, sent_kw=sent_kw, charger_status=charger_status, reason=why
            )
        if not composite_agrees(plan, limit):
            why = f"composite schedule gives {limit.power_kw:.3f} kW, set {plan.power_kw:.3f} kW"
            return outcome(
                OutcomeStatus.UNVERIFIED,
                sent_kw=sent_kw,
                effective_kw=limit.power_kw,
                charger_status=charger_status,
                reason=why,
            )
        return outcome(
            OutcomeStatus.ACCEPTED,
            sent_kw=sent_kw,
            effective_kw=limit.power_kw,
            charger_status=charger_status,
            reason=plan.clamp_reason,
        )
