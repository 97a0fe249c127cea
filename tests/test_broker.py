"""The in-process broker carries what our MQTT contract relies on: QoS 1, persistent sessions, retained
status and last wills."""

from __future__ import annotations

import asyncio

import aiomqtt

from aggregator.runtime.broker import EmbeddedBroker


async def _first(client: aiomqtt.Client, timeout: float = 5.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            return message
    raise AssertionError("no message")


def test_qos1_delivery_and_retained_status() -> None:
    async def scenario() -> None:
        async with EmbeddedBroker() as broker:
            async with aiomqtt.Client(broker.host, broker.port) as centre:
                await centre.subscribe("fleetgrid/v1/site/+/telemetry", qos=1)
                async with aiomqtt.Client(broker.host, broker.port) as site:
                    await site.publish("fleetgrid/v1/site/s1/telemetry", b"reading", qos=1)
                    await site.publish("fleetgrid/v1/site/s1/status", b"online", qos=1, retain=True)
                received = await _first(centre)
                assert (str(received.topic), received.payload) == (
                    "fleetgrid/v1/site/s1/telemetry",
                    b"reading",
                )
            async with aiomqtt.Client(broker.host, broker.port) as late:
                await late.subscribe("fleetgrid/v1/site/+/status", qos=1)
                retained = await _first(late)
                assert retained.payload == b"online" and retained.retain

    asyncio.run(scenario())


def test_a_last_will_is_published_when_a_client_vanishes() -> None:
    async def scenario() -> None:
        async with EmbeddedBroker() as broker, aiomqtt.Client(broker.host, broker.port) as watcher:
            await watcher.subscribe("will/#", qos=1)
            will = aiomqtt.Will("will/s1", b"offline", qos=1)
            doomed = aiomqtt.Client(broker.host, broker.port, will=will, keepalive=1)
            await doomed.__aenter__()
            doomed._client._sock.close()  # type: ignore[union-attr]  # vanish without DISCONNECT
            message = await _first(watcher, timeout=10)
            assert message.payload == b"offline"

    asyncio.run(scenario())
