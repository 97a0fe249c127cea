"""One time line for every component: what time it is, and how long to wait, injectable everywhere.

A :class:`Clock` answers ``now()`` (an aware UTC datetime), ``monotonic()`` (seconds on a line that
never jumps back, for durations) and ``await sleep(seconds)`` on the same line. Logic takes a clock
and never reads the system's time itself; a timeout is a duration on that clock.

Three clocks cover every run:

- :data:`SYSTEM_CLOCK` (:class:`SystemClock`): real time, for deployments.
- :class:`SimClock`: ``start`` plus ``speed`` × the seconds elapsed on a monotonic source, for the
  charger simulator and the demo on real time sped up (``SimClock(start, speed=600)``).
- :func:`loop_clock`: a :class:`SimClock` at speed 1 on the event loop's own time. On a
  :class:`~wire.virtual_time.VirtualTimeEventLoop` that time is virtual, so everything that shares
  the clock (gateway, chargers, centre) runs in virtual time and the same seed gives the same result.

This module lives in ``wire`` because ``wire`` is the one package that the gateway, the charger
simulator and the centre may all import (``docs/architecture.md``). ``site_gateway.clock`` and
``chargersim.clock`` re-export these names for their existing call sites.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """A time line: ``now()`` (aware UTC), ``monotonic()`` [s] and ``sleep(seconds)`` on the same line."""

    def now(self) -> dt.datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time: the system's UTC clock, :func:`time.monotonic` and :func:`asyncio.sleep`."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class SimClock:
    """Simulated time: ``start`` plus ``speed`` × the seconds elapsed on ``monotonic`` (real time by
    default; the event loop's time in :func:`loop_clock`).

    ``sleep(s)`` waits ``s / speed`` seconds of the event loop's time, so ``monotonic`` must run at
    the event loop's pace: real monotonic time on a real loop, ``loop.time`` on a virtual one.
    """

    def __init__(
        self,
        start: dt.datetime | None = None,
        speed: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"SimClock speed must be > 0 simulated s per s, got {speed}")
        if start is not None and start.utcoffset() is None:
            raise ValueError(f"SimClock start must be timezone-aware, got {start.isoformat()}")
        self.start = start or dt.datetime.now(dt.UTC)
        self.speed = speed
        self._monotonic = monotonic
        self._t0 = monotonic()

    def monotonic(self) -> float:
        """Simulated seconds since the clock was made."""
        return (self._monotonic() - self._t0) * self.speed

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.monotonic())

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` simulated seconds."""
        await asyncio.sleep(seconds / self.speed)


def loop_clock(start: dt.datetime, loop: asyncio.AbstractEventLoop | None = None) -> SimClock:
    """A clock on ``loop``'s time (the running loop by default) that reads ``start`` now.

    On a :class:`~wire.virtual_time.VirtualTimeEventLoop` this is the virtual clock: ``now()`` moves
    only when the loop advances its time, and ``sleep`` is a timer on that loop.
    """
    loop = loop or asyncio.get_running_loop()
    return SimClock(start, speed=1.0, monotonic=loop.time)
