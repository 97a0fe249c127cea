"""One site gateway under load: N simulated chargers at one meter value per second, in real time.

Four kinds of process, so the gateway's CPU and memory are its own:

- a private Mosquitto on a free port (no persistence, no logging);
- the gateway (:class:`site_gateway.gateway.Gateway`: OCPP server, safety control, MQTT uplink with its
  SQLite outbox in a temporary directory), started by this script in its own process;
- the chargers (:class:`chargersim.stations.SimulatedCharger`, SimClock speed 1, one MeterValues /
  TransactionEvent per second each), split over ``--fleet-procs`` processes;
- this process: the centre's MQTT client, and the measurements.

After all chargers are charging, one command gives every EVSE a setpoint (the gateway leaves its
fallback), then a warm-up, then the measurement window. In the window, every ``--push-interval`` s
the centre publishes a SetpointCommand changing the setpoints of the next ``--push-size`` chargers
(a rotating subset, a new power each time so every one is pushed). Figures:

- profile push: from ``time.time()`` at the centre's publish to ``time.time()`` in the charger's
  process when the SetChargingProfile carrying that power arrives (``SimulatedCharger.on_profile``);
  and to the CommandAck arriving back at the centre;
- the fleet's and the gateway's OCPP rates: meter samples taken by the chargers, meter readings the
  gateway processed (they differ when the fleet or the gateway falls behind);
- the MQTT messages the centre received per second, by topic, and whether ``seq`` (one per-site
  counter over every topic) is complete: gaps, duplicates and what was still queued at the end;
- the gateway's CPU % (delta utime+stime over delta wall time, from ``/proc/<pid>/stat``) and RSS
  (``VmRSS`` sampled each second, ``VmHWM`` peak), and the CPU of the chargers and the broker.

Target (issue): profile push p99 <= 100 ms with no message lost.

``--metrics on`` serves the gateway's Prometheus metrics (:mod:`site_gateway.metrics`) and scrapes
``/metrics`` every ``--scrape-interval`` s through the window; ``--metrics both`` runs the whole
benchmark without and then with them and prints what they cost in gateway CPU (goal: <= 2 %);
``--metrics hooks`` times the metrics' own code per OCPP call and per scrape, in one process.

    python bench/gateway_load.py [--chargers 500] [--duration 60] [--protocol 2.0.1] [--metrics both]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import getpass
import itertools
import logging
import math
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiomqtt
from prometheus_client import generate_latest
from report import command, machine, make_console, print_tables

from chargersim.clock import SimClock
from chargersim.stations import PROTOCOLS, Protocol, SimulatedCharger
from chargersim.vehicles import Vehicle
from site_gateway.config import GatewayConfig
from site_gateway.gateway import Gateway
from site_gateway.ocpp.events import MeterReading, OcppEvent
from wire.contract import (
    CommandAck,
    ContractError,
    SetpointCommand,
    SiteMessage,
    decode_message,
    encode,
    setpoint_topic,
    subscription,
)

SITE_ID = "bench-site"
TARGET_P99_MS = 100.0
INITIAL_KW = 10.0
"""Every EVSE's setpoint before the window; the pushed powers (3..9 kW) always differ from it."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
MOSQUITTO = os.environ.get("MOSQUITTO", shutil.which("mosquitto") or "/usr/sbin/mosquitto")


def charger_id(i: int) -> str:
    return f"cp-{i:04d}"


def pushed_kw(round_no: int) -> float:
    """The power of every push in one round over all subsets: a charger's next power always differs
    from its last by at least 1 kW (the gateway only re-sends changes), and never equals INITIAL_KW."""
    return 3.0 + round_no % 7


# ----------------------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process [s] (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM [kB] from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


@dataclass
class CpuMeter:
    """CPU % of one process between successive samples, and over the whole window."""

    pid: int
    samples: list[float] = field(default_factory=list)
    _last: tuple[float, float] | None = None
    _first: tuple[float, float] | None = None

    def sample(self) -> None:
        now = (time.monotonic(), cpu_seconds(self.pid))
        if self._last is not None:
            wall, cpu = now[0] - self._last[0], now[1] - self._last[1]
            self.samples.append(100 * cpu / wall if wall > 0 else 0.0)
        else:
            self._first = now
        self._last = now

    @property
    def mean(self) -> float:
        if self._first is None or self._last is None or self._last[0] <= self._first[0]:
            return float("nan")
        return 100 * (self._last[1] - self._first[1]) / (self._last[0] - self._first[0])


