"""Fault soak: a depot through broker restarts, centre and gateway crashes and chargers misbehaving.

Processes, all real:

- a private Mosquitto (``tests/mosquitto.py``: free port, persistence on, autosave every second);
- the centre's ingestion (``tests/ingestion_process.py``) storing into PostgreSQL (a fresh database on
  127.0.0.1:5432, or ``--database-url``), its broker sessions created before the gateway first
  publishes (:func:`aggregator.ingestion.pipeline.create_sessions`); SIGKILLed and restarted;
- the site gateway, ``fleetgrid gateway --config site.toml`` (real clock); SIGKILLed and restarted on the
  same outbox and installed-limits files;
- in this process: simulated OCPP chargers (:class:`chargersim.stations.SimulatedCharger`, real time at
  speed 1, one meter value a second) with vehicles plugged in; the centre's control reduced to a
  commander that records each :class:`~wire.contract.SetpointCommand` in the centre's database (as the
  control loop does, so its ack is stored) and publishes it, every ``command_every_s`` while the centre
  runs; and a site meter that sums the chargers' actual power every 50 ms.

The chargers connect empty and get their TxDefaultProfile; then a vehicle plugs in at each (a charger
that never had a profile draws its hardware maximum, which no gateway can prevent). Faults, in order
(each one's recovery is awaited before the next): a clean broker restart; a centre
SIGKILL; a centre SIGKILL, restarted, and SIGKILLed again as soon as its first catch-up batch commits;
a gateway SIGKILL and restart; a gateway SIGKILL and restart while the centre is down (the case that
drew 57-68 kW at a 40 kW site before :mod:`site_gateway.installed`); chargers dropping their
websocket while the plan changes; chargers rebooting with their vehicles plugged in, one of them
starting its new transaction under the old id; the consenting V2G car leaving and a car whose driver
did not consent plugging in at the same charger.

What is measured and checked (:class:`SoakResult`):

- nothing lost, nothing doubled: a trigger on the gateway's outbox file copies every message the
  gateway enqueues, in the enqueue's own transaction, to a journal table. Every journalled telemetry
  message is stored at the centre exactly once, by ``(site_id, seq)`` with the journal's ``sent_at``
  (so a reused seq would show); every session start and stop has its one session row; every command
  ack is recorded on its command. Messages still in the outbox when the gateway is stopped at the end
  are counted apart (they go out at its next start). Statuses are retained state that a newer status
  supersedes in the outbox, by design, and are not counted;
- import held: the sum of the chargers' charging power (``station.power_w > 0``; a discharging car is
  no credit, as the gateway counts it) never above the import limit, in any 50 ms sample; the same for
  export (the sum of discharging power) against the export limit. No tolerance: a profile applies at
  the instant the simulated station installs it;
- no V2G without consent: no station discharges (``power_w < 0``) outside the one session whose
  driver consented; the commander also asks a 2.0.1 charger not declared bidirectional to discharge,
  as a faulty plan would, and the gateway must refuse it.

Printed per fault: messages enqueued, stored, the largest import and export, seconds to recover
(every telemetry message enqueued before the fault ended is stored at the centre, the outbox has
handed it over and every charger is connected with its vehicle in a transaction).

    python bench/fault_soak.py [--short] [--database-url postgresql+psycopg://...] [--workdir DIR]

``tests/test_fault_soak.py`` runs the short plan in the suite. One module past 600 lines on purpose: it
reads top to bottom as the soak's story (the fleet, the meter, the processes, the books, the faults,
the report), and the test imports it whole.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
from sqlalchemy import Engine, func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from mosquitto import Mosquitto, free_port  # noqa: E402  (test helpers, shared as bench/cli_startup.py does)

from aggregator.db.migrate import upgrade  # noqa: E402
from aggregator.db.models import (  # noqa: E402
    Charger,
    ChargingSession,
    SetpointCommandRecord,
    Site,
    TelemetryRecord,
)
from aggregator.db.session import make_engine, make_sessionmaker  # noqa: E402
from aggregator.ingestion.pipeline import IngestionSettings, create_sessions  # noqa: E402
from chargersim.clock import SimClock  # noqa: E402
from chargersim.stations import Protocol, SimulatedCharger  # noqa: E402
from chargersim.vehicles import Vehicle  # noqa: E402
from site_gateway.outbox import Outbox  # noqa: E402
from wire.contract import (  # noqa: E402
    CommandAck,
    SessionEvent,
    SessionEventKind,
    SetpointCommand,
    Telemetry,
    decode_message,
    encode,
    setpoint_topic,
)

SITE = "soak-depot"
CENTRE = ROOT / "tests" / "ingestion_process.py"
CENTRE_CLIENT_ID = "fleetgrid-centre-ingestion"
"""The client id ``tests/ingestion_process.py`` uses: its broker sessions are created before anything."""
SAMPLE_S = 0.05
"""The site meter's sampling interval [s]."""
LIMIT_EPS_KW = 1e-6
"""Float noise only: a sample above the limit by more than this is a violation."""


