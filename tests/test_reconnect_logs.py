"""The reconnect loop's log lines across a real broker that is away for several attempts: one WARNING
when the connection fails, DEBUG for each further failure, one INFO when it is back with the count
and the time it was away (``wire.reconnect.keep_connected``).

Before, every failed attempt was a WARNING (four attempts, four warnings), and nothing said when the
broker came back; ``test_a_broker_that_starts_late_is_one_warning_and_one_info`` fails on that code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest
from mosquitto import Mosquitto

from wire.reconnect import Backoff, keep_connected

BACKOFF = Backoff(initial_s=1.0, max_s=8.0)  # with random() = 1: 1, 2, 4, 8, 8 ... s


class Broker:
    """A session that connects to ``mq``, and counts its connections; a fake sleep that only records
    the delay, moves the fake monotonic time on and starts ``mq`` at the ``start_at``-th wait."""

    def __init__(self, mq: Mosquitto, start_at: int) -> None:
        self.mq, self.start_at = mq, start_at
        self.delays: list[float] = []
        self.now = 0.0
        self.connections = 0
        self.up = asyncio.Event()

    async def session(self, connected: Callable[[], None]) -> None:
        async with aiomqtt.Client(self.mq.host, self.mq.port, timeout=2) as client:
            connected()
            self.connections += 1
            self.up.set()
            async for _ in client.messages:  # nothing subscribed: ends only with the connection
                pass
            raise aiomqtt.MqttError("connection closed")

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds
        if len(self.delays) == self.start_at:
            self.mq.start()
        await asyncio.sleep(0)

    def monotonic(self) -> float:
        return self.now


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "wire.reconnect" and r.levelno == level]


async def until_up(broker: Broker, task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(30):
        while not broker.up.is_set():
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    broker.up.clear()


def test_a_broker_that_starts_late_is_one_warning_and_one_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wire.reconnect")
    mq = Mosquitto(tmp_path / "broker")  # not started: four attempts are refused, the fifth gets through
    broker = Broker(mq, start_at=4)

    async def scenario() -> None:
        task = asyncio.create_task(
            keep_connected(
                broker.session,
                who="test",
                host=mq.host,
                port=mq.port,
                backoff=BACKOFF,
                random=lambda: 1.0,
                sleep=broker.sleep,
            )
        )
        await until_up(broker, task)
        task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        mq.stop()
    assert broker.delays == [1.0, 2.0, 4.0, 8.0]
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert [r.getMessage().split(" (")[0] for r in warnings] == [
        f"test: MQTT connection to {mq.host}:{mq.port} failed"
    ]
    assert warnings[0].__dict__["connection"] == "mqtt" and warnings[0].__dict__["state"] == "down"
    assert len(records(caplog, logging.DEBUG)) == 3
    (info,) = records(caplog, logging.INFO)
    assert "up again after 4 failed attempts" in info.getMessage()
    assert info.__dict__["state"] == "up" and info.__dict__["failed_attempts"] == 4


def test_a_lost_connection_is_one_warning_and_one_info_with_the_time_it_was_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wire.reconnect")
    mq = Mosquitto(tmp_path / "broker")
    broker = Broker(mq, start_at=3)  # lost; two attempts refused; back at the third

    async def scenario() -> None:
        mq.start()
        task = asyncio.create_task(
            keep_connected(
                broker.session,
                who="test",
                host=mq.host,
                port=mq.port,
                backoff=BACKOFF,
                random=lambda: 1.0,
                sleep=broker.sleep,
                monotonic=broker.monotonic,
            )
        )
        await until_up(broker, task)
        # a first connection that gets through says nothing here
        assert not [r for r in caplog.records if r.name == "wire.reconnect"]
        mq.stop()
        await until_up(broker, task)
        task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        mq.stop()
    assert broker.connections == 2
    assert broker.delays == [1.0, 2.0, 4.0]
    (warning,) = records(caplog, logging.WARNING)
    assert "lost" in warning.getMessage()
    assert len(records(caplog, logging.DEBUG)) == 2
    (info,) = records(caplog, logging.INFO)
    assert info.getMessage() == (
        f"test: MQTT connection to {mq.host}:{mq.port} up again after 2 failed attempts in 7.0 s"
    )
    assert info.__dict__["down_s"] == 7.0
