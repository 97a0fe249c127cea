"""V2G consent as an append-only history (see :class:`~aggregator.db.models.V2gConsent`).

Giving, changing and withdrawing consent each append a row; nothing is updated, so "what did the
driver allow at 14:00 last Tuesday" stays answerable for settlement and disputes.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db.models import V2gConsent


class ConsentError(ValueError):
    """A consent change that does not make sense in the vehicle's current state."""

    def __init__(self, vehicle_id: int, problem: str) -> None:
        self.vehicle_id = vehicle_id
        super().__init__(f"vehicle {vehicle_id}: {problem}")


def latest_consent_state(session: Session, vehicle_id: int) -> V2gConsent | None:
    """The vehicle's most recent consent row (given or withdrawn), ``None`` if it never had one."""
    statement = (
        select(V2gConsent).where(V2gConsent.vehicle_id == vehicle_id).order_by(V2gConsent.id.desc()).limit(1)
    )
    return session.scalars(statement).first()


def current_consent(session: Session, vehicle_id: int) -> V2gConsent | None:
    """The consent in force for the vehicle, ``None`` if it has none or withdrew it."""
    latest = latest_consent_state(session, vehicle_id)
    return latest if latest is not None and latest.active else None


def consent_history(session: Session, vehicle_id: int) -> list[V2gConsent]:
    """Every state the vehicle's consent went through, oldest first."""
    statement = select(V2gConsent).where(V2gConsent.vehicle_id == vehicle_id).order_by(V2gConsent.id)
    return list(session.scalars(statement))


def give_consent(session: Session, vehicle_id: int, min_reserve_kwh: float, at: dt.datetime) -> V2gConsent:
    """Consent to V2G keeping at least ``min_reserve_kwh`` [kWh]; replaces any consent in force."""
    if min_reserve_kwh < 0:
        raise ConsentError(vehicle_id, f"min_reserve_kwh must not be negative, got {min_reserve_kwh}")
    latest = latest_consent_state(session, vehicle_id)
    state = V2gConsent(
        vehicle_id=vehicle_id,
        min_reserve_kwh=min_reserve_kwh,
        given_at=at,
        withdrawn_at=None,
        supersedes_id=latest.id if latest is not None else None,
    )
    session.add(state)
    session.flush()
    return state


def withdraw_consent(session: Session, vehicle_id: int, at: dt.datetime) -> V2gConsent:
    """End the consent in force at ``at``: appends a withdrawn state, leaving the given one as it was."""
    in_force = current_consent(session, vehicle_id)
    if in_force is None:
        raise ConsentError(vehicle_id, "has no V2G consent in force to withdraw")
    if at < in_force.given_at:
        raise ConsentError(
            vehicle_id,
            f"withdrawal at {at.isoformat()} is before consent given at {in_force.given_at.isoformat()}",
        )
    state = V2gConsent(
        vehicle_id=vehicle_id,
        min_reserve_kwh=in_force.min_reserve_kwh,
        given_at=in_force.given_at,
        withdrawn_at=at,
        supersedes_id=in_force.id,
    )
    session.add(state)
    session.flush()
    return state
