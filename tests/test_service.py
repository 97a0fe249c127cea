"""``fleetgrid aggregator`` in one process on a fresh machine's defaults: SQLite and the in-process broker.

A gateway's telemetry published on the broker is stored, the control loop plans the site, and the API
answers, all from one :class:`AggregatorService`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import httpx
import pytest
from openadr3_vtn import Vtn, serve
from sqlalchemy import func, select

from aggregator.api.config import Settings
from aggregator.db.models import (
    Charger,
    DispatchEvent,
    Program,
    ProgramKind,
    ProgramSite,
    Role,
    ScheduleVersion,
    Site,
    TelemetryRecord,
    User,
)
from aggregator.runtime.config import CentralConfig
from aggregator.runtime.service import AggregatorService
from wire.contract import Telemetry, encode, telemetry_topic


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def test_api_ingestion_and_control_loop_run_together(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'central.sqlite'}"
    path = tmp_path / "central.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n[api]\nport = 0\n[mqtt]\nurl = "embedded"\n'
        "[control]\nsolver_time_limit_s = 5\n"
    )
    config = CentralConfig.load(path)

    async def scenario() -> None:
        async with AggregatorService(config, Settings()) as service:
            with service.sessions() as session:
                session.add(Site(id="depot-1", name="Depot", import_limit_kw=50, export_limit_kw=0))
                session.flush()
                session.add(Charger(site_id="depot-1", charge_point_id="cp-1", evse_id=1, max_kw=11))
                session.commit()
            service.replans.request("depot-1", "test")

            def count(model: type) -> int:
                with service.sessions() as session:
                    return session.scalar(select(func.count()).select_from(model)) or 0

            await until(lambda: count(ScheduleVersion) >= 1)

            assert service.ingestion is not None
            await service.ingestion.wait_subscribed(10)
            reading = Telemetry(
                site_id="depot-1", seq=1, sent_at=dt.datetime.now(dt.UTC), site_import_kw=12.5, evses=()
            )
            assert service.broker_address is not None
            host, port = service.broker_address
            async with aiomqtt.Client(host, port) as gateway:
                await gateway.publish(telemetry_topic("depot-1"), encode(reading), qos=1)
            await until(lambda: count(TelemetryRecord) == 1)

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}") as client:
                assert (await client.get("/docs")).status_code == 200
                assert (await client.get("/users/me")).status_code == 401

    asyncio.run(scenario())


def test_a_bad_control_table_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "central.toml"
    path.write_text("[control]\ncadense = 5\n")
    config = CentralConfig.load(path)
    with pytest.raises(ValueError, match="cadense"):
        AggregatorService(config, Settings())


def test_openadr3_events_reach_the_database_and_re_plan_their_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``[[openadr]]`` VEN runs inside the service: an event posted on the VTN (tests/openadr3_vtn.py)
    is stored as a dispatch event of our program, and the control loop re-plans the targeted site."""
    url = f"sqlite:///{tmp_path / 'central.sqlite'}"
    monkeypatch.setenv("TEST_OADR3_SECRET", "s3cret")

    async def scenario() -> None:
        vtn = Vtn()
        program = vtn.add_program("DR-1")
        async with serve(vtn.app) as vtn_url:
            path = tmp_path / "central.toml"
            path.write_text(
                f'[database]\nurl = "{url}"\n[api]\nport = 0\n[mqtt]\nurl = "embedded"\n'
                "[control]\nsolver_time_limit_s = 5\n"
                f'[[openadr]]\nkind = "3"\nvtn_url = "{vtn_url}"\nven_name = "fleetgrid"\n'
                'client_id = "ven-1"\nclient_secret_env = "TEST_OADR3_SECRET"\npoll_interval_s = 0.05\n'
                'program_map = { "DR-1" = "peak" }\nsite_map = { "depot-a" = "depot-1" }\n'
            )
            async with AggregatorService(CentralConfig.load(path), Settings()) as service:
                with service.sessions() as session:
                    operator = User(email="op@example.org", password_hash="x", role=Role.GRID_OPERATOR)
                    session.add_all(
                        [operator, Site(id="depot-1", name="Depot", import_limit_kw=50, export_limit_kw=0)]
                    )
                    session.flush()
                    session.add(Charger(site_id="depot-1", charge_point_id="cp-1", evse_id=1, max_kw=11))
                    session.add(Program(id="peak", name="Peak", kind=ProgramKind.DR, owner_id=operator.id))
                    session.flush()
                    session.add(ProgramSite(program_id="peak", site_id="depot-1"))
                    session.commit()
                start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
                vtn.events["e-1"] = {
                    "id": "e-1",
                    "programID": program["id"],
                    "createdDateTime": "2025-01-01T00:00:00Z",
                    "intervalPeriod": {"start": start.isoformat(), "duration": "PT30M"},
                    "intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [20]}]}],
                    "targets": [{"type": "RESOURCE_NAME", "values": ["depot-a"]}],
                }

                def stored() -> list[DispatchEvent]:
                    with service.sessions() as session:
                        return list(session.scalars(select(DispatchEvent)))

                def event_plans() -> int:
                    with service.sessions() as session:
                        query = select(func.count()).where(ScheduleVersion.trigger.contains("event:"))
                        return session.scalar(query) or 0

                await until(lambda: len(stored()) == 1)
                [event] = stored()
                assert (event.external_event_id, event.program_id, event.target_sites) == (
                    "e-1",
                    "peak",
                    ["depot-1"],
                )
                assert [i["value"] for i in event.intervals] == [20.0]
                await until(lambda: event_plans() >= 1)
                assert service.grid_signals[0].counts["stored"] == 1

    asyncio.run(scenario())
