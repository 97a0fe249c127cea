"""Every model survives a round trip through SQLite and PostgreSQL, timestamps aware and in UTC."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from aggregator.db.models import (
    ApiKey,
    Base,
    Charger,
    ChargingSession,
    DispatchEvent,
    EvseTelemetryRecord,
    GatewayStatusRecord,
    Program,
    ProgramKind,
    Role,
    ScheduleStatus,
    ScheduleVersion,
    Site,
    TelemetryRecord,
    User,
    Vehicle,
)
from aggregator.db.session import make_engine, make_sessionmaker
from aggregator.db.types import NaiveDatetimeError
from market_adapters.dispatch import GridSignal, SignalInterval, SignalKind, SignalStatus
from wire.contract import GatewayState

CEST = dt.timezone(dt.timedelta(hours=2))
T0 = dt.datetime(2026, 6, 1, 14, 30, 15, 123456, tzinfo=CEST)
"""12:30:15.123456 UTC, given with an offset so the conversion to UTC is exercised."""


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def columns(row: Base) -> dict[str, Any]:
    return {attr.key: getattr(row, attr.key) for attr in inspect(row).mapper.column_attrs}


def round_trip(session: Session, row: Base) -> Base:
    """Store ``row``, forget it, load it again by its primary key; check every column came back."""
    session.add(row)
    session.commit()
    expected = columns(row)
    identity = inspect(row).identity
    session.expunge_all()
    loaded = session.get(type(row), identity)
    assert loaded is not None
    assert columns(loaded) == expected
    for name, value in columns(loaded).items():
        if isinstance(value, dt.datetime):
            assert value.tzinfo is dt.UTC, f"{type(row).__name__}.{name} came back as {value!r}"
    return loaded


def add_site(session: Session, site_id: str = "depot-1") -> Site:
    site = Site(id=site_id, name="Depot 1", import_limit_kw=250.0, export_limit_kw=100.0)
    session.add(site)
    session.flush()
    return site


def add_user(session: Session, role: Role = Role.DRIVER, email: str = "ada@example.com") -> User:
    user = User(email=email, password_hash="$argon2id$v=19$...", role=role, created_at=at(0))
    session.add(user)
    session.flush()
    return user


def add_charger(session: Session, site: Site) -> Charger:
    charger = Charger(site_id=site.id, charge_point_id="CP-1", evse_id=1, max_kw=22.0, bidirectional=True)
    session.add(charger)
    session.flush()
    return charger


def test_user(session: Session) -> None:
    user = round_trip(session, User(email="op@grid.example", password_hash="h", role=Role.GRID_OPERATOR))
    assert isinstance(user, User) and user.role is Role.GRID_OPERATOR


def test_user_email_is_unique(session: Session) -> None:
    add_user(session)
    with pytest.raises(IntegrityError):
        add_user(session)


def test_api_key(session: Session) -> None:
    site = add_site(session)
    owner = add_user(session, Role.GATEWAY)
    round_trip(session, ApiKey(key_hash="sha256:abc", owner_id=owner.id, site_id=site.id, revoked=True))


def test_vehicle(session: Session) -> None:
    owner = add_user(session)
    vehicle = Vehicle(
        owner_id=owner.id,
        name="Leaf",
        battery_kwh=62.0,
        max_charge_kw=11.0,
        max_discharge_kw=10.0,
        v2g_capable=True,
    )
    round_trip(session, vehicle)
    assert [v.name for v in session.scalars(select(User)).one().vehicles] == ["Leaf"]


def test_vehicle_battery_must_be_positive(session: Session) -> None:
    owner = add_user(session)
    session.add(Vehicle(owner_id=owner.id, name="x", battery_kwh=0.0, max_charge_kw=1, max_discharge_kw=0))
    with pytest.raises(IntegrityError):
        session.flush()


def test_site_and_charger(session: Session) -> None:
    site = Site(
        id="depot-2",
        name="Depot 2",
        import_limit_kw=400.0,
        export_limit_kw=0.0,
        tariff_ref="tariffs/commercial-tou.yaml",
        timezone="Europe/Berlin",
    )
    round_trip(session, site)
    charger = round_trip(
        session,
        Charger(site_id="depot-2", charge_point_id="CP-7", evse_id=2, max_kw=50.0, bidirectional=True),
    )
    assert isinstance(charger, Charger) and charger.site.chargers == [charger]


def test_charger_evse_is_unique_per_site(session: Session) -> None:
    site = add_site(session)
    add_charger(session, site)
    with pytest.raises(IntegrityError):
        add_charger(session, site)


def test_foreign_keys_are_enforced(session: Session) -> None:
    """SQLite leaves foreign keys off unless asked; our engine asks."""
    session.add(Charger(site_id="nowhere", charge_point_id="CP-1", evse_id=1, max_kw=7.4))
    with pytest.raises(IntegrityError):
        session.flush()


def test_program(session: Session) -> None:
    operator = add_user(session, Role.GRID_OPERATOR)
    terms = {"availability_eur_per_kw_month": 2.5, "energy_eur_per_kwh": 0.3, "penalty_factor": 1.5}
    program = round_trip(
        session,
        Program(
            id="dso-flex", name="DSO flex", kind=ProgramKind.DR, owner_id=operator.id, payment_terms=terms
        ),
    )
    assert isinstance(program, Program) and program.payment_terms == terms


def signal(modification: int = 0, status: SignalStatus = SignalStatus.PENDING) -> GridSignal:
    return GridSignal(
        source="openadr2b:vtn.example.com",
        event_id="evt-42",
        modification=modification,
        program_id="dso-flex",
        kind=SignalKind.DR_REDUCTION,
        status=status,
        intervals=(
            SignalInterval(start=at(60), end=at(90), value=40.0),
            SignalInterval(start=at(90), end=at(120), value=60.0),
        ),
        target_sites=("depot-1",),
        received_at=at(0),
    )


def test_dispatch_event_from_signal(session: Session) -> None:
    operator = add_user(session, Role.GRID_OPERATOR)
    session.add(Program(id="dso-flex", name="DSO flex", kind=ProgramKind.DR, owner_id=operator.id))
    event = round_trip(session, DispatchEvent.from_signal(signal()))
    assert isinstance(event, DispatchEvent)
    assert (event.window_start, event.window_end) == (at(60), at(120))
    assert event.kind is SignalKind.DR_REDUCTION and event.status is SignalStatus.PENDING
    again = [SignalInterval.model_validate(interval) for interval in event.intervals]
    assert tuple(again) == signal().intervals


def test_dispatch_event_versions_are_unique(session: Session) -> None:
    operator = add_user(session, Role.GRID_OPERATOR)
    session.add(Program(id="dso-flex", name="DSO flex", kind=ProgramKind.DR, owner_id=operator.id))
    session.add(DispatchEvent.from_signal(signal()))
    session.add(DispatchEvent.from_signal(signal(modification=1, status=SignalStatus.CANCELLED)))
    session.flush()
    session.add(DispatchEvent.from_signal(signal(modification=1)))
    with pytest.raises(IntegrityError):
        session.flush()


def test_charging_session(session: Session) -> None:
    site = add_site(session)
    charger = add_charger(session, site)
    owner = add_user(session)
    vehicle = Vehicle(owner_id=owner.id, name="Ioniq", battery_kwh=77, max_charge_kw=11, max_discharge_kw=0)
    session.add(vehicle)
    session.flush()
    round_trip(
        session,
        ChargingSession(
            site_id=site.id,
            charger_id=charger.id,
            evse_id=1,
            transaction_id="tx-1",
            vehicle_id=vehicle.id,
            id_token="04A2B3C4",
            started_at=at(0),
            stopped_at=at(240),
            energy_kwh=31.5,
            departure_at=at(300),
            energy_request_kwh=35.0,
        ),
    )


def test_telemetry_with_evse_readings(session: Session) -> None:
    site = add_site(session)
    record = TelemetryRecord(
        site_id=site.id, seq=7, sent_at=at(0), received_at=at(0.1), site_import_kw=42.5, base_load_kw=None
    )
    record.evses = [
        EvseTelemetryRecord(charger_id="CP-2", evse_id=1, power_kw=-7.5, energy_kwh=-1.2, soc_percent=61.0),
        EvseTelemetryRecord(charger_id="CP-1", evse_id=1, power_kw=11.0),
    ]
    loaded = round_trip(session, record)
    assert isinstance(loaded, TelemetryRecord)
    assert [(e.charger_id, e.power_kw, e.soc_percent) for e in loaded.evses] == [
        ("CP-1", 11.0, None),
        ("CP-2", -7.5, 61.0),
    ]


def test_gateway_status(session: Session) -> None:
    site = add_site(session)
    status = GatewayStatusRecord(
        site_id=site.id,
        state=GatewayState.FALLBACK,
        reason="setpoints stale",
        since=at(-5),
        last_seen_at=at(0),
        last_seq=9,
    )
    round_trip(session, status)


def test_schedule_version(session: Session) -> None:
    site = add_site(session)
    inputs = {"prices_eur_per_kwh": [0.2, 0.31], "vehicles": [{"id": 1, "target_kwh": 30}]}
    version = round_trip(
        session,
        ScheduleVersion(
            site_id=site.id,
            created_at=at(0),
            horizon_start=at(15),
            step_seconds=900,
            inputs=inputs,
            result_summary={"objective": 12.3, "gap": None},
            status=ScheduleStatus.FEASIBLE,
        ),
    )
    assert isinstance(version, ScheduleVersion) and version.inputs == inputs


def test_naive_datetimes_are_refused(session: Session) -> None:
    session.add(
        Site(id="s", name="s", import_limit_kw=1, export_limit_kw=0, created_at=dt.datetime(2026, 1, 1))
    )
    with pytest.raises(StatementError) as info:
        session.flush()
    assert isinstance(info.value.orig, NaiveDatetimeError)


def test_instants_survive_any_session_time_zone(engine: Engine) -> None:
    """PostgreSQL answers in the session's zone; whatever it is, the instant comes back in UTC."""
    url = engine.url
    kwargs = (
        {"connect_args": {"options": "-c timezone=America/Los_Angeles"}}
        if url.get_backend_name() == "postgresql"
        else {}
    )
    elsewhere = make_engine(url, **kwargs)
    try:
        with make_sessionmaker(elsewhere)() as session:
            site = add_site(session, "tz-site")
            site.created_at = at(0)
            session.commit()
            session.expunge_all()
            loaded = session.get_one(Site, "tz-site")
            assert loaded.created_at == at(0)
            assert loaded.created_at.tzinfo is dt.UTC
            assert loaded.created_at.hour == 12
            session.delete(loaded)
            session.commit()
    finally:
        elsewhere.dispose()
