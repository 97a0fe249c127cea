"""The central service's Prometheus metrics, and the listener that serves them with its health.

::

    metrics = ServiceMetrics(sessions, dependencies, replans, clock=clock)
    metrics.attach_ingestion(ingestion)          # counters read at scrape, batch latency observed
    metrics.attach_control(control)              # plan ages read at scrape, solve time observed
    app = metrics_app(metrics, readiness)        # GET /metrics, /healthz, /readyz

Every metric is in :attr:`ServiceMetrics.registry`, a registry of the service's own (never the process's
global one, so two services in one process, as in tests, do not mix). Names follow Prometheus's rules:
prefix ``fleetgrid_``, base units (seconds, watts), counters end in ``_total``. Labels are bounded: kinds,
reasons and statuses are enums, ``site_id`` and ``event_id`` are the centre's own sites and its active
events, and an API route is its *template* (``/admin/sites/{site_id}``), never the raw path.

Most figures cost nothing until scraped: a custom collector reads the counters the components already
keep (:class:`~aggregator.ingestion.batches.IngestionStats`,
:class:`~aggregator.control.loop.ControlStats`, :class:`~aggregator.runtime.dependencies.Dependencies`,
the queues) on the event loop, where they change, so one scrape is one moment. Two are observed as they
happen, as histograms need: a batch's latency (arrival of its first message to commit) and a solve's
duration, through the components' ``on_batch`` / ``on_solve`` hooks; and the API middleware reports
each request (:class:`aggregator.api.app.RequestObserving`).

Live dispatch events and settlement runs come from the database: read in a worker thread when a scrape
finds them older than ``event_cache_s`` (``[metrics] event_cache_s``), so scraping often costs one read
per that many seconds. An active event (latest version ``active``, its window around now) is measured
as the operators' API and settlement measure it (:mod:`aggregator.settlement.performance` over the
sites' declared baselines and metered import), at the latest interval that has data:

- ``fleetgrid_ingestion_messages_received_total{kind}``: messages taken from the broker (``kind``
  ``unknown``: a topic that is not a site's)
- ``fleetgrid_ingestion_messages_stored_total{kind}``: changed the database
- ``fleetgrid_ingestion_messages_skipped_total{kind,reason}``: ``duplicate`` or ``ignored`` (nothing to store)
- ``fleetgrid_ingestion_messages_rejected_total{kind,reason}``: lost: ``contract`` (broke it),
  ``unknown_reference`` (a site, charger or command the centre does not know), ``database`` (refused)
- ``fleetgrid_ingestion_messages_retried_total{kind}``: database unreachable: not acknowledged, sent again
- ``fleetgrid_ingestion_batches_total``: committed batches
- ``fleetgrid_ingestion_batch_latency_seconds``: histogram: first message's arrival to commit
- ``fleetgrid_ingestion_pending_messages``: queued for the writer (bound: ``..._max``)
- ``fleetgrid_ingestion_connected``: 1 while every ingestion session is subscribed
- ``fleetgrid_ingestion_seq_gaps_total{site_id,size}``: sequence gaps, ``single`` number or a ``run``
- ``fleetgrid_ingestion_seq_missing_total{site_id}``: numbers declared missing
- ``fleetgrid_control_plans_total``: plans stored
- ``fleetgrid_control_plan_age_seconds{site_id}``: since the site's latest plan
- ``fleetgrid_control_solve_duration_seconds``: histogram: one group's solve
- ``fleetgrid_control_failures_total{reason}``: ``solver``, ``error``, ``group``
- ``fleetgrid_control_fallbacks_total{status}``: ``shifted`` or ``heuristic`` stored instead
- ``fleetgrid_control_replans_pending``: sites waiting for a re-plan
- ``fleetgrid_control_loop_passes_total``: passes of the loop over its sites
- ``fleetgrid_dispatch_events_active``: events whose window is now
- ``fleetgrid_dispatch_event_committed_watts{event_id,kind}``: committed reduction or export
- ``fleetgrid_dispatch_event_delivered_watts{event_id,kind}``: delivered, same interval
- ``fleetgrid_settlement_runs_total{kind}``: settlement runs stored
- ``fleetgrid_api_requests_total{method,route,status}``: answered requests
- ``fleetgrid_api_request_duration_seconds{method,route}``: histogram
- ``fleetgrid_api_login_failures_total``: ``POST /auth/token`` refused
- ``fleetgrid_dependency_up{name,kind}``: 1 when the peer answered last (VTNs, InfluxDB, MQTT)
- ``fleetgrid_dependency_failures{name,kind}``: failed attempts since it was last up
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aggregator.api.routes.health import HealthStatus, Readiness, health_response
from aggregator.api.schemas.operators import PROGRAM_KINDS, EventInterval
from aggregator.control.loop import ControlLoop
from aggregator.control.replanning import ReplanRequests
from aggregator.db.models import DispatchEvent, SettlementRun
from aggregator.ingestion.batches import Counters
from aggregator.ingestion.metering import DEFAULT_STEP, interval_index, site_import_intervals
from aggregator.ingestion.pipeline import Ingestion
from aggregator.programs.baseline_declarations import site_declaration
from aggregator.programs.dispatch_events import EventChain, event_chain, latest_versions
from aggregator.runtime.dependencies import Dependencies, DependencyState
from aggregator.settlement.baselines import BaselineError
from aggregator.settlement.event_measurement import committed_kw, plugged_sessions
from aggregator.settlement.performance import PerformanceError, event_performance
from aggregator.settlement.site_baselines import declared_site_baseline
from market_adapters.dispatch import SignalStatus
from wire.clock import Clock

log = logging.getLogger(__name__)

LOGIN_ROUTE = ("POST", "/auth/token")
"""The route whose 401 answers are counted as login failures."""

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""API request and ingestion batch latency buckets [s]."""
SOLVE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Solve duration buckets [s] (a solve is cut at ``solver_time_limit_s``, 10 s by default)."""

KW = 1_000.0
"""Watts per kW: the events' figures are kW inside, watts in the metrics."""


