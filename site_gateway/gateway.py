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
  :class:`~wire.contract.CommandAck` carrying each EVSE's profile outcome;
- the control step (on every command, on session changes and every ``control_interval_s``) runs
  :class:`~site_gateway.safety.SafetyController`: the site limits hold whatever the centre asked, and
  with no fresh setpoint it falls back to earliest-deadline-first charging. The allowed power goes to
  the chargers as TxProfiles (only when it changed); mode changes are logged and reported as the
  gateway's status (``online`` / ``fallback`` with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from site_gateway.config import GatewayConfig
from site_gateway.ocpp.events import (
    ChargingNeedsReported,
    MeterReading,
    OcppEvent,
    SessionStarted,
    SessionStopped,
    TokenIdentity,
)
from site_gateway.ocpp.server import OcppServer
from site_gateway.safety import EvseState, Mode, SafetyController, Session, Setpoint, SiteLimits
from site_gateway.uplink import Uplink, UplinkSettings
from wire.contract import (
    AckStatus,
    CommandAck,
    EvseOutcome,
    EvseSetpoint,
    EvseTelemetry,
    GatewayState,
    SessionEvent,
    SessionEventKind,
    SetpointCommand,
    Telemetry,
    evse_key,
)

log = logging.getLogger(__name__)

CHANGE_THRESHOLD_KW = 0.1
"""A new allowed power is sent to a charger only when it moves by more than this."""
DEFAULT_DWELL = dt.timedelta(hours=8)
"""Assumed stay of a vehicle that never said when it leaves (for earliest-deadline-first only)."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class EvseView:
    """What the gateway knows of one EVSE (charger id, EVSE id)."""

    charger_id: str
    evse_id: int
    transaction_id: str | None = None
    started_at: dt.datetime | None = None
    meter_start_wh: float | None = None
    energy_wh: float | None = None
    power_kw: float | None = None
    soc_percent: float | None = None
    departure: dt.datetime | None = None
    energy_request_kwh: float | None = None
    max_charge_kw: float = 0.0
    max_discharge_kw: float = 0.0
    allowed_kw: float | None = None
    """The last power limit sent to the charger."""
    renew_at: dt.datetime | None = None
    """When the TxProfile carrying ``allowed_kw`` is sent again: half-way through its validity, so a
    charger never falls back to its boot default while the same power stays wanted."""
    default_limit_kw: float = 0.0
    """The TxDefaultProfile limit the charger got at boot."""
    power_at: dt.datetime | None = None
    """When the gateway received the latest ``power_kw`` (its own clock)."""

    def needs_limit(self, power_kw: float, now: dt.datetime) -> bool:
        """Whether ``power_kw`` must go to the charger: a transaction runs and the limit it has
        differs by more than :data:`CHANGE_THRESHOLD_KW`, or it has none from us yet, or the profile
        that carries it is due for renewal."""
        if self.transaction_id is None:
            return False
        if self.allowed_kw is None or (self.renew_at is not None and now >= self.renew_at):
            return True
        return abs(self.allowed_kw - power_kw) > CHANGE_THRESHOLD_KW

    @property
    def delivered_kwh(self) -> float | None:
        if self.energy_wh is None or self.meter_start_wh is None:
            return None
        return (self.energy_wh - self.meter_start_wh) / 1000

    def current_limit_kw(self) -> float:
        """The limit the charger runs on now: the last one sent, else the boot default (or its draw)."""
        if self.allowed_kw is not None:
            return self.allowed_kw
        return max(self.power_kw or 0.0, self.default_limit_kw)

    def safety_state(self) -> EvseState:
        if self.transaction_id is None:
            return EvseState(evse_key(self.charger_id, self.evse_id), measured_kw=self.power_kw)
        needed = float("inf") if self.energy_request_kwh is None else self.energy_request_kwh
        if self.energy_request_kwh is not None and self.delivered_kwh is not None:
            needed = max(self.energy_request_kwh - self.delivered_kwh, 0.0)
        departure = self.departure
        if departure is None and self.started_at is not None:
            departure = self.started_at + DEFAULT_DWELL
        session = Session(departure, needed, self.max_charge_kw, self.max_discharge_kw)
        return EvseState(evse_key(self.charger_id, self.evse_id), session=session, measured_kw=self.power_kw)


class Gateway:
    """Async context manager running one depot's gateway (see the module docstring)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        mqtt_password: str | None = None,
        charger_passwords: dict[str, str] | None = None,
        outbox_path: Path | None = None,
        control_interval_s: float = 5.0,
        base_load_kw: float = 0.0,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.config = config
        self.site_id = config.site.id
        self._clock = clock
        self._control_interval_s = control_interval_s
        self.base_load_kw = base_load_kw
        """Site load other than the chargers [kW]; a site meter updates it when there is one."""
        self.evses: dict[str, EvseView] = {}
        self.setpoints: dict[str, tuple[EvseSetpoint, dt.datetime, dt.datetime]] = {}
        """EVSE key -> (the centre's setpoint, valid from, valid until)."""
        self.safety = SafetyController(
            SiteLimits(config.site.import_limit_kw, config.site.export_limit_kw), clock=clock
        )
        # The boot TxDefaultProfile must be safe before the first allocation reaches a charger: with
        # every listed charger at it, the site stays within its import limit.
        self.default_limit_kw = min(
            config.control.default_limit_kw, config.site.import_limit_kw / max(1, len(config.chargers))
        )
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
            clock=clock,
        )
        self._wake = asyncio.Event()
        self._pending_acks: list[SetpointCommand] = []
        self._stack: AsyncExitStack | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._loops: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------------------------- life cycle

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.uplink)
            await stack.enter_async_context(self.ocpp)
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
                default_limit_kw=self.default_limit_kw,
            )
            self.evses[key] = view
        return view

    async def _on_ocpp_event(self, event: OcppEvent) -> None:
        """Update the EVSE view and forward session events. Only queues work: never blocks a charger."""
        match event:
            case SessionStarted():
                view = self._view(event.charge_point_id, event.evse_id)
                view.transaction_id, view.started_at = event.transaction_id, event.started_at
                view.meter_start_wh = event.meter_start_wh
                view.allowed_kw, view.renew_at = None, None
                self._session_event(SessionEventKind.STARTED, view, id_token=event.id_token)
                self._wake.set()
            case SessionStopped():
                view = self._view(event.charge_point_id, event.evse_id)
                energy = event.energy_wh / 1000 if event.energy_wh is not None else view.delivered_kwh
                self._session_event(
                    SessionEventKind.STOPPED,
                    view,
                    transaction_id=event.transaction_id,
                    energy_kwh=energy,
                    reason=event.reason,
                )
                self.evses[evse_key(view.charger_id, view.evse_id)] = EvseView(
                    view.charger_id,
                    view.evse_id,
                    max_charge_kw=view.max_charge_kw,
                    max_discharge_kw=view.max_discharge_kw,
                    default_limit_kw=view.default_limit_kw,
                )
                self._wake.set()
            case MeterReading():
                view = self._view(event.charge_point_id, event.evse_id)
                if event.power_w is not None:
                    view.power_kw, view.power_at = event.power_w / 1000, self._clock()
                if event.energy_wh is not None:
                    view.energy_wh = event.energy_wh
                    if view.meter_start_wh is None:
                        view.meter_start_wh = event.energy_wh
                if event.soc_pct is not None:
                    view.soc_percent = event.soc_pct
            case ChargingNeedsReported():
                view = self._view(event.charge_point_id, event.evse_id)
                view.departure = event.departure_time
                if event.energy_request_wh is not None:
                    view.energy_request_kwh = event.energy_request_wh / 1000
                if event.max_charge_power_w is not None:
                    view.max_charge_kw = min(view.max_charge_kw, event.max_charge_power_w / 1000)
                if event.max_discharge_power_w is not None:
                    view.max_discharge_kw = min(view.max_discharge_kw, event.max_discharge_power_w / 1000)
                self._session_event(
                    SessionEventKind.EV_CHARGING_NEEDS,
                    view,
                    departure_time=event.departure_time,
                    energy_request_kwh=view.energy_request_kwh,
                )
                self._wake.set()
            case _:
                pass

    async def _lookup_token(self, id_token: str) -> TokenIdentity | None:
        """The driver and vehicle of an idToken from the local authorization list."""
        return self._tokens.get(id_token)

    def _session_event(self, kind: SessionEventKind, view: EvseView, **fields: object) -> None:
        fields.setdefault("transaction_id", view.transaction_id)
        self.uplink.send(SessionEvent, kind=kind, charger_id=view.charger_id, evse_id=view.evse_id, **fields)

    # ---------------------------------------------------------------------------------------- centre side

    def _on_command(self, command: SetpointCommand) -> None:
        for setpoint in command.setpoints:
            key = evse_key(setpoint.charger_id, setpoint.evse_id)
            self.setpoints[key] = (setpoint, command.issued_at, command.valid_until)
            self._view(setpoint.charger_id, setpoint.evse_id)
        self._pending_acks.append(command)
        self._wake.set()

    def _current_setpoints(self, now: dt.datetime) -> dict[str, Setpoint]:
        current = {}
        for key, (setpoint, valid_from, valid_until) in self.setpoints.items():
            if setpoint.power_kw is not None:
                current[key] = Setpoint(key, setpoint.power_kw, valid_from, valid_until)
                continue
            assert setpoint.schedule is not None
            started = [p for p in setpoint.schedule if p.start <= now]
            if started:
                period = started[-1]
                following = [p.start for p in setpoint.schedule if p.start > now]
                current[key] = Setpoint(key, period.power_kw, period.start, min([valid_until, *following]))
        return current

    # ------------------------------------------------------------------------------------------- control

    async def _control_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._control_interval_s)
            self._wake.clear()
            try:
                await self.control_step()
            except Exception:  # a bad step must not stop the site's control
                log.exception("gateway %s: control step failed", self.site_id)

    async def control_step(self) -> None:
        """Allocate power within the site limits, send what changed, acknowledge waiting commands."""
        now = self._clock()
        evses = [view.safety_state() for view in self.evses.values()]
        base = self.base_load_kw + self.idle_reserve_kw()
        allocation, change = self.safety.step(base, evses, self._current_setpoints(now))
        if change is not None:
            log.warning(
                "gateway %s: %s mode since %s: %s", self.site_id, change.mode, change.since, change.reason
            )
            state = GatewayState.ONLINE if change.mode is Mode.NORMAL else GatewayState.FALLBACK
            self.uplink.set_state(state, change.reason[:200])
        valid_until = now + dt.timedelta(seconds=self.config.control.schedule_stale_after_s)
        changed = [
            (self.evses[key], power)
            for key, power in allocation.power_kw.items()
            if self.evses[key].needs_limit(power, now)
        ]
        # Reductions first, then increases: while chargers move from the old allocation to the new one
        # their sum never passes the site limit. Within each wave all at once: each push is two round
        # trips (SetChargingProfile, GetCompositeSchedule), and one charger after the other, a command
        # for 50 chargers waited for 100 of them.
        lower = [(view, power) for view, power in changed if power < view.current_limit_kw()]
        higher = [(view, power) for view, power in changed if power >= view.current_limit_kw()]
        if self._transient_kw(allocation.power_kw, base) <= self.config.site.import_limit_kw:
            lower, higher = [], changed  # no order can pass the limit: all at once
        applying = []
        for wave in (lower, higher):
            if wave is higher and lower:
                await self._reductions_taken_effect(lower, since=now)
            async with asyncio.TaskGroup() as pushes:
                applying += [
                    (
                        view,
                        power,
                        pushes.create_task(
                            self.ocpp.apply_setpoint(view.charger_id, view.evse_id, power, valid_until),
                            name=f"gateway-setpoint[{view.charger_id}/{view.evse_id}]",
                        ),
                    )
                    for view, power in wave
                ]
        outcomes: dict[str, EvseOutcome] = {}
        for view, power, task in applying:
            key, outcome = evse_key(view.charger_id, view.evse_id), task.result()
            if outcome.is_ok:
                view.allowed_kw, view.renew_at = power, now + (valid_until - now) / 2
            status = AckStatus.ACCEPTED if outcome.is_ok else AckStatus.REJECTED
            detail = (
                None
                if outcome.is_ok
                else f"{outcome.status.value}: {outcome.reason or outcome.charger_status}"
            )
            outcomes[key] = EvseOutcome(
                charger_id=view.charger_id, evse_id=view.evse_id, status=status, detail=detail
            )
        self._acknowledge(outcomes, allocation.power_kw)

    def _transient_kw(self, allowed: dict[str, float], base_kw: float) -> float:
        """Site import if every charger briefly kept the higher of its old and new limit."""
        charging = (
            max(view.current_limit_kw(), allowed.get(key, 0.0), 0.0)
            for key, view in self.evses.items()
            if view.transaction_id is not None
        )
        return base_kw + sum(charging)

    def idle_reserve_kw(self) -> float:
        """Room kept for connected EVSEs without a session: a vehicle may start there at any moment,
        at the boot default limit, before the gateway hears of it."""
        idle = 0
        for charger_id in self.ocpp.connected:
            views = [v for v in self.evses.values() if v.charger_id == charger_id]
            idle += sum(v.transaction_id is None for v in views) if views else 1
        return idle * self.default_limit_kw

    async def _reductions_taken_effect(
        self, lowered: list[tuple[EvseView, float]], since: dt.datetime
    ) -> None:
        """Wait until the lowered chargers' meters show their new limits, at most ``charger_response_s``.

        A charger applies a new profile with some delay; raising others before the reductions show
        would let the site pass its limit in between.
        """
        deadline = asyncio.get_running_loop().time() + self.config.control.charger_response_s
        while asyncio.get_running_loop().time() < deadline:
            if all(
                view.power_at is not None
                and view.power_at >= since
                and view.power_kw is not None
                and view.power_kw <= power + CHANGE_THRESHOLD_KW
                for view, power in lowered
            ):  # a reading taken after the reductions went out shows each of them
                return
            await asyncio.sleep(0.05)
        log.info(
            "gateway %s: reductions not yet metered after %.1f s; raising anyway",
            self.site_id,
            self.config.control.charger_response_s,
        )

    def _acknowledge(self, outcomes: dict[str, EvseOutcome], allowed: dict[str, float]) -> None:
        commands, self._pending_acks = self._pending_acks, []
        for command in commands:
            evses = []
            for setpoint in command.setpoints:
                key = evse_key(setpoint.charger_id, setpoint.evse_id)
                outcome = outcomes.get(key)
                if outcome is None:
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
                    granted = allowed.get(key, 0.0)
                    if abs(granted - requested) > CHANGE_THRESHOLD_KW:
                        outcome = replace_detail(outcome, f"limited to {granted:.2f} kW by the site limit")
                evses.append(outcome)
            rejected = [e for e in evses if e.status is not AckStatus.ACCEPTED]
            status = AckStatus.ACCEPTED if not rejected else AckStatus.REJECTED
            error = None if not rejected else f"{len(rejected)} of {len(evses)} EVSEs not applied"
            self.uplink.send(
                CommandAck, command_id=command.command_id, status=status, evses=tuple(evses), error=error
            )

    async def _telemetry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.control.telemetry_interval_s)
            self.send_telemetry()

    def send_telemetry(self) -> None:
        evses = tuple(
            EvseTelemetry(
                charger_id=view.charger_id,
                evse_id=view.evse_id,
                power_kw=view.power_kw or 0.0,
                energy_kwh=view.delivered_kwh,
                soc_percent=view.soc_percent,
            )
            for view in self.evses.values()
            if view.transaction_id is not None or view.power_kw
        )
        site = self.base_load_kw + sum(e.power_kw for e in evses)
        self.uplink.send(Telemetry, evses=evses, site_import_kw=site, base_load_kw=self.base_load_kw)


def replace_detail(outcome: EvseOutcome, detail: str) -> EvseOutcome:
    return outcome.model_copy(update={"detail": detail})
