"""The gateway's /metrics, /healthz and /readyz, scraped over HTTP from a real gateway with real peers.

Simulated OCPP chargers (1.6 and 2.0.1 at once) connect to a real :class:`Gateway`, a test-owned
Mosquitto carries its uplink and the centre's commands; every figure is read the way Prometheus reads
it (an HTTP GET, parsed with ``prometheus_client``'s own parser), and checked against the traffic that
made it: a charger that connects, a profile accepted, a broker that goes away, a site above its limit.
The alert rules in ``deploy/prometheus/`` may name only metrics a real gateway exposes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
import yaml
from mosquitto import Mosquitto
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from test_gateway import SPEED, Centre, until

from chargersim.clock import SimClock
from chargersim.stations import Protocol, SimulatedCharger
from chargersim.vehicles import Vehicle
from site_gateway.config import GatewayConfig
from site_gateway.gateway import Gateway
from wire.contract import AckStatus, subscription

ALERTS = Path(__file__).parents[1] / "deploy" / "prometheus" / "gateway-alerts.yml"
DASHBOARD = Path(__file__).parents[1] / "deploy" / "grafana" / "site.json"
PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for every target (``up``: the scrape answered)."""


def site_config(broker: Mosquitto, *, import_limit_kw: float, metrics: bool = True) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "site": {"id": "site-metrics", "import_limit_kw": import_limit_kw},
            "ocpp": {"host": "127.0.0.1", "port": 0, "allow_unknown": True},
            "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}"},
            "control": {"telemetry_interval_s": 0.5},
            "chargers": [{"id": f"cp-{n}", "max_charge_kw": 11, "limit_unit": "W"} for n in range(2)],
            **({"metrics": {"port": 0}} if metrics else {}),
        }
    )


# ------------------------------------------------------------------------------------------ scraping


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of ``GET path`` on the gateway's metrics listener, by the standard library's client."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def get(gateway: Gateway, path: str) -> tuple[int, str]:
    assert gateway.metrics.port is not None
    return await asyncio.to_thread(http_get, gateway.metrics.port, path)


class Scrape:
    """One /metrics answer, parsed by ``prometheus_client.parser``."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {
            (s.name, frozenset(s.labels.items())): s.value for f in self.families.values() for s in f.samples
        }

    def value(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"{name}{labels} not exposed; have {sorted(n for n, _ in self.samples)}"
        return self.samples[key]

    def names(self) -> set[str]:
        """Every name a PromQL expression may use: families and their samples (``_total``, ``_bucket``...)."""
        names = {name for name, _ in self.samples} | set(self.families)
        for family in self.families.values():
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
        return names


async def scrape(gateway: Gateway) -> Scrape:
    status, text = await get(gateway, "/metrics")
    assert status == 200, text
    return Scrape(text)


async def until_scraped(gateway: Gateway, check: object, timeout: float = 20.0) -> Scrape:
    """Scrape until ``check(scrape)`` holds (a callable of a :class:`Scrape`); the last scrape."""
    assert callable(check)
    async with asyncio.timeout(timeout):
        while True:
            last = await scrape(gateway)
            if check(last):
                return last
            await asyncio.sleep(0.1)


# -------------------------------------------------------------------------------------------- the site


@asynccontextmanager
async def site(
    tmp_path: Path, broker: Mosquitto, *, import_limit_kw: float, protocols: tuple[Protocol, ...]
) -> AsyncIterator[tuple[Gateway, Centre, list[SimulatedCharger], asyncio.TaskGroup]]:
    """A gateway with metrics on a free port, a centre, and one simulated charger per protocol (not
    started: the caller starts them in the task group it is given)."""
    clock = SimClock(dt.datetime.now(dt.UTC), speed=SPEED)
    gateway = Gateway(
        site_config(broker, import_limit_kw=import_limit_kw),
        outbox_path=tmp_path / "outbox.sqlite",
        control_interval_s=0.5,
    )
    async with (
        aiomqtt.Client(broker.host, broker.port, identifier="centre-metrics") as client,
        gateway,
        asyncio.TaskGroup() as tasks,
    ):
        await client.subscribe(subscription(), qos=1)
        centre = Centre(client, gateway.site_id)
        tasks.create_task(listen_until_lost(centre), name="centre")
        sims = [
            SimulatedCharger(
                f"cp-{n}",
                f"ws://127.0.0.1:{gateway.ocpp.port}",
                protocol,
                Vehicle(
                    capacity_kwh=80,
                    soc=0.2,
                    max_charge_kw=11,
                    arrival=clock.now(),
                    departure=clock.now() + dt.timedelta(hours=2 + n),
                ),
                clock,
                max_power_w=11_000,
                meter_interval_s=30,
                tick_s=5,
            )
            for n, protocol in enumerate(protocols)
        ]
        try:
            yield gateway, centre, sims, tasks
        finally:
            for task in tasks._tasks:
                task.cancel()


async def listen_until_lost(centre: Centre) -> None:
    """The centre's listener, ending quietly when the test stops the broker."""
    with contextlib.suppress(aiomqtt.MqttError):
        await centre.listen()


