"""The delivery guarantee under the failures a plant sees: kill -9, a long outage that fills the
disk quota, and alarms while the uplink is down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.chunk import decode_readings
from firmware_sim.plant import Plant
from store_forward import Lane, Outbox, read_stats
from tests.edge.cloud_harness import RunningCloud, bootstrap, serve_cloud
from tests.edge.harness import modbus_devices, running_agent
from tests.edge.test_uplink import drain, with_cloud

pytestmark = pytest.mark.integration


def pending_readings(outbox_path: Path) -> set[tuple[str, str, int]]:
    """Every telemetry reading still in the outbox (leases are released again afterwards).

    The killed agent may have died holding a lease on the batch it was sending: those chunks are
    still in the outbox, so its leases are forgotten first, as the next agent does at start.
    """
    with Outbox(outbox_path) as outbox:
        outbox.forget_leases()
        lease = outbox.lease(max_bytes=1 << 30, max_chunks=1_000_000)
        found = {(r.device, r.tag, r.ts) for c in lease.chunks if c.lane is Lane.TELEMETRY
                 for r in decode_readings(c.payload)}  # fmt: skip
        outbox.release(lease)
    return found


def cloud_readings(cloud: RunningCloud) -> set[tuple[str, str, int]]:
    with contextlib.closing(sqlite3.connect(cloud.db_path)) as db:
        rows = db.execute(
            "SELECT d.name, s.tag, t.ts FROM telemetry t JOIN series s ON s.id = t.series_id "
            "JOIN devices d ON d.id = s.device_id"
        ).fetchall()
    return {(d, t, ts) for d, t, ts in rows}


async def test_kill_9_mid_upload_loses_and_duplicates_nothing(tmp_path: Path, plant: Plant) -> None:
    rng = random.Random(7)
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        config = with_cloud(tmp_path, plant, cloud).model_dump(mode="json", exclude_none=True)
        config["outbox"]["lease_timeout"] = 1.0  # the dead agent's lease comes back quickly
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        outbox_path = Path(config["gateway"]["state_dir"]) / "outbox.db"
        discovery = Path(config["gateway"]["state_dir"]) / "local_api.json"
        for _ in range(3):
            discovery.unlink(missing_ok=True)
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", "run", "--config", str(config_path),
                "--log-format", "json", stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            for _ in range(300):  # until it serves (slow to start on a loaded machine)
                if await asyncio.to_thread(discovery.exists):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            os.kill(agent.pid, signal.SIGKILL)
            await agent.wait()
        accepted_but_unsent = pending_readings(outbox_path)
        before = cloud_readings(cloud)
        assert before, "the agent sent nothing before it was killed"
        await drain(tmp_path, cloud)
        after = cloud_readings(cloud)
        assert accepted_but_unsent <= after  # every accepted reading arrived
        assert before <= after
        assert len(after) == len(before | accepted_but_unsent)  # and nothing else appeared
        # The counts tell the truth too: a batch replayed under a new seq by the next life stored
        # nothing and is charged nothing, and the drops are the outbox's own counters.
        usage = await _usage(cloud)
        assert sum(day["readings"] for day in usage) == len(after)
        local = read_stats(outbox_path).dropped_readings
        assert sum(day["dropped"] for day in usage) == local


async def test_a_long_outage_fills_the_quota_drops_oldest_telemetry_and_counts_it(
    tmp_path: Path, plant: Plant
) -> None:
    devices = modbus_devices(plant, interval=0.05)
    # An alarm that fires at once, so the alarm lane holds something the quota must not drop.
    alarm = {"name": "pump1.flow_seen", "device": "pump1", "tag": "flow", "kind": "high",
             "limit": -1.0, "severity": "low"}  # fmt: skip
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
    token_file = tmp_path / "gateway.token"
    token_file.write_text(cloud.gateway_token)
    from tests.edge.harness import agent_config  # noqa: PLC0415 - next to its one use

    config = agent_config(
        tmp_path / "state", devices, alarms=[alarm],
        outbox={"flush_interval": 0.1, "quota": 200_000, "chunk_readings": 500},
        cloud={"url": cloud.url, "gateway_id": cloud.gateway_id, "token_file": str(token_file),
               "retry_max_delay": 1.0},
    )  # fmt: skip
    async with running_agent(config) as running:  # the cloud is down

        async def dropping() -> Any:
            outbox = await running.get("/v1/outbox")
            return outbox["lanes"]["telemetry"]["dropped_readings"] > 0

        await running.wait_for(dropping, within=60)
        outbox = await running.get("/v1/outbox")
        metrics = (await running.api.get("/metrics")).text
    assert outbox["used_bytes"] <= outbox["quota_bytes"]
    assert outbox["lanes"]["alarm"]["chunks"] >= 1  # alarms are never dropped
    assert outbox["lanes"]["alarm"]["dropped_readings"] == 0
    dropped = outbox["lanes"]["telemetry"]["dropped_readings"]
    assert 'tagway_outbox_dropped_readings_total{lane="telemetry"}' in metrics
    async with serve_cloud(tmp_path / "cloud.db", port=int(cloud.url.rsplit(":", 1)[1])) as back:
        back.gateway_id, back.gateway_token = cloud.gateway_id, cloud.gateway_token
        back.admin_key = cloud.admin_key
        await drain(tmp_path, back)
        usage = await _usage(back)
        assert ("pump1", "pump1.flow_seen", "active") in back.alarms()
    # The cloud counts exactly the readings the gateway dropped (its outbox's own counters, which
    # went on growing after the figure above), and exactly the rows it stored.
    local = read_stats(tmp_path / "state" / "outbox.db").dropped_readings
    assert local >= dropped
    assert sum(day["dropped"] for day in usage) == local
    assert sum(day["readings"] for day in usage) == sum(back.counts().values())


async def _usage(cloud: RunningCloud) -> list[dict[str, Any]]:
    import httpx  # noqa: PLC0415

    async with httpx.AsyncClient(base_url=cloud.url) as client:
        r = await client.get("/v1/usage", headers={"Authorization": f"Bearer {cloud.admin_key}"})
        r.raise_for_status()
        body = r.json()
    return list(body["days"] if isinstance(body, dict) else body)


async def test_alarms_work_offline_and_survive_a_restart(tmp_path: Path, plant: Plant) -> None:
    devices = modbus_devices(plant)
    alarm = {"name": "pump1.flow_high", "device": "pump1", "tag": "flow", "kind": "high",
             "limit": 1.0, "on_delay": 0.5, "severity": "high"}  # fmt: skip
    from tests.edge.harness import agent_config  # noqa: PLC0415

    config = agent_config(tmp_path / "state", devices, alarms=[alarm])  # no cloud at all
    async with running_agent(config) as running:

        async def raised() -> Any:
            alarms = {a["name"]: a for a in await running.get("/v1/alarms")}
            return alarms["pump1.flow_high"]["state"] == "active"

        await running.wait_for(raised)
        first = {a["name"]: a for a in await running.get("/v1/alarms")}["pump1.flow_high"]
    async with running_agent(config) as running:
        again = {a["name"]: a for a in await running.get("/v1/alarms")}["pump1.flow_high"]
        assert again["state"] == "active"
        assert again["raised_at"] == first["raised_at"]  # the same alarm, not a new one
        ack = await running.api.post("/v1/alarms/pump1.flow_high/ack")
        assert ack.json()["acknowledged"] is True
    async with running_agent(config) as running:
        state = {a["name"]: a for a in await running.get("/v1/alarms")}["pump1.flow_high"]
        assert state["state"] == "acked"
        outbox = await running.get("/v1/outbox")
        assert outbox["lanes"]["alarm"]["readings"] == 2  # raised and acknowledged, kept to send
