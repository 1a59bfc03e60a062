"""The control API, the served-device contract, the CLI and the scale knob, end to end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from pymodbus.client import AsyncModbusTcpClient

from firmware_sim.plant import Plant

from .conftest import mbpoll, mbpoll_values

pytestmark = pytest.mark.integration

_REPO = Path(__file__).resolve().parents[2]


async def test_faults_counters_writes_and_contract_over_http() -> None:
    async with (
        Plant(devices=4, tick_s=None, opcua=False) as plant,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{plant.ports['control']}") as http,
    ):
        assert (await http.get("/health")).json()["ok"] is True
        devices = (await http.get("/devices")).json()
        pump1 = next(d for d in devices if d["name"] == "pump1" and d["protocol"] == "modbus")
        assert pump1["simulated"] is True
        assert pump1["port"] == plant.ports["modbus"]["pump1"]
        assert pump1["unit_id"] == 1
        flow = next(t for t in pump1["tags"] if t["name"] == "flow")
        assert flow == {
            "name": "flow", "table": "input_register", "address": 0, "type": "float32",
            "order": "ABCD", "scale": 1.0, "offset": 0.0, "unit": "m3/h", "writable": False,
        }  # fmt: skip

        reply = await http.post(
            "/faults", json={"kind": "modbus_exception", "device": "pump1", "address": 0, "code": 6}
        )
        assert reply.status_code == 201
        fault_id = reply.json()["id"]
        _, out = await mbpoll(plant.ports["modbus"]["pump1"], "-t", "3", "-r", "0", "-c", "4")
        assert "busy" in out.lower()
        assert (await http.get("/faults")).json()[0]["fault"]["code"] == 6
        assert (await http.delete(f"/faults/{fault_id}")).status_code == 200
        code, _ = await mbpoll(plant.ports["modbus"]["pump1"], "-t", "3", "-r", "0", "-c", "4")
        assert code == 0

        counters = (await http.get("/counters")).json()
        assert counters["modbus"]["pump1"] == {"4": 2}
        assert counters["modbus"]["tank1"] == {}
        await http.post("/counters/reset")
        assert (await http.get("/counters")).json()["modbus"]["pump1"] == {}

        write = {"device": "pump2", "tag": "speed_setpoint", "value": 55}
        assert (await http.post("/write", json=write)).status_code == 200
        _, out = await mbpoll(plant.ports["modbus"]["pump2"], "-t", "4", "-r", "0")
        assert mbpoll_values(out)[0] == "550"

        ids = (await http.post("/scenario", json={"name": "bearing_wear"})).json()["ids"]
        assert len(ids) == 1
        values = (await http.get("/values/pump1")).json()["values"]
        assert values["serial_number"] == "SP00001X"

        assert (await http.post("/faults", json={"kind": "melt"})).status_code == 400
        assert (
            await http.post("/faults", json={"kind": "stuck", "device": "nope", "tag": "x"})
        ).status_code == 404
        assert (
            await http.post("/faults", json={"kind": "stuck", "device": "pump1", "tag": "x"})
        ).status_code == 400
        assert (await http.get("/nowhere")).status_code == 404
        assert (await http.get("/values/pump9")).status_code == 404


async def test_cli_prints_ports_as_json_and_serves_the_scenario(tmp_path: Path) -> None:
    inventory = tmp_path / "served.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_sim", "plant", "--devices", "2", "--no-opcua",
        "--scenario", "modbus_exceptions", "--duration", "60", "--inventory", str(inventory),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(_REPO)}, cwd=_REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        human: list[str] = []
        async with asyncio.timeout(20):
            while not (line := (await proc.stdout.readline()).decode()).startswith("{"):
                assert line, "the command ended before printing its ports"
                human.append(line)
        serving = json.loads(line)
        assert serving["serving"] is True
        assert serving["simulated"] is True
        assert "SIMULATED" in human[0]
        assert f"127.0.0.1:{serving['modbus']['pump1']}" in "".join(human)
        served = json.loads(inventory.read_text())
        assert {(d["name"], d["protocol"], d["port"]) for d in served} == {
            ("pump1", "modbus", serving["modbus"]["pump1"]),
            ("pump2", "modbus", serving["modbus"]["pump2"]),
        }
        _, out = await mbpoll(serving["modbus"]["pump1"], "-t", "3", "-r", "0")
        assert "illegal data address" in out.lower()
        code, _ = await mbpoll(serving["modbus"]["pump2"], "-t", "3", "-r", "0")
        assert code == 0
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{serving['control']}/counters")
            assert reply.json()["modbus"]["pump1"] == {"4": 1}
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), timeout=20)
    assert proc.returncode == 0


async def test_two_hundred_devices_fifty_thousand_tags() -> None:
    started = time.monotonic()
    async with Plant(
        devices=200, tags_per_device=250, tick_s=None, opcua=False, control_port=None
    ) as plant:
        assert sum(len(m.tags) for m in plant.model.maps.values()) == 50_000
        assert len(set(plant.ports["modbus"].values())) == 200
        plant.step(1.0)
        last = list(plant.model.devices)[-1]
        client = AsyncModbusTcpClient("127.0.0.1", port=plant.ports["modbus"][last], retries=0)
        assert await client.connect()
        try:
            reply = await client.read_input_registers(1000, count=125)
        finally:
            client.close()
        assert not reply.isError()
        assert len(reply.registers) == 125
        assert any(reply.registers)
    assert time.monotonic() - started < 60
