"""Grid programs, the sites enrolled in them, their dispatch events (every version kept) and how each
event is measured at each site (declared at notification)."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.orm import Mapped, Mapper, mapped_column, relationship

from aggregator.db.models.base import Base, ImmutableRowError, utcnow
from aggregator.db.models.sites import Site
from aggregator.db.types import value_enum
from market_adapters.dispatch import GridSignal, SignalKind, SignalStatus


class ProgramSite(Base):
    """A site enrolled in a program: an event for the whole program is shared among these sites."""

    __tablename__ = "program_sites"

    program_id: Mapped[str] = mapped_column(ForeignKey("programs.id"), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    enrolled_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ProgramKind(enum.StrEnum):
    DR = "dr"
    V2G = "v2g"


class Program(Base):
    __tablename__ = "programs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The program's slug; what :attr:`GridSignal.program_id` names."""
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[ProgramKind] = mapped_column(value_enum(ProgramKind, "program_kind"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    """The grid operator who runs the program and posts its events."""
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    payment_terms: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """How the program pays (per kWh, per kW-hour available, per event, capacity), its penalties,
    the platform fee and wear compensation; validated by ``aggregator.settlement``."""
    measurement: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """How delivery is measured: the baseline method and its parameters (``aggregator.settlement``)."""
    unpaid: Mapped[bool] = mapped_column(default=False)
    """The operator declared that the program pays nothing (``fleetgrid admin create-program
    --unpaid``): no ``payment_terms``, and its events are planned without payment on purpose."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    sites: Mapped[list[Site]] = relationship(secondary="program_sites", order_by="Site.id")
    events: Mapped[list[DispatchEvent]] = relationship(back_populates="program", order_by="DispatchEvent.id")


class DispatchEvent(Base):
    """One version of a grid operator's event, as a :class:`GridSignal` carries it.

    ``(source, external_event_id, modification)`` is unique: a modification is a new row, so the
    versions an event went through are all kept, and a redelivered version is refused by the
    constraint. Events posted through our API use source ``"api"``.
    """

    __tablename__ = "dispatch_events"
    __table_args__ = (
        UniqueConstraint("source", "external_event_id", "modification"),
        CheckConstraint("window_end > window_start", name="window_ordered"),
        Index(None, "window_start", "window_end"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    program_id: Mapped[str | None] = mapped_column(ForeignKey("programs.id"), index=True)
    """``None`` while an adapter's event is not mapped to one of our programs."""
    source: Mapped[str] = mapped_column(String(200))
    external_event_id: Mapped[str] = mapped_column(String(200))
    modification: Mapped[int] = mapped_column(BigInteger, default=0)
    """The source's version number: 0, 1, 2 ... from our API and OpenADR 2.0b, the modification time in
    epoch milliseconds from OpenADR 3."""
    kind: Mapped[SignalKind] = mapped_column(value_enum(SignalKind, "signal_kind"))
    status: Mapped[SignalStatus] = mapped_column(value_enum(SignalStatus, "signal_status"))
    price_per_kwh: Mapped[float | None]
    """Paid per kWh delivered [currency/kWh]; ``None`` for the program's payment terms."""
    penalty_per_kwh: Mapped[float | None]
    """Charged per kWh short of the request [currency/kWh]; ``None`` for the program's terms."""
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    """The grid operator who posted this version through the API; ``None`` for adapter events."""
    window_start: Mapped[dt.datetime]
    window_end: Mapped[dt.datetime]
    intervals: Mapped[list[Any]]
    """``[{"start": ISO 8601, "end": ISO 8601, "value": float}, ...]``; unit by ``kind`` (see
    :mod:`market_adapters.dispatch`)."""
    currency: Mapped[str | None] = mapped_column(String(3))
    target_sites: Mapped[list[Any]] = mapped_column(default=list)
    """Our site ids the event names; empty for the whole portfolio."""
    received_at: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    program: Mapped[Program | None] = relationship(back_populates="events")

    @classmethod
    def from_signal(cls, signal: GridSignal) -> DispatchEvent:
        return cls(
            program_id=signal.program_id,
            source=signal.source,
            external_event_id=signal.event_id,
            modification=signal.modification,
            kind=signal.kind,
            status=signal.status,
            window_start=signal.start,
            window_end=signal.end,
            intervals=[interval.model_dump(mode="json") for interval in signal.intervals],
            currency=signal.currency,
            target_sites=list(signal.target_sites),
            received_at=signal.received_at,
        )


class EventSiteBaseline(Base):
    """How one dispatch event is measured at one site, declared when the event was notified; never
    changed (an update raises :class:`~aggregator.db.models.base.ImmutableRowError`).

    ``event_id`` is the event's public id (the row id of its first version). ``method`` and
    ``parameters`` are the program's measurement at notification (``parameters`` validates as an
    ``aggregator.settlement.baselines.BaselineMethod``), so changing a program's measurement does not
    move an event already notified; ``timezone`` and ``excluded_days`` (local ISO dates: earlier event
    days at the site) are what a day-matching method reads besides the meter, fixed then too. With them
    and the site's metered import a grid operator can recompute the baseline; the ``counterfactual``
    method is the aggregator's own plan without the event, fixed at the first plans that list it
    (``aggregator.programs.event_baselines``).
    """

    __tablename__ = "event_site_baselines"
    __table_args__ = (UniqueConstraint("event_id", "site_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("dispatch_events.id"))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    method: Mapped[str] = mapped_column(String(40))
    """The method's name: ``x_of_y``, ``same_day``, ``meter_before_after`` or ``counterfactual``."""
    parameters: Mapped[dict[str, Any]]
    """The whole method with its parameters, defaults written out (``{"method": "x_of_y", "x": 10, ...}``)."""
    timezone: Mapped[str] = mapped_column(String(64))
    """The site's IANA zone at notification: day matching compares local clock times."""
    excluded_days: Mapped[list[Any]] = mapped_column(default=list)
    """Local days (ISO dates) a day-matching baseline leaves out: earlier event days at the site."""
    declared_at: Mapped[dt.datetime]
    """When it was declared: when the event (or the version that first targeted the site) arrived."""


def _refuse_declaration_update(mapper: Mapper[Any], connection: Any, target: EventSiteBaseline) -> None:
    state = inspect(target)
    changed = [prop.key for prop in mapper.column_attrs if state.attrs[prop.key].history.has_changes()]
    if changed:
        raise ImmutableRowError(
            f"event_site_baselines row {target.id} (event {target.event_id}, site {target.site_id}) was "
            f"declared at notification and cannot be changed ({', '.join(changed)})"
        )


event.listen(EventSiteBaseline, "before_update", _refuse_declaration_update)
