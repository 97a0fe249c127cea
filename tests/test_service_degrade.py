"""Degrade, don't die: ``fleetgrid aggregator`` starts and runs while its outside peers are away.

The real service (:class:`AggregatorService`) starts with an OpenADR 2.0b VTN URL and an InfluxDB URL
on free loopback ports nobody listens on, and a real Mosquitto: the API answers, ingestion stores what
a gateway publishes, and ``GET /admin/status`` names each peer down with why. Then an openleadr VTN
starts on that port: the VEN registers, the status says up, and the VTN's event is stored. Each peer
logs one line when it goes down and one when it comes back, however many retries lie between.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import uvicorn
from mosquitto import Mosquitto, free_port
from openadr3_vtn import Vtn
from openleadr import OpenADRServer
from sqlalchemy import func, select

from aggregator.api.config import Settings
from aggregator.api.security import hash_api_key
from aggregator.db.models import (
    ApiKey,
    DispatchEvent,
    Program,
    ProgramKind,
    Role,
    Site,
    TelemetryRecord,
    User,
)
from aggregator.runtime.config import CentralConfig
from aggregator.runtime.service import AggregatorService
from market_adapters.openadr3 import OpenAdr3Client, OpenAdr3Settings
from wire.contract import Telemetry, encode, telemetry_topic

# openleadr's VTN stores itself on the aiohttp app under a plain string key.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning:openleadr.server")

VEN_ID = "ven-fleetgrid-1"
PRICES = "http://vtn.example/programs/prices"
ADMIN_KEY = "fgk_test-admin-key"
T0 = dt.datetime(2031, 7, 1, 16, 0, tzinfo=dt.UTC)  # far in the future: the event stays 'far'
Q = dt.timedelta(minutes=15)


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def refused_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def write_config(tmp_path: Path, *, mqtt_port: int, vtn_port: int, influx_port: int) -> CentralConfig:
    path = tmp_path / "central.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "central.sqlite"}"\n'
        "[api]\nport = 0\n"
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\n'
        "[control]\nsolver_time_limit_s = 5\n"
        f'[influxdb]\nurl = "http://127.0.0.1:{influx_port}"\norg = "fleet"\nbucket = "telemetry"\n'
        'token_env = "TEST_INFLUX_TOKEN"\n'
        "[[openadr]]\n"
        'kind = "2.0b"\n'
        f'vtn_url = "http://127.0.0.1:{vtn_port}/OpenADR2/Simple/2.0b"\n'
        'ven_name = "fleetgrid-test"\n'
        "insecure_test_mode = true\n"
        "poll_interval_s = 0.1\n"
        "request_timeout_s = 5\n"
        'currency = "USD"\n'
        f'program_map = {{ "{PRICES}" = "rtp" }}\n'
    )
    return CentralConfig.load(path)


def seed(service: AggregatorService) -> None:
    """A site, an admin with an API key, and the grid operator's price program ``rtp``."""
    with service.sessions() as session:
        admin = User(email="admin@example.org", password_hash="x", role=Role.ADMIN)
        operator = User(email="op@example.org", password_hash="x", role=Role.GRID_OPERATOR)
        session.add_all(
            [admin, operator, Site(id="depot-1", name="Depot", import_limit_kw=50, export_limit_kw=0)]
        )
        session.flush()
        session.add(ApiKey(key_hash=hash_api_key(ADMIN_KEY), name="status", owner_id=admin.id))
        session.add(Program(id="rtp", name="Prices", kind=ProgramKind.DR, owner_id=operator.id))
        session.commit()


def count(service: AggregatorService, model: type) -> int:
    with service.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


