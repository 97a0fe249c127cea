"""Every shell block of README.md runs as written, in the README's order, and does what it says.

The test reads README.md when it runs, so it runs whatever the README holds then. It starts where a
newcomer starts, at the root of a fresh clone: a scratch working directory that links the repository's
tracked files (``examples/`` is a copy, see below; ``../shared`` resolves as from the repository), a
fresh SQLite database (examples/central.toml's ``sqlite:///fleetgrid.sqlite`` is in the working
directory), ``fleetgrid`` on ``PATH`` from this venv and no ``FLEETGRID_*`` variables (development
settings). Every command runs through bash as written, in README order within its lane (:func:`lanes`:
the central service's sections and the others run side by side); it must exit 0 and produce what it
says (:func:`check_produced`: the database rows, files and output that the README promises). Each
``python`` block runs afterwards in the same directory, each ``toml`` block is validated as the
central.toml it belongs to.

What cannot run in a test as written is named here, with the reason:

- :data:`NOT_RUN`: commands left out;
- :data:`BACKGROUND`: services that run until stopped: started in the background, probed (HTTP, OCPP
  port, MQTT) while their README section runs, then stopped with Ctrl-C (SIGINT);
- :data:`SUBSTITUTED`: ``mosquitto -d`` is the test's own broker; the fixed ports 8000 (API), 9000
  (OCPP) and 1883 (MQTT) are free ports, in the scratch copies of examples/*.toml and in the commands;
- :data:`PRECONDITIONS`: state a command needs that only hours of operation produce (an ended dispatch
  event with metered telemetry for ``fleetgrid settle``), stored before its first run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import httpx
import pytest
from mosquitto import Mosquitto, free_port
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from aggregator.api.security import API_KEY_PREFIX, hash_api_key
from aggregator.db.migrate import upgrade
from aggregator.db.models import ApiKey, Charger, LedgerTransaction, Program, ProgramSite, Site, User
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.runtime.config import CentralConfig
from optimizer.results import ScheduleResult, SolveStatus
from site_gateway.config import load_config
from wire.contract import ContractError, SessionEvent, SessionEventKind, decode_message
from workbench.scenario_files import read_scenario

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED = REPO.parent / "shared"
PASSWORD = "correct-horse-battery-staple"
"""Typed at every password prompt (``create-user`` asks twice)."""
COMMAND_TIMEOUT_S = 300.0
START_TIMEOUT_S = 90.0
"""How long a background service may take to answer its probe (imports and migrations on a busy box)."""

NOT_RUN: list[tuple[str, str]] = [
    (r"make demo\b", "creates the venv this test runs in; the depot day itself is tests/test_simulation.py"),
    (r"fleetgrid simulate\b", "a whole simulated day; tests/test_simulation.py runs it (shorter) twice"),
    (r"make test\b", "runs ruff, mypy and this very test suite"),
    (r"python bench/", "a benchmark: minutes of solving that print figures for BENCHMARKS.md"),
    (
        r"fleetgrid schedule --acn .*--online\b",
        "a month of rolling-horizon solves (about 80 s); the offline line reads the same month and "
        "tests/test_cli.py runs --online on a small file",
    ),
]
"""Command patterns (matched at the start) that are not run, and why."""

SHARED_DATA_MISSING = "reads ../shared/data, the data set kept next to the repository, which is not here"

SUBSTITUTED: dict[str, str] = {
    "mosquitto -d": "a daemon on the fixed port 1883 that would outlive the test: the test's own broker "
    "(tests/mosquitto.py) on a free port runs instead, and the copy of examples/site.toml points at it",
}
"""Commands replaced by what the test provides, and why."""

PORTS: dict[int, str] = {
    8000: "the API: [api] port of examples/central.toml",
    9000: "the gateway's OCPP listener: [ocpp] port of examples/site.toml",
}
"""Fixed ports of the examples, replaced by free ones (in the copies of the examples and in the
commands' ``127.0.0.1:PORT`` / ``localhost:PORT``) so that the test never meets another listener."""


# --------------------------------------------------------------------------------------- the README


@dataclass(frozen=True)
class Block:
    section: str
    """The heading above the block."""
    language: str
    line: int
    """README line of the block's first line."""
    text: str


@dataclass(frozen=True)
class Command:
    text: str
    """As written, continuation lines joined."""
    line: int
    section: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    section, language, start, lines = "", None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if language is None:
            fence = re.match(r"^```(\w*)\s*$", line)
            heading = re.match(r"^#{1,6}\s+(.*)$", line)
            if fence:
                language, start, lines = fence.group(1), number + 1, []
            elif heading:
                section = heading.group(1).strip()
        elif line.strip() == "```":
            blocks.append(Block(section, language, start, "\n".join(lines)))
            language = None
        else:
            lines.append(line)
    assert language is None, f"README.md:{start}: a code block is never closed"
    return blocks


def block_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    pending, first = "", 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            first = block.line + offset
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        text = (pending + stripped.strip()).strip()
        pending = ""
        if text and not text.startswith("#"):
            commands.append(Command(text, first, block.section))
    assert not pending, f"README.md:{first}: a line continues past the end of its block"
    return commands


def test_the_readme_parser_reads_blocks_commands_and_sections() -> None:
    text = (
        "# t\n```sh\nmake demo   # x\n```\n## Part\n```sh\na \\\n    b  # c\n\n# only a comment\n```\n"
        "```python\nx = 1\n```\n```\nplain\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.section, b.language, b.line) for b in blocks] == [
        ("t", "sh", 3),
        ("Part", "sh", 7),
        ("Part", "python", 13),
        ("Part", "", 16),
    ]
    commands = block_commands(blocks[1])
    assert [(c.text, c.line, c.argv) for c in commands] == [("a b  # c", 7, ["a", "b"])]


# ------------------------------------------------------------------------------- the scratch clone


@dataclass
class Background:
    command: Command
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; it must end within 20 s (else SIGKILL, and the test fails)."""
        assert self.alive(), f"{self.command}\nended by itself:\n{self.output}"
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            raise AssertionError(
                f"{self.command}\ndid not stop within 20 s of Ctrl-C:\n{self.output}"
            ) from None


class Listener:
    """Everything published under ``fleetgrid/#`` on the broker, collected by a thread."""

    def __init__(self, host: str, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(host, port)), daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "the test's MQTT listener did not subscribe"

    async def _run(self, host: str, port: int) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with aiomqtt.Client(host, port) as client:
            await client.subscribe("fleetgrid/#", qos=1)
            self._ready.set()

            async def collect() -> None:
                async for message in client.messages:
                    payload = message.payload
                    assert isinstance(payload, bytes | bytearray)
                    self.messages.append((str(message.topic), bytes(payload)))

            task = asyncio.create_task(collect())
            await self._stop.wait()
            task.cancel()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@dataclass
class Scratch:
    """The newcomer's clone: where commands run, with what they have made so far."""

    root: Path
    env: dict[str, str]
    ports: dict[int, int]
    broker: Mosquitto
    listener: Listener
    background: list[Background] = field(default_factory=list)
    ran: list[tuple[Command, str]] = field(default_factory=list)
    """Commands run (or started) so far, with their output."""
    seconds: list[tuple[Command, float]] = field(default_factory=list)
    """How long each command took (a background one: until its probe passed)."""
    preconditions_met: set[str] = field(default_factory=set)
    engine: Engine | None = None
    """On the clone's database, made at the first look into it."""

    def localise(self, text: str) -> str:
        """``text`` with the examples' fixed ports (:data:`PORTS`) replaced by this run's."""
        for fixed, free in self.ports.items():
            text = re.sub(rf"\b(127\.0\.0\.1|localhost):{fixed}\b", rf"\g<1>:{free}", text)
        return text

    @property
    def database_url(self) -> str:
        url = CentralConfig.load(self.root / "examples" / "central.toml").database.url
        prefix = "sqlite:///"
        assert url.startswith(prefix) and not url.startswith(prefix + "/"), (
            f"examples/central.toml: the test expects a SQLite file relative to the working directory, "
            f"not {url}"
        )
        return f"{prefix}{self.root / url.removeprefix(prefix)}"

    def session(self) -> Session:
        if self.engine is None:
            self.engine = make_engine(self.database_url)
        return make_sessionmaker(self.engine)()

    def run(self, command: Command) -> str:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", self.localise(command.text)],
            cwd=self.root,
            env=self.env,
            input=f"{PASSWORD}\n{PASSWORD}\n",
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{command}\nexited {done.returncode}:\n{output}"
        assert "Traceback" not in output, f"{command}\n{output}"
        self.ran.append((command, output))
        return output

    def start(self, command: Command) -> Background:
        log = self.root / f".readme-{len(self.background)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {self.localise(command.text)}"],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = Background(command, process, log)
        self.background.append(started)
        return started

    def stop_background(self) -> None:
        """Stop every service still running (all of them, even when one fails to stop)."""
        problems = []
        while self.background:
            try:
                self.background.pop().stop()
            except AssertionError as problem:
                problems.append(str(problem))
        assert not problems, "\n".join(problems)


