"""A seq the cloud already holds with other content (the seq state went back in time: a restored
backup): the agent quarantines that batch with the reason and raises a critical alarm record,
which reaches the cloud with the plant's alarms."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from cloud.contract import MSGPACK, Batch, SeriesColumns, encode_batch
from firmware_sim.plant import Plant
from tests.edge.cloud_harness import bootstrap, serve_cloud
from tests.edge.harness import running_agent
from tests.edge.test_uplink import with_cloud

pytestmark = pytest.mark.integration


async def test_a_seq_conflict_is_quarantined_with_an_alarm(tmp_path: Path, plant: Plant) -> None:
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        # The cloud holds a seq a little ahead of the clock, stored with other content...
        taken = time.time_ns() // 1_000 + 60_000_000
        now = time.time_ns() // 1_000
        other = Batch(cloud.gateway_id, taken, now,
                      [SeriesColumns("elsewhere", "x", [now], [1.0], [0])])  # fmt: skip
        async with httpx.AsyncClient(base_url=cloud.url) as client:
            r = await client.post("/v1/ingest", content=encode_batch(other, content_type=MSGPACK),
                                  headers={"Authorization": f"Bearer {cloud.gateway_token}",
                                           "Content-Type": MSGPACK,
                                           "Content-Encoding": "zstd"})  # fmt: skip
            assert r.status_code == 200
        # ...and the gateway's seq state says that seq is next (restored from an old backup).
        state = tmp_path / "state"
        state.mkdir()
        (state / "uplink_seq.json").write_text(json.dumps({"last_seq": taken - 1, "dropped": {}}))
        async with running_agent(with_cloud(tmp_path, plant, cloud)) as running:

            async def raised() -> bool:
                names = {name for _, name, _ in cloud.alarms()}
                return "uplink.seq_conflict" in names

            await running.wait_for(raised, within=30)
            uplink = await running.get("/v1/uplink")
            outbox = await running.get("/v1/outbox")
    assert uplink["seq_conflicts"] == 1
    assert "seq_conflict" in uplink["last_error"]
    assert sum(lane["quarantined_chunks"] for lane in outbox["lanes"].values()) >= 1
