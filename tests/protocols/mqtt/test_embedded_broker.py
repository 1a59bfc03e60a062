"""Devices publish through the embedded broker on real loopback sockets; the driver receives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import aiomqtt
import pytest

from protocols.driver import ConnectionState
from protocols.errors import ConnectError
from protocols.mqtt.broker import EmbeddedBroker, filter_within
from protocols.mqtt.codec import DeadLetter
from protocols.mqtt.config import EmbeddedBrokerConfig, MqttSubscription
from protocols.mqtt.driver import MqttDriver
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


def device(broker: EmbeddedBroker, name: str, password: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=name,
        password=password or PASSWORDS[name],
        identifier=f"dev-{name}",
    )


async def test_devices_publish_with_credentials_and_the_driver_receives(
    broker: EmbeddedBroker, collector: Collector
) -> None:
    driver = MqttDriver(source_config(broker.url), dead_letters=collector.dead)
    async with running(driver, collector):
        await until_state(driver, ConnectionState.CONNECTED)
        async with device(broker, "pump1") as pump1, device(broker, "pump2") as pump2:
            await pump1.publish("plant/pump1/telemetry", telemetry(flow=12.5, running=True), qos=1)
            await pump2.publish("plant/pump2/telemetry", telemetry(flow=3.0), qos=1)
        await collector.until(lambda: len(collector.readings) == 3)
    by_series = {(r.device, r.tag): r for r in collector.readings}
    assert by_series[("pump1", "flow")].value == 12.5
    assert by_series[("pump1", "running")].value is True
    assert by_series[("pump2", "flow")].value == 3.0
    assert all(r.simulated for r in collector.readings)
    assert abs(by_series[("pump2", "flow")].ts / 1e6 - time.time()) < 5
    assert driver.counters.readings == 3
    assert driver.counters.requests == 2
    assert driver.counters.dropped == 0
    assert driver.link.state is ConnectionState.CLOSED


async def test_wrong_password_is_refused(broker: EmbeddedBroker, collector: Collector) -> None:
    with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
        async with device(broker, "pump1", password=PASSWORDS["pump2"]):
            pass
    with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
        async with device(broker, "intruder", password=PASSWORDS["pump1"]):  # unknown user
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", broker.port):  # anonymous
            pass
    driver = MqttDriver(
        source_config(broker.url, password=PASSWORDS["pump1"]), dead_letters=collector.dead
    )
    async with running(driver, collector):
        await until_state(driver, ConnectionState.BACKOFF)
        assert driver.link.last_error is not None
        assert "refused the credentials" in driver.link.last_error
        assert driver.counters.errors >= 1


async def test_a_device_cannot_publish_into_another_devices_topic(
    broker: EmbeddedBroker, collector: Collector
) -> None:
    driver = MqttDriver(source_config(broker.url), dead_letters=collector.dead)
    async with running(driver, collector):
        await until_state(driver, ConnectionState.CONNECTED)
        async with device(broker, "pump1") as pump1:
            await pump1.publish("plant/pump2/telemetry", telemetry(flow=666.0), qos=1)
            await pump1.publish("plant/pump1/telemetry", telemetry(flow=1.0), qos=1)
        await collector.until(lambda: len(collector.readings) >= 1)
        await asyncio.sleep(0.2)  # the forged message, had it passed, came first anyway
    assert [(r.device, r.value) for r in collector.readings] == [("pump1", 1.0)]


async def test_a_device_cannot_subscribe_outside_its_acl(broker: EmbeddedBroker) -> None:
    async with device(broker, "pump1") as pump1:
        codes = await pump1.subscribe("plant/#")
        assert [c.value for c in codes] == [0x80]  # type: ignore[union-attr]
    assert filter_within("plant/pump1/telemetry", "plant/+/telemetry")
    assert not filter_within("plant/+/telemetry", "plant/pump1/#")
    assert not filter_within("plant/#", "plant/+/#")
    assert filter_within("plant/pump1/#", "plant/#")


async def test_refused_subscriptions_are_errors_not_silence(
    broker: EmbeddedBroker, collector: Collector
) -> None:
    subscriptions = (
        MqttSubscription(topic="plant/{device}/telemetry"),
        MqttSubscription(topic="secret/{device}/telemetry"),
    )
    driver = MqttDriver(
        source_config(broker.url, subscriptions=subscriptions), dead_letters=collector.dead
    )
    async with running(driver, collector):
        await until_state(driver, ConnectionState.CONNECTED)
        assert driver.refused_subscriptions == ("secret/+/telemetry",)
        assert "refused subscription to secret/+/telemetry" in (driver.link.last_error or "")
        assert driver.counters.errors == 1
        async with device(broker, "pump1") as pump1:  # the accepted filter still delivers
            await pump1.publish("plant/pump1/telemetry", telemetry(flow=2.0), qos=1)
        await collector.until(lambda: len(collector.readings) == 1)

    only_refused = (MqttSubscription(topic="secret/{device}/telemetry"),)
    driver = MqttDriver(
        source_config(broker.url, subscriptions=only_refused), dead_letters=collector.dead
    )
    async with running(driver, collector):
        await until_state(driver, ConnectionState.BACKOFF)
        assert "refused subscription" in (driver.link.last_error or "")


async def test_malformed_payloads_are_dead_lettered_and_good_ones_keep_flowing(
    broker: EmbeddedBroker, collector: Collector
) -> None:
    driver = MqttDriver(
        source_config(broker.url, max_payload_bytes=2048, max_future_skew_s=300),
        dead_letters=collector.dead,
    )
    future_ms = (time.time_ns() // 1_000_000) + 3_600_000
    bad = [
        b"{not json",
        b'{"ts": 1, "values": {"flow": "fast"}, "x": NaN}'.replace(b'"fast"', b"NaN"),
        json.dumps({"values": {"flow": 1}}).encode(),
        json.dumps({"ts": future_ms, "values": {"flow": 1}}).encode(),
        json.dumps({"ts": 1, "values": {"flow": [1]}}).encode(),
        b'{"ts": 1, "values": {"s": "' + b"x" * 4000 + b'"}}',
    ]
    async with running(driver, collector):
        await until_state(driver, ConnectionState.CONNECTED)
        async with device(broker, "pump1") as pump1:
            for index, payload in enumerate(bad):
                await pump1.publish("plant/pump1/telemetry", payload, qos=1)
                await pump1.publish("plant/pump1/telemetry", telemetry(seq=index), qos=1)
        await collector.until(lambda: len(collector.readings) == len(bad))
        await collector.until(lambda: len(collector.letters) == len(bad))
    assert [r.value for r in collector.readings] == list(range(len(bad)))
    reasons = [letter.reason for letter in collector.letters]
    assert reasons[0].startswith("not JSON")
    assert "not a finite number" in reasons[1]
    assert reasons[2] == "ts: missing"
    assert "in the future" in reasons[3]
    assert "expected number, bool or string, got array" in reasons[4]
    assert reasons[5] == f"payload of {len(bad[5])} bytes exceeds max_payload_bytes 2048"
    assert all(isinstance(letter, DeadLetter) for letter in collector.letters)
    assert all(letter.device == "pump1" for letter in collector.letters)
    assert collector.letters[5].head == bad[5][:256]
    assert driver.counters.dropped == len(bad)
    assert driver.counters.errors == len(bad)
    assert driver.link.state is ConnectionState.CLOSED  # closed by us, never crashed


async def test_queued_messages_reach_the_sink_in_batches(
    broker: EmbeddedBroker, collector: Collector
) -> None:
    gate = asyncio.Event()

    async def slow_sink(batch: list[object]) -> None:
        await gate.wait()  # hold the first batch while more messages queue up
        await collector(batch)  # type: ignore[arg-type]

    driver = MqttDriver(source_config(broker.url), dead_letters=collector.dead)
    async with driver:
        task = asyncio.create_task(driver.run(slow_sink), name="mqtt-driver batching")  # type: ignore[arg-type]
        try:
            await until_state(driver, ConnectionState.CONNECTED)
            async with device(broker, "pump1") as pump1:
                for index in range(200):
                    await pump1.publish("plant/pump1/telemetry", telemetry(seq=index), qos=1)
            gate.set()
            await collector.until(lambda: len(collector.readings) == 200)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert [r.value for r in collector.readings] == list(range(200))
    assert len(collector.batches) < 20  # drained per burst, not one sink call per message


async def test_broker_restart_reconnects_resubscribes_and_data_resumes(
    broker_config: EmbeddedBrokerConfig, collector: Collector
) -> None:
    first = EmbeddedBroker(broker_config)
    async with first:
        port = first.port
        driver = MqttDriver(source_config(first.url), dead_letters=collector.dead)
        async with running(driver, collector):
            await until_state(driver, ConnectionState.CONNECTED)
            async with device(first, "pump1") as pump1:
                await pump1.publish("plant/pump1/telemetry", telemetry(phase=1), qos=1)
            await collector.until(lambda: len(collector.readings) == 1)
            await first.close()
            await until_state(driver, ConnectionState.BACKOFF)

            again = EmbeddedBroker(broker_config.model_copy(update={"port": port}))
            async with again:
                await until_state(driver, ConnectionState.CONNECTED, within=10)
                async with device(again, "pump1") as pump1:
                    await pump1.publish("plant/pump1/telemetry", telemetry(phase=2), qos=1)
                await collector.until(lambda: len(collector.readings) == 2)
    assert [r.value for r in collector.readings] == [1, 2]
    assert driver.link.reconnects == 1
    assert driver.counters.errors >= 1


async def test_oversize_packet_closes_the_senders_connection(
    broker_config: EmbeddedBrokerConfig,
) -> None:
    config = broker_config.model_copy(update={"max_message_bytes": 1024})
    async with EmbeddedBroker(config) as broker:
        async with device(broker, "pump1") as pump1:
            await pump1.publish("plant/pump1/telemetry", b"x" * 2000, qos=0)
            with pytest.raises(aiomqtt.MqttError, match="Disconnected"):
                await asyncio.wait_for(anext(pump1.messages), 5)
        assert broker.counters.oversize_packets == 1
        async with device(broker, "pump1") as pump1:  # the broker itself is fine
            await pump1.publish("plant/pump1/telemetry", b"x" * 100, qos=1, timeout=2)


async def test_idle_sessions_expire(broker_config: EmbeddedBrokerConfig) -> None:
    config = broker_config.model_copy(update={"session_expiry_s": 2})
    async with EmbeddedBroker(config) as broker:
        async with contextlib.AsyncExitStack() as devices:
            for index in range(5):  # persistent sessions with fresh client ids, as flaky devices
                await devices.enter_async_context(
                    aiomqtt.Client(
                        "127.0.0.1",
                        broker.port,
                        username="pump1",
                        password=PASSWORDS["pump1"],
                        identifier=f"flaky-{index}",
                        clean_session=False,
                    )
                )
        # All five disconnected together: their sessions are kept while they might come back...
        assert broker.session_count == 5
        await eventually(lambda: broker.session_count == 0, within=6)  # ...then freed


async def test_port_in_use_is_a_connect_error(broker: EmbeddedBroker) -> None:
    taken = EmbeddedBrokerConfig(port=broker.port)
    with pytest.raises(ConnectError, match="cannot bind"):
        async with EmbeddedBroker(taken):
            pass


async def test_shutdown_with_a_half_open_client_leaves_no_tasks_and_no_errors(
    broker_config: EmbeddedBrokerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    async with EmbeddedBroker(broker_config) as broker:
        _, silent_writer = await asyncio.open_connection("127.0.0.1", broker.port)  # no CONNECT
        async with device(broker, "pump1") as pump1:
            await eventually(lambda: broker.counters.connections == 2)
            await broker.close()  # while one client is connected and one never spoke
            with pytest.raises(aiomqtt.MqttError, match="Disconnected"):
                await asyncio.wait_for(anext(pump1.messages), 5)
    silent_writer.close()
    await silent_writer.wait_closed()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
