"""The MQTT uplink against a real, test-owned Mosquitto: order, status and will, commands, outages."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
import pytest
from mosquitto import Mosquitto

from site_gateway.uplink import Uplink, UplinkSettings
from wire.contract import (
    AckStatus,
    CommandAck,
    EvseSetpoint,
    GatewayState,
    GatewayStatus,
    SetpointCommand,
    Telemetry,
    TopicKind,
    ack_topic,
    decode,
    encode,
    setpoint_topic,
    status_topic,
    subscription,
    telemetry_topic,
)
from wire.reconnect import Backoff

SITE = "depot-north"
FAST = Backoff(initial_s=0.05, max_s=0.5)


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (no pytest-asyncio/anyio plugin in the dev deps)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def settings(mq: Mosquitto, tmp_path: Path, **overrides: Any) -> UplinkSettings:
    fields: dict[str, Any] = {
        "site_id": SITE,
        "host": mq.host,
        "port": mq.port,
        "outbox_path": tmp_path / "outbox.sqlite",
        "backoff": FAST,
        "timeout_s": 5.0,
    }
    fields.update(overrides)
    return UplinkSettings(**fields)


class Recorder:
    """The centre's side: a subscriber that reconnects; with ``client_id`` a persistent QoS 1 session."""

    def __init__(
        self,
        mq: Mosquitto,
        topic: str,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.mq, self.topic, self.client_id = mq, topic, client_id
        self.username, self.password = username, password
        self.messages: list[aiomqtt.Message] = []
        self.subscribed = asyncio.Event()
        self.connects = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.mq.host,
                    self.mq.port,
                    identifier=self.client_id,
                    clean_session=not self.client_id,
                    username=self.username,
                    password=self.password,
                    timeout=5,
                ) as client:
                    self.connects += 1
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.messages.append(message)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"recorder[{self.topic}]")
        await asyncio.wait_for(self.subscribed.wait(), 5)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def payloads(self, topic: str | None = None) -> list[dict[str, Any]]:
        return [
            json.loads(bytes(m.payload))  # type: ignore[arg-type]
            for m in self.messages
            if topic is None or m.topic.value == topic
        ]

    async def wait_for(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.02)


async def publish(mq: Mosquitto, topic: str, payload: bytes, **login: str) -> None:
    async with aiomqtt.Client(mq.host, mq.port, timeout=5, **login) as client:  # type: ignore[arg-type]
        await client.publish(topic, payload, qos=1)


def send_telemetry(uplink: Uplink, i: int) -> int:
    return uplink.send(Telemetry, site_import_kw=float(i), evses=[]).seq


# ------------------------------------------------------------------------------------------ publishing


