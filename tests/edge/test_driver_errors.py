"""A driver's error as operators see it: current while the link is down, history once it is
healthy again (local API and `tagway status`), against a firmware_sim device whose link drops."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.faults import LinkDrop
from firmware_sim.plant import Plant
from tests.edge.harness import RunningAgent, agent_config, modbus_devices, running_agent

pytestmark = pytest.mark.integration


async def driver(running: RunningAgent, name: str) -> dict[str, Any]:
    drivers = await running.get("/v1/drivers")
    return next(d for d in drivers if d["name"] == name)


async def tagway_status(api_url: str) -> tuple[str, dict[str, Any]]:
    async def run(*extra: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "status", "--api", api_url, *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TAGWAY_CONFIG": "/nonexistent/config.yaml"},
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return out.decode()

    return await run(), json.loads(await run("--json"))


async def test_last_error_is_cleared_once_the_link_is_healthy_and_kept_as_recovered(
    plant: Plant, tmp_path: Path
) -> None:
    device = modbus_devices(plant)[0]
    name = device["name"]
    config = agent_config(tmp_path / "state", [device])
    async with running_agent(config) as running:

        async def state_is(state: str) -> bool:
            return (await driver(running, name))["state"] == state

        await running.wait_for(lambda: state_is("connected"))
        dropped_at = time.time()
        fault = plant.add_fault(LinkDrop(device=name))
        await running.wait_for(lambda: state_is("backoff"))
        down = await driver(running, name)
        assert down["last_error"], down
        assert down["last_error_at"] >= dropped_at - 1
        plant.clear_faults(fault.id)
        await running.wait_for(lambda: state_is("connected"))
        up = await driver(running, name)
        text, report = await tagway_status(str(running.api.base_url))

    assert up["last_error"] is None, up  # the old error no longer sits next to a healthy state
    assert up["recovered_from"], up
    assert up["last_error_at"] >= dropped_at - 1
    assert up["reconnects"] >= 1
    shown = next(d for d in report["drivers"] if d["name"] == name)
    assert shown["state"] == "connected"
    assert shown["last_error"] is None
    assert shown["recovered_from"] == up["recovered_from"]
    line = next(line for line in text.splitlines() if "recovered" in line)
    assert up["recovered_from"] in line
    assert "error at " in line


async def test_a_driver_crash_that_still_happens_is_counted_restarted_and_current(
    plant: Plant, tmp_path: Path
) -> None:
    # A CA file that vanished after the config was checked: the driver fails at start, every
    # time, while the other device keeps reading.
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("placeholder")
    broken = {
        "protocol": "mqtt", "name": "site-broker", "url": "mqtts://127.0.0.1:1",
        "ca_file": str(ca_file), "subscriptions": [{"topic": "plant/{device}/telemetry"}],
    }  # fmt: skip
    device = modbus_devices(plant)[0]
    config = agent_config(tmp_path / "state", [device, broken])
    ca_file.unlink()
    async with running_agent(config) as running:

        async def crashed_twice() -> bool:
            return (await driver(running, "site-broker"))["crashes"] >= 2

        await running.wait_for(crashed_twice, within=30)
        crashed = await driver(running, "site-broker")
        healthy = await driver(running, device["name"])
    assert crashed["restarts"] >= 1
    assert crashed["state"] != "connected"
    assert "ca_file" in (crashed["last_error"] or ""), crashed  # current, not history
    assert crashed["last_error_at"] is not None
    assert healthy["state"] == "connected"
    assert healthy["crashes"] == 0
