"""Two service replicas (two real uvicorn processes, each on its own port-0 socket) against one
PostgreSQL: batches posted through both store once, and quotas and rate limits hold across them
because their state lives in the database; a command created on one reaches a gateway whose
channel the other holds, and a stream client of one sees what the other stored."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud.contract import encode_batch
from tests.cloud.conftest import PLATFORM_KEY, Cloud, app_dsn, make_batch, truncate
from tests.cloud.live_support import open_stream

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]


def start_replica(settings: dict[str, object]) -> tuple[subprocess.Popen[bytes], str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    env = os.environ | {"TAGWAY_CLOUD_SETTINGS": json.dumps(settings), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "cloud.api.app:app_from_env",
            "--fd",
            str(sock.fileno()),
            "--log-level",
            "warning",
        ],
        env=env,
        pass_fds=(sock.fileno(),),
        cwd=ROOT,
    )
    sock.close()  # the child holds its own copy
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"replica exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"replica at {url} not ready in 30 s")


@pytest.fixture
def replicas(migrated_pg: str) -> Iterator[list[str]]:
    truncate(migrated_pg)
    settings = {
        "database_url": app_dsn(migrated_pg),
        "platform_admin_key": PLATFORM_KEY,
        "pool_min_size": 1,
        "pool_max_size": 4,
        "rate_window_s": 3600,
    }
    started = [start_replica(settings) for _ in range(2)]
    try:
        for proc, url in started:
            wait_ready(url, proc)
        yield [url for _, url in started]
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_two_replicas_store_once_and_share_quotas(replicas: list[str]) -> None:
    async with (
        httpx.AsyncClient(base_url=replicas[0], timeout=30) as one,
        httpx.AsyncClient(base_url=replicas[1], timeout=30) as two,
    ):
        first, second = Cloud(one), Cloud(two)
        tenant = await first.tenant("acme")
        gw = await first.gateway(tenant)
        # every batch posted through both replicas at once: stored exactly once
        origin = time.time_ns() // 1000 - 3_600_000_000  # an hour ago; 50 s per batch
        batches = [
            make_batch(gw[0], seq, n=50, start=origin + seq * 50_000_000) for seq in range(1, 11)
        ]
        bodies = [encode_batch(b) for b in batches]
        answers = await asyncio.gather(
            *(c.post(gw[1], body) for body in bodies for c in (first, second))
        )
        assert {a.status_code for a in answers} == {200}
        assert sum(a.json()["duplicate"] for a in answers) == 10
        assert sum(a.json()["stored"] for a in answers if not a.json()["duplicate"]) == 1000
        usage = (await second.get(tenant.admin, "/v1/usage")).json()["days"]
        assert sum(u["readings"] for u in usage) == 1000
        assert sum(u["batches"] for u in usage) == 10
        stored = 0
        for series in (await first.get(tenant.admin, "/v1/series")).json():
            page = await second.get(
                tenant.admin, f"/v1/series/{series['id']}/raw", start=0, limit=10_000
            )
            stored += len(page.json()["points"])
        assert stored == 1000

        # the daily quota holds across replicas: 100 readings = 10 batches of 10
        limited = await first.tenant("limited", ingest_quota_per_day=100)
        lgw = await first.gateway(limited)
        sends = [
            (first, second)[seq % 2].post(lgw[1], encode_batch(make_batch(lgw[0], seq, n=5)))
            for seq in range(1, 21)
        ]
        codes = [r.status_code for r in await asyncio.gather(*sends)]
        assert sorted(codes) == [200] * 10 + [429] * 10
        usage = (await second.get(limited.admin, "/v1/usage")).json()["days"]
        assert sum(u["readings"] for u in usage) == 100

        # and so does the rate limit: 6 requests per window in total, not per replica
        rated = await second.tenant("rated", rate_limit=6)
        rgw = await second.gateway(rated)
        sends = [
            (first, second)[seq % 2].post(rgw[1], encode_batch(make_batch(rgw[0], seq, n=1)))
            for seq in range(1, 13)
        ]
        answers = await asyncio.gather(*sends)
        assert sorted(a.status_code for a in answers) == [200] * 6 + [429] * 6
        assert all("Retry-After" in a.headers for a in answers if a.status_code == 429)


async def test_commands_and_streams_cross_replicas(replicas: list[str]) -> None:
    async with (
        httpx.AsyncClient(base_url=replicas[0], timeout=30) as one,
        httpx.AsyncClient(base_url=replicas[1], timeout=30) as two,
    ):
        first, second = Cloud(one), Cloud(two)
        tenant = await first.tenant("acme")
        gw = await first.gateway(tenant)
        async with (
            open_stream(two, "/v1/gateway/channel", gw[1]) as channel,
            open_stream(one, "/v1/stream", tenant.admin) as stream,
        ):
            await channel.until("desired")
            await stream.subscribed()
            # a command created on one replica reaches the channel held by the other at once
            started = time.monotonic()
            created = await one.post(f"/v1/gateways/{gw[0]}/commands", json={"kind": "ping"},
                                     headers=first.auth(tenant.admin))  # fmt: skip
            delivered = await channel.until("command", wait_s=2)
            assert delivered.data["id"] == created.json()["id"]
            assert time.monotonic() - started < 1.0
            # its changes, made on both replicas, are seen on the stream of one
            changes = [(await stream.until("command")).data["state"] for _ in range(2)]
            assert changes == ["queued", "delivered"]
            # readings ingested through the other replica reach this one's stream within 2 s,
            # small (inline in the notification) and large (through the relay log) alike
            for seq, n in ((1, 3), (2, 2_000)):
                started = time.monotonic()
                assert (await second.send(gw, make_batch(gw[0], seq, n=n))).status_code == 200
                readings = await stream.until("readings", wait_s=2)
                assert time.monotonic() - started < 2.0
                assert readings.data["seq"] == seq
                assert [len(s["ts"]) for s in readings.data["series"]] == [n, n]


async def test_a_gateway_on_one_replica_runs_a_write_created_on_the_other(
    replicas: list[str], tmp_path: Path
) -> None:
    """The gateway side of the same promise: a real agent holds its channel to the second
    replica; a write created on the first reaches a firmware_sim Modbus register, is read back,
    and its result (sent through the second replica's ingest) is what the first answers."""
    import yaml  # noqa: PLC0415 - the agent side, only for this test

    from edge.config import parse_config  # noqa: PLC0415
    from firmware_sim.plant import Plant  # noqa: PLC0415
    from tests.edge.harness import config_data, modbus_devices, running_agent  # noqa: PLC0415

    async with httpx.AsyncClient(base_url=replicas[0], timeout=30) as one:
        first = Cloud(one)
        tenant = await first.tenant("acme")
        gateway_id, token = await first.gateway(tenant)
        token_file = tmp_path / "gateway.token"
        token_file.write_text(token)
        async with Plant(devices=1, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant:
            cloud = {"url": replicas[1], "gateway_id": str(gateway_id),
                     "token_file": str(token_file), "retry_max_delay": 1.0}  # fmt: skip
            data = config_data(tmp_path / "state", modbus_devices(plant), cloud=cloud)
            async with running_agent(parse_config(yaml.safe_dump(data), source="test")) as agent:
                channel = agent.agent.channel
                assert channel is not None
                await asyncio.wait_for(channel.connected.wait(), 20)
                created = await one.post(
                    f"/v1/gateways/{gateway_id}/commands", headers=first.auth(tenant.admin),
                    json={"kind": "write",
                          "args": {"device": "pump1", "tag": "speed_setpoint", "value": 37.5}},
                )  # fmt: skip
                assert created.status_code == 201, created.text
                path = f"/v1/gateways/{gateway_id}/commands/{created.json()['id']}"
                deadline = time.monotonic() + 20
                while (found := (await one.get(path, headers=first.auth(tenant.admin))).json())[
                    "state"
                ] in ("queued", "delivered"):
                    assert time.monotonic() < deadline, found
                    await asyncio.sleep(0.05)
        assert found["state"] == "succeeded", found
        assert found["result"]["read_back"] == 37.5
        assert plant.model.reported("pump1")["speed_setpoint"] == 37.5
