"""Overload is explicit (issue 23): a device the agent cannot poll as often as configured shows its
poll overruns, named, in `tagway status`, the local API and `/metrics`; and every reading a driver
produced is either committed or counted as dropped (silent loss 0)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge import api_contract as contract
from firmware_sim.plant import Plant
from tests.edge.harness import agent_config, modbus_devices, running_agent

pytestmark = pytest.mark.integration


async def tagway(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TAGWAY_CONFIG": "/nonexistent/config.yaml"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_an_overloaded_device_is_named_with_its_overruns_and_nothing_is_lost_silently(
    tmp_path: Path,
) -> None:
    async with Plant(devices=2, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant:
        devices = modbus_devices(plant)
        # pump1 asks for a poll every 0.1 ms: no Modbus round trip is that fast, so every cycle
        # starts late. pump2 keeps a sane interval and must not be reported.
        devices[0]["poll_groups"] = [{"name": "default", "interval": 0.0001}]
        devices[1]["poll_groups"] = [{"name": "default", "interval": 1.0}]
        config = agent_config(tmp_path / "state", devices)
        async with running_agent(config) as running:
            api = str(running.api.base_url).rstrip("/")

            async def overrun() -> bool:
                drivers = await running.get("/v1/drivers")
                return any(d["name"] == "pump1" and d["counters"]["overruns"] >= 20
                           for d in drivers)  # fmt: skip

            await running.wait_for(overrun, within=30)
            drivers = {d["name"]: contract.Driver.model_validate(d)
                       for d in await running.get("/v1/drivers")}  # fmt: skip
            assert drivers["pump1"].overloaded
            assert not drivers["pump2"].overloaded, drivers["pump2"]

            text = (await running.api.get("/metrics")).text
            families = {f.name: f for f in text_string_to_metric_families(text)}
            overruns = {s.labels["device"]: s.value
                        for s in families["tagway_driver_poll_overruns"].samples
                        if s.name.endswith("_total")}  # fmt: skip
            assert overruns["pump1"] >= 20
            assert overruns["pump2"] == 0
            dropped = {s.labels["device"]: s.value
                       for s in families["tagway_driver_dropped_readings"].samples
                       if s.name.endswith("_total")}  # fmt: skip
            assert dropped == {"pump1": 0, "pump2": 0}

            _, out = await tagway("status", "--api", api)
            assert "overload" in out, out
            overload = out[out.index("overload") :]
            assert "pump1:" in overload
            count = int(overload.split("pump1:")[1].split("poll overruns")[0])
            assert count >= 20
            assert "pump2:" not in overload
            rt = running.agent.runtime
        # stopped: the last flush is done, so every reading handed over is committed or counted
        produced = sum(s.driver.counters.readings for s in rt.supervisor.slots.values()
                       if s.driver is not None)  # fmt: skip
        counters = rt.pipeline.counters
        assert produced > 0
        restarts = {s.name: s.restarts for s in rt.supervisor.slots.values()}
        assert counters.received == produced, (counters, restarts)
        assert produced - counters.committed - counters.dropped == 0, counters