async def status(service: AggregatorService) -> dict[str, dict[str, Any]]:
    """``GET /admin/status`` as the admin: each dependency's entry by name."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}") as client:
        answer = await client.get("/admin/status", headers={"X-API-Key": ADMIN_KEY})
    assert answer.status_code == 200, answer.text
    return {entry["name"]: entry for entry in answer.json()["dependencies"]}


def vtn_on(port: int) -> OpenADRServer:
    """openleadr's VTN on ``port`` (unsigned test mode), registering our VEN as :data:`VEN_ID`."""
    vtn = OpenADRServer(
        vtn_id="TESTVTN",
        http_port=port,
        http_host="127.0.0.1",
        requested_poll_freq=dt.timedelta(seconds=10),
        verify_message_signatures=False,
        show_fingerprint=False,
    )
    vtn.add_handler("on_create_party_registration", lambda payload: (VEN_ID, "reg-1"))
    vtn.add_handler("on_register_report", lambda *args, **kwargs: None)
    return vtn


def transitions(records: list[logging.LogRecord], dependency: str) -> list[str]:
    """The states logged for ``dependency`` (``extra={"dependency": ..., "state": ...}``), in order."""
    return [r.state for r in records if getattr(r, "dependency", None) == dependency]  # type: ignore[attr-defined]


