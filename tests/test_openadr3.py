"""OpenADR 3 client against a small VTN (tests/openadr3_vtn.py) served by uvicorn on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openadr3_vtn import Vtn, free_port, serve

from market_adapters.dispatch import GridSignal, SignalKind, SignalStatus
from market_adapters.errors import AdapterFormatError
from market_adapters.openadr3 import (
    OpenAdr3AuthError,
    OpenAdr3Client,
    OpenAdr3HttpError,
    OpenAdr3Settings,
    OpenAdr3UnavailableError,
    callback_router,
    parse_event,
    parse_program,
)

T0 = dt.datetime(2025, 1, 1, 10, 0, tzinfo=dt.UTC)
WAIT = 5.0


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


class Oracle:
    def __init__(self, readings: list[tuple[dt.datetime, float]]) -> None:
        self.readings = readings
        self.asked: list[tuple[dt.datetime, dt.datetime]] = []

    async def available_kw(self, kind: SignalKind, start: dt.datetime, end: dt.datetime) -> float:
        return 100.0

    async def metered_kw(self, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, float]]:
        self.asked.append((start, end))
        return [(t, kw) for t, kw in self.readings if start <= t < end]


def settings(url: str, **overrides: Any) -> OpenAdr3Settings:
    fields: dict[str, Any] = {
        "vtn_url": url,
        "client_id": "ven-1",
        "client_secret": "s3cret",
        "client_name": "fleetgrid",
        "program_map": {"DR-1": "our-dr"},
        "site_map": {"depot-a": "site-a"},
        "simple_levels_kw": {0: 0.0, 1: 20.0, 2: 40.0, 3: 80.0},
        "poll_interval_s": 0.02,
        "request_timeout_s": 2.0,
    }
    return OpenAdr3Settings(**(fields | overrides))


def cap_event(program_id: str, values: tuple[float, ...] = (50.0, 40.0), **fields: Any) -> dict[str, Any]:
    return {
        "programID": program_id,
        "eventName": "evening cap",
        "intervalPeriod": {"start": "2025-01-01T10:00:00Z", "duration": "PT30M"},
        "intervals": [
            {"id": i, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [v]}]}
            for i, v in enumerate(values)
        ],
        "payloadDescriptors": [{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"}],
        "targets": [{"type": "RESOURCE_NAME", "values": ["depot-a"]}],
        **fields,
    }


class Admin:
    """The grid operator's side: drives the VTN over HTTP, so subscriptions get notified."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def post(self, event: dict[str, Any]) -> str:
        response = await self.http.post("/events", json=event)
        response.raise_for_status()
        return str(response.json()["id"])

    async def put(self, event_id: str, event: dict[str, Any]) -> None:
        (await self.http.put(f"/events/{event_id}", json=event)).raise_for_status()

    async def delete(self, event_id: str) -> None:
        (await self.http.delete(f"/events/{event_id}")).raise_for_status()


@asynccontextmanager
async def running_vtn(**kwargs: Any) -> AsyncIterator[tuple[Vtn, str, Admin]]:
    vtn = Vtn(**kwargs)
    async with serve(vtn.app) as url, httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
        form = {"grant_type": "client_credentials", "client_id": "ven-1", "client_secret": "s3cret"}
        token = (await http.post("/auth/token", data=form)).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        yield vtn, url, Admin(http)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(20):
            await scenario()

    asyncio.run(bounded())


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


# --- token -----------------------------------------------------------------------------------------------


def test_bad_credentials_are_a_clear_error() -> None:
    async def scenario() -> None:
        async with running_vtn() as (_vtn, url, _):
            async with OpenAdr3Client(settings(url, client_secret="wrong")) as client:
                with pytest.raises(OpenAdr3AuthError) as caught:
                    await client.list_programs()
            assert caught.value.status == 401
            assert "invalid_client" in str(caught.value)
            assert "wrong client_secret" in str(caught.value)
            assert "s3cret" not in str(caught.value)

    run(scenario)


def test_token_is_discovered_reused_and_refreshed_before_expiry() -> None:
    async def scenario() -> None:
        async with running_vtn(token_ttl_s=120) as (vtn, url, _):
            clock = Clock(T0)
            async with OpenAdr3Client(settings(url, token_refresh_margin_s=30), clock=clock) as client:
                first = await client.token()
                assert "GET /auth/server" in vtn.requests
                assert await client.token() == first
                clock.now = T0 + dt.timedelta(seconds=89)
                assert await client.token() == first
                clock.now = T0 + dt.timedelta(seconds=91)  # within 30 s of the 120 s expiry
                assert await client.token() != first
            assert vtn.token_requests == 1 + 2  # the admin's and our two

    run(scenario)


