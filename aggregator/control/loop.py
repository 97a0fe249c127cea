"""The rolling-horizon control loop: plan every site on a cadence and on request, store, publish.

::

    async with MqttSetpointPublisher(MqttPublisherSettings(host="broker")) as publisher:
        async with ControlLoop(make_sessionmaker(engine), publisher, replans, ControlSettings()) as loop:
            ...                                          # runs until the block exits
            version_id = await loop.plan_site("depot-north", "what_if")

One plan of one site (:meth:`ControlLoop.plan_site`):

1. inputs from the database (:func:`aggregator.control.inputs.site_plan_inputs`, in a worker thread);
2. solve (worker thread, ``solver_time_limit_s``). With dispatch events, the counterfactual (the site
   without them) is solved first and stored; its import, with each vehicle's power replaced by the
   baseline frozen when the event was first planned with that vehicle
   (:mod:`aggregator.programs.event_baselines`),
   is the event's baseline, stored as ``inputs["event_baselines"]`` (public event id → kW per step);
3. store a :class:`~aggregator.db.models.ScheduleVersion` superseding the site's previous one. Its
   status is the solver's (``optimal`` / ``feasible``). When the solver finds no schedule (time-out
   without an incumbent, a failure, an input the optimizer refuses), the previous version shifted to
   the new horizon start is stored instead (``shifted``), else the earliest-deadline-first heuristic
   of :mod:`optimizer.policies` (``heuristic``). With neither (an input refused and no earlier
   version), the version is an empty ``heuristic`` plan and no command is sent: the gateway's own
   earliest-deadline-first fallback keeps the site within its limits;
4. turn the plan into a :class:`~wire.contract.SetpointCommand`
   (:func:`aggregator.control.setpoints.setpoint_command`; a session stopped since step 1 gets none,
   and each setpoint names its session's transaction to a gateway that reads it), record it as a
   pending :class:`~aggregator.db.models.SetpointCommandRecord` and publish it. A site whose gateway is
   offline is planned and published all the same: QoS 1 keeps the command at the broker.

The loop plans each site when its cadence comes round (aligned to the clock: every ``cadence`` from
midnight UTC) and at once when :class:`~aggregator.control.replanning.ReplanRequests` names it; requests that
arrive together are merged into one plan whose trigger lists their reasons. Time is the injected
``clock``; the loop checks it at least every ``poll_s`` real seconds.

A dispatch event that applies to several sites is split among them inside one optimisation: planning
a site plans its whole group (:func:`aggregator.control.groups.portfolio_group`: the sites sharing
an active or pending event with it, transitively, at most ``max_group_sites``) with one call of the
loop's ``solve_group`` (by default :func:`~aggregator.control.groups.solve_portfolio_group`, which
solves a site without shared events exactly as before). Every site of the group gets its own version
(trigger, counterfactual and fallbacks as above), with its committed share of each shared event in
``inputs["event_shares"]`` (public event id → kW per step), and its own command. In the loop, a site
already planned in another's group is not planned again in the same pass; the group's trigger lists
the reasons of all its members. When a group plan fails outright (an error, not a solver failure),
its sites are planned one by one, so one site cannot stop the others.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self

from pydantic import ConfigDict, TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aggregator.control.groups import (
    MAX_GROUP_SITES,
    SiteSolution,
    SolveGroup,
    portfolio_group,
    solve_portfolio_group,
    solve_site,
    solve_sites_independently,
)
from aggregator.control.inputs import (
    PlanInputs,
    PlanningSettings,
    floor_time,
    plan_start,
    site_plan_inputs,
)
from aggregator.control.replanning import ReplanRequests
from aggregator.control.schedules import (
    PlanDocument,
    ScheduleDataError,
    empty_plan_document,
    plan_document,
    plan_of,
    shifted_plan_document,
)
from aggregator.control.setpoints import SetpointPublisher, gateway_reads, open_transactions, setpoint_command
from aggregator.db.models import (
    CommandStatus,
    GatewayStatusRecord,
    ScheduleStatus,
    ScheduleVersion,
    SetpointCommandRecord,
    Site,
    utcnow,
)
from optimizer.online import DEFAULT_URGENCY_WEIGHT
from optimizer.solve import SolverOptions
from wire.contract import GatewayState, SetpointCommand

log = logging.getLogger(__name__)

TRIGGER_MAX_CHARS = 200
"""Length of ``schedule_versions.trigger``."""


@dataclass(frozen=True)
class ControlSettings:
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")
    """For :meth:`ControlSettings.from_mapping`: unknown keys are refused."""

    cadence: dt.timedelta = dt.timedelta(minutes=15)
    """Every site is planned at least this often (on the clock's multiples of it)."""
    solver_time_limit_s: float = 10.0
    """Wall-clock limit of each solve [s]; on time-out the best schedule found is used."""
    mip_gap: float = 0.005
    setpoint_validity: dt.timedelta = dt.timedelta(hours=1)
    """How long a published command holds; the gateway falls back to local rules after it."""
    urgency_weight: float = DEFAULT_URGENCY_WEIGHT
    """Least-laxity tie-breaker [currency/kWh per step]: charge early where it costs nothing."""
    replan_gather_s: float = 0.0
    """How long a re-plan request waits for others [s, on the loop's time], so that simultaneous
    arrivals are planned once, in one order (0: at once)."""
    poll_s: float = 1.0
    """Longest real wait between two looks at the clock [s]."""
    planning: PlanningSettings = field(default_factory=PlanningSettings)
    """Horizon, step, defaults and tariffs of the plans."""
    max_group_sites: int = MAX_GROUP_SITES
    """Most sites planned together in one model for the dispatch events they share."""

    def __post_init__(self) -> None:
        for name in ("cadence", "setpoint_validity"):
            if getattr(self, name) <= dt.timedelta(0):
                raise ValueError(f"control settings: {name} must be positive, got {getattr(self, name)}")
        if self.max_group_sites < 1:
            raise ValueError(
                f"control settings: max_group_sites must be at least 1, got {self.max_group_sites}"
            )
        if self.poll_s <= 0 or self.solver_time_limit_s < 0:
            raise ValueError(
                f"control settings: poll_s must be > 0 and solver_time_limit_s >= 0, got {self.poll_s} "
                f"and {self.solver_time_limit_s}"
            )

    @property
    def horizon(self) -> dt.timedelta:
        return self.planning.horizon

    def solver_options(self) -> SolverOptions:
        return SolverOptions(time_limit=self.solver_time_limit_s, mip_gap=self.mip_gap)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ControlSettings:
        """Settings from a configuration table (durations as seconds or ISO 8601, ``planning`` a nested
        table); :class:`ValueError` naming the first bad field."""
        try:
            return TypeAdapter(cls).validate_python(dict(values))
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"control settings: {where}: {first['msg']}") from error


