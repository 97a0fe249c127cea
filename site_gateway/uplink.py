"""The gateway's MQTT uplink to the centre: store-and-forward out, setpoint commands in.

::

    settings = UplinkSettings(
        site_id="depot-north", host="broker.example", port=8883, username="depot-north",
        password=secret, tls_context=ssl.create_default_context(),
        outbox_path=Path("/var/lib/fleetgrid/outbox.sqlite"),
    )
    async with Uplink(settings, on_command=apply_setpoints) as uplink:
        uplink.send(Telemetry, site_import_kw=42.0, evses=[...])      # queued on disk, then published
        uplink.set_state(GatewayState.FALLBACK, "no setpoints for 15 min")

How it behaves:

- :meth:`Uplink.send` writes the message to the :class:`~site_gateway.outbox.Outbox` (SQLite) with the
  next per-site ``seq`` and returns at once, connected or not. A drain task publishes the queue in
  order, one message at a time, and deletes each only after the broker's PUBACK: aiomqtt's
  ``Client.publish`` returns for QoS 1 only when paho's ``on_publish`` fires, which paho calls on the
  PUBACK (``aiomqtt/client.py``: ``publish`` waits on an event set in ``_on_publish``). A message whose
  PUBACK was lost with the connection is published again after reconnecting: the centre may see it
  twice and drops the repeat by ``seq``.
- The MQTT session is persistent (MQTT 3.1.1, ``clean_session=False``, client id
  ``fleetgrid-gw-{site_id}``), so QoS 1 setpoint commands sent while the gateway is away wait in the
  broker. The last will is a retained :class:`GatewayStatus` ``offline`` on the status topic; on every
  connect the gateway publishes its current state (``online`` or ``fallback``) there, retained, and on
  a clean exit (after up to ``drain_on_exit_s`` of draining) a retained ``offline`` with reason
  ``shutdown``. A status is a state, not an event: a newer one replaces any older one still queued, so
  after an outage the centre gets the current state, not the history. Statuses are ordered by arrival,
  not ``seq`` (the will's number is taken when its connection opens, before the statuses it follows).
  Every status, the will too, names the centre's newer fields the gateway reads
  (:attr:`UplinkSettings.reads`), which the centre sends only to a gateway that names them.
- Lost connections are retried for ever with jittered exponential backoff
  (:class:`~wire.reconnect.Backoff`; random and sleep are injectable).
- Setpoint commands are validated against the contract. A malformed one is answered with an ``error``
  :class:`CommandAck` (addressed to its ``command_id`` when one can be read) and a warning log line; an
  expired one, or one for another site, with ``rejected``; a repeated ``command_id`` is dropped. Valid
  ones go to ``on_command`` (sync or async; it should be quick) or, without a callback, to
  :attr:`Uplink.commands`. The uplink never acknowledges a valid command itself: whoever applies it
  sends the :class:`CommandAck` with the per-EVSE outcomes. An exception in ``on_command`` is logged
  and answered with an ``error`` ack; the uplink keeps running.

Broker side (Mosquitto): each site logs in with its site id as username, and an ACL keeps it to its
own topics; the centre has one user for all sites. Password file (``mosquitto_passwd -c -b passwd
depot-north SECRET``, then ``mosquitto_passwd -b passwd centre SECRET``) and ACL file::

    # mosquitto.conf
    allow_anonymous false
    password_file /etc/mosquitto/passwd
    acl_file /etc/mosquitto/acl

    # acl: %u is the username, which for a site is its site id
    user centre
    topic readwrite fleetgrid/v1/site/#

    pattern write fleetgrid/v1/site/%u/telemetry
    pattern write fleetgrid/v1/site/%u/session
    pattern write fleetgrid/v1/site/%u/status
    pattern write fleetgrid/v1/site/%u/ack
    pattern read  fleetgrid/v1/site/%u/setpoint

See ``docs/mosquitto-acl.md`` for the reasoning and a test recipe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import random as _random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from site_gateway.outbox import Outbox, OutboxMessage
from wire import mqtt
from wire.contract import (
    KIND_FOR_MODEL,
    QOS,
    READS_SETPOINT_TRANSACTION_ID,
    RETAINED,
    AckStatus,
    CommandAck,
    ContractError,
    GatewayState,
    GatewayStatus,
    SetpointCommand,
    SiteMessage,
    TopicKind,
    build,
    command_id_of,
    decode,
    encode,
    status_topic,
    topic,
)
from wire.mqtt import BrokerSettings
from wire.reconnect import keep_connected

log = logging.getLogger(__name__)

CommandHandler = Callable[[SetpointCommand], Awaitable[None] | None]


class UplinkError(RuntimeError):
    """The uplink cannot do what was asked (not entered, or a wait timed out)."""


@dataclass(frozen=True, kw_only=True)
class UplinkSettings(BrokerSettings):
    """The broker (:class:`~wire.mqtt.BrokerSettings`: host, port, login, TLS, keepalive, timeout,
    backoff) and the gateway's own side of the connection."""

    site_id: str
    outbox_path: Path
    client_id: str | None = None
    """Defaults to ``fleetgrid-gw-{site_id}``; must be stable so the broker keeps the session."""
    drain_on_exit_s: float = 2.0
    """On a clean exit, how long to keep publishing the outbox before disconnecting."""
    recent_commands: int = 256
    """How many command ids to remember for dropping repeats."""
    reads: frozenset[str] = frozenset({READS_SETPOINT_TRANSACTION_ID})
    """The centre→site fields added within schema version 1 this gateway reads, announced in every
    status (:attr:`wire.contract.GatewayStatus.reads`) so the centre sends them."""

    @property
    def identifier(self) -> str:
        return self.client_id or f"fleetgrid-gw-{self.site_id}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _refused(granted: tuple[int, ...] | list[ReasonCode]) -> bool:
    """Whether a SUBACK refused the subscription (0x80 in 3.1.1; a failure reason code in 5)."""
    return any(code.is_failure if isinstance(code, ReasonCode) else code >= 0x80 for code in granted)


