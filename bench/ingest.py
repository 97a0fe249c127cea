"""Telemetry ingestion under load: 100 simulated sites publishing through a broker into `Ingestion`.

Processes:

- publishers (``--publishers``, default 2): each runs one MQTT connection per site it simulates (as
  real gateways do), and each site publishes a realistic :class:`~wire.contract.Telemetry`
  (``--evses`` EVSE readings with power, energy and state of charge; ~1 kB of JSON) at its share of
  ``--rate`` messages per second, QoS 1, ``seq`` counting up, ``sent_at`` the wall time of the publish.
  A fraction ``--duplicates`` of publishes repeat an earlier message, as a redelivery would;
- the broker: the local Mosquitto at ``--broker`` (default 127.0.0.1:1883), or with
  ``--private-broker`` one started on a free port (no persistence, no logging, ``max_inflight_messages``
  from ``--broker-inflight``: Mosquitto sends a client at most that many QoS 1 messages ahead of its
  PUBACKs, default 20, which caps one subscriber at 20 messages per round trip);
- this process: :class:`aggregator.ingestion.pipeline.Ingestion` storing into a fresh SQLite file (default) or
  ``--database-url`` (PostgreSQL: migrated, bench sites created, their old telemetry deleted), with
  ``--consumers`` telemetry connections (``IngestionSettings.telemetry_consumers``: above 1, an MQTT
  shared subscription) and ``--writers`` telemetry batches stored at once
  (``IngestionSettings.telemetry_writers``, PostgreSQL only). With ``--receive-only`` the writer is
  off: a bare aiomqtt subscriber (messages handed over as by ingestion, no task per message) only
  counts them, which measures what the publishers and the broker can deliver and what the MQTT
  receive path alone costs.

Figures, over the window from the first publish to the last commit:

- messages/s stored (new rows) and published, duplicates dropped, what was left unstored;
- end-to-end latency from ``sent_at`` (publisher) to the commit of the batch that stored the message,
  p50 / p99 / max, measured by a sink given to ``Ingestion`` as its mirror (fed after each commit);
- batches and their mean size;
- CPU % (of one core) of this process (MQTT receive, decoding, the writer thread), of the
  publishers, of the broker and, for PostgreSQL, of all ``postgres`` processes (other users of the
  server included); and this process's CPU per message handled [us], which depends less on what
  else the machine runs than the rates do.

With ``--rate 0`` every site publishes as fast as its PUBACKs come back: the ingestion's ceiling.

``--metrics on`` runs the ingestion as the service does with ``[metrics]``: its counters in a
:class:`~aggregator.runtime.metrics.ServiceMetrics` registry, the batch latency histogram observed on
every commit, and ``/metrics`` rendered every ``--scrape-interval`` seconds (1 s: far more often than
Prometheus's usual 15 s). ``--metrics both`` runs off then on, each on a fresh database, and prints the
difference in stored messages/s and in CPU per message.

    python bench/ingest.py [--rate 5000] [--duration 10] [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiomqtt
from report import command, machine, make_console, print_tables
from sqlalchemy import delete, select

from aggregator.db.migrate import upgrade
from aggregator.db.models import GatewayStatusRecord, Site, TelemetryRecord
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.ingestion.pipeline import Counters, Ingestion, IngestionSettings
from wire.contract import QOS, Telemetry, TopicKind, subscription, telemetry_topic

CLK_TCK = os.sysconf("SC_CLK_TCK")
SITE_PREFIX = "bench"


def site_id(i: int) -> str:
    return f"{SITE_PREFIX}-{i:03d}"


# ------------------------------------------------------------------------------------------ CPU


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process [s] (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def total_cpu(pids: Sequence[int]) -> float:
    seconds = 0.0
    for pid in pids:
        try:
            seconds += cpu_seconds(pid)
        except OSError:
            continue
    return seconds


def cpu_by_pid(name: str) -> dict[int, float]:
    """CPU seconds of every process called ``name`` (PostgreSQL starts a backend per connection)."""
    seconds = {}
    for pid in pids_named(name):
        try:
            seconds[pid] = cpu_seconds(pid)
        except OSError:
            continue
    return seconds


# ---------------------------------------------------------------------------------- publishers


def payload(site: str, seq: int, n: int, evses: int, sent_at: float) -> bytes:
    """A contract-valid Telemetry JSON, written out by hand so the publishers spend little CPU."""
    when = dt.datetime.fromtimestamp(sent_at, dt.UTC).isoformat().replace("+00:00", "Z")
    readings = [
        {
            "charger_id": f"cp-{k:02d}",
            "evse_id": 1,
            "power_kw": round(7.0 + (n + k) % 5 * 1.1, 2),
            "energy_kwh": round(0.01 * n, 2),
            "soc_percent": float(20 + (n // 60 + k) % 70),
        }
        for k in range(evses)
    ]
    message = {
        "schema_version": 1,
        "site_id": site,
        "seq": seq,
        "sent_at": when,
        "evses": readings,
        "site_import_kw": round(sum(r["power_kw"] for r in readings) + 15.0, 2),  # type: ignore[misc]
        "base_load_kw": 15.0,
    }
    return json.dumps(message, separators=(",", ":")).encode()


@dataclass
class PublisherReport:
    published: int = 0
    duplicates: int = 0
    cpu_s: float = 0.0


async def publish_sites(
    sites: list[str],
    host: str,
    port: int,
    rate_per_site: float,
    duration_s: float,
    evses: int,
    duplicates: float,
    seq_base: int,
    start_at: float,
) -> PublisherReport:
    report = PublisherReport()
    rng = random.Random(sum(map(ord, "".join(sites))))
    interval = 1.0 / rate_per_site if rate_per_site > 0 else 0.0

    async def one_site(site: str, offset: float) -> None:
        async with aiomqtt.Client(
            host, port, identifier=f"bench-pub-{site}-{os.getpid()}", timeout=30
        ) as client:
            topic = telemetry_topic(site)
            seq = seq_base
            previous: bytes | None = None
            due = start_at + offset
            await asyncio.sleep(max(0.0, due - time.time()))
            while time.time() < start_at + duration_s:
                if previous is not None and rng.random() < duplicates:
                    await client.publish(topic, previous, qos=QOS)
                    report.duplicates += 1
                else:
                    seq += 1
                    previous = payload(site, seq, seq - seq_base, evses, time.time())
                    await client.publish(topic, previous, qos=QOS)
                    report.published += 1
                if interval:
                    due += interval
                    await asyncio.sleep(max(0.0, due - time.time()))

    await asyncio.gather(*(one_site(s, i * interval / len(sites)) for i, s in enumerate(sites)))
    return report


def publisher_process(conn: Connection, sites: list[str], options: dict[str, Any]) -> None:
    cpu0 = time.process_time()
    report = asyncio.run(publish_sites(sites, **options))
    report.cpu_s = time.process_time() - cpu0
    conn.send(report)
    conn.close()


# --------------------------------------------------------------------------------------- centre


@dataclass
class LatencySink:
    """Given to ``Ingestion`` as its mirror: told of each stored message right after its commit."""

    latencies_s: list[float] = field(default_factory=list)
    last_commit: float = 0.0

    def offer(self, messages: Sequence[Telemetry]) -> None:
        now = time.time()
        self.last_commit = now
        self.latencies_s.extend(now - m.sent_at.timestamp() for m in messages)


def prepare_database(url: str, sites: int) -> None:
    upgrade(url)
    engine = make_engine(url)
    ids = [site_id(i) for i in range(sites)]
    with make_sessionmaker(engine)() as session, session.begin():
        existing = set(session.scalars(select(Site.id).where(Site.id.in_(ids))))
        session.add_all(
            Site(id=s, name=f"Bench site {s}", import_limit_kw=500.0, export_limit_kw=0.0)
            for s in ids
            if s not in existing
        )
        session.execute(delete(TelemetryRecord).where(TelemetryRecord.site_id.in_(ids)))
        session.execute(delete(GatewayStatusRecord).where(GatewayStatusRecord.site_id.in_(ids)))
    engine.dispose()


def start_private_broker(directory: Path, inflight: int) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = directory / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "log_type none",
        f"max_inflight_messages {inflight}",
        "max_queued_messages 1000000",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    config.write_text("\n".join(lines) + "\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"mosquitto did not start on port {port}")


@dataclass
class Results:
    database: str
    rate: float
    published: int
    redelivered: int
    stored: int
    duplicates: int
    unstored: int
    rejected: int
    """Rejected or failed: should be 0."""
    window_s: float
    latencies_s: list[float]
    batches: int
    cpu: dict[str, float | None]
    consumers: int = 1
    writers: int = 1
    receive_only: bool = False

    @property
    def cpu_us_per_message(self) -> float:
        """This process's CPU [us] per message it handled (stored or dropped as a duplicate)."""
        handled = self.stored + self.duplicates
        ingestion = self.cpu["ingestion"] or 0.0
        return 1e6 * ingestion * self.window_s / handled if handled else float("nan")