@dataclass(frozen=True)
class SoakPlan:
    """The site and the faults' durations [s of real time]."""

    chargers: int
    import_limit_kw: float
    export_limit_kw: float
    warmup_s: float
    broker_down_s: float
    centre_down_s: float
    gateway_down_s: float
    drop_s: float
    dropped: int
    """Chargers that drop their websocket together."""
    rebooted: int
    """Chargers that reboot together (the first under its old transaction id)."""
    hold_s: float
    """How long each fault's aftermath is watched at least, recovered or not."""
    recover_timeout_s: float
    command_every_s: float
    commit_delay_s: float
    """The centre holds every commit this long (a slow database), so a kill can land mid catch-up."""
    telemetry_interval_s: float = 1.0
    schedule_stale_after_s: float = 60.0
    seed: int = 12


FULL = SoakPlan(
    chargers=20,
    import_limit_kw=40,
    export_limit_kw=5,
    warmup_s=20,
    broker_down_s=30,
    centre_down_s=30,
    gateway_down_s=10,
    drop_s=30,
    dropped=10,
    rebooted=4,
    hold_s=15,
    recover_timeout_s=120,
    command_every_s=5,
    commit_delay_s=0.2,
)
SHORT = SoakPlan(
    chargers=6,
    import_limit_kw=15,
    export_limit_kw=3,
    warmup_s=4,
    broker_down_s=3,
    centre_down_s=3,
    gateway_down_s=2,
    drop_s=3,
    dropped=3,
    rebooted=2,
    hold_s=3,
    recover_timeout_s=45,
    command_every_s=3,
    commit_delay_s=0.2,
    telemetry_interval_s=0.25,
    schedule_stale_after_s=30,
)


# ----------------------------------------------------------------------------------- the fleet


def protocol_of(n: int) -> Protocol:
    """0 and 1: OCPP 2.1 with bidirectional hardware; 2: 2.0.1 with it but not declared; then every
    fourth a 1.6 charger, the rest 2.0.1."""
    return "2.1" if n < 2 else "1.6" if n % 4 == 3 else "2.0.1"


def site_toml(plan: SoakPlan, ocpp_port: int, broker: Mosquitto, outbox: Path) -> str:
    lines = [
        f'[site]\nid = "{SITE}"\nimport_limit_kw = {plan.import_limit_kw}\n'
        f"export_limit_kw = {plan.export_limit_kw}\n",
        f'[ocpp]\nhost = "127.0.0.1"\nport = {ocpp_port}\n',
        f'[mqtt]\nurl = "mqtt://{broker.host}:{broker.port}"\noutbox = "{outbox}"\nkeepalive_s = 5\n',
        f"[control]\nschedule_stale_after_s = {plan.schedule_stale_after_s}\n"
        f"telemetry_interval_s = {plan.telemetry_interval_s}\n",
    ]
    for n in range(plan.chargers):
        discharge = 11 if n < 3 else 0  # 2 is a 2.0.1 charger not marked discharge_on_201: never
        lines.append(
            f'[[chargers]]\nid = "{charger_id(n)}"\nmax_charge_kw = 22\nmax_discharge_kw = {discharge}\n'
        )
    return "\n".join(lines)


def charger_id(n: int) -> str:
    return f"cp-{n:02d}"


def vehicle(clock: SimClock, n: int, *, discharge_kw: float) -> Vehicle:
    """A large battery that stays plugged in for the whole soak (it never reaches its target)."""
    return Vehicle(
        capacity_kwh=400,
        soc=0.3,
        max_charge_kw=22 if n % 5 == 4 else 11,
        arrival=clock.now(),
        departure=clock.now() + dt.timedelta(hours=10),
        max_discharge_kw=discharge_kw,
        min_soc=0.1,
    )


def fleet(plan: SoakPlan, clock: SimClock, ocpp_port: int) -> list[SimulatedCharger]:
    """The chargers, empty: the vehicles plug in once the gateway has commissioned them."""
    rng = random.Random(plan.seed)
    return [
        SimulatedCharger(
            charger_id(n),
            f"ws://127.0.0.1:{ocpp_port}",
            protocol_of(n),
            None,
            clock,
            max_power_w=22_000,
            max_discharge_w=11_000 if n < 3 else 0,
            meter_interval_s=1,
            tick_s=1,
            rng=random.Random(rng.getrandbits(32)),
        )
        for n in range(plan.chargers)
    ]


# ------------------------------------------------------------------------------- the site meter


@dataclass
class Window:
    """What the site meter saw during one fault (from its start to the end of its hold)."""

    samples: int = 0
    peak_import_kw: float = 0.0
    peak_export_kw: float = 0.0
    over_import: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the soak began, import [kW]) of every sample above the import limit."""
    over_export: list[tuple[float, float]] = field(default_factory=list)
    unconsented: list[tuple[float, str, float]] = field(default_factory=list)
    """(seconds, station, power [kW]) of every sample with a discharge outside the consented session."""
    worst: dict[str, float] = field(default_factory=dict)
    """Each station's power [kW] in the sample of the highest import beyond the limit (if any)."""