class Uplink:
    """Async context manager owning the outbox, the MQTT connection and its tasks (see module doc)."""

    def __init__(
        self,
        settings: UplinkSettings,
        *,
        on_command: CommandHandler | None = None,
        clock: Callable[[], datetime] = _utc_now,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.site_id = settings.site_id
        self._on_command = on_command
        self._clock = clock
        self._random = random
        self._sleep = sleep
        self.outbox = Outbox(settings.outbox_path, clock=clock)
        self.commands: asyncio.Queue[SetpointCommand] = asyncio.Queue()
        """Valid commands, when no ``on_command`` callback was given."""
        self.connected = asyncio.Event()
        """Set while connected, subscribed and the current status published."""
        self.connects = 0
        """Successful connections so far (tests and health checks)."""
        self._state = GatewayState.ONLINE
        self._state_reason: str | None = None
        self._state_since = clock()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._recent: collections.deque[str] = collections.deque(maxlen=settings.recent_commands)
        self._will_seq: int | None = None
        self._client: aiomqtt.Client | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._connection: asyncio.Task[None] | None = None
        self._setpoint_topic = topic(self.site_id, TopicKind.SETPOINT)
        self._status_topic = status_topic(self.site_id)

    # ------------------------------------------------------------------------------------- life cycle

    async def __aenter__(self) -> Self:
        self.outbox.open()
        if len(self.outbox) == 0:
            self._drained.set()
        self._wakeup.set()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._connection = self._tasks.create_task(self._run(), name=f"uplink-connection[{self.site_id}]")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tasks is not None and self._connection is not None
        try:
            if self.connected.is_set():
                with contextlib.suppress(UplinkError):
                    await self.flush(self.settings.drain_on_exit_s)
            if self._client is not None and self.connected.is_set():
                self.outbox.discard(self._status_topic)
                await self._publish_status(self._client, GatewayState.OFFLINE, "shutdown", timeout=2.0)
        except (aiomqtt.MqttError, TimeoutError) as err:
            log.warning("site %s: could not publish the shutdown status: %s", self.site_id, err)
        finally:
            self._connection.cancel()
            try:
                await self._tasks.__aexit__(exc_type, exc, tb)
            finally:
                self._tasks = None
                self.outbox.close()

    # ------------------------------------------------------------------------------------ outbound API

    def send(self, model: type[SiteMessage], **fields: Any) -> OutboxMessage:
        """Queue one message; ``site_id``, ``seq`` and ``sent_at`` are filled in. Returns at once.

        Raises :class:`ContractError` when ``fields`` do not make a valid ``model`` (nothing is queued).
        """
        kind = KIND_FOR_MODEL[model]
        sent_at = self._clock()

        def payload(seq: int) -> bytes:
            return encode(build(model, **fields, site_id=self.site_id, seq=seq, sent_at=sent_at))

        message = self.outbox.enqueue(topic(self.site_id, kind), payload, qos=QOS, retain=kind in RETAINED)
        self._drained.clear()
        self._wakeup.set()
        return message

    def set_state(self, state: GatewayState, reason: str | None = None) -> OutboxMessage | None:
        """Record a mode change (``online`` / ``fallback``) and queue the retained status announcing it.

        Returns ``None`` (and queues nothing) when neither state nor reason changed.
        """
        if state is GatewayState.OFFLINE:
            raise ValueError("offline is the broker's to announce (last will) or the uplink's on exit")
        if (state, reason) == (self._state, self._state_reason):
            return None
        self._state, self._state_reason, self._state_since = state, reason, self._clock()
        log.info("site %s: state %s (%s)", self.site_id, state.value, reason or "no reason given")
        self.outbox.discard(self._status_topic)
        return self.send(
            GatewayStatus, state=state, reason=reason, since=self._state_since, reads=self._reads()
        )

    @property
    def state(self) -> GatewayState:
        return self._state

    async def wait_connected(self, timeout: float) -> None:
        await self._wait(self.connected, timeout, "connected")

    async def flush(self, timeout: float) -> None:
        """Wait until every queued message has been acknowledged by the broker."""
        await self._wait(self._drained, timeout, "drained")

    async def _wait(self, event: asyncio.Event, timeout: float, what: str) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            raise UplinkError(f"site {self.site_id}: not {what} after {timeout} s") from None

    # ------------------------------------------------------------------------------------- connection

    async def _run(self) -> None:
        def lost() -> None:
            self.connected.clear()
            self._client = None

        await keep_connected(
            self._session,
            who=f"site {self.site_id}",
            host=self.settings.host,
            port=self.settings.port,
            backoff=self.settings.backoff,
            random=self._random,
            sleep=self._sleep,
            on_lost=lost,
        )

    async def _session(self, connected: Callable[[], None]) -> None:
        s = self.settings
        if self._will_seq is None:
            self._will_seq = self.outbox.reserve_seq()
        will = GatewayStatus(
            site_id=self.site_id,
            seq=self._will_seq,
            sent_at=self._clock(),
            state=GatewayState.OFFLINE,
            reason="connection lost",
            reads=self._reads(),
        )
        client = mqtt.client(
            s,
            s.identifier,
            clean_session=False,
            will=aiomqtt.Will(self._status_topic, encode(will), qos=QOS, retain=True),
        )
        async with client:
            connected()
            self._will_seq = None  # this connection's will is armed; the next one takes a new number
            self.connects += 1
            granted = await client.subscribe(self._setpoint_topic, qos=QOS, timeout=s.timeout_s)
            if _refused(granted):
                log.error(
                    "site %s: the broker refused the subscription to %s (ACL?); no commands will arrive",
                    self.site_id,
                    self._setpoint_topic,
                )
            self.outbox.discard(self._status_topic)  # superseded by the current state, sent now
            await self._publish_status(client, self._state, self._state_reason)
            log.info("site %s: connected to %s:%s as %s", self.site_id, s.host, s.port, s.identifier)
            self._client = client
            self.connected.set()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._drain(client), name=f"uplink-drain[{self.site_id}]")
                tasks.create_task(self._receive(client), name=f"uplink-commands[{self.site_id}]")

    async def _publish_status(
        self, client: aiomqtt.Client, state: GatewayState, reason: str | None, timeout: float | None = None
    ) -> None:
        now = self._clock()
        status = GatewayStatus(
            site_id=self.site_id,
            seq=self.outbox.reserve_seq(),
            sent_at=now,
            state=state,
            reason=reason,
            since=now if state is GatewayState.OFFLINE else self._state_since,
            reads=self._reads(),
        )
        await client.publish(
            self._status_topic,
            encode(status),
            qos=QOS,
            retain=True,
            timeout=self.settings.timeout_s if timeout is None else timeout,
        )

    def _reads(self) -> tuple[str, ...]:
        return tuple(sorted(self.settings.reads))

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the outbox head, wait for its PUBACK, delete it; repeat. Never reorders."""
        while True:
            head = self.outbox.peek()
            if head is None:
                self._drained.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await client.publish(
                head.topic, head.payload, qos=head.qos, retain=head.retain, timeout=self.settings.timeout_s
            )
            self.outbox.remove(head.id)

    # --------------------------------------------------------------------------------------- commands

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Read commands until the connection drops (then ``messages`` raises ``MqttError``)."""
        async for message in client.messages:
            if not message.topic.matches(self._setpoint_topic):
                log.warning("site %s: ignoring a message on %s", self.site_id, message.topic)
                continue
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode()
            elif not isinstance(payload, bytes | bytearray):
                payload = b"" if payload is None else str(payload).encode()
            await self._handle_command(bytes(payload))

    async def _handle_command(self, data: bytes) -> None:
        try:
            command = decode(SetpointCommand, data)
        except ContractError as exc:
            command_id = command_id_of(data)
            log.warning("site %s: malformed setpoint command %s: %s", self.site_id, command_id, exc)
            self._ack(command_id, AckStatus.ERROR, f"malformed command: {exc}")
            return
        if command.site_id != self.site_id:
            self._reject(command, f"command is for site {command.site_id!r}, this is {self.site_id!r}")
            return
        now = self._clock()
        if command.valid_until <= now:
            self._reject(command, f"expired at {command.valid_until.isoformat()} (now {now.isoformat()})")
            return
        if command.command_id in self._recent:
            log.info("site %s: dropping repeated command %s", self.site_id, command.command_id)
            return
        self._recent.append(command.command_id)
        if self._on_command is None:
            self.commands.put_nowait(command)
            return
        try:
            result = self._on_command(command)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.exception("site %s: command %s failed", self.site_id, command.command_id)
            self._ack(command.command_id, AckStatus.ERROR, f"gateway failed to apply it: {exc!r}")

    def _reject(self, command: SetpointCommand, why: str) -> None:
        log.warning("site %s: rejecting command %s: %s", self.site_id, command.command_id, why)
        self._ack(command.command_id, AckStatus.REJECTED, why)

    def _ack(self, command_id: str | None, status: AckStatus, error: str) -> None:
        self.send(CommandAck, command_id=command_id, status=status, error=error[:2000])
