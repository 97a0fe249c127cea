"""The site gateway: OCPP server, local safety control and the MQTT uplink in one process.

::

    async with Gateway(load_config("site.toml")) as gateway:
        await gateway.closed()                       # runs until cancelled

What flows where:

- charger → gateway: every OCPP event (boot, status, session start/stop, meter values, EV charging
  needs) updates the gateway's view of each EVSE and is forwarded to the centre as a
  :class:`~wire.contract.SessionEvent`; meter values feed periodic
  :class:`~wire.contract.Telemetry`;
- centre → gateway: a :class:`~wire.contract.SetpointCommand` replaces the setpoints of the
  EVSEs it names and triggers a control step; the gateway answers with a
  :class:`~wire.contract.CommandAck` carrying each EVSE's profile outcome. A setpoint belongs to a
  session and ends with it (:mod:`site_gateway.setpoints`); a session discharges only what its
  vehicle and charger can (:mod:`site_gateway.ocpp.capabilities`), else the ack says who refused;
- the control step (on every command, on session changes and every ``control_interval_s``) runs
  :class:`~site_gateway.safety.SafetyController`: the site limits hold whatever the centre asked, and
  with no fresh setpoint it falls back to earliest-deadline-first charging. The allowed power goes to
  the chargers as TxProfiles (only when it changed); mode changes are logged and reported as the
  gateway's status (``online`` / ``fallback`` with the reason). Every cap the step applies to an
  EVSE (the site limit, a reserve, the fallback rules, the charger's or vehicle's maximum, an energy
  request met) goes to the centre with the EVSE's telemetry (its ``limit``), and a
  command it cut short is acknowledged "limited to";
- energy: what an EVSE delivered to its vehicle is counted net, the import register's rise minus the
  export register's (a vehicle that gave energy back is owed it before its request is met).

The idle reserve, room kept for vehicles that may plug in at idle chargers, is reclaimed while
plugged vehicles want it and handed back on plug-in: :mod:`site_gateway.reserve` says how it is sized
and when it moves.

The site limits hold at the meter, not in the gateway's belief: what each charger was last given is
on disk (:mod:`site_gateway.installed`), EVSEs it cannot steer count at what they may draw, a boot
makes a charger's TxProfiles "state unknown", and increases wait for the reductions actually taken.
A lost gateway is bounded: no EVSE draws more than it was counted at, then each runs on its
TxDefaultProfile, which all listed chargers together fit (:mod:`site_gateway.rollout`).

Every wait (the control and telemetry intervals, ``charger_response_s``, a charger's answer) is a
duration on the injected :class:`~site_gateway.clock.Clock`, and every timestamp is its ``now``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

from site_gateway.clock import SYSTEM_CLOCK, Clock, wait_event
from site_gateway.config import GatewayConfig
from site_gateway.evses import CHANGE_THRESHOLD_KW, EvseView
from site_gateway.installed import InstalledLimits
from site_gateway.installed import installed_path as _installed_path
from site_gateway.metrics import GatewayMetrics
from site_gateway.ocpp.capabilities import DischargeCapability, DischargeRefusal
from site_gateway.ocpp.events import (
    ChargingNeedsReported,
    ConnectorStatusChanged,
    MeterReading,
    OcppEvent,
    SessionAuthorized,
    SessionStarted,
    SessionStopped,
    StationBooted,
    TokenIdentity,
)
from site_gateway.ocpp.server import OcppServer
from site_gateway.reserve import IdleReserve
from site_gateway.rollout import Exposure, Rollout, exposure, unsteered_outcomes
from site_gateway.safety import (
    Allocation,
    Cap,
    EvseState,
    Mode,
    SafetyController,
    Setpoint,
    SiteLimits,
    allocate,
)
from site_gateway.setpoints import SetpointBook
from site_gateway.uplink import Uplink, UplinkSettings
from wire.contract import (
    AckStatus,
    CommandAck,
    EvseLimit,
    EvseOutcome,
    EvseTelemetry,
    GatewayState,
    LimitReason,
    SessionEvent,
    SessionEventKind,
    SetpointCommand,
    Telemetry,
    evse_key,
)

log = logging.getLogger(__name__)

LIMITED_BY: dict[LimitReason, str] = {
    LimitReason.SITE_LIMIT: "the site limit",
    LimitReason.RESERVE: "the idle reserve",
    LimitReason.FALLBACK: "the fallback rules",
    LimitReason.CHARGER_MAX: "the charger's or vehicle's maximum",
    LimitReason.ENERGY_REQUEST_MET: "the vehicle's energy request, met",
    LimitReason.VEHICLE_NOT_BIDIRECTIONAL: "the vehicle, which did not negotiate bidirectional transfer",
}
"""How an acknowledgement says what cut a setpoint short ("limited to 7.50 kW by the site limit")."""


class Gateway:
    """Async context manager running one depot's gateway (see the module docstring)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        mqtt_password: str | None = None,
        charger_passwords: dict[str, str] | None = None,
        outbox_path: Path | None = None,
        installed_path: Path | None = None,
        control_interval_s: float = 5.0,
        base_load_kw: float = 0.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``control_interval_s``: the longest time between control steps [s on ``clock``].
        ``installed_path``: what each charger was last given (:mod:`site_gateway.installed`); by
        default beside the outbox."""
        self.config = config
        self.site_id = config.site.id
        self._clock = clock
        self._control_interval_s = control_interval_s
        self.base_load_kw = base_load_kw
        """Site load other than the chargers [kW]; a site meter updates it when there is one."""
        self.evses: dict[str, EvseView] = {}
        self.setpoints = SetpointBook()
        """The centre's setpoints, each bound to its session (:mod:`site_gateway.setpoints`)."""
        self.discharge: dict[str, DischargeCapability] = {}
        """EVSE key -> what its session may discharge (:mod:`site_gateway.ocpp.capabilities`)."""
        self.safety = SafetyController(
            SiteLimits(config.site.import_limit_kw, config.site.export_limit_kw), clock=clock.now
        )
        # The boot TxDefaultProfile must be safe before the first allocation reaches a charger: with
        # every listed charger at it, the site stays within its import limit.
        self.default_limit_kw = min(
            config.control.default_limit_kw, config.site.import_limit_kw / max(1, len(config.chargers))
        )
        """The boot TxDefaultProfile limit: the full idle reserve of one EVSE [kW]."""
        control = config.control.model_copy(update={"default_limit_kw": self.default_limit_kw})
        self.ocpp = OcppServer.from_config(
            config.model_copy(update={"control": control}),
            sink=self._on_ocpp_event,
            token_lookup=self._lookup_token,
            accept_unknown_tokens=config.accept_unknown_tokens,
            clock=clock,
            passwords=charger_passwords,
        )
        self._tokens = {
            t.id_token: TokenIdentity(driver_id=t.driver_id, vehicle_id=t.vehicle_id) for t in config.tokens
        }
        mqtt = config.mqtt
        self.uplink = Uplink(
            UplinkSettings(
                site_id=self.site_id,
                host=mqtt.host,
                port=mqtt.port,
                username=mqtt.username,
                password=mqtt_password if mqtt_password is not None else mqtt.password(),
                tls_context=mqtt.tls_context(),
                outbox_path=outbox_path or mqtt.outbox,
                keepalive_s=mqtt.keepalive_s,
            ),
            on_command=self._on_command,
            clock=clock.now,
        )
        self.installed = InstalledLimits(
            installed_path or _installed_path(outbox_path or mqtt.outbox), clock=clock.now
        )
        """What each charger was last given, on disk (:mod:`site_gateway.installed`)."""
        self.reserve = IdleReserve(self.default_limit_kw, self.ocpp, self.evses, self.site_id, self.installed)
        self.ocpp.set_boot_limit(self.reserve.limit_kw)  # a reboot keeps a charger at what it is counted at
        self._wake = asyncio.Event()
        self._metered = asyncio.Event()
        """Set on every meter reading (the reductions' wait watches it)."""
        self.rollout = Rollout(
            ocpp=self.ocpp,
            installed=self.installed,
            default_kw=self.reserve.limit_kw,
            limits=self.safety.limits,
            validity_s=config.control.schedule_stale_after_s,
            charger_response_s=config.control.charger_response_s,
            metered=self._metered,
            clock=clock,
            site_id=self.site_id,
        )
        self._pending_acks: list[SetpointCommand] = []
        self._stack: AsyncExitStack | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._loops: list[asyncio.Task[None]] = []
        self.metrics = GatewayMetrics(self, clock)  # served on ``[metrics]`` (:mod:`site_gateway.metrics`)

    # ------------------------------------------------------------------------------------- life cycle

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            stack.enter_context(self.installed)  # before any charger is heard
            await stack.enter_async_context(self.uplink)
            await stack.enter_async_context(self.ocpp)
            await stack.enter_async_context(self.metrics)  # ready once the OCPP server listens
            self._tasks = await stack.enter_async_context(asyncio.TaskGroup())
            self._loops = [
                self._tasks.create_task(self._control_loop(), name=f"gateway-control[{self.site_id}]"),
                self._tasks.create_task(self._telemetry_loop(), name=f"gateway-telemetry[{self.site_id}]"),
            ]
            self._stack = stack.pop_all()
        log.info("gateway %s up: OCPP on port %d", self.site_id, self.ocpp.port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._loops:
            task.cancel()
        self._loops = []
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def closed(self) -> None:
        """Wait for ever (until the surrounding task is cancelled)."""
        await asyncio.Event().wait()

    # --------------------------------------------------------------------------------------- charger side

    def _view(self, charger_id: str, evse_id: int) -> EvseView:
        key = evse_key(charger_id, evse_id)
        view = self.evses.get(key)
        if view is None:
            charger = self.config.charger(charger_id)
            view = EvseView(
                charger_id,
                evse_id,
                max_charge_kw=charger.max_charge_kw if charger else 22.0,
                max_discharge_kw=charger.max_discharge_kw if charger else 0.0,
                default_limit_kw=self.reserve.limit_kw(charger_id),
            )
            self.evses[key] = view
        return view

    async def _on_ocpp_event(self, event: OcppEvent) -> None:
        """Update the EVSE view and forward session events. Only queues work: never blocks a charger."""
        match event:
            case StationBooted():  # it gets the boot default again (the OCPP server sends it)
                self._booted(event.charge_point_id)
            case ConnectorStatusChanged() if event.evse_id > 0:  # the EVSEs a charger has
                self._view(event.charge_point_id, event.evse_id)
                if event.status == "Available":  # no transaction there: no TxProfile either
                    self.installed.tx_ended(event.charge_point_id, event.evse_id)
            case SessionStarted():
                view = self._view(event.charge_point_id, event.evse_id)
                key = evse_key(view.charger_id, view.evse_id)
                self.installed.tx_started(view.charger_id, view.evse_id, event.transaction_id)
                if view.transaction_id != event.transaction_id:  # a new session: nothing of the last
                    self.setpoints.end_session(key)
                view.transaction_id, view.started_at = event.transaction_id, event.started_at
                view.meter_start_wh = event.meter_start_wh
                view.allowed_kw, view.renew_at = None, None
                self._may_discharge(view, event.discharge)
                self._session_event(SessionEventKind.STARTED, view, id_token=event.id_token)
                self._wake.set()
            case SessionAuthorized():  # a card tapped after plug-in: the centre's session gets its driver
                view = self._view(event.charge_point_id, event.evse_id)
                self._session_event(
                    SessionEventKind.AUTHORIZED,
                    view,
                    transaction_id=event.transaction_id,
                    id_token=event.id_token,
                )
            case SessionStopped():
                view = self._view(event.charge_point_id, event.evse_id)
                key = evse_key(view.charger_id, view.evse_id)
                self.installed.tx_ended(view.charger_id, view.evse_id, event.transaction_id)
                energy = view.delivered_kwh  # net: the charger's figure counts the import register only
                if event.energy_wh is not None:
                    energy = event.energy_wh / 1000 - view.exported_kwh
                self._session_event(
                    SessionEventKind.STOPPED,
                    view,
                    transaction_id=event.transaction_id,
                    id_token=event.id_token,
                    energy_kwh=energy,
                    reason=event.reason,
                )
                # The setpoint and what the vehicle could do end with the session.
                self.setpoints.end_session(key, event.transaction_id)
                self.discharge.pop(key, None)
                charger = self.config.charger(view.charger_id)
                self.evses[key] = EvseView(
                    view.charger_id,
                    view.evse_id,
                    max_charge_kw=charger.max_charge_kw if charger else view.max_charge_kw,
                    max_discharge_kw=0.0,
                    default_limit_kw=view.default_limit_kw,
                )
                self._wake.set()
            case MeterReading():
                view = self._view(event.charge_point_id, event.evse_id)
                if event.power_w is not None:
                    view.power_kw, view.power_at = event.power_w / 1000, self._clock.now()
                if event.energy_wh is not None:
                    view.energy_wh = event.energy_wh
                    if view.meter_start_wh is None:
                        view.meter_start_wh = event.energy_wh
                if event.export_energy_wh is not None and view.transaction_id is not None:
                    view.export_wh = event.export_energy_wh
                    if view.export_start_wh is None:
                        view.export_start_wh = event.export_energy_wh
                if event.soc_pct is not None:
                    view.soc_percent = event.soc_pct
                self._metered.set()
            case ChargingNeedsReported():
                view = self._view(event.charge_point_id, event.evse_id)
                view.departure = event.departure_time
                if event.energy_request_wh is not None:
                    view.energy_request_kwh = event.energy_request_wh / 1000
                    view.delivered_at_request_kwh = view.delivered_kwh or 0.0
                if event.max_charge_power_w is not None:
                    view.max_charge_kw = min(view.max_charge_kw, event.max_charge_power_w / 1000)
                if event.discharge is not None:  # what the vehicle negotiated (its maximum included)
                    self._may_discharge(view, event.discharge)
                self._session_event(
                    SessionEventKind.EV_CHARGING_NEEDS,
                    view,
                    departure_time=event.departure_time,
                    energy_request_kwh=view.energy_request_kwh,
                )
                self._wake.set()
            case _:
                pass

    def _booted(self, charger_id: str) -> None:
        """``charger_id`` booted: it is getting the boot default again, and whether it kept its
        TxProfiles (a transaction resumed, or one begun again under the same id) is unknown. Each is
        counted at the higher of it and the default, and installed again at the next step."""
        self.reserve.booted(charger_id)
        self.installed.state_unknown(charger_id)
        for view in self.evses.values():
            if view.charger_id == charger_id:
                view.allowed_kw, view.renew_at = None, None
        self._wake.set()

    async def _lookup_token(self, id_token: str) -> TokenIdentity | None:
        """The driver and vehicle of an idToken from the local authorization list."""
        return self._tokens.get(id_token)

    def _session_event(self, kind: SessionEventKind, view: EvseView, **fields: object) -> None:
        fields.setdefault("transaction_id", view.transaction_id)
        self.uplink.send(SessionEvent, kind=kind, charger_id=view.charger_id, evse_id=view.evse_id, **fields)

    def _may_discharge(self, view: EvseView, discharge: DischargeCapability) -> None:
        """The session at ``view`` may discharge no more than ``discharge`` allows."""
        view.max_discharge_kw = discharge.max_kw
        self.discharge[evse_key(view.charger_id, view.evse_id)] = discharge

    # ---------------------------------------------------------------------------------------- centre side

    def _on_command(self, command: SetpointCommand) -> None:
        """Bind each setpoint to its EVSE's session (:mod:`site_gateway.setpoints`); those refused are
        acknowledged as such with the next step's outcomes."""
        for setpoint in command.setpoints:
            self._view(setpoint.charger_id, setpoint.evse_id)
        ids = {"site_id": self.site_id, "command_id": command.command_id}  # extra= of its log lines
        for key, why in self.setpoints.accept(command, self._running_transaction).items():
            log.info("gateway %s: command %s, %s: %s", self.site_id, command.command_id, key, why, extra=ids)
        self._pending_acks.append(command)
        self._wake.set()

    def _running_transaction(self, key: str) -> str | None:
        view = self.evses.get(key)
        return None if view is None else view.transaction_id

    def _current_setpoints(self, now: dt.datetime) -> dict[str, Setpoint]:
        return self.setpoints.current(now, self._running_transaction)

    # ------------------------------------------------------------------------------------------- control

    async def _control_loop(self) -> None:
        while True:
            await wait_event(self._wake, self._control_interval_s, self._clock)
            self._wake.clear()
            try:
                await self.control_step()
            except Exception:  # a bad step must not stop the site's control
                log.exception("gateway %s: control step failed", self.site_id)

    async def control_step(self) -> None:
        """Allocate power within the site limits, send what changed, acknowledge waiting commands.

        The limits hold at the meter: EVSEs the step cannot steer (their charger not connected, a
        vehicle not heard of yet) count at what they may draw (:mod:`site_gateway.rollout`)."""
        now = self._clock.now()
        commands, self._pending_acks = self._pending_acks, []  # later ones wait for the next step
        fixed = self._exposure(now)
        steered = {k: v for k, v in self.evses.items() if v.transaction_id and v.charger_id in fixed.online}
        # Idle EVSEs get 0; sessions at chargers not connected are in ``fixed``.
        evses = [
            v.safety_state()
            for v in self.evses.values()
            if not v.transaction_id or v.charger_id in fixed.online
        ]
        setpoints = self._current_setpoints(now)
        # The idle reserve (module docstring): chargers whose share falls are lowered before anything
        # is raised, so the room the step hands to plugged vehicles is free when they take it.
        shares = self._idle_shares(now, evses, setpoints, fixed)
        await self.reserve.lower(shares)
        reserve = self.reserve.held_kw(shares)
        allocation, change = self.safety.step(
            self.base_load_kw,
            evses,
            setpoints,
            idle_reserve_kw=reserve,
            arrival_reserve_kw=self.reserve.full_kw,
            fixed_import_kw=fixed.import_kw,
            fixed_export_kw=fixed.export_kw,
        )
        if change is not None:
            log.warning(
                "gateway %s: %s mode since %s: %s", self.site_id, change.mode, change.since, change.reason
            )
            state = GatewayState.ONLINE if change.mode is Mode.NORMAL else GatewayState.FALLBACK
            self.uplink.set_state(state, change.reason[:200])
        # Reductions first, then increases within what the chargers may draw (:mod:`~.rollout`).
        pushes, clipped = await self.rollout.apply(
            allocation.power_kw, steered, now, base_kw=self.base_load_kw, fixed=fixed, reserve_kw=reserve
        )
        self.metrics.stepped(pushes, commands)
        # The reserve given back to idle chargers goes with the increases (it was counted above).
        await self.reserve.raise_to(shares)
        if clipped:
            allocation = dataclasses.replace(allocation, power_kw=allocation.power_kw | clipped)
        outcomes: dict[str, EvseOutcome] = {}
        for push in pushes:
            view, outcome = push.view, push.outcome
            detail = (
                None
                if outcome.is_ok
                else f"{outcome.status.value}: {outcome.reason or outcome.charger_status}"
            )
            outcomes[evse_key(view.charger_id, view.evse_id)] = EvseOutcome(
                charger_id=view.charger_id,
                evse_id=view.evse_id,
                status=AckStatus.ACCEPTED if outcome.is_ok else AckStatus.REJECTED,
                detail=detail,
            )
        outcomes |= unsteered_outcomes(fixed, self.evses, steered)
        for key, view in self.evses.items():
            view.cap = self._named_refusal(key, allocation.caps.get(key))
        self._acknowledge(commands, outcomes, allocation)

    def _exposure(self, now: dt.datetime) -> Exposure:
        """What the EVSEs no allocation steers may draw (:func:`~site_gateway.rollout.exposure`)."""
        return exposure(
            now,
            chargers=[c.id for c in self.config.chargers],
            connected=self.ocpp.connected,
            evses=self.evses,
            installed=self.installed,
            default_kw=self.reserve.limit_kw,
        )

    # --------------------------------------------------------------------------------- the idle reserve

    def _idle_shares(
        self, now: dt.datetime, evses: list[EvseState], setpoints: dict[str, Setpoint], fixed: Exposure
    ) -> dict[str, float]:
        """Idle charger id -> the TxDefaultProfile limit it should hold [kW], from the room the plugged
        vehicles (and the EVSEs not steered, ``fixed``) leave when no reserve is held
        (:meth:`IdleReserve.shares`)."""
        if not self.reserve.idle_evses():
            return {}
        demand = allocate(
            now,
            self.safety.limits,
            self.base_load_kw,
            evses,
            setpoints,
            ramp_margin_kw=self.safety.ramp_margin_kw,
            arrival_reserve_kw=self.reserve.full_kw,
            fixed_import_kw=fixed.import_kw,
            fixed_export_kw=fixed.export_kw,
        )
        used = sum(p for p in demand.power_kw.values() if p > 0)
        room = self.config.site.import_limit_kw - self.base_load_kw - fixed.import_kw - used
        return self.reserve.shares(room)

    def idle_limit_kw(self, charger_id: str) -> float:
        """The TxDefaultProfile limit ``charger_id`` holds [kW]."""
        return self.reserve.limit_kw(charger_id)

    def idle_reserve_kw(self) -> float:
        """Room kept for connected EVSEs without a session [kW] (:meth:`IdleReserve.held_kw`)."""
        return self.reserve.held_kw()

    def _acknowledge(
        self, commands: list[SetpointCommand], outcomes: dict[str, EvseOutcome], allocation: Allocation
    ) -> None:
        for command in commands:
            evses = []
            refused = self.setpoints.refused(command.command_id)
            for setpoint in command.setpoints:
                key = evse_key(setpoint.charger_id, setpoint.evse_id)
                outcome = outcomes.get(key)
                if key in refused:  # not taken: never this session's, whatever the step did
                    outcome = EvseOutcome(
                        charger_id=setpoint.charger_id,
                        evse_id=setpoint.evse_id,
                        status=AckStatus.REJECTED,
                        detail=refused[key],
                    )
                elif outcome is None:
                    view = self.evses.get(key)
                    if view is None or view.transaction_id is None:
                        outcome = EvseOutcome(
                            charger_id=setpoint.charger_id,
                            evse_id=setpoint.evse_id,
                            status=AckStatus.REJECTED,
                            detail="no vehicle charging at this EVSE",
                        )
                    else:  # unchanged: the charger already runs at the allowed power
                        outcome = EvseOutcome(
                            charger_id=setpoint.charger_id,
                            evse_id=setpoint.evse_id,
                            status=AckStatus.ACCEPTED,
                        )
                requested = setpoint.power_kw
                if outcome.status is AckStatus.ACCEPTED and requested is not None:
                    granted = allocation.power_kw.get(key, 0.0)
                    if abs(granted - requested) > CHANGE_THRESHOLD_KW:
                        why = self._limited_by(key, allocation.caps.get(key))
                        detail = f"limited to {granted:.2f} kW by {why}"
                        outcome = outcome.model_copy(update={"detail": detail})
                evses.append(outcome)
            rejected = [e for e in evses if e.status is not AckStatus.ACCEPTED]
            status = AckStatus.ACCEPTED if not rejected else AckStatus.REJECTED
            error = None if not rejected else f"{len(rejected)} of {len(evses)} EVSEs not applied"
            ids = {"site_id": self.site_id, "command_id": command.command_id, "status": status.value}
            log.info("gateway %s: command %s %s", self.site_id, command.command_id, status.value, extra=ids)
            self.uplink.send(
                CommandAck, command_id=command.command_id, status=status, evses=tuple(evses), error=error
            )

    def _named_refusal(self, key: str, cap: Cap | None) -> Cap | None:
        """``cap``, named for the vehicle when it is the discharge bound of a vehicle that did not
        negotiate bidirectional transfer (the allocation calls a session's bound ``charger_max``)."""
        refusal = self.discharge.get(key)
        if cap is None or not cap.discharge or cap.reason is not LimitReason.CHARGER_MAX:
            return cap
        if refusal is None or refusal.refused_by is not DischargeRefusal.VEHICLE:
            return cap
        return dataclasses.replace(cap, reason=LimitReason.VEHICLE_NOT_BIDIRECTIONAL)

    def _limited_by(self, key: str, cap: Cap | None) -> str:
        """What cut a setpoint short, in words (a discharge the session may not do: who refused, why)."""
        if cap is not None and cap.discharge and (refusal := self.discharge.get(key)) and refusal.reason:
            return refusal.in_words()
        return LIMITED_BY[cap.reason if cap is not None else LimitReason.SITE_LIMIT]

    async def _telemetry_loop(self) -> None:
        while True:
            await self._clock.sleep(self.config.control.telemetry_interval_s)
            self.send_telemetry()

    def send_telemetry(self) -> None:
        evses = tuple(
            EvseTelemetry(
                charger_id=view.charger_id,
                evse_id=view.evse_id,
                power_kw=view.power_kw or 0.0,
                energy_kwh=view.delivered_kwh,
                soc_percent=view.soc_percent,
                limit=None if (cap := view.reported_cap()) is None else self._wire_limit(cap),
            )
            for view in self.evses.values()
            if view.transaction_id is not None or view.power_kw
        )
        site = self.base_load_kw + sum(e.power_kw for e in evses)
        self.uplink.send(Telemetry, evses=evses, site_import_kw=site, base_load_kw=self.base_load_kw)

    def _wire_limit(self, cap: Cap) -> EvseLimit:
        """``cap`` with a reason the centre reads (:meth:`~wire.contract.LimitReason.for_reader`)."""
        reason = cap.reason.for_reader(binds_sessions=self.setpoints.centre_binds_sessions)
        return EvseLimit(power_kw=cap.limit_kw, reason=reason, discharge=cap.discharge)
