"""The gateway's own install: only the base dependencies, from the lock, and a real gateway running on it.

One fresh venv per module (tests/gateway_venv.py: uv, offline, the gateway extra's pins from uv.lock
and fleetgrid without dependencies), then:

- nothing of the central extra is there: numpy, pandas, pyomo, FastAPI, SQLAlchemy, ... do not import;
- a central subcommand ends with a one-line error naming the missing package and the extra to install;
- ``fleetgrid gateway --config site.toml`` from that venv accepts a charging station run by
  ``fleetgrid sim-chargers`` from the same venv: the transaction it starts and the charging power it
  meters reach a test-owned Mosquitto as the contract's session event and telemetry.

Building the venv takes a few seconds (uv's cache holds every wheel); the whole module ~15 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest
from gateway_venv import CENTRAL_ONLY, build_gateway_venv, find_uv
from mosquitto import Mosquitto, free_port

from wire.contract import SessionEvent, SessionEventKind, Telemetry, decode_message, subscription

pytestmark = pytest.mark.slow

SITE_ID = "depot-edge"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = find_uv()
    if uv is None:
        pytest.skip("uv is not installed (`make` puts it in .uv/bin/uv)")
    return build_gateway_venv(uv, tmp_path_factory.mktemp("gateway-install"))


def run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=60
    )


def test_the_gateway_venv_has_no_central_package(venv: Path) -> None:
    for module in CENTRAL_ONLY:
        result = run(venv, "python", "-c", f"import {module}")
        assert result.returncode != 0, f"{module} is importable in the gateway-only venv"
        assert "ModuleNotFoundError" in result.stderr, result.stderr
    edge = (
        "import site_gateway.cli, site_gateway.gateway, chargersim.cli, chargersim.stations, aggregator.cli"
    )
    result = run(venv, "python", "-c", edge)
    assert result.returncode == 0, result.stderr


def test_every_subcommand_is_listed(venv: Path) -> None:
    result = run(venv, "fleetgrid", "--help")
    assert result.returncode == 0, result.stderr
    for name in ("gateway", "sim-chargers", "schedule", "aggregator", "admin", "settle", "tariff"):
        assert f" {name} " in result.stdout, name


@pytest.mark.parametrize(
    ("args", "package"),
    [
        (("admin", "--database-url", "sqlite:///unused.sqlite", "init-db"), "sqlalchemy"),
        (("schedule", "--help"), "numpy"),
        (("aggregator", "--config", "central.toml"), "sqlalchemy"),
    ],
)
def test_a_central_subcommand_names_the_extra(venv: Path, args: tuple[str, ...], package: str) -> None:
    result = run(venv, "fleetgrid", *args)
    assert result.returncode == 1
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert f"`fleetgrid {args[0]}` needs" in output
    assert repr(package) in output
    assert "pip install 'fleetgrid[central]'" in output


class Child:
    """A child process whose output lines are collected, so its pipe never fills."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name, self.process = name, process
        self.lines: list[str] = []

    async def collect(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace").rstrip())

    def report(self) -> str:
        status = "running" if self.process.returncode is None else f"exited {self.process.returncode}"
        return f"--- {self.name} ({status}):\n" + "\n".join(self.lines)


@contextlib.asynccontextmanager
async def child(name: str, *command: str | Path) -> AsyncIterator[Child]:
    """Run ``command``, terminate it on exit."""
    process = await asyncio.create_subprocess_exec(
        *map(str, command), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    running = Child(name, process)
    collector = asyncio.create_task(running.collect())
    try:
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(10):
            await process.wait()
            await collector


async def until(condition: Callable[[], bool], what: str, *children: Child, timeout: float = 30.0) -> None:
    """Wait for ``condition``; fail at once, with their output, when one of ``children`` has exited."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not condition() and all(c.process.returncode is None for c in children):
                await asyncio.sleep(0.05)
    if not condition():
        raise AssertionError(f"no {what}:\n" + "\n".join(c.report() for c in children))


def test_gateway_from_its_own_install_accepts_a_charger(
    venv: Path, broker: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "site.toml"
    config.write_text(
        f'[site]\nid = "{SITE_ID}"\nimport_limit_kw = 40\n\n'
        f'[ocpp]\nhost = "127.0.0.1"\nport = {port}\nallow_unknown = true\n\n'
        f'[mqtt]\nurl = "mqtt://{broker.host}:{broker.port}"\noutbox = "{tmp_path / "outbox.sqlite"}"\n\n'
        "[control]\ntelemetry_interval_s = 0.5\n"
    )
    fleetgrid = venv / "bin" / "fleetgrid"
    sessions: list[SessionEvent] = []
    telemetry: list[Telemetry] = []

    async def listen(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            _, payload = decode_message(str(message.topic), message.payload)  # type: ignore[arg-type]
            if isinstance(payload, SessionEvent):
                sessions.append(payload)
            elif isinstance(payload, Telemetry):
                telemetry.append(payload)

    def started() -> bool:
        return any(s.kind is SessionEventKind.STARTED and s.charger_id == "sim-000" for s in sessions)

    def charging() -> bool:
        return any(e.charger_id == "sim-000" and e.power_kw > 0 for t in telemetry for e in t.evses)

    async def scenario() -> None:
        async with (
            aiomqtt.Client(broker.host, broker.port, identifier="centre-install") as client,
            asyncio.TaskGroup() as tasks,
        ):
            await client.subscribe(subscription(), qos=1)
            listener = tasks.create_task(listen(client), name="centre")
            async with child("gateway", fleetgrid, "gateway", "--config", config) as gateway:
                await until(lambda: any("OCPP on" in line for line in gateway.lines), "start-up", gateway)
                url = f"ws://127.0.0.1:{port}"
                chargers = ("sim-chargers", "--gateway", url, "--protocol", "2.0.1", "--speed", "60")
                async with child("sim-chargers", fleetgrid, *chargers) as sims:
                    await until(started, "session started on MQTT", gateway, sims)
                    await until(charging, "charging telemetry on MQTT", gateway, sims)
            listener.cancel()

    asyncio.run(scenario())
    assert {s.site_id for s in sessions} == {SITE_ID}