@dataclass(frozen=True)
class EventFigures:
    """One active event's live figures at its latest interval with data [kW]."""

    event_id: int
    kind: str
    committed_kw: float
    delivered_kw: float | None
    """``None`` while no interval of the event has both a baseline and a metered import."""


@dataclass
class DatabaseFigures:
    """What the metrics read from the database, and when (the service's clock)."""

    read_at: dt.datetime | None = None
    events: list[EventFigures] = field(default_factory=list)
    settlement_runs: dict[str, int] = field(default_factory=dict)


class ServiceMetrics:
    """The service's registry: the observed metrics, and a collector reading the rest at scrape time."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        dependencies: Dependencies,
        replans: ReplanRequests,
        *,
        clock: Clock,
        event_cache_s: float = 5.0,
    ) -> None:
        if event_cache_s <= 0:
            raise ValueError(f"metrics: event_cache_s must be positive, got {event_cache_s}")
        self.sessions = sessions
        self.dependencies = dependencies
        self.replans = replans
        self.clock = clock
        self.event_cache = dt.timedelta(seconds=event_cache_s)
        self.ingestion: Ingestion | None = None
        self.control: ControlLoop | None = None
        self.database = DatabaseFigures()
        self._reading: asyncio.Lock | None = None
        self.registry = CollectorRegistry()
        self.api_requests = Counter(
            "fleetgrid_api_requests",
            "API requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.api_duration = Histogram(
            "fleetgrid_api_request_duration_seconds",
            "API request duration, by method and route template [s].",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.login_failures = Counter(
            "fleetgrid_api_login_failures",
            "Logins refused (POST /auth/token answered 401).",
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "fleetgrid_ingestion_batch_latency_seconds",
            "Seconds from the arrival of a batch's first message to the batch's commit.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.solve_duration = Histogram(
            "fleetgrid_control_solve_duration_seconds",
            "Duration of one solve of a site group (counterfactual included) [s].",
            buckets=SOLVE_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_StatsCollector(self))

    def attach_ingestion(self, ingestion: Ingestion) -> None:
        self.ingestion = ingestion
        ingestion.stats.on_batch = self.batch_latency.observe

    def attach_control(self, control: ControlLoop) -> None:
        self.control = control
        control.stats.on_solve = self.solve_duration.observe

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered API request (:data:`aggregator.api.app.RequestObserver`)."""
        self.api_requests.labels(method, route, str(status)).inc()
        self.api_duration.labels(method, route).observe(seconds)
        if (method, route) == LOGIN_ROUTE and status == 401:
            self.login_failures.inc()

    async def exposition(self) -> bytes:
        """The text exposition of every metric, the database's figures refreshed if stale."""
        await self.refresh()
        return generate_latest(self.registry)

    async def refresh(self) -> None:
        """Read the database's figures again (in a worker thread) if older than ``event_cache_s``; a
        database that fails keeps the previous figures (and logs why)."""
        if self._reading is None:
            self._reading = asyncio.Lock()
        async with self._reading:  # scrapes arriving together share one read
            now = self.clock.now()
            read_at = self.database.read_at
            if read_at is not None and now - read_at < self.event_cache:
                return
            try:
                self.database = await asyncio.to_thread(self.read_database, now)
            except Exception as error:
                log.warning("metrics: could not read events and settlement runs: %s", error)
                self.database.read_at = now  # try again after event_cache_s, not on every scrape

    def read_database(self, now: dt.datetime) -> DatabaseFigures:
        """Active events' figures and settlement runs by kind, at ``now``."""
        with self.sessions() as session:
            runs = session.execute(select(SettlementRun.kind, func.count()).group_by(SettlementRun.kind))
            settlement_runs = {str(kind): int(n) for kind, n in runs}
            query = latest_versions()
            active = session.execute(
                query.where(DispatchEvent.status == SignalStatus.ACTIVE)
                .where(DispatchEvent.window_start <= now)
                .where(DispatchEvent.window_end > now)
                .order_by(query.selected_columns.event_id)
            ).all()
            events = [_event_figures(session, event_chain(session, event_id), now) for event_id, _ in active]
        return DatabaseFigures(now, events, settlement_runs)


