"""Benchmark of the agent (issue 8): the pipeline alone, 10,000 tags at 1 s from simulated
Modbus and OPC UA devices through to a cloud on this machine, and a flat-out Modbus run.

    python tests/bench/bench_agent.py [--seconds 20]

The simulators and the cloud run in their own processes, so the CPU and memory figures are the
agent's alone (this process hosts only the agent and the bench's bookkeeping). Rows first, then
one JSON line with: pipeline_readings_per_cpu_s, agent_core_share_10k, agent_rss_mb,
readings_per_s_10k, bytes_per_reading, latency_p50_s, latency_p99_s,
flat_out_readings_per_cpu_s, flat_out_poll_overruns.
Targets: 10,000 tags/s under 25% of one core and 150 MB RSS; pipeline >= 200,000 readings per
CPU-second; flat-out >= 150,000 readings per CPU-second; <= 4 bytes per reading; p99 < 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge.agent import Agent  # noqa: E402 - after the path fix-up
from edge.alarms import AlarmEngine  # noqa: E402
from edge.config import parse_config  # noqa: E402
from edge.pipeline.derived import DerivedTags  # noqa: E402
from edge.pipeline.rbe import Deadband, ReportByException  # noqa: E402
from edge.pipeline.runner import Pipeline  # noqa: E402
from protocols.reading import Reading  # noqa: E402
from store_forward import AsyncOutbox, OutboxSettings  # noqa: E402

T0 = 1_795_000_000_000_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench_pipeline(work: Path) -> dict[str, float]:
    """Drivers replaced by pre-built batches; real outbox (synchronous FULL)."""
    cycles, devices, tags = 40, 100, 100
    batches = [
        [
            Reading(f"dev{d}", f"tag{t}", T0 + c * 1_000_000, 100.0 + t + c * 0.5)
            for t in range(tags)
        ]
        for c in range(cycles)
        for d in range(devices)
    ]
    async with AsyncOutbox(work / "pipeline.db", OutboxSettings(quota_bytes=1 << 30)) as outbox:
        pipeline = Pipeline(
            outbox=outbox, rbe=ReportByException(default=Deadband(heartbeat=60)),
            derived=DerivedTags([]), inference=None, alarms=AlarmEngine([]),
        )  # fmt: skip
        flusher = asyncio.create_task(pipeline.run())
        cpu, wall = time.process_time(), time.perf_counter()
        for batch in batches:
            await pipeline.accept(batch)
        await pipeline.flush()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
    n = pipeline.counters.committed
    return {"readings": n, "per_cpu_s": n / cpu, "per_s": n / wall,
            "bytes_per_reading": pipeline.counters.committed_bytes / n}  # fmt: skip


@contextlib.contextmanager
def simulator(*args: str) -> Any:
    """firmware_sim in its own process; yields its JSON ports line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim", "plant", "--control-port", "0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith('{"serving"'):
                yield json.loads(line)
                break
        else:
            raise RuntimeError("the simulator did not start")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.asynccontextmanager
