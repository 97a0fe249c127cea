"""The one way our MQTT clients reach the broker (wire/mqtt.py): broker URLs, TLS, the client factory.

The factory is tested against a real Mosquitto on loopback, once plain and once behind TLS with a
throwaway self-signed certificate.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import aiomqtt
import pytest
from mosquitto import Mosquitto

from site_gateway.config import MqttBrokerSection
from wire import mqtt
from wire.mqtt import BrokerSettings, BrokerUrl, tls_context

WAIT = 5.0  # seconds, for any single exchange with the broker


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.example", BrokerUrl("broker.example", 1883, tls=False)),
        ("mqtt://broker.example:1884", BrokerUrl("broker.example", 1884, tls=False)),
        ("mqtts://broker.example", BrokerUrl("broker.example", 8883, tls=True)),
        ("mqtts://10.0.0.7:9883", BrokerUrl("10.0.0.7", 9883, tls=True)),
    ],
)
def test_broker_url_reads_scheme_host_and_default_port(url: str, expected: BrokerUrl) -> None:
    assert BrokerUrl.parse(url) == expected


@pytest.mark.parametrize(
    "url", ["http://broker.example", "broker.example:1883", "mqtt://", "mqtts://broker.example:99999"]
)
def test_broker_url_refuses_what_is_not_a_broker_and_names_it(url: str) -> None:
    with pytest.raises(ValueError, match="must look like mqtt://host:1883 or mqtts://host:8883") as refused:
        BrokerUrl.parse(url)
    assert repr(url) in str(refused.value)


def test_tls_context_only_for_tls_and_it_checks_the_broker() -> None:
    assert tls_context(False) is None
    context = tls_context(True)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


def test_config_section_reads_the_url_the_same_way() -> None:
    plain = MqttBrokerSection(url="mqtt://broker.example")
    secure = MqttBrokerSection(url="mqtts://broker.example")
    assert (plain.host, plain.port, plain.tls, plain.tls_context()) == ("broker.example", 1883, False, None)
    assert (secure.host, secure.port, secure.tls) == ("broker.example", 8883, True)
    assert isinstance(secure.tls_context(), ssl.SSLContext)


async def _round_trip(settings: BrokerSettings, identifier: str) -> bytes:
    """Subscribe, publish one QoS 1 message to ourselves through the broker, return what came back."""
    async with asyncio.timeout(WAIT), mqtt.client(settings, identifier) as client:
        await client.subscribe("fleetgrid/test/echo", qos=1)
        await client.publish("fleetgrid/test/echo", b"hello", qos=1)
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return message.payload
    raise AssertionError("the connection ended before the message came back")


def test_client_speaks_to_a_plain_broker(broker: Mosquitto) -> None:
    settings = BrokerSettings(host=broker.host, port=broker.port, timeout_s=WAIT)
    assert asyncio.run(_round_trip(settings, "wire-test-plain")) == b"hello"


def test_client_reaches_a_tls_broker_only_with_the_tls_context(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    key.chmod(0o600)
    tls_broker = Mosquitto(tmp_path / "mosquitto")
    # certfile and keyfile after the listener line make that listener TLS only
    tls_broker.config.write_text(tls_broker.config.read_text() + f"certfile {cert}\nkeyfile {key}\n")
    with tls_broker:
        secure = BrokerSettings(
            host=tls_broker.host, port=tls_broker.port, timeout_s=WAIT, tls_context=tls_context(True, cert)
        )
        assert asyncio.run(_round_trip(secure, "wire-test-tls")) == b"hello"
        plain = BrokerSettings(host=tls_broker.host, port=tls_broker.port, timeout_s=2.0)
        with pytest.raises(aiomqtt.MqttError):
            asyncio.run(_round_trip(plain, "wire-test-not-tls"))
