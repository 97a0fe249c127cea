"""An MQTT broker inside our own process, for ``make demo`` (and trials) only: never for a depot.

::

    async with EmbeddedBroker() as broker:          # a free port on 127.0.0.1
        settings = IngestionSettings(host=broker.host, port=broker.port)

It is amqtt's broker (MQTT 3.1.1, QoS 0-2, retained messages, last wills) with anonymous access and
no ACLs: fine on loopback, not for production, where Mosquitto with the ACLs of
``docs/mosquitto-acl.md`` is the broker. One more difference: amqtt 0.12 does not hand a persistent
session (``clean_session=False``) the QoS 1 messages published while it was disconnected (seen here),
so the at-least-once path across a centre restart needs Mosquitto; with the embedded broker the broker
lives and dies with the centre, and the gateways keep unacknowledged messages in their outboxes.

It queues nothing for a disconnected session and takes a new port on every start, so the broker of
a real deployment is Mosquitto with ``examples/mosquitto/mosquitto.conf`` (persistence, queues sized
to sites x outage, logins and ACLs; ``docs/mosquitto-acl.md``). ``fleetgrid aggregator`` starts one
when its config says ``[mqtt] url = "embedded"``.
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import Self

from amqtt.broker import Broker

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedBroker:
    """Async context manager running an amqtt broker on ``host:port`` (``port=0``: a free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        # amqtt logs every connection at INFO; keep our logs readable.
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        broker = Broker(config)
        await broker.start()
        self._broker = broker
        log.info("embedded MQTT broker listening on %s", self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
