"""Structured logs (``wire.logs``) and the systemd units in ``deploy/systemd``.

- the JSON formatter writes one object per record with the record's ``extra=`` fields;
- ``fleetgrid gateway --log-format json`` (or ``FLEETGRID_LOG_FORMAT=json``) writes JSON lines on
  stderr, the reconnect loop's with ``connection`` and ``state``; a bad value is refused by name;
- each unit parses as INI with the keys ``deploy/README.md`` promises, and its ``ExecStart`` runs a
  real ``fleetgrid`` subcommand whose ``--help`` knows every option the unit passes.
"""

from __future__ import annotations

import asyncio
import configparser
import datetime as dt
import enum
import io
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mosquitto import Mosquitto, free_port
from test_gateway import running_site, until
from typer.testing import CliRunner

from aggregator.cli import SUBCOMMANDS, app
from aggregator.control.setpoints import MqttPublisherSettings, MqttSetpointPublisher
from wire.contract import EvseSetpoint, SetpointCommand
from wire.logs import JsonFormatter, LogSettingsError, configure_logging, log_format, log_level

ROOT = Path(__file__).resolve().parents[1]
FLEETGRID = Path(sys.executable).parent / "fleetgrid"
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
runner = CliRunner()


class Mode(enum.Enum):
    FALLBACK = "fallback"


def record(message: str, *args: object, **extra: Any) -> logging.LogRecord:
    return logging.getLogger("fleetgrid.test").makeRecord(
        "fleetgrid.test", logging.WARNING, __file__, 1, message, args, None, extra=extra
    )


# -------------------------------------------------------------------------------------- the formatter


