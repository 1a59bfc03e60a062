"""`tagway run` reloads its config file on SIGHUP, as `systemctl reload tagway` sends it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from firmware_sim.plant import Plant
from tests.edge.harness import modbus_devices

TAGWAY = [sys.executable, "-m", "cli"]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


@pytest.mark.integration
async def test_sighup_reloads_the_config_file_and_a_bad_file_keeps_the_agent_running(
    tmp_path: Path,
) -> None:
    async with Plant(devices=2, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant:
        pump1, pump2 = modbus_devices(plant)
        state = tmp_path / "state"
        config = tmp_path / "config.yaml"
        sections: dict[str, Any] = {
            "gateway": {"name": "hup-gw", "state_dir": str(state)},
            "outbox": {"flush_interval": 0.1}, "local_api": {"port": 0}, "devices": [pump1],
        }  # fmt: skip
        config.write_text(yaml.safe_dump(sections))
        agent = await asyncio.create_subprocess_exec(
            *TAGWAY, "run", "--config", str(config), "--log-format", "json",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            url = await _local_api_url(state / "local_api.json")
            async with httpx.AsyncClient(base_url=url, timeout=5) as api:

                async def connected(names: set[str]) -> bool:
                    try:
                        drivers = (await api.get("/v1/drivers")).json()
                    except httpx.TransportError:
                        return False  # not listening yet
                    return {d["name"] for d in drivers if d["state"] == "connected"} == names

                await eventually(lambda: connected({"pump1"}), within=30)
                config.write_text(yaml.safe_dump({**sections, "devices": [pump1, pump2]}))
                agent.send_signal(signal.SIGHUP)
                await eventually(lambda: connected({"pump1", "pump2"}))
                reload = (await api.get("/v1/gateway")).json()["config"]
                assert reload["last_reload"]["added"] == ["pump2"]
                assert reload["last_reload"]["unchanged"] == ["pump1"]

                config.write_text("gateway: {}\n")
                agent.send_signal(signal.SIGHUP)

                async def rejected() -> bool:
                    reload = (await api.get("/v1/gateway")).json()["config"]
                    return bool(reload["reloads_rejected"] == 1)

                await eventually(rejected)
                assert await connected({"pump1", "pump2"})
                assert agent.returncode is None
                status = await asyncio.create_subprocess_exec(
                    *TAGWAY, "status", "--api", url, stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, _ = await asyncio.wait_for(status.communicate(), 30)
                # The file on disk would not start the agent: status says so and exits 1. (It
                # is given --api because it finds the agent through that same broken file.)
                assert status.returncode == 1
                assert "rejected: " in out.decode()
                assert "gateway.name: required field is missing" in out.decode()
        finally:
            agent.send_signal(signal.SIGTERM)
            _, logs = await asyncio.wait_for(agent.communicate(), 20)
    assert agent.returncode == 0, logs.decode()[-2000:]
    messages = [json.loads(line)["message"] for line in logs.decode().splitlines()
                if line.startswith("{")]  # fmt: skip
    summary = "devices added 1 (pump2), removed 0, changed 0, unchanged 1"
    assert f"config reloaded from {config}: {summary}" in messages
    assert (
        "config reload rejected, still running the previous config: "
        f"{config}:1: gateway.name: required field is missing"
    ) in messages


async def _local_api_url(discovery: Path) -> str:
    """The URL the agent wrote once its local API listens."""
    for _ in range(300):
        try:
            return str(json.loads(discovery.read_text())["url"])  # noqa: ASYNC240 - a tiny file
        except (FileNotFoundError, json.JSONDecodeError):
            await asyncio.sleep(0.1)
    raise AssertionError(f"the agent did not write {discovery}")
