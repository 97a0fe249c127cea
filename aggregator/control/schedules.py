"""Schedule versions: the stored plan typed, as pandas, JSON-ready rows and CSV; plans in force; flexibility.

A :class:`~aggregator.db.models.ScheduleVersion` stores its plan as JSON (``{"site_import_kw": [...],
"vehicles": {scenario vehicle id: {"power_kw": [...], "evse_id": str}}}``, one value per step from
``horizon_start``, positive = import / charging, in kW) and what it was made from in ``inputs``
(``{"scenario": optimizer Scenario JSON, "sessions": {scenario vehicle id: charging_sessions.id},
"events": [...]}``). This module is the one place that reads or writes a plan's keys; everything
else holds a :class:`StoredPlan`:

- :class:`PlanDocument`: the stored JSON (pydantic, the database boundary); ``counterfactual`` has the
  same shape;
- :func:`read_plan` / :func:`plan_of` / :class:`StoredPlan`: a version's plan as arrays, a per-step
  frame, CSV; :func:`read_counterfactual`: its counterfactual, read as leniently as it is written;
  a document that does not have the shape raises :class:`ScheduleDataError` naming version and field;
- :func:`plan_document` (:func:`plan_json`), :func:`empty_plan_document`,
  :func:`shifted_plan_document`: the plan made from an optimizer result, for no schedule, and from
  an earlier plan (what the control loop writes);
- :func:`latest_version_ids`, :func:`plans_in_force`: which version applies when;
- :func:`on_grid`: any per-step table on a clock-aligned grid (15 min by default), so plans of
  different step lengths can be compared with metered intervals and summed over sites;
- :func:`flexibility_frame`: the up and down power a plan leaves room for, step by step.

Times are aware UTC throughout; a step ``k`` covers ``[horizon_start + k * step, ... + (k + 1) * step)``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import io
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aggregator.db.models import ScheduleVersion
from optimizer import Problem, Scenario, ScheduleResult, build_problem

GRID = dt.timedelta(minutes=15)
"""The common grid plans are compared and summed on (the metering interval)."""

Aggregation = Literal["mean", "sum", "min"]


class ScheduleDataError(ValueError):
    """A stored schedule version whose plan or inputs do not have the documented shape."""

    def __init__(self, version_id: int, field: str, problem: str) -> None:
        self.version_id = version_id
        self.field = field
        super().__init__(f"schedule version {version_id}: {field} {problem}")


class PlannedVehicleDocument(BaseModel):
    """One vehicle of a stored plan, as JSON: ``plan["vehicles"][scenario vehicle id]``."""

    model_config = ConfigDict(strict=True, frozen=True)

    power_kw: list[float | None]
    """Grid-side power per step [kW]; ``null`` where a value was not finite when written."""
    evse_id: str = ""
    """The EVSE the vehicle is on, as the scenario names it."""


class PlanDocument(BaseModel):
    """``schedule_versions.plan`` (and ``.counterfactual``) as stored: the JSON side of :class:`StoredPlan`.

    Strict: numbers must be JSON numbers and the EVSE id a string; unknown keys are ignored.
    """

    model_config = ConfigDict(strict=True, frozen=True)

    site_import_kw: list[float | None]
    """Net import at the grid connection per step [kW]; ``null`` where not finite when written."""
    vehicles: dict[str, PlannedVehicleDocument] = Field(default_factory=dict)
    """Scenario vehicle id → its plan."""


@dataclass(frozen=True)
class VehiclePlan:
    id: str
    """The vehicle's id in the version's scenario."""
    evse_id: str
    """Its EVSE in the scenario; ``""`` if the stored plan names none."""
    power_kw: np.ndarray
    """Planned grid-side power per step [kW]; positive charging, negative discharging (V2G)."""
    session_id: int | None = None
    """The ``charging_sessions.id`` the vehicle stands for, when ``inputs["sessions"]`` names it."""


@dataclass(frozen=True)
class StoredPlan:
    """One version's plan (or counterfactual) as arrays.

    Read with :func:`read_plan`, every series has :attr:`n_steps` finite-or-NaN values. Read with
    :func:`read_counterfactual`, ``NaN`` stands for a value not stored and a vehicle's series may be
    shorter than the site's: read it step by step (its means), not as a :meth:`frame`.
    """

    version_id: int
    site_id: str
    horizon_start: dt.datetime
    step: dt.timedelta
    site_import_kw: np.ndarray
    """Planned net import at the grid connection per step [kW]; negative when the site exports."""
    vehicles: tuple[VehiclePlan, ...]

    @property
    def n_steps(self) -> int:
        return len(self.site_import_kw)

    @property
    def horizon_end(self) -> dt.datetime:
        return self.horizon_start + self.n_steps * self.step

    @property
    def step_hours(self) -> float:
        return self.step.total_seconds() / 3600

    @property
    def index(self) -> pd.DatetimeIndex:
        """UTC start of every step."""
        return pd.date_range(self.horizon_start, periods=self.n_steps, freq=self.step, tz=dt.UTC)

    def covers(self, start: dt.datetime, end: dt.datetime) -> bool:
        return self.horizon_start <= start and end <= self.horizon_end

    def vehicle(self, vehicle_id: str) -> VehiclePlan | None:
        """The plan of scenario vehicle ``vehicle_id``, if the plan has one."""
        return next((vehicle for vehicle in self.vehicles if vehicle.id == vehicle_id), None)

    def frame(self) -> pd.DataFrame:
        """One row per step, indexed by its UTC start: ``site_import_kw`` and one column per vehicle [kW]."""
        columns = {"site_import_kw": self.site_import_kw}
        columns.update({vehicle.id: vehicle.power_kw for vehicle in self.vehicles})
        return pd.DataFrame(columns, index=self.index.rename("start"))

    def flows(self) -> pd.DataFrame:
        """Per step: ``site_import_kw`` [kW] and the vehicles' energy charged / discharged [kWh]."""
        powers = np.array([vehicle.power_kw for vehicle in self.vehicles]).reshape(-1, self.n_steps)
        return pd.DataFrame(
            {
                "site_import_kw": self.site_import_kw,
                "ev_charge_kwh": np.maximum(powers, 0.0).sum(axis=0) * self.step_hours,
                "ev_discharge_kwh": np.maximum(-powers, 0.0).sum(axis=0) * self.step_hours,
            },
            index=self.index,
        )


