"""Soak (-m slow, 10 minutes; TAGWAY_SOAK_S shortens it): the agent, its embedded broker and a
firmware_sim plant whose MQTT devices publish random hostile payloads while Modbus and MQTT links
flap. The agent stays up, no driver crashes, and every hostile message is dead-lettered and
counted."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from firmware_sim.faults import LinkDrop, MqttHostile
from firmware_sim.plant import Plant
from tests.edge.harness import agent_config, modbus_devices, running_agent
from tests.mosquitto import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOAK_S = float(os.environ.get("TAGWAY_SOAK_S", "600"))


def _users() -> list[dict[str, Any]]:
    cheap = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8 * 1024, parallelism=1),))
    return [
        {"username": "sim", "password_hash": cheap.hash("pw-sim"), "publish": ["plant/#"]},
        {"username": "gateway", "password_hash": cheap.hash("pw-gateway"), "publish": [],
         "subscribe": ["plant/#"]},
    ]  # fmt: skip


def _hostile_sent(plant: Plant) -> int:
    assert plant.mqtt is not None
    return sum(kinds.get("hostile", 0) for kinds in plant.mqtt.publish_counts().values())


@pytest.mark.timeout(SOAK_S + 300)
async def test_hostile_mqtt_traffic_and_flapping_links_for_ten_minutes(tmp_path: Path) -> None:
    port = free_port()
    source = {
        "protocol": "mqtt", "name": "plant-mqtt", "url": f"mqtt://127.0.0.1:{port}",
        "username": "gateway", "password": "pw-gateway", "simulated": True, "qos": 1,
        "reconnect_base_s": 0.1, "reconnect_cap_s": 0.5,
        "subscriptions": [{"topic": "plant/{device}/telemetry"}],
    }  # fmt: skip
    broker = {"host": "127.0.0.1", "port": port, "users": _users()}
    rng = random.Random(14)
    async with Plant(
        devices=3, seed=14, tick_s=0.05, opcua=False, control_port=None,
        mqtt_url=f"mqtt://sim:pw-sim@127.0.0.1:{port}", mqtt_interval_s=0.05,
    ) as plant:  # fmt: skip
        devices = [*modbus_devices(plant, interval=0.2), source]
        config = agent_config(tmp_path / "state", devices, mqtt_broker=broker)
        names = list(plant.model.devices)
        async with running_agent(config) as running:
            for index, name in enumerate(names):
                plant.add_fault(MqttHostile(device=name, share=0.4, seed=index))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SOAK_S
            flaps = 0
            while loop.time() < deadline:
                # A link drops (the device's Modbus server and its MQTT connection), comes back.
                plant.add_fault(LinkDrop(device=rng.choice(names), seconds=rng.uniform(1, 6)))
                flaps += 1
                await asyncio.sleep(rng.uniform(2, 8))
                health = await running.api.get("/health")
                assert health.status_code in (200, 503)  # the agent answers throughout
            plant.clear_faults()  # no more hostile payloads, no more drops
            sent = _hostile_sent(plant)

            async def all_dead_lettered() -> bool:
                letters = await running.get("/v1/dead-letters")
                return bool(letters["total"] >= sent)

            await running.wait_for(all_dead_lettered, within=60)
            letters = await running.get("/v1/dead-letters")
            drivers = {d["name"]: d for d in await running.get("/v1/drivers")}
            tags = await running.get("/v1/tags")

    assert flaps >= 1
    assert sent > 0
    assert letters["total"] == sent  # every hostile message, and nothing else
    assert drivers["plant-mqtt"]["counters"]["dropped"] == sent
    assert all(d["crashes"] == 0 for d in drivers.values()), drivers
    assert all(d["state"] == "connected" for d in drivers.values()), drivers
    assert {t["device"] for t in tags} >= set(names)  # good readings kept flowing
