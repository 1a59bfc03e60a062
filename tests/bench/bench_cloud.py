"""Benchmark: ingestion through the HTTP API against the database's own bulk-write speed.

Runs the cloud service in a real uvicorn process (a port-0 socket handed over with --fd) and
posts pre-encoded batches (5,000 readings each) from 4 concurrent senders, in both formats the
cloud accepts: format 1 (series as lists, msgpack + zstd) and format 2 (what the agent sends: the
readings in an outbox chunk, posted as they are):

1. PostgreSQL through the API, and in the same run the physical baseline: psycopg binary COPY of
   the same rows, one transaction per batch, from one process, into a table of the same shape.
   Also the fallback path (COPY refused by the unique key -> INSERT ... ON CONFLICT DO NOTHING),
   measured by replaying the same readings under new seqs.
2. SQLite through the API, against a raw executemany baseline (same rows, same table shape, one
   transaction per batch).

The API and its baseline run in alternating rounds (3 by default), so a swing in the load of
this shared machine hits both sides of a ratio alike.

Prints readable rows; the last line is one JSON object with readings/s, p50/p99 batch latency
and the ratio to the baseline. Targets (issue 6): PostgreSQL >= 150,000 readings/s through the
API with ratio >= 0.5; SQLite >= 100,000 readings/s.

    python tests/bench/bench_cloud.py [--batches 84] [--rounds 3] [--senders 4] [--dsn ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cloud.contract import (  # noqa: E402 - after sys.path
    CHUNKS,
    MSGPACK,
    Batch,
    LeasedChunk,
    SeriesColumns,
    chunk,
    encode_batch,
    encode_chunk_batch,
)
from cloud.settings import CloudSettings  # noqa: E402
from cloud.storage.pg_migrate import apply_migrations  # noqa: E402
from cloud.storage.postgres import copy_buffer  # noqa: E402
from cloud.storage.sqlite import MIGRATIONS  # noqa: E402
from cloud.storage.telemetry import BatchRows  # noqa: E402
from tests.cloud.test_replicas import start_replica, wait_ready  # noqa: E402

PLATFORM_KEY = "bench-platform-key"
SERIES_PER_BATCH = 50
READINGS_PER_SERIES = 100  # 50 x 100 = 5,000 readings per batch


def make_batches(
    gateway_id: int, count: int, first_seq: int = 1, prefix: str = "pump"
) -> list[Batch]:
    """`count` batches of 5,000 readings, distinct (series, ts) across all of them."""
    base = time.time_ns() // 1000 - 2 * 3_600_000_000
    batches = []
    for b in range(count):
        series = []
        for s in range(SERIES_PER_BATCH):
            t0 = base + b * READINGS_PER_SERIES * 1000
            series.append(
                SeriesColumns(
                    device=f"{prefix}{s // 10}",
                    tag=f"tag{s % 10}",
                    ts=[t0 + i * 1000 for i in range(READINGS_PER_SERIES)],
                    values=[float(i % 97) * 0.5 for i in range(READINGS_PER_SERIES)],
                    qualities=[0] * READINGS_PER_SERIES,
                )
            )
        batches.append(Batch(str(gateway_id), first_seq + b, base, series))
    return batches


def chunk_body(batch: Batch) -> bytes:
    """The batch as a gateway sends it now: its readings in one outbox chunk (format 2)."""
    rows = [(s.device, s.tag, ts, v, "good", None, False, None)
            for s in batch.series for ts, v in zip(s.ts, s.values, strict=True)]  # fmt: skip
    return encode_chunk_batch(
        gateway_id=batch.gateway_id, seq=batch.seq, created_at=batch.created_at, dropped={},
        chunks=[LeasedChunk("telemetry", len(rows), chunk.encode(rows))],
    )  # fmt: skip


FORMAT_1 = {"Content-Type": MSGPACK, "Content-Encoding": "zstd"}
FORMAT_2 = {"Content-Type": CHUNKS}


async def _setup(url: str, tenant_name: str = "bench") -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        auth = {"Authorization": f"Bearer {PLATFORM_KEY}"}
        tenant = (await client.post("/v1/tenants", json={"name": tenant_name}, headers=auth)).json()
        key = (
            await client.post(
                f"/v1/tenants/{tenant['id']}/api-keys",
                json={"name": "admin", "role": "admin"},
                headers=auth,
            )
        ).json()["token"]
        gw = (
            await client.post(
                "/v1/gateways", json={"name": "gw"}, headers={"Authorization": f"Bearer {key}"}
            )
        ).json()
        return int(gw["gateway"]["id"]), str(gw["token"])


async def _send_all(
    url: str, token: str, bodies: list[bytes], senders: int, tally: Tally, *,
    wire: dict[str, str] = FORMAT_1,
) -> None:  # fmt: skip
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}", **wire}

    async def sender(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            r = await client.post("/v1/ingest", content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            if r.status_code != 200:
                raise RuntimeError(f"ingest answered {r.status_code}: {r.text}")

    limits = httpx.Limits(max_connections=senders)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(senders):
                tg.create_task(sender(client), name=f"sender-{i}")
        elapsed = time.perf_counter() - started
    tally.add(len(bodies), elapsed, latencies)


class Tally:
    """Batches, busy seconds and per-batch latencies, accumulated over rounds."""

    def __init__(self) -> None:
        self.batches = 0
        self.seconds = 0.0
        self.latencies: list[float] = []

    def add(self, batches: int, seconds: float, latencies: list[float]) -> None:
        """Add one round."""
        self.batches += batches
        self.seconds += seconds
        self.latencies += latencies

    def figures(self) -> dict[str, Any]:
        """readings, seconds, readings/s, p50 and p99 batch latency."""
        readings = self.batches * SERIES_PER_BATCH * READINGS_PER_SERIES
        ordered = sorted(self.latencies)
        return {
            "readings": readings,
            "seconds": round(self.seconds, 3),
            "readings_per_s": round(readings / self.seconds),
            "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        }


class PgBaseline:
    """Binary COPY of the same rows, one transaction per batch, into a same-shaped table."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn)
        self.conn.execute("CREATE TABLE telemetry_baseline (LIKE telemetry INCLUDING ALL)")
        self.conn.commit()

    def run(self, rows: list[BatchRows], tally: Tally) -> None:
        """COPY each batch and commit it."""
        latencies = []
        started = time.perf_counter()
        for r in rows:
            t = time.perf_counter()
            with (
                self.conn.cursor() as cur,
                cur.copy(
                    "COPY telemetry_baseline (tenant_id, series_id, ts, value_num, value_text,"
                    " quality) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.write(copy_buffer(1, r))
            self.conn.commit()
            latencies.append(time.perf_counter() - t)
        tally.add(len(rows), time.perf_counter() - started, latencies)

    def close(self) -> None:
        """Drop the table, close the connection."""
        self.conn.execute("DROP TABLE telemetry_baseline")
        self.conn.commit()
        self.conn.close()


class SqliteBaseline:
    """executemany of the same rows, one transaction per batch, same table shape and pragmas."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        ddl = next(s for s in MIGRATIONS[0][2].split(";") if "CREATE TABLE telemetry" in s)
        self.conn.execute(ddl)

    def run(self, rows: list[BatchRows], tally: Tally) -> None:
        """INSERT each batch with executemany and commit it."""
        latencies = []
        started = time.perf_counter()
        for r in rows:
            t = time.perf_counter()
            n = len(r.ts)
            data = list(
                zip(
                    [1] * n,
                    r.series_id.tolist(),
                    r.ts.tolist(),
                    r.value.tolist(),
                    [None] * n,
                    r.quality.tolist(),
                    strict=True,
                )
            )
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("INSERT OR IGNORE INTO telemetry VALUES (?, ?, ?, ?, ?, ?)", data)
            self.conn.execute("COMMIT")
            latencies.append(time.perf_counter() - t)
        tally.add(len(rows), time.perf_counter() - started, latencies)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def run_backend(
    settings: dict[str, Any], baseline: PgBaseline | SqliteBaseline, args: argparse.Namespace
) -> dict[str, Any]:
    """API and baseline in alternating rounds, so a load swing on the machine hits both."""
    proc, url = start_replica(settings)
    api, chunks, base, fallback = Tally(), Tally(), Tally(), Tally()
    try:
        wait_ready(url, proc)
        gateway_id, token = asyncio.run(_setup(url))
        batches = make_batches(gateway_id, args.batches + 4)
        bodies = [encode_batch(b) for b in batches]
        # Format 2 carries the same readings under other device names (its own series), and
        # seqs after format 1's, so both take the COPY fast path.
        twins = make_batches(gateway_id, args.batches + 4, first_seq=10_000, prefix="chunked")
        chunked = [chunk_body(b) for b in twins]
        asyncio.run(_send_all(url, token, bodies[:4], args.senders, Tally()))  # series created
        asyncio.run(_send_all(url, token, chunked[:4], args.senders, Tally(), wire=FORMAT_2))
        rows = [BatchRows.build(b, _series_ids()) for b in make_batches(1, args.batches)]
        per_round = args.batches // args.rounds
        for i in range(args.rounds):
            part = slice(i * per_round, (i + 1) * per_round)
            asyncio.run(_send_all(url, token, bodies[4:][part], args.senders, api))
            asyncio.run(
                _send_all(url, token, chunked[4:][part], args.senders, chunks, wire=FORMAT_2)
            )
            baseline.run(rows[part], base)
        replays = [
            encode_batch(Batch(b.gateway_id, b.seq + 1_000_000, b.created_at, b.series))
            for b in batches[4 : 4 + per_round]
        ]
        asyncio.run(_send_all(url, token, replays, args.senders, fallback))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        baseline.close()
    return {"api": api.figures(), "chunks": chunks.figures(), "baseline": base.figures(),
            "fallback": fallback.figures()}  # fmt: skip


def _series_ids() -> list[int]:
    return list(range(1, SERIES_PER_BATCH + 1))


def _row(name: str, fig: dict[str, Any]) -> None:
    print(
        f"{name:<38} {fig['readings_per_s']:>10,} readings/s   p50 {fig['p50_ms']:>8.2f} ms"
        f"   p99 {fig['p99_ms']:>8.2f} ms   ({fig['readings']:,} readings, {fig['seconds']} s)"
    )


def main() -> None:
    """Run both backends and print the rows and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=84, help="per backend and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "TAGWAY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    print(
        f"batches of {SERIES_PER_BATCH * READINGS_PER_SERIES:,} readings, msgpack+zstd, "
        f"{args.senders} senders, {args.batches} batches per side in {args.rounds} rounds"
    )
    name = f"tagway_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    owner = psycopg.conninfo.make_conninfo(args.dsn, dbname=name)
    common = {"platform_admin_key": PLATFORM_KEY, "default_rate_limit": 1_000_000}
    try:
        pg_settings = common | {
            "database_url": psycopg.conninfo.make_conninfo(owner, user="tagway_app"),
            "migrate_database_url": owner,
            "pool_min_size": args.senders,
            "pool_max_size": args.senders,
        }
        asyncio.run(apply_migrations(owner, CloudSettings()))
        pg = run_backend(pg_settings, PgBaseline(owner), args)
        with psycopg.connect(owner) as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
            ).fetchone()
        timescale = bool(row and row[0])
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    with tempfile.TemporaryDirectory() as tmp:
        lite_settings = common | {"database_url": f"sqlite:///{Path(tmp) / 'api.db'}"}
        lite = run_backend(lite_settings, SqliteBaseline(Path(tmp) / "baseline.db"), args)
    _row("postgresql: API (COPY fast path)", pg["api"])
    _row("postgresql: API, format 2 (chunks)", pg["chunks"])
    _row("postgresql: raw binary COPY baseline", pg["baseline"])
    _row("postgresql: API, replays (fallback path)", pg["fallback"])
    _row("sqlite: API", lite["api"])
    _row("sqlite: API, format 2 (chunks)", lite["chunks"])
    _row("sqlite: raw executemany baseline", lite["baseline"])
    result = {
        "batch_readings": SERIES_PER_BATCH * READINGS_PER_SERIES,
        "senders": args.senders,
        "timescaledb": timescale,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    for key, figures in (("pg", pg), ("sqlite", lite)):
        result |= {
            f"{key}_api_readings_per_s": figures["api"]["readings_per_s"],
            f"{key}_api_chunks_readings_per_s": figures["chunks"]["readings_per_s"],
            f"{key}_api_chunks_p50_ms": figures["chunks"]["p50_ms"],
            f"{key}_api_p50_ms": figures["api"]["p50_ms"],
            f"{key}_api_p99_ms": figures["api"]["p99_ms"],
            f"{key}_baseline_readings_per_s": figures["baseline"]["readings_per_s"],
            f"{key}_ratio": round(
                figures["api"]["readings_per_s"] / figures["baseline"]["readings_per_s"], 3
            ),
        }
    result["pg_fallback_readings_per_s"] = pg["fallback"]["readings_per_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