# ------------------------------------------------------------------------------------ reading

_PROBLEMS = {
    "missing": "is missing",
    "float_type": "is not a number",
    "string_type": "is not a string",
    "list_type": "is not a list",
    "dict_type": "is not an object",
    "model_type": "is not an object",
}
"""Pydantic's error types, in the words of :class:`ScheduleDataError`."""


def _field(column: str, loc: tuple[int | str, ...]) -> str:
    """``("vehicles", "ev-1", "power_kw", 3)`` in ``plan`` → ``plan.vehicles['ev-1'].power_kw[3]``."""
    field = column
    for position, part in enumerate(loc):
        if isinstance(part, int):
            field += f"[{part}]"
        elif position > 0 and loc[position - 1] == "vehicles":
            field += f"[{part!r}]"
        else:
            field += f".{part}"
    return field


def _problem(error: ErrorDetails) -> str:
    problem = _PROBLEMS.get(error["type"], f"is not valid ({error['msg']})")
    if error["type"] == "missing":
        return problem
    shown = repr(error["input"])
    return f"{problem}: {shown if len(shown) <= 60 else shown[:57] + '...'}"


def _document(version_id: int, column: str, raw: object) -> PlanDocument:
    """``raw`` (the JSON of column ``column``) as a :class:`PlanDocument`, or the first thing wrong."""
    try:
        return PlanDocument.model_validate(raw)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise ScheduleDataError(version_id, _field(column, first["loc"]), _problem(first)) from error


def planned_sessions(sessions: object) -> dict[str, int]:
    """``inputs["sessions"]`` as scenario vehicle id → ``charging_sessions.id`` (entries that are not
    an id are left out; anything but an object is no sessions)."""
    if not isinstance(sessions, Mapping):
        return {}
    return {str(key): value for key, value in sessions.items() if isinstance(value, int)}


