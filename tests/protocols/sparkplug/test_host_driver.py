"""The MQTT driver as a Sparkplug B host, against Mosquitto, with the reference implementation
playing the edge node: births and data become readings, an unknown alias brings an NCMD
rebirth request, NDEATH turns readings bad, malformed protobuf goes to the dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from pydantic import ValidationError

from protocols.driver import ConnectionState
from protocols.mqtt.config import MqttSourceConfig, MqttSubscription, SparkplugDecoder
from protocols.mqtt.driver import MqttDriver
from protocols.reading import Quality
from tests.mosquitto import mosquitto
from tests.protocols.mqtt.conftest import Collector, running, until_state
from tests.protocols.sparkplug import tahu
from tests.protocols.sparkplug.test_host import dbirth, nbirth, ndeath

pytestmark = pytest.mark.integration
T = tahu.MetricDataType


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    with mosquitto(tmp_path) as port:
        yield port


def host_config(port: int, group: str) -> MqttSourceConfig:
    return MqttSourceConfig.model_validate(
        {
            "name": "spb-host",
            "url": f"mqtt://127.0.0.1:{port}",
            "subscriptions": [{"topic": f"spBv1.0/{group}/#", "decoder": "sparkplug_b"}],
            "reconnect_base_s": 0.1,
            "reconnect_cap_s": 0.5,
        }
    )


def stamped(data: bytes) -> bytes:
    """The helper births are stamped in 2023; restamp them now, as a live node would."""
    message = tahu.decode(data)
    message.timestamp = tahu.now_ms()
    for metric in message.metrics:
        metric.timestamp = tahu.now_ms()
    result: bytes = message.SerializeToString()
    return result


def ddata(seq: int, alias: int, datatype: int, value: object) -> bytes:
    message = tahu.payload(seq=seq)
    tahu.add(message, None, alias, datatype, value)
    result: bytes = message.SerializeToString()
    return result


def test_the_decoder_kind_alone_is_enough_and_the_topic_must_be_a_group() -> None:
    sub = MqttSubscription.model_validate({"topic": "spBv1.0/line2/#", "decoder": "sparkplug_b"})
    assert isinstance(sub.decoder, SparkplugDecoder)
    assert sub.sparkplug_group == "line2"
    for topic in ("spBv1.0/+/#", "plant/line2/#", "spBv1.0/line2/NDATA/#"):
        with pytest.raises(ValidationError, match=r"spBv1\.0/<group>/#"):
            MqttSubscription.model_validate({"topic": topic, "decoder": "sparkplug_b"})


async def test_another_edge_node_becomes_readings_deaths_and_rebirth_requests(
    broker: int, collector: Collector
) -> None:
    group, node = "host-test", "tahu-node"
    base = f"spBv1.0/{group}"
    driver = MqttDriver(host_config(broker, group), dead_letters=collector.dead)
    async with running(driver, collector), aiomqtt.Client("127.0.0.1", broker) as edge:
        await until_state(driver, ConnectionState.CONNECTED)
        await edge.subscribe(f"{base}/NCMD/{node}", qos=1)
        await edge.publish(f"{base}/NBIRTH/{node}", stamped(nbirth(bd_seq=4)), qos=1)
        await edge.publish(f"{base}/DBIRTH/{node}/pump", stamped(dbirth(seq=1)), qos=1)
        await edge.publish(f"{base}/DDATA/{node}/pump", ddata(2, 10, T.Int16, -9), qos=1)
        await collector.until(lambda: any(r.value == -9 for r in collector.readings))
        assert {(r.device, r.tag) for r in collector.readings} == {
            (node, "Ambient/Temp"),
            (f"{node}/pump", "speed"),
            (f"{node}/pump", "running"),
        }

        await edge.publish(f"{base}/DDATA/{node}/pump", ddata(3, 77, T.Int16, 1), qos=1)
        command = await asyncio.wait_for(anext(aiter(edge.messages)), 5)
        assert str(command.topic) == f"{base}/NCMD/{node}"
        rebirth = tahu.decode(bytes(command.payload)).metrics[0]  # type: ignore[arg-type]
        assert (rebirth.name, rebirth.boolean_value) == ("Node Control/Rebirth", True)

        await edge.publish(f"{base}/NDATA/{node}", b"\x0a\xff\xff", qos=1)
        await edge.publish(f"{base}/NDEATH/{node}", ndeath(4), qos=1)
        await collector.until(lambda: any(r.quality is Quality.BAD for r in collector.readings))
        await collector.until(lambda: len(collector.letters) == 2)

    reasons = [letter.reason for letter in collector.letters]
    assert "unknown alias 77; rebirth requested" in reasons[0]
    assert reasons[1].startswith("not a Sparkplug B payload")
    dead = [r for r in collector.readings if r.quality is Quality.BAD]
    assert {r.tag for r in dead} == {"Ambient/Temp", "speed", "running"}
    assert {r.reason for r in dead} == {f"edge node {node} offline (NDEATH)"}
