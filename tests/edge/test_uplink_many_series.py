"""A large gateway's first batches against the cloud's default limits: 6,000 tags, so one chunk
(5,000 readings, one flush) carries 5,000 series the cloud has never seen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from firmware_sim.plant import Plant
from tests.edge.cloud_harness import bootstrap, serve_cloud
from tests.edge.harness import agent_config, running_agent

pytestmark = pytest.mark.integration

DEVICES, TAGS_PER_DEVICE = 12, 500


def all_tags(plant: Plant) -> list[dict[str, Any]]:
    """Device sections for every tag the plant serves, its generated ones included."""
    out = []
    for name, port in plant.ports["modbus"].items():
        regmap = plant.model.maps[name]
        required = {"name", "table", "address", "type"}
        tags = [t.model_dump(exclude_none=True, exclude_defaults=True)
                | t.model_dump(include=required) for t in regmap.tags]  # fmt: skip
        out.append({
            "protocol": "modbus", "name": name, "host": "127.0.0.1", "port": port,
            "unit_id": regmap.unit_id, "simulated": True, "timeout": 2.0,
            "poll_groups": [{"name": "default", "interval": 5.0}], "tags": tags,
        })  # fmt: skip
    return out


async def test_a_6000_tag_gateway_is_stored_under_the_default_limits(tmp_path: Path) -> None:
    async with (
        Plant(devices=DEVICES, tags_per_device=TAGS_PER_DEVICE, seed=3, tick_s=0.5, opcua=False,
              control_port=None) as plant,
        serve_cloud(tmp_path / "cloud.db") as cloud,
    ):  # fmt: skip
        await bootstrap(cloud)
        token_file = tmp_path / "gateway.token"
        token_file.write_text(cloud.gateway_token)
        devices = all_tags(plant)
        tags = {(d["name"], t["name"]) for d in devices for t in d["tags"]}
        assert len(tags) == DEVICES * TAGS_PER_DEVICE
        config = agent_config(
            tmp_path / "state", devices,
            # One flush holds a whole poll: chunks of 5,000 readings, each a new series.
            outbox={"flush_interval": 3.0, "quota": "64MiB"},
            cloud={"url": cloud.url, "gateway_id": cloud.gateway_id,
                   "token_file": str(token_file), "max_batches_per_s": 0,
                   "retry_max_delay": 1.0},
        )  # fmt: skip
        async with running_agent(config) as running:

            async def every_series_stored() -> bool:
                return len(cloud.counts()) == len(tags)

            await running.wait_for(every_series_stored, within=120)
            uplink = await running.get("/v1/uplink")
            outbox = await running.get("/v1/outbox")
        assert uplink["quarantined_chunks"] == 0, uplink["last_error"]
        assert all(lane["quarantined_chunks"] == 0 for lane in outbox["lanes"].values())
        assert set(cloud.counts()) == tags
