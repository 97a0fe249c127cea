"""An optional copy of the stored telemetry in InfluxDB, for dashboards (Grafana) and long histories.

::

    settings = MirrorSettings(url="http://influx:8086", org="fleetgrid", bucket="telemetry", token=token)
    async with TelemetryMirror(settings) as mirror:
        async with Ingestion(ingestion_settings, sessions, mirror=mirror) as ingestion:
            ...

How it behaves:

- Ingestion calls :meth:`TelemetryMirror.offer` with the telemetry of each batch it has committed.
  ``offer`` only appends to a bounded queue (``queue_size`` messages) and returns: when the queue is
  full, the oldest messages are dropped and counted in :attr:`MirrorStats.dropped`, so a slow or
  absent InfluxDB never slows ingestion or the control loop. The database stays the record; the
  mirror is best effort.
- One writer task turns up to ``batch_messages`` queued messages into InfluxDB line protocol and
  writes them with one ``POST /api/v2/write`` (influxdb-client's async write API, nanosecond
  precision), as soon as there is something to write and at least ``flush_interval_s`` after the
  previous write began.
- A write that fails for a reason that may pass (connection refused or lost, timeout, HTTP 429 or
  5xx) is retried up to ``max_attempts`` times with jittered exponential backoff (at least the
  server's ``Retry-After``); a batch still failing then, or refused for good (another 4xx: a bad
  token, a missing bucket), is counted in :attr:`MirrorStats.failed_points` and dropped.
- InfluxDB away (at start-up or later) never stops the mirror, ingestion or the service. Every write
  attempt's outcome goes to ``on_link`` (``None``: written; else why not), and each change between
  accepting writes and not is logged once, WARNING when it stops, INFO when it accepts again (with the
  points dropped meanwhile), with ``extra={"dependency": "influxdb:<url>", "state": "down" | "up"}``;
  the retries and dropped batches in between only at DEBUG.
- On exit the writer writes what is queued, for up to ``close_timeout_s``.

Points (times are the gateway's ``sent_at``; tags are the ids, fields the readings, units in the
field names as in the database):

- ``site_telemetry,site_id=<site> seq=<seq>i,site_import_kw=<kW>[,base_load_kw=<kW>] <ns>``
- ``evse_telemetry,site_id=<site>,charger_id=<cp>,evse_id=<n> power_kw=<kW>[,energy_kwh=<kWh>]
  [,soc_percent=<%>] <ns>``
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import random as _random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync
from influxdb_client.rest import ApiException

from wire.contract import Telemetry
from wire.reconnect import Backoff

log = logging.getLogger(__name__)

SITE_MEASUREMENT = "site_telemetry"
EVSE_MEASUREMENT = "evse_telemetry"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})


@dataclass(frozen=True)
class MirrorSettings:
    url: str
    """InfluxDB 2.x base URL, e.g. ``http://influx:8086``."""
    org: str
    bucket: str
    token: str = field(repr=False)
    queue_size: int = 20_000
    """Telemetry messages held for writing; beyond, the oldest are dropped."""
    batch_messages: int = 500
    """Most messages per write (each is 1 + its EVSEs lines)."""
    flush_interval_s: float = 1.0
    """Least time [s] between the starts of two writes, so that writes carry many points."""
    timeout_s: float = 10.0
    """Limit [s] on one HTTP write."""
    max_attempts: int = 5
    """Tries per batch, the first included."""
    backoff: Backoff = field(default_factory=lambda: Backoff(initial_s=0.5, max_s=30.0))
    close_timeout_s: float = 5.0
    """How long [s] the exit may spend writing what is still queued."""


@dataclass
class MirrorStats:
    offered: int = 0
    """Messages given to :meth:`TelemetryMirror.offer`."""
    dropped: int = 0
    """Messages pushed out of the full queue before they could be written."""
    written: int = 0
    """Messages written."""
    points: int = 0
    """Points (lines) written."""
    writes: int = 0
    """Successful HTTP writes."""
    retries: int = 0
    """Failed attempts that were tried again."""
    failed_points: int = 0
    """Points given up on (retries exhausted or refused for good)."""