async def cloud(work: Path) -> AsyncIterator[tuple[str, str, str]]:
    """The cloud service (SQLite) in its own process; yields (url, gateway id, gateway token)."""
    key = secrets.token_urlsafe(16)
    port = _free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - set-up before anything is measured
        [sys.executable, "-m", "cli", "cloud", "serve", "--database",
         f"sqlite:///{work / 'cloud.db'}", "--port", str(port), "--platform-admin-key", key],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            platform = {"Authorization": f"Bearer {key}"}
            tenant = (
                await client.post("/v1/tenants", json={"name": "bench"}, headers=platform)
            ).json()
            admin = (
                await client.post(
                    f"/v1/tenants/{tenant['id']}/api-keys",
                    json={"name": "a", "role": "admin"},
                    headers=platform,
                )
            ).json()
            gw = (
                await client.post(
                    "/v1/gateways",
                    json={"name": "bench-gw"},
                    headers={"Authorization": f"Bearer {admin['token']}"},
                )
            ).json()
        yield url, str(gw["gateway"]["id"]), gw["token"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def modbus_sections(
    ports: dict[str, int], tags: list[dict[str, Any]], interval: float
) -> list[dict[str, Any]]:
    return [
        {"protocol": "modbus", "name": name, "host": "127.0.0.1", "port": port, "simulated": True,
         "timeout": 2.0, "poll_groups": [{"name": "default", "interval": interval}], "tags": tags}
        for name, port in ports.items()
    ]  # fmt: skip


def map_tags(kind: str) -> list[dict[str, Any]]:
    """A device type's register map, read from the simulator's YAML (already in the agent's
    vocabulary) rather than imported: firmware_sim loads numpy, which the agent does not."""
    data = yaml.safe_load((ROOT / "firmware_sim" / "maps" / f"{kind}.yaml").read_text())
    return list(data["tags"])


def aux_tags(count: int) -> list[dict[str, Any]]:
    """The simulator's generated float32 tags (input registers from 1000, two each)."""
    return [{"name": f"aux_{i:04d}", "table": "input_register", "address": 1000 + 2 * i,
             "type": "float32"} for i in range(count)]  # fmt: skip


async def run_agent(config: dict[str, Any], seconds: float) -> dict[str, float]:
    """Run the agent, skip a warm-up, then measure `seconds` of steady state."""
    cfg = parse_config(json.dumps(config), source="bench")  # JSON is YAML, and cheap to write
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.ready.wait(), 120)
    await asyncio.sleep(min(10.0, seconds / 2))  # connect, subscribe, first polls
    rt = agent.runtime
    received, cpu, wall = rt.pipeline.counters.received, time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    received = rt.pipeline.counters.received - received
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    figures = {
        "readings_per_s": received / wall, "core_share": cpu / wall, "per_cpu_s": received / cpu,
        "rss_mb": rss_mb(),
        "bytes_per_reading": rt.pipeline.counters.committed_bytes
        / max(rt.pipeline.counters.committed, 1),
        "overruns": sum(s.driver.counters.overruns for s in rt.supervisor.slots.values()
                        if s.driver),
    }  # fmt: skip
    if rt.uplink is not None:
        status = rt.uplink.status
        figures["latency_p50_s"] = status.latency_p50_s or float("nan")
        figures["latency_p99_s"] = status.latency_p99_s or float("nan")
        figures["uplink_batches"] = status.batches_sent
        figures["uplink_retries"] = status.retries
    stop.set()
    await asyncio.wait_for(task, 60)
    return figures


async def bench_10k(work: Path, seconds: float) -> dict[str, float]:
    """7,500 Modbus tags (30 devices) and 2,500 OPC UA items (10 devices) at 1 s, to a cloud."""
    per_device = 250
    with simulator("--devices", "30", "--tags-per-device", str(per_device), "--no-opcua") as mb, \
         simulator("--devices", "10", "--tags-per-device", str(per_device), "--no-modbus",
                   "--opcua-publish", "1.0") as ua:  # fmt: skip
        devices: list[dict[str, Any]] = []
        for name, port in mb["modbus"].items():
            kind = "".join(c for c in name if c.isalpha())
            base = map_tags(kind)
            tags = (base + aux_tags(per_device))[:per_device]
            devices += modbus_sections({name: port}, tags, 1.0)
        for name in ua["devices"]:
            kind = "".join(c for c in name if c.isalpha())
            names = [t["name"] for t in map_tags(kind)] + [
                f"aux_{i:04d}" for i in range(per_device)
            ]
            devices.append({
                "protocol": "opcua", "name": f"ua-{name}", "endpoint": ua["opcua_endpoint"],
                "simulated": True, "publishing_interval_ms": 1000,
                "tags": [{"name": t, "node_id": f"nsu=urn:tagway:firmware-sim;s={name}.{t}"}
                         for t in names[:per_device]],
            })  # fmt: skip
        async with cloud(work) as (url, gateway_id, token):
            token_file = work / "token"
            token_file.write_text(token)

            config = {
                "gateway": {"name": "bench", "state_dir": str(work / "agent10k")},
                "cloud": {"url": url, "gateway_id": gateway_id, "token_file": str(token_file)},
                "report": {"every_reading": True}, "local_api": {"port": 0}, "devices": devices,
            }  # fmt: skip
            return await run_agent(config, seconds)