async def run_centre(
    args: argparse.Namespace, url: str, host: str, port: int, broker_pids: list[int]
) -> Results:
    engine = make_engine(url)
    sink = LatencySink()
    client_id = f"fleetgrid-bench-ingest-{os.getpid()}"
    settings = IngestionSettings(
        host=host,
        port=port,
        client_id=client_id,
        batch_max_messages=args.batch,
        batch_linger_s=args.linger,
        telemetry_consumers=args.consumers,
        telemetry_writers=args.writers,
        share_group=f"bench-{os.getpid()}",
    )
    ingestion: Ingestion | Counter = (
        Counter(host, port, client_id)
        if args.receive_only
        else Ingestion(settings, make_sessionmaker(engine), mirror=sink)
    )
    ctx = mp.get_context("spawn")
    sites = [site_id(i) for i in range(args.sites)]
    postgres = engine.dialect.name == "postgresql"
    scraper: asyncio.Task[None] | None = None
    async with ingestion:
        await ingestion.wait_subscribed(10)
        if args.metrics == "on" and isinstance(ingestion, Ingestion):
            scraper = asyncio.create_task(
                scrape_metrics(ingestion, engine, args.scrape_interval), name="scrape"
            )
        start_at = time.time() + 3.0  # publishers connect first
        options = {
            "host": host,
            "port": port,
            "rate_per_site": args.rate / args.sites,
            "duration_s": args.duration,
            "evses": args.evses,
            "duplicates": args.duplicates,
            "seq_base": int(time.time()) * 1000,
            "start_at": start_at,
        }
        pipes, procs = [], []
        for k in range(args.publishers):
            mine, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=publisher_process, args=(theirs, sites[k :: args.publishers], options))
            proc.start()
            pipes.append(mine)
            procs.append(proc)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = (time.process_time(), total_cpu(broker_pids))
        pg0 = cpu_by_pid("postgres") if postgres else {}
        stats: Counters | CounterStats = ingestion.stats[TopicKind.TELEMETRY]
        loop = asyncio.get_running_loop()
        reports: list[PublisherReport] = []
        for pipe in pipes:
            reports.append(await loop.run_in_executor(None, pipe.recv))
        for proc in procs:
            proc.join()
        published = sum(r.published for r in reports)
        redelivered = sum(r.duplicates for r in reports)
        deadline = time.time() + args.drain_timeout
        while stats.stored + stats.duplicates < published + redelivered and time.time() < deadline:
            await asyncio.sleep(0.05)
        end = (sink.last_commit or time.time()) if isinstance(ingestion, Ingestion) else ingestion.last
        cpu1 = (time.process_time(), total_cpu(broker_pids))
        pg1 = cpu_by_pid("postgres") if postgres else {}
        if scraper is not None:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
    engine.dispose()
    for identifier in [client_id] + [f"{client_id}-telemetry-{k}" for k in range(args.consumers)]:
        await forget_session(host, port, identifier)
    window = max(end - start_at, 1e-9)
    return Results(
        database="none (receive only)" if args.receive_only else "PostgreSQL" if postgres else "SQLite",
        rate=args.rate,
        published=published,
        redelivered=redelivered,
        stored=stats.stored,
        duplicates=stats.duplicates,
        unstored=published + redelivered - stats.stored - stats.duplicates,
        rejected=stats.rejected + stats.failed,
        window_s=window,
        latencies_s=sink.latencies_s,
        batches=ingestion.stats.batches if isinstance(ingestion, Ingestion) else 0,
        cpu={
            "ingestion": (cpu1[0] - cpu0[0]) / window,
            "publishers": sum(r.cpu_s for r in reports) / window,
            "broker": (cpu1[1] - cpu0[1]) / window if broker_pids else None,
            "postgres": sum(t - pg0.get(pid, 0.0) for pid, t in pg1.items()) / window if postgres else None,
        },
        consumers=args.consumers,
        writers=args.writers if postgres else 1,
        receive_only=args.receive_only,
    )


