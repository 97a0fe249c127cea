"""Nothing acknowledged is lost at the centre: store before acknowledge under SIGKILL, sessions that
exist before the centre first runs, a bounded window of unacknowledged messages, and sequence gaps
that make an overflowing broker visible. Real Mosquitto brokers on free ports, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mosquitto import Mosquitto
from sqlalchemy import Engine, func
from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from aggregator.cli import app
from aggregator.db.models import Charger, Site, TelemetryRecord
from aggregator.db.session import make_sessionmaker
from aggregator.ingestion.gaps import Gap, SequenceGaps
from aggregator.ingestion.pipeline import Ingestion, IngestionSettings, create_sessions
from site_gateway.uplink import Uplink, UplinkSettings
from wire.contract import QOS, Telemetry, TopicKind, build, encode, telemetry_topic
from wire.reconnect import Backoff

SITE = "depot-north"
T0 = dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC)
TIMEOUT_S = 20.0
EVSES = [{"charger_id": "cp-1", "evse_id": 1, "power_kw": 7.4}]
PROCESS = Path(__file__).resolve().parent / "ingestion_process.py"


@pytest.fixture
def seeded(session: Session) -> Session:
    session.add(Site(id=SITE, name="Depot North", import_limit_kw=200.0, export_limit_kw=100.0))
    session.add(Charger(site_id=SITE, charge_point_id="cp-1", evse_id=1, max_kw=22.0))
    session.commit()
    return session


def stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sql_select(func.count()).select_from(TelemetryRecord)) or 0)


async def wait_until(done: Callable[[], bool], what: Callable[[], str], timeout: float = TIMEOUT_S) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"after {timeout} s: {what()}")


def telemetry(seq: int, site_id: str = SITE) -> bytes:
    return encode(
        build(
            Telemetry,
            site_id=site_id,
            seq=seq,
            sent_at=T0 + dt.timedelta(seconds=seq),
            site_import_kw=float(seq),
            evses=EVSES,
        )
    )


async def publish(mq: Mosquitto, seqs: range) -> None:
    """As a gateway's outbox does: one QoS 1 message at a time, each waiting for the broker's PUBACK."""
    async with aiomqtt.Client(mq.host, mq.port, identifier="publisher", timeout=5) as client:
        for seq in seqs:
            await client.publish(telemetry_topic(SITE), telemetry(seq), qos=QOS)


def settings(mq: Mosquitto, **overrides: Any) -> IngestionSettings:
    fields: dict[str, Any] = {
        "host": mq.host,
        "port": mq.port,
        "timeout_s": 5.0,
        "backoff": Backoff(initial_s=0.05, max_s=0.5),
    }
    return IngestionSettings(**(fields | overrides))


# --------------------------------------------------------------------------------- the kill test


class Centre:
    """``tests/ingestion_process.py`` as a child process: the centre's ingestion alone."""

    def __init__(self, database_url: str, mq: Mosquitto, log: Path) -> None:
        self.log = log
        self._stderr = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(PROCESS), database_url, mq.host, str(mq.port), "--commit-delay-s", "0.05"],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=os.environ.copy(),
        )

    def wait_subscribed(self, timeout: float = 60.0) -> None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().decode().strip() if ready else ""
        assert line == "subscribed", f"the centre did not subscribe: {line!r}\n{self.log.read_text()}"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.close()

    def close(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()

    def stop(self) -> dict[str, dict[str, int]]:
        """SIGTERM: store what was taken, print the counters."""
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=60)
        self._stderr.close()
        counters: dict[str, dict[str, int]] = json.loads(out.decode().strip().splitlines()[-1])
        return counters


@pytest.fixture
def centres() -> Iterator[list[Centre]]:
    started: list[Centre] = []
    yield started
    for centre in started:
        if centre.process.poll() is None:
            centre.process.kill()
            centre.process.wait(10)
        centre.close()


