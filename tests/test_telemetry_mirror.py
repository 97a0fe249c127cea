"""The InfluxDB mirror against a real HTTP peer on loopback.

InfluxDB itself cannot run here, so :class:`InfluxWriteServer` is a tiny InfluxDB 2.x write endpoint:
``POST /api/v2/write?org=..&bucket=..&precision=..`` with a ``Token`` authorization and a
line-protocol body, answered ``204`` as InfluxDB does (or, when told to, ``503`` / ``400`` with
InfluxDB's JSON error body). It is the peer the mirror's HTTP client (influxdb-client, aiohttp) really
talks to over TCP, not a stand-in for any of our code: everything of ours runs as in production.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import pytest
from mosquitto import free_port
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from aggregator.db.models import Site
from aggregator.db.session import make_sessionmaker
from aggregator.ingestion.pipeline import Ingestion, IngestionSettings
from aggregator.ingestion.telemetry_mirror import MirrorSettings, TelemetryMirror, line_protocol
from wire.contract import Telemetry, build, encode, telemetry_topic
from wire.reconnect import Backoff

T0 = dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC)
T0_NS = 1_795_680_000 * 10**9  # 2026-11-26T08:00:00Z
TOKEN = "test-token"


@dataclass(frozen=True)
class WriteRequest:
    query: dict[str, list[str]]
    authorization: str | None
    lines: list[str]


class InfluxWriteServer:
    """``POST /api/v2/write`` on a free loopback port, recording what it stores.

    ``answers`` is a list of HTTP statuses to give the next requests instead of storing them (then it
    stores again); every request, stored or not, is counted in ``attempts``.
    """

    def __init__(self) -> None:
        self.stored: list[WriteRequest] = []
        self.answers: list[int] = []
        self.attempts = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="influx-write-server"
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return [line for request in self.stored for line in request.lines]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if url.path != "/api/v2/write":
                    self._answer(404, {"code": "not found", "message": f"path {url.path} not found"})
                    return
                with peer._lock:
                    peer.attempts += 1
                    status = peer.answers.pop(0) if peer.answers else 204
                    if status == 204:
                        peer.stored.append(
                            WriteRequest(
                                parse_qs(url.query),
                                self.headers.get("Authorization"),
                                body.decode().split("\n"),
                            )
                        )
                if status == 204:
                    self._answer(204, None)
                else:
                    self._answer(status, {"code": "unavailable", "message": "told to fail"})

            def _answer(self, status: int, payload: dict[str, str] | None) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "0")
                if payload is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def influx() -> Iterator[InfluxWriteServer]:
    with InfluxWriteServer() as server:
        yield server


class RecordedSleep:
    """The mirror's waits, recorded and skipped, so backoff costs no wall time."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def settings(url: str, **overrides: Any) -> MirrorSettings:
    fields: dict[str, Any] = {
        "url": url,
        "org": "fleet",
        "bucket": "telemetry",
        "token": TOKEN,
        "timeout_s": 5.0,
        "backoff": Backoff(initial_s=0.5, max_s=4.0),
    }
    return MirrorSettings(**(fields | overrides))


def telemetry(seq: int, site_id: str = "depot-1") -> Telemetry:
    return build(
        Telemetry,
        site_id=site_id,
        seq=seq,
        sent_at=T0 + dt.timedelta(seconds=seq),
        site_import_kw=40.5,
        base_load_kw=None if seq % 2 else 8.0,
        evses=[
            {"charger_id": "cp-1", "evse_id": 1, "power_kw": 11.0, "energy_kwh": 2.5, "soc_percent": 41.5},
            {"charger_id": "cp-2", "evse_id": 2, "power_kw": -7.4},
        ],
    )


def test_line_protocol_has_one_point_per_site_and_evse_at_the_sent_time() -> None:
    assert line_protocol(telemetry(2)) == [
        f"site_telemetry,site_id=depot-1 seq=2i,site_import_kw=40.5,base_load_kw=8.0 {T0_NS + 2 * 10**9}",
        "evse_telemetry,site_id=depot-1,charger_id=cp-1,evse_id=1"
        f" power_kw=11.0,energy_kwh=2.5,soc_percent=41.5 {T0_NS + 2 * 10**9}",
        f"evse_telemetry,site_id=depot-1,charger_id=cp-2,evse_id=2 power_kw=-7.4 {T0_NS + 2 * 10**9}",
    ]


