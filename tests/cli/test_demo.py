"""`tagway demo` as a first-time user runs it, checked through the cloud's REST API."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration


async def test_demo_delivers_all_three_protocols_and_raises_the_anomaly_alarm(
    tmp_path: Path,
) -> None:
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "demo", "--dir", str(tmp_path), "--duration", "120",
        "--no-tui", "--wear-after", "2", "--wear-minutes", "0.5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        info = await _wait_for_file(tmp_path / "demo.json", demo)
        headers = {"Authorization": f"Bearer {info['api_key']}"}
        async with httpx.AsyncClient(base_url=info["cloud"], headers=headers) as cloud:
            latest = await _latest_by_device(cloud, {"pump1", "boiler1", "tank1"})
            alarms = await _wait_for_alarm(cloud, "pump_anomaly.pump1")
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(demo.communicate(), 60)
    assert demo.returncode == 0, err.decode()[-3000:]
    guide = out.decode()
    assert "curl -s -H" in guide
    assert "tagway tui --config" in guide
    assert "SIMULATED" in guide
    assert "Traceback" not in err.decode()
    # Modbus (pump1), OPC UA (boiler1) and MQTT via the embedded broker (tank1) all arrived.
    assert {"flow", "vibration"} <= latest["pump1"]
    assert "temperature" in latest["boiler1"]
    assert "level" in latest["tank1"]
    assert any(a["state"] == "active" and a["device"] == "pump1" for a in alarms)


async def _wait_for_file(path: Path, proc: asyncio.subprocess.Process) -> dict[str, Any]:
    for _ in range(600):
        if await asyncio.to_thread(path.exists):
            return dict(json.loads(await asyncio.to_thread(path.read_text)))
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    raise AssertionError(f"the demo did not start (exit {proc.returncode})")


async def _latest_by_device(cloud: httpx.AsyncClient, wanted: set[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for _ in range(120):
        devices = (await cloud.get("/v1/devices")).json()
        for device in devices:
            if device["name"] in wanted:
                rows = (await cloud.get(f"/v1/devices/{device['id']}/latest")).json()
                found[device["name"]] = {row["tag"] for row in rows}
        if wanted <= {name for name, tags in found.items() if tags}:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"telemetry did not arrive for all of {wanted}: {found}")


async def _wait_for_alarm(cloud: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    for _ in range(180):
        alarms = [a for a in (await cloud.get("/v1/alarms")).json() if a["name"] == name]
        if alarms:
            return alarms
        await asyncio.sleep(0.5)
    raise AssertionError(f"alarm {name} never reached the cloud")
