"""The site limit holds at the meter through gateway restarts, unreachable chargers and reboots.

Real peers: simulated OCPP stations (:mod:`chargersim.stations`) against the real gateway, a
test-owned Mosquitto and a centre client. Every test samples the site's import as the simulated
chargers draw it (the sum of their power, many times per simulated second) and asserts it never
passes the import limit. Each reproduces a failure measured on the gateway before
:mod:`site_gateway.installed`: after a restart while the centre was down, vehicles drew up to 68 kW at
a 40 kW site; a plan changed while a charger was unreachable drew 56 kW; a reboot that reused a
transaction id left a vehicle on its default while the gateway believed it held its TxProfile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
from mosquitto import Mosquitto, free_port
from test_gateway import Centre, until

from chargersim.clock import SimClock
from chargersim.stations import Protocol, SimulatedCharger
from chargersim.vehicles import Vehicle
from site_gateway.config import GatewayConfig
from site_gateway.gateway import Gateway
from site_gateway.installed import InstalledLimits
from wire.contract import AckStatus, subscription

SPEED = 60.0
"""Simulated seconds per real second, for the chargers, the gateway and the centre alike."""


def site_config(
    broker: Mosquitto, port: int, chargers: int, *, import_limit_kw: float, stale_after_s: float = 900
) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "site": {"id": "site-r", "import_limit_kw": import_limit_kw},
            "ocpp": {"host": "127.0.0.1", "port": port},
            "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}"},
            "control": {
                "schedule_stale_after_s": stale_after_s,
                "telemetry_interval_s": 30,
                "charger_response_s": 60,
            },
            "chargers": [{"id": f"cp-{n}", "max_charge_kw": 22, "limit_unit": "W"} for n in range(chargers)],
        }
    )


def station(
    n: int, port: int, clock: SimClock, protocol: Protocol = "2.0.1", max_kw: float = 11
) -> SimulatedCharger:
    vehicle = Vehicle(
        capacity_kwh=200,
        soc=0.2,
        max_charge_kw=max_kw,
        arrival=clock.now(),
        departure=clock.now() + dt.timedelta(hours=2 + n),
    )
    return SimulatedCharger(
        f"cp-{n}",
        f"ws://127.0.0.1:{port}",
        protocol,
        vehicle,
        clock,
        max_power_w=max_kw * 1000,
        meter_interval_s=30,
        tick_s=5,
    )


class SiteMeter:
    """The site's import as the chargers draw it [W], sampled every 10 ms of real time."""

    def __init__(self, sims: list[SimulatedCharger]) -> None:
        self.sims = sims
        self.samples: list[float] = []

    def now_w(self) -> float:
        return sum(max(sim.power_w, 0.0) for sim in self.sims)

    async def run(self) -> None:
        while True:
            self.samples.append(self.now_w())
            await asyncio.sleep(0.01)

    @property
    def peak_kw(self) -> float:
        return max(self.samples, default=0.0) / 1000


@asynccontextmanager
async def gateway_on(config: GatewayConfig, tmp_path: Path, clock: SimClock) -> AsyncIterator[Gateway]:
    """A gateway process: its outbox and installed limits in ``tmp_path``, which a restart keeps."""
    gateway = Gateway(config, outbox_path=tmp_path / "outbox.sqlite", control_interval_s=30, clock=clock)
    async with gateway:
        yield gateway


@asynccontextmanager
async def centre_of(broker: Mosquitto, clock: SimClock) -> AsyncIterator[Centre]:
    async with (
        aiomqtt.Client(broker.host, broker.port, identifier="centre-site-r") as client,
        asyncio.TaskGroup() as tasks,
    ):
        await client.subscribe(subscription(), qos=1)
        centre = Centre(client, "site-r", clock.now)
        listening = tasks.create_task(centre.listen(), name="centre")
        try:
            yield centre
        finally:
            listening.cancel()


def charging(gateway: Gateway, sims: list[SimulatedCharger]) -> Callable[[], bool]:
    return lambda: all(
        (view := gateway.evses.get(f"{sim.station_id}/1")) is not None and view.transaction_id is not None
        for sim in sims
    )


def near(sim: SimulatedCharger, kw: float) -> Callable[[], bool]:
    return lambda: abs(sim.power_w - kw * 1000) < 100


