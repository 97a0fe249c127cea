"""Connecting to the MQTT broker, the same way on both sides: where it is, how to log in, and the client.

Every MQTT client of ours (the gateway's uplink, the centre's ingestion and setpoint publisher) is made
here, from the fields of :class:`BrokerSettings` that their own settings extend:

- :class:`BrokerUrl` reads a broker URL as the configuration files write it: ``mqtt://host[:port]``
  (plain TCP, port 1883 by default) or ``mqtts://host[:port]`` (TLS, port 8883 by default);
- :func:`tls_context` is the TLS context a ``mqtts://`` broker is reached with (the system's CA
  certificates, or ``cafile``'s);
- :func:`client` builds the ``aiomqtt.Client``: MQTT 3.1.1, the settings' login, keepalive, timeout
  and TLS, plus what a caller's session needs (a persistent session, a last will, its own queue).

Lost connections are retried by :func:`wire.reconnect.keep_connected` with the settings'
:class:`~wire.reconnect.Backoff`.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt

from wire.reconnect import Backoff

SCHEMES: dict[str, tuple[int, bool]] = {"mqtt": (1883, False), "mqtts": (8883, True)}
"""URL scheme -> (default port, TLS)."""


@dataclass(frozen=True)
class BrokerUrl:
    """A broker's address as read from ``mqtt://host:1883`` or ``mqtts://host:8883``."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Read ``url``; a :class:`ValueError` naming it when the scheme, host or port is wrong."""
        problem = f"must look like mqtt://host:1883 or mqtts://host:8883, got {url!r}"
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(problem)
        default_port, tls = SCHEMES[parts.scheme]
        try:
            port = parts.port
        except ValueError as err:
            raise ValueError(f"{problem} (port: {err})") from err
        return cls(host=parts.hostname, port=port or default_port, tls=tls)


def tls_context(enabled: bool, cafile: Path | str | None = None) -> ssl.SSLContext | None:
    """The context to reach a TLS broker with (``None``: plain TCP); ``cafile`` for a private CA."""
    if not enabled:
        return None
    return ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is, how to log in, and how long to wait for it; what every client shares."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_context: ssl.SSLContext | None = None
    """``None``: plain TCP. For ``mqtts://``: :func:`tls_context` (``ssl.create_default_context``)."""
    keepalive_s: int = 30
    timeout_s: float = 10.0
    """Limit [s] on every wait for the broker: CONNACK, SUBACK, PUBACK."""
    backoff: Backoff = field(default_factory=Backoff)
    """Between attempts to reconnect (:func:`wire.reconnect.keep_connected`)."""


def client(
    settings: BrokerSettings,
    identifier: str,
    *,
    clean_session: bool | None = None,
    will: aiomqtt.Will | None = None,
    queue_type: type[asyncio.Queue[aiomqtt.Message]] | None = None,
) -> aiomqtt.Client:
    """An MQTT 3.1.1 client of the broker in ``settings``, as client id ``identifier``.

    ``clean_session=False`` keeps a persistent session (the broker queues QoS 1 messages for the id
    while the client is away; ``None`` is paho's default, a clean one); ``will`` is the last will;
    ``queue_type`` replaces aiomqtt's queue of incoming messages.
    """
    return aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=clean_session,
        will=will,
        keepalive=settings.keepalive_s,
        timeout=settings.timeout_s,
        tls_context=settings.tls_context,
        queue_type=queue_type,
    )


__all__ = ["SCHEMES", "BrokerSettings", "BrokerUrl", "client", "tls_context"]