class SiteMeter:
    """The site's import and export as the chargers draw them, every :data:`SAMPLE_S`."""

    def __init__(self, sims: list[SimulatedCharger], plan: SoakPlan, clock: SimClock) -> None:
        self.sims, self.plan, self.clock = sims, plan, clock
        self.consented: set[tuple[str, str]] = set()
        """(station id, transaction id) of the sessions whose driver consented to discharge."""
        self.window = Window()

    def start_window(self) -> Window:
        self.window = Window()
        return self.window

    async def run(self) -> None:
        while True:
            self.sample()
            await self.clock.sleep(SAMPLE_S)

    def sample(self) -> None:
        w, t = self.window, self.clock.monotonic()
        charging = sum(max(sim.power_w, 0.0) for sim in self.sims) / 1000
        discharging = sum(max(-sim.power_w, 0.0) for sim in self.sims) / 1000
        w.samples += 1
        w.peak_import_kw = max(w.peak_import_kw, charging)
        w.peak_export_kw = max(w.peak_export_kw, discharging)
        if charging > self.plan.import_limit_kw + LIMIT_EPS_KW:
            if charging > max((kw for _, kw in w.over_import), default=0.0):
                w.worst = {sim.station_id: round(sim.power_w / 1000, 2) for sim in self.sims}
            w.over_import.append((t, charging))
        if discharging > self.plan.export_limit_kw + LIMIT_EPS_KW:
            w.over_export.append((t, discharging))
        for sim in self.sims:
            if sim.power_w < 0:
                tx = sim.transaction.id if sim.transaction is not None else ""
                if (sim.station_id, tx) not in self.consented:
                    w.unconsented.append((t, sim.station_id, sim.power_w / 1000))


# --------------------------------------------------------------------------------- the processes


class ChildProcess:
    """An asyncio child process with its output in a log file; SIGKILL or a clean stop."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self, *, stdout_pipe: bool = False) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=asyncio.subprocess.PIPE if stdout_pipe else out,
                stderr=out,
                env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"},
            )

    async def kill(self) -> None:
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        await self._end(signal.SIGINT)

    async def _end(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


class CentreProcess(ChildProcess):
    """``tests/ingestion_process.py``: the centre's ingestion alone."""

    def __init__(self, database_url: str, broker: Mosquitto, plan: SoakPlan, log: Path) -> None:
        argv = [sys.executable, str(CENTRE), database_url, broker.host, str(broker.port)]
        super().__init__("centre", [*argv, "--commit-delay-s", str(plan.commit_delay_s)], log)

    async def start_subscribed(self, timeout: float = 60) -> None:
        await self.start(stdout_pipe=True)
        assert self.process is not None and self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if line.strip() != b"subscribed":
            raise RuntimeError(f"the centre did not subscribe: {line!r} (see {self.log})")


