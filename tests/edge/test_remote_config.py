"""Remote configuration end to end: a real cloud on loopback, a real agent reading the simulated
plant, a config version pushed from the cloud, applied with a probation, kept or rolled back,
and every step seen by the cloud, the local API and the file on disk."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from firmware_sim.plant import Plant
from tests.edge.cloud_harness import RunningCloud, bootstrap, serve_cloud
from tests.edge.fleet_harness import CloudUser, deliver_channel, dump, gateway_data
from tests.edge.harness import RunningAgent, modbus_devices, running_agent

pytestmark = pytest.mark.integration


@dataclass
class Gateway:
    """The agent under test with its config file, the cloud and its admin."""

    agent: RunningAgent
    path: Path
    cloud: RunningCloud
    user: CloudUser
    devices: list[dict[str, Any]]
    state: Path

    def document(self, devices: list[dict[str, Any]], **fleet: Any) -> str:
        """A config for this gateway with these devices."""
        data = gateway_data(self.state, devices, self.cloud, **fleet)
        return dump(data)

    async def remote(self) -> dict[str, Any]:
        """`GET /v1/config/remote` of the agent."""
        answer: dict[str, Any] = await self.agent.get("/v1/config/remote")
        return answer


@pytest.fixture
async def gateway(plant: Plant, tmp_path: Path) -> AsyncIterator[Gateway]:
    """An agent reading pump1 only, cloud-managed with a 4 s probation, its channel followed."""
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        devices = modbus_devices(plant, interval=0.1)
        state = tmp_path / "gw" / "state"
        state.mkdir(parents=True)
        path = tmp_path / "gw" / "config.yaml"
        path.write_text(dump(gateway_data(state, devices[:1], cloud, probation=4)))
        user = CloudUser(cloud)
        try:
            async with (
                running_agent(load_config(path), config_path=path) as agent,
                deliver_channel(cloud.url, cloud.gateway_token, agent.agent),
            ):
                yield Gateway(agent, path, cloud, user, devices, state)
        finally:
            await user.close()


async def _connected(agent: RunningAgent) -> dict[str, str]:
    return {d["name"]: d["state"] for d in await agent.get("/v1/drivers")}


async def test_a_pushed_config_that_adds_a_device_is_applied_and_passes_probation(
    gateway: Gateway,
) -> None:
    text = gateway.document(gateway.devices[:2], probation=4)
    started = time.monotonic()
    version, rollout_id = await gateway.user.push(text)
    done = await gateway.user.until_done(rollout_id, within=30)
    took = time.monotonic() - started
    assert done["state"] == "completed", done
    assert took < 15  # a 4 s probation that passes as soon as its goal holds
    assert gateway.path.read_text() == text  # the new version is the file the agent runs
    assert (gateway.path.parent / f"config.yaml.v{version}").read_text() == text
    assert (await _connected(gateway.agent)) == {"pump1": "connected", "pump2": "connected"}
    remote = await gateway.remote()
    assert (remote["version"], remote["outcome"], remote["phase"]) == (version, "applied", "idle")
    seen = await gateway.user.gateway_config()
    assert (seen["running_version"], seen["last"]["outcome"]) == (version, "applied")
    assert seen["managed"] == "cloud"
    status = (await gateway.agent.get("/v1/gateway"))["config"]["remote"]
    assert status["last_good_version"] == version


async def test_an_invalid_config_is_refused_with_the_validators_problems(
    gateway: Gateway,
) -> None:
    before = gateway.path.read_text()
    bad = gateway.document(gateway.devices[:2]).replace("unit_id: 1", "unit_id: many", 1)
    version, rollout_id = await gateway.user.push(bad)
    done = await gateway.user.until_done(rollout_id)
    assert done["state"] == "stopped"
    seen = await gateway.user.gateway_config()
    problem = seen["last"]["problems"][0]
    assert problem["path"] == "devices[0].unit_id"
    assert problem["line"] == bad.splitlines().index("  unit_id: many") + 1
    assert seen["desired"] is None  # back to what it runs: nothing from the cloud yet
    assert gateway.path.read_text() == before
    assert list(await _connected(gateway.agent)) == ["pump1"]
    remote = await gateway.remote()
    assert (remote["outcome"], remote["outcome_version"]) == ("refused", version)


async def test_a_device_that_cannot_connect_rolls_back_while_the_others_keep_polling(
    gateway: Gateway,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens here once the block ends
    missing = {**gateway.devices[1], "name": "boiler9", "port": closed_port}
    before_text = gateway.path.read_text()
    drivers = {d["name"]: d for d in await gateway.agent.get("/v1/drivers")}
    reconnects = drivers["pump1"]["reconnects"]
    samples: list[int] = []

    async def count_pump1() -> None:
        while True:
            drivers = {d["name"]: d for d in await gateway.agent.get("/v1/drivers")}
            samples.append(drivers["pump1"]["counters"]["readings"])
            await asyncio.sleep(0.5)

    counter = asyncio.create_task(count_pump1())
    try:
        started = time.monotonic()
        version, rollout_id = await gateway.user.push(
            gateway.document([gateway.devices[0], missing], probation=4)
        )
        done = await gateway.user.until_done(rollout_id, within=30)
        took = time.monotonic() - started
        await asyncio.sleep(1.0)
    finally:
        counter.cancel()
    assert done["state"] == "stopped"
    assert "device boiler9 did not connect" in done["reason"]
    assert took < 4 + 6  # the probation, then the rollback: not a timeout of the rollout
    assert gateway.path.read_text() == before_text
    assert list(await _connected(gateway.agent)) == ["pump1"]  # boiler9 is gone again
    # pump1 never stopped: its readings grew in every half second of the episode, and it
    # kept its connection all along
    assert all(b > a for a, b in itertools.pairwise(samples)), samples
    assert len(samples) >= 8
    drivers = {d["name"]: d for d in await gateway.agent.get("/v1/drivers")}
    assert drivers["pump1"]["reconnects"] == reconnects
    remote = await gateway.remote()
    assert (remote["outcome"], remote["outcome_version"]) == ("rolled_back", version)
    assert "boiler9" in remote["reason"]
    seen = await gateway.user.gateway_config()
    assert seen["last"]["outcome"] == "rolled_back"
    assert seen["running_version"] is None  # the gateway's own file runs again


async def test_a_locally_managed_gateway_refuses_until_pulled(plant: Plant, tmp_path: Path) -> None:
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        devices = modbus_devices(plant, interval=0.1)
        state = tmp_path / "state"
        state.mkdir()
        path = tmp_path / "config.yaml"
        path.write_text(dump(gateway_data(state, devices[:1], cloud, managed_by="local")))
        user = CloudUser(cloud)
        try:
            async with (
                running_agent(load_config(path), config_path=path) as agent,
                deliver_channel(cloud.url, cloud.gateway_token, agent.agent),
            ):
                wanted = dump(gateway_data(state, devices[:2], cloud, probation=3))
                version, rollout_id = await user.push(wanted)
                done = await user.until_done(rollout_id)
                assert done["state"] == "completed"  # passed by, not failed
                assert done["gateways"][0]["state"] == "skipped"
                assert "managed locally" in done["gateways"][0]["reason"]
                assert path.read_text() != wanted
                pulled = await agent.api.post("/v1/config/pull", timeout=30)
                assert pulled.status_code == 200, pulled.text
                assert pulled.json()["outcome"] == "applied"
                assert path.read_text() == wanted
                remote = await agent.get("/v1/config/remote")
                assert (remote["managed_by"], remote["version"]) == ("cloud", version)
        finally:
            await user.close()


async def test_health_follows_the_gateway_a_stopped_device_then_a_stopped_agent(
    plant: Plant, tmp_path: Path
) -> None:
    from firmware_sim.faults import LinkDrop  # noqa: PLC0415 - this test only

    async with serve_cloud(tmp_path / "cloud.db", health_offline_after_s=3.0) as cloud:
        await bootstrap(cloud)
        devices = modbus_devices(plant, interval=0.1)
        state = tmp_path / "state"
        state.mkdir()
        path = tmp_path / "config.yaml"
        path.write_text(dump(gateway_data(state, devices[:2], cloud)))
        user = CloudUser(cloud)

        async def health() -> dict[str, Any]:
            r = await user.client.get(f"/v1/gateways/{cloud.gateway_id}/health")
            answer: dict[str, Any] = r.json()
            return answer

        async def until(state: str, within: float) -> tuple[dict[str, Any], float]:
            started = time.monotonic()
            while (seen := await health())["health"]["state"] != state:
                assert time.monotonic() - started < within, seen
                await asyncio.sleep(0.2)
            return seen, time.monotonic() - started

        try:
            async with running_agent(load_config(path), config_path=path):
                seen, _ = await until("healthy", 20)
                assert {d["name"] for d in seen["status"]["drivers"]} == {"pump1", "pump2"}
                plant.add_fault(LinkDrop(device="pump2"))
                seen, took = await until("degraded", 60)
                assert any(r.startswith("driver pump2 is") for r in seen["health"]["reasons"])
                assert took < 60
                r = await user.client.get("/v1/gateways", params={"health": "degraded"})
                assert [g["id"] for g in r.json()] == [int(cloud.gateway_id)]
            seen, _ = await until("offline", 15)  # the agent stopped: nothing arrives any more
            assert "no contact" in seen["health"]["reasons"][0]
        finally:
            await user.close()


async def test_a_local_edit_is_drift_until_pushed_from_the_gateway(gateway: Gateway) -> None:
    text = gateway.document(gateway.devices[:1], probation=3)
    version, rollout_id = await gateway.user.push(text)
    assert (await gateway.user.until_done(rollout_id))["state"] == "completed"
    edited = text + "# pump2 comes next week\n"
    gateway.path.write_text(edited)
    gateway.agent.agent.reload_requested.set()  # what `systemctl reload tagway` sends
    deadline = time.monotonic() + 15
    while (seen := await gateway.user.gateway_config())["drift"] is None or seen["drift"][
        "document"
    ] is None:
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.1)
    assert seen["desired"]["version"] == version  # the cloud shows both
    assert "+# pump2 comes next week" in seen["drift"]["diff"]
    remote = await gateway.remote()
    assert (remote["drift"], remote["version"]) == (True, None)
    pushed = await gateway.agent.api.post("/v1/config/push")
    assert pushed.status_code == 200, pushed.text
    adopted = pushed.json()["version"]
    deadline = time.monotonic() + 15
    while (seen := await gateway.user.gateway_config())["running_version"] != adopted:
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.1)
    assert seen["drift"] is None
    assert seen["desired"]["version"] == adopted
    assert gateway.path.read_text() == edited  # nothing on the gateway changed
    remote = await gateway.remote()
    assert (remote["drift"], remote["version"]) == (False, adopted)