def test_offered_telemetry_is_written_in_batches_with_org_bucket_and_token(influx: InfluxWriteServer) -> None:
    async def scenario() -> TelemetryMirror:
        async with TelemetryMirror(settings(influx.url, batch_messages=4), sleep=RecordedSleep()) as mirror:
            mirror.offer([telemetry(seq) for seq in range(1, 11)])
        return mirror

    mirror = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [len(request.lines) for request in influx.stored] == [12, 12, 6]  # 4 + 4 + 2 messages
    assert influx.lines == [line for seq in range(1, 11) for line in line_protocol(telemetry(seq))]
    request = influx.stored[0]
    assert request.authorization == f"Token {TOKEN}"
    assert (request.query["org"], request.query["bucket"], request.query["precision"]) == (
        ["fleet"],
        ["telemetry"],
        ["ns"],
    )
    assert (mirror.stats.offered, mirror.stats.written, mirror.stats.points, mirror.stats.writes) == (
        10,
        10,
        30,
        3,
    )
    assert (mirror.stats.dropped, mirror.stats.retries, mirror.stats.failed_points) == (0, 0, 0)


def test_a_503_is_retried_with_backoff_and_the_batch_written_once(influx: InfluxWriteServer) -> None:
    influx.answers = [503, 503]
    sleep = RecordedSleep()

    async def scenario() -> TelemetryMirror:
        async with TelemetryMirror(settings(influx.url), sleep=sleep, random=lambda: 1.0) as mirror:
            mirror.offer([telemetry(1), telemetry(2)])
        return mirror

    mirror = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert influx.attempts == 3
    assert influx.lines == line_protocol(telemetry(1)) + line_protocol(telemetry(2))
    assert (mirror.stats.retries, mirror.stats.written, mirror.stats.failed_points) == (2, 2, 0)
    assert sleep.delays[:2] == [0.5, 1.0]  # jitter 1.0: the full backoff ceiling, doubling


def test_a_refused_write_is_not_retried_and_an_unreachable_server_is_given_up(
    influx: InfluxWriteServer,
) -> None:
    influx.answers = [400]
    sleep = RecordedSleep()

    async def scenario(url: str) -> TelemetryMirror:
        async with TelemetryMirror(settings(url, max_attempts=3), sleep=sleep) as mirror:
            mirror.offer([telemetry(1)])
        return mirror

    refused = asyncio.run(asyncio.wait_for(scenario(influx.url), 30))
    assert influx.attempts == 1 and influx.stored == []
    assert (refused.stats.retries, refused.stats.failed_points, refused.stats.written) == (0, 3, 0)

    unreachable = asyncio.run(asyncio.wait_for(scenario(f"http://127.0.0.1:{free_port()}"), 30))
    assert (unreachable.stats.retries, unreachable.stats.failed_points) == (2, 3)


def test_a_full_queue_drops_the_oldest_and_offer_never_waits(influx: InfluxWriteServer) -> None:
    async def scenario() -> TelemetryMirror:
        mirror = TelemetryMirror(settings(influx.url, queue_size=3, max_attempts=1), sleep=RecordedSleep())
        mirror.offer([telemetry(seq) for seq in range(1, 6)])  # before the writer runs: 2 pushed out
        assert mirror.queued == 3
        async with mirror:
            pass
        return mirror

    mirror = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert (mirror.stats.offered, mirror.stats.dropped, mirror.stats.written) == (5, 2, 3)
    assert [line.split()[1].split(",")[0] for line in influx.lines if line.startswith("site_")] == [
        "seq=3i",
        "seq=4i",
        "seq=5i",
    ]


def test_ingestion_mirrors_what_it_committed_and_only_that(
    influx: InfluxWriteServer, engine: Engine, session: Session
) -> None:
    """Stored telemetry reaches the mirror after commit; duplicates and rejected messages do not."""
    session.add(Site(id="depot-1", name="Depot 1", import_limit_kw=100, export_limit_kw=50))
    session.commit()
    sent = [telemetry(1), telemetry(2), telemetry(1), telemetry(3, site_id="depot-unknown")]

    async def scenario() -> TelemetryMirror:
        async with TelemetryMirror(settings(influx.url), sleep=RecordedSleep()) as mirror:
            ingestion = Ingestion(
                IngestionSettings(host="127.0.0.1"), make_sessionmaker(engine), mirror=mirror
            )
            await ingestion.handle_batch([(telemetry_topic(m.site_id), encode(m)) for m in sent])
            assert ingestion.stats.batches == 1
        return mirror

    mirror = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert influx.lines == line_protocol(telemetry(1)) + line_protocol(telemetry(2))
    assert (mirror.stats.offered, mirror.stats.written) == (2, 2)
