"""The central service's metrics and health, scraped from a real :class:`AggregatorService`.

The service runs with a private Mosquitto and SQLite, its ``[metrics]`` listener on a free port. Real
traffic moves the counters: a gateway's telemetry is stored (and a numbering gap and a broken payload
are counted), the control loop makes a plan, an admin's API request is counted under its route
template, a wrong password is a login failure; an active dispatch event shows its commitment in watts.
``/healthz`` and ``/readyz`` answer on the API and on the metrics listener, and readiness fails while
the broker is down. The alert rules in ``deploy/prometheus/centre-alerts.yml`` and the portfolio
dashboard name only metrics the service exposes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import httpx
import pytest
import yaml
from mosquitto import Mosquitto
from prometheus_client.parser import text_string_to_metric_families

from aggregator.api.config import Settings
from aggregator.api.security import hash_api_key, hash_password
from aggregator.db.models import ApiKey, Charger, DispatchEvent, Program, ProgramKind, Role, Site, User
from aggregator.runtime.config import CentralConfig
from aggregator.runtime.service import AggregatorService
from market_adapters.dispatch import SignalKind, SignalStatus
from wire.contract import Telemetry, TopicKind, encode, telemetry_topic

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "centre-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "portfolio.json"
ADMIN_KEY = "fgk_metrics-admin-key"
PASSWORD = "correct horse battery"
METRIC_NAME = re.compile(r"\bfleetgrid_[a-z0-9_]+")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def write_config(tmp_path: Path, mqtt_port: int, *, metrics: bool = True) -> CentralConfig:
    path = tmp_path / "central.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "central.sqlite"}"\n'
        "[api]\nport = 0\n"
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\n'
        "[control]\nsolver_time_limit_s = 5\n"
        + ("[metrics]\nport = 0\nevent_cache_s = 0.1\n" if metrics else "")
    )
    return CentralConfig.load(path)


def seed(service: AggregatorService, now: dt.datetime) -> None:
    """A site with a charger, an admin (with an API key and a password), and an active DR event."""
    with service.sessions() as session:
        admin = User(email="admin@example.org", password_hash=hash_password(PASSWORD), role=Role.ADMIN)
        operator = User(email="op@example.org", password_hash="x", role=Role.GRID_OPERATOR)
        session.add_all(
            [admin, operator, Site(id="depot-1", name="Depot", import_limit_kw=50, export_limit_kw=0)]
        )
        session.flush()
        session.add(Charger(site_id="depot-1", charge_point_id="cp-1", evse_id=1, max_kw=11))
        session.add(ApiKey(key_hash=hash_api_key(ADMIN_KEY), name="metrics", owner_id=admin.id))
        session.add(Program(id="dr", name="DR", kind=ProgramKind.DR, owner_id=operator.id))
        start, end = now - dt.timedelta(minutes=20), now + dt.timedelta(hours=1)
        session.add(
            DispatchEvent(
                program_id="dr",
                source="api",
                external_event_id="metrics-1",
                modification=0,
                kind=SignalKind.DR_REDUCTION,
                status=SignalStatus.ACTIVE,
                window_start=start,
                window_end=end,
                intervals=[{"start": start.isoformat(), "end": end.isoformat(), "value": 12.5}],
                target_sites=["depot-1"],
                received_at=start,
            )
        )
        session.commit()


async def scrape(port: int | None) -> tuple[Samples, set[str]]:
    """``GET /metrics`` parsed by prometheus_client: each sample's value by (name, labels), and every
    name a query may use (families, with their ``_total``/``_bucket``/... sample names)."""
    assert port is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        answer = await client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(answer.text):
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
        for sample in family.samples:
            names.add(sample.name)
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples, names


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sample ``metric`` with exactly ``labels``; 0 when absent (a counter not moved yet)."""
    return samples.get((metric, frozenset(labels.items())), 0.0)


async def get(port: int | None, path: str, **kwargs: object) -> httpx.Response:
    assert port is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        return await client.get(path, **kwargs)  # type: ignore[arg-type]


