"""A gateway's ISA-95 paths reach the cloud's asset tree: a real agent reading the simulated
plant, a real cloud on loopback (SQLite), the path from the device's config section."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from firmware_sim.plant import Plant
from tests.edge.cloud_harness import bootstrap, serve_cloud
from tests.edge.fleet_harness import CloudUser, dump, gateway_data
from tests.edge.harness import modbus_devices, running_agent

pytestmark = pytest.mark.integration


async def test_the_agent_places_its_devices_in_the_clouds_asset_tree(
    plant: Plant, tmp_path: Path
) -> None:
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        devices = modbus_devices(plant, interval=0.1)[:2]
        devices[0]["path"] = "acme/plant-a/pumping/line1/cell1"
        state = tmp_path / "state"
        state.mkdir()
        path = tmp_path / "config.yaml"
        path.write_text(dump(gateway_data(state, devices, cloud)))
        user = CloudUser(cloud)

        async def placed() -> dict[str, Any]:
            r = await user.client.get("/v1/devices")
            return {d["name"]: d for d in r.json()}

        async def until(device: str, asset_path: str | None) -> dict[str, Any]:
            started = time.monotonic()
            while (seen := await placed()).get(device, {}).get("asset_path", "-") != asset_path:
                assert time.monotonic() - started < 20, seen
                await asyncio.sleep(0.2)
            return seen

        try:
            async with running_agent(load_config(path), config_path=path) as running:
                seen = await until(devices[0]["name"], "plant-a/pumping/line1/cell1")
                # the paths change in the config: the reload sends them again
                devices[0]["path"], devices[1]["path"] = "acme/plant-a/pumping/line2", "acme/b"
                path.write_text(dump(gateway_data(state, devices, cloud)))
                assert (await running.agent.reload()).applied
                await until(devices[1]["name"], "b")
                moved = await until(devices[0]["name"], "plant-a/pumping/line2")
                assert moved[devices[0]["name"]]["asset_source"] == "gateway"
            first, second = seen[devices[0]["name"]], seen[devices[1]["name"]]
            assert (first["asset_path"], first["asset_source"]) == (
                "plant-a/pumping/line1/cell1", "gateway")  # fmt: skip
            assert second["asset_id"] is None
            assets = (await user.client.get("/v1/assets")).json()
            assert [(a["path"], a["level"]) for a in assets] == [
                ("b", "site"), ("plant-a", "site"), ("plant-a/pumping", "area"),
                ("plant-a/pumping/line1", "line"), ("plant-a/pumping/line1/cell1", "equipment"),
                ("plant-a/pumping/line2", "line"),
            ]  # fmt: skip
            latest = (await user.client.get(f"/v1/assets/{assets[1]['id']}/latest")).json()
            assert latest
            assert {v["device"] for v in latest} == {devices[0]["name"]}
            assert {v["asset_path"] for v in latest} == {"plant-a/pumping/line2"}
        finally:
            await user.close()