def read_plan(
    version_id: int,
    site_id: str,
    horizon_start: dt.datetime,
    step_seconds: int,
    plan: object,
    sessions: object = None,
) -> StoredPlan:
    """Parse a stored plan (``ScheduleVersion.plan``; ``sessions`` is ``inputs["sessions"]``, for the
    vehicles' session ids); raise :class:`ScheduleDataError` naming the field. Every series must have
    as many values as ``site_import_kw``, and none may be ``null``."""
    return _read(version_id, site_id, horizon_start, step_seconds, "plan", plan, sessions)


def read_counterfactual(
    version_id: int,
    site_id: str,
    horizon_start: dt.datetime,
    step_seconds: int,
    counterfactual: object,
    sessions: object = None,
) -> StoredPlan | None:
    """Parse a stored counterfactual (``ScheduleVersion.counterfactual``); ``None`` if the version has
    none. As :func:`read_plan`, but a ``null`` is ``NaN`` and each series keeps its own length (a
    step it does not reach is not known)."""
    if counterfactual is None:
        return None
    return _read(version_id, site_id, horizon_start, step_seconds, "counterfactual", counterfactual, sessions)


def _read(
    version_id: int,
    site_id: str,
    horizon_start: dt.datetime,
    step_seconds: int,
    column: Literal["plan", "counterfactual"],
    raw: object,
    sessions: object,
) -> StoredPlan:
    document = _document(version_id, column, raw)

    def series(field: str, values: list[float | None], length: int | None) -> np.ndarray:
        if column == "counterfactual":
            return np.asarray([math.nan if value is None else value for value in values], dtype=float)
        if None in values:
            raise ScheduleDataError(version_id, f"{field}[{values.index(None)}]", "is null")
        if length is not None and len(values) != length:
            raise ScheduleDataError(
                version_id, field, f"has {len(values)} values, the plan has {length} steps"
            )
        return np.asarray(values, dtype=float)

    site_import = series(f"{column}.site_import_kw", document.site_import_kw, None)
    session_ids = planned_sessions(sessions)
    return StoredPlan(
        version_id=version_id,
        site_id=site_id,
        horizon_start=horizon_start.astimezone(dt.UTC),
        step=dt.timedelta(seconds=step_seconds),
        site_import_kw=site_import,
        vehicles=tuple(
            VehiclePlan(
                id=vehicle_id,
                evse_id=entry.evse_id,
                power_kw=series(
                    f"{column}.vehicles[{vehicle_id!r}].power_kw", entry.power_kw, len(site_import)
                ),
                session_id=session_ids.get(vehicle_id),
            )
            for vehicle_id, entry in document.vehicles.items()
        ),
    )


def plan_of(version: ScheduleVersion) -> StoredPlan:
    """The plan of a loaded version (reads ``plan`` and, for session ids, ``inputs``)."""
    sessions = version.inputs.get("sessions") if isinstance(version.inputs, Mapping) else None
    return read_plan(
        version.id, version.site_id, version.horizon_start, version.step_seconds, version.plan, sessions
    )


def scenario_of(version_id: int, inputs: Mapping[str, Any]) -> Scenario:
    """The optimizer scenario a version was made from (``inputs["scenario"]``)."""
    raw = inputs.get("scenario")
    if not isinstance(raw, Mapping):
        raise ScheduleDataError(version_id, "inputs.scenario", "is missing")
    try:
        return Scenario.model_validate(raw)
    except ValueError as error:
        raise ScheduleDataError(version_id, "inputs.scenario", f"is not a valid scenario: {error}") from error


# ------------------------------------------------------------------------------------ writing


def _plan_document(
    site_import_kw: Iterable[float], vehicles: Iterable[tuple[str, str, Iterable[float]]]
) -> PlanDocument:
    """A plan: net site import [kW] per step and, per (vehicle id, EVSE id, power [kW] per step), the
    vehicle's plan."""
    return PlanDocument(
        site_import_kw=[float(x) for x in site_import_kw],
        vehicles={
            vehicle_id: PlannedVehicleDocument(power_kw=[float(x) for x in power], evse_id=evse_id)
            for vehicle_id, evse_id, power in vehicles
        },
    )