async def charging(gateway: Gateway, sims: list[SimulatedCharger], tasks: asyncio.TaskGroup) -> None:
    for sim in sims:
        tasks.create_task(sim.run(), name=f"sim-{sim.station_id}")
    await until(lambda: all(sim.transaction is not None for sim in sims))
    await until(lambda: all((v := gateway.evses.get(f"{s.station_id}/1")) and v.transaction_id for s in sims))


def metered_w(gateway: Gateway) -> float:
    """What the gateway last heard the chargers draw [W]."""
    return sum((view.power_kw or 0.0) * 1000 for view in gateway.evses.values())


# --------------------------------------------------------------------------------------------- tests


def test_metrics_move_with_real_traffic(tmp_path: Path, broker: Mosquitto) -> None:
    """Chargers connect (counted by protocol), a command's profiles are accepted (counted), the
    headroom is the limit less what the stations meter, and the outbox, MQTT gauge and /readyz follow
    the broker going away and coming back."""

    async def scenario() -> None:
        async with site(tmp_path, broker, import_limit_kw=15, protocols=("2.0.1", "1.6")) as (
            gateway,
            centre,
            sims,
            tasks,
        ):
            assert await get(gateway, "/healthz") == (200, "ok\n")
            before = await until_scraped(gateway, lambda s: s.value("fleetgrid_gateway_mqtt_connected") == 1)
            for protocol in ("ocpp1.6", "ocpp2.0.1", "ocpp2.1"):
                assert before.value("fleetgrid_gateway_chargers_connected", protocol=protocol) == 0
            assert before.value("fleetgrid_gateway_profile_outcomes_total", outcome="accepted") == 0
            assert before.value("fleetgrid_gateway_info", site_id="site-metrics") == 1
            assert await get(gateway, "/readyz") == (200, "ocpp: ok\nmqtt: ok\noutbox: ok\n")

            await charging(gateway, sims, tasks)
            # No setpoint yet: the gateway runs on its fallback rules (from its first control step).
            connected = await until_scraped(
                gateway, lambda s: s.value("fleetgrid_gateway_fallback_active") == 1
            )
            assert connected.value("fleetgrid_gateway_chargers_connected", protocol="ocpp2.0.1") == 1
            assert connected.value("fleetgrid_gateway_chargers_connected", protocol="ocpp1.6") == 1
            assert connected.value("fleetgrid_gateway_chargers_connected", protocol="ocpp2.1") == 0
            # The chargers' own calls are counted as they arrive (BootNotification from both).
            boots = connected.value(
                "fleetgrid_gateway_ocpp_call_duration_seconds_count",
                action="BootNotification",
                direction="from_charger",
            )
            assert boots == 2

            # The stations may start drawing their maximum before their boot default arrives (22 kW
            # on this 15 kW site for a moment): from once the gateway has them within the limit, the
            # command's rollout (reductions first) must not pass it at the meter.
            await until(lambda: metered_w(gateway) <= 15_000)
            start = await scrape(gateway)
            exceeded_before = {
                direction: start.value(
                    "fleetgrid_gateway_site_limit_exceeded_seconds_total", direction=direction
                )
                for direction in ("import", "export")
            }
            command_id = await centre.command({"cp-0": 4.0, "cp-1": 5.0})
            await until(lambda: centre.ack(command_id) is not None)
            ack = centre.ack(command_id)
            assert ack is not None and ack.status is AckStatus.ACCEPTED, ack
            after = await scrape(gateway)
            assert after.value("fleetgrid_gateway_profile_outcomes_total", outcome="accepted") >= 2
            assert after.value("fleetgrid_gateway_profiles_sent_total") >= 2
            assert after.value("fleetgrid_gateway_profile_outcomes_total", outcome="rejected") == 0
            sent = after.value(
                "fleetgrid_gateway_ocpp_call_duration_seconds_count",
                action="SetChargingProfile",
                direction="to_charger",
            )
            assert sent >= 2
            assert after.value("fleetgrid_gateway_fallback_active") == 0
            assert after.value("fleetgrid_gateway_last_setpoint_age_seconds") < 5
            assert after.value("fleetgrid_gateway_setpoint_stale_after_seconds") == 900

            # The headroom is the limit less what the stations meter (no base load here).
            await until(lambda: abs(sims[0].power_w - 4000) < 50 and abs(sims[1].power_w - 5000) < 50)
            await until(lambda: abs(metered_w(gateway) - sum(s.power_w for s in sims)) < 50)
            site_now = await scrape(gateway)
            stations_w = sum(sim.power_w for sim in sims)
            assert site_now.value("fleetgrid_gateway_site_import_watts") == pytest.approx(stations_w, abs=50)
            assert site_now.value("fleetgrid_gateway_site_import_limit_watts") == 15_000
            headroom = site_now.value("fleetgrid_gateway_site_import_headroom_watts")
            assert headroom == pytest.approx(15_000 - stations_w, abs=50)
            assert site_now.value("fleetgrid_gateway_site_export_headroom_watts") == 0
            for direction in ("import", "export"):
                exceeded = site_now.value(
                    "fleetgrid_gateway_site_limit_exceeded_seconds_total", direction=direction
                )
                assert exceeded == exceeded_before[direction]

            # The broker goes away: not ready, and the outbox fills (telemetry every 0.5 s).
            broker.stop()
            down = await until_scraped(
                gateway,
                lambda s: (
                    s.value("fleetgrid_gateway_mqtt_connected") == 0
                    and s.value("fleetgrid_gateway_outbox_messages") >= 3
                ),
            )
            assert down.value("fleetgrid_gateway_outbox_oldest_age_seconds") > 0
            assert await get(gateway, "/readyz") == (503, "ocpp: ok\nmqtt: down\noutbox: ok\n")
            assert (await get(gateway, "/healthz"))[0] == 200  # alive all the same
            broker.start()
            await until_scraped(
                gateway,
                lambda s: (
                    s.value("fleetgrid_gateway_mqtt_connected") == 1
                    and s.value("fleetgrid_gateway_outbox_messages") <= 1
                ),
                timeout=60,  # the uplink's reconnect backoff
            )
            assert (await get(gateway, "/readyz"))[0] == 200

    asyncio.run(scenario())


