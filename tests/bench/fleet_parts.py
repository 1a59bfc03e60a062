"""The fleet parts of `bench_commands.py` (issue 18): a config push applied on a real agent, and
what 1,000 gateways reporting status every minute cost the cloud.

1. `config_apply`: a running agent (in this process, reading a firmware_sim plant over Modbus,
   cloud-managed, `fleet.probation: 10`) and a cloud replica; a config that adds a device is
   pushed (`POST /v1/configs`, `POST /v1/rollouts`) and the clock runs until the rollout is
   completed, i.e. the gateway applied it and its probation passed. The channel's ``config``
   event is carried to the agent as the edge's channel client does (`deliver_channel`).
   Target: under 15 s with a 10 s probation.
2. `status_cost`: `gateways` gateways each post one status document per round, in the batch
   format gateways send (a record chunk in the event lane), from 16 concurrent senders. A round
   stands for one minute of the real cadence, so the replica's CPU seconds per round over 60 s
   is its core share; rows inserted and WAL bytes per round (from PostgreSQL's own counters),
   times 1,440, are the rows and bytes per day. One gateway in 50 reports a driver down in each
   round (a different one each round), so changes of health are written too, as they would be.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from cloud.contract import CHUNKS, StatusReport
from cloud.contract.chunk import encode_records
from cloud.contract.chunked import LeasedChunk, encode_chunk_batch

ROUNDS_PER_DAY = 1_440
SENDERS = 16


def status_body(gateway_id: int, seq: int, *, degraded: bool) -> bytes:
    """One gateway's batch carrying one status document, as its uplink posts it."""
    drivers = [{"name": f"dev{i}", "state": "connected"} for i in range(8)]
    if degraded:
        drivers[0] = {"name": "dev0", "state": "backoff", "last_error": "connection refused"}
    status = StatusReport.model_validate({
        "type": "status", "seq": seq, "ts": time.time_ns() // 1000, "agent_version": "0.1.0",
        "uptime_s": 3600.0, "drivers": drivers, "backlog_chunks": 2, "backlog_readings": 900,
        "backlog_oldest_s": 0.4, "disk_free_bytes": 20 * 2**30, "disk_total_bytes": 32 * 2**30,
        "outbox_bytes": 2**20, "outbox_quota_bytes": 2**30, "clock_synchronized": True,
        "clock_offset_s": 0.002, "config": {"version": 3, "managed": "cloud",
                                            "outcome": "applied", "probation": "passed"},
    })  # fmt: skip
    chunk = LeasedChunk(lane="event", readings=1, data=encode_records([], [status]))
    now = time.time_ns() // 1000
    return encode_chunk_batch(
        gateway_id=str(gateway_id), seq=seq, created_at=now, dropped={}, chunks=[chunk]
    )


def _pg_figures(owner_dsn: str) -> tuple[int, int, int]:
    """(rows inserted, rows updated, WAL bytes) so far, database-wide."""
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        ins, upd = conn.execute(
            "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0)"
            " FROM pg_stat_user_tables"
        ).fetchone() or (0, 0)
        wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
    return int(ins), int(upd), int(wal[0] if wal else 0)


async def status_cost(
    url: str, pid: int, owner_dsn: str, gateways: list[tuple[int, str]], *, rounds: int,
    cpu_of: Any,
) -> dict[str, Any]:  # fmt: skip
    """The replica's CPU, rows and WAL bytes for `rounds` rounds of status documents."""
    limits = httpx.Limits(max_connections=SENDERS + 4)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def send_round(r: int) -> None:
            queue = list(gateways)

            async def sender() -> None:
                while queue:
                    gateway_id, token = queue.pop()
                    body = status_body(gateway_id, 10 + r, degraded=(gateway_id + r) % 50 == 0)
                    response = await client.post(
                        "/v1/ingest", content=body,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": CHUNKS},
                    )  # fmt: skip
                    response.raise_for_status()

            await asyncio.gather(*(sender() for _ in range(SENDERS)))

        await send_round(0)  # every gateway's first status row exists: steady state from here
        await asyncio.sleep(1.5)  # PostgreSQL flushes its counters about once a second
        ins0, upd0, wal0 = _pg_figures(owner_dsn)
        cpu0, wall0 = cpu_of(pid), time.monotonic()
        for r in range(1, rounds + 1):
            await send_round(r)
        cpu1, wall1 = cpu_of(pid), time.monotonic()
        await asyncio.sleep(1.5)
        ins1, upd1, wal1 = _pg_figures(owner_dsn)
    per_round = (cpu1 - cpu0) / rounds
    return {
        "gateways": len(gateways), "rounds": rounds, "wall_s_per_round": (wall1 - wall0) / rounds,
        "cpu_s_per_round": per_round, "core_share": per_round / 60.0,
        "rows_per_day": (ins1 - ins0) / rounds * ROUNDS_PER_DAY,
        "updates_per_day": (upd1 - upd0) / rounds * ROUNDS_PER_DAY,
        "bytes_per_day": (wal1 - wal0) / rounds * ROUNDS_PER_DAY,
    }  # fmt: skip


async def config_apply(url: str, platform_key: str, *, probation: float = 10.0) -> dict[str, Any]:
    """Seconds from the push to "applied and passed probation" on one running agent."""
    from edge.config import load_config  # noqa: PLC0415 - the agent side, only for this part
    from firmware_sim.plant import Plant  # noqa: PLC0415
    from tests.edge.cloud_harness import Faults, RunningCloud  # noqa: PLC0415
    from tests.edge.fleet_harness import CloudUser, deliver_channel, dump, gateway_data  # noqa: PLC0415
    from tests.edge.harness import modbus_devices, running_agent  # noqa: PLC0415

    cloud = RunningCloud(url, Path("/nonexistent"), Faults())  # served by the bench's replica
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        platform = {"Authorization": f"Bearer {platform_key}"}
        r = await client.post("/v1/tenants", json={"name": "fleet-bench"}, headers=platform)
        r.raise_for_status()
        admin = {"name": "admin", "role": "admin"}
        r = await client.post(f"/v1/tenants/{r.json()['id']}/api-keys", json=admin,
                              headers=platform)  # fmt: skip
        r.raise_for_status()
        cloud.admin_key = r.json()["token"]
        r = await client.post("/v1/gateways", json={"name": "bench-gw"},
                              headers={"Authorization": f"Bearer {cloud.admin_key}"})  # fmt: skip
        r.raise_for_status()
        cloud.gateway_id, cloud.gateway_token = str(r.json()["gateway"]["id"]), r.json()["token"]
    with tempfile.TemporaryDirectory(prefix="tagway-fleet-bench-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        path = Path(tmp) / "config.yaml"
        async with Plant(devices=3, seed=3, tick_s=0.05, opcua=False, control_port=None) as plant:
            devices = modbus_devices(plant, interval=0.2)
            path.write_text(dump(gateway_data(state, devices[:2], cloud, probation=probation)))
            user = CloudUser(cloud)
            try:
                async with (
                    running_agent(load_config(path), config_path=path) as agent,
                    deliver_channel(url, cloud.gateway_token, agent.agent),
                ):
                    await asyncio.sleep(2)  # connected and settled before the push
                    new = dump(gateway_data(state, devices, cloud, probation=probation))
                    started = time.monotonic()
                    _, rollout_id = await user.push(new)
                    done = await user.until_done(rollout_id, within=120)
                    took = time.monotonic() - started
            finally:
                await user.close()
    if done["state"] != "completed":
        raise RuntimeError(f"the rollout did not complete: {done}")
    return {"seconds": took, "probation_s": probation}
