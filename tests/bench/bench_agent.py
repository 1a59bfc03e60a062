"""Benchmark of the agent (issues 8 and 23): the pipeline alone, 10,000 tags at 1 s from simulated
Modbus and OPC UA devices through to a cloud on this machine, a flat-out Modbus run, and 100,000
tags at 1 s (Modbus from prepared frames, OPC UA, MQTT through the embedded broker) to a cloud.

    python tests/bench/bench_agent.py [--seconds 20]          # every scenario (100k: >= 60 s)
    python tests/bench/bench_agent.py --scenario 100k --seconds 60   # one, raw figures
    BENCH_PROFILE=/tmp/a.prof python tests/bench/bench_agent.py --scenario 100k
                                        # cProfile (CPU time) of the measured window

The simulators and the cloud run in their own processes, so the CPU and memory figures are the
agent's alone (this process hosts only the agent and the bench's bookkeeping); their CPU shares
over the same window and the load average are reported next to the agent's. On a shared machine
the readings/s and latency figures depend on the load; CPU seconds per reading do not (much):
`agent_core_per_100k_readings_per_s` is the core share 100,000 readings/s would take.
Rows first, then one JSON line with: pipeline_readings_per_cpu_s, agent_core_share_10k,
agent_rss_mb, readings_per_s_10k, bytes_per_reading, latency_p50_s, latency_p99_s,
flat_out_readings_per_cpu_s, flat_out_poll_overruns, agent_core_share_100k, agent_rss_mb_100k,
readings_per_s_100k, latency_p99_s_100k, silent_loss_100k (readings the drivers handed over minus
readings committed minus readings counted as dropped), and the load averages and test-bed shares.
Targets: 10,000 tags/s under 25% of one core and 150 MB RSS; pipeline >= 200,000 readings per
CPU-second; flat-out >= 150,000 readings per CPU-second; <= 4 bytes per reading; p99 < 2 s;
100k: core share < 0.50, RSS < 300 MB, >= 97,000 readings/s, p99 < 2 s, silent loss 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge.agent import Agent  # noqa: E402 - after the path fix-up
from edge.alarms import AlarmEngine  # noqa: E402
from edge.config import load_config, parse_config  # noqa: E402
from edge.pipeline.derived import DerivedTags  # noqa: E402
from edge.pipeline.rbe import Deadband, ReportByException  # noqa: E402
from edge.pipeline.runner import Pipeline  # noqa: E402
from protocols.reading import Reading  # noqa: E402
from store_forward import AsyncOutbox, OutboxSettings  # noqa: E402

T0 = 1_795_000_000_000_000
OTHERS: dict[str, int] = {}  # the test bed's processes (simulators, cloud) by role: their pids
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def produced_by_protocol(runtime: Any) -> dict[str, int]:
    """Readings the drivers handed over so far, by protocol (a driver restarted since counts from
    its restart)."""
    out: dict[str, int] = {}
    for slot in runtime.supervisor.slots.values():
        if slot.driver is not None:
            protocol = slot.config.protocol
            out[protocol] = out.get(protocol, 0) + slot.driver.counters.readings
    return out


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
def simulator(*args: str, role: str | None = None) -> Any:
    """firmware_sim in its own process; yields its JSON ports line (with its pid). With a
    `role`, its pid goes into `OTHERS` under that name."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim", "plant", "--control-port", "0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith('{"serving"'):
                if role is not None:
                    OTHERS[role] = proc.pid
                yield {**json.loads(line), "pid": proc.pid}
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
    """The cloud service (SQLite) in its own process; yields (url, gateway id, gateway token).
    Its pid goes into `OTHERS` as ``cloud``, so scenarios can report its CPU share."""
    key = secrets.token_urlsafe(16)
    port = _free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - set-up before anything is measured
        [sys.executable, "-m", "cli", "cloud", "serve", "--database",
         f"sqlite:///{work / 'cloud.db'}", "--port", str(port), "--platform-admin-key", key],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    OTHERS["cloud"] = proc.pid
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


