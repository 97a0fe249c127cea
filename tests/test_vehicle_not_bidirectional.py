"""The centre's side of ``vehicle_not_bidirectional`` (a discharge the gateway refused because the
vehicle did not negotiate bidirectional transfer), on SQLite and PostgreSQL: revision 0009 lets
``telemetry_evses.limit_reason`` take it, a downgrade keeps the readings (as ``charger_max``, what
gateways reported before the reason existed), and the planner plans no discharge while it holds."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError
from test_db_migrations import empty_url
from test_planning import Depot, at, depot, only_vehicle

from aggregator.db.consents import give_consent
from aggregator.db.migrate import downgrade, upgrade
from aggregator.db.session import make_engine
from wire.contract import LimitReason

__all__ = ["depot", "empty_url"]


def set_reason(connection: Connection, reason: str) -> None:
    connection.execute(text("UPDATE telemetry_evses SET limit_reason = :reason"), {"reason": reason})


def test_a_refused_discharge_is_stored_from_0009_and_read_as_charger_max_after_a_downgrade(
    empty_url: str,
) -> None:
    refused = LimitReason.VEHICLE_NOT_BIDIRECTIONAL.value
    upgrade(empty_url, "0008")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO sites (id, name, import_limit_kw, export_limit_kw, timezone, created_at) "
                    "VALUES ('depot', 'Depot', 50, 50, 'UTC', CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO telemetry (id, site_id, seq, sent_at, received_at, site_import_kw) "
                    "VALUES (1, 'depot', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO telemetry_evses (telemetry_id, charger_id, evse_id, power_kw, limit_kw,"
                    " limit_reason, limit_discharge) VALUES (1, 'cp-1', 1, 0, 0, 'charger_max', true)"
                )
            )
            with pytest.raises(IntegrityError), connection.begin_nested():  # 0008 does not know it
                set_reason(connection, refused)
        upgrade(empty_url)
        with engine.begin() as connection:
            set_reason(connection, refused)
            assert (
                connection.execute(text("SELECT limit_reason FROM telemetry_evses")).scalar_one() == refused
            )
            with pytest.raises(IntegrityError), connection.begin_nested():  # still only the contract's
                set_reason(connection, "whim")
        downgrade(empty_url, "0008")
        with engine.begin() as connection:
            row = connection.execute(text("SELECT limit_kw, limit_reason FROM telemetry_evses")).one()
            assert tuple(row) == (0, "charger_max")
            with pytest.raises(IntegrityError), connection.begin_nested():
                set_reason(connection, refused)
        upgrade(empty_url)
        with engine.begin() as connection:
            set_reason(connection, refused)
    finally:
        engine.dispose()


def test_every_limit_reason_of_the_contract_is_allowed_at_head(empty_url: str) -> None:
    upgrade(empty_url)
    engine = make_engine(empty_url)
    try:
        with engine.connect() as connection:
            (check,) = [
                c["sqltext"]
                for c in inspect(connection).get_check_constraints("telemetry_evses")
                if c["name"] == "ck_telemetry_evses_limit_reason"
            ]
        assert all(f"'{reason.value}'" in check for reason in LimitReason), check
    finally:
        engine.dispose()


def test_the_next_plan_does_not_discharge_a_vehicle_that_did_not_negotiate_bidirectional_transfer(
    depot: Depot,
) -> None:
    van = depot.vehicle()
    give_consent(depot.db, van.id, min_reserve_kwh=20.0, at=at(-24 * 60))
    depot.charging(depot.cp2, van)
    assert only_vehicle(depot.inputs()).max_discharge_kw == 10.0  # consent, capable, bidirectional
    depot.telemetry(
        depot.cp2, -1, limit_kw=0.0, limit_reason=LimitReason.VEHICLE_NOT_BIDIRECTIONAL, limit_discharge=True
    )
    inputs = depot.inputs()
    assert only_vehicle(inputs).max_discharge_kw == 0.0
    assert any("discharge to 0.00 kW (vehicle_not_bidirectional)" in note for note in inputs.notes), (
        inputs.notes
    )