async def scrape_metrics(ingestion: Ingestion, engine: Any, interval_s: float) -> None:
    """The service's metrics on ``ingestion`` (as ``[metrics]`` wires them), rendered every
    ``interval_s`` seconds as a Prometheus scrape would, until cancelled."""
    from aggregator.control.replanning import ReplanRequests
    from aggregator.runtime.dependencies import Dependencies
    from aggregator.runtime.metrics import ServiceMetrics
    from wire.clock import SYSTEM_CLOCK

    metrics = ServiceMetrics(
        make_sessionmaker(engine), Dependencies(SYSTEM_CLOCK.now), ReplanRequests(), clock=SYSTEM_CLOCK
    )
    metrics.attach_ingestion(ingestion)
    while True:
        await metrics.exposition()
        await asyncio.sleep(interval_s)


class Counter:
    """The writer off: one aiomqtt subscriber to the telemetry, handed each message as ``Ingestion``
    is (its incoming queue replaced, no task per message), counting them; the stand-in for
    ``Ingestion`` in :func:`run_centre` with ``--receive-only``."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.stats = {TopicKind.TELEMETRY: CounterStats()}
        self.batches = 0
        self.last = 0.0
        counter = self

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                counter.stats[TopicKind.TELEMETRY].stored += 1
                counter.last = time.time()

        self._client = aiomqtt.Client(
            host, port, identifier=client_id, clean_session=False, timeout=30, queue_type=Inbox
        )
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def _run(self) -> None:
        async with self._client as client:
            await client.subscribe(subscription(TopicKind.TELEMETRY), qos=QOS)
            self._subscribed.set()
            async for _ in client.messages:
                pass

    async def wait_subscribed(self, timeout: float) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    async def __aenter__(self) -> Counter:
        self._task = asyncio.create_task(self._run(), name="bench-counter")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.wait([self._task])


@dataclass
class CounterStats:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0


async def forget_session(host: str, port: int, client_id: str) -> None:
    """Drop the bench's persistent session at the broker, so it queues nothing for us afterwards."""
    async with aiomqtt.Client(host, port, identifier=client_id, clean_session=True, timeout=10):
        pass


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def row(results: Results) -> list[str]:
    ms = [1000 * v for v in results.latencies_s]

    def cpu(name: str) -> str:
        value = results.cpu[name]
        return "n/a" if value is None else f"{100 * value:.0f} %"

    return [
        results.database,
        "max" if results.rate == 0 else f"{results.rate:,.0f}",
        f"{results.published / results.window_s:,.0f}",
        f"{results.stored / results.window_s:,.0f}",
        f"{results.duplicates:,} / {results.redelivered:,}",
        f"{results.unstored:,}",
        f"{results.rejected:,}",
        f"{percentile(ms, 0.5):.1f}",
        f"{percentile(ms, 0.99):.1f}",
        f"{max(ms, default=float('nan')):.1f}",
        f"{results.stored + results.duplicates:,} in {results.batches:,}",
        str(results.consumers),
        str(results.writers),
        cpu("ingestion"),
        f"{results.cpu_us_per_message:.0f}",
        cpu("publishers"),
        cpu("broker"),
        cpu("postgres"),
    ]


