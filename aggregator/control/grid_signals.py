"""Grid-operator signals in, flexibility out: the aggregator's side of :mod:`market_adapters.dispatch`.

An OpenADR adapter (:mod:`market_adapters.openadr2`, :mod:`market_adapters.openadr3`) hands every
:class:`~market_adapters.dispatch.GridSignal` to a :class:`GridSignalStore` (its ``SignalSink``) and asks
a :class:`PortfolioFlexibility` (its ``FlexibilityOracle``) what the portfolio can deliver and what it
metered.

Storing a signal (:meth:`GridSignalStore.store`), one :class:`~aggregator.db.models.DispatchEvent` row
per version, keyed by ``(source, event id, modification)``:

- a modification not stored yet, at least as high as the highest stored, is a new version (a
  cancellation is a version with status ``cancelled``); the sites it and the previous version apply to
  are asked to re-plan (reason ``event:<public id>``), and how it is measured at each site it applies
  to is declared, fixed from then on (:mod:`aggregator.programs.baseline_declarations`);
- a modification already stored is a *duplicate* (a VTN redelivers after a restart or a lost
  acknowledgement): counted, nothing written; a redelivery whose content differs is logged;
- a modification below the highest stored is *stale* (it arrived late): counted, ignored and logged.

A version's program is the signal's ``program_id`` when that is one of our programs, else
``program_map[program_id]`` (a VTN program name or id → our program id, from ``central.toml``), else
none: it is stored all the same and logged, but no site plans with it (see
:mod:`aggregator.control.dispatch_windows`). The sites a version applies to are its ``target_sites``, or, when
it names none, the sites enrolled in its program. Price signals are stored too (kind ``price``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import threading
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aggregator.control import schedules
from aggregator.control.replanning import ReplanRequests
from aggregator.db.models import DispatchEvent, Program, ProgramSite
from aggregator.ingestion.metering import DEFAULT_STEP, site_import_intervals
from aggregator.programs.baseline_declarations import declare_site_baselines
from aggregator.programs.flexibility import planned_steps
from aggregator.programs.kinds import rules_for
from market_adapters.dispatch import GridSignal, SignalKind

log = logging.getLogger(__name__)

Sessions = sessionmaker[Session]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ------------------------------------------------------------------------------------------ the sink


class GridSignalStoreError(RuntimeError):
    """The database refused a signal's version (a value outside its column's range); names the event."""


class StoreOutcome(enum.StrEnum):
    STORED = "stored"
    """A new version was written."""
    DUPLICATE = "duplicate"
    """This version was stored before; nothing written."""
    STALE = "stale"
    """A higher modification is stored; nothing written."""


@dataclass(frozen=True)
class StoredSignal:
    """What became of one signal."""

    outcome: StoreOutcome
    event_id: int
    """The event's public id (the row id of its first version)."""
    row_id: int
    """The row of this version (the stored one for a duplicate, the latest one for a stale signal)."""
    program_id: str | None
    """The program the stored version belongs to (``None``: not one of ours; it will not be planned)."""
    replans: tuple[str, ...] = ()
    """The sites asked to re-plan, sorted."""


