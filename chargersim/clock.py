"""Simulated time for the charger simulator: :class:`wire.clock.SimClock` (``start`` plus ``speed`` × the
time elapsed on a monotonic source), re-exported here for the simulator's call sites. On a
:class:`~wire.virtual_time.VirtualTimeEventLoop`, use :func:`wire.clock.loop_clock`."""

from __future__ import annotations

from wire.clock import SimClock, loop_clock

__all__ = ["SimClock", "loop_clock"]
