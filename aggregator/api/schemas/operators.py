"""What the grid operators' API accepts and returns: their programs, dispatch events, and delivery.

An event's public ``id`` is the row id of its first stored version; every change appends a version
(:class:`EventVersion`) and the event reads as its latest one (:class:`EventPublic`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from aggregator.db.models import ProgramKind
from aggregator.programs.kinds import POSTED_KINDS
from market_adapters.dispatch import SignalKind, SignalStatus

PositiveKw = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]

PROGRAM_KINDS: Mapping[SignalKind, ProgramKind] = POSTED_KINDS
"""The kinds an operator may post, and the kind of program each may be posted on (the kinds' table,
:mod:`aggregator.programs.kinds`)."""


def _posted(kind: SignalKind) -> SignalKind:
    if kind not in PROGRAM_KINDS:
        raise ValueError(
            f"{kind.value!r} is not an event an operator may post; one of "
            f"{', '.join(repr(k.value) for k in PROGRAM_KINDS)}"
        )
    return kind


EventKind = Annotated[
    SignalKind,
    AfterValidator(_posted),
    WithJsonSchema({"type": "string", "enum": [kind.value for kind in PROGRAM_KINDS]}),
]
"""What an operator may post: a reduction [kW], a cap on import [kW] or an export [kW]."""


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


class ProgramSummary(BaseModel):
    """One of the operator's programs, with the sites enrolled in it."""

    id: str
    name: str
    kind: ProgramKind
    currency: str
    site_ids: list[str]
    created_at: dt.datetime


# ------------------------------------------------------------------------------------------- events


class EventInterval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: AwareDatetime
    end: AwareDatetime
    value: PositiveKw
    """kW, by the event's kind: the reduction, the cap on import, or the export."""

    _utc_times = field_validator("start", "end")(_utc)


class EventTerms(BaseModel):
    """What an event asks for: its window and kW, and what it pays. Checked as a whole: ``end`` after
    ``start``, and either one ``requested_kw`` for the whole window or ``intervals`` that cover the
    window from ``start`` to ``end`` without gaps or overlaps."""

    model_config = ConfigDict(extra="forbid")

    start: AwareDatetime
    end: AwareDatetime
    requested_kw: PositiveKw | None = None
    """One kW value for the whole window (or give ``intervals``)."""
    intervals: Annotated[list[EventInterval] | None, Field(min_length=1)] = None
    price_per_kwh: Price | None = None
    """Paid per kWh delivered [program currency/kWh]; ``null`` for the program's payment terms."""
    penalty_per_kwh: Price | None = None
    """Charged per kWh short of the commitment [program currency/kWh]; ``null`` for the terms."""

    _utc_times = field_validator("start", "end")(_utc)

    @model_validator(mode="after")
    def _consistent(self) -> EventTerms:
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        if (self.requested_kw is None) == (self.intervals is None):
            raise ValueError("give either requested_kw or intervals, not both nor neither")
        if self.intervals is not None:
            at = self.start
            for n, interval in enumerate(self.intervals):
                if interval.start != at:
                    raise ValueError(
                        f"intervals[{n}] starts at {interval.start.isoformat()}, expected {at.isoformat()}: "
                        "intervals must cover the window from start to end without gaps or overlaps"
                    )
                if interval.end <= interval.start:
                    raise ValueError(f"intervals[{n}] ends at or before its start")
                at = interval.end
            if at != self.end:
                raise ValueError(
                    f"the intervals end at {at.isoformat()}, the window at {self.end.isoformat()}"
                )
        return self

    def schedule(self) -> list[EventInterval]:
        """The intervals, one for the whole window when ``requested_kw`` was given."""
        if self.intervals is not None:
            return self.intervals
        assert self.requested_kw is not None
        return [EventInterval(start=self.start, end=self.end, value=self.requested_kw)]


class EventCreate(EventTerms):
    kind: EventKind
    target_sites: list[str] = Field(default_factory=list)
    """Sites of the program the event is for; empty for all sites enrolled in the program."""


