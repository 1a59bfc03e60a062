"""Benchmark: the two-way side of the cloud (issue 17).

Runs the cloud in real uvicorn processes (port-0 sockets) on PostgreSQL, as production does:

1. Command round trip: a command POSTed to the cloud, delivered on the gateway's channel to a
   running agent (`edge.channel`, in this process), written to a firmware_sim Modbus holding
   register through the write door and read back, and its result stored in the cloud (polled
   every 10 ms). p50 and p99 over `--commands` commands; target
   p99 < 1 s.
2. Idle gateways: one replica holding `--gateways` (1,000) open gateway channels; its RSS and
   its CPU share of one core over a `--idle-seconds` window with nothing happening but
   keepalives. Targets: < 150 MB, < 5% of a core.
3. Ingest with stream clients: 4 senders post batches of 5,000 readings (50 devices x 100),
   alternating rounds with no stream client and with `--sse-clients` (50) subscribed, each
   watching one device (all kinds: readings, alarms, commands), the way a dashboard per machine
   does. The clients run in their own process so their reading does not share the senders'
   event loop. Ratio of the two ingest rates, measured in the same run; target >= 0.9.

4. Fleet (issue 18, `fleet_parts.py`): the time from `config push` to "applied and passed
   probation" on one running agent with a 10 s probation (target < 15 s), and the cost of 1,000
   gateways reporting status every 60 s: the replica's CPU share, rows and WAL bytes per day.

Prints readable rows; the last line is one JSON object with `command_rtt_p50_s`,
`command_rtt_p99_s`, `idle_gateways`, `idle_rss_mb`, `idle_core_share`, `ingest_ratio_with_sse`,
`config_apply_s`, `status_core_share_1000_gateways`, `status_rows_per_day`,
`status_bytes_per_day` and the machine's load average.

    python tests/bench/bench_commands.py [--gateways 1000] [--sse-clients 50] [--dsn ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cloud.contract import Batch, SeriesColumns, encode_batch  # noqa: E402 - after sys.path
from cloud.settings import CloudSettings  # noqa: E402
from cloud.storage.pg_migrate import apply_migrations  # noqa: E402
from tests.bench import fleet_parts  # noqa: E402
from tests.cloud.test_replicas import start_replica, wait_ready  # noqa: E402

PLATFORM_KEY = "bench-platform-key"
DEVICES = 50
READINGS_PER_DEVICE = 100
SENDERS = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_figures(pid: int) -> tuple[float, float]:
    """(RSS in MB, CPU seconds used so far) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    return rss_kb / 1024, cpu


class Api:
    """The bench's user of the API."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        """The Authorization header."""
        return {"Authorization": f"Bearer {token}"}

    async def tenant(self, name: str) -> str:
        """A new tenant's admin key."""
        platform = self.auth(PLATFORM_KEY)
        r = await self.client.post("/v1/tenants", json={"name": name}, headers=platform)
        r.raise_for_status()
        r = await self.client.post(
            f"/v1/tenants/{r.json()['id']}/api-keys",
            json={"name": "admin", "role": "admin"},
            headers=platform,
        )
        r.raise_for_status()
        return str(r.json()["token"])

    async def gateways(self, admin: str, count: int, prefix: str) -> list[tuple[int, str]]:
        """`count` new gateways: (id, token) each."""
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> tuple[int, str]:
            async with gate:
                r = await self.client.post(
                    "/v1/gateways", json={"name": f"{prefix}{i}"}, headers=self.auth(admin)
                )
                r.raise_for_status()
                return int(r.json()["gateway"]["id"]), str(r.json()["token"])

        return list(await asyncio.gather(*(one(i) for i in range(count))))


