"""The embedded broker under a slow subscriber: QoS 0 readings are delayed, and whatever amqtt
discards (deliveries pending when the subscriber's connection closes) is counted, so that
published == delivered + counters.undelivered."""

from __future__ import annotations

import asyncio

import pytest

from protocols.mqtt.broker import EmbeddedBroker
from tests.protocols.mqtt.conftest import PASSWORDS, eventually
from tests.protocols.mqtt.test_broker_topics import _length, _string, connect_packet

pytestmark = pytest.mark.integration

MESSAGES = 600
PAYLOAD = b"x" * 16_384  # 600 x 16 KiB = ~10 MB, well past loopback socket buffers
TOPIC = b"plant/pump1/raw/level"


def qos0_publish(topic: bytes, payload: bytes) -> bytes:
    body = _string(topic) + payload
    return bytes([0x30]) + _length(len(body)) + body


def subscribe_packet(topic_filter: bytes) -> bytes:
    body = (1).to_bytes(2, "big") + _string(topic_filter) + b"\x00"
    return bytes([0x82]) + _length(len(body)) + body


async def _connect(
    broker: EmbeddedBroker, user: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(connect_packet(user, PASSWORDS[user]))
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
    return reader, writer


async def _slow_subscriber(
    broker: EmbeddedBroker,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Subscribed to plant/# at QoS 0, and reading nothing until the test says so."""
    reader, writer = await _connect(broker, "agent")
    writer.write(subscribe_packet(b"plant/#"))
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"\x90\x03\x00\x01\x00"
    return reader, writer


async def _count_publishes(reader: asyncio.StreamReader, until: int | None = None) -> int:
    """PUBLISH packets read until EOF (or until `until` of them arrived)."""
    count = 0
    while until is None or count < until:
        try:
            kind = (await reader.readexactly(1))[0]
            length, multiplier = 0, 1
            while True:
                byte = (await reader.readexactly(1))[0]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                if not byte & 0x80:
                    break
            await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return count  # a packet cut short by the close was not delivered
        count += kind >> 4 == 3
    return count


async def _flood(broker: EmbeddedBroker) -> asyncio.StreamWriter:
    _, publisher = await _connect(broker, "pump1")
    publisher.write(qos0_publish(TOPIC, PAYLOAD) * MESSAGES)
    await publisher.drain()
    await eventually(lambda: broker.counters.broadcasts == MESSAGES, within=5)
    return publisher


async def test_a_slow_subscriber_delays_qos0_messages_but_loses_none(
    broker: EmbeddedBroker,
) -> None:
    reader, subscriber = await _slow_subscriber(broker)
    publisher = await _flood(broker)
    # amqtt's queues are unbounded: the subscriber's share waits in the broker, nothing dropped.
    assert broker.backlog > 0
    assert await asyncio.wait_for(_count_publishes(reader, until=MESSAGES), 10) == MESSAGES
    await eventually(lambda: broker.backlog == 0)
    assert broker.counters.undelivered == 0
    publisher.close()
    subscriber.close()


async def test_deliveries_discarded_at_shutdown_are_counted(broker: EmbeddedBroker) -> None:
    reader, subscriber = await _slow_subscriber(broker)
    publisher = await _flood(broker)
    assert broker.backlog > 0
    # The broker stops while most deliveries are still pending; the subscriber reads what it
    # was sent until the broker closes the connection.
    delivered, _ = await asyncio.wait_for(
        asyncio.gather(_count_publishes(reader), broker.close()), 10
    )
    undelivered = broker.counters.undelivered
    assert undelivered > 0, "the scenario must make amqtt discard deliveries"
    assert delivered + undelivered == MESSAGES, (delivered, undelivered)
    publisher.close()
    subscriber.close()


async def test_qos0_messages_for_a_disconnected_persistent_session_are_counted(
    broker: EmbeddedBroker,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    persistent = bytearray(connect_packet("agent", PASSWORDS["agent"]))
    persistent[persistent.index(b"MQTT") + 5] = 0xC0  # username, password, no clean session
    writer.write(bytes(persistent))
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
    writer.write(subscribe_packet(b"plant/#"))
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"\x90\x03\x00\x01\x00"
    writer.write(b"\xe0\x00")  # DISCONNECT: the session and its QoS 0 subscription stay
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await eventually(lambda: broker.session_count == 1 and broker.backlog == 0)
    _, publisher = await _connect(broker, "pump1")
    publisher.write(qos0_publish(TOPIC, b"1") * 3)
    await publisher.drain()
    await eventually(lambda: broker.counters.undelivered == 3)
    assert broker.counters.broadcasts == 3
    publisher.close()


async def test_publishes_amqtt_drops_unbroadcast_are_counted(broker: EmbeddedBroker) -> None:
    _, publisher = await _connect(broker, "pump1")
    dup = bytearray(qos0_publish(TOPIC, b"1"))
    dup[0] |= 0x08  # DUP on QoS 0 [MQTT-3.3.1-2]: amqtt ignores it
    publisher.write(
        qos0_publish(b"plant/pump2/raw/level", b"1")  # outside pump1's ACL
        + bytes(dup)
        + qos0_publish(TOPIC, b"1")  # accepted
        # '$' topics are the broker's [MQTT-4.7.2-1]; amqtt also ends the connection
        + qos0_publish(b"$SYS/level", b"1")
    )
    await publisher.drain()
    await eventually(lambda: broker.counters.broadcasts == 1)
    await eventually(
        lambda: broker.counters.refused_publishes == 3, why=lambda: str(broker.counters)
    )
    publisher.close()
