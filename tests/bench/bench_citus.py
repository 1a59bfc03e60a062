"""Benchmark: the cloud on one PostgreSQL node and on a Citus cluster (a coordinator and two
workers, all on this machine), in one run.

1. API ingest, as in `bench_cloud.py`: the service in a real uvicorn process, pre-encoded
   batches of 5,000 readings (50 series x 100, msgpack + zstd) from 4 concurrent senders,
   first into plain PostgreSQL (TAGWAY_TEST_PG_DSN's server), then into the Citus cluster
   (telemetry distributed by series, 32 shards, `CACHED_CONNECTIONS` kept per worker) in both
   setups: the replica connected to the coordinator only, and the replica writing the readings
   through a worker (`telemetry_database_url`, the coordinator keeping the metadata). The
   batches take turns over `--series` series, as a fleet's would. While the API ingests into
   Citus, the CPU time of every process of each node (the postmaster, its backends and the
   ones it reaped) is read from /proc before and after: each node's CPU microseconds per
   reading, and how many workers of its size one coordinator feeds (the workers' CPU per
   reading over the coordinator's).
2. Balance: the rows of telemetry on each worker after the ingest, largest over smallest.
3. Columnar: the simulated plant at 1 s (`bench_storage.plant_rows`, every numeric tag as the
   device delivers it) for `--plant-hours` of a day two weeks ago, that day converted to
   columnar storage by the cloud (`compress_telemetry`), bytes of the partition (all shards,
   indexes included) over readings.

All nodes share this machine's 2 cores with the API and the senders, so absolute rates mean
little; CPU per reading is what carries over to separate machines. Prints rows; the last line
is JSON. Targets (issue 22): balance <= 1.2, columnar <= 3 bytes per reading, and a coordinator
cost per reading that lets one coordinator feed at least 8 workers. The keys without a suffix
are the setup the README recommends, readings through the workers; ``*_via_coordinator`` the
other.

    python tests/bench/bench_citus.py [--batches 80] [--series 2000] [--plant-hours 24]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cloud.contract import Batch, SeriesColumns, encode_batch  # noqa: E402 - after sys.path
from cloud.settings import CloudSettings  # noqa: E402
from cloud.storage.pg_migrate import apply_migrations  # noqa: E402
from cloud.storage.postgres import PostgresDatabase  # noqa: E402
from tests.bench.bench_cloud import (  # noqa: E402
    PLATFORM_KEY,
    READINGS_PER_SERIES,
    SERIES_PER_BATCH,
    Tally,
    _send_all,
    _setup,
)
from tests.bench.bench_storage import copy_rows, plant_rows  # noqa: E402
from tests.cloud.test_replicas import start_replica, wait_ready  # noqa: E402
from tests.pg_engines import EngineServer, running  # noqa: E402

DAY_US = 86_400_000_000
READINGS_PER_BATCH = SERIES_PER_BATCH * READINGS_PER_SERIES
SHARDS = 32
CACHED_CONNECTIONS = 16
"""citus.max_cached_conns_per_worker: a COPY touching every shard opens a connection per shard
(TLS, a new backend); with Citus's default of 1 kept between transactions, that churn costs
the nodes more CPU than the rows themselves."""
_TICKS = os.sysconf("SC_CLK_TCK")


def make_batches(gateway_id: int, count: int, series: int, first_seq: int = 1) -> list[Batch]:
    """`count` batches shaped as bench_cloud.py's (50 series x 100 readings); batch b covers
    the b-th group of 50 of the `series`, in turn; timestamps distinct across all of them."""
    base = time.time_ns() // 1000 - 3_600_000_000
    groups = max(series // SERIES_PER_BATCH, 1)
    batches = []
    for b in range(count):
        first = (b % groups) * SERIES_PER_BATCH
        t0 = base + b * READINGS_PER_SERIES * 1000
        cols = [
            SeriesColumns(
                device=f"dev{(first + s) // 10}",
                tag=f"tag{(first + s) % 10}",
                ts=[t0 + i * 1000 for i in range(READINGS_PER_SERIES)],
                values=[float(i % 97) * 0.5 for i in range(READINGS_PER_SERIES)],
                qualities=[0] * READINGS_PER_SERIES,
            )
            for s in range(SERIES_PER_BATCH)
        ]
        batches.append(Batch(str(gateway_id), first_seq + b, base, cols))
    return batches


# ------------------------------------------------------------------------------ CPU of a node


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, CPU ticks incl. reaped children) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]), sum(int(f) for f in fields[11:15])


def node_cpu_s(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL node so far: the postmaster with the children it reaped,
    and every live child."""
    own = _stat(postmaster)
    total = own[1] if own else 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] == postmaster:
                total += stat[1]
    return total / _TICKS