@contextmanager
def replica(settings: dict[str, Any]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A cloud replica in its own process, ready."""
    proc, url = start_replica(settings)
    try:
        wait_ready(url, proc)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------- idle gateways


async def idle_gateways(url: str, pid: int, count: int, seconds: float) -> dict[str, Any]:
    """RSS and CPU share of a replica holding `count` idle gateway channels."""
    limits = httpx.Limits(max_connections=count + 20, max_keepalive_connections=count + 20)
    timeout = httpx.Timeout(30.0, read=None)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        api = Api(client)
        admin = await api.tenant("idle")
        gateways = await api.gateways(admin, count, "idle-")
        await asyncio.sleep(2)
        rss_before, _ = proc_figures(pid)
        connected = 0
        all_connected = asyncio.Event()
        opening = asyncio.Semaphore(50)  # the listen backlog is 128

        async def hold(token: str) -> None:
            nonlocal connected
            async with opening:
                stream = client.stream("GET", "/v1/gateway/channel", headers=api.auth(token))
                response = await stream.__aenter__()
            try:
                async for line in response.aiter_lines():
                    if line.startswith("event: desired"):
                        connected += 1
                        if connected == count:
                            all_connected.set()
            finally:
                await stream.__aexit__(None, None, None)

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(hold(t), name=f"channel-{i}")
                     for i, (_, t) in enumerate(gateways)]  # fmt: skip
            await asyncio.wait_for(all_connected.wait(), 120)
            await asyncio.sleep(5)  # let the connection burst settle
            _, cpu_start = proc_figures(pid)
            wall_start = time.monotonic()
            await asyncio.sleep(seconds)
            rss, cpu_end = proc_figures(pid)
            share = (cpu_end - cpu_start) / (time.monotonic() - wall_start)
            for task in tasks:
                task.cancel()
    return {"gateways": connected, "rss_mb": rss, "rss_before_mb": rss_before, "core_share": share}


# --------------------------------------------------------------------- ingest with streams


def make_bodies(gateway_id: int, count: int, base: int) -> list[bytes]:
    """`count` encoded batches of 5,000 readings (50 devices x 100), distinct timestamps."""
    bodies = []
    for b in range(count):
        t0 = base + b * READINGS_PER_DEVICE * 1000
        series = [
            SeriesColumns(
                device=f"dev{d:02d}",
                tag="flow",
                ts=[t0 + i * 1000 for i in range(READINGS_PER_DEVICE)],
                values=[float(i % 97) * 0.5 for i in range(READINGS_PER_DEVICE)],
                qualities=[0] * READINGS_PER_DEVICE,
            )
            for d in range(DEVICES)
        ]
        bodies.append(encode_batch(Batch(str(gateway_id), b + 1, base, series)))
    return bodies


async def send(url: str, work: list[tuple[str, list[bytes]]]) -> float:
    """Post every body (one sender per gateway, in order); readings per second."""
    headers = {"Content-Type": "application/vnd.tagway.batch+msgpack", "Content-Encoding": "zstd"}

    async def sender(client: httpx.AsyncClient, token: str, bodies: list[bytes]) -> None:
        for body in bodies:
            r = await client.post("/v1/ingest", content=body, headers=headers | Api.auth(token))
            if r.status_code != 200:
                raise RuntimeError(f"ingest answered {r.status_code}: {r.text}")

    limits = httpx.Limits(max_connections=len(work))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i, (token, bodies) in enumerate(work):
                tg.create_task(sender(client, token, bodies), name=f"sender-{i}")
        elapsed = time.perf_counter() - started
    readings = sum(len(b) for _, b in work) * DEVICES * READINGS_PER_DEVICE
    return readings / elapsed


async def clients_child(url: str, token: str, count: int) -> None:
    """The stream clients' process: `count` streams, one device each; 'ready' once all are
    subscribed; on stdin's end, prints the events each kind received and exits."""
    received: dict[str, int] = {}
    subscribed = 0
    ready = asyncio.Event()
    limits = httpx.Limits(max_connections=count + 2)
    timeout = httpx.Timeout(30.0, read=None)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:

        async def watch(device: str) -> None:
            nonlocal subscribed
            params = {"device": device}
            headers = Api.auth(token)
            async with client.stream("GET", "/v1/stream", params=params, headers=headers) as r:
                chunks = r.aiter_raw()
                first = await anext(chunks)
                if first.startswith(b": subscribed"):
                    subscribed += 1
                    if subscribed == count:
                        ready.set()
                # Counted on the raw bytes, not parsed: a client this cheap keeps its own CPU
                # out of the figure, which is about the server.
                async for chunk in chunks:
                    for kind in (b"readings", b"alarm", b"command", b"missed"):
                        n = chunk.count(b"event: " + kind + b"\n")
                        if n:
                            received[kind.decode()] = received.get(kind.decode(), 0) + n

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(watch(f"dev{i % DEVICES:02d}"), name=f"client-{i}")
                     for i in range(count)]  # fmt: skip
            await ready.wait()
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            for task in tasks:
                task.cancel()
    sys.stdout.write(json.dumps(received) + "\n")


