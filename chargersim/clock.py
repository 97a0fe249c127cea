"""Simulated time for the charger simulator: a start plus ``speed`` times the real time elapsed."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable


class SimClock:
    """Simulated time: ``start`` plus ``speed`` × the real seconds elapsed (``monotonic`` injectable)."""

    def __init__(
        self,
        start: dt.datetime | None = None,
        speed: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.start = start or dt.datetime.now(dt.UTC)
        self.speed = speed
        self._monotonic = monotonic
        self._t0 = monotonic()

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=(self._monotonic() - self._t0) * self.speed)

    async def sleep(self, sim_seconds: float) -> None:
        await asyncio.sleep(sim_seconds / self.speed)