class GatewayProcess(ChildProcess):
    """``fleetgrid gateway --config site.toml``."""

    def __init__(self, config: Path, ocpp_port: int, log: Path) -> None:
        script = Path(sys.executable).with_name("fleetgrid")
        argv = [str(script)] if script.exists() else [sys.executable, "-m", "aggregator.cli"]
        super().__init__("gateway", [*argv, "gateway", "--config", str(config)], log)
        self.ocpp_port = ocpp_port

    async def start_listening(self, clock: SimClock, timeout: float = 60) -> None:
        """Start it and wait for its "up" log line (a bare TCP probe would log a failed handshake)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        await self.start()
        deadline = clock.monotonic() + timeout
        while clock.monotonic() < deadline:
            assert self.process is not None
            if self.process.returncode is not None:
                raise RuntimeError(f"the gateway exited ({self.process.returncode}); see {self.log}")
            with self.log.open("rb") as log:
                log.seek(offset)
                if f"up: OCPP on port {self.ocpp_port}".encode() in log.read():
                    return
            await clock.sleep(0.05)
        raise RuntimeError(f"the gateway did not listen on {self.ocpp_port} within {timeout} s")


# --------------------------------------------------------------------------------- the ledger


JOURNAL = """
CREATE TABLE IF NOT EXISTS soak_journal (seq INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS soak_journal_enqueued AFTER INSERT ON outbox
BEGIN
    INSERT INTO soak_journal (seq, topic, payload) VALUES (NEW.seq, NEW.topic, NEW.payload);
END;
"""
"""Every row the gateway inserts into its outbox, copied in the same transaction: what it enqueued."""


@dataclass
class Enqueued:
    seq: int
    message: Telemetry | SessionEvent | CommandAck | None
    """``None``: a status (retained state, not counted)."""


class OutboxLedger:
    """The gateway's outbox file with the :data:`JOURNAL` trigger, read from this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with Outbox(path):  # the gateway's own schema first (its CREATEs are IF NOT EXISTS)
            pass
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.executescript(JOURNAL)
        self.enqueued: dict[int, Enqueued] = {}
        self._rowid = 0

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as db:
            yield db

    def read(self) -> dict[int, Enqueued]:
        """Every message enqueued so far, by seq."""
        with self._db() as db:
            rows = db.execute(
                "SELECT rowid, seq, topic, payload FROM soak_journal WHERE rowid > ? ORDER BY rowid",
                (self._rowid,),
            ).fetchall()
        for rowid, seq, topic, payload in rows:
            self._rowid = rowid
            _, message = decode_message(topic, bytes(payload))
            kept = message if isinstance(message, Telemetry | SessionEvent | CommandAck) else None
            self.enqueued[seq] = Enqueued(seq, kept)
        return self.enqueued

    def pending(self) -> set[int]:
        """Seqs still in the outbox (not yet acknowledged by the broker)."""
        with self._db() as db:
            return {seq for (seq,) in db.execute("SELECT seq FROM outbox")}

    def telemetry(self, up_to: int | None = None) -> dict[int, Telemetry]:
        return {
            seq: e.message
            for seq, e in self.read().items()
            if isinstance(e.message, Telemetry) and (up_to is None or seq <= up_to)
        }

    def last_seq(self) -> int:
        return max(self.read(), default=0)


class CentreDatabase:
    def __init__(self, url: str) -> None:
        self.engine: Engine = make_engine(url)

    def seed(self, plan: SoakPlan) -> None:
        with make_sessionmaker(self.engine)() as session:
            session.add(
                Site(
                    id=SITE,
                    name="Fault soak depot",
                    import_limit_kw=plan.import_limit_kw,
                    export_limit_kw=plan.export_limit_kw,
                )
            )
            for n in range(plan.chargers):
                session.add(
                    Charger(
                        site_id=SITE, charge_point_id=charger_id(n), evse_id=1, max_kw=22, bidirectional=n < 2
                    )
                )
            session.commit()

    def telemetry_seqs(self) -> dict[int, dt.datetime]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(TelemetryRecord.seq, TelemetryRecord.sent_at).where(TelemetryRecord.site_id == SITE)
            )
            return {int(seq): _utc(sent_at) for seq, sent_at in rows}

    def telemetry_count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(TelemetryRecord)) or 0)

    def record_command(self, command: SetpointCommand) -> None:
        with make_sessionmaker(self.engine)() as session:
            session.add(
                SetpointCommandRecord(
                    command_id=command.command_id,
                    site_id=SITE,
                    issued_at=command.issued_at,
                    valid_until=command.valid_until,
                    payload=command.model_dump(mode="json"),
                )
            )
            session.commit()

    def sessions(self) -> list[tuple[str, str | None, dt.datetime | None]]:
        """(charge point id, transaction id, stopped at) of every session row."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(
                    Charger.charge_point_id, ChargingSession.transaction_id, ChargingSession.stopped_at
                ).join(Charger, Charger.id == ChargingSession.charger_id)
            )
            return [(cp, tx, stopped) for cp, tx, stopped in rows]

    def acked_commands(self) -> set[str]:
        with self.engine.connect() as connection:
            rows = connection.scalars(
                select(SetpointCommandRecord.command_id).where(SetpointCommandRecord.acked_at.is_not(None))
            )
            return set(rows)


def _utc(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


# ------------------------------------------------------------------------------- the commander


class Commander:
    """The centre's control loop reduced to what the soak needs: every ``command_every_s`` while the
    centre runs, a plan for every vehicle in a transaction, recorded, then published (QoS 1).

    Each vehicle is asked for 0-11 kW (together usually more than the site may take: the gateway
    scales them); the consenting session alternates between discharging 8 kW (more than the export
    limit) and charging 4 kW; the 2.0.1 charger ``cp-02`` is asked to discharge 6 kW every other plan,
    as a faulty plan would (it is not declared bidirectional: the gateway must refuse)."""

    def __init__(
        self,
        plan: SoakPlan,
        sims: list[SimulatedCharger],
        meter: SiteMeter,
        database: CentreDatabase,
        broker: Mosquitto,
        clock: SimClock,
    ) -> None:
        self.plan, self.sims, self.meter, self.database = plan, sims, meter, database
        self.broker, self.clock = broker, clock
        self.running = asyncio.Event()
        """Set while the centre runs (the control loop is part of it)."""
        self.rng = random.Random(plan.seed)
        self.sent = 0
        self.failed = 0
        self._n = 0

    async def run(self) -> None:
        while True:
            await self.running.wait()
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
                await self.command()
            await self.clock.sleep(self.plan.command_every_s)

    def next_command(self) -> SetpointCommand | None:
        self._n += 1
        now = self.clock.now()
        setpoints = []
        for sim in self.sims:
            if sim.transaction is None:
                continue
            tx = sim.transaction.id
            if (sim.station_id, tx) in self.meter.consented:
                kw = -8.0 if self._n % 2 else 4.0
            elif sim.station_id == charger_id(2) and self._n % 2:
                kw = -6.0
            else:
                kw = round(self.rng.uniform(0, 11), 2)
            setpoints.append(
                {"charger_id": sim.station_id, "evse_id": 1, "power_kw": kw, "transaction_id": tx}
            )
        if not setpoints:
            return None
        return SetpointCommand.model_validate(
            {
                "site_id": SITE,
                "command_id": f"soak-{self._n}",
                "issued_at": now - dt.timedelta(seconds=1),
                "valid_until": now + dt.timedelta(seconds=self.plan.schedule_stale_after_s),
                "setpoints": setpoints,
            }
        )

    async def command(self) -> None:
        command = self.next_command()
        if command is None:
            return
        await asyncio.to_thread(self.database.record_command, command)
        try:
            async with aiomqtt.Client(
                self.broker.host, self.broker.port, identifier="soak-centre-setpoints", timeout=2
            ) as client:
                await client.publish(setpoint_topic(SITE), encode(command), qos=1, timeout=2)
        except BaseException:
            self.failed += 1
            raise
        self.sent += 1


# ----------------------------------------------------------------------------------- the soak


@dataclass
class FaultResult:
    name: str
    window: Window
    first_seq: int
    last_seq: int = 0
    recovered_s: float | None = None
    """Seconds from the end of the fault until recovered; ``None``: not within the timeout."""
    fault_s: float = 0.0
    """Seconds from the fault's start to its end (an outage's length, a restart's)."""
    note: str = ""


