"""The shipped production broker (examples/mosquitto/mosquitto.conf, with examples/mosquitto/acl) run as
written, only its port, paths and user replaced: over TLS with per-site logins and the ACL, a centre
outage and broker restarts (with the centre away, and with it running) lose nothing."""

from __future__ import annotations

import asyncio
import getpass
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from mosquitto import MOSQUITTO_PASSWD, Mosquitto, free_port
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from aggregator.db.models import Charger, Site, TelemetryRecord
from aggregator.db.session import make_sessionmaker
from aggregator.ingestion.pipeline import Ingestion, IngestionSettings, create_sessions
from site_gateway.uplink import Uplink, UplinkSettings
from wire.contract import Telemetry, TopicKind
from wire.mqtt import tls_context
from wire.reconnect import Backoff

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "mosquitto" / "mosquitto.conf"
ACL = REPO / "examples" / "mosquitto" / "acl"
SITE = "depot-north"
PASSWORDS = {"centre": "centre-secret", SITE: "depot-north-secret"}
TIMEOUT_S = 30.0
EVSES = [{"charger_id": "cp-1", "evse_id": 1, "power_kw": 7.4}]

REPLACED = ("listener", "certfile", "keyfile", "password_file", "acl_file", "persistence_location", "user")
"""Directives the test points at its own port, certificate, files and user; "log_dest" goes to a file."""


def directives(text: str) -> list[tuple[str, str]]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [(name, rest.strip()) for name, _, rest in (line.partition(" ") for line in lines if line)]


def test_the_config_states_its_limits_and_the_sizing_arithmetic() -> None:
    config = dict(directives(CONFIG.read_text()))
    assert config["persistence"] == "true" and config["allow_anonymous"] == "false"
    assert int(config["max_inflight_messages"]) < IngestionSettings(host="x").max_unacked
    text = CONFIG.read_text()
    assert "200 sites x 0.12 messages/s x 6 h (21,600 s) = 518,400 messages" in text
    assert 200 * 0.12 * 21_600 == 518_400 <= int(config["max_queued_messages"])


def test_the_shipped_acl_is_the_documented_one() -> None:
    doc = (REPO / "docs" / "mosquitto-acl.md").read_text()
    block = re.search(r"```acl\n(.*?)```", doc, re.S)
    assert block is not None
    assert directives(block.group(1)) == directives(ACL.read_text())


def self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "broker.crt", directory / "broker.key"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        [openssl, *request, "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def shipped_broker(directory: Path) -> Mosquitto:
    """A :class:`Mosquitto` running examples/mosquitto/mosquitto.conf with :data:`REPLACED` replaced."""
    if MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto_passwd is not installed")
    directory.mkdir(parents=True)
    (directory / "data").mkdir()
    cert, key = self_signed(directory)
    passwd = directory / "passwd"
    passwd.write_text("")
    for name, password in PASSWORDS.items():
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), name, password], check=True)
    port = free_port()
    ours = {
        "listener": f"{port} 127.0.0.1",
        "certfile": str(cert),
        "keyfile": str(key),
        "password_file": str(passwd),
        "acl_file": str(ACL),
        "persistence_location": f"{directory / 'data'}/",
        "user": getpass.getuser(),  # as root, mosquitto would switch to "mosquitto" and lose tmp_path
    }
    lines, seen = [], set()
    for name, value in directives(CONFIG.read_text()):
        if name in ours:
            seen.add(name)
            value = ours[name]
        elif name == "log_dest":
            value = f"file {directory / 'mosquitto.log'}"
        lines.append(f"{name} {value}")
    assert seen == set(REPLACED), f"the shipped config lacks {set(REPLACED) - seen}"
    broker = Mosquitto(directory, port=port)
    broker.config = directory / "shipped.conf"  # instead of the helper's own
    broker.config.write_text("\n".join(lines) + "\n")
    return broker


@pytest.fixture
def seeded(session: Session) -> Session:
    session.add(Site(id=SITE, name="Depot North", import_limit_kw=200.0, export_limit_kw=100.0))
    session.add(Charger(site_id=SITE, charge_point_id="cp-1", evse_id=1, max_kw=22.0))
    session.commit()
    return session


async def wait_until(done: Callable[[], bool], what: Callable[[], str], timeout: float = TIMEOUT_S) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"after {timeout} s: {what()}")


def test_a_centre_outage_and_broker_restarts_lose_nothing_on_the_shipped_config(
    tmp_path: Path, engine: Engine, seeded: Session
) -> None:
    """Over TLS, with the site and the centre logged in under the ACL: 100 messages while the centre
    is away (its sessions created at provisioning), a broker restart with them still queued, 50 more,
    then the centre; then 100 more with a broker restart in their midst while the centre runs. Each
    of the 250 is stored once, and no run of missing numbers is reported."""
    broker = shipped_broker(tmp_path / "broker")
    cert = tmp_path / "broker" / "broker.crt"
    tls = tls_context(True, cafile=cert)
    backoff = Backoff(initial_s=0.05, max_s=0.5)
    centre = IngestionSettings(
        host=broker.host,
        port=broker.port,
        username="centre",
        password=PASSWORDS["centre"],
        tls_context=tls,
        timeout_s=5.0,
        backoff=backoff,
    )
    gateway = UplinkSettings(
        site_id=SITE,
        host=broker.host,
        port=broker.port,
        username=SITE,
        password=PASSWORDS[SITE],
        tls_context=tls,
        outbox_path=tmp_path / "outbox.sqlite",
        timeout_s=5.0,
        backoff=backoff,
    )
    sent = 0

    def send(uplink: Uplink, count: int) -> None:
        nonlocal sent
        for _ in range(count):
            uplink.send(Telemetry, site_import_kw=float(sent), evses=EVSES)
            sent += 1

    async def scenario() -> Ingestion:
        assert await create_sessions(centre)
        async with Uplink(gateway) as uplink:
            await uplink.wait_connected(TIMEOUT_S)
            send(uplink, 100)
            await uplink.flush(TIMEOUT_S)  # with the broker, for a centre that is away
            await asyncio.to_thread(broker.restart)
            send(uplink, 50)
            await uplink.flush(TIMEOUT_S)
            async with Ingestion(centre, make_sessionmaker(engine)) as ing:
                counters = ing.stats[TopicKind.TELEMETRY]
                await wait_until(lambda: counters.stored == 150, lambda: f"{counters}")
                send(uplink, 50)
                await asyncio.to_thread(broker.restart)
                send(uplink, 50)
                await uplink.flush(TIMEOUT_S)
                await wait_until(lambda: counters.stored == 250, lambda: f"{counters}")
        return ing

    with broker:
        ing = asyncio.run(asyncio.wait_for(scenario(), 120))
    seeded.expire_all()
    kws = seeded.scalars(select(TelemetryRecord.site_import_kw).order_by(TelemetryRecord.seq)).all()
    assert kws == [float(i) for i in range(250)]
    assert ing.stats[TopicKind.TELEMETRY].failed == 0
    gaps = ing.stats.gaps
    assert gaps.gaps == gaps.singles, list(gaps.recent)  # at most a last will's unused number
