"""Chargers as they are: the OCPP server against simulated stations that differ the way real ones do.

- a station that takes amperes only (1.6, 2.0.1, 2.1) is read (GetConfiguration / GetVariables) and
  gets its profiles in amperes, from the boot default on; before, 2.x stations only ever got watts
  and 1.6 ones the configured unit, which such a station rejects;
- a station that does not implement GetCompositeSchedule has an accepted profile accepted (verified by
  its meter values) and is not asked again; before, every profile stayed "unverified";
- a 2.1 vehicle that did not negotiate bidirectional transfer is never sent a discharge profile; one
  that did (AC_BPT) is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from chargersim.clock import SimClock
from chargersim.composite import Purpose
from chargersim.stations import PROTOCOLS, Protocol, SimulatedCharger
from chargersim.vehicles import Vehicle
from site_gateway.config import ChargerSection, OcppSection
from site_gateway.ocpp.capabilities import (
    ChargerCapabilities,
    DischargeRefusal,
    OcppVersion,
    declared_discharge,
    parse_rate_units,
    rate_unit,
    reported_discharge,
)
from site_gateway.ocpp.profiles import OutcomeStatus
from site_gateway.ocpp.server import OcppServer

SPEED = 60.0
CHARGERS = [
    ChargerSection(id="cp-w", max_charge_kw=22, max_discharge_kw=11),  # configured for watts
    ChargerSection(id="cp-v2g", max_charge_kw=22, max_discharge_kw=11),
]


@asynccontextmanager
async def station(
    protocol: Protocol,
    charger_id: str = "cp-w",
    *,
    rate_units: tuple[str, ...] = ("W", "A"),
    reports_composite: bool = True,
    ev_discharge_kw: float = 0.0,
) -> AsyncIterator[tuple[OcppServer, SimulatedCharger]]:
    """An OCPP server and one simulated station with a vehicle plugged in, its transaction known."""
    clock = SimClock(dt.datetime.now(dt.UTC), speed=SPEED)
    ocpp = OcppSection(host="127.0.0.1", port=0)
    async with OcppServer(ocpp, CHARGERS, default_limit_kw=7.4, response_timeout_s=5.0) as server:
        vehicle = Vehicle(
            capacity_kwh=80,
            soc=0.5,
            max_charge_kw=22,
            max_discharge_kw=ev_discharge_kw,
            arrival=clock.now(),
            departure=clock.now() + dt.timedelta(hours=4),
        )
        sim = SimulatedCharger(
            charger_id,
            f"ws://127.0.0.1:{server.port}",
            protocol,
            vehicle,
            clock,
            max_power_w=22_000,
            max_discharge_w=11_000 if protocol == "2.1" else 0.0,
            meter_interval_s=30,
            tick_s=5,
        )
        sim.store.rate_units, sim.store.reports_composite = rate_units, reports_composite
        async with asyncio.TaskGroup() as tasks:
            run = tasks.create_task(sim.run(), name=f"sim-{charger_id}")
            await until(lambda: server.active_session(charger_id, 1) is not None)
            await until(
                lambda: (s := server.station(charger_id)) is not None and s.boot_profiles_sent.is_set()
            )
            try:
                yield server, sim
            finally:
                run.cancel()


async def until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def valid_until() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)


def profile_units(sim: SimulatedCharger, recorded: list[dict[str, Any]]) -> list[str]:
    units = []
    for payload in recorded:
        schedules = payload["charging_schedule"]
        first = schedules[0] if isinstance(schedules, list) else schedules
        units.append(first["charging_rate_unit"])
    return units


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_charger_that_takes_amperes_only_gets_amperes(protocol: Protocol) -> None:
    async def scenario() -> None:
        async with station(protocol, rate_units=("A",)) as (server, sim):
            recorded: list[dict[str, Any]] = []
            sim.on_profile = lambda evse_id, payload: recorded.append(payload)
            # the boot default went in amperes: the station holds it
            assert any(p.purpose is Purpose.TX_DEFAULT for p in sim.store.profiles.values())
            assert server.station("cp-w").rate_unit == "A"  # type: ignore[union-attr]

            outcome = await server.apply_setpoint("cp-w", 1, 6.9, valid_until())
            assert outcome.status is OutcomeStatus.ACCEPTED, outcome
            assert profile_units(sim, recorded) == ["A"]
            assert outcome.sent_kw == pytest.approx(6.9)  # 10.0 A x 230 V x 3 phases
            await until(lambda: abs(sim.power_w - 6900) < 50)

    asyncio.run(scenario())


def test_a_charger_that_takes_both_units_gets_the_configured_one() -> None:
    async def scenario() -> None:
        async with station("2.0.1") as (server, sim):
            recorded: list[dict[str, Any]] = []
            sim.on_profile = lambda evse_id, payload: recorded.append(payload)
            outcome = await server.apply_setpoint("cp-w", 1, 5.0, valid_until())
            assert outcome.status is OutcomeStatus.ACCEPTED, outcome
            assert profile_units(sim, recorded) == ["W"]

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_charger_without_composite_schedules_is_accepted_and_verified_by_meter(protocol: Protocol) -> None:
    async def scenario() -> None:
        async with station(protocol, reports_composite=False) as (server, sim):
            first = await server.apply_setpoint("cp-w", 1, 5.0, valid_until())
            assert first.status is OutcomeStatus.ACCEPTED and first.by_meter, first
            assert "verified by its meter values" in (first.reason or "")
            cp = server.station("cp-w")
            assert cp is not None and not cp.capabilities.composite_schedule
            second = await server.apply_setpoint("cp-w", 1, 4.0, valid_until())
            assert second.status is OutcomeStatus.ACCEPTED and second.by_meter, second
            await until(lambda: abs(sim.power_w - 4000) < 50)

    asyncio.run(scenario())


def test_no_discharge_profile_for_a_vehicle_without_bidirectional_transfer() -> None:
    async def scenario() -> None:
        async with station("2.1", "cp-v2g", ev_discharge_kw=0.0) as (server, sim):
            session = server.active_session("cp-v2g", 1)
            await until(lambda: session is not None and session.energy_request_wh is not None)
            recorded: list[dict[str, Any]] = []
            sim.on_profile = lambda evse_id, payload: recorded.append(payload)
            outcome = await server.apply_setpoint("cp-v2g", 1, -5.0, valid_until())
            assert outcome.sent_kw == 0.0, outcome
            assert "not bidirectional transfer" in (outcome.reason or ""), outcome
            periods = [p["charging_schedule"][0]["charging_schedule_period"][0] for p in recorded]
            assert periods and all(p.get("setpoint", 0) >= 0 and p.get("limit", 0) >= 0 for p in periods)
            assert sim.power_w >= 0

    asyncio.run(scenario())


def test_a_vehicle_that_negotiated_bpt_is_discharged() -> None:
    async def scenario() -> None:
        async with station("2.1", "cp-v2g", ev_discharge_kw=11.0) as (server, sim):
            session = server.active_session("cp-v2g", 1)
            await until(lambda: session is not None and session.energy_request_wh is not None)
            outcome = await server.apply_setpoint("cp-v2g", 1, -5.0, valid_until())
            assert outcome.status is OutcomeStatus.ACCEPTED and outcome.sent_kw == -5.0, outcome
            await until(lambda: abs(sim.power_w + 5000) < 50)

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------- the rules


def test_rate_units_as_chargers_write_them() -> None:
    assert parse_rate_units("Current,Power") == ("A", "W")
    assert parse_rate_units("Current") == ("A",)
    assert parse_rate_units("W") == ("W",)
    assert parse_rate_units(" A , W ") == ("A", "W")
    assert parse_rate_units("") is None and parse_rate_units("Volts") is None


def test_the_configured_unit_unless_the_charger_refuses_it() -> None:
    watts, amps = ChargerSection(id="w"), ChargerSection(id="a", limit_unit="A")
    assert rate_unit(watts) == "W" and rate_unit(amps) == "A"  # nothing said: the configuration
    assert rate_unit(watts, ChargerCapabilities(("A",))) == "A"
    assert rate_unit(amps, ChargerCapabilities(("W",))) == "W"
    assert rate_unit(amps, ChargerCapabilities(("A", "W"))) == "A"


def test_discharge_is_the_vehicles_word_on_21_and_the_chargers_declaration_otherwise() -> None:
    v2g = ChargerSection(id="v2g", max_discharge_kw=11, discharge_on_201=True)
    assert declared_discharge(OcppVersion.V21, v2g).max_kw == 11
    assert declared_discharge(OcppVersion.V201, v2g).max_kw == 11
    assert declared_discharge(OcppVersion.V16, v2g).refused_by is DischargeRefusal.CHARGER
    assert declared_discharge(OcppVersion.V21, ChargerSection(id="c")).refused_by is DischargeRefusal.CHARGER
    no_bpt = reported_discharge(OcppVersion.V21, v2g, "AC_three_phase")
    assert (no_bpt.max_kw, no_bpt.refused_by) == (0.0, DischargeRefusal.VEHICLE)
    assert reported_discharge(OcppVersion.V21, v2g, "DC_BPT", 7_000.0).max_kw == 7.0
    assert reported_discharge(OcppVersion.V21, v2g, "AC_BPT").max_kw == 11
    assert reported_discharge(OcppVersion.V21, v2g, "AC_BPT", 0.0).refused_by is DischargeRefusal.VEHICLE
    # 2.0.1 has no bidirectional modes to report: the charger's declaration stands
    assert reported_discharge(OcppVersion.V201, v2g, "AC_three_phase").max_kw == 11
