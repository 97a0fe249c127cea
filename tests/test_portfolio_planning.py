"""A dispatch event over several sites split among them by one optimisation, on SQLite and PostgreSQL.

Two sites are enrolled in program ``dso``, each with one 11 kW charger and a vehicle plugged in at
50 % of 60 kWh: at ``flex`` it wants 80 % in 6 h (18 kWh, plenty of time), at ``stiff`` 100 % in 3 h
(30 kWh of battery, 32.6 kWh from the grid at 92 %: more than 11 kW for 3 h with the battery's taper
above 80 % gives, so it charges as fast as it can throughout). Without an event both charge at 11 kW
from the start. The event asks the program for 8 kW less import from 10:00 to 11:00: only ``flex`` can
give it without falling further short of a departure target.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from test_control import QUICK, FakeClock, RecordingPublisher, control, run, until, versions

from aggregator.api.routes.operators import get_event_performance
from aggregator.control.groups import commitment_shares, portfolio_group
from aggregator.control.inputs import floor_time
from aggregator.db.models import (
    Charger,
    ChargingSession,
    DispatchEvent,
    EvseTelemetryRecord,
    Program,
    ProgramKind,
    ProgramSite,
    Role,
    ScheduleStatus,
    ScheduleVersion,
    Site,
    TelemetryRecord,
    User,
)
from aggregator.db.models import Vehicle as VehicleRow
from aggregator.settlement.event_inputs import settlement_inputs
from aggregator.settlement.event_measurement import site_committed_kw
from market_adapters.dispatch import SignalKind, SignalStatus

T0 = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.UTC)
"""The event's start."""
NOW = T0 - dt.timedelta(minutes=15)
"""When the sites are planned: the horizon starts then, at 09:45, and the event covers its steps 1 to 4."""
EVENT_STEPS = slice(1, 5)
STEP = dt.timedelta(minutes=15)
FLEX, STIFF = "flex", "stiff"
REQUESTED_KW = 8.0


class Portfolio:
    """The two sites of the module docstring, enrolled in program ``dso``, and its operator."""

    def __init__(self, db: Session, sites: tuple[str, ...] = (FLEX, STIFF)) -> None:
        self.db = db
        self.driver = User(email="ada@example.com", password_hash="x", role=Role.DRIVER)
        self.operator = User(email="dso@example.com", password_hash="x", role=Role.GRID_OPERATOR)
        db.add_all([self.driver, self.operator])
        db.flush()
        db.add(Program(id="dso", name="DSO", kind=ProgramKind.DR, owner_id=self.operator.id))
        db.flush()
        self.sessions: dict[str, int] = {}
        for site_id in sites:
            self.site(site_id, target_percent=100.0 if site_id == STIFF else 80.0)
        db.commit()

    def site(self, site_id: str, *, target_percent: float = 80.0, enrolled: bool = True) -> None:
        hours = 3 if target_percent == 100.0 else 6
        self.db.add(Site(id=site_id, name=site_id, import_limit_kw=50.0, export_limit_kw=0.0))
        charger = Charger(site_id=site_id, charge_point_id="cp-1", evse_id=1, max_kw=11.0)
        vehicle = VehicleRow(
            owner_id=self.driver.id,
            name=f"van at {site_id}",
            battery_kwh=60.0,
            max_charge_kw=11.0,
            max_discharge_kw=0.0,
            target_soc_percent=target_percent,
        )
        self.db.add_all([charger, vehicle])
        self.db.flush()
        charging = ChargingSession(
            site_id=site_id,
            charger_id=charger.id,
            evse_id=1,
            transaction_id=f"tx-{site_id}",
            vehicle_id=vehicle.id,
            started_at=NOW - dt.timedelta(hours=1),
            departure_at=NOW + dt.timedelta(hours=hours),
            soc_at_start_percent=50.0,
        )
        self.db.add(charging)
        if enrolled:
            self.db.add(ProgramSite(program_id="dso", site_id=site_id))
        self.db.flush()
        self.sessions[site_id] = charging.id

    def event(
        self,
        external_id: str = "e-1",
        *,
        kind: SignalKind = SignalKind.DR_REDUCTION,
        value: float = REQUESTED_KW,
        targets: tuple[str, ...] = (),
        modification: int = 0,
        start: dt.datetime = T0,
        end: dt.datetime = T0 + dt.timedelta(hours=1),
    ) -> DispatchEvent:
        row = DispatchEvent(
            program_id="dso",
            source="api",
            external_event_id=external_id,
            modification=modification,
            kind=kind,
            status=SignalStatus.ACTIVE,
            price_per_kwh=0.5,
            penalty_per_kwh=2.0,
            window_start=start,
            window_end=end,
            intervals=[{"start": start.isoformat(), "end": end.isoformat(), "value": value}],
            target_sites=list(targets),
            received_at=NOW - dt.timedelta(hours=1),
        )
        self.db.add(row)
        self.db.commit()
        return row

    def telemetry(self, site_id: str, import_kw: float) -> None:
        """A reading every 5 minutes through the event's hour."""
        for n in range(12):
            moment = T0 + n * dt.timedelta(minutes=5)
            self.db.add(
                TelemetryRecord(
                    site_id=site_id,
                    seq=n + 1,
                    sent_at=moment,
                    received_at=moment,
                    site_import_kw=import_kw,
                    base_load_kw=0.0,
                )
            )
        self.db.commit()


