"""The OpenADR 2.0b VEN against a real openleadr VTN on loopback (unsigned test mode, short polls)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from openleadr import OpenADRServer, utils

from market_adapters.dispatch import GridSignal, SignalKind, SignalStatus
from market_adapters.openadr2 import Openadr2Error, Ven
from market_adapters.openadr2_events import Openadr2Settings, ProgramMapping, parse_event, read_event

T = TypeVar("T")

# openleadr's VTN stores itself on the aiohttp app under a plain string key.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning:openleadr.server")

VEN_ID = "ven-fleetgrid-1"
PEAK = "http://vtn.example/programs/peak"
PRICES = "http://vtn.example/programs/prices"
WAIT = 5.0  # seconds, for any single exchange with the VTN
T0 = dt.datetime(2031, 7, 1, 16, 0, tzinfo=dt.UTC)  # far in the future: events stay 'far'
Q = dt.timedelta(minutes=15)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FixedOracle:
    available: dict[SignalKind, float]
    metered: list[float] = field(default_factory=lambda: [12.5, 13.25])
    windows: list[tuple[dt.datetime, dt.datetime]] = field(default_factory=list)
    sent: list[tuple[dt.datetime, float]] = field(default_factory=list)

    async def available_kw(self, kind: SignalKind, start: dt.datetime, end: dt.datetime) -> float:
        return self.available.get(kind, 0.0)

    async def metered_kw(self, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, float]]:
        self.windows.append((start, end))
        step = (end - start) / len(self.metered)
        values = [(start + i * step, kw) for i, kw in enumerate(self.metered)]
        self.sent.extend(values)
        return values


@dataclass
class Peers:
    vtn: OpenADRServer
    ven: Ven
    signals: asyncio.Queue[GridSignal]
    opts: asyncio.Queue[tuple[str, str]]
    reports: asyncio.Queue[list[tuple[dt.datetime, float]]]

    def on_opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts.put_nowait((event_id, opt_type))

    def expect_opt(self, event_id: str) -> None:
        """openleadr pops an event's callback after the first answer: re-arm it for the next one."""
        event = utils.find_by(self.vtn.events[VEN_ID], "event_descriptor.event_id", event_id)
        self.vtn.event_callbacks[event_id] = (event, self.on_opt)

    def add_event(self, signal_name: str, signal_type: str, values: list[float], **kwargs: Any) -> str:
        intervals = [
            {"dtstart": T0 + i * Q, "duration": Q, "signal_payload": value} for i, value in enumerate(values)
        ]
        event_id: str = self.vtn.add_event(
            ven_id=VEN_ID,
            signal_name=signal_name,
            signal_type=signal_type,
            intervals=intervals,
            callback=self.on_opt,
            **kwargs,
        )
        return event_id


def settings(port: int, **overrides: Any) -> Openadr2Settings:
    values: dict[str, Any] = {
        "vtn_url": f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
        "ven_name": "fleetgrid-test",
        "insecure_test_mode": True,
        "programs": {
            PEAK: ProgramMapping(program_id="peak-2031", simple_levels_kw={1: 50, 2: 100, 3: 200}),
            PRICES: ProgramMapping(program_id="rtp", currency="USD"),
        },
        "sites": {"meter-a": "site-a", "meter-b": "site-b"},
        "poll_interval": dt.timedelta(seconds=0.05),
        "request_timeout": dt.timedelta(seconds=WAIT),
        "report_min_sampling": dt.timedelta(seconds=1),
        **overrides,
    }
    return Openadr2Settings(**values)


@contextlib.asynccontextmanager
async def peers(oracle: FixedOracle, *, accept: bool = True) -> AsyncIterator[Peers]:
    port = free_port()
    vtn = OpenADRServer(
        vtn_id="TESTVTN",
        http_port=port,
        http_host="127.0.0.1",
        requested_poll_freq=dt.timedelta(seconds=10),
        verify_message_signatures=False,
        show_fingerprint=False,
    )
    reports: asyncio.Queue[list[tuple[dt.datetime, float]]] = asyncio.Queue()

    def on_create_party_registration(payload: dict[str, Any]) -> tuple[str, str] | bool:
        return (VEN_ID, "reg-1") if accept else False

    def on_register_report(
        ven_id: str,
        resource_id: str,
        measurement: str,
        unit: str,
        scale: str,
        min_sampling_interval: dt.timedelta,
        max_sampling_interval: dt.timedelta,
    ) -> tuple[Any, dt.timedelta]:
        assert (measurement, unit, scale) == ("RealPower", "W", "k")
        return reports.put_nowait, dt.timedelta(seconds=1)

    vtn.add_handler("on_create_party_registration", on_create_party_registration)
    vtn.add_handler("on_register_report", on_register_report)
    await vtn.run()
    signals: asyncio.Queue[GridSignal] = asyncio.Queue()
    try:
        async with Ven(settings(port), signals.put, oracle) as ven:
            await ven.wait_registered(WAIT)  # entry does not wait: a VTN away must not stop the service
            yield Peers(vtn, ven, signals, asyncio.Queue(), reports)
    finally:
        await vtn.stop()


