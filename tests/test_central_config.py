"""``central.toml``: sections, secrets from the environment, clear errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.central_config import CentralConfig, CentralConfigError

EXAMPLE = Path(__file__).parents[1] / "examples" / "central.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "central.toml"
    path.write_text(text)
    return path


def test_the_example_loads() -> None:
    config = CentralConfig.load(EXAMPLE)
    assert config.mqtt.embedded
    assert config.database.url.startswith("sqlite:///")


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
        ("[mqtt]\nurl = 'http://x'\n", "mqtt.url"),
        ("[api]\nport = 70000\n", "api.port"),
        ("[databse]\nurl = 'x'\n", "databse"),
        ("[api\n", "not valid TOML"),
        ("[influxdb]\nurl = 'http://x'\n", "influxdb.org"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CentralConfigError, match=message) as raised:
        CentralConfig.load(path)
    assert str(path) in str(raised.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CentralConfigError, match="cannot read"):
        CentralConfig.load(tmp_path / "nope.toml")