# ------------------------------------------------------------------------------------------ broker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def mosquitto(directory: Path) -> Any:
    """A private broker on a free port: no persistence, no log (its CPU is measured, not the disk's)."""
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
        "persistence false\nmax_queued_messages 100000\nlog_dest none\n"
    )
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {process.stderr.read() if process.stderr else ''!r}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.02)
        yield process, port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------ gateway process


def gateway_config(
    chargers: int, broker_port: int, telemetry_interval_s: float, *, metrics: bool = False
) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "site": {"id": SITE_ID, "import_limit_kw": chargers * 22 + 100},
            "ocpp": {"host": "127.0.0.1", "port": 0, "allow_unknown": False},
            "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}"},
            "control": {"telemetry_interval_s": telemetry_interval_s},
            "chargers": [
                {"id": charger_id(i), "max_charge_kw": 22, "limit_unit": "W"} for i in range(chargers)
            ],
            **({"metrics": {"host": "127.0.0.1", "port": 0}} if metrics else {}),
        }
    )


class CountingGateway(Gateway):
    """The gateway, counting the meter readings it has processed (for the achieved OCPP rate)."""

    meter_readings = 0

    async def _on_ocpp_event(self, event: OcppEvent) -> None:
        if isinstance(event, MeterReading):
            self.meter_readings += 1
        await super()._on_ocpp_event(event)


def gateway_process(conn: Connection, config_json: str, outbox: str, profile_path: str | None) -> None:
    """Entry point of the gateway's process; talks to the bench over ``conn``."""
    logging.basicConfig(level=logging.WARNING, format="gateway %(levelname)s %(name)s: %(message)s")
    asyncio.run(_gateway(conn, GatewayConfig.model_validate_json(config_json), Path(outbox), profile_path))


async def _gateway(conn: Connection, config: GatewayConfig, outbox: Path, profile_path: str | None) -> None:
    import cProfile

    profiler = cProfile.Profile() if profile_path else None
    gateway = CountingGateway(config, outbox_path=outbox)
    async with gateway:
        conn.send(("ready", (gateway.ocpp.port, gateway.metrics.port)))
        while True:
            request = await asyncio.to_thread(conn.recv)
            if request == "stats":
                charging = sum(view.transaction_id is not None for view in gateway.evses.values())
                conn.send(("stats", (gateway.meter_readings, charging)))
            elif request == "profile-start" and profiler is not None:
                profiler.enable()
            elif request == "stop":
                break
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(profile_path))
        await asyncio.sleep(1.0)  # let the outbox drain what the last second queued
        pending = len(gateway.uplink.outbox)
    conn.send(("stopped", {"pending": pending}))


# -------------------------------------------------------------------------------------- fleet process


def fleet_process(conn: Connection, url: str, protocol: Protocol, ids: list[int]) -> None:
    """Entry point of one charger process: ``ids`` chargers against ``url``."""
    logging.basicConfig(level=logging.WARNING, format="fleet %(levelname)s %(name)s: %(message)s")
    asyncio.run(_fleet(conn, url, protocol, ids))


def profile_limit(payload: dict[str, Any]) -> float | None:
    """The first period's limit of a TxProfile (1.6: ``charging_schedule`` is a dict, 2.x a list)."""
    if payload.get("charging_profile_purpose") != "TxProfile":
        return None
    schedule = payload.get("charging_schedule")
    if isinstance(schedule, list):
        schedule = schedule[0] if schedule else None
    periods = (schedule or {}).get("charging_schedule_period") or []
    return float(periods[0]["limit"]) if periods else None


