"""The gateway's site.toml: a full file loads, every mistake names its field, secrets come from the env;
``fleetgrid gateway`` prints a mistake as one line naming the file, the key and the keys allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from site_gateway.config import ConfigError, load_config

FULL = """
[site]
id = "depot-north"
import_limit_kw = 150
export_limit_kw = 50

[ocpp]
port = 9100

[mqtt]
url = "mqtts://broker.example:8883"
username = "depot-north"
password_env = "TEST_MQTT_PASSWORD"

[[chargers]]
id = "CP-01"
password_env = "TEST_CP01_PASSWORD"
limit_unit = "A"
phases = 1

[[chargers]]
id = "CP-02"
max_discharge_kw = 11
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_full_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "s3cret")
    monkeypatch.setenv("TEST_CP01_PASSWORD", "cp-secret")
    config = load_config(write(tmp_path, FULL))
    assert config.site.import_limit_kw == 150
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("broker.example", 8883, True)
    assert config.mqtt.password() == "s3cret"
    charger = config.charger("CP-01")
    assert charger is not None and charger.limit_unit == "A" and charger.password() == "cp-secret"
    assert config.charger("CP-99") is None
    assert config.ocpp.allow_unknown is False


def test_missing_secret_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_MQTT_PASSWORD", raising=False)
    config = load_config(write(tmp_path, FULL))
    with pytest.raises(ConfigError, match="TEST_MQTT_PASSWORD"):
        config.mqtt.password()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[site]\nid = "x"\nimport_limit_kw = -1\n', "site.import_limit_kw"),
        ("[site]\nimport_limit_kw = 10\n", "site.id"),
        ('[site]\nid = "x"\nimport_limit_kw = 10\n[mqtt]\nurl = "http://x"\n', "mqtt.url"),
        ('[site]\nid = "x"\nimport_limit_kw = 10\n[ocpp]\nport = 70000\n', "ocpp.port"),
        ('[site]\nid = "x"\nimport_limit_kw = 10\n[site2]\n', "site2"),
        ('[site]\nid = "x"\nimport_limit_kw = 10\n[[chargers]]\nid = "a"\n[[chargers]]\nid = "a"\n', "twice"),
        ('[site]\nid = "x"\nimport_limit_kw = 10\n[ocpp]\ntls_cert = "c.pem"\n', "tls_key"),
        ('[site\nid = "x"\n', "not valid TOML"),
    ],
)
def test_bad_files_name_the_field(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named) as error:
        load_config(write(tmp_path, text))
    assert "site.toml" in str(error.value)


SITE = '[site]\nid = "x"\nimport_limit_kw = 10\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            SITE + "[ocpp]\nprot = 9100\n",
            "ocpp.prot: unknown key (did you mean port?); allowed keys: host, port, allow_unknown, tls_cert, "
            "tls_key, heartbeat_interval_s",
        ),
        (
            SITE + '[[chargers]]\nid = "a"\n[[chargers]]\nid = "b"\nmax_kw = 11\n',
            "chargers[1].max_kw: unknown key (did you mean max_charge_kw?); allowed keys: id, password_env, "
            "max_charge_kw, max_discharge_kw, limit_unit, phases, voltage_v, discharge_on_201",
        ),
        (
            SITE + "[sites]\n",
            "sites: unknown key (did you mean site?); "
            "allowed keys: site, ocpp, mqtt, control, metrics, chargers, tokens, accept_unknown_tokens",
        ),
        (
            SITE + "[control]\ndefault_limit_kw = 'lots'\n",
            "control.default_limit_kw: Input should be a valid ",
        ),
        ('[site]\nid = "x"\n', "site.import_limit_kw: required key missing"),
    ],
)
def test_errors_are_one_line_with_the_keys_allowed(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_fleetgrid_gateway_prints_one_line_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, SITE + "[mqtt]\nurl = 'mqtt://127.0.0.1:1883'\noutbox_path = 'outbox.sqlite'\n")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fleetgrid"), "gateway", "--config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert output.strip().splitlines() == [
        f"error: {path}: mqtt.outbox_path: unknown key (did you mean outbox?); allowed keys: url, username, "
        "password_env, outbox, keepalive_s"
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_local_authorization_list(tmp_path: Path) -> None:
    import asyncio

    from site_gateway.gateway import Gateway

    text = (
        '[site]\nid = "x"\nimport_limit_kw = 10\n'
        '[[tokens]]\nid_token = "04A2B3"\ndriver_id = "driver-17"\nvehicle_id = "van-17"\n'
    )
    config = load_config(write(tmp_path, text))
    gateway = Gateway(config, mqtt_password=None, outbox_path=tmp_path / "outbox.sqlite")
    known = asyncio.run(gateway._lookup_token("04A2B3"))
    assert known is not None and (known.driver_id, known.vehicle_id) == ("driver-17", "van-17")
    assert asyncio.run(gateway._lookup_token("FFFF")) is None


def test_duplicate_token_is_refused(tmp_path: Path) -> None:
    text = '[site]\nid = "x"\nimport_limit_kw = 10\n[[tokens]]\nid_token = "A"\n[[tokens]]\nid_token = "A"\n'
    with pytest.raises(ConfigError, match="token 'A' is listed twice"):
        load_config(write(tmp_path, text))
