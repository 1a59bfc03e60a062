"""The agent end to end on the edge: simulated Modbus devices -> pipeline -> real outbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.chunk import decode_readings
from firmware_sim.plant import Plant
from store_forward import Lane, Outbox
from tests.edge.harness import agent_config, modbus_devices, running_agent

pytestmark = pytest.mark.integration


async def test_readings_flow_from_devices_into_the_outbox(tmp_path: Path, plant: Plant) -> None:
    config = agent_config(tmp_path, modbus_devices(plant))
    async with running_agent(config) as running:

        async def all_connected() -> bool:
            drivers = await running.get("/v1/drivers")
            return all(d["state"] == "connected" for d in drivers) and len(drivers) == 3

        await running.wait_for(all_connected)

        async def committed() -> bool:
            outbox = await running.get("/v1/outbox")
            return outbox["lanes"]["telemetry"]["readings"] > 200

        await running.wait_for(committed)
        tags = await running.get("/v1/tags?device=pump1")
        by_tag = {t["tag"]: t for t in tags}
        assert by_tag["flow"]["quality"] == "good"
        assert by_tag["flow"]["simulated"] is True
        assert by_tag["flow"]["unit"] == "m3/h"
        assert 0 < by_tag["flow"]["value"] < 1000
        gateway = await running.get("/v1/gateway")
        assert gateway["simulated"] is True
        health = await running.get("/health")
        assert health["status"] == "ok"
        pipeline = running.agent.runtime.pipeline
        received = pipeline.counters.received

    # After a clean stop everything received was committed: nothing held in memory is lost.
    assert pipeline.counters.committed == received
    with Outbox(config.outbox_path) as outbox:
        lease = outbox.lease(max_bytes=1 << 30, max_chunks=100_000)
        stored = [r for c in lease.chunks if c.lane is Lane.TELEMETRY
                  for r in decode_readings(c.payload)]  # fmt: skip
    assert len(stored) == received
    assert {r.device for r in stored} == {"pump1", "pump2", "tank1"}


async def test_a_dead_device_is_visible_and_does_not_stop_the_others(
    tmp_path: Path, plant: Plant
) -> None:
    devices = modbus_devices(plant)
    devices[1]["port"] = 1  # nothing listens there
    config = agent_config(tmp_path, devices)
    async with running_agent(config) as running:

        async def pump1_flowing() -> bool:
            return bool(await running.get("/v1/tags?device=pump1&tag=flow"))

        await running.wait_for(pump1_flowing)
        drivers = {d["name"]: d for d in await running.get("/v1/drivers")}
        assert drivers["pump1"]["state"] == "connected"
        assert drivers["pump2"]["state"] in {"backoff", "connecting"}
        response = await running.api.get("/health")
        assert response.status_code == 503
        assert any("pump2" in p for p in response.json()["problems"])
