"""A fleet of simulated stations with vehicles against one gateway (``chargersim`` CLI, benchmarks)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from types import TracebackType
from typing import Self

from chargersim.clock import SimClock
from chargersim.stations import PROTOCOLS, Protocol, SimulatedCharger
from chargersim.vehicles import random_vehicle


class ChargerFleet:
    """N simulated stations against one gateway, as an async context manager.

    Stations are named ``{prefix}-{i:03d}``; vehicles arrive in the first ``arrival_spread_s`` simulated
    seconds, drawn from ``seed``.
    """

    def __init__(
        self,
        url: str,
        count: int,
        protocol: Protocol,
        *,
        clock: SimClock | None = None,
        seed: int = 0,
        prefix: str = "sim",
        arrival_spread_s: float = 0.0,
        max_power_w: float = 22_000.0,
        meter_interval_s: float = 60.0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.clock = clock or SimClock()
        rng = random.Random(seed)
        self.chargers = []
        for i in range(count):
            arrival = self.clock.start + dt.timedelta(seconds=rng.uniform(0, arrival_spread_s))
            vehicle = random_vehicle(rng, arrival)
            self.chargers.append(
                SimulatedCharger(
                    station_id=f"{prefix}-{i:03d}",
                    url=url,
                    protocol=protocol,
                    vehicle=vehicle,
                    clock=self.clock,
                    max_power_w=max_power_w,
                    max_discharge_w=vehicle.max_discharge_kw * 1000 if protocol == "2.1" else 0.0,
                    meter_interval_s=meter_interval_s,
                    rng=random.Random(rng.getrandbits(64)),
                )
            )
        self._tasks: asyncio.TaskGroup | None = None
        self._runs: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._runs = [
            self._tasks.create_task(charger.run(), name=f"charger-{charger.station_id}")
            for charger in self.chargers
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tasks is not None
        for task in self._runs:
            task.cancel()
        try:
            await self._tasks.__aexit__(exc_type, exc, tb)
        finally:
            self._tasks, self._runs = None, []

    async def wait_booted(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            for charger in self.chargers:
                await charger.booted.wait()
