"""Dispatch events that apply to one site over a planning horizon, as windows on the step grid.

Which events: the latest version of each (highest ``modification`` per ``(source,
external_event_id)``), not cancelled, of a kind that sites plan for
(:data:`aggregator.programs.kinds.PLANNED_KINDS`: not a price signal, which commits nothing),
overlapping the horizon, of a program the site is enrolled in (``program_sites``), whose
``target_sites`` name the site or are empty (the whole program). Each interval of an event is one
:class:`EventWindow`, clipped to the horizon and widened to the step grid (a commitment is never
shortened). Price and penalty per kWh are what settlement pays and charges
(:func:`aggregator.programs.terms.event_payment_terms`): the event row's, else the program's
``payment_terms`` ``per_kwh_delivered`` / ``penalty_per_kwh_short``, else 0. An event planned with
neither (nothing to gain by delivering) gets a line in ``notes`` that says it is planned as unpaid,
and why: its program is declared unpaid (``Program.unpaid``), or its terms pay nothing per kWh.

Each window names the event's public id (its first version's row id, see
:mod:`aggregator.programs.dispatch_events`) and the sites the event applies to: its ``target_sites`` that are
enrolled in its program, or every enrolled site when it names none. An event applying to several
sites is planned for them together (:mod:`aggregator.control.groups`).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sqlalchemy.orm import Session

from aggregator.db.models import DispatchEvent, Program, ProgramSite
from aggregator.programs.dispatch_events import latest_versions
from aggregator.programs.kinds import PLANNED_KINDS
from aggregator.programs.terms import event_payment_terms
from market_adapters.dispatch import SignalKind, SignalStatus


@dataclass(frozen=True)
class EventWindow:
    """One interval of a dispatch event, on the horizon's step grid, before it has a baseline."""

    event_id: int
    """``dispatch_events.id`` of the version used."""
    position: int
    """Which of the event's intervals."""
    kind: SignalKind
    start: dt.datetime
    end: dt.datetime
    value_kw: float
    """Reduction, cap or export [kW], by ``kind``."""
    price_per_kwh: float
    penalty_per_kwh: float
    public_id: int
    """The event's public id: the row id of its first version."""
    site_ids: tuple[str, ...]
    """Every site the event applies to (sorted), this one included."""

    @property
    def scenario_id(self) -> str:
        return f"dispatch-{self.event_id}-{self.position}"

    @property
    def shared(self) -> bool:
        """Whether the event applies to more than one site."""
        return len(self.site_ids) > 1


def site_event_windows(
    session: Session,
    site_id: str,
    start: dt.datetime,
    end: dt.datetime,
    step: dt.timedelta,
    notes: list[str] | None = None,
) -> list[EventWindow]:
    """The windows of every event that applies to ``site_id`` between ``start`` (on the step grid) and
    ``end``; an interval that cannot be used is skipped with a line in ``notes``."""
    notes = notes if notes is not None else []

    def floor(moment: dt.datetime) -> dt.datetime:
        return start + ((moment - start) // step) * step

    rows = session.execute(
        latest_versions()
        .add_columns(Program)
        .join(Program, Program.id == DispatchEvent.program_id)
        .join(ProgramSite, (ProgramSite.program_id == Program.id) & (ProgramSite.site_id == site_id))
        .where(
            DispatchEvent.status != SignalStatus.CANCELLED,
            DispatchEvent.kind.in_(sorted(PLANNED_KINDS)),
            DispatchEvent.window_start < end,
            DispatchEvent.window_end > start,
        )
        .order_by(DispatchEvent.id)
    ).all()
    windows: list[EventWindow] = []
    for public_id, event, program in rows:
        targets = event.target_sites or []
        if targets and site_id not in targets:
            continue
        enrolled = [site.id for site in program.sites]
        site_ids = tuple(sorted(s for s in enrolled if not targets or s in targets))
        try:
            terms = event_payment_terms(program, event)  # what settlement will pay and charge
            price, penalty = float(terms.per_kwh_delivered), float(terms.penalty_per_kwh_short)
        except ValueError as error:
            notes.append(f"dispatch event {event.id}: {error}; planned as unpaid")
            price, penalty = 0.0, 0.0
        else:
            if price == 0 and penalty == 0:
                why = (
                    "is declared unpaid"
                    if program.unpaid
                    else "pays nothing per kWh delivered and charges nothing per kWh short"
                )
                notes.append(f"dispatch event {event.id}: program {program.id!r} {why}; planned as unpaid")
        for position, interval in enumerate(event.intervals or []):
            parsed = _interval(interval)
            if parsed is None:
                notes.append(f"dispatch event {event.id}: interval {position} is malformed; skipped")
                continue
            first, last, value = parsed
            if value < 0:
                notes.append(f"dispatch event {event.id}: interval {position} value {value} kW skipped")
                continue
            first = max(floor(first), start)
            last = min(floor(last - dt.timedelta(microseconds=1)) + step, end)
            if last <= first:
                continue
            windows.append(
                EventWindow(
                    event.id, position, event.kind, first, last, value, price, penalty, public_id, site_ids
                )
            )
    return windows


def _interval(interval: object) -> tuple[dt.datetime, dt.datetime, float] | None:
    """``(start, end, value)`` of one stored interval, ``None`` if it is not one."""
    if not isinstance(interval, dict):
        return None
    try:
        first = dt.datetime.fromisoformat(interval["start"])
        last = dt.datetime.fromisoformat(interval["end"])
        value = float(interval["value"])
    except (KeyError, TypeError, ValueError):
        return None
    if first.utcoffset() is None or last.utcoffset() is None or not math.isfinite(value):
        return None
    return first, last, value


__all__ = ["EventWindow", "site_event_windows"]