def one_version(db: Session, site_id: str) -> ScheduleVersion:
    (version,) = versions(db, site_id)
    return version


def shares(version: ScheduleVersion, event: DispatchEvent) -> np.ndarray:
    return np.asarray(version.inputs["event_shares"][str(event.id)], dtype=float)


# ------------------------------------------------------------------------------------- group plan


def test_a_program_event_is_split_among_its_sites_by_one_plan(engine: Engine, session: Session) -> None:
    portfolio = Portfolio(session)
    first = portfolio.event(value=5.0)
    portfolio.event(modification=1)  # the version that applies: 8 kW; the public id stays the first's
    publisher = RecordingPublisher()
    loop = control(engine, FakeClock(NOW), publisher)

    version_id = run(lambda: loop.plan_site(STIFF, "event:1"))

    flex, stiff = one_version(session, FLEX), one_version(session, STIFF)
    assert stiff.id == version_id and flex.created_at == stiff.created_at == NOW
    assert flex.trigger == stiff.trigger == "event:1"
    assert flex.status is ScheduleStatus.OPTIMAL and stiff.status is ScheduleStatus.OPTIMAL
    assert flex.inputs["portfolio"]["site_ids"] == stiff.inputs["portfolio"]["site_ids"] == [STIFF, FLEX]
    assert set(flex.inputs["event_shares"]) == set(stiff.inputs["event_shares"]) == {str(first.id)}
    flex_kw, stiff_kw = shares(flex, first), shares(stiff, first)
    assert len(flex_kw) == len(stiff_kw) == QUICK.n_steps
    # The shares add up to the request in every event step, and are 0 elsewhere.
    assert (flex_kw + stiff_kw)[EVENT_STEPS] == pytest.approx([REQUESTED_KW] * 4, abs=1e-6)
    assert np.delete(flex_kw + stiff_kw, range(1, 5)) == pytest.approx(0.0, abs=1e-9)
    # The flexible site carries (nearly) all of it: the stiff one has nothing to spare.
    assert all(flex_kw[EVENT_STEPS] >= REQUESTED_KW - 0.1)
    # Both plans are against their own counterfactuals (11 kW at once) and deliver the request jointly.
    for version in (flex, stiff):
        assert version.counterfactual is not None
        assert version.counterfactual["site_import_kw"][EVENT_STEPS] == pytest.approx([11.0] * 4, abs=1e-6)
    joint = np.add(flex.plan["site_import_kw"], stiff.plan["site_import_kw"])[EVENT_STEPS]
    assert all(joint <= 22.0 - REQUESTED_KW + 1e-6)
    assert flex.plan["site_import_kw"][EVENT_STEPS] == pytest.approx(11.0 - flex_kw[EVENT_STEPS], abs=1e-5)
    # flex still gets its 18 kWh (battery side); stiff charges as it would have without the event.
    planned = flex.plan["vehicles"][f"session-{portfolio.sessions[FLEX]}"]["power_kw"]
    assert sum(planned) * 0.25 * 0.92 == pytest.approx(18.0, abs=1e-3)
    assert stiff.counterfactual is not None
    assert stiff.plan["site_import_kw"] == pytest.approx(stiff.counterfactual["site_import_kw"], abs=1e-3)
    assert sorted(command.site_id for command in publisher.commands) == [FLEX, STIFF]
    assert loop.stats.plans == 2 and loop.stats.published == 2 and loop.stats.failures == 0