class TelemetryMirror:
    """Async context manager: a bounded queue of telemetry and the task that writes it to InfluxDB."""

    def __init__(
        self,
        settings: MirrorSettings,
        *,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_link: Callable[[str | None], None] | None = None,
    ) -> None:
        if settings.queue_size < 1 or settings.batch_messages < 1 or settings.max_attempts < 1:
            raise ValueError(
                f"queue_size ({settings.queue_size}), batch_messages ({settings.batch_messages}) and"
                f" max_attempts ({settings.max_attempts}) must be at least 1"
            )
        self.settings = settings
        self.stats = MirrorStats()
        self._random = random
        self._sleep = sleep
        self._on_link = on_link
        self.source = f"influxdb:{settings.url}"
        self.accepting: bool | None = None
        """Whether InfluxDB took the last write attempt (``None`` before the first)."""
        self._down_since: float | None = None
        self._points_at_down = 0
        self._queue: collections.deque[Telemetry] = collections.deque(maxlen=settings.queue_size)
        self._queued = asyncio.Event()
        self._closing = False
        self._client: InfluxDBClientAsync | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        s = self.settings
        self._client = InfluxDBClientAsync(
            url=s.url, token=s.token, org=s.org, timeout=int(s.timeout_s * 1000)
        )
        self._closing = False
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._writer = self._tasks.create_task(
            self._write_loop(self._client.write_api()), name="telemetry-mirror-writer"
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tasks is not None and self._writer is not None and self._client is not None
        self._closing = True
        self._queued.set()
        try:
            done, _ = await asyncio.wait([self._writer], timeout=self.settings.close_timeout_s)
            if not done:
                left = len(self._queue)
                log.warning("telemetry mirror: closing with %d messages not written", left)
                self._writer.cancel()
            await self._tasks.__aexit__(exc_type, exc, tb)
        finally:
            self._tasks = None
            await self._client.close()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, messages: Sequence[Telemetry]) -> None:
        """Queue ``messages`` for writing; never blocks (drops the oldest when full). Call it from
        the event loop's thread."""
        self.stats.offered += len(messages)
        room = self.settings.queue_size - len(self._queue)
        if len(messages) > room:
            self.stats.dropped += len(messages) - room
        self._queue.extend(messages)
        self._queued.set()

    # ------------------------------------------------------------------------------------------ writing

    async def _write_loop(self, write_api: WriteApiAsync) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            started = loop.time()
            count = min(len(self._queue), self.settings.batch_messages)
            batch = [self._queue.popleft() for _ in range(count)]
            lines = [line for message in batch for line in line_protocol(message)]
            if await self._write(write_api, lines):
                self.stats.written += len(batch)
            wait = started + self.settings.flush_interval_s - loop.time()
            if wait > 0 and not self._closing:
                await self._sleep(wait)

    async def _write(self, write_api: WriteApiAsync, lines: list[str]) -> bool:
        s = self.settings
        body = "\n".join(lines)
        for attempt in range(s.max_attempts):
            try:
                await write_api.write(bucket=s.bucket, org=s.org, record=body)  # precision: ns
            except ApiException as err:
                problem, retry_after = f"HTTP {err.status} {err.reason}", _retry_after(err)
                if not _may_pass(err.status):
                    self._link(f"{problem} (refused for good)")
                    log.debug(
                        "telemetry mirror: %s refused %d points (%s); dropped", s.url, len(lines), problem
                    )
                    break
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                problem, retry_after = f"{type(err).__name__}: {err}", 0.0
            else:
                self._link(None)
                self.stats.writes += 1
                self.stats.points += len(lines)
                return True
            self._link(problem)
            if attempt + 1 == s.max_attempts:
                log.debug(
                    "telemetry mirror: %d points not written to %s after %d attempts (%s); dropped",
                    len(lines),
                    s.url,
                    s.max_attempts,
                    problem,
                )
                break
            delay = max(s.backoff.delay(attempt, self._random), min(retry_after, s.backoff.max_s))
            self.stats.retries += 1
            log.debug(
                "telemetry mirror: write to %s failed (%s); retry %d in %.1f s",
                s.url,
                problem,
                attempt + 1,
                delay,
            )
            await self._sleep(delay)
        self.stats.failed_points += len(lines)
        return False

    def _link(self, error: str | None) -> None:
        """Record one write attempt's outcome, tell ``on_link``, and log a change of state once."""
        before = self.accepting
        self.accepting = error is None
        if self._on_link is not None:
            self._on_link(error)
        if self.accepting is before:
            return
        extra = {"dependency": self.source, "state": "up" if error is None else "down"}
        url = self.settings.url
        if error is not None:
            self._down_since = asyncio.get_running_loop().time()
            self._points_at_down = self.stats.failed_points
            log.warning(
                "telemetry mirror: InfluxDB at %s does not take writes (%s); each batch is tried %d times"
                " with backoff, then dropped (counted)",
                url,
                error,
                self.settings.max_attempts,
                extra=extra,
            )
        elif self._down_since is None:
            log.info("telemetry mirror: writing to InfluxDB at %s", url, extra=extra)
        else:
            log.info(
                "telemetry mirror: InfluxDB at %s takes writes again after %.1f s; %d points dropped"
                " meanwhile",
                url,
                asyncio.get_running_loop().time() - self._down_since,
                self.stats.failed_points - self._points_at_down,
                extra=extra,
            )
            self._down_since = None


def _may_pass(status: int | None) -> bool:
    """A status worth retrying: no HTTP answer, too many requests, or a server-side error."""
    return status is None or status == 0 or status == 429 or status >= 500


def _retry_after(err: ApiException) -> float:
    headers: Any = err.headers or {}
    value = headers.get("Retry-After")
    if value is None:
        return 0.0
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    return 0.0


# ------------------------------------------------------------------------------------ line protocol


def line_protocol(message: Telemetry) -> list[str]:
    """The points of one telemetry message: one ``site_telemetry`` line, one ``evse_telemetry`` per EVSE."""
    ns = _nanoseconds(message.sent_at)
    site = _tag(message.site_id)
    fields = f"seq={message.seq}i,site_import_kw={float(message.site_import_kw)!r}"
    if message.base_load_kw is not None:
        fields += f",base_load_kw={float(message.base_load_kw)!r}"
    lines = [f"{SITE_MEASUREMENT},site_id={site} {fields} {ns}"]
    for evse in message.evses:
        fields = f"power_kw={float(evse.power_kw)!r}"
        if evse.energy_kwh is not None:
            fields += f",energy_kwh={float(evse.energy_kwh)!r}"
        if evse.soc_percent is not None:
            fields += f",soc_percent={float(evse.soc_percent)!r}"
        tags = f"site_id={site},charger_id={_tag(evse.charger_id)},evse_id={evse.evse_id}"
        lines.append(f"{EVSE_MEASUREMENT},{tags} {fields} {ns}")
    return lines


def _tag(value: str) -> str:
    return value.translate(_TAG_ESCAPES)


def _nanoseconds(at: dt.datetime) -> int:
    return (at - _EPOCH) // _MICROSECOND * 1000