HEADER = [
    "database",
    "target msg/s",
    "published/s",
    "stored/s",
    "dups dropped / sent",
    "unstored",
    "rejected",
    "p50 ms",
    "p99 ms",
    "max ms",
    "messages in batches",
    "telemetry consumers",
    "writers",
    "CPU ingestion",
    "CPU us/msg",
    "CPU publishers",
    "CPU broker",
    "CPU postgres",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--evses", type=int, default=10, help="EVSE readings per message")
    parser.add_argument("--rate", type=float, default=5000.0, help="messages/s over all sites (0: max)")
    parser.add_argument("--duration", type=float, default=10.0, help="publishing window [s]")
    parser.add_argument("--duplicates", type=float, default=0.01, help="fraction of publishes repeated")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--batch", type=int, default=500, help="IngestionSettings.batch_max_messages")
    parser.add_argument("--linger", type=float, default=0.0, help="IngestionSettings.batch_linger_s")
    parser.add_argument(
        "--consumers",
        type=int,
        default=1,
        help="IngestionSettings.telemetry_consumers (>1: shared subscription)",
    )
    parser.add_argument(
        "--writers",
        type=int,
        default=IngestionSettings.telemetry_writers,
        help="IngestionSettings.telemetry_writers (telemetry batches stored at once; PostgreSQL only)",
    )
    parser.add_argument(
        "--receive-only", action="store_true", help="writer off: count the telemetry received, store nothing"
    )
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temporary directory")
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the broker")
    parser.add_argument("--private-broker", action="store_true", help="start a Mosquitto on a free port")
    parser.add_argument(
        "--broker-inflight",
        type=int,
        default=20,
        help="private broker's max_inflight_messages (QoS 1 messages sent to a client before its PUBACKs)",
    )
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="wait for the backlog [s]")
    parser.add_argument(
        "--metrics",
        choices=["off", "on", "both"],
        default="off",
        help="the service's Prometheus metrics on the ingestion; both: off then on, and the difference",
    )
    parser.add_argument(
        "--scrape-interval", type=float, default=1.0, help="with metrics: seconds between scrapes"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    modes = ["off", "on"] if args.metrics == "both" else [args.metrics]
    runs: dict[str, Results] = {}
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="fleetgrid-bench-ingest-") as tmp:
            url = args.database_url or f"sqlite:///{tmp}/ingest.sqlite"
            prepare_database(url, args.sites)
            broker: subprocess.Popen[bytes] | None = None
            if args.private_broker:
                broker, port = start_private_broker(Path(tmp), args.broker_inflight)
                host, broker_pids = "127.0.0.1", [broker.pid]
            else:
                host, _, port_text = args.broker.rpartition(":")
                port = int(port_text)
                broker_pids = pids_named("mosquitto")
            try:
                runs[mode] = asyncio.run(
                    run_centre(
                        argparse.Namespace(**{**vars(args), "metrics": mode}), url, host, port, broker_pids
                    )
                )
            finally:
                if broker is not None:
                    broker.kill()
                    broker.wait()

    console = make_console()
    print_tables(
        console, "Telemetry ingestion", ["metrics", *HEADER], [[mode, *row(r)] for mode, r in runs.items()]
    )
    if len(runs) == 2:
        off, on = runs["off"], runs["on"]
        rate_off, rate_on = off.stored / off.window_s, on.stored / on.window_s
        print(
            f"\nmetrics on vs off: stored/s {rate_on:,.0f} vs {rate_off:,.0f}"
            f" ({100 * (rate_on / rate_off - 1):+.1f} %),"
            f" CPU per message {on.cpu_us_per_message:.0f} vs {off.cpu_us_per_message:.0f} us"
            f" ({100 * (on.cpu_us_per_message / off.cpu_us_per_message - 1):+.1f} %)"
        )
    print(f"\n{command()} on {machine()}; load average before the run: {load_before}")


if __name__ == "__main__":
    main()
