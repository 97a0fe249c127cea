"""V2G bound to the session, and chargers as they are: the whole gateway with simulated stations, a
test-owned Mosquitto and a centre client (``test_gateway.Centre``).

Each test reproduces a failure measured on the gateway before these rules (it fails there):

- a new vehicle inherited the previous one's discharge setpoint: the setpoint was kept per EVSE and
  outlived the session, so the next transaction got a -5 kW profile before the centre knew of it;
- a discharge was sent to a vehicle that had not negotiated bidirectional transfer, and acknowledged
  as accepted;
- a charger that does not implement GetCompositeSchedule had its accepted profile counted as
  "unverified": re-sent at every control step and reported "rejected" to the centre.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
from mosquitto import Mosquitto
from test_gateway import Centre, config, until

from chargersim.clock import SimClock
from chargersim.stations import Protocol, SimulatedCharger
from chargersim.vehicles import Vehicle
from site_gateway.gateway import Gateway
from site_gateway.setpoints import SetpointBook
from wire.contract import AckStatus, LimitReason, SetpointCommand, encode, subscription

SPEED = 60.0
"""Simulated seconds per real second; the gateway and the centre run on the chargers' clock."""
STEP_S = 30.0
"""The gateway's control and telemetry interval [simulated s]."""


def vehicle(clock: SimClock, *, discharge_kw: float, stay_h: float = 4.0) -> Vehicle:
    now = clock.now()
    return Vehicle(
        capacity_kwh=60,
        soc=0.6,
        max_charge_kw=11,
        max_discharge_kw=discharge_kw,
        arrival=now,
        departure=now + dt.timedelta(hours=stay_h),
    )


@asynccontextmanager
async def site(
    tmp_path: Path,
    broker: Mosquitto,
    protocol: Protocol,
    *,
    discharge_kw: float = 11.0,
    stay_h: float = 4.0,
    reports_composite: bool = True,
) -> AsyncIterator[tuple[Gateway, Centre, SimulatedCharger, list[tuple[str | None, dict[str, Any]]]]]:
    """A gateway, a centre and one station ``cp-0`` (able to discharge 11 kW on 2.1) with a vehicle
    plugged in; the last item lists every TxProfile the station received as (transaction id, period)."""
    site_id = f"v2g-{protocol.replace('.', '')}"
    clock = SimClock(dt.datetime.now(dt.UTC), speed=SPEED)
    gateway = Gateway(
        config(site_id, broker, import_limit_kw=50, export_limit_kw=50, telemetry_interval_s=STEP_S),
        outbox_path=tmp_path / "outbox.sqlite",
        control_interval_s=STEP_S,
        clock=clock,
    )
    received: list[tuple[str | None, dict[str, Any]]] = []

    def record(evse_id: int, payload: dict[str, Any]) -> None:
        if payload["charging_profile_purpose"] == "TxProfile":
            schedules = payload["charging_schedule"]
            schedule = schedules[0] if isinstance(schedules, list) else schedules
            received.append((payload.get("transaction_id"), schedule["charging_schedule_period"][0]))

    async with (
        aiomqtt.Client(broker.host, broker.port, identifier=f"centre-{site_id}") as client,
        gateway,
        asyncio.TaskGroup() as tasks,
    ):
        await client.subscribe(subscription(), qos=1)
        centre = Centre(client, site_id, clock.now)
        listening = tasks.create_task(centre.listen(), name="centre")
        sim = SimulatedCharger(
            "cp-0",
            f"ws://127.0.0.1:{gateway.ocpp.port}",
            protocol,
            vehicle(clock, discharge_kw=discharge_kw, stay_h=stay_h),
            clock,
            max_power_w=11_000,
            max_discharge_w=11_000 if protocol == "2.1" else 0.0,
            meter_interval_s=STEP_S,
            tick_s=5,
            on_profile=record,
        )
        sim.store.reports_composite = reports_composite
        running = tasks.create_task(sim.run(), name="sim-cp-0")
        await until(lambda: (view := gateway.evses.get("cp-0/1")) is not None and view.transaction_id)
        try:
            yield gateway, centre, sim, received
        finally:
            running.cancel()
            listening.cancel()


def discharge_w(period: dict[str, Any]) -> float:
    """The signed power a TxProfile period asks for [W or A]: negative only for a discharge."""
    return float(period.get("setpoint", period.get("limit", 0.0)))