async def run_agent(
    config: dict[str, Any] | Path, seconds: float, *, warm_up: float | None = None
) -> dict[str, float]:
    """Run the agent, skip a warm-up, then measure `seconds` of steady state.

    Also measured over the same window: the CPU share of each process in `OTHERS` (the test
    bed), the load average, and, once the agent has stopped, the silent loss: readings the
    drivers handed over minus readings committed minus readings counted as dropped."""
    cfg = (  # a file is read as `tagway run` reads it; JSON is YAML, and cheap to write
        load_config(config)
        if isinstance(config, Path)
        else parse_config(json.dumps(config), source="bench")
    )
    agent = Agent(cfg, tune_gc=os.environ.get("BENCH_TUNE_GC", "1") == "1")  # as `tagway run`
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.ready.wait(), 120)
    await asyncio.sleep(min(10.0, seconds / 2) if warm_up is None else warm_up)
    rt = agent.runtime
    others = {role: cpu_s(pid) for role, pid in OTHERS.items()}
    profile = os.environ.get("BENCH_PROFILE")  # a file: cProfile stats of the measured window
    # CPU time, not wall time: on a shared machine, wall time charges whatever function was
    # running when the process was descheduled.
    profiler = cProfile.Profile(time.process_time) if profile else None
    by_protocol = produced_by_protocol(rt)
    received, cpu, wall = rt.pipeline.counters.received, time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(profile))
    received = rt.pipeline.counters.received - received
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    others = {role: (cpu_s(OTHERS[role]) - spent) / wall for role, spent in others.items()}
    by_protocol = {
        protocol: (count - by_protocol.get(protocol, 0)) / wall
        for protocol, count in produced_by_protocol(rt).items()
    }
    figures = {
        "readings_per_s": received / wall, "core_share": cpu / wall, "per_cpu_s": received / cpu,
        "core_per_100k": cpu / max(received, 1) * 100_000,
        "load_avg_1m": os.getloadavg()[0],
        **{f"{role}_core_share": share for role, share in others.items()},
        **{f"{protocol}_readings_per_s": rate for protocol, rate in by_protocol.items()},
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
    slots = [s for s in rt.supervisor.slots.values() if s.driver is not None]
    produced = sum(s.driver.counters.readings for s in slots if s.driver)
    counters = rt.pipeline.counters
    figures["silent_loss"] = produced - counters.committed - counters.dropped - counters.suppressed
    figures["driver_dropped"] = sum(s.driver.counters.dropped for s in slots if s.driver)
    figures["restarts"] = sum(s.restarts for s in slots)
    return figures


def modbus_devices(sim: dict[str, Any], per_device: int, prefix: str = "") -> list[dict[str, Any]]:
    """Agent sections for a Modbus simulator's devices: each device type's map, padded with
    generated tags to `per_device`, polled every second; agent names `prefix` + the sim's."""
    devices: list[dict[str, Any]] = []
    for name, port in sim["modbus"].items():
        kind = "".join(c for c in name if c.isalpha())
        tags = (map_tags(kind) + aux_tags(per_device))[:per_device]
        devices += modbus_sections({f"{prefix}{name}": port}, tags, 1.0)
    return devices


def opcua_devices(
    sim: dict[str, Any], per_device: int, prefix: str = "ua-"
) -> list[dict[str, Any]]:
    """Agent sections for an OPC UA simulator's devices, one subscription each at 1 s."""
    devices: list[dict[str, Any]] = []
    for name in sim["devices"]:
        kind = "".join(c for c in name if c.isalpha())
        names = [t["name"] for t in map_tags(kind)] + [f"aux_{i:04d}" for i in range(per_device)]
        devices.append({
            "protocol": "opcua", "name": f"{prefix}{name}", "endpoint": sim["opcua_endpoint"],
            "simulated": True, "publishing_interval_ms": 1000,
            "tags": [{"name": t, "node_id": f"nsu=urn:tagway:firmware-sim;s={name}.{t}"}
                     for t in names[:per_device]],
        })  # fmt: skip
    return devices


async def bench_10k(work: Path, seconds: float) -> dict[str, float]:
    """7,500 Modbus tags (30 devices) and 2,500 OPC UA items (10 devices) at 1 s, to a cloud."""
    per_device = 250
    with simulator("--devices", "30", "--tags-per-device", str(per_device), "--no-opcua",
                   role="modbus_sim") as mb, \
         simulator("--devices", "10", "--tags-per-device", str(per_device), "--no-modbus",
                   "--opcua-publish", "1.0", "--tick", "1.0", role="opcua_sim") as ua:  # fmt: skip
        devices = modbus_devices(mb, per_device) + opcua_devices(ua, per_device)
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


def _broker_users() -> tuple[list[dict[str, Any]], str]:
    """Embedded-broker accounts for the simulator and the agent (cheap Argon2 parameters keep
    connects fast); returns them and the password both use."""
    from pwdlib import PasswordHash  # noqa: PLC0415 - only the 100k scenario needs it
    from pwdlib.hashers.argon2 import Argon2Hasher  # noqa: PLC0415

    password = secrets.token_urlsafe(12)
    digest = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8 * 1024, parallelism=1),)).hash(
        password
    )
    return [
        {"username": "sim", "password_hash": digest, "publish": ["mq/#"]},
        {"username": "gateway", "password_hash": digest, "publish": [], "subscribe": ["mq/#"]},
    ], password


# The 100k mix: 70 % Modbus, 20 % OPC UA, 10 % MQTT. Modbus devices of 250 tags (5 requests a
# poll, as in the 10k scenario): a device's requests go one after another, so 17 round trips of
# a 1,000-tag device do not fit in a second on a loaded machine, while many small devices poll in
# parallel. Simulators are split over processes so no single one is the bottleneck.
MODBUS_SIMS, MODBUS_DEVICES, MODBUS_TAGS = 2, 140, 250
OPCUA_SIMS, OPCUA_DEVICES, OPCUA_TAGS = 2, 10, 1000
MQTT_DEVICES, MQTT_TAGS = 10, 1000


