"""How each dispatch event is measured at each of its sites, declared when the event is notified.

A program says how its events are measured (``Program.measurement``, validated by
:mod:`aggregator.programs.measurement`; ``{}`` is the ``counterfactual``). :func:`declare_site_baselines`
fixes that when an event is notified: one :class:`~aggregator.db.models.EventSiteBaseline` per
(event, site), holding

- the method's name and every parameter written out (defaults included), so the baseline can be
  recomputed whatever the program or the code's defaults become;
- the site's time zone and, for day matching, the local days it leaves out: the days of the site's
  other events (not cancelled) in the :data:`EXCLUDED_DAYS_SPAN` before the event's start;
- ``declared_at``: when the first version of the event that applies to the site arrived.

A declaration is never changed: a later change of the program's measurement applies to events notified
after it. The operators' API and the grid-signal store (:mod:`aggregator.control.grid_signals`) declare
each version they store, so a version that adds a site declares that site, by the method the event was
first declared with (an event is measured one way); a program's measurement that does not validate is
declared as given and refused, naming the program, when the event is measured.

:func:`site_declaration` reads an event's declaration at a site. An event that has none (notified before
declarations were stored, or stored by a path that does not declare) gets the one it would have had,
made from the program's current measurement with ``declared_at`` its arrival, and
:attr:`SiteBaselineDeclaration.stored` false, so the measurement can say so.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db.models import DispatchEvent, EventSiteBaseline, Site
from aggregator.programs.dispatch_events import EventChain, event_chain
from aggregator.programs.kinds import rules_for
from aggregator.programs.measurement import BaselineMethod, XofYConfig, baseline_method, declared_parameters
from market_adapters.dispatch import SignalStatus

log = logging.getLogger(__name__)

DEFAULT_MEASUREMENT: Mapping[str, Any] = {"method": "counterfactual"}
"""What a program without a ``measurement`` measures by."""

EXCLUDED_DAYS_SPAN = dt.timedelta(days=368)
"""How far back other events' days are looked for: the longest day-matching look-back (366 days)
and the two days :func:`aggregator.settlement.site_baselines` reads beyond it."""


@dataclass(frozen=True)
class SiteBaselineDeclaration:
    """How event ``event_id`` (public id) is measured at ``site_id`` (module doc)."""

    event_id: int
    site_id: str
    method: str
    parameters: Mapping[str, Any]
    """The method with every parameter (``{"method": "x_of_y", "x": 10, ...}``)."""
    timezone: str
    excluded_days: tuple[dt.date, ...]
    declared_at: dt.datetime
    stored: bool
    """Declared at notification (``False``: made when asked, for an event that was not declared)."""

    def config(self) -> BaselineMethod:
        """:attr:`parameters` as the method's configuration (raises pydantic's ``ValidationError``)."""
        return baseline_method(self.parameters)

    def public(self) -> dict[str, Any]:
        """JSON data for an operator or a statement: enough, with the meter, to recompute it."""
        return {
            "method": self.method,
            "parameters": dict(self.parameters),
            "timezone": self.timezone,
            "excluded_days": [day.isoformat() for day in self.excluded_days],
            "declared_at": self.declared_at.isoformat(),
            "declared_at_notification": self.stored,
        }


def event_site_ids(event: DispatchEvent) -> list[str]:
    """The sites a version applies to: the ones it names, else its program's enrolled sites."""
    if event.target_sites:
        return [str(site_id) for site_id in event.target_sites]
    return [site.id for site in event.program.sites] if event.program is not None else []


def declare_site_baselines(session: Session, event_id: int) -> list[SiteBaselineDeclaration]:
    """Declare event ``event_id`` (public id) at each site its latest version applies to that has no
    declaration yet (module doc); flushes, the caller commits. Nothing for an event without a program,
    of a kind that commits nothing, or cancelled. Returns the new declarations."""
    chain = event_chain(session, event_id)
    latest = chain.latest
    cancelled = latest.status is SignalStatus.CANCELLED
    if latest.program is None or cancelled or not rules_for(latest.kind).commits:
        return []
    declared = _declared(session, event_id)
    made = []
    for site_id in event_site_ids(latest):
        if site_id in declared:
            continue
        declaration = _declaration(session, chain, site_id, next(iter(declared.values()), None))
        if declaration is None:
            continue
        session.add(
            EventSiteBaseline(
                event_id=event_id,
                site_id=site_id,
                method=declaration.method,
                parameters=dict(declaration.parameters),
                timezone=declaration.timezone,
                excluded_days=[day.isoformat() for day in declaration.excluded_days],
                declared_at=declaration.declared_at,
            )
        )
        made.append(declaration)
    session.flush()
    return [dataclasses.replace(declaration, stored=True) for declaration in made]