# --- programs and events ---------------------------------------------------------------------------------


def test_programs_are_listed() -> None:
    async def scenario() -> None:
        async with running_vtn() as (vtn, url, _):
            for n in range(60):  # more than one page of 50
                vtn.add_program(f"P-{n}")
            vtn.add_program("DR-1", payloadDescriptors=[{"payloadType": "PRICE", "currency": "EUR"}])
            async with OpenAdr3Client(settings(url)) as client:
                programs = await client.list_programs()
            assert len(programs) == 61
            assert programs[-1].programName == "DR-1"
            assert programs[-1].payloadDescriptors and programs[-1].payloadDescriptors[0].currency == "EUR"

    run(scenario)


def test_event_in_changed_and_deleted_becomes_signals() -> None:
    async def scenario() -> None:
        async with running_vtn() as (vtn, url, admin):
            program = vtn.add_program("DR-1")
            vtn.add_program("other")
            signals: list[GridSignal] = []

            async def sink(signal: GridSignal) -> None:
                signals.append(signal)

            clock = Clock(T0 - dt.timedelta(hours=2))
            cfg = settings(url, programs=("DR-1",))
            async with OpenAdr3Client(cfg, sink=sink, clock=clock) as client:
                event_id = await admin.post(cap_event(program["id"]))
                await wait_for(lambda: len(signals) == 1, "the event's signal")
                signal = signals[0]
                assert signal.kind is SignalKind.DR_CAP
                assert signal.status is SignalStatus.PENDING
                assert signal.event_id == event_id and signal.program_id == "our-dr"
                assert signal.source == client.source
                assert signal.target_sites == ("site-a",)
                assert [(i.start, i.end, i.value) for i in signal.intervals] == [
                    (T0, T0 + dt.timedelta(minutes=30), 50.0),
                    (T0 + dt.timedelta(minutes=30), T0 + dt.timedelta(hours=1), 40.0),
                ]
                await asyncio.sleep(0.1)  # unchanged polls send nothing new
                assert len(signals) == 1

                await admin.put(event_id, cap_event(program["id"], values=(30.0, 30.0, 20.0)))
                await wait_for(lambda: len(signals) == 2, "the changed event's signal")
                changed = signals[1]
                assert changed.modification > signal.modification
                assert [i.value for i in changed.intervals] == [30.0, 30.0, 20.0]
                assert changed.end == T0 + dt.timedelta(minutes=90)

                await admin.delete(event_id)
                await wait_for(lambda: len(signals) == 3, "the cancellation")
                cancelled = signals[2]
                assert cancelled.status is SignalStatus.CANCELLED
                assert cancelled.key == signal.key
                assert cancelled.modification > changed.modification
                assert cancelled.intervals == changed.intervals
            assert all(
                r.startswith(("GET", "POST /auth", "POST /events", "PUT", "DELETE")) for r in vtn.requests
            )

    run(scenario)


def test_an_event_the_sink_fails_on_is_delivered_again_at_the_next_poll() -> None:
    async def scenario() -> None:
        async with running_vtn() as (vtn, url, admin):
            program = vtn.add_program("DR-1")
            signals: list[GridSignal] = []
            failures = [RuntimeError("database is down"), RuntimeError("still down")]

            async def sink(signal: GridSignal) -> None:
                if failures:
                    raise failures.pop(0)
                signals.append(signal)

            clock = Clock(T0 - dt.timedelta(hours=2))
            async with OpenAdr3Client(settings(url, programs=("DR-1",)), sink=sink, clock=clock):
                event_id = await admin.post(cap_event(program["id"]))
                await wait_for(lambda: len(signals) == 1, "the event, once the sink takes it")
                assert failures == [] and signals[0].event_id == event_id
                failures.append(RuntimeError("down again"))
                await admin.delete(event_id)
                await wait_for(lambda: len(signals) == 2, "the cancellation, once the sink takes it")
                assert signals[1].status is SignalStatus.CANCELLED and failures == []

    run(scenario)


def test_malformed_event_names_the_field_and_the_client_keeps_going() -> None:
    async def scenario() -> None:
        async with running_vtn() as (vtn, url, admin):
            program = vtn.add_program("DR-1")
            bad = cap_event(program["id"])
            bad["intervals"][1]["payloads"][0]["values"] = ["lots"]
            bad_id = await admin.post(bad)
            async with OpenAdr3Client(settings(url)) as client:
                result = await client.poll_once()
                assert [e.field for e in result.errors] == ["intervals[1].payloads[0].values"]
                assert bad_id in str(result.errors[0]) and "'lots'" in str(result.errors[0])
                assert result.signals == []

                no_start = cap_event(program["id"])
                del no_start["intervalPeriod"]["start"]
                await admin.post(no_start)
                good_id = await admin.post(cap_event(program["id"]))
                result = await client.poll_once()
                assert [e.field for e in result.errors] == [
                    "intervals[1].payloads[0].values",
                    "intervals[0].intervalPeriod.start",
                ]
                assert [s.event_id for s in result.signals] == [good_id]

                await admin.put(bad_id, cap_event(program["id"]))  # fixed by the operator
                result = await client.poll_once()
                assert [s.event_id for s in result.signals] == [bad_id]

    run(scenario)


