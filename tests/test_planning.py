"""The optimiser's inputs for one site, built from database rows on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from sqlalchemy.orm import Session

from aggregator.control.inputs import (
    CHARGE_EFFICIENCY,
    PlanInputs,
    PlanningSettings,
    SiteNotFoundError,
    site_plan_inputs,
    vehicle_key,
)
from aggregator.db.consents import give_consent, withdraw_consent
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
    SessionOverride,
    Site,
    TelemetryRecord,
    User,
    Vehicle,
)
from market_adapters.dispatch import SignalKind, SignalStatus
from market_adapters.tariffs import parse_tou_tariff
from optimizer.problem import build_problem
from optimizer.scenario import Tariff, VehicleSession

SITE = "depot-1"
NOW = dt.datetime(2026, 6, 1, 10, 7, tzinfo=dt.UTC)
START = NOW
"""The horizon start: ``NOW`` itself (a plan starts when it is made, not at a step boundary before)."""
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def at(minutes: float) -> dt.datetime:
    return NOW + dt.timedelta(minutes=minutes)


class Depot:
    """Rows for one site with two chargers (cp-1 one-way, cp-2 bidirectional) and a driver."""

    def __init__(self, db: Session) -> None:
        self.db = db
        self.driver = User(email="ada@example.com", password_hash="x", role=Role.DRIVER)
        self.operator = User(email="dso@example.com", password_hash="x", role=Role.GRID_OPERATOR)
        self.site = Site(
            id=SITE,
            name="Depot 1",
            import_limit_kw=100.0,
            export_limit_kw=50.0,
            timezone="Europe/Berlin",
        )
        self.cp1 = Charger(site_id=SITE, charge_point_id="cp-1", evse_id=1, max_kw=11.0)
        self.cp2 = Charger(site_id=SITE, charge_point_id="cp-2", evse_id=1, max_kw=22.0, bidirectional=True)
        db.add_all([self.driver, self.operator, self.site, self.cp1, self.cp2])
        db.flush()
        self.seq = 0

    def vehicle(self, **fields: object) -> Vehicle:
        values: dict[str, object] = {
            "owner_id": self.driver.id,
            "name": "van",
            "battery_kwh": 60.0,
            "max_charge_kw": 11.0,
            "max_discharge_kw": 10.0,
            "v2g_capable": True,
            "departure_time": "07:00",
            "target_soc_percent": 80.0,
        }
        vehicle = Vehicle(**(values | fields))
        self.db.add(vehicle)
        self.db.flush()
        return vehicle

    def charging(self, charger: Charger, vehicle: Vehicle | None = None, **fields: object) -> ChargingSession:
        values: dict[str, object] = {
            "site_id": SITE,
            "charger_id": charger.id,
            "evse_id": charger.evse_id,
            "transaction_id": f"tx-{charger.charge_point_id}-{self.seq}",
            "vehicle_id": vehicle.id if vehicle else None,
            "started_at": at(-60),
        }
        self.seq += 1
        row = ChargingSession(**(values | fields))
        self.db.add(row)
        self.db.flush()
        return row

    def override(self, charging: ChargingSession, **fields: object) -> SessionOverride:
        row = SessionOverride(session_id=charging.id, created_by_id=self.driver.id, **fields)
        self.db.add(row)
        self.db.flush()
        return row

    def telemetry(self, charger: Charger, minutes: float, **reading: object) -> None:
        self.seq += 1
        self.db.add(
            TelemetryRecord(
                site_id=SITE,
                seq=self.seq,
                sent_at=at(minutes),
                received_at=at(minutes),
                site_import_kw=10.0,
                base_load_kw=None,
                evses=[
                    EvseTelemetryRecord(
                        charger_id=charger.charge_point_id, evse_id=charger.evse_id, power_kw=7.0, **reading
                    )
                ],
            )
        )
        self.db.flush()

    def program(self, program_id: str = "dso-flex", *, enrolled: bool = True, **terms: float) -> Program:
        program = Program(
            id=program_id,
            name=program_id,
            kind=ProgramKind.DR,
            owner_id=self.operator.id,
            payment_terms=terms,
        )
        self.db.add(program)
        self.db.flush()
        if enrolled:
            self.db.add(ProgramSite(program_id=program_id, site_id=SITE))
            self.db.flush()
        return program

    def event(
        self,
        external_id: str,
        kind: SignalKind,
        start: float,
        end: float,
        value: float,
        *,
        program: str = "dso-flex",
        modification: int = 0,
        status: SignalStatus = SignalStatus.ACTIVE,
        targets: tuple[str, ...] = (),
        price: float | None = None,
    ) -> DispatchEvent:
        row = DispatchEvent(
            program_id=program,
            source="api",
            external_event_id=external_id,
            modification=modification,
            kind=kind,
            status=status,
            price_per_kwh=price,
            penalty_per_kwh=None,
            window_start=at(start),
            window_end=at(end),
            intervals=[{"start": at(start).isoformat(), "end": at(end).isoformat(), "value": value}],
            target_sites=list(targets),
            received_at=at(-5),
        )
        self.db.add(row)
        self.db.flush()
        return row

    def inputs(self, settings: PlanningSettings | None = None) -> PlanInputs:
        self.db.commit()
        return site_plan_inputs(self.db, SITE, NOW, settings)


def only_vehicle(inputs: PlanInputs) -> VehicleSession:
    (vehicle,) = inputs.scenario.vehicles
    return vehicle


@pytest.fixture
def depot(session: Session) -> Depot:
    return Depot(session)


def test_a_plugged_in_vehicle_from_its_vehicle_row_and_telemetry(depot: Depot) -> None:
    van = depot.vehicle()
    charging = depot.charging(depot.cp1, van)
    depot.telemetry(depot.cp1, -120, soc_percent=10.0)  # before this session: not its SoC
    depot.telemetry(depot.cp1, -10, soc_percent=50.0)
    inputs = depot.inputs()

    scenario = inputs.scenario
    assert scenario.start == START and scenario.n_steps == 96 and scenario.step_minutes == 15
    assert scenario.timezone == "Europe/Berlin"
    assert scenario.site.import_limit_kw == 100.0 and scenario.site.export_limit_kw == 50.0
    assert [e.id for e in scenario.evses] == ["cp-1/1", "cp-2/1"]
    assert inputs.evses == {"cp-1/1": ("cp-1", 1), "cp-2/1": ("cp-2", 1)}
    vehicle = only_vehicle(inputs)
    assert inputs.sessions == {vehicle.id: charging.id}
    assert vehicle.evse_id == "cp-1/1"
    assert vehicle.arrival == START  # already plugged in: it "arrives" at the horizon start
    assert vehicle.capacity_kwh == 60.0 and vehicle.max_charge_kw == 11.0
    assert vehicle.energy_at_arrival_kwh == pytest.approx(30.0)  # 50 % of 60 kWh
    assert vehicle.target_energy_kwh == pytest.approx(48.0)  # the vehicle's 80 %
    # No override and no ISO 15118 departure: the vehicle's 07:00 at the site (Berlin), next occurrence.
    assert vehicle.departure == dt.datetime(2026, 6, 2, 7, 0, tzinfo=BERLIN)
    assert not vehicle.v2g_consent and vehicle.max_discharge_kw == 0.0  # no consent
    assert inputs.events == [] and inputs.problems == []
    build_problem(scenario)  # the optimizer takes it


def test_overrides_take_precedence_and_the_latest_one_applies(depot: Depot) -> None:
    van = depot.vehicle()
    iso_departure = at(5 * 60)
    charging = depot.charging(depot.cp1, van, departure_at=iso_departure)
    assert only_vehicle(depot.inputs()).departure == iso_departure  # ISO 15118 needs beat the default

    depot.override(charging, departure_at=at(3 * 60), target_soc_percent=90.0)
    vehicle = only_vehicle(depot.inputs())
    assert vehicle.departure == at(3 * 60)
    assert vehicle.target_energy_kwh == pytest.approx(54.0)

    # A newer override that leaves departure and target unset: the session's and vehicle's again.
    depot.override(charging, no_v2g=True)
    vehicle = only_vehicle(depot.inputs())
    assert vehicle.departure == iso_departure
    assert vehicle.target_energy_kwh == pytest.approx(48.0)


def test_charge_now_plans_the_earliest_departure_that_reaches_the_target(depot: Depot) -> None:
    van = depot.vehicle()
    charging = depot.charging(depot.cp1, van, departure_at=at(10 * 60))
    depot.telemetry(depot.cp1, -1, soc_percent=50.0)
    depot.override(charging, charge_now=True)
    vehicle = only_vehicle(depot.inputs())
    # 18 kWh to go at 11 kW x 0.92: 1.78 h from the horizon start, 8 steps.
    assert vehicle.departure == START + dt.timedelta(hours=2)
    assert not vehicle.v2g_consent


def test_charge_now_allows_for_the_taper_above_80_percent(depot: Depot) -> None:
    van = depot.vehicle()
    charging = depot.charging(depot.cp1, van, departure_at=at(10 * 60))
    depot.telemetry(depot.cp1, -1, soc_percent=50.0)
    depot.override(charging, charge_now=True, target_soc_percent=100.0)
    untapered = only_vehicle(depot.inputs(PlanningSettings(charge_taper=None)))
    tapered = only_vehicle(depot.inputs())
    # 30 kWh to go at 11 kW x 0.92: 2.96 h without a taper, 12 steps; the last 12 kWh (80-100 %) come
    # slower, down to 5 % of 11 kW, so the deadline moves out, and the vehicle can reach it by then.
    assert untapered.departure == START + dt.timedelta(hours=3)
    assert tapered.departure > untapered.departure
    assert tapered.charge_taper is not None
    problem = build_problem(depot.inputs().scenario)
    spec = problem.vehicles[0]
    steps = len(spec.steps)
    assert spec.reachable_energy_kwh(spec.energy_initial_kwh, steps, problem.step_hours) >= 60.0 - 1e-6
    assert spec.reachable_energy_kwh(spec.energy_initial_kwh, steps - 1, problem.step_hours) < 60.0 - 1e-6


@pytest.mark.parametrize(
    ("case", "allowed"),
    [
        ("consent", True),
        ("withdrawn", False),
        ("no_v2g override", False),
        ("one-way charger", False),
        ("vehicle not capable", False),
    ],
)
def test_v2g_needs_consent_no_override_a_capable_vehicle_and_a_bidirectional_charger(
    depot: Depot, case: str, allowed: bool
) -> None:
    van = depot.vehicle(v2g_capable=case != "vehicle not capable")
    give_consent(depot.db, van.id, min_reserve_kwh=20.0, at=at(-24 * 60))
    if case == "withdrawn":
        withdraw_consent(depot.db, van.id, at=at(-60))
    charging = depot.charging(depot.cp1 if case == "one-way charger" else depot.cp2, van)
    if case == "no_v2g override":
        depot.override(charging, no_v2g=True)
    vehicle = only_vehicle(depot.inputs())
    assert vehicle.v2g_consent is allowed
    assert vehicle.max_discharge_kw == (10.0 if allowed else 0.0)
    assert vehicle.min_energy_kwh == (20.0 if allowed else 0.0)


def test_a_session_without_a_vehicle_is_planned_with_the_settings_defaults(depot: Depot) -> None:
    settings = PlanningSettings(default_battery_kwh=50.0, default_dwell=dt.timedelta(hours=6))
    depot.charging(depot.cp2, None, id_token="UNKNOWN", energy_kwh=5.0)
    inputs = depot.inputs(settings)
    vehicle = only_vehicle(inputs)
    assert vehicle.capacity_kwh == 50.0 and vehicle.max_charge_kw == 11.0
    assert vehicle.energy_at_arrival_kwh == pytest.approx(50 * 0.2 + 5.0 * CHARGE_EFFICIENCY)
    assert vehicle.target_energy_kwh == pytest.approx(40.0)
    assert vehicle.departure == NOW + dt.timedelta(hours=6)
    assert not vehicle.v2g_consent
    assert any("no known vehicle" in note for note in inputs.notes)


def test_the_vehicle_is_found_by_the_sessions_id_token(depot: Depot) -> None:
    depot.vehicle(id_token="RFID-7", battery_kwh=77.0)
    depot.charging(depot.cp1, None, id_token="RFID-7")
    assert only_vehicle(depot.inputs()).capacity_kwh == 77.0


def test_stopped_sessions_are_not_planned(depot: Depot) -> None:
    depot.charging(depot.cp1, depot.vehicle(), stopped_at=at(-1))
    assert depot.inputs().scenario.vehicles == []


def test_impossible_inputs_are_named_and_planned_with_safe_defaults(depot: Depot) -> None:
    van = depot.vehicle(departure_time="25:99")
    bad = depot.charging(depot.cp1, van)
    stale = depot.charging(depot.cp2, None, started_at=at(-600))
    current = depot.charging(depot.cp2, None, started_at=at(-30))
    inputs = depot.inputs()

    assert sorted(inputs.sessions.values()) == [bad.id, current.id]  # the stale one is left out
    messages = [str(problem) for problem in inputs.problems]
    assert any(f"charging session {bad.id} (vehicle {van.id}): departure_time" in m for m in messages)
    assert any(f"charging session {stale.id}" in m and "stale" in m for m in messages)
    planned = {v.id: v for v in inputs.scenario.vehicles}
    fallback = planned[f"session-{bad.id}"]
    assert fallback.departure == NOW + PlanningSettings().default_dwell
    assert fallback.capacity_kwh == 60.0 and not fallback.v2g_consent
    build_problem(inputs.scenario)


def test_a_departure_in_the_past_means_the_vehicle_overstays(depot: Depot) -> None:
    depot.charging(depot.cp1, depot.vehicle(), departure_at=at(-30))
    inputs = depot.inputs()
    assert only_vehicle(inputs).departure == START + PlanningSettings().overdue_stay
    build_problem(inputs.scenario)


def test_tariffs_are_looked_up_by_the_sites_tariff_ref(depot: Depot) -> None:
    flat = Tariff(import_price_per_kwh=0.31)
    tou = parse_tou_tariff(
        {
            "name": "day-night",
            "schedule": [
                {
                    "id": "all",
                    "effective_start": "01-01",
                    "effective_end": "12-31",
                    "dow_mask": "ALL",
                    "times": [0, 12],
                    "tariffs": [0.1, 0.4],
                    "demand_charge": 0,
                }
            ],
        }
    )
    settings = PlanningSettings(tariffs={"flat": flat, "tou": tou})
    assert depot.inputs(settings).scenario.tariff == settings.default_tariff  # no tariff_ref

    depot.site.tariff_ref = "flat"
    assert depot.inputs(settings).scenario.tariff == flat

    depot.site.tariff_ref = "tou"
    prices = depot.inputs(settings).scenario.tariff.import_price_per_kwh
    assert isinstance(prices, list) and len(prices) == 96
    # 10:00 UTC is 12:00 in Berlin (summer time): the afternoon price from the first step.
    assert prices[0] == 0.4 and prices[12 * 4 - 1] == 0.4 and prices[12 * 4] == 0.1

    depot.site.tariff_ref = "missing"
    inputs = depot.inputs(settings)
    assert inputs.scenario.tariff == settings.default_tariff
    assert any("'missing' is not configured" in note for note in inputs.notes)


def test_dispatch_events_map_to_the_optimizer_events_that_apply(depot: Depot) -> None:
    depot.charging(depot.cp2, depot.vehicle())
    depot.program(per_kwh_delivered=0.5, penalty_per_kwh_short=1.5)
    depot.program("other-dso", enrolled=False)

    first = depot.event("cap", SignalKind.DR_CAP, 60, 120, 30.0)
    latest = depot.event("cap", SignalKind.DR_CAP, 53, 127, 20.0, modification=1, price=0.9)
    depot.event("gone", SignalKind.DR_CAP, 60, 120, 5.0)
    depot.event("gone", SignalKind.DR_CAP, 60, 120, 5.0, modification=1, status=SignalStatus.CANCELLED)
    reduction = depot.event("cut", SignalKind.DR_REDUCTION, 120, 180, 15.0, targets=(SITE, "elsewhere"))
    export = depot.event("v2g", SignalKind.V2G_EXPORT, 180, 240, 8.0)
    depot.event("not-ours", SignalKind.DR_CAP, 60, 120, 5.0, targets=("elsewhere",))
    depot.event("not-enrolled", SignalKind.DR_CAP, 60, 120, 5.0, program="other-dso")
    depot.event("tomorrow", SignalKind.DR_CAP, 25 * 60, 26 * 60, 5.0)
    depot.event("price", SignalKind.PRICE, 60, 120, 0.3)
    inputs = depot.inputs()

    assert first.id not in inputs.dispatch_event_ids
    assert inputs.dispatch_event_ids == sorted([latest.id, reduction.id, export.id])
    assert inputs.scenario.dr_events == [] and inputs.scenario.v2g_dispatches == []  # the counterfactual

    baseline = [40.0 + k for k in range(96)]
    scenario = inputs.scenario_with_events(baseline)
    cap, cut = scenario.dr_events
    # 11:00..12:14 (NOW + 53..127 min) widened to the plan's step grid, which starts at NOW (10:07):
    # 10:52..12:22, steps 3 to 8.
    assert (cap.start, cap.end) == (at(45), at(135))
    assert cap.cap_kw == 20.0 and cap.reduction_kw is None
    assert cap.payment_per_kwh == 0.9 and cap.penalty_per_kwh == 1.5  # event row, else program terms
    assert cap.baseline_kw == baseline[3:9]
    assert cut.reduction_kw == 15.0 and cut.cap_kw is None and cut.payment_per_kwh == 0.5
    assert (cut.start, cut.end) == (at(120), at(180))  # on the grid already: steps 8 to 11
    assert cut.baseline_kw == baseline[8:12]
    (dispatch,) = scenario.v2g_dispatches
    assert dispatch.export_kw == 8.0 and dispatch.price_per_kwh == 0.5
    build_problem(scenario)


def test_an_event_planned_unpaid_says_so_and_why(depot: Depot) -> None:
    depot.charging(depot.cp2, depot.vehicle())
    depot.program("paid", per_kwh_delivered=0.5)
    depot.program("free").unpaid = True  # fleetgrid admin create-program --unpaid
    depot.program("no-terms")  # made before terms were required
    paid = depot.event("a", SignalKind.DR_CAP, 60, 120, 20.0, program="paid")
    free = depot.event("b", SignalKind.DR_CAP, 60, 120, 20.0, program="free")
    bare = depot.event("c", SignalKind.V2G_EXPORT, 60, 120, 5.0, program="no-terms")
    inputs = depot.inputs()

    assert inputs.dispatch_event_ids == [paid.id, free.id, bare.id]
    assert [note for note in inputs.notes if "unpaid" in note] == [
        f"dispatch event {free.id}: program 'free' is declared unpaid; planned as unpaid",
        f"dispatch event {bare.id}: program 'no-terms' pays nothing per kWh delivered and charges nothing "
        "per kWh short; planned as unpaid",
    ]
    assert inputs.to_json()["notes"] == inputs.notes  # stored with the plan
    scenario = inputs.scenario_with_events([40.0] * 96)
    assert [event.payment_per_kwh for event in scenario.dr_events] == [0.5, 0.0]
    assert [dispatch.price_per_kwh for dispatch in scenario.v2g_dispatches] == [0.0]


def test_each_vehicles_frozen_power_replaces_its_fresh_power_in_the_events_baseline(depot: Depot) -> None:
    """A version made at 11:45 listing the ``cut`` event planned the vehicle at 4, 5, 6, 7 kW without it
    (11:45 to 12:45): that is its frozen baseline. With a fresh counterfactual of 40 kW, 3 of them the
    vehicle's, the cut's baseline is 40 - 3 + frozen where the frozen one covers the step, 40 after;
    the cap, never planned before, keeps the fresh 40 kW; the V2G export has no baseline."""
    charging = depot.charging(depot.cp2, depot.vehicle())
    depot.program(per_kwh_delivered=0.5)
    cap = depot.event("cap", SignalKind.DR_CAP, 53, 127, 20.0)
    cut = depot.event("cut", SignalKind.DR_REDUCTION, 120, 180, 15.0)
    depot.event("v2g", SignalKind.V2G_EXPORT, 180, 240, 8.0)
    made = START + dt.timedelta(hours=1, minutes=45)
    version = ScheduleVersion(
        site_id=SITE,
        created_at=NOW - dt.timedelta(minutes=30),
        horizon_start=made,
        step_seconds=900,
        trigger="event",
        inputs={"scenario": {}, "sessions": {vehicle_key(charging.id): charging.id}, "events": [cut.id]},
        result_summary={},
        status=ScheduleStatus.OPTIMAL,
        plan={"site_import_kw": [0.0] * 4, "vehicles": {}},
        counterfactual={
            "site_import_kw": [9.0] * 4,
            "vehicles": {vehicle_key(charging.id): {"power_kw": [4.0, 5.0, 6.0, 7.0], "evse_id": "cp-2/1"}},
        },
    )
    depot.db.add(version)
    inputs = depot.inputs()

    assert set(inputs.frozen) == {cut.id}
    assert inputs.frozen[cut.id][vehicle_key(charging.id)].version_id == version.id
    note = f"dispatch event {cut.id}: {vehicle_key(charging.id)}'s baseline is frozen at schedule version"
    assert f"{note} {version.id}" in inputs.notes
    baselines = inputs.event_baselines_kw([40.0] * 96, {vehicle_key(charging.id): [3.0] * 96})
    assert set(baselines) == {cap.id, cut.id}
    assert baselines[cap.id] == [40.0] * 96
    assert baselines[cut.id] == [40.0] * 7 + [41.0, 42.0, 43.0, 44.0] + [40.0] * 85
    scenario = inputs.scenario_with_events([40.0] * 96, None, baselines)
    dr_cap, dr_cut = scenario.dr_events
    assert dr_cap.baseline_kw == [40.0] * 6  # 10:52..12:22
    assert dr_cut.baseline_kw == [42.0, 43.0, 44.0, 40.0]  # 12:07..13:07
    build_problem(scenario)


def test_an_unknown_site_is_a_clear_error(session: Session) -> None:
    with pytest.raises(SiteNotFoundError, match="'nowhere'"):
        site_plan_inputs(session, "nowhere", NOW)


def test_metered_energy_counts_at_the_optimizers_own_charge_efficiency() -> None:
    # the planner turns grid-side kWh into battery kWh with the efficiency every planned vehicle has
    assert VehicleSession.model_fields["charge_efficiency"].default == CHARGE_EFFICIENCY