@pytest.fixture
def influx_token(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TEST_INFLUX_TOKEN", "token")
    yield


@pytest.mark.usefixtures("influx_token")
def test_the_service_runs_without_its_vtn_and_influxdb_and_takes_the_vtn_when_it_comes(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    vtn_port, influx_port = refused_port(), refused_port()
    config = write_config(tmp_path, mqtt_port=broker.port, vtn_port=vtn_port, influx_port=influx_port)
    vtn_source = f"openadr2b:127.0.0.1:{vtn_port}"

    async def scenario() -> None:
        async with AggregatorService(config, Settings()) as service:
            seed(service)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}") as client:
                assert (await client.get("/docs")).status_code == 200

            # ingestion stores a gateway's telemetry from Mosquitto; the mirror cannot write it
            assert service.ingestion is not None
            await service.ingestion.wait_subscribed(10)
            reading = Telemetry(
                site_id="depot-1", seq=1, sent_at=dt.datetime.now(dt.UTC), site_import_kw=12.5, evses=()
            )
            async with aiomqtt.Client("127.0.0.1", broker.port) as gateway:
                await gateway.publish(telemetry_topic("depot-1"), encode(reading), qos=1)
            await until(lambda: count(service, TelemetryRecord) == 1, "the telemetry stored")

            async def down_a_while() -> bool:
                deps = await status(service)
                return deps["openadr:1"]["failures"] >= 3 and deps["influxdb"]["state"] == "down"

            deadline = asyncio.get_running_loop().time() + 30
            while not await down_a_while():
                assert asyncio.get_running_loop().time() < deadline, await status(service)
                await asyncio.sleep(0.2)
            deps = await status(service)
            assert deps["openadr:1"]["state"] == "down"
            assert deps["openadr:1"]["kind"] == "openadr-vtn"
            assert "refused" in deps["openadr:1"]["last_error"].lower(), deps["openadr:1"]
            assert deps["influxdb"]["last_error"], deps["influxdb"]
            assert deps["mqtt"]["state"] == "up"
            assert deps["openadr:1"]["since"] is not None

            # the VTN starts on that port, with an event waiting for our VEN
            vtn = vtn_on(vtn_port)
            await vtn.run()
            try:
                vtn.add_event(
                    ven_id=VEN_ID,
                    signal_name="ELECTRICITY_PRICE",
                    signal_type="price",
                    intervals=[{"dtstart": T0, "duration": Q, "signal_payload": 0.31}],
                    market_context=PRICES,
                    callback=lambda ven_id, event_id, opt_type: None,
                )
                await until(lambda: count(service, DispatchEvent) == 1, "the VTN's event stored", 60)
                deps = await status(service)
                assert deps["openadr:1"]["state"] == "up", deps["openadr:1"]
                assert deps["openadr:1"]["failures"] == 0
                with service.sessions() as session:
                    [event] = session.scalars(select(DispatchEvent))
                    assert (event.source, event.program_id) == (vtn_source, "rtp")
            finally:
                await vtn.stop()
            assert transitions(caplog.records, vtn_source) == ["down", "up"]

            # later: the VTN goes away while the VEN polls it, and comes back
            await until(lambda: service.dependencies["openadr:1"].failures >= 3, "polls failing", 60)
            assert (await status(service))["openadr:1"]["state"] == "down"
            vtn = vtn_on(vtn_port)
            await vtn.run()
            try:
                await until(lambda: service.dependencies["openadr:1"].state == "up", "the VTN back", 60)
            finally:
                await vtn.stop()
            assert transitions(caplog.records, vtn_source) == ["down", "up", "down", "up"]

    asyncio.run(scenario())

    records = caplog.records
    assert transitions(records, f"influxdb:http://127.0.0.1:{influx_port}") == ["down"]
    assert transitions(records, "mqtt") == ["up"]
    noisy = [
        r for r in records if r.pathname.endswith("openleadr/client.py") and r.levelno >= logging.WARNING
    ]
    assert noisy == [], [r.getMessage() for r in noisy]


@pytest.mark.usefixtures("influx_token")
def test_a_broker_away_at_start_up_is_reported_and_taken_when_it_comes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    mosquitto = Mosquitto(tmp_path / "broker")  # made, not started: its port refuses
    config = write_config(
        tmp_path, mqtt_port=mosquitto.port, vtn_port=refused_port(), influx_port=refused_port()
    )

    async def scenario() -> None:
        async with AggregatorService(config, Settings(), rng=random.Random(3)) as service:
            seed(service)
            deps = await status(service)
            await until(lambda: service.dependencies["mqtt"].state == "down", "the broker reported down")
            assert deps["mqtt"]["target"] == f"127.0.0.1:{mosquitto.port}"
            with mosquitto:
                assert service.ingestion is not None
                await service.ingestion.wait_subscribed(30)
                await until(lambda: service.dependencies["mqtt"].state == "up", "the broker reported up")
                assert (await status(service))["mqtt"]["state"] == "up"

    asyncio.run(scenario())
    assert transitions(caplog.records, "mqtt")[:2] == ["down", "up"]


def test_an_openadr3_vtn_away_is_polled_with_backoff_and_logged_once_each_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The OpenADR 3 client against a port that refuses, then the test VTN (tests/openadr3_vtn.py) on it:
    every poll's outcome reaches ``on_link``, one line is logged each way, and the event comes through."""
    caplog.set_level(logging.DEBUG)
    port = refused_port()
    settings = OpenAdr3Settings(
        vtn_url=f"http://127.0.0.1:{port}",
        client_id="ven-1",
        client_secret="s3cret",
        client_name="fleetgrid",
        poll_interval_s=0.05,
        max_retries=0,
        backoff_base_s=0.05,
        backoff_max_s=0.2,
    )
    outcomes: list[str | None] = []
    signals: list[Any] = []

    async def sink(signal: Any) -> None:
        signals.append(signal)

    async def scenario() -> None:
        vtn = Vtn()
        program = vtn.add_program("DR-1")
        vtn.events["e-1"] = {
            "id": "e-1",
            "programID": program["id"],
            "createdDateTime": "2025-01-01T00:00:00Z",
            "intervalPeriod": {"start": T0.isoformat(), "duration": "PT30M"},
            "intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [20]}]}],
        }
        client = OpenAdr3Client(settings, sink=sink, rng=random.Random(5), on_link=outcomes.append)
        async with client:
            await until(lambda: len(outcomes) >= 4, "four failed polls")
            assert client.answering is False and all(outcomes)
            server = uvicorn.Server(
                uvicorn.Config(vtn.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
            )
            serving = asyncio.create_task(server.serve(), name="openadr3-vtn")
            try:
                await until(lambda: len(signals) == 1, "the VTN's event")
                assert client.answering is True and outcomes[-1] is None
            finally:
                server.should_exit = True
                await serving

    asyncio.run(scenario())
    assert transitions(caplog.records, f"openadr3:127.0.0.1:{port}")[:2] == ["down", "up"]
    assert not [
        r for r in caplog.records if r.name == "market_adapters.openadr3" and r.levelno >= logging.ERROR
    ]