def test_a_restarted_gateway_counts_the_chargers_it_has_not_heard_from(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """cp-0 and cp-1 run on TxProfiles of 11 and 9 kW from the first gateway process (20 kW site) and
    stay offline across its restart; the centre is down. The new process must count them at what
    they were given, so cp-2 and cp-3, which reconnect, get nothing more: before, it counted only the
    chargers it had heard from and gave them 11 and 9 kW (40 kW at the meter)."""
    limit_kw = 20.0

    async def scenario() -> None:
        clock = SimClock(dt.datetime.now(dt.UTC), speed=SPEED)
        port = free_port()
        config = site_config(broker, port, 4, import_limit_kw=limit_kw)
        sims = [station(n, port, clock) for n in range(4)]
        meter = SiteMeter(sims)
        async with asyncio.TaskGroup() as tasks:
            runs = [tasks.create_task(sim.run(), name=sim.station_id) for sim in sims]
            async with gateway_on(config, tmp_path, clock) as first, centre_of(broker, clock) as centre:
                await until(charging(first, sims))
                await centre.command({"cp-0": 11.0, "cp-1": 9.0, "cp-2": 0.0, "cp-3": 0.0}, valid_s=3600)
                await until(lambda: near(sims[0], 11)() and near(sims[1], 9)() and sims[2].power_w < 100)
                metering = tasks.create_task(meter.run(), name="site-meter")
                await sims[0].disconnect()
                await sims[1].disconnect()
            # The first process is gone; cp-0 and cp-1 keep drawing on their TxProfiles.
            async with gateway_on(config, tmp_path, clock) as second:
                await until(charging(second, sims[2:]))
                await asyncio.sleep(4)  # 240 simulated seconds of fallback control
                assert near(sims[0], 11)() and near(sims[1], 9)(), "the offline chargers must keep drawing"
            metering.cancel()
            for run in runs:
                run.cancel()
        assert len(meter.samples) > 100
        assert meter.peak_kw <= limit_kw + 0.001, f"site drew {meter.peak_kw:.2f} kW at a {limit_kw} kW limit"

    asyncio.run(scenario())


def test_a_reduction_a_charger_could_not_take_holds_back_the_increases(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """cp-0 (11 kW) drops off the network; the centre moves its power to cp-2. The reduction cannot
    reach cp-0, which keeps drawing 11 kW until its TxProfile expires, so cp-1 and cp-2 share only
    what is left: before, the gateway raised cp-2 anyway after ``charger_response_s`` (33 kW at a
    22 kW site). The acknowledgement says cp-0's setpoint was not applied."""
    limit_kw = 22.0

    async def scenario() -> None:
        clock = SimClock(dt.datetime.now(dt.UTC), speed=SPEED)
        port = free_port()
        config = site_config(broker, port, 3, import_limit_kw=limit_kw)
        sims = [station(n, port, clock) for n in range(3)]
        meter = SiteMeter(sims)
        async with (
            gateway_on(config, tmp_path, clock) as gateway,
            centre_of(broker, clock) as centre,
            asyncio.TaskGroup() as tasks,
        ):
            runs = [tasks.create_task(sim.run(), name=sim.station_id) for sim in sims]
            await until(charging(gateway, sims))
            await centre.command({"cp-0": 11.0, "cp-1": 11.0, "cp-2": 0.0}, valid_s=3600)
            await until(lambda: near(sims[0], 11)() and near(sims[1], 11)())
            metering = tasks.create_task(meter.run(), name="site-meter")
            await sims[0].disconnect()
            await until(lambda: "cp-0" not in gateway.ocpp.connected)
            command_id = await centre.command({"cp-0": 0.0, "cp-1": 11.0, "cp-2": 11.0}, valid_s=3600)
            await until(lambda: centre.ack(command_id) is not None)
            await asyncio.sleep(4)  # several control steps and charger_response_s (1 s real) over
            assert near(sims[0], 11)()
            assert sims[1].power_w + sims[2].power_w <= 11_000 + 1
            ack = centre.ack(command_id)
            assert ack is not None
            cp0 = next(e for e in ack.evses if e.charger_id == "cp-0")
            assert cp0.status is AckStatus.REJECTED and "not connected" in (cp0.detail or ""), cp0
            metering.cancel()
            for run in runs:
                run.cancel()
        assert meter.peak_kw <= limit_kw + 0.001, f"site drew {meter.peak_kw:.2f} kW at a {limit_kw} kW limit"

    asyncio.run(scenario())


def test_a_reboot_with_a_vehicle_plugged_in_stays_within_the_limit(tmp_path: Path, broker: Mosquitto) -> None:
    """cp-0 (a 22 kW vehicle, held at 11 kW) reboots with its vehicle plugged in. It keeps its
    profiles across the reboot (as OCPP requires), so its new transaction starts at its
    TxDefaultProfile, not at its 22 kW hardware maximum, and the gateway re-plans it from there. A
    station that forgets its profiles (``keeps_profiles=False``, the simulator before) drew 33 kW."""
    limit_kw = 22.0

    async def scenario() -> None:
        clock = SimClock(dt.datetime.now(dt.UTC), speed=SPEED)
        port = free_port()
        config = site_config(broker, port, 2, import_limit_kw=limit_kw)
        sims = [station(0, port, clock, max_kw=22), station(1, port, clock)]
        meter = SiteMeter(sims)
        async with (
            gateway_on(config, tmp_path, clock) as gateway,
            centre_of(broker, clock) as centre,
            asyncio.TaskGroup() as tasks,
        ):
            runs = [tasks.create_task(sim.run(), name=sim.station_id) for sim in sims]
            await until(charging(gateway, sims))
            await centre.command({"cp-0": 11.0, "cp-1": 11.0}, valid_s=3600)
            await until(lambda: near(sims[0], 11)() and near(sims[1], 11)())
            metering = tasks.create_task(meter.run(), name="site-meter")
            old = sims[0].transaction
            await sims[0].reboot()
            await until(lambda: sims[0].transaction is not None and sims[0].transaction != old)
            await until(lambda: sims[0].power_w > 1000)
            await asyncio.sleep(3)
            metering.cancel()
            for run in runs:
                run.cancel()
        assert sims[0].reboots == 1
        assert meter.peak_kw <= limit_kw + 0.001, f"site drew {meter.peak_kw:.2f} kW at a {limit_kw} kW limit"

    asyncio.run(scenario())


def test_a_reboot_that_reuses_its_transaction_id_gets_its_profile_again(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """cp-0 is held at 4 kW; it reboots and starts its new transaction under the old id, never
    reporting the old one's end. Its TxProfile went with the old transaction, so it runs on its 7.4 kW
    default: the gateway treats the BootNotification as "state unknown" and installs the 4 kW again
    at once. Before, it believed the old profile installed and the vehicle drew 7.4 kW until the
    profile's renewal (half of ``schedule_stale_after_s``)."""

    async def scenario() -> None:
        clock = SimClock(dt.datetime.now(dt.UTC), speed=SPEED)
        port = free_port()
        config = site_config(broker, port, 1, import_limit_kw=50, stale_after_s=3600)
        sims = [station(0, port, clock)]
        async with (
            gateway_on(config, tmp_path, clock) as gateway,
            centre_of(broker, clock) as centre,
            asyncio.TaskGroup() as tasks,
        ):
            runs = [tasks.create_task(sim.run(), name=sim.station_id) for sim in sims]
            await until(charging(gateway, sims))
            await centre.command({"cp-0": 4.0}, valid_s=7200)
            await until(near(sims[0], 4))
            assert sims[0].transaction is not None
            old_id = sims[0].transaction.id
            await sims[0].reboot(reuse_transaction_id=True)
            await until(lambda: sims[0].transaction is not None and sims[0].power_w > 100)
            assert sims[0].transaction is not None and sims[0].transaction.id == old_id
            await until(near(sims[0], 4), timeout=8)  # 8 s real: far less than the renewal (30 s)
            for run in runs:
                run.cancel()

    asyncio.run(scenario())


def test_installed_limits_survive_a_restart_and_settle_as_charged(tmp_path: Path) -> None:
    """The file alone: write-ahead as the higher of old and new, settled by the answer, reloaded."""
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    until_ = now + dt.timedelta(minutes=15)
    path = tmp_path / "installed.sqlite"
    with InstalledLimits(path, clock=lambda: now) as installed:
        installed.default_installed("cp-0", 5.0)
        before = installed.sending_tx("cp-0", 1, "tx-1", 11.0, until_)
        assert installed.bound("cp-0", 1, now, 5.0) == (11.0, 0.0)  # not yet answered: may hold it
        installed.tx_settled("cp-0", 1, "tx-1", power_kw=11.0, valid_until=until_, before=before)
        before = installed.sending_tx("cp-0", 1, "tx-1", 2.0, until_)
        assert installed.bound("cp-0", 1, now, 5.0) == (11.0, 0.0)  # a reduction counts once taken
        installed.tx_settled("cp-0", 1, "tx-1", power_kw=None, valid_until=until_, before=before)
        assert installed.bound("cp-0", 1, now, 5.0) == (11.0, 0.0)  # refused: the old one holds
        before = installed.sending_tx("cp-0", 1, "tx-1", -3.0, until_)
        installed.tx_settled("cp-0", 1, "tx-1", power_kw=-3.0, valid_until=until_, before=before)
        assert installed.bound("cp-0", 1, now, 5.0) == (0.0, 3.0)
    with InstalledLimits(path, clock=lambda: now) as reopened:
        assert reopened.chargers() == {"cp-0"}
        assert reopened.default_kw("cp-0") == 5.0
        assert reopened.bound("cp-0", 1, now, 5.0) == (0.0, 3.0)
        reopened.state_unknown("cp-0")  # it booted: the default may apply again
        assert reopened.bound("cp-0", 1, now, 5.0) == (5.0, 3.0)
        assert reopened.bound("cp-0", 1, until_, 5.0) == (5.0, 0.0)  # expired: the default
        reopened.tx_ended("cp-0", 1, "tx-1")
        assert reopened.tx("cp-0", 1) is None
