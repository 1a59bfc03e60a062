"""`tagway sim plant --config-out`: a complete agent config for every device the plant serves,
run as it is (before: tank1, the MQTT tank, was left out silently, and the file held only
device sections to merge by hand)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from edge.config import LocalApiSection, load_config
from tests.edge.harness import running_agent
from tests.mosquitto import mosquitto

pytestmark = pytest.mark.integration
PLANT = ("pump1", "pump2", "tank1", "boiler1")


async def _sim(*args: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Start `tagway sim plant` and read its output up to the line that says how to run."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "sim", "plant", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("run it with:"):
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, f"sim plant ended early: {lines}"
        lines.append(line.decode().rstrip())
    return proc, lines


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    await asyncio.wait_for(proc.wait(), 20)


async def test_the_written_config_runs_every_device_including_the_mqtt_tank(
    tmp_path: Path,
) -> None:
    out = tmp_path / "config.yaml"
    with mosquitto(tmp_path) as port:
        proc, lines = await _sim("--mqtt-url", f"mqtt://127.0.0.1:{port}",
                                 "--config-out", str(out), "--duration", "120")  # fmt: skip
        try:
            assert f"wrote an agent config for {', '.join(PLANT)} to {out}" in lines
            assert lines[-1] == f"run it with: tagway run --config {out}"
            assert not [line for line in lines if line.startswith("note:")]
            config = load_config(out)  # as written: no merging, no editing
            assert config.gateway.state_dir == tmp_path / "state"
            protocols = {d.name: d.protocol for d in config.devices}
            assert protocols == {"pump1": "modbus", "pump2": "modbus", "boiler1": "opcua",
                                 "mqtt-devices": "mqtt"}  # fmt: skip
            config = config.model_copy(update={"local_api": LocalApiSection(port=0)})
            async with running_agent(config) as agent:

                async def every_device_has_values() -> bool:
                    tags = await agent.get("/v1/tags")
                    return {t["device"] for t in tags} >= set(PLANT)

                await agent.wait_for(every_device_has_values, within=60)
                tank = await agent.get("/v1/tags?device=tank1")
                assert tank
                assert all(t["simulated"] for t in tank)
        finally:
            await _stop(proc)


async def test_without_a_broker_the_tank_is_read_over_modbus_and_the_user_is_told(
    tmp_path: Path,
) -> None:
    out = tmp_path / "config.yaml"
    proc, lines = await _sim("--config-out", str(out), "--duration", "30")
    try:
        note = "note: tank1 is read over modbus: the plant does not serve it over mqtt"
        assert f"{note} (give --mqtt-url)" in lines
        config = load_config(out)
        assert sorted(d.name for d in config.devices) == sorted(PLANT)
    finally:
        await _stop(proc)
