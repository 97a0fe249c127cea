"""``central.toml``: sections, secrets from the environment, clear errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.central_config import CentralConfig, CentralConfigError, Openadr2Section, Openadr3Section

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
        ("[[openadr]]\nkind = '2'\nvtn_url = 'x'\nven_name = 'v'\n", "openadr.0: Input tag '2'"),
        (
            "[[openadr]]\nkind = '3'\nvtn_url = 'x'\nven_name = 'v'\n",
            r"openadr.0.3.client_id: Field required",
        ),
        (
            "[[openadr]]\nkind = '2.0b'\nvtn_url = 'x'\nven_name = 'v'\n",
            "openadr.0.2.0b: .*cert_path, key_path, ca_path, vtn_fingerprint required",
        ),
        (
            "[[openadr]]\nkind = '2.0b'\nvtn_url = 'x'\nven_name = 'v'\ninsecure_test_mode = true\n"
            "program_map = { p = 'peak' }\nsimple_levels_kw = { 4 = 10 }\n",
            "openadr.0.2.0b: .*simple_levels_kw: level 4",
        ),
        ("[[openadr]]\nkind = '3'\nvtn_url = 'x'\nven_nam = 'v'\n", "openadr.0.3.ven_nam"),
    ],
)
def test_openadr_errors_name_the_entry_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CentralConfigError, match=message) as raised:
        CentralConfig.load(path)
    assert str(path) in str(raised.value)