# ---------------------------------------------------------------------------------------- documents


def shifted_plan(
    previous: ScheduleVersion,
    inputs: PlanInputs,
    horizon_start: dt.datetime,
    step: dt.timedelta,
    n_steps: int,
) -> PlanDocument | None:
    """``previous``'s plan moved to start at ``horizon_start``, for the sessions still open; steps it
    does not cover are 0. ``None`` if it cannot be shifted (another step, nothing left of it, or a
    stored plan that cannot be read)."""
    if previous.step_seconds != int(step.total_seconds()) or horizon_start < previous.horizon_start:
        return None
    try:
        stored = plan_of(previous)
    except ScheduleDataError as error:
        log.warning("site %s: the previous plan cannot be shifted: %s", previous.site_id, error)
        return None
    return shifted_plan_document(stored, horizon_start, n_steps, inputs.sessions)


def _inputs_document(solution: SiteSolution) -> dict[str, Any]:
    """``schedule_versions.inputs``: :meth:`PlanInputs.to_json` plus, with dispatch events,
    ``event_baselines`` (public event id → the baseline import [kW] per step the plan was made
    against) and, for a site planned with others, ``event_shares`` (public event id → committed kW
    per step) and ``portfolio`` (the joint model)."""
    document: dict[str, Any] = dict(solution.inputs.to_json(solution.scenario))
    if solution.event_baselines:
        document["event_baselines"] = {
            str(event): kw for event, kw in sorted(solution.event_baselines.items())
        }
    if solution.event_shares:
        document["event_shares"] = {str(event): kw for event, kw in sorted(solution.event_shares.items())}
    if solution.portfolio is not None:
        document["portfolio"] = solution.portfolio
    return document


