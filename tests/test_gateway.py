"""The whole gateway with real peers: simulated OCPP chargers, a test-owned Mosquitto, a centre client.

A session for each of OCPP 1.6, 2.0.1 and 2.1: boot, plug in, a setpoint from MQTT becomes a charging
profile the charger follows, and its meter values come back on MQTT as telemetry. Then: the site limit
holds when the centre asks for too much, and with no setpoints the gateway falls back to
earliest-deadline-first charging within the limit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
from mosquitto import Mosquitto

from chargersim.clock import SimClock
from chargersim.stations import PROTOCOLS, Protocol, SimulatedCharger
from chargersim.vehicles import Vehicle
from site_gateway.clock import SYSTEM_CLOCK
from site_gateway.config import GatewayConfig
from site_gateway.gateway import Gateway
from wire.contract import (
    AckStatus,
    CommandAck,
    GatewayState,
    GatewayStatus,
    LimitReason,
    SetpointCommand,
    Telemetry,
    decode_message,
    encode,
    setpoint_topic,
    subscription,
)

SPEED = 60.0
"""Simulated seconds per real second for the chargers: one meter value per real second."""


def config(
    site_id: str,
    broker: Mosquitto,
    *,
    import_limit_kw: float,
    export_limit_kw: float = 0.0,
    stale_after_s: float = 900,
    telemetry_interval_s: float = 0.5,
    charger_response_s: float = 5.0,
    listed: int = 3,
) -> GatewayConfig:
    """``listed``: how many chargers the site lists (cp-0 ...); each one never heard of counts at the
    full reserve, as it may have a vehicle drawing its boot default."""
    return GatewayConfig.model_validate(
        {
            "site": {"id": site_id, "import_limit_kw": import_limit_kw, "export_limit_kw": export_limit_kw},
            "ocpp": {"host": "127.0.0.1", "port": 0, "allow_unknown": True},
            "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}"},
            "control": {
                "schedule_stale_after_s": stale_after_s,
                "telemetry_interval_s": telemetry_interval_s,
                "charger_response_s": charger_response_s,
            },
            "chargers": [
                {"id": f"cp-{n}", "max_charge_kw": 11, "max_discharge_kw": 11, "limit_unit": "W"}
                for n in range(listed)
            ],
        }
    )


class Centre:
    """The aggregator's side of MQTT, reduced to what the tests need."""

    def __init__(
        self,
        client: aiomqtt.Client,
        site_id: str,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.client, self.site_id, self.clock = client, site_id, clock
        self.telemetry: list[Telemetry] = []
        self.acks: list[CommandAck] = []
        self.statuses: list[GatewayStatus] = []
        self._ids = itertools.count(1)

    async def listen(self) -> None:
        async for message in self.client.messages:
            _, payload = decode_message(str(message.topic), message.payload)  # type: ignore[arg-type]
            match payload:
                case Telemetry():
                    self.telemetry.append(payload)
                case CommandAck():
                    self.acks.append(payload)
                case GatewayStatus():
                    self.statuses.append(payload)

    async def command(self, powers: dict[str, float], *, valid_s: float = 600) -> str:
        now = self.clock()
        command_id = f"cmd-{next(self._ids)}"
        command = SetpointCommand(
            site_id=self.site_id,
            command_id=command_id,
            issued_at=now - dt.timedelta(seconds=1),
            valid_until=now + dt.timedelta(seconds=valid_s),
            setpoints=tuple({"charger_id": cp, "evse_id": 1, "power_kw": kw} for cp, kw in powers.items()),  # type: ignore[misc]
        )
        await self.client.publish(setpoint_topic(self.site_id), encode(command), qos=1)
        return command_id

    def ack(self, command_id: str) -> CommandAck | None:
        return next((a for a in self.acks if a.command_id == command_id), None)

    def charger_kw(self, charger_id: str) -> float | None:
        for telemetry in reversed(self.telemetry):
            for evse in telemetry.evses:
                if evse.charger_id == charger_id:
                    return evse.power_kw
        return None


async def until(condition: Callable[[], object], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@asynccontextmanager
async def running_site(
    tmp_path: Path,
    broker: Mosquitto,
    protocol: Protocol,
    chargers: int,
    *,
    import_limit_kw: float,
    shared_clock: bool = False,
    listed: int = 3,
    **kwargs: float,
) -> AsyncIterator[tuple[Gateway, Centre, list[SimulatedCharger]]]:
    """A gateway with ``chargers`` simulated stations; ``shared_clock``: the gateway and the centre run on
    the chargers' simulated clock too, its intervals as many simulated seconds as they would be real
    ones (else on real time)."""
    site_id = f"site-{protocol.replace('.', '')}"
    clock = SimClock(dt.datetime.now(dt.UTC), speed=SPEED)
    scale = SPEED if shared_clock else 1.0
    gateway = Gateway(
        config(
            site_id,
            broker,
            import_limit_kw=import_limit_kw,
            telemetry_interval_s=0.5 * scale,
            listed=listed,
            **kwargs,
        ),
        outbox_path=tmp_path / "outbox.sqlite",
        control_interval_s=0.5 * scale,
        clock=clock if shared_clock else SYSTEM_CLOCK,
    )
    async with (
        aiomqtt.Client(broker.host, broker.port, identifier=f"centre-{site_id}") as client,
        gateway,
        asyncio.TaskGroup() as tasks,
    ):
        await client.subscribe(subscription(), qos=1)
        centre = Centre(client, site_id, clock.now) if shared_clock else Centre(client, site_id)
        tasks.create_task(centre.listen(), name="centre")
        url = f"ws://127.0.0.1:{gateway.ocpp.port}"
        sims = [
            SimulatedCharger(
                f"cp-{n}",
                url,
                protocol,
                Vehicle(
                    capacity_kwh=80,
                    soc=0.2,
                    max_charge_kw=11,
                    arrival=clock.now(),
                    departure=clock.now() + dt.timedelta(hours=2 + n),
                ),
                clock,
                max_power_w=11_000,
                meter_interval_s=30,
                tick_s=5,
            )
            for n in range(chargers)
        ]
        for sim in sims:
            tasks.create_task(sim.run(), name=f"sim-{sim.station_id}")
        await until(lambda: all(sim.transaction is not None for sim in sims))
        await until(
            lambda: all(
                f"cp-{n}/1" in gateway.evses and gateway.evses[f"cp-{n}/1"].transaction_id
                for n in range(chargers)
            )
        )
        try:
            yield gateway, centre, sims
        finally:
            for task in tasks._tasks:  # type: ignore[attr-defined]
                task.cancel()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_setpoint_from_mqtt_reaches_the_charger_and_comes_back_as_telemetry(
    tmp_path: Path, broker: Mosquitto, protocol: Protocol
) -> None:
    async def scenario() -> None:
        async with running_site(tmp_path, broker, protocol, 1, import_limit_kw=50) as (
            _gateway,
            centre,
            sims,
        ):
            command_id = await centre.command({"cp-0": 4.0})
            await until(lambda: centre.ack(command_id) is not None)
            ack = centre.ack(command_id)
            assert ack is not None and ack.status is AckStatus.ACCEPTED, ack
            # The charger follows the profile and its meter values come back as telemetry.
            await until(lambda: abs(sims[0].power_w - 4000) < 50)
            await until(lambda: (kw := centre.charger_kw("cp-0")) is not None and abs(kw - 4.0) < 0.1)
            seqs = [t.seq for t in centre.telemetry]
            assert seqs == sorted(seqs)

    asyncio.run(scenario())


def test_a_held_setpoint_outlives_the_profiles_that_carry_it(tmp_path: Path, broker: Mosquitto) -> None:
    """Each TxProfile is valid for ``schedule_stale_after_s``; while the centre keeps asking for the
    same power the gateway renews it, so the charger never drops back to its boot default."""

    async def scenario() -> None:
        async with running_site(
            tmp_path, broker, "2.0.1", 1, import_limit_kw=50, shared_clock=True, stale_after_s=120
        ) as (gateway, centre, sims):
            command_id = await centre.command({"cp-0": 4.0}, valid_s=3600)
            await until(lambda: centre.ack(command_id) is not None)
            await until(lambda: abs(sims[0].power_w - 4000) < 50)
            default = gateway.evses["cp-0/1"].default_limit_kw
            assert default > 5.0, (
                "the boot default must differ from the setpoint for this test to mean anything"
            )
            # Five profile lifetimes (120 simulated seconds each) later, still the centre's 4 kW.
            await asyncio.sleep(600 / SPEED)
            assert abs(sims[0].power_w - 4000) < 50

    asyncio.run(scenario())


def test_site_limit_holds_when_the_centre_asks_too_much(tmp_path: Path, broker: Mosquitto) -> None:
    async def scenario() -> None:
        async with running_site(tmp_path, broker, "2.0.1", 3, import_limit_kw=15) as (_gateway, centre, sims):
            command_id = await centre.command({"cp-0": 11.0, "cp-1": 11.0, "cp-2": 11.0})
            await until(lambda: centre.ack(command_id) is not None)
            ack = centre.ack(command_id)
            assert ack is not None
            assert any("site limit" in (e.detail or "") for e in ack.evses)
            await until(lambda: sum(sim.power_w for sim in sims) > 14_000)
            for _ in range(20):  # never above the limit while the chargers follow their profiles
                assert sum(sim.power_w for sim in sims) <= 15_000 + 1e-6
                await asyncio.sleep(0.1)

    asyncio.run(scenario())


def test_fallback_charges_by_deadline_within_the_limit(tmp_path: Path, broker: Mosquitto) -> None:
    async def scenario() -> None:
        async with running_site(tmp_path, broker, "1.6", 2, import_limit_kw=12, listed=2) as (
            _gateway,
            centre,
            sims,
        ):
            # No setpoint ever arrives: fallback mode, reported upstream, earliest departure first.
            await until(lambda: any(s.state is GatewayState.FALLBACK for s in centre.statuses))
            await until(lambda: sims[0].power_w > 10_000)
            assert sims[0].power_w + sims[1].power_w <= 12_000 + 1e-6
            assert sims[1].power_w <= 1_100  # cp-1 leaves an hour later: it gets what is left
            # A fresh schedule brings the gateway back online.
            await centre.command({"cp-0": 3.0, "cp-1": 3.0})
            await until(lambda: centre.statuses and centre.statuses[-1].state is GatewayState.ONLINE)

    asyncio.run(scenario())


def test_fallback_engages_when_the_schedule_runs_out(tmp_path: Path, broker: Mosquitto) -> None:
    async def scenario() -> None:
        async with running_site(tmp_path, broker, "2.1", 1, import_limit_kw=20, listed=1) as (
            gateway,
            centre,
            sims,
        ):
            await centre.command({"cp-0": 5.0}, valid_s=2.0)
            await until(lambda: centre.statuses and centre.statuses[-1].state is GatewayState.ONLINE)
            await until(lambda: abs(sims[0].power_w - 5000) < 50)
            # The centre goes silent; once the setpoint expires the gateway charges on its own.
            await until(lambda: centre.statuses[-1].state is GatewayState.FALLBACK, timeout=10)
            assert "schedule ran out" in (centre.statuses[-1].reason or ""), centre.statuses[-1]
            assert gateway.safety.mode.value == "fallback"
            await until(lambda: sims[0].power_w > 10_000)  # full power (11 kW) within the 20 kW limit

    asyncio.run(scenario())


def idle_charger(gateway: Gateway, charger_id: str, protocol: Protocol, clock: SimClock) -> SimulatedCharger:
    """A connected charger with no vehicle yet (give it one later: ``charger.vehicle = ...``)."""
    return SimulatedCharger(
        charger_id,
        f"ws://127.0.0.1:{gateway.ocpp.port}",
        protocol,
        None,
        clock,
        max_power_w=11_000,
        meter_interval_s=30,
        tick_s=5,
    )


def test_the_gateway_hands_back_the_idle_reserve_on_plug_in(tmp_path: Path, broker: Mosquitto) -> None:
    """cp-1 is idle, so its reserve goes to cp-0, which takes the whole site; when a vehicle plugs in
    at cp-1 it gets the reserve back within the gateway's reaction time, and the metered site import
    never passes the limit on the way."""
    limit_kw = 11.0

    async def scenario() -> None:
        async with running_site(
            tmp_path,
            broker,
            "2.0.1",
            1,
            import_limit_kw=limit_kw,
            shared_clock=True,
            charger_response_s=60,
            listed=2,
        ) as (gateway, centre, sims):
            clock = sims[0].clock
            idle = idle_charger(gateway, "cp-1", "2.0.1", clock)
            async with asyncio.TaskGroup() as tasks:
                station = tasks.create_task(idle.run(), name="idle-charger")
                await until(lambda: idle.connected.is_set() and "cp-1" in gateway.ocpp.connected)
                reserve_kw = gateway.default_limit_kw  # 11 kW / 2 listed chargers
                assert reserve_kw == pytest.approx(limit_kw / 2)
                command_id = await centre.command({"cp-0": 11.0}, valid_s=3600)
                await until(lambda: centre.ack(command_id) is not None)
                # The idle charger gives its reserve up (its default limit is lowered first) and cp-0
                # takes the whole site, not 11 kW less one reserve; two control intervals later still.
                await until(lambda: sims[0].power_w > 1000 * limit_kw - 100)
                await clock.sleep(60)
                assert sims[0].power_w > 1000 * limit_kw - 100
                assert gateway.idle_limit_kw("cp-1") == 0.0
                assert gateway.idle_reserve_kw() == 0.0

                site_w: list[float] = []

                async def meter() -> None:  # the site's import after every step of every task
                    while True:
                        site_w.append(sims[0].power_w + idle.power_w)
                        await asyncio.sleep(0)

                metering = tasks.create_task(meter(), name="site-meter")
                plugged_at = clock.now()
                idle.vehicle = Vehicle(
                    capacity_kwh=80,
                    soc=0.2,
                    max_charge_kw=11,
                    arrival=plugged_at,
                    departure=plugged_at + dt.timedelta(hours=3),
                )
                await until(lambda: idle.power_w > 1000 * reserve_kw - 100)
                reaction = clock.now() - plugged_at
                await until(lambda: sims[0].power_w < 1000 * (limit_kw - reserve_kw) + 100)
                metering.cancel()
                station.cancel()
            # Plug-in is seen at the charger's next step (5 s); then one control step, cp-0's reading
            # showing its reduction (a meter value every 30 s) and the push to cp-1.
            assert reaction <= dt.timedelta(seconds=60), reaction
            assert max(site_w) <= 1000 * limit_kw + 1, max(site_w)
            assert len(site_w) > 100

    asyncio.run(scenario())


def test_plugged_vehicles_are_not_held_to_one_reserve_each(tmp_path: Path, broker: Mosquitto) -> None:
    """Two vehicles and an idle charger at a 15 kW site (5 kW reserve per charger): the vehicles share
    all 15 kW, not the 2 x 5 kW left beside an idle charger's reserve; each is capped by the site
    limit, and the telemetry and the acknowledgement say so."""
    limit_kw = 15.0

    async def scenario() -> None:
        async with running_site(tmp_path, broker, "1.6", 2, import_limit_kw=limit_kw, shared_clock=True) as (
            gateway,
            centre,
            sims,
        ):
            idle = idle_charger(gateway, "cp-2", "1.6", sims[0].clock)
            async with asyncio.TaskGroup() as tasks:
                station = tasks.create_task(idle.run(), name="idle-charger")
                await until(lambda: idle.connected.is_set() and "cp-2" in gateway.ocpp.connected)
                assert gateway.default_limit_kw == pytest.approx(5.0)
                command_id = await centre.command({"cp-0": 11.0, "cp-1": 11.0}, valid_s=3600)
                await until(lambda: all(abs(sim.power_w - 7500) < 50 for sim in sims))
                await until(lambda: centre.ack(command_id) is not None)
                ack = centre.ack(command_id)
                assert ack is not None
                # (a vehicle still drawing less than its share is held near its draw for a step or two)
                assert all(
                    re.fullmatch(r"limited to \d+\.\d\d kW by the site limit", e.detail or "")
                    for e in ack.evses
                )

                def capped() -> bool:
                    last = centre.telemetry[-1] if centre.telemetry else None
                    return (
                        last is not None
                        and all(
                            e.limit is not None
                            and e.limit.reason is LimitReason.SITE_LIMIT
                            and e.limit.power_kw == pytest.approx(7.5)
                            for e in last.evses
                        )
                        and len(last.evses) == 2
                    )

                await until(capped)
                station.cancel()

    asyncio.run(scenario())


@pytest.mark.parametrize("efficiency", [1.0, 0.92])
def test_a_discharged_vehicle_is_charged_to_its_target_by_net_energy(
    tmp_path: Path, broker: Mosquitto, efficiency: float
) -> None:
    """The vehicle asks for 1 kWh (its battery's 1 kWh / ``efficiency``), gives 0.5 kWh back on the
    centre's request, then may charge: the gateway counts what it delivered as import minus export,
    and the export's losses on the way back, so the vehicle reaches its target (its charger then ends
    the transaction). Counting the import register alone, it stopped 0.5 kWh short; counting net
    energy without the losses, a lossy vehicle (0.92 each way) stopped 0.09 kWh short."""

    async def scenario() -> None:
        site_id = "site-v2g"
        clock = SimClock(dt.datetime.now(dt.UTC), speed=240)
        gateway = Gateway(
            config(site_id, broker, import_limit_kw=50, export_limit_kw=50, telemetry_interval_s=30),
            outbox_path=tmp_path / "outbox.sqlite",
            control_interval_s=30,
            clock=clock,
        )
        vehicle = Vehicle(
            capacity_kwh=10,
            soc=0.5,
            target_soc=0.6,
            max_charge_kw=11,
            max_discharge_kw=11,
            efficiency=efficiency,
            arrival=clock.now(),
            departure=clock.now() + dt.timedelta(hours=4),
        )
        async with (
            aiomqtt.Client(broker.host, broker.port, identifier=f"centre-{site_id}") as client,
            gateway,
            asyncio.TaskGroup() as tasks,
        ):
            await client.subscribe(subscription(), qos=1)
            centre = Centre(client, site_id, clock.now)
            tasks.create_task(centre.listen(), name="centre")
            sim = SimulatedCharger(
                "cp-0",
                f"ws://127.0.0.1:{gateway.ocpp.port}",
                "2.1",
                vehicle,
                clock,
                max_power_w=11_000,
                max_discharge_w=11_000,
                meter_interval_s=30,
                tick_s=5,
            )
            tasks.create_task(sim.run(), name="sim-cp-0")
            await until(lambda: (view := gateway.evses.get("cp-0/1")) and view.energy_request_kwh)
            assert gateway.evses["cp-0/1"].energy_request_kwh == pytest.approx(1.0 / efficiency, abs=0.02)

            await centre.command({"cp-0": -10.0}, valid_s=3600)
            await until(lambda: sim.export_wh >= 500)
            await centre.command({"cp-0": 11.0}, valid_s=3600)
            exported_kwh = sim.export_wh / 1000

            def net_reported() -> bool:  # the centre is told the net energy, negative after discharge
                return any(
                    e.energy_kwh is not None and e.energy_kwh < -0.4
                    for t in centre.telemetry
                    for e in t.evses
                )

            await until(sim.finished.is_set, timeout=30)
            await until(net_reported)
            assert vehicle.soc == pytest.approx(0.6, abs=0.002)
            put_back_kwh = exported_kwh / efficiency**2  # the battery lost export / η, refilled at η
            assert sim.import_wh / 1000 == pytest.approx(1.0 / efficiency + put_back_kwh, abs=0.05)
            for task in tasks._tasks:  # type: ignore[attr-defined]
                task.cancel()

    asyncio.run(scenario())


def test_a_charger_whose_reserve_was_reclaimed_does_not_take_it_back_by_rebooting(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """cp-1 is idle, its reserve went to cp-0 (11 kW of an 11 kW site); cp-1 reboots and a vehicle
    plugs in at once: the boot TxDefaultProfile keeps cp-1 at what it is counted at (0 kW), so the
    site's metered import never passes the limit while the gateway moves power back. It used to get
    the full reserve at every boot: 11 + 5.5 kW."""
    limit_kw = 11.0

    async def scenario() -> None:
        async with running_site(
            tmp_path, broker, "2.0.1", 1, import_limit_kw=limit_kw, shared_clock=True, listed=2
        ) as (gateway, centre, sims):
            clock = sims[0].clock
            idle = idle_charger(gateway, "cp-1", "2.0.1", clock)
            async with asyncio.TaskGroup() as tasks:
                station = tasks.create_task(idle.run(), name="idle-charger")
                await until(lambda: idle.connected.is_set() and "cp-1" in gateway.ocpp.connected)
                command_id = await centre.command({"cp-0": 11.0}, valid_s=3600)
                await until(lambda: centre.ack(command_id) is not None)
                await until(lambda: sims[0].power_w > 1000 * limit_kw - 100)
                assert gateway.idle_limit_kw("cp-1") == 0.0

                site_w: list[float] = []

                async def meter() -> None:  # the site's import after every step of every task
                    while True:
                        site_w.append(sims[0].power_w + idle.power_w)
                        await asyncio.sleep(0)

                metering = tasks.create_task(meter(), name="site-meter")
                idle.vehicle = Vehicle(
                    capacity_kwh=80,
                    soc=0.2,
                    max_charge_kw=11,
                    arrival=clock.now(),
                    departure=clock.now() + dt.timedelta(hours=3),
                )
                await idle.reboot()
                await until(lambda: idle.transaction is not None and idle.connected.is_set())
                await until(lambda: idle.power_w > 1000)  # the gateway gives cp-1 power back
                await clock.sleep(60)
                metering.cancel()
                station.cancel()
            assert max(site_w) <= 1000 * limit_kw + 1, max(site_w)
            assert len(site_w) > 100

    asyncio.run(scenario())