def postmasters(server: EngineServer) -> dict[str, int]:
    """The postmaster pid of each node of the cluster (coordinator, worker1, ...)."""
    assert server.directory is not None
    cluster = server.directory / "cluster"
    found = {}
    for node in sorted(p.name for p in cluster.iterdir() if (p / "postmaster.pid").exists()):
        found[node] = int((cluster / node / "postmaster.pid").read_text().split()[0])
    return found


class NodeCpu:
    """CPU seconds of each node over a block of work."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.spent: dict[str, float] = {}

    def __enter__(self) -> NodeCpu:
        self._start = {n: node_cpu_s(p) for n, p in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.spent = {n: node_cpu_s(p) - self._start[n] for n, p in self.pids.items()}

    def us_per_reading(self, readings: int) -> dict[str, float]:
        """Microseconds of each node's CPU per reading."""
        return {n: round(s * 1e6 / readings, 2) for n, s in self.spent.items()}


# ------------------------------------------------------------------------------ runs


def api_ingest(
    owner: str,
    senders: int,
    batches: int,
    series: int,
    cpu: NodeCpu | None = None,
    *,
    telemetry_node: str | None = None,
    tenant: str = "bench",
) -> dict[str, Any]:
    """The API's ingest rate into this database (with `cpu` measuring over the timed part);
    with `telemetry_node`, the readings go through that node (the owner's DSN of a worker)."""
    settings = {
        "platform_admin_key": PLATFORM_KEY,
        "default_rate_limit": 1_000_000,
        "database_url": psycopg.conninfo.make_conninfo(owner, user="tagway_app"),
        "migrate_database_url": owner,
        "pool_min_size": senders,
        "pool_max_size": senders,
        "retention_interval_s": 0,
    }
    if telemetry_node is not None:
        settings["telemetry_database_url"] = psycopg.conninfo.make_conninfo(
            telemetry_node, user="tagway_app"
        )
    proc, url = start_replica(settings)
    tally = Tally()
    try:
        wait_ready(url, proc)
        gateway_id, token = asyncio.run(_setup(url, tenant))
        warm = max(series // SERIES_PER_BATCH, 1)
        all_batches = make_batches(gateway_id, warm + batches, series)
        bodies = [encode_batch(b) for b in all_batches]
        asyncio.run(_send_all(url, token, bodies[:warm], senders, Tally()))  # series created
        if cpu is None:
            asyncio.run(_send_all(url, token, bodies[warm:], senders, tally))
        else:
            with cpu:
                asyncio.run(_send_all(url, token, bodies[warm:], senders, tally))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    readings = batches * READINGS_PER_BATCH
    return {"readings": readings, "readings_per_s": round(readings / tally.seconds)}


def feeds(cpu_us: dict[str, float]) -> tuple[float, float]:
    """(the workers' CPU µs per reading together, workers of its size one coordinator feeds)."""
    workers = sum(us for node, us in cpu_us.items() if node != "coordinator")
    return round(workers, 2), round(workers / max(cpu_us["coordinator"], 0.01), 1)


def worker_rows(owner: str) -> list[int]:
    """Rows of telemetry on each node holding shards."""
    with psycopg.connect(owner) as conn:
        rows = conn.execute(
            "SELECT s.nodeport, sum(r.result::bigint) FROM run_command_on_shards('telemetry',"
            " 'SELECT count(*) FROM %s') r JOIN citus_shards s USING (shardid)"
            " GROUP BY s.nodeport ORDER BY 1"
        ).fetchall()
    return [int(n) for _, n in rows]


def columnar_bytes(owner: str, hours: float) -> dict[str, Any]:
    """The plant's readings in one old day, that day converted; bytes per reading."""
    day = time.time_ns() // 1000 // DAY_US - 14
    rows = plant_rows(hours, day * DAY_US)
    settings = CloudSettings(database_url=owner, retention_interval_s=0)

    async def convert() -> list[str]:
        db = await PostgresDatabase.open(settings)
        try:
            copy_rows(owner, rows)
            return await db.compress_telemetry(after_days=7)
        finally:
            await db.close()

    converted = asyncio.run(convert())
    name = "telemetry_p" + time.strftime("%Y%m%d", time.gmtime(day * 86_400))
    with psycopg.connect(owner) as conn:
        found = conn.execute(
            "SELECT citus_total_relation_size(%s::regclass), (SELECT amname FROM pg_am a"
            " JOIN pg_class c ON c.relam = a.oid WHERE c.oid = %s::regclass)",
            [name, name],
        ).fetchone()
        count = conn.execute(f"SELECT count(*) FROM {name}").fetchone()  # noqa: S608
    assert found is not None
    assert count is not None
    size, method = int(found[0]), str(found[1])
    readings = len(rows.ts)
    assert method == "columnar", method
    assert name in converted, converted
    assert int(count[0]) == readings, (count, readings)
    return {"readings": readings, "bytes": size, "bytes_per_reading": round(size / readings, 2)}


def citus_database(server: EngineServer) -> tuple[str, str]:
    """A new Citus database with 32 shards per table, migrated (telemetry distributed)."""
    name = f"tagway_bench_{os.getpid()}_{secrets.token_hex(3)}"
    owner = server.create_database(name)
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET citus.shard_count = {SHARDS}')
        conn.execute(
            f'ALTER DATABASE "{name}" SET citus.max_cached_conns_per_worker = {CACHED_CONNECTIONS}'
        )
    asyncio.run(apply_migrations(owner, CloudSettings()))
    return name, owner


def main() -> None:
    """Both engines, the rows, and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=80)
    parser.add_argument("--series", type=int, default=2_000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--plant-hours", type=float, default=24.0)
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "TAGWAY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    print(
        f"batches of {READINGS_PER_BATCH:,} readings over {args.series:,} series, msgpack+zstd,"
        f" {args.senders} senders, {args.batches} batches per engine"
    )
    single_server = EngineServer("postgres", args.dsn)
    name = f"tagway_bench_{os.getpid()}_{secrets.token_hex(3)}"
    owner = single_server.create_database(name)
    try:
        asyncio.run(apply_migrations(owner, CloudSettings()))
        single = api_ingest(owner, args.senders, args.batches, args.series)
    finally:
        single_server.drop_database(name)
    print(f"single node: API {single['readings_per_s']:>10,} readings/s")

    with running("citus") as server:
        name, owner = citus_database(server)
        pids = postmasters(server)
        setups: dict[str, tuple[dict[str, Any], dict[str, float]]] = {}
        worker = psycopg.conninfo.make_conninfo(server.nodes[1], dbname=name)
        for setup, node in (("via_coordinator", None), ("via_workers", worker)):
            cpu = NodeCpu(pids)
            rate = api_ingest(owner, args.senders, args.batches, args.series, cpu,
                              telemetry_node=node, tenant=f"bench_{setup}")  # fmt: skip
            setups[setup] = rate, cpu.us_per_reading(rate["readings"])
            together, fed = feeds(setups[setup][1])
            print(
                f"citus {setup.replace('_', ' ')}: API {rate['readings_per_s']:>10,} readings/s;"
                f" CPU µs per reading {setups[setup][1]} (workers together {together}) -> one"
                f" coordinator feeds {fed} workers of its size"
            )
        balance_rows = worker_rows(owner)
        print(f"citus: telemetry rows per worker {balance_rows}")

        col = columnar_bytes(owner, args.plant_hours)
        print(
            f"citus: columnar day, simulated plant at 1 s for {args.plant_hours:g} h:"
            f" {col['bytes_per_reading']} bytes per reading ({col['readings']:,} readings,"
            f" {col['bytes']:,} bytes with indexes)"
        )
        server.drop_database(name)

    via_workers, via_coordinator = setups["via_workers"], setups["via_coordinator"]
    result = {
        "single_readings_per_s": single["readings_per_s"],
        "citus_readings_per_s": via_workers[0]["readings_per_s"],
        "coordinator_cpu_us_per_reading": via_workers[1]["coordinator"],
        "worker_row_balance": round(max(balance_rows) / max(min(balance_rows), 1), 3),
        "columnar_bytes_per_reading": col["bytes_per_reading"],
        "workers_cpu_us_per_reading": feeds(via_workers[1])[0],
        "workers_per_coordinator": feeds(via_workers[1])[1],
        "citus_readings_per_s_via_coordinator": via_coordinator[0]["readings_per_s"],
        "coordinator_cpu_us_per_reading_via_coordinator": via_coordinator[1]["coordinator"],
        "workers_cpu_us_per_reading_via_coordinator": feeds(via_coordinator[1])[0],
        "workers_per_coordinator_via_coordinator": feeds(via_coordinator[1])[1],
        "columnar_plant_hours": args.plant_hours,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
