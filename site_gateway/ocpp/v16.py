"""OCPP 1.6J central-system handlers for one charge point connection."""

from __future__ import annotations

from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result, datatypes
from ocpp.v16.enums import Action

from site_gateway.ocpp.events import (
    ConnectorStatusChanged,
    MeterReading,
    SessionStopped,
    StationBooted,
)
from site_gateway.ocpp.profiles import OcppVersion
from site_gateway.ocpp.station import Station, parse_time, read_meter_values


def _iso(station: Station) -> str:
    return station.context.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")


class StationV16(Station, ChargePoint16):
    version = OcppVersion.V16

    @on(Action.boot_notification)
    async def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any
    ) -> call_result.BootNotification:
        await self.emit(
            StationBooted(
                charge_point_id=self.id,
                received_at=self.context.clock.now(),
                ocpp_version=self.version.value,
                vendor=charge_point_vendor,
                model=charge_point_model,
                serial_number=kwargs.get("charge_point_serial_number")
                or kwargs.get("charge_box_serial_number"),
                firmware_version=kwargs.get("firmware_version"),
            )
        )
        self.on_booted()
        return call_result.BootNotification(
            current_time=_iso(self), interval=self.context.heartbeat_interval_s, status="Accepted"
        )

    @on(Action.heartbeat)
    async def on_heartbeat(self, **kwargs: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=_iso(self))

    @on(Action.status_notification)
    async def on_status_notification(
        self, connector_id: int, error_code: str, status: str, **kwargs: Any
    ) -> call_result.StatusNotification:
        await self.emit(
            ConnectorStatusChanged(
                charge_point_id=self.id,
                received_at=self.context.clock.now(),
                evse_id=connector_id,
                connector_id=connector_id,
                status=status,
                error_code=error_code,
            )
        )
        return call_result.StatusNotification()

    @on(Action.authorize)
    async def on_authorize(self, id_tag: str, **kwargs: Any) -> call_result.Authorize:
        status, _ = await self.authorize(id_tag)
        return call_result.Authorize(id_tag_info=datatypes.IdTagInfo(status=status))

    @on(Action.start_transaction)
    async def on_start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kwargs: Any
    ) -> call_result.StartTransaction:
        status, identity = await self.authorize(id_tag)
        transaction_id = self.context.sessions.next_transaction_id()
        session = self.new_session(
            evse_id=connector_id,
            transaction_id=str(transaction_id),
            started_at=parse_time(timestamp) or self.context.clock.now(),
            id_token=id_tag,
            identity=identity,
            meter_start_wh=float(meter_start),
        )
        await self.emit(self.started_event(session, resumed=False))
        return call_result.StartTransaction(
            transaction_id=transaction_id, id_tag_info=datatypes.IdTagInfo(status=status)
        )

    @on(Action.stop_transaction)
    async def on_stop_transaction(
        self, meter_stop: int, timestamp: str, transaction_id: int, **kwargs: Any
    ) -> call_result.StopTransaction:
        session = self.context.sessions.remove(self.id, str(transaction_id))
        start_wh = session.meter_start_wh if session else None
        await self.emit(
            SessionStopped(
                charge_point_id=self.id,
                received_at=self.context.clock.now(),
                evse_id=session.evse_id if session else 0,
                transaction_id=str(transaction_id),
                stopped_at=parse_time(timestamp) or self.context.clock.now(),
                meter_stop_wh=float(meter_stop),
                energy_wh=None if start_wh is None else float(meter_stop) - start_wh,
                reason=kwargs.get("reason"),
                id_token=session.id_token if session else kwargs.get("id_tag"),
            )
        )
        id_tag = kwargs.get("id_tag")
        if id_tag is None:
            return call_result.StopTransaction()
        status, _ = await self.authorize(id_tag)
        return call_result.StopTransaction(id_tag_info=datatypes.IdTagInfo(status=status))

    @on(Action.meter_values)
    async def on_meter_values(
        self, connector_id: int, meter_value: list[dict[str, Any]], **kwargs: Any
    ) -> call_result.MeterValues:
        sample = read_meter_values(meter_value)
        transaction_id = kwargs.get("transaction_id")
        tx_text = None if transaction_id is None else str(transaction_id)
        if tx_text is not None:
            session = self.context.sessions.get(self.id, tx_text)
            if session is None:  # known to the charger, not to us: resume it
                session = self.new_session(
                    evse_id=connector_id, transaction_id=tx_text, started_at=self.context.clock.now()
                )
                await self.emit(self.started_event(session, resumed=True))
            self.update_session(session, sample)
        await self.emit(
            MeterReading(
                charge_point_id=self.id,
                received_at=self.context.clock.now(),
                evse_id=connector_id,
                measured_at=sample.measured_at or self.context.clock.now(),
                transaction_id=tx_text,
                energy_wh=sample.energy_wh,
                export_energy_wh=sample.export_energy_wh,
                power_w=sample.power_w,
                soc_pct=sample.soc_pct,
            )
        )
        return call_result.MeterValues()