async def bench_100k(work: Path, seconds: float) -> dict[str, float]:
    """100,000 tags at 1 s: 70,000 Modbus (280 devices from prepared frames), 20,000 OPC UA
    items (20 devices) and 10,000 MQTT values (10 devices, one JSON message per device and second,
    through the agent's embedded broker), to a cloud in its own process."""
    users, password = _broker_users()
    devices: list[dict[str, Any]] = []
    with contextlib.ExitStack() as sims:
        for i in range(MODBUS_SIMS):
            mb = sims.enter_context(simulator(
                "--devices", str(MODBUS_DEVICES), "--tags-per-device", str(MODBUS_TAGS),
                "--no-opcua", "--modbus-frames", role=f"modbus_sim{i + 1}"))  # fmt: skip
            devices += modbus_devices(mb, MODBUS_TAGS, prefix=f"m{i + 1}-")
        for i in range(OPCUA_SIMS):
            ua = sims.enter_context(simulator(
                "--devices", str(OPCUA_DEVICES), "--tags-per-device", str(OPCUA_TAGS),
                "--no-modbus", "--opcua-publish", "1.0", "--tick", "1.0",
                role=f"opcua_sim{i + 1}"))  # fmt: skip
            devices += [
                # Units are a browse path per item at start: thousands of them keep a busy
                # simulator's asyncua for minutes, and they change nothing in the steady state.
                device | {"read_engineering_units": False, "request_timeout_s": 30.0}
                for device in opcua_devices(ua, OPCUA_TAGS, prefix=f"u{i + 1}-")
            ]
        # Chosen once the other simulators hold their hundreds of ports, so none of them takes
        # the broker's between this choice and the agent's bind.
        broker_port = _free_port()
        mqtt_url = f"mqtt://sim:{password}@127.0.0.1:{broker_port}"
        mq = sims.enter_context(simulator(
            "--devices", str(MQTT_DEVICES), "--tags-per-device", str(MQTT_TAGS), "--no-modbus",
            "--no-opcua", "--mqtt-url", mqtt_url, "--mqtt-interval", "1.0",
            "--mqtt-topic-prefix", "mq", "--tick", "1.0", role="mqtt_sim"))  # fmt: skip
        devices.append({
            "protocol": "mqtt", "name": "mqtt", "url": f"mqtt://127.0.0.1:{broker_port}",
            "username": "gateway", "password": password, "simulated": True,
            "subscriptions": [{"topic": f"mq/{name}/telemetry", "device": f"mq-{name}"}
                              for name in mq["devices"]],
        })  # fmt: skip
        async with cloud(work) as (url, gateway_id, token):
            token_file = work / "token"
            token_file.write_text(token)
            config = work / "agent100k.json"
            config.write_text(json.dumps({
                "gateway": {"name": "bench", "state_dir": str(work / "agent100k")},
                "cloud": {"url": url, "gateway_id": gateway_id, "token_file": str(token_file)},
                "report": {"every_reading": True}, "local_api": {"port": 0}, "devices": devices,
                "outbox": {"quota": "4GiB"},
                "mqtt_broker": {"host": "127.0.0.1", "port": broker_port, "users": users},
            }))  # fmt: skip
            # The agent reads its config from a file, as `tagway run` does: 100,000 tag dicts
            # kept alive here (about 20 MB) would count in the agent's RSS without being its own.
            del devices
            return await run_agent(config, max(seconds, 60.0), warm_up=20.0)


SCENARIOS: dict[str, Callable[[Path, float], Awaitable[dict[str, float]]]] = {
    "10k": bench_10k, "flat": bench_flat_out, "100k": bench_100k,
}  # fmt: skip


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
    parser.add_argument("--scenario", choices=sorted([*SCENARIOS, "pipeline"]))
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
    big = run_scenario("100k", max(args.seconds, 60.0))
    bed = "  ".join(f"{role.removesuffix('_core_share')} {share:.0%}"
                    for role, share in big.items() if role.endswith("_core_share") and
                    role != "core_share")  # fmt: skip
    print(
        f"100k tags at 1 s    {big['readings_per_s']:>10,.0f} readings/s  core "
        f"{big['core_share']:.1%} ({big['core_per_100k']:.2f} core per 100k readings/s)  RSS "
        f"{big['rss_mb']:.0f} MB  latency p99 {big.get('latency_p99_s', float('nan')):.2f} s  "
        f"silent loss {big['silent_loss']}  overruns {big['overruns']}  load "
        f"{big['load_avg_1m']:.1f}  test bed: {bed}"
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
                "agent_core_share_100k": round(big["core_share"], 4),
                "agent_rss_mb_100k": round(big["rss_mb"], 1),
                "readings_per_s_100k": round(big["readings_per_s"]),
                "latency_p99_s_100k": round(big.get("latency_p99_s", float("nan")), 3),
                "silent_loss_100k": big["silent_loss"],
                "agent_core_per_100k_readings_per_s": round(big["core_per_100k"], 4),
                "poll_overruns_100k": big["overruns"],
                "load_avg_1m_100k": round(big["load_avg_1m"], 2),
                **{
                    f"{role}_100k": round(share, 4)
                    for role, share in big.items()
                    if role.endswith("_core_share") and role != "core_share"
                },
            }
        )
    )


if __name__ == "__main__":
    main()