def test_seconds_above_the_limit_count_from_the_metered_power(tmp_path: Path, broker: Mosquitto) -> None:
    """A site load appears that puts the metered import above the limit: the counter runs while the
    meters show the site above it and stops once the gateway has brought the chargers down."""

    async def scenario() -> None:
        async with site(tmp_path, broker, import_limit_kw=22, protocols=("2.0.1",)) as (
            gateway,
            _centre,
            sims,
            tasks,
        ):
            await charging(gateway, sims, tasks)
            await until(lambda: abs(sims[0].power_w - 11_000) < 50)  # fallback: full power, within 22 kW
            calm = await scrape(gateway)
            assert calm.value("fleetgrid_gateway_site_limit_exceeded_seconds_total", direction="import") == 0
            gateway.base_load_kw = 18.0  # the site meter: 18 + 11 kW against a 22 kW limit
            above = await until_scraped(
                gateway, lambda s: s.value("fleetgrid_gateway_site_import_headroom_watts") < 0
            )
            assert above.value("fleetgrid_gateway_site_import_watts") == pytest.approx(29_000, abs=100)
            # The gateway lowers the charger to what fits; once its meter shows it, the count stops.
            await until(lambda: sims[0].power_w <= 4_000 + 50)
            await until(lambda: metered_w(gateway) <= 4_000 + 50)
            settled = await until_scraped(
                gateway, lambda s: s.value("fleetgrid_gateway_site_import_headroom_watts") >= 0
            )
            exceeded = settled.value(
                "fleetgrid_gateway_site_limit_exceeded_seconds_total", direction="import"
            )
            assert exceeded > 0
            await asyncio.sleep(1.0)
            later = await scrape(gateway)
            assert later.value(
                "fleetgrid_gateway_site_limit_exceeded_seconds_total", direction="import"
            ) == pytest.approx(exceeded, abs=0.6)  # at most the one sample interval that saw it settle

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------ the deploy files