class GridSignalStore:
    """A ``SignalSink`` that stores signals as dispatch event versions (see the module docstring).

    ``program_map`` maps a VTN's program name or id, as an adapter puts it in ``program_id``, to our
    program id. Await the store itself as the sink (the database work runs in a worker thread); call
    :meth:`store` from synchronous code. :attr:`counts` counts the outcomes (and ``unmapped`` versions).
    """

    def __init__(
        self,
        sessions: Sessions,
        replans: ReplanRequests,
        *,
        program_map: Mapping[str, str] | None = None,
    ) -> None:
        self._sessions = sessions
        self._replans = replans
        self.program_map = dict(program_map or {})
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def __call__(self, signal: GridSignal) -> None:
        await asyncio.to_thread(self.store, signal)

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def store(self, signal: GridSignal) -> StoredSignal:
        """Store ``signal`` as the next version of its event, unless it is a duplicate or stale."""
        what = f"{signal.source} event {signal.event_id!r} modification {signal.modification}"
        with self._sessions() as session:
            versions = self._versions(session, signal)
            outcome = self._known(versions, signal, what)
            if outcome is not None:
                self._count(outcome.outcome)
                return outcome
            program_id = self._program(session, signal, what)
            row = DispatchEvent.from_signal(signal)
            row.program_id = program_id
            session.add(row)
            try:
                session.commit()
            except DataError as error:
                session.rollback()
                message = f"{what}: the database refused it: {error.orig}"
                log.error("%s", message)
                raise GridSignalStoreError(message) from error
            except IntegrityError:
                session.rollback()
                versions = self._versions(session, signal)
                outcome = self._known(versions, signal, what)
                if outcome is None:
                    raise
                self._count(outcome.outcome)  # stored meanwhile by a concurrent delivery
                return outcome
            row_id = row.id
            event_id = min([row_id, *(version.id for version in versions)])
            try:  # how it is measured, fixed at notification
                declare_site_baselines(session, event_id)
                session.commit()
            except IntegrityError:  # a concurrent delivery of another version declared it first
                session.rollback()
            sites = set(self._sites(session, row))
            if versions:
                sites.update(self._sites(session, versions[-1]))  # what it applied to until now
        self._count(StoreOutcome.STORED)
        if program_id is None:
            self._count("unmapped")
        replans = tuple(sorted(sites))
        for site_id in replans:
            self._replans.request(site_id, f"event:{event_id}")
        log.info(
            "%s stored as dispatch event %d (%s, %s, program %s); re-plan %s",
            what,
            event_id,
            signal.kind,
            signal.status,
            program_id,
            ", ".join(replans) or "no site",
        )
        return StoredSignal(StoreOutcome.STORED, event_id, row_id, program_id, replans)

    @staticmethod
    def _versions(session: Session, signal: GridSignal) -> Sequence[DispatchEvent]:
        return session.scalars(
            select(DispatchEvent)
            .where(DispatchEvent.source == signal.source)
            .where(DispatchEvent.external_event_id == signal.event_id)
            .order_by(DispatchEvent.modification)
        ).all()

    @staticmethod
    def _known(versions: Sequence[DispatchEvent], signal: GridSignal, what: str) -> StoredSignal | None:
        """The outcome for a duplicate or stale signal; ``None`` for a new version."""
        if not versions:
            return None
        event_id = min(version.id for version in versions)
        same = next((v for v in versions if v.modification == signal.modification), None)
        if same is not None:
            differences = _differences(same, signal)
            if differences:
                log.warning(
                    "%s redelivered with different %s; the stored version (row %d) is kept",
                    what,
                    ", ".join(differences),
                    same.id,
                )
            else:
                log.debug("%s redelivered; already stored as row %d", what, same.id)
            return StoredSignal(StoreOutcome.DUPLICATE, event_id, same.id, same.program_id)
        latest = versions[-1]
        if signal.modification < latest.modification:
            log.warning(
                "%s is stale: modification %d is stored (row %d); ignored",
                what,
                latest.modification,
                latest.id,
            )
            return StoredSignal(StoreOutcome.STALE, event_id, latest.id, latest.program_id)
        return None

    def _program(self, session: Session, signal: GridSignal, what: str) -> str | None:
        named = signal.program_id
        if named is None:
            log.warning("%s names no program; stored without one (it will not be planned)", what)
            return None
        if session.get(Program, named) is not None:
            return named
        mapped = self.program_map.get(named)
        if mapped is None:
            log.warning(
                "%s: program %r is neither ours nor in program_map; stored without a program "
                "(it will not be planned)",
                what,
                named,
            )
            return None
        if session.get(Program, mapped) is None:
            log.error(
                "%s: program_map maps %r to %r, which is not one of our programs; stored without a "
                "program (it will not be planned)",
                what,
                named,
                mapped,
            )
            return None
        return mapped

    @staticmethod
    def _sites(session: Session, row: DispatchEvent) -> list[str]:
        """The sites a stored version applies to: its targets, else its program's enrolled sites."""
        if row.program_id is None:
            return []
        if row.target_sites:
            return [str(site_id) for site_id in row.target_sites]
        return list(
            session.scalars(select(ProgramSite.site_id).where(ProgramSite.program_id == row.program_id))
        )


def _differences(row: DispatchEvent, signal: GridSignal) -> list[str]:
    """The fields in which a stored version and a redelivery of it differ."""
    new = DispatchEvent.from_signal(signal)
    fields = ("kind", "status", "window_start", "window_end", "intervals", "currency", "target_sites")
    return [name for name in fields if getattr(row, name) != getattr(new, name)]


# ---------------------------------------------------------------------------------------- the oracle


