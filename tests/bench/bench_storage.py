"""Benchmark: telemetry on disk (native partitions vs TimescaleDB) and the aggregate query
(raw rows vs the `telemetry_1m` continuous aggregate), in one run.

1. Bytes per reading. The simulated plant (`firmware_sim.PlantModel`, 8 devices, every numeric
   tag) polled once a second for `--plant-hours`, each value as the Modbus register delivers it
   (float32 rounding, integer registers with their scale, bits as 0/1), written with the
   cloud's own binary COPY into a database migrated by tagway on plain PostgreSQL (native daily
   partitions) and on TimescaleDB (hypertable; every chunk then compressed, as the policy does
   after 7 days). Bytes are whole relations with indexes and TOAST, over readings.
2. The aggregate query. A TimescaleDB database holding `--series` series over `--days` days:
   `--dense` of them report every second (a live sensor), the rest once an hour (so the tables
   and indexes have a fleet's shape without billions of rows). Chunks compressed, the
   aggregate materialized and compressed. Timed: the API's query for one dense series, 30 days
   in 1-hour buckets, through the raw path and through the continuous aggregate (the
   repository's two SQL statements), alternating, median over the dense series and rounds.
   Both answers are compared.

TimescaleDB runs from ../shared/timescaledb (private-cluster.sh, a private copy of PostgreSQL);
plain PostgreSQL is TAGWAY_TEST_PG_DSN's server. Prints rows; the last line is JSON. Targets
(issue 20): TimescaleDB <= 2 bytes per reading, the aggregate >= 10x faster.

    python tests/bench/bench_storage.py [--plant-hours 6] [--series 10000] [--dense 10]
                                        [--days 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cloud.settings import CloudSettings  # noqa: E402 - after sys.path
from cloud.storage import timescale  # noqa: E402
from cloud.storage.pg_migrate import apply_migrations  # noqa: E402
from cloud.storage.postgres import copy_buffer  # noqa: E402
from cloud.storage.telemetry import BatchRows  # noqa: E402
from firmware_sim.simulation import PlantModel  # noqa: E402
from tests.pg_engines import EngineServer, running  # noqa: E402

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
_RAW_AGGREGATE = (
    "WITH b AS (SELECT (ts / %(bucket)s) * %(bucket)s AS bucket, ts, value_num FROM telemetry"
    " WHERE tenant_id = %(tenant)s AND series_id = %(series)s AND ts >= %(start)s"
    " AND ts < %(end)s), agg AS (SELECT bucket, min(value_num) AS lo, max(value_num) AS hi,"
    " avg(value_num) AS mean, count(*) AS n, max(ts) AS last_ts FROM b GROUP BY bucket)"
    " SELECT a.bucket, a.lo, a.hi, a.mean, t.value_num, t.value_text, a.n FROM agg a"
    " JOIN telemetry t ON t.tenant_id = %(tenant)s AND t.series_id = %(series)s"
    " AND t.ts = a.last_ts ORDER BY a.bucket"
)  # the raw path of cloud.storage.telemetry, with named parameters


def as_delivered(kind: str, scale: float, value: Any) -> float:
    """The value as the Modbus register carries it to the agent."""
    if kind in ("bool", "bit"):
        return float(bool(value))
    if kind == "float32":
        return float(np.float32(value))
    if kind == "float64":
        return float(value)
    return round(float(value) / scale) * scale  # an integer register, with its scale


def plant_rows(hours: float, start_us: int) -> BatchRows:
    """One reading per numeric tag per second of the simulated plant."""
    model = PlantModel(devices=8)
    tags = [
        (device, tag.name, tag.type, tag.scale)
        for device in model.devices
        for tag in model.maps[device].tags
        if tag.type != "string"
    ]
    seconds = int(hours * 3600)
    values = np.empty((seconds, len(tags)))
    for second in range(seconds):
        model.step(1.0)
        reported = {device: model.reported(device) for device in model.devices}
        values[second] = [as_delivered(k, s, reported[d][t]) for d, t, k, s in tags]
    series = np.repeat(np.arange(1, len(tags) + 1, dtype=np.int64), seconds)
    stamps = np.tile(start_us + np.arange(seconds, dtype=np.int64) * 1_000_000, len(tags))
    return BatchRows(series, stamps, values.T.reshape(-1), np.zeros(len(series), dtype=np.int8))


def migrated(server: EngineServer) -> tuple[str, str]:
    """A new database on `server`, migrated by tagway; (name, owner DSN)."""
    name = f"tagway_bench_{os.getpid()}_{secrets.token_hex(3)}"
    dsn = server.create_database(name)
    asyncio.run(apply_migrations(dsn, CloudSettings()))
    return name, dsn


def copy_rows(dsn: str, rows: BatchRows, chunk: int = 500_000) -> None:
    """Binary COPY, as the ingest path writes, in slices of `chunk` readings."""
    with psycopg.connect(dsn) as conn:
        days = sorted(set((rows.ts // DAY_US).tolist()))
        conn.execute("SELECT tagway_ensure_partitions(%s::bigint[])", [days])
        for i in range(0, len(rows.ts), chunk):
            part = BatchRows(*(np.asarray(c)[i : i + chunk] for c in
                               (rows.series_id, rows.ts, rows.value, rows.quality)))  # fmt: skip
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY telemetry (tenant_id, series_id, ts, value_num, value_text, quality)"
                    " FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.write(copy_buffer(1, part))
            conn.commit()


def native_bytes(dsn: str) -> int:
    """Partitions with their indexes and TOAST."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE telemetry")
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
            " WHERE inhparent = 'telemetry'::regclass"
        ).fetchone()
    return int(row[0]) if row else 0


