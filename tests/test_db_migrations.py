"""The Alembic migrations build exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from postgres import BACKENDS, PostgresServer
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.control.setpoints import gateway_reads
from aggregator.db.migrate import alembic_config, downgrade, upgrade
from aggregator.db.models import Base, GatewayStatusRecord
from aggregator.db.session import make_engine


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.fresh_database() as url:
        yield url


def schema_differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_one_head() -> None:
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


def test_upgrade_of_an_empty_database_yields_the_models_schema(empty_url: str) -> None:
    upgrade(empty_url)
    assert schema_differences(empty_url) == []
    assert table_names(empty_url) == set(Base.metadata.tables) | {"alembic_version"}


def test_upgrade_twice_changes_nothing(empty_url: str) -> None:
    upgrade(empty_url)
    upgrade(empty_url)
    assert schema_differences(empty_url) == []


def test_downgrade_to_base_removes_every_table_and_upgrade_restores_them(empty_url: str) -> None:
    upgrade(empty_url)
    downgrade(empty_url, "base")
    assert table_names(empty_url) == {"alembic_version"}
    upgrade(empty_url)
    assert schema_differences(empty_url) == []


def test_constraints_are_named_by_convention(empty_url: str) -> None:
    upgrade(empty_url)
    engine = make_engine(empty_url)
    try:
        inspector = inspect(engine)
        unique = {c["name"] for c in inspector.get_unique_constraints("telemetry")}
        checks = {c["name"] for c in inspector.get_check_constraints("users")}
    finally:
        engine.dispose()
    assert "uq_telemetry_site_id_seq" in unique
    assert checks == {"ck_users_role"}


def test_programs_from_before_0006_are_not_declared_unpaid(empty_url: str) -> None:
    upgrade(empty_url, "0005")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO users (email, password_hash, role, is_active, created_at) "
                    "VALUES ('ops@grid.example', 'x', 'grid_operator', true, CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO programs (id, name, kind, owner_id, currency, payment_terms, "
                    "measurement, created_at) "
                    "SELECT 'dr-1', 'DR', 'dr', id, 'USD', '{}', '{}', CURRENT_TIMESTAMP FROM users"
                )
            )
        upgrade(empty_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT unpaid FROM programs")).scalar_one() in (False, 0)
        downgrade(empty_url, "0005")
        assert "unpaid" not in {c["name"] for c in inspect(engine).get_columns("programs")}
    finally:
        engine.dispose()


def test_events_from_before_0007_have_no_declared_baseline_and_0007_goes_back_cleanly(empty_url: str) -> None:
    upgrade(empty_url, "0006")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO sites (id, name, import_limit_kw, export_limit_kw, timezone, created_at) "
                    "VALUES ('depot', 'Depot', 50, 0, 'UTC', CURRENT_TIMESTAMP)"
                )
            )
        upgrade(empty_url, "0007")
        assert "event_site_baselines" in set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM event_site_baselines")).scalar_one() == 0
        downgrade(empty_url, "0006")
        assert "event_site_baselines" not in set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM sites")).scalar_one() == 1
    finally:
        engine.dispose()


def test_evse_readings_from_before_0008_have_no_limit(empty_url: str) -> None:
    upgrade(empty_url, "0007")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO sites (id, name, import_limit_kw, export_limit_kw, timezone, created_at) "
                    "VALUES ('depot', 'Depot', 50, 0, 'UTC', CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO telemetry (id, site_id, seq, sent_at, received_at, site_import_kw) "
                    "VALUES (1, 'depot', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 11)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO telemetry_evses (telemetry_id, charger_id, evse_id, power_kw) "
                    "VALUES (1, 'cp-1', 1, 11)"
                )
            )
        upgrade(empty_url)
        with engine.begin() as connection:
            row = connection.execute(
                text("SELECT limit_kw, limit_reason, limit_discharge FROM telemetry_evses")
            ).one()
            assert tuple(row) == (None, None, None)
            connection.execute(
                text(
                    "UPDATE telemetry_evses SET limit_kw = 7.5, limit_reason = 'site_limit', "
                    "limit_discharge = false"
                )
            )
            # reasons are the contract's LimitReason values
            with pytest.raises(IntegrityError), connection.begin_nested():
                connection.execute(text("UPDATE telemetry_evses SET limit_reason = 'whim'"))
        downgrade(empty_url, "0007")
        columns = {c["name"] for c in inspect(engine).get_columns("telemetry_evses")}
        assert not columns & {"limit_kw", "limit_reason", "limit_discharge"}
    finally:
        engine.dispose()


def test_gateways_from_before_0010_read_no_new_fields_and_0010_goes_back_cleanly(empty_url: str) -> None:
    upgrade(empty_url, "0009")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO sites (id, name, import_limit_kw, export_limit_kw, timezone, created_at) "
                    "VALUES ('depot', 'Depot', 50, 0, 'UTC', CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO gateway_status (site_id, state, last_seen_at, last_seq) "
                    "VALUES ('depot', 'online', CURRENT_TIMESTAMP, 3)"
                )
            )
        upgrade(empty_url)
        with Session(engine) as db:
            # a gateway that has said nothing since: setpoints go to it without a transaction id
            assert gateway_reads(db, "depot") == frozenset()
            row = db.get(GatewayStatusRecord, "depot")
            assert row is not None and row.reads == []
            row.reads = ["setpoint.transaction_id"]
            db.commit()
            assert gateway_reads(db, "depot") == {"setpoint.transaction_id"}
        downgrade(empty_url, "0009")
        assert "reads" not in {c["name"] for c in inspect(engine).get_columns("gateway_status")}
        with engine.connect() as connection:
            assert connection.execute(text("SELECT last_seq FROM gateway_status")).scalar_one() == 3
    finally:
        engine.dispose()