def plan_document(result: ScheduleResult) -> PlanDocument:
    """The plan of an optimizer result: net site import and each vehicle's net power [kW]."""
    net = result.evaluation.import_kw - result.evaluation.export_kw
    power = result.charge_kw - result.discharge_kw
    return _plan_document(
        net, ((vehicle.id, vehicle.evse_id, power[i]) for i, vehicle in enumerate(result.problem.vehicles))
    )


def plan_json(result: ScheduleResult) -> dict[str, Any]:
    """:func:`plan_document` as stored (JSON)."""
    return plan_document(result).model_dump()


def empty_plan_document(n_steps: int) -> PlanDocument:
    """A plan of ``n_steps`` steps with no import and no vehicle (nothing to command)."""
    return _plan_document([0.0] * n_steps, ())


def shifted_plan_document(
    previous: StoredPlan, horizon_start: dt.datetime, n_steps: int, vehicle_ids: Collection[str]
) -> PlanDocument | None:
    """``previous`` moved to start at ``horizon_start`` (by the whole number of its steps nearest the
    time between the starts), ``n_steps`` long, keeping only the vehicles ``vehicle_ids``; steps it
    does not cover are 0. ``None`` if nothing of it is left at ``horizon_start``."""
    offset = round((horizon_start - previous.horizon_start) / previous.step)
    if offset < 0 or offset >= previous.n_steps:
        return None

    def moved(values: np.ndarray) -> list[float]:
        kept = [float(x) for x in values[offset : offset + n_steps]]
        return kept + [0.0] * (n_steps - len(kept))

    return _plan_document(
        moved(previous.site_import_kw),
        (
            (vehicle.id, vehicle.evse_id, moved(vehicle.power_kw))
            for vehicle in previous.vehicles
            if vehicle.id in vehicle_ids
        ),
    )


# ------------------------------------------------------------------------------------ output


def iso(stamp: dt.datetime | pd.Timestamp) -> str:
    return stamp.isoformat()


def to_csv(frame: pd.DataFrame) -> str:
    """``frame`` as CSV with a header; datetime columns and the index as ISO-8601 with offset."""
    out = frame.copy()
    if isinstance(out.index, pd.DatetimeIndex):
        out.index = pd.Index([iso(t) for t in out.index], name=out.index.name)
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype):
            out[column] = [iso(t) for t in out[column]]
    buffer = io.StringIO()
    out.to_csv(
        buffer, index=isinstance(frame.index, pd.DatetimeIndex), float_format="%.6g", lineterminator="\n"
    )
    return buffer.getvalue()


# -------------------------------------------------------------------------------- the grid


def on_grid(
    frame: pd.DataFrame,
    step: dt.timedelta,
    how: Mapping[str, Aggregation],
    grid: dt.timedelta = GRID,
) -> pd.DataFrame:
    """A per-step table (indexed by UTC step start) on a UTC-aligned grid of ``grid`` intervals.

    Each column is aggregated as ``how`` says: ``mean`` for powers [kW] (time-weighted), ``sum`` for
    energies and money (a step longer than the grid is shared out in proportion to time), ``min``
    for what must hold over the whole interval. Only intervals the steps cover completely are kept.
    Steps may start off the grid (a plan starts when made): a step split by it counts pro rata in each.
    """
    if frame.empty:
        return pd.DataFrame(
            {name: pd.Series(dtype=float) for name in how}, index=pd.DatetimeIndex([], tz=dt.UTC)
        )
    step_s, grid_s = int(step.total_seconds()), int(grid.total_seconds())
    starts = np.array([int(stamp.timestamp()) for stamp in frame.index], dtype=np.int64)
    sub_s = math.gcd(step_s, grid_s, int(starts[0] % grid_s))
    repeat = step_s // sub_s
    sub_starts = (np.repeat(starts, repeat) + np.tile(np.arange(repeat) * sub_s, len(starts))).astype(
        np.int64
    )
    keys = sub_starts // grid_s
    columns = {}
    for name, aggregation in how.items():
        values = np.repeat(frame[name].to_numpy(dtype=float), repeat)
        columns[name] = values / repeat if aggregation == "sum" else values
    sub = pd.DataFrame(columns)
    grouped = sub.groupby(keys)
    result = grouped.agg(dict(how))
    complete = grouped.size() == grid_s // sub_s
    result = result[complete.to_numpy()]
    result.index = pd.to_datetime(result.index.to_numpy() * grid_s, unit="s", utc=True).rename("start")
    return result


