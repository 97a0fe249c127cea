"""Simulated chargers against a minimal central system on loopback (the ocpp library on both sides)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Csms16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v21 import ChargePoint as Csms21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as Csms201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from chargersim.clock import SimClock
from chargersim.fleet import ChargerFleet
from chargersim.stations import PROTOCOLS, SUBPROTOCOL, Protocol, SimulatedCharger
from chargersim.vehicles import Vehicle

START = dt.datetime(2024, 6, 3, 18, 0, tzinfo=dt.UTC)
NOW_ISO = "2024-06-03T18:00:00Z"


class _Csms:
    """Accepts everything and records every message as (action, payload)."""

    version: str
    start: Any  # from the library's ChargePoint, mixed in below
    call: Any

    def __init__(self, station_id: str, connection: Any) -> None:
        self.log: list[tuple[str, dict[str, Any]]] = []
        super().__init__(station_id, connection, response_timeout=5)  # type: ignore[call-arg]

    @property
    def results(self) -> Any:
        return {"1.6": result16, "2.0.1": result201, "2.1": result21}[self.version]

    @on("BootNotification")
    def boot(self, **kwargs: Any) -> Any:
        self.log.append(("BootNotification", kwargs))
        return self.results.BootNotification(current_time=NOW_ISO, interval=300, status="Accepted")

    @on("StatusNotification")
    def status(self, **kwargs: Any) -> Any:
        self.log.append(("StatusNotification", kwargs))
        return self.results.StatusNotification()

    @on("Authorize")
    def authorize(self, **kwargs: Any) -> Any:
        self.log.append(("Authorize", kwargs))
        if self.version == "1.6":
            return result16.Authorize(id_tag_info={"status": "Accepted"})
        return self.results.Authorize(id_token_info={"status": "Accepted"})

    @on("StartTransaction")
    def start_tx(self, **kwargs: Any) -> Any:
        self.log.append(("StartTransaction", kwargs))
        return result16.StartTransaction(transaction_id=42, id_tag_info={"status": "Accepted"})

    @on("StopTransaction")
    def stop_tx(self, **kwargs: Any) -> Any:
        self.log.append(("StopTransaction", kwargs))
        return result16.StopTransaction()

    @on("MeterValues")
    def meter(self, **kwargs: Any) -> Any:
        self.log.append(("MeterValues", kwargs))
        return self.results.MeterValues()

    @on("TransactionEvent")
    def tx_event(self, **kwargs: Any) -> Any:
        self.log.append(("TransactionEvent", kwargs))
        return self.results.TransactionEvent()

    @on("NotifyEVChargingNeeds")
    def needs(self, **kwargs: Any) -> Any:
        self.log.append(("NotifyEVChargingNeeds", kwargs))
        return self.results.NotifyEVChargingNeeds(status="Accepted")

    def meter_samples(self) -> list[tuple[str | int | None, dict[str, float]]]:
        """(transaction id, measurand -> value) of every meter value received, in order."""
        out = []
        for action, msg in self.log:
            if action == "MeterValues" and self.version == "1.6":
                tx, values = msg.get("transaction_id"), msg["meter_value"]
            elif action == "TransactionEvent" and msg.get("meter_value"):
                tx, values = msg["transaction_info"]["transaction_id"], msg["meter_value"]
            else:
                continue
            for mv in values:
                out.append((tx, {s["measurand"]: float(s["value"]) for s in mv["sampled_value"]}))
        return out


class Csms16Station(_Csms, Csms16):
    version = "1.6"


class Csms201Station(_Csms, Csms201):
    version = "2.0.1"


class Csms21Station(_Csms, Csms21):
    version = "2.1"


CSMS = {"1.6": Csms16Station, "2.0.1": Csms201Station, "2.1": Csms21Station}


@asynccontextmanager
async def central(protocol: Protocol) -> AsyncIterator[tuple[str, dict[str, _Csms]]]:
    stations: dict[str, _Csms] = {}

    async def handler(ws: Any) -> None:
        station_id = ws.request.path.rsplit("/", 1)[-1]
        csms = CSMS[protocol](station_id, ws)
        if station_id in stations:  # a reconnection: keep the log
            csms.log = stations[station_id].log
        stations[station_id] = csms
        with suppress(websockets.ConnectionClosed):
            await csms.start()

    async with websockets.serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL[protocol]]) as server:  # type: ignore[list-item]
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ocpp", stations


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def profile(protocol: Protocol, limit_w: float, purpose: str = "TxDefaultProfile", **period: Any) -> Any:
    periods = [{"start_period": 0, "limit": limit_w, **period}]
    if protocol == "1.6":
        return call16.SetChargingProfile(
            connector_id=1,
            cs_charging_profiles={
                "charging_profile_id": 5,
                "stack_level": 1,
                "charging_profile_purpose": purpose,
                "charging_profile_kind": "Relative",
                "charging_schedule": {"charging_rate_unit": "W", "charging_schedule_period": periods},
            },
        )
    call = call21 if protocol == "2.1" else call201
    return call.SetChargingProfile(
        evse_id=1,
        charging_profile={
            "id": 5,
            "stack_level": 1,
            "charging_profile_purpose": purpose,
            "charging_profile_kind": "Relative",
            "charging_schedule": [{"id": 1, "charging_rate_unit": "W", "charging_schedule_period": periods}],
        },
    )


def composite_request(protocol: Protocol) -> Any:
    if protocol == "1.6":
        return call16.GetCompositeSchedule(connector_id=1, duration=3600, charging_rate_unit="W")
    call = call21 if protocol == "2.1" else call201
    return call.GetCompositeSchedule(duration=3600, evse_id=1, charging_rate_unit="W")


def make_charger(
    url: str, protocol: Protocol, vehicle: Vehicle, speed: float, **kwargs: Any
) -> SimulatedCharger:
    clock = SimClock(START, speed=speed)
    vehicle.arrival = START
    return SimulatedCharger("cp-1", url, protocol, vehicle, clock, meter_interval_s=60, tick_s=10, **kwargs)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_follows_profile_and_resumes_after_reconnect(protocol: Protocol) -> None:
    async def scenario() -> None:
        async with central(protocol) as (url, stations), asyncio.TaskGroup() as tasks:
            vehicle = Vehicle(capacity_kwh=100, soc=0.3, max_charge_kw=11, arrival=START)
            charger = make_charger(url, protocol, vehicle, speed=600)
            run = tasks.create_task(charger.run(), name="charger")
            await until(lambda: charger.transaction is not None and "cp-1" in stations)
            csms = stations["cp-1"]
            await until(lambda: len(csms.meter_samples()) >= 1)
            assert csms.meter_samples()[0][1]["Power.Active.Import"] == pytest.approx(11_000)

            result = await csms.call(profile(protocol, 7_000), suppress=False)
            assert result.status == "Accepted"
            result = await csms.call(composite_request(protocol), suppress=False)
            assert result.status == "Accepted"
            schedule = result.charging_schedule if protocol == "1.6" else result.schedule
            assert [p["limit"] for p in schedule["charging_schedule_period"]] == [7_000]

            seen = len(csms.meter_samples())
            await until(lambda: len(csms.meter_samples()) >= seen + 3)
            tx, values = csms.meter_samples()[-1]
            assert values["Power.Active.Import"] == pytest.approx(7_000)
            assert 30 < values["SoC"] < 40

            await charger.disconnect()
            offline_from = len(charger.meter)
            await until(lambda: len(charger.meter) >= offline_from + 3)  # still charging offline
            charger.reconnect()
            await until(lambda: len(csms.meter_samples()) >= len(charger.meter) - 1)
            after = csms.meter_samples()
            assert {t for t, _ in after[seen:]} == {tx}  # the same transaction throughout
            energy = [v["Energy.Active.Import.Register"] for _, v in after]
            assert energy == sorted(energy)
            # the energy register integrates the power: 7 kW for the simulated time between samples
            span_h = (charger.meter[-1].timestamp - charger.meter[seen + 1].timestamp).total_seconds() / 3600
            gained = charger.meter[-1].import_wh - charger.meter[seen + 1].import_wh
            assert gained == pytest.approx(7_000 * span_h, rel=0.02)
            assert sum(a in ("StartTransaction", "BootNotification") for a, _ in csms.log) == (
                2 if protocol == "1.6" else 1
            )
            if protocol != "1.6":
                started = [m for a, m in csms.log if a == "TransactionEvent" and m["event_type"] == "Started"]
                assert len(started) == 1
                assert any(a == "NotifyEVChargingNeeds" for a, _ in csms.log)
                assert any(m.get("offline") for a, m in csms.log if a == "TransactionEvent")
            run.cancel()

    asyncio.run(scenario())


def test_taper_above_80_percent_and_stop_when_full() -> None:
    async def scenario() -> None:
        async with central("1.6") as (url, stations), asyncio.TaskGroup() as tasks:
            vehicle = Vehicle(capacity_kwh=10, soc=0.75, max_charge_kw=11, arrival=START, efficiency=0.9)
            charger = make_charger(url, "1.6", vehicle, speed=3600)
            run = tasks.create_task(charger.run(), name="charger")
            await asyncio.wait_for(charger.finished.wait(), 10)
            await until(lambda: any(a == "StopTransaction" for a, _ in stations["cp-1"].log))
            samples = stations["cp-1"].meter_samples()
            by_soc = [(v["SoC"], v["Power.Active.Import"]) for _, v in samples]
            assert all(p == pytest.approx(11_000) for soc, p in by_soc if soc < 79.9)
            tapered = [(soc, p) for soc, p in by_soc if 81 < soc < 99.5]
            assert len(tapered) >= 3
            for soc, p in tapered:  # what the vehicle model accepts at that SoC, within one tick
                expected = 11_000 * (0.05 + 0.95 * (100 - soc) / 20)
                assert p == pytest.approx(expected, abs=300)
            powers = [p for _, p in tapered]
            assert powers == sorted(powers, reverse=True)
            assert vehicle.soc == pytest.approx(1.0)
            stop = next(m for a, m in stations["cp-1"].log if a == "StopTransaction")
            assert stop["transaction_id"] == 42
            # 2.5 kWh into the battery at 90 % efficiency: 2.78 kWh metered
            assert stop["meter_stop"] == pytest.approx(2_500 / 0.9, abs=30)
            run.cancel()

    asyncio.run(scenario())


def test_v21_discharges_on_central_setpoint() -> None:
    async def scenario() -> None:
        async with central("2.1") as (url, stations), asyncio.TaskGroup() as tasks:
            vehicle = Vehicle(capacity_kwh=60, soc=0.7, max_charge_kw=11, max_discharge_kw=10, arrival=START)
            charger = make_charger(url, "2.1", vehicle, speed=600, max_discharge_w=10_000)
            run = tasks.create_task(charger.run(), name="charger")
            await until(lambda: charger.transaction is not None and "cp-1" in stations)
            csms = stations["cp-1"]
            request = profile(
                "2.1",
                11_000,
                "TxProfile",
                setpoint=-5_000,
                discharge_limit=-8_000,
                operation_mode="CentralSetpoint",
            )
            assert charger.transaction is not None
            request.charging_profile["transaction_id"] = charger.transaction.id
            assert (await csms.call(request, suppress=False)).status == "Accepted"
            seen = len(csms.meter_samples())
            await until(lambda: len(csms.meter_samples()) >= seen + 3)
            values = csms.meter_samples()[-1][1]
            assert values["Power.Active.Export"] == pytest.approx(5_000)
            assert values["Power.Active.Import"] == 0
            assert values["Energy.Active.Export.Register"] > 0
            assert vehicle.soc < 0.7
            result = await csms.call(call21.ClearChargingProfile(charging_profile_id=5), suppress=False)
            assert result.status == "Accepted"
            await until(lambda: math.isclose(charger.power_w, 11_000))
            run.cancel()

    asyncio.run(scenario())


def test_rejects_tx_profile_without_transaction_and_unknown_clear() -> None:
    async def scenario() -> None:
        async with central("2.0.1") as (url, stations), asyncio.TaskGroup() as tasks:
            vehicle = Vehicle(capacity_kwh=60, soc=0.5, max_charge_kw=11, arrival=START)
            charger = make_charger(url, "2.0.1", vehicle, speed=1)
            charger.vehicle = None  # nothing plugged in
            run = tasks.create_task(charger.run(), name="charger")
            await until(lambda: charger.connected.is_set() and "cp-1" in stations)
            csms = stations["cp-1"]
            assert (
                await csms.call(profile("2.0.1", 5_000, "TxProfile"), suppress=False)
            ).status == "Rejected"
            result = await csms.call(call201.ClearChargingProfile(charging_profile_id=9), suppress=False)
            assert result.status == "Unknown"
            run.cancel()

    asyncio.run(scenario())


def test_fleet_boots_every_station_and_starts_their_transactions() -> None:
    async def scenario() -> None:
        async with central("2.0.1") as (url, stations):
            async with ChargerFleet(url, 3, "2.0.1", clock=SimClock(START, speed=600), seed=1) as fleet:
                await fleet.wait_booted(timeout_s=5)
                await until(lambda: all(c.transaction is not None for c in fleet.chargers))
                await until(lambda: all(len(s.meter_samples()) >= 2 for s in stations.values()))
            assert sorted(stations) == ["sim-000", "sim-001", "sim-002"]

    asyncio.run(scenario())