def _event_figures(session: Session, chain: EventChain, now: dt.datetime) -> EventFigures:
    """One active event measured over its intervals up to ``now``, as ``GET
    /operator/events/{id}/performance`` measures it (the sites' declared baselines and metered import,
    summed); the figures of its latest interval with data, else of the current interval."""
    event = chain.latest
    kind = event.kind.value
    step, end = DEFAULT_STEP, event.window_end
    index = interval_index(event.window_start, end, step)
    index = index[index <= pd.Timestamp(now)]
    committed = committed_kw([EventInterval.model_validate(i) for i in event.intervals], index, end, step)
    if event.kind not in PROGRAM_KINDS or not len(index):
        return EventFigures(chain.id, kind, float(committed.iloc[-1]) if len(index) else 0.0, None)
    site_ids = list(event.target_sites) or (
        [site.id for site in event.program.sites] if event.program is not None else []
    )
    nothing = pd.Series(math.nan, index=index, dtype=float)
    expected, measured = [], []
    for site_id in site_ids:
        expected.append(_site_expected(session, chain, site_id, index, step, nothing))
        measured.append(site_import_intervals(session, site_id, event.window_start, end, step).mean_kw)
    baseline = pd.concat(expected, axis=1).sum(axis=1, skipna=False) if expected else nothing
    metered = pd.concat(measured, axis=1).sum(axis=1, skipna=False).reindex(index) if measured else nothing
    try:
        performance = event_performance(event.kind, committed, baseline, metered, step=step)
    except PerformanceError as error:
        log.debug("metrics: event %d cannot be measured: %s", chain.id, error)
        return EventFigures(chain.id, kind, float(committed.iloc[-1]), None)
    with_data = performance.delivered_kw.dropna()
    if with_data.empty:
        current = performance.committed_kw.iloc[-1]
        return EventFigures(chain.id, kind, float(current) if not math.isnan(current) else 0.0, None)
    at = with_data.index[-1]
    return EventFigures(
        chain.id, kind, float(performance.committed_kw[at]), float(performance.delivered_kw[at])
    )


