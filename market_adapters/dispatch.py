"""Grid-operator signals in our terms: the seam between OpenADR (2.0b or 3) and the aggregator.

An adapter turns whatever the VTN sends into :class:`GridSignal` objects and hands them to a
:class:`SignalSink` (the aggregator's dispatch-event store, later). The aggregator answers two
questions back through :class:`FlexibilityOracle`: how many kW the portfolio can deliver in a window
(for optIn / optOut), and what it metered (for reports).

Kinds, with the unit of ``intervals[*].value``:

- ``dr_reduction``: import reduction below the site's expected import [kW];
- ``dr_cap``: a cap on site import [kW];
- ``v2g_export``: net export requested from the vehicles [kW];
- ``price``: an energy price signal for the window [currency/kWh] (informative; no commitment).

What a kind commits the portfolio to, and so how :meth:`FlexibilityOracle.available_kw` answers for
it, is :data:`COMMITMENTS`: the seam's part of a kind. The aggregator's part (how a kind is planned,
measured and paid) is :mod:`aggregator.programs.kinds`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Annotated, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _aware(value: dt.datetime) -> dt.datetime:
    if value.utcoffset() is None:
        raise ValueError("must carry a UTC offset")
    return value.astimezone(dt.UTC)


Moment = Annotated[dt.datetime, AfterValidator(_aware)]


class SignalKind(enum.StrEnum):
    DR_REDUCTION = "dr_reduction"
    DR_CAP = "dr_cap"
    V2G_EXPORT = "v2g_export"
    PRICE = "price"


class Commitment(enum.StrEnum):
    """What a signal of a kind asks of the portfolio, and how ``available_kw`` answers for it."""

    NONE = "none"
    """Informative (a price): nothing to deliver; ``available_kw`` is 0."""
    AT_LEAST = "at_least"
    """Deliver at least the signal's kW (a reduction, an export); ``available_kw`` is the most the
    portfolio can hold throughout the window."""
    AT_MOST = "at_most"
    """Keep site import at most the signal's kW (a cap); ``available_kw`` is the lowest cap the
    portfolio can hold throughout the window (infinite when a site's import is unknown)."""


COMMITMENTS: Mapping[SignalKind, Commitment] = MappingProxyType(
    {
        SignalKind.DR_REDUCTION: Commitment.AT_LEAST,
        SignalKind.DR_CAP: Commitment.AT_MOST,
        SignalKind.V2G_EXPORT: Commitment.AT_LEAST,
        SignalKind.PRICE: Commitment.NONE,
    }
)
"""Each kind's commitment: the one table adapters judge a signal by (every kind has an entry)."""


class SignalStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


class SignalInterval(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: Moment
    end: Moment
    value: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> SignalInterval:
        if self.end <= self.start:
            raise ValueError(
                f"interval end {self.end.isoformat()} is not after its start {self.start.isoformat()}"
            )
        return self


class GridSignal(BaseModel):
    """One event from a grid operator, as our aggregator understands it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1, description="Adapter and VTN, e.g. 'openadr2b:vtn.example.com'")
    event_id: str = Field(min_length=1, description="The VTN's event id")
    modification: int = Field(0, ge=0, description="The VTN's modification number; higher replaces lower")
    program_id: str | None = Field(None, description="Our program the event belongs to, when mapped")
    kind: SignalKind
    status: SignalStatus = SignalStatus.PENDING
    intervals: tuple[SignalInterval, ...] = Field(min_length=1)
    currency: str | None = Field(None, min_length=3, max_length=3, description="For price signals")
    target_sites: tuple[str, ...] = Field(
        (), description="Our site ids the event names; empty = the whole portfolio"
    )
    received_at: Moment

    @model_validator(mode="after")
    def _consistent(self) -> GridSignal:
        for previous, current in zip(self.intervals, self.intervals[1:], strict=False):
            if current.start < previous.end:
                raise ValueError(f"intervals overlap at {current.start.isoformat()}")
        if self.kind is SignalKind.PRICE and self.currency is None:
            raise ValueError("a price signal needs its currency")
        return self

    @property
    def start(self) -> dt.datetime:
        return self.intervals[0].start

    @property
    def end(self) -> dt.datetime:
        return self.intervals[-1].end

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.event_id)


SignalSink = Callable[[GridSignal], Awaitable[None]]
"""Receives new, modified and cancelled signals (a cancellation is the same event with status cancelled)."""


class FlexibilityOracle(Protocol):
    """What the adapters ask the aggregator (implemented there; a fixed stand-in in tests)."""

    async def available_kw(self, kind: SignalKind, start: dt.datetime, end: dt.datetime) -> float:
        """How many kW of ``kind`` the portfolio can deliver throughout ``[start, end)``."""
        ...

    async def metered_kw(self, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, float]]:
        """Metered site power of the enrolled sites in ``[start, end)``, as (interval start, kW)."""
        ...
