"""Topic names MQTT 3.1.1 forbids, sent on a raw socket to the embedded broker: the connection
closes (sections 1.5.3 and 4.7), nothing becomes a tag, and the bytes after never become packets.
Names the cloud could never store (empty, over its limit) are dead letters."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import pytest

from cloud.contract.wire import WireName
from protocols.driver import ConnectionState
from protocols.mqtt.broker import EmbeddedBroker
from protocols.mqtt.config import MqttSubscription, RawDecoder
from protocols.mqtt.driver import MqttDriver
from protocols.reading import MAX_NAME_CHARS
from tests.protocols.mqtt.conftest import (
    PASSWORDS,
    Collector,
    eventually,
    running,
    source_config,
    telemetry,
    until_state,
)

pytestmark = pytest.mark.integration

SUBSCRIPTIONS = (
    MqttSubscription(topic="plant/{device}/telemetry"),
    MqttSubscription(topic="plant/{device}/raw/{tag}", decoder=RawDecoder()),
)


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def connect_packet(username: str, password: str) -> bytes:
    variable = _string(b"MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big")
    body = variable + _string(b"raw-" + username.encode()) + _string(username.encode())
    body += _string(password.encode())
    return bytes([0x10]) + _length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, packet_id: int = 1) -> bytes:
    """A QoS 1 PUBLISH, the topic bytes exactly as given."""
    body = _string(topic) + packet_id.to_bytes(2, "big") + payload
    return bytes([0x32]) + _length(len(body)) + body


async def raw_publish(broker: EmbeddedBroker, packets: bytes) -> bytes:
    """Connect as pump1, send `packets`, and return everything the broker sent back until it
    closed the connection (or 3 s passed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(connect_packet("pump1", PASSWORDS["pump1"]))
        connack = await asyncio.wait_for(reader.readexactly(4), 5)
        assert connack == b"\x20\x02\x00\x00", connack
        writer.write(packets)
        await writer.drain()
        received = b""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), deadline - time.monotonic())
            except TimeoutError:
                break
            if not chunk:
                return received
            received += chunk
        raise AssertionError(f"the broker kept the connection open (sent {received!r})")
    finally:
        writer.close()


# A whole valid PUBLISH hidden in the payload: a broker that lost its place in the stream after
# a bad topic would parse it as the next packet and deliver it.
SMUGGLED = publish_packet(b"plant/pump1/raw/smuggled", b"99", packet_id=7)
BAD_TOPICS = [
    b"plant/pump1/raw/le\x00vel",  # U+0000 [MQTT-1.5.3-2]
    b"plant/pump1/raw/\xff\xfelevel",  # not UTF-8 [MQTT-1.5.3-1]
    b"plant/pump1/raw/\xed\xa0\x80",  # an encoded surrogate [MQTT-1.5.3-1]
    b"plant/pump1/raw/+",  # wildcards in a topic name [MQTT-3.3.2-2]
    b"plant/pump1/raw/#",
    b"",  # empty [MQTT-4.7.3-1]
]


async def test_forbidden_topic_names_close_the_connection_and_never_become_tags(
    broker: EmbeddedBroker, collector: Collector
) -> None:
    driver = MqttDriver(
        source_config(broker.url, subscriptions=SUBSCRIPTIONS), dead_letters=collector.dead
    )
    async with running(driver, collector):
        await until_state(driver, ConnectionState.CONNECTED)
        for topic in BAD_TOPICS:
            answer = await raw_publish(broker, publish_packet(topic, SMUGGLED) + SMUGGLED)
            assert answer == b"", f"{topic!r}: the broker answered {answer!r} (PUBACK?)"
        # The broker still serves well-behaved clients, and the driver still receives.
        good = publish_packet(b"plant/pump1/raw/level", b"4.5")
        assert await _puback_for(broker, good)
        await collector.until(lambda: len(collector.readings) == 1)
        await asyncio.sleep(0.3)  # anything smuggled would arrive by now
    assert [(r.tag, r.value) for r in collector.readings] == [("level", 4.5)]
    assert collector.letters == []
    assert broker.counters.malformed_topics == len(BAD_TOPICS)
    assert driver.link.reconnects == 0


async def _puback_for(broker: EmbeddedBroker, packet: bytes) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(connect_packet("pump1", PASSWORDS["pump1"]))
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
        writer.write(packet)
        return await asyncio.wait_for(reader.readexactly(4), 5) == b"\x40\x02\x00\x01"
    finally:
        writer.close()


async def test_empty_and_over_long_tag_names_are_dead_letters(
    broker: EmbeddedBroker, collector: Collector
) -> None:
    assert WireName.__metadata__[0].metadata[1].max_length == MAX_NAME_CHARS  # type: ignore[attr-defined]
    long_name = "t" * 20_000
    bad = [
        ("plant/pump1/telemetry", telemetry(**{"": 1.0})),
        ("plant/pump1/telemetry", telemetry(**{long_name: 1.0})),
        ("plant/pump1/telemetry", telemetry(**{"t" * 201: 1.0})),
        ("plant/pump1/raw/" + "x" * (MAX_NAME_CHARS + 1), b"1.5"),
    ]
    driver = MqttDriver(
        source_config(broker.url, subscriptions=SUBSCRIPTIONS), dead_letters=collector.dead
    )
    async with running(driver, collector):
        await until_state(driver, ConnectionState.CONNECTED)
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username="pump1", password=PASSWORDS["pump1"]
        ) as pump1:
            for topic, payload in bad:
                await pump1.publish(topic, payload, qos=1)
            await pump1.publish("plant/pump1/telemetry", telemetry(**{"t" * 200: 2.0}), qos=1)
        await collector.until(lambda: len(collector.letters) == len(bad))
        await eventually(lambda: len(collector.readings) == 1)
    reasons = [letter.reason for letter in collector.letters]
    assert reasons[0] == "tag name '' is empty"
    assert reasons[1] == (
        f"tag name {'t' * 40!r} has 20000 characters, more than the cloud's limit of 200"
    )
    assert "has 201 characters" in reasons[2]
    assert "has 201 characters" in reasons[3]
    assert [r.tag for r in collector.readings] == ["t" * 200]  # at the limit is fine
