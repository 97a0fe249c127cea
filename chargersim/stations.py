"""Simulated charging stations on the ``ocpp`` library's ChargePoint classes (1.6, 2.0.1, 2.1).

Each :class:`SimulatedCharger` is one single-EVSE station (EVSE/connector 1) with a
:class:`~chargersim.vehicles.Vehicle`. Two tasks run it:

- the *plant* steps the vehicle on the simulated clock: it plugs in at arrival (Authorize, start of
  transaction, 2.x NotifyEVChargingNeeds), draws what the composite of its charging profiles allows
  (:mod:`chargersim.composite`) and the vehicle accepts, samples the meter every
  ``meter_interval_s`` and ends the transaction at the target or at departure. It keeps running while
  offline, as a real charger does;
- the *link* holds the websocket: BootNotification once, then sends the plant's messages in order,
  keeping them while offline and sending them (flagged ``offline`` in 2.x) on reconnection, so the
  transaction resumes with the same id;
- :meth:`SimulatedCharger.reboot` power-cycles it with its vehicle plugged in: the charging profiles
  persist, as OCPP requires of a real station (or not, ``keeps_profiles=False``), the transaction ends
  and a new one starts after the BootNotification (on 2.x, optionally under the old id).

Meter values are MeterValues in 1.6 and TransactionEvent(Updated, MeterValuePeriodic) in 2.x, as
each version prescribes: energy register [Wh], power [W] and SoC [%].

Time runs on a :class:`~chargersim.clock.SimClock` (``speed`` simulated seconds per real second,
injectable monotonic source). The station's answers to the CSMS's requests (SetChargingProfile,
ClearChargingProfile, GetCompositeSchedule) are :mod:`chargersim.ocpp_handlers`;
:class:`~chargersim.fleet.ChargerFleet` runs N stations against one gateway URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import websockets
from ocpp.exceptions import OCPPError
from ocpp.v16 import call as call16
from ocpp.v21 import call as call21
from ocpp.v201 import call as call201
from websockets.exceptions import ConnectionClosed

from chargersim.clock import SimClock
from chargersim.composite import ProfileError, ProfileStore, Transaction
from chargersim.ocpp_handlers import station_class
from chargersim.vehicles import Vehicle

log = logging.getLogger(__name__)

Protocol = Literal["1.6", "2.0.1", "2.1"]
PROTOCOLS: tuple[Protocol, ...] = ("1.6", "2.0.1", "2.1")
SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}
EVSE_ID = 1
CONNECTOR_ID = 1


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class MeterSample:
    timestamp: dt.datetime
    import_wh: float
    export_wh: float
    power_w: float
    soc_percent: float


@dataclass
class _Outgoing:
    """A message the plant wants sent; ``build`` runs at send time (so it sees the transaction id)."""

    build: Callable[..., Any]
    """Called with ``True`` for a 2.x message made while offline."""
    on_result: Callable[[Any], None] | None = None
    made_offline: bool = False


@dataclass
class SimulatedCharger:
    """One simulated station. Use :meth:`run` in a task, or as part of a :class:`ChargerFleet`."""

    station_id: str
    url: str
    """Gateway websocket URL; the station id is appended as the last path segment."""
    protocol: Protocol
    vehicle: Vehicle | None
    clock: SimClock
    max_power_w: float = 22_000.0
    max_discharge_w: float = 0.0
    meter_interval_s: float = 60.0
    """Simulated seconds between meter samples."""
    tick_s: float = 10.0
    """Simulated seconds between plant steps."""
    id_token: str = "SIMTOKEN"
    token_at_plug_in: bool = True
    """2.x: the card is read as the cable goes in; else the transaction starts without a token and
    :meth:`tap_card` presents it later (TransactionEvent Updated, trigger Authorized)."""
    reports_soc: bool = True
    """Whether meter values carry the vehicle's SoC (ISO 15118 on 2.x); an AC 1.6 charger never knows it."""
    response_timeout_s: float = 10.0
    keeps_profiles: bool = True
    """Whether the charging profiles survive a reboot, as OCPP requires (``False``: a station that
    forgets them and draws its hardware maximum until it is sent new ones)."""
    rng: random.Random = field(default_factory=random.Random)
    on_profile: Callable[[int, dict[str, Any]], None] | None = None
    """Called with the EVSE id and payload of every SetChargingProfile as it arrives, before it is
    installed (benchmarks time profile pushes with it)."""

    store: ProfileStore = field(init=False)
    transaction: Transaction | None = field(init=False, default=None)
    meter: list[MeterSample] = field(init=False, default_factory=list)
    """Every meter sample taken (for tests and reports)."""
    power_w: float = field(init=False, default=0.0)
    import_wh: float = field(init=False, default=0.0)
    export_wh: float = field(init=False, default=0.0)
    booted: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    connected: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    finished: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    """Set when the vehicle's transaction has ended."""
    reboots: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.store = ProfileStore(max_power_w=self.max_power_w, max_discharge_w=self.max_discharge_w)
        self._outbox: deque[_Outgoing] = deque()
        self._wake = asyncio.Event()
        self._online_wanted = asyncio.Event()
        self._online_wanted.set()
        self._ws: Any = None
        self._seq_no = 0
        self._plugged = False
        self._tx_id_16: int | None = None
        self._stepped_at = self.clock.now()
        self._reuse_id: str | None = None

    # ------------------------------------------------------------------------------------ control

    async def disconnect(self) -> None:
        """Drop the connection and stay offline (the vehicle keeps following the stored profiles)."""
        self._online_wanted.clear()
        if self._ws is not None:
            await self._ws.close()

    def reconnect(self) -> None:
        """Go back online; the open transaction resumes with its id."""
        self._online_wanted.set()

    async def reboot(self, *, reuse_transaction_id: bool = False) -> None:
        """Power-cycle the station with its vehicle still plugged in: the connection drops, the running
        transaction ends with the power (its TxProfiles with it; the end is reported after the boot),
        and once booted again the station starts a new transaction for the vehicle. The charging
        profiles persist (OCPP requires it; see :attr:`keeps_profiles`), so until the CSMS sends new
        ones the vehicle draws what the TxDefaultProfile allows.

        ``reuse_transaction_id`` (2.x): the new transaction takes the old one's id and the old one's
        end is never reported, as some stations do after a power loss.
        """
        if reuse_transaction_id and self.protocol == "1.6":
            raise ValueError(f"{self.station_id}: on OCPP 1.6 the CSMS assigns transaction ids")
        now = self.clock.now()
        old = self.transaction
        if old is not None:
            self.store.clear_transaction(old.id)
            if reuse_transaction_id:
                self._reuse_id = old.id
            elif self.protocol == "1.6":
                tx16, meter_stop = self._tx_id_16 or 0, round(self.import_wh)
                self._send(lambda: call16.StopTransaction(meter_stop, iso(now), tx16, reason="PowerLoss"))
            else:
                self._send(
                    self._tx_event_builder("Ended", "AbnormalCondition", None, stopped_reason="PowerLoss")
                )
            self.transaction, self._tx_id_16 = None, None
        self.power_w = 0.0
        self._plugged = False  # the vehicle, still there, starts a new transaction once booted
        if not self.keeps_profiles:
            self.store = dataclasses.replace(self.store, profiles={})
        self.booted.clear()
        self.reboots += 1
        if self._ws is not None:
            await self._ws.close()

    async def run(self) -> None:
        """Run plant and link until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._plant(), name=f"{self.station_id}-plant")
            tasks.create_task(self._link(), name=f"{self.station_id}-link")

    # -------------------------------------------------------------------------------------- plant

    async def _plant(self) -> None:
        last = self.clock.now()
        next_sample = last
        while True:
            now = self.clock.now()
            seconds = (now - last).total_seconds()
            last = self._stepped_at = now
            vehicle = self.vehicle
            if self.transaction is not None and vehicle is not None:
                vehicle.advance(self.power_w / 1000, seconds)
                energy_wh = self.power_w * seconds / 3600
                self.import_wh += max(energy_wh, 0.0)
                self.export_wh += max(-energy_wh, 0.0)
                departed = vehicle.departure is not None and now >= vehicle.departure
                if departed or (vehicle.acceptance_kw() <= 0 and self.power_w >= 0):
                    self.power_w = 0.0
                    self._sample(now)
                    self._stop(now, "EVDeparted" if departed else "EnergyLimitReached")
            elif (
                vehicle is not None and not self._plugged and now >= vehicle.arrival and self.booted.is_set()
            ):
                self._start(now, vehicle)
            if self.transaction is not None and vehicle is not None:
                offered_kw = self.store.power_at(now, EVSE_ID, self.transaction) / 1000
                self.power_w = vehicle.power_for(offered_kw) * 1000
                interval = dt.timedelta(seconds=self.meter_interval_s)
                if now >= next_sample:  # on a fixed grid, so the rate is 1 / meter_interval_s
                    self._sample(now)
                    next_sample += interval
                    if next_sample <= now:  # behind (started, or a stalled loop): no burst
                        next_sample = now + interval
                wait_s = min(self.tick_s, max((next_sample - now).total_seconds(), 0.0))
            else:
                wait_s = self.tick_s
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s / self.clock.speed)

    def registers_at(self, now: dt.datetime) -> tuple[float, float]:
        """The import and export registers [Wh] at ``now`` (not before the last plant step): those of
        the last step plus the power held since, as a meter at the EVSE would read them."""
        held_wh = self.power_w * max((now - self._stepped_at).total_seconds(), 0.0) / 3600
        if self.transaction is None:
            held_wh = 0.0
        return self.import_wh + max(held_wh, 0.0), self.export_wh + max(-held_wh, 0.0)

    def _sample(self, now: dt.datetime) -> None:
        soc = 100 * self.vehicle.soc if self.vehicle else 0.0
        sample = MeterSample(now, self.import_wh, self.export_wh, self.power_w, soc)
        self.meter.append(sample)
        if self.protocol == "1.6":
            self._send(lambda: call16.MeterValues(CONNECTOR_ID, [self._meter_value(sample)], self._tx_id_16))
        else:
            self._send(self._tx_event_builder("Updated", "MeterValuePeriodic", sample))

    def _start(self, now: dt.datetime, vehicle: Vehicle) -> None:
        self._plugged = True
        tx_id = self._reuse_id or f"{self.station_id}-{self.rng.getrandbits(32):08x}"
        self._reuse_id = None
        self.transaction = Transaction(id=tx_id, start=now)
        if self.protocol == "1.6":
            self._send(
                lambda: call16.StatusNotification(CONNECTOR_ID, "NoError", "Preparing", timestamp=iso(now))
            )
            self._send(lambda: call16.Authorize(self.id_token))
            self._send(
                lambda: call16.StartTransaction(CONNECTOR_ID, self.id_token, round(self.import_wh), iso(now)),
                self._on_start_16,
            )
            self._send(
                lambda: call16.StatusNotification(CONNECTOR_ID, "NoError", "Charging", timestamp=iso(now))
            )
        else:
            self._send(lambda: self._status_2x(now, "Occupied"))
            token = {"id_token": self.id_token, "type": "ISO14443"} if self.token_at_plug_in else None
            if token is not None:
                self._send(lambda: self._call.Authorize(token))
            self._send(self._tx_event_builder("Started", "CablePluggedIn", None, id_token=token))
            self._send(lambda: self._charging_needs(vehicle))

    def plug_in(self, vehicle: Vehicle) -> None:
        """Another vehicle plugs in (after the last one's transaction ended): a new transaction."""
        if self.transaction is not None:
            raise RuntimeError(f"{self.station_id}: a transaction is still running")
        self.vehicle, self._plugged = vehicle, False
        self._wake.set()

    def tap_card(self) -> None:
        """2.x: the driver presents ``id_token`` during the running transaction."""
        token = {"id_token": self.id_token, "type": "ISO14443"}
        self._send(lambda: self._call.Authorize(token))
        self._send(self._tx_event_builder("Updated", "Authorized", None, id_token=token))

    def _stop(self, now: dt.datetime, reason: str) -> None:
        assert self.transaction is not None
        self.finished.set()
        self.store.clear_transaction(self.transaction.id)
        if self.protocol == "1.6":
            meter_stop = round(self.import_wh)
            self._send(
                lambda: call16.StopTransaction(
                    meter_stop, iso(now), self._tx_id_16 or 0, reason="EVDisconnected"
                )
            )
            self._send(
                lambda: call16.StatusNotification(CONNECTOR_ID, "NoError", "Available", timestamp=iso(now))
            )
        else:
            trigger = "EVDeparted" if reason == "EVDeparted" else "EnergyLimitReached"
            self._send(self._tx_event_builder("Ended", trigger, None, stopped_reason="EVDisconnected"))
            self._send(lambda: self._status_2x(now, "Available"))
        self.transaction = None

    def _on_start_16(self, result: Any) -> None:
        self._tx_id_16 = result.transaction_id
        if self.transaction is not None:  # TxProfiles from the CSMS name its integer id
            self.transaction = Transaction(id=str(result.transaction_id), start=self.transaction.start)

    # --------------------------------------------------------------------------------- messages

    @property
    def _call(self) -> Any:
        return call21 if self.protocol == "2.1" else call201

    def _status_2x(self, now: dt.datetime, status: str) -> Any:
        return self._call.StatusNotification(
            timestamp=iso(now), connector_status=status, evse_id=EVSE_ID, connector_id=CONNECTOR_ID
        )

    def _meter_value(self, sample: MeterSample) -> dict[str, Any]:
        values = [
            ("Energy.Active.Import.Register", sample.import_wh, "Wh"),
            ("Power.Active.Import", max(sample.power_w, 0.0), "W"),
        ]
        if self.reports_soc:
            values.append(("SoC", sample.soc_percent, "Percent"))
        if self.max_discharge_w > 0:
            values += [
                ("Energy.Active.Export.Register", sample.export_wh, "Wh"),
                ("Power.Active.Export", max(-sample.power_w, 0.0), "W"),
            ]
        sampled: list[dict[str, Any]]
        if self.protocol == "1.6":
            sampled = [
                {"value": f"{value:.1f}", "measurand": m, "unit": unit, "context": "Sample.Periodic"}
                for m, value, unit in values
            ]
        else:
            sampled = [
                {
                    "value": round(value, 1),
                    "measurand": m,
                    "unit_of_measure": {"unit": unit},
                    "context": "Sample.Periodic",
                }
                for m, value, unit in values
            ]
        return {"timestamp": iso(sample.timestamp), "sampled_value": sampled}

    def _tx_event_builder(
        self,
        event_type: str,
        trigger: str,
        sample: MeterSample | None,
        *,
        id_token: dict[str, Any] | None = None,
        stopped_reason: str | None = None,
    ) -> Callable[[], Any]:
        assert self.transaction is not None
        tx_id = self.transaction.id
        timestamp = iso(sample.timestamp if sample else self.clock.now())
        state = (
            "Charging" if self.power_w > 0 else "SuspendedEVSE" if event_type != "Ended" else "EVConnected"
        )
        self._seq_no += 1
        seq_no = self._seq_no

        def build(offline: bool = False) -> Any:
            info: dict[str, Any] = {"transaction_id": tx_id, "charging_state": state}
            if stopped_reason:
                info["stopped_reason"] = stopped_reason
            return self._call.TransactionEvent(
                event_type=event_type,
                timestamp=timestamp,
                trigger_reason=trigger,
                seq_no=seq_no,
                transaction_info=info,
                meter_value=[self._meter_value(sample)] if sample else None,
                offline=offline,
                evse={"id": EVSE_ID, "connector_id": CONNECTOR_ID},
                id_token=id_token,
            )

        return build

    def _charging_needs(self, vehicle: Vehicle) -> Any:
        needs: dict[str, Any] = {
            "requested_energy_transfer": "AC_BPT"
            if self.protocol == "2.1" and self.max_discharge_w and vehicle.max_discharge_kw > 0
            else "AC_three_phase",
            "ac_charging_parameters": {
                "energy_amount": round(vehicle.energy_needed_kwh * 1000),
                "ev_min_current": 6,
                "ev_max_current": round(vehicle.max_charge_kw * 1000 / (230 * 3)),
                "ev_max_voltage": 400,
            },
        }
        announced = vehicle.announced_departure or vehicle.departure
        if announced is not None:
            needs["departure_time"] = iso(announced)
        return self._call.NotifyEVChargingNeeds(charging_needs=needs, evse_id=EVSE_ID)

    def _send(self, build: Callable[[], Any], on_result: Callable[[Any], None] | None = None) -> None:
        self._outbox.append(_Outgoing(build, on_result, made_offline=not self.connected.is_set()))
        self._wake.set()

    # ----------------------------------------------------------------------------------------- link

    async def _link(self) -> None:
        backoff = 0.5
        while True:
            await self._online_wanted.wait()
            try:
                async with websockets.connect(
                    f"{self.url.rstrip('/')}/{self.station_id}",
                    subprotocols=[SUBPROTOCOL[self.protocol]],  # type: ignore[list-item]
                    open_timeout=self.response_timeout_s,
                ) as ws:
                    self._ws = ws
                    backoff = 0.5  # connected: the next loss starts the backoff afresh
                    station: Any = station_class(self.protocol)(self.station_id, ws, self)
                    async with asyncio.TaskGroup() as tasks:
                        receiver = tasks.create_task(station.start(), name=f"{self.station_id}-receive")
                        tasks.create_task(self._drain(station, receiver), name=f"{self.station_id}-send")
            except* (ConnectionClosed, OSError, TimeoutError) as errors:
                log.info("%s: connection lost (%s)", self.station_id, errors.exceptions[0])
            finally:
                self._ws = None
                self.connected.clear()
            if self._online_wanted.is_set():
                await asyncio.sleep(backoff * (1 + self.rng.random()))
                backoff = min(backoff * 2, 30.0)

    async def _drain(self, station: Any, receiver: asyncio.Task[None]) -> None:
        if not self.booted.is_set():
            result = await station.call(self._boot(), suppress=False)
            if result.status != "Accepted":
                raise ConnectionClosed(None, None)
            self.booted.set()
            self._wake.set()
        elif self.protocol == "1.6":
            status = "Charging" if self.transaction else "Available"
            await station.call(
                call16.StatusNotification(CONNECTOR_ID, "NoError", status, timestamp=iso(self.clock.now()))
            )
        else:
            status = "Occupied" if self.transaction else "Available"
            await station.call(self._status_2x(self.clock.now(), status))
        self.connected.set()
        while not receiver.done():
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._outbox[0]
            payload = item.build(True) if item.made_offline and self.protocol != "1.6" else item.build()
            try:
                result = await station.call(payload, suppress=False)
            except OCPPError as err:  # the CSMS refused it: log and go on, as a station would
                log.warning("%s: %s answered with %r", self.station_id, type(payload).__name__, err)
                result = None
            self._outbox.popleft()
            if item.on_result is not None and result is not None:
                item.on_result(result)

    def _boot(self) -> Any:
        if self.protocol == "1.6":
            return call16.BootNotification(charge_point_model="SimCharger", charge_point_vendor="fleetgrid")
        station = {"model": "SimCharger", "vendor_name": "fleetgrid"}
        return self._call.BootNotification(charging_station=station, reason="PowerUp")

    # ------------------------------------------------------------------------------------ handlers

    def set_profile(self, evse_id: int, payload: dict[str, Any]) -> str:
        """SetChargingProfile: 'Accepted' or 'Rejected'."""
        if self.on_profile is not None:
            self.on_profile(evse_id, payload)
        if evse_id not in (0, EVSE_ID):
            return "Rejected"
        purpose = payload.get("charging_profile_purpose")
        if purpose == "TxProfile" and self.transaction is None:
            return "Rejected"
        try:
            self.store.install_payload(payload, evse_id, installed_at=self.clock.now())
        except ProfileError as err:
            log.warning("%s: rejected charging profile: %s", self.station_id, err)
            return "Rejected"
        self._wake.set()
        return "Accepted"

    def clear_profiles(
        self,
        profile_id: int | None,
        evse_id: int | None,
        purpose: str | None,
        stack_level: int | None,
    ) -> str:
        removed = self.store.clear(profile_id, evse_id=evse_id, purpose=purpose, stack_level=stack_level)
        self._wake.set()
        return "Accepted" if removed else "Unknown"

    def composite_payload(self, evse_id: int, duration: int, unit: str | None) -> dict[str, Any] | None:
        if evse_id not in (0, EVSE_ID):
            return None
        schedule = self.store.composite(self.clock.now(), duration, evse_id, self.transaction)
        return schedule.to_ocpp(self.protocol, unit or "W")
