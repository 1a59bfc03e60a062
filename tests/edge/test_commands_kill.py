"""kill -9 of the agent while a cloud write is at the device: `tagway run` in its own process,
killed after the command journal recorded the start and before the device answered. After the
restart the command is reported `unknown` with the reason, and it is not run again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import yaml

from firmware_sim.faults import SlowAnswers
from firmware_sim.plant import Plant
from tests.edge.cloud_harness import bootstrap, serve_cloud
from tests.edge.commands_harness import Operator, gateway_config
from tests.edge.harness import modbus_devices
from tests.edge.test_remote_config_kill import local_api, tagway_run

pytestmark = pytest.mark.integration


def _started(journal: Path, command_id: int) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(journal, timeout=0.1)) as db:
            row = db.execute("SELECT state FROM command WHERE id = ?", (command_id,)).fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == "started"


async def test_kill_9_during_a_cloud_write_reports_unknown_and_never_retries(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = tmp_path / "config.yaml"
    async with (
        Plant(devices=1, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant,
        serve_cloud(tmp_path / "cloud.db") as cloud,
    ):
        await bootstrap(cloud)
        devices = modbus_devices(plant)
        devices[0]["timeout"] = 10.0  # the write waits for the slow device, not a timeout
        path.write_text(yaml.safe_dump(gateway_config(state, devices, cloud)))
        async with Operator(cloud) as op:
            async with tagway_run(path, state) as proc:
                fault = plant.add_fault(SlowAnswers(device="pump1", delay_s=5))
                sent = await op.command("write", {"device": "pump1", "tag": "speed_setpoint",
                                                  "value": 12.5})  # fmt: skip
                deadline = time.monotonic() + 30
                while not _started(state / "commands.db", sent["id"]):
                    assert time.monotonic() < deadline, "the command never started"
                    await asyncio.sleep(0.005)
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
            plant.clear_faults(fault.id)
            async with tagway_run(path, state):
                done = await op.finished(sent["id"], within=30)
                async with httpx.AsyncClient(base_url=local_api(state), timeout=10) as api:
                    writes = (await api.get("/v1/writes")).json()
                await asyncio.sleep(1.5)  # the channel delivers it again: still not re-run
                async with httpx.AsyncClient(base_url=local_api(state), timeout=10) as api:
                    again = (await api.get("/v1/writes")).json()
    assert done["state"] == "unknown", done
    assert "the agent stopped while running this command" in done["error"]
    assert "not run again" in done["error"]
    mine = [w for w in writes if w["command_id"] == sent["id"]]
    assert [w["outcome"] for w in mine] == ["unknown"]
    assert "not retried" in mine[0]["reason"]
    assert len([w for w in again if w["command_id"] == sent["id"]]) == 1