def test_a_json_line_has_the_standard_fields_and_every_extra_field() -> None:
    line = JsonFormatter().format(
        record(
            "site %s: command %s rejected",
            "depot-1",
            "c0ffee",
            site_id="depot-1",
            command_id="c0ffee",
            charger_id="cp-1",
            event_id=12,
            dependency="mqtt",
            state="down",
            since=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            mode=Mode.FALLBACK,
        )
    )
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "WARNING"
    assert parsed["logger"] == "fleetgrid.test"
    assert parsed["message"] == "site depot-1: command c0ffee rejected"
    stamp = dt.datetime.fromisoformat(parsed["time"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs(stamp.timestamp() - time.time()) < 60
    assert {k: parsed[k] for k in ("site_id", "command_id", "charger_id", "event_id")} == {
        "site_id": "depot-1",
        "command_id": "c0ffee",
        "charger_id": "cp-1",
        "event_id": 12,
    }
    assert (parsed["dependency"], parsed["state"]) == ("mqtt", "down")
    assert parsed["since"] == "2026-01-02T03:04:05+00:00"
    assert parsed["mode"] == "fallback"
    assert not {"args", "msg", "levelno", "pathname", "created"} & set(parsed)


def test_an_extra_field_named_like_a_standard_one_is_kept_apart() -> None:
    parsed = json.loads(JsonFormatter().format(record("hello", time="later", level=3)))
    assert parsed["message"] == "hello" and parsed["level"] == "WARNING"
    assert (parsed["extra_time"], parsed["extra_level"]) == ("later", 3)


def test_an_exception_goes_in_one_line() -> None:
    try:
        raise RuntimeError("solver crashed")
    except RuntimeError:
        entry = logging.getLogger("x").makeRecord("x", logging.ERROR, "f", 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    assert "RuntimeError: solver crashed" in json.loads(line)["exception"]


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, given back as it was (configure_logging changes its handlers and level)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_json_and_back_to_text(root_logging: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    logging.getLogger("fleetgrid.test").info("planned %s", "depot-1", extra={"site_id": "depot-1"})
    logging.getLogger("fleetgrid.test").debug("not shown at INFO")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["site_id"] == "depot-1"
    configure_logging("text", "WARNING", stream=stream)  # replaces its own handler: no line twice
    logging.getLogger("fleetgrid.test").warning("plain")
    assert stream.getvalue().splitlines()[1:] == ["WARNING fleetgrid.test: plain"]


@pytest.mark.parametrize("value", ["xml", "", "JSONL"])
def test_an_unknown_format_is_named(value: str) -> None:
    with pytest.raises(LogSettingsError, match=f"unknown log format {value!r}: expected one of text, json"):
        log_format(value)


def test_formats_and_levels_ignore_case() -> None:
    assert log_format(" JSON ") == "json"
    assert log_level("debug") == logging.DEBUG
    with pytest.raises(LogSettingsError, match="unknown log level 'LOUD'"):
        log_level("LOUD")


# ------------------------------------------------------------------- one command's story, by its id


def test_a_command_id_is_on_the_publish_and_on_the_acknowledgement(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """The centre's publisher and a real gateway with a charger: filtering both processes' JSON lines
    on the command's id finds its publication and its acknowledgement (docs/architecture.md, Logs)."""
    caplog.set_level(logging.INFO, logger="aggregator.control.setpoints")
    caplog.set_level(logging.INFO, logger="site_gateway.gateway")
    command_id = "cmd-correlated"

    async def scenario() -> None:
        publisher = MqttSetpointPublisher(MqttPublisherSettings(host=broker.host, port=broker.port))
        async with running_site(tmp_path, broker, "2.0.1", 1, import_limit_kw=50) as (_, centre, _):
            now = dt.datetime.now(dt.UTC)
            command = SetpointCommand(
                site_id=centre.site_id,
                command_id=command_id,
                issued_at=now - dt.timedelta(seconds=1),
                valid_until=now + dt.timedelta(minutes=10),
                setpoints=(EvseSetpoint(charger_id="cp-0", evse_id=1, power_kw=4.0),),
            )
            async with publisher:
                await publisher.publish(command)
                await until(lambda: centre.ack(command_id) is not None)

    asyncio.run(scenario())
    formatter = JsonFormatter()
    story = [json.loads(formatter.format(r)) for r in caplog.records if getattr(r, "command_id", None)]
    story = [entry for entry in story if entry["command_id"] == command_id]
    assert [(e["logger"], e["site_id"]) for e in story] == [
        ("aggregator.control.setpoints", "site-201"),
        ("site_gateway.gateway", "site-201"),
    ], story
    assert story[0]["message"] == f"setpoints: command {command_id} for site-201 published"
    assert story[1]["message"] == f"gateway site-201: command {command_id} accepted"
    assert story[1]["status"] == "accepted"


# ------------------------------------------------------------------------------ the CLIs, by option


def site_config(tmp_path: Path, mqtt_port: int) -> Path:
    """A tiny site whose broker is not there: the uplink keeps retrying, which is logged."""
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nid = "depot-logs"\nimport_limit_kw = 40\n\n'
        f'[ocpp]\nhost = "127.0.0.1"\nport = {free_port()}\nallow_unknown = true\n\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\noutbox = "{tmp_path / "outbox.sqlite"}"\n'
    )
    return config


def fleetgrid_stderr(
    args: list[str], env: dict[str, str], done: Callable[[list[str]], bool], timeout: float = 60.0
) -> list[str]:
    """The stderr lines of ``fleetgrid ARGS`` from its start until ``done`` says so, then a clean stop
    (SIGINT). ``ARGS`` is the gateway's unless it names a subcommand first."""
    if not args or args[0].startswith("-"):
        args = ["gateway", *args]
    process = subprocess.Popen(
        [str(FLEETGRID), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    lines: list[str] = []
    assert process.stderr is not None
    stderr = process.stderr

    def read() -> None:
        for line in stderr:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not done(list(lines)) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(5)
        stderr.close()
    return lines


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.strip()]


def reconnecting(lines: list[str]) -> bool:
    try:
        return any(entry.get("connection") == "mqtt" for entry in parsed(lines))
    except json.JSONDecodeError:
        return True  # not JSON: the test fails on it below


@pytest.mark.parametrize("how", ["option", "environment"])
def test_fleetgrid_gateway_writes_json_lines_on_stderr(tmp_path: Path, how: str) -> None:
    config = site_config(tmp_path, mqtt_port=free_port())  # nothing listens there
    args, env = ["--config", str(config)], {"FLEETGRID_LOG_FORMAT": "json"}
    if how == "option":
        args, env = [*args, "--log-format", "json"], {"FLEETGRID_LOG_FORMAT": "text"}  # the option wins
    lines = fleetgrid_stderr(args, env, reconnecting)
    assert lines, "the gateway wrote nothing on stderr"
    entries = parsed(lines)  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    up = [e for e in entries if e["logger"] == "site_gateway.gateway" and " up" in e["message"]]
    assert up and up[0]["level"] == "INFO", entries
    (down,) = [e for e in entries if e.get("connection") == "mqtt"]
    assert (down["level"], down["state"], down["logger"]) == ("WARNING", "down", "wire.reconnect")
    assert "failed (" in down["message"]


def test_fleetgrid_gateway_writes_text_by_default(tmp_path: Path) -> None:
    config = site_config(tmp_path, mqtt_port=free_port())
    env = {"FLEETGRID_LOG_FORMAT": ""} if "FLEETGRID_LOG_FORMAT" not in os.environ else {}
    lines = fleetgrid_stderr(
        ["--config", str(config)], env, lambda ls: any("wire.reconnect" in x for x in ls)
    )
    assert any(line.startswith("WARNING wire.reconnect: site depot-logs: MQTT") for line in lines), lines


def test_fleetgrid_aggregator_writes_json_lines_on_stderr_uvicorn_too(tmp_path: Path) -> None:
    config = tmp_path / "central.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "central.sqlite"}"\n'
        f'[api]\nhost = "127.0.0.1"\nport = {free_port()}\n[mqtt]\nurl = "embedded"\n'
    )

    def serving(lines: list[str]) -> bool:
        return any("Uvicorn running" in line for line in lines)

    args = ["aggregator", "--config", str(config), "--log-format", "json", "--verbose"]
    lines = fleetgrid_stderr(args, {"FLEETGRID_ENVIRONMENT": "development"}, serving, timeout=90)
    entries = parsed(lines)  # every line is one JSON object, the API server's among them
    (running,) = [e for e in entries if "Uvicorn running" in e["message"]]
    assert running["logger"] == "uvicorn.error" and "color_message" not in running


@pytest.mark.parametrize("command", ["gateway", "aggregator"])
@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_bad_log_format_is_refused_by_name(
    tmp_path: Path, command: str, how: str, root_logging: logging.Logger
) -> None:
    config = (
        site_config(tmp_path, mqtt_port=free_port())
        if command == "gateway"
        else ROOT / "examples/central.toml"
    )
    args = [command, "--config", str(config)]
    env = {"FLEETGRID_LOG_FORMAT": "xml"}
    if how == "option":
        args, env = [*args, "--log-format", "xml"], {}
    result = runner.invoke(app, args, env={"COLUMNS": "200", **env})
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "--log-format (or FLEETGRID_LOG_FORMAT)" in output
    assert "unknown log format 'xml': expected one of text, json" in output


def test_a_bad_log_level_is_refused_by_name(tmp_path: Path, root_logging: logging.Logger) -> None:
    config = site_config(tmp_path, mqtt_port=free_port())
    result = runner.invoke(
        app, ["gateway", "--config", str(config), "--log-level", "LOUD"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2, result.output
    assert "--log-level" in result.output and "unknown log level 'LOUD'" in result.output


# -------------------------------------------------------------------------------- the systemd units


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def test_there_is_a_unit_for_the_gateway_and_for_the_centre() -> None:
    assert [u.name for u in UNITS] == ["fleetgrid-aggregator.service", "fleetgrid-gateway.service"]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_a_unit_has_the_keys_the_readme_promises(path: Path) -> None:
    parsed_unit = unit(path)
    assert {"Unit", "Service", "Install"} <= set(parsed_unit.sections())
    assert parsed_unit["Unit"]["Description"]
    service = parsed_unit["Service"]
    assert service["User"] == "fleetgrid" and service["User"] != "root"
    assert service["Restart"] == "on-failure"
    environment = [line for line in path.read_text().splitlines() if line.startswith("Environment=")]
    assert "Environment=FLEETGRID_LOG_FORMAT=json" in environment
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    writable = service["ReadWritePaths"].split()
    assert writable and all(p.startswith("/var/lib/fleetgrid") for p in writable)
    assert service["WorkingDirectory"] in writable
    argv = shlex.split(service["ExecStart"])
    assert "--config" in argv and argv[argv.index("--config") + 1].startswith("/etc/fleetgrid/")
    assert parsed_unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_a_unit_runs_a_real_subcommand_with_options_it_knows(path: Path) -> None:
    argv = shlex.split(unit(path)["Service"]["ExecStart"])
    assert Path(argv[0]).name == "fleetgrid"
    assert argv[1] in SUBCOMMANDS, argv
    done = subprocess.run(
        [str(FLEETGRID), argv[1], "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for option in (arg for arg in argv[2:] if arg.startswith("-")):
        assert option in done.stdout, f"{path.name}: {argv[1]} --help does not know {option}"
    assert "--log-format" in done.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    """systemd's own parser, with ``ExecStart`` pointed at this venv's ``fleetgrid`` (it must exist)."""
    for path in UNITS:
        text = path.read_text().replace("/opt/fleetgrid/venv/bin/fleetgrid", str(FLEETGRID))
        (tmp_path / path.name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / p.name) for p in UNITS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if path_named(line) and "Failed to" not in line  # not about the host (no systemd running here)
    ]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def path_named(line: str) -> bool:
    return any(p.name in line for p in UNITS)