async def next_item(queue: asyncio.Queue[T]) -> T:
    return await asyncio.wait_for(queue.get(), WAIT)


ENOUGH = FixedOracle(
    available={SignalKind.DR_REDUCTION: 150.0, SignalKind.V2G_EXPORT: 40.0, SignalKind.DR_CAP: 80.0}
)


def test_registers_with_the_vtn() -> None:
    async def scenario() -> None:
        async with peers(ENOUGH) as p:
            assert p.ven.ven_id == VEN_ID
            assert p.ven.registration_id == "reg-1"
            assert p.vtn.registered_reports[VEN_ID][0]["report_name"] == "TELEMETRY_USAGE"

    asyncio.run(scenario())


def test_refused_registration_is_a_clear_error() -> None:
    async def scenario() -> None:
        with pytest.raises(Openadr2Error, match="did not register"):
            async with peers(ENOUGH, accept=False):
                pass

    asyncio.run(scenario())


def test_simple_event_becomes_a_reduction_and_is_opted_in_then_cancelled() -> None:
    async def scenario() -> None:
        async with peers(ENOUGH) as p:
            event_id = p.add_event("SIMPLE", "level", [2, 1], market_context=PEAK)
            assert await next_item(p.opts) == (event_id, "optIn")
            signal = await next_item(p.signals)
            assert signal.kind is SignalKind.DR_REDUCTION
            assert signal.event_id == event_id
            assert signal.program_id == "peak-2031"
            assert signal.status is SignalStatus.PENDING
            assert signal.target_sites == ()
            assert [(i.start, i.end, i.value) for i in signal.intervals] == [
                (T0, T0 + Q, 100.0),
                (T0 + Q, T0 + 2 * Q, 50.0),
            ]

            p.expect_opt(event_id)
            p.vtn.cancel_event(VEN_ID, event_id)
            cancelled = await next_item(p.signals)
            assert cancelled.event_id == event_id
            assert cancelled.status is SignalStatus.CANCELLED
            assert cancelled.modification == 1
            assert await next_item(p.opts) == (event_id, "optIn")  # the VTN saw the acknowledgement
            assert event_id not in [e.event_descriptor.event_id for e in p.vtn.events[VEN_ID]]

    asyncio.run(scenario())


def test_load_dispatch_delta_setpoint_and_export() -> None:
    async def scenario() -> None:
        async with peers(ENOUGH) as p:
            delta = p.add_event(
                "LOAD_DISPATCH", "delta", [-120], market_context=PEAK, targets=[{"resource_id": "meter-b"}]
            )
            assert await next_item(p.opts) == (delta, "optIn")
            signal = await next_item(p.signals)
            assert (signal.kind, signal.intervals[0].value) == (SignalKind.DR_REDUCTION, 120.0)
            assert signal.target_sites == ("site-b",)

            cap = p.add_event("LOAD_DISPATCH", "setpoint", [90, 100], market_context=PEAK)
            assert await next_item(p.opts) == (cap, "optIn")
            signal = await next_item(p.signals)
            assert signal.kind is SignalKind.DR_CAP
            assert [i.value for i in signal.intervals] == [90.0, 100.0]

            export = p.add_event("LOAD_DISPATCH", "setpoint", [-30], market_context=PEAK)
            assert await next_item(p.opts) == (export, "optIn")
            signal = await next_item(p.signals)
            assert (signal.kind, signal.intervals[0].value) == (SignalKind.V2G_EXPORT, 30.0)

    asyncio.run(scenario())


def test_price_is_always_opted_in() -> None:
    async def scenario() -> None:
        async with peers(FixedOracle(available={})) as p:
            event_id = p.add_event("ELECTRICITY_PRICE", "price", [0.31, 0.12], market_context=PRICES)
            assert await next_item(p.opts) == (event_id, "optIn")
            signal = await next_item(p.signals)
            assert (signal.kind, signal.currency, signal.program_id) == (SignalKind.PRICE, "USD", "rtp")
            assert [i.value for i in signal.intervals] == [0.31, 0.12]

    asyncio.run(scenario())