def test_a_new_vehicle_does_not_inherit_the_last_ones_discharge(tmp_path: Path, broker: Mosquitto) -> None:
    async def scenario() -> None:
        async with site(tmp_path, broker, "2.1", stay_h=0.15) as (gateway, centre, sim, received):
            first = gateway.evses["cp-0/1"].transaction_id
            await until(lambda: gateway.evses["cp-0/1"].energy_request_kwh is not None)
            command_id = await centre.command({"cp-0": -5.0}, valid_s=3600)
            await until(lambda: abs(sim.power_w + 5000) < 50 and centre.ack(command_id) is not None)
            ack = centre.ack(command_id)
            assert ack is not None and ack.status is AckStatus.ACCEPTED, ack
            # The vehicle leaves (9 simulated minutes after it came); another one, able to discharge
            # too, plugs in at the same charger while the centre's -5 kW is still valid.
            await until(lambda: gateway.evses["cp-0/1"].transaction_id is None, timeout=20)
            sim.plug_in(vehicle(sim.clock, discharge_kw=11.0))
            await until(lambda: gateway.evses["cp-0/1"].transaction_id not in (None, first))
            second = gateway.evses["cp-0/1"].transaction_id
            powers = []
            for _ in range(40):  # 40 x 0.1 s = 4 simulated minutes, 8 control steps
                powers.append(sim.power_w)
                await asyncio.sleep(0.1)
            theirs = [p for tx, p in received if tx == second]
            assert theirs and all(discharge_w(p) >= 0 for p in theirs), theirs
            assert min(powers) >= 0, "the new vehicle was discharged on the last one's setpoint"
            assert "cp-0/1" not in gateway.setpoints
            assert gateway.safety.mode is not None and gateway.safety.mode.value == "fallback"
            # A setpoint the centre sends for the new session is followed.
            await centre.command({"cp-0": -3.0}, valid_s=3600)
            await until(lambda: abs(sim.power_w + 3000) < 50)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_vehicle_without_bidirectional_transfer_is_not_discharged(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async def scenario() -> None:
        async with site(tmp_path, broker, "2.1", discharge_kw=0.0) as (gateway, centre, sim, received):
            await until(lambda: gateway.evses["cp-0/1"].energy_request_kwh is not None)  # AC_three_phase
            command_id = await centre.command({"cp-0": -5.0}, valid_s=3600)
            await until(lambda: centre.ack(command_id) is not None)
            ack = centre.ack(command_id)
            assert ack is not None and ack.status is AckStatus.ACCEPTED, ack
            detail = ack.evses[0].detail or ""
            assert detail.startswith("limited to 0.00 kW by the vehicle:"), detail
            assert "AC_three_phase, not bidirectional transfer" in detail, detail

            def refused() -> bool:
                last = centre.telemetry[-1] if centre.telemetry else None
                limit = last.evses[0].limit if last and last.evses else None
                return limit is not None and limit.discharge and limit.power_kw == 0.0

            await until(refused)
            limit = centre.telemetry[-1].evses[0].limit
            assert limit is not None and limit.reason is LimitReason.CHARGER_MAX
            assert received and all(discharge_w(p) >= 0 for _, p in received), received
            assert sim.power_w >= 0

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_charger_without_composite_schedules_is_not_flooded(tmp_path: Path, broker: Mosquitto) -> None:
    async def scenario() -> None:
        async with site(tmp_path, broker, "2.0.1", reports_composite=False) as (
            _gateway,
            centre,
            sim,
            received,
        ):
            before = len(received)
            command_id = await centre.command({"cp-0": 4.0}, valid_s=3600)
            await until(lambda: centre.ack(command_id) is not None)
            ack = centre.ack(command_id)
            assert ack is not None and ack.status is AckStatus.ACCEPTED, ack
            await until(lambda: abs(sim.power_w - 4000) < 50)
            await asyncio.sleep(10 * STEP_S / SPEED)  # ten control steps
            pushed = received[before:]
            assert len(pushed) == 1, f"{len(pushed)} TxProfiles for one setpoint: {pushed}"
            assert abs(sim.power_w - 4000) < 50

    asyncio.run(asyncio.wait_for(scenario(), 60))


# --------------------------------------------------------------------------- the book, on its own

T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)


def command(command_id: str, **setpoints: tuple[float, str | None]) -> SetpointCommand:
    return SetpointCommand(
        site_id="s",
        command_id=command_id,
        issued_at=T0,
        valid_until=T0 + dt.timedelta(hours=1),
        setpoints=tuple(
            {"charger_id": cp, "evse_id": 1, "power_kw": kw, "transaction_id": tx}  # type: ignore[misc]
            for cp, (kw, tx) in setpoints.items()
        ),
    )


def test_a_setpoint_is_bound_to_its_session_and_ends_with_it() -> None:
    running = {"a/1": "tx-1", "b/1": "tx-2"}
    book = SetpointBook()
    refused = book.accept(command("c1", a=(-5.0, None), b=(3.0, "tx-old"), c=(4.0, None)), running.get)
    assert refused == {
        "b/1": "setpoint for transaction 'tx-old', but the EVSE runs transaction 'tx-2'",
        "c/1": "no vehicle charging at this EVSE",
    }
    assert book.refused("c1") == refused and book.refused("c1") == {}
    assert book.get("a/1") is not None and book.get("a/1").transaction_id == "tx-1"  # type: ignore[union-attr]
    assert set(book.current(T0, running.get)) == {"a/1"}
    running["a/1"] = "tx-3"  # another vehicle, its stop unseen: the setpoint is not its
    assert book.current(T0, running.get) == {} and "a/1" not in book
    book.accept(command("c2", a=(2.0, "tx-3")), running.get)
    assert book.end_session("a/1", "tx-other") is None and "a/1" in book
    assert book.end_session("a/1", "tx-3") is not None and len(book) == 0


def test_a_command_without_transaction_ids_reads_as_before() -> None:
    assert b"transaction_id" not in encode(command("c", a=(1.0, None)))
    assert b'"transaction_id":"tx-1"' in encode(command("c", a=(1.0, "tx-1")))