def test_unknown_payload_shape_errors_name_the_field() -> None:
    cfg = settings("http://vtn.invalid")
    with pytest.raises(AdapterFormatError) as caught:
        parse_event({"id": "e1", "programID": "p"}, program=None, settings=cfg, source="s", received_at=T0)
    assert caught.value.field == "intervals"
    bad_duration = cap_event("p", id="e2")
    bad_duration["intervalPeriod"]["duration"] = "P1M"  # a calendar month: no fixed length
    with pytest.raises(AdapterFormatError) as caught:
        parse_event(bad_duration, program=None, settings=cfg, source="s", received_at=T0)
    assert caught.value.field == "intervalPeriod.duration"


def _one(payload_type: str, values: list[float], **fields: Any) -> dict[str, Any]:
    return {
        "id": "e1",
        "programID": "p1",
        "intervalPeriod": {"start": "2025-01-01T10:00:00Z", "duration": "PT1H"},
        "intervals": [
            {"id": i, "payloads": [{"type": payload_type, "values": [v]}]} for i, v in enumerate(values)
        ],
        **fields,
    }


@pytest.mark.parametrize(
    ("event", "kind", "values", "currency"),
    [
        (_one("IMPORT_CAPACITY_SUBSCRIPTION", [200.0]), SignalKind.DR_CAP, [200.0], None),
        (_one("DISPATCH_SETPOINT", [15.0, 0.0]), SignalKind.DR_CAP, [15.0, 0.0], None),
        (_one("DISPATCH_SETPOINT", [-30.0, -10.0]), SignalKind.V2G_EXPORT, [30.0, 10.0], None),
        (_one("EXPORT_CAPACITY_SUBSCRIPTION", [25.0]), SignalKind.V2G_EXPORT, [25.0], None),
        (
            _one(
                "IMPORT_CAPACITY_LIMIT",
                [0.5],
                payloadDescriptors=[{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "MW"}],
            ),
            SignalKind.DR_CAP,
            [500.0],
            None,
        ),
        (_one("SIMPLE", [0, 2, 3]), SignalKind.DR_REDUCTION, [0.0, 40.0, 80.0], None),
        (_one("PRICE", [0.21, 0.35]), SignalKind.PRICE, [0.21, 0.35], "EUR"),
        (
            _one(
                "PRICE",
                [120.0],
                payloadDescriptors=[{"payloadType": "PRICE", "currency": "usd", "units": "MWH"}],
            ),
            SignalKind.PRICE,
            [0.12],
            "USD",
        ),
    ],
)
def test_payload_types_map_to_our_kinds(
    event: dict[str, Any], kind: SignalKind, values: list[float], currency: str | None
) -> None:
    program = parse_program(
        {
            "id": "p1",
            "programName": "DR-1",
            "payloadDescriptors": [{"payloadType": "PRICE", "currency": "EUR"}],
        }
    )
    signal = parse_event(event, program=program, settings=settings("http://x"), source="s", received_at=T0)
    assert signal is not None
    assert signal.kind is kind and signal.currency == currency and signal.program_id == "our-dr"
    assert [i.value for i in signal.intervals] == pytest.approx(values)
    assert signal.status is SignalStatus.ACTIVE
    assert signal.intervals[0].end - signal.intervals[0].start == dt.timedelta(hours=1)


def test_setpoint_changing_sign_and_unmapped_types() -> None:
    cfg = settings("http://x")
    with pytest.raises(AdapterFormatError, match="changes sign"):
        parse_event(
            _one("DISPATCH_SETPOINT", [10.0, -10.0]), program=None, settings=cfg, source="s", received_at=T0
        )
    with pytest.raises(AdapterFormatError, match="PRICE needs a currency"):
        parse_event(_one("PRICE", [0.2]), program=None, settings=cfg, source="s", received_at=T0)
    assert parse_event(_one("GHG", [300.0]), program=None, settings=cfg, source="s", received_at=T0) is None
    assert (
        parse_event(
            _one("EXPORT_CAPACITY_LIMIT", [9.0]), program=None, settings=cfg, source="s", received_at=T0
        )
        is None
    )


# --- reports ---------------------------------------------------------------------------------------------