def site_declaration(session: Session, event_id: int, site_id: str) -> SiteBaselineDeclaration | None:
    """How event ``event_id`` (public id) is measured at ``site_id``: its stored declaration, else the
    one it would have had (module doc); ``None`` for an unknown site or an event without a program."""
    declared = _declared(session, event_id)
    row = declared.get(site_id)
    if row is not None:
        return SiteBaselineDeclaration(
            event_id=event_id,
            site_id=site_id,
            method=row.method,
            parameters=dict(row.parameters),
            timezone=row.timezone,
            excluded_days=tuple(dt.date.fromisoformat(str(day)) for day in row.excluded_days),
            declared_at=row.declared_at,
            stored=True,
        )
    return _declaration(session, event_chain(session, event_id), site_id, next(iter(declared.values()), None))


def _declared(session: Session, event_id: int) -> dict[str, EventSiteBaseline]:
    """The event's stored declarations by site, in the order they were made."""
    rows = session.scalars(
        select(EventSiteBaseline).where(EventSiteBaseline.event_id == event_id).order_by(EventSiteBaseline.id)
    )
    return {row.site_id: row for row in rows}


def _declaration(
    session: Session, chain: EventChain, site_id: str, earlier: EventSiteBaseline | None
) -> SiteBaselineDeclaration | None:
    """The declaration the event would get at ``site_id`` now (not stored): by the method of the
    event's ``earlier`` declaration at another site, else by its program's measurement."""
    site = session.get(Site, site_id)
    latest = chain.latest
    if site is None or latest.program is None:
        return None
    measurement = (
        earlier.parameters if earlier is not None else latest.program.measurement or DEFAULT_MEASUREMENT
    )
    try:
        config: BaselineMethod | None = baseline_method(measurement)
    except ValidationError as error:
        log.warning(
            "event %d: program %r measurement %r does not validate (%d errors); declared as given",
            chain.id,
            latest.program.id,
            measurement,
            error.error_count(),
        )
        config = None
    applies = [version for version in chain.versions if site_id in event_site_ids(version)] or [latest]
    return SiteBaselineDeclaration(
        event_id=chain.id,
        site_id=site_id,
        method=config.method if config is not None else str(measurement.get("method", "?"))[:40],
        parameters=declared_parameters(config) if config is not None else dict(measurement),
        timezone=site.timezone,
        excluded_days=_event_days(session, chain, site) if isinstance(config, XofYConfig) else (),
        declared_at=applies[0].received_at,
        stored=False,
    )


def _event_days(session: Session, chain: EventChain, site: Site) -> tuple[dt.date, ...]:
    """Local days, within :data:`EXCLUDED_DAYS_SPAN` before the event, of the site's other events that
    are not cancelled: not baseline days."""
    latest = chain.latest
    rows = session.scalars(
        select(DispatchEvent).where(
            DispatchEvent.window_end > latest.window_start - EXCLUDED_DAYS_SPAN,
            DispatchEvent.window_start < latest.window_start,
            DispatchEvent.status != SignalStatus.CANCELLED,
            DispatchEvent.external_event_id != latest.external_event_id,
        )
    ).all()
    zone = ZoneInfo(site.timezone)
    days = {row.window_start.astimezone(zone).date() for row in rows if site.id in event_site_ids(row)}
    return tuple(sorted(days))


__all__ = [
    "DEFAULT_MEASUREMENT",
    "EXCLUDED_DAYS_SPAN",
    "SiteBaselineDeclaration",
    "declare_site_baselines",
    "event_site_ids",
    "site_declaration",
]
