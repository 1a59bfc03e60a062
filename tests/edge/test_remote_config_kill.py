"""kill -9 in the middle of a config trial: `tagway run` in its own process, killed while it
applies a new version and while that version is on probation. After the restart the gateway runs
the old version, whole, and reports the interrupted trial as rolled back, to its local API and
to the cloud."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from firmware_sim.plant import Plant
from tests.edge.cloud_harness import RunningCloud, bootstrap, serve_cloud
from tests.edge.fleet_harness import CloudUser, dump, gateway_data
from tests.edge.harness import modbus_devices

pytestmark = pytest.mark.integration

TAGWAY = [sys.executable, "-m", "cli"]


@contextlib.asynccontextmanager
async def tagway_run(path: Path, state: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`tagway run` on `path` until its local API answers; killed at the end if still alive."""
    (state / "local_api.json").unlink(missing_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *TAGWAY, "run", "--config", str(path), "--log-format", "json",
        stderr=asyncio.subprocess.DEVNULL, env={**os.environ},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not await _answers(state):
            assert proc.returncode is None, "the agent exited"
            assert time.monotonic() < deadline, "the agent did not start"
            await asyncio.sleep(0.05)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _answers(state: Path) -> bool:
    """The agent's local API is up (its discovery file is written just before it listens)."""
    if not (state / "local_api.json").exists():
        return False
    try:
        async with httpx.AsyncClient(base_url=local_api(state), timeout=2) as api:
            return (await api.get("/v1/gateway")).status_code == 200
    except (httpx.HTTPError, ValueError, OSError):
        return False


def local_api(state: Path) -> str:
    """The agent's local API URL."""
    return str(json.loads((state / "local_api.json").read_text())["url"])


async def kill_in(path: Path, proc: asyncio.subprocess.Process, phase: str) -> str:
    """SIGKILL the agent as soon as its version record shows `phase`; the phase it was in."""
    record = path.with_name(path.name + ".fleet.json")
    deadline = time.monotonic() + 60
    while True:
        try:
            seen = json.loads(record.read_text()).get("phase")
        except (OSError, ValueError):
            seen = None  # being replaced this instant
        if seen == phase:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            return str(json.loads(record.read_text())["phase"])
        assert time.monotonic() < deadline, f"never saw phase {phase}"
        assert proc.returncode is None, "the agent exited on its own"
        await asyncio.sleep(0.001)


async def _episode(
    plant: Plant, tmp_path: Path, cloud: RunningCloud, *, phase: str
) -> tuple[str, str, dict[str, Any], int]:  # fmt: skip
    devices = modbus_devices(plant, interval=0.1)
    state = tmp_path / "state"
    state.mkdir()
    path = tmp_path / "config.yaml"
    old = dump(gateway_data(state, devices[:1], cloud, probation=30))
    path.write_text(old)
    new = dump(gateway_data(state, devices[:2], cloud, probation=30))
    user = CloudUser(cloud)
    try:
        version, _ = await user.push(new)
        async with (
            tagway_run(path, state) as proc,
            httpx.AsyncClient(base_url=local_api(state), timeout=60) as api,
        ):
            # `tagway config pull` takes the cloud's version now (the channel would too)
            pull = asyncio.create_task(api.post("/v1/config/pull"))
            killed_in = await kill_in(path, proc, phase)
            with contextlib.suppress(httpx.HTTPError):
                await pull
        after_kill = path.read_text()
        async with tagway_run(path, state):
            async with httpx.AsyncClient(base_url=local_api(state), timeout=10) as api:
                remote = (await api.get("/v1/config/remote")).json()
                drivers = [d["name"] for d in (await api.get("/v1/drivers")).json()]
            deadline = time.monotonic() + 30
            while (seen := await user.gateway_config())["last"] is None or seen["last"][
                "outcome"
            ] != "rolled_back":
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.2)
        assert path.read_text() == old  # the old version, whole
        assert drivers == ["pump1"]
        assert after_kill in (old, new)  # never a mix, even at the instant of the kill
        return killed_in, remote["reason"], remote, version
    finally:
        await user.close()


@pytest.mark.parametrize("phase", ["applying", "probation"])
async def test_kill_9_during_a_trial_leaves_the_old_version_and_says_so(
    plant: Plant, tmp_path: Path, phase: str
) -> None:
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        killed_in, reason, remote, version = await _episode(plant, tmp_path, cloud, phase=phase)
    assert killed_in == phase
    assert (remote["outcome"], remote["outcome_version"], remote["phase"]) == (
        "rolled_back", version, "idle")  # fmt: skip
    expected = {
        "applying": f"the agent stopped while applying version {version}",
        "probation": f"the agent stopped during the probation of version {version}",
    }
    assert reason == expected[phase]


async def test_a_version_that_needs_a_restart_exits_75_and_proves_itself_after_it(
    plant: Plant, tmp_path: Path
) -> None:
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        devices = modbus_devices(plant, interval=0.1)
        state = tmp_path / "state"
        state.mkdir()
        path = tmp_path / "config.yaml"
        path.write_text(dump(gateway_data(state, devices[:1], cloud, probation=10)))
        bigger = gateway_data(state, devices[:1], cloud, probation=10)
        bigger["outbox"] = {**bigger["outbox"], "quota": "128MiB"}  # a section that needs a restart
        user = CloudUser(cloud)
        try:
            version, rollout_id = await user.push(dump(bigger))
            async with tagway_run(path, state) as proc:
                # The agent's command channel brings the version; it needs a restart.
                assert await asyncio.wait_for(proc.wait(), 30) == 75  # for systemd
            async with tagway_run(path, state):  # what systemd's Restart=always does
                done = await user.until_done(rollout_id, within=30)
                async with httpx.AsyncClient(base_url=local_api(state), timeout=10) as api:
                    outbox = (await api.get("/v1/outbox")).json()
            assert done["state"] == "completed", done
            assert outbox["quota_bytes"] == 128 * 2**20
            assert path.read_text() == dump(bigger)
            assert (await user.gateway_config())["running_version"] == version
        finally:
            await user.close()
