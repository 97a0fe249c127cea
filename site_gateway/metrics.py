"""The gateway's operations surface: Prometheus metrics, ``/healthz`` and ``/readyz`` on one listener.

Served only when ``site.toml`` has a ``[metrics]`` table (:class:`~site_gateway.config.MetricsSection`:
``host``, by default ``127.0.0.1``, and ``port``, never the OCPP port)::

    GET /metrics   the Prometheus text exposition of this gateway's registry
    GET /healthz   200 while the process serves (alive)
    GET /readyz    200 when the OCPP server listens, MQTT is connected and the outbox takes writes;
                   else 503, one line per check either way ("mqtt: down")

Every gateway has its own :class:`~prometheus_client.CollectorRegistry` (not the process-wide one),
so several gateways in one process (tests, a simulation) never share a series.

Names follow Prometheus: prefix ``fleetgrid_gateway_``, base units (watts, seconds), ``_total`` on
counters. What changes on the hot path (a charger's call, a profile, a command) is counted as it
happens, each a dictionary lookup and an addition; everything else (connected chargers, site power
against the limits, fallback, outbox, MQTT, setpoint age) is read from the gateway's own state when
scraped (:meth:`GatewayMetrics.collect`). The one integral, seconds above a site limit, is sampled at
every control step and scrape from the chargers' metered power (plus the base load): the time between
two samples counts as the earlier sample found it.

Metrics (type; labels):

- ``info`` (gauge; ``site_id``): always 1;
- ``chargers_connected`` (gauge; ``protocol``): chargers connected now;
- ``ocpp_call_duration_seconds`` (histogram; ``action``, ``direction``): every OCPP call, answered or
  not, both ways; its ``_count`` is the number of calls;
- ``ocpp_call_errors_total`` (counter; ``action``, ``direction``, ``code``): CallErrors, timeouts
  (``Timeout``) and lost connections (``ConnectionClosed``);
- ``profiles_sent_total`` (counter): TxProfiles that reached a charger;
- ``profile_outcomes_total`` (counter; ``outcome``): accepted, rejected, unverified, failed (not sent);
- ``site_import_watts``, ``site_export_watts`` (gauges): metered site power, chargers and base load;
  ``site_{import,export}_limit_watts``: the connection's limits; ``site_{import,export}_headroom_watts``:
  limit minus metered (negative above it);
- ``site_limit_exceeded_seconds_total`` (counter; ``direction``): should stay 0;
- ``fallback_active`` (gauge): 1 in fallback (no fresh schedule);
- ``outbox_messages``, ``outbox_oldest_age_seconds`` (gauges): queued for the centre, and the age of
  the oldest (0 when empty);
- ``mqtt_connected`` (gauge): 1 while connected to the broker;
- ``last_setpoint_age_seconds`` (gauge): since the last setpoint command (or the start, before one);
  ``setpoint_stale_after_seconds``: ``schedule_stale_after_s``, beyond which the gateway falls back.

Ages are on the gateway's clock (its ``now``; the integral on its ``monotonic``). Label values are
bounded: at most :data:`MAX_ACTIONS` OCPP actions (a charger's made-up action names fold into
``other``) and the error codes the protocol defines plus ``Timeout`` / ``ConnectionClosed``.

The listener is a few lines of asyncio (the base install has no web framework, and the collectors
must run on the event loop's thread, which owns the state they read). A request is one line and
headers of at most :data:`MAX_REQUEST_BYTES`, read within :data:`REQUEST_TIMEOUT_S` of network time;
at most :data:`MAX_CONNECTIONS` are served at once, any more are answered 503 at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Self

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from site_gateway.clock import Clock
from site_gateway.ocpp.profiles import OcppVersion, OutcomeStatus
from site_gateway.safety import Mode

if TYPE_CHECKING:
    from site_gateway.gateway import Gateway
    from site_gateway.rollout import Push
    from wire.contract import SetpointCommand

log = logging.getLogger(__name__)

PREFIX = "fleetgrid_gateway_"
MAX_ACTIONS = 64
"""Distinct OCPP action labels kept; later ones are counted as ``other``."""
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16
CALL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ABOVE_LIMIT_TOLERANCE_W = 1.0
"""Metered power within this of a limit is not above it (rounding of the chargers' readings)."""


class GatewayMetrics:
    """The metrics of one :class:`~site_gateway.gateway.Gateway` and, when configured, their listener.

    An async context manager: entered after the OCPP server and the uplink, it serves
    ``[metrics]`` until exited. Without a ``[metrics]`` table it serves nothing and nobody is told of
    OCPP calls; the counters of profiles and commands still count (a few per control step).
    """

    def __init__(self, gateway: Gateway, clock: Clock) -> None:
        self._gateway = gateway
        self._clock = clock
        self.settings = gateway.config.metrics
        self.registry = CollectorRegistry()
        self._calls = Histogram(
            PREFIX + "ocpp_call_duration_seconds",
            "OCPP calls, to and from the chargers, by action: seconds from sending a call to its answer "
            "(to_charger) or to the end of handling it (from_charger); _count is the number of calls",
            ["action", "direction"],
            buckets=CALL_BUCKETS_S,
            registry=self.registry,
        )
        self._call_errors = Counter(
            PREFIX + "ocpp_call_errors",
            "OCPP calls that failed, by action and code (the CallError's, Timeout or ConnectionClosed)",
            ["action", "direction", "code"],
            registry=self.registry,
        )
        self._sent = Counter(
            PREFIX + "profiles_sent",
            "TxProfiles sent to a charger (SetChargingProfile)",
            registry=self.registry,
        )
        self._outcomes = Counter(
            PREFIX + "profile_outcomes",
            "What became of each TxProfile: accepted (read back, or verified by meter), rejected by the "
            "charger, unverified (accepted, composite schedule missing or different), failed (not sent)",
            ["outcome"],
            registry=self.registry,
        )
        for status in OutcomeStatus:
            self._outcomes.labels(status.value)
        self._call_children: dict[tuple[str, str], Histogram] = {}
        self._started = clock.now()
        self._last_setpoint: dt.datetime | None = None
        self._exceeded_s = {"import": 0.0, "export": 0.0}
        self._above: tuple[float, bool, bool] | None = None  # (monotonic, import above, export above)
        self.registry.register(self)
        self._server: asyncio.Server | None = None
        self._serving = 0
        if self.settings is not None:
            gateway.ocpp.observe_calls(self.ocpp_call)

    # ---------------------------------------------------------------------------------------- hooks

    def ocpp_call(self, action: str, direction: str, seconds: float, error: str | None) -> None:
        """One OCPP call (:data:`~site_gateway.ocpp.station.CallObserver`)."""
        key = (action, direction)
        child = self._call_children.get(key)
        if child is None:
            if len(self._call_children) >= MAX_ACTIONS:
                key = ("other", direction)
            child = self._call_children.setdefault(key, self._calls.labels(*key))
        child.observe(seconds)
        if error is not None:
            self._call_errors.labels(key[0], direction, error).inc()

    def stepped(self, pushes: Iterable[Push], commands: Sequence[SetpointCommand]) -> None:
        """A control step ran for ``commands`` (the setpoint commands that arrived since the last step:
        valid, for this site, not repeats; the step runs at once on one) and sent ``pushes``: count
        them, sample the site against its limits."""
        if commands:
            self._last_setpoint = self._clock.now()
        for push in pushes:
            if push.outcome.sent_kw is not None:
                self._sent.inc()
            self._outcomes.labels(push.outcome.status.value).inc()
        self._site()

    # ------------------------------------------------------------------------------- the site's power

    def _site(self) -> tuple[float, float]:
        """(net import, net export) [W] metered now, and the seconds above a limit brought up to now."""
        gateway = self._gateway
        net_kw = gateway.base_load_kw + sum(v.power_kw for v in gateway.evses.values() if v.power_kw)
        import_w, export_w = max(net_kw, 0.0) * 1000, max(-net_kw, 0.0) * 1000
        limits = gateway.safety.limits
        now = self._clock.monotonic()
        if self._above is not None:
            since, import_above, export_above = self._above
            self._exceeded_s["import"] += (now - since) if import_above else 0.0
            self._exceeded_s["export"] += (now - since) if export_above else 0.0
        self._above = (
            now,
            import_w > limits.import_limit_kw * 1000 + ABOVE_LIMIT_TOLERANCE_W,
            export_w > limits.export_limit_kw * 1000 + ABOVE_LIMIT_TOLERANCE_W,
        )
        return import_w, export_w

    # ------------------------------------------------------------------------- scrape (a collector)

    def collect(self) -> Iterator[Metric]:
        """The gauges read from the gateway's state now (``prometheus_client`` collector protocol)."""
        gateway = self._gateway
        now = self._clock.now()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=value)

        info = GaugeMetricFamily(PREFIX + "info", "The gateway's site (always 1)", labels=["site_id"])
        info.add_metric([gateway.site_id], 1)
        yield info
        connected = GaugeMetricFamily(
            PREFIX + "chargers_connected", "Chargers connected now, by OCPP protocol", labels=["protocol"]
        )
        by_version = dict.fromkeys(OcppVersion, 0)
        for charger_id in gateway.ocpp.connected:
            station = gateway.ocpp.station(charger_id)
            if station is not None:
                by_version[station.version] += 1
        for version, count in by_version.items():
            connected.add_metric([version.value], count)
        yield connected

        import_w, export_w = self._site()
        limits = gateway.safety.limits
        for side, metered, limit_kw in (
            ("import", import_w, limits.import_limit_kw),
            ("export", export_w, limits.export_limit_kw),
        ):
            yield gauge(f"site_{side}_watts", f"Site {side} metered now: chargers and base load [W]", metered)
            yield gauge(f"site_{side}_limit_watts", f"The site's {side} limit [W]", limit_kw * 1000)
            yield gauge(
                f"site_{side}_headroom_watts",
                f"The {side} limit minus the metered {side} [W]; negative above the limit",
                limit_kw * 1000 - metered,
            )
        exceeded = CounterMetricFamily(
            PREFIX + "site_limit_exceeded_seconds",
            "Seconds the metered site power was above a limit, by direction (should stay 0)",
            labels=["direction"],
        )
        for direction, seconds in self._exceeded_s.items():
            exceeded.add_metric([direction], seconds)
        yield exceeded

        fallback = gateway.safety.mode is Mode.FALLBACK
        yield gauge("fallback_active", "1 while in fallback (no fresh schedule from the centre)", fallback)
        outbox = gateway.uplink.outbox
        depth, oldest = (len(outbox), outbox.oldest_enqueued_at()) if outbox.is_open else (0, None)
        yield gauge("outbox_messages", "Messages queued for the centre", depth)
        age = 0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0)
        yield gauge("outbox_oldest_age_seconds", "Age of the oldest queued message [s] (0: empty)", age)
        yield gauge(
            "mqtt_connected", "1 while connected to the MQTT broker", gateway.uplink.connected.is_set()
        )
        last = self._last_setpoint or self._started
        yield gauge(
            "last_setpoint_age_seconds",
            "Seconds since the last setpoint command arrived (since the start when none has)",
            max((now - last).total_seconds(), 0.0),
        )
        yield gauge(
            "setpoint_stale_after_seconds",
            "Without a fresh setpoint for this long the gateway falls back [s]",
            gateway.config.control.schedule_stale_after_s,
        )

    # ----------------------------------------------------------------------------------------- health

    def readiness(self) -> dict[str, str]:
        """Check -> ``ok`` or what is wrong: the OCPP server, the MQTT connection, the outbox."""
        gateway = self._gateway
        outbox = gateway.uplink.outbox.problem()
        return {
            "ocpp": "ok" if gateway.ocpp.listening else "not listening",
            "mqtt": "ok" if gateway.uplink.connected.is_set() else "down",
            "outbox": "ok" if outbox is None else outbox,
        }

    # --------------------------------------------------------------------------------------- listener

    async def __aenter__(self) -> Self:
        if self.settings is not None:
            self._server = await asyncio.start_server(
                self._serve, self.settings.host, self.settings.port, limit=MAX_REQUEST_BYTES
            )
            log.info(
                "gateway %s: metrics and health on %s:%d",
                self._gateway.site_id,
                self.settings.host,
                self.port,
            )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    @property
    def port(self) -> int | None:
        """The bound port of the listener (useful with port 0); ``None`` when not serving."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._serving += 1
        try:
            if self._serving > MAX_CONNECTIONS:
                status, body, content_type = HTTPStatus.SERVICE_UNAVAILABLE, b"busy\n", "text/plain"
            else:
                status, body, content_type = await self._answer(reader)
            head = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stalled: nothing to answer
        finally:
            self._serving -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[HTTPStatus, bytes, str]:
        text = "text/plain; charset=utf-8"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request head too large\n", text
        except asyncio.IncompleteReadError as exc:
            head = exc.partial  # no blank line: take the request line that came
        method, _, rest = head.decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method != "GET":
            return HTTPStatus.METHOD_NOT_ALLOWED, f"{method or 'no method'}: only GET\n".encode(), text
        if path == "/metrics":
            return HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST
        if path == "/healthz":
            return HTTPStatus.OK, b"ok\n", text
        if path == "/readyz":
            checks = self.readiness()
            ready = all(state == "ok" for state in checks.values())
            body = "".join(f"{name}: {state}\n" for name, state in checks.items()).encode()
            return (HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE), body, text
        return HTTPStatus.NOT_FOUND, f"{path}: not found (/metrics, /healthz, /readyz)\n".encode(), text