@contextmanager
def stream_clients(url: str, token: str, count: int) -> Iterator[dict[str, int]]:
    """`count` stream clients in a child process for the duration of the block; the block's
    value is filled with what they received when it ends."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--clients-child", url, token, str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdin is not None
    if child.stdout.readline().strip() != b"ready":
        child.kill()
        raise RuntimeError("the stream clients did not subscribe")
    received: dict[str, int] = {}
    try:
        yield received
    finally:
        child.stdin.close()
        received.update(json.loads(child.stdout.readline() or b"{}"))
        child.wait(timeout=30)


async def _ingest_setup(url: str, batches: int) -> tuple[str, list[tuple[str, list[bytes]]]]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        api = Api(client)
        admin = await api.tenant("ingest")
        gateways = await api.gateways(admin, SENDERS, "sender-")
    base = time.time_ns() // 1000 - 3 * 3_600_000_000
    work = [(token, make_bodies(gw, batches, base)) for gw, token in gateways]
    return admin, work


def ingest_with_streams(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Alternating rounds without and with stream clients; the rates and the ratio."""
    per_round = args.batches // args.rounds // SENDERS
    admin, work = asyncio.run(_ingest_setup(url, per_round * args.rounds * 2 + 1))
    asyncio.run(send(url, [(t, b[:1]) for t, b in work]))  # devices and series exist now
    none, with_clients, received = [], [], {}
    cursor = 1
    for _ in range(args.rounds):
        chunk = [(t, b[cursor : cursor + per_round]) for t, b in work]
        none.append(asyncio.run(send(url, chunk)))
        cursor += per_round
        chunk = [(t, b[cursor : cursor + per_round]) for t, b in work]
        with stream_clients(url, admin, args.sse_clients) as got:
            with_clients.append(asyncio.run(send(url, chunk)))
            time.sleep(1)  # the last events reach the clients
        cursor += per_round
        for kind, n in got.items():
            received[kind] = received.get(kind, 0) + n
    rate_none, rate_with = statistics.fmean(none), statistics.fmean(with_clients)
    return {"none": rate_none, "with": rate_with, "ratio": rate_with / rate_none,
            "received": received}  # fmt: skip


# ------------------------------------------------------------------------- command round trip