@dataclass
class SoakResult:
    plan: SoakPlan
    faults: list[FaultResult]
    enqueued: int = 0
    telemetry: int = 0
    telemetry_stored: int = 0
    left_in_outbox: int = 0
    lost: list[int] = field(default_factory=list)
    """Seqs of telemetry enqueued, handed over and never stored."""
    altered: list[int] = field(default_factory=list)
    """Seqs stored with another message's ``sent_at`` (a seq reused)."""
    sessions_missing: list[str] = field(default_factory=list)
    sessions_doubled: list[str] = field(default_factory=list)
    acks_missing: list[str] = field(default_factory=list)
    commands_sent: int = 0
    catch_up: tuple[int, int] = (0, 0)
    """Telemetry stored when the centre was killed in its catch-up, and the backlog it had."""
    discharged_kwh_consented: float = 0.0

    def violations(self) -> list[str]:
        """Every broken promise, in words; empty when the soak passed."""
        found = []
        for fault in self.faults:
            w = fault.window
            if w.over_import:
                t, kw = max(w.over_import, key=lambda s: s[1])
                found.append(
                    f"{fault.name}: import above {self.plan.import_limit_kw} kW in {len(w.over_import)}"
                    f" samples, up to {kw:.2f} kW at t={t:.1f} s: {w.worst}"
                )
            if w.over_export:
                t, kw = max(w.over_export, key=lambda s: s[1])
                found.append(
                    f"{fault.name}: export above {self.plan.export_limit_kw} kW in {len(w.over_export)}"
                    f" samples, up to {kw:.2f} kW at t={t:.1f} s"
                )
            if w.unconsented:
                t, station, kw = w.unconsented[0]
                found.append(
                    f"{fault.name}: discharge without consent in {len(w.unconsented)} samples,"
                    f" first {station} at {kw:.2f} kW at t={t:.1f} s"
                )
            if fault.recovered_s is None:
                found.append(f"{fault.name}: not recovered within {self.plan.recover_timeout_s} s")
        if self.lost:
            found.append(f"telemetry lost: {len(self.lost)} messages, seqs {self.lost[:10]}")
        if self.altered:
            found.append(f"telemetry stored under a reused seq: {self.altered[:10]}")
        if self.sessions_missing:
            found.append(f"session events not stored: {self.sessions_missing[:5]}")
        if self.sessions_doubled:
            found.append(f"sessions stored twice: {self.sessions_doubled[:5]}")
        if self.acks_missing:
            found.append(f"acks not stored: {self.acks_missing[:5]}")
        return found


