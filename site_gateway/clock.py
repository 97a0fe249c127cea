"""The gateway's clock: what time it is, and how long to wait, on one injectable time line.

Every duration the gateway waits for (the control interval, the telemetry interval, a charger's time to
show a reduction, a charger's time to answer a call) is a duration on this clock, and every timestamp it
writes (setpoint validity, profile renewals, staleness of the centre's schedule) is this clock's
``now``. Real deployments use :data:`SYSTEM_CLOCK`; a simulation passes its own clock, so a charger that
takes 5 simulated seconds to answer is waited for 5 simulated seconds, whatever the simulation's speed.

:class:`Clock`, :class:`SystemClock` and :data:`SYSTEM_CLOCK` are :mod:`wire.clock`'s, the one clock
shared with the simulator and the centre (:class:`wire.clock.SimClock` is a clock too, and
:func:`wire.clock.loop_clock` the one for :mod:`wire.virtual_time`). Two helpers build waits on it:
:func:`wait_event` (an event, at most so long) and :func:`within` (an awaitable, at most so long, else
:class:`TimeoutError`).

Waits on the MQTT broker's network (CONNACK, PUBACK: :mod:`site_gateway.uplink`) stay on the event
loop's time: the broker is a real peer in every run, never a simulated one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from wire.clock import SYSTEM_CLOCK, Clock, SystemClock

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "wait_event", "within"]

T = TypeVar("T")


async def wait_event(event: asyncio.Event, seconds: float, clock: Clock) -> bool:
    """Wait until ``event`` is set, at most ``seconds`` on ``clock``; whether it is set."""
    if event.is_set():
        return True
    if seconds <= 0:
        return False
    waiter = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancel(waiter, timer)
    return event.is_set()


async def within(awaitable: Awaitable[T], seconds: float, clock: Clock) -> T:
    """``awaitable``'s result if it comes within ``seconds`` on ``clock``; else it is cancelled and
    :class:`TimeoutError` raised."""
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled from outside: take both with us
        await _cancel(work, timer)
        raise
    if not work.done():
        await _cancel(work, timer)
        raise TimeoutError(f"no result within {seconds} s")
    await _cancel(timer)
    return work.result()


async def _cancel(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until they have finished (so none outlives its wait)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