async def command_rtt(url: str, count: int) -> dict[str, Any]:
    """Cloud POST → channel → agent → Modbus write and read-back → result stored in the cloud,
    `count` times, one at a time; seconds each, as the cloud user sees them (polled every
    10 ms)."""
    import tempfile  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    from edge.config import parse_config  # noqa: PLC0415 - the agent side, only for this part
    from firmware_sim.plant import Plant  # noqa: PLC0415
    from tests.edge.cloud_harness import Faults, RunningCloud  # noqa: PLC0415
    from tests.edge.commands_harness import Operator, gateway_config  # noqa: PLC0415
    from tests.edge.harness import modbus_devices, running_agent  # noqa: PLC0415

    cloud = RunningCloud(url, Path("/nonexistent"), Faults())  # served by the bench's replica
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        api = Api(client)
        cloud.admin_key = await api.tenant("commands")
        ((gateway, token),) = await api.gateways(cloud.admin_key, 1, "rtt-")
        cloud.gateway_id, cloud.gateway_token = str(gateway), token
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tagway-rtt-bench-") as tmp:
        state = Path(tmp) / "state"
        async with Plant(devices=1, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant:
            data = gateway_config(state, modbus_devices(plant, interval=1.0), cloud)
            config = parse_config(yaml.safe_dump(data), source="bench")
            async with running_agent(config) as running, Operator(cloud) as op:
                channel = running.agent.channel
                assert channel is not None
                await asyncio.wait_for(channel.connected.wait(), 30)
                for i in range(count + 5):  # the first five warm up
                    args = {"device": "pump1", "tag": "speed_setpoint", "value": 10 + i % 80}
                    started = time.perf_counter()
                    sent = await op.command("write", args)
                    path = f"/v1/gateways/{gateway}/commands/{sent['id']}"
                    # A user polling the API: the figure is what a user sees.
                    while (found := await op.get(path))["state"] in (  # noqa: ASYNC110
                        "queued", "delivered"):  # fmt: skip
                        await asyncio.sleep(0.01)
                    took = time.perf_counter() - started
                    if found["state"] != "succeeded":
                        raise RuntimeError(f"command {sent['id']} ended {found}")
                    if i >= 5:
                        times.append(took)
    times.sort()
    return {"p50": statistics.median(times), "p99": times[min(len(times) - 1,
            round(0.99 * (len(times) - 1)))], "count": len(times)}  # fmt: skip


# ------------------------------------------------------------------------------------ fleet


async def fleet_status(url: str, pid: int, owner: str, args: argparse.Namespace) -> dict[str, Any]:
    """`args.gateways` gateways reporting status for `args.status_rounds` rounds."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        api = Api(client)
        admin = await api.tenant("status")
        gateways = await api.gateways(admin, args.gateways, "status-")
    return await fleet_parts.status_cost(
        url, pid, owner, gateways, rounds=args.status_rounds,
        cpu_of=lambda p: proc_figures(p)[1],
    )  # fmt: skip


# ----------------------------------------------------------------------------------- main


def main() -> None:
    """Run the parts and print the rows and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--sse-clients", type=int, default=50)
    parser.add_argument("--batches", type=int, default=96, help="per side, all senders")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--status-rounds", type=int, default=5, help="minutes of status, each")
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "TAGWAY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--clients-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients_child:
        url, token, count = args.clients_child
        asyncio.run(clients_child(url, token, int(count)))
        return
    name = f"tagway_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    owner = psycopg.conninfo.make_conninfo(args.dsn, dbname=name)
    try:
        asyncio.run(apply_migrations(owner, CloudSettings()))
        settings = {
            "database_url": psycopg.conninfo.make_conninfo(owner, user="tagway_app"),
            "platform_admin_key": PLATFORM_KEY,
            "default_rate_limit": 1_000_000,
            "pool_min_size": 2,
            "pool_max_size": 8,
        }
        with replica(settings) as (proc, url):
            idle = asyncio.run(idle_gateways(url, proc.pid, args.gateways, args.idle_seconds))
        with replica(settings) as (proc, url):
            ingest = ingest_with_streams(url, args)
        with replica(settings) as (proc, url):
            rtt = asyncio.run(command_rtt(url, args.commands))
        with replica(settings) as (proc, url):
            status = asyncio.run(fleet_status(url, proc.pid, owner, args))
            apply = asyncio.run(fleet_parts.config_apply(url, PLATFORM_KEY))
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(
        f"idle: {idle['gateways']} gateway channels on one replica: RSS {idle['rss_mb']:.1f} MB"
        f" (before connecting {idle['rss_before_mb']:.1f} MB), CPU {idle['core_share']:.2%}"
        f" of a core over {args.idle_seconds:g} s"
    )
    print(
        f"ingest: {ingest['none']:,.0f} readings/s with no stream client,"
        f" {ingest['with']:,.0f} with {args.sse_clients} (one device each): ratio"
        f" {ingest['ratio']:.3f}; the clients received {ingest['received']}"
    )
    print(
        f"config push: applied and passed a {apply['probation_s']:g} s probation"
        f" {apply['seconds']:.1f} s after the push (one agent, one added device)"
    )
    print(
        f"status: {status['gateways']} gateways, one document each per round:"
        f" {status['cpu_s_per_round']:.2f} CPU s per round on the replica"
        f" ({status['core_share']:.2%} of a core at one round a minute;"
        f" a round takes {status['wall_s_per_round']:.1f} s here);"
        f" {status['rows_per_day']:,.0f} rows inserted and {status['updates_per_day']:,.0f}"
        f" updated per day, {status['bytes_per_day'] / 2**20:,.0f} MiB of WAL per day"
    )
    print(
        f"command round trip: {rtt['count']} writes, cloud POST to result stored (Modbus"
        f" write and read-back on a running agent): p50 {rtt['p50'] * 1000:.0f} ms,"
        f" p99 {rtt['p99'] * 1000:.0f} ms"
    )
    result = {
        "command_rtt_p50_s": round(rtt["p50"], 4),
        "command_rtt_p99_s": round(rtt["p99"], 4),
        "idle_gateways": idle["gateways"],
        "idle_rss_mb": round(idle["rss_mb"], 1),
        "idle_core_share": round(idle["core_share"], 4),
        "ingest_ratio_with_sse": round(ingest["ratio"], 3),
        "ingest_readings_per_s_without_sse": round(ingest["none"]),
        "ingest_readings_per_s_with_sse": round(ingest["with"]),
        "config_apply_s": round(apply["seconds"], 2),
        "status_core_share_1000_gateways": round(
            status["core_share"] * 1000 / status["gateways"], 4
        ),
        "status_rows_per_day": round(status["rows_per_day"] * 1000 / status["gateways"]),
        "status_bytes_per_day": round(status["bytes_per_day"] * 1000 / status["gateways"]),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
