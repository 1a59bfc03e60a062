"""Benchmark: ingestion through the HTTP API against the database's own bulk-write speed.

Runs the cloud service in a real uvicorn process (a port-0 socket handed over with --fd) and
posts pre-encoded batches (msgpack + zstd, 5,000 readings each) from 4 concurrent senders:

1. PostgreSQL through the API, and in the same run the physical baseline: psycopg binary COPY of
   the same rows, one transaction per batch, from one process, into a table of the same shape.
   Also the fallback path (COPY refused by the unique key -> INSERT ... ON CONFLICT DO NOTHING),
   measured by replaying the same readings under new seqs.
2. SQLite through the API, against a raw executemany baseline (same rows, same table shape, one
   transaction per batch).

Prints readable rows; the last line is one JSON object with readings/s, p50/p99 batch latency
and the ratio to the baseline. Targets (issue 6): PostgreSQL >= 150,000 readings/s through the
API with ratio >= 0.5; SQLite >= 100,000 readings/s.

    python tests/bench/bench_cloud.py [--batches 120] [--senders 4] [--dsn postgresql://...]
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

from cloud.contract import Batch, SeriesColumns, encode_batch  # noqa: E402 - after sys.path
from cloud.storage.postgres import copy_buffer  # noqa: E402
from cloud.storage.sqlite import MIGRATIONS  # noqa: E402
from cloud.storage.telemetry import BatchRows  # noqa: E402
from tests.cloud.test_replicas import start_replica, wait_ready  # noqa: E402

PLATFORM_KEY = "bench-platform-key"
SERIES_PER_BATCH = 50
READINGS_PER_SERIES = 100  # 50 x 100 = 5,000 readings per batch


def make_batches(gateway_id: int, count: int, first_seq: int = 1) -> list[Batch]:
    """`count` batches of 5,000 readings, distinct (series, ts) across all of them."""
    base = time.time_ns() // 1000 - 2 * 3_600_000_000
    batches = []
    for b in range(count):
        series = []
        for s in range(SERIES_PER_BATCH):
            t0 = base + b * READINGS_PER_SERIES * 1000
            series.append(
                SeriesColumns(
                    device=f"pump{s // 10}",
                    tag=f"tag{s % 10}",
                    ts=[t0 + i * 1000 for i in range(READINGS_PER_SERIES)],
                    values=[float(i % 97) * 0.5 for i in range(READINGS_PER_SERIES)],
                    qualities=[0] * READINGS_PER_SERIES,
                )
            )
        batches.append(Batch(str(gateway_id), first_seq + b, base, series))
    return batches


async def _setup(url: str) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        auth = {"Authorization": f"Bearer {PLATFORM_KEY}"}
        tenant = (await client.post("/v1/tenants", json={"name": "bench"}, headers=auth)).json()
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


async def _send_all(url: str, token: str, bodies: list[bytes], senders: int) -> dict[str, Any]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/vnd.tagway.batch+msgpack",
        "Content-Encoding": "zstd",
    }

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
    return _figures(len(bodies), elapsed, latencies)


def _figures(batches: int, elapsed: float, latencies: list[float]) -> dict[str, Any]:
    readings = batches * SERIES_PER_BATCH * READINGS_PER_SERIES
    ordered = sorted(latencies)
    return {
        "readings": readings,
        "seconds": round(elapsed, 3),
        "readings_per_s": round(readings / elapsed),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


def _api_run(settings: dict[str, Any], batches: int, senders: int) -> dict[str, Any]:
    proc, url = start_replica(settings)
    try:
        wait_ready(url, proc)
        gateway_id, token = asyncio.run(_setup(url))
        bodies = [encode_batch(b) for b in make_batches(gateway_id, batches)]
        asyncio.run(_send_all(url, token, bodies[:4], senders))  # warm-up: series created
        result = asyncio.run(_send_all(url, token, bodies[4:], senders))
        result["gateway_id"], result["token"], result["url"] = gateway_id, token, url
        result["fallback"] = _fallback_run(url, token, gateway_id, bodies[4:24], senders)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _fallback_run(
    url: str, token: str, gateway_id: int, originals: list[bytes], senders: int
) -> dict[str, Any]:
    """Replay stored readings under new seqs: every COPY meets the unique key, falls back."""
    from cloud.contract import decode_batch  # noqa: PLC0415 - only this step needs it

    replays = []
    for body in originals:
        b = decode_batch(body, content_type="application/x-msgpack", content_encoding="zstd")
        replays.append(encode_batch(Batch(b.gateway_id, b.seq + 1_000_000, b.created_at, b.series)))
    return asyncio.run(_send_all(url, token, replays, senders))


def pg_baseline(dsn: str, batches: int) -> dict[str, Any]:
    """Binary COPY of the same rows, one transaction per batch, into a same-shaped table."""
    rows = [BatchRows.build(b, _series_ids()) for b in make_batches(1, batches)]
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS telemetry_baseline")
        conn.execute("CREATE TABLE telemetry_baseline (LIKE telemetry INCLUDING ALL)")
        conn.commit()
        latencies = []
        started = time.perf_counter()
        for r in rows:
            t = time.perf_counter()
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY telemetry_baseline (tenant_id, series_id, ts, value_num, value_text,"
                    " quality) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.write(copy_buffer(1, r))
            conn.commit()
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE telemetry_baseline")
        conn.commit()
    return _figures(batches, elapsed, latencies)


def _series_ids() -> list[int]:
    return list(range(1, SERIES_PER_BATCH + 1))


def sqlite_baseline(path: Path, batches: int) -> dict[str, Any]:
    """executemany of the same rows, one transaction per batch, same table shape and pragmas."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    ddl = next(s for s in MIGRATIONS[0][2].split(";") if "CREATE TABLE telemetry" in s)
    conn.execute(ddl)
    rows = [BatchRows.build(b, _series_ids()) for b in make_batches(1, batches)]
    latencies = []
    started = time.perf_counter()
    for r in rows:
        t = time.perf_counter()
        data = list(
            zip(
                [1] * len(r.ts),
                r.series_id.tolist(),
                r.ts.tolist(),
                r.value.tolist(),
                [None] * len(r.ts),
                r.quality.tolist(),
                strict=True,
            )
        )
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR IGNORE INTO telemetry VALUES (?, ?, ?, ?, ?, ?)", data)
        conn.execute("COMMIT")
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    conn.close()
    return _figures(batches, elapsed, latencies)


