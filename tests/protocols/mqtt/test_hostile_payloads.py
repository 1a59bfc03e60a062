"""Hostile payloads sent by a device through the embedded broker: dead letters, never a crash."""

from __future__ import annotations

import aiomqtt
import pytest

from protocols.driver import ConnectionState
from protocols.mqtt.broker import EmbeddedBroker
from protocols.mqtt.codec import Limits, compile_routes, decode_message
from protocols.mqtt.config import MqttSubscription, RawDecoder
from protocols.mqtt.driver import MqttDriver
from tests.protocols.mqtt.conftest import (
    PASSWORDS,
    Collector,
    running,
    source_config,
    telemetry,
    until_state,
)

pytestmark = pytest.mark.integration

DEEP_REASON = "not JSON this gateway accepts: arrays or objects nested too deeply to parse"


def device(broker: EmbeddedBroker, name: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", broker.port, username=name, password=PASSWORDS[name], identifier=f"h-{name}"
    )


async def test_deeply_nested_json_is_a_dead_letter_and_the_driver_keeps_running(
    broker: EmbeddedBroker, collector: Collector
) -> None:
    deep = [b"[" * 5_000, b"[" * 100_000, b'{"values": ' * 5_000, b"[" * 5_000 + b"]" * 5_000]
    driver = MqttDriver(source_config(broker.url), dead_letters=collector.dead)
    async with running(driver, collector):
        await until_state(driver, ConnectionState.CONNECTED)
        async with device(broker, "pump1") as pump1:
            for index, payload in enumerate(deep):
                await pump1.publish("plant/pump1/telemetry", payload, qos=1)
                await pump1.publish("plant/pump1/telemetry", telemetry(seq=index), qos=1)
        await collector.until(lambda: len(collector.readings) == len(deep), within=10)
        await collector.until(lambda: len(collector.letters) == len(deep))
        assert driver.link.state is ConnectionState.CONNECTED
        assert driver.link.reconnects == 0  # the driver never fell over
    assert [r.value for r in collector.readings] == list(range(len(deep)))
    assert [letter.reason for letter in collector.letters] == [DEEP_REASON] * len(deep)
    assert [letter.size for letter in collector.letters] == [len(p) for p in deep]
    assert driver.counters.dropped == len(deep)


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_the_route_decoder_never_raises_on_deep_nesting(depth: int) -> None:
    routes = compile_routes(
        [
            MqttSubscription(topic="plant/{device}/telemetry"),
            MqttSubscription(topic="raw/{device}/{tag}", decoder=RawDecoder()),
        ],
        Limits(),
    )
    for topic in ("plant/pump1/telemetry", "raw/pump1/level"):
        letter = decode_message(routes, topic, b"[" * depth + b"]" * depth, 1)
        assert not isinstance(letter, list)
        assert letter.device == "pump1"
        if topic.startswith("plant"):
            assert letter.reason == DEEP_REASON
