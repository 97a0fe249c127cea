"""Staying connected to an MQTT broker: jittered exponential backoff and the retry loop around one
connection, shared by the gateway's uplink and the centre's ingestion and setpoint publisher."""

from __future__ import annotations

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
) -> None:
    """Run ``session`` for ever, waiting ``backoff`` between attempts (from the first step again once a
    connection got through); ``on_lost`` runs after each connection ends. Cancel to stop."""
    attempt = 0
    while True:
        got_through = False

        def connected() -> None:
            nonlocal got_through
            got_through = True

        lost: BaseException | None = None
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
        log.warning(
            "%s: MQTT connection to %s:%s lost or refused (%s); retry %d in %.1f s",
            who,
            host,
            port,
            lost,
            attempt,
            delay,
        )
        await sleep(delay)
