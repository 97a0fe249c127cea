"""The control loop on SQLite and PostgreSQL, with an in-memory publisher and a hand-driven clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from aggregator.control.inputs import PlanInputs, PlanningSettings, site_plan_inputs
from aggregator.control.loop import ControlLoop, ControlSettings
from aggregator.control.replanning import ReplanRequests
from aggregator.control.schedules import read_plan
from aggregator.control.setpoints import setpoint_command
from aggregator.db.models import (
    Charger,
    ChargingSession,
    CommandStatus,
    DispatchEvent,
    GatewayStatusRecord,
    Program,
    ProgramKind,
    ProgramSite,
    Role,
    ScheduleStatus,
    ScheduleVersion,
    SetpointCommandRecord,
    Site,
    User,
    Vehicle,
)
from aggregator.db.session import make_sessionmaker
from market_adapters.dispatch import SignalKind, SignalStatus
from wire.contract import GatewayState, SetpointCommand

SITE = "depot-1"
T0 = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.UTC)
STEP = dt.timedelta(minutes=15)
TIMEOUT_S = 20.0
"""Bound on waiting for the loop to act (a hang fails the test instead of blocking the run)."""
QUICK = PlanningSettings(horizon=dt.timedelta(hours=8))
"""A shorter horizon than the default day: the tests do not need it and it solves faster."""


class FakeClock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


class RecordingPublisher:
    """In-memory :class:`~aggregator.control.setpoints.SetpointPublisher`: keeps what it was given."""

    def __init__(self) -> None:
        self.commands: list[SetpointCommand] = []

    async def publish(self, command: SetpointCommand) -> None:
        self.commands.append(command)


def seed(db: Session, *, sites: tuple[str, ...] = (SITE,), import_limit_kw: float = 50.0) -> dict[str, int]:
    """Each site: one 11 kW charger with a vehicle plugged in (30 of 60 kWh, 80 % wanted in 6 h)."""
    driver = User(email="ada@example.com", password_hash="x", role=Role.DRIVER)
    db.add(driver)
    db.flush()
    sessions = {}
    for n, site_id in enumerate(sites):
        db.add(Site(id=site_id, name=site_id, import_limit_kw=import_limit_kw, export_limit_kw=0.0))
        charger = Charger(site_id=site_id, charge_point_id="cp-1", evse_id=1, max_kw=11.0)
        vehicle = Vehicle(
            owner_id=driver.id, name=f"van {n}", battery_kwh=60.0, max_charge_kw=11.0, max_discharge_kw=0.0
        )
        db.add_all([charger, vehicle])
        db.flush()
        charging = ChargingSession(
            site_id=site_id,
            charger_id=charger.id,
            evse_id=1,
            transaction_id="tx-1",
            vehicle_id=vehicle.id,
            started_at=T0 - dt.timedelta(hours=1),
            departure_at=T0 + dt.timedelta(hours=6),
            soc_at_start_percent=50.0,
        )
        db.add(charging)
        db.flush()
        sessions[site_id] = charging.id
    db.commit()
    return sessions


def control(
    engine: Engine,
    clock: FakeClock,
    publisher: RecordingPublisher | None = None,
    replans: ReplanRequests | None = None,
    **kwargs: Any,
) -> ControlLoop:
    settings = ControlSettings(
        poll_s=0.01,
        solver_time_limit_s=kwargs.pop("solver_time_limit_s", 30.0),
        planning=kwargs.pop("planning", QUICK),
    )
    return ControlLoop(
        make_sessionmaker(engine),
        publisher or RecordingPublisher(),
        replans or ReplanRequests(),
        settings,
        clock,
        **kwargs,
    )


def run(coroutine: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine(), 60))


async def until(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not condition():
            await asyncio.sleep(0.01)


def versions(db: Session, site_id: str = SITE) -> list[ScheduleVersion]:
    db.expire_all()
    return list(
        db.scalars(
            select(ScheduleVersion).where(ScheduleVersion.site_id == site_id).order_by(ScheduleVersion.id)
        )
    )


# ------------------------------------------------------------------------------------------ one plan


def test_a_plan_is_stored_recorded_and_published(engine: Engine, session: Session) -> None:
    charging_id = seed(session)[SITE]
    clock, publisher = FakeClock(T0 + dt.timedelta(minutes=7)), RecordingPublisher()
    loop = control(engine, clock, publisher)

    first = run(lambda: loop.plan_site(SITE, "arrival:session 1"))
    clock.advance(dt.timedelta(minutes=15))
    second = run(lambda: loop.plan_site(SITE, "override:session 1"))

    one, two = versions(session)
    assert (one.id, two.id) == (first, second)
    assert one.supersedes_id is None and two.supersedes_id == one.id  # the chain
    assert one.status is ScheduleStatus.OPTIMAL and one.trigger == "arrival:session 1"
    made = T0 + dt.timedelta(minutes=7)
    assert one.horizon_start == made and two.horizon_start == made + STEP  # a plan starts when made
    assert one.step_seconds == 900 and one.created_at == T0 + dt.timedelta(minutes=7)
    assert one.inputs["sessions"] == {f"session-{charging_id}": charging_id}
    assert one.inputs["scenario"]["n_steps"] == 32 and one.inputs["evses"] == {
        "cp-1/1": {"charger_id": "cp-1", "evse_id": 1}
    }
    assert one.counterfactual is None and one.result_summary["status"] == "optimal"
    planned = one.plan["vehicles"][f"session-{charging_id}"]
    assert planned["evse_id"] == "cp-1/1" and len(planned["power_kw"]) == 32
    # 18 kWh to reach 80 %: delivered in full (x 0.92), early (the urgency tie-breaker), 11 kW at most.
    assert sum(planned["power_kw"]) * 0.25 * 0.92 == pytest.approx(18.0, abs=1e-3)
    assert max(planned["power_kw"]) <= 11.0 + 1e-6 and planned["power_kw"][0] == pytest.approx(11.0)
    assert one.plan["site_import_kw"] == pytest.approx(planned["power_kw"])

    command = publisher.commands[0]
    (setpoint,) = command.setpoints
    assert (command.site_id, setpoint.charger_id, setpoint.evse_id) == (SITE, "cp-1", 1)
    assert command.issued_at == clock.now - STEP
    assert command.valid_until == command.issued_at + dt.timedelta(hours=1)
    assert setpoint.schedule is not None and setpoint.schedule[0].start == made
    assert setpoint.schedule[0].power_kw == pytest.approx(11.0)
    records = session.scalars(select(SetpointCommandRecord).order_by(SetpointCommandRecord.issued_at)).all()
    assert [r.command_id for r in records] == [c.command_id for c in publisher.commands]
    assert records[0].schedule_version_id == one.id and records[0].status is CommandStatus.PENDING
    assert records[0].payload == command.model_dump(mode="json")
    assert loop.stats.plans == 2 and loop.stats.published == 2 and loop.stats.fallbacks == 0


def test_a_dispatch_event_is_planned_against_its_stored_counterfactual(
    engine: Engine, session: Session
) -> None:
    charging_id = seed(session)[SITE]
    operator = User(email="dso@example.com", password_hash="x", role=Role.GRID_OPERATOR)
    session.add(operator)
    session.flush()
    session.add(Program(id="dso", name="DSO", kind=ProgramKind.DR, owner_id=operator.id))
    session.flush()
    session.add(ProgramSite(program_id="dso", site_id=SITE))
    start, end = T0, T0 + dt.timedelta(hours=1)
    event = DispatchEvent(
        program_id="dso",
        source="api",
        external_event_id="e-1",
        kind=SignalKind.DR_CAP,
        status=SignalStatus.ACTIVE,
        price_per_kwh=None,
        penalty_per_kwh=5.0,
        window_start=start,
        window_end=end,
        intervals=[{"start": start.isoformat(), "end": end.isoformat(), "value": 3.0}],
        received_at=T0,
    )
    session.add(event)
    session.commit()
    loop = control(engine, FakeClock(T0))
    run(lambda: loop.plan_site(SITE, "event"))

    (version,) = versions(session)
    assert version.inputs["events"] == [event.id]
    assert [e["cap_kw"] for e in version.inputs["scenario"]["dr_events"]] == [3.0]
    assert version.counterfactual is not None
    # Without the event the vehicle charges at full power at once; with it, at most 3 kW for an hour.
    assert version.counterfactual["site_import_kw"][:4] == pytest.approx([11.0] * 4)
    assert max(version.plan["site_import_kw"][:4]) <= 3.0 + 1e-6
    assert version.inputs["scenario"]["dr_events"][0]["baseline_kw"] == pytest.approx([11.0] * 4)
    assert sum(version.plan["vehicles"][f"session-{charging_id}"]["power_kw"]) * 0.25 * 0.92 == pytest.approx(
        18.0, abs=1e-3
    )


# ------------------------------------------------------------------------------------------ fallbacks


def test_a_solver_without_a_schedule_falls_back_to_the_previous_version_shifted(
    engine: Engine, session: Session
) -> None:
    seed(session)
    clock, publisher = FakeClock(T0), RecordingPublisher()
    run(lambda: control(engine, clock).plan_site(SITE, "cadence"))
    clock.advance(2 * STEP)
    hasty = control(engine, clock, publisher, solver_time_limit_s=0.0)  # no incumbent in no time
    run(lambda: hasty.plan_site(SITE, "cadence"))

    before, after = versions(session)
    assert after.status is ScheduleStatus.SHIFTED and after.supersedes_id == before.id
    assert after.horizon_start == T0 + 2 * STEP and after.result_summary["shifted_from"] == before.id
    assert "maxTimeLimit" in after.result_summary["message"]
    assert after.plan["site_import_kw"] == [*before.plan["site_import_kw"][2:], 0.0, 0.0]
    for vehicle_id, planned in after.plan["vehicles"].items():
        assert planned["power_kw"] == [*before.plan["vehicles"][vehicle_id]["power_kw"][2:], 0.0, 0.0]
    (command,) = publisher.commands
    assert command.setpoints[0].schedule is not None
    assert command.setpoints[0].schedule[0].start == T0 + 2 * STEP
    assert hasty.stats.fallbacks == 1 and hasty.stats.failures == 1


def test_with_no_previous_version_the_heuristic_is_used(engine: Engine, session: Session) -> None:
    seed(session)
    publisher = RecordingPublisher()
    loop = control(engine, FakeClock(T0), publisher, solver_time_limit_s=0.0)
    run(lambda: loop.plan_site(SITE, "cadence"))
    (version,) = versions(session)
    assert version.status is ScheduleStatus.HEURISTIC and version.supersedes_id is None
    (planned,) = version.plan["vehicles"].values()
    assert planned["power_kw"][0] == pytest.approx(11.0)  # earliest deadline first: at once
    assert len(publisher.commands) == 1 and loop.stats.fallbacks == 1


def broken(session: Session, site_id: str, now: dt.datetime, settings: PlanningSettings) -> PlanInputs:
    """Inputs the optimizer refuses: the vehicle names an EVSE the scenario does not have."""
    inputs = site_plan_inputs(session, site_id, now, settings)
    vehicles = [v.model_copy(update={"evse_id": "ghost/1"}) for v in inputs.scenario.vehicles]
    inputs.scenario = inputs.scenario.model_copy(update={"vehicles": vehicles})
    return inputs


def test_a_broken_scenario_falls_back_to_the_shifted_version_or_an_empty_plan(
    engine: Engine, session: Session
) -> None:
    seed(session)
    clock, publisher = FakeClock(T0), RecordingPublisher()
    run(lambda: control(engine, clock, publisher, plan_inputs=broken).plan_site(SITE, "cadence"))
    (empty,) = versions(session)
    assert empty.status is ScheduleStatus.HEURISTIC and empty.plan["vehicles"] == {}
    assert "'ghost/1' is not an EVSE" in empty.result_summary["message"]
    assert publisher.commands == []  # nothing to say: the gateway's own fallback runs the site

    run(lambda: control(engine, clock, publisher).plan_site(SITE, "cadence"))
    clock.advance(STEP)
    run(lambda: control(engine, clock, publisher, plan_inputs=broken).plan_site(SITE, "cadence"))
    _, good, shifted = versions(session)
    assert shifted.status is ScheduleStatus.SHIFTED and shifted.supersedes_id == good.id
    assert shifted.plan["site_import_kw"] == [*good.plan["site_import_kw"][1:], 0.0]
    assert len(publisher.commands) == 2


def test_a_previous_plan_that_cannot_be_read_is_not_shifted(
    engine: Engine, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    seed(session)
    clock, publisher = FakeClock(T0), RecordingPublisher()
    run(lambda: control(engine, clock, publisher).plan_site(SITE, "cadence"))
    (good,) = versions(session)
    good.plan = {**good.plan, "site_import_kw": ["lots", *good.plan["site_import_kw"][1:]]}
    session.commit()
    clock.advance(STEP)
    with caplog.at_level(logging.WARNING, logger="aggregator.control.loop"):
        run(lambda: control(engine, clock, publisher, plan_inputs=broken).plan_site(SITE, "cadence"))
    _, empty = versions(session)
    assert empty.status is ScheduleStatus.HEURISTIC and empty.result_summary["empty"] is True
    assert f"schedule version {good.id}: plan.site_import_kw[0] is not a number: 'lots'" in caplog.text
    assert len(publisher.commands) == 1  # the first plan's; the empty plan commands nothing


# ------------------------------------------------------------------------------------------ the loop


def test_the_loop_plans_on_its_cadence_and_at_once_on_request(engine: Engine, session: Session) -> None:
    seed(session, sites=(SITE, "depot-2"))
    clock, publisher, replans = (
        FakeClock(T0 + dt.timedelta(minutes=1)),
        RecordingPublisher(),
        ReplanRequests(),
    )

    async def scenario() -> ControlLoop:
        async with control(engine, clock, publisher, replans) as loop:
            await until(lambda: loop.stats.plans == 2)  # both sites at start
            clock.advance(dt.timedelta(minutes=5))  # 10:06: not due yet
            replans.request(SITE, "override:session 1")
            replans.request(SITE, "override:session 1")
            replans.request(SITE, "event:7")  # a burst: one plan
            await until(lambda: loop.stats.plans == 3)
            clock.advance(dt.timedelta(minutes=9))  # 10:15: the cadence comes round for both
            await until(lambda: loop.stats.plans == 5)
            replans.request("nowhere", "override:session 9")  # unknown: logged, the loop goes on
            replans.request("depot-2", "arrival:session 2")
            await until(lambda: loop.stats.plans == 6 and len(publisher.commands) == 6)
            assert loop.running
        return loop

    loop = run(scenario)
    assert [v.trigger for v in versions(session)] == ["cadence", "override:session 1,event:7", "cadence"]
    assert [v.trigger for v in versions(session, "depot-2")] == ["cadence", "cadence", "arrival:session 2"]
    chain = versions(session)
    assert [v.supersedes_id for v in chain] == [None, chain[0].id, chain[1].id]
    assert loop.stats.plans == 6 and loop.stats.failures == 0 and len(publisher.commands) == 6


def test_one_sites_failure_does_not_stop_the_loop(engine: Engine, session: Session) -> None:
    seed(session, sites=("depot-0", SITE))

    def failing(session: Session, site_id: str, now: dt.datetime, settings: PlanningSettings) -> PlanInputs:
        if site_id == "depot-0":
            raise RuntimeError("a bug")
        return site_plan_inputs(session, site_id, now, settings)

    async def scenario() -> ControlLoop:
        async with control(engine, FakeClock(T0), plan_inputs=failing) as loop:
            await until(lambda: loop.stats.plans == 1 and loop.stats.failures == 1)
            loop.replans.request(SITE, "override:session 2")
            await until(lambda: loop.stats.plans == 2)
        return loop

    run(scenario)
    assert len(versions(session)) == 2 and versions(session, "depot-0") == []


# ------------------------------------------------------------------------------------------ setpoints


@settings(max_examples=60, deadline=None)
@given(
    powers=st.lists(st.sampled_from([0.0, 3.5, 7.0, 11.0, -5.0]), min_size=8, max_size=8),
    minutes=st.integers(min_value=0, max_value=8 * 15 - 1),
    validity=st.integers(min_value=1, max_value=180),
)
def test_a_setpoint_schedule_gives_the_planned_power_at_every_moment_it_is_valid(
    powers: list[float], minutes: int, validity: int
) -> None:
    now = T0 + dt.timedelta(minutes=minutes)
    stored = {"site_import_kw": powers, "vehicles": {"session-1": {"power_kw": powers, "evse_id": "cp-1/1"}}}
    plan = read_plan(1, SITE, T0, int(STEP.total_seconds()), stored)
    command = setpoint_command(
        plan, {"cp-1/1": ("cp-1", 1)}, now=now, validity=dt.timedelta(minutes=validity)
    )
    assert command is not None and command.valid_until == now + dt.timedelta(minutes=validity)
    schedule = command.setpoints[0].schedule
    assert schedule is not None and schedule[0].start <= now
    moment = now
    while moment < command.valid_until:
        step = (moment - T0) // STEP
        in_force = [p for p in schedule if p.start <= moment][-1]
        expected = powers[step] if step < len(powers) else powers[-1]
        assert in_force.power_kw == expected, (moment, schedule)
        moment += dt.timedelta(minutes=1)
    assert all(a.power_kw != b.power_kw for a, b in itertools.pairwise(schedule))


def test_settings_from_a_configuration_table_name_the_bad_field() -> None:
    settings = ControlSettings.from_mapping(
        {"cadence": 300, "setpoint_validity": "PT2H", "planning": {"horizon": "PT12H", "step_minutes": 30}}
    )
    assert settings.cadence == dt.timedelta(minutes=5) and settings.setpoint_validity == dt.timedelta(hours=2)
    assert settings.horizon == dt.timedelta(hours=12) and settings.planning.n_steps == 24
    with pytest.raises(ValueError, match=r"planning\.horizn"):
        ControlSettings.from_mapping({"planning": {"horizn": "PT12H"}})
    with pytest.raises(ValueError, match="cadence must be positive"):
        ControlSettings.from_mapping({"cadence": 0})


def test_a_site_whose_gateway_is_offline_is_planned_and_its_command_queued(
    engine: Engine, session: Session
) -> None:
    seed(session)
    session.add(
        GatewayStatusRecord(
            site_id=SITE, state=GatewayState.OFFLINE, reason=None, since=None, last_seen_at=T0
        )
    )
    session.commit()
    publisher = RecordingPublisher()
    version_id = run(lambda: control(engine, FakeClock(T0), publisher).plan_site(SITE, "cadence"))
    (command,) = publisher.commands
    record = session.get(SetpointCommandRecord, command.command_id)
    assert record is not None and record.schedule_version_id == version_id