class Soak:
    def __init__(self, plan: SoakPlan, workdir: Path, database_url: str, log: Callable[[str], None]) -> None:
        self.plan, self.workdir, self.database_url, self.log = plan, workdir, database_url, log
        self.clock = SimClock(speed=1.0)
        self.ocpp_port = free_port()
        self.broker = Mosquitto(workdir / "broker")
        self.outbox_path = workdir / "gateway" / "outbox.sqlite"
        self.outbox_path.parent.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "site.toml"
        self.config.write_text(site_toml(plan, self.ocpp_port, self.broker, self.outbox_path))
        self.ledger = OutboxLedger(self.outbox_path)
        self.database = CentreDatabase(database_url)
        self.centre = CentreProcess(database_url, self.broker, plan, workdir / "centre.log")
        self.gateway = GatewayProcess(self.config, self.ocpp_port, workdir / "gateway.log")
        self.sims = fleet(plan, self.clock, self.ocpp_port)
        self.meter = SiteMeter(self.sims, plan, self.clock)
        self.commander = Commander(plan, self.sims, self.meter, self.database, self.broker, self.clock)
        self.faults: list[FaultResult] = []
        self.catch_up = (0, 0)

    # ---------------------------------------------------------------------------- the run

    async def run(self) -> SoakResult:
        upgrade(self.database_url)
        self.database.seed(self.plan)
        await asyncio.to_thread(self.broker.start)
        try:
            await create_sessions(IngestionSettings(host=self.broker.host, port=self.broker.port))
            await self.centre.start_subscribed()
            await self.gateway.start_listening(self.clock)
            async with asyncio.TaskGroup() as tasks:
                background = [tasks.create_task(sim.run(), name=sim.station_id) for sim in self.sims]
                background.append(tasks.create_task(self.meter.run(), name="site-meter"))
                background.append(tasks.create_task(self.commander.run(), name="commander"))
                try:
                    result = await self._faults()
                finally:
                    for task in background:
                        task.cancel()
            return result
        finally:
            await self.gateway.kill()
            await self.centre.kill()
            await asyncio.to_thread(self.broker.kill)
            self.database.engine.dispose()

    async def _faults(self) -> SoakResult:
        plan = self.plan
        await self._fault("commissioning, the cars plug in", self._commission())
        v2g = self.sims[0]
        assert v2g.transaction is not None
        self.meter.consented.add((v2g.station_id, v2g.transaction.id))
        self.commander.running.set()
        await self._fault("steady", self._sleep(plan.warmup_s))
        await self._fault("broker restart", self._broker_restart())
        await self._fault("centre SIGKILL", self._centre_outage())
        await self._fault("centre SIGKILL mid catch-up", self._centre_outage(kill_in_catch_up=True))
        await self._fault("gateway SIGKILL", self._gateway_restart())
        await self._fault("gateway SIGKILL, centre down", self._gateway_restart(centre_down=True))
        await self._fault(f"{plan.dropped} chargers drop {plan.drop_s:g} s", self._drop())
        await self._fault(f"{plan.rebooted} chargers reboot (1 reuses its tx id)", self._reboot())
        await self._fault("V2G car leaves, new car without consent", self._swap_v2g_car())
        return await self._settle()

    async def _fault(self, name: str, inject: Awaitable[str | None]) -> None:
        """Run ``inject`` (a coroutine that returns when the fault is over), then watch the aftermath for
        ``hold_s`` at least and until recovered."""
        self.log(f"fault: {name}")
        result = FaultResult(name, self.meter.start_window(), first_seq=self.ledger.last_seq() + 1)
        self.faults.append(result)
        started_at = self.clock.monotonic()
        note = await inject
        result.note = note or ""
        restored_at, restored_seq = self.clock.monotonic(), self.ledger.last_seq()
        result.fault_s = restored_at - started_at
        held_until = restored_at + self.plan.hold_s
        deadline = restored_at + self.plan.recover_timeout_s
        while self.clock.monotonic() < deadline:
            if result.recovered_s is None and await asyncio.to_thread(self._recovered, restored_seq):
                result.recovered_s = self.clock.monotonic() - restored_at
            if result.recovered_s is not None and self.clock.monotonic() >= held_until:
                break
            await self.clock.sleep(0.1)
        result.last_seq = self.ledger.last_seq()

    def _all_charging(self) -> bool:
        return all(sim.connected.is_set() and sim.transaction is not None for sim in self.sims)

    def _recovered(self, seq: int) -> bool:
        if not self._all_charging():
            return False
        wanted = self.ledger.telemetry(up_to=seq)
        if self.ledger.pending() & set(wanted):
            return False
        return set(wanted) <= set(self.database.telemetry_seqs())

    async def _until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = self.clock.monotonic() + timeout
        while not done():
            if self.clock.monotonic() > deadline:
                raise TimeoutError(f"fault soak: not {what} within {timeout} s")
            await self.clock.sleep(0.05)

    async def _sleep(self, seconds: float) -> None:
        await self.clock.sleep(seconds)
        return None

    # ---------------------------------------------------------------------------- the faults

    async def _commission(self) -> str:
        """Every charger connects and gets its TxDefaultProfile; then a vehicle plugs in at each (a
        charger that never had a profile runs at its hardware maximum: none is left so here)."""
        await self._until(
            lambda: all(sim.connected.is_set() and sim.store.profiles for sim in self.sims),
            self.plan.recover_timeout_s,
            "every charger commissioned",
        )
        for n, sim in enumerate(self.sims):
            sim.plug_in(vehicle(self.clock, n, discharge_kw=11 if n < 3 else 0))
        await self._until(self._all_charging, self.plan.recover_timeout_s, "every vehicle charging")
        return f"{len(self.sims)} chargers, a vehicle at each"

    async def _broker_restart(self) -> str:
        await asyncio.to_thread(self.broker.stop)
        await self.clock.sleep(self.plan.broker_down_s)
        await asyncio.to_thread(self.broker.start)
        return f"down {self.plan.broker_down_s:g} s (clean stop, persistence saved)"

    async def _centre_outage(self, *, kill_in_catch_up: bool = False) -> str:
        """The centre is SIGKILLed and restarted after ``centre_down_s``. ``kill_in_catch_up``: down
        twice as long, and SIGKILLed again as soon as its first catch-up batch commits (the broker sends
        at most 20 unacknowledged messages, Mosquitto's default, so a backlog above that takes more
        than one batch), then restarted."""
        self.commander.running.clear()
        await self.centre.kill()
        await self.clock.sleep(self.plan.centre_down_s * (2 if kill_in_catch_up else 1))
        if not kill_in_catch_up:
            await self.centre.start_subscribed()
            self.commander.running.set()
            return f"down {self.plan.centre_down_s:g} s"
        before = await asyncio.to_thread(self.database.telemetry_count)
        backlog = len(self.ledger.telemetry()) - before
        await self.centre.start()
        deadline = self.clock.monotonic() + 60
        stored = before
        while stored == before and self.clock.monotonic() < deadline:
            stored = await asyncio.to_thread(self.database.telemetry_count)
            await self.clock.sleep(0.005)
        await self.centre.kill()
        self.catch_up = (stored - before, backlog)
        await self.clock.sleep(1.0)
        await self.centre.start_subscribed()
        self.commander.running.set()
        down = 2 * self.plan.centre_down_s
        return f"down {down:g} s, killed with {stored - before} of {backlog} telemetry stored"

    async def _gateway_restart(self, *, centre_down: bool = False) -> str:
        if centre_down:
            self.commander.running.clear()
            await self.centre.kill()
        await self.gateway.kill()
        await self.clock.sleep(self.plan.gateway_down_s)
        await self.gateway.start_listening(self.clock)
        if centre_down:
            await self._until(self._all_charging, self.plan.recover_timeout_s, "every charger back")
            await self.clock.sleep(self.plan.centre_down_s)
            await self.centre.start_subscribed()
            self.commander.running.set()
        return f"down {self.plan.gateway_down_s:g} s" + (", centre down around it" if centre_down else "")

    async def _drop(self) -> str:
        dropped = self.sims[: 2 * self.plan.dropped : 2]
        for sim in dropped:
            await sim.disconnect()
        await self.clock.sleep(self.plan.drop_s)
        for sim in dropped:
            sim.reconnect()
        return ", ".join(sim.station_id for sim in dropped)

    async def _reboot(self) -> str:
        candidates = [sim for sim in self.sims[3:] if sim.protocol != "1.6"]
        rebooted = candidates[: self.plan.rebooted]
        for n, sim in enumerate(rebooted):
            await sim.reboot(reuse_transaction_id=n == 0)
        return ", ".join(
            sim.station_id + (" (same tx id)" if n == 0 else "") for n, sim in enumerate(rebooted)
        )

    async def _swap_v2g_car(self) -> str:
        sim = self.sims[0]
        assert sim.vehicle is not None
        sim.vehicle.departure = self.clock.now()
        await self._until(lambda: sim.transaction is None, 30, "the V2G car gone")
        sim.plug_in(vehicle(self.clock, 0, discharge_kw=11))  # BPT-capable, but its driver did not consent
        await self._until(lambda: sim.transaction is not None, 30, "the next car plugged in")
        return f"{sim.station_id}: a BPT car without consent took the consenting car's place"

    # ---------------------------------------------------------------------------- the books

    async def _settle(self) -> SoakResult:
        """Stop the commander, the chargers' changes and the gateway; let the centre store what was
        handed over; then compare the journal with the centre's database."""
        self.commander.running.clear()
        await self.clock.sleep(2)
        await self.gateway.stop()
        left = await asyncio.to_thread(self.ledger.pending)
        enqueued = await asyncio.to_thread(self.ledger.read)
        telemetry = {seq: e.message for seq, e in enqueued.items() if isinstance(e.message, Telemetry)}
        handed_over = {seq for seq in telemetry if seq not in left}

        def stored_all() -> bool:
            return handed_over <= set(self.database.telemetry_seqs())

        deadline = self.clock.monotonic() + self.plan.recover_timeout_s
        while not await asyncio.to_thread(stored_all) and self.clock.monotonic() < deadline:
            await self.clock.sleep(0.2)
        await self.clock.sleep(1)  # the session events and acks of the last batch
        stored = await asyncio.to_thread(self.database.telemetry_seqs)
        result = SoakResult(self.plan, self.faults, enqueued=len(enqueued), telemetry=len(telemetry))
        result.telemetry_stored = len(set(telemetry) & set(stored))
        result.left_in_outbox = len(left)
        result.lost = sorted(handed_over - set(stored))
        result.altered = sorted(
            seq
            for seq, message in telemetry.items()
            if seq in stored and stored[seq] != _utc(message.sent_at)
        )
        self._check_sessions(result, enqueued, left)
        result.commands_sent = self.commander.sent
        result.catch_up = self.catch_up
        return result

    def _check_sessions(self, result: SoakResult, enqueued: dict[int, Enqueued], left: set[int]) -> None:
        rows = self.database.sessions()
        count: dict[tuple[str, str | None], int] = {}
        stopped: dict[tuple[str, str | None], bool] = {}
        for cp, tx, stopped_at in rows:
            count[(cp, tx)] = count.get((cp, tx), 0) + 1
            stopped[(cp, tx)] = stopped_at is not None
        acked = self.database.acked_commands()
        for seq, e in enqueued.items():
            if seq in left:
                continue
            message = e.message
            if isinstance(message, SessionEvent) and message.kind in (
                SessionEventKind.STARTED,
                SessionEventKind.STOPPED,
            ):
                key = (message.charger_id, message.transaction_id)
                name = f"{message.kind.value} {message.charger_id} tx {message.transaction_id} (seq {seq})"
                never = count.get(key, 0) == 0
                if never or (message.kind is SessionEventKind.STOPPED and not stopped.get(key)):
                    result.sessions_missing.append(name)
            elif isinstance(message, CommandAck) and message.command_id not in acked:
                result.acks_missing.append(f"{message.command_id} (seq {seq})")
        result.sessions_doubled = [f"{cp} tx {tx}: {n} rows" for (cp, tx), n in count.items() if n > 1]