def tracked_top_level() -> set[str]:
    """The repository's top-level entries that a clone has (git's tracked files, plus the venv)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        ).stdout
        names = {line.split("/", 1)[0] for line in listed.splitlines() if line}
    except (OSError, subprocess.SubprocessError):
        names = {p.name for p in REPO.iterdir() if not p.name.startswith(".") and p.name != "out"}
    return names | {".venv"}


def replace_once(path: Path, old: str, new: str, why: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{path.name}: expected {old!r} once ({why}); update PORTS in {__file__}"
    path.write_text(text.replace(old, new), encoding="utf-8")


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    root = tmp_path / "fleetgrid"
    root.mkdir()
    for name in sorted(tracked_top_level() - {"examples"}):
        source = REPO / name
        if source.is_dir():  # read where they are; a command writing into them would be a README bug
            (root / name).symlink_to(source)
        elif source.is_file():  # copied: a command writing one must not write through to the repository
            shutil.copy2(source, root / name)
    shutil.copytree(REPO / "examples", root / "examples")
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    ports = {fixed: free_port() for fixed in PORTS}
    replace_once(root / "examples" / "central.toml", "port = 8000", f"port = {ports[8000]}", PORTS[8000])
    replace_once(root / "examples" / "site.toml", "port = 9000", f"port = {ports[9000]}", PORTS[9000])
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGRID_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "160"  # rich tables and messages unwrapped, so that output is matched by line
    with Mosquitto(tmp_path / "broker") as broker:
        replace_once(
            root / "examples" / "site.toml",
            "mqtt://127.0.0.1:1883",
            f"mqtt://127.0.0.1:{broker.port}",
            SUBSTITUTED["mosquitto -d"],
        )
        listener = Listener(broker.host, broker.port)
        world = Scratch(root, env, ports, broker, listener)
        try:
            yield world
        finally:  # after a failure: whatever still runs is stopped; the failure is the test's report
            with contextlib.suppress(AssertionError):
                world.stop_background()
            listener.close()
            if world.engine is not None:
                world.engine.dispose()


# ------------------------------------------------------------------------------ what commands produce


def until(
    condition: Callable[[], bool], what: str, background: Background, timeout: float = START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert background.alive(), f"{background.command}\nended before {what}:\n{background.output}"
        assert time.monotonic() < deadline, (
            f"{background.command}\nno {what} in {timeout:.0f} s:\n{background.output}"
        )
        time.sleep(0.2)


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def subcommand(
    argv: list[str], options_with_values: tuple[str, ...] = ("--config", "--database-url")
) -> list[str]:
    """``argv`` after ``fleetgrid GROUP`` and the group's own options: the subcommand and its arguments."""
    rest = argv[2:]
    while rest and rest[0].startswith("--"):
        rest = rest[2:] if rest[0] in options_with_values else rest[1:]
    return rest


