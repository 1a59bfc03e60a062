"""Config reload (SIGHUP): devices added, removed and changed without touching the others, the
pipeline following the new settings, and an invalid file changing nothing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.alarms import AlarmEngine, AlarmKind, AlarmRule, AlarmState
from edge.chunk import decode_readings
from edge.config import load_config
from edge.pipeline.rbe import Deadband, ReportByException
from edge.reload import DeviceChanges, ReloadRejected, plan_reload
from firmware_sim.plant import Plant
from protocols.driver import ConnectionState
from protocols.reading import Quality, Reading
from store_forward import Lane, Outbox
from tests.edge.harness import config_data, modbus_devices, running_agent

S = 1_000_000


@pytest.fixture
async def plant4() -> AsyncIterator[Plant]:
    """pump1, pump2, tank1 and boiler1 over Modbus."""
    async with Plant(devices=4, seed=7, tick_s=0.05, opcua=False, control_port=None) as plant:
        yield plant


def write_config(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# --- pure parts -----------------------------------------------------------------------------


def test_devices_are_compared_by_name_and_every_field(tmp_path: Path) -> None:
    def device(name: str, port: int, tag: str = "flow") -> dict[str, Any]:
        tags = [{"name": tag, "table": "holding_register", "address": 0, "type": "uint16"}]
        return {"protocol": "modbus", "name": name, "host": "127.0.0.1", "port": port,
                "tags": tags}  # fmt: skip

    path = tmp_path / "c.yaml"
    write_config(path, config_data(tmp_path, [device("a", 1), device("b", 2), device("c", 3)]))
    old = load_config(path)
    new_devices = [device("a", 1), device("c", 3, tag="level"), device("d", 4)]
    write_config(path, config_data(tmp_path, new_devices))
    plan = plan_reload(old, load_config(path))
    assert plan.devices == DeviceChanges(
        added=("d",), removed=("b",), changed=("c",), unchanged=("a",)
    )
    assert plan.needs_restart == ()
    assert plan.devices.summary() == "added 1 (d), removed 1 (b), changed 1 (c), unchanged 1"


# A device `p` with a tag `t`, for the alarms and models below (the config must define them).
DEVICE_P: dict[str, Any] = {
    "protocol": "modbus", "name": "p", "host": "127.0.0.1", "port": 1,
    "tags": [{"name": "t", "table": "holding_register", "address": 0, "type": "uint16"}],
}  # fmt: skip


def test_sections_that_need_a_restart_keep_their_running_values(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    write_config(path, config_data(tmp_path, [DEVICE_P]))
    old = load_config(path)
    data = config_data(tmp_path, [DEVICE_P], alarms=[
        {"name": "hot", "device": "p", "tag": "t", "kind": "high", "limit": 1}])  # fmt: skip
    data["gateway"]["name"] = "renamed"
    data["local_api"] = {"port": 9999}
    write_config(path, data)
    plan = plan_reload(old, load_config(path))
    assert plan.needs_restart == ("gateway", "local_api")
    assert plan.config.gateway.name == "test-gw"
    assert plan.config.local_api.port == 0
    assert [a.name for a in plan.config.alarms] == ["hot"]  # the rest follows the file


def test_a_new_alarm_named_like_a_kept_model_alarm_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    model = {"name": "m", "path": "m.onnx", "devices": ["p"], "inputs": ["t"],
             "alarm": {"threshold": 1}}  # fmt: skip
    (tmp_path / "m.onnx").touch()  # only looked for at load; the model is not run here
    write_config(path, config_data(tmp_path, [DEVICE_P], models=[model]))
    old = load_config(path)
    # The file drops the model (a restart would) and reuses its alarm's name for a rule of its
    # own; the running model and its alarm stay until the restart, so the names would clash.
    write_config(path, config_data(tmp_path, [DEVICE_P], alarms=[
        {"name": "m.p", "device": "p", "tag": "t", "kind": "high", "limit": 1}]))  # fmt: skip
    with pytest.raises(ReloadRejected, match="alarm names must be unique"):
        plan_reload(old, load_config(path))


def test_alarm_states_survive_new_rules_and_removed_rules_go() -> None:
    rule = AlarmRule(name="hot", device="p", tag="t", kind=AlarmKind.HIGH, limit=10)
    engine = AlarmEngine(
        [rule, AlarmRule(name="cold", device="p", tag="t", kind=AlarmKind.LOW, limit=0)]
    )
    assert engine.evaluate([Reading("p", "t", 1 * S, 50.0, Quality.GOOD)])
    stricter = AlarmRule(name="hot", device="p", tag="t", kind=AlarmKind.HIGH, limit=100)
    after = engine.with_rules([stricter])
    assert list(after.alarms) == ["hot"]
    assert after.alarms["hot"].state is AlarmState.ACTIVE  # raised before: still needs an ack
    events = after.evaluate([Reading("p", "t", 2 * S, 50.0, Quality.GOOD)])
    assert [e.state for e in events] == [AlarmState.CLEARED]  # judged by the new limit


def test_new_deadbands_apply_without_resending_unchanged_values() -> None:
    rbe = ReportByException(default=Deadband(deadband=0.0))
    assert len(rbe([Reading("p", "t", 1 * S, 10.0, Quality.GOOD)])) == 1
    rbe.reconfigure({("p", "t"): Deadband(deadband=5.0)}, default=Deadband())
    out = rbe([Reading("p", "t", 2 * S, 10.0, Quality.GOOD), Reading("p", "t", 3 * S, 13.0,
               Quality.GOOD), Reading("p", "t", 4 * S, 16.0, Quality.GOOD)])  # fmt: skip
    assert [r.value for r in out] == [16.0]


# --- a running agent against simulated devices ----------------------------------------------


@pytest.mark.integration
async def test_reload_adds_removes_and_changes_devices_and_leaves_the_others_running(
    tmp_path: Path, plant4: Plant
) -> None:
    pump1, pump2, tank1, boiler1 = modbus_devices(plant4)
    path = tmp_path / "config.yaml"
    write_config(path, config_data(tmp_path, [pump1, pump2, tank1]))
    config = load_config(path)
    async with running_agent(config, config_path=path) as running:
        agent = running.agent

        async def tags_of(device: str) -> set[str]:
            return {t["tag"] for t in await running.get(f"/v1/tags?device={device}")}

        async def all_reading() -> bool:
            return all([await tags_of(d) for d in ("pump1", "pump2", "tank1")])

        await running.wait_for(all_reading)
        pump1_driver, tank1_driver = (
            agent.runtime.supervisor.slots["pump1"].driver,
            agent.runtime.supervisor.slots["tank1"].driver,
        )
        assert pump1_driver is not None
        assert tank1_driver is not None
        reconnects = pump1_driver.link.reconnects
        dropped_tag = tank1["tags"][-1]["name"]
        changed_tank1 = {**tank1, "tags": tank1["tags"][:-1]}
        write_config(path, config_data(tmp_path, [pump1, changed_tank1, boiler1]))

        result = await agent.reload()

        assert result.applied, result.error
        assert result.devices == DeviceChanges(
            added=("boiler1",), removed=("pump2",), changed=("tank1",), unchanged=("pump1",)
        )
        # The unchanged device kept its driver and its connection.
        assert agent.runtime.supervisor.slots["pump1"].driver is pump1_driver
        assert pump1_driver.link.state is ConnectionState.CONNECTED
        assert pump1_driver.link.reconnects == reconnects
        # The changed one was stopped and runs again with the new tags.
        assert tank1_driver.link.state is ConnectionState.CLOSED
        assert agent.runtime.supervisor.slots["tank1"].driver is not tank1_driver

        async def new_layout_reading() -> bool:
            return bool(await tags_of("boiler1")) and bool(await tags_of("tank1"))

        await running.wait_for(new_layout_reading)
        assert dropped_tag not in await tags_of("tank1")
        assert await tags_of("pump2") == set()
        drivers = {d["name"]: d for d in await running.get("/v1/drivers")}
        assert list(drivers) == ["pump1", "tank1", "boiler1"]
        assert drivers["pump1"]["restarts"] == 0
        gateway = await running.get("/v1/gateway")
        last = gateway["config"]["last_reload"]
        assert (last["outcome"], last["added"], last["removed"], last["changed"]) == (
            "applied", ["boiler1"], ["pump2"], ["tank1"])  # fmt: skip
        assert gateway["config"]["reloads_applied"] == 1
        assert gateway["config"]["path"] == str(path)
        pipeline = agent.runtime.pipeline

    # Nothing accepted was lost across the reload, the removed device's readings included.
    assert pipeline.counters.committed == pipeline.counters.received
    with Outbox(config.outbox_path) as outbox:
        lease = outbox.lease(max_bytes=1 << 30, max_chunks=100_000)
        stored = [r for c in lease.chunks if c.lane is Lane.TELEMETRY
                  for r in decode_readings(c.payload)]  # fmt: skip
    assert len(stored) == pipeline.counters.received
    assert {r.device for r in stored} == {"pump1", "pump2", "tank1", "boiler1"}


@pytest.mark.integration
async def test_an_invalid_file_changes_nothing_and_is_reported(
    tmp_path: Path, plant: Plant
) -> None:
    devices = modbus_devices(plant)
    path = tmp_path / "config.yaml"
    write_config(path, config_data(tmp_path, devices))
    async with running_agent(load_config(path), config_path=path) as running:
        agent = running.agent

        async def all_connected() -> bool:
            return all(s.healthy for s in agent.runtime.supervisor.slots.values())

        await running.wait_for(all_connected)
        before = {name: slot.driver for name, slot in agent.runtime.supervisor.slots.items()}
        good = path.read_text()
        path.write_text(good + "devicez: []\n")  # a typo, on the file's last line
        bad_line = len(path.read_text().splitlines())

        result = await agent.reload()

        assert not result.applied
        assert result.error == (
            f"{path}:{bad_line}: devicez: unknown key (check the spelling; unknown keys are errors)"
        )
        assert {
            name: slot.driver for name, slot in agent.runtime.supervisor.slots.items()
        } == before
        assert all(s.healthy for s in agent.runtime.supervisor.slots.values())
        response = await running.api.get("/health")
        assert response.status_code == 503
        assert any(f"{path}:{bad_line}: devicez" in p for p in response.json()["problems"])
        config = (await running.get("/v1/gateway"))["config"]
        assert (config["reloads_applied"], config["reloads_rejected"]) == (0, 1)
        assert config["last_reload"]["outcome"] == "rejected"
        metrics = (await running.api.get("/metrics")).text
        assert 'tagway_config_reloads_total{outcome="rejected"} 1' in metrics

        path.write_text(good)  # fixed: the next reload is applied and health is ok again
        result = await agent.reload()
        assert result.applied
        assert result.devices is not None
        assert result.devices.unchanged == ("pump1", "pump2", "tank1")
        assert {
            name: slot.driver for name, slot in agent.runtime.supervisor.slots.items()
        } == before
        assert (await running.api.get("/health")).status_code == 200


@pytest.mark.integration
async def test_alarms_and_derived_tags_follow_a_reload_and_restart_sections_wait(
    tmp_path: Path, plant: Plant, caplog: pytest.LogCaptureFixture
) -> None:
    pump1 = modbus_devices(plant)[0]
    path = tmp_path / "config.yaml"
    data = config_data(tmp_path, [pump1])
    write_config(path, data)
    async with running_agent(load_config(path), config_path=path) as running:
        agent = running.agent

        async def flowing() -> bool:
            return bool(await running.get("/v1/tags?device=pump1&tag=flow"))

        await running.wait_for(flowing)
        driver = agent.runtime.supervisor.slots["pump1"].driver
        data["gateway"]["name"] = "renamed-gw"
        data["outbox"]["flush_interval"] = 0.2
        data["derived"] = [{"device": "pump1", "tag": "flow_x2", "expression": "flow * 2"}]
        data["alarms"] = [{"name": "flowing", "device": "pump1", "tag": "flow", "kind": "high",
                           "limit": -1.0}]  # fmt: skip
        write_config(path, data)
        caplog.set_level(logging.INFO, logger="edge.agent")
        agent.reload_requested.set()  # what SIGHUP does

        async def reloaded() -> bool:
            return agent.config.reloads.applied == 1

        await running.wait_for(reloaded)

        async def alarm_raised_and_derived() -> bool:
            alarms = await running.get("/v1/alarms")
            derived = await running.get("/v1/tags?device=pump1&tag=flow_x2")
            return bool(derived) and [(a["name"], a["active"]) for a in alarms] == [
                ("flowing", True)
            ]

        await running.wait_for(alarm_raised_and_derived)
        gateway = await running.get("/v1/gateway")
        assert gateway["name"] == "test-gw"  # the gateway section waits for a restart
        assert gateway["config"]["needs_restart"] == ["gateway", "outbox"]
        assert "config reload needs a restart: gateway, outbox changed" in caplog.text
        assert agent.runtime.supervisor.slots["pump1"].driver is driver