_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_PROMQL_WORDS |= {"group_left", "group_right", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords,
    label names (in ``{...}`` and ``by (...)``) or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _PROMQL_WORDS:
            names.add(name)
    return names


def alert_rules() -> list[dict[str, object]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promql_metrics_reads_names_not_functions_or_labels() -> None:
    expr = 'increase(a_total{site="x"}[5m]) > 0 and on (instance) max by (instance) (b) > bool 2'
    assert promql_metrics(expr) == {"a_total", "b"}


def test_every_alert_names_metrics_a_real_gateway_exposes(tmp_path: Path, broker: Mosquitto) -> None:
    """Each rule in ``deploy/prometheus/gateway-alerts.yml`` reads only series that a running
    gateway's /metrics exposes (or Prometheus's own ``up``), and the dashboard too."""
    rules = alert_rules()
    expected = {
        "GatewaySiteLimitExceeded",
        "GatewayDown",
        "GatewayMqttDisconnected",
        "GatewayFallbackActive",
        "GatewayOutboxGrowing",
        "GatewaySetpointStale",
    }
    assert {rule["alert"] for rule in rules} >= expected
    for rule in rules:
        labels, annotations = rule.get("labels"), rule.get("annotations")
        assert isinstance(labels, dict) and labels.get("severity") in ("warning", "critical"), rule
        assert isinstance(annotations, dict) and annotations.get("summary"), rule
    panels = __import__("json").loads(DASHBOARD.read_text())["panels"]
    dashboard_exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert dashboard_exprs

    async def scenario() -> None:
        async with site(tmp_path, broker, import_limit_kw=22, protocols=()) as (gateway, *_):
            exposed = (await scrape(gateway)).names()
        for rule in rules:
            named = promql_metrics(str(rule["expr"]))
            assert named, f"{rule['alert']} names no metric"
            assert named - PROMETHEUS_OWN <= exposed, (rule["alert"], named - exposed)
        for expr in dashboard_exprs:
            assert promql_metrics(expr) <= exposed | {"instance"}, (expr, promql_metrics(expr) - exposed)

    asyncio.run(scenario())


# -------------------------------------------------------------------------------------------- config


def test_metrics_are_off_without_a_metrics_table(tmp_path: Path, broker: Mosquitto) -> None:
    async def scenario() -> None:
        gateway = Gateway(
            site_config(broker, import_limit_kw=22, metrics=False), outbox_path=tmp_path / "outbox.sqlite"
        )
        async with gateway:
            assert gateway.metrics.port is None
            assert gateway.ocpp._context.on_call is None  # nothing on the calls' path

    asyncio.run(scenario())


def test_the_metrics_listener_is_never_the_ocpp_port(broker: Mosquitto) -> None:
    data = site_config(broker, import_limit_kw=22).model_dump(mode="json")
    data["ocpp"]["port"] = 9000
    data["metrics"] = {"port": 9000}
    with pytest.raises(ValidationError, match=r"metrics\.port 9000 is the OCPP port"):
        GatewayConfig.model_validate(data)
    data["metrics"] = {"port": 9464}
    assert GatewayConfig.model_validate(data).metrics == GatewayConfig.model_validate(data).metrics
    assert GatewayConfig.model_validate(data).metrics.host == "127.0.0.1"  # type: ignore[union-attr]


def test_unknown_paths_and_methods_are_refused(tmp_path: Path, broker: Mosquitto) -> None:
    async def scenario() -> None:
        async with site(tmp_path, broker, import_limit_kw=22, protocols=()) as (gateway, *_):
            status, body = await get(gateway, "/nope")
            assert status == 404 and "/metrics, /healthz, /readyz" in body
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.metrics.port)
            writer.write(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 405 "), answer

    asyncio.run(scenario())
