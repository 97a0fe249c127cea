"""``central.toml``: sections, secrets from the environment, the control loop's settings with durations
named by their unit, and errors of one line that name the file, the key and the keys allowed, also
through ``fleetgrid aggregator``, ``fleetgrid admin --config`` and ``fleetgrid settle --config``."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aggregator.cli import app
from aggregator.runtime.config import CentralConfig, CentralConfigError, Openadr2Section, Openadr3Section

EXAMPLE = Path(__file__).parents[1] / "examples" / "central.toml"
runner = CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "central.toml"
    path.write_text(text)
    return path


def test_the_example_loads() -> None:
    config = CentralConfig.load(EXAMPLE)
    assert config.mqtt.embedded
    assert config.database.url.startswith("sqlite:///")
    control = config.control_settings()
    assert control.cadence == dt.timedelta(minutes=15)
    assert control.planning.horizon == dt.timedelta(hours=24)


def test_defaults_need_no_file_content(tmp_path: Path) -> None:
    config = CentralConfig.load(write(tmp_path, ""))
    assert config.mqtt.embedded and config.api.port == 8000 and config.influxdb is None


def test_broker_url_and_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path, '[mqtt]\nurl = "mqtts://broker.example"\nusername = "centre"\npassword_env = "MQTT_PW"\n'
    )
    config = CentralConfig.load(path)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.embedded) == ("broker.example", 8883, False)
    with pytest.raises(CentralConfigError, match="MQTT_PW is not set"):
        config.mqtt.password()
    monkeypatch.setenv("MQTT_PW", "s3cret")
    assert config.mqtt.password() == "s3cret"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mqtt]\nurl = 'http://x'\n", "mqtt.url: must look like mqtt://host:1883"),
        ("[api]\nport = 70000\n", r"api.port: Input should be less than or equal to 65535 \(got 70000\)"),
        ("[api]\nport = 'eighty'\n", r"api.port: Input should be a valid integer.* \(got 'eighty'\)"),
        (
            "[databse]\nurl = 'x'\n",
            r"databse: unknown key \(did you mean database\?\); allowed keys: database, api, metrics, mqtt, "
            "control, influxdb, openadr$",
        ),
        ("[api]\nlisten = 'x'\n", "api.listen: unknown key; allowed keys: host, port$"),
        ("[api\n", "not valid TOML"),
        ("[influxdb]\nurl = 'http://x'\n", "influxdb.org: required key missing; influxdb.bucket: required"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CentralConfigError, match=message) as raised:
        CentralConfig.load(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert "\n" not in str(raised.value)


def test_control_durations_are_named_by_their_unit(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[control]\ncadence_minutes = 5\nsetpoint_validity_minutes = 90\nsolver_time_limit_s = 3\n"
        "[control.planning]\nhorizon_hours = 12\nstep_minutes = 30\ndefault_dwell_hours = 2.5\n"
        "overdue_stay_minutes = 20\nbase_load_max_age_minutes = 45\n",
    )
    control = CentralConfig.load(path).control_settings()
    assert (control.cadence, control.setpoint_validity) == (dt.timedelta(minutes=5), dt.timedelta(minutes=90))
    assert control.solver_time_limit_s == 3.0
    planning = control.planning
    assert (planning.horizon, planning.step_minutes, planning.default_dwell) == (
        dt.timedelta(hours=12),
        30,
        dt.timedelta(hours=2, minutes=30),
    )
    assert (planning.overdue_stay, planning.base_load_max_age) == (
        dt.timedelta(minutes=20),
        dt.timedelta(minutes=45),
    )
    assert CentralConfig.load(write(tmp_path, "")).control_settings().cadence == dt.timedelta(minutes=15)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[control]\ncadence = 900\n",
            r"control.cadence: unknown key \(did you mean cadence_minutes\?\); "
            "allowed keys: cadence_minutes, solver_time_limit_s, mip_gap, setpoint_validity_minutes, "
            "urgency_weight, replan_gather_s, poll_s, planning, max_group_sites$",
        ),
        (
            "[control]\ncadence_minutes = 'PT15M'\n",
            "control.cadence_minutes: must be a positive number of minutes, got 'PT15M'",
        ),
        ("[control]\ncadence_minutes = 0\n", "control.cadence_minutes: must be a positive number"),
        (
            "[control.planning]\nhorizon = 'PT12H'\n",
            r"control.planning.horizon: unknown key \(did you mean horizon_hours\?\); allowed keys: "
            "step_minutes, horizon_hours, ",
        ),
        (
            "[control]\nmip_gap = 'small'\n",
            r"control.mip_gap: Input should be a valid number.*\(got 'small'\)",
        ),
        ("[control.planning]\nstep_minutes = 0\n", "control.planning: .*step_minutes .* must be positive"),
        (
            "[control.planning.tariffs.night]\nimport_price_per_kwh = 0.1\nexport_prise = 0\n",
            "control.planning.tariffs.night.export_prise: unknown key .*allowed keys: import_price_per_kwh, "
            "export_price_per_kwh, ",
        ),
    ],
)
def test_control_errors_name_the_file_the_key_and_the_keys_allowed(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    config = CentralConfig.load(path)  # [control] is checked by control_settings(), not by load()
    with pytest.raises(CentralConfigError, match=message) as raised:
        config.control_settings()
    assert str(raised.value).startswith(f"{path}: ")
    assert "\n" not in str(raised.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CentralConfigError, match="cannot read"):
        CentralConfig.load(tmp_path / "nope.toml")


OPENADR = """
[[openadr]]
kind = "3"
vtn_url = "https://vtn.example/openadr3/3.0.1"
ven_name = "fleetgrid"
client_id = "ven-1"
client_secret_env = "OADR3_SECRET"
program_map = { "DR-1" = "peak" }
site_map = { "depot-a" = "depot-1" }
simple_levels_kw = { 1 = 20, 2 = 40 }
poll_interval_s = 5

