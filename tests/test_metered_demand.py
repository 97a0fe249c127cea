"""Online planning from the meter: the control loop's plans start now and read the demand already
billed this month, as the rolling horizon of the ACN benchmark does (on SQLite and PostgreSQL).

The economics the loop test turns on (hand-computed): a van needs 52.17 kWh from the grid (60 kWh
battery, 10 % → 90 %, η = 0.92) within 8 h, so its cheapest plan under a 20 $/kW demand charge is flat
at 6.52 kW. A 1-hour DR event asks 5 kW less (5 kWh, paid 1 $/kWh). Taking those 5 kWh out of the hour
raises the other 7 hours to 7.23 kW: 0.71 kW × 20 $/kW = 14.29 $ of demand charge against 5 $ of
event value, so a plan that bills a fresh peak over its horizon declines the event. With 30 kW
already metered this month, 7.23 kW is no new peak: the event costs nothing and is planned in full.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from aggregator.control.groups import solve_portfolio_group
from aggregator.control.inputs import PlanInputs, PlanningSettings, billing_period_start, site_plan_inputs
from aggregator.control.loop import ControlLoop, ControlSettings
from aggregator.control.replanning import ReplanRequests
from aggregator.control.schedules import on_grid
from aggregator.control.setpoints import SetpointCommand
from aggregator.db.models import (
    Charger,
    ChargingSession,
    DispatchEvent,
    Program,
    ProgramKind,
    ProgramSite,
    Role,
    ScheduleVersion,
    Site,
    TelemetryRecord,
    User,
    Vehicle,
)
from aggregator.db.session import make_sessionmaker
from aggregator.ingestion.metering import MeteringError, site_import_aggregated, site_import_intervals
from market_adapters.dispatch import SignalKind, SignalStatus
from optimizer.online import DEFAULT_URGENCY_WEIGHT, rolling_horizon
from optimizer.problem import build_problem
from optimizer.scenario import DemandCharge, Evse, Scenario, Tariff, VehicleSession
from optimizer.scenario import Site as ScenarioSite
from optimizer.solve import SolverOptions

SITE = "depot-1"
NOW = dt.datetime(2026, 6, 10, 17, 0, tzinfo=dt.UTC)
EVENT_START, EVENT_END = NOW + dt.timedelta(hours=1), NOW + dt.timedelta(hours=2)
STEP = dt.timedelta(minutes=15)
DEMAND_TARIFF = Tariff(
    import_price_per_kwh=0.25,
    demand_charges=[DemandCharge(name="facilities", rate_per_kw=20.0)],
)
PLANNING = PlanningSettings(
    horizon=dt.timedelta(hours=8), tariffs={"demand": DEMAND_TARIFF}, currency="USD", charge_taper=None
)
"""No taper, so that the van can take its 6.52 kW to the end and the numbers stay hand-computable."""
REDUCTION_KW = 5.0


class RecordingPublisher:
    def __init__(self) -> None:
        self.commands: list[SetpointCommand] = []

    async def publish(self, command: SetpointCommand) -> None:
        self.commands.append(command)


def depot(db: Session) -> int:
    """A site on the demand tariff, one 11 kW charger, a van at 10 % that wants 90 % in 8 h, and an
    opted-in DR event (a program the site is enrolled in) asking 5 kW less from 18:00 to 19:00."""
    driver = User(email="ada@example.com", password_hash="x", role=Role.DRIVER)
    operator = User(email="dso@example.com", password_hash="x", role=Role.GRID_OPERATOR)
    db.add_all([driver, operator])
    db.add(Site(id=SITE, name=SITE, import_limit_kw=50.0, export_limit_kw=0.0, tariff_ref="demand"))
    db.flush()
    charger = Charger(site_id=SITE, charge_point_id="cp-1", evse_id=1, max_kw=11.0)
    van = Vehicle(
        owner_id=driver.id,
        name="van",
        battery_kwh=60.0,
        max_charge_kw=11.0,
        max_discharge_kw=0.0,
        target_soc_percent=90.0,
    )
    db.add_all([charger, van])
    db.flush()
    charging = ChargingSession(
        site_id=SITE,
        charger_id=charger.id,
        evse_id=1,
        transaction_id="tx-1",
        vehicle_id=van.id,
        started_at=NOW - dt.timedelta(minutes=5),
        departure_at=NOW + dt.timedelta(hours=8),
        soc_at_start_percent=10.0,
    )
    db.add(charging)
    db.add(Program(id="dso", name="DSO", kind=ProgramKind.DR, owner_id=operator.id))
    db.flush()
    db.add(ProgramSite(program_id="dso", site_id=SITE))
    db.add(
        DispatchEvent(
            program_id="dso",
            source="api",
            external_event_id="evening",
            kind=SignalKind.DR_REDUCTION,
            status=SignalStatus.ACTIVE,
            price_per_kwh=1.0,
            penalty_per_kwh=0.0,
            window_start=EVENT_START,
            window_end=EVENT_END,
            intervals=[
                {"start": EVENT_START.isoformat(), "end": EVENT_END.isoformat(), "value": REDUCTION_KW}
            ],
            received_at=NOW - dt.timedelta(hours=3),
        )
    )
    db.commit()
    return charging.id


def meter(db: Session, readings: list[tuple[dt.datetime, float]]) -> None:
    """Site telemetry: (sent at, net import [kW])."""
    for seq, (sent_at, kw) in enumerate(readings):
        db.add(
            TelemetryRecord(
                site_id=SITE,
                seq=seq,
                sent_at=sent_at,
                received_at=sent_at,
                site_import_kw=kw,
                base_load_kw=None,
            )
        )
    db.commit()


def every(
    start: dt.datetime, minutes: int, kw: float, spacing_minutes: int = 5
) -> list[tuple[dt.datetime, float]]:
    return [(start + dt.timedelta(minutes=m), kw) for m in range(0, minutes, spacing_minutes)]


A_BUSY_MORNING = [
    *every(dt.datetime(2026, 6, 3, 12, 0, tzinfo=dt.UTC), 60, 30.0),  # 30 kW for an hour: the month's peak
    *every(dt.datetime(2026, 6, 3, 13, 0, tzinfo=dt.UTC), 60, 2.0),
    (dt.datetime(2026, 5, 31, 12, 0, tzinfo=dt.UTC), 45.0),  # last month: billed then, not now
]


def plan_at_now(engine: Engine) -> ScheduleVersion:
    loop = ControlLoop(
        make_sessionmaker(engine),
        RecordingPublisher(),
        ReplanRequests(),
        ControlSettings(poll_s=0.01, solver_time_limit_s=30.0, planning=PLANNING),
        lambda: NOW,
    )
    version_id = asyncio.run(asyncio.wait_for(loop.plan_site(SITE, "event:1"), 60))
    with make_sessionmaker(engine)() as db:
        version = db.scalars(select(ScheduleVersion).where(ScheduleVersion.id == version_id)).one()
        db.expunge(version)
    return version


def event_steps(version: ScheduleVersion) -> slice:
    first = (EVENT_START - version.horizon_start) // STEP
    return slice(first, first + (EVENT_END - EVENT_START) // STEP)


# ------------------------------------------------------------------------------- through the loop


def test_the_month_to_date_peak_lets_the_loop_plan_an_event_worth_more_than_its_energy(
    engine: Engine, session: Session
) -> None:
    charging_id = depot(session)
    meter(session, A_BUSY_MORNING)

    version = plan_at_now(engine)

    assert version.counterfactual is not None
    during = event_steps(version)
    planned = np.array(version.plan["site_import_kw"][during])
    without = np.array(version.counterfactual["site_import_kw"][during])
    # Below 30 kW nothing costs demand: the counterfactual charges at once at 11 kW, and the plan
    # takes the 5 kW asked off every step of the event (5.0 of 5 kWh).
    assert without == pytest.approx([11.0] * 4, abs=1e-3)
    assert without - planned == pytest.approx([REDUCTION_KW] * 4, abs=1e-3)
    power = version.plan["vehicles"][f"session-{charging_id}"]["power_kw"]
    assert sum(power) * 0.25 * 0.92 == pytest.approx(0.8 * 60.0, abs=1e-3)  # and the van still gets 90 %
    (charge,) = version.inputs["scenario"]["tariff"]["demand_charges"]
    assert charge["peak_already_kw"] == pytest.approx(30.0)
    since = billing_period_start(NOW, zoneinfo.ZoneInfo("UTC"))  # the site's zone
    assert (
        f"demand charge 'facilities': 30.00 kW reached this billing period (metered since "
        f"{since.isoformat()}, 8 of {(NOW - since) // STEP} intervals with readings)"
    ) in version.inputs["notes"]


def test_without_metered_data_the_peak_is_zero_and_the_plan_says_so(engine: Engine, session: Session) -> None:
    """The same day with nothing metered yet: every kW of the plan is a new peak, the event's 5 $ do not
    pay for 14.29 $ of demand, and the plan keeps the counterfactual's import (the outside tester's
    finding for every plan of the old loop, which never read the meter)."""
    depot(session)

    version = plan_at_now(engine)

    assert version.counterfactual is not None
    during = event_steps(version)
    planned = np.array(version.plan["site_import_kw"][during])
    without = np.array(version.counterfactual["site_import_kw"][during])
    assert without == pytest.approx([52.17391 / 8] * 4, abs=1e-3)  # flat: the cheapest peak
    assert planned == pytest.approx(without, abs=1e-3)
    (charge,) = version.inputs["scenario"]["tariff"]["demand_charges"]
    assert charge["peak_already_kw"] == 0.0
    assert (
        "demand charge 'facilities': no metered import this billing period (since "
        "2026-06-01T00:00:00+00:00); the peak so far is taken as 0 kW"
    ) in version.inputs["notes"]


def test_a_plan_starts_at_the_true_now_and_counts_the_open_interval_from_the_meter(
    engine: Engine, session: Session
) -> None:
    """At 17:07:30 the 17:00 interval has drawn 20 kW for 7.5 min (2.5 kWh): the plan starts at 17:07:30
    and its first billed interval holds those 2.5 kWh (it is not planned from 17:00 again)."""
    depot(session)
    meter(session, [*A_BUSY_MORNING, *every(NOW, 8, 20.0, spacing_minutes=1)])
    now = NOW + dt.timedelta(minutes=7, seconds=30, microseconds=1234)

    inputs = site_plan_inputs(session, SITE, now, PLANNING)

    assert inputs.scenario.start == now.replace(microsecond=0)
    (vehicle,) = inputs.scenario.vehicles
    assert vehicle.arrival == inputs.scenario.start
    (charge,) = inputs.problem().demand_charges
    assert charge.peak_already_kw == pytest.approx(30.0)
    assert charge.open_interval_kwh == pytest.approx(20.0 * 7.5 / 60)
    assert charge.open_interval_hours == pytest.approx(7.5 / 60)
    assert any("the open interval has drawn 2.500 kWh in 7.5 metered min" in n for n in inputs.notes)


# ------------------------------------------------------------------------------- one planning code


def test_the_loop_plans_as_the_rolling_horizon_does_from_the_same_meter() -> None:
    """A day of two vans on a time-of-use price with a demand charge: the first plugs in at 08:00, the
    second at 09:00. The rolling horizon re-plans at 09:00 from the import it realised since 08:00; the
    control loop's solve (:func:`solve_portfolio_group`, the loop's default), given the same vans and
    that import as its meter, must make the same plan."""
    start = dt.datetime(2026, 6, 10, 8, 0, tzinfo=dt.UTC)
    n = 24
    prices = [0.30 - 0.01 * (k % 7) + (0.15 if 16 <= k < 20 else 0.0) for k in range(n)]
    scenario = Scenario(
        name="two vans",
        start=start,
        n_steps=n,
        step_minutes=15,
        timezone="UTC",
        currency="USD",
        site=ScenarioSite(id=SITE, import_limit_kw=30.0, export_limit_kw=0.0, base_load_kw=2.0),
        tariff=Tariff(import_price_per_kwh=prices, demand_charges=[DemandCharge(rate_per_kw=8.0)]),
        evses=[Evse(id="cp-1/1", max_charge_kw=11.0), Evse(id="cp-2/1", max_charge_kw=11.0)],
        vehicles=[
            VehicleSession(
                id="early",
                evse_id="cp-1/1",
                arrival=start,
                departure=start + dt.timedelta(hours=5),
                capacity_kwh=60.0,
                energy_at_arrival_kwh=12.0,
                target_energy_kwh=40.0,
                max_charge_kw=11.0,
            ),
            VehicleSession(
                id="late",
                evse_id="cp-2/1",
                arrival=start + dt.timedelta(hours=1),
                departure=start + dt.timedelta(hours=6),
                capacity_kwh=50.0,
                energy_at_arrival_kwh=10.0,
                target_energy_kwh=35.0,
                max_charge_kw=11.0,
            ),
        ],
    )
    problem = build_problem(scenario)
    online = rolling_horizon(problem, SolverOptions(mip_gap=0.0))
    now = 4  # the second van's arrival: the last decision, so the rest of the day is its plan

    realised = online.evaluation.import_kw[:now]
    meter = pd.Series(realised, index=problem.index[:now])
    early_energy = float(online.evaluation.energy_kwh[0, now - 1])
    live = scenario.model_copy(
        update={
            "name": "two vans at 09:00",
            "start": start + now * STEP,
            "n_steps": n - now,
            "tariff": scenario.tariff.model_copy(update={"import_price_per_kwh": prices[now:]}),
            "vehicles": [
                scenario.vehicles[0].model_copy(
                    update={"arrival": start + now * STEP, "energy_at_arrival_kwh": early_energy}
                ),
                scenario.vehicles[1],
            ],
        }
    )
    inputs = PlanInputs(site_id=SITE, now=live.start, scenario=live, sessions={}, evses={}, meter_kw=meter)

    (solution,) = solve_portfolio_group([inputs], SolverOptions(mip_gap=0.0), DEFAULT_URGENCY_WEIGHT)

    assert solution.result is not None and solution.result.status.is_ok
    assert solution.result.problem.demand_charges[0].peak_already_kw == pytest.approx(float(realised.max()))
    assert solution.result.charge_kw == pytest.approx(online.charge_kw[:, now:], abs=1e-4)
    assert solution.result.evaluation.import_kw == pytest.approx(online.evaluation.import_kw[now:], abs=1e-4)


# ------------------------------------------------------------------------------- the meter


def test_the_database_averages_a_billing_period_as_the_readings_are_averaged_one_by_one(
    session: Session,
) -> None:
    """:func:`site_import_aggregated` (grouped by the database) against :func:`site_import_intervals`
    (bucketed in Python) on readings that straddle interval boundaries to the microsecond."""
    session.add(Site(id=SITE, name=SITE, import_limit_kw=50.0, export_limit_kw=0.0))
    session.commit()
    t0 = dt.datetime(2026, 6, 1, 0, 0, tzinfo=dt.UTC)
    readings = [
        (t0 - dt.timedelta(microseconds=1), 99.0),  # before the period
        (t0, 4.0),
        (t0 + dt.timedelta(minutes=14, seconds=59, microseconds=999_000), 8.0),
        (t0 + dt.timedelta(minutes=15), -2.0),  # an export
        (t0 + dt.timedelta(minutes=44, seconds=30), 6.0),
        (t0 + dt.timedelta(hours=1), 99.0),  # at the end: out
    ]
    meter(session, readings)

    totals = site_import_aggregated(session, SITE, t0, t0 + dt.timedelta(hours=1))
    one_by_one = site_import_intervals(session, SITE, t0, t0 + dt.timedelta(hours=1))

    assert list(totals.samples) == [2, 1, 1, 0] == list(one_by_one.samples)
    assert totals.mean_kw.iloc[:3].tolist() == pytest.approx([6.0, -2.0, 6.0])
    pd.testing.assert_series_equal(totals.mean_kw, one_by_one.mean_kw)
    with pytest.raises(MeteringError, match="whole, positive seconds"):
        site_import_aggregated(session, SITE, t0 + dt.timedelta(microseconds=5), t0 + dt.timedelta(hours=1))


def test_a_plan_that_starts_between_grid_intervals_is_read_onto_the_grid_by_the_time_it_spends_there() -> (
    None
):
    """A plan made at 10:07:13 of 8, 4, 0 kW: the 10:15 interval is 7:13 of the 8 kW step and 7:47 of
    the 4 kW one; 10:00 and 10:45 are not covered whole and are left out."""
    made = dt.datetime(2026, 6, 1, 10, 7, 13, tzinfo=dt.UTC)
    frame = pd.DataFrame(
        {"site_import_kw": [8.0, 4.0, 0.0], "energy_kwh": [2.0, 1.0, 0.0]},
        index=pd.date_range(made, periods=3, freq=STEP),
    )

    gridded = on_grid(frame, STEP, {"site_import_kw": "mean", "energy_kwh": "sum"})

    assert list(gridded.index) == [pd.Timestamp("2026-06-01T10:15Z"), pd.Timestamp("2026-06-01T10:30Z")]
    assert gridded["site_import_kw"].tolist() == pytest.approx([(433 * 8 + 467 * 4) / 900, 433 * 4 / 900])
    assert gridded["energy_kwh"].tolist() == pytest.approx([(433 * 2 + 467 * 1) / 900, 433 / 900])