class PortfolioFlexibility:
    """A ``FlexibilityOracle`` answering from the latest plans and from metered telemetry.

    The portfolio is the sites enrolled in ``programs`` (any program when ``None``). Each site's figure
    comes from its latest schedule version, over the plan steps that overlap the window ``[start, end)``
    (the part of it before ``clock()`` is left out: the past cannot be delivered), by the kind's rules
    (:attr:`aggregator.programs.kinds.KindRules.flexibility_kw`): what the import can drop below the
    plan in every step, within the power headroom
    (:func:`aggregator.control.schedules.flexibility_frame`) and within the energy the vehicles can move
    out of the window and take back before they leave, at their targets
    (:func:`aggregator.programs.flexibility.planned_steps`, :func:`~aggregator.programs.flexibility.held_kw`):

    - ``dr_reduction``: how far the site's import can drop below its plan, held in every step [kW];
    - ``v2g_export``: the net export its vehicles (discharge minus charge) can reach, held in every
      step, at least 0 [kW];
    - ``dr_cap``: the lowest import cap it can hold throughout [kW] (negative when the site can export
      throughout).

    The portfolio's figure is the sum over its sites. A site whose latest plan does not cover the window
    (no plan, a plan made for an earlier horizon, an unreadable plan) can promise nothing: it adds 0 kW
    of reduction or export, and makes the lowest holdable cap infinite (its import is unknown), as does
    an empty portfolio. ``price`` needs no flexibility: 0 kW.

    :meth:`metered_kw` is the portfolio's metered net import per 15-minute interval from ``start``
    [kW]: the sum of the mean import of the sites with readings in the interval (a site without any is
    left out of that interval: its data is missing, not zero); intervals without any reading are left out.
    """

    def __init__(
        self,
        sessions: Sessions,
        *,
        programs: Collection[str] | None = None,
        step: dt.timedelta = DEFAULT_STEP,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self._sessions = sessions
        self.programs = None if programs is None else frozenset(programs)
        self.step = step
        self._clock = clock

    async def available_kw(self, kind: SignalKind, start: dt.datetime, end: dt.datetime) -> float:
        """How many kW of ``kind`` the portfolio can deliver throughout ``[start, end)`` (see the class)."""
        figures = await asyncio.to_thread(self.by_site, kind, start, end)
        return portfolio_figure(kind, figures)

    async def metered_kw(self, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, float]]:
        """Metered net import of the portfolio in ``[start, end)`` as (interval start, kW)."""
        return await asyncio.to_thread(self.metered, start, end)

    # -- synchronous, for worker threads and tests

    def site_ids(self, session: Session) -> list[str]:
        """The enrolled sites of the portfolio, sorted."""
        query = select(ProgramSite.site_id).distinct().order_by(ProgramSite.site_id)
        if self.programs is not None:
            query = query.where(ProgramSite.program_id.in_(sorted(self.programs)))
        return list(session.scalars(query))

    def by_site(self, kind: SignalKind, start: dt.datetime, end: dt.datetime) -> dict[str, float | None]:
        """Each enrolled site's figure for ``kind`` in ``[start, end)`` [kW]; ``None`` where its latest
        plan does not cover the window."""
        start = max(start, self._clock())
        with self._sessions() as session:
            site_ids = self.site_ids(session)
            if rules_for(kind).flexibility_kw is None:  # a kind that needs none (a price)
                return dict.fromkeys(site_ids, 0.0)
            if end <= start:
                return dict.fromkeys(site_ids, None)
            latest = schedules.latest_version_ids(session, site_ids)
            figures: dict[str, float | None] = {}
            for site_id in site_ids:
                version_id = latest.get(site_id)
                figures[site_id] = (
                    None
                    if version_id is None
                    else self._site_figure(session, version_id, kind, start, end, self._clock())
                )
        return figures

    @staticmethod
    def _site_figure(
        session: Session,
        version_id: int,
        kind: SignalKind,
        start: dt.datetime,
        end: dt.datetime,
        now: dt.datetime,
    ) -> float | None:
        try:
            plan = schedules.load_plan(session, version_id)
            if not plan.covers(start, end):
                return None
            scenario = schedules.scenario_of(version_id, schedules.load_inputs(session, version_id))
            steps = planned_steps(plan, scenario, start, end, now)
        except (schedules.ScheduleDataError, ValueError) as error:
            log.error("flexibility: schedule version %d cannot be read: %s", version_id, error)
            return None
        return rules_for(kind).site_flexibility_kw(steps)

    def metered(self, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, float]]:
        """Synchronous :meth:`metered_kw`."""
        with self._sessions() as session:
            total: pd.Series | None = None
            for site_id in self.site_ids(session):
                means = site_import_intervals(session, site_id, start, end, self.step)
                reported = means.mean_kw.where(means.samples > 0)
                total = reported if total is None else total.add(reported, fill_value=0.0)
        if total is None:
            return []
        kept = total.dropna()
        return [
            (stamp.to_pydatetime(), float(kw))
            for stamp, kw in zip(pd.DatetimeIndex(kept.index), kept.to_numpy(dtype=float), strict=True)
        ]


def portfolio_figure(kind: SignalKind, figures: Mapping[str, float | None]) -> float:
    """The portfolio's figure from the sites' (see :class:`PortfolioFlexibility`) [kW]."""
    return rules_for(kind).portfolio_kw(figures)


__all__ = [
    "GridSignalStore",
    "GridSignalStoreError",
    "PortfolioFlexibility",
    "StoreOutcome",
    "StoredSignal",
    "portfolio_figure",
]
