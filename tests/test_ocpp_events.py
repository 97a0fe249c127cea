"""What the chargers tell the gateway reaches the sink as typed events, in our units, on every version."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ocpp.v16 import call as call16
from ocpp_peers import NOW, peer, run, running

from site_gateway.ocpp.events import (
    ChargingNeedsReported,
    ConnectorStatusChanged,
    MeterReading,
    OcppEvent,
    SessionAuthorized,
    SessionStarted,
    SessionStopped,
)


def only(events: list[OcppEvent], kind: type[Any]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


def test_v16_status_meter_values_and_stop() -> None:
    async def scenario() -> None:
        async with running() as (server, events), peer(server.port, "CP16-W", "ocpp1.6") as cp:
            await cp.boot()
            await cp.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
            assert (await cp.call(call16.Authorize(id_tag="NOBODY"))).id_tag_info["status"] == "Invalid"
            tx = await cp.start_transaction(1)
            samples = [
                {"value": "2.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
                {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
                {"value": "2400", "measurand": "Power.Active.Import", "unit": "W", "phase": "L1"},
                {"value": "61", "measurand": "SoC", "unit": "Percent"},
            ]
            await cp.call(
                call16.MeterValues(
                    connector_id=1,
                    transaction_id=int(tx),
                    meter_value=[{"timestamp": NOW, "sampled_value": samples}],
                )
            )
            session = server.active_session("CP16-W", 1)
            assert session is not None and (session.energy_wh, session.power_w) == (2500.0, 7200.0)
            await cp.stop_transaction(tx)

        (status,) = only(events, ConnectorStatusChanged)
        assert (status.evse_id, status.status, status.error_code) == (1, "Charging", "NoError")
        (meter,) = only(events, MeterReading)
        assert (meter.energy_wh, meter.power_w, meter.soc_pct, meter.transaction_id) == (
            2500.0,
            7200.0,
            61.0,
            tx,
        )
        assert meter.measured_at == datetime(2025, 1, 1, tzinfo=UTC)
        (stopped,) = only(events, SessionStopped)
        assert (stopped.transaction_id, stopped.meter_stop_wh, stopped.energy_wh) == (tx, 6000.0, 5000.0)

    run(scenario())


def test_v21_charging_needs_discharge_metering_and_end() -> None:
    async def scenario() -> None:
        async with (
            running(accept_unknown_tokens=True) as (server, events),
            peer(server.port, "CP21", "ocpp2.1") as cp,
        ):
            await cp.boot()
            tx = await cp.start_transaction(2, id_token="STRANGER")
            needs = {
                "requested_energy_transfer": "DC_BPT",
                "departure_time": "2025-01-01T07:30:00Z",
                "v2x_charging_parameters": {
                    "ev_target_energy_request": 30000.0,
                    "max_charge_power": 11000.0,
                    "max_discharge_power": 7000.0,
                },
            }
            answer = await cp.call(cp._call.NotifyEVChargingNeeds(evse_id=2, charging_needs=needs))
            assert answer.status == "Accepted"
            meter = [
                {
                    "timestamp": NOW,
                    "sampled_value": [
                        {"value": 4.0, "measurand": "Power.Active.Export", "unit_of_measure": {"unit": "kW"}},
                        {"value": 12.5, "unit_of_measure": {"unit": "Wh", "multiplier": 3}},
                    ],
                }
            ]
            await cp.call(cp._call.MeterValues(evse_id=2, meter_value=meter))
            session = server.active_session("CP21", 2)
            assert session is not None
            assert session.departure_time == datetime(2025, 1, 1, 7, 30, tzinfo=UTC)
            assert (session.energy_request_wh, session.power_w) == (30000.0, -4000.0)
            await cp.stop_transaction(tx)
            assert server.active_session("CP21", 2) is None

        (started,) = only(events, SessionStarted)
        assert (started.evse_id, started.id_token, started.driver_id, started.meter_start_wh) == (
            2,
            "STRANGER",
            None,
            1000.0,
        )
        (reported,) = only(events, ChargingNeedsReported)
        assert (reported.transaction_id, reported.requested_energy_transfer) == (tx, "DC_BPT")
        assert (reported.energy_request_wh, reported.max_discharge_power_w) == (30000.0, 7000.0)
        meter_event = only(events, MeterReading)[-2]  # MeterValues; the last one came with Ended
        assert (meter_event.power_w, meter_event.energy_wh, meter_event.transaction_id) == (
            -4000.0,
            12500.0,
            tx,
        )
        (stopped,) = only(events, SessionStopped)
        assert (stopped.energy_wh, stopped.reason) == (5000.0, "EVDisconnected")

    run(scenario())


def test_transaction_ids_survive_a_gateway_restart() -> None:
    from site_gateway.ocpp.sessions import SessionRegister

    before = SessionRegister()
    issued = [before.next_transaction_id() for _ in range(3)]
    after = SessionRegister()  # a restarted gateway
    assert after.next_transaction_id() >= issued[0]
    assert len(set(issued)) == 3
    assert all(0 < i < 2**31 for i in issued)


def test_v201_a_card_tapped_after_plug_in_names_the_session() -> None:
    """The transaction starts on plug-in without a token; the card comes in an Updated event: the
    session gets its driver, the gateway hears of it once, and the stop carries the token."""

    async def scenario() -> None:
        async with running() as (server, events), peer(server.port, "CP201", "ocpp2.0.1") as cp:
            await cp.boot()
            started = {"transaction_id": "TX-9"}
            evse = {"id": 1, "connector_id": 1}
            await cp.call(
                cp._call.TransactionEvent(
                    event_type="Started",
                    timestamp=NOW,
                    trigger_reason="CablePluggedIn",
                    seq_no=0,
                    transaction_info=started,
                    evse=evse,
                )
            )
            for seq_no in (1, 2):  # the second tap of the same card changes nothing
                await cp.call(
                    cp._call.TransactionEvent(
                        event_type="Updated",
                        timestamp=NOW,
                        trigger_reason="Authorized",
                        seq_no=seq_no,
                        transaction_info=started,
                        id_token={"id_token": "TAG-1", "type": "ISO14443"},
                    )
                )
            session = server.active_session("CP201", 1)
            assert session is not None and (session.id_token, session.driver_id) == ("TAG-1", "driver-7")
            await cp.stop_transaction("TX-9")

        (first,) = only(events, SessionStarted)
        assert first.id_token is None
        (authorized,) = only(events, SessionAuthorized)
        assert (authorized.transaction_id, authorized.id_token, authorized.vehicle_id) == (
            "TX-9",
            "TAG-1",
            "van-3",
        )
        (stopped,) = only(events, SessionStopped)
        assert stopped.id_token == "TAG-1"

    run(scenario())