def test_performance_and_settlement_read_the_planned_shares(engine: Engine, session: Session) -> None:
    portfolio = Portfolio(session)
    event = portfolio.event()
    run(lambda: control(engine, FakeClock(NOW)).plan_site(FLEX, "event"))
    flex_kw = shares(one_version(session, FLEX), event)[EVENT_STEPS]
    stiff_kw = shares(one_version(session, STIFF), event)[EVENT_STEPS]

    performance = get_event_performance(event.id, session, portfolio.operator)
    by_site = {site.site_id: [i.committed_kw for i in site.intervals] for site in performance.sites}
    assert by_site[FLEX] == pytest.approx(flex_kw, abs=1e-6)
    assert by_site[STIFF] == pytest.approx(stiff_kw, abs=1e-6)
    assert [i.committed_kw for i in performance.intervals] == pytest.approx([REQUESTED_KW] * 4)

    portfolio.telemetry(FLEX, 3.0)
    portfolio.telemetry(STIFF, 11.0)
    settled = settlement_inputs(session, event.id, now=T0 + dt.timedelta(hours=2))
    committed = {site.site_id: site.committed_kw.tolist() for site in settled.sites}
    assert committed[FLEX] == pytest.approx(flex_kw, abs=1e-6)
    assert committed[STIFF] == pytest.approx(stiff_kw, abs=1e-6)
    flex_site = next(site for site in settled.sites if site.site_id == FLEX)
    # Measured 3 kW against a counterfactual of 11 kW: flex delivered its whole share.
    assert flex_site.performance.performance_factor == pytest.approx(1.0, abs=1e-6)


def test_a_group_replan_keeps_the_baseline_frozen_when_the_event_was_first_planned(
    engine: Engine, session: Session
) -> None:
    """At 10:15 the flexible site's vehicle reports its target reached: its fresh counterfactual no
    longer charges, but its part of the joint event's baseline stays the 11 kW of the first plan."""
    portfolio = Portfolio(session)
    event = portfolio.event()
    clock = FakeClock(NOW)
    loop = control(engine, clock)
    run(lambda: loop.plan_site(FLEX, "event"))
    clock.advance(dt.timedelta(minutes=30))
    session.add(
        TelemetryRecord(
            site_id=FLEX,
            seq=1,
            sent_at=clock.now,
            received_at=clock.now,
            site_import_kw=0.0,
            base_load_kw=0.0,
            evses=[EvseTelemetryRecord(charger_id="cp-1", evse_id=1, power_kw=0.0, soc_percent=80.0)],
        )
    )
    session.commit()
    run(lambda: loop.plan_site(FLEX, "cadence"))

    first, second = versions(session, FLEX)
    assert second.horizon_start == T0 + STEP and second.counterfactual is not None
    remaining = slice(0, 3)  # 10:15 to 11:00
    assert second.counterfactual["site_import_kw"][remaining] == pytest.approx([0.0] * 3, abs=1e-6)
    (joint,) = second.inputs["portfolio"]["events"]
    assert joint["baseline_kw"][FLEX] == pytest.approx([11.0] * 3, abs=1e-6)
    assert second.inputs["event_baselines"][str(event.id)][remaining] == pytest.approx([11.0] * 3, abs=1e-6)
    assert first.inputs["event_baselines"][str(event.id)][EVENT_STEPS] == pytest.approx([11.0] * 4, abs=1e-6)
    # The stiff site's vehicle is still where it was: frozen and fresh agree.
    _, stiff = versions(session, STIFF)
    assert stiff.counterfactual is not None
    assert joint["baseline_kw"][STIFF] == pytest.approx(stiff.counterfactual["site_import_kw"][remaining])
    # Flex, with nothing left to charge, carries the whole request against its frozen baseline.
    assert shares(second, event)[remaining] == pytest.approx([REQUESTED_KW] * 3, abs=1e-6)


