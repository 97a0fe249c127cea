"""Dispatch events across their versions.

A grid operator's event is stored as one ``dispatch_events`` row per version (see
:class:`~aggregator.db.models.DispatchEvent`): every change or cancellation appends a row with the same
``(source, external_event_id)`` and a higher ``modification``. The event's public id, in the API, the
settlement and the CLI, is the row id of its first version; what applies is its latest version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session

from aggregator.db.models import DispatchEvent


class EventNotFoundError(LookupError):
    """No event has this public id; ``problem`` says why (unknown, or the id of a later version)."""

    def __init__(self, event_id: int, problem: str) -> None:
        super().__init__(f"event {event_id}: {problem}")
        self.event_id = event_id
        self.problem = problem


@dataclass(frozen=True)
class EventChain:
    """An event's versions, oldest first, under its public id."""

    id: int
    versions: Sequence[DispatchEvent]

    @property
    def latest(self) -> DispatchEvent:
        return self.versions[-1]


def event_chain(session: Session, event_id: int) -> EventChain:
    """The event whose public id (its first version's row id) is ``event_id``."""
    first = session.get(DispatchEvent, event_id)
    if first is None:
        raise EventNotFoundError(event_id, "no such dispatch event")
    versions = session.scalars(
        select(DispatchEvent)
        .where(DispatchEvent.source == first.source)
        .where(DispatchEvent.external_event_id == first.external_event_id)
        .order_by(DispatchEvent.modification)
    ).all()
    first_id = min(version.id for version in versions)
    if first_id != event_id:
        problem = f"is a later version (modification {first.modification}) of event {first_id}"
        raise EventNotFoundError(event_id, problem)
    return EventChain(event_id, versions)


def latest_versions() -> Select[Any]:
    """``SELECT (public id, latest DispatchEvent)`` for every event, to be filtered and ordered by the
    caller; the public id is the selected column ``event_id`` (``query.selected_columns.event_id``)."""
    chains = (
        select(
            DispatchEvent.source,
            DispatchEvent.external_event_id,
            func.min(DispatchEvent.id).label("event_id"),
            func.max(DispatchEvent.modification).label("latest"),
        )
        .group_by(DispatchEvent.source, DispatchEvent.external_event_id)
        .subquery()
    )
    return select(chains.c.event_id, DispatchEvent).join(
        DispatchEvent,
        and_(
            DispatchEvent.source == chains.c.source,
            DispatchEvent.external_event_id == chains.c.external_event_id,
            DispatchEvent.modification == chains.c.latest,
        ),
    )
