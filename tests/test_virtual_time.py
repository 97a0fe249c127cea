"""Virtual time (:mod:`wire.virtual_time`, :mod:`wire.clock`): time moves only when nothing is ready.

An hour's sleep takes no real time; timers keep their order; messages on loopback sockets arrive before
time moves; a thread holds time until it ends (or is charged its modelled latency); the same seed gives
the same timestamps. Then the real gateway, simulated OCPP chargers and the in-process MQTT broker run
one simulated hour in a few real seconds, twice, and meter the same energy per charger.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from aggregator.runtime.broker import EmbeddedBroker
from chargersim.stations import SimulatedCharger
from chargersim.vehicles import Vehicle
from site_gateway.config import GatewayConfig
from site_gateway.gateway import Gateway
from wire.clock import SYSTEM_CLOCK, Clock, SimClock, loop_clock
from wire.contract import SetpointCommand, Telemetry, decode_message, encode, setpoint_topic, subscription
from wire.virtual_time import VirtualTimeEventLoop, run

START = dt.datetime(2025, 1, 15, 8, 0, tzinfo=dt.UTC)


def _loop() -> VirtualTimeEventLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeEventLoop)
    return loop


# ------------------------------------------------------------------------------------------ the loop


def test_an_hour_of_sleep_takes_no_real_time() -> None:
    async def scenario() -> tuple[float, float, dt.datetime]:
        clock = loop_clock(START)
        before = time.perf_counter()
        await asyncio.sleep(3600)
        return _loop().time(), time.perf_counter() - before, clock.now()

    virtual_s, real_s, now = run(scenario())
    assert virtual_s == 3600.0
    assert now == START + dt.timedelta(hours=1)
    assert real_s < 0.1


def test_timers_fire_in_order_at_their_virtual_times() -> None:
    async def scenario() -> list[tuple[float, str]]:
        loop = _loop()
        fired: list[tuple[float, str]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await asyncio.sleep(seconds)
            fired.append((loop.time(), name))

        loop.call_later(2.5, lambda: fired.append((loop.time(), "call_later 2.5")))
        loop.call_at(0.75, lambda: fired.append((loop.time(), "call_at 0.75")))
        async with asyncio.TaskGroup() as tasks:
            for name, seconds in (("c", 30.0), ("a", 1.0), ("b", 1.0), ("d", 7200.0), ("e", 0.001)):
                tasks.create_task(sleeper(name, seconds))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(10)
        fired.append((loop.time(), "timeout 5"))
        return fired

    assert run(scenario()) == [
        (0.001, "e"),
        (0.75, "call_at 0.75"),
        (1.0, "a"),  # equal times: in the order they were scheduled
        (1.0, "b"),
        (2.5, "call_later 2.5"),
        (30.0, "c"),
        (7200.0, "d"),
        (7205.0, "timeout 5"),
    ]


def test_loopback_messages_arrive_before_time_moves() -> None:
    """A TCP echo in the same loop: 200 round trips while a 1 ms timer waits, all at virtual time 0."""

    async def scenario() -> tuple[list[float], list[float]]:
        loop = _loop()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ticks: list[float] = []
        ticker = loop.call_later(0.001, lambda: ticks.append(loop.time()))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answered_at: list[float] = []
        for n in range(200):
            writer.write(f"{n}\n".encode())
            # A timeout far shorter than any real round trip: met only because time waits for the echo.
            async with asyncio.timeout(1e-6):
                assert await reader.readline() == f"{n}\n".encode()
            answered_at.append(loop.time())
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(1)
        assert ticker.cancelled() is False
        return answered_at, ticks

    answered_at, ticks = run(scenario())
    assert answered_at == [0.0] * 200
    assert ticks == [0.001]


def test_a_thread_holds_time_until_it_ends() -> None:
    async def scenario() -> tuple[float, list[float], float]:
        loop = _loop()
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.01)
                ticks.append(loop.time())

        async with asyncio.TaskGroup() as tasks:
            tick_task = tasks.create_task(ticker())
            before = time.perf_counter()
            await asyncio.to_thread(time.sleep, 0.2)  # 0.2 real s: a solve, a database write
            real_s = time.perf_counter() - before
            held = loop.time()
            tick_task.cancel()
        return held, ticks, real_s

    held, ticks, real_s = run(scenario())
    assert real_s >= 0.2
    assert held == 0.0, "virtual time moved while the thread ran"
    assert ticks == [], "a timer fired while the thread held time"


def test_a_thread_is_charged_its_modelled_latency() -> None:
    async def scenario() -> tuple[float, float, str]:
        loop = _loop()
        await asyncio.sleep(100)
        fast = await asyncio.to_thread(lambda: "solved")
        after_fast = loop.time()
        await asyncio.to_thread(time.sleep, 0.1)
        return after_fast, loop.time(), fast

    after_fast, after_slow, result = run(scenario(), executor_latency_s=2.5)
    assert result == "solved"
    assert (after_fast, after_slow) == (102.5, 105.0)


def test_an_error_in_a_thread_reaches_the_caller_after_its_latency() -> None:
    def fail() -> None:
        raise ValueError("infeasible")

    async def scenario() -> float:
        with pytest.raises(ValueError, match="infeasible"):
            await asyncio.to_thread(fail)
        return _loop().time()

    assert run(scenario(), executor_latency_s=1.0) == 1.0
    assert run(scenario()) == 0.0


def _answer_later(sock: socket.socket, delay_s: float) -> threading.Thread:
    """A peer the loop knows nothing of (another process, in effect): it answers after ``delay_s``
    real seconds."""
    thread = threading.Thread(target=lambda: (time.sleep(delay_s), sock.sendall(b"answer\n")), daemon=True)
    thread.start()
    return thread


def test_holding_keeps_time_for_threads_the_loop_did_not_start() -> None:
    async def scenario() -> tuple[bytes, float]:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            reader, writer = await asyncio.open_connection(sock=ours)
            with _loop().holding():
                peer = _answer_later(theirs, 0.05)
                async with asyncio.timeout(1):  # would expire at once without the hold
                    answer = await reader.readline()
            peer.join()
            writer.close()
            await writer.wait_closed()
        return answer, _loop().time()

    assert run(scenario()) == (b"answer\n", 0.0)


def _poll_an_outside_peer(delay_s: float, spin_wait_s: float) -> bool:
    """Poll every virtual second, for at most 100, for a peer that answers after ``delay_s`` real s;
    whether it was heard."""

    async def scenario() -> bool:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            reader, writer = await asyncio.open_connection(sock=ours)
            peer = _answer_later(theirs, delay_s)
            answer = asyncio.ensure_future(reader.readline())
            try:
                async with asyncio.timeout(100):
                    while not answer.done():
                        await asyncio.sleep(1)
            except TimeoutError:
                return False
            finally:
                peer.join()
                answer.cancel()
                writer.close()
                await writer.wait_closed()
        return True

    return run(scenario(), spin_polls=10, spin_wait_s=spin_wait_s)


def test_the_spin_guard_waits_for_peers_outside_the_loop() -> None:
    """100 polls of a virtual second take a few real milliseconds; the guard's real waits (50 ms every
    10 jumps) let a peer that answers after 20 real ms be heard, and without them it is not."""
    assert _poll_an_outside_peer(0.02, spin_wait_s=0.05) is True
    assert _poll_an_outside_peer(0.02, spin_wait_s=0.0) is False


def _seeded_scenario(seed: int) -> list[tuple[float, str]]:
    """Workers that sleep random durations and talk over loopback TCP; what happened, and when."""

    async def scenario() -> list[tuple[float, str]]:
        loop = _loop()
        rng = random.Random(seed)
        log: list[tuple[float, str]] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                log.append((loop.time(), f"server got {line.decode().strip()}"))
                await asyncio.sleep(rng.uniform(0, 2))
                writer.write(line.upper())
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def worker(name: str, steps: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for step in range(steps):
                await asyncio.sleep(rng.expovariate(1 / 30))
                writer.write(f"{name}-{step}\n".encode())
                answer = await reader.readline()
                log.append((loop.time(), f"{name} got {answer.decode().strip()}"))
                if rng.random() < 0.3:
                    log.append((loop.time(), f"{name} {await asyncio.to_thread(sum, range(step))}"))
            writer.close()
            await writer.wait_closed()

        async with asyncio.TaskGroup() as tasks:
            for n in range(4):
                tasks.create_task(worker(f"w{n}", 20))
        server.close()
        await server.wait_closed()
        return log

    return run(scenario())


def test_the_same_seed_gives_the_same_timestamps() -> None:
    first, second = _seeded_scenario(7), _seeded_scenario(7)
    assert len(first) >= 160
    assert first == second
    assert _seeded_scenario(8) != first


# ----------------------------------------------------------------------------------------- the clocks


def test_clocks_share_one_protocol() -> None:
    clocks: list[Clock] = [SYSTEM_CLOCK, SimClock(START, speed=60)]
    assert all(c.now().utcoffset() == dt.timedelta(0) for c in clocks)
    ticks = iter([100.0, 100.0, 102.0])
    sim = SimClock(START, speed=60, monotonic=lambda: next(ticks))
    assert (sim.monotonic(), sim.now()) == (0.0, START + dt.timedelta(minutes=2))
    with pytest.raises(ValueError, match="speed must be > 0"):
        SimClock(START, speed=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        SimClock(dt.datetime(2025, 1, 15, 8, 0))


def test_the_loop_clock_sleeps_and_reads_virtual_time() -> None:
    async def scenario() -> tuple[dt.datetime, float]:
        clock = loop_clock(START)
        await clock.sleep(90)
        return clock.now(), clock.monotonic()

    assert run(scenario(), start=1_000.0) == (START + dt.timedelta(seconds=90), 90.0)


def test_the_old_homes_of_the_clock_are_the_same_clock() -> None:
    import chargersim.clock
    import site_gateway.clock
    import wire.clock

    assert chargersim.clock.SimClock is wire.clock.SimClock
    assert site_gateway.clock.Clock is wire.clock.Clock
    assert site_gateway.clock.SYSTEM_CLOCK is wire.clock.SYSTEM_CLOCK


# ------------------------------------------------------- the real gateway, chargers and broker, one hour

CHARGERS = 4
HOUR_S = 3600.0


def _gateway_config(broker: EmbeddedBroker) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "site": {"id": "depot-virtual", "import_limit_kw": 30},
            "ocpp": {"host": "127.0.0.1", "port": 0, "allow_unknown": True},
            "mqtt": {"url": broker.url},
            "control": {"telemetry_interval_s": 60, "charger_response_s": 5},
            "chargers": [
                {"id": f"cp-{n}", "max_charge_kw": 11, "max_discharge_kw": 0, "limit_unit": "W"}
                for n in range(CHARGERS)
            ],
        }
    )


def _vehicles(seed: int) -> list[Vehicle]:
    rng = random.Random(seed)
    return [
        Vehicle(
            capacity_kwh=rng.choice([40, 60, 77]),
            soc=rng.uniform(0.2, 0.6),
            max_charge_kw=11,
            arrival=START + dt.timedelta(minutes=rng.uniform(1, 20)),
            departure=START + dt.timedelta(hours=rng.uniform(2, 8)),
        )
        for _ in range(CHARGERS)
    ]


async def _depot_hour(tmp_path: Path, seed: int) -> dict[str, Any]:
    """One simulated hour: the gateway, CHARGERS chargers, the embedded broker and a centre that sends
    one setpoint after 30 minutes. What each charger metered, and what the centre heard."""
    loop = _loop()
    clock = loop_clock(START)
    telemetry: list[Telemetry] = []
    async with EmbeddedBroker() as broker:
        gateway = Gateway(
            _gateway_config(broker),
            outbox_path=tmp_path / "outbox.sqlite",
            control_interval_s=30,
            clock=clock,
        )
        async with (
            aiomqtt.Client(broker.host, broker.port, identifier="centre") as centre,
            gateway,
            asyncio.TaskGroup() as tasks,
        ):
            await centre.subscribe(subscription(), qos=1)

            async def listen() -> None:
                async for message in centre.messages:
                    _, payload = decode_message(str(message.topic), message.payload)  # type: ignore[arg-type]
                    if isinstance(payload, Telemetry):
                        telemetry.append(payload)

            tasks.create_task(listen(), name="centre")
            sims = [
                SimulatedCharger(
                    f"cp-{n}",
                    f"ws://127.0.0.1:{gateway.ocpp.port}",
                    "1.6" if n % 2 else "2.0.1",
                    vehicle,
                    clock,
                    max_power_w=11_000,
                    meter_interval_s=60,
                    rng=random.Random(seed * 100 + n),
                )
                for n, vehicle in enumerate(_vehicles(seed))
            ]
            runs = [tasks.create_task(sim.run(), name=f"sim-{sim.station_id}") for sim in sims]
            await clock.sleep(HOUR_S / 2)
            now = clock.now()
            command = SetpointCommand(
                site_id=gateway.site_id,
                command_id="cmd-1",
                issued_at=now,
                valid_until=now + dt.timedelta(hours=1),
                setpoints=tuple(  # type: ignore[arg-type]
                    {"charger_id": f"cp-{n}", "evse_id": 1, "power_kw": 4.0 + n} for n in range(CHARGERS)
                ),
            )
            await centre.publish(setpoint_topic(gateway.site_id), encode(command), qos=1)
            await clock.sleep(HOUR_S / 2)
            hour_end = clock.now()
            for task in [*runs, *tasks._tasks]:  # type: ignore[attr-defined]
                task.cancel()
    return {
        "virtual_s": loop.time(),
        "hour_end": hour_end,
        "meter": {
            sim.station_id: [(s.timestamp, round(s.import_wh, 6), round(s.power_w, 6)) for s in sim.meter]
            for sim in sims
        },
        "import_wh": {sim.station_id: sim.import_wh for sim in sims},
        "telemetry": [
            (t.sent_at, tuple((e.charger_id, e.power_kw, e.energy_kwh) for e in t.evses)) for t in telemetry
        ],
    }


def _run_depot_hour(tmp_path: Path, seed: int) -> tuple[dict[str, Any], float]:
    before = time.perf_counter()
    result = run(_depot_hour(tmp_path, seed))
    return result, time.perf_counter() - before


def test_the_real_gateway_runs_a_simulated_hour_in_seconds_and_the_same_seed_meters_the_same(
    tmp_path: Path,
) -> None:
    first, first_real_s = _run_depot_hour(tmp_path / "first", seed=3)
    second, _ = _run_depot_hour(tmp_path / "second", seed=3)

    assert first["hour_end"] == START + dt.timedelta(hours=1)
    assert first_real_s < 30, f"one simulated hour took {first_real_s:.1f} real s"
    assert all(wh > 1000 for wh in first["import_wh"].values()), first["import_wh"]
    # Every charger sampled its meter about once a simulated minute from its arrival on.
    assert all(len(samples) >= 35 for samples in first["meter"].values())
    # The setpoint reached the chargers: after it, each charger drew what the centre asked (4+n kW).
    late = {cp: samples[-1][2] / 1000 for cp, samples in first["meter"].items()}
    assert late == pytest.approx({f"cp-{n}": 4.0 + n for n in range(CHARGERS)}, abs=0.05)
    assert first["meter"] == second["meter"]
    assert first["import_wh"] == second["import_wh"]
    # And the centre heard the same telemetry over MQTT, stamped with the same (virtual) times.
    assert len(first["telemetry"]) >= 55
    assert first["telemetry"] == second["telemetry"]
