"""Staying connected to an MQTT broker: jittered exponential backoff and the retry loop around one
connection, shared by the gateway's uplink and the centre's ingestion and setpoint publisher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff: attempt ``n`` waits between half and all of
    ``min(max_s, initial_s * factor**n)`` seconds."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        ceiling = min(self.max_s, self.initial_s * self.factor ** min(attempt, 64))
        return ceiling * (0.5 + 0.5 * random())


Session = Callable[[Callable[[], None]], Awaitable[None]]
"""One connection's life: it calls its argument once the broker accepted the connection, and returns or
raises :class:`aiomqtt.MqttError` (alone or in an exception group) when the connection ends."""


async def keep_connected(
    session: Session,
    *,
    who: str,
    host: str,
    port: int,
    backoff: Backoff,
    random: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    on_lost: Callable[[], None] = lambda: None,
    monotonic: Callable[[], float] | None = None,
) -> None:
    """Run ``session`` for ever, waiting ``backoff`` between attempts (from the first step again once a
    connection got through); ``on_lost`` runs after each connection ends. Cancel to stop.

    Logged once per change of state, not once per attempt (:class:`_Outage`): a WARNING when a
    connection that was up ends, or when the first attempt fails; DEBUG for each further failed
    attempt; one INFO when a connection gets through again, with how many attempts failed and how
    long the broker was away, in seconds on ``monotonic`` (the running event loop's time by default).
    """
    outage = _Outage(who, host, port, monotonic or asyncio.get_running_loop().time)
    attempt = 0
    while True:
        got_through = False

        def connected() -> None:
            nonlocal got_through
            got_through = True
            outage.ended()

        lost: BaseException | None = None
        started = outage.monotonic()
        try:
            await session(connected)
        except* aiomqtt.MqttError as group:
            lost = group.exceptions[0]
        finally:
            on_lost()
        if got_through:
            attempt = 0
        delay = backoff.delay(attempt, random)
        attempt += 1
        outage.failed(lost, was_up=got_through, attempt_started=started, retry=attempt, delay_s=delay)
        await sleep(delay)


class _Outage:
    """The state of one connection for its log lines: up, or down since when and after how many
    failed attempts."""

    def __init__(self, who: str, host: str, port: int, monotonic: Callable[[], float]) -> None:
        self.who, self.host, self.port, self.monotonic = who, host, port, monotonic
        self.since: float | None = None
        """When the broker went away [s on ``monotonic``]; None while up (or before the first attempt)."""
        self.failed_attempts = 0

    def _extra(self, state: str, **fields: object) -> dict[str, object]:
        # ``connection``, not ``dependency``: the service's own line per dependency
        # (aggregator/runtime/dependencies.py) sums up every client of a broker.
        return {
            "connection": "mqtt",
            "client": self.who,
            "broker": f"{self.host}:{self.port}",
            "state": state,
        } | fields

    def failed(
        self, error: BaseException | None, *, was_up: bool, attempt_started: float, retry: int, delay_s: float
    ) -> None:
        """A connection ended (``was_up``) or an attempt failed; the next attempt is in ``delay_s``."""
        where = f"{self.who}: MQTT connection to {self.host}:{self.port}"
        if was_up or self.since is None:
            self.since = self.monotonic() if was_up else attempt_started
            self.failed_attempts = 0 if was_up else 1
            log.warning(
                "%s %s (%s); retrying with backoff, next in %.1f s (further failures at DEBUG)",
                where,
                "lost" if was_up else "failed",
                error,
                delay_s,
                extra=self._extra("down"),
            )
            return
        self.failed_attempts += 1
        log.debug(
            "%s failed again (%s); retry %d in %.1f s",
            where,
            error,
            retry,
            delay_s,
            extra=self._extra("down", failed_attempts=self.failed_attempts),
        )

    def ended(self) -> None:
        """A connection got through: one INFO line if the broker had been away."""
        if self.since is None:
            return
        down_s = self.monotonic() - self.since
        log.info(
            "%s: MQTT connection to %s:%s up again after %d failed attempt%s in %.1f s",
            self.who,
            self.host,
            self.port,
            self.failed_attempts,
            "" if self.failed_attempts == 1 else "s",
            down_s,
            extra=self._extra("up", failed_attempts=self.failed_attempts, down_s=round(down_s, 3)),
        )
        self.since = None
        self.failed_attempts = 0