async def run_soak(
    plan: SoakPlan, workdir: Path, database_url: str, log: Callable[[str], None] = print
) -> SoakResult:
    return await Soak(plan, workdir, database_url, log).run()


# ------------------------------------------------------------------------------------ report


def report_rows(result: SoakResult) -> list[list[str]]:
    rows = []
    for fault in result.faults:
        w = fault.window
        rows.append(
            [
                fault.name,
                f"{fault.fault_s:.1f}",
                str(fault.last_seq - fault.first_seq + 1),
                f"{w.peak_import_kw:.2f}",
                f"{w.peak_export_kw:.2f}",
                str(len(w.over_import) + len(w.over_export)),
                str(len(w.unconsented)),
                "not recovered" if fault.recovered_s is None else f"{fault.recovered_s:.1f}",
                fault.note,
            ]
        )
    return rows


HEADER = [
    "fault",
    "fault lasted [s]",
    "messages enqueued",
    "max import [kW]",
    "max export [kW]",
    "samples over a limit",
    "unconsented discharge samples",
    "recovered [s]",
    "note",
]


def summary(result: SoakResult) -> str:
    return (
        f"{result.enqueued} messages enqueued by the gateway ({result.telemetry} telemetry); "
        f"{result.telemetry_stored} telemetry stored at the centre, {len(result.lost)} lost, "
        f"{len(result.altered)} under a reused seq, {result.left_in_outbox} left in the outbox at the end; "
        f"session rows doubled: {len(result.sessions_doubled)}, session events missing: "
        f"{len(result.sessions_missing)}, acks missing: {len(result.acks_missing)}; "
        f"{result.commands_sent} commands sent; import limit {result.plan.import_limit_kw:g} kW, "
        f"export limit {result.plan.export_limit_kw:g} kW, {result.plan.chargers} chargers"
    )


def main() -> None:
    from report import make_console, print_tables

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--short", action="store_true", help="the test suite's short plan")
    parser.add_argument("--database-url", help="default: a fresh database on 127.0.0.1:5432")
    parser.add_argument("--workdir", type=Path, help="keep the logs and files here (default: a temp dir)")
    args = parser.parse_args()
    plan = SHORT if args.short else FULL
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fleetgrid-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    console = make_console()
    with contextlib.ExitStack() as stack:
        url = args.database_url
        if url is None:
            from postgres import LOCAL_HOST, LOCAL_PORT, MAINTENANCE_DB, SUPERUSER, PostgresServer

            server = PostgresServer(LOCAL_HOST, LOCAL_PORT, SUPERUSER, MAINTENANCE_DB)
            url = stack.enter_context(server.fresh_database())
        result = asyncio.run(run_soak(plan, workdir, url, log=console.log))
    print_tables(console, "Fault soak", HEADER, report_rows(result))
    print(summary(result))
    problems = result.violations()
    for problem in problems:
        print("VIOLATION:", problem)
    if args.workdir is None and not problems:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs in {workdir}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
