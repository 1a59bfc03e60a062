"""The whole agent as a Sparkplug B edge node: a simulated Modbus pump read by the agent, published
to Mosquitto, and written from a SCADA host with DCMD through the gateway's write door (limits,
audit, a command delivered twice runs once), and its tags' latest values in the UNS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from firmware_sim.plant import Plant
from tests.edge.harness import agent_config, modbus_devices, running_agent
from tests.edge.test_sparkplug_node import aliases, watching
from tests.edge.test_uns import retained
from tests.mosquitto import mosquitto
from tests.protocols.sparkplug import tahu

pytestmark = pytest.mark.integration
GROUP, NODE = "plant1", "gw-01"
T = tahu.MetricDataType


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    with mosquitto(tmp_path) as port:
        yield port


def dcmd(tag: str, value: float) -> bytes:
    message = tahu.payload(seq=None)
    tahu.add(message, tag, None, T.Float, value)
    data: bytes = message.SerializeToString()
    return data


async def test_dcmd_writes_inside_limits_and_is_refused_outside_them(
    tmp_path: Path, broker: int
) -> None:
    async with Plant(devices=1, seed=5, tick_s=0.1, opcua=False, control_port=None) as plant:
        north = {"sparkplug": {"url": f"mqtt://127.0.0.1:{broker}", "group_id": GROUP,
                               "edge_node_id": NODE, "primary_host_id": "scada"},
                 "uns": {"url": f"mqtt://127.0.0.1:{broker}", "interval_s": 0.2}}  # fmt: skip
        devices = modbus_devices(plant)
        devices[0]["path"] = "acme/plant-a/pumping/line1"
        config = agent_config(tmp_path, devices, north=north)
        async with aiomqtt.Client("127.0.0.1", broker) as scada:
            await scada.publish("spBv1.0/STATE/scada", b'{"online": true, "timestamp": 1}',
                                qos=1, retain=True)  # fmt: skip
        async with watching(broker, group=GROUP) as seen, running_agent(config) as running:
            await seen.until(lambda: bool(seen.of("DBIRTH")) and bool(seen.of("DDATA")))
            born = {m.name: m for m in seen.of("DBIRTH")[0].metrics}
            assert born["flow"].datatype == T.Float  # float32 in the register map
            assert born["speed_setpoint"].datatype == T.Double  # uint16 scaled by 0.1
            alias = aliases(seen.of("DBIRTH")[0])["flow"]
            await seen.until(lambda: len(seen.data_values(alias)) >= 2)  # live data flows

            topic = f"spBv1.0/{GROUP}/DCMD/{NODE}/pump1"
            async with aiomqtt.Client("127.0.0.1", broker) as scada:
                inside = dcmd("speed_setpoint", 40.0)
                await scada.publish(topic, inside, qos=1)
                await scada.publish(topic, inside, qos=1)  # the same command again
                await scada.publish(topic, dcmd("speed_setpoint", 150.0), qos=1)

            async def audited() -> bool:
                return len(await running.get("/v1/writes")) >= 2

            await running.wait_for(audited)
            node = running.agent.runtime.sparkplug
            assert node is not None
            await seen.until(lambda: node.status.duplicate_commands == 1)
            audit = await running.get("/v1/writes")
            assert [(w["value"], w["outcome"], w["source"]) for w in audit] == [
                (150.0, "refused", "sparkplug"), (40.0, "written", "sparkplug")]  # fmt: skip
            assert "outside the limits" in audit[0]["reason"]
            assert audit[1]["who"] == "host scada"
            assert plant.model.reported("pump1")["speed_setpoint"] == pytest.approx(40)
            assert node.status.written_commands == 1
            # An expired command never runs.
            stale = tahu.payload(seq=None, timestamp=int(time.time() * 1000) - 3_600_000)
            tahu.add(stale, "speed_setpoint", None, T.Float, 50.0)
            async with aiomqtt.Client("127.0.0.1", broker) as scada:
                await scada.publish(topic, stale.SerializeToString(), qos=1)
            await seen.until(lambda: any("expired" in r for r in node.status.refusals))
            assert len(await running.get("/v1/writes")) == 2
            # No cloud here: the uplink's backlog grows while the publisher keeps up.
            consumers = (await running.get("/v1/outbox"))["consumers"]
            assert set(consumers) == {"uplink", "sparkplug"}
            node_status = await running.get("/v1/sparkplug")
            assert node_status["configured"] is True
            assert node_status["state"] == "online"
            assert node_status["written_commands"] == 1
            assert node_status["duplicate_commands"] == 1
            assert any("outside the limits" in r for r in node_status["refusals"])
            assert consumers["uplink"]["pending_chunks"] > consumers["sparkplug"]["pending_chunks"]

        # The same agent's UNS publisher left every tag's latest value retained at its path.
        uns = await retained(broker, "acme/plant-a/pumping/line1/pump1/#", 3)
        assert "acme/plant-a/pumping/line1/pump1/flow" in uns
        assert {"value", "quality", "ts", "unit"} <= set(next(iter(uns.values())))
