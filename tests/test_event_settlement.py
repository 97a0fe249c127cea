"""Settling a dispatch event from the database, end to end from telemetry rows, on SQLite and PostgreSQL.

The world: one depot with three bidirectional EVSEs and three drivers (A, B, C), each with a vehicle
plugged in 16:00-20:00; a program paying 0.50 EUR per kWh delivered with a 10 % platform fee; an event
asking 20 kW of reduction 17:00-18:00; a schedule version made at 16:45 whose counterfactual has the
site importing 40 kW and every vehicle charging at 11 kW; telemetry with one reading per 15 minutes.
Metered: A 0 kW, B 3 kW, C 5.5 kW, base load 7 kW, so the site imports 15.5 kW and delivered 24.5 kW,
credited 20 kW. By hand: 20 kWh x 0.50 = 10.00 EUR gross, fee 1.00, pot 9.00 EUR = 900 cents; A
delivered 11 kWh, B 8 kWh, C 5.5 kWh but overrode the event (charge now), so 900 is split 11 : 8:
A 521.05 -> 521, B 378.95 -> 379 (largest remainder), C 0 with the reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from aggregator.db.consents import give_consent, withdraw_consent
from aggregator.db.models import (
    Charger,
    ChargingSession,
    DispatchEvent,
    EvseTelemetryRecord,
    LedgerTransaction,
    Program,
    ProgramKind,
    ProgramSite,
    Role,
    ScheduleStatus,
    ScheduleVersion,
    SessionOverride,
    SettlementRun,
    Site,
    TelemetryRecord,
    User,
    Vehicle,
)
from aggregator.db.session import make_sessionmaker
from aggregator.programs.terms import PaymentTerms
from aggregator.settlement.attribution import Exclusion, ExclusionReason, attribute
from aggregator.settlement.event_inputs import VehicleInputs
from aggregator.settlement.event_settlement import (
    LOSS_REASON,
    WEAR_LOSS_REASON,
    EventNotEndedError,
    EventSettlementInputs,
    NoTelemetryError,
    UnknownEventError,
    event_booking,
    event_revenue_of,
    settle_dispatch_event,
    settle_period_events,
    settlement_inputs,
)
from aggregator.settlement.event_statements import event_statement
from aggregator.settlement.ledger import (
    PLATFORM,
    AccountKey,
    LedgerAccountKind,
    driver_owner,
    program_owner,
    transaction_imbalances,
    trial_balance,
)
from aggregator.settlement.performance import event_performance
from aggregator.settlement.runs import RunStatus, scope_balances
from aggregator.settlement.statements import Month, driver_statement
from market_adapters.dispatch import SignalKind, SignalStatus

DAY = dt.datetime(2024, 6, 3, tzinfo=dt.UTC)
START = DAY + dt.timedelta(hours=17)
END = START + dt.timedelta(hours=1)
AFTER = END + dt.timedelta(hours=2)
STEP = dt.timedelta(minutes=15)
Kind = LedgerAccountKind


@dataclass(frozen=True)
class World:
    event_id: int
    event_ref: str
    program_id: str
    site_id: str
    drivers: Mapping[str, int]
    sessions: Mapping[str, int]
    start: dt.datetime


def build_world(
    session: Session,
    *,
    kind: SignalKind = SignalKind.DR_REDUCTION,
    evse_kw: Mapping[str, float] | None = None,
    intervals_metered: int = 4,
    charge_now_for: str | None = "c",
    terms: Mapping[str, str] | None = None,
    start: dt.datetime = START,
    tag: str = "1",
) -> World:
    """The module docstring's world (``tag`` tells apart a second world in one database)."""
    evse_kw = evse_kw if evse_kw is not None else {"a": 0.0, "b": 3.0, "c": 5.5}
    operator = User(email=f"ops{tag}@grid.example", password_hash="x", role=Role.GRID_OPERATOR)
    drivers = {
        name: User(email=f"{name}{tag}@drivers.example", password_hash="x", role=Role.DRIVER)
        for name in ("a", "b", "c")
    }
    session.add_all([operator, *drivers.values()])
    site = Site(id=f"depot-{tag}", name="Depot", import_limit_kw=100, export_limit_kw=60)
    session.add(site)
    session.flush()
    program = Program(
        id=f"prog-{tag}",
        name="Evening",
        kind=ProgramKind.V2G if kind is SignalKind.V2G_EXPORT else ProgramKind.DR,
        owner_id=operator.id,
        currency="EUR",
        payment_terms=dict(terms or {"per_kwh_delivered": "0.50", "platform_fee_percent": "10"}),
        measurement={},
    )
    session.add(program)
    session.flush()
    session.add(ProgramSite(program_id=program.id, site_id=site.id))
    chargers = {
        name: Charger(site_id=site.id, charge_point_id=f"cp-{name}", evse_id=1, max_kw=11, bidirectional=True)
        for name in drivers
    }
    vehicles = {
        name: Vehicle(
            owner_id=driver.id,
            name=f"van {name}",
            battery_kwh=60,
            max_charge_kw=11,
            max_discharge_kw=11,
            v2g_capable=True,
        )
        for name, driver in drivers.items()
    }
    session.add_all([*chargers.values(), *vehicles.values()])
    session.flush()
    plugged = start - dt.timedelta(hours=1)
    charging = {
        name: ChargingSession(
            site_id=site.id,
            charger_id=chargers[name].id,
            evse_id=1,
            transaction_id=f"tx-{name}",
            vehicle_id=vehicles[name].id,
            started_at=plugged,
            stopped_at=plugged + dt.timedelta(hours=4),
        )
        for name in drivers
    }
    session.add_all(charging.values())
    session.flush()
    if charge_now_for is not None:
        session.add(
            SessionOverride(
                session_id=charging[charge_now_for].id,
                created_by_id=drivers[charge_now_for].id,
                created_at=plugged + dt.timedelta(minutes=30),
                charge_now=True,
            )
        )
    event = DispatchEvent(
        program_id=program.id,
        source="api",
        external_event_id=f"evt-{tag}",
        modification=0,
        kind=kind,
        status=SignalStatus.ACTIVE,
        window_start=start,
        window_end=start + dt.timedelta(hours=1),
        intervals=[
            {"start": start.isoformat(), "end": (start + dt.timedelta(hours=1)).isoformat(), "value": 20.0}
        ],
        target_sites=[site.id],
        received_at=plugged,
    )
    session.add(event)
    session.flush()
    made = start - dt.timedelta(minutes=15)
    steps = 13
    session.add(
        ScheduleVersion(
            site_id=site.id,
            created_at=made,
            horizon_start=made,
            step_seconds=900,
            trigger=f"event:{event.id}",
            inputs={
                "scenario": {},
                "sessions": {f"session-{c.id}": c.id for c in charging.values()},
                "events": [event.id],
            },
            result_summary={},
            status=ScheduleStatus.OPTIMAL,
            plan={"site_import_kw": [20.0] * steps, "vehicles": {}},
            counterfactual={
                "site_import_kw": [40.0] * steps,
                "vehicles": {
                    f"session-{c.id}": {"power_kw": [11.0] * steps, "evse_id": f"cp-{name}/1"}
                    for name, c in charging.items()
                },
            },
        )
    )
    for k in range(intervals_metered):
        add_reading(session, site.id, k, start, evse_kw)
    session.commit()
    return World(
        event_id=event.id,
        event_ref=f"api/evt-{tag}",
        program_id=program.id,
        site_id=site.id,
        drivers={name: user.id for name, user in drivers.items()},
        sessions={name: c.id for name, c in charging.items()},
        start=start,
    )