def test_counters_move_with_real_traffic(tmp_path: Path, broker: Mosquitto) -> None:
    config = write_config(tmp_path, broker.port)

    async def scenario() -> tuple[Samples, set[str]]:
        async with AggregatorService(config, Settings()) as service:
            now = service.clock.now()
            seed(service, now)
            assert service.ingestion is not None and service.control is not None
            await service.ingestion.wait_subscribed(10)
            before, _ = await scrape(service.metrics_port)
            assert value(before, "fleetgrid_ingestion_messages_stored_total", kind="telemetry") == 0
            assert value(before, "fleetgrid_api_login_failures_total") == 0

            # a gateway: seq 1, then seq 5 (2-4 lost: a run), then a payload that breaks the contract
            def reading(seq: int) -> bytes:
                return encode(
                    Telemetry(site_id="depot-1", seq=seq, sent_at=now, site_import_kw=9.0, evses=())
                )

            async with aiomqtt.Client("127.0.0.1", broker.port) as gateway:
                for payload in (reading(1), reading(5), b'{"site_id": "depot-1"}'):
                    await gateway.publish(telemetry_topic("depot-1"), payload, qos=1)
            telemetry = service.ingestion.stats[TopicKind.TELEMETRY]
            await until(lambda: telemetry.stored + telemetry.rejected == 3, "the telemetry handled")

            # the control loop plans the site
            control = service.control.stats
            service.replans.request("depot-1", "test")
            await until(lambda: "depot-1" in control.planned_at, "a plan of depot-1")

            # the API: an admin reads the site; someone gets the password wrong
            got = await get(service.api_port, "/admin/sites/depot-1", headers={"X-API-Key": ADMIN_KEY})
            assert got.status_code == 200, got.text
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}") as client:
                refused = await client.post(
                    "/auth/token", data={"username": "admin@example.org", "password": "no"}
                )
            assert refused.status_code == 401

            # health on both listeners
            for port in (service.api_port, service.metrics_port):
                assert (await get(port, "/healthz")).json() == {"status": "ok", "checks": {}}
                await until_ready(port)
            await asyncio.sleep(0.15)  # past event_cache_s: the event is read at the next scrape
            return await scrape(service.metrics_port)

    after, names = asyncio.run(scenario())

    assert value(after, "fleetgrid_ingestion_messages_received_total", kind="telemetry") == 3
    assert value(after, "fleetgrid_ingestion_messages_stored_total", kind="telemetry") == 2
    assert (
        value(after, "fleetgrid_ingestion_messages_rejected_total", kind="telemetry", reason="contract") == 1
    )
    assert value(after, "fleetgrid_ingestion_seq_gaps_total", site_id="depot-1", size="run") == 1
    assert value(after, "fleetgrid_ingestion_seq_missing_total", site_id="depot-1") == 3
    assert value(after, "fleetgrid_ingestion_batch_latency_seconds_count") >= 1
    assert value(after, "fleetgrid_ingestion_connected") == 1
    assert value(after, "fleetgrid_control_plans_total") >= 1
    assert value(after, "fleetgrid_control_solve_duration_seconds_count") >= 1
    assert 0 <= value(after, "fleetgrid_control_plan_age_seconds", site_id="depot-1") < 60
    assert value(after, "fleetgrid_control_loop_passes_total") >= 1
    admin_read = {"method": "GET", "route": "/admin/sites/{site_id}", "status": "200"}
    assert value(after, "fleetgrid_api_requests_total", **admin_read) == 1
    assert (
        value(
            after,
            "fleetgrid_api_request_duration_seconds_count",
            method="GET",
            route="/admin/sites/{site_id}",
        )
        == 1
    )
    assert not [key for key in after if ("route", "/admin/sites/depot-1") in key[1]], (
        "raw paths are not labels"
    )
    assert value(after, "fleetgrid_api_login_failures_total") == 1
    assert value(after, "fleetgrid_dependency_up", name="mqtt", kind="mqtt-broker") == 1
    assert value(after, "fleetgrid_dispatch_events_active") == 1
    [(labels, committed)] = [
        (k[1], v) for k, v in after.items() if k[0] == "fleetgrid_dispatch_event_committed_watts"
    ]
    assert dict(labels)["kind"] == "dr_reduction"
    assert committed == pytest.approx(12_500.0)

    # every metric an alert or the dashboard names is one the service exposes
    for named in metric_names(ALERTS.read_text()) | metric_names(DASHBOARD.read_text()):
        assert named in names, f"{named} is named in deploy/ but not exposed by the service"


async def until_ready(port: int | None, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (answer := await get(port, "/readyz")).status_code != 200:
        assert asyncio.get_running_loop().time() < deadline, answer.text
        await asyncio.sleep(0.1)
    assert answer.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "control": "ok"}}


def test_readyz_fails_while_the_broker_is_down(tmp_path: Path) -> None:
    mosquitto = Mosquitto(tmp_path / "broker")
    config = write_config(tmp_path, mosquitto.port)

    async def scenario() -> None:
        with mosquitto:
            async with AggregatorService(config, Settings()) as service:
                for port in (service.api_port, service.metrics_port):
                    await until_ready(port)
                mosquitto.stop()
                for port in (service.api_port, service.metrics_port):
                    deadline = asyncio.get_running_loop().time() + 30
                    while (answer := await get(port, "/readyz")).status_code != 503:
                        assert asyncio.get_running_loop().time() < deadline, answer.text
                        await asyncio.sleep(0.1)
                    assert answer.json()["checks"]["broker"] == "fail"
                    assert answer.json()["checks"]["database"] == "ok"
                    assert set(answer.json()) == {"status", "checks"}, "no details beyond ok/fail"
                    assert (await get(port, "/healthz")).status_code == 200
                await until(lambda: service.dependencies["mqtt"].state == "down", "mqtt reported down")
                samples, _ = await scrape(service.metrics_port)
                assert value(samples, "fleetgrid_dependency_up", name="mqtt", kind="mqtt-broker") == 0
                assert value(samples, "fleetgrid_ingestion_connected") == 0
                mosquitto.start()
                await until_ready(service.api_port)

    asyncio.run(scenario())


def test_metrics_are_off_unless_configured(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1883, metrics=False)
    assert config.metrics is None
    service = AggregatorService(config, Settings())
    assert service.metrics is None and service.metrics_port is None
    service.engine.dispose()


def metric_names(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text))


def test_alert_rules_parse_and_cover_the_issue() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    [group] = rules["groups"]
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    for wanted in (
        "PlanStale",
        "EventUnderDelivering",
        "IngestionGaps",
        "IngestionRejecting",
        "VtnDown",
        "Api5xx",
    ):
        assert f"Fleetgrid{wanted}" in alerts
    for name, rule in alerts.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert metric_names(rule["expr"]), f"{name} names no fleetgrid metric"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
    promtool = shutil.which("promtool")
    if promtool is not None:  # Debian's prometheus package ships it
        checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "fleetgrid-portfolio"
    assert all(target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", []))
