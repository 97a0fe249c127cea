"""The central service in one process: API, MQTT ingestion, control loop (``fleetgrid aggregator``).

::

    config = CentralConfig.load(Path("central.toml"))
    async with AggregatorService(config, Settings.from_env()) as service:
        await service.wait()                  # until cancelled (Ctrl-C)

On entry the database is migrated to the latest schema, then, in order: the in-process broker when
``[mqtt] url = "embedded"``, the optional InfluxDB mirror, ingestion (subscribed to every site), the
control loop (with its setpoint publisher) and the API on uvicorn. They share one sessionmaker and the
control loop's :class:`~aggregator.control.replanning.ReplanRequests`, so a driver's override through the API
or a vehicle arriving through MQTT re-plans its site at once. Each ``[[openadr]]`` entry starts a VEN
(OpenADR 2.0b or 3) after the control loop, its events stored by a
:class:`~aggregator.control.grid_signals.GridSignalStore` (which asks the loop to re-plan the sites they
apply to)
and its optIn/optOut and reports answered by a :class:`~aggregator.control.grid_signals.PortfolioFlexibility`
over the sites enrolled in its mapped programs. Exit stops them in reverse order.

Degrade, don't die: no outside peer stops the service from starting or running. A VTN, InfluxDB or MQTT
broker that is away at start-up or later is retried with jittered exponential backoff by the component
that talks to it (:class:`~wire.reconnect.Backoff`; randomness from ``rng``, waits on ``clock``), each
component logs once when its peer goes down and once when it is back, and
:attr:`AggregatorService.dependencies` (:mod:`aggregator.runtime.dependencies`) holds each peer's state,
since when, last error and failed attempts, shown by ``GET /admin/status``.

Health and metrics: the API serves ``/healthz`` and ``/readyz`` (:mod:`aggregator.api.routes.health`);
the service's readiness checks that the database answers, that its MQTT clients are connected to the
broker and that the control loop has finished a pass over its sites within one ``cadence``. With a
``[metrics]`` section, :class:`~aggregator.runtime.metrics.ServiceMetrics` counts what the components do
and a second listener on ``[metrics] host:port`` serves ``/metrics`` (Prometheus) with the same
``/healthz`` and ``/readyz``; the API then also counts its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import uvicorn

from aggregator.api.app import create_app
from aggregator.api.config import Settings
from aggregator.api.routes.health import Readiness, database_check
from aggregator.control.grid_signals import GridSignalStore, PortfolioFlexibility
from aggregator.control.loop import ControlLoop
from aggregator.control.replanning import ReplanRequests
from aggregator.control.setpoints import MqttPublisherSettings, MqttSetpointPublisher
from aggregator.db.migrate import upgrade
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.ingestion.pipeline import Ingestion, IngestionSettings
from aggregator.ingestion.telemetry_mirror import MirrorSettings, TelemetryMirror
from aggregator.runtime.broker import EmbeddedBroker
from aggregator.runtime.config import CentralConfig, Openadr2Section, OpenadrSection
from aggregator.runtime.dependencies import Dependencies, DependencyKind, watch_broker
from aggregator.runtime.metrics import ServiceMetrics, metrics_app
from market_adapters.openadr2 import Ven
from market_adapters.openadr3 import OpenAdr3Client
from wire.clock import SYSTEM_CLOCK, Clock
from wire.reconnect import Backoff

log = logging.getLogger(__name__)

BROKER_GRACE_S = 2.0
"""Seconds after start-up before MQTT clients still connecting make the broker count as down."""


class AggregatorService:
    """Async context manager running the whole central service (see the module docstring).

    ``clock`` times the retries and the dependencies' states; ``rng`` is the backoff's jitter (seed it for
    a reproducible run); ``backoff`` is the VENs' retry rule (the MQTT clients and the InfluxDB mirror
    keep their own settings' backoff).
    """

    def __init__(
        self,
        config: CentralConfig,
        settings: Settings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.backoff = backoff or Backoff()
        self.dependencies = Dependencies(clock.now)
        """Each outside peer's state (``openadr:<n>``, ``influxdb``, ``mqtt``), for ``GET /admin/status``."""
        self.control_settings = config.control_settings()
        self.settings = settings.model_copy(update={"database_url": config.database.url})
        self.replans = ReplanRequests()
        self.engine = make_engine(config.database.url)
        self.sessions = make_sessionmaker(self.engine)
        self.api_port: int | None = None
        self.metrics: ServiceMetrics | None = None
        """The service's metrics, with ``[metrics]``; served on :attr:`metrics_port`."""
        if config.metrics is not None:
            self.metrics = ServiceMetrics(
                self.sessions,
                self.dependencies,
                self.replans,
                clock=clock,
                event_cache_s=config.metrics.event_cache_s,
            )
        self.metrics_port: int | None = None
        self.readiness = Readiness({"database": database_check(self.sessions)})
        """What ``/readyz`` checks; the broker and the control loop are added as they start."""
        self.broker_address: tuple[str, int] | None = None
        """Host and port of the MQTT broker in use (the in-process one's free port, when embedded)."""
        self.control: ControlLoop | None = None
        self.ingestion: Ingestion | None = None
        self.grid_signals: list[GridSignalStore] = []
        """One store per ``[[openadr]]`` entry, in order."""
        self.vens: list[Ven | OpenAdr3Client] = []
        """The running OpenADR adapters, one per ``[[openadr]]`` entry, in order."""
        self._stack: AsyncExitStack | None = None
        self._serving: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await asyncio.to_thread(upgrade, self.config.database.url)
            mqtt = self.config.mqtt
            tls = None if mqtt.embedded else mqtt.tls_context()
            if mqtt.embedded:
                broker = await stack.enter_async_context(EmbeddedBroker())
                host, port, username, password = broker.host, broker.port, None, None
            else:
                host, port, username, password = mqtt.host, mqtt.port, mqtt.username, mqtt.password()
            self.broker_address = (host, port)
            broker_entry = self.dependencies.add(
                "mqtt",
                DependencyKind.MQTT_BROKER,
                f"{host}:{port}" + (" (embedded)" if mqtt.embedded else ""),
            )
            mirror = None
            if self.config.influxdb is not None:
                influx = self.config.influxdb
                entry = self.dependencies.add("influxdb", DependencyKind.INFLUXDB, influx.url)
                mirror = await stack.enter_async_context(
                    TelemetryMirror(
                        MirrorSettings(influx.url, influx.org, influx.bucket, influx.token()),
                        random=self.rng.random,
                        sleep=self.clock.sleep,
                        on_link=entry.report,
                    )
                )
            ingestion_settings = IngestionSettings(
                host, port, username, password, tls_context=tls, client_id=f"{mqtt.client_id}-ingestion"
            )
            self.ingestion = await stack.enter_async_context(
                Ingestion(ingestion_settings, self.sessions, replans=self.replans, mirror=mirror)
            )
            if self.metrics is not None:
                self.metrics.attach_ingestion(self.ingestion)
            publisher = await stack.enter_async_context(
                MqttSetpointPublisher(
                    MqttPublisherSettings(
                        host,
                        port,
                        username,
                        password,
                        tls_context=tls,
                        client_id=f"{mqtt.client_id}-setpoints",
                    )
                )
            )
            ingestion = self.ingestion

            def broker_problem() -> str | None:
                away = [
                    who
                    for who, connected in (
                        ("ingestion", ingestion.subscribed.is_set()),
                        ("setpoint publisher", publisher.connected.is_set()),
                    )
                    if not connected
                ]
                return f"{' and '.join(away)} not connected" if away else None

            await stack.enter_async_context(
                self._task(
                    "broker-watch",
                    watch_broker(broker_entry, broker_problem, clock=self.clock, grace_s=BROKER_GRACE_S),
                )
            )
            self.control = await stack.enter_async_context(
                ControlLoop(self.sessions, publisher, self.replans, self.control_settings)
            )
            if self.metrics is not None:
                self.metrics.attach_control(self.control)
            self.readiness.checks["broker"] = _now(broker_problem)
            self.readiness.checks["control"] = _now(self._control_problem)
            for number, section in enumerate(self.config.openadr, start=1):
                self.vens.append(await stack.enter_async_context(self._openadr(number, section)))
            if self.metrics is not None:
                await stack.enter_async_context(self._metrics_listener(self.metrics))
            await stack.enter_async_context(self._api())
            self._stack = stack.pop_all()
        return self

    def _openadr(self, number: int, section: OpenadrSection) -> Ven | OpenAdr3Client:
        """The adapter of the ``number``-th ``[[openadr]]`` entry, with its sink, oracle and dependency
        entry ``openadr:<number>``; its VTN is retried with backoff and never stops the service."""
        store = GridSignalStore(self.sessions, self.replans, program_map=section.program_map)
        oracle = PortfolioFlexibility(self.sessions, programs=set(section.program_map.values()) or None)
        self.grid_signals.append(store)
        entry = self.dependencies.add(f"openadr:{number}", DependencyKind.OPENADR_VTN, section.vtn_url)
        where = f"[[openadr]] {number}"
        log.info("OpenADR %s VEN %r for %s", section.kind, section.ven_name, section.vtn_url)
        if isinstance(section, Openadr2Section):
            return Ven(
                section.adapter_settings(where),
                store,
                oracle,
                clock=self.clock.now,
                sleep=self.clock.sleep,
                retry_delay=lambda attempt: self.backoff.delay(attempt, self.rng.random),
                on_link=entry.report,
            )
        return OpenAdr3Client(
            section.adapter_settings(where),
            sink=store,
            oracle=oracle,
            clock=self.clock.now,
            sleep=self.clock.sleep,
            rng=self.rng,
            on_link=entry.report,
        )

    @contextlib.asynccontextmanager
    async def _task(self, name: str, work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
        """Run ``work`` as the named task ``name`` until exit, then cancel it."""
        task = asyncio.create_task(work, name=name)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _control_problem(self) -> str | None:
        """Why the control loop is not ready: stopped, or no pass over the sites within a cadence."""
        control = self.control
        if control is None or not control.running:
            return "the control loop is not running"
        last = control.stats.last_pass_at
        if last is None:
            return "the control loop has not finished its first pass"
        late = self.clock.now() - last
        if late > self.control_settings.cadence:
            return f"the control loop's last pass ended {late.total_seconds():.0f} s ago"
        return None

    @contextlib.asynccontextmanager
    async def _metrics_listener(self, metrics: ServiceMetrics) -> AsyncIterator[None]:
        section = self.config.metrics
        assert section is not None
        app = metrics_app(metrics, self.readiness)
        async with self._serve("metrics", app, section.host, section.port, access_log=False) as (_, port):
            self.metrics_port = port
            log.info("metrics on http://%s:%d/metrics", section.host, port)
            yield

    @contextlib.asynccontextmanager
    async def _api(self) -> AsyncIterator[None]:
        observe = None if self.metrics is None else self.metrics.observe_request
        app = create_app(self.settings, self.sessions, replans=self.replans, observe_request=observe)
        app.state.dependencies = self.dependencies  # GET /admin/status
        app.state.readiness = self.readiness  # GET /readyz
        api = self.config.api
        async with self._serve("api", app, api.host, api.port) as (serving, port):
            self.api_port = port
            log.info("API on http://%s:%d (docs at /docs)", api.host, self.api_port)
            self._serving = serving
            yield

    @contextlib.asynccontextmanager
    async def _serve(
        self, name: str, app: Any, host: str, port: int, *, access_log: bool = True
    ) -> AsyncIterator[tuple[asyncio.Task[None], int]]:
        """Serve ``app`` with uvicorn on ``host:port`` as the task ``name`` until exit; yields the task
        and the port it listens on (a free one for port 0). ``access_log``: a line per request (not for
        the metrics listener, which Prometheus asks every few seconds)."""
        # log_config=None: uvicorn's lines go through the root handler (text or JSON, wire/logs.py)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            lifespan="off",
            log_config=None,
            access_log=access_log,
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(), name=name)
        try:
            async with asyncio.timeout(15):
                while not server.started:
                    if serving.done():
                        serving.result()  # raises why uvicorn could not start (port taken, ...)
                        raise RuntimeError(f"the {name} listener could not listen on {host}:{port}")
                    await asyncio.sleep(0.02)
            yield serving, server.servers[0].sockets[0].getsockname()[1]
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await serving

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._stack is not None:
                await self._stack.__aexit__(exc_type, exc, tb)
        finally:
            self._stack = None
            self.engine.dispose()

    async def wait(self) -> None:
        """Until the API server stops (it stops on SIGINT/SIGTERM) or the task is cancelled."""
        if self._serving is not None:
            await asyncio.shield(self._serving)


def _now(problem: Callable[[], str | None]) -> Callable[[], Awaitable[str | None]]:
    """A synchronous readiness check (read on the event loop) as :class:`Readiness` takes it."""

    async def check() -> str | None:
        return problem()

    return check