def test_undeliverable_event_is_opted_out() -> None:
    async def scenario() -> None:
        async with peers(FixedOracle(available={SignalKind.DR_REDUCTION: 60.0})) as p:
            too_big = p.add_event("SIMPLE", "level", [3], market_context=PEAK)  # 200 kW > 60 kW
            assert await next_item(p.opts) == (too_big, "optOut")

            unknown = p.add_event("SIMPLE", "level", [1], market_context="http://vtn.example/other")
            assert await next_item(p.opts) == (unknown, "optOut")

            load_up = p.add_event("LOAD_DISPATCH", "delta", [25], market_context=PEAK)
            assert await next_item(p.opts) == (load_up, "optOut")
            assert p.signals.empty()  # the plan only hears of what we commit to

    asyncio.run(scenario())


def modify(p: Peers, event_id: str, level: int) -> None:
    p.expect_opt(event_id)
    event = utils.find_by(p.vtn.events[VEN_ID], "event_descriptor.event_id", event_id)
    event.event_signals[0].intervals[0]["signal_payload"] = level
    utils.increment_event_modification_number(event)
    p.vtn.events_updated[VEN_ID] = True


def test_modification_replaces_the_signal_or_withdraws_it() -> None:
    async def scenario() -> None:
        async with peers(FixedOracle(available={SignalKind.DR_REDUCTION: 150.0})) as p:
            event_id = p.add_event("SIMPLE", "level", [1], market_context=PEAK)
            assert await next_item(p.opts) == (event_id, "optIn")
            assert (await next_item(p.signals)).intervals[0].value == 50.0

            modify(p, event_id, 2)
            modified = await next_item(p.signals)
            assert (modified.event_id, modified.modification, modified.status) == (
                event_id,
                1,
                SignalStatus.PENDING,
            )
            assert modified.intervals[0].value == 100.0
            assert await next_item(p.opts) == (event_id, "optIn")

            modify(p, event_id, 3)  # 200 kW is more than the 150 kW available
            assert await next_item(p.opts) == (event_id, "optOut")
            withdrawn = await next_item(p.signals)
            assert (withdrawn.modification, withdrawn.status) == (2, SignalStatus.CANCELLED)
            assert withdrawn.intervals[0].value == 100.0  # the version that was in the plan

    asyncio.run(scenario())


def test_reports_carry_exactly_the_metered_values() -> None:
    async def scenario() -> None:
        oracle = FixedOracle(available={}, metered=[12.5, 13.25])
        async with peers(oracle) as p:
            received = await next_item(p.reports)
            assert received
            assert [kw for _, kw in received] == [kw for _, kw in oracle.sent[: len(received)]]
            assert [t for t, _ in received] == [t for t, _ in oracle.sent[: len(received)]]
            start, end = oracle.windows[0]
            assert end - start == dt.timedelta(seconds=1)  # the interval the VTN asked for

    asyncio.run(scenario())


def test_read_and_parse_without_a_vtn() -> None:
    event = {
        "event_descriptor": {
            "event_id": "e1",
            "modification_number": 2,
            "event_status": "active",
            "market_context": PEAK,
        },
        "active_period": {"dtstart": T0, "duration": 2 * Q},
        "event_signals": [
            {"signal_name": "ELECTRICITY_PRICE", "signal_type": "price", "intervals": []},
            {
                "signal_name": "LOAD_DISPATCH",
                "signal_type": "delta",
                "measurement": {"name": "powerReal", "unit": "W", "scale": "none"},
                "intervals": [
                    {"duration": Q, "uid": 0, "signal_payload": -5000.0},
                    {"duration": Q, "uid": 1, "signal_payload": -2500.0},
                ],
            },
        ],
        "targets": [{"ven_id": VEN_ID}],
    }
    signal = parse_event(read_event(event, VEN_ID), settings(1), T0)
    assert (signal.kind, signal.status, signal.modification) == (
        SignalKind.DR_REDUCTION,
        SignalStatus.ACTIVE,
        2,
    )
    assert [(i.start, i.value) for i in signal.intervals] == [(T0, 5.0), (T0 + Q, 2.5)]
    assert signal.target_sites == ()


def test_settings_refuse_missing_certificates() -> None:
    with pytest.raises(ValueError, match="cert_path, key_path, ca_path, vtn_fingerprint"):
        Openadr2Settings(vtn_url="https://vtn.example/OpenADR2/Simple/2.0b", ven_name="x")
