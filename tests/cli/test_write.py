"""`tagway write`: a setpoint through the running agent, read back by the driver, acting on the
(simulated) plant."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from firmware_sim.plant import Plant
from tests.edge.harness import agent_config, modbus_devices, running_agent

pytestmark = pytest.mark.integration


async def tagway(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_setpoint_write_reaches_the_device(tmp_path: Path) -> None:
    async with Plant(devices=1, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant:
        config = agent_config(tmp_path, modbus_devices(plant))
        async with running_agent(config) as running:

            async def connected() -> bool:
                return bool((await running.get("/v1/drivers"))[0]["state"] == "connected")

            await running.wait_for(connected)
            code, out, err = await tagway("write", "pump1", "speed_setpoint", "55.5", "--yes",
                                          "--api", str(running.api.base_url))  # fmt: skip
            assert code == 0, err
            assert "pump1.speed_setpoint = 55.5 (written and read back)" in out
            assert plant.model.reported("pump1")["speed_setpoint"] == pytest.approx(55.5)
            code, _, err = await tagway("write", "pump1", "flow", "1", "--yes",
                                        "--api", str(running.api.base_url))  # fmt: skip
            assert code == 1
            assert "flow" in err
            assert "writable" in err
            assert "Traceback" not in err