def check_admin(scratch: Scratch, argv: list[str], output: str) -> None:
    sub = subcommand(argv)
    with scratch.session() as session:
        match sub:
            case ["create-user", email, *rest]:
                user = session.scalar(select(User).where(User.email == email.lower()))
                assert user is not None and user.role.value == option(rest, "--role"), output
            case ["create-site", site_id, *_]:
                assert session.get(Site, site_id) is not None, output
            case ["add-charger", site_id, charge_point_id, *_]:
                found = session.scalar(
                    select(Charger).where(
                        Charger.site_id == site_id, Charger.charge_point_id == charge_point_id
                    )
                )
                assert found is not None, output
            case ["create-program", program_id, *_]:
                assert session.get(Program, program_id) is not None, output
            case ["enrol", program_id, site_id, *_]:
                assert session.get(ProgramSite, (program_id, site_id)) is not None, output
            case ["issue-key", *rest]:  # printed once: the key whose hash is stored for its owner
                owner = session.scalar(
                    select(User).where(User.email == (option(rest, "--owner") or "").lower())
                )
                assert owner is not None, output
                stored = set(session.scalars(select(ApiKey.key_hash).where(ApiKey.owner_id == owner.id)))
                printed = re.findall(rf"{re.escape(API_KEY_PREFIX)}[A-Za-z0-9_-]+", output)
                assert printed and {hash_api_key(key) for key in printed} <= stored, output
            case _:
                assert output.strip(), f"fleetgrid admin {' '.join(sub)}: no output"