async def bench_flat_out(work: Path, seconds: float) -> dict[str, float]:
    """Modbus devices polled as fast as they answer, into the outbox (no cloud)."""
    per_device = 1000
    with simulator("--devices", "4", "--tags-per-device", str(per_device), "--no-opcua") as mb:
        devices = modbus_sections(mb["modbus"], aux_tags(per_device - 30), 0.02)
        config = {
            "gateway": {"name": "flat", "state_dir": str(work / "flat")},
            "report": {"every_reading": True}, "local_api": {"port": 0}, "devices": devices,
            "outbox": {"quota": "2GiB"},
        }  # fmt: skip
        return await run_agent(config, seconds)


SCENARIOS = {"pipeline": bench_pipeline, "10k": bench_10k, "flat": bench_flat_out}


async def one_scenario(name: str, seconds: float) -> None:
    """Run one scenario in this (fresh) process and print its figures as JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        figures = await (
            bench_pipeline(work) if name == "pipeline" else SCENARIOS[name](work, seconds)
        )
    print(json.dumps(figures))


def run_scenario(name: str, seconds: float) -> dict[str, float]:
    """Each scenario in its own process, so RSS and CPU are that scenario's agent alone."""
    out = subprocess.run(
        [sys.executable, __file__, "--scenario", name, "--seconds", str(seconds)],
        check=True, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    if args.scenario:
        asyncio.run(one_scenario(args.scenario, args.seconds))
        return
    pipe = run_scenario("pipeline", args.seconds)
    print(
        f"pipeline alone      {pipe['per_cpu_s']:>10,.0f} readings/CPU-s  "
        f"{pipe['bytes_per_reading']:.2f} bytes/reading on disk"
    )
    ten = run_scenario("10k", args.seconds)
    print(
        f"10k tags at 1 s     {ten['readings_per_s']:>10,.0f} readings/s  core "
        f"{ten['core_share']:.1%}  RSS {ten['rss_mb']:.0f} MB  "
        f"{ten['bytes_per_reading']:.2f} B/reading  latency p50 "
        f"{ten.get('latency_p50_s', float('nan')):.2f} s p99 "
        f"{ten.get('latency_p99_s', float('nan')):.2f} s"
    )
    flat = run_scenario("flat", args.seconds)
    print(
        f"flat-out Modbus     {flat['per_cpu_s']:>10,.0f} readings/CPU-s  "
        f"{flat['readings_per_s']:,.0f} readings/s  overruns {flat['overruns']}"
    )
    print(
        json.dumps(
            {
                "pipeline_readings_per_cpu_s": round(pipe["per_cpu_s"]),
                "agent_core_share_10k": round(ten["core_share"], 4),
                "agent_rss_mb": round(ten["rss_mb"], 1),
                "readings_per_s_10k": round(ten["readings_per_s"]),
                "bytes_per_reading": round(ten["bytes_per_reading"], 3),
                "pipeline_bytes_per_reading": round(pipe["bytes_per_reading"], 3),
                "latency_p50_s": round(ten.get("latency_p50_s", float("nan")), 3),
                "latency_p99_s": round(ten.get("latency_p99_s", float("nan")), 3),
                "flat_out_readings_per_cpu_s": round(flat["per_cpu_s"]),
                "flat_out_readings_per_s": round(flat["readings_per_s"]),
                "flat_out_poll_overruns": flat["overruns"],
                "load_avg_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
