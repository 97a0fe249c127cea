"""V2G consent is history: giving and withdrawing append states and never change old ones."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db.consents import (
    ConsentError,
    consent_history,
    current_consent,
    give_consent,
    withdraw_consent,
)
from aggregator.db.models import ImmutableRowError, Role, User, V2gConsent, Vehicle

T0 = dt.datetime(2026, 6, 1, 8, 0, tzinfo=dt.UTC)


def hours(n: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=n)


@pytest.fixture
def vehicle_id(session: Session) -> int:
    owner = User(email="driver@example.com", password_hash="h", role=Role.DRIVER)
    vehicle = Vehicle(
        owner=owner, name="Leaf", battery_kwh=62, max_charge_kw=11, max_discharge_kw=10, v2g_capable=True
    )
    session.add(vehicle)
    session.commit()
    return vehicle.id


def stored_rows(session: Session) -> list[dict[str, Any]]:
    """What the table holds, read afresh from the database."""
    session.expire_all()
    rows = session.execute(select(V2gConsent.__table__).order_by(V2gConsent.id)).mappings()
    return [dict(row) for row in rows]


def test_withdrawal_appends_a_state_and_leaves_the_consent_row_untouched(
    session: Session, vehicle_id: int
) -> None:
    given = give_consent(session, vehicle_id, min_reserve_kwh=20.0, at=hours(0))
    session.commit()
    before = stored_rows(session)

    withdrawn = withdraw_consent(session, vehicle_id, at=hours(3))
    session.commit()

    after = stored_rows(session)
    assert after[:1] == before
    assert after[1]["id"] == withdrawn.id
    assert after[1]["supersedes_id"] == given.id
    assert (after[1]["given_at"], after[1]["withdrawn_at"], after[1]["min_reserve_kwh"]) == (
        hours(0),
        hours(3),
        20.0,
    )
    assert current_consent(session, vehicle_id) is None


def test_history_in_order(session: Session, vehicle_id: int) -> None:
    give_consent(session, vehicle_id, 20.0, hours(0))
    give_consent(session, vehicle_id, 30.0, hours(1))  # a change of reserve is a new consent
    withdraw_consent(session, vehicle_id, hours(2))
    give_consent(session, vehicle_id, 10.0, hours(5))
    session.commit()

    states = [(c.min_reserve_kwh, c.given_at, c.withdrawn_at) for c in consent_history(session, vehicle_id)]
    assert states == [
        (20.0, hours(0), None),
        (30.0, hours(1), None),
        (30.0, hours(1), hours(2)),
        (10.0, hours(5), None),
    ]
    current = current_consent(session, vehicle_id)
    assert current is not None and current.min_reserve_kwh == 10.0


def test_rows_cannot_be_updated(session: Session, vehicle_id: int) -> None:
    consent = give_consent(session, vehicle_id, 20.0, hours(0))
    session.commit()
    consent.withdrawn_at = hours(1)
    with pytest.raises(ImmutableRowError):
        session.flush()
    session.rollback()
    assert stored_rows(session)[0]["withdrawn_at"] is None


def test_nothing_to_withdraw(session: Session, vehicle_id: int) -> None:
    with pytest.raises(ConsentError, match=f"vehicle {vehicle_id}: has no V2G consent"):
        withdraw_consent(session, vehicle_id, hours(0))
    give_consent(session, vehicle_id, 20.0, hours(0))
    withdraw_consent(session, vehicle_id, hours(1))
    with pytest.raises(ConsentError):
        withdraw_consent(session, vehicle_id, hours(2))


def test_withdrawal_before_consent_is_refused(session: Session, vehicle_id: int) -> None:
    give_consent(session, vehicle_id, 20.0, hours(2))
    with pytest.raises(ConsentError, match="before consent given"):
        withdraw_consent(session, vehicle_id, hours(1))


def test_negative_reserve_is_refused(session: Session, vehicle_id: int) -> None:
    with pytest.raises(ConsentError, match="min_reserve_kwh must not be negative, got -1"):
        give_consent(session, vehicle_id, -1.0, hours(0))