def check_settle(scratch: Scratch, argv: list[str], output: str) -> None:
    event = option(argv, "--event")
    if event is not None:
        assert f"event {event} (" in output, output
        if "--dry-run" in argv:
            assert "dry run" in output, output
        else:
            assert "booked:" in output or "unchanged:" in output, output
            with scratch.session() as session:
                assert (session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0) > 0
    else:
        assert "event " in output or "no ended events" in output, output


def check_scenario(scratch: Scratch, argv: list[str], output: str) -> None:
    sub = subcommand(argv)
    if sub[:1] == ["generate"]:
        out = option(argv, "--out")
        assert out is not None, "scenario generate without --out"
        scenario = read_scenario(scratch.root / out)
        vehicles = option(argv, "--vehicles")
        if vehicles is not None:
            assert len(scenario.vehicles) == int(vehicles)
    elif sub[:1] == ["schema"]:
        assert "properties" in json.loads(output)


def check_schedule(scratch: Scratch, argv: list[str], output: str) -> None:
    out = option(argv, "--out")
    if out is not None:
        directory = scratch.root / out
        for name in ("schedule.csv", "site.csv", "vehicles.csv", "summary.json"):
            assert (directory / name).is_file(), f"{directory / name} not written:\n{output}"
        status = SolveStatus(json.loads((directory / "summary.json").read_text())["status"])
        policy = option(argv, "--policy") or "milp"
        assert status.is_ok if policy == "milp" else status is SolveStatus.HEURISTIC, (policy, status)
    if "--compare" in argv:
        for policy in ("milp", "uncontrolled", "edf", "round-robin"):
            assert policy in output, output


def check_demo(scratch: Scratch, argv: list[str], output: str) -> None:
    if "--offline" in argv:
        assert "milp" in output and "uncontrolled" in output, output
        assert (scratch.root / "out" / "demo" / "summary.json").is_file(), output