async def _fleet(conn: Connection, url: str, protocol: Protocol, ids: list[int]) -> None:
    clock = SimClock(dt.datetime.now(dt.UTC), speed=1.0)
    received: list[tuple[int, float, float]] = []  # (charger, time.time(), limit W)

    def recorder(i: int) -> Any:
        def on_profile(evse_id: int, payload: dict[str, Any]) -> None:
            limit = profile_limit(payload)
            if limit is not None:
                received.append((i, time.time(), limit))

        return on_profile

    sims = [
        SimulatedCharger(
            charger_id(i),
            url,
            protocol,
            Vehicle(
                capacity_kwh=100,
                soc=0.2,
                max_charge_kw=11,
                arrival=clock.now(),
                departure=clock.now() + dt.timedelta(hours=8),
            ),
            clock,
            max_power_w=22_000,
            meter_interval_s=1.0,
            tick_s=1.0,
            on_profile=recorder(i),
        )
        for i in ids
    ]
    async with asyncio.TaskGroup() as tasks:
        runs = [tasks.create_task(sim.run(), name=f"sim-{sim.station_id}") for sim in sims]
        while True:
            request = await asyncio.to_thread(conn.recv)
            if request == "charging":
                conn.send(("charging", sum(sim.transaction is not None for sim in sims)))
            elif request == "stats":
                conn.send(("stats", sum(len(sim.meter) for sim in sims)))
            elif request == "stop":
                break
        for run in runs:
            run.cancel()
    conn.send(("stopped", received))


class Peer:
    """A child process and its pipe."""

    def __init__(self, target: Any, args: tuple[Any, ...], name: str) -> None:
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def ask(self, request: str, expect: str, timeout: float = 60.0) -> Any:
        self.conn.send(request)
        return await self.reply(expect, timeout)

    async def reply(self, expect: str, timeout: float = 60.0) -> Any:
        ready = await asyncio.to_thread(self.conn.poll, timeout)
        if not ready:
            raise TimeoutError(f"{self.process.name}: no {expect!r} within {timeout} s")
        kind, value = self.conn.recv()
        if kind != expect:
            raise RuntimeError(f"{self.process.name}: expected {expect!r}, got {kind!r}")
        return value

    def end(self) -> None:
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# -------------------------------------------------------------------------------------------- centre


@dataclass
class Push:
    command_id: str
    published: float
    powers_kw: dict[int, float]
    in_window: bool
    acked: float | None = None


class Centre:
    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.received: list[tuple[float, str, int]] = []  # (time.time(), kind, seq)
        self.pushes: dict[str, Push] = {}
        self.bad = 0
        self._ids = itertools.count(1)

    async def listen(self) -> None:
        async for message in self.client.messages:
            now = time.time()
            try:
                parsed, payload = decode_message(str(message.topic), message.payload)
            except ContractError:
                self.bad += 1
                continue
            if isinstance(payload, SiteMessage):
                self.received.append((now, parsed.kind.value, payload.seq))
            if isinstance(payload, CommandAck) and payload.command_id in self.pushes:
                push = self.pushes[payload.command_id]
                if push.acked is None:
                    push.acked = now
                if payload.status.value != "accepted":
                    print(f"command {payload.command_id} {payload.status.value}: {payload.error}")

    async def push(self, powers_kw: dict[int, float], *, in_window: bool) -> Push:
        now = dt.datetime.now(dt.UTC)
        command_id = f"cmd-{next(self._ids)}"
        message = SetpointCommand(
            site_id=SITE_ID,
            command_id=command_id,
            issued_at=now - dt.timedelta(seconds=1),
            valid_until=now + dt.timedelta(hours=1),
            setpoints=tuple(
                {"charger_id": charger_id(i), "evse_id": 1, "power_kw": kw} for i, kw in powers_kw.items()
            ),
        )
        data = encode(message)
        published = time.time()
        push = Push(command_id, published, powers_kw, in_window)
        self.pushes[command_id] = push
        await self.client.publish(setpoint_topic(SITE_ID), data, qos=1)
        return push


# --------------------------------------------------------------------------------------------- run