class EventUpdate(BaseModel):
    """A change to an event's window, kW or prices; fields left out stay as they are.

    Moving the window of an event with varying ``intervals`` needs new ``intervals``; an event with
    one kW value for its window keeps that value over the new window.
    """

    model_config = ConfigDict(extra="forbid")

    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    requested_kw: PositiveKw | None = None
    intervals: Annotated[list[EventInterval] | None, Field(min_length=1)] = None
    price_per_kwh: Price | None = None
    penalty_per_kwh: Price | None = None


class EventVersion(BaseModel):
    """One stored version of an event."""

    version_id: int
    """The row id of this version."""
    modification: int
    """0 for the event as first posted, one more for each change."""
    program_id: str
    kind: SignalKind
    status: SignalStatus
    start: dt.datetime
    end: dt.datetime
    requested_kw: float | None
    """The kW asked for, when it is one value for the whole window (else see ``intervals``)."""
    intervals: list[EventInterval]
    price_per_kwh: float | None
    penalty_per_kwh: float | None
    currency: str | None
    target_sites: list[str]
    created_by_id: int | None
    created_at: dt.datetime


class EventPublic(EventVersion):
    """An event as it stands: its latest version, under the event's public id."""

    id: int
    """The event's public id: the row id of its first version; the same for all its versions."""


class EventDetail(EventPublic):
    versions: list[EventVersion]
    """Every version, oldest first (the last is the one shown above)."""


# ------------------------------------------------------------------------------------- performance


class IntervalPerformance(BaseModel):
    """One 15-minute interval [kW]; ``null`` where not yet metered or without a counterfactual."""

    start: dt.datetime
    end: dt.datetime
    committed_kw: float | None
    """The commitment as a reduction (or export) below the expected import; for ``dr_cap`` the
    reduction the cap asks for, ``max(expected - cap, 0)``."""
    cap_kw: float | None = None
    """The cap on import (``dr_cap`` only)."""
    expected_kw: float | None
    """The site's expected import without the event: its baseline by the declared method."""
    measured_kw: float | None
    """The metered mean net import (negative when exporting)."""
    delivered_kw: float | None
    """``expected - measured``: the reduction below (or export beyond) the expected import."""
    within_cap: bool | None = None
    """Whether the measured import stayed at or under the cap (``dr_cap`` only)."""


class PerformanceTotals(BaseModel):
    committed_kwh: float
    delivered_kwh: float
    """Delivered energy credited towards the commitment (capped per interval at its commitment)."""
    shortfall_kwh: float
    performance_factor: float
    """``delivered_kwh / committed_kwh`` in ``[0, 1]``, over the intervals that have data."""
    missing_intervals: int
    """Intervals left out of the totals: not yet metered, or without a baseline."""


class SiteBaselinePublic(BaseModel):
    """How the event is measured at a site, declared when it was notified: with the site's metered
    import, enough to recompute the baseline (except ``counterfactual``, the aggregator's own plan)."""

    method: str
    """``x_of_y``, ``same_day``, ``meter_before_after`` or ``counterfactual``."""
    parameters: dict[str, Any]
    """The method with every parameter, defaults included."""
    timezone: str
    """The site's IANA zone: day matching compares local clock times."""
    excluded_days: list[dt.date]
    """Local days a day-matching baseline leaves out (earlier event days at the site)."""
    declared_at: dt.datetime
    declared_at_notification: bool
    """``False`` for an event notified before declarations were kept: measured by the program's
    current method."""
    plan_versions: list[int] = Field(default_factory=list)
    """For ``counterfactual``: the schedule versions it was fixed at."""
    problem: str | None = None
    """Why the baseline cannot be made yet (e.g. too little meter data); its intervals are ``null``."""


class SitePerformance(PerformanceTotals):
    site_id: str
    baseline: SiteBaselinePublic | None = None
    intervals: list[IntervalPerformance]


class EventPerformancePublic(PerformanceTotals):
    """An event's delivery: per site (each committed an equal share), and for all target sites
    together (the sums of the sites' series), which the totals at this level are for."""

    event_id: int
    kind: SignalKind
    status: SignalStatus
    step_seconds: int
    intervals: list[IntervalPerformance]
    sites: list[SitePerformance]
