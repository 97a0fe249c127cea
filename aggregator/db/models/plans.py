"""The control loop's plans: every schedule version made for a site, and the setpoint commands sent."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from aggregator.db.models.base import Base, utcnow
from aggregator.db.types import value_enum


class ScheduleStatus(enum.StrEnum):
    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    """The solver's best schedule when it hit its time limit."""
    HEURISTIC = "heuristic"
    """Made by a rule, not the solver."""
    SHIFTED = "shifted"
    """The previous version moved forward in time, because no new schedule was found."""


class ScheduleVersion(Base):
    """Every schedule the control loop made for a site, with what it was made from."""

    __tablename__ = "schedule_versions"
    __table_args__ = (
        CheckConstraint("step_seconds > 0", name="step_seconds_positive"),
        Index(None, "site_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    horizon_start: Mapped[dt.datetime]
    step_seconds: Mapped[int]
    trigger: Mapped[str] = mapped_column(String(200), default="cadence")
    """Why it was made: ``cadence``, ``arrival``, ``departure``, ``override``, ``event``,
    ``gateway_online``, ``what_if`` ... (with detail, e.g. ``override:session 12``)."""
    inputs: Mapped[dict[str, Any]]
    """What the optimiser was given: ``{"scenario": <optimizer Scenario JSON>, "sessions": {vehicle id
    in the scenario: charging_sessions.id}, "events": [dispatch_events.id, ...]}``; enough to explain
    and to re-run the result. A site planned with others for a shared dispatch event also has
    ``"event_shares": {public event id: [kW committed by this site per step]}`` and ``"portfolio":
    {"site_ids", "events", "status", "message"}`` (see ``aggregator.control.groups``). A plan with
    dispatch events has ``"event_baselines": {public event id: [baseline import kW per step]}``, each
    vehicle at the power frozen when the event was first planned with it
    (``aggregator.programs.event_baselines``). ``"assumed": {vehicle id in the scenario: ["soc",
    "departure", "target", "vehicle"]}`` says what the plan assumed about a vehicle rather than knew: a
    baseline frozen at such a plan is none (``aggregator.programs.event_baselines.Assumed``)."""
    result_summary: Mapped[dict[str, Any]]
    status: Mapped[ScheduleStatus] = mapped_column(value_enum(ScheduleStatus, "schedule_status"))
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The schedule: ``{"site_import_kw": [...], "vehicles": {scenario vehicle id: {"power_kw":
    [...], "evse_id": str}}}``, one value per step from ``horizon_start`` (positive charging)."""
    counterfactual: Mapped[dict[str, Any] | None] = mapped_column(JSON())
    """The same plan made without the dispatch events, when there were any: the site's and each
    vehicle's expected import without the event, for performance and vehicle attribution."""
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("schedule_versions.id"))


class CommandStatus(enum.StrEnum):
    PENDING = "pending"
    """Published (or queued to be), no acknowledgement yet."""
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERROR = "error"


class SetpointCommandRecord(Base):
    """Each :class:`wire.contract.SetpointCommand` the centre published, and the gateway's ack."""

    __tablename__ = "setpoint_commands"
    __table_args__ = (Index(None, "site_id", "issued_at"),)

    command_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    schedule_version_id: Mapped[int | None] = mapped_column(ForeignKey("schedule_versions.id"))
    issued_at: Mapped[dt.datetime]
    valid_until: Mapped[dt.datetime]
    payload: Mapped[dict[str, Any]]
    status: Mapped[CommandStatus] = mapped_column(
        value_enum(CommandStatus, "command_status"), default=CommandStatus.PENDING
    )
    acked_at: Mapped[dt.datetime | None]
    ack_outcomes: Mapped[list[Any]] = mapped_column(default=list)
    """The gateway's per-EVSE outcomes (:class:`wire.contract.EvseOutcome` JSON)."""
    ack_detail: Mapped[str | None] = mapped_column(String(500))