@dataclass
class Results:
    args: argparse.Namespace
    push_ms: list[float]
    ack_ms: list[float]
    pushes: int
    missing_pushes: int
    missing_acks: int
    window_s: float
    fleet_samples: int
    gateway_readings: int
    mqtt_by_kind: Counter[str]
    seq_gaps: int
    seq_missing: list[int]
    seq_duplicates: int
    seq_pending: int
    gw_cpu: CpuMeter
    fleet_cpu: list[CpuMeter]
    broker_cpu: CpuMeter
    rss_kb: list[int]
    hwm_kb: int
    bad_payloads: int
    scrapes: list[int] = field(default_factory=list)
    """The size of each /metrics answer in the window [bytes] (none with ``--metrics off``)."""


async def run(args: argparse.Namespace) -> Results:
    with tempfile.TemporaryDirectory(prefix="gateway-load-") as tmp, mosquitto(Path(tmp)) as (broker, port):
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-centre") as client:
            await client.subscribe(subscription(), qos=1)
            centre = Centre(client)
            listener = asyncio.create_task(centre.listen(), name="centre")
            config = gateway_config(
                args.chargers, port, args.telemetry_interval, metrics=args.metrics == "on"
            )
            gateway = Peer(
                gateway_process,
                (config.model_dump_json(), str(Path(tmp) / "outbox.sqlite"), args.profile_gateway),
                "gateway",
            )
            ocpp_port, metrics_port = await gateway.reply("ready")
            url = f"ws://127.0.0.1:{ocpp_port}"
            procs = args.fleet_procs or max(1, math.ceil(args.chargers / 250))
            ids = list(range(args.chargers))
            fleets = [
                Peer(fleet_process, (url, args.protocol, ids[k::procs]), f"fleet-{k}") for k in range(procs)
            ]
            try:
                return await _measure(args, centre, gateway, fleets, broker.pid, procs, metrics_port)
            finally:
                for fleet in fleets:
                    with contextlib.suppress(Exception):
                        fleet.conn.send("stop")
                with contextlib.suppress(Exception):
                    gateway.conn.send("stop")
                for peer in [*fleets, gateway]:
                    peer.end()
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener


async def scrape(port: int) -> int:
    """GET /metrics once, as Prometheus would; the bytes of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    if not answer.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"/metrics answered {answer[:80]!r}")
    return len(answer)


async def scraper(port: int, interval_s: float, sizes: list[int]) -> None:
    """Scrape every ``interval_s`` until cancelled, recording each answer's size [bytes]."""
    while True:
        sizes.append(await scrape(port))
        await asyncio.sleep(interval_s)


