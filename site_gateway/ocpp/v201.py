"""OCPP 2.0.1 central-system handlers, and the 2.x handlers that OCPP 2.1 shares.

The handlers build their responses from ``self._call_result``, the version's own module, so the same code
answers 2.0.1 and 2.1; 2.1 adds only what 2.0.1 does not have (see ``ocpp_v21``).
"""

from __future__ import annotations

from typing import Any

from ocpp.routing import on
from ocpp.v201 import ChargePoint as ChargePoint201

from site_gateway.ocpp.capabilities import reported_discharge
from site_gateway.ocpp.events import (
    ChargingNeedsReported,
    ConnectorStatusChanged,
    MeterReading,
    SessionAuthorized,
    SessionStopped,
    StationBooted,
)
from site_gateway.ocpp.profiles import OcppVersion
from site_gateway.ocpp.sessions import Session
from site_gateway.ocpp.station import MeterSample, Station, parse_time, read_meter_values


class Station2x(Station):
    """Handlers common to OCPP 2.0.1 and 2.1 (actions are named by string: both enums spell them alike)."""

    def _now_text(self) -> str:
        return self.context.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")

    @on("BootNotification")
    async def on_boot_notification(self, charging_station: dict[str, Any], reason: str, **kwargs: Any) -> Any:
        await self.emit(
            StationBooted(
                charge_point_id=self.id,
                received_at=self.context.clock.now(),
                ocpp_version=self.version.value,
                vendor=charging_station.get("vendor_name", ""),
                model=charging_station.get("model", ""),
                serial_number=charging_station.get("serial_number"),
                firmware_version=charging_station.get("firmware_version"),
                reason=reason,
            )
        )
        self.on_booted()
        return self._call_result.BootNotification(
            current_time=self._now_text(), interval=self.context.heartbeat_interval_s, status="Accepted"
        )

    @on("Heartbeat")
    async def on_heartbeat(self, **kwargs: Any) -> Any:
        return self._call_result.Heartbeat(current_time=self._now_text())

    @on("StatusNotification")
    async def on_status_notification(
        self, connector_status: str, evse_id: int, connector_id: int, **kwargs: Any
    ) -> Any:
        await self.emit(
            ConnectorStatusChanged(
                charge_point_id=self.id,
                received_at=self.context.clock.now(),
                evse_id=evse_id,
                connector_id=connector_id,
                status=connector_status,
            )
        )
        return self._call_result.StatusNotification()

    @on("Authorize")
    async def on_authorize(self, id_token: dict[str, Any], **kwargs: Any) -> Any:
        status, _ = await self.authorize(id_token.get("id_token"))
        return self._call_result.Authorize(id_token_info={"status": status})

    @on("TransactionEvent")
    async def on_transaction_event(
        self, event_type: str, timestamp: str, transaction_info: dict[str, Any], **kwargs: Any
    ) -> Any:
        transaction_id = str(transaction_info["transaction_id"])
        evse = kwargs.get("evse") or {}
        token = (kwargs.get("id_token") or {}).get("id_token")
        at = parse_time(timestamp) or self.context.clock.now()
        sample = read_meter_values(kwargs.get("meter_value") or [])
        status, identity = await self.authorize(token)

        session = self.context.sessions.get(self.id, transaction_id)
        if session is None:
            session = self.new_session(
                evse_id=int(evse.get("id", 0)),
                transaction_id=transaction_id,
                started_at=at,
                id_token=token,
                identity=identity,
                meter_start_wh=sample.energy_wh if event_type == "Started" else None,
            )
            await self.emit(self.started_event(session, resumed=event_type != "Started"))
        elif token is not None and session.id_token is None:  # a card tapped after plug-in
            session.id_token = token
            session.driver_id = identity.driver_id if identity else None
            session.vehicle_id = identity.vehicle_id if identity else None
            await self.emit(
                SessionAuthorized(
                    charge_point_id=self.id,
                    received_at=self.context.clock.now(),
                    evse_id=session.evse_id,
                    transaction_id=transaction_id,
                    id_token=token,
                    driver_id=session.driver_id,
                    vehicle_id=session.vehicle_id,
                )
            )
        self.update_session(session, sample)
        if kwargs.get("meter_value"):
            await self._emit_meter(session.evse_id, transaction_id, sample)
        if event_type == "Ended":
            await self._end(session, at, sample, transaction_info.get("stopped_reason"))

        if token is None:
            return self._call_result.TransactionEvent()
        return self._call_result.TransactionEvent(id_token_info={"status": status})

    async def _end(self, session: Session, at: Any, sample: MeterSample, reason: str | None) -> None:
        self.context.sessions.remove(self.id, session.transaction_id)
        stop_wh = sample.energy_wh if sample.energy_wh is not None else session.energy_wh
        start_wh = session.meter_start_wh
        await self.emit(
            SessionStopped(
                charge_point_id=self.id,
                received_at=self.context.clock.now(),
                evse_id=session.evse_id,
                transaction_id=session.transaction_id,
                stopped_at=at,
                meter_stop_wh=stop_wh,
                energy_wh=None if stop_wh is None or start_wh is None else stop_wh - start_wh,
                reason=reason,
                id_token=session.id_token,
            )
        )

    async def _emit_meter(self, evse_id: int, transaction_id: str | None, sample: MeterSample) -> None:
        await self.emit(
            MeterReading(
                charge_point_id=self.id,
                received_at=self.context.clock.now(),
                evse_id=evse_id,
                measured_at=sample.measured_at or self.context.clock.now(),
                transaction_id=transaction_id,
                energy_wh=sample.energy_wh,
                export_energy_wh=sample.export_energy_wh,
                power_w=sample.power_w,
                soc_pct=sample.soc_pct,
            )
        )

    @on("MeterValues")
    async def on_meter_values(self, evse_id: int, meter_value: list[dict[str, Any]], **kwargs: Any) -> Any:
        sample = read_meter_values(meter_value)
        session = self.context.sessions.active(self.id, evse_id)
        if session is not None:
            self.update_session(session, sample)
        await self._emit_meter(evse_id, session.transaction_id if session else None, sample)
        return self._call_result.MeterValues()

    @on("NotifyEVChargingNeeds")
    async def on_notify_ev_charging_needs(
        self, charging_needs: dict[str, Any], evse_id: int, **kwargs: Any
    ) -> Any:
        ac = charging_needs.get("ac_charging_parameters") or {}
        dc = charging_needs.get("dc_charging_parameters") or {}
        v2x = charging_needs.get("v2x_charging_parameters") or {}  # 2.1
        energy = v2x.get("ev_target_energy_request", ac.get("energy_amount", dc.get("energy_amount")))
        max_charge = v2x.get("max_charge_power", dc.get("ev_max_power"))
        max_discharge = v2x.get("max_discharge_power")
        departure = parse_time(charging_needs.get("departure_time"))
        mode = charging_needs.get("requested_energy_transfer")
        session = self.context.sessions.active(self.id, evse_id)
        if session is not None:
            session.departure_time = departure or session.departure_time
            if energy is not None:
                session.energy_request_wh = float(energy)
            session.discharge = reported_discharge(
                self.version,
                self.charger,
                None if mode is None else str(mode),
                None if max_discharge is None else float(max_discharge),
            )
        await self.emit(
            ChargingNeedsReported(
                charge_point_id=self.id,
                received_at=self.context.clock.now(),
                evse_id=evse_id,
                transaction_id=session.transaction_id if session else None,
                requested_energy_transfer=str(mode or ""),
                departure_time=departure,
                energy_request_wh=None if energy is None else float(energy),
                max_charge_power_w=None if max_charge is None else float(max_charge),
                max_discharge_power_w=None if max_discharge is None else float(max_discharge),
                soc_pct=dc.get("state_of_charge"),
                discharge=session.discharge if session is not None else None,
            )
        )
        return self._call_result.NotifyEVChargingNeeds(status="Accepted")


class StationV201(Station2x, ChargePoint201):
    version = OcppVersion.V201