def test_usage_report_carries_exactly_the_metered_values() -> None:
    readings = [(T0 + dt.timedelta(minutes=15 * k), kw) for k, kw in enumerate([41.25, 38.5, 39.75, 40.125])]
    oracle = Oracle([*readings, (T0 + dt.timedelta(hours=1), 99.0)])  # after the event: not reported

    async def scenario() -> None:
        async with running_vtn() as (vtn, url, admin):
            program = vtn.add_program("DR-1")
            event_id = await admin.post(
                cap_event(program["id"], reportDescriptors=[{"payloadType": "USAGE"}])
            )
            signals: list[GridSignal] = []

            async def sink(signal: GridSignal) -> None:
                signals.append(signal)

            clock = Clock(T0 + dt.timedelta(hours=2))  # the event is over: its report is due
            async with OpenAdr3Client(settings(url), sink=sink, oracle=oracle, clock=clock):
                await wait_for(lambda: bool(vtn.reports), "the report")
                await asyncio.sleep(0.1)  # one report per event, not one per poll
            assert len(vtn.reports) == 1
            report = vtn.reports[0]
            assert (report["programID"], report["eventID"], report["clientName"]) == (
                program["id"],
                event_id,
                "fleetgrid",
            )
            assert oracle.asked == [(T0, T0 + dt.timedelta(hours=1))]
            (resource,) = report["resources"]
            assert [iv["payloads"] for iv in resource["intervals"]] == [
                [{"type": "USAGE", "values": [kw]}] for _, kw in readings
            ]
            assert [iv["intervalPeriod"] for iv in resource["intervals"]] == [
                {"start": t.isoformat().replace("+00:00", "Z"), "duration": "PT15M"} for t, _ in readings
            ]
            assert report["payloadDescriptors"][0]["units"] == "KW"
            assert signals[0].status is SignalStatus.COMPLETED

    run(scenario)


# --- retries ---------------------------------------------------------------------------------------------


def test_503_is_retried_with_jittered_backoff_then_reported() -> None:
    async def scenario() -> None:
        async with running_vtn() as (vtn, url, _):
            vtn.add_program("DR-1")
            slept: list[float] = []

            async def sleep(seconds: float) -> None:
                slept.append(seconds)

            cfg = settings(url, backoff_base_s=1.0, max_retries=3)
            async with OpenAdr3Client(cfg, sleep=sleep, rng=random.Random(7)) as client:
                await client.token()
                vtn.fail_next = [503, 503]
                programs = await client.list_programs()
                assert [p.programName for p in programs] == ["DR-1"]
                assert len(slept) == 2
                assert 0.5 <= slept[0] <= 1.0 and 1.0 <= slept[1] <= 2.0
                assert slept[0] not in (0.5, 1.0)  # jittered

                vtn.fail_next = [503] * 4
                slept.clear()
                with pytest.raises(OpenAdr3HttpError) as caught:
                    await client.list_programs()
                assert caught.value.status == 503 and "injected by the test" in str(caught.value)
                assert len(slept) == 3

    run(scenario)


def test_unreachable_vtn_is_retried_then_a_clear_error() -> None:
    async def scenario() -> None:
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        cfg = settings(f"http://127.0.0.1:{free_port()}", max_retries=2)
        async with OpenAdr3Client(cfg, sleep=sleep) as client:
            with pytest.raises(OpenAdr3UnavailableError, match="after 3 attempts"):
                await client.list_programs()
        assert len(slept) == 2

    run(scenario)


# --- subscriptions ---------------------------------------------------------------------------------------


def test_subscription_webhook_delivers_signals() -> None:
    async def scenario() -> None:
        async with running_vtn() as (vtn, url, admin):
            program = vtn.add_program("DR-1")
            signals: list[GridSignal] = []

            async def collect(signal: GridSignal) -> None:
                signals.append(signal)

            async with OpenAdr3Client(settings(url)) as client:
                client.sink = collect  # webhook only: no polling task
                app = FastAPI()
                app.include_router(callback_router(client, bearer_token="hook-secret"))
                async with serve(app) as hook_url:
                    await client.subscribe(program["id"], f"{hook_url}/openadr3/notifications", "hook-secret")
                    event_id = await admin.post(cap_event(program["id"]))
                    assert [s.event_id for s in signals] == [event_id]
                    assert signals[0].program_id == "our-dr"
                    await admin.delete(event_id)
                    assert signals[-1].status is SignalStatus.CANCELLED
                    async with httpx.AsyncClient(timeout=WAIT) as http:
                        forged = await http.post(f"{hook_url}/openadr3/notifications", json={})
                    assert forged.status_code == 403
            assert [n["status"] for n in vtn.notifications_sent] == [200, 200]

    run(scenario)