def grid_index(start: dt.datetime, end: dt.datetime, grid: dt.timedelta = GRID) -> pd.DatetimeIndex:
    """UTC starts of the grid intervals in ``[start, end)`` (``start`` and ``end`` aligned to ``grid``)."""
    return pd.date_range(start.astimezone(dt.UTC), end.astimezone(dt.UTC), freq=grid, inclusive="left")


def aligned(moment: dt.datetime, grid: dt.timedelta) -> bool:
    return moment.timestamp() % grid.total_seconds() == 0


# ------------------------------------------------------------------------------- versions


def latest_version_ids(session: Session, site_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Each site's latest schedule version (by ``created_at``, then id): site id → version id."""
    latest = select(
        ScheduleVersion.site_id,
        ScheduleVersion.id,
        func.row_number()
        .over(
            partition_by=ScheduleVersion.site_id,
            order_by=(ScheduleVersion.created_at.desc(), ScheduleVersion.id.desc()),
        )
        .label("rank"),
    )
    if site_ids is not None:
        latest = latest.where(ScheduleVersion.site_id.in_(site_ids))
    ranked = latest.subquery()
    rows = session.execute(select(ranked.c.site_id, ranked.c.id).where(ranked.c.rank == 1)).all()
    return {site_id: version_id for site_id, version_id in rows}


def latest_version(session: Session, site_id: str) -> tuple[int, dt.datetime] | None:
    """The id and ``created_at`` of the site's latest version (by ``created_at``, then id), if any."""
    row = session.execute(
        select(ScheduleVersion.id, ScheduleVersion.created_at)
        .where(ScheduleVersion.site_id == site_id)
        .order_by(ScheduleVersion.created_at.desc(), ScheduleVersion.id.desc())
        .limit(1)
    ).first()
    return (row.id, row.created_at) if row is not None else None


def latest_version_id(session: Session, site_id: str) -> int | None:
    latest = latest_version(session, site_id)
    return latest[0] if latest is not None else None


def load_plan(session: Session, version_id: int) -> StoredPlan:
    """One version's plan, reading only the columns it needs (not ``inputs``' scenario)."""
    row = session.execute(
        select(
            ScheduleVersion.site_id,
            ScheduleVersion.horizon_start,
            ScheduleVersion.step_seconds,
            ScheduleVersion.plan,
        ).where(ScheduleVersion.id == version_id)
    ).one()
    return read_plan(version_id, row.site_id, row.horizon_start, row.step_seconds, row.plan)


def load_inputs(session: Session, version_id: int) -> dict[str, Any]:
    inputs = session.scalar(select(ScheduleVersion.inputs).where(ScheduleVersion.id == version_id))
    return dict(inputs or {})


def plans_in_force(
    session: Session, site_id: str, index: pd.DatetimeIndex, grid: dt.timedelta = GRID
) -> list[StoredPlan | None]:
    """For each interval ``[t, t + grid)`` of ``index``: the plan in force, or ``None``.

    The plan in force is that of the latest version created at or before ``t`` whose horizon covers
    the whole interval. Plans are loaded only as the intervals need them.
    """
    if len(index) == 0:
        return []
    last = index[-1].to_pydatetime()
    end = last + grid
    rows = session.execute(
        select(ScheduleVersion.id, ScheduleVersion.created_at)
        .where(ScheduleVersion.site_id == site_id)
        .where(ScheduleVersion.created_at <= last)
        .where(ScheduleVersion.horizon_start < end)
        .order_by(ScheduleVersion.created_at, ScheduleVersion.id)
    ).all()
    created = [row.created_at for row in rows]
    loaded: dict[int, StoredPlan] = {}
    in_force: list[StoredPlan | None] = []
    for stamp in index:
        start = stamp.to_pydatetime()
        found = None
        for position in range(bisect.bisect_right(created, start) - 1, -1, -1):
            version_id = rows[position].id
            if version_id not in loaded:
                loaded[version_id] = load_plan(session, version_id)
            if loaded[version_id].covers(start, start + grid):
                found = loaded[version_id]
                break
        in_force.append(found)
    return in_force


def in_force_table(
    plans: list[StoredPlan | None],
    index: pd.DatetimeIndex,
    tables: Mapping[int, pd.DataFrame],
    columns: Sequence[str],
) -> pd.DataFrame:
    """Per interval of ``index``, the row of the plan in force's table (``tables[version id]``), else NaN."""
    out = pd.DataFrame(np.nan, index=index, columns=list(columns))
    for position, (stamp, plan) in enumerate(zip(index, plans, strict=True)):
        if plan is not None:
            table = tables[plan.version_id]
            if stamp in table.index:
                out.iloc[position] = table.loc[stamp, list(columns)].to_numpy(dtype=float)
    return out


# ----------------------------------------------------------------------------- flexibility


def flexibility_frame(plan: StoredPlan, scenario: Scenario, problem: Problem | None = None) -> pd.DataFrame:
    """Per plan step, the power the site could shift from its plan [kW], held for that step.

    - ``down_kw``: how far import could drop: the planned charging of every plugged vehicle (pausing
      it), plus, for a vehicle whose scenario allows discharge (V2G consent, and both vehicle and EVSE
      bidirectional), discharge up to its ``max_discharge_kw`` beyond what is already planned; at most
      down to the site's export limit (net import >= ``-export_limit_kw``).
    - ``up_kw``: how far import could rise: each plugged vehicle's charge headroom up to the tighter
      of its own and its EVSE's ``max_charge_kw`` (from its planned power, so a planned discharge
      could also stop); at most up to the site's ``import_limit_kw``.

    "Plugged" is the scenario's arrival to departure (as the optimizer rounds them to steps). This is
    power headroom: it does not check state of charge (a full battery, a V2G reserve) nor whether
    targets are still reached after the deviation, and ignores any rebound after it.
    """
    problem = problem or build_problem(scenario)
    n = plan.n_steps
    by_id = {vehicle.id: vehicle for vehicle in plan.vehicles}
    down = np.zeros(n)
    up = np.zeros(n)
    for spec in problem.vehicles:
        plugged = np.zeros(n, dtype=bool)
        plugged[spec.first_step : min(spec.end_step, n)] = True
        vehicle = by_id.get(spec.id)
        power = vehicle.power_kw if vehicle is not None else np.zeros(n)
        down += np.where(plugged, np.maximum(power + spec.max_discharge_kw, 0.0), 0.0)
        up += np.where(plugged, np.maximum(spec.max_charge_kw - power, 0.0), 0.0)
    site = plan.site_import_kw
    down = np.clip(np.minimum(down, site + problem.export_limit_kw), 0.0, None)
    up = np.clip(np.minimum(up, problem.import_limit_kw - site), 0.0, None)
    return pd.DataFrame({"up_kw": up, "down_kw": down}, index=plan.index)


def tariff_prices(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """Import and export price per step [currency/kWh] of ``scenario``."""
    shape = (scenario.n_steps,)
    tariff = scenario.tariff
    return (
        np.broadcast_to(np.asarray(tariff.import_price_per_kwh, dtype=float), shape).copy(),
        np.broadcast_to(np.asarray(tariff.export_price_per_kwh, dtype=float), shape).copy(),
    )


def energy_cost_per_step(plan: StoredPlan, scenario: Scenario) -> np.ndarray:
    """Energy bought minus energy sold per step [currency]: net import priced at the scenario's tariff."""
    import_price, export_price = tariff_prices(scenario)
    n = min(plan.n_steps, len(import_price))
    site = plan.site_import_kw[:n]
    cost = (
        np.maximum(site, 0.0) * import_price[:n] - np.maximum(-site, 0.0) * export_price[:n]
    ) * plan.step_hours
    return np.concatenate([cost, np.full(plan.n_steps - n, np.nan)])
