"""MQTT devices publishing to real brokers (amqtt in-process, a private Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import aiomqtt
import pytest

from firmware_sim.errors import SimConfigError
from firmware_sim.faults import LinkDrop, MqttMalformed, MqttOversize
from firmware_sim.mqtt_devices import BrokerAddress
from firmware_sim.plant import Plant

from .brokers import amqtt_broker, mosquitto_broker

pytestmark = pytest.mark.integration


async def _collect(port: int, topic: str, count: int, wait_s: float = 10) -> list[bytes]:
    got: list[bytes] = []
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"test-{topic}") as client:
        await client.subscribe(topic)
        async with asyncio.timeout(wait_s):
            async for message in client.messages:
                got.append(bytes(message.payload))  # type: ignore[arg-type]
                if len(got) >= count:
                    break
    return got


async def test_json_telemetry_on_amqtt() -> None:
    async with amqtt_broker() as port:
        subscriber = asyncio.create_task(_collect(port, "plant/+/telemetry", 8))
        await asyncio.sleep(0.3)
        async with Plant(
            devices=4, modbus=False, opcua=False, control_port=None,
            mqtt_url=f"mqtt://127.0.0.1:{port}", mqtt_interval_s=0.1,
        ) as plant:  # fmt: skip
            payloads = await subscriber
            assert plant.mqtt is not None
        documents = [json.loads(p) for p in payloads]
        now_ms = time.time() * 1000
        for doc in documents:
            assert doc["simulated"] is True
            assert isinstance(doc["ts"], int)
            assert now_ms - 15_000 < doc["ts"] <= now_ms
        pumps = [d["values"] for d in documents if "discharge_pressure" in d["values"]]
        assert pumps
        assert all(1.0 <= v["discharge_pressure"] <= 10.0 for v in pumps)
        assert all(isinstance(v["running"], bool) for v in pumps)


async def test_batched_telemetry_and_faults_on_mosquitto(tmp_path: Path) -> None:
    async with mosquitto_broker(tmp_path) as port, Plant(
        devices=1, modbus=False, opcua=False, control_port=None, tick_s=0.05,
        mqtt_url=f"mqtt://127.0.0.1:{port}", mqtt_interval_s=0.05, mqtt_batch=3,
        mqtt_topic_prefix="t1",
    ) as plant:  # fmt: skip
        (batch,) = await _collect(port, "t1/pump1/telemetry", 1)
        document = json.loads(batch)
        assert document["simulated"] is True
        assert len(document["samples"]) == 3
        stamps = [s["ts"] for s in document["samples"]]
        assert stamps == sorted(stamps)
        assert {"flow", "vibration", "run_hours"} <= document["samples"][0]["values"].keys()

        malformed = plant.add_fault(MqttMalformed(device="pump1"))
        (bad,) = await _collect(port, "t1/pump1/telemetry", 1)
        with pytest.raises(UnicodeDecodeError):  # truncated and ends in a non-UTF-8 byte
            json.loads(bad)
        plant.clear_faults(malformed.id)

        plant.add_fault(MqttOversize(device="pump1", size=300_000))
        (big,) = await _collect(port, "t1/pump1/telemetry", 1)
        assert len(big) >= 300_000
        assert json.loads(big)["simulated"] is True
        plant.clear_faults()

        plant.add_fault(LinkDrop(device="pump1", seconds=0.5))
        await asyncio.sleep(0.2)
        assert plant.mqtt is not None
        assert plant.mqtt.devices["pump1"].state == "dropped"
        (back,) = await _collect(port, "t1/pump1/telemetry", 1)
        assert json.loads(back)["simulated"] is True


async def test_mosquitto_sub_sees_the_telemetry(tmp_path: Path) -> None:
    mosquitto_sub = shutil.which("mosquitto_sub")
    if mosquitto_sub is None:
        pytest.skip("mosquitto_sub is not installed")
    async with mosquitto_broker(tmp_path) as port:
        async with Plant(
            devices=2, modbus=False, opcua=False, control_port=None,
            mqtt_url=f"mqtt://127.0.0.1:{port}", mqtt_interval_s=0.1,
        ):  # fmt: skip
            proc = await asyncio.create_subprocess_exec(
                mosquitto_sub, "-h", "127.0.0.1", "-p", str(port), "-t", "plant/pump2/telemetry",
                "-C", "2", "-W", "10", stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
        lines = out.decode().splitlines()
        assert len(lines) == 2
        assert json.loads(lines[0])["values"]["serial_number"] == "SP00002X"


def test_broker_url_with_credentials() -> None:
    address = BrokerAddress.from_url("mqtt://sim%40plant:s3cr%3At@broker.local:1884")
    assert address == BrokerAddress("broker.local", 1884, "sim@plant", "s3cr:t")
    assert BrokerAddress.from_url("tcp://10.0.0.5").port == 1883
    with pytest.raises(SimConfigError):
        BrokerAddress.from_url("http://broker")


async def test_devices_log_in_with_credentials(tmp_path: Path) -> None:
    password = "pa55"  # noqa: S105 - a throwaway broker user made for this test
    async with mosquitto_broker(tmp_path, credentials=("sim", password)) as port:
        with pytest.raises(aiomqtt.MqttCodeError):
            async with aiomqtt.Client("127.0.0.1", port, identifier="anonymous"):
                pass
        async with Plant(
            devices=1, modbus=False, opcua=False, control_port=None,
            mqtt_url=f"mqtt://sim:{password}@127.0.0.1:{port}", mqtt_interval_s=0.05,
        ), aiomqtt.Client(
            "127.0.0.1", port, username="sim", password=password, identifier="reader"
        ) as client:  # fmt: skip
            await client.subscribe("plant/pump1/telemetry")
            async with asyncio.timeout(10):
                message = await anext(aiter(client.messages))
        assert json.loads(bytes(message.payload))["simulated"] is True  # type: ignore[arg-type]


async def test_a_broker_stopping_first_leaves_no_unread_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The demo stops its agent (and broker) before the plant: each MQTT device used to leave a
    "Future exception was never retrieved" ERROR line in the log on every Ctrl-C."""
    import gc  # noqa: PLC0415

    async with amqtt_broker() as port:
        plant = Plant(
            devices=4, modbus=False, opcua=False, control_port=None,
            mqtt_url=f"mqtt://127.0.0.1:{port}", mqtt_interval_s=5.0,
        )  # fmt: skip
        await plant.__aenter__()
        assert plant.mqtt is not None
        async with asyncio.timeout(10):
            # the devices have no event to wait on
            while any(d.state != "connected" for d in plant.mqtt.devices.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the devices see the broker go, while waiting to publish
    await plant.__aexit__(None, None, None)
    gc.collect()
    await asyncio.sleep(0)
    unread = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert unread == []