def test_without_recorded_shares_each_site_is_committed_an_equal_share(session: Session) -> None:
    portfolio = Portfolio(session)
    event = portfolio.event()
    index = pd.date_range(T0, periods=4, freq=STEP)
    committed = pd.Series(10.0, index=index)  # the event changed since the plans: 10 kW, not 8

    def version(site_id: str, created: dt.datetime, event_shares: dict[str, list[float]] | None) -> None:
        inputs: dict[str, Any] = {"sessions": {}}
        if event_shares is not None:
            inputs["event_shares"] = event_shares
        session.add(
            ScheduleVersion(
                site_id=site_id,
                created_at=created,
                horizon_start=floor_time(created, STEP),
                step_seconds=900,
                inputs=inputs,
                result_summary={},
                status=ScheduleStatus.OPTIMAL,
                plan={},
            )
        )
        session.commit()

    end = T0 + dt.timedelta(hours=1)
    version(FLEX, NOW, {str(event.id): [0.0, 6.0, 6.0, 6.0, 6.0]})
    version(STIFF, NOW, {str(event.id): [0.0, 2.0, 2.0, 2.0, 2.0]})
    # 10:20: stiff replanned by an older release, without shares: from 10:30 on, equal shares.
    version(STIFF, T0 + dt.timedelta(minutes=20), None)
    split = site_committed_kw(session, event.id, [FLEX, STIFF], committed, end, STEP)
    assert split[FLEX].tolist() == pytest.approx([7.5, 7.5, 5.0, 5.0])
    assert split[STIFF].tolist() == pytest.approx([2.5, 2.5, 5.0, 5.0])
    # Another event's shares are not this one's.
    other = site_committed_kw(session, event.id + 1000, [FLEX, STIFF], committed, end, STEP)
    assert other[FLEX].tolist() == other[STIFF].tolist() == [5.0] * 4
    assert site_committed_kw(session, event.id, [], committed, end, STEP) == {}


@given(
    contributions=st.lists(
        st.lists(st.floats(-20, 20, allow_nan=False), min_size=3, max_size=3), min_size=1, max_size=5
    ),
    requested=st.floats(0, 100, allow_nan=False),
)
def test_commitment_shares_are_never_negative_and_sum_to_the_request(
    contributions: list[list[float]], requested: float
) -> None:
    split = commitment_shares({f"s{n}": np.array(kw) for n, kw in enumerate(contributions)}, requested)
    stacked = np.array(list(split.values()))
    assert (stacked >= 0).all()
    assert stacked.sum(axis=0) == pytest.approx([requested] * 3, rel=1e-9, abs=1e-9)
    for kw, share in zip(contributions, stacked, strict=True):  # no share where nothing is given
        given_any = np.clip(np.array(contributions), 0, None).sum(axis=0) > 1e-9
        assert share[given_any & (np.array(kw) <= 0)] == pytest.approx(0.0)


# -------------------------------------------------------------------------------- single sites


def test_an_event_for_one_site_keeps_the_single_site_plan(engine: Engine, session: Session) -> None:
    portfolio = Portfolio(session)
    event = portfolio.event(targets=(FLEX,))
    run(lambda: control(engine, FakeClock(NOW)).plan_site(FLEX, "event"))

    flex = one_version(session, FLEX)
    assert versions(session, STIFF) == []  # not planned with it
    assert "event_shares" not in flex.inputs and "portfolio" not in flex.inputs
    assert flex.inputs["events"] == [event.id]
    (dr_event,) = flex.inputs["scenario"]["dr_events"]
    assert dr_event["reduction_kw"] == REQUESTED_KW and dr_event["baseline_kw"] == pytest.approx([11.0] * 4)
    assert max(flex.plan["site_import_kw"][EVENT_STEPS]) <= 11.0 - REQUESTED_KW + 1e-6


# ---------------------------------------------------------------------------------- fallbacks


