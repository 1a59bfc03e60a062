"""`tagway write`: a setpoint through the running agent, checked against the tag's limits,
audited, read back by the driver, acting on the (simulated) plant."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from firmware_sim.plant import Plant
from tests.edge.harness import agent_config, modbus_devices, running_agent

pytestmark = pytest.mark.integration


async def tagway(*args: str, token_file: Path | None = None) -> tuple[int, str, str]:
    env = dict(os.environ)
    env.pop("TAGWAY_API_TOKEN_FILE", None)
    if token_file is not None:
        env["TAGWAY_API_TOKEN_FILE"] = str(token_file)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_setpoint_write_reaches_the_device(tmp_path: Path) -> None:
    async with Plant(devices=1, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant:
        config = agent_config(tmp_path, modbus_devices(plant))
        token = tmp_path / "local_api.token"
        async with running_agent(config) as running:

            async def connected() -> bool:
                return bool((await running.get("/v1/drivers"))[0]["state"] == "connected")

            await running.wait_for(connected)
            api = str(running.api.base_url)
            code, out, err = await tagway("write", "pump1", "speed_setpoint", "55.5", "--yes",
                                          "--api", api, token_file=token)  # fmt: skip
            assert code == 0, err
            assert "pump1.speed_setpoint = 55.5 (written and read back, read back 55.5)" in out
            assert plant.model.reported("pump1")["speed_setpoint"] == pytest.approx(55.5)
            code, _, err = await tagway("write", "pump1", "flow", "1", "--yes",
                                        "--api", api, token_file=token)  # fmt: skip
            assert code == 1
            assert "flow" in err
            assert "writable" in err
            assert "Traceback" not in err

            # A negative value is a value, not an option (issue 14, case 8); this one is
            # outside the tag's limits (0 to 100) and refused by the agent, with the reason.
            code, _, err = await tagway("write", "pump1", "speed_setpoint", "-2.5", "--yes",
                                        "--api", api, token_file=token)  # fmt: skip
            assert code == 1
            assert "No such option" not in err
            assert "-2.5 is outside the limits of pump1.speed_setpoint (0 to 100)" in err
            assert plant.model.reported("pump1")["speed_setpoint"] == pytest.approx(55.5)

            # Without the token nothing is written, and the message says where the token is.
            code, _, err = await tagway("write", "pump1", "speed_setpoint", "10", "--yes",
                                        "--api", api)  # fmt: skip
            assert code == 1
            assert "local API token" in err
            assert str(token) in err
            assert plant.model.reported("pump1")["speed_setpoint"] == pytest.approx(55.5)

            # Every write that reached the agent is audited: who, from where, old, new, outcome.
            code, out, err = await tagway("writes", "--json", "--api", api)
            assert code == 0, err
            audit = json.loads(out)
            assert [(w["tag"], w["value"], w["outcome"]) for w in audit] == [
                ("speed_setpoint", -2.5, "refused"),
                ("flow", 1, "refused"),
                ("speed_setpoint", 55.5, "written"),
            ]
            assert audit[2]["read_back"] == pytest.approx(55.5)
            assert audit[2]["source"] == "local"
            assert audit[2]["who"].startswith("local uid ")
