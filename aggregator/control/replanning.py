"""Requests to re-plan a site now, from wherever something changed (the API, ingestion, an adapter).

The control loop owns one :class:`ReplanRequests`; producers call :meth:`ReplanRequests.request`
from any thread (FastAPI runs sync routes in a thread pool) and the loop awaits
:meth:`ReplanRequests.wait` to learn which sites to re-plan and why. Requests for a site that is
already waiting are merged, so a burst of changes costs one solve.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping


class ReplanRequests:
    """A thread-safe set of sites to re-plan, each with the reasons gathered since the last take."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, list[str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    def request(self, site_id: str, reason: str) -> None:
        """Ask for ``site_id`` to be re-planned because of ``reason`` (``"override:session 12"``)."""
        with self._lock:
            self._pending.setdefault(site_id, []).append(reason)
            loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wakeup.set)

    @property
    def pending(self) -> int:
        """Sites waiting to be re-planned (bounded by the sites: a site's requests merge)."""
        return len(self._pending)

    def take(self) -> Mapping[str, list[str]]:
        """The pending requests (site id → reasons), emptying the set."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    async def wait(self, timeout: float | None = None) -> Mapping[str, list[str]]:
        """The pending requests, waiting up to ``timeout`` seconds for one if there are none."""
        with self._lock:
            if self._wakeup is None:
                self._loop, self._wakeup = asyncio.get_running_loop(), asyncio.Event()
            wakeup = self._wakeup
            wakeup.clear()
            if self._pending:
                wakeup.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout)
        return self.take()