def _site_expected(
    session: Session,
    chain: EventChain,
    site_id: str,
    index: pd.DatetimeIndex,
    step: dt.timedelta,
    nothing: pd.Series,
) -> pd.Series:
    """The site's expected import [kW] by its declared baseline; ``NaN`` where it cannot be made yet."""
    declaration = site_declaration(session, chain.id, site_id)
    if declaration is None:
        return nothing
    event = chain.latest
    sessions = plugged_sessions(session, site_id, chain.id, index, event.window_end, step)
    try:
        declared = declared_site_baseline(
            session, declaration, event.window_start, event.window_end, index, sessions, step
        )
    except (BaselineError, ValidationError):
        return nothing
    return declared.baseline.baseline_kw.reindex(index)


class _StatsCollector(Collector):
    """Reads the components' own counters at scrape time (see the module's table)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._ingestion()
        yield from self._control()
        yield from self._events()
        yield from self._dependencies()

    def _ingestion(self) -> Iterator[Metric]:
        ingestion = self.metrics.ingestion
        received = _counter("ingestion_messages_received", "Messages taken from the broker.", ["kind"])
        stored = _counter("ingestion_messages_stored", "Messages that changed the database.", ["kind"])
        skipped = _counter(
            "ingestion_messages_skipped", "Messages with nothing to store, by reason.", ["kind", "reason"]
        )
        rejected = _counter("ingestion_messages_rejected", "Messages lost, by reason.", ["kind", "reason"])
        retried = _counter(
            "ingestion_messages_retried",
            "Messages not stored for an unreachable database (sent again).",
            ["kind"],
        )
        batches = _counter("ingestion_batches", "Committed batches.", [])
        gaps = _counter(
            "ingestion_seq_gaps", "Sequence gaps declared, per site and size.", ["site_id", "size"]
        )
        missing = _counter(
            "ingestion_seq_missing", "Sequence numbers declared missing, per site.", ["site_id"]
        )
        pending = _gauge("ingestion_pending_messages", "Messages queued for the writer.", [])
        pending_max = _gauge(
            "ingestion_pending_messages_max", "Queued messages beyond which the MQTT side holds back.", []
        )
        connected = _gauge("ingestion_connected", "1 while every ingestion session is subscribed.", [])
        if ingestion is not None:
            stats = ingestion.stats
            for kind, counters in [
                *((k.value, c) for k, c in list(stats.kinds.items())),
                ("unknown", stats.unrouted),
            ]:
                _ingestion_counters(kind, counters, received, stored, skipped, rejected, retried)
            batches.add_metric([], stats.batches)
            for (site_id, single), n in list(stats.gaps.site_gaps.items()):
                gaps.add_metric([site_id, "single" if single else "run"], n)
            for site_id, n in list(stats.gaps.site_missing.items()):
                missing.add_metric([site_id], n)
            pending.add_metric([], ingestion.pending)
            pending_max.add_metric([], ingestion.settings.max_pending)
            connected.add_metric([], 1.0 if ingestion.subscribed.is_set() else 0.0)
        yield from (received, stored, skipped, rejected, retried, batches, gaps, missing)
        yield from (pending, pending_max, connected)

    def _control(self) -> Iterator[Metric]:
        control = self.metrics.control
        plans = _counter("control_plans", "Plans stored (a schedule version and its command).", [])
        published = _counter("control_commands_published", "Setpoint commands handed to the publisher.", [])
        age = _gauge("control_plan_age_seconds", "Seconds since the site's latest plan.", ["site_id"])
        failures = _counter("control_failures", "Plans that failed, by reason.", ["reason"])
        fallbacks = _counter("control_fallbacks", "Fallback plans stored, by status.", ["status"])
        passes = _counter("control_loop_passes", "Passes of the control loop over its sites.", [])
        replans = _gauge("control_replans_pending", "Sites waiting to be re-planned.", [])
        replans.add_metric([], self.metrics.replans.pending)
        if control is not None:
            stats, now = control.stats, self.metrics.clock.now()
            plans.add_metric([], stats.plans)
            published.add_metric([], stats.published)
            for site_id, planned_at in sorted(dict(stats.planned_at).items()):
                age.add_metric([site_id], max((now - planned_at).total_seconds(), 0.0))
            for reason in ("solver", "error", "group"):
                failures.add_metric([reason], stats.failure_reasons[reason])
            for status in ("shifted", "heuristic"):
                fallbacks.add_metric([status], stats.fallback_statuses[status])
            passes.add_metric([], stats.passes)
        yield from (plans, published, age, failures, fallbacks, passes, replans)

    def _events(self) -> Iterator[Metric]:
        figures = self.metrics.database
        active = _gauge("dispatch_events_active", "Dispatch events whose window is now.", [])
        active.add_metric([], len(figures.events))
        committed = _gauge(
            "dispatch_event_committed_watts",
            "An active event's committed reduction or export, at its latest interval with data [W].",
            ["event_id", "kind"],
        )
        delivered = _gauge(
            "dispatch_event_delivered_watts",
            "An active event's delivery below its baseline, same interval as committed [W].",
            ["event_id", "kind"],
        )
        for event in figures.events:
            labels = [str(event.event_id), event.kind]
            committed.add_metric(labels, event.committed_kw * KW)
            if event.delivered_kw is not None:
                delivered.add_metric(labels, event.delivered_kw * KW)
        runs = _counter("settlement_runs", "Settlement runs stored, by kind.", ["kind"])
        for kind, n in sorted(figures.settlement_runs.items()):
            runs.add_metric([kind], n)
        yield from (active, committed, delivered, runs)

    def _dependencies(self) -> Iterator[Metric]:
        up = _gauge("dependency_up", "1 when the outside peer answered last, else 0.", ["name", "kind"])
        failures = _gauge(
            "dependency_failures", "Failed attempts since the peer was last up.", ["name", "kind"]
        )
        for entry in self.metrics.dependencies:
            labels = [entry.name, entry.kind.value]
            up.add_metric(labels, 1.0 if entry.state is DependencyState.UP else 0.0)
            failures.add_metric(labels, entry.failures)
        yield from (up, failures)


def _counter(name: str, documentation: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(f"fleetgrid_{name}", documentation, labels=labels)


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"fleetgrid_{name}", documentation, labels=labels)


def _ingestion_counters(
    kind: str,
    counters: Counters,
    received: CounterMetricFamily,
    stored: CounterMetricFamily,
    skipped: CounterMetricFamily,
    rejected: CounterMetricFamily,
    retried: CounterMetricFamily,
) -> None:
    received.add_metric([kind], counters.received)
    stored.add_metric([kind], counters.stored)
    skipped.add_metric([kind, "duplicate"], counters.duplicates)
    skipped.add_metric([kind, "ignored"], counters.ignored)
    rejected.add_metric([kind, "contract"], counters.contract)
    rejected.add_metric([kind, "unknown_reference"], counters.rejected - counters.contract)
    rejected.add_metric([kind, "database"], counters.failed)
    retried.add_metric([kind], counters.retried)


def metrics_app(metrics: ServiceMetrics, readiness: Readiness) -> Starlette:
    """The metrics listener: ``GET /metrics`` (Prometheus text), ``/healthz`` and ``/readyz`` (as the
    API serves them, :mod:`aggregator.api.routes.health`)."""

    async def exposition(request: Request) -> Response:
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse(HealthStatus(status="ok", checks={}).model_dump())

    async def readyz(request: Request) -> Response:
        return health_response(await readiness.status())

    return Starlette(
        routes=[
            Route("/metrics", exposition, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )


__all__ = ["DatabaseFigures", "EventFigures", "ServiceMetrics", "metrics_app"]