async def _measure(
    args: argparse.Namespace,
    centre: Centre,
    gateway: Peer,
    fleets: list[Peer],
    broker_pid: int,
    procs: int,
    metrics_port: int | None,
) -> Results:
    console = make_console()
    started = time.monotonic()
    while True:  # every charger booted and charging
        charging = sum([await fleet.ask("charging", "charging") for fleet in fleets])
        _, known = await gateway.ask("stats", "stats")
        if charging == known == args.chargers:
            break
        if time.monotonic() - started > 120:
            raise RuntimeError(f"{charging} of {args.chargers} chargers charging after 120 s, {known} known")
        await asyncio.sleep(0.5)
    console.print(
        f"{args.chargers} chargers charging after {time.monotonic() - started:.1f} s ({procs} procs)"
    )
    first = await centre.push(dict.fromkeys(range(args.chargers), INITIAL_KW), in_window=False)
    deadline = time.monotonic() + 120
    while first.acked is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    console.print(
        f"initial command to all EVSEs acked after {(first.acked or math.nan) - first.published:.2f} s"
    )
    await asyncio.sleep(args.warmup)

    gw_cpu = CpuMeter(gateway.pid)
    fleet_cpu = [CpuMeter(fleet.pid) for fleet in fleets]
    broker_cpu = CpuMeter(broker_pid)
    meters = [gw_cpu, *fleet_cpu, broker_cpu]
    rss: list[int] = []
    if args.profile_gateway:
        gateway.conn.send("profile-start")
    samples0 = sum([await fleet.ask("stats", "stats") for fleet in fleets])
    readings0, _ = await gateway.ask("stats", "stats")
    for meter in meters:
        meter.sample()
    t0 = time.monotonic()
    wall0 = time.time()
    scrapes: list[int] = []
    scraping = (
        asyncio.create_task(scraper(metrics_port, args.scrape_interval, scrapes), name="scraper")
        if metrics_port is not None
        else None
    )
    subsets = max(1, args.chargers // args.push_size)
    next_push = t0
    next_sample = t0 + 1
    pushes = 0
    while (now := time.monotonic()) < t0 + args.duration:
        if now >= next_push:
            subset = pushes % subsets
            chosen = range(subset * args.push_size, min((subset + 1) * args.push_size, args.chargers))
            await centre.push(dict.fromkeys(chosen, pushed_kw(pushes // subsets)), in_window=True)
            pushes += 1
            next_push += args.push_interval
        if now >= next_sample:
            for meter in meters:
                meter.sample()
            rss.append(memory_kb(gateway.pid)["VmRSS"])
            next_sample += 1
        await asyncio.sleep(max(0.0, min(next_push, next_sample) - time.monotonic()))
    for meter in meters:
        meter.sample()
    window_s = time.monotonic() - t0
    if scraping is not None:
        scraping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scraping
    wall1 = time.time()
    samples1 = sum([await fleet.ask("stats", "stats") for fleet in fleets])
    readings1, _ = await gateway.ask("stats", "stats")
    hwm = memory_kb(gateway.pid)["VmHWM"]
    rss.append(memory_kb(gateway.pid)["VmRSS"])

    await asyncio.sleep(args.settle)  # late profiles and acks of the last pushes
    received: dict[int, list[tuple[float, float]]] = {}
    for fleet in fleets:
        fleet.conn.send("stop")
    for fleet in fleets:
        for i, at, limit in await fleet.reply("stopped"):
            received.setdefault(i, []).append((at, limit))
    gateway.conn.send("stop")
    outbox = await gateway.reply("stopped")
    await asyncio.sleep(0.5)  # the last PUBLISHes reach the centre

    push_ms, ack_ms, missing_pushes, missing_acks = [], [], 0, 0
    window_pushes = [p for p in centre.pushes.values() if p.in_window]
    for push in window_pushes:
        for i, kw in push.powers_kw.items():
            at = next(
                (t for t, limit in received.get(i, []) if t >= push.published and abs(limit - kw * 1000) < 1),
                None,
            )
            if at is None:
                missing_pushes += 1
            else:
                push_ms.append(1000 * (at - push.published))
        if push.acked is None:
            missing_acks += 1
        else:
            ack_ms.append(1000 * (push.acked - push.published))

    in_window = Counter(kind for at, kind, _ in centre.received if wall0 <= at < wall1)
    seqs = Counter(seq for _, _, seq in centre.received)
    duplicates = sum(n - 1 for n in seqs.values())
    window_seqs = [seq for at, _, seq in centre.received if wall0 <= at < wall1]
    gaps = sum(1 for s in range(min(window_seqs), max(window_seqs) + 1) if s not in seqs)
    missing = [s for s in range(min(seqs), max(seqs) + 1) if s not in seqs]
    return Results(
        args=args,
        push_ms=push_ms,
        ack_ms=ack_ms,
        pushes=len(window_pushes),
        missing_pushes=missing_pushes,
        missing_acks=missing_acks,
        window_s=window_s,
        fleet_samples=samples1 - samples0,
        gateway_readings=readings1 - readings0,
        mqtt_by_kind=in_window,
        seq_gaps=gaps,
        seq_missing=missing,
        seq_duplicates=duplicates,
        seq_pending=outbox["pending"],
        gw_cpu=gw_cpu,
        fleet_cpu=fleet_cpu,
        broker_cpu=broker_cpu,
        rss_kb=rss,
        hwm_kb=hwm,
        bad_payloads=centre.bad,
        scrapes=scrapes,
    )


# ------------------------------------------------------------------------------------------- report


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms_row(name: str, values: list[float], missing: int, target: str) -> list[str]:
    cells = [f"{quantile(values, q):.1f}" for q in (0.5, 0.95, 0.99)]
    return [name, str(len(values)), *cells, f"{max(values, default=math.nan):.1f}", str(missing), target]


def report(r: Results) -> None:
    console = make_console()
    a = r.args
    console.print(f"machine: {machine()}")
    console.print(f"command: {command()}")
    p99 = quantile(r.push_ms, 0.99)
    lost = r.seq_gaps + r.missing_pushes + r.missing_acks
    met = p99 <= TARGET_P99_MS and lost == 0
    verdict = f"{'met' if met else 'MISSED'} (p99 <= {TARGET_P99_MS:g} ms, none lost)"
    title = f"Gateway load: {a.chargers} chargers, OCPP {a.protocol}, {r.window_s:.0f} s window"
    title += f", metrics {a.metrics}"
    header = ["latency [ms]", "n", "p50", "p95", "p99", "max", "missing", "target"]
    print_tables(
        console,
        title + ", profile push",
        header,
        [
            ms_row(
                f"publish -> SetChargingProfile at charger ({a.push_size}/cmd)",
                r.push_ms,
                r.missing_pushes,
                verdict,
            ),
            ms_row("publish -> CommandAck at centre", r.ack_ms, r.missing_acks, "-"),
        ],
    )
    per_s = 1 / r.window_s
    rss = r.rss_kb
    throughput = [
        [
            "OCPP meter values sent by the fleet [msg/s]",
            f"{r.fleet_samples * per_s:.1f}",
            f"{r.fleet_samples * per_s / a.chargers:.3f} Hz per charger",
        ],
        [
            "OCPP meter values processed by the gateway [msg/s]",
            f"{r.gateway_readings * per_s:.1f}",
            f"backlog {r.fleet_samples - r.gateway_readings:+d} msg over the window",
        ],
        *(
            [f"MQTT {kind} received by the centre [msg/s]", f"{r.mqtt_by_kind[kind] * per_s:.2f}", ""]
            for kind in ("telemetry", "session", "ack", "status")
        ),
        [
            "MQTT seq (one counter, all topics): gaps in window / duplicates",
            f"{r.seq_gaps} / {r.seq_duplicates}",
            f"whole run: not received {r.seq_missing or 'none'} (a status superseded while queued "
            f"is dropped by design); queued at exit {r.seq_pending}",
        ],
        [
            "gateway CPU [% of one core]",
            f"{r.gw_cpu.mean:.1f}",
            f"1-s max {max(r.gw_cpu.samples, default=math.nan):.1f}",
        ],
        [
            "gateway RSS [MB]",
            f"{statistics.median(rss) / 1024:.1f}",
            f"steady (median); start {rss[0] / 1024:.1f}, end {rss[-1] / 1024:.1f}, "
            f"peak (VmHWM) {r.hwm_kb / 1024:.1f}",
        ],
        [
            "fleet CPU [% of one core]",
            " + ".join(f"{m.mean:.1f}" for m in r.fleet_cpu),
            f"{len(r.fleet_cpu)} process(es)",
        ],
        ["broker CPU [% of one core]", f"{r.broker_cpu.mean:.1f}", "mosquitto"],
    ]
    print_tables(console, title + ", throughput and resources", ["figure", "value", "note"], throughput)


def report_metrics_cost(off: Results, on: Results) -> None:
    """What serving and scraping the metrics cost the gateway: CPU with and without, same load."""
    console = make_console()
    a = on.args
    diff = on.gw_cpu.mean - off.gw_cpu.mean
    relative = 100 * diff / off.gw_cpu.mean if off.gw_cpu.mean else math.nan
    size = statistics.median(on.scrapes) / 1024 if on.scrapes else math.nan
    rows = [
        ["gateway CPU, metrics off [% of one core]", f"{off.gw_cpu.mean:.1f}", ""],
        [
            "gateway CPU, metrics on [% of one core]",
            f"{on.gw_cpu.mean:.1f}",
            f"{len(on.scrapes)} scrapes, every {a.scrape_interval:g} s, {size:.1f} kB each",
        ],
        [
            "difference [percentage points / relative]",
            f"{diff:+.1f} / {relative:+.1f} %",
            f"goal <= 2 %; OCPP meter values processed: off {off.gateway_readings / off.window_s:.0f}/s, "
            f"on {on.gateway_readings / on.window_s:.0f}/s",
        ],
    ]
    title = f"Metrics cost: {a.chargers} chargers, OCPP {a.protocol}, {on.window_s:.0f} s windows"
    print_tables(console, title, ["figure", "value", "note"], rows)


def hook_costs(chargers: int) -> None:
    """The metrics' cost per event, in this process without peers (free of the machine's other load):
    the call hook as a charger's MeterValues takes it, and one scrape with ``chargers`` EVSEs metered."""
    from site_gateway.evses import EvseView

    console = make_console()
    config = gateway_config(chargers, 1883, 1.0, metrics=True)
    with tempfile.TemporaryDirectory(prefix="gateway-hooks-") as tmp:
        gateway = Gateway(config, outbox_path=Path(tmp) / "outbox.sqlite")
        metrics = gateway.metrics
        for i in range(chargers):
            view = EvseView(charger_id(i), 1, max_charge_kw=22, max_discharge_kw=0, default_limit_kw=7.4)
            view.power_kw = 10.0
            gateway.evses[f"{charger_id(i)}/1"] = view
        calls = 200_000
        t0 = time.perf_counter()
        for _ in range(calls):
            started = time.monotonic()  # as Station does, on the system clock
            metrics.ocpp_call("MeterValues", "from_charger", time.monotonic() - started, None)
        call_us = (time.perf_counter() - t0) / calls * 1e6
        with gateway.uplink.outbox:
            scrapes = 200
            t0 = time.perf_counter()
            for _ in range(scrapes):
                body = generate_latest(metrics.registry)
            scrape_ms = (time.perf_counter() - t0) / scrapes * 1e3
    rate = chargers  # one meter value per charger per second, as in the load run
    rows = [
        [
            "call hook [us per OCPP call]",
            f"{call_us:.2f}",
            f"{rate} calls/s: {call_us * rate / 1e4:.3f} % of one core",
        ],
        [
            f"scrape, {chargers} EVSEs [ms]",
            f"{scrape_ms:.2f}",
            f"{len(body) / 1024:.1f} kB; every 15 s: {scrape_ms / 150:.4f} %, "
            f"every 5 s: {scrape_ms / 50:.4f} %",
        ],
    ]
    print_tables(console, f"Metrics hook costs, {chargers} chargers", ["figure", "value", "note"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", type=int, default=500)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="2.0.1")
    parser.add_argument("--duration", type=float, default=60.0, help="measurement window [s]")
    parser.add_argument("--warmup", type=float, default=10.0, help="after the initial setpoints [s]")
    parser.add_argument("--push-interval", type=float, default=5.0, help="between commands [s]")
    parser.add_argument("--push-size", type=int, default=50, help="chargers per command")
    parser.add_argument("--telemetry-interval", type=float, default=1.0, help="gateway telemetry [s]")
    parser.add_argument("--fleet-procs", type=int, default=0, help="charger processes (0: one per 250)")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="wait for late answers after the window [s]"
    )
    parser.add_argument("--profile-gateway", metavar="PATH", help="cProfile the gateway over the window")
    parser.add_argument(
        "--metrics",
        choices=("off", "on", "both", "hooks"),
        default="off",
        help="serve and scrape the gateway's /metrics; both: a run without, a run with, and the CPU "
        "cost; hooks: time the metrics' own code per call and per scrape, without peers",
    )
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="between scrapes of /metrics [s]")
    args = parser.parse_args()
    if args.push_size > args.chargers:
        parser.error("--push-size must be at most --chargers")
    if args.scrape_interval <= 0:
        parser.error("--scrape-interval must be > 0 s")
    if args.metrics == "hooks":
        hook_costs(args.chargers)
        return
    if args.metrics != "both":
        report(asyncio.run(run(args)))
        return
    results = {}
    for metrics in ("off", "on"):
        results[metrics] = asyncio.run(run(argparse.Namespace(**{**vars(args), "metrics": metrics})))
        report(results[metrics])
    report_metrics_cost(results["off"], results["on"])


if __name__ == "__main__":
    main()
