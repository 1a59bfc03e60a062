"""Outbox to cloud, exactly once: a real agent, a real simulated plant, a real cloud on loopback."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from edge.config import AgentConfig
from firmware_sim.plant import Plant
from protocols.reading import Reading
from tests.edge.cloud_harness import RunningCloud, bootstrap, serve_cloud
from tests.edge.harness import RunningAgent, agent_config, modbus_devices, running_agent

pytestmark = pytest.mark.integration


def with_cloud(tmp_path: Path, plant: Plant | None, cloud: RunningCloud) -> AgentConfig:
    token_file = tmp_path / "gateway.token"
    token_file.write_text(cloud.gateway_token)
    devices = modbus_devices(plant) if plant is not None else []
    return agent_config(
        tmp_path / "state", devices,
        cloud={"url": cloud.url, "gateway_id": cloud.gateway_id, "token_file": str(token_file),
               "max_batches_per_s": 0, "retry_max_delay": 1.0},
    )  # fmt: skip


def count_everything(running: RunningAgent) -> Counter[tuple[str, str]]:
    """Readings per series as the pipeline accepted them (every reading passes in these tests)."""
    seen: Counter[tuple[str, str]] = Counter()

    def listener(readings: list[Reading], _events: object) -> None:
        seen.update((r.device, r.tag) for r in readings)

    running.agent.runtime.pipeline.listeners.append(listener)
    return seen


async def drain(tmp_path: Path, cloud: RunningCloud) -> None:
    """Run the agent with no devices on the same state until its outbox is empty."""
    async with running_agent(with_cloud(tmp_path, None, cloud)) as running:

        async def empty() -> bool:
            outbox = await running.get("/v1/outbox")
            return sum(lane["chunks"] for lane in outbox["lanes"].values()) == 0

        await running.wait_for(empty, within=60)


async def test_every_accepted_reading_reaches_the_cloud_exactly_once(
    tmp_path: Path, plant: Plant
) -> None:
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        config = with_cloud(tmp_path, plant, cloud)
        async with running_agent(config) as running:
            seen = count_everything(running)

            async def sent_some() -> bool:
                return (await running.get("/v1/uplink"))["batches_sent"] >= 3

            await running.wait_for(sent_some)
            uplink = await running.get("/v1/uplink")
            # Readings the cloud acknowledged per second over the last minute.
            assert uplink["send_rate"] > 0
            assert uplink["readings_sent"] > 0
        await drain(tmp_path, cloud)
        assert sum(seen.values()) > 100
        assert cloud.counts() == dict(seen)


async def test_cloud_down_then_back_drains_the_backlog_without_loss(
    tmp_path: Path, plant: Plant
) -> None:
    db = tmp_path / "cloud.db"
    async with serve_cloud(db) as cloud:
        await bootstrap(cloud)
        port = int(cloud.url.rsplit(":", 1)[1])
    config = with_cloud(tmp_path, plant, cloud)
    async with running_agent(config) as running:
        seen = count_everything(running)

        async def failing() -> bool:
            uplink = await running.get("/v1/uplink")
            return uplink["state"] == "backoff" and uplink["retries"] >= 2

        await running.wait_for(failing)  # the cloud is down: the outbox holds everything
        backlog = (await running.get("/v1/outbox"))["lanes"]["telemetry"]["readings"]
        assert backlog > 0
        async with serve_cloud(db, port=port) as back:
            back.gateway_id, back.gateway_token = cloud.gateway_id, cloud.gateway_token

            async def drained() -> bool:
                outbox = await running.get("/v1/outbox")
                uplink = await running.get("/v1/uplink")
                return uplink["batches_sent"] > 0 and outbox["lanes"]["telemetry"]["chunks"] < 2

            await running.wait_for(drained, within=60)
    async with serve_cloud(db, port=port) as back:
        back.gateway_id, back.gateway_token = cloud.gateway_id, cloud.gateway_token
        await drain(tmp_path, back)
        assert back.counts() == dict(seen)


async def test_500s_429_and_a_refused_batch(tmp_path: Path, plant: Plant) -> None:
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        cloud.faults.fail_next(500, times=3)
        cloud.faults.fail_next(429, **{"Retry-After": "1"})
        cloud.faults.fail_next(422)
        config = with_cloud(tmp_path, plant, cloud)
        async with running_agent(config) as running:
            seen = count_everything(running)

            async def past_the_faults() -> bool:
                return (await running.get("/v1/uplink"))["batches_sent"] >= 3

            await running.wait_for(past_the_faults, within=60)
            uplink = await running.get("/v1/uplink")
            outbox = await running.get("/v1/outbox")
        await drain(tmp_path, cloud)
        assert cloud.faults.answered == [500, 500, 500, 429, 422]
        assert uplink["retries"] == 4  # three 500s and one 429, each retried with the same seq
        assert uplink["quarantined_chunks"] >= 1
        # The refused batch is kept, not lost: the first batch may be a lone event chunk (the
        # shadow's reported document at start), so it is counted over every lane.
        assert sum(lane["quarantined_readings"] for lane in outbox["lanes"].values()) > 0
        quarantined = outbox["lanes"]["telemetry"]["quarantined_readings"]
        # Every other reading arrived, once.
        assert sum(cloud.counts().values()) == sum(seen.values()) - quarantined


async def test_live_data_keeps_flowing_while_a_backlog_drains(tmp_path: Path, plant: Plant) -> None:
    db = tmp_path / "cloud.db"
    async with serve_cloud(db) as cloud:
        await bootstrap(cloud)
        port = int(cloud.url.rsplit(":", 1)[1])
    token_file = tmp_path / "gateway.token"
    token_file.write_text(cloud.gateway_token)
    config = agent_config(
        tmp_path / "state", modbus_devices(plant),
        cloud={"url": cloud.url, "gateway_id": cloud.gateway_id, "token_file": str(token_file),
               "retry_max_delay": 0.5, "max_batch_bytes": 2_000, "max_batches_per_s": 20},
    )  # fmt: skip
    async with running_agent(config) as running:

        async def backlog() -> bool:
            outbox = await running.get("/v1/outbox")
            return bool(outbox["lanes"]["telemetry"]["chunks"] >= 60)

        await running.wait_for(backlog, within=60)  # the cloud is down: a backlog builds
        async with serve_cloud(db, port=port) as back:
            back.gateway_id, back.gateway_token = cloud.gateway_id, cloud.gateway_token
            returned_us = time.time_ns() // 1_000
            backlog_readings = (await running.get("/v1/outbox"))["lanes"]["telemetry"]["readings"]

            async def live_arrived() -> bool:
                return max((ts for _, _, ts in _stored(back)), default=0) > returned_us

            await running.wait_for(live_arrived, within=30)
            old_sent = sum(1 for _, _, ts in _stored(back) if ts <= returned_us)
    # Live readings reached the cloud while most of the backlog was still waiting to be sent.
    assert old_sent < 0.5 * backlog_readings


def _stored(cloud: RunningCloud) -> list[tuple[str, str, int]]:
    with contextlib.closing(sqlite3.connect(cloud.db_path)) as db:
        rows: list[tuple[str, str, int]] = db.execute(
            "SELECT d.name, s.tag, t.ts FROM telemetry t JOIN series s ON s.id = t.series_id "
            "JOIN devices d ON d.id = s.device_id"
        ).fetchall()
    return rows