@run_async
async def test_telemetry_is_published_in_order_and_removed_from_the_outbox(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with Recorder(broker, telemetry_topic(SITE)) as centre, Uplink(settings(broker, tmp_path)) as up:
        seqs = [send_telemetry(up, i) for i in range(200)]
        await up.flush(timeout=10)
        assert len(up.outbox) == 0
        await centre.wait_for(lambda: len(centre.messages) >= 200)
        received = [decode(Telemetry, bytes(m.payload)) for m in centre.messages]  # type: ignore[arg-type]
    assert [t.seq for t in received] == seqs
    assert [t.site_import_kw for t in received] == [float(i) for i in range(200)]
    assert all(t.site_id == SITE for t in received)


@run_async
async def test_messages_queued_before_connecting_are_sent_first(broker: Mosquitto, tmp_path: Path) -> None:
    broker.stop()
    async with Uplink(settings(broker, tmp_path)) as up:
        early = [send_telemetry(up, i) for i in range(5)]
        await asyncio.sleep(0.3)  # a few refused connection attempts
        assert up.connects == 0 and len(up.outbox) == 5
    broker.start()
    async with Recorder(broker, telemetry_topic(SITE)) as centre, Uplink(settings(broker, tmp_path)) as up:
        late = send_telemetry(up, 99)
        await up.flush(timeout=10)
        await centre.wait_for(lambda: len(centre.messages) >= 6)
    assert [p["seq"] for p in centre.payloads()] == [*early, late]


@run_async
async def test_reconnect_backs_off_with_jitter_through_the_injected_sleep(
    broker: Mosquitto, tmp_path: Path
) -> None:
    broker.stop()
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    backoff = Backoff(initial_s=1.0, max_s=8.0)
    uplink = Uplink(settings(broker, tmp_path, backoff=backoff), random=lambda: 1.0, sleep=sleep)
    async with uplink:
        async with asyncio.timeout(5):
            while len(delays) < 6:
                await asyncio.sleep(0.01)
    assert delays[:6] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.delay(0, lambda: 0.0) == 0.5  # the jitter keeps at least half


# ------------------------------------------------------------------------------------ status and will


@run_async
async def test_online_status_is_retained_and_a_clean_exit_says_shutdown(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with Uplink(settings(broker, tmp_path)) as up:
        await up.wait_connected(5)
        up.set_state(GatewayState.FALLBACK, "no setpoints for 15 min")
        await up.flush(5)
        async with Recorder(broker, status_topic(SITE)) as late_subscriber:
            await late_subscriber.wait_for(lambda: bool(late_subscriber.messages))
            retained = late_subscriber.messages[0]
        up.set_state(GatewayState.ONLINE)
    assert retained.retain
    status = decode(GatewayStatus, bytes(retained.payload))  # type: ignore[arg-type]
    assert (status.state, status.reason) == (GatewayState.FALLBACK, "no setpoints for 15 min")

    async with Recorder(broker, status_topic(SITE)) as after_exit:
        await after_exit.wait_for(lambda: bool(after_exit.messages))
    final = decode(GatewayStatus, bytes(after_exit.messages[0].payload))  # type: ignore[arg-type]
    assert (final.state, final.reason) == (GatewayState.OFFLINE, "shutdown")


GATEWAY_PROCESS = """
import asyncio, sys
from pathlib import Path
from site_gateway.uplink import Uplink, UplinkSettings

async def main() -> None:
    settings = UplinkSettings(site_id=sys.argv[1], host="127.0.0.1", port=int(sys.argv[2]),
                              outbox_path=Path(sys.argv[3]))
    async with Uplink(settings) as uplink:
        await uplink.wait_connected(10)
        print("connected", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@run_async
async def test_last_will_marks_a_killed_gateway_offline(broker: Mosquitto, tmp_path: Path) -> None:
    args = [sys.executable, "-c", GATEWAY_PROCESS, SITE, str(broker.port), str(tmp_path / "o.sqlite")]
    gateway = subprocess.Popen(args, stdout=subprocess.PIPE)
    try:
        async with Recorder(broker, status_topic(SITE)) as centre:
            assert gateway.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(gateway.stdout.readline), 15)
            assert line.strip() == b"connected"
            await centre.wait_for(lambda: len(centre.messages) >= 1)
            gateway.kill()  # SIGKILL: no DISCONNECT, the broker sees the socket close
            gateway.wait(5)
            await centre.wait_for(lambda: len(centre.messages) >= 2)
        states = [decode(GatewayStatus, bytes(m.payload)).state for m in centre.messages]  # type: ignore[arg-type]
        assert states == [GatewayState.ONLINE, GatewayState.OFFLINE]
        async with Recorder(broker, status_topic(SITE)) as newcomer:
            await newcomer.wait_for(lambda: bool(newcomer.messages))
        assert newcomer.messages[0].retain
        assert newcomer.payloads()[0]["state"] == "offline"
        assert newcomer.payloads()[0]["reason"] == "connection lost"
    finally:
        gateway.kill()
        gateway.wait(5)
        if gateway.stdout is not None:
            gateway.stdout.close()


# -------------------------------------------------------------------------------------------- commands


def setpoint(command_id: str, *, valid_for: timedelta = timedelta(minutes=15), site: str = SITE) -> bytes:
    now = datetime.now(UTC)
    return encode(
        SetpointCommand(
            site_id=site,
            command_id=command_id,
            issued_at=min(now, now + valid_for) - timedelta(minutes=1),
            valid_until=now + valid_for,
            setpoints=(EvseSetpoint(charger_id="CP-01", evse_id=1, power_kw=-7.4),),
        )
    )


@run_async
async def test_commands_valid_ones_reach_the_callback_bad_ones_get_an_error_ack(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[SetpointCommand] = []

    async def on_command(command: SetpointCommand) -> None:
        received.append(command)
        if command.command_id == "cmd-explodes":
            raise RuntimeError("charger offline")

    caplog.set_level(logging.WARNING, logger="site_gateway.uplink")
    topic = setpoint_topic(SITE)
    async with (
        Recorder(broker, ack_topic(SITE)) as acks,
        Uplink(settings(broker, tmp_path), on_command=on_command) as up,
    ):
        await up.wait_connected(5)
        await publish(broker, topic, b"{definitely not json")
        await publish(broker, topic, b'{"command_id": "cmd-bad", "site_id": "depot-north"}')
        await publish(broker, topic, setpoint("cmd-1"))
        await publish(broker, topic, setpoint("cmd-1"))  # repeated: dropped
        await publish(broker, topic, setpoint("cmd-old", valid_for=-timedelta(minutes=1)))
        await publish(broker, topic, setpoint("cmd-explodes"))
        await publish(broker, topic, setpoint("cmd-2"))
        await acks.wait_for(lambda: len(acks.messages) >= 4)
        await asyncio.sleep(0.2)  # nothing else arrives
        # still publishing after all that
        async with Recorder(broker, telemetry_topic(SITE)) as centre:
            send_telemetry(up, 1)
            await centre.wait_for(lambda: len(centre.messages) == 1)

    assert [c.command_id for c in received] == ["cmd-1", "cmd-explodes", "cmd-2"]
    assert received[0].setpoints[0].power_kw == -7.4
    answers = [decode(CommandAck, bytes(m.payload)) for m in acks.messages]  # type: ignore[arg-type]
    assert [(a.command_id, a.status) for a in answers] == [
        (None, AckStatus.ERROR),
        ("cmd-bad", AckStatus.ERROR),
        ("cmd-old", AckStatus.REJECTED),
        ("cmd-explodes", AckStatus.ERROR),
    ]
    assert answers[1].error is not None and "issued_at" in answers[1].error
    assert answers[2].error is not None and "expired" in answers[2].error
    assert answers[3].error is not None and "charger offline" in answers[3].error
    assert "malformed setpoint command cmd-bad" in caplog.text


@run_async
async def test_without_a_callback_commands_go_to_the_queue_even_if_sent_while_away(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with Uplink(settings(broker, tmp_path)) as up:
        await up.wait_connected(5)  # the broker now holds a persistent session with the subscription
    await publish(broker, setpoint_topic(SITE), setpoint("while-away"))
    async with Uplink(settings(broker, tmp_path)) as up:
        command = await asyncio.wait_for(up.commands.get(), 5)
    assert command.command_id == "while-away"


# ---------------------------------------------------------------------------------------------- outage

OUTAGE_S = 30.0
RATE_HZ = 10.0


@pytest.mark.slow
@run_async
async def test_a_30_s_broker_outage_loses_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    """The issue's acceptance test: telemetry at 10 msg/s through a 30 s outage arrives complete."""
    sent: list[int] = []

    async def produce(up: Uplink, seconds: float) -> None:
        for _ in range(round(seconds * RATE_HZ)):
            sent.append(send_telemetry(up, len(sent)))
            await asyncio.sleep(1 / RATE_HZ)

    centre = Recorder(broker, subscription(TopicKind.TELEMETRY), client_id="centre-test")
    async with centre, Uplink(settings(broker, tmp_path)) as up:
        await up.wait_connected(5)
        await produce(up, 1.0)
        broker.stop()
        await produce(up, OUTAGE_S)
        assert len(up.outbox) >= OUTAGE_S * RATE_HZ - 1
        broker.start()
        await produce(up, 1.0)
        await up.flush(timeout=30)
        await centre.wait_for(lambda: len({p["seq"] for p in centre.payloads()}) >= len(sent), 30)
        connects = up.connects

    seqs = [p["seq"] for p in centre.payloads()]
    unique = list(dict.fromkeys(seqs))  # first arrival of each seq, in arrival order
    assert unique == sent, "every message exactly once by seq, in order"
    assert connects == 2
    assert centre.connects >= 2
    duplicates = len(seqs) - len(unique)
    print(f"\noutage: {len(sent)} messages, {duplicates} duplicate deliveries (dropped by seq)")


# --------------------------------------------------------------------------------------------- the ACL


def acl_from_docs() -> str:
    """The ACL in docs/mosquitto-acl.md, so the documented file is the tested one."""
    text = (Path(__file__).parent.parent / "docs" / "mosquitto-acl.md").read_text()
    start = text.index("```acl\n") + len("```acl\n")
    return text[start : text.index("```", start)]


@run_async
async def test_a_site_can_only_use_its_own_topics(tmp_path: Path) -> None:
    users = {"site-a": "secret-a", "site-b": "secret-b", "centre": "secret-c"}
    with Mosquitto(tmp_path / "acl-broker", users=users, acl=acl_from_docs()) as mq:
        a = {"username": "site-a", "password": "secret-a"}
        centre_login = {"username": "centre", "password": "secret-c"}
        async with Recorder(mq, subscription(), **centre_login) as centre:
            await publish(mq, telemetry_topic("site-b"), b'{"forged": true}', **a)
            await publish(mq, setpoint_topic("site-b"), b'{"forged": true}', **a)
            await publish(mq, telemetry_topic("site-a"), b'{"own": true}', **a)
            await centre.wait_for(lambda: bool(centre.messages))
            await asyncio.sleep(0.2)
            assert [m.topic.value for m in centre.messages] == [telemetry_topic("site-a")]

            # reading: site A gets its own setpoints, not site B's
            async with Recorder(mq, "fleetgrid/v1/site/+/setpoint", **a) as site_a:
                await publish(mq, setpoint_topic("site-b"), b"for b", **centre_login)
                await publish(mq, setpoint_topic("site-a"), b"for a", **centre_login)
                await site_a.wait_for(lambda: bool(site_a.messages))
                await asyncio.sleep(0.2)
                assert [bytes(m.payload) for m in site_a.messages] == [b"for a"]  # type: ignore[arg-type]

            # the uplink works with its own credentials, will and all
            up_settings = settings(mq, tmp_path, site_id="site-a", username="site-a", password="secret-a")
            async with Uplink(up_settings) as up:
                await up.wait_connected(5)
                send_telemetry(up, 1)
                await up.flush(5)
                await centre.wait_for(lambda: len(centre.messages) >= 3)
            topics = [m.topic.value for m in centre.messages]
            assert status_topic("site-a") in topics and topics.count(telemetry_topic("site-a")) == 2

        with pytest.raises(aiomqtt.MqttError):
            await publish(mq, telemetry_topic("site-a"), b"x", username="site-a", password="wrong")