def check_prices(scratch: Scratch, argv: list[str], output: str) -> None:
    out = option(argv, "--out")
    step = int(option(argv, "--step") or 15)
    found = re.search(rf"(\d+) × {step} min", output)  # the summary's "steps" row
    assert found is not None and int(found.group(1)) > 0, output
    steps = int(found.group(1))
    if out is not None:
        rows = (scratch.root / out).read_text().strip().splitlines()
        assert len(rows) == steps + 1, f"{out}: {len(rows)} lines for {steps} steps"


def check_tariff(scratch: Scratch, argv: list[str], output: str) -> None:
    assert re.search(r"total", output, re.IGNORECASE), output


def check_written_files(scratch: Scratch, argv: list[str], output: str) -> None:
    """Any command: what its ``--out`` names exists afterwards."""
    out = option(argv, "--out")
    if out is not None:
        assert (scratch.root / out).exists(), f"--out {out} not written:\n{output}"


CHECKS: dict[str, Callable[[Scratch, list[str], str], None]] = {
    "admin": check_admin,
    "settle": check_settle,
    "scenario": check_scenario,
    "schedule": check_schedule,
    "demo": check_demo,
    "prices": check_prices,
    "tariff": check_tariff,
}
"""``fleetgrid GROUP ...`` -> what it must have produced (beyond exit 0, no traceback, its --out)."""


def check_produced(scratch: Scratch, command: Command, output: str) -> None:
    argv = command.argv
    check_written_files(scratch, argv, output)
    if argv[0] == "fleetgrid" and len(argv) > 1 and argv[1] in CHECKS:
        CHECKS[argv[1]](scratch, argv, output)


# ------------------------------------------------------------------------ services in the background


