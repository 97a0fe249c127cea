"""Pagination and time-range filters shared by every list endpoint.

::

    @router.get("/things")
    def list_things(session: SessionDep, page: PageParams, window: TimeRangeParams) -> Page[ThingPublic]:
        query = window.apply(select(Thing), Thing.created_at)
        return paginate(session, query.order_by(Thing.id), page, ThingPublic)

``start`` and ``end`` are ISO-8601 with an offset (``2026-11-26T14:00:00+01:00``); a time without an
offset is refused with 422, since it could mean any of 24 hours. The range is half-open: ``start <= t <
end``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Query, status
from pydantic import AwareDatetime, BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from aggregator.api.schemas import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, Page

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound=Select[Any])


@dataclass(frozen=True)
class PageRequest:
    offset: int
    limit: int


def page_request(
    offset: Annotated[int, Query(ge=0, description="How many items to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT, description="Items per page")] = DEFAULT_PAGE_LIMIT,
) -> PageRequest:
    return PageRequest(offset, limit)


PageParams = Annotated[PageRequest, Depends(page_request)]


@dataclass(frozen=True)
class TimeRange:
    """A half-open ``[start, end)`` filter; either bound may be open (``None``)."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def apply(self, query: S, column: InstrumentedAttribute[Any]) -> S:
        """``query`` keeping rows whose ``column`` lies in the range."""
        if self.start is not None:
            query = query.where(column >= self.start)
        if self.end is not None:
            query = query.where(column < self.end)
        return query

    def overlapping(
        self, query: S, begins: InstrumentedAttribute[Any], ends: InstrumentedAttribute[Any]
    ) -> S:
        """``query`` keeping rows whose ``[begins, ends)`` interval overlaps the range."""
        if self.start is not None:
            query = query.where(ends > self.start)
        if self.end is not None:
            query = query.where(begins < self.end)
        return query


def time_range(
    start: Annotated[
        AwareDatetime | None, Query(description="From (inclusive), ISO-8601 with offset")
    ] = None,
    end: Annotated[AwareDatetime | None, Query(description="Until (exclusive), ISO-8601 with offset")] = None,
) -> TimeRange:
    if start is not None and end is not None and end <= start:
        detail = f"end ({end.isoformat()}) must be after start ({start.isoformat()})"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)
    return TimeRange(
        start.astimezone(dt.UTC) if start is not None else None,
        end.astimezone(dt.UTC) if end is not None else None,
    )


TimeRangeParams = Annotated[TimeRange, Depends(time_range)]


def paginate(session: Session, query: Select[Any], page: PageRequest, model: type[M]) -> Page[M]:
    """One page of ``query`` (already ordered) as ``model``s, with the total count of ``query``."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = session.scalars(query.offset(page.offset).limit(page.limit))
    return Page[model](  # type: ignore[valid-type]
        items=[model.model_validate(row) for row in rows], total=total, offset=page.offset, limit=page.limit
    )
