"""Benchmark: can firmware_sim keep up with the gateway's benchmarks?

Runs the simulator as its own process (`python -m firmware_sim plant`), as the gateway's
benchmarks will, and measures from outside:

- Modbus requests/s served: 125-register reads (function 04) over several connections, with a
  minimal hand-written Modbus TCP client so the client costs as little as possible;
- OPC UA data changes/s published: the simulator steps every 0.05 s and publishes back to back;
  the count comes from its control API, and a real asyncua subscription on one device checks
  that the changes reach a client;

each at 1,000 and 10,000 tags, with the simulator's CPU share (CPU seconds / wall seconds of its
process; 100% = one core of this machine) and the machine's load average: a share well under
100% with a load above the core count means other processes, not the simulator, set the pace.
Last line: one JSON object.

    python tests/bench/bench_sim.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from asyncua import Client, ua

REPO = Path(__file__).resolve().parents[2]
TAGS_PER_DEVICE = 250
CONNECTIONS = 16
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@asynccontextmanager
async def simulator(*args: str) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """Start the simulator process; yields (pid, its serving JSON line)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_sim", "plant", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        while not (line := (await proc.stdout.readline()).decode()).startswith("{"):
            if not line:
                raise RuntimeError("simulator exited before serving")
        yield proc.pid, json.loads(line)
    finally:
        proc.terminate()
        await proc.wait()


async def modbus_reader(port: int, stop_at: float, address: int) -> int:
    """Read 125 input registers back to back until `stop_at`; returns requests answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.monotonic() < stop_at:
            writer.write(struct.pack(">HHHBBHH", done & 0xFFFF, 0, 6, 1, 4, address, 125))
            header = await reader.readexactly(9)
            if header[7] != 4:
                raise RuntimeError(f"exception {header[8]} from port {port}")
            await reader.readexactly(header[8])
            done += 1
    finally:
        writer.close()
        await writer.wait_closed()
    return done


async def bench_modbus(devices: int, seconds: float) -> dict[str, float]:
    """Modbus 125-register reads per second at `devices` x 250 tags."""
    async with simulator(
        "--devices", str(devices), "--tags-per-device", str(TAGS_PER_DEVICE), "--no-opcua",
        "--control-port", "0",
    ) as (pid, serving):  # fmt: skip
        ports = list(serving["modbus"].values())
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        stop_at = t0 + seconds
        counts = await asyncio.gather(
            *(modbus_reader(ports[i % len(ports)], stop_at, 1000) for i in range(CONNECTIONS))
        )
        wall = time.monotonic() - t0
        cpu = cpu_seconds(pid) - cpu0
        async with httpx.AsyncClient() as http:
            served = (await http.get(f"http://127.0.0.1:{serving['control']}/counters")).json()
        counted = sum(int(c.get("4", 0)) for c in served["modbus"].values())
    assert counted >= sum(counts)  # the simulator saw every request we got an answer to
    return {"req_per_s": sum(counts) / wall, "cpu_share": cpu / wall}


async def bench_opcua(devices: int, seconds: float) -> dict[str, float]:
    """OPC UA data changes published per second at `devices` x 250 tags."""
    async with simulator(
        "--devices", str(devices), "--tags-per-device", str(TAGS_PER_DEVICE), "--no-modbus",
        "--tick", "0.05", "--opcua-publish", "0.001", "--control-port", "0",
    ) as (pid, serving):  # fmt: skip
        received = 0

        class Handler:
            def datachange_notification(self, node: object, val: object, data: object) -> None:
                nonlocal received
                received += 1

            def status_change_notification(self, status: object) -> None:
                pass  # the subscription ending at shutdown is expected

        async with (
            Client(serving["opcua_endpoint"], timeout=30) as client,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{serving['control']}") as http,
        ):
            ns = await client.get_namespace_index("urn:tagway:firmware-sim")
            nodes = [client.get_node(ua.NodeId(f"pump1.aux_{i:04d}", ns)) for i in range(229)]
            subscription = await client.create_subscription(100, Handler())
            await subscription.subscribe_data_change(nodes)
            await asyncio.sleep(0.5)
            before = (await http.get("/counters")).json()["opcua"]["changes_published"]
            cpu0, t0, received = cpu_seconds(pid), time.monotonic(), 0
            await asyncio.sleep(seconds)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(pid) - cpu0
            after = (await http.get("/counters")).json()["opcua"]["changes_published"]
            client_rate = received / wall
            await subscription.delete()
    return {
        "changes_per_s": (after - before) / wall,
        "cpu_share": cpu / wall,
        "client_notifications_per_s": client_rate,
    }


async def main(seconds: float) -> None:
    """Run every case and print rows, then the JSON line."""
    results: dict[str, Any] = {"tags": [], "modbus_req_per_s": {}, "opcua_changes_per_s": {}}
    cpu: dict[str, dict[str, float]] = {"modbus": {}, "opcua": {}}
    print(f"{'case':<28}{'rate/s':>12}{'sim CPU':>10}  notes")
    for tags in (1_000, 10_000):
        devices = tags // TAGS_PER_DEVICE
        results["tags"].append(tags)
        modbus = await bench_modbus(devices, seconds)
        results["modbus_req_per_s"][str(tags)] = round(modbus["req_per_s"], 1)
        cpu["modbus"][str(tags)] = round(modbus["cpu_share"], 3)
        print(
            f"{f'modbus 125-reg @{tags} tags':<28}{modbus['req_per_s']:>12.0f}"
            f"{modbus['cpu_share']:>9.0%}  {CONNECTIONS} connections, {devices} devices"
        )
        opcua = await bench_opcua(devices, seconds)
        results["opcua_changes_per_s"][str(tags)] = round(opcua["changes_per_s"], 1)
        cpu["opcua"][str(tags)] = round(opcua["cpu_share"], 3)
        print(
            f"{f'opcua changes @{tags} tags':<28}{opcua['changes_per_s']:>12.0f}"
            f"{opcua['cpu_share']:>9.0%}  client saw {opcua['client_notifications_per_s']:.0f}/s"
            " on 229 subscribed items"
        )
    results["sim_cpu_share"] = cpu
    results["cores"] = os.cpu_count()
    # The share is of one core; on a shared machine it is capped by what the scheduler gives.
    results["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring window per case")
    asyncio.run(main(parser.parse_args().seconds))