[[openadr]]
kind = "2.0b"
vtn_url = "http://127.0.0.1:8080/OpenADR2/Simple/2.0b"
ven_name = "fleetgrid-2b"
insecure_test_mode = true
program_map = { "http://vtn.example/programs/peak" = "peak" }
simple_levels_kw = { 1 = 50 }
currency = "USD"
"""


def test_openadr_entries_become_adapter_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CentralConfig.load(write(tmp_path, OPENADR))
    three, two = config.openadr
    assert isinstance(three, Openadr3Section) and isinstance(two, Openadr2Section)
    with pytest.raises(CentralConfigError, match=r"\[\[openadr\]\] 1 client_secret_env: .*OADR3_SECRET"):
        three.adapter_settings("[[openadr]] 1")
    monkeypatch.setenv("OADR3_SECRET", "s3cret")
    settings3 = three.adapter_settings("[[openadr]] 1")
    assert settings3.client_secret.get_secret_value() == "s3cret"
    assert (settings3.client_name, settings3.program_map, settings3.site_map) == (
        "fleetgrid",
        {"DR-1": "peak"},
        {"depot-a": "depot-1"},
    )
    assert (settings3.simple_levels_kw, settings3.poll_interval_s) == ({1: 20.0, 2: 40.0}, 5.0)
    settings2 = two.adapter_settings("[[openadr]] 2")
    mapping = settings2.programs["http://vtn.example/programs/peak"]
    assert (mapping.program_id, mapping.simple_levels_kw, mapping.currency) == ("peak", {1: 50.0}, "USD")
    assert settings2.insecure_test_mode and settings2.ven_name == "fleetgrid-2b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[openadr]]\nkind = '2'\nvtn_url = 'x'\nven_name = 'v'\n", r"openadr\[0\]: Input tag '2'"),
        (
            "[[openadr]]\nkind = '3'\nvtn_url = 'x'\nven_name = 'v'\n",
            r"openadr\[0\].client_id: required key missing",
        ),
        (
            "[[openadr]]\nkind = '2.0b'\nvtn_url = 'x'\nven_name = 'v'\n",
            r"openadr\[0\]: .*cert_path, key_path, ca_path, vtn_fingerprint required",
        ),
        (
            "[[openadr]]\nkind = '2.0b'\nvtn_url = 'x'\nven_name = 'v'\ninsecure_test_mode = true\n"
            "program_map = { p = 'peak' }\nsimple_levels_kw = { 4 = 10 }\n",
            r"openadr\[0\]: .*simple_levels_kw: level 4",
        ),
        (
            "[[openadr]]\nkind = '3'\nvtn_url = 'x'\nclient_id = 'c'\nclient_secret_env = 'S'\n"
            "[[openadr]]\nkind = '3'\nvtn_url = 'x'\nven_nam = 'v'\nclient_id = 'c'\n"
            "client_secret_env = 'S'\n",
            r"openadr\[0\].ven_name: required key missing; openadr\[1\].ven_name: required key missing; "
            r"openadr\[1\].ven_nam: unknown key \(did you mean ven_name\?\); "
            "allowed keys: vtn_url, ven_name, .*client_id, client_secret_env, ",
        ),
    ],
)
def test_openadr_errors_name_the_entry_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CentralConfigError, match=message) as raised:
        CentralConfig.load(path)
    assert str(path) in str(raised.value)


# Through the command line: one line naming the file, the key and the keys allowed; never a traceback.

BAD_KEY = "[api]\nhost = '127.0.0.1'\nprot = 8001\n"
ALLOWED = "api.prot: unknown key (did you mean port?); allowed keys: host, port"


def one_line_error(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["aggregator", "--config", "{path}"],
        ["admin", "--config", "{path}", "create-site", "depot-1", "--name", "D", "--import-limit-kw", "5"],
        ["settle", "--config", "{path}", "--period", "2026-11"],
    ],
    ids=["aggregator", "admin", "settle"],
)
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BAD_KEY, ALLOWED),
        ("[api]\nport = 'eighty'\n", "api.port: Input should be a valid integer"),
        (
            "[influxdb]\nurl = 'http://influx'\norg = 'o'\ntoken_env = 'T'\n",
            "influxdb.bucket: required key missing",
        ),
    ],
    ids=["unknown-key", "wrong-type", "missing-key"],
)
def test_the_commands_print_one_line(tmp_path: Path, command: list[str], text: str, message: str) -> None:
    path = write(tmp_path, text)
    result = runner.invoke(app, [part.format(path=path) for part in command])
    assert result.exit_code == 2, result.output
    line = one_line_error(result.output)
    assert line.startswith("error: ") and f"{path}: " in line and message in line


def test_the_service_refuses_a_bad_control_table_before_it_starts(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nport = 0\n[control]\ncadence = 900\n")
    result = runner.invoke(app, ["aggregator", "--config", str(path)])
    assert result.exit_code == 2, result.output
    line = one_line_error(result.output)
    assert f"{path}: control.cadence: unknown key (did you mean cadence_minutes?); allowed keys: " in line


def test_fleetgrid_aggregator_prints_one_line_in_a_terminal_of_its_own(tmp_path: Path) -> None:
    """The issue's report, as a user sees it: the installed command in a process of its own."""
    path = write(tmp_path, "[control]\ncadense_minutes = 15\n")
    fleetgrid = Path(sys.executable).parent / "fleetgrid"
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [str(fleetgrid), "aggregator", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done
    line = one_line_error(done.stdout + done.stderr)
    assert line.startswith(
        f"error: {path}: control.cadense_minutes: unknown key (did you mean cadence_minutes?)"
    )