def _row(name: str, fig: dict[str, Any]) -> None:
    print(
        f"{name:<38} {fig['readings_per_s']:>10,} readings/s   p50 {fig['p50_ms']:>8.2f} ms"
        f"   p99 {fig['p99_ms']:>8.2f} ms   ({fig['readings']:,} readings, {fig['seconds']} s)"
    )


def main() -> None:
    """Run both backends and print the rows and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=84)
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
        f"{args.senders} senders, {args.batches} batches per run"
    )
    name = f"tagway_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    owner = psycopg.conninfo.make_conninfo(args.dsn, dbname=name)
    try:
        common = {"platform_admin_key": PLATFORM_KEY, "default_rate_limit": 1_000_000}
        pg = _api_run(
            common
            | {
                "database_url": psycopg.conninfo.make_conninfo(owner, user="tagway_app"),
                "migrate_database_url": owner,
                "pool_min_size": args.senders,
                "pool_max_size": args.senders,
            },
            args.batches,
            args.senders,
        )
        pg_base = pg_baseline(owner, args.batches - 4)
        with psycopg.connect(owner) as conn:
            ts_row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
            ).fetchone()
        timescale = bool(ts_row and ts_row[0])
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    with tempfile.TemporaryDirectory() as tmp:
        lite = _api_run(
            common | {"database_url": f"sqlite:///{Path(tmp) / 'api.db'}"},
            args.batches,
            args.senders,
        )
        lite_base = sqlite_baseline(Path(tmp) / "baseline.db", args.batches - 4)
    _row("postgresql: API (COPY fast path)", pg)
    _row("postgresql: raw binary COPY baseline", pg_base)
    _row("postgresql: API, replays (fallback path)", pg["fallback"])
    _row("sqlite: API", lite)
    _row("sqlite: raw executemany baseline", lite_base)
    print(
        json.dumps(
            {
                "batch_readings": SERIES_PER_BATCH * READINGS_PER_SERIES,
                "senders": args.senders,
                "timescaledb": timescale,
                "pg_api_readings_per_s": pg["readings_per_s"],
                "pg_api_p50_ms": pg["p50_ms"],
                "pg_api_p99_ms": pg["p99_ms"],
                "pg_copy_baseline_readings_per_s": pg_base["readings_per_s"],
                "pg_ratio": round(pg["readings_per_s"] / pg_base["readings_per_s"], 3),
                "pg_fallback_readings_per_s": pg["fallback"]["readings_per_s"],
                "sqlite_api_readings_per_s": lite["readings_per_s"],
                "sqlite_api_p50_ms": lite["p50_ms"],
                "sqlite_api_p99_ms": lite["p99_ms"],
                "sqlite_baseline_readings_per_s": lite_base["readings_per_s"],
                "sqlite_ratio": round(lite["readings_per_s"] / lite_base["readings_per_s"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