def probe_aggregator(scratch: Scratch, started: Background) -> None:
    """The API answers on its port; the accounts and sites made by ``fleetgrid admin`` are in it."""
    base = f"http://127.0.0.1:{scratch.ports[8000]}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/docs", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    until(answers, "API docs", started)
    admins = [c.argv for c, _ in scratch.ran if c.argv[:2] == ["fleetgrid", "admin"]]
    emails = [
        sub[1]
        for sub in map(subcommand, admins)
        if sub[:1] == ["create-user"] and option(sub, "--role") == "admin"
    ]
    sites = [sub[1] for sub in map(subcommand, admins) if sub[:1] == ["create-site"]]
    if emails:
        login = httpx.post(
            f"{base}/auth/token", data={"username": emails[0], "password": PASSWORD}, timeout=10
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        listed = httpx.get(f"{base}/admin/sites", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert listed.status_code == 200, listed.text
        assert {s["id"] for s in listed.json()["items"]} >= set(sites)


def probe_gateway(scratch: Scratch, started: Background) -> None:
    """The OCPP listener accepts connections; the gateway reports itself online on the broker."""
    config = load_config(scratch.root / (option(started.command.argv, "--config") or "site.toml"))
    port = config.ocpp.port

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    until(listening, f"OCPP listener on port {port}", started)
    until(
        lambda: any(topic.endswith(f"/{config.site.id}/status") for topic, _ in scratch.listener.messages),
        f"status of site {config.site.id} on the broker",
        started,
    )


def probe_chargers(scratch: Scratch, started: Background) -> None:
    """Every simulated station starts a charging session that reaches the broker through the gateway."""
    argv = started.command.argv
    count, prefix = int(option(argv, "--count") or 1), option(argv, "--prefix") or "sim"
    expected = {f"{prefix}-{k:03d}" for k in range(count)}

    def started_sessions() -> set[str]:
        found = set()
        for topic, payload in list(scratch.listener.messages):
            try:
                _, message = decode_message(topic, payload)
            except ContractError:
                continue
            if isinstance(message, SessionEvent) and message.kind == SessionEventKind.STARTED:
                found.add(message.charger_id)
        return found

    until(lambda: started_sessions() >= expected, f"sessions started at {sorted(expected)}", started)


BACKGROUND: dict[str, Callable[[Scratch, Background], None]] = {
    "aggregator": probe_aggregator,
    "gateway": probe_gateway,
    "sim-chargers": probe_chargers,
}
"""``fleetgrid COMMAND`` that runs until stopped -> its probe. ``sim-chargers --duration`` ends on its
own and runs in the foreground."""


def runs_in_background(command: Command) -> bool:
    argv = command.argv
    return (
        argv[0] == "fleetgrid"
        and len(argv) > 1
        and argv[1] in BACKGROUND
        and not (argv[1] == "sim-chargers" and "--duration" in argv)
    )


# ------------------------------------------------------------------------------------- preconditions

SEEDED_EVENT_START = "2026-11-10T17:00:00+00:00"
"""The stored event: an evening hour of November 2026, the README's ``--period``."""


def store_an_ended_event(scratch: Scratch) -> None:
    """tests/test_event_settlement.py's world (a depot, three drivers, a program paying 0.50 EUR per kWh,
    a one-hour DR event with its telemetry), as the database's first dispatch event."""
    from test_event_settlement import build_world

    upgrade(scratch.database_url)
    with scratch.session() as session:
        build_world(session, start=dt.datetime.fromisoformat(SEEDED_EVENT_START), tag="-readme")


PRECONDITIONS: dict[str, tuple[Callable[[Scratch], None], str]] = {
    "settle": (
        store_an_ended_event,
        "settling needs an ended dispatch event with its sites' metered telemetry: a fresh database has "
        "none, and a real one gets them from an evening of operation",
    ),
}
"""``fleetgrid COMMAND`` -> what is stored before its first run, and why."""


# ------------------------------------------------------------------------------------------ the test


def not_run_reason(command: Command) -> str | None:
    for pattern, reason in NOT_RUN:
        if re.match(pattern, command.text):
            return reason
    if "../shared/" in command.text and not SHARED.is_dir():
        return SHARED_DATA_MISSING
    return None


def run_shell_block(scratch: Scratch, block: Block, skipped: list[str]) -> None:
    for command in block_commands(block):
        reason = not_run_reason(command)
        if reason is not None:
            skipped.append(f"{command}: {reason}")
            continue
        if command.text.split("#")[0].strip() in SUBSTITUTED:
            assert scratch.broker.process is not None  # the test's broker runs instead
            continue
        argv = command.argv
        if argv[0] == "export":  # shell state that the README's next commands rely on
            for assignment in argv[1:]:
                name, _, value = assignment.partition("=")
                scratch.env[name] = value
            continue
        assert argv[0] != "cd", (
            f"{command}: each command runs from the repository's root; a cd would not carry over"
        )
        group = argv[1] if argv[0] == "fleetgrid" and len(argv) > 1 else ""
        if group in PRECONDITIONS and group not in scratch.preconditions_met:
            PRECONDITIONS[group][0](scratch)
            scratch.preconditions_met.add(group)
        began = time.monotonic()
        if runs_in_background(command):
            started = scratch.start(command)
            BACKGROUND[group](scratch, started)
            scratch.ran.append((command, started.output))
        else:
            check_produced(scratch, command, scratch.run(command))
        scratch.seconds.append((command, time.monotonic() - began))


def run_python_block(scratch: Scratch, block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(scratch.root)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(block.text, f"README.md:{block.line}", "exec"), namespace)
    result = namespace.get("result")
    if isinstance(result, ScheduleResult):  # the optimizer's outcome: a real schedule, never an empty one
        assert result.is_ok, result.message
        assert not result.schedule.empty


def check_toml_block(scratch: Scratch, block: Block) -> None:
    """A TOML snippet is part of central.toml (or of site.toml, when it has a ``[site]``): valid there."""
    if re.search(r"^\[site\]", block.text, re.MULTILINE):
        path = scratch.root / f"readme-{block.line}-site.toml"
        path.write_text(block.text)
        load_config(path)
    else:
        path = scratch.root / f"readme-{block.line}-central.toml"
        path.write_text(block.text)
        CentralConfig.load(path).control_settings()


CENTRAL = re.compile(r"examples/central\.toml|fleetgrid (admin|aggregator|settle)\b")
"""A section that uses the central service's database (or starts the service) runs in its lane."""


def lanes(blocks: list[Block]) -> list[list[Block]]:
    """The shell blocks in two lanes that run side by side, each in README order: the sections of the
    central service and its database, and every other section (schedules, data, the gateway). Nothing
    in one reads what the other makes; the python blocks, which read the schedules' files, run after
    both."""
    sections: dict[str, list[Block]] = {}
    for block in blocks:
        sections.setdefault(block.section, []).append(block)
    central = [b for group in sections.values() if any(CENTRAL.search(b.text) for b in group) for b in group]
    other = [b for b in blocks if b not in central]
    return [lane for lane in (central, other) if lane]


def run_lane(scratch: Scratch, blocks: list[Block], skipped: list[str]) -> None:
    """``blocks`` in order; a section's services run until the next section of the lane begins."""
    section = None
    try:
        for block in blocks:
            if block.section != section:
                scratch.stop_background()
                section = block.section
            run_shell_block(scratch, block, skipped)
        scratch.stop_background()
    finally:  # after a failure: whatever still runs is stopped; the failure is the report
        with contextlib.suppress(AssertionError):
            scratch.stop_background()
        if scratch.engine is not None:
            scratch.engine.dispose()


def test_the_central_service_s_sections_run_in_their_own_lane() -> None:
    text = (
        "## Centre\n```sh\nfleetgrid admin --config examples/central.toml init-db\n```\n"
        "## Plan\n```sh\nfleetgrid schedule day.yaml\n```\n```sh\nfleetgrid scenario schema\n```\n"
        "## Settle\n```sh\nfleetgrid settle --period 2026-11\n```\n"
    )
    assert [[b.section for b in lane] for lane in lanes(readme_blocks(text))] == [
        ["Centre", "Settle"],
        ["Plan", "Plan"],
    ]


def test_a_command_that_does_not_work_as_written_fails(scratch: Scratch) -> None:
    """The README's old gateway account: refused by the e-mail rule, so the README would be wrong."""
    old = "```sh\nfleetgrid admin --config examples/central.toml create-user gw@depot-1 --role gateway\n```\n"
    (block,) = readme_blocks(old)
    with pytest.raises(AssertionError, match=r"(?s)README.md:2: fleetgrid admin .*exited 2:.*error: email"):
        run_shell_block(scratch, block, [])


def test_every_readme_block_runs_as_written(scratch: Scratch, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    shell = [b for b in blocks if b.language in ("sh", "bash", "shell", "console")]
    assert shell, "README.md has no shell blocks"
    skipped: list[str] = []
    side_by_side = lanes(shell)
    runs = [
        dataclasses.replace(
            scratch, env=dict(scratch.env), background=[], ran=[], seconds=[], preconditions_met=set()
        )
        for _ in side_by_side
    ]
    with ThreadPoolExecutor(len(runs)) as pool:
        done = [
            pool.submit(run_lane, run, lane, skipped) for run, lane in zip(runs, side_by_side, strict=True)
        ]
        for lane in done:
            lane.result()
    for block in blocks:
        if block.language == "python":
            run_python_block(scratch, block, monkeypatch)
        elif block.language == "toml":
            check_toml_block(scratch, block)
    assert any(run.ran for run in runs), "no README command ran"
    times = [f"{seconds:5.1f} s  {command}" for run in runs for command, seconds in run.seconds]
    stored = [
        f"before fleetgrid {group}: {PRECONDITIONS[group][1]}"
        for run in runs
        for group in run.preconditions_met
    ]
    print("\n".join(["", "not run:", *skipped, "stored:", *stored, "seconds per command:", *times]))
