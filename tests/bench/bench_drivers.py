"""Driver benchmarks: readings/s, driver CPU per 10,000 readings, requests per cycle.

Run: `python tests/bench/bench_drivers.py` (from the repo root; about 40 s). One function per
protocol (`bench_modbus`, later `bench_opcua`, `bench_mqtt`); the last line printed is one JSON
object with every figure.

Modbus: real pymodbus TCP servers run in separate processes (started here, on ports chosen at
run time), so only the driver's CPU is measured, with `time.process_time()` of this process.
Scenarios: 1,000 tags on one device and 10,000 tags on ten devices, both polled every 1 s, and
flat-out runs (poll interval 1 ms, ten devices) for readings per CPU-second of the driver.
The main tag mix is realistic rather than flattering: half float32 (CDAB), a quarter int16
scaled, the rest uint32/int16, with small gaps between blocks (about 71 readings per request);
`flat_out_int16` is the best case, contiguous 16-bit registers (125 readings per request).
On a shared 2-core machine the CPU figures move by +-15% with the other load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocols.modbus.config import ModbusDeviceConfig, ModbusTag, PollGroup
from protocols.modbus.driver import ModbusDriver
from protocols.reading import Reading

REGISTERS_PER_READ = 125


# --- Modbus ------------------------------------------------------------------------------------


def _serve_modbus(conn: Connection, servers: int) -> None:
    """Child process: run `servers` pymodbus TCP servers, send their ports, serve until killed."""
    from tests.protocols.modbus.server import ModbusTestServer, PlantMemory  # noqa: PLC0415

    # pymodbus logs every client that goes away mid-request (the benchmark cancels drivers).
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def main() -> None:
        running = []
        for _ in range(servers):
            memory = PlantMemory()
            memory.put("holding_register", 0, [(i * 7919) & 0xFFFF for i in range(20_000)])
            server = ModbusTestServer(memory)
            await server.start()
            running.append(server)
        conn.send([s.port for s in running])
        await asyncio.Event().wait()

    asyncio.run(main())


def modbus_tags(count: int) -> list[ModbusTag]:
    """`count` tags in blocks of 40 with a 4-register gap between blocks."""
    tags: list[ModbusTag] = []
    address = 0
    for i in range(count):
        kind = i % 8
        if i and i % 40 == 0:
            address += 4
        common: dict[str, Any] = {"name": f"t{i}", "table": "holding_register", "address": address}
        if kind < 4:
            tag = ModbusTag(type="float32", order="CDAB", unit="m3/h", **common)
        elif kind < 6:
            tag = ModbusTag(type="int16", scale=0.1, offset=-40, unit="degC", **common)
        elif kind == 6:
            tag = ModbusTag(type="uint32", **common)
        else:
            tag = ModbusTag(type="int16", **common)
        tags.append(tag)
        address = tag.end
    return tags


def int16_tags(count: int) -> list[ModbusTag]:
    """`count` contiguous int16 registers: 125 readings per request, the best case."""
    return [
        ModbusTag(name=f"w{i}", table="holding_register", address=i, type="int16")
        for i in range(count)
    ]


def modbus_device(
    name: str, port: int, tags: list[ModbusTag], interval: float
) -> ModbusDeviceConfig:
    """A device config for the benchmark servers."""
    return ModbusDeviceConfig(
        name=name,
        host="127.0.0.1",
        port=port,
        timeout=2.0,
        max_register_gap=8,
        poll_groups=(PollGroup(name="default", interval=interval),),
        tags=tuple(tags),
        simulated=True,
    )


def lower_bound_requests(tags: list[ModbusTag]) -> int:
    """A bound no plan can beat: configured registers / 125, rounded up."""
    return math.ceil(sum(t.width for t in tags) / REGISTERS_PER_READ)


async def _run_drivers(configs: list[ModbusDeviceConfig], seconds: float) -> dict[str, float]:
    drivers = [ModbusDriver(c) for c in configs]
    by_name = {d.name: d for d in drivers}
    delivered = 0
    bad = 0
    # Per device: its request counter at each cycle's delivery, so requests per cycle is exact
    # (a window boundary in the middle of a cycle would otherwise count a partial cycle).
    at_delivery: dict[str, list[int]] = {d.name: [] for d in drivers}
    measuring = False

    async def sink(batch: list[Reading]) -> None:
        nonlocal delivered, bad
        delivered += len(batch)
        bad += sum(1 for r in batch if r.quality != "good")
        if measuring:
            device = batch[0].device
            at_delivery[device].append(by_name[device].counters.requests)

    async with contextlib.AsyncExitStack() as stack:
        for driver in drivers:
            await stack.enter_async_context(driver)
        tasks = [asyncio.create_task(d.run(sink), name=f"bench:{d.name}") for d in drivers]
        await asyncio.sleep(1.0)  # connect and warm up (decoders compile on first use)
        start_readings, start_cpu, start_wall = delivered, time.process_time(), time.perf_counter()
        measuring = True
        await asyncio.sleep(seconds)
        readings = delivered - start_readings
        cpu = time.process_time() - start_cpu
        wall = time.perf_counter() - start_wall
        measuring = False
        spans = [marks for marks in at_delivery.values() if len(marks) >= 2]
        requests = sum(marks[-1] - marks[0] for marks in spans)
        cycles = sum(len(marks) - 1 for marks in spans)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return {
        "readings": readings,
        "readings_per_s": readings / wall,
        "cpu_s": cpu,
        "cpu_share_of_core": cpu / wall,
        "cpu_s_per_10k_readings": cpu / readings * 10_000 if readings else math.inf,
        "readings_per_cpu_s": readings / cpu if cpu else math.inf,
        "requests_per_device_cycle": requests / cycles if cycles else math.inf,
        "bad_readings": bad,
        "overruns": sum(d.counters.overruns for d in drivers),
    }


def bench_modbus() -> dict[str, Any]:
    """The Modbus figures: polled scenarios at 1 s, then flat out."""
    ctx = multiprocessing.get_context("spawn")
    processes = []
    ports: list[int] = []
    try:
        for _ in range(2):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_serve_modbus, args=(child, 5), daemon=True)
            process.start()
            processes.append(process)
            ports += parent.recv()
        results: dict[str, Any] = {}
        print(
            f"{'scenario':<22}{'readings/s':>12}{'cpu/10k':>10}{'core %':>8}"
            f"{'rdg/cpu-s':>12}{'req/cycle':>11}{'minimum':>9}{'bound':>7}"
        )
        for label, devices, per_device, interval, seconds, layout in [
            ("1k_tags_1s", 1, 1_000, 1.0, 5.0, modbus_tags),
            ("10k_tags_1s", 10, 1_000, 1.0, 6.0, modbus_tags),
            ("flat_out", 10, 1_000, 0.001, 8.0, modbus_tags),
            ("flat_out_int16", 10, 1_000, 0.001, 6.0, int16_tags),
        ]:
            tags = layout(per_device)
            configs = [
                modbus_device(f"dev{i}", ports[i % len(ports)], tags, interval)
                for i in range(devices)
            ]
            minimum = len(ModbusDriver(configs[0]).groups[0].plan.blocks) * devices
            row = asyncio.run(_run_drivers(configs, seconds))
            row["tags"] = devices * per_device
            row["minimum_requests_per_cycle"] = minimum
            row["lower_bound_requests_per_cycle"] = lower_bound_requests(tags) * devices
            row["requests_per_cycle"] = row["requests_per_device_cycle"] * devices
            results[label] = row
            print(
                f"{label:<22}{row['readings_per_s']:>12,.0f}{row['cpu_s_per_10k_readings']:>10.4f}"
                f"{100 * row['cpu_share_of_core']:>7.1f}%{row['readings_per_cpu_s']:>12,.0f}"
                f"{row['requests_per_cycle']:>11.1f}{minimum:>9}"
                f"{row['lower_bound_requests_per_cycle']:>7}"
            )
        return results
    finally:
        for process in processes:
            process.kill()
            process.join()


def main() -> None:
    """Run every protocol's benchmark and print the JSON summary last."""
    started = time.perf_counter()
    # The flat-out run overruns its 1 ms interval on purpose; the counters hold the figures.
    logging.getLogger("protocols").setLevel(logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    modbus = bench_modbus()
    summary = {
        "modbus": {
            "tags_1000_readings_per_s": round(modbus["1k_tags_1s"]["readings_per_s"]),
            "tags_1000_cpu_s_per_10k_readings": round(
                modbus["1k_tags_1s"]["cpu_s_per_10k_readings"], 5
            ),
            "tags_1000_core_share": round(modbus["1k_tags_1s"]["cpu_share_of_core"], 4),
            "tags_10000_readings_per_s": round(modbus["10k_tags_1s"]["readings_per_s"]),
            "tags_10000_cpu_s_per_10k_readings": round(
                modbus["10k_tags_1s"]["cpu_s_per_10k_readings"], 5
            ),
            "tags_10000_core_share": round(modbus["10k_tags_1s"]["cpu_share_of_core"], 4),
            "requests_per_cycle_10000": round(modbus["10k_tags_1s"]["requests_per_cycle"], 2),
            "minimum_requests_per_cycle_10000": modbus["10k_tags_1s"]["minimum_requests_per_cycle"],
            "lower_bound_requests_per_cycle_10000": modbus["10k_tags_1s"][
                "lower_bound_requests_per_cycle"
            ],
            "flat_out_readings_per_cpu_s": round(modbus["flat_out"]["readings_per_cpu_s"]),
            "flat_out_readings_per_s": round(modbus["flat_out"]["readings_per_s"]),
            "flat_out_int16_readings_per_cpu_s": round(
                modbus["flat_out_int16"]["readings_per_cpu_s"]
            ),
            "bad_readings": sum(row["bad_readings"] for row in modbus.values()),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
