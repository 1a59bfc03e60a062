"""Commands from the cloud on a real gateway: the channel, the write door, the journal.

The cloud is the real app on loopback (SQLite); the devices are firmware_sim's Modbus pumps and
a real OPC UA server; the agent runs in this process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.config import parse_config
from firmware_sim.plant import Plant
from tests.edge.cloud_harness import RunningCloud, bootstrap, serve_cloud
from tests.edge.commands_harness import Operator, gateway_config
from tests.edge.harness import modbus_devices, running_agent
from tests.protocols.opcua.plant_server import NAMESPACE, PlantServer

pytestmark = pytest.mark.integration

FLOW_HIGH = {"name": "pump1_flow_high", "device": "pump1", "tag": "flow", "kind": "high",
             "limit": -1000.0, "severity": "high"}  # fmt: skip


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[RunningCloud]:
    async with serve_cloud(tmp_path / "cloud.db") as running:
        await bootstrap(running)
        yield running


async def test_cloud_writes_reach_modbus_and_opcua_and_limits_refuse_on_the_gateway(
    cloud: RunningCloud, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    async with (
        Plant(devices=1, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant,
        PlantServer() as ua_server,
        Operator(cloud) as op,
    ):
        boiler: dict[str, Any] = {
            "protocol": "opcua", "name": "boiler", "endpoint": ua_server.url, "simulated": True,
            "publishing_interval_ms": 100, "request_timeout_s": 2.0,
            "tags": [{"name": "speed_sp", "node_id": f"nsu={NAMESPACE};s=pump1.speed_sp",
                      "writable": True, "min": 0, "max": 3000}],
        }  # fmt: skip
        data = gateway_config(state, [*modbus_devices(plant), boiler], cloud, alarms=[FLOW_HIGH])
        config = parse_config(yaml.safe_dump(data), source="test")
        async with running_agent(config) as running:
            modbus = await op.command("write", {"device": "pump1", "tag": "speed_setpoint",
                                                "value": 42.5})  # fmt: skip
            done = await op.finished(modbus["id"])
            assert done["state"] == "succeeded", done
            assert done["result"]["read_back"] == pytest.approx(42.5)
            assert plant.model.reported("pump1")["speed_setpoint"] == pytest.approx(42.5)

            opcua = await op.command("write", {"device": "boiler", "tag": "speed_sp",
                                               "value": 1234})  # fmt: skip
            done = await op.finished(opcua["id"])
            assert done["state"] == "succeeded", done
            assert done["result"]["read_back"] == pytest.approx(1234)
            assert ua_server.server is not None
            node = ua_server.node("pump1.speed_sp")
            assert ua_server.server.read_attribute_value(node).Value.Value == pytest.approx(1234)

            refused = await op.command("write", {"device": "pump1", "tag": "speed_setpoint",
                                                 "value": 250})  # fmt: skip
            done = await op.finished(refused["id"])
            assert done["state"] == "failed"
            assert "outside the limits of pump1.speed_setpoint (0 to 100)" in done["error"]
            assert plant.model.reported("pump1")["speed_setpoint"] == pytest.approx(42.5)

            ping = await op.finished((await op.command("ping"))["id"])
            assert ping["state"] == "succeeded"
            assert ping["result"]["version"]

            # Every write, refused or not, is audited on the gateway and reaches the cloud.
            local = await running.get("/v1/writes")
            assert [(w["tag"], w["outcome"], w["source"]) for w in local] == [
                ("speed_setpoint", "refused", "cloud"), ("speed_sp", "written", "cloud"),
                ("speed_setpoint", "written", "cloud")]  # fmt: skip
            assert local[2]["command_id"] == modbus["id"]
            assert local[2]["who"] == f"cloud {modbus['created_by']}"

            async def reported() -> bool:
                found = await op.get(f"/v1/gateways/{op.gateway}/writes")
                return len(found) == 3

            await running.wait_for(reported)

            # An alarm acknowledged in the cloud is acknowledged on the gateway, and the cloud
            # shows who did it and when.
            async def raised() -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = await op.get("/v1/alarms", state="active")
                return found

            await running.wait_for(raised)
            (alarm,) = await raised()
            r = await op.client.post(f"/v1/alarms/{alarm['id']}/ack", json={"comment": "seen"})
            assert r.status_code == 202, r.text
            ack = await op.finished(r.json()["id"])
            assert ack["state"] == "succeeded", ack
            (local_alarm,) = await running.get("/v1/alarms")
            assert local_alarm["state"] == "acked"

            async def acknowledged() -> bool:
                found = await op.get(f"/v1/alarms/{alarm['id']}")
                return found["acknowledged_at"] is not None

            await running.wait_for(acknowledged)
            found = await op.get(f"/v1/alarms/{alarm['id']}")
            assert found["acknowledged_by"] == f"cloud {ack['created_by']}"


def _speed(plant: Plant) -> float:
    return float(plant.model.reported("pump1")["speed_setpoint"])


async def test_offline_commands_run_once_after_reconnect_and_expired_ones_never(
    cloud: RunningCloud, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    async with (
        Plant(devices=1, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant,
        Operator(cloud) as op,
    ):
        # The gateway is not running: both wait in the cloud; one outlives its TTL meanwhile.
        late = await op.command("write", {"device": "pump1", "tag": "speed_setpoint",
                                          "value": 77}, ttl_s=1)  # fmt: skip
        kept = await op.command("write", {"device": "pump1", "tag": "speed_setpoint",
                                          "value": 33})  # fmt: skip
        await asyncio.sleep(2.5)
        config = parse_config(yaml.safe_dump(gateway_config(state, modbus_devices(plant), cloud)),
                              source="test")  # fmt: skip
        async with running_agent(config) as running:
            done = await op.finished(kept["id"])
            assert done["state"] == "succeeded", done
            assert _speed(plant) == pytest.approx(33)
            expired = await op.finished(late["id"])
            assert expired["state"] == "expired"
            writes = await running.get("/v1/writes")
            assert [(w["value"], w["command_id"]) for w in writes] == [(33, kept["id"])]
            assert running.agent.commands is not None
            assert running.agent.commands.ran == 1


async def test_a_command_delivered_twice_across_a_cloud_restart_runs_once(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    db = tmp_path / "cloud.db"
    serving = serve_cloud(db)
    async with Plant(devices=1, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant:
        first = await serving.__aenter__()
        await bootstrap(first)
        port = int(first.url.rsplit(":", 1)[1])
        config = parse_config(yaml.safe_dump(gateway_config(state, modbus_devices(plant), first)),
                              source="test")  # fmt: skip
        async with running_agent(config) as running:
            first.faults.fail_next(503, times=10_000)  # no result reaches this cloud
            async with Operator(first) as op:
                sent = await op.command("write", {"device": "pump1", "tag": "speed_setpoint",
                                                  "value": 55})  # fmt: skip

            async def written() -> bool:
                return any(w["command_id"] == sent["id"] for w in await running.get("/v1/writes"))

            await running.wait_for(written)
            await serving.__aexit__(None, None, None)  # the cloud goes down before the result
            async with serve_cloud(db, port=port) as second:
                second.admin_key, second.gateway_id = first.admin_key, first.gateway_id
                async with Operator(second) as op:
                    done = await op.finished(sent["id"], within=30)
            assert done["state"] == "succeeded", done
            assert done["deliveries"] >= 2  # it was delivered again after the restart
            writes = [w for w in await running.get("/v1/writes")
                      if w["command_id"] == sent["id"]]  # fmt: skip
            assert len(writes) == 1  # and ran once
            assert running.agent.commands is not None
            assert running.agent.commands.repeats >= 1
            assert _speed(plant) == pytest.approx(55)


async def test_desired_setpoints_set_offline_are_applied_on_reconnect_and_a_local_write_stands(
    cloud: RunningCloud, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    async with (
        Plant(devices=2, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant,
        Operator(cloud) as op,
    ):
        shadow = f"/v1/gateways/{op.gateway}/shadow"
        soon = int((time.time() + 1.5) * 1e6)
        before = float(plant.model.reported("pump2")["speed_setpoint"])
        r = await op.client.patch(shadow, json={"desired": {"setpoints": {
            "pump1": {"speed_setpoint": {"value": 61}},
            "pump2": {"speed_setpoint": {"value": 44, "expires_at": soon}}}}})  # fmt: skip
        assert r.status_code == 200, r.text
        await asyncio.sleep(2.0)  # the gateway is offline; pump2's setpoint expires meanwhile
        config = parse_config(yaml.safe_dump(gateway_config(state, modbus_devices(plant), cloud)),
                              source="test")  # fmt: skip
        async with running_agent(config) as running:

            async def reported() -> dict[str, Any]:
                found: dict[str, Any] = await op.get(shadow)
                applied = (found.get("reported") or {}).get("applied", {})
                return found if "pump1" in applied and "pump2" in applied else {}

            await running.wait_for(reported)
            found = await reported()
            applied = found["reported"]["applied"]
            assert applied["pump1"]["speed_setpoint"]["outcome"] == "applied"
            assert applied["pump2"]["speed_setpoint"]["outcome"] == "expired"
            assert _speed(plant) == pytest.approx(61)
            assert float(plant.model.reported("pump2")["speed_setpoint"]) == pytest.approx(before)
            audit = await running.get("/v1/writes")
            assert [(w["device"], w["value"], w["source"]) for w in audit] == [
                ("pump1", 61, "shadow")]  # fmt: skip

            # The rule: a local write after the desired value stands; the same desired version
            # coming again on the next connections is not written back.
            r = await running.api.post("/v1/write", json={
                "device": "pump1", "tag": "speed_setpoint", "value": 20})  # fmt: skip
            assert r.status_code == 200, r.text
            shadow_runs = running.agent.shadow
            assert shadow_runs is not None
            seen = shadow_runs.documents
            await running.wait_for(lambda: _after(shadow_runs, seen + 2))  # two reconnections
            assert _speed(plant) == pytest.approx(20)

            async def disagreement() -> bool:
                delta = (await op.get(shadow))["delta"]["setpoints"]
                return bool(delta.get("pump1", {}).get("speed_setpoint", {}).get("reported") == 20)

            await running.wait_for(disagreement)  # the cloud sees it in the delta
            # A new desired value is applied.
            r = await op.client.patch(shadow, json={"desired": {"setpoints": {
                "pump1": {"speed_setpoint": {"value": 70}}}}})  # fmt: skip
            assert r.status_code == 200, r.text

            async def seventy() -> bool:
                return _speed(plant) == pytest.approx(70)

            await running.wait_for(seventy)


async def _after(shadow: Any, documents: int) -> bool:
    return bool(shadow.documents >= documents)


async def test_reload_config_and_requeue_quarantine_from_the_cloud(
    cloud: RunningCloud, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    path = tmp_path / "config.yaml"
    async with (
        Plant(devices=2, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant,
        Operator(cloud) as op,
    ):
        devices = modbus_devices(plant)
        path.write_text(yaml.safe_dump(gateway_config(state, devices[:1], cloud)))
        config = parse_config(path.read_text(), source=str(path))
        async with running_agent(config, config_path=path) as running:
            path.write_text(yaml.safe_dump(gateway_config(state, devices, cloud)))
            reload = await op.finished((await op.command("reload_config"))["id"])
            assert reload["state"] == "succeeded", reload
            assert reload["result"]["added"] == ["pump2"]
            names = [d["name"] for d in await running.get("/v1/drivers")]
            assert names == ["pump1", "pump2"]
            requeue = await op.finished((await op.command("requeue_quarantine"))["id"])
            assert requeue["state"] == "succeeded", requeue
            assert requeue["result"] == {"requeued": 0}
            path.write_text("gateway: {name: broken")  # a file that does not load
            broken = await op.finished((await op.command("reload_config"))["id"])
            assert broken["state"] == "failed"
            assert str(path) in broken["error"]