def add_reading(
    session: Session,
    site_id: str,
    k: int,
    start: dt.datetime,
    evse_kw: Mapping[str, float],
    base_kw: float = 7.0,
) -> None:
    """One telemetry message 5 minutes into interval ``k`` of the event: the base load plus the EVSEs."""
    sent = start + k * STEP + dt.timedelta(minutes=5)
    session.add(
        TelemetryRecord(
            site_id=site_id,
            seq=k,
            sent_at=sent,
            received_at=sent,
            site_import_kw=base_kw + sum(evse_kw.values()),
            base_load_kw=base_kw,
            evses=[
                EvseTelemetryRecord(charger_id=f"cp-{name}", evse_id=1, power_kw=power)
                for name, power in evse_kw.items()
            ],
        )
    )


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


def payable(driver: int) -> AccountKey:
    return AccountKey(Kind.DRIVER_PAYABLE, driver_owner(driver), "EUR")


def count(session: Session, model: type[SettlementRun] | type[LedgerTransaction]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


# ------------------------------------------------------------------------------------------ inputs


def test_inputs_measure_the_site_and_each_vehicle_against_the_plan_in_force(session: Session) -> None:
    world = build_world(session)
    inputs = settlement_inputs(session, world.event_id, now=AFTER)
    assert inputs.baseline_method == "counterfactual"
    [site] = inputs.sites
    assert list(site.baseline.baseline_kw) == [40.0] * 4
    assert list(site.measured_kw) == [15.5] * 4
    assert inputs.performance is not None
    assert inputs.performance.delivered_kwh == pytest.approx(20.0)
    assert inputs.performance.performance_factor == 1.0
    assert inputs.attribution is not None
    delivered = {
        name: inputs.attribution.vehicles[world.sessions[name]].delivered_kwh for name in ("a", "b", "c")
    }
    assert delivered == {"a": 11.0, "b": 8.0, "c": 5.5}
    excluded = inputs.attribution.vehicles[world.sessions["c"]].exclusion
    assert excluded is not None and excluded.reason is ExclusionReason.OVERRIDE
    assert "charge_now" in excluded.detail
    assert inputs.drivers[world.drivers["a"]] == "a1@drivers.example"


def test_an_unknown_event_a_later_version_id_and_an_unended_event_are_named(session: Session) -> None:
    world = build_world(session)
    with pytest.raises(UnknownEventError, match="event 999999: no such dispatch event"):
        settlement_inputs(session, 999_999, now=AFTER)
    with pytest.raises(EventNotEndedError, match=f"event {world.event_id}: ends at"):
        settlement_inputs(session, world.event_id, now=START + dt.timedelta(minutes=30))
    later = _append_version(session, world.event_id, status=SignalStatus.ACTIVE)
    with pytest.raises(UnknownEventError, match=f"later version .* of event {world.event_id}"):
        settlement_inputs(session, later, now=AFTER)


def test_an_event_without_telemetry_is_refused(session: Session) -> None:
    world = build_world(session, intervals_metered=0)
    with pytest.raises(NoTelemetryError, match=f"event {world.event_id}: no telemetry from depot-1"):
        settlement_inputs(session, world.event_id, now=AFTER)


def test_a_replan_that_precharged_the_vehicles_keeps_their_frozen_baselines(session: Session) -> None:
    """A version made at 17:10 (in force from 17:15) after the vehicles were charged ahead: its fresh
    counterfactual has them at 0 kW (import 7 kW, the base load). Each vehicle's baseline stays the
    11 kW frozen at 16:45, when the event was first planned, so the site's is 7 + 3 x 11 = 40 kW and
    the measurement and the shares are those of the first test."""
    world = build_world(session)
    made = world.start + dt.timedelta(minutes=10)
    session.add(
        ScheduleVersion(
            site_id=world.site_id,
            created_at=made,
            horizon_start=world.start,
            step_seconds=900,
            trigger="cadence",
            inputs={
                "scenario": {},
                "sessions": {f"session-{s}": s for s in world.sessions.values()},
                "events": [world.event_id],
            },
            result_summary={},
            status=ScheduleStatus.OPTIMAL,
            plan={"site_import_kw": [7.0] * 8, "vehicles": {}},
            counterfactual={
                "site_import_kw": [7.0] * 8,
                "vehicles": {
                    f"session-{s}": {"power_kw": [0.0] * 8, "evse_id": f"cp-{name}/1"}
                    for name, s in world.sessions.items()
                },
            },
        )
    )
    session.commit()
    inputs = settlement_inputs(session, world.event_id, now=AFTER)
    [site] = inputs.sites
    assert list(site.baseline.baseline_kw) == [40.0] * 4
    assert inputs.performance is not None
    assert inputs.performance.delivered_kwh == pytest.approx(20.0)
    assert inputs.attribution is not None
    delivered = {
        name: inputs.attribution.vehicles[world.sessions[name]].delivered_kwh for name in ("a", "b", "c")
    }
    assert delivered == {"a": 11.0, "b": 8.0, "c": 5.5}


def test_the_vehicles_and_the_remainder_add_up_to_the_sites_delivery(session: Session) -> None:
    """A leaves at 17:30, half-way through. Its baseline counts only while it is plugged in, in its own
    delivery and in the site's baseline alike: the site's baseline is 7 + 3 x 11 = 40 kW, then 29 kW;
    the site imports 15.5 kW throughout, so it delivers (24.5 + 24.5 + 13.5 + 13.5) / 4 = 19 kWh:
    A 5.5, B 8, C 5.5 and nothing unattributed (the base load was 7 kW, as planned)."""
    world = build_world(session)
    charging = session.get(ChargingSession, world.sessions["a"])
    assert charging is not None
    charging.stopped_at = START + dt.timedelta(minutes=30)
    session.commit()
    inputs = settlement_inputs(session, world.event_id, now=AFTER)
    [site] = inputs.sites
    assert list(site.baseline.baseline_kw) == [40.0, 40.0, 29.0, 29.0]
    assert inputs.attribution is not None and inputs.performance is not None
    delivered = {
        name: inputs.attribution.vehicles[world.sessions[name]].delivered_kwh for name in ("a", "b", "c")
    }
    assert delivered == {"a": 5.5, "b": 8.0, "c": 5.5}
    assert inputs.attribution.site_delivered_kwh == pytest.approx(19.0)
    assert inputs.performance.raw_delivered_kwh == pytest.approx(19.0)
    assert sum(delivered.values()) == pytest.approx(inputs.attribution.site_delivered_kwh)
    assert inputs.attribution.unattributed_kwh == pytest.approx(0.0, abs=1e-9)


def test_delivery_no_driver_accounts_for_is_the_residual_with_its_reason(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    """The base load is 3 kW instead of the 7 planned: the site imports 11.5 kW, 28.5 kW below its
    baseline (credited 20 kW: 10.00 EUR gross, fee 1.00, pot 900). A 11 kWh, B 8 kWh (C overrode the
    event), and 4 kWh no vehicle accounts for: 900 split 11 : 8 : 4 = 430.43, 313.04, 156.52, the
    leftover unit to the largest remainder: A 430, B 313, the residual 157, booked to the platform
    with its reason. Nothing is left unallocated, and the statement shows every line."""
    world = build_world(session, intervals_metered=0)
    for k in range(4):
        add_reading(session, world.site_id, k, START, {"a": 0.0, "b": 3.0, "c": 5.5}, base_kw=3.0)
    session.commit()
    a, b, c = (world.drivers[name] for name in ("a", "b", "c"))
    with sessions() as reading:
        inputs = settlement_inputs(reading, world.event_id, now=AFTER)
    assert inputs.attribution is not None
    assert inputs.attribution.unattributed_kwh == pytest.approx(4.0)
    booking = event_booking(inputs)
    assert dict(booking.driver_shares_minor) == {a: 430, b: 313}
    assert booking.residual_minor == 157
    assert booking.residual_reason == (
        "4.000 of the 28.500 kWh the site delivered is attributed to no driver: the site's other loads"
    )
    assert booking.unallocated_minor == 0

    settle_dispatch_event(sessions, world.event_id, now=AFTER)
    with sessions() as check:
        assert scope_balances(check, f"event:{world.event_ref}") == {
            AccountKey(Kind.PROGRAM_RECEIVABLE, program_owner(world.program_id), "EUR"): 1000,
            AccountKey(Kind.PLATFORM_REVENUE, PLATFORM, "EUR"): -257,  # the fee and the residual
            payable(a): -430,
            payable(b): -313,
        }
        statement = event_statement(check, world.event_ref)
    assert (statement.gross_minor, statement.penalty_minor, statement.platform_fee_minor) == (1000, 0, 100)
    assert (statement.residual_minor, statement.residual_reason) == (157, booking.residual_reason)
    assert {line.driver_id: line.share_minor for line in statement.drivers} == {a: 430, b: 313, c: 0}
    assert (statement.to_drivers_minor, statement.unallocated_minor) == (743, 0)
    [c_line] = [line for line in statement.drivers if line.driver_id == c]
    assert c_line.reason is not None and "charge_now" in c_line.reason
    assert statement.summary() == (
        "gross 10.00 EUR, penalty 0.00 EUR, platform fee 1.00 EUR, to drivers 7.43 EUR, residual 1.57 EUR "
        f"({booking.residual_reason}), unallocated 0.00 EUR"
    )
    assert statement.measured is not None
    assert statement.measured["baselines"][0]["method"] == "counterfactual"
    assert [v.delivered_kwh for v in statement.vehicles] == [11.0, 8.0, 5.5]


def _append_version(session: Session, event_id: int, **changes: object) -> int:
    first = session.get(DispatchEvent, event_id)
    assert first is not None
    row = DispatchEvent(
        program_id=first.program_id,
        source=first.source,
        external_event_id=first.external_event_id,
        modification=first.modification + 1,
        kind=first.kind,
        status=first.status,
        window_start=first.window_start,
        window_end=first.window_end,
        intervals=list(first.intervals),
        target_sites=list(first.target_sites),
        received_at=first.received_at,
    )
    for name, value in changes.items():
        setattr(row, name, value)
    session.add(row)
    session.commit()
    return row.id


# ----------------------------------------------------------------------------------------- settling


def test_settling_books_hand_computed_shares_and_the_ledger_balances(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    world = build_world(session)
    outcome = settle_dispatch_event(sessions, world.event_id, now=AFTER)
    assert outcome.status is RunStatus.BOOKED and outcome.version == 1
    a, b, c = (world.drivers[name] for name in ("a", "b", "c"))
    with sessions() as check:
        assert scope_balances(check, f"event:{world.event_ref}") == {
            AccountKey(Kind.PROGRAM_RECEIVABLE, program_owner(world.program_id), "EUR"): 1000,
            AccountKey(Kind.PLATFORM_REVENUE, PLATFORM, "EUR"): -100,
            payable(a): -521,
            payable(b): -379,
        }
        assert trial_balance(check) == {"EUR": 0}
        assert transaction_imbalances(check) == []
        [run] = check.scalars(select(SettlementRun)).all()
    [driver_c] = [line for line in run.inputs["drivers"] if line["driver_id"] == c]
    assert driver_c["share_minor"] == 0
    assert "override" in driver_c["reason"] and "charge_now" in driver_c["reason"]


def test_a_rerun_with_unchanged_data_stores_nothing(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    world = build_world(session)
    first = settle_dispatch_event(sessions, world.event_id, now=AFTER)
    runs, transactions = count(session, SettlementRun), count(session, LedgerTransaction)
    again = settle_dispatch_event(sessions, world.event_id, now=AFTER + dt.timedelta(days=1))
    assert again.status is RunStatus.UNCHANGED
    assert (again.version, again.run_id) == (first.version, first.run_id)
    assert (count(session, SettlementRun), count(session, LedgerTransaction)) == (runs, transactions)


def test_late_meter_data_books_an_adjustment_that_reverses_the_first_version(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    # Without the last interval: 15 kWh -> 750 gross, 75 fee, 675 split 8.25 : 6 -> 391 / 284.
    world = build_world(session, intervals_metered=3)
    first = settle_dispatch_event(sessions, world.event_id, now=AFTER)
    a, b = world.drivers["a"], world.drivers["b"]
    scope = f"event:{world.event_ref}"
    with sessions() as check:
        balances = scope_balances(check, scope)
    assert (balances[payable(a)], balances[payable(b)]) == (-391, -284)

    add_reading(session, world.site_id, 3, START, {"a": 0.0, "b": 3.0, "c": 5.5})
    session.commit()
    second = settle_dispatch_event(sessions, world.event_id, now=AFTER + dt.timedelta(days=2))
    assert second.status is RunStatus.BOOKED and second.version == 2
    assert second.reversed_transaction_ids == first.transaction_ids
    with sessions() as check:
        balances = scope_balances(check, scope)
        assert (balances[payable(a)], balances[payable(b)]) == (-521, -379)
        assert balances[AccountKey(Kind.PLATFORM_REVENUE, PLATFORM, "EUR")] == -100
        assert trial_balance(check) == {"EUR": 0}
        assert [run.version for run in check.scalars(select(SettlementRun).order_by(SettlementRun.id))] == [
            1,
            2,
        ]


def test_a_dry_run_stores_nothing(session: Session, sessions: sessionmaker[Session]) -> None:
    world = build_world(session)
    outcome = settle_dispatch_event(sessions, world.event_id, dry_run=True, now=AFTER)
    assert outcome.status is RunStatus.DRY_RUN and outcome.run_id is None
    assert sum(p.amount_minor for p in outcome.postings if p.account == payable(world.drivers["a"])) == -521
    assert (count(session, SettlementRun), count(session, LedgerTransaction)) == (0, 0)


def test_a_cancelled_event_settles_to_nothing_and_undoes_an_earlier_booking(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    world = build_world(session)
    settle_dispatch_event(sessions, world.event_id, now=AFTER)
    _append_version(session, world.event_id, status=SignalStatus.CANCELLED)
    outcome = settle_dispatch_event(sessions, world.event_id, now=AFTER)
    assert outcome.status is RunStatus.BOOKED and outcome.version == 2
    assert outcome.postings == ()
    with sessions() as check:
        assert scope_balances(check, f"event:{world.event_ref}") == {}


def test_a_v2g_event_excludes_withdrawn_consent_and_pays_wear_to_who_discharged(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    # A discharges 11 kW, B 5 kW but withdrew consent at 16:50, C charges as planned. Site: 7 - 11 - 5
    # + 11 = 2 kW, so 38 kW delivered, 20 credited: 1000 gross, fee 100, wear 16 kWh x 0.10 = 160,
    # pot 740 all to A (22 kWh; B excluded, C delivered 0); wear 160 split 11 : 5 = 110 / 50.
    world = build_world(
        session,
        kind=SignalKind.V2G_EXPORT,
        evse_kw={"a": -11.0, "b": -5.0, "c": 11.0},
        charge_now_for=None,
        terms={
            "per_kwh_delivered": "0.50",
            "platform_fee_percent": "10",
            "wear_compensation_per_kwh_discharged": "0.10",
        },
    )
    vehicles = {v.owner_id: v.id for v in session.scalars(select(Vehicle))}
    a, b, c = (world.drivers[name] for name in ("a", "b", "c"))
    given_at = DAY - dt.timedelta(days=30)
    give_consent(session, vehicles[a], 10, given_at)
    give_consent(session, vehicles[b], 10, given_at)
    withdraw_consent(session, vehicles[b], START - dt.timedelta(minutes=10))
    session.commit()

    with sessions() as reading:
        inputs = settlement_inputs(reading, world.event_id, now=AFTER)
    booking = event_booking(inputs)
    assert booking.gross_minor == 1000 and booking.platform_fee_minor == 100
    assert dict(booking.driver_shares_minor) == {a: 740}
    assert dict(booking.wear_minor_by_driver) == {a: 110, b: 50}
    assert booking.zero_reasons[b].startswith("consent_withdrawn")
    assert "delivered 0.000 kWh" in booking.zero_reasons[c]

    settle_dispatch_event(sessions, world.event_id, now=AFTER)
    with sessions() as check:
        balances = scope_balances(check, f"event:{world.event_ref}")
    assert (balances[payable(a)], balances[payable(b)]) == (-850, -50)
    assert payable(c) not in balances


# Under-delivery: A charges 11 kW as planned (delivers 0), B 3 kW (delivers 8), C 5.5 kW but overrode
# the event. The site imports 7 + 19.5 = 26.5 kW against 40: 13.5 kWh delivered of 20, shortfall 6.5
# kWh. 13.5 x 0.50 = 6.75 EUR gross, 6.5 x 1.50 = 9.75 EUR penalty, no fee on a loss: net pot -300.
UNDER_DELIVERY = {"a": 11.0, "b": 3.0, "c": 5.5}


def _loss_terms(share_losses: bool) -> dict[str, str]:
    terms = {"per_kwh_delivered": "0.50", "penalty_per_kwh_short": "1.50", "platform_fee_percent": "10"}
    return terms | ({"drivers_share_losses": "true"} if share_losses else {})


def test_a_net_penalty_is_the_platforms_loss_and_drivers_are_told_why(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    world = build_world(session, evse_kw=UNDER_DELIVERY, terms=_loss_terms(False))
    a, b, c = (world.drivers[name] for name in ("a", "b", "c"))
    with sessions() as reading:
        inputs = settlement_inputs(reading, world.event_id, now=AFTER)
    booking = event_booking(inputs)
    assert (booking.gross_minor, booking.penalty_minor, booking.platform_fee_minor) == (675, 975, 0)
    assert dict(booking.driver_shares_minor) == {}
    assert (booking.platform_loss_minor, booking.residual_minor, booking.unallocated_minor) == (300, 0, 0)
    assert booking.zero_reasons[b] == LOSS_REASON
    assert booking.zero_reasons[a].startswith(
        f"{LOSS_REASON}; session {world.sessions['a']}: delivered 0.000"
    )
    assert booking.zero_reasons[c].startswith(f"{LOSS_REASON}; override")

    settle_dispatch_event(sessions, world.event_id, now=AFTER)
    program = program_owner(world.program_id)
    with sessions() as check:
        assert scope_balances(check, f"event:{world.event_ref}") == {
            AccountKey(Kind.PROGRAM_RECEIVABLE, program, "EUR"): 675,
            AccountKey(Kind.PENALTIES, program, "EUR"): -975,
            AccountKey(Kind.PLATFORM_REVENUE, PLATFORM, "EUR"): 300,  # debited: the platform's loss
        }
        assert trial_balance(check) == {"EUR": 0}
        statement = driver_statement(check, b, Month(2024, 6))
    [line] = statement.lines
    assert (line.total_minor, line.zero_reason, line.event_ref) == (0, LOSS_REASON, world.event_ref)


def test_with_drivers_sharing_losses_the_contributors_owe_the_net_penalty(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    world = build_world(session, evse_kw=UNDER_DELIVERY, terms=_loss_terms(True))
    a, b, c = (world.drivers[name] for name in ("a", "b", "c"))
    with sessions() as reading:
        booking = event_booking(settlement_inputs(reading, world.event_id, now=AFTER))
    assert dict(booking.driver_shares_minor) == {b: -300}  # B alone contributed
    assert (booking.platform_loss_minor, booking.residual_minor, booking.unallocated_minor) == (0, 0, 0)
    assert set(booking.zero_reasons) == {a, c}
    assert not any(LOSS_REASON in reason for reason in booking.zero_reasons.values())

    settle_dispatch_event(sessions, world.event_id, now=AFTER)
    program = program_owner(world.program_id)
    with sessions() as check:
        assert scope_balances(check, f"event:{world.event_ref}") == {
            AccountKey(Kind.PROGRAM_RECEIVABLE, program, "EUR"): 675,
            AccountKey(Kind.PENALTIES, program, "EUR"): -975,
            payable(b): 300,  # debited: B owes it
        }
        assert trial_balance(check) == {"EUR": 0}
        [line] = driver_statement(check, b, Month(2024, 6)).lines
    assert (line.share_minor, line.zero_reason) == (-300, None)


@pytest.mark.parametrize(
    ("share_losses", "shares", "platform_loss", "reason"),
    [(False, {}, 100, WEAR_LOSS_REASON), (True, {1: -100}, 0, None)],
    ids=["platform-bears-it", "drivers-share-it"],
)
def test_wear_above_the_earnings_is_paid_in_full_and_the_rest_is_the_platforms_by_default(
    share_losses: bool, shares: dict[int, int], platform_loss: int, reason: str | None
) -> None:
    # Driver 1 delivered 10 kW for 15 min and discharged 8 kW (2 kWh): 1.00 EUR per event, wear
    # 2 kWh x 1.00 = 2.00 EUR, net pot -1.00. Wear is paid in full either way; the -1.00 is the
    # platform's by default, the driver's with drivers_share_losses.
    inputs = _synthetic_inputs({1: 10.0}, set(), {1: 8.0})
    terms = PaymentTerms(
        currency="EUR",
        per_event=Decimal(1),
        wear_compensation_per_kwh_discharged=Decimal(1),
        drivers_share_losses=share_losses,
    )
    booking = event_booking(inputs, terms)
    assert booking.gross_minor == 100
    assert dict(booking.wear_minor_by_driver) == {1: 200}
    assert dict(booking.driver_shares_minor) == shares
    assert (booking.platform_loss_minor, booking.unallocated_minor) == (platform_loss, 0)
    assert booking.zero_reasons.get(1) == reason


def test_a_period_settles_its_ended_events_and_names_those_it_cannot(
    session: Session, sessions: sessionmaker[Session]
) -> None:
    june = build_world(session)
    unmetered = build_world(session, start=START + dt.timedelta(days=1), intervals_metered=0, tag="2")
    july = build_world(session, start=START + dt.timedelta(days=30), tag="3")
    result = settle_period_events(sessions, "2024-06", now=AFTER + dt.timedelta(days=60))
    assert [settled.inputs.event_id for settled in result.settled] == [june.event_id]
    assert [error.event_id for error in result.failed] == [unmetered.event_id]
    assert isinstance(result.failed[0], NoTelemetryError)
    with sessions() as check:
        assert scope_balances(check, f"event:{july.event_ref}") == {}
    again = settle_period_events(sessions, "2024-06", now=AFTER + dt.timedelta(days=61))
    assert [settled.outcome.status for settled in again.settled] == [RunStatus.UNCHANGED]


# ------------------------------------------------------------------------------- booking, by property


def _synthetic_inputs(
    delivered_kw: Mapping[int, float], excluded: set[int], discharged_kw: Mapping[int, float]
) -> EventSettlementInputs:
    """An hour-long event at a site with vehicles ``driver -> kW delivered`` (one interval)."""
    index = pd.date_range(START, periods=1, freq=STEP, tz="UTC")
    series = {d: pd.Series([kw], index=index, dtype=float) for d, kw in delivered_kw.items()}
    zero = {d: pd.Series([0.0], index=index, dtype=float) for d in delivered_kw}
    total = sum(delivered_kw.values())
    performance = event_performance(
        SignalKind.DR_REDUCTION,
        pd.Series([10.0], index=index),
        pd.Series([50.0], index=index),
        pd.Series([50.0 - total], index=index),
    )
    exclusions = {d: Exclusion(ExclusionReason.OVERRIDE, f"session {d}") for d in excluded}
    vehicles = tuple(
        VehicleInputs(
            session_id=d,
            vehicle_id=d,
            driver_id=d,
            site_id="s",
            evse=("cp", d),
            counterfactual_kw=series[d],
            metered_kw=zero[d],
            discharged_kwh=discharged_kw.get(d, 0.0) / 4,
            exclusion=exclusions.get(d),
        )
        for d in delivered_kw
    )
    return EventSettlementInputs(
        event_id=1,
        event_ref="api/x",
        version_id=1,
        program_id="p",
        kind=SignalKind.DR_REDUCTION,
        status=SignalStatus.COMPLETED,
        window_start=START,
        window_end=START + STEP,
        terms=PaymentTerms(currency="EUR"),
        baseline_method="counterfactual",
        performance=performance,
        vehicles=vehicles,
        attribution=attribute(
            pd.Series([50.0], index=index),
            pd.Series([50.0 - total], index=index),
            series,
            zero,
            exclusions=exclusions,
        ),
    )


@settings(max_examples=60, deadline=None)
@given(
    delivered=st.dictionaries(
        st.integers(1, 6), st.floats(-5, 15, allow_nan=False).map(lambda x: round(x, 2)), max_size=5
    ),
    excluded=st.sets(st.integers(1, 6)),
    discharged=st.dictionaries(st.integers(1, 6), st.floats(0, 11).map(lambda x: round(x, 2))),
    per_kwh=st.decimals("0", "2", places=2),
    penalty=st.decimals("0", "3", places=2),
    wear=st.decimals("0", "0.5", places=2),
    fee=st.decimals("0", "30", places=1),
    share_losses=st.booleans(),
)
def test_every_booking_balances_and_pays_only_who_contributed(
    delivered: dict[int, float],
    excluded: set[int],
    discharged: dict[int, float],
    per_kwh: Decimal,
    penalty: Decimal,
    wear: Decimal,
    fee: Decimal,
    share_losses: bool,
) -> None:
    excluded &= set(delivered)
    discharged = {d: kw for d, kw in discharged.items() if d in delivered}
    inputs = _synthetic_inputs(delivered, excluded, discharged)
    terms = PaymentTerms(
        currency="EUR",
        per_kwh_delivered=per_kwh,
        penalty_per_kwh_short=penalty,
        wear_compensation_per_kwh_discharged=wear,
        platform_fee_percent=fee,
        drivers_share_losses=share_losses,
    )
    booking = event_booking(inputs, terms)  # EventBooking checks that it balances
    pot = booking.gross_minor - booking.penalty_minor - booking.platform_fee_minor
    assert booking.unallocated_minor == 0  # every minor unit lands on a named account
    assert (
        sum(booking.driver_shares_minor.values())
        + sum(booking.wear_minor_by_driver.values())
        + booking.residual_minor
        - booking.platform_loss_minor
        == pot
    )
    for driver, share in booking.driver_shares_minor.items():
        assert driver not in excluded and delivered[driver] > 0, (driver, share)
    for driver in delivered:
        if booking.driver_shares_minor.get(driver, 0) == 0:
            assert booking.zero_reasons[driver]
    for driver, amount in booking.wear_minor_by_driver.items():
        assert amount > 0 and discharged.get(driver, 0) > 0
    revenue = event_revenue_of(inputs, terms)
    assert revenue is not None
    if not share_losses:
        # No driver ever owes anything; a negative net pot is all the platform's, and every driver is
        # told why they got no share.
        assert all(share > 0 for share in booking.driver_shares_minor.values())
        if revenue.net_pot_minor < 0:
            assert booking.platform_loss_minor == -revenue.net_pot_minor
            assert booking.driver_shares_minor == {}
            for driver in delivered:
                assert booking.zero_reasons[driver].startswith((LOSS_REASON, WEAR_LOSS_REASON))
    elif revenue.net_pot_minor < 0 and any(
        kw > 0 and driver not in excluded for driver, kw in delivered.items()
    ):
        # The drivers who contributed carry the whole loss.
        assert sum(booking.driver_shares_minor.values()) == revenue.net_pot_minor
        assert (booking.residual_minor, booking.platform_loss_minor) == (0, 0)