def test_a_solver_failure_in_the_group_leaves_every_site_a_schedule(engine: Engine, session: Session) -> None:
    portfolio = Portfolio(session)
    portfolio.event()
    clock, publisher = FakeClock(NOW), RecordingPublisher()
    hasty = control(engine, clock, publisher, solver_time_limit_s=0.0)  # no incumbent in no time

    run(lambda: hasty.plan_site(FLEX, "cadence"))
    for site_id in (FLEX, STIFF):
        version = one_version(session, site_id)
        assert version.status is ScheduleStatus.HEURISTIC and "event_shares" not in version.inputs
        (planned,) = version.plan["vehicles"].values()
        assert planned["power_kw"][0] == pytest.approx(11.0)  # earliest deadline first
    assert sorted(c.site_id for c in publisher.commands) == [FLEX, STIFF]
    assert hasty.stats.fallbacks == 2 and hasty.stats.failures == 2

    run(lambda: control(engine, clock).plan_site(FLEX, "cadence"))
    clock.advance(STEP)
    run(lambda: hasty.plan_site(STIFF, "cadence"))
    for site_id in (FLEX, STIFF):
        _, good, shifted = versions(session, site_id)
        assert shifted.status is ScheduleStatus.SHIFTED and shifted.supersedes_id == good.id
        assert shifted.plan["site_import_kw"] == [*good.plan["site_import_kw"][1:], 0.0]
    assert sorted(c.site_id for c in publisher.commands[2:]) == [FLEX, STIFF]


# ------------------------------------------------------------------------------------- the loop


def test_the_loop_plans_a_group_once_per_pass_with_its_members_reasons(
    engine: Engine, session: Session
) -> None:
    portfolio = Portfolio(session)
    portfolio.event()
    clock, publisher = FakeClock(NOW), RecordingPublisher()

    async def scenario() -> None:
        async with control(engine, clock, publisher) as loop:
            await until(lambda: loop.stats.plans == 2)  # the cadence: both sites, in one group plan
            loop.replans.request(STIFF, f"override:session {portfolio.sessions[STIFF]}")
            await until(lambda: loop.stats.plans == 4)

    run(scenario)
    override = f"override:session {portfolio.sessions[STIFF]}"
    for site_id in (FLEX, STIFF):
        assert [v.trigger for v in versions(session, site_id)] == ["cadence", override]
    assert len(publisher.commands) == 4


# ------------------------------------------------------------------------------------- groups


def test_a_group_is_every_site_sharing_an_event_transitively_and_bounded(session: Session) -> None:
    portfolio = Portfolio(session, sites=("a", "b", "c", "d"))
    portfolio.site("e", enrolled=False)
    session.commit()
    portfolio.event("ab", targets=("a", "b"))
    portfolio.event("bc", targets=("b", "c"))
    portfolio.event("d", targets=("d",))
    start = floor_time(NOW, STEP)
    end = start + QUICK.n_steps * STEP

    assert portfolio_group(session, "a", start, end, STEP) == ["a", "b", "c"]
    assert portfolio_group(session, "c", start, end, STEP) == ["c", "b", "a"]
    assert portfolio_group(session, "a", start, end, STEP, max_sites=2) == ["a", "b"]
    assert portfolio_group(session, "d", start, end, STEP) == ["d"]
    assert portfolio_group(session, "e", start, end, STEP) == ["e"]
    # An event for the whole program joins every enrolled site, and only those.
    portfolio.event("all")
    assert sorted(portfolio_group(session, "e", start, end, STEP)) == ["e"]
    assert sorted(portfolio_group(session, "d", start, end, STEP)) == ["a", "b", "c", "d"]
    # Nothing applies after the horizon.
    assert portfolio_group(session, "a", end, end + STEP, STEP) == ["a"]
    with pytest.raises(ValueError, match="max_sites must be at least 1"):
        portfolio_group(session, "a", start, end, STEP, max_sites=0)


def test_a_cap_for_several_sites_caps_each_at_its_equal_share(engine: Engine, session: Session) -> None:
    portfolio = Portfolio(session)
    event = portfolio.event(kind=SignalKind.DR_CAP, value=10.0)
    run(lambda: control(engine, FakeClock(NOW)).plan_site(FLEX, "event"))

    for site_id in (FLEX, STIFF):
        version = one_version(session, site_id)
        (cap,) = version.inputs["scenario"]["dr_events"]
        assert cap["cap_kw"] == 5.0 and cap["baseline_kw"] == pytest.approx([11.0] * 4)
        assert shares(version, event)[EVENT_STEPS] == pytest.approx([5.0] * 4)
    assert max(one_version(session, FLEX).plan["site_import_kw"][EVENT_STEPS]) <= 5.0 + 1e-6