def _json_ready(document: Mapping[str, object]) -> dict[str, Any]:
    """JSON types only, and no NaN or infinity (PostgreSQL's JSON refuses them): those become null."""

    def finite(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    loaded: dict[str, object] = json.loads(json.dumps(document, default=float))
    return {key: finite(value) for key, value in loaded.items()}


@dataclass(frozen=True)
class _Outcome:
    """What one plan stores: the version's status, its plan and its result summary."""

    status: ScheduleStatus
    plan: PlanDocument
    summary: dict[str, Any]


def _latest_version(session: Session, site_id: str) -> ScheduleVersion | None:
    """The site's latest version by id: the one a new version supersedes and falls back to."""
    return session.scalars(
        select(ScheduleVersion)
        .where(ScheduleVersion.site_id == site_id)
        .order_by(ScheduleVersion.id.desc())
        .limit(1)
    ).first()


def _add_command_record(session: Session, command: SetpointCommand, version_id: int) -> None:
    """``command`` as a pending ``setpoint_commands`` row of version ``version_id``; a site whose
    gateway is offline gets it all the same (QoS 1 keeps it at the broker), with a log line."""
    session.add(
        SetpointCommandRecord(
            command_id=command.command_id,
            site_id=command.site_id,
            schedule_version_id=version_id,
            issued_at=command.issued_at,
            valid_until=command.valid_until,
            payload=command.model_dump(mode="json"),
            status=CommandStatus.PENDING,
        )
    )
    gateway = session.get(GatewayStatusRecord, command.site_id)
    if gateway is not None and gateway.state is GatewayState.OFFLINE:
        ids = {"site_id": command.site_id, "command_id": command.command_id}
        log.info("site %s: gateway offline; command %s queued at the broker", *ids.values(), extra=ids)


# --------------------------------------------------------------------------------------------- loop


@dataclass
class ControlStats:
    plans: int = 0
    """Plans completed: the schedule version stored and its command handed to the publisher."""
    failures: int = 0
    """Plans where the solver gave no schedule, and plans that an error stopped."""
    fallbacks: int = 0
    """Versions stored as ``shifted`` or as the ``heuristic`` because the solver gave no schedule."""
    published: int = 0
    failure_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    """:attr:`failures` by reason: ``solver`` (no schedule), ``error`` (an error stopped the plan),
    ``group`` (finding the site's group failed)."""
    fallback_statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    """:attr:`fallbacks` by the status stored: ``shifted`` or ``heuristic``."""
    planned_at: dict[str, dt.datetime] = field(default_factory=dict)
    """Each site's latest stored version: when it was planned (the loop's clock)."""
    passes: int = 0
    """Passes of the loop over its sites completed."""
    last_pass_at: dt.datetime | None = None
    """When the last pass ended (the loop's clock); ``None`` before the first."""
    on_solve: Callable[[float], None] | None = field(default=None, repr=False)
    """Told each group solve's duration [s, the event loop's time] (a metrics histogram)."""


class ControlLoop:
    """Async context manager running the control loop (see the module docstring)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: SetpointPublisher,
        replans: ReplanRequests,
        settings: ControlSettings | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        *,
        plan_inputs: Callable[[Session, str, dt.datetime, PlanningSettings], PlanInputs] = site_plan_inputs,
        solve_group: SolveGroup = solve_portfolio_group,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self.replans = replans
        self.settings = settings or ControlSettings()
        self._clock = clock
        self._plan_inputs = plan_inputs
        self._solve_group = solve_group
        self.stats = ControlStats()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._loop: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._loop = self._tasks.create_task(self._run(), name="control-loop")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tasks is not None and self._loop is not None
        self._loop.cancel()
        try:
            await self._tasks.__aexit__(exc_type, exc, tb)
        finally:
            self._tasks = None

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._loop.done()

    # ----------------------------------------------------------------------------------- one plan

    async def plan_site(self, site_id: str, trigger: str, *, publish: bool = True) -> int:
        """Plan ``site_id`` now with the sites it shares dispatch events with (:meth:`plan_with_group`),
        store the versions, publish the commands; ``site_id``'s version id.

        Raises :class:`~aggregator.control.inputs.SiteNotFoundError` for an unknown site.
        """
        return (await self.plan_with_group(site_id, trigger, publish=publish))[site_id]

    async def plan_with_group(self, site_id: str, trigger: str, *, publish: bool = True) -> dict[str, int]:
        """Plan ``site_id`` and its group (module docstring) as one; site id → version id."""
        group = await asyncio.to_thread(self.group_of, site_id, self._clock())
        return await self.plan_group(group, trigger, publish=publish)

    def group_of(self, site_id: str, now: dt.datetime) -> list[str]:
        """``site_id`` and the sites it is to be planned with at ``now``, ``site_id`` first."""
        planning = self.settings.planning
        start = plan_start(now)
        with self._sessions() as session:
            return portfolio_group(
                session,
                site_id,
                start,
                start + planning.n_steps * planning.step,
                planning.step,
                self.settings.max_group_sites,
            )

    async def plan_group(
        self, site_ids: Sequence[str], trigger: str, *, publish: bool = True
    ) -> dict[str, int]:
        """Plan a group of sites with one call of ``solve_group``; site id → version id."""
        locks = [self._locks.setdefault(site_id, asyncio.Lock()) for site_id in sorted(set(site_ids))]
        for lock in locks:
            await lock.acquire()
        try:
            now = self._clock()
            group = [await asyncio.to_thread(self._build_inputs, site_id, now) for site_id in site_ids]
            started = asyncio.get_running_loop().time()
            solutions = await asyncio.to_thread(
                self._solve_group, group, self.settings.solver_options(), self.settings.urgency_weight
            )
            if self.stats.on_solve is not None:
                self.stats.on_solve(asyncio.get_running_loop().time() - started)
            versions = {}
            for solution in solutions:
                version_id, command = await asyncio.to_thread(self._store, solution, trigger, now)
                versions[solution.inputs.site_id] = version_id
                self.stats.planned_at[solution.inputs.site_id] = now
                if command is not None and publish:
                    await self._publisher.publish(command)
                    self.stats.published += 1
                self.stats.plans += 1
            return versions
        finally:
            for lock in locks:
                lock.release()

    def _build_inputs(self, site_id: str, now: dt.datetime) -> PlanInputs:
        with self._sessions() as session:
            return self._plan_inputs(session, site_id, now, self.settings.planning)

    def _store(
        self, solution: SiteSolution, trigger: str, now: dt.datetime
    ) -> tuple[int, SetpointCommand | None]:
        """One transaction: the new version (or its fallback) and its command record; then the
        statistics."""
        site_id = solution.inputs.site_id
        with self._sessions() as session, session.begin():
            previous = _latest_version(session, site_id)
            outcome = self._outcome(solution, previous, self.settings.planning)
            version = self._add_version(session, solution, outcome, previous, trigger, now)
            command = self._command(session, version, solution.inputs, now)
            if command is not None:
                _add_command_record(session, command, version.id)
            version_id = version.id
        self._count(solution, outcome.status)
        command_id = None if command is None else command.command_id
        ids = {"site_id": site_id, "schedule_version": version_id, "command_id": command_id}
        message = "site %s: schedule version %d (%s, %s), command %s"
        log.info(message, site_id, version_id, outcome.status.value, trigger, command_id, extra=ids)
        return version_id, command

    @staticmethod
    def _outcome(
        solution: SiteSolution, previous: ScheduleVersion | None, planning: PlanningSettings
    ) -> _Outcome:
        """Status, plan and summary of the version to store, falling back as the module docstring says."""
        inputs, result = solution.inputs, solution.result
        if result is not None and not solution.solver_failed:
            return _Outcome(ScheduleStatus(result.status.value), plan_document(result), result.summary())
        why = solution.error or (result.message if result is not None else "no schedule")
        if previous is not None:
            shifted = shifted_plan(previous, inputs, inputs.scenario.start, planning.step, planning.n_steps)
            if shifted is not None:
                log.warning(
                    "site %s: no new schedule (%s); version %d shifted", inputs.site_id, why, previous.id
                )
                summary = {"status": "shifted", "message": why, "shifted_from": previous.id}
                return _Outcome(ScheduleStatus.SHIFTED, shifted, summary)
        if result is not None:
            log.warning("site %s: no schedule from the solver (%s); heuristic used", inputs.site_id, why)
            return _Outcome(ScheduleStatus.HEURISTIC, plan_document(result), result.summary())
        log.error("site %s: no schedule at all (%s); the gateway's own fallback applies", inputs.site_id, why)
        return _Outcome(
            ScheduleStatus.HEURISTIC,
            empty_plan_document(planning.n_steps),
            {"status": "heuristic", "message": why, "empty": True},
        )

    def _add_version(
        self,
        session: Session,
        solution: SiteSolution,
        outcome: _Outcome,
        previous: ScheduleVersion | None,
        trigger: str,
        now: dt.datetime,
    ) -> ScheduleVersion:
        """The version row of ``outcome``, superseding ``previous``, flushed (so it has its id)."""
        counterfactual = solution.counterfactual
        version = ScheduleVersion(
            site_id=solution.inputs.site_id,
            created_at=now,
            horizon_start=solution.inputs.scenario.start,
            step_seconds=int(self.settings.planning.step.total_seconds()),
            trigger=trigger[:TRIGGER_MAX_CHARS],
            inputs=_json_ready(_inputs_document(solution)),
            result_summary=_json_ready(outcome.summary),
            status=outcome.status,
            plan=_json_ready(outcome.plan.model_dump()),
            counterfactual=(
                _json_ready(plan_document(counterfactual).model_dump())
                if counterfactual is not None
                else None
            ),
            supersedes_id=previous.id if previous is not None else None,
        )
        session.add(version)
        session.flush()
        return version

    def _command(
        self, session: Session, version: ScheduleVersion, inputs: PlanInputs, now: dt.datetime
    ) -> SetpointCommand | None:
        """The command of ``version``'s plan as stored (``None`` if it plans no EVSE): sessions stopped
        since the inputs were read get none, and each setpoint names its session's transaction when
        the site's gateway said it reads that field (its latest status's ``reads``)."""
        plan = plan_of(version)
        sessions = [v.session_id for v in plan.vehicles if v.session_id is not None]
        transactions = open_transactions(session, sessions)
        return setpoint_command(
            plan,
            inputs.evses,
            now=now,
            validity=self.settings.setpoint_validity,
            transactions=transactions,
            reads=gateway_reads(session, plan.site_id),
        )

    def _count(self, solution: SiteSolution, status: ScheduleStatus) -> None:
        """:class:`ControlStats` of one stored version: a solver failure, a fallback."""
        if solution.solver_failed:
            self.stats.failures += 1
            self.stats.failure_reasons["solver"] += 1
        if status is ScheduleStatus.SHIFTED or (
            solution.solver_failed and status is ScheduleStatus.HEURISTIC
        ):
            self.stats.fallbacks += 1
            self.stats.fallback_statuses[status.value] += 1

    # ---------------------------------------------------------------------------------------- loop

    async def _run(self) -> None:
        cadence = self.settings.cadence
        next_due: dict[str, dt.datetime] = {}
        pending: dict[str, list[str]] = {}
        while True:
            now = self._clock()
            site_ids = await asyncio.to_thread(self._site_ids)
            for site_id in site_ids:
                if next_due.get(site_id, now) <= now:
                    pending.setdefault(site_id, []).insert(0, "cadence")
                    next_due[site_id] = floor_time(now, cadence) + cadence
            planned: set[str] = set()
            for site_id, reasons in sorted(pending.items()):
                if site_id not in site_ids:
                    log.warning(
                        "control: re-plan asked for unknown site %r (%s)", site_id, ", ".join(reasons)
                    )
                    continue
                if site_id not in planned:
                    planned |= await self._plan_in_pass(site_id, now, pending, site_ids)
            pending = {}
            self.stats.passes += 1
            self.stats.last_pass_at = self._clock()
            wait = min(
                [(due - self._clock()).total_seconds() for due in next_due.values()],
                default=self.settings.poll_s,
            )
            requests = [await self.replans.wait(min(max(wait, 0.0), self.settings.poll_s))]
            if requests[0] and self.settings.replan_gather_s > 0:
                # what arrives together is planned together, whatever order it was stored in
                await asyncio.sleep(self.settings.replan_gather_s)
                requests.append(self.replans.take())
            for site_id, reasons in ((k, v) for batch in requests for k, v in batch.items()):
                pending.setdefault(site_id, []).extend(reasons)

    async def _plan_in_pass(
        self, site_id: str, now: dt.datetime, pending: Mapping[str, list[str]], site_ids: set[str]
    ) -> set[str]:
        """Plan ``site_id``'s group for one pass of the loop; the sites it covered. The trigger lists
        every pending reason of the group's sites. An error planning the group plans its sites one by
        one; an error planning one site is counted and logged, and the loop goes on."""
        try:
            group = [s for s in await asyncio.to_thread(self.group_of, site_id, now) if s in site_ids]
        except Exception:
            self.stats.failures += 1
            self.stats.failure_reasons["group"] += 1
            log.exception("control: finding the group of site %s failed", site_id)
            group = [site_id]
        trigger = ",".join(dict.fromkeys(r for s in group for r in pending.get(s, ())))
        try:
            await self.plan_group(group, trigger)
            return set(group)
        except Exception:  # one site's failure must not stop the others or the loop
            self.stats.failures += 1
            self.stats.failure_reasons["error"] += 1
            log.exception("control: planning sites %s failed", ", ".join(group))
        if len(group) > 1:
            for member in group:
                member_trigger = ",".join(dict.fromkeys(pending.get(member, ["group"])))
                try:
                    await self.plan_group([member], member_trigger)
                except Exception:
                    self.stats.failures += 1
                    self.stats.failure_reasons["error"] += 1
                    log.exception("control: planning site %s failed", member)
        return set(group)

    def _site_ids(self) -> set[str]:
        with self._sessions() as session:
            return set(session.scalars(select(Site.id)))


__all__ = [
    "MAX_GROUP_SITES",
    "ControlLoop",
    "ControlSettings",
    "ControlStats",
    "SiteSolution",
    "SolveGroup",
    "shifted_plan",
    "solve_site",
    "solve_sites_independently",
]