def timescaledb_bytes(dsn: str) -> tuple[int, int]:
    """(hypertable, continuous aggregate) with every chunk compressed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT compress_chunk(c, if_not_compressed => true)"
                     " FROM show_chunks('telemetry') c")  # fmt: skip
        conn.execute("CALL refresh_continuous_aggregate('telemetry_1m', NULL, NULL)")
        conn.execute("SELECT compress_chunk(c, if_not_compressed => true)"
                     " FROM show_chunks('telemetry_1m') c")  # fmt: skip
        conn.execute("VACUUM ANALYZE")
        row = conn.execute(
            "SELECT hypertable_size('telemetry'), hypertable_size(format('%I.%I',"
            " materialization_hypertable_schema, materialization_hypertable_name)::regclass)"
            " FROM timescaledb_information.continuous_aggregates WHERE view_name = 'telemetry_1m'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def fill_fleet(dsn: str, args: argparse.Namespace, start_us: int) -> int:
    """Sparse series hourly, dense series every second, generated in the server day by day."""
    sparse = args.series - args.dense
    readings = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO telemetry SELECT 1, s, %s + g * %s + s, 50 + 10 * sin(g + s), NULL, 0"
            " FROM generate_series(1, %s::bigint) s, generate_series(0, %s::bigint) g",
            [start_us, HOUR_US, sparse, args.days * 24 - 1],
        )
        readings += sparse * args.days * 24
        for day in range(args.days):
            first = start_us + day * DAY_US
            conn.execute(
                "INSERT INTO telemetry SELECT 1, s, %s + g * 1000000::bigint,"
                " round((50 + 20 * sin((g + %s) / 900.0) + random())::numeric, 2), NULL, 0"
                " FROM generate_series(%s::bigint, %s::bigint) s, generate_series(0, 86399) g",
                [first, day * 86_400, sparse + 1, args.series],
            )
            readings += args.dense * 86_400
            if day % 5 == 4:
                print(f"  fleet: {day + 1} of {args.days} days written", flush=True)
    return readings


def time_queries(dsn: str, args: argparse.Namespace, start_us: int) -> dict[str, float]:
    """Median seconds of the 30-day hourly query per path, over dense series and rounds."""
    end = start_us + args.days * DAY_US
    raw_s: list[float] = []
    cagg_s: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(args.rounds):
            for series in range(args.series - args.dense + 1, args.series + 1):
                params = timescale.aggregate_params(
                    1, series, start=start_us, end=end, bucket_us=HOUR_US
                )
                assert params is not None
                answers = []
                for sql, times in ((_RAW_AGGREGATE, raw_s), (timescale.AGGREGATE, cagg_s)):
                    started = time.perf_counter()
                    answers.append(conn.execute(sql, params).fetchall())
                    times.append(time.perf_counter() - started)
                raw, cagg = answers
                assert [r[:3] + r[4:] for r in raw] == [r[:3] + r[4:] for r in cagg], series
                assert len(raw) == args.days * 24
    return {"raw": statistics.median(raw_s), "cagg": statistics.median(cagg_s)}


def main() -> None:
    """Both measurements; readable rows, then the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plant-hours", type=float, default=6.0)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--dense", type=int, default=10)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    now = time.time_ns() // 1000
    plant_start = (now - 3 * DAY_US) // HOUR_US * HOUR_US
    fleet_start = (now - (args.days + 1) * DAY_US) // DAY_US * DAY_US
    started = time.monotonic()
    rows = plant_rows(args.plant_hours, plant_start)
    print(f"plant: {len(rows.ts):,} readings of {len(set(rows.series_id.tolist()))} series,"
          f" 1 per second for {args.plant_hours} h", flush=True)  # fmt: skip
    with running("postgres") as plain, running("timescaledb") as tsdb:
        native_name, native_dsn = migrated(plain)
        ts_name, ts_dsn = migrated(tsdb)
        fleet_name, fleet_dsn = migrated(tsdb)
        try:
            copy_rows(native_dsn, rows)
            copy_rows(ts_dsn, rows)
            native = native_bytes(native_dsn)
            hyper, cagg = timescaledb_bytes(ts_dsn)
            print("fleet: writing", flush=True)
            fleet = fill_fleet(fleet_dsn, args, fleet_start)
            fleet_hyper, fleet_cagg = timescaledb_bytes(fleet_dsn)
            times = time_queries(fleet_dsn, args, fleet_start)
        finally:
            plain.drop_database(native_name)
            tsdb.drop_database(ts_name)
            tsdb.drop_database(fleet_name)
    n = len(rows.ts)
    result = {
        "plant_readings": n,
        "native_bytes_per_reading": round(native / n, 2),
        "timescaledb_bytes_per_reading": round(hyper / n, 2),
        "timescaledb_aggregate_bytes_per_reading": round(cagg / n, 2),
        "fleet_series": args.series,
        "fleet_dense_series": args.dense,
        "fleet_days": args.days,
        "fleet_readings": fleet,
        "fleet_timescaledb_bytes_per_reading": round((fleet_hyper + fleet_cagg) / fleet, 2),
        "agg_query_raw_s": round(times["raw"], 4),
        "agg_query_cagg_s": round(times["cagg"], 4),
        "agg_speedup": round(times["raw"] / times["cagg"], 1),
        "bench_seconds": round(time.monotonic() - started),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(f"native partitions        {result['native_bytes_per_reading']:>8} bytes/reading")
    print(f"timescaledb, compressed  {result['timescaledb_bytes_per_reading']:>8} bytes/reading"
          f" (+ {result['timescaledb_aggregate_bytes_per_reading']} for telemetry_1m)")  # fmt: skip
    print(f"30 days, 1 h buckets, one series of {args.series:,} ({args.dense} dense):"
          f" raw {result['agg_query_raw_s']} s, continuous aggregate"
          f" {result['agg_query_cagg_s']} s: {result['agg_speedup']}x")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