def test_a_centre_killed_mid_batch_loses_nothing_the_gateway_handed_over(
    database_url: str,
    engine: Engine,
    seeded: Session,
    tmp_path: Path,
    centres: list[Centre],
) -> None:
    """A real gateway uplink hands 600 telemetry messages to a persistent Mosquitto, deleting each from
    its outbox on the broker's PUBACK, while the centre (its own process, every commit held 50 ms)
    stores them. SIGKILL the centre once a quarter are stored, mid-batch; restart it: every message is
    stored exactly once. On the old code (acknowledged on arrival) the centre had acknowledged
    everything the broker sent it, so what it had not stored when killed was lost for good."""
    n = 600
    uplink_settings = UplinkSettings(
        site_id=SITE,
        host="127.0.0.1",
        port=0,
        outbox_path=tmp_path / "outbox.sqlite",
        backoff=Backoff(initial_s=0.05, max_s=0.5),
        timeout_s=5.0,
    )

    async def scenario(mq: Mosquitto) -> tuple[int, dict[str, dict[str, int]]]:
        centres.append(Centre(database_url, mq, tmp_path / "centre-1.log"))
        centres[-1].wait_subscribed()
        up = UplinkSettings(**{**uplink_settings.__dict__, "port": mq.port})
        async with Uplink(up) as uplink:
            await uplink.wait_connected(TIMEOUT_S)
            for i in range(n):
                uplink.send(Telemetry, site_import_kw=float(i), evses=EVSES)
            await wait_until(lambda: stored(engine) >= n // 4, lambda: f"{stored(engine)} stored")
            centres[-1].kill()
            at_kill = stored(engine)
            await uplink.flush(60.0)  # every message is with the broker and gone from the outbox
            assert len(uplink.outbox) == 0
        centres.append(Centre(database_url, mq, tmp_path / "centre-2.log"))
        centres[-1].wait_subscribed()
        await wait_until(
            lambda: stored(engine) == n,
            lambda: f"{stored(engine)} of {n} stored: {n - stored(engine)} acknowledged and lost",
            timeout=60.0,
        )
        return at_kill, centres[-1].stop()

    with Mosquitto(tmp_path / "broker") as mq:
        at_kill, counters = asyncio.run(scenario(mq))
    assert at_kill < n, "the kill came after everything was stored: it proves nothing"
    seeded.expire_all()
    kws = seeded.scalars(sql_select(TelemetryRecord.site_import_kw).order_by(TelemetryRecord.seq)).all()
    assert kws == [float(i) for i in range(n)]  # each message once, in the order the gateway sent them
    telemetry_counters = counters[TopicKind.TELEMETRY.value]
    assert telemetry_counters["failed"] == 0 and telemetry_counters["stored"] == n - at_kill
    assert "never arrived" not in (tmp_path / "centre-2.log").read_text()  # and no gap reported


# --------------------------------------------------------------------------- sessions provisioned


def test_messages_published_before_the_centre_first_ran_wait_for_it(
    broker: Mosquitto, engine: Engine, seeded: Session
) -> None:
    """Sessions created at provisioning: what gateways publish before the centre ever ran is queued
    for it. Without them (another client id, never provisioned) the same messages are gone."""
    provisioned = settings(broker, client_id="centre-provisioned")
    never = settings(broker, client_id="centre-never-provisioned")

    async def scenario() -> tuple[Ingestion, Ingestion]:
        assert await create_sessions(provisioned) == ["centre-provisioned"]
        assert await create_sessions(provisioned) == ["centre-provisioned"]  # again: changes nothing
        await publish(broker, range(1, 11))
        async with Ingestion(never, make_sessionmaker(engine)) as without:
            await without.wait_subscribed(TIMEOUT_S)
            await asyncio.sleep(0.5)
        async with Ingestion(provisioned, make_sessionmaker(engine)) as ing:
            counters = ing.stats[TopicKind.TELEMETRY]
            await wait_until(lambda: counters.stored == 10, lambda: f"{counters}")
        return without, ing

    without, ing = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert without.stats[TopicKind.TELEMETRY].received == 0
    assert ing.stats[TopicKind.TELEMETRY].stored == 10 and ing.stats.gaps.gaps == 0


def test_fleetgrid_admin_creates_the_centre_s_sessions_on_the_broker_of_central_toml(
    broker: Mosquitto, engine: Engine, seeded: Session, tmp_path: Path
) -> None:
    config = tmp_path / "central.toml"
    database = f"sqlite:///{tmp_path / 'unused.sqlite'}"
    config.write_text(f'[database]\nurl = "{database}"\n[mqtt]\nurl = "mqtt://{broker.host}:{broker.port}"\n')
    result = CliRunner().invoke(app, ["admin", "--config", str(config), "create-broker-sessions"])
    assert result.exit_code == 0, result.output
    assert "keeps sessions for fleetgrid-centre-ingestion" in result.output
    centre = settings(broker)  # the service's client id: [mqtt] client_id + "-ingestion"
    assert centre.client_id == "fleetgrid-centre-ingestion"

    async def scenario() -> Ingestion:
        await publish(broker, range(1, 6))
        async with Ingestion(centre, make_sessionmaker(engine)) as ing:
            counters = ing.stats[TopicKind.TELEMETRY]
            await wait_until(lambda: counters.stored == 5, lambda: f"{counters}")
        return ing

    asyncio.run(asyncio.wait_for(scenario(), 60))
    config.write_text(f'[database]\nurl = "{database}"\n[mqtt]\nurl = "embedded"\n')
    result = CliRunner().invoke(app, ["admin", "--config", str(config), "create-broker-sessions"])
    assert result.exit_code == 2 and "that broker keeps no sessions" in result.output


# ------------------------------------------------------------------------ the unacknowledged window


def test_a_window_past_max_unacked_is_stored_then_taken_again(
    broker: Mosquitto, engine: Engine, seeded: Session, caplog: pytest.LogCaptureFixture
) -> None:
    """Mosquitto sends up to 20 unacknowledged messages (its default max_inflight_messages) to a
    centre that holds at most 5: each connection stores what it took, acknowledges it, and reconnects
    for the rest; all 60 are stored once and the error names the broker setting to change."""
    bounded = settings(broker, max_unacked=5, batch_max_messages=5, max_pending=5)

    async def scenario() -> Ingestion:
        assert await create_sessions(bounded)
        await publish(broker, range(1, 61))
        async with Ingestion(bounded, make_sessionmaker(engine)) as ing:
            counters = ing.stats[TopicKind.TELEMETRY]
            await wait_until(lambda: counters.stored == 60, lambda: f"{counters}", timeout=60)
        return ing

    with caplog.at_level(logging.ERROR, logger="aggregator.ingestion.pipeline"):
        ing = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert ing.connects > 1 and ing.stats[TopicKind.TELEMETRY].failed == 0
    assert "max_inflight_messages" in caplog.text
    assert stored(engine) == 60


def test_max_unacked_must_hold_a_batch(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"max_unacked \(10\) must be at least batch_max_messages \(500\)"):
        Ingestion(IngestionSettings(host="127.0.0.1", max_unacked=10), make_sessionmaker(engine))


# ------------------------------------------------------------------------------------ sequence gaps


def test_an_outage_longer_than_the_broker_holds_is_reported_as_a_gap(
    tmp_path: Path, engine: Engine, seeded: Session, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that queues 30 messages for the absent centre drops the rest of a 100-message outage;
    the centre stores what was kept and, at the first message after, reports the numbers that never
    came: one gap, logged with its range, counted in the stats."""
    mq = Mosquitto(tmp_path / "broker")
    mq.config.write_text(
        mq.config.read_text().replace("max_queued_messages 100000", "max_queued_messages 30")
    )
    small = settings(mq)

    async def scenario() -> Ingestion:
        assert await create_sessions(small)
        await publish(mq, range(1, 101))  # the centre is away
        async with Ingestion(small, make_sessionmaker(engine)) as ing:
            counters = ing.stats[TopicKind.TELEMETRY]
            await ing.wait_subscribed(TIMEOUT_S)
            await asyncio.sleep(0.5)  # what the broker kept arrives
            kept = counters.stored
            await publish(mq, range(101, 106))
            await wait_until(lambda: counters.stored == kept + 5, lambda: f"{counters}")
        return ing

    with mq, caplog.at_level(logging.WARNING, logger="aggregator.ingestion.pipeline"):
        ing = asyncio.run(asyncio.wait_for(scenario(), 60))
    kept = stored(engine) - 5
    assert 0 < kept < 100
    gaps = ing.stats.gaps
    assert (gaps.gaps, gaps.missing) == (1, 100 - kept)
    assert ing.gaps == [Gap(SITE, kept + 1, 100, ing.gaps[0].detected_at)]
    assert f"seq {kept + 1}-100 never arrived: {100 - kept} messages lost" in caplog.text


def test_gaps_are_declared_by_ordered_messages_and_a_late_number_is_taken_back() -> None:
    gaps = SequenceGaps()
    observe = gaps.observe
    assert observe("s", 10, ordered=True, at=T0) == []  # the first we hear of the site
    # at a gateway's reconnect: its status (12) overtakes its backlog (11); its will's number (13) is
    # reserved but unused; a status superseded in the outbox (15) was never sent
    assert observe("s", 12, ordered=False, at=T0) == []
    assert observe("s", 11, ordered=True, at=T0) == []
    assert observe("s", 14, ordered=True, at=T0) == [Gap("s", 13, 13, T0)]
    assert observe("s", 16, ordered=True, at=T0) == [Gap("s", 15, 15, T0)]
    assert (gaps.gaps, gaps.singles, gaps.missing) == (2, 2, 2)
    # an outage the broker could not hold: a run of numbers
    assert observe("s", 40, ordered=True, at=T0) == [Gap("s", 17, 39, T0)]
    # the will of an old connection arrives at last: taken back, once
    assert observe("s", 13, ordered=False, at=T0) == [] and observe("s", 13, ordered=False, at=T0) == []
    assert (gaps.gaps, gaps.missing, gaps.late) == (3, 2 + 23 - 1, 1)
    # redeliveries change nothing
    assert observe("s", 40, ordered=True, at=T0) == [] and observe("s", 11, ordered=True, at=T0) == []
    assert gaps.missing == 24


def test_gaps_start_from_what_is_stored_and_wait_out_the_reorder_window() -> None:
    gaps = SequenceGaps(reorder_window=3)
    gaps.start_from({"s": 100})
    assert gaps.observe("s", 95, ordered=True, at=T0) == []  # a redelivery of what is stored
    assert gaps.observe("s", 103, ordered=True, at=T0) == []  # 101, 102 may still come
    assert gaps.observe("s", 101, ordered=True, at=T0) == []
    assert gaps.observe("s", 106, ordered=True, at=T0) == [Gap("s", 102, 102, T0)]
    assert gaps.observe("s", 104, ordered=True, at=T0) == []
    assert gaps.gaps == 1 and gaps.missing == 1
