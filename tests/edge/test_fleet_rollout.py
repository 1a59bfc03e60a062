"""A rollout to a label of five gateways: five `tagway run` processes on loopback, enrolled with
`tagway provision` and a claim token carrying the label, all running the same document; the
new version goes out one gateway per wave, and the third one fails (the device the version adds
goes down just before its wave). The first two keep the new version, the third rolls back, the
last two never see it, and the rollout says it stopped.

Slow (five agents, five probations in turn): `make test-slow`. The default suite covers the same
ground in parts: the waves and the stop in the cloud (tests/cloud/test_fleet.py) and one agent's
trial, rollback and kill -9 (test_remote_config.py, test_remote_config_kill.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cloud.api.app import create_app
from cloud.settings import CloudSettings
from edge.gateway_token import TokenMinter
from edge.identity import IdentityStore
from firmware_sim.faults import LinkDrop
from firmware_sim.plant import Plant
from tests.edge.fleet_harness import dump
from tests.edge.harness import modbus_devices

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLATFORM_KEY = "fleet-rollout-platform-key"
TAGWAY = [sys.executable, "-m", "cli"]


@contextlib.asynccontextmanager
async def provisioning_cloud(tmp_path: Path) -> AsyncIterator[str]:
    """The cloud on a port-0 socket, able to enroll gateways; its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = CloudSettings(
        database_url=f"sqlite:///{tmp_path / 'cloud.db'}", platform_admin_key=PLATFORM_KEY,
        public_url=url, master_key_file=tmp_path / "master.key", create_master_key=True,
    )  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="fleet-cloud")
    try:
        while not server.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        await task
        sock.close()


def template(url: str, devices: list[dict[str, Any]]) -> str:
    """The document every gateway of the label runs: paths relative to its own directory,
    its identity from `tagway provision` (nothing in it names one gateway)."""
    return dump({
        "gateway": {"name": "plant-a-line", "state_dir": "state"},
        "cloud": {"url": url, "retry_max_delay": 1.0},
        "outbox": {"flush_interval": 0.1, "quota": "64MiB"},
        "local_api": {"port": 0},
        "fleet": {"managed_by": "cloud", "probation": 5, "status_interval": 5},
        "devices": devices,
    })  # fmt: skip


class Gateway:
    """One enrolled gateway directory and its `tagway run`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    async def start(self) -> None:
        (self.dir / "state" / "local_api.json").unlink(missing_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            *TAGWAY, "run", "--config", "config.yaml", "--log-format", "json", cwd=self.dir,
            stderr=asyncio.subprocess.DEVNULL, env={**os.environ},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (self.dir / "state" / "local_api.json").exists():
            assert self.proc.returncode is None, f"{self.dir.name} exited"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)

    @property
    def api(self) -> str:
        return str(json.loads((self.dir / "state" / "local_api.json").read_text())["url"])

    def token(self) -> str:
        return TokenMinter(IdentityStore(self.dir / "state").load()).token()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)


async def carry_channel(url: str, gateway: Gateway) -> None:
    """The channel's ``config`` events, carried to the agent (`tagway config pull` through its
    local API), standing in for the edge's channel client as `fleet_harness` explains."""
    version_seen = 0
    while True:
        with contextlib.suppress(httpx.HTTPError):
            headers = {"Authorization": f"Bearer {gateway.token()}"}
            async with (
                httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None)) as c,
                c.stream("GET", "/v1/gateway/channel", headers=headers) as stream,
            ):
                event = ""
                async for line in stream.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "config":
                        version = int(json.loads(line[5:])["version"])
                        if version and version != version_seen:
                            version_seen = version
                            async with httpx.AsyncClient(base_url=gateway.api, timeout=60) as a:
                                await a.post("/v1/config/pull")
        await asyncio.sleep(0.3)


async def test_a_label_rollout_stops_at_the_third_of_five_gateways(
    tmp_path: Path,
) -> None:
    async with (
        Plant(devices=3, seed=9, tick_s=0.05, opcua=False, control_port=None) as plant,
        provisioning_cloud(tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        platform = {"Authorization": f"Bearer {PLATFORM_KEY}"}
        tenant = (await client.post("/v1/tenants", json={"name": "acme"}, headers=platform)).json()
        admin_key = (await client.post(f"/v1/tenants/{tenant['id']}/api-keys", json={
            "name": "admin", "role": "admin"}, headers=platform)).json()["token"]  # fmt: skip
        admin = {"Authorization": f"Bearer {admin_key}"}
        claim = await client.post("/v1/claim-tokens", headers=admin, json={
            "expires_in_s": 3600, "max_uses": 5, "labels": {"site": "plant-a"}})  # fmt: skip
        devices = modbus_devices(plant, interval=0.2)
        old, new = template(url, devices[:1]), template(url, devices[:2])
        gateways = []
        for i in range(1, 6):
            gateway = Gateway(tmp_path / f"gw{i}")
            (gateway.dir / "state").mkdir(parents=True)
            gateway.config.write_text(old)
            enroll = await asyncio.create_subprocess_exec(
                *TAGWAY, "provision", "--cloud", url, "--claim-token", claim.json()["token"],
                "--config", "config.yaml", "--name", f"gw{i}", cwd=gateway.dir,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(enroll.communicate(), 60)
            assert enroll.returncode == 0, (out + err).decode()
            gateway.config.write_text(old)  # the same document on every gateway of the label
            gateways.append(gateway)
        carriers = []
        try:
            for gateway in gateways:
                await gateway.start()
                carriers.append(asyncio.create_task(carry_channel(url, gateway)))
            version = (await client.post("/v1/configs", headers=admin,
                                         json={"document": new})).json()["version"]  # fmt: skip
            rollout = (await client.post("/v1/rollouts", headers=admin, json={
                "version": version, "label": "site=plant-a", "wave_size": 1,
                "wave_timeout_s": 60})).json()  # fmt: skip
            assert [g["wave"] for g in rollout["gateways"]] == [1, 2, 3, 4, 5]
            path = f"/v1/rollouts/{rollout['id']}"
            deadline = time.monotonic() + 120
            while (now := (await client.get(path, headers=admin)).json())["counts"]["passed"] < 2:
                assert now["state"] == "running", now
                assert time.monotonic() < deadline, now
                await asyncio.sleep(0.2)
            plant.add_fault(LinkDrop(device=devices[1]["name"]))  # before the third's wave
            while (now := (await client.get(path, headers=admin)).json())["state"] == "running":
                assert time.monotonic() < deadline, now
                await asyncio.sleep(0.2)
        finally:
            for task in carriers:
                task.cancel()
            await asyncio.gather(*carriers, return_exceptions=True)
            await asyncio.gather(*(g.stop() for g in gateways))
        assert now["state"] == "stopped"
        assert "did not connect" in now["reason"]
        assert [g["state"] for g in now["gateways"]] == [
            "passed", "passed", "failed", "cancelled", "cancelled"]  # fmt: skip
        texts = [g.config.read_text() for g in gateways]
        assert texts == [new, new, old, old, old]
