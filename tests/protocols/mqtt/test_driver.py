"""The MQTT driver's contract and its accounting: nothing is dropped without a count."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from protocols.driver import ConnectionState, Driver
from protocols.errors import DriverConfigError, WriteError
from protocols.mqtt.broker import EmbeddedBroker
from protocols.mqtt.config import BrokerTls, EmbeddedBrokerConfig
from protocols.mqtt.driver import MqttDriver
from protocols.reading import Reading
from tests.protocols.mqtt.conftest import (
    PASSWORDS,
    Collector,
    eventually,
    running,
    source_config,
    telemetry,
    until_state,
)


async def test_the_driver_fulfils_the_contract_and_is_read_only(collector: Collector) -> None:
    driver = MqttDriver(source_config("mqtt://127.0.0.1:1"), dead_letters=collector.dead)
    assert isinstance(driver, Driver)
    assert driver.name == "plant-mqtt"
    assert driver.link.state is ConnectionState.IDLE
    with pytest.raises(WriteError, match="read-only"):
        await driver.write("flow_sp", 3.0)


@pytest.mark.integration
async def test_inbox_overflow_is_counted_not_silent(broker: EmbeddedBroker) -> None:
    gate = asyncio.Event()
    delivered: list[Reading] = []

    async def stalled_sink(batch: list[Reading]) -> None:
        await gate.wait()
        delivered.extend(batch)

    collector = Collector()
    config = source_config(broker.url, max_queued_messages=5)
    driver = MqttDriver(config, dead_letters=collector.dead)
    async with driver:
        task = asyncio.create_task(driver.run(stalled_sink), name="mqtt-driver overflow")
        try:
            await until_state(driver, ConnectionState.CONNECTED)
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, username="pump1", password=PASSWORDS["pump1"]
            ) as pump1:
                for index in range(50):
                    await pump1.publish("plant/pump1/telemetry", telemetry(seq=index), qos=1)
            await eventually(lambda: driver.counters.dropped > 0)
            gate.set()
            await eventually(lambda: len(delivered) + driver.counters.dropped == 50)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert driver.counters.readings == len(delivered)
    # At most: the held batch (one message plus a drained inbox), a refilled inbox, and the one
    # message aiomqtt's iterator had already taken. Everything else was counted as dropped.
    assert len(delivered) <= 1 + 5 + 5 + 1
    assert collector.letters == []


@pytest.mark.integration
async def test_broker_tls_files_that_vanished_are_a_config_error(
    broker_config: EmbeddedBrokerConfig, tmp_path: Path
) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    config = broker_config.model_copy(update={"tls": BrokerTls(cert_file=cert, key_file=key)})
    with pytest.raises(DriverConfigError, match="tls: cannot load certificate/key"):
        async with EmbeddedBroker(config):
            pass


@pytest.mark.integration
async def test_persistent_session_keeps_qos1_messages_while_the_driver_is_away(
    broker: EmbeddedBroker, collector: Collector
) -> None:
    config = source_config(broker.url)  # clean_session=False and QoS 1 by default
    async with running(MqttDriver(config, dead_letters=collector.dead), collector) as driver:
        await until_state(driver, ConnectionState.CONNECTED)
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, username="pump1", password=PASSWORDS["pump1"]
    ) as pump1:
        await pump1.publish("plant/pump1/telemetry", telemetry(while_away=1), qos=1)
    async with running(MqttDriver(config, dead_letters=collector.dead), collector):
        await collector.until(lambda: len(collector.readings) == 1)
    assert collector.readings[0].tag == "while_away"
